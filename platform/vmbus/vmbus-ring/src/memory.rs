//! The shared memory a ring lives in: a control page of 32-bit atomics and a
//! data area that is copied in and out in bulk.

use crate::sync::AtomicU32;
#[cfg(not(loom))]
use component_api::region::{Region, RegionError};
#[cfg(not(loom))]
use vmbus_protocol::packet::control::CONTROL_PAGE_SIZE;

/// Bounds or rights were violated by the ring code's request (a bug, not
/// the peer's doing: the ring checks every offset it derives from the peer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryError;

/// What a ring needs from its memory.
///
/// The data area is `data_len()` bytes. When `double_mapped()` is true the
/// bytes `data_len()..2 * data_len()` are the same memory again, so a copy
/// that crosses the end can be done in one piece.
pub trait RingMemory {
    /// The atomic word at `offset` (4-aligned, < 4096) of the control page.
    fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError>;
    fn data_len(&self) -> usize;
    fn double_mapped(&self) -> bool;
    /// Copy `out.len()` bytes starting at `offset` of the data area.
    fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError>;
    /// Copy `data` to `offset` of the data area.
    fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError>;
}

/// A pointer to a ring memory is one: a reference lets two ring ends share
/// a memory on one thread, an `Arc` across threads.
macro_rules! ring_memory_through_pointer {
    ($pointer:ty) => {
        impl<T: RingMemory + ?Sized> RingMemory for $pointer {
            #[inline]
            fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
                (**self).control(offset)
            }
            #[inline]
            fn data_len(&self) -> usize {
                (**self).data_len()
            }
            #[inline]
            fn double_mapped(&self) -> bool {
                (**self).double_mapped()
            }
            #[inline]
            fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
                (**self).read_data(offset, out)
            }
            #[inline]
            fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
                (**self).write_data(offset, data)
            }
        }
    };
}

ring_memory_through_pointer!(&T);
#[cfg(all(feature = "std", not(loom)))]
ring_memory_through_pointer!(std::sync::Arc<T>);
#[cfg(loom)]
ring_memory_through_pointer!(loom::sync::Arc<T>);

#[cfg(not(loom))]
impl From<RegionError> for MemoryError {
    fn from(_: RegionError) -> Self {
        MemoryError
    }
}

/// A ring in component regions: one region for the control page (at least
/// 4 KiB) and one for the data area. The data region's `double_mapped()`
/// says whether it is mapped twice back to back. For the contiguous
/// "control page, data, data again" mapping, make the two regions from the
/// same base (control at base, data at base + 4096).
#[cfg(not(loom))]
#[derive(Clone, Copy, Debug)]
pub struct RegionRingMemory {
    control: Region,
    data: Region,
}

#[cfg(not(loom))]
impl RegionRingMemory {
    pub fn new(control: Region, data: Region) -> Result<Self, MemoryError> {
        if control.len() < CONTROL_PAGE_SIZE || !(control.as_ptr() as usize).is_multiple_of(4) {
            return Err(MemoryError);
        }
        Ok(Self { control, data })
    }
}

#[cfg(not(loom))]
impl RingMemory for RegionRingMemory {
    #[inline]
    fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
        Ok(self.control.atomic_u32(offset)?)
    }
    #[inline]
    fn data_len(&self) -> usize {
        self.data.len()
    }
    #[inline]
    fn double_mapped(&self) -> bool {
        self.data.double_mapped()
    }
    #[inline]
    fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        Ok(self.data.read_bulk(offset, out)?)
    }
    #[inline]
    fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        Ok(self.data.write_bulk(offset, data)?)
    }
}

#[cfg(all(feature = "std", not(loom)))]
pub use heap::{DoubleMappedRingMemory, HeapRingMemory};

#[cfg(all(feature = "std", not(loom)))]
mod heap {
    use super::*;
    use core::cell::UnsafeCell;
    use std::boxed::Box;
    use std::vec::Vec;

    /// A ring in ordinary process memory (single-mapped), shared between
    /// threads through `Arc`. For tests, benchmarks and the simulated host.
    pub struct HeapRingMemory {
        control: Box<[AtomicU32]>,
        data: Box<[UnsafeCell<u8>]>,
    }

