//! Kernel object allocation from the boot untypeds, root CNode slot
//! allocation, and page mapping that creates missing paging structures.

use alloc::vec::Vec;
use sel4_bindings::{self as sys, object_type, CPtr, KernelError, Rights};

/// Depth of a capability pointer in the root task's CSpace.
pub const ROOT_DEPTH: u8 = 64;
pub const PAGE_BITS: u64 = 12;
/// The most objects one untyped retype makes (the kernel's
/// `CONFIG_RETYPE_FAN_OUT_LIMIT`): larger regions take several calls.
pub const RETYPE_FAN_OUT: u64 = 256;

struct Untyped {
    cap: CPtr,
    size_bits: u8,
    /// Bytes handed out (the kernel aligns each object to its size).
    used: u64,
    exhausted: bool,
}

/// Why building failed.
#[derive(Debug)]
pub enum BuildError {
    Kernel(&'static str, KernelError),
    OutOfMemory,
    OutOfSlots,
    Description(&'static str),
    /// The capability audit found this many differences.
    AuditFailed(usize),
}

impl core::fmt::Display for BuildError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            BuildError::Kernel(what, error) => {
                write!(f, "{what}: seL4 error {} ({})", error.0, error.name())
            }
            BuildError::OutOfMemory => write!(f, "out of untyped memory"),
            BuildError::OutOfSlots => write!(f, "out of root CNode slots"),
            BuildError::Description(what) => write!(f, "bad system description: {what}"),
            BuildError::AuditFailed(count) => write!(
                f,
                "the capability audit found {count} difference(s) from the description"
            ),
        }
    }
}

pub type BuildResult<T = ()> = Result<T, BuildError>;

pub trait Context<T> {
    fn context(self, what: &'static str) -> BuildResult<T>;
}

impl<T> Context<T> for Result<T, KernelError> {
    fn context(self, what: &'static str) -> BuildResult<T> {
        self.map_err(|e| BuildError::Kernel(what, e))
    }
}

/// Object size in bytes as log2, for the kernel's alignment rule.
fn object_size_bits(kind: u64, size_bits: u64) -> u64 {
    match kind {
        object_type::seL4_TCBObject => 11,
        object_type::seL4_EndpointObject => 4,
        object_type::seL4_NotificationObject => 5,
        object_type::seL4_CapTableObject => size_bits + 5,
        _ => PAGE_BITS,
    }
}

/// A device untyped: physical addresses that are no RAM (device memory,
/// e.g. a PCI BAR), from which frames at fixed addresses are made.
struct DeviceUntyped {
    cap: CPtr,
    paddr: u64,
    size_bits: u8,
    /// Bytes from `paddr` already retyped (the kernel's watermark: it
    /// places each new object at the next multiple of its size from here).
    used: u64,
}

pub struct Allocator {
    untypeds: Vec<Untyped>,
    device_untypeds: Vec<DeviceUntyped>,
    next_slot: u64,
    end_slot: u64,
}

impl Allocator {
    pub fn new(boot_info: &sys::BootInfo) -> Allocator {
        let untyped_region = boot_info.untyped;
        let first = untyped_region.start;
        let count = untyped_region.end - untyped_region.start;
        let mut untypeds = Vec::new();
        let mut device_untypeds = Vec::new();
        for index in 0..count {
            // SAFETY: index is within the untyped list the kernel filled.
            let desc = unsafe { boot_info.untyped(index as usize) };
            if desc.is_device != 0 && desc.size_bits >= PAGE_BITS as u8 {
                device_untypeds.push(DeviceUntyped {
                    cap: first + index,
                    paddr: desc.paddr,
                    size_bits: desc.size_bits,
                    used: 0,
                });
            } else if desc.is_device == 0 && desc.size_bits >= PAGE_BITS as u8 {
                untypeds.push(Untyped {
                    cap: first + index,
                    size_bits: desc.size_bits,
                    used: 0,
                    exhausted: false,
                });
            }
        }
        // Largest first: fewer, better-packed runs of frames.
        untypeds.sort_by_key(|u| core::cmp::Reverse(u.size_bits));
        let empty = boot_info.empty;
        Allocator {
            untypeds,
            device_untypeds,
            next_slot: empty.start,
            end_slot: empty.end,
        }
    }

