//! [`FileDisk`]: a disk that is an ordinary Linux file (hosted only), for
//! `hvsim --disk PATH[,ro]`. Reads and writes are positioned (`pread`,
//! `pwrite`), SYNCHRONIZE CACHE is `fdatasync`, UNMAP writes zeros (so
//! discarded blocks read back as zeros, as the target reports). The
//! file's length, cut down to whole blocks, is the disk's size; the disk
//! never grows the file.

use crate::disk::{in_range, Disk, DiskError};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

pub struct FileDisk {
    file: File,
    block_size: u32,
    block_count: u64,
    read_only: bool,
}

impl FileDisk {
    /// Opens `path` (read-only if `read_only`): an error if it cannot be
    /// opened or holds no whole block.
    pub fn open(path: &Path, read_only: bool, block_size: u32) -> std::io::Result<FileDisk> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let len = file.metadata()?.len();
        let block_count = len / block_size as u64;
        if block_count == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{} holds no whole {block_size}-byte block", path.display()),
            ));
        }
        Ok(FileDisk {
            file,
            block_size,
            block_count,
            read_only,
        })
    }

    /// `PATH` or `PATH,ro`, as the command line gives a disk.
    pub fn open_spec(spec: &str) -> std::io::Result<FileDisk> {
        let (path, read_only) = match spec.strip_suffix(",ro") {
            Some(path) => (path, true),
            None => (spec, false),
        };
        FileDisk::open(Path::new(path), read_only, 512)
    }

    fn offset(&self, lba: u64, len: usize) -> Result<u64, DiskError> {
        let block = self.block_size as usize;
        if !len.is_multiple_of(block) || !in_range(lba, (len / block) as u64, self.block_count) {
            return Err(DiskError::OutOfRange);
        }
        Ok(lba * self.block_size as u64)
    }
}

fn medium(_: std::io::Error) -> DiskError {
    DiskError::Medium
}

impl Disk for FileDisk {
    fn block_size(&self) -> u32 {
        self.block_size
    }
    fn block_count(&self) -> u64 {
        self.block_count
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), DiskError> {
        let offset = self.offset(lba, buf.len())?;
        self.file.read_exact_at(buf, offset).map_err(medium)
    }
    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        let offset = self.offset(lba, buf.len())?;
        self.file.write_all_at(buf, offset).map_err(medium)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(medium)
    }
    fn discard(&mut self, lba: u64, blocks: u64) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        if !in_range(lba, blocks, self.block_count) {
            return Err(DiskError::OutOfRange);
        }
        const CHUNK: u64 = 64 * 1024;
        let zeros = vec![0u8; CHUNK as usize];
        let mut offset = lba * self.block_size as u64;
        let end = offset + blocks * self.block_size as u64;
        while offset < end {
            let take = (end - offset).min(CHUNK) as usize;
            self.file
                .write_all_at(&zeros[..take], offset)
                .map_err(medium)?;
            offset += take as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(len: usize, fill: u8) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("hvsim-file-disk-{}-{}", std::process::id(), fill));
        std::fs::write(&path, vec![fill; len]).unwrap();
        path
    }

    #[test]
    fn reads_writes_and_discards_whole_blocks_inside_the_file() {
        let path = temp_file(4 * 512 + 100, 0xAA);
        let mut disk = FileDisk::open(&path, false, 512).unwrap();
        assert_eq!(disk.block_count(), 4, "the partial block is not the disk's");
        let mut buf = [0u8; 1024];
        disk.read(1, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0xAA));
        assert_eq!(disk.read(3, &mut buf), Err(DiskError::OutOfRange));
        assert_eq!(disk.read(0, &mut buf[..100]), Err(DiskError::OutOfRange));
        buf.fill(0x55);
        disk.write(2, &buf).unwrap();
        disk.discard(3, 1).unwrap();
        disk.flush().unwrap();
        assert_eq!(disk.discard(3, 2), Err(DiskError::OutOfRange));
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), 4 * 512 + 100, "never grown");
        assert!(bytes[1024..1536].iter().all(|&b| b == 0x55));
        assert!(bytes[1536..2048].iter().all(|&b| b == 0));
        assert!(bytes[2048..].iter().all(|&b| b == 0xAA));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_read_only_disk_refuses_writes() {
        let path = temp_file(1024, 0x11);
        let mut disk = FileDisk::open_spec(&format!("{},ro", path.display())).unwrap();
        assert!(disk.read_only());
        assert_eq!(disk.write(0, &[0; 512]), Err(DiskError::ReadOnly));
        assert_eq!(disk.discard(0, 1), Err(DiskError::ReadOnly));
        assert!(FileDisk::open_spec("/nonexistent/hvsim-disk").is_err());
        let empty = temp_file(100, 0x22);
        assert!(FileDisk::open(&empty, false, 512).is_err());
        std::fs::remove_file(&path).unwrap();
        std::fs::remove_file(&empty).unwrap();
    }
}