    // SAFETY: the control page is atomics; data bytes are only copied with
    // raw pointers in bounds, and the ring protocol gives each byte range to
    // one side at a time (a misbehaving peer can only corrupt bytes, which
    // the reader validates after copying).
    unsafe impl Sync for HeapRingMemory {}
    // SAFETY: as for Sync; the memory is owned (boxed), not thread-bound.
    unsafe impl Send for HeapRingMemory {}

    impl HeapRingMemory {
        pub fn new(data_len: usize) -> Self {
            let control: Vec<AtomicU32> = (0..CONTROL_PAGE_SIZE / 4)
                .map(|_| AtomicU32::new(0))
                .collect();
            let data: Vec<UnsafeCell<u8>> = (0..data_len).map(|_| UnsafeCell::new(0)).collect();
            Self {
                control: control.into_boxed_slice(),
                data: data.into_boxed_slice(),
            }
        }
        fn data_ptr(&self) -> *mut u8 {
            UnsafeCell::raw_get(self.data.as_ptr())
        }
        /// Raw access for hostile-peer tests (write any byte, any index).
        pub fn poke(&self, offset: usize, bytes: &[u8]) {
            self.write_data(offset, bytes).expect("poke in bounds");
        }
    }

    impl RingMemory for HeapRingMemory {
        #[inline]
        fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
            if !offset.is_multiple_of(4) {
                return Err(MemoryError);
            }
            self.control.get(offset / 4).ok_or(MemoryError)
        }
        #[inline]
        fn data_len(&self) -> usize {
            self.data.len()
        }
        #[inline]
        fn double_mapped(&self) -> bool {
            false
        }
        #[inline]
        fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
            match offset.checked_add(out.len()) {
                Some(end) if end <= self.data.len() => {}
                _ => return Err(MemoryError),
            }
            // SAFETY: in bounds (checked); the destination is private.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    self.data_ptr().add(offset),
                    out.as_mut_ptr(),
                    out.len(),
                )
            };
            Ok(())
        }
        #[inline]
        fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
            match offset.checked_add(data.len()) {
                Some(end) if end <= self.data.len() => {}
                _ => return Err(MemoryError),
            }
            // SAFETY: in bounds (checked).
            unsafe {
                core::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.data_ptr().add(offset),
                    data.len(),
                )
            };
            Ok(())
        }
    }

    /// A ring whose data area is mapped twice back to back (memfd + two
    /// fixed mmaps), as the seL4 and hosted runtimes map rings. Linux only.
    /// Exposed as component regions so the same [`RegionRingMemory`] code
    /// runs on it. Another process can map the same memory through
    /// [`DoubleMappedRingMemory::share_path`] and
    /// [`DoubleMappedRingMemory::open_shared`].
    pub struct DoubleMappedRingMemory {
        base: *mut u8,
        data_len: usize,
        regions: RegionRingMemory,
        file: std::fs::File,
    }

    // SAFETY: the mapping is owned by this value and unmapped only on drop;
    // all access goes through `RegionRingMemory` (volatile or atomic).
    unsafe impl Send for DoubleMappedRingMemory {}
    // SAFETY: as for Send: shared access is volatile or atomic.
    unsafe impl Sync for DoubleMappedRingMemory {}

    impl DoubleMappedRingMemory {
        /// `data_len` must be a non-zero multiple of 4096.
        pub fn new(data_len: usize) -> std::io::Result<Self> {
            use std::io::Error;
            use std::os::fd::FromRawFd;
            if data_len == 0 || !data_len.is_multiple_of(CONTROL_PAGE_SIZE) {
                return Err(Error::other("data_len must be a multiple of 4096"));
            }
            // SAFETY: a plain libc call; the result is checked.
            let fd = unsafe { libc::memfd_create(c"vmbus-ring".as_ptr(), libc::MFD_CLOEXEC) };
            if fd < 0 {
                return Err(Error::last_os_error());
            }
            // SAFETY: `fd` was just created and is owned by nothing else.
            let file = unsafe { std::fs::File::from_raw_fd(fd) };
            file.set_len((CONTROL_PAGE_SIZE + data_len) as u64)?;
            Self::map(file, data_len)
        }

        /// A path another process of the same user can open to map this
        /// memory with [`DoubleMappedRingMemory::open_shared`] (valid while
        /// `self` lives).
        pub fn share_path(&self) -> std::string::String {
            use std::os::fd::AsRawFd;
            std::format!("/proc/{}/fd/{}", std::process::id(), self.file.as_raw_fd())
        }

        /// Map the memory another process shares at `path` (from
        /// [`DoubleMappedRingMemory::share_path`]); its data area must be
        /// `data_len` bytes.
        pub fn open_shared(path: &std::path::Path, data_len: usize) -> std::io::Result<Self> {
            use std::io::Error;
            if data_len == 0 || !data_len.is_multiple_of(CONTROL_PAGE_SIZE) {
                return Err(Error::other("data_len must be a multiple of 4096"));
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path)?;
            if file.metadata()?.len() != (CONTROL_PAGE_SIZE + data_len) as u64 {
                return Err(Error::other("shared ring memory has another size"));
            }
            Self::map(file, data_len)
        }

        /// Control page then data area, mapped from `file` (which is
        /// `CONTROL_PAGE_SIZE + data_len` bytes), and the data area again.
        fn map(file: std::fs::File, data_len: usize) -> std::io::Result<Self> {
            use std::io::Error;
            use std::os::fd::AsRawFd;
            let fd = file.as_raw_fd();
            let total = CONTROL_PAGE_SIZE + 2 * data_len;
            // SAFETY: plain libc calls; every result is checked, and the
            // fixed mappings land inside the reservation made just before.
            unsafe {
                let base = libc::mmap(
                    core::ptr::null_mut(),
                    total,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                );
                if base == libc::MAP_FAILED {
                    return Err(Error::last_os_error());
                }
                let base = base as *mut u8;
                let first = libc::mmap(
                    base as *mut libc::c_void,
                    CONTROL_PAGE_SIZE + data_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    0,
                );
                let second = libc::mmap(
                    base.add(CONTROL_PAGE_SIZE + data_len) as *mut libc::c_void,
                    data_len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED | libc::MAP_FIXED,
                    fd,
                    CONTROL_PAGE_SIZE as libc::off_t,
                );
                if first == libc::MAP_FAILED || second == libc::MAP_FAILED {
                    let error = Error::last_os_error();
                    libc::munmap(base as *mut libc::c_void, total);
                    return Err(error);
                }
                let control = Region::new(base, CONTROL_PAGE_SIZE, true, false);
                let data = Region::new(base.add(CONTROL_PAGE_SIZE), data_len, true, true);
                let regions =
                    RegionRingMemory::new(control, data).map_err(|_| Error::other("regions"))?;
                Ok(Self {
                    base,
                    data_len,
                    regions,
                    file,
                })
            }
        }

        pub fn regions(&self) -> &RegionRingMemory {
            &self.regions
        }

        /// For adapters of other ring implementations: the control page
        /// (4096 bytes) starts here, the data area at `+ 4096`, and the data
        /// area is mapped again right after itself, so `base_ptr() + 4096 ..
        /// base_ptr() + 4096 + 2 * data_len()` is valid while `self` lives.
        pub fn base_ptr(&self) -> *mut u8 {
            self.base
        }

        /// The control page's first `N` 32-bit words as one array, for ring
        /// code that takes the control words that way (the OpenVMM ring's
        /// `RingMem::control`, in tools/ring-bench/openvmm), so its adapter
        /// needs no `unsafe`.
        #[inline]
        pub fn control_words<const N: usize>(&self) -> &[AtomicU32; N] {
            const { assert!(N * 4 <= CONTROL_PAGE_SIZE) };
            // SAFETY: `base` is the page-aligned start of the control page,
            // mapped read-write for as long as `self` lives; N words fit in
            // it (checked at compile time). AtomicU32 has u32's size and
            // alignment, and all shared access to these words is atomic.
            unsafe { &*(self.base as *const [AtomicU32; N]) }
        }
    }

    impl Drop for DoubleMappedRingMemory {
        fn drop(&mut self) {
            // SAFETY: unmaps exactly the reservation made in new().
            unsafe {
                libc::munmap(
                    self.base as *mut libc::c_void,
                    CONTROL_PAGE_SIZE + 2 * self.data_len,
                )
            };
        }
    }

    impl RingMemory for DoubleMappedRingMemory {
        #[inline]
        fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
            self.regions.control(offset)
        }
        #[inline]
        fn data_len(&self) -> usize {
            self.regions.data_len()
        }
        #[inline]
        fn double_mapped(&self) -> bool {
            true
        }
        #[inline]
        fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
            self.regions.read_data(offset, out)
        }
        #[inline]
        fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
            self.regions.write_data(offset, data)
        }
    }

    #[cfg(test)]
    mod control_words {
        use super::*;
        use crate::sync::Ordering;

        #[test]
        fn the_array_is_the_control_page_the_ring_uses() {
            let memory = DoubleMappedRingMemory::new(4096).unwrap();
            let words = memory.control_words::<32>();
            for (index, word) in words.iter().enumerate() {
                word.store(0x100 + index as u32, Ordering::Relaxed);
            }
            for index in 0..32 {
                let word = memory.control(index * 4).unwrap();
                assert_eq!(word.load(Ordering::Relaxed), 0x100 + index as u32);
            }
            assert_eq!(memory.control(32 * 4).unwrap().load(Ordering::Relaxed), 0);
        }
    }
}