    /// Root CNode slots left and bytes of untyped memory handed out.
    pub fn usage(&self) -> (u64, u64) {
        let bytes = self.untypeds.iter().map(|u| u.used).sum();
        (self.end_slot - self.next_slot, bytes)
    }

    /// A free slot in the root CNode.
    pub fn slot(&mut self) -> BuildResult<CPtr> {
        if self.next_slot >= self.end_slot {
            return Err(BuildError::OutOfSlots);
        }
        self.next_slot += 1;
        Ok(self.next_slot - 1)
    }

    /// Retype `count` objects of one kind into consecutive fresh slots,
    /// in calls of at most [`RETYPE_FAN_OUT`],
    /// from one untyped (so frames come out physically contiguous).
    pub fn objects(&mut self, kind: u64, size_bits: u64, count: u64) -> BuildResult<CPtr> {
        let object_bits = object_size_bits(kind, size_bits);
        let object_bytes = 1u64 << object_bits;
        if self.end_slot - self.next_slot < count {
            return Err(BuildError::OutOfSlots);
        }
        for untyped in self.untypeds.iter_mut().filter(|u| !u.exhausted) {
            let start = untyped.used.next_multiple_of(object_bytes);
            let end = start + object_bytes * count;
            if end > 1u64 << untyped.size_bits {
                continue;
            }
            let first_slot = self.next_slot;
            // The kernel makes at most RETYPE_FAN_OUT objects per call;
            // calls back to back on one untyped continue where the last
            // ended, so the frames stay physically contiguous.
            let mut made = 0;
            while made < count {
                let chunk = (count - made).min(RETYPE_FAN_OUT);
                match sys::untyped_retype(
                    untyped.cap,
                    kind,
                    size_bits,
                    sys::initial_cap::INIT_THREAD_CNODE,
                    0,
                    0,
                    first_slot + made,
                    chunk,
                ) {
                    Ok(()) => made += chunk,
                    // Our bookkeeping disagreed with the kernel's: skip it.
                    Err(KernelError(10)) if made == 0 => {
                        untyped.exhausted = true;
                        break;
                    }
                    Err(error) => return Err(BuildError::Kernel("untyped retype", error)),
                }
            }
            if made == count {
                untyped.used = end;
                self.next_slot += count;
                return Ok(first_slot);
            }
        }
        Err(BuildError::OutOfMemory)
    }

    /// `pages` frames of device memory at physical `paddr..`, in
    /// consecutive fresh slots, from the one device untyped that covers
    /// them. The untyped's memory below `paddr` not yet retyped is first
    /// retyped into filler untypeds (the kernel places objects only at its
    /// watermark), which stay unused in the root task's CNode. Regions are
    /// made in the description's order, so a device region below another
    /// in the same untyped must come first.
    pub fn device_frames(&mut self, paddr: u64, pages: u64) -> BuildResult<CPtr> {
        let bytes = pages
            .checked_mul(1 << PAGE_BITS)
            .ok_or(BuildError::Description("device region too large"))?;
        let end = paddr.checked_add(bytes).ok_or(BuildError::Description(
            "device region past the address space",
        ))?;
        let untyped = self
            .device_untypeds
            .iter()
            .position(|u| paddr >= u.paddr && end <= u.paddr + (1u64 << u.size_bits))
            .ok_or(BuildError::Description(
                "no device untyped covers a device region (is the device there? is it RAM?)",
            ))?;
        let (cap, base, used) = {
            let u = &self.device_untypeds[untyped];
            (u.cap, u.paddr, u.used)
        };
        let offset = paddr - base;
        if offset < used {
            return Err(BuildError::Description(
                "device regions overlap or are out of address order in one device untyped",
            ));
        }
        let fillers = crate::device::filler_blocks(used, offset);
        if self.end_slot - self.next_slot < fillers.len() as u64 + pages {
            return Err(BuildError::OutOfSlots);
        }
        for (_, bits) in fillers {
            let slot = self.slot()?;
            sys::untyped_retype(
                cap,
                object_type::seL4_UntypedObject,
                u64::from(bits),
                sys::initial_cap::INIT_THREAD_CNODE,
                0,
                0,
                slot,
                1,
            )
            .context("device untyped: filler")?;
        }
        let first_slot = self.next_slot;
        let mut made = 0;
        while made < pages {
            let chunk = (pages - made).min(RETYPE_FAN_OUT);
            sys::untyped_retype(
                cap,
                object_type::seL4_X86_4K,
                0,
                sys::initial_cap::INIT_THREAD_CNODE,
                0,
                0,
                first_slot + made,
                chunk,
            )
            .context("device untyped: frames")?;
            made += chunk;
        }
        self.next_slot += pages;
        self.device_untypeds[untyped].used = offset + bytes;
        Ok(first_slot)
    }

