//! The block cache in the data region, and the block device the FAT
//! library reads through it.
//!
//! The FAT library (embedded-sdmmc) asks for blocks synchronously, but a
//! component never blocks: it runs to completion on each notification. So
//! each filesystem step is an *attempt* that runs against the cache only;
//! a block not in it fails the attempt with [`DiskError::Miss`], the
//! component reads that block (and the ones after it) from the driver and
//! runs the attempt again from the start once they are in. An attempt's
//! writes are kept apart (`Pending`) until it succeeds: a failed attempt's
//! writes are dropped, so replaying a step never applies its writes twice.
//! The cached blocks live in the data region itself (the driver's host
//! reads them into it), so the cache costs no private memory beyond its
//! index.

use component_api::Region;
use core::cell::{Cell, RefCell};
use embedded_sdmmc::{Block, BlockCount, BlockDevice, BlockIdx};
use heapless::Vec;

pub const BLOCK: usize = 512;
/// Blocks read after a missed one in the same request (FAT reads the
/// blocks of a directory or a file in order).
pub const READ_AHEAD: u32 = 32;
/// Blocks the cache indexes (at most this many of the data region's).
pub const CACHE_ENTRIES: usize = 512;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskError {
    /// The block (of the grant) is not in the cache: read it, try again.
    Miss(u64),
    /// The cache has no room for another block.
    CacheFull,
    /// A block beyond the device.
    Outside(u64),
    /// A write to the stand-in partition table.
    TableWrite,
}

impl core::fmt::Display for DiskError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            DiskError::Miss(block) => write!(f, "block {block} not read yet"),
            DiskError::CacheFull => write!(f, "the block cache is full"),
            DiskError::Outside(block) => write!(f, "block {block} is beyond the device"),
            DiskError::TableWrite => write!(f, "a write to the partition table"),
        }
    }
}

impl core::error::Error for DiskError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// As on the disk.
    Clean,
    /// Written by a finished step, not yet on the disk.
    Dirty,
    /// Written by the running attempt.
    Pending,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    block: u64,
    slot: u32,
    kind: Kind,
}

/// A read to issue: `count` blocks from `block` into `slot` onwards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Load {
    pub block: u64,
    pub count: u32,
    pub slot: u32,
}

pub struct Cache {
    data: Region,
    entries: Vec<Entry, CACHE_ENTRIES>,
    /// Slots (blocks of the data region) are handed out in order and
    /// reclaimed all at once by [`Cache::clear`].
    next_slot: u32,
    slots: u32,
    capacity: u64,
    /// The first block missed since [`Cache::take_miss`]: the FAT library
    /// turns some device errors into others (a miss while searching a
    /// directory reads as "not found"), so the attempt asks the cache.
    missed: Cell<Option<u64>>,
}

impl Cache {
    pub fn new(data: Region, capacity: u64) -> Cache {
        Cache {
            data,
            entries: Vec::new(),
            next_slot: 0,
            slots: (data.len() / BLOCK).min(u32::MAX as usize) as u32,
            capacity,
            missed: Cell::new(None),
        }
    }

    pub fn offset(slot: u32) -> u64 {
        u64::from(slot) * BLOCK as u64
    }

    fn find(&self, block: u64) -> Option<&Entry> {
        let best = |kind| {
            self.entries
                .iter()
                .find(move |e| e.block == block && e.kind == kind)
        };
        best(Kind::Pending)
            .or_else(|| best(Kind::Dirty))
            .or_else(|| best(Kind::Clean))
    }

    pub fn contains(&self, block: u64) -> bool {
        self.find(block).is_some()
    }

    pub fn read(&self, block: u64, out: &mut [u8; BLOCK]) -> Result<(), DiskError> {
        if block >= self.capacity {
            return Err(DiskError::Outside(block));
        }
        let Some(entry) = self.find(block) else {
            if self.missed.get().is_none() {
                self.missed.set(Some(block));
            }
            return Err(DiskError::Miss(block));
        };
        self.data
            .read(Cache::offset(entry.slot) as usize, out)
            .map_err(|_| DiskError::CacheFull)
    }

