//! [`VecMemory`]: guest memory in this process's heap, for unit tests and
//! for embedding the host next to an in-process guest. Words are atomics so
//! the semantics match a shared mapping.

use alloc::vec::Vec;
use core::sync::atomic::{AtomicU32, Ordering};
use hv_interface::{check_atomic_u32, check_range, GuestMemory, OutOfRange};

pub struct VecMemory {
    words: Vec<AtomicU32>,
}

impl VecMemory {
    /// `size` bytes of zeroed memory (rounded up to a multiple of 4).
    pub fn new(size: usize) -> Self {
        VecMemory {
            words: (0..size.div_ceil(4)).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    /// The 32-bit word at `gpa` (4-aligned, in range), for an in-process
    /// guest that shares this memory with the host (ring control words).
    pub fn word(&self, gpa: u64) -> Option<&AtomicU32> {
        check_atomic_u32(self.size(), gpa).ok()?;
        self.words.get(gpa as usize / 4)
    }

    fn byte(&self, index: usize) -> u8 {
        (self.words[index / 4].load(Ordering::SeqCst) >> ((index % 4) * 8)) as u8
    }

    fn set_byte(&self, index: usize, value: u8) {
        let shift = (index % 4) * 8;
        let word = &self.words[index / 4];
        let _ = word.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
            Some((old & !(0xFF << shift)) | ((value as u32) << shift))
        });
    }
}

impl GuestMemory for VecMemory {
    fn size(&self) -> u64 {
        self.words.len() as u64 * 4
    }
    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        check_range(self.size(), gpa, buf.len() as u64)?;
        for (i, byte) in buf.iter_mut().enumerate() {
            *byte = self.byte(gpa as usize + i);
        }
        Ok(())
    }
    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        check_range(self.size(), gpa, data.len() as u64)?;
        for (i, byte) in data.iter().enumerate() {
            self.set_byte(gpa as usize + i, *byte);
        }
        Ok(())
    }
    fn load_u32(&self, gpa: u64) -> Result<u32, OutOfRange> {
        check_atomic_u32(self.size(), gpa)?;
        Ok(self.words[gpa as usize / 4].load(Ordering::SeqCst))
    }
    fn store_u32(&self, gpa: u64, value: u32) -> Result<(), OutOfRange> {
        check_atomic_u32(self.size(), gpa)?;
        self.words[gpa as usize / 4].store(value, Ordering::SeqCst);
        Ok(())
    }
    fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        check_atomic_u32(self.size(), gpa)?;
        Ok(self.words[gpa as usize / 4].fetch_or(bits, Ordering::SeqCst))
    }
    fn fetch_and_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        check_atomic_u32(self.size(), gpa)?;
        Ok(self.words[gpa as usize / 4].fetch_and(bits, Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_words_agree() {
        let memory = VecMemory::new(16);
        memory.write(1, &[0xAA, 0xBB]).unwrap();
        assert_eq!(memory.load_u32(0).unwrap(), 0x00BB_AA00);
        assert!(memory.read(15, &mut [0u8; 2]).is_err());
        assert!(memory.load_u32(2).is_err());
    }
}

/// The guest's side of a channel's rings in a [`VecMemory`], for the
/// channel hosts' unit tests, which play the guest with `vmbus-ring`.
#[cfg(test)]
pub(crate) mod test_ring {
    use super::VecMemory;
    use core::sync::atomic::AtomicU32;
    use hv_interface::GuestMemory;
    use vmbus_ring::{MemoryError, RingMemory};

    const PAGE: u64 = 4096;

    /// One ring as the guest maps it: the control page at `control`, then
    /// `data_pages` pages of data, single mapped; every access is bounded
    /// by the ring.
    pub struct VecRing {
        memory: &'static VecMemory,
        control: u64,
        data_len: usize,
    }

    impl VecRing {
        pub fn new(memory: &'static VecMemory, control: u64, data_pages: u64) -> Self {
            VecRing {
                memory,
                control,
                data_len: (data_pages * PAGE) as usize,
            }
        }

        fn data_at(&self, offset: usize, len: usize) -> Result<u64, MemoryError> {
            match offset.checked_add(len) {
                Some(end) if end <= self.data_len => Ok(self.control + PAGE + offset as u64),
                _ => Err(MemoryError),
            }
        }
    }

    impl RingMemory for VecRing {
        fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
            if offset >= PAGE as usize {
                return Err(MemoryError);
            }
            self.memory
                .word(self.control + offset as u64)
                .ok_or(MemoryError)
        }
        fn data_len(&self) -> usize {
            self.data_len
        }
        fn double_mapped(&self) -> bool {
            false
        }
        fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
            let at = self.data_at(offset, out.len())?;
            self.memory.read(at, out).map_err(|_| MemoryError)
        }
        fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
            let at = self.data_at(offset, data.len())?;
            self.memory.write(at, data).map_err(|_| MemoryError)
        }
    }
}
