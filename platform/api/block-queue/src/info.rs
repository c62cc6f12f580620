//! The device-information page: written by the driver, read by the client.
//!
//! Layout (offsets in the page, native byte order): `magic` u32 at 0,
//! `version` u32 at 4, `generation` u32 at 8, `ready` u32 at 12,
//! `read_only` u32 at 16, `block_size` u32 at 20, `capacity` u64 at 24,
//! `queue_depth` u32 at 32, `max_transfer` u32 at 36 (blocks per request),
//! `ident_len` u32 at 40, `features` u32 at 44 (bit 0: the disk takes
//! DISCARD), `ident` bytes at 48..112.
//!
//! The driver clears `ready`, writes the fields, bumps `generation`, then
//! sets `ready` (release); the client reads `generation`, the fields, and
//! `generation` again, and takes the copy only if both agree and `ready`
//! was set (a seqlock, so it never sees a half-written page as valid).

use component_api::Region;
use core::sync::atomic::Ordering;

pub const MAGIC: u32 = u32::from_le_bytes(*b"BLKi");
pub const VERSION: u32 = 1;
pub const IDENT_MAX: usize = 64;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 4;
const GENERATION_AT: usize = 8;
const READY_AT: usize = 12;
const READ_ONLY_AT: usize = 16;
const BLOCK_SIZE_AT: usize = 20;
const CAPACITY_AT: usize = 24;
const QUEUE_DEPTH_AT: usize = 32;
const MAX_TRANSFER_AT: usize = 36;
const IDENT_LEN_AT: usize = 40;
/// Was reserved (zero) in the first layout, so a page from a driver that
/// predates it reads as "no features", and clients that predate it ignore it.
const FEATURES_AT: usize = 44;
/// `features` bit: DISCARD requests reach the disk (it supports UNMAP).
pub const FEATURE_DISCARD: u32 = 1;
const IDENT_AT: usize = 48;
pub(crate) const INFO_USED: usize = IDENT_AT + IDENT_MAX;

/// What the driver tells the client about the device behind its grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub read_only: bool,
    /// Bytes per block (a power of two, 512..=65536).
    pub block_size: u32,
    /// Blocks in the grant (the partition, or the whole disk).
    pub capacity: u64,
    /// Requests the client may have in the queues at once.
    pub queue_depth: u32,
    /// The most blocks one READ or WRITE may move.
    pub max_transfer: u32,
    /// Bumped each time the driver starts serving.
    pub generation: u32,
    /// DISCARD requests reach the disk; without, they are answered
    /// NOT_SUPPORTED.
    pub discard: bool,
    ident: [u8; IDENT_MAX],
    ident_len: u8,
}

impl DeviceInfo {
    pub fn new(
        read_only: bool,
        block_size: u32,
        capacity: u64,
        queue_depth: u32,
        max_transfer: u32,
        ident: &str,
    ) -> DeviceInfo {
        let mut bytes = [0u8; IDENT_MAX];
        // Cut at a character boundary so the ident stays valid UTF-8.
        let mut len = ident.len().min(IDENT_MAX);
        while !ident.is_char_boundary(len) {
            len -= 1;
        }
        bytes[..len].copy_from_slice(&ident.as_bytes()[..len]);
        DeviceInfo {
            read_only,
            block_size,
            capacity,
            queue_depth,
            max_transfer,
            generation: 0,
            discard: false,
            ident: bytes,
            ident_len: len as u8,
        }
    }

    /// The device's serial number or other identification (UTF-8, or
    /// empty if the driver wrote something else).
    pub fn ident(&self) -> &str {
        core::str::from_utf8(&self.ident[..self.ident_len as usize]).unwrap_or("")
    }

    fn plausible(&self) -> bool {
        self.block_size.is_power_of_two()
            && (512..=65536).contains(&self.block_size)
            && self.queue_depth > 0
            && self.max_transfer > 0
    }
}

fn read_u32(page: &Region, at: usize) -> Option<u32> {
    let mut bytes = [0u8; 4];
    page.read(at, &mut bytes).ok()?;
    Some(u32::from_ne_bytes(bytes))
}

fn read_u64(page: &Region, at: usize) -> Option<u64> {
    let mut bytes = [0u8; 8];
    page.read(at, &mut bytes).ok()?;
    Some(u64::from_ne_bytes(bytes))
}

/// The client's view: a consistent, validated copy, or `None` while the
/// driver is not serving (or writes nonsense).
pub(crate) fn read(page: &Region) -> Option<DeviceInfo> {
    let generation = page.atomic_u32(GENERATION_AT).ok()?;
    let ready = page.atomic_u32(READY_AT).ok()?;
    let before = generation.load(Ordering::Acquire);
    if ready.load(Ordering::Acquire) == 0 {
        return None;
    }
    if read_u32(page, MAGIC_AT)? != MAGIC || read_u32(page, VERSION_AT)? != VERSION {
        return None;
    }
    let mut info = DeviceInfo {
        read_only: read_u32(page, READ_ONLY_AT)? != 0,
        block_size: read_u32(page, BLOCK_SIZE_AT)?,
        capacity: read_u64(page, CAPACITY_AT)?,
        queue_depth: read_u32(page, QUEUE_DEPTH_AT)?,
        max_transfer: read_u32(page, MAX_TRANSFER_AT)?,
        generation: before,
        discard: read_u32(page, FEATURES_AT)? & FEATURE_DISCARD != 0,
        ident: [0; IDENT_MAX],
        ident_len: 0,
    };
    let ident_len = (read_u32(page, IDENT_LEN_AT)? as usize).min(IDENT_MAX);
    page.read(IDENT_AT, &mut info.ident[..ident_len]).ok()?;
    info.ident_len = ident_len as u8;
    core::sync::atomic::fence(Ordering::Acquire);
    if generation.load(Ordering::Acquire) != before || ready.load(Ordering::Acquire) == 0 {
        return None;
    }
    info.plausible().then_some(info)
}