#[cfg(loom)]
pub use model::LoomRingMemory;

/// A ring for the model checker (`--cfg loom`, tests/loom_ring.rs): the
/// control words the protocol uses are loom atomics, and the data area is
/// 8-byte words in loom cells, so loom also reports a packet read before
/// its write index publication made it visible (a data race on a word).
/// Packets start and end on 8-byte boundaries, so each word belongs to one
/// packet and the two sides never share a word legitimately.
#[cfg(loom)]
mod model {
    use super::{MemoryError, RingMemory};
    use crate::sync::AtomicU32;
    use loom::cell::UnsafeCell;
    use std::vec::Vec;
    use vmbus_protocol::packet::control;

    const WORD: usize = 8;
    /// The control words, in this order; any other offset is refused.
    const CONTROL_WORDS: [usize; 5] = [
        control::WRITE_INDEX,
        control::READ_INDEX,
        control::INTERRUPT_MASK,
        control::PENDING_SEND_SZ,
        control::FEATURE_BITS,
    ];

    pub struct LoomRingMemory {
        control: [AtomicU32; 5],
        data: Vec<UnsafeCell<[u8; WORD]>>,
    }

    impl LoomRingMemory {
        /// `data_len` must be a multiple of 8; every control word starts at 0.
        pub fn new(data_len: usize) -> Self {
            assert!(data_len.is_multiple_of(WORD));
            Self {
                control: core::array::from_fn(|_| AtomicU32::new(0)),
                data: (0..data_len / WORD)
                    .map(|_| UnsafeCell::new([0; WORD]))
                    .collect(),
            }
        }