    /// The first block an attempt missed, whatever the library made of it.
    pub fn take_miss(&self) -> Option<u64> {
        self.missed.take()
    }

    fn allocate(&mut self, count: u32) -> Option<u32> {
        let slot = self.next_slot;
        if self.slots - slot < count {
            return None;
        }
        self.next_slot += count;
        Some(slot)
    }

    /// Keep `data` as the running attempt's version of `block`.
    pub fn write(&mut self, block: u64, data: &[u8; BLOCK]) -> Result<(), DiskError> {
        if block >= self.capacity {
            return Err(DiskError::Outside(block));
        }
        let slot = match self
            .entries
            .iter()
            .find(|e| e.block == block && e.kind == Kind::Pending)
        {
            Some(entry) => entry.slot,
            None => {
                if self.entries.is_full() {
                    return Err(DiskError::CacheFull);
                }
                let slot = self.allocate(1).ok_or(DiskError::CacheFull)?;
                let _ = self.entries.push(Entry {
                    block,
                    slot,
                    kind: Kind::Pending,
                });
                slot
            }
        };
        self.data
            .write(Cache::offset(slot) as usize, data)
            .map_err(|_| DiskError::CacheFull)
    }

    /// The attempt succeeded: its writes replace what they overwrite.
    pub fn commit(&mut self) {
        // In place: no second index on the (small) stack.
        let mut index = 0;
        while index < self.entries.len() {
            let entry = self.entries[index];
            let replaced = entry.kind != Kind::Pending
                && self
                    .entries
                    .iter()
                    .any(|e| e.kind == Kind::Pending && e.block == entry.block);
            if replaced {
                self.entries.swap_remove(index);
            } else {
                index += 1;
            }
        }
        for entry in self.entries.iter_mut() {
            if entry.kind == Kind::Pending {
                entry.kind = Kind::Dirty;
            }
        }
    }

    /// The attempt failed: forget its writes (it runs again from the start).
    pub fn abort(&mut self) {
        self.entries.retain(|e| e.kind != Kind::Pending);
    }

    /// The read to issue for a missed `block`: it and the uncached blocks
    /// after it, up to [`READ_AHEAD`], in fresh slots. `None`: no room (see
    /// [`Cache::clear`]).
    pub fn plan_load(&mut self, block: u64) -> Option<Load> {
        if block >= self.capacity || self.entries.is_full() {
            return None;
        }
        let room = (CACHE_ENTRIES - self.entries.len()) as u64;
        let mut count = 0u32;
        while u64::from(count) < room.min(u64::from(READ_AHEAD))
            && block.saturating_add(u64::from(count)) < self.capacity
            && !self.contains(block.saturating_add(u64::from(count)))
        {
            count += 1;
        }
        let count = count.min(self.slots - self.next_slot);
        if count == 0 {
            return None;
        }
        let slot = self.allocate(count)?;
        Some(Load { block, count, slot })
    }

    /// A planned read arrived.
    pub fn loaded(&mut self, load: Load) {
        for i in 0..load.count {
            let block = load.block + u64::from(i);
            if self.contains(block) || self.entries.is_full() {
                continue;
            }
            let _ = self.entries.push(Entry {
                block,
                slot: load.slot + i,
                kind: Kind::Clean,
            });
        }
    }

    /// Blocks written by finished steps and not yet on the disk, with the
    /// slots holding them.
    pub fn dirty(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Dirty)
            .map(|e| (e.block, e.slot))
    }

    /// `block` (in `slot`) is on the disk now.
    pub fn cleaned(&mut self, block: u64, slot: u32) {
        for entry in self.entries.iter_mut() {
            if entry.block == block && entry.slot == slot && entry.kind == Kind::Dirty {
                entry.kind = Kind::Clean;
            }
        }
    }

    /// Forget every block (all must be on the disk), reclaiming every
    /// slot. Returns `false` (and keeps everything) if some are not.
    pub fn clear(&mut self) -> bool {
        if self.entries.iter().any(|e| e.kind != Kind::Clean) {
            return false;
        }
        self.entries.clear();
        self.next_slot = 0;
        true
    }
}

