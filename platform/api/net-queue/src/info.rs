//! The info page: written by the driver, read by the client.
//!
//! Layout (offsets in the page, native byte order):
//!
//! | at | field | |
//! |---|---|---|
//! | 0 | `magic` u32 | "NETi" |
//! | 4 | `version` u32 | 1 |
//! | 8 | `generation` u32 | bumped each time a driver starts serving, never 0 |
//! | 12 | `ready` u32 | 1 while serving |
//! | 16 | `link_up` u32 | 1 while the link is up (changes without a new generation) |
//! | 20 | `mtu` u32 | bytes of IP payload per frame (68..=2034) |
//! | 24 | `features` u32 | [`FEATURE_TX_CHECKSUM`], [`FEATURE_RX_CHECKSUM`] |
//! | 28 | `buffers` u32 | buffers per direction the driver serves (must match the grant) |
//! | 32 | `buffer_size` u32 | 2048 |
//! | 36 | `mac` 6 bytes | |
//! | 48 | counters, 16 x u64 | [`Counters`], each its own atomic word |
//! | 2048 | `client_wake_ns` u64 | written by the *client* only: when it wants to be notified (0: never) |
//!
//! The client has no timer of its own (a plain component is run only when
//! notified), but its TCP/IP stack must retransmit and time out. So it
//! writes the time (`Env::now_ns`) its stack next needs to run into
//! `client_wake_ns`, and the driver, which has a timer (synic's
//! `SetTimeout`), notifies it once that time has passed
//! ([`crate::NetServer::wake_due`]). The driver treats the word as a hint:
//! a deadline in the past or far in the future costs it one notification.
//!
//! Publication is a seqlock like the block interface's: the driver clears
//! `ready`, writes the fields, bumps `generation`, sets `ready`; the client
//! reads `generation`, the fields and `generation` again and takes the copy
//! only if both agree, `ready` was set and the fields are plausible.
//! `link_up` and the counters are single atomic words the driver updates in
//! place; the client reads them whenever it wants.

use crate::{BUFFER_SIZE, MAX_BUFFERS};
use component_api::Region;
use core::sync::atomic::{fence, Ordering};

pub const MAGIC: u32 = u32::from_le_bytes(*b"NETi");
pub const VERSION: u32 = 1;

/// The driver computes IPv4/TCP/UDP checksums of frames sent with
/// [`crate::TX_CHECKSUM_OFFLOAD`].
pub const FEATURE_TX_CHECKSUM: u32 = 1;
/// The driver marks received frames whose checksums the host verified
/// ([`crate::RX_CHECKSUM_VERIFIED`]).
pub const FEATURE_RX_CHECKSUM: u32 = 2;

const MAGIC_AT: usize = 0;
const VERSION_AT: usize = 4;
const GENERATION_AT: usize = 8;
const READY_AT: usize = 12;
const LINK_UP_AT: usize = 16;
const MTU_AT: usize = 20;
const FEATURES_AT: usize = 24;
const BUFFERS_AT: usize = 28;
const BUFFER_SIZE_AT: usize = 32;
const MAC_AT: usize = 36;
const COUNTERS_AT: usize = 48;
/// Counter words on the page.
pub const COUNTER_WORDS: usize = 16;
pub(crate) const INFO_USED: usize = CLIENT_WAKE_AT + 8;
/// The client's half of the page starts here.
const CLIENT_WAKE_AT: usize = 2048;

/// The smallest MTU IPv4 allows, and the largest a 2048-byte buffer holds
/// with an Ethernet header.
pub const MIN_MTU: u32 = 68;
pub const MAX_MTU: u32 = BUFFER_SIZE as u32 - 14;

/// What the driver serves: the device as the client should see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Device {
    pub mac: [u8; 6],
    pub mtu: u32,
    pub features: u32,
    pub link_up: bool,
}

/// The client's copy of the info page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetInfo {
    pub generation: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub features: u32,
    pub buffers: u32,
}

/// What the driver publishes about its traffic (for status pages). The
/// server half counts the queue side; the driver adds what only it sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames (and their bytes) delivered to the client.
    pub rx_frames: u64,
    pub rx_bytes: u64,
    /// Frames (and bytes) the client sent that the host completed.
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Frames from the host dropped because the client had posted no
    /// receive buffer.
    pub rx_no_buffer: u64,
    /// Sends the host failed (or the driver could not submit).
    pub tx_errors: u64,
    /// Descriptors from the client refused (outside its region, not a
    /// buffer's start, wrong half, bad length, a buffer the driver holds).
    pub bad_descriptors: u64,
    /// Descriptors of another generation, dropped.
    pub stale_descriptors: u64,
    /// Link up/down changes seen.
    pub link_changes: u64,
    /// Malformed messages from the host (counted by the driver).
    pub host_errors: u64,
    /// Times this grant was served (a new generation each).
    pub serves: u64,
}

