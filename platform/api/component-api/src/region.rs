//! Shared-memory regions as components see them.
//!
//! A region is memory another component (or the host) may change at any
//! time, so it is never handed out as a Rust reference to plain data: reads
//! and writes go through volatile copies or atomics, and callers copy data
//! out before they validate it.

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, AtomicU64};

/// A mapped region: its base address in this component, its size, whether
/// this component may write it, and whether it is mapped twice back to back
/// (then `[base, base + 2 * len)` is valid and the second half aliases the
/// first, so a ring can be read or written across its end in one copy).
#[derive(Clone, Copy, Debug)]
pub struct Region {
    base: NonNull<u8>,
    len: usize,
    writable: bool,
    double_mapped: bool,
    guest_physical: Option<u64>,
    /// The page after the span is unmapped (the runtimes' guard page).
    guard_after: bool,
}

// SAFETY: a Region is a description of shared memory; all access through it
// is volatile or atomic.
unsafe impl Send for Region {}
// SAFETY: as for Send.
unsafe impl Sync for Region {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionError {
    OutOfBounds,
    ReadOnly,
    Misaligned,
}

impl Region {
    /// # Safety
    /// `base..base+len` (and `base+len..base+2*len` when double mapped) must
    /// be mapped for the lifetime of the component, readable, and writable
    /// if `writable`.
    pub unsafe fn new(base: *mut u8, len: usize, writable: bool, double_mapped: bool) -> Region {
        Region {
            base: NonNull::new(base).expect("region base is null"),
            len,
            writable,
            double_mapped,
            guest_physical: None,
            guard_after: false,
        }
    }

    /// The same region, marked as followed by an unmapped guard page, as
    /// both runtimes map regions (what lets [`crate::deliberate::read_after`]
    /// fault there).
    ///
    /// # Safety
    /// The page right after the region's span must stay unmapped for the
    /// lifetime of the component.
    pub unsafe fn with_guard_page(self) -> Region {
        Region {
            guard_after: true,
            ..self
        }
    }

    /// Whether the page after the span is a guard page.
    pub fn guarded(&self) -> bool {
        self.guard_after
    }

    /// A zeroed, writable region of `len` bytes over memory leaked for
    /// the rest of the process: for tests, which otherwise would need
    /// `unsafe` to make a region over memory of their own.
    #[cfg(feature = "test-memory")]
    pub fn leaked(len: usize) -> Region {
        extern crate alloc;
        let words = alloc::vec![0u64; len.div_ceil(8)].leak();
        // SAFETY: the memory is never freed (leaked), 8-byte aligned,
        // readable and writable, and reached from nothing else.
        unsafe { Region::new(words.as_mut_ptr().cast(), len, true, false) }
    }

