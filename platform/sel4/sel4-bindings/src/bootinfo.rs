//! The boot information the kernel hands the root task (`seL4_BootInfo`,
//! packed, x86_64, `CONFIG_MAX_NUM_BOOTINFO_UNTYPED_CAPS` from autoconf.h).

/// A range of CNode slots, `start` inclusive, `end` exclusive.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug)]
pub struct SlotRegion {
    pub start: u64,
    pub end: u64,
}

/// One untyped capability's description.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug)]
pub struct UntypedDesc {
    pub paddr: u64,
    pub padding: [u8; 2],
    pub size_bits: u8,
    pub is_device: u8,
}

/// `seL4_BootInfo` up to the untyped list (whose length the kernel's
/// configuration fixes; read it with [`BootInfo::untyped`]).
#[repr(C, packed)]
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    pub extra_len: u64,
    pub node_id: u64,
    pub num_nodes: u64,
    pub num_io_pt_levels: u64,
    pub ipc_buffer: u64,
    pub empty: SlotRegion,
    pub shared_frames: SlotRegion,
    pub user_image_frames: SlotRegion,
    pub user_image_paging: SlotRegion,
    pub io_space_caps: SlotRegion,
    pub extra_bi_pages: SlotRegion,
    pub init_thread_cnode_size_bits: u8,
    pub init_thread_domain: u64,
    pub arch_info: u64,
    pub untyped: SlotRegion,
}

impl BootInfo {
    /// The description of untyped number `index` (slot `untyped.start + index`).
    ///
    /// # Safety
    /// `self` must be the kernel's boot information frame and `index` below
    /// `untyped.end - untyped.start`.
    pub unsafe fn untyped(&self, index: usize) -> UntypedDesc {
        // SAFETY: the kernel places the untyped descriptor list right after
        // the BootInfo header in the same frame (the caller's promise), and
        // `index` is inside it.
        unsafe {
            let list = (self as *const BootInfo as *const u8).add(core::mem::size_of::<BootInfo>())
                as *const UntypedDesc;
            list.add(index).read_unaligned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_the_packed_c_struct() {
        assert_eq!(core::mem::size_of::<SlotRegion>(), 16);
        assert_eq!(core::mem::size_of::<UntypedDesc>(), 12);
        // 5 words, 6 slot regions, a byte, 2 words, 1 slot region.
        assert_eq!(core::mem::size_of::<BootInfo>(), 40 + 96 + 1 + 16 + 16);
    }
}
