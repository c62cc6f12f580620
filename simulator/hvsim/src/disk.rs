//! The disks behind the simulated storage host: a LUN reads and writes one
//! [`Disk`]. Hosted, a disk is an ordinary file on the Linux side; in the
//! seL4 image, the disk QEMU emulates (reached through its I/O ports); in
//! unit tests, memory.
//!
//! The storage host checks every request against `block_count` before it
//! calls a disk, so a disk sees only whole blocks inside itself; it still
//! refuses anything else with [`DiskError::OutOfRange`] rather than trusting
//! its caller.

use alloc::vec::Vec;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// A block range outside the disk, or a buffer that is not whole blocks.
    OutOfRange,
    /// The medium failed the operation (an I/O error of the backing store).
    Medium,
    /// The disk cannot be written.
    ReadOnly,
    /// The backing store is not there (yet, or any more).
    NotReady,
}

/// One disk: whole logical blocks, numbered from 0.
pub trait Disk {
    /// Bytes per logical block (512 or 4096).
    fn block_size(&self) -> u32;
    fn block_count(&self) -> u64;
    fn read_only(&self) -> bool;
    /// Reads `buf.len() / block_size` blocks from `lba`.
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError>;
    /// Writes `buf.len() / block_size` blocks at `lba`. Not durable until
    /// [`Disk::flush`] returns.
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError>;
    /// Makes every write that returned durable (SYNCHRONIZE CACHE).
    fn flush(&mut self) -> Result<(), DiskError>;
    /// Forgets `blocks` blocks at `lba` (UNMAP); they read back as zeros.
    fn discard(&mut self, lba: u64, blocks: u64) -> Result<(), DiskError>;
}

/// Whether `blocks` blocks at `lba` lie inside a disk of `block_count`.
pub fn in_range(lba: u64, blocks: u64, block_count: u64) -> bool {
    lba.checked_add(blocks)
        .is_some_and(|end| end <= block_count)
}

/// A disk in memory (unit tests, and scenarios that need no file).
pub struct MemoryDisk {
    block_size: u32,
    bytes: Vec<u8>,
    read_only: bool,
}

impl MemoryDisk {
    pub fn new(block_size: u32, block_count: u64) -> MemoryDisk {
        let len = (block_size as u64 * block_count) as usize;
        MemoryDisk {
            block_size,
            bytes: alloc::vec![0; len],
            read_only: false,
        }
    }

    pub fn from_bytes(block_size: u32, bytes: Vec<u8>, read_only: bool) -> MemoryDisk {
        MemoryDisk {
            block_size,
            bytes,
            read_only,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn range(&self, lba: u64, len: usize) -> Result<core::ops::Range<usize>, DiskError> {
        let block = self.block_size as usize;
        if !len.is_multiple_of(block) || !in_range(lba, (len / block) as u64, self.block_count()) {
            return Err(DiskError::OutOfRange);
        }
        let start = lba as usize * block;
        Ok(start..start + len)
    }
}

impl Disk for MemoryDisk {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn block_count(&self) -> u64 {
        self.bytes.len() as u64 / self.block_size as u64
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let range = self.range(lba, buf.len())?;
        buf.copy_from_slice(&self.bytes[range]);
        Ok(())
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let range = self.range(lba, buf.len())?;
        self.bytes[range].copy_from_slice(buf);
        Ok(())
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Ok(())
    }
    fn discard(&mut self, lba: u64, blocks: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let len = usize::try_from(blocks)
            .ok()
            .and_then(|b| b.checked_mul(self.block_size as usize))
            .ok_or(DiskError::OutOfRange)?;
        let range = self.range(lba, len)?;
        self.bytes[range].fill(0);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_disk_refuses_ranges_outside_it() {
        let mut disk = MemoryDisk::new(512, 4);
        let mut buf = [0u8; 1024];
        assert_eq!(disk.read(3, &mut buf), Err(DiskError::OutOfRange));
        assert_eq!(disk.read(0, &mut buf[..100]), Err(DiskError::OutOfRange));
        assert_eq!(disk.read(u64::MAX, &mut buf), Err(DiskError::OutOfRange));
        assert_eq!(disk.discard(2, 3), Err(DiskError::OutOfRange));
        buf.fill(7);
        disk.write(2, &buf).unwrap();
        disk.discard(3, 1).unwrap();
        let mut back = [0u8; 1024];
        disk.read(2, &mut back).unwrap();
        assert!(back[..512].iter().all(|&b| b == 7));
        assert!(back[512..].iter().all(|&b| b == 0));
    }
}
