//! The driver's half: takes the client's empty receive buffers and fills
//! them, takes its frames to send and gives the buffers back once sent.
//!
//! The client is another component and may be faulty or hostile: every
//! descriptor it writes is checked (a whole buffer of the right half of its
//! data region, a length that fits, a buffer the server does not hold
//! already, the current generation); a bad one is counted and dropped,
//! never a crash. The server takes a buffer only when the queue it must
//! return it on has room for it and for every buffer it holds already, so a
//! client that never takes its buffers back stalls only itself.

use crate::info::{self, Counters, Device};
use crate::{
    BufferSet, Descriptor, Direction, Layout, NetRegions, BUFFER_SIZE, DESCRIPTOR_BYTES,
    INFO_BYTES, MIN_FRAME, SLOT,
};
use component_api::Region;
use spsc_queue::{Consumer, Producer, QueueError};
use zerocopy::{FromBytes, IntoBytes};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerError {
    /// A queue region is too small, or the client corrupted an index.
    Queue(QueueError),
    /// The info page is not a writable page.
    InfoPage,
    /// The data region is smaller than the buffers, or not writable, or
    /// `buffers` is 0 or above [`crate::MAX_BUFFERS`].
    Data,
    /// A frame longer than a buffer.
    FrameTooLong,
}

impl From<QueueError> for ServerError {
    fn from(error: QueueError) -> Self {
        ServerError::Queue(error)
    }
}

/// An empty receive buffer the driver holds: fill it with
/// [`NetServer::deliver`] (or give it back with [`NetServer::give_back`]).
#[derive(Debug, PartialEq, Eq)]
pub struct RxSlot {
    index: u32,
    offset: u64,
    generation: u32,
}

impl RxSlot {
    /// Byte offset of the buffer in the client's data region.
    pub fn offset(&self) -> u64 {
        self.offset
    }
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

/// A frame to send: the driver sends `len` bytes at `offset` of the data
/// region (copied out with [`NetServer::frame`], or named to the host by
/// guest physical address), then hands it to [`NetServer::complete_tx`].
#[derive(Debug, PartialEq, Eq)]
pub struct TxFrame {
    index: u32,
    offset: u64,
    len: u32,
    flags: u32,
    generation: u32,
}

impl TxFrame {
    pub fn offset(&self) -> u64 {
        self.offset
    }
    pub fn len(&self) -> usize {
        self.len as usize
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// [`crate::TX_CHECKSUM_OFFLOAD`] (only if the driver offers it).
    pub fn flags(&self) -> u32 {
        self.flags
    }
    pub fn generation(&self) -> u32 {
        self.generation
    }
}

/// The server half's own counters (the published [`Counters`] hold them
/// too).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Completions for a slot or frame of an earlier generation (the
    /// buffer is the client's again already): dropped.
    pub stale_completions: u64,
    /// Times the client corrupted a queue index (the round stops).
    pub peer_corrupted: u64,
}

/// Serves one client's grant.
pub struct NetServer {
    rx_free: Consumer,
    rx_active: Producer,
    tx_free: Producer,
    tx_active: Consumer,
    info: Region,
    data: Region,
    layout: Layout,
    /// The generation served, `None` while not serving.
    generation: Option<u32>,
    rx_held: BufferSet,
    tx_held: BufferSet,
    features: u32,
    returned_since_signal: bool,
    /// The client's wake-up time last notified for.
    woken_for: u64,
    counters: Counters,
    stats: ServerStats,
}

impl NetServer {
    /// The regions as the description grants them to the driver (the data
    /// region mapped read-write), and the grant's buffers per direction.
    /// Starts not serving: call [`NetServer::serve`].
    pub fn new(regions: NetRegions, buffers: u32) -> Result<NetServer, ServerError> {
        if regions.info.len() < info::INFO_USED.min(INFO_BYTES) || !regions.info.writable() {
            return Err(ServerError::InfoPage);
        }
        let layout = Layout::new(buffers, regions.data.len()).ok_or(ServerError::Data)?;
        if !regions.data.writable() {
            return Err(ServerError::Data);
        }
        info::withdraw(&regions.info).ok_or(ServerError::InfoPage)?;
        Ok(NetServer {
            rx_free: Consumer::new(regions.rx_free, SLOT)?,
            rx_active: Producer::new(regions.rx_active, SLOT)?,
            tx_free: Producer::new(regions.tx_free, SLOT)?,
            tx_active: Consumer::new(regions.tx_active, SLOT)?,
            info: regions.info,
            data: regions.data,
            layout,
            generation: None,
            rx_held: BufferSet::new(),
            tx_held: BufferSet::new(),
            features: 0,
            returned_since_signal: false,
            woken_for: 0,
            counters: Counters::default(),
            stats: ServerStats::default(),
        })
    }