/// How the FAT library's block numbers map onto the grant. The library
/// wants a partition table in block 0; a grant of a partition (or a disk
/// formatted without a table) starts with the FAT boot sector instead, so
/// a one-entry table is made up in block 0 and the grant follows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub stand_in_table: bool,
    pub capacity: u64,
    /// Once checked: the grant block of the volume's boot sector and its
    /// geometry (the blocks the library reads are sanitized by it).
    pub volume: Option<(u64, crate::volume::Geometry)>,
}

impl Layout {
    /// Decide from the grant's first block.
    pub fn from_first_block(block0: &[u8; BLOCK], capacity: u64) -> Layout {
        Layout {
            stand_in_table: looks_like_fat_boot_sector(block0),
            capacity,
            volume: None,
        }
    }

    fn grant_block(&self, block: u64) -> Option<u64> {
        if self.stand_in_table {
            block.checked_sub(1)
        } else {
            Some(block)
        }
    }

    fn blocks(&self) -> u64 {
        // The capacity comes from the driver: no overflow on a huge one.
        self.capacity.saturating_add(u64::from(self.stand_in_table))
    }

    fn table(&self) -> [u8; BLOCK] {
        let mut block = [0u8; BLOCK];
        let entry = &mut block[446..462];
        // FAT32 (LBA): the library takes the FAT kind from the boot sector.
        entry[4] = 0x0C;
        entry[8..12].copy_from_slice(&1u32.to_le_bytes());
        let sectors = u32::try_from(self.capacity).unwrap_or(u32::MAX);
        entry[12..16].copy_from_slice(&sectors.to_le_bytes());
        block[510] = 0x55;
        block[511] = 0xAA;
        block
    }
}

/// A FAT boot sector (not a partition table): a jump, a power-of-two
/// sector size, one or two FATs, and the file-system type text mkfs
/// writes (GRUB's MBR also starts with a jump, so the jump alone is not
/// enough).
pub fn looks_like_fat_boot_sector(block: &[u8; BLOCK]) -> bool {
    let jump = (block[0] == 0xEB && block[2] == 0x90) || block[0] == 0xE9;
    let sector = u16::from_le_bytes([block[11], block[12]]);
    let per_cluster = block[13];
    let fats = block[16];
    let text = &block[54..57] == b"FAT" || &block[82..87] == b"FAT32";
    jump && matches!(sector, 512 | 1024 | 2048 | 4096)
        && per_cluster.is_power_of_two()
        && matches!(fats, 1 | 2)
        && text
        && block[510] == 0x55
        && block[511] == 0xAA
}

/// The block device the FAT library sees for one attempt.
pub struct Disk<'a> {
    pub cache: &'a RefCell<Cache>,
    pub layout: Layout,
}

