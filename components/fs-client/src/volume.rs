//! The checks a disk passes before the FAT library sees it.
//!
//! The disk comes from the host and may be anything. embedded-sdmmc
//! computes with the boot sector's fields without checking them (a total
//! smaller than the metadata underflows, zero blocks per cluster divides
//! by zero), so the boot sector is checked here first, strictly enough
//! that the library's arithmetic stays in range: a disk that fails is
//! refused with a message instead of panicking the component.
//!
//! The library also trusts the cluster numbers in the FATs and in
//! directory entries (cluster 0 or 1 underflows its block arithmetic). So
//! the blocks it reads of the FATs and of a FAT16 root directory are
//! shown to it sanitized ([`sanitize`]): a FAT entry naming no cluster of
//! the volume ends its chain there, a directory entry whose first cluster
//! is not one of the volume reads as deleted. If the library writes such
//! a block back, the disk is repaired that way.

/// Why a volume is refused.
pub type Refusal = &'static str;

fn u16_at(block: &[u8; 512], at: usize) -> u32 {
    u32::from(u16::from_le_bytes([block[at], block[at + 1]]))
}

fn u32_at(block: &[u8; 512], at: usize) -> u32 {
    u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]])
}

/// Where a checked volume keeps what [`sanitize`] looks at, in blocks
/// from the volume's boot sector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub fat_start: u64,
    /// All FAT copies.
    pub fat_blocks: u64,
    /// 2 (FAT16) or 4 (FAT32).
    pub entry_bytes: u64,
    pub clusters: u64,
    /// FAT16's fixed root directory (none for FAT32).
    pub root_start: u64,
    pub root_blocks: u64,
}

/// The FAT16 or FAT32 boot sector `block` of a volume of `volume_blocks`
/// blocks, checked; its geometry.
pub fn check_boot_sector(block: &[u8; 512], volume_blocks: u64) -> Result<Geometry, Refusal> {
    if block[510] != 0x55 || block[511] != 0xAA {
        return Err("no boot-sector signature");
    }
    if u16_at(block, 11) != 512 {
        return Err("sectors are not 512 bytes");
    }
    let per_cluster = block[13];
    if !per_cluster.is_power_of_two() {
        return Err("blocks per cluster not a power of two");
    }
    let reserved = u64::from(u16_at(block, 14));
    if reserved == 0 {
        return Err("no reserved blocks");
    }
    let fats = u64::from(block[16]);
    if !(1..=2).contains(&fats) {
        return Err("not one or two FATs");
    }
    let root_entries = u64::from(u16_at(block, 17));
    let fat32 = u16_at(block, 22) == 0;
    let fat_size = u64::from(if fat32 {
        u32_at(block, 36)
    } else {
        u16_at(block, 22)
    });
    let total = u64::from(match u16_at(block, 19) {
        0 => u32_at(block, 32),
        n => n,
    });
    if fat_size == 0 || total == 0 {
        return Err("an empty FAT or volume");
    }
    if total > volume_blocks {
        return Err("the volume is larger than the disk under it");
    }
    let root_blocks = (root_entries * 32).div_ceil(512);
    let metadata = reserved + fats * fat_size + root_blocks;
    if metadata >= total {
        return Err("the metadata fills the volume");
    }
    let clusters = (total - metadata) / u64::from(per_cluster);
    if clusters < 4085 {
        return Err("FAT12 (fewer than 4085 clusters) is not supported");
    }
    // The library chooses FAT16 or FAT32 by the cluster count.
    let entry_bytes = if clusters < 65525 { 2 } else { 4 };
    if fat_size * 512 / entry_bytes < clusters + 2 {
        return Err("the FAT is too small for the clusters");
    }
    if entry_bytes == 4 {
        let root = u64::from(u32_at(block, 44));
        if !(2..clusters + 2).contains(&root) {
            return Err("the root directory cluster is outside the volume");
        }
        if u64::from(u16_at(block, 48)) >= reserved {
            return Err("the FS information block is outside the reserved blocks");
        }
        if u16_at(block, 42) != 0 {
            return Err("a FAT32 version other than 0.0");
        }
    } else if root_entries == 0 {
        return Err("a FAT16 volume without root directory entries");
    }
    Ok(Geometry {
        fat_start: reserved,
        fat_blocks: fats * fat_size,
        entry_bytes,
        clusters,
        root_start: reserved + fats * fat_size,
        root_blocks: if entry_bytes == 2 { root_blocks } else { 0 },
    })
}