impl Counters {
    fn to_words(self) -> [u64; COUNTER_WORDS] {
        let mut words = [0; COUNTER_WORDS];
        words[..11].copy_from_slice(&[
            self.rx_frames,
            self.rx_bytes,
            self.tx_frames,
            self.tx_bytes,
            self.rx_no_buffer,
            self.tx_errors,
            self.bad_descriptors,
            self.stale_descriptors,
            self.link_changes,
            self.host_errors,
            self.serves,
        ]);
        words
    }

    fn from_words(words: [u64; COUNTER_WORDS]) -> Counters {
        Counters {
            rx_frames: words[0],
            rx_bytes: words[1],
            tx_frames: words[2],
            tx_bytes: words[3],
            rx_no_buffer: words[4],
            tx_errors: words[5],
            bad_descriptors: words[6],
            stale_descriptors: words[7],
            link_changes: words[8],
            host_errors: words[9],
            serves: words[10],
        }
    }
}

fn read_u32(page: &Region, at: usize) -> Option<u32> {
    let mut bytes = [0u8; 4];
    page.read(at, &mut bytes).ok()?;
    Some(u32::from_ne_bytes(bytes))
}

fn write_u32(page: &Region, at: usize, value: u32) -> Option<()> {
    page.write(at, &value.to_ne_bytes()).ok()
}

/// The client's view: a consistent, validated copy, or `None` while the
/// driver is not serving (or writes nonsense). `buffers` is the grant's.
pub(crate) fn read(page: &Region, buffers: u32) -> Option<NetInfo> {
    let generation = page.atomic_u32(GENERATION_AT).ok()?;
    let ready = page.atomic_u32(READY_AT).ok()?;
    let before = generation.load(Ordering::Acquire);
    if ready.load(Ordering::Acquire) == 0 || before == 0 {
        return None;
    }
    let mut mac = [0u8; 6];
    page.read(MAC_AT, &mut mac).ok()?;
    let info = NetInfo {
        generation: before,
        mac,
        mtu: read_u32(page, MTU_AT)?,
        features: read_u32(page, FEATURES_AT)?,
        buffers: read_u32(page, BUFFERS_AT)?,
    };
    let magic = read_u32(page, MAGIC_AT)?;
    let version = read_u32(page, VERSION_AT)?;
    let buffer_size = read_u32(page, BUFFER_SIZE_AT)?;
    fence(Ordering::Acquire);
    if generation.load(Ordering::Acquire) != before || ready.load(Ordering::Acquire) == 0 {
        return None;
    }
    let plausible = magic == MAGIC
        && version == VERSION
        && buffer_size == BUFFER_SIZE as u32
        && info.buffers == buffers
        && (MIN_MTU..=MAX_MTU).contains(&info.mtu)
        // A multicast source address is not a NIC's.
        && info.mac[0] & 1 == 0;
    plausible.then_some(info)
}

/// The generation being served, if the page says ready: the client's
/// cheap check that its copy is still current.
pub(crate) fn served_generation(page: &Region) -> Option<u32> {
    let ready = page.atomic_u32(READY_AT).ok()?.load(Ordering::Acquire);
    let generation = page.atomic_u32(GENERATION_AT).ok()?.load(Ordering::Acquire);
    (ready != 0 && generation != 0).then_some(generation)
}

pub(crate) fn link_up(page: &Region) -> bool {
    page.atomic_u32(LINK_UP_AT)
        .map(|word| word.load(Ordering::Acquire) == 1)
        .unwrap_or(false)
}

pub(crate) fn set_link_up(page: &Region, up: bool) -> Option<()> {
    page.atomic_u32(LINK_UP_AT)
        .ok()?
        .store(u32::from(up), Ordering::Release);
    Some(())
}

pub(crate) fn read_counters(page: &Region) -> Counters {
    let mut words = [0u64; COUNTER_WORDS];
    for (at, word) in words.iter_mut().enumerate() {
        *word = page
            .atomic_u64(COUNTERS_AT + at * 8)
            .map(|w| w.load(Ordering::Relaxed))
            .unwrap_or(0);
    }
    Counters::from_words(words)
}

pub(crate) fn write_counters(page: &Region, counters: &Counters) {
    for (at, value) in counters.to_words().iter().enumerate() {
        if let Ok(word) = page.atomic_u64(COUNTERS_AT + at * 8) {
            word.store(*value, Ordering::Relaxed);
        }
    }
}

