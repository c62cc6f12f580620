//! Guest physical memory as a shared mapping of one file (GPA = offset).

use crate::{check_atomic_u32, check_range, GuestMemory, OutOfRange};
use core::sync::atomic::{AtomicU32, Ordering};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// A `MAP_SHARED` mapping of the guest memory file. Both the guest and the
/// host map the same file; every access is bounds-checked against the size
/// given at creation.
pub struct MappedGuestMemory {
    base: *mut u8,
    size: u64,
    _file: File,
}

// SAFETY: the mapping is plain shared memory; all access goes through
// bounds-checked copies or atomics, which are valid from any thread.
unsafe impl Send for MappedGuestMemory {}
// SAFETY: as for Send.
unsafe impl Sync for MappedGuestMemory {}

impl MappedGuestMemory {
    /// Creates (or truncates) the file at `path` with `size` zero bytes and
    /// maps it. `size` must be a non-zero multiple of 4096.
    pub fn create(path: &Path, size: u64) -> io::Result<Self> {
        check_size(size)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        Self::map(file, size)
    }

    /// Maps an existing file whose length is at least `size`.
    pub fn open(path: &Path, size: u64) -> io::Result<Self> {
        check_size(size)?;
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() < size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "guest memory file is shorter than the announced size",
            ));
        }
        Self::map(file, size)
    }

    fn map(file: File, size: u64) -> io::Result<Self> {
        let len = usize::try_from(size)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "size too large"))?;
        // SAFETY: a fresh shared mapping of a file we hold open; the kernel
        // picks the address.
        let base = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MappedGuestMemory {
            base: base.cast(),
            size,
            _file: file,
        })
    }

    fn atomic(&self, gpa: u64) -> Result<&AtomicU32, OutOfRange> {
        check_atomic_u32(self.size, gpa)?;
        // SAFETY: in bounds and 4-aligned (the mapping is page-aligned).
        Ok(unsafe { &*(self.base.add(gpa as usize) as *const AtomicU32) })
    }
}

fn check_size(size: u64) -> io::Result<()> {
    if size == 0 || !size.is_multiple_of(4096) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "guest memory size must be a non-zero multiple of 4096",
        ));
    }
    Ok(())
}

impl Drop for MappedGuestMemory {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped.
        unsafe {
            libc::munmap(self.base.cast(), self.size as usize);
        }
    }
}

impl GuestMemory for MappedGuestMemory {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&self, gpa: u64, buf: &mut [u8]) -> Result<(), OutOfRange> {
        check_range(self.size, gpa, buf.len() as u64)?;
        // The other process may write concurrently; a byte-wise volatile
        // copy keeps the compiler from assuming the bytes are stable. The
        // caller validates the copy, never the shared bytes.
        for (i, byte) in buf.iter_mut().enumerate() {
            // SAFETY: in bounds (checked above).
            *byte = unsafe { core::ptr::read_volatile(self.base.add(gpa as usize + i)) };
        }
        Ok(())
    }

    fn write(&self, gpa: u64, data: &[u8]) -> Result<(), OutOfRange> {
        check_range(self.size, gpa, data.len() as u64)?;
        for (i, byte) in data.iter().enumerate() {
            // SAFETY: in bounds (checked above).
            unsafe { core::ptr::write_volatile(self.base.add(gpa as usize + i), *byte) };
        }
        Ok(())
    }

    fn load_u32(&self, gpa: u64) -> Result<u32, OutOfRange> {
        Ok(self.atomic(gpa)?.load(Ordering::SeqCst))
    }

    fn store_u32(&self, gpa: u64, value: u32) -> Result<(), OutOfRange> {
        self.atomic(gpa)?.store(value, Ordering::SeqCst);
        Ok(())
    }

    fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        Ok(self.atomic(gpa)?.fetch_or(bits, Ordering::SeqCst))
    }

    fn fetch_and_u32(&self, gpa: u64, bits: u32) -> Result<u32, OutOfRange> {
        Ok(self.atomic(gpa)?.fetch_and(bits, Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(std::format!("hv-interface-{}-{}", name, std::process::id()))
    }

    #[test]
    fn two_mappings_share_bytes_and_reject_out_of_range() {
        let path = temp_path("mem");
        let a = MappedGuestMemory::create(&path, 8192).unwrap();
        let b = MappedGuestMemory::open(&path, 8192).unwrap();
        a.write(4096, b"hello").unwrap();
        let mut buf = [0u8; 5];
        b.read(4096, &mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        assert_eq!(b.fetch_or_u32(8, 0x10).unwrap(), 0);
        assert_eq!(a.load_u32(8).unwrap(), 0x10);
        assert!(a.read(8190, &mut buf).is_err());
        assert!(a.write(u64::MAX - 1, b"xx").is_err());
        assert!(a.load_u32(6).is_err());
        assert!(a.load_u32(8192).is_err());
        assert!(MappedGuestMemory::open(&path, 16384).is_err());
        assert!(MappedGuestMemory::create(&path, 100).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