/// Make block `at` (in blocks from the boot sector) safe for the library
/// to interpret, if it is a FAT block or a FAT16 root-directory block.
pub fn sanitize(geometry: &Geometry, at: u64, block: &mut [u8; 512]) {
    let last_cluster = geometry.clusters + 1;
    if (geometry.fat_start..geometry.fat_start + geometry.fat_blocks).contains(&at) {
        if geometry.entry_bytes == 2 {
            for entry in block.chunks_exact_mut(2) {
                let value = u64::from(u16::from_le_bytes([entry[0], entry[1]]));
                if value == 1 || (value > last_cluster && value < 0xFFF7) {
                    entry.copy_from_slice(&0xFFFFu16.to_le_bytes());
                }
            }
        } else {
            for entry in block.chunks_exact_mut(4) {
                let raw = u32::from_le_bytes([entry[0], entry[1], entry[2], entry[3]]);
                let value = u64::from(raw & 0x0FFF_FFFF);
                if value == 1 || (value > last_cluster && value < 0x0FFF_FFF7) {
                    let end = (raw & 0xF000_0000) | 0x0FFF_FFFF;
                    entry.copy_from_slice(&end.to_le_bytes());
                }
            }
        }
    }
    if (geometry.root_start..geometry.root_start + geometry.root_blocks).contains(&at) {
        for entry in block.chunks_exact_mut(32) {
            if entry[0] == 0x00 || entry[0] == 0xE5 {
                continue;
            }
            let attributes = entry[11];
            if attributes == 0x0F || attributes & 0x08 != 0 {
                continue; // a long-name part or the volume label
            }
            let cluster = u64::from(u16::from_le_bytes([entry[26], entry[27]]));
            let size = u32::from_le_bytes([entry[28], entry[29], entry[30], entry[31]]);
            let directory = attributes & 0x10 != 0;
            let bad =
                cluster == 1 || cluster > last_cluster || (cluster == 0 && (size > 0 || directory));
            if bad {
                entry[0] = 0xE5;
            }
        }
    }
}

/// `NAME.EXT` as a directory entry spells it (`NAME    EXT`), or `None`
/// if it is no 8.3 name.
pub fn short_name(name: &str) -> Option<[u8; 11]> {
    let (base, extension) = name.split_once('.').unwrap_or((name, ""));
    if base.is_empty() || base.len() > 8 || extension.len() > 3 {
        return None;
    }
    let mut out = [b' '; 11];
    out[..base.len()].copy_from_slice(base.as_bytes());
    out[8..8 + extension.len()].copy_from_slice(extension.as_bytes());
    out.make_ascii_uppercase();
    Some(out)
}