impl BlockDevice for Disk<'_> {
    type Error = DiskError;

    fn read(&self, blocks: &mut [Block], start: BlockIdx) -> Result<(), DiskError> {
        let cache = self.cache.borrow();
        for (i, block) in blocks.iter_mut().enumerate() {
            let at = u64::from(start.0) + i as u64;
            match self.layout.grant_block(at) {
                None => block.contents = self.layout.table(),
                Some(grant) => {
                    cache.read(grant, &mut block.contents)?;
                    if let Some((start, geometry)) = &self.layout.volume {
                        if let Some(at) = grant.checked_sub(*start) {
                            crate::volume::sanitize(geometry, at, &mut block.contents);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn write(&self, blocks: &[Block], start: BlockIdx) -> Result<(), DiskError> {
        let mut cache = self.cache.borrow_mut();
        for (i, block) in blocks.iter().enumerate() {
            let at = u64::from(start.0) + i as u64;
            let grant = self.layout.grant_block(at).ok_or(DiskError::TableWrite)?;
            cache.write(grant, &block.contents)?;
        }
        Ok(())
    }

    fn num_blocks(&self) -> Result<BlockCount, DiskError> {
        Ok(BlockCount(
            u32::try_from(self.layout.blocks()).unwrap_or(u32::MAX),
        ))
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;

    fn cache(blocks: u64) -> Cache {
        Cache::new(Region::leaked(64 * BLOCK), blocks)
    }

    #[test]
    fn a_miss_plans_a_read_ahead_that_stops_at_cached_blocks_and_the_end() {
        let mut cache = cache(100);
        let mut out = [0u8; BLOCK];
        assert_eq!(cache.read(10, &mut out), Err(DiskError::Miss(10)));
        assert_eq!(cache.read(11, &mut out), Err(DiskError::Miss(11)));
        assert_eq!(cache.take_miss(), Some(10), "the first miss");
        assert_eq!(cache.take_miss(), None);
        let load = cache.plan_load(10).unwrap();
        assert_eq!(
            load,
            Load {
                block: 10,
                count: 32,
                slot: 0
            }
        );
        cache.loaded(load);
        assert!(cache.read(41, &mut out).is_ok());
        assert_eq!(cache.plan_load(5).unwrap().count, 5, "stops at block 10");
        assert_eq!(cache.plan_load(98).unwrap().count, 2, "stops at the end");
        assert_eq!(cache.read(100, &mut out), Err(DiskError::Outside(100)));
        // 64 slots: 32 + 5 + 2 used, 25 left.
        assert_eq!(cache.plan_load(60).unwrap().count, 25);
        assert_eq!(cache.plan_load(90), None, "no slots left");
        assert!(cache.clear());
        assert_eq!(cache.plan_load(90).unwrap().slot, 0);
    }

    #[test]
    fn a_failed_attempts_writes_vanish_and_a_finished_ones_become_dirty() {
        let mut cache = cache(100);
        cache.loaded(Load {
            block: 0,
            count: 4,
            slot: 0,
        });
        cache.next_slot = 4;
        let mut out = [0u8; BLOCK];
        cache.write(1, &[7; BLOCK]).unwrap();
        cache.read(1, &mut out).unwrap();
        assert_eq!(out[0], 7, "the attempt sees its own write");
        cache.abort();
        cache.read(1, &mut out).unwrap();
        assert_eq!(out[0], 0, "dropped");
        cache.write(2, &[9; BLOCK]).unwrap();
        cache.write(2, &[8; BLOCK]).unwrap();
        cache.commit();
        let dirty: std::vec::Vec<_> = cache.dirty().collect();
        assert_eq!(dirty.len(), 1);
        assert!(!cache.clear(), "a dirty block is not forgotten");
        cache.read(2, &mut out).unwrap();
        assert_eq!(out[0], 8);
        cache.cleaned(dirty[0].0, dirty[0].1);
        assert_eq!(cache.dirty().count(), 0);
        assert!(cache.clear());
    }

    #[test]
    fn a_partition_gets_a_stand_in_table_and_a_partitioned_disk_does_not() {
        let mut boot = [0u8; BLOCK];
        boot[0] = 0xEB;
        boot[2] = 0x90;
        boot[11..13].copy_from_slice(&512u16.to_le_bytes());
        boot[13] = 4;
        boot[16] = 2;
        boot[54..57].copy_from_slice(b"FAT");
        boot[510] = 0x55;
        boot[511] = 0xAA;
        let layout = Layout::from_first_block(&boot, 1000);
        assert!(layout.stand_in_table);
        assert_eq!(layout.grant_block(0), None);
        assert_eq!(layout.grant_block(1), Some(0));
        assert_eq!(layout.blocks(), 1001);
        let huge = Layout::from_first_block(&boot, u64::MAX);
        assert_eq!(
            huge.blocks(),
            u64::MAX,
            "a driver's huge capacity saturates"
        );
        let table = layout.table();
        assert_eq!(
            block_queue::mbr::partition(&table, 1001, 1).unwrap().blocks,
            1000
        );
        let mut mbr = boot;
        mbr[54..57].copy_from_slice(b"XYZ");
        assert!(!Layout::from_first_block(&mbr, 1000).stand_in_table);
    }
}
