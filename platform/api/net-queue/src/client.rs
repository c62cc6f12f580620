//! The client's half: post receive buffers, take frames, send frames.
//!
//! Ownership: each buffer is, at any time, the client's (idle, or lent to
//! the caller as an [`RxBuffer`] / [`TxBuffer`]) or the driver's (posted
//! in a queue, or taken by the driver). The client keeps that view in
//! bitmaps and believes a descriptor from the driver only if it names a
//! buffer the driver holds, of the right half, in the current generation.
//!
//! Restart rule: when the info page shows a generation other than the one
//! the client posted its buffers under, every buffer the driver held is
//! the client's again (receive buffers are posted anew under the new
//! generation, transmit buffers become free). Descriptors of the old
//! generation still in the queues are dropped by both sides. A frame in
//! flight is lost; TCP retransmits it.

use crate::info::{self, Counters, NetInfo};
use crate::{
    BufferSet, Descriptor, Direction, Layout, NetRegions, BUFFER_SIZE, DESCRIPTOR_BYTES, MIN_FRAME,
    SLOT,
};
use component_api::Region;
use spsc_queue::{Consumer, Producer, QueueError};
use zerocopy::{FromBytes, IntoBytes};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientError {
    /// A queue region is too small.
    Queue(QueueError),
    /// The data region is smaller than the buffers, or not writable, or
    /// `buffers` is 0 or above [`crate::MAX_BUFFERS`].
    Data,
    /// The driver is not serving: the frame was not sent (the buffer is
    /// free again).
    NotReady,
    /// A frame shorter than an Ethernet header or longer than a buffer.
    BadLength,
}

impl From<QueueError> for ClientError {
    fn from(error: QueueError) -> Self {
        ClientError::Queue(error)
    }
}

/// A received frame the caller holds until [`NetClient::release`].
#[derive(Debug, PartialEq, Eq)]
pub struct RxBuffer {
    index: u32,
    len: u32,
    flags: u32,
}

impl RxBuffer {
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// [`crate::RX_CHECKSUM_VERIFIED`] when the host checked the checksums.
    pub fn flags(&self) -> u32 {
        self.flags
    }
}

/// A transmit buffer the caller holds until [`NetClient::transmit`] (or
/// [`NetClient::cancel`]).
#[derive(Debug, PartialEq, Eq)]
pub struct TxBuffer {
    index: u32,
}

/// Counters (for status lines and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    pub received: u64,
    pub sent: u64,
    /// Sends refused because the driver was not serving.
    pub not_ready: u64,
    /// New generations seen after the first (driver restarts).
    pub restarts: u64,
    /// Buffers taken back from the driver at restarts.
    pub reclaimed_at_restart: u64,
    /// Descriptors from the driver naming no buffer of the right half, or
    /// one the driver does not hold, or with a bad length: dropped.
    pub bad_descriptors: u64,
    /// Descriptors of another generation: dropped.
    pub stale_descriptors: u64,
    /// Times the driver corrupted a queue index.
    pub peer_corrupted: u64,
}

/// One client of one grant.
pub struct NetClient {
    rx_free: Producer,
    rx_active: Consumer,
    tx_free: Consumer,
    tx_active: Producer,
    info_page: Region,
    data: Region,
    layout: Layout,
    /// The generation the driver's buffers were posted under (0: none yet).
    generation: u32,
    info: Option<NetInfo>,
    /// Receive buffers posted to (or taken by) the driver.
    rx_with_driver: BufferSet,
    /// Receive buffers the client holds and has not posted (not serving,
    /// or the queue had no room).
    rx_idle: BufferSet,
    tx_with_driver: BufferSet,
    tx_available: BufferSet,
    pushed_since_signal: bool,
    restarted: bool,
    stats: ClientStats,
}

impl NetClient {
    /// The regions as the description maps them into the client, and the
    /// grant's buffers per direction (`net::GRANTS[n].buffers`).
    pub fn new(regions: NetRegions, buffers: u32) -> Result<NetClient, ClientError> {
        let layout = Layout::new(buffers, regions.data.len()).ok_or(ClientError::Data)?;
        if !regions.data.writable() {
            return Err(ClientError::Data);
        }
        Ok(NetClient {
            rx_free: Producer::new(regions.rx_free, SLOT)?,
            rx_active: Consumer::new(regions.rx_active, SLOT)?,
            tx_free: Consumer::new(regions.tx_free, SLOT)?,
            tx_active: Producer::new(regions.tx_active, SLOT)?,
            info_page: regions.info,
            data: regions.data,
            layout,
            generation: 0,
            info: None,
            rx_with_driver: BufferSet::new(),
            rx_idle: BufferSet::all(buffers),
            tx_with_driver: BufferSet::new(),
            tx_available: BufferSet::all(buffers),
            pushed_since_signal: false,
            restarted: false,
            stats: ClientStats::default(),
        })
    }

    /// The device while the driver serves, else `None`.
    pub fn info(&mut self) -> Option<NetInfo> {
        self.refresh();
        self.info
    }

    /// Whether the link is up (and the driver serving).
    pub fn link_up(&mut self) -> bool {
        self.info().is_some() && info::link_up(&self.info_page)
    }