    /// The `len` bytes at `offset` as a region of their own (never double
    /// mapped; host visible at the matching address if this one is).
    pub fn subregion(&self, offset: usize, len: usize) -> Result<Region, RegionError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.len => {}
            _ => return Err(RegionError::OutOfBounds),
        }
        Ok(Region {
            // SAFETY: `offset <= self.len`, so the pointer stays inside (or
            // one past) the mapping `self` describes.
            base: unsafe { self.base.add(offset) },
            len,
            writable: self.writable,
            double_mapped: false,
            guest_physical: self.guest_physical.map(|gpa| gpa + offset as u64),
            guard_after: false,
        })
    }

    /// The same region, marked as host visible: its memory is physically
    /// contiguous guest memory starting at guest physical address `gpa`
    /// (page aligned). Runtimes set this for regions `system.toml` declares
    /// `host_visible`; drivers hand these addresses to the host in GPADLs.
    pub fn with_guest_physical(self, gpa: u64) -> Region {
        Region {
            guest_physical: Some(gpa),
            ..self
        }
    }

    /// The guest physical address of the region's first byte, if the host
    /// may see it (see [`Region::with_guest_physical`]).
    pub fn guest_physical(&self) -> Option<u64> {
        self.guest_physical
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn writable(&self) -> bool {
        self.writable
    }
    #[inline]
    pub fn double_mapped(&self) -> bool {
        self.double_mapped
    }
    /// The span that may be addressed: twice the length when double mapped.
    pub fn span(&self) -> usize {
        if self.double_mapped {
            self.len * 2
        } else {
            self.len
        }
    }
    pub fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    #[inline]
    fn check(&self, offset: usize, count: usize) -> Result<(), RegionError> {
        match offset.checked_add(count) {
            Some(end) if end <= self.span() => Ok(()),
            _ => Err(RegionError::OutOfBounds),
        }
    }

    /// Copy bytes out of the region into private memory.
    pub fn read(&self, offset: usize, out: &mut [u8]) -> Result<(), RegionError> {
        self.check(offset, out.len())?;
        for (i, byte) in out.iter_mut().enumerate() {
            // SAFETY: bounds checked above.
            *byte = unsafe { self.base.as_ptr().add(offset + i).read_volatile() };
        }
        Ok(())
    }

    /// Copy bytes from private memory into the region.
    pub fn write(&self, offset: usize, data: &[u8]) -> Result<(), RegionError> {
        if !self.writable {
            return Err(RegionError::ReadOnly);
        }
        self.check(offset, data.len())?;
        for (i, byte) in data.iter().enumerate() {
            // SAFETY: bounds checked above.
            unsafe { self.base.as_ptr().add(offset + i).write_volatile(*byte) };
        }
        Ok(())
    }

    /// Copy bytes in bulk (non-volatile memcpy). Used on the data path where
    /// the protocol guarantees the peer does not touch these bytes while we
    /// own them (an index-protected ring slot); the copy is then validated.
    #[inline]
    pub fn read_bulk(&self, offset: usize, out: &mut [u8]) -> Result<(), RegionError> {
        self.check(offset, out.len())?;
        // SAFETY: bounds checked; the destination is private memory.
        unsafe {
            core::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(offset),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        Ok(())
    }

    /// See [`Region::read_bulk`].
    #[inline]
    pub fn write_bulk(&self, offset: usize, data: &[u8]) -> Result<(), RegionError> {
        if !self.writable {
            return Err(RegionError::ReadOnly);
        }
        self.check(offset, data.len())?;
        // SAFETY: bounds checked.
        unsafe {
            core::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.base.as_ptr().add(offset),
                data.len(),
            )
        };
        Ok(())
    }

    /// An atomic 32-bit word inside the region (for indices and flags).
    #[inline]
    pub fn atomic_u32(&self, offset: usize) -> Result<&AtomicU32, RegionError> {
        self.check(offset, 4)?;
        if !offset.is_multiple_of(4) {
            return Err(RegionError::Misaligned);
        }
        // SAFETY: in bounds and aligned; atomics are valid on shared memory.
        Ok(unsafe { &*(self.base.as_ptr().add(offset) as *const AtomicU32) })
    }

    /// An atomic 64-bit word inside the region.
    pub fn atomic_u64(&self, offset: usize) -> Result<&AtomicU64, RegionError> {
        self.check(offset, 8)?;
        if !offset.is_multiple_of(8) {
            return Err(RegionError::Misaligned);
        }
        // SAFETY: in bounds and aligned.
        Ok(unsafe { &*(self.base.as_ptr().add(offset) as *const AtomicU64) })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let mut memory = [0u8; 64];
        // SAFETY: `memory` outlives the region.
        let region = unsafe { Region::new(memory.as_mut_ptr(), 64, true, false) };
        assert_eq!(region.write(60, &[1, 2, 3, 4]), Ok(()));
        assert_eq!(
            region.write(61, &[1, 2, 3, 4]),
            Err(RegionError::OutOfBounds)
        );
        assert_eq!(
            region.write(usize::MAX, &[1]),
            Err(RegionError::OutOfBounds)
        );
        let mut out = [0u8; 4];
        region.read(60, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        assert_eq!(region.atomic_u32(2).err(), Some(RegionError::Misaligned));
    }

    #[test]
    fn subregions_stay_inside() {
        let mut memory = [0u8; 64];
        // SAFETY: `memory` outlives the region.
        let region = unsafe { Region::new(memory.as_mut_ptr(), 64, true, false) }
            .with_guest_physical(0x1000);
        let part = region.subregion(16, 8).unwrap();
        part.write(0, &[7]).unwrap();
        let mut out = [0u8; 1];
        region.read(16, &mut out).unwrap();
        assert_eq!(out, [7]);
        assert_eq!(part.guest_physical(), Some(0x1010));
        assert_eq!(part.write(8, &[1]), Err(RegionError::OutOfBounds));
        assert!(region.subregion(60, 5).is_err());
        assert!(region.subregion(usize::MAX, 2).is_err());
    }

    #[test]
    fn read_only_region_refuses_writes() {
        let mut memory = [0u8; 8];
        // SAFETY: `memory` outlives the region.
        let region = unsafe { Region::new(memory.as_mut_ptr(), 8, false, false) };
        assert_eq!(region.write(0, &[1]), Err(RegionError::ReadOnly));
    }
}
