//! The MBR partition table in a disk's first block, so a driver can
//! resolve a grant's `partition = N` (1-4, the primary entries).
//!
//! The disk comes from the host and is hostile: every entry is checked
//! (boot flag, inside the disk, no overlaps, the 0x55AA signature). A GPT
//! disk's protective entry (type 0xEE) is reported as such: the grant of a
//! partition of a GPT disk is refused rather than misread.

/// One primary partition, in the disk's blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partition {
    pub kind: u8,
    pub first_block: u64,
    pub blocks: u64,
    pub bootable: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MbrError {
    /// The block is shorter than 512 bytes.
    TooShort,
    /// No 0x55AA at bytes 510-511: not partitioned.
    NoSignature,
    /// Entry `n` (1-4) has a boot flag other than 0x00 or 0x80.
    BadStatus(u8),
    /// Entry `n` starts at block 0 or reaches past the end of the disk.
    OutsideDisk(u8),
    /// Entries `a` and `b` share blocks.
    Overlap(u8, u8),
    /// A GPT protective MBR: the partitions are in the GPT.
    Gpt,
    /// `partition` asked for a number outside 1-4.
    NoSuchEntry(u8),
    /// The entry asked for is empty.
    Empty(u8),
    /// The entry asked for is an extended-partition container.
    Extended(u8),
}

const TABLE: usize = 446;
const ENTRY: usize = 16;
const GPT_PROTECTIVE: u8 = 0xEE;

/// The four primary entries (`None` for an empty one) of `block0`, on a
/// disk of `disk_blocks` blocks.
pub fn parse(block0: &[u8], disk_blocks: u64) -> Result<[Option<Partition>; 4], MbrError> {
    if block0.len() < 512 {
        return Err(MbrError::TooShort);
    }
    if block0[510] != 0x55 || block0[511] != 0xAA {
        return Err(MbrError::NoSignature);
    }
    let mut entries = [None; 4];
    for (index, slot) in entries.iter_mut().enumerate() {
        let number = index as u8 + 1;
        let raw = &block0[TABLE + index * ENTRY..TABLE + (index + 1) * ENTRY];
        let kind = raw[4];
        let first = u64::from(u32::from_le_bytes([raw[8], raw[9], raw[10], raw[11]]));
        let blocks = u64::from(u32::from_le_bytes([raw[12], raw[13], raw[14], raw[15]]));
        if kind == 0 && first == 0 && blocks == 0 {
            continue;
        }
        if kind == GPT_PROTECTIVE {
            return Err(MbrError::Gpt);
        }
        if raw[0] != 0 && raw[0] != 0x80 {
            return Err(MbrError::BadStatus(number));
        }
        if kind == 0 {
            // Type 0 means unused: one that still names blocks is malformed.
            return Err(MbrError::Empty(number));
        }
        if first == 0 || blocks == 0 || first + blocks > disk_blocks {
            return Err(MbrError::OutsideDisk(number));
        }
        *slot = Some(Partition {
            kind,
            first_block: first,
            blocks,
            bootable: raw[0] == 0x80,
        });
    }
    for a in 0..4 {
        for b in a + 1..4 {
            if let (Some(x), Some(y)) = (entries[a], entries[b]) {
                if x.first_block < y.first_block + y.blocks
                    && y.first_block < x.first_block + x.blocks
                {
                    return Err(MbrError::Overlap(a as u8 + 1, b as u8 + 1));
                }
            }
        }
    }
    Ok(entries)
}

/// Partition `number` (1-4) of `block0`, as a grant may use it.
pub fn partition(block0: &[u8], disk_blocks: u64, number: u8) -> Result<Partition, MbrError> {
    if !(1..=4).contains(&number) {
        return Err(MbrError::NoSuchEntry(number));
    }
    let entry = parse(block0, disk_blocks)?[number as usize - 1].ok_or(MbrError::Empty(number))?;
    if matches!(entry.kind, 0x05 | 0x0F | 0x85) {
        return Err(MbrError::Extended(number));
    }
    Ok(entry)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(entries: &[(u8, u8, u32, u32)]) -> [u8; 512] {
        let mut block = [0u8; 512];
        for (index, &(status, kind, first, blocks)) in entries.iter().enumerate() {
            let at = TABLE + index * ENTRY;
            block[at] = status;
            block[at + 4] = kind;
            block[at + 8..at + 12].copy_from_slice(&first.to_le_bytes());
            block[at + 12..at + 16].copy_from_slice(&blocks.to_le_bytes());
        }
        block[510] = 0x55;
        block[511] = 0xAA;
        block
    }

    #[test]
    fn a_valid_table_resolves_each_partition() {
        let block = table(&[(0x80, 0x0C, 2048, 4096), (0, 0x83, 6144, 2048)]);
        let parts = parse(&block, 8192).unwrap();
        assert_eq!(
            parts[0],
            Some(Partition {
                kind: 0x0C,
                first_block: 2048,
                blocks: 4096,
                bootable: true
            })
        );
        assert_eq!(parts[2], None);
        assert_eq!(partition(&block, 8192, 2).unwrap().first_block, 6144);
        assert_eq!(partition(&block, 8192, 3), Err(MbrError::Empty(3)));
        assert_eq!(partition(&block, 8192, 0), Err(MbrError::NoSuchEntry(0)));
        assert_eq!(partition(&block, 8192, 5), Err(MbrError::NoSuchEntry(5)));
    }

    #[test]
    fn every_malformed_table_is_refused() {
        let good = table(&[(0x80, 0x0C, 2048, 4096)]);
        let mut unsigned = good;
        unsigned[511] = 0;
        assert_eq!(parse(&unsigned, 8192), Err(MbrError::NoSignature));
        assert_eq!(parse(&good[..500], 8192), Err(MbrError::TooShort));
        assert_eq!(
            parse(&good, 6143),
            Err(MbrError::OutsideDisk(1)),
            "one block past the end"
        );
        assert!(parse(&good, 6144).is_ok(), "ends exactly at the end");
        assert_eq!(
            parse(&table(&[(0x80, 0x0C, 0, 10)]), 8192),
            Err(MbrError::OutsideDisk(1))
        );
        assert_eq!(
            parse(&table(&[(0, 0x0C, 10, 0)]), 8192),
            Err(MbrError::OutsideDisk(1))
        );
        assert_eq!(
            parse(&table(&[(0x81, 0x0C, 2048, 10)]), 8192),
            Err(MbrError::BadStatus(1))
        );
        assert_eq!(
            parse(&table(&[(0, 0x0C, 2048, 100), (0, 0x83, 2147, 10)]), 8192),
            Err(MbrError::Overlap(1, 2))
        );
        assert!(parse(&table(&[(0, 0x0C, 2048, 100), (0, 0x83, 2148, 10)]), 8192).is_ok());
        assert_eq!(
            parse(&table(&[(0, 0xEE, 1, 8191)]), 8192),
            Err(MbrError::Gpt)
        );
        assert_eq!(
            parse(&table(&[(0, 0, 1, 10)]), 8192),
            Err(MbrError::Empty(1))
        );
        assert_eq!(
            partition(&table(&[(0, 0x0F, 1, 10)]), 8192, 1),
            Err(MbrError::Extended(1))
        );
        // u32::MAX start and length must not overflow.
        assert_eq!(
            parse(&table(&[(0, 0x0C, u32::MAX, u32::MAX)]), u64::MAX),
            Ok([
                Some(Partition {
                    kind: 0x0C,
                    first_block: u64::from(u32::MAX),
                    blocks: u64::from(u32::MAX),
                    bootable: false
                }),
                None,
                None,
                None
            ])
        );
    }
}
