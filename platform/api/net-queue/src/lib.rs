//! The net interface between a NIC driver and its clients, in the shape of
//! sDDF's network queues (`include/sddf/network/queue.h`).
//!
//! Per client the description (`[[net]]`, see docs/net-interface.md)
//! grants six regions and a notification each way:
//!
//! - `rx_free` (client -> driver): empty receive buffers the driver may fill,
//! - `rx_active` (driver -> client): filled receive buffers (a frame each),
//! - `tx_active` (client -> driver): frames to send,
//! - `tx_free` (driver -> client): sent buffers, back to the client,
//! - the info page the driver writes ([`info`]: MAC, MTU, link, generation,
//!   counters),
//! - the data region: `buffers` receive buffers of [`BUFFER_SIZE`] bytes,
//!   then `buffers` transmit buffers.
//!
//! A queue entry is a [`Descriptor`] naming one buffer. The descriptor is
//! the token of ownership: a buffer belongs to exactly one side at a time
//! and only its owner touches its bytes. Every queue is an [`spsc_queue`]
//! queue (fixed-size messages), so signal suppression is that crate's
//! double check.
//!
//! Restarts: every descriptor carries the generation its writer served or
//! saw (the info page's, bumped each time a driver starts serving). When
//! the client sees a new generation it takes back every buffer the driver
//! held and posts its receive buffers again; each side drops (and counts)
//! a descriptor of another generation, so nothing leaks and no buffer is
//! owned twice. Frames in flight are lost, which the TCP/IP stack above
//! handles by retransmitting.
//!
//! [`NetClient`] is the client's half, [`NetServer`] the driver's.
#![no_std]
#![forbid(unsafe_code)]

pub mod client;
pub mod info;
pub mod server;

pub use client::{ClientError, ClientStats, NetClient, RxBuffer, TxBuffer};
pub use info::{Counters, Device, NetInfo};
pub use server::{NetServer, RxSlot, ServerError, ServerStats, TxFrame};

use component_api::Region;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes of one frame buffer: an Ethernet frame (no FCS) of up to 2048
/// bytes, so a 1500-byte MTU with headers fits with room to spare.
pub const BUFFER_SIZE: usize = 2048;
/// The most buffers per direction a grant may have (sysdesc refuses more):
/// bounds the ownership bitmaps both halves keep.
pub const MAX_BUFFERS: u32 = 4096;
/// The smallest frame either side accepts: an Ethernet II header.
pub const MIN_FRAME: usize = 14;
/// The page size regions are made of.
pub const PAGE: usize = 4096;
/// The info page is one page.
pub const INFO_BYTES: usize = PAGE;
/// Bytes of one descriptor on a queue.
pub const DESCRIPTOR_BYTES: usize = core::mem::size_of::<Descriptor>();

/// The spsc-queue header before the first slot, and each slot's length
/// field: how big a queue region must be for `entries` descriptors.
const QUEUE_HEADER: usize = 256;
const SLOT_LENGTH_FIELD: usize = 4;
/// The slot size both halves give [`spsc_queue`].
pub(crate) const SLOT: usize = (DESCRIPTOR_BYTES + SLOT_LENGTH_FIELD + 7) & !7;

/// `flags` of a receive descriptor: the host verified the frame's IPv4,
/// TCP and UDP checksums (only with [`info::FEATURE_RX_CHECKSUM`]).
pub const RX_CHECKSUM_VERIFIED: u32 = 1;
/// `flags` of a transmit descriptor: the client left the IPv4/TCP/UDP
/// checksums to the driver (only with [`info::FEATURE_TX_CHECKSUM`]).
pub const TX_CHECKSUM_OFFLOAD: u32 = 1;

/// A queue entry: one buffer of the data region, and what it holds.
/// Native byte order (both ends run on one machine).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Descriptor {
    /// Byte offset of the buffer in the data region (a multiple of
    /// [`BUFFER_SIZE`], inside the direction's half).
    pub offset: u64,
    /// Bytes of frame in the buffer (0 in a free queue; 0 in `rx_active`
    /// is a buffer the driver gives back unfilled).
    pub len: u32,
    /// [`RX_CHECKSUM_VERIFIED`] / [`TX_CHECKSUM_OFFLOAD`].
    pub flags: u32,
    /// The generation the writer served (driver) or saw served (client).
    pub generation: u32,
    pub reserved: u32,
}

const fn round_to_page(bytes: usize) -> usize {
    bytes.div_ceil(PAGE) * PAGE
}

/// Bytes of a queue region holding at least `entries` descriptors (whole
/// pages). `sysdesc` sizes the four queues with this (`entries` = the
/// grant's `buffers`).
pub const fn queue_region_bytes(entries: usize) -> usize {
    round_to_page(QUEUE_HEADER + entries * SLOT)
}

/// Bytes of the data region for `buffers` buffers per direction.
pub const fn data_region_bytes(buffers: usize) -> usize {
    2 * buffers * BUFFER_SIZE
}

/// Which half of the data region a buffer is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    Rx,
    Tx,
}

/// The shape both halves agree on: buffers per direction.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Layout {
    pub buffers: u32,
}

impl Layout {
    pub fn new(buffers: u32, data_len: usize) -> Option<Layout> {
        if buffers == 0 || buffers > MAX_BUFFERS || data_len < data_region_bytes(buffers as usize) {
            return None;
        }
        Some(Layout { buffers })
    }