        fn check(&self, offset: usize, len: usize) -> Result<(), MemoryError> {
            match offset.checked_add(len) {
                Some(end) if end <= self.data_len() => Ok(()),
                _ => Err(MemoryError),
            }
        }
    }

    impl RingMemory for LoomRingMemory {
        #[inline]
        fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
            let index = CONTROL_WORDS
                .iter()
                .position(|&word| word == offset)
                .ok_or(MemoryError)?;
            Ok(&self.control[index])
        }
        #[inline]
        fn data_len(&self) -> usize {
            self.data.len() * WORD
        }
        #[inline]
        fn double_mapped(&self) -> bool {
            false
        }
        #[inline]
        fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
            self.check(offset, out.len())?;
            for (i, byte) in out.iter_mut().enumerate() {
                let at = offset + i;
                // SAFETY: loom checks that no write to this word races with
                // this read (it panics on a causality violation instead).
                *byte = self.data[at / WORD].with(|word| unsafe { (*word)[at % WORD] });
            }
            Ok(())
        }
        #[inline]
        fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
            self.check(offset, data.len())?;
            for (i, byte) in data.iter().enumerate() {
                let at = offset + i;
                // SAFETY: loom checks that no other access to this word races
                // with this write.
                self.data[at / WORD].with_mut(|word| unsafe { (*word)[at % WORD] = *byte });
            }
            Ok(())
        }
    }
}
