//! Device memory (a region at a fixed physical address, `physical = ...`
//! in the description): the arithmetic of reaching an address inside a
//! device untyped. The kernel places each object a retype makes at the
//! untyped's watermark rounded up to the object's size, so to make frames
//! at `paddr` the root task first retypes the memory between the
//! watermark and `paddr` into untyped objects it never uses
//! (`Allocator::device_frames`).

/// The greedy split of `start..end` (offsets in an untyped, page aligned)
/// into naturally aligned power-of-two blocks, as (offset, log2 size):
/// retyped in order, untyped objects of these sizes move the watermark
/// exactly to `end` and cover nothing past it.
pub fn filler_blocks(start: u64, end: u64) -> alloc::vec::Vec<(u64, u8)> {
    let mut blocks = alloc::vec::Vec::new();
    let mut at = start;
    // Each block at least halves the distance or doubles the alignment: at
    // most 2 * 64 blocks.
    while at < end && blocks.len() < 128 {
        let align_bits = if at == 0 { 63 } else { at.trailing_zeros() };
        let fit_bits = 63 - (end - at).leading_zeros();
        let bits = align_bits.min(fit_bits);
        blocks.push((at, bits as u8));
        at += 1 << bits;
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers_exactly(start: u64, end: u64) {
        let blocks = filler_blocks(start, end);
        let mut at = start;
        for &(offset, bits) in &blocks {
            assert_eq!(offset, at, "{start:#x}..{end:#x}: {blocks:x?}");
            assert_eq!(offset % (1 << bits), 0, "unaligned block {offset:#x}");
            assert!(bits >= 12, "block below a page: {blocks:x?}");
            at += 1 << bits;
        }
        assert_eq!(at, end, "{start:#x}..{end:#x}: {blocks:x?}");
    }

    #[test]
    fn fillers_reach_the_address_exactly_with_aligned_blocks() {
        // QEMU's VGA framebuffer 16 MiB into a 32 MiB device untyped.
        assert_eq!(filler_blocks(0, 0x100_0000), [(0, 24)]);
        assert!(filler_blocks(0x5000, 0x5000).is_empty());
        covers_exactly(0x1000, 0x100_0000);
        covers_exactly(0x30_0000, 0x100_0000);
        covers_exactly(0x3000, 0x7_d000);
        covers_exactly(0, 0x8000_0000_0000);
        // 3 blocks: 0x1000, 0x2000, 0x4000.
        assert_eq!(filler_blocks(0x1000, 0x8000).len(), 3);
    }
}