    /// Start serving (the driver's first start, a restart, or after the
    /// device came back): publishes `device` under a new generation and
    /// returns it. Everything the server held is forgotten, and whatever
    /// the client queued before is dropped: the client takes every buffer
    /// back when it sees the new generation and posts them again. A slot
    /// or frame of the old generation completed afterwards is dropped.
    /// The driver then notifies the client.
    pub fn serve(&mut self, device: Device) -> Result<u32, ServerError> {
        self.drop_queued()?;
        self.rx_held.clear();
        self.tx_held.clear();
        self.features = device.features;
        self.counters.serves += 1;
        let generation =
            info::publish(&self.info, &device, self.layout.buffers).ok_or(ServerError::InfoPage)?;
        self.generation = Some(generation);
        self.publish_counters();
        Ok(generation)
    }

    fn drop_queued(&mut self) -> Result<(), ServerError> {
        let mut bytes = [0u8; SLOT];
        let bound = self.layout.buffers.saturating_mul(2).saturating_add(64);
        for queue in [&mut self.rx_free, &mut self.tx_active] {
            for _ in 0..bound {
                if queue.pop(&mut bytes)?.is_none() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Stop serving (the device went away). The client's transmits fail
    /// until the next [`NetServer::serve`]; buffers stay where they are.
    pub fn withdraw(&mut self) {
        self.generation = None;
        let _ = info::withdraw(&self.info);
    }

    pub fn generation(&self) -> Option<u32> {
        self.generation
    }

    /// Tell the client the link went up or down (no new generation).
    pub fn set_link(&mut self, up: bool) {
        if info::link_up(&self.info) != up {
            self.counters.link_changes += 1;
        }
        let _ = info::set_link_up(&self.info, up);
    }

    /// The counters as published; the driver adds what only it sees
    /// (`rx_no_buffer`, `tx_errors`, `host_errors`) here, and they reach
    /// the page with the next [`NetServer::client_needs_signal`] or
    /// [`NetServer::publish_counters`].
    pub fn counters_mut(&mut self) -> &mut Counters {
        &mut self.counters
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    pub fn publish_counters(&self) {
        info::write_counters(&self.info, &self.counters);
    }

    /// Receive buffers the driver holds now.
    pub fn rx_held(&self) -> u32 {
        self.rx_held.len()
    }

    /// Frames the driver holds now (taken, not yet completed).
    pub fn tx_held(&self) -> u32 {
        self.tx_held.len()
    }

    /// The data region (its guest physical address, when host visible,
    /// plus a frame's offset is where the host reads a frame).
    pub fn data(&self) -> Region {
        self.data
    }

    /// Pop descriptors off `queue` until a valid one, counting the rest.
    fn next_valid(
        &mut self,
        direction: Direction,
    ) -> Result<Option<(u32, Descriptor)>, ServerError> {
        let Some(generation) = self.generation else {
            return Ok(None);
        };
        let (queue, returns, held) = match direction {
            Direction::Rx => (&mut self.rx_free, &self.rx_active, &self.rx_held),
            Direction::Tx => (&mut self.tx_active, &self.tx_free, &self.tx_held),
        };
        // Bounded: each round consumes one entry or returns.
        for _ in 0..self.layout.buffers.saturating_mul(2).saturating_add(64) {
            // Room to return this buffer and every one held already.
            let room = match returns.free() {
                Ok(room) => room,
                Err(error) => {
                    self.stats.peer_corrupted += 1;
                    return Err(error.into());
                }
            };
            if room <= held.len() {
                return Ok(None);
            }
            let mut bytes = [0u8; SLOT];
            match queue.pop(&mut bytes) {
                Ok(None) => return Ok(None),
                Ok(Some(DESCRIPTOR_BYTES)) => {}
                Ok(Some(_)) => {
                    self.counters.bad_descriptors += 1;
                    continue;
                }
                Err(error) => {
                    self.stats.peer_corrupted += 1;
                    return Err(error.into());
                }
            }
            let descriptor =
                Descriptor::read_from_bytes(&bytes[..DESCRIPTOR_BYTES]).expect("exact size");
            if descriptor.generation != generation {
                self.counters.stale_descriptors += 1;
                continue;
            }
            let Some(index) = self.layout.index(direction, descriptor.offset) else {
                self.counters.bad_descriptors += 1;
                continue;
            };
            let length_ok = match direction {
                // An empty buffer: its length means nothing, but a client
                // that writes one is confused; refuse it.
                Direction::Rx => descriptor.len == 0,
                Direction::Tx => (MIN_FRAME..=BUFFER_SIZE).contains(&(descriptor.len as usize)),
            };
            if !length_ok || held.contains(index) {
                self.counters.bad_descriptors += 1;
                continue;
            }
            return Ok(Some((index, descriptor)));
        }
        Ok(None)
    }

    /// The next empty receive buffer, or `None` (none posted, or not
    /// serving). A driver with a frame and no buffer drops the frame and
    /// counts it in `rx_no_buffer`.
    pub fn take_rx(&mut self) -> Result<Option<RxSlot>, ServerError> {
        let Some((index, descriptor)) = self.next_valid(Direction::Rx)? else {
            return Ok(None);
        };
        self.rx_held.insert(index);
        Ok(Some(RxSlot {
            index,
            offset: descriptor.offset,
            generation: descriptor.generation,
        }))
    }

    /// Copy `frame` into the slot's buffer and hand it to the client.
    /// `Ok(false)`: the slot was from an earlier generation, nothing done
    /// (the buffer is the client's again).
    pub fn deliver(&mut self, slot: RxSlot, frame: &[u8], flags: u32) -> Result<bool, ServerError> {
        if frame.len() > BUFFER_SIZE {
            // The slot stays the driver's: it may fill it with another frame.
            self.counters.host_errors += 1;
            return Err(ServerError::FrameTooLong);
        }
        if !self.is_current(slot.generation) {
            return Ok(false);
        }
        self.data
            .write_bulk(slot.offset as usize, frame)
            .map_err(|_| ServerError::Data)?;
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += frame.len() as u64;
        let flags = flags & self.rx_flags_offered();
        self.return_rx(slot, frame.len() as u32, flags)
    }

    /// Hand an unfilled receive buffer back (the driver stops, or gives up
    /// buffers it cannot use); the client posts it again.
    pub fn give_back(&mut self, slot: RxSlot) -> Result<bool, ServerError> {
        if !self.is_current(slot.generation) {
            return Ok(false);
        }
        self.return_rx(slot, 0, 0)
    }

    fn rx_flags_offered(&self) -> u32 {
        if self.features & info::FEATURE_RX_CHECKSUM != 0 {
            crate::RX_CHECKSUM_VERIFIED
        } else {
            0
        }
    }

    fn is_current(&mut self, generation: u32) -> bool {
        if self.generation == Some(generation) {
            return true;
        }
        self.stats.stale_completions += 1;
        false
    }

    fn return_rx(&mut self, slot: RxSlot, len: u32, flags: u32) -> Result<bool, ServerError> {
        let descriptor = Descriptor {
            offset: slot.offset,
            len,
            flags,
            generation: slot.generation,
            reserved: 0,
        };
        // Cannot be full: nothing is taken without room for its return.
        self.rx_active.push(descriptor.as_bytes())?;
        self.rx_held.remove(slot.index);
        self.returned_since_signal = true;
        Ok(true)
    }

    /// The next frame the client wants sent, or `None`.
    pub fn next_tx(&mut self) -> Result<Option<TxFrame>, ServerError> {
        let Some((index, descriptor)) = self.next_valid(Direction::Tx)? else {
            return Ok(None);
        };
        self.tx_held.insert(index);
        let flags = if self.features & info::FEATURE_TX_CHECKSUM != 0 {
            descriptor.flags & crate::TX_CHECKSUM_OFFLOAD
        } else {
            0
        };
        Ok(Some(TxFrame {
            index,
            offset: descriptor.offset,
            len: descriptor.len,
            flags,
            generation: descriptor.generation,
        }))
    }

    /// Copy a frame out (a driver that sends by copying); returns its
    /// length. `out` must hold [`TxFrame::len`] bytes.
    pub fn frame(&self, frame: &TxFrame, out: &mut [u8]) -> Result<usize, ServerError> {
        let len = frame.len();
        let out = out.get_mut(..len).ok_or(ServerError::FrameTooLong)?;
        self.data
            .read_bulk(frame.offset as usize, out)
            .map_err(|_| ServerError::Data)?;
        Ok(len)
    }

    /// The host is done with a frame (`sent`: it went out; else it failed
    /// and is counted in `tx_errors`): the buffer goes back to the client.
    /// `Ok(false)`: the frame was from an earlier generation, dropped.
    pub fn complete_tx(&mut self, frame: TxFrame, sent: bool) -> Result<bool, ServerError> {
        if !self.is_current(frame.generation) {
            return Ok(false);
        }
        if sent {
            self.counters.tx_frames += 1;
            self.counters.tx_bytes += u64::from(frame.len);
        } else {
            self.counters.tx_errors += 1;
        }
        let descriptor = Descriptor {
            offset: frame.offset,
            len: 0,
            flags: 0,
            generation: frame.generation,
            reserved: 0,
        };
        self.tx_free.push(descriptor.as_bytes())?;
        self.tx_held.remove(frame.index);
        self.returned_since_signal = true;
        Ok(true)
    }

    /// When the client wants to be notified next (its TCP timers), if at
    /// all: the driver sets its own timer for it.
    pub fn client_wake_deadline(&self) -> Option<u64> {
        match info::client_wake(&self.info) {
            0 => None,
            deadline => Some(deadline),
        }
    }

    /// The client's wake-up time if it is still owed (not yet woken for):
    /// what the driver's own timer must cover. A deadline already served
    /// stays in the page until the client runs again; timing it again
    /// would fire at once, over and over (a driver above the client's
    /// priority then starves the client on seL4).
    pub fn client_wake_owed(&self) -> Option<u64> {
        self.client_wake_deadline()
            .filter(|&deadline| deadline != self.woken_for)
    }

    /// Whether the client's wake-up time has come (`now_ns` on the
    /// components' clock, `Env::now_ns`): then notify it. Once per
    /// deadline the client writes, so a stale one costs one notification.
    pub fn wake_due(&mut self, now_ns: u64) -> bool {
        match self.client_wake_deadline() {
            Some(deadline) if deadline <= now_ns && deadline != self.woken_for => {
                self.woken_for = deadline;
                true
            }
            _ => false,
        }
    }

    /// After a round: publishes the counters, and says whether to notify
    /// the client (buffers returned to a waiting client, or room made in a
    /// queue it waits to push to). Clears the requests: call once per round.
    pub fn client_needs_signal(&mut self) -> bool {
        self.publish_counters();
        let returned = core::mem::take(&mut self.returned_since_signal);
        let rx = returned && self.rx_active.consumer_needs_signal();
        let tx = returned && self.tx_free.consumer_needs_signal();
        let room_rx = self.rx_free.producer_needs_signal();
        let room_tx = self.tx_active.producer_needs_signal();
        rx || tx || room_rx || room_tx
    }

    /// Before the driver sleeps: ask the client for a signal when it posts
    /// a buffer or a frame, and look once more. `true`: safe to sleep.
    pub fn prepare_to_sleep(&mut self) -> Result<bool, ServerError> {
        let rx = self.rx_free.prepare_to_sleep()?;
        let tx = self.tx_active.prepare_to_sleep()?;
        Ok(rx && tx)
    }
}