/// The generation being served, if the page says ready: the client's
/// cheap check that its copy is still current.
pub(crate) fn served_generation(page: &Region) -> Option<u32> {
    let ready = page.atomic_u32(READY_AT).ok()?.load(Ordering::Acquire);
    let generation = page.atomic_u32(GENERATION_AT).ok()?.load(Ordering::Acquire);
    (ready != 0).then_some(generation)
}

/// The driver's side: stop advertising (requests get NOT_READY meanwhile).
pub(crate) fn withdraw(page: &Region) -> Option<()> {
    page.atomic_u32(READY_AT).ok()?.store(0, Ordering::SeqCst);
    Some(())
}

/// The driver's side: publish `info` under the next generation; returns
/// that generation.
pub(crate) fn publish(page: &Region, info: &DeviceInfo) -> Option<u32> {
    withdraw(page)?;
    let generation = page.atomic_u32(GENERATION_AT).ok()?;
    page.write(MAGIC_AT, &MAGIC.to_ne_bytes()).ok()?;
    page.write(VERSION_AT, &VERSION.to_ne_bytes()).ok()?;
    page.write(READ_ONLY_AT, &u32::from(info.read_only).to_ne_bytes())
        .ok()?;
    page.write(BLOCK_SIZE_AT, &info.block_size.to_ne_bytes())
        .ok()?;
    page.write(CAPACITY_AT, &info.capacity.to_ne_bytes()).ok()?;
    page.write(QUEUE_DEPTH_AT, &info.queue_depth.to_ne_bytes())
        .ok()?;
    page.write(MAX_TRANSFER_AT, &info.max_transfer.to_ne_bytes())
        .ok()?;
    page.write(IDENT_LEN_AT, &u32::from(info.ident_len).to_ne_bytes())
        .ok()?;
    let features = if info.discard { FEATURE_DISCARD } else { 0 };
    page.write(FEATURES_AT, &features.to_ne_bytes()).ok()?;
    page.write(IDENT_AT, &info.ident).ok()?;
    // Zero is never a served generation, so a fresh page reads as "never served".
    let next = match generation.load(Ordering::Acquire).wrapping_add(1) {
        0 => 1,
        n => n,
    };
    generation.store(next, Ordering::SeqCst);
    page.atomic_u32(READY_AT).ok()?.store(1, Ordering::SeqCst);
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_info_reads_back_and_each_publication_is_a_new_generation() {
        let page = Region::leaked(INFO_BYTES_FOR_TEST);
        assert_eq!(read(&page), None, "a zeroed page is not ready");
        let info = DeviceInfo::new(true, 512, 2048, 32, 256, "disk-0 serial");
        let first = publish(&page, &info).unwrap();
        let got = read(&page).unwrap();
        assert_eq!(got.generation, first);
        assert_eq!(got.ident(), "disk-0 serial");
        assert_eq!(
            (got.read_only, got.block_size, got.capacity),
            (true, 512, 2048)
        );
        assert_eq!((got.queue_depth, got.max_transfer), (32, 256));
        assert!(!got.discard);
        let second = publish(&page, &info).unwrap();
        assert_ne!(first, second);
        let discarding = DeviceInfo {
            discard: true,
            ..info
        };
        publish(&page, &discarding).unwrap();
        assert!(read(&page).unwrap().discard);
        publish(&page, &info).unwrap();
        assert!(!read(&page).unwrap().discard, "the flag is cleared again");
        withdraw(&page).unwrap();
        assert_eq!(read(&page), None);
    }

    #[test]
    fn nonsense_from_the_driver_reads_as_not_ready() {
        let page = Region::leaked(INFO_BYTES_FOR_TEST);
        publish(&page, &DeviceInfo::new(false, 512, 8, 4, 8, "x")).unwrap();
        page.write(BLOCK_SIZE_AT, &1000u32.to_ne_bytes()).unwrap();
        assert_eq!(read(&page), None, "block size not a power of two");
        publish(&page, &DeviceInfo::new(false, 512, 8, 4, 8, "x")).unwrap();
        page.write(MAGIC_AT, &0u32.to_ne_bytes()).unwrap();
        assert_eq!(read(&page), None, "bad magic");
        publish(&page, &DeviceInfo::new(false, 512, 8, 4, 8, "x")).unwrap();
        page.write(IDENT_LEN_AT, &u32::MAX.to_ne_bytes()).unwrap();
        let clamped = read(&page).unwrap();
        assert_eq!(
            clamped.ident().len(),
            IDENT_MAX,
            "length clamped to the field"
        );
        assert!(clamped.ident().starts_with('x'));
        assert!(read(&Region::leaked(16)).is_none(), "page too small");
    }

    #[test]
    fn ident_is_cut_at_a_character_boundary() {
        let long = "é".repeat(40);
        let info = DeviceInfo::new(false, 512, 1, 1, 1, &long);
        assert_eq!(info.ident().len(), 64);
        assert!(info.ident().chars().all(|c| c == 'é'));
    }

    const INFO_BYTES_FOR_TEST: usize = crate::INFO_BYTES;
}