    pub fn object(&mut self, kind: u64, size_bits: u64) -> BuildResult<CPtr> {
        self.objects(kind, size_bits, 1)
    }

    /// A copy of `cap` (e.g. to map one frame in a second address space).
    pub fn copy(&mut self, cap: CPtr) -> BuildResult<CPtr> {
        let slot = self.slot()?;
        sys::cnode_copy(
            sys::initial_cap::INIT_THREAD_CNODE,
            slot,
            ROOT_DEPTH,
            sys::initial_cap::INIT_THREAD_CNODE,
            cap,
            ROOT_DEPTH,
            Rights::ALL,
        )
        .context("copy cap")?;
        Ok(slot)
    }

    /// Map `frame` at `vaddr` in `vspace`, creating the page table, page
    /// directory and PDPT that are missing (the kernel says FailedLookup).
    pub fn map_page(
        &mut self,
        frame: CPtr,
        vspace: CPtr,
        vaddr: u64,
        rights: Rights,
    ) -> BuildResult {
        self.map_page_with_attributes(frame, vspace, vaddr, rights, sys::DEFAULT_VM_ATTRIBUTES)
    }

    /// [`Self::map_page`] with the caching attributes.
    pub fn map_page_with_attributes(
        &mut self,
        frame: CPtr,
        vspace: CPtr,
        vaddr: u64,
        rights: Rights,
        attributes: u64,
    ) -> BuildResult {
        for _ in 0..4 {
            match sys::page_map_with_attributes(frame, vspace, vaddr, rights, attributes) {
                Ok(()) => return Ok(()),
                Err(KernelError(6)) => self.map_paging_level(vspace, vaddr, 0)?,
                Err(error) => return Err(BuildError::Kernel("map page", error)),
            }
        }
        Err(BuildError::Description("paging structures would not map"))
    }

    /// Map the paging structure of `level` (0 page table, 1 page
    /// directory, 2 PDPT) covering `vaddr`, and the levels above it that
    /// are missing.
    fn map_paging_level(&mut self, vspace: CPtr, vaddr: u64, level: u8) -> BuildResult {
        let kind = match level {
            0 => object_type::seL4_X86_PageTableObject,
            1 => object_type::seL4_X86_PageDirectoryObject,
            2 => object_type::seL4_X86_PDPTObject,
            _ => return Err(BuildError::Description("no paging level above the PDPT")),
        };
        let table = self.object(kind, 0)?;
        for _ in 0..3 {
            let result = match level {
                0 => sys::page_table_map(table, vspace, vaddr),
                1 => sys::page_directory_map(table, vspace, vaddr),
                _ => sys::pdpt_map(table, vspace, vaddr),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(KernelError(6)) => self.map_paging_level(vspace, vaddr, level + 1)?,
                Err(error) => return Err(BuildError::Kernel("map paging structure", error)),
            }
        }
        Err(BuildError::Description("paging structures would not map"))
    }
}