/// The client's wake-up time (0: none).
pub(crate) fn client_wake(page: &Region) -> u64 {
    page.atomic_u64(CLIENT_WAKE_AT)
        .map(|word| word.load(Ordering::Acquire))
        .unwrap_or(0)
}

pub(crate) fn set_client_wake(page: &Region, deadline_ns: u64) {
    if let Ok(word) = page.atomic_u64(CLIENT_WAKE_AT) {
        word.store(deadline_ns, Ordering::Release);
    }
}

/// The driver's side: stop advertising.
pub(crate) fn withdraw(page: &Region) -> Option<()> {
    page.atomic_u32(READY_AT).ok()?.store(0, Ordering::SeqCst);
    Some(())
}

/// The driver's side: publish `device` under the next generation; returns
/// that generation.
pub(crate) fn publish(page: &Region, device: &Device, buffers: u32) -> Option<u32> {
    withdraw(page)?;
    let generation = page.atomic_u32(GENERATION_AT).ok()?;
    write_u32(page, MAGIC_AT, MAGIC)?;
    write_u32(page, VERSION_AT, VERSION)?;
    write_u32(page, MTU_AT, device.mtu)?;
    write_u32(page, FEATURES_AT, device.features)?;
    write_u32(page, BUFFERS_AT, buffers.min(MAX_BUFFERS))?;
    write_u32(page, BUFFER_SIZE_AT, BUFFER_SIZE as u32)?;
    page.write(MAC_AT, &device.mac).ok()?;
    set_link_up(page, device.link_up)?;
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

    const DEVICE: Device = Device {
        mac: [0x00, 0x15, 0x5d, 0x01, 0x02, 0x03],
        mtu: 1500,
        features: FEATURE_TX_CHECKSUM,
        link_up: true,
    };

    #[test]
    fn published_info_reads_back_and_each_publication_is_a_new_generation() {
        let page = Region::leaked(crate::INFO_BYTES);
        assert_eq!(read(&page, 8), None, "a zeroed page is not ready");
        let first = publish(&page, &DEVICE, 8).unwrap();
        let got = read(&page, 8).unwrap();
        assert_eq!(got.generation, first);
        assert_eq!(got.mac, DEVICE.mac);
        assert_eq!((got.mtu, got.features, got.buffers), (1500, 1, 8));
        assert!(link_up(&page));
        set_link_up(&page, false).unwrap();
        assert!(!link_up(&page));
        assert_eq!(
            read(&page, 8).unwrap().generation,
            first,
            "link is not a generation"
        );
        let second = publish(&page, &DEVICE, 8).unwrap();
        assert_ne!(first, second);
        withdraw(&page).unwrap();
        assert_eq!(read(&page, 8), None);
        assert_eq!(served_generation(&page), None);
    }

    #[test]
    fn the_generation_wraps_past_zero() {
        let page = Region::leaked(crate::INFO_BYTES);
        page.write(GENERATION_AT, &u32::MAX.to_ne_bytes()).unwrap();
        assert_eq!(publish(&page, &DEVICE, 8), Some(1));
    }

    #[test]
    fn nonsense_from_the_driver_reads_as_not_ready() {
        let page = Region::leaked(crate::INFO_BYTES);
        let cases: [(usize, u32); 6] = [
            (MAGIC_AT, 0),
            (VERSION_AT, 2),
            (MTU_AT, 20),
            (MTU_AT, 9000),
            (BUFFER_SIZE_AT, 4096),
            (BUFFERS_AT, 9),
        ];
        for (at, value) in cases {
            publish(&page, &DEVICE, 8).unwrap();
            assert!(read(&page, 8).is_some());
            write_u32(&page, at, value).unwrap();
            assert_eq!(read(&page, 8), None, "field at {at} = {value}");
        }
        publish(&page, &DEVICE, 8).unwrap();
        page.write(MAC_AT, &[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(read(&page, 8), None, "multicast MAC");
        assert!(read(&Region::leaked(16), 8).is_none(), "page too small");
        assert!(!link_up(&Region::leaked(4)));
    }

    #[test]
    fn counters_round_trip() {
        let page = Region::leaked(crate::INFO_BYTES);
        let counters = Counters {
            rx_frames: 1,
            rx_bytes: 2,
            tx_frames: 3,
            tx_bytes: 4,
            rx_no_buffer: 5,
            tx_errors: 6,
            bad_descriptors: 7,
            stale_descriptors: 8,
            link_changes: 9,
            host_errors: 10,
            serves: 11,
        };
        write_counters(&page, &counters);
        assert_eq!(read_counters(&page), counters);
        const { assert!(INFO_USED <= crate::INFO_BYTES) };
    }
}