    /// What the driver published about its traffic.
    pub fn counters(&self) -> Counters {
        info::read_counters(&self.info_page)
    }

    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Ask the driver to notify us at `deadline_ns` (`Env::now_ns`'s
    /// clock; `None`: no need). The driver has the timer the client lacks.
    pub fn set_wake_deadline(&mut self, deadline_ns: Option<u64>) {
        info::set_client_wake(&self.info_page, deadline_ns.unwrap_or(0));
    }

    /// Whether a driver restart was seen since the last call (the buffers
    /// were taken back and re-posted already).
    pub fn restart_detected(&mut self) -> bool {
        self.refresh();
        core::mem::take(&mut self.restarted)
    }

    /// Buffers per direction the driver holds now (posted or taken).
    pub fn with_driver(&self) -> (u32, u32) {
        (self.rx_with_driver.len(), self.tx_with_driver.len())
    }

    /// Read the info page; on a new generation take every buffer back.
    /// Then post the idle receive buffers if serving.
    fn refresh(&mut self) {
        let served = info::served_generation(&self.info_page);
        if served.is_some() && served == self.info.map(|info| info.generation) {
            self.post_idle();
            return;
        }
        self.info = info::read(&self.info_page, self.layout.buffers);
        let Some(info) = self.info else {
            return;
        };
        if info.generation != self.generation {
            if self.generation != 0 {
                self.stats.restarts += 1;
                self.restarted = true;
            }
            self.stats.reclaimed_at_restart +=
                u64::from(self.rx_with_driver.len() + self.tx_with_driver.len());
            self.rx_with_driver.move_all(&mut self.rx_idle);
            self.tx_with_driver.move_all(&mut self.tx_available);
            self.generation = info.generation;
        }
        self.post_idle();
    }

    fn post_idle(&mut self) {
        if self.info.is_none() {
            return;
        }
        // Bounded: each round posts one buffer or stops.
        for _ in 0..self.layout.buffers {
            let Some(index) = self.rx_idle.first() else {
                return;
            };
            let descriptor = self.descriptor(Direction::Rx, index, 0, 0);
            match self.rx_free.push(descriptor.as_bytes()) {
                Ok(()) => {}
                // Full (stale entries of an old generation not yet dropped):
                // the queue asked for a signal when room frees up.
                Err(QueueError::Full) => return,
                Err(_) => {
                    self.stats.peer_corrupted += 1;
                    return;
                }
            }
            self.rx_idle.remove(index);
            self.rx_with_driver.insert(index);
            self.pushed_since_signal = true;
        }
    }

    fn descriptor(&self, direction: Direction, index: u32, len: u32, flags: u32) -> Descriptor {
        Descriptor {
            offset: self.layout.offset(direction, index),
            len,
            flags,
            generation: self.generation,
            reserved: 0,
        }
    }

    /// Pop descriptors off the driver's `queue` until one is believable.
    fn next_valid(&mut self, direction: Direction) -> Option<(u32, Descriptor)> {
        let (queue, held) = match direction {
            Direction::Rx => (&mut self.rx_active, &mut self.rx_with_driver),
            Direction::Tx => (&mut self.tx_free, &mut self.tx_with_driver),
        };
        // Bounded: each round consumes one entry or returns.
        for _ in 0..self.layout.buffers.saturating_mul(2).saturating_add(64) {
            let mut bytes = [0u8; SLOT];
            match queue.pop(&mut bytes) {
                Ok(None) => return None,
                Ok(Some(DESCRIPTOR_BYTES)) => {}
                Ok(Some(_)) => {
                    self.stats.bad_descriptors += 1;
                    continue;
                }
                Err(_) => {
                    self.stats.peer_corrupted += 1;
                    return None;
                }
            }
            let descriptor =
                Descriptor::read_from_bytes(&bytes[..DESCRIPTOR_BYTES]).expect("exact size");
            if descriptor.generation != self.generation {
                self.stats.stale_descriptors += 1;
                continue;
            }
            let Some(index) = self.layout.index(direction, descriptor.offset) else {
                self.stats.bad_descriptors += 1;
                continue;
            };
            let length_ok = match direction {
                Direction::Rx => {
                    descriptor.len == 0
                        || (MIN_FRAME..=BUFFER_SIZE).contains(&(descriptor.len as usize))
                }
                Direction::Tx => true,
            };
            if !length_ok || !held.remove(index) {
                self.stats.bad_descriptors += 1;
                continue;
            }
            return Some((index, descriptor));
        }
        None
    }

    /// The next received frame, or `None`. The caller reads it with
    /// [`NetClient::frame`] and gives it back with [`NetClient::release`].
    pub fn receive(&mut self) -> Option<RxBuffer> {
        self.refresh();
        // Bounded: an empty buffer given back is re-posted and skipped.
        for _ in 0..=self.layout.buffers {
            let (index, descriptor) = self.next_valid(Direction::Rx)?;
            if descriptor.len == 0 {
                self.rx_idle.insert(index);
                self.post_idle();
                continue;
            }
            self.stats.received += 1;
            return Some(RxBuffer {
                index,
                len: descriptor.len,
                flags: descriptor.flags,
            });
        }
        None
    }

    /// Copy a received frame into `out` (at most `out.len()` bytes);
    /// returns the bytes copied.
    pub fn frame(&self, rx: &RxBuffer, out: &mut [u8]) -> usize {
        let len = rx.len().min(out.len());
        let offset = self.layout.offset(Direction::Rx, rx.index) as usize;
        match self.data.read_bulk(offset, &mut out[..len]) {
            Ok(()) => len,
            Err(_) => 0,
        }
    }

    /// Give a received buffer back: posted to the driver again (now, or
    /// when it serves).
    pub fn release(&mut self, rx: RxBuffer) {
        self.rx_idle.insert(rx.index);
        self.refresh();
    }

    /// A free transmit buffer, or `None` (all are with the driver; try
    /// after [`NetClient::reclaim`] or a signal).
    pub fn alloc_tx(&mut self) -> Option<TxBuffer> {
        self.refresh();
        if self.tx_available.len() == 0 {
            self.reclaim();
        }
        let index = self.tx_available.first()?;
        self.tx_available.remove(index);
        Some(TxBuffer { index })
    }

    /// Write frame bytes into a transmit buffer at `at`.
    pub fn write(&mut self, tx: &TxBuffer, at: usize, bytes: &[u8]) -> Result<(), ClientError> {
        if at
            .checked_add(bytes.len())
            .is_none_or(|end| end > BUFFER_SIZE)
        {
            return Err(ClientError::BadLength);
        }
        let offset = self.layout.offset(Direction::Tx, tx.index) as usize + at;
        self.data
            .write_bulk(offset, bytes)
            .map_err(|_| ClientError::Data)
    }

    /// Hand the first `len` bytes of the buffer to the driver to send.
    /// On an error the buffer is free again and the frame is not sent.
    pub fn transmit(&mut self, tx: TxBuffer, len: usize, flags: u32) -> Result<(), ClientError> {
        self.refresh();
        if !(MIN_FRAME..=BUFFER_SIZE).contains(&len) {
            self.tx_available.insert(tx.index);
            return Err(ClientError::BadLength);
        }
        if self.info.is_none() {
            self.stats.not_ready += 1;
            self.tx_available.insert(tx.index);
            return Err(ClientError::NotReady);
        }
        let descriptor = self.descriptor(Direction::Tx, tx.index, len as u32, flags);
        if let Err(error) = self.tx_active.push(descriptor.as_bytes()) {
            if error == QueueError::PeerCorrupted {
                self.stats.peer_corrupted += 1;
            }
            self.tx_available.insert(tx.index);
            return Err(error.into());
        }
        self.tx_with_driver.insert(tx.index);
        self.pushed_since_signal = true;
        self.stats.sent += 1;
        Ok(())
    }

    /// Give a transmit buffer back unsent.
    pub fn cancel(&mut self, tx: TxBuffer) {
        self.tx_available.insert(tx.index);
    }

    /// Copy `frame` into a free buffer and send it.
    pub fn send(&mut self, frame: &[u8], flags: u32) -> Result<(), ClientError> {
        let tx = self
            .alloc_tx()
            .ok_or(ClientError::Queue(QueueError::Full))?;
        if let Err(error) = self.write(&tx, 0, frame) {
            self.cancel(tx);
            return Err(error);
        }
        self.transmit(tx, frame.len(), flags)
    }

    /// Take back the buffers the driver has sent; returns how many.
    pub fn reclaim(&mut self) -> u32 {
        let mut reclaimed = 0;
        while let Some((index, _)) = self.next_valid(Direction::Tx) {
            self.tx_available.insert(index);
            reclaimed += 1;
        }
        reclaimed
    }

    /// Free transmit buffers the client holds now.
    pub fn tx_available(&self) -> u32 {
        self.tx_available.len()
    }

    /// After a round: whether to notify the driver (buffers or frames
    /// posted to a waiting driver, or room made in a queue it waits to
    /// push to). Clears the requests: call once per round.
    pub fn driver_needs_signal(&mut self) -> bool {
        let pushed = core::mem::take(&mut self.pushed_since_signal);
        let rx = pushed && self.rx_free.consumer_needs_signal();
        let tx = pushed && self.tx_active.consumer_needs_signal();
        let room_rx = self.rx_active.producer_needs_signal();
        let room_tx = self.tx_free.producer_needs_signal();
        rx || tx || room_rx || room_tx
    }

    /// Before sleeping: ask the driver for a signal when a frame arrives or
    /// a buffer comes back, and look once more. `true`: safe to sleep.
    pub fn prepare_to_sleep(&mut self) -> bool {
        // Sent buffers waiting in the transmit free queue are not work:
        // take them back first. Left there, the queue never looks empty,
        // every look withdraws the request for a signal, and a client
        // that sends nothing more never sleeps with its request standing
        // (it stopped answering after a burst of connections).
        self.reclaim();
        let rx = self.rx_active.prepare_to_sleep().unwrap_or(false);
        let tx = self.tx_free.prepare_to_sleep().unwrap_or(false);
        rx && tx
    }
}
