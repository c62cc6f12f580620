//! Deliberate faults, for the test fixtures that check the OS stops a
//! component which steps outside what its description grants (the
//! isolation tests). They live here, beside the memory layer, so the
//! fixtures themselves stay free of `unsafe`. Each one returns only if the
//! OS failed to stop the component; the caller reports that.

use crate::Region;

/// Write a byte to `region`, which the description maps read-only: the OS
/// must fault the component here. A writable region is not written (the
/// write would be no fault, only damage): `false`.
pub fn write_read_only(region: &Region) -> bool {
    if region.writable() {
        return false;
    }
    // SAFETY: the pointer is the region's base, mapped for the component's
    // lifetime; the region is read-only, so the hardware refuses the store
    // before any byte changes.
    unsafe { region.as_ptr().write_volatile(0xff) };
    true
}

/// Read the first byte after `region`'s mapping. Both runtimes leave the
/// page after every region mapping unmapped (a guard), so the OS must
/// fault the component here. A region without a guard page (a test's, or
/// part of another) is not read: `None`.
pub fn read_after(region: &Region) -> Option<u8> {
    if !region.guarded() {
        return None;
    }
    // SAFETY: one past the region's span is its guard page, unmapped (the
    // promise of `Region::with_guard_page`): no memory of this program is
    // there to be read.
    Some(unsafe { region.as_ptr().add(region.span()).read_volatile() })
}

/// Execute an undefined instruction (`ud2`): the OS must fault the
/// component here.
pub fn illegal_instruction() {
    // SAFETY: `ud2` touches no memory and no register; it only traps.
    unsafe { core::arch::asm!("ud2") };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writable_region_is_not_written() {
        let mut memory = [7u8; 8];
        // SAFETY: `memory` outlives the region.
        let region = unsafe { Region::new(memory.as_mut_ptr(), 8, true, false) };
        assert!(!write_read_only(&region));
        assert_eq!(memory, [7u8; 8]);
    }

    #[test]
    fn a_region_without_a_guard_page_is_not_read_past() {
        let memory = [0u8; 16];
        // SAFETY: `memory` outlives the region (read-only).
        let region = unsafe { Region::new(memory.as_ptr().cast_mut(), 8, false, false) };
        assert_eq!(read_after(&region), None);
        assert_eq!(read_after(&region.subregion(0, 4).unwrap()), None);
    }
}