/// Whether the cluster chain of root-directory file `name` on a FAT16
/// volume is sound (every link a cluster of the volume, ending in an
/// end-of-chain mark, no longer than the volume): the library follows a
/// link to a free entry (0) into cluster 0 and panics. `read(at)` gives
/// the volume's block `at` as the library sees it. `Ok(None)`: sound (or
/// not there, or FAT32, which this does not cover); `Ok(Some(why))`:
/// refuse the disk.
pub fn chain_problem<E>(
    geometry: &Geometry,
    name: &str,
    mut read: impl FnMut(u64) -> Result<[u8; 512], E>,
) -> Result<Option<Refusal>, E> {
    if geometry.entry_bytes != 2 {
        return Ok(None);
    }
    let Some(wanted) = short_name(name) else {
        return Ok(None);
    };
    let mut first = None;
    'blocks: for at in geometry.root_start..geometry.root_start + geometry.root_blocks {
        let block = read(at)?;
        for entry in block.chunks_exact(32) {
            if entry[0] == 0 {
                break 'blocks;
            }
            let attributes = entry[11];
            if entry[0] == 0xE5 || attributes == 0x0F || attributes & 0x08 != 0 {
                continue;
            }
            if entry[..11] == wanted {
                first = Some(u64::from(u16::from_le_bytes([entry[26], entry[27]])));
                break 'blocks;
            }
        }
    }
    let Some(mut cluster) = first else {
        return Ok(None);
    };
    if cluster == 0 {
        return Ok(None); // an empty file: no chain
    }
    let last = geometry.clusters + 1;
    // Bounded: a chain longer than the volume has a loop.
    for _ in 0..=geometry.clusters {
        if !(2..=last).contains(&cluster) {
            return Ok(Some("a file's cluster chain leaves the volume"));
        }
        let offset = cluster * 2;
        let block = read(geometry.fat_start + offset / 512)?;
        let at = (offset % 512) as usize;
        let next = u64::from(u16::from_le_bytes([block[at], block[at + 1]]));
        if next >= 0xFFF8 {
            return Ok(None);
        }
        cluster = next;
    }
    Ok(Some("a file's cluster chain loops"))
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    /// The boot sector mkfs.fat writes for a 16 MiB FAT16 volume.
    fn fat16() -> [u8; 512] {
        let mut block = [0u8; 512];
        block[0] = 0xEB;
        block[2] = 0x90;
        block[11..13].copy_from_slice(&512u16.to_le_bytes());
        block[13] = 4;
        block[14..16].copy_from_slice(&4u16.to_le_bytes());
        block[16] = 2;
        block[17..19].copy_from_slice(&512u16.to_le_bytes());
        block[19..21].copy_from_slice(&32768u16.to_le_bytes());
        block[22..24].copy_from_slice(&32u16.to_le_bytes());
        block[510] = 0x55;
        block[511] = 0xAA;
        block
    }

    #[test]
    fn a_sane_volume_passes_and_each_bad_field_is_refused() {
        let geometry = check_boot_sector(&fat16(), 32768).unwrap();
        assert_eq!((geometry.fat_start, geometry.fat_blocks), (4, 64));
        assert_eq!((geometry.root_start, geometry.root_blocks), (68, 32));
        assert_eq!((geometry.clusters, geometry.entry_bytes), (8167, 2));
        assert!(
            check_boot_sector(&fat16(), 32767).is_err(),
            "beyond the disk"
        );
        let cases: [(usize, &[u8]); 9] = [
            (510, &[0]),      // signature
            (11, &[0, 4]),    // 1024-byte sectors
            (13, &[0]),       // zero blocks per cluster
            (13, &[3]),       // not a power of two
            (14, &[0, 0]),    // no reserved blocks
            (16, &[3]),       // three FATs
            (19, &[0x10, 0]), // total smaller than the metadata
            (22, &[1, 0]),    // FAT too small
            (17, &[0, 0]),    // no root directory
        ];
        for (at, bytes) in cases {
            let mut block = fat16();
            block[at..at + bytes.len()].copy_from_slice(bytes);
            assert!(check_boot_sector(&block, 32768).is_err(), "{at}: {bytes:?}");
        }
    }

    #[test]
    fn a_chain_through_a_free_entry_or_a_loop_is_found() {
        let geometry = check_boot_sector(&fat16(), 32768).unwrap();
        assert_eq!(short_name("hello.txt"), Some(*b"HELLO   TXT"));
        assert_eq!(short_name("TOOLONGNAME.TXT"), None);
        let disk = |links: &'static [(usize, u16)]| {
            move |at: u64| -> Result<[u8; 512], ()> {
                let mut block = [0u8; 512];
                if at == 68 {
                    block[..11].copy_from_slice(b"HELLO   TXT");
                    block[11] = 0x20;
                    block[26..28].copy_from_slice(&3u16.to_le_bytes());
                }
                if at == 4 {
                    for (cluster, next) in links {
                        block[cluster * 2..cluster * 2 + 2].copy_from_slice(&next.to_le_bytes());
                    }
                }
                Ok(block)
            }
        };
        let sound = chain_problem(&geometry, "HELLO.TXT", disk(&[(3, 4), (4, 0xFFFF)]));
        assert_eq!(sound, Ok(None));
        let free = chain_problem(&geometry, "HELLO.TXT", disk(&[(3, 4), (4, 0)]));
        assert!(matches!(free, Ok(Some(_))), "a link to a free entry");
        let looped = chain_problem(&geometry, "HELLO.TXT", disk(&[(3, 4), (4, 3)]));
        assert!(matches!(looped, Ok(Some(_))), "a loop");
        assert_eq!(chain_problem(&geometry, "OTHER.TXT", disk(&[])), Ok(None));
    }

    #[test]
    fn chains_and_entries_naming_no_cluster_of_the_volume_are_cut() {
        let geometry = check_boot_sector(&fat16(), 32768).unwrap();
        let mut fat = [0u8; 512];
        let values: [u16; 6] = [0, 1, 5, 8168, 8169, 0xFFF8];
        for (i, v) in values.iter().enumerate() {
            fat[i * 2..i * 2 + 2].copy_from_slice(&v.to_le_bytes());
        }
        let before = fat;
        sanitize(&geometry, 3, &mut fat);
        assert_eq!(fat, before, "a reserved block is not a FAT block");
        sanitize(&geometry, 4, &mut fat);
        let got: std::vec::Vec<u16> = fat[..12]
            .chunks(2)
            .map(|e| u16::from_le_bytes([e[0], e[1]]))
            .collect();
        assert_eq!(got, [0, 0xFFFF, 5, 8168, 0xFFFF, 0xFFF8]);

        let mut root = [0u8; 512];
        let entry = |root: &mut [u8; 512], i: usize, cluster: u16, size: u32, attributes: u8| {
            let e = &mut root[i * 32..i * 32 + 32];
            e[0] = b'A';
            e[11] = attributes;
            e[26..28].copy_from_slice(&cluster.to_le_bytes());
            e[28..32].copy_from_slice(&size.to_le_bytes());
        };
        entry(&mut root, 0, 3, 10, 0x20); // fine
        entry(&mut root, 1, 1, 10, 0x20); // cluster 1
        entry(&mut root, 2, 9000, 10, 0x20); // beyond the volume
        entry(&mut root, 3, 0, 0, 0x20); // an empty file: fine
        entry(&mut root, 4, 0, 10, 0x20); // data but no cluster
        entry(&mut root, 5, 0, 0, 0x10); // a directory without a cluster
        entry(&mut root, 6, 9000, 0, 0x08); // the volume label: not a file
        sanitize(&geometry, 68, &mut root);
        let deleted: std::vec::Vec<bool> = (0..7).map(|i| root[i * 32] == 0xE5).collect();
        assert_eq!(deleted, [false, true, true, false, true, true, false]);
    }
}