    pub fn offset(&self, direction: Direction, index: u32) -> u64 {
        let first = match direction {
            Direction::Rx => 0,
            Direction::Tx => self.buffers,
        };
        u64::from(first + index) * BUFFER_SIZE as u64
    }

    /// The buffer an offset names in `direction`'s half, if it names one
    /// exactly (inside that half, at a buffer's start).
    pub fn index(&self, direction: Direction, offset: u64) -> Option<u32> {
        if !offset.is_multiple_of(BUFFER_SIZE as u64) {
            return None;
        }
        let buffer = offset / BUFFER_SIZE as u64;
        let first = match direction {
            Direction::Rx => 0,
            Direction::Tx => u64::from(self.buffers),
        };
        let index = buffer.checked_sub(first)?;
        (index < u64::from(self.buffers)).then_some(index as u32)
    }
}

/// A set of buffer indices below [`MAX_BUFFERS`]: who holds what.
#[derive(Clone)]
pub(crate) struct BufferSet {
    words: [u64; MAX_BUFFERS as usize / 64],
    count: u32,
}

impl BufferSet {
    pub const fn new() -> BufferSet {
        BufferSet {
            words: [0; MAX_BUFFERS as usize / 64],
            count: 0,
        }
    }

    pub fn all(buffers: u32) -> BufferSet {
        let mut set = BufferSet::new();
        for index in 0..buffers.min(MAX_BUFFERS) {
            set.insert(index);
        }
        set
    }

    pub fn contains(&self, index: u32) -> bool {
        index < MAX_BUFFERS && self.words[index as usize / 64] & (1 << (index % 64)) != 0
    }

    /// Whether it was absent.
    pub fn insert(&mut self, index: u32) -> bool {
        if index >= MAX_BUFFERS || self.contains(index) {
            return false;
        }
        self.words[index as usize / 64] |= 1 << (index % 64);
        self.count += 1;
        true
    }

    /// Whether it was present.
    pub fn remove(&mut self, index: u32) -> bool {
        if !self.contains(index) {
            return false;
        }
        self.words[index as usize / 64] &= !(1 << (index % 64));
        self.count -= 1;
        true
    }

    pub fn first(&self) -> Option<u32> {
        self.words
            .iter()
            .enumerate()
            .find(|(_, word)| **word != 0)
            .map(|(at, word)| at as u32 * 64 + word.trailing_zeros())
    }

    pub fn len(&self) -> u32 {
        self.count
    }

    /// Move every member of `self` into `into`; `self` ends empty.
    pub fn move_all(&mut self, into: &mut BufferSet) {
        for (mine, theirs) in self.words.iter_mut().zip(into.words.iter_mut()) {
            *theirs |= core::mem::take(mine);
        }
        self.count = 0;
        into.count = into.words.iter().map(|word| word.count_ones()).sum();
    }

    pub fn clear(&mut self) {
        *self = BufferSet::new();
    }
}

/// The six regions of one grant, as the description maps them.
#[derive(Clone, Copy, Debug)]
pub struct NetRegions {
    pub rx_free: Region,
    pub rx_active: Region,
    pub tx_free: Region,
    pub tx_active: Region,
    pub info: Region,
    pub data: Region,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_and_region_sizes() {
        assert_eq!(DESCRIPTOR_BYTES, 24);
        assert_eq!(SLOT, 32);
        assert_eq!(queue_region_bytes(1), 4096);
        assert_eq!(queue_region_bytes(120), 4096);
        assert_eq!(queue_region_bytes(121), 8192);
        assert_eq!(queue_region_bytes(512), 20480);
        for entries in [1, 2, 63, 64, 512, 4096] {
            let bytes = queue_region_bytes(entries);
            assert!((bytes - QUEUE_HEADER) / SLOT >= entries);
        }
        assert_eq!(data_region_bytes(512), 2 * 1024 * 1024);
    }

    #[test]
    fn layout_names_only_whole_buffers_of_the_right_half() {
        let layout = Layout::new(4, data_region_bytes(4)).unwrap();
        assert_eq!(layout.offset(Direction::Rx, 3), 3 * 2048);
        assert_eq!(layout.offset(Direction::Tx, 0), 4 * 2048);
        assert_eq!(layout.index(Direction::Rx, 2048), Some(1));
        assert_eq!(layout.index(Direction::Rx, 4 * 2048), None, "a tx buffer");
        assert_eq!(layout.index(Direction::Tx, 4 * 2048), Some(0));
        assert_eq!(layout.index(Direction::Tx, 8 * 2048), None, "past the end");
        assert_eq!(layout.index(Direction::Tx, 0), None, "an rx buffer");
        assert_eq!(layout.index(Direction::Rx, 100), None, "misaligned");
        assert_eq!(layout.index(Direction::Tx, u64::MAX), None);
        assert!(Layout::new(4, data_region_bytes(4) - 1).is_none());
        assert!(Layout::new(0, 4096).is_none());
        assert!(Layout::new(MAX_BUFFERS + 1, usize::MAX).is_none());
    }

    #[test]
    fn buffer_sets_count_and_move() {
        let mut a = BufferSet::all(70);
        assert_eq!(a.len(), 70);
        assert!(a.contains(69) && !a.contains(70));
        assert!(!a.insert(3));
        assert!(a.remove(0));
        assert!(!a.remove(0));
        assert_eq!(a.first(), Some(1));
        let mut b = BufferSet::new();
        b.insert(4000);
        a.move_all(&mut b);
        assert_eq!((a.len(), b.len()), (0, 70));
        assert_eq!(a.first(), None);
        assert!(!b.insert(MAX_BUFFERS));
    }
}
