//! The NIC initiator as a plain state machine: no IPC, no rings, no clock
//! of its own. The component feeds it what happened (the primary opened
//! and the buffers' GPADLs exist, a completion, a host in-band message, a
//! transfer-page receive, a frame to send, the time) and takes from it
//! what to put on a ring ([`Initiator::front`] / [`Initiator::pop_sent`])
//! and what to tell the client ([`Initiator::pop_event`]). Memory is
//! reached through [`Buffers`]: the receive buffer (read, host-visible),
//! the send buffer (written), the client's frames (copied from, or named
//! to the host) and the client's receive buffers (a frame delivered).
//!
//! Every request that wants a completion lives in a slot; its [`Tag`]
//! (slot and sequence) is the context the channel's transaction table
//! hands back, so a completion for a slot since freed is recognised and
//! dropped (counted).
//!
//! Everything from the host is checked: NVSP lengths and counts
//! (`vmbus_protocol::nvsp`), RNDIS lengths and offsets against the range
//! they came in (`vmbus_protocol::rndis`), a frame longer than the MTU, an
//! RNDIS completion for no request, a send completion for nothing sent. A
//! refused receive is still completed (with a failure status) so the host
//! gets its receive-buffer space back.

use heapless::{Deque, Vec};
use vmbus_protocol::nvsp::{self, message_type as nvsp_type, version as nvsp_version};
use vmbus_protocol::rndis::{self, message_type as rndis_type, oid};
use zerocopy::{FromBytes, IntoBytes};

/// Requests waiting for a completion, all channels together.
pub const MAX_SLOTS: usize = 256;
/// Frames in flight to the host at most (the rest of the slots are for
/// control messages).
pub const MAX_TX: usize = MAX_SLOTS - 8;
/// Send-buffer sections the driver tracks (more are left unused).
pub const MAX_SECTIONS: usize = 1024;
/// Bytes of one RNDIS header place for a GPA-direct send (header,
/// packet, one checksum PPI).
pub const HEADER_PLACE: u32 = 64;
/// GPA-direct sends in flight at most (each holds a header place).
pub const MAX_DIRECT: usize = 128;
/// The longest RNDIS message the driver accepts from the host (a frame of
/// the largest MTU with its headers, or a control completion).
pub const MAX_RNDIS_MESSAGE: usize = 4096;
/// Channels at most: the primary and up to 7 sub-channels.
pub const MAX_CHANNELS: usize = 8;
/// The Ethernet header.
pub const ETHERNET_HEADER: u32 = 14;
/// Frames at most one transfer-page receive may carry (NVSP's limit with
/// receive-segment coalescing, the largest a host sends).
pub const MAX_RANGES: usize = 562;
/// A section smaller than this cannot hold the control messages.
pub const MIN_SECTION: u32 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// The MTU the driver asks for (the host's maximum frame size may
    /// lower it).
    pub mtu: u32,
    /// Sub-channels the driver can open.
    pub sub_channels: u16,
    pub receive_buffer_bytes: u32,
    pub send_buffer_bytes: u32,
    /// Ask the host for transmit and receive checksum offload.
    pub checksum_offload: bool,
    /// Frames up to this long are copied into a send-buffer section; longer
    /// ones are named to the host GPA-direct in the client's buffer.
    pub copy_break: u32,
    /// A control request (NVSP or RNDIS) not answered in this long: during
    /// start the device fails; while running an RNDIS RESET is sent.
    pub request_timeout_ns: u64,
    /// Nothing heard from the host in this long while running: send an
    /// RNDIS KEEPALIVE.
    pub keepalive_ns: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mtu: 1500,
            sub_channels: 0,
            receive_buffer_bytes: 1 << 20,
            send_buffer_bytes: 1 << 20,
            checksum_offload: true,
            copy_break: 512,
            request_timeout_ns: 5_000_000_000,
            keepalive_ns: 10_000_000_000,
        }
    }
}

/// The context of a request that wants a completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    pub slot: u16,
    pub seq: u16,
}

/// A padded NVSP message.
pub type NvspBytes = [u8; nvsp::GUEST_MESSAGE_SIZE];

/// What goes on a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// An in-band NVSP message; with a tag it asks for a completion.
    InBand {
        lane: u8,
        tag: Option<Tag>,
        message: NvspBytes,
    },
    /// SEND_RNDIS_PACKET whose RNDIS bytes are two GPA-direct pieces: the
    /// header (in the send buffer) and the client's frame (`token`).
    Direct {
        lane: u8,
        tag: Tag,
        message: NvspBytes,
        header_offset: u32,
        header_len: u32,
        token: u32,
        frame_len: u32,
    },
    /// The completion of a host transfer-page packet.
    Completion {
        lane: u8,
        transaction_id: u64,
        message: NvspBytes,
    },
}

impl Output {
    pub fn lane(&self) -> u8 {
        match *self {
            Output::InBand { lane, .. }
            | Output::Direct { lane, .. }
            | Output::Completion { lane, .. } => lane,
        }
    }
}

/// The memory the initiator reaches through the component.
pub trait Buffers {
    /// Copy `out.len()` bytes at `offset` of the receive buffer (already
    /// checked to lie inside it) into `out`.
    fn read_receive(&mut self, offset: u32, out: &mut [u8]) -> bool;
    /// Write `bytes` at `offset` of the send buffer.
    fn write_send(&mut self, offset: u32, bytes: &[u8]) -> bool;
    /// Copy the first `out.len()` bytes of the client's frame `token` into
    /// `out` (to read its headers for checksum offload).
    fn peek_frame(&mut self, token: u32, out: &mut [u8]) -> bool;
    /// Copy the client's frame `token` (`len` bytes) to `offset` of the
    /// send buffer.
    fn copy_frame(&mut self, token: u32, offset: u32, len: u32) -> bool;
    /// Hand a received frame to the client; false if it has no buffer
    /// (the frame is dropped and counted).
    fn deliver(&mut self, lane: u8, frame: &[u8], checksum_verified: bool) -> bool;
}

/// A frame the client wants sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TxRequest {
    /// The component's name for the frame (given back in
    /// [`Event::TxDone`]).
    pub token: u32,
    pub len: u32,
    /// Have the host fill in the IPv4/TCP/UDP checksums.
    pub checksum_offload: bool,
    /// A hash of the flow (spreads frames over the channels by the host's
    /// send table).
    pub flow_hash: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxRefused {
    /// Not running (starting, stopped, failed).
    NotRunning,
    /// No slot, section or header place free: try again after a completion.
    Busy,
    /// Longer than the MTU allows, or shorter than an Ethernet header.
    BadLength,
}

/// The device as the host described it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Device {
    pub mac: [u8; 6],
    pub mtu: u32,
    pub link_up: bool,
    /// In units of 100 bits/s (RNDIS's).
    pub link_speed: u32,
    /// The host took the checksum offload parameters.
    pub checksum_offload: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// NVSP agreed on this version.
    Negotiated {
        version: u32,
    },
    /// The host will offer this many sub-channels: open them.
    SubChannels(u16),
    /// Started: serve the client.
    Up(Device),
    /// The link went up or down (an RNDIS status indication).
    Link(bool),
    /// A frame is done with: the host sent it (`sent`) or it failed.
    TxDone {
        token: u32,
        sent: bool,
    },
    Note(Note),
    /// The device cannot go on (no common version, a refused buffer, a
    /// request never answered, a reset never completed): restart.
    Failed(&'static str),
    /// HALT sent and the buffers revoked.
    Halted,
}

/// Something worth a console line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// A host message refused (hostile or broken host).
    Refused(&'static str),
    /// A control request timed out: RNDIS RESET sent.
    Reset,
    /// An optional step the host refused (offload, RSS, sub-channels).
    Declined(&'static str),
}

/// What the initiator counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_receives: u64,
    /// Frames dropped because the client had no buffer.
    pub rx_no_buffer: u64,
    pub tx_frames: u64,
    pub tx_copied: u64,
    pub tx_direct: u64,
    pub tx_failed: u64,
    /// Host messages refused: every kind below is in here too.
    pub refused: u64,
    pub refused_frames_too_long: u64,
    pub refused_rndis: u64,
    pub refused_nvsp: u64,
    /// Completions for no request of ours (or of the wrong kind).
    pub refused_completions: u64,
    /// Transfer-page packets refused as a whole (completed with failure).
    pub refused_receives: u64,
    pub status_indications: u64,
    pub link_changes: u64,
    pub keepalives: u64,
    pub resets: u64,
    pub timeouts: u64,
    /// Receive completions that found the output queue full (never, while
    /// the component keeps [`Initiator::output_room`]).
    pub completions_lost: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Init(Step),
    Running,
    Halted,
    Failed,
}

/// The start, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Version(usize),
    ReceiveBuffer,
    SendBuffer,
    Rndis(RndisStep),
    /// NVSP SUBCHANNEL (between the RSS query and the RSS parameters).
    SubChannels,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RndisStep {
    Initialize,
    QueryMac,
    QueryMtu,
    QuerySpeed,
    QueryMedia,
    SetOffload,
    QueryRss,
    SetRss,
    SetFilter,
}

/// An RNDIS control request in flight (one at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Control {
    Step(RndisStep),
    Keepalive,
    Reset,
    /// After a reset: the filter again.
    Refilter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotUse {
    /// An NVSP request of the start (INIT, a buffer, sub-channels).
    Nvsp(Step),
    /// An RNDIS control message in a section.
    RndisControl { section: u16 },
    /// A frame copied into a section.
    TxCopy { token: u32, section: u16 },
    /// A frame named GPA-direct, its header in a header place.
    TxDirect { token: u32, place: u16 },
    /// HALT in a section (its NVSP completion frees the section).
    Halt { section: u16 },
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    seq: u16,
    used: Option<SlotUse>,
}

/// A fixed set of indices below `64 * W`.
#[derive(Clone, Copy, Debug)]
struct Bits<const W: usize> {
    words: [u64; W],
}

impl<const W: usize> Bits<W> {
    const fn new() -> Self {
        Bits { words: [0; W] }
    }
    /// Marks `0..count` free.
    fn fill(&mut self, count: usize) {
        self.words = [0; W];
        for index in 0..count.min(64 * W) {
            self.words[index / 64] |= 1 << (index % 64);
        }
    }
    fn take(&mut self) -> Option<u16> {
        let (at, word) = self.words.iter_mut().enumerate().find(|(_, w)| **w != 0)?;
        let bit = word.trailing_zeros();
        *word &= !(1 << bit);
        Some((at as u32 * 64 + bit) as u16)
    }
    /// Whether it was in use (a double free is refused).
    fn give(&mut self, index: u16) -> bool {
        let (word, bit) = (index as usize / 64, index % 64);
        let Some(word) = self.words.get_mut(word) else {
            return false;
        };
        if *word & (1 << bit) != 0 {
            return false;
        }
        *word |= 1 << bit;
        true
    }
    fn count(&self) -> u32 {
        self.words.iter().map(|w| w.count_ones()).sum()
    }
}

pub struct Initiator {
    config: Config,
    phase: Phase,
    version: Option<u32>,
    receive_gpadl: u32,
    send_gpadl: u32,
    /// The host's receive-buffer section (informational: the channel
    /// checks every range against the whole buffer).
    receive_section: Option<nvsp::ReceiveBufferSection>,
    section_size: u32,
    /// Sections for copies and control messages.
    sections: Bits<{ MAX_SECTIONS / 64 }>,
    /// Header places for GPA-direct sends (in the reserved sections).
    places: Bits<{ MAX_DIRECT / 64 }>,
    /// Where the header places start in the send buffer (0: none).
    places_at: u32,
    slots: [Slot; MAX_SLOTS],
    free_slots: Vec<u16, MAX_SLOTS>,
    tx_in_flight: usize,
    outputs: Deque<Output, { MAX_SLOTS + 16 }>,
    /// Completions of receives wait here when `outputs` is full (they
    /// must never be lost: the host's receive space depends on them).
    events: Deque<Event, 64>,
    tx_done: Deque<(u32, bool), MAX_SLOTS>,
    control: Option<(Control, u32, u64)>,
    next_request_id: u32,
    /// When an NVSP start request or the reset went out (for timeouts).
    nvsp_sent_at: Option<u64>,
    last_heard: u64,
    now: u64,
    device: Device,
    max_packets_per_message: u32,
    rss_queues: u32,
    sub_channels: u16,
    send_table: [u8; nvsp::SEND_TABLE_ENTRIES],
    open_lanes: u8,
    scratch: [u8; MAX_RNDIS_MESSAGE],
    pub stats: Stats,
}

impl Initiator {
    pub fn new(config: Config) -> Initiator {
        Initiator {
            config,
            phase: Phase::Idle,
            version: None,
            receive_gpadl: 0,
            send_gpadl: 0,
            receive_section: None,
            section_size: 0,
            sections: Bits::new(),
            places: Bits::new(),
            places_at: 0,
            slots: [Slot { seq: 0, used: None }; MAX_SLOTS],
            free_slots: (0..MAX_SLOTS as u16).rev().collect(),
            tx_in_flight: 0,
            outputs: Deque::new(),
            events: Deque::new(),
            tx_done: Deque::new(),
            control: None,
            next_request_id: 1,
            nvsp_sent_at: None,
            last_heard: 0,
            now: 0,
            device: Device::default(),
            max_packets_per_message: 1,
            rss_queues: 0,
            sub_channels: 0,
            send_table: [0; nvsp::SEND_TABLE_ENTRIES],
            open_lanes: 1,
            scratch: [0; MAX_RNDIS_MESSAGE],
            stats: Stats::default(),
        }
    }

    pub fn version(&self) -> Option<u32> {
        self.version
    }
    pub fn is_running(&self) -> bool {
        self.phase == Phase::Running
    }
    pub fn has_failed(&self) -> bool {
        self.phase == Phase::Failed
    }
    pub fn device(&self) -> Device {
        self.device
    }
    pub fn sub_channels(&self) -> u16 {
        self.sub_channels
    }
    pub fn section_size(&self) -> u32 {
        self.section_size
    }
    /// Send-buffer sections free now (all of them when nothing is in
    /// flight).
    pub fn free_sections(&self) -> u32 {
        self.sections.count()
    }
    /// GPA-direct header places free now.
    pub fn free_places(&self) -> u32 {
        self.places.count()
    }
    pub fn receive_section(&self) -> Option<nvsp::ReceiveBufferSection> {
        self.receive_section
    }
    pub fn send_table(&self) -> [u8; nvsp::SEND_TABLE_ENTRIES] {
        self.send_table
    }
    /// Frames the host has not completed yet.
    pub fn tx_in_flight(&self) -> usize {
        self.tx_in_flight
    }
    /// Whether a frame may be offered now (a slot is free).
    pub fn can_transmit(&self) -> bool {
        self.phase == Phase::Running && self.tx_in_flight < MAX_TX && !self.free_slots.is_empty()
    }

    /// The primary is open and the GPADLs over the receive and send
    /// buffers exist: negotiate.
    pub fn start(&mut self, receive_gpadl: u32, send_gpadl: u32, now: u64) {
        self.reset_state();
        self.now = now;
        self.last_heard = now;
        self.receive_gpadl = receive_gpadl;
        self.send_gpadl = send_gpadl;
        self.begin_version(0);
    }

    /// The primary channel is gone: everything in flight is lost, frames
    /// are given back as not sent.
    pub fn channel_lost(&mut self) {
        for index in 0..MAX_SLOTS {
            if let Some(SlotUse::TxCopy { token, .. } | SlotUse::TxDirect { token, .. }) =
                self.slots[index].used
            {
                let _ = self.tx_done.push_back((token, false));
            }
        }
        self.reset_state();
    }

    fn reset_state(&mut self) {
        self.phase = Phase::Idle;
        self.version = None;
        self.receive_section = None;
        self.section_size = 0;
        self.sections = Bits::new();
        self.places = Bits::new();
        self.places_at = 0;
        for slot in self.slots.iter_mut() {
            slot.used = None;
            slot.seq = slot.seq.wrapping_add(1);
        }
        self.free_slots = (0..MAX_SLOTS as u16).rev().collect();
        self.tx_in_flight = 0;
        self.outputs.clear();
        self.control = None;
        self.nvsp_sent_at = None;
        self.device = Device::default();
        self.rss_queues = 0;
        self.sub_channels = 0;
        self.send_table = [0; nvsp::SEND_TABLE_ENTRIES];
        self.open_lanes = 1;
    }

    fn fail(&mut self, why: &'static str) {
        if self.phase != Phase::Failed {
            self.phase = Phase::Failed;
            let _ = self.events.push_back(Event::Failed(why));
        }
    }

    fn refuse(&mut self, what: &'static str) {
        self.stats.refused += 1;
        let _ = self.events.push_back(Event::Note(Note::Refused(what)));
    }

    // ---- slots ----

    fn take_slot(&mut self, used: SlotUse) -> Option<Tag> {
        let slot = self.free_slots.pop()?;
        let entry = &mut self.slots[slot as usize];
        entry.seq = entry.seq.wrapping_add(1);
        entry.used = Some(used);
        Some(Tag {
            slot,
            seq: entry.seq,
        })
    }

    /// The slot's use if `tag` names it as it is now; frees it.
    fn finish_slot(&mut self, tag: Tag) -> Option<SlotUse> {
        let entry = self.slots.get_mut(tag.slot as usize)?;
        if entry.seq != tag.seq {
            return None;
        }
        let used = entry.used.take()?;
        let _ = self.free_slots.push(tag.slot);
        Some(used)
    }

    // ---- outputs ----

    /// The next thing to put on a ring (stays until [`Initiator::pop_sent`]).
    pub fn front(&self) -> Option<&Output> {
        self.outputs.front()
    }

    /// Outputs that may still be queued before the queue is full: the
    /// component sends what is queued before reading more host packets
    /// when this runs low (every receive queues a completion, and a lost
    /// completion would keep the host's receive space for good).
    pub fn output_room(&self) -> usize {
        self.outputs.capacity() - self.outputs.len()
    }

    /// The front output is on its ring.
    pub fn pop_sent(&mut self) {
        self.outputs.pop_front();
    }

    /// The front output cannot be sent (a range the channel refused, a
    /// channel gone): what it held is released; a frame is given back as
    /// not sent.
    pub fn send_failed(&mut self) {
        let Some(output) = self.outputs.pop_front() else {
            return;
        };
        let tag = match output {
            Output::InBand { tag: Some(tag), .. } | Output::Direct { tag, .. } => tag,
            _ => return,
        };
        if let Some(used) = self.finish_slot(tag) {
            self.release(used, false);
        }
    }

    pub fn pop_event(&mut self) -> Option<Event> {
        if let Some((token, sent)) = self.tx_done.pop_front() {
            return Some(Event::TxDone { token, sent });
        }
        self.events.pop_front()
    }

    fn push_output(&mut self, output: Output) -> bool {
        self.outputs.push_back(output).is_ok()
    }

    fn nvsp_message(message_type: u32, payload: &[u8]) -> NvspBytes {
        let mut message = [0u8; nvsp::GUEST_MESSAGE_SIZE];
        // Every payload is a few bytes: it fits.
        let _ = nvsp::write_message(&mut message, message_type, payload);
        message
    }

    fn send_nvsp(&mut self, message_type: u32, payload: &[u8], step: Option<Step>) {
        let tag = match step {
            Some(step) => match self.take_slot(SlotUse::Nvsp(step)) {
                Some(tag) => Some(tag),
                None => return self.fail("no slot for a start request"),
            },
            None => None,
        };
        let message = Self::nvsp_message(message_type, payload);
        if step.is_some() {
            self.nvsp_sent_at = Some(self.now);
        }
        if !self.push_output(Output::InBand {
            lane: 0,
            tag,
            message,
        }) {
            self.fail("the output queue is full");
        }
    }

    // ---- NVSP start ----

    fn begin_version(&mut self, index: usize) {
        let Some(&version) = nvsp_version::NEWEST_FIRST.get(index) else {
            return self.fail("the host speaks no NVSP version we know");
        };
        self.phase = Phase::Init(Step::Version(index));
        let init = nvsp::Init {
            min_protocol_version: version.into(),
            max_protocol_version: version.into(),
        };
        self.send_nvsp(nvsp_type::INIT, init.as_bytes(), Some(Step::Version(index)));
    }

    fn after_version(&mut self, version: u32) {
        self.version = Some(version);
        let _ = self.events.push_back(Event::Negotiated { version });
        if nvsp_version::supports_ndis_config(version) {
            let config = nvsp::SendNdisConfig {
                mtu: (self.config.mtu + ETHERNET_HEADER).into(),
                reserved: 0.into(),
                capabilities: 0.into(),
            };
            self.send_nvsp(nvsp_type::SEND_NDIS_CONFIG, config.as_bytes(), None);
        }
        let (major, minor) = nvsp_version::ndis_version(version);
        let ndis = nvsp::SendNdisVersion {
            ndis_major_version: major.into(),
            ndis_minor_version: minor.into(),
        };
        self.send_nvsp(nvsp_type::SEND_NDIS_VERSION, ndis.as_bytes(), None);
        self.phase = Phase::Init(Step::ReceiveBuffer);
        let buffer = nvsp::SendBuffer {
            gpadl_handle: self.receive_gpadl.into(),
            id: nvsp::RECEIVE_BUFFER_ID.into(),
            reserved: 0.into(),
        };
        self.send_nvsp(
            nvsp_type::SEND_RECEIVE_BUFFER,
            buffer.as_bytes(),
            Some(Step::ReceiveBuffer),
        );
    }

    fn send_send_buffer(&mut self) {
        self.phase = Phase::Init(Step::SendBuffer);
        let buffer = nvsp::SendBuffer {
            gpadl_handle: self.send_gpadl.into(),
            id: nvsp::SEND_BUFFER_ID.into(),
            reserved: 0.into(),
        };
        self.send_nvsp(
            nvsp_type::SEND_SEND_BUFFER,
            buffer.as_bytes(),
            Some(Step::SendBuffer),
        );
    }

    /// Cut the send buffer: sections for copies and control messages, and
    /// at its end whole sections for the GPA-direct header places.
    fn cut_send_buffer(&mut self, section_size: u32) -> bool {
        if section_size < MIN_SECTION || section_size > self.config.send_buffer_bytes {
            return false;
        }
        let total = (self.config.send_buffer_bytes / section_size) as usize;
        let total = total.min(MAX_SECTIONS);
        let place_bytes = HEADER_PLACE * MAX_DIRECT as u32;
        let reserved = place_bytes.div_ceil(section_size) as usize;
        // Keep GPA-direct only if enough sections stay for copies.
        let (usable, places) = if total >= reserved + 4 {
            (total - reserved, MAX_DIRECT)
        } else {
            (total, 0)
        };
        if usable == 0 {
            return false;
        }
        self.section_size = section_size;
        self.sections.fill(usable);
        self.places.fill(places);
        self.places_at = if places > 0 {
            usable as u32 * section_size
        } else {
            0
        };
        true
    }

    /// A completion for `tag` (the NVSP message in it).
    pub fn on_completion(&mut self, tag: Tag, payload: &[u8], buffers: &mut dyn Buffers) {
        self.last_heard = self.now;
        let Some(used) = self.finish_slot(tag) else {
            self.stats.refused_completions += 1;
            return self.refuse("a completion for no request of ours");
        };
        let message = match nvsp::parse(payload) {
            Ok(message) => message,
            Err(_) => {
                self.stats.refused_nvsp += 1;
                self.refuse("a completion too short for NVSP");
                return self.release(used, false);
            }
        };
        match used {
            SlotUse::Nvsp(step) => self.on_start_completion(step, &message, buffers),
            SlotUse::RndisControl { .. }
            | SlotUse::TxCopy { .. }
            | SlotUse::TxDirect { .. }
            | SlotUse::Halt { .. } => {
                let status = if message.message_type == nvsp_type::SEND_RNDIS_PACKET_COMPLETE {
                    message
                        .payload_as::<nvsp::SendRndisPacketComplete>()
                        .map(|c| c.status.get())
                        .ok()
                } else {
                    None
                };
                if status.is_none() {
                    self.stats.refused_nvsp += 1;
                    self.refuse("a send completion that is not SEND_RNDIS_PACKET_COMPLETE");
                }
                self.release(used, status == Some(nvsp::status::SUCCESS));
            }
        }
    }

    /// A completion that could not be decoded (the channel handed it back
    /// but its payload is unusable): the request failed.
    pub fn on_malformed(&mut self, tag: Tag) {
        self.stats.refused_nvsp += 1;
        self.refuse("a malformed completion");
        if let Some(used) = self.finish_slot(tag) {
            if let SlotUse::Nvsp(_) = used {
                return self.fail("a start request's completion was malformed");
            }
            self.release(used, false);
        }
    }

    /// Free what a finished slot held.
    fn release(&mut self, used: SlotUse, ok: bool) {
        match used {
            SlotUse::Nvsp(_) => {}
            SlotUse::RndisControl { section } | SlotUse::Halt { section } => {
                self.sections.give(section);
            }
            SlotUse::TxCopy { token, section } => {
                self.sections.give(section);
                self.tx_finished(token, ok);
            }
            SlotUse::TxDirect { token, place } => {
                self.places.give(place);
                self.tx_finished(token, ok);
            }
        }
    }

    fn tx_finished(&mut self, token: u32, sent: bool) {
        self.tx_in_flight = self.tx_in_flight.saturating_sub(1);
        if sent {
            self.stats.tx_frames += 1;
        } else {
            self.stats.tx_failed += 1;
        }
        let _ = self.tx_done.push_back((token, sent));
    }

    fn on_start_completion(
        &mut self,
        step: Step,
        message: &nvsp::Message<'_>,
        buffers: &mut dyn Buffers,
    ) {
        if self.phase != Phase::Init(step) {
            self.stats.refused_completions += 1;
            return self.refuse("a start completion out of order");
        }
        self.nvsp_sent_at = None;
        match step {
            Step::Version(index) => {
                let complete = match (
                    message.message_type,
                    message.payload_as::<nvsp::InitComplete>(),
                ) {
                    (nvsp_type::INIT_COMPLETE, Ok(complete)) => complete,
                    _ => {
                        self.stats.refused_nvsp += 1;
                        self.refuse("an INIT answer that is not INIT_COMPLETE");
                        return self.fail("INIT was not answered with INIT_COMPLETE");
                    }
                };
                if complete.status.get() == nvsp::status::SUCCESS {
                    self.after_version(nvsp_version::NEWEST_FIRST[index]);
                } else {
                    self.begin_version(index + 1);
                }
            }
            Step::ReceiveBuffer => {
                if message.message_type != nvsp_type::SEND_RECEIVE_BUFFER_COMPLETE {
                    self.stats.refused_nvsp += 1;
                    return self.fail("the receive buffer was not answered");
                }
                let buffer_len = self.config.receive_buffer_bytes;
                let checked = message
                    .receive_buffer_sections(1)
                    .map(|(status, mut sections)| (status, sections.next()));
                match checked {
                    Ok((nvsp::status::SUCCESS, Some(section))) => {
                        let slots_end = u64::from(section.offset.get())
                            + u64::from(section.sub_allocation_size.get())
                                * u64::from(section.num_sub_allocations.get());
                        let sane = section.sub_allocation_size.get() > 0
                            && section.num_sub_allocations.get() > 0
                            && slots_end <= u64::from(section.end_offset.get())
                            && section.end_offset.get() <= buffer_len;
                        if !sane {
                            self.stats.refused_nvsp += 1;
                            self.refuse("receive-buffer sections outside the buffer");
                            return self.fail("the host cut the receive buffer wrongly");
                        }
                        self.receive_section = Some(section);
                        self.send_send_buffer();
                    }
                    Ok((nvsp::status::SUCCESS, None)) => {
                        // No section described: the channel still checks
                        // every range against the whole buffer.
                        self.send_send_buffer();
                    }
                    Ok(_) => self.fail("the host refused the receive buffer"),
                    Err(_) => {
                        self.stats.refused_nvsp += 1;
                        self.refuse("a receive-buffer completion with a bad section count");
                        self.fail("the receive buffer's completion was malformed");
                    }
                }
            }
            Step::SendBuffer => {
                let complete = match (
                    message.message_type,
                    message.payload_as::<nvsp::SendSendBufferComplete>(),
                ) {
                    (nvsp_type::SEND_SEND_BUFFER_COMPLETE, Ok(complete)) => complete,
                    _ => {
                        self.stats.refused_nvsp += 1;
                        return self.fail("the send buffer was not answered");
                    }
                };
                if complete.status.get() != nvsp::status::SUCCESS {
                    return self.fail("the host refused the send buffer");
                }
                if !self.cut_send_buffer(complete.section_size.get()) {
                    self.stats.refused_nvsp += 1;
                    self.refuse("a send-buffer section size that does not fit");
                    return self.fail("the send buffer's section size is unusable");
                }
                self.rndis_step(buffers, RndisStep::Initialize);
            }
            Step::SubChannels => {
                let complete = match (
                    message.message_type,
                    message.payload_as::<nvsp::SubchannelComplete>(),
                ) {
                    (nvsp_type::SUBCHANNEL, Ok(complete)) => complete,
                    _ => {
                        self.stats.refused_nvsp += 1;
                        self.refuse("a SUBCHANNEL answer of another type");
                        return self.rndis_step(buffers, RndisStep::SetFilter);
                    }
                };
                let wanted = self.wanted_sub_channels();
                let granted = complete.num_subchannels.get();
                if complete.status.get() != nvsp::status::SUCCESS || granted == 0 {
                    let _ = self
                        .events
                        .push_back(Event::Note(Note::Declined("sub-channels")));
                    return self.rndis_step(buffers, RndisStep::SetFilter);
                }
                if granted > u32::from(wanted) {
                    self.stats.refused_nvsp += 1;
                    self.refuse("more sub-channels than asked for");
                }
                self.sub_channels = granted.min(u32::from(wanted)) as u16;
                let _ = self.events.push_back(Event::SubChannels(self.sub_channels));
                self.rndis_step(buffers, RndisStep::SetRss);
            }
            Step::Rndis(_) => {}
        }
    }
}

// ---- RNDIS control ----

impl Initiator {
    fn wanted_sub_channels(&self) -> u16 {
        let host = self
            .rss_queues
            .saturating_sub(1)
            .min(MAX_CHANNELS as u32 - 1) as u16;
        self.config.sub_channels.min(host)
    }

    /// Write an RNDIS control message into a free section and queue its
    /// SEND_RNDIS_PACKET (control channel type).
    fn send_rndis_control(
        &mut self,
        buffers: &mut dyn Buffers,
        rndis_bytes: &[u8],
        halt: bool,
    ) -> bool {
        let Some(section) = self.sections.take() else {
            return false;
        };
        let used = if halt {
            SlotUse::Halt { section }
        } else {
            SlotUse::RndisControl { section }
        };
        let Some(tag) = self.take_slot(used) else {
            self.sections.give(section);
            return false;
        };
        let offset = u32::from(section) * self.section_size;
        if rndis_bytes.len() > self.section_size as usize
            || !buffers.write_send(offset, rndis_bytes)
        {
            if let Some(used) = self.finish_slot(tag) {
                self.release(used, false);
            }
            return false;
        }
        let send = nvsp::SendRndisPacket {
            channel_type: nvsp::channel_type::CONTROL.into(),
            send_buffer_section_index: u32::from(section).into(),
            send_buffer_section_size: (rndis_bytes.len() as u32).into(),
        };
        let message = Self::nvsp_message(nvsp_type::SEND_RNDIS_PACKET, send.as_bytes());
        self.push_output(Output::InBand {
            lane: 0,
            tag: Some(tag),
            message,
        })
    }
}

impl Initiator {
    fn request_id(&mut self) -> u32 {
        let id = self.next_request_id;
        self.next_request_id = self.next_request_id.wrapping_add(1).max(1);
        id
    }

    /// Send one RNDIS control request and remember it (one at a time).
    fn send_control(&mut self, buffers: &mut dyn Buffers, control: Control) {
        let id = self.request_id();
        let mut bytes = [0u8; 1024];
        let len = match control {
            Control::Step(RndisStep::Initialize) => {
                rndis::write_initialize(&mut bytes, id, rndis::GUEST_MAX_TRANSFER_SIZE)
            }
            Control::Step(RndisStep::QueryMac) => {
                query(&mut bytes, id, oid::IEEE_802_3_PERMANENT_ADDRESS)
            }
            Control::Step(RndisStep::QueryMtu) => {
                query(&mut bytes, id, oid::GEN_MAXIMUM_FRAME_SIZE)
            }
            Control::Step(RndisStep::QuerySpeed) => query(&mut bytes, id, oid::GEN_LINK_SPEED),
            Control::Step(RndisStep::QueryMedia) => {
                query(&mut bytes, id, oid::GEN_MEDIA_CONNECT_STATUS)
            }
            Control::Step(RndisStep::QueryRss) => {
                query(&mut bytes, id, oid::GEN_RECEIVE_SCALE_CAPABILITIES)
            }
            Control::Step(RndisStep::SetOffload) => {
                let on = rndis::offload_checksum::TX_RX_ENABLED;
                let params = rndis::NdisOffloadParameters {
                    header: rndis::NdisObjectHeader {
                        object_type: rndis::object_type::DEFAULT,
                        revision: rndis::OFFLOAD_PARAMETERS_REVISION_1,
                        size: (rndis::OFFLOAD_PARAMETERS_SIZE_REVISION_1 as u16).into(),
                    },
                    ipv4_checksum: on,
                    tcp4_checksum: on,
                    udp4_checksum: on,
                    ..Default::default()
                };
                let info = &params.as_bytes()[..rndis::OFFLOAD_PARAMETERS_SIZE_REVISION_1];
                rndis::write_oid_request(
                    &mut bytes,
                    rndis_type::SET,
                    id,
                    oid::TCP_OFFLOAD_PARAMETERS,
                    info,
                )
            }
            Control::Step(RndisStep::SetRss) => {
                let info = self.rss_parameters();
                rndis::write_oid_request(
                    &mut bytes,
                    rndis_type::SET,
                    id,
                    oid::GEN_RECEIVE_SCALE_PARAMETERS,
                    &info,
                )
            }
            Control::Step(RndisStep::SetFilter) | Control::Refilter => {
                let filter = rndis::packet_filter::DIRECTED
                    | rndis::packet_filter::BROADCAST
                    | rndis::packet_filter::ALL_MULTICAST;
                rndis::write_oid_request(
                    &mut bytes,
                    rndis_type::SET,
                    id,
                    oid::GEN_CURRENT_PACKET_FILTER,
                    &filter.to_le_bytes(),
                )
            }
            Control::Keepalive => rndis::write_request_id(&mut bytes, rndis_type::KEEPALIVE, id),
            Control::Reset => rndis::write_reset(&mut bytes),
        };
        let Some(len) = len else {
            return self.fail("an RNDIS request does not fit its buffer");
        };
        if !self.send_rndis_control(buffers, &bytes[..len], false) {
            return self.fail("no send-buffer section for an RNDIS request");
        }
        self.control = Some((control, id, self.now));
        match control {
            Control::Keepalive => self.stats.keepalives += 1,
            Control::Reset => self.stats.resets += 1,
            _ => {}
        }
    }

    /// RSS parameters: Toeplitz over IPv4/TCP, the receive indirection
    /// table spread over the primary and the sub-channels, a fixed key.
    fn rss_parameters(&self) -> [u8; RSS_INFO_BYTES] {
        let mut info = [0u8; RSS_INFO_BYTES];
        let table_at = rndis::RSS_PARAMETERS_SIZE_REVISION_2;
        let key_at = table_at + rndis::RSS_INDIRECTION_ENTRIES * 4;
        let params = rndis::RssParameters {
            header: rndis::NdisObjectHeader {
                object_type: rndis::object_type::RSS_PARAMETERS,
                revision: rndis::RSS_PARAMETERS_REVISION_2,
                size: (rndis::RSS_PARAMETERS_SIZE_REVISION_2 as u16).into(),
            },
            hash_information: (rndis::rss_hash::FUNCTION_TOEPLITZ
                | rndis::rss_hash::IPV4
                | rndis::rss_hash::TCP_IPV4)
                .into(),
            indirection_table_size: ((rndis::RSS_INDIRECTION_ENTRIES * 4) as u16).into(),
            indirection_table_offset: (table_at as u32).into(),
            hash_secret_key_size: (rndis::RSS_HASH_KEY_SIZE as u16).into(),
            hash_secret_key_offset: (key_at as u32).into(),
            ..Default::default()
        };
        info[..table_at].copy_from_slice(params.as_bytes());
        let channels = u32::from(self.sub_channels) + 1;
        for (entry, place) in info[table_at..key_at].chunks_exact_mut(4).enumerate() {
            place.copy_from_slice(&(entry as u32 % channels).to_le_bytes());
        }
        info[key_at..].copy_from_slice(&RSS_KEY);
        info
    }

    /// Begin an RNDIS start step (skipping those that do not apply).
    fn rndis_step(&mut self, buffers: &mut dyn Buffers, step: RndisStep) {
        let step = match step {
            RndisStep::SetOffload if !self.config.checksum_offload => RndisStep::QueryRss,
            other => other,
        };
        let step = match step {
            RndisStep::QueryRss
                if self.config.sub_channels == 0
                    || !self.version.is_some_and(nvsp_version::supports_subchannels) =>
            {
                RndisStep::SetFilter
            }
            other => other,
        };
        self.phase = Phase::Init(Step::Rndis(step));
        self.send_control(buffers, Control::Step(step));
    }

    fn next_step(&mut self, buffers: &mut dyn Buffers, done: RndisStep) {
        let next = match done {
            RndisStep::Initialize => RndisStep::QueryMac,
            RndisStep::QueryMac => RndisStep::QueryMtu,
            RndisStep::QueryMtu => RndisStep::QuerySpeed,
            RndisStep::QuerySpeed => RndisStep::QueryMedia,
            RndisStep::QueryMedia => RndisStep::SetOffload,
            RndisStep::SetOffload => RndisStep::QueryRss,
            RndisStep::QueryRss => {
                if self.wanted_sub_channels() == 0 {
                    RndisStep::SetFilter
                } else {
                    self.phase = Phase::Init(Step::SubChannels);
                    let request = nvsp::SubchannelRequest {
                        operation: nvsp::SUBCHANNEL_ALLOCATE.into(),
                        num_subchannels: u32::from(self.wanted_sub_channels()).into(),
                    };
                    return self.send_nvsp(
                        nvsp_type::SUBCHANNEL,
                        request.as_bytes(),
                        Some(Step::SubChannels),
                    );
                }
            }
            RndisStep::SetRss => RndisStep::SetFilter,
            RndisStep::SetFilter => {
                self.phase = Phase::Running;
                let _ = self.events.push_back(Event::Up(self.device));
                return;
            }
        };
        self.rndis_step(buffers, next);
    }

    /// An RNDIS completion (from the receive buffer) for the control
    /// request in flight.
    fn on_rndis_completion(&mut self, buffers: &mut dyn Buffers, message: &rndis::Message<'_>) {
        let Some((control, id, _)) = self.control else {
            self.stats.refused_completions += 1;
            return self.refuse("an RNDIS completion for no request");
        };
        let expected = match control {
            Control::Step(RndisStep::Initialize) => rndis_type::INITIALIZE_COMPLETE,
            Control::Step(
                RndisStep::QueryMac
                | RndisStep::QueryMtu
                | RndisStep::QuerySpeed
                | RndisStep::QueryMedia
                | RndisStep::QueryRss,
            ) => rndis_type::QUERY_COMPLETE,
            Control::Step(RndisStep::SetOffload | RndisStep::SetRss | RndisStep::SetFilter)
            | Control::Refilter => rndis_type::SET_COMPLETE,
            Control::Keepalive => rndis_type::KEEPALIVE_COMPLETE,
            Control::Reset => rndis_type::RESET_COMPLETE,
        };
        // RESET_COMPLETE carries no request id.
        let id_matches = control == Control::Reset || message.request_id().ok() == Some(id);
        if message.message_type != expected || !id_matches {
            self.stats.refused_completions += 1;
            return self.refuse("an RNDIS completion of another request");
        }
        self.control = None;
        match control {
            Control::Keepalive => {}
            Control::Reset => {
                // The host may have dropped its filter: set it again.
                self.send_control(buffers, Control::Refilter);
            }
            Control::Refilter => {}
            Control::Step(step) => self.on_step_completion(buffers, step, message),
        }
    }

    fn on_step_completion(
        &mut self,
        buffers: &mut dyn Buffers,
        step: RndisStep,
        message: &rndis::Message<'_>,
    ) {
        match step {
            RndisStep::Initialize => {
                let Ok(complete) = message.fixed::<rndis::InitializeComplete>() else {
                    self.stats.refused_rndis += 1;
                    return self.fail("INITIALIZE_COMPLETE too short");
                };
                if complete.status.get() != rndis::status::SUCCESS {
                    return self.fail("the host refused RNDIS INITIALIZE");
                }
                self.max_packets_per_message = complete.max_packets_per_message.get().max(1);
            }
            RndisStep::QueryMac
            | RndisStep::QueryMtu
            | RndisStep::QuerySpeed
            | RndisStep::QueryMedia
            | RndisStep::QueryRss => {
                let (status, info) = match message.query_complete() {
                    Ok((complete, info)) => (complete.status.get(), info),
                    Err(_) => {
                        self.stats.refused_rndis += 1;
                        self.refuse("a QUERY completion with a bad information buffer");
                        (rndis::status::INVALID_DATA, &[][..])
                    }
                };
                let ok = status == rndis::status::SUCCESS;
                let word = info
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                match step {
                    RndisStep::QueryMac => match info.get(..6) {
                        Some(mac) if ok => self.device.mac.copy_from_slice(mac),
                        _ => return self.fail("the host gave no MAC address"),
                    },
                    RndisStep::QueryMtu => {
                        let limit = self.config.mtu.min(MAX_MTU);
                        self.device.mtu = match word {
                            Some(mtu) if ok && (MIN_MTU..=limit).contains(&mtu) => mtu,
                            Some(mtu) if ok && mtu > limit => limit,
                            _ => {
                                self.stats.refused_rndis += u64::from(ok);
                                limit
                            }
                        };
                    }
                    RndisStep::QuerySpeed => {
                        self.device.link_speed = word.filter(|_| ok).unwrap_or(0)
                    }
                    RndisStep::QueryMedia => {
                        self.device.link_up = ok && word == Some(rndis::media_state::CONNECTED);
                    }
                    _ => {
                        // RSS capabilities: the receive queues the host has.
                        self.rss_queues = match rndis::RssCapabilities::read_from_prefix(info) {
                            Ok((caps, _)) if ok => caps.number_of_receive_queues.get(),
                            _ => {
                                let _ = self.events.push_back(Event::Note(Note::Declined("RSS")));
                                0
                            }
                        };
                    }
                }
            }
            RndisStep::SetOffload | RndisStep::SetRss | RndisStep::SetFilter => {
                let status = message
                    .fixed::<rndis::StatusComplete>()
                    .map(|c| c.status.get());
                let ok = status == Ok(rndis::status::SUCCESS);
                match step {
                    RndisStep::SetOffload => {
                        self.device.checksum_offload = ok;
                        if !ok {
                            let _ = self
                                .events
                                .push_back(Event::Note(Note::Declined("checksum offload")));
                        }
                    }
                    RndisStep::SetRss if !ok => {
                        let _ = self
                            .events
                            .push_back(Event::Note(Note::Declined("RSS parameters")));
                    }
                    RndisStep::SetFilter if !ok => {
                        return self.fail("the host refused the packet filter")
                    }
                    _ => {}
                }
            }
        }
        self.next_step(buffers, step);
    }
}

fn query(out: &mut [u8], id: u32, oid: u32) -> Option<usize> {
    rndis::write_oid_request(out, rndis_type::QUERY, id, oid, &[])
}

/// The RSS parameters' information buffer: the record, the table, the key.
const RSS_INFO_BYTES: usize = rndis::RSS_PARAMETERS_SIZE_REVISION_2
    + rndis::RSS_INDIRECTION_ENTRIES * 4
    + rndis::RSS_HASH_KEY_SIZE;
/// The Toeplitz key (Microsoft's sample key, as drivers commonly use).
const RSS_KEY: [u8; rndis::RSS_HASH_KEY_SIZE] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];
/// The smallest MTU IPv4 needs.
pub const MIN_MTU: u32 = 68;
/// The largest MTU a 2048-byte client buffer holds.
pub const MAX_MTU: u32 = 2048 - ETHERNET_HEADER;

// ---- receiving ----

impl Initiator {
    /// A transfer-page packet on `lane` whose ranges the channel checked
    /// to lie inside the receive buffer. Each range is one RNDIS message:
    /// copied into private memory, then checked and acted on. The packet
    /// is completed (success, or failure if its NVSP message is not
    /// SEND_RNDIS_PACKET) so the host may reuse the space.
    pub fn on_receive(
        &mut self,
        lane: u8,
        transaction_id: u64,
        payload: &[u8],
        ranges: impl Iterator<Item = (u32, u32)>,
        buffers: &mut dyn Buffers,
    ) {
        self.last_heard = self.now;
        self.stats.rx_receives += 1;
        let is_rndis = nvsp::parse(payload)
            .ok()
            .filter(|m| m.message_type == nvsp_type::SEND_RNDIS_PACKET)
            .and_then(|m| m.payload_as::<nvsp::SendRndisPacket>().ok())
            .is_some();
        if !is_rndis {
            self.stats.refused_nvsp += 1;
            self.stats.refused_receives += 1;
            self.refuse("a receive that is not SEND_RNDIS_PACKET");
            return self.complete_receive(lane, transaction_id, nvsp::status::FAILURE);
        }
        for (index, (offset, len)) in ranges.enumerate() {
            if index >= MAX_RANGES {
                self.stats.refused_receives += 1;
                self.refuse("more frames in one receive than NVSP allows");
                break;
            }
            self.receive_range(lane, offset, len, buffers);
        }
        self.complete_receive(lane, transaction_id, nvsp::status::SUCCESS);
    }

    /// A transfer-page packet the channel refused (a range outside the
    /// receive buffer, another set): nothing of it was read; complete it
    /// with a failure so the host is not left waiting.
    pub fn on_receive_refused(&mut self, lane: u8, transaction_id: u64) {
        self.stats.refused_receives += 1;
        self.refuse("a receive naming bytes outside the receive buffer");
        self.complete_receive(lane, transaction_id, nvsp::status::FAILURE);
    }

    fn complete_receive(&mut self, lane: u8, transaction_id: u64, status: u32) {
        let complete = nvsp::SendRndisPacketComplete {
            status: status.into(),
        };
        let message =
            Self::nvsp_message(nvsp_type::SEND_RNDIS_PACKET_COMPLETE, complete.as_bytes());
        if !self.push_output(Output::Completion {
            lane,
            transaction_id,
            message,
        }) {
            // The component keeps room (`output_room`) before it reads a
            // host packet; counted if that ever fails.
            self.stats.completions_lost += 1;
        }
    }

    fn receive_range(&mut self, lane: u8, offset: u32, len: u32, buffers: &mut dyn Buffers) {
        let len = len as usize;
        if len > MAX_RNDIS_MESSAGE {
            self.stats.refused_frames_too_long += 1;
            return self.refuse("an RNDIS message longer than any the driver takes");
        }
        // One copy out of the host-visible buffer; everything after reads
        // only the private copy.
        if !buffers.read_receive(offset, &mut self.scratch[..len]) {
            return self.refuse("a receive range the driver cannot read");
        }
        let message_type = match rndis::parse(&self.scratch[..len]) {
            Ok(message) => message.message_type,
            Err(_) => {
                self.stats.refused_rndis += 1;
                return self.refuse("an RNDIS message whose length disagrees with its range");
            }
        };
        if message_type == rndis_type::PACKET {
            return self.on_frame(lane, len, buffers);
        }
        // Control messages are short: moved to the stack so the handlers
        // may change the initiator.
        let mut control = [0u8; MAX_CONTROL_MESSAGE];
        let Some(copy) = control.get_mut(..len) else {
            self.stats.refused_rndis += 1;
            return self.refuse("an RNDIS control message longer than any the driver takes");
        };
        copy.copy_from_slice(&self.scratch[..len]);
        let Ok(message) = rndis::parse(&control[..len]) else {
            return;
        };
        match message.message_type {
            rndis_type::INDICATE_STATUS => self.on_status(&message),
            rndis_type::INITIALIZE_COMPLETE
            | rndis_type::QUERY_COMPLETE
            | rndis_type::SET_COMPLETE
            | rndis_type::RESET_COMPLETE
            | rndis_type::KEEPALIVE_COMPLETE => self.on_rndis_completion(buffers, &message),
            // The host asking whether we live needs no answer (Linux sends
            // none either).
            rndis_type::KEEPALIVE => {}
            _ => {
                self.stats.refused_rndis += 1;
                self.refuse("an RNDIS message of an unknown type");
            }
        }
    }

    fn on_frame(&mut self, lane: u8, len: usize, buffers: &mut dyn Buffers) {
        if self.phase != Phase::Running {
            // Frames before the filter is set (or after a failure): not
            // for anyone yet.
            self.stats.rx_no_buffer += 1;
            return;
        }
        let max = (self.device.mtu + ETHERNET_HEADER) as usize;
        let view = frame_view(&self.scratch[..len], max, self.device.checksum_offload);
        let (range, checksum_verified, bad_ppi) = match view {
            Ok(view) => view,
            Err(FrameRefusal::TooLong) => {
                self.stats.refused_frames_too_long += 1;
                return self.refuse("a frame longer than the MTU");
            }
            Err(FrameRefusal::Malformed(what)) => {
                self.stats.refused_rndis += 1;
                return self.refuse(what);
            }
        };
        if bad_ppi {
            // The frame is fine; its checksum claim is not believed.
            self.stats.refused_rndis += 1;
            self.refuse("a malformed per-packet info");
        }
        let frame = &self.scratch[range];
        if buffers.deliver(lane, frame, checksum_verified) {
            self.stats.rx_frames += 1;
            self.stats.rx_bytes += frame.len() as u64;
        } else {
            self.stats.rx_no_buffer += 1;
        }
    }

    fn on_status(&mut self, message: &rndis::Message<'_>) {
        self.stats.status_indications += 1;
        let status = match message.indicate_status() {
            Ok((status, _)) => status,
            Err(_) => {
                self.stats.refused_rndis += 1;
                return self.refuse("a status indication with a bad buffer");
            }
        };
        let up = match status {
            rndis::status::MEDIA_CONNECT => true,
            rndis::status::MEDIA_DISCONNECT => false,
            rndis::status::NETWORK_CHANGE => {
                // The network behind the link changed: down and up, so the
                // client renews what it learned (DHCP, ARP).
                if self.device.link_up {
                    self.link(false);
                }
                true
            }
            _ => return,
        };
        self.link(up);
    }

    fn link(&mut self, up: bool) {
        if self.device.link_up != up {
            self.device.link_up = up;
            self.stats.link_changes += 1;
            if self.phase == Phase::Running {
                let _ = self.events.push_back(Event::Link(up));
            }
        }
    }

    /// A host in-band message (not a completion): the send table, or
    /// messages the driver has no use for (counted).
    pub fn on_in_band(&mut self, payload: &[u8]) {
        self.last_heard = self.now;
        let message = match nvsp::parse(payload) {
            Ok(message) => message,
            Err(_) => {
                self.stats.refused_nvsp += 1;
                return self.refuse("an in-band message too short for NVSP");
            }
        };
        match message.message_type {
            nvsp_type::SEND_INDIRECTION_TABLE => {
                let version = self.version.unwrap_or(0);
                match message.send_table(version) {
                    Ok(table) => {
                        for (slot, channel) in self.send_table.iter_mut().zip(table.iter().cycle())
                        {
                            // A channel we never opened: the primary.
                            *slot = if *channel <= u32::from(self.sub_channels) {
                                *channel as u8
                            } else {
                                0
                            };
                        }
                    }
                    Err(_) => {
                        self.stats.refused_nvsp += 1;
                        self.refuse("a send table whose count or offset is wrong");
                    }
                }
            }
            nvsp_type::SEND_VF_ASSOCIATION | nvsp_type::SWITCH_DATA_PATH => {}
            _ => {
                self.stats.refused_nvsp += 1;
                self.refuse("an in-band NVSP message of an unexpected type");
            }
        }
    }

    /// Sub-channel `lane` is open (frames may be sent on it).
    pub fn lane_opened(&mut self, lane: u8) {
        if (lane as usize) < MAX_CHANNELS && u16::from(lane) <= self.sub_channels {
            self.open_lanes |= 1 << lane;
        }
    }

    /// Sub-channel `lane` is gone: its frames in flight are lost (the
    /// component fails them through the channel), nothing more goes there.
    pub fn lane_lost(&mut self, lane: u8) {
        if lane > 0 && (lane as usize) < MAX_CHANNELS {
            self.open_lanes &= !(1 << lane);
        }
    }

    /// A request whose channel went away (its completion will not come).
    pub fn request_lost(&mut self, tag: Tag) {
        if let Some(used) = self.finish_slot(tag) {
            if let SlotUse::Nvsp(_) = used {
                return self.fail("a start request was lost with its channel");
            }
            self.release(used, false);
        }
    }
}

// ---- sending ----

impl Initiator {
    fn lane_for(&self, flow_hash: u32) -> u8 {
        let lane = self.send_table[flow_hash as usize % nvsp::SEND_TABLE_ENTRIES];
        if self.open_lanes & (1 << lane) != 0 {
            lane
        } else {
            0
        }
    }

    /// Queue a frame for the host: copied into a section when it is short
    /// (or when GPA-direct has no header place), else its header in a
    /// header place and the frame named GPA-direct. [`Event::TxDone`]
    /// gives the token back once the host completed it.
    pub fn transmit(&mut self, tx: TxRequest, buffers: &mut dyn Buffers) -> Result<(), TxRefused> {
        if self.phase != Phase::Running {
            return Err(TxRefused::NotRunning);
        }
        if tx.len < ETHERNET_HEADER || tx.len > self.device.mtu + ETHERNET_HEADER {
            return Err(TxRefused::BadLength);
        }
        // Room for the frame's output and for the completions of what the
        // host may send meanwhile.
        if self.tx_in_flight >= MAX_TX || self.free_slots.is_empty() || self.output_room() < 16 {
            return Err(TxRefused::Busy);
        }
        let checksum = if tx.checksum_offload && self.device.checksum_offload {
            checksum_request(buffers, tx.token)
        } else {
            None
        };
        let checksum_bytes = checksum.map(u32::to_le_bytes);
        let ppis: &[(u32, &[u8])] = match &checksum_bytes {
            Some(bytes) => &[(rndis::ppi::TCP_IP_CHECKSUM, bytes)],
            None => &[],
        };
        let mut header = [0u8; HEADER_PLACE as usize];
        let Some(header_len) = rndis::write_packet_header(&mut header, tx.len as usize, ppis)
        else {
            return Err(TxRefused::BadLength);
        };
        let header_len = header_len as u32;
        let lane = self.lane_for(tx.flow_hash);
        let fits_section = header_len + tx.len <= self.section_size;
        let direct = tx.len > self.config.copy_break || !fits_section;
        if direct {
            if let Some(place) = self.places.take() {
                return self.transmit_direct(
                    tx,
                    buffers,
                    lane,
                    place,
                    &header[..header_len as usize],
                );
            }
        }
        if !fits_section {
            return Err(TxRefused::Busy);
        }
        let Some(section) = self.sections.take() else {
            return Err(TxRefused::Busy);
        };
        let Some(tag) = self.take_slot(SlotUse::TxCopy {
            token: tx.token,
            section,
        }) else {
            self.sections.give(section);
            return Err(TxRefused::Busy);
        };
        let offset = u32::from(section) * self.section_size;
        let written = buffers.write_send(offset, &header[..header_len as usize])
            && buffers.copy_frame(tx.token, offset + header_len, tx.len);
        if !written {
            self.finish_slot(tag);
            self.sections.give(section);
            return Err(TxRefused::BadLength);
        }
        let send = nvsp::SendRndisPacket {
            channel_type: nvsp::channel_type::DATA.into(),
            send_buffer_section_index: u32::from(section).into(),
            send_buffer_section_size: (header_len + tx.len).into(),
        };
        let message = Self::nvsp_message(nvsp_type::SEND_RNDIS_PACKET, send.as_bytes());
        self.tx_in_flight += 1;
        self.stats.tx_copied += 1;
        let _ = self.push_output(Output::InBand {
            lane,
            tag: Some(tag),
            message,
        });
        Ok(())
    }

    fn transmit_direct(
        &mut self,
        tx: TxRequest,
        buffers: &mut dyn Buffers,
        lane: u8,
        place: u16,
        header: &[u8],
    ) -> Result<(), TxRefused> {
        let Some(tag) = self.take_slot(SlotUse::TxDirect {
            token: tx.token,
            place,
        }) else {
            self.places.give(place);
            return Err(TxRefused::Busy);
        };
        let header_offset = self.places_at + u32::from(place) * HEADER_PLACE;
        if !buffers.write_send(header_offset, header) {
            self.finish_slot(tag);
            self.places.give(place);
            return Err(TxRefused::BadLength);
        }
        let send = nvsp::SendRndisPacket {
            channel_type: nvsp::channel_type::DATA.into(),
            send_buffer_section_index: nvsp::NO_SEND_BUFFER_SECTION.into(),
            send_buffer_section_size: 0.into(),
        };
        let message = Self::nvsp_message(nvsp_type::SEND_RNDIS_PACKET, send.as_bytes());
        self.tx_in_flight += 1;
        self.stats.tx_direct += 1;
        let _ = self.push_output(Output::Direct {
            lane,
            tag,
            message,
            header_offset,
            header_len: header.len() as u32,
            token: tx.token,
            frame_len: tx.len,
        });
        Ok(())
    }

    // ---- time, keepalive, halt ----

    /// The earliest time [`Initiator::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        let timeout = self.config.request_timeout_ns;
        let request = self
            .control
            .map(|(_, _, at)| at)
            .or(self.nvsp_sent_at)
            .map(|at| at.saturating_add(timeout));
        let keepalive = (self.phase == Phase::Running && self.control.is_none())
            .then(|| self.last_heard.saturating_add(self.config.keepalive_ns));
        match (request, keepalive) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The time: a request past its timeout fails the start (or resets
    /// the device while running); a quiet host gets a KEEPALIVE.
    pub fn tick(&mut self, now: u64, buffers: &mut dyn Buffers) {
        self.now = now;
        let timeout = self.config.request_timeout_ns;
        if matches!(self.phase, Phase::Idle | Phase::Failed | Phase::Halted) {
            return;
        }
        if let Some(at) = self.nvsp_sent_at {
            if now.saturating_sub(at) >= timeout {
                self.stats.timeouts += 1;
                return self.fail("the host did not answer an NVSP request");
            }
        }
        if let Some((control, _, at)) = self.control {
            if now.saturating_sub(at) < timeout {
                return;
            }
            self.stats.timeouts += 1;
            if self.phase != Phase::Running {
                return self.fail("the host did not answer an RNDIS request");
            }
            if control == Control::Reset {
                return self.fail("the host did not complete an RNDIS RESET");
            }
            self.control = None;
            let _ = self.events.push_back(Event::Note(Note::Reset));
            return self.send_control(buffers, Control::Reset);
        }
        if self.phase == Phase::Running
            && now.saturating_sub(self.last_heard) >= self.config.keepalive_ns
        {
            self.last_heard = now;
            self.send_control(buffers, Control::Keepalive);
        }
    }

    /// Stop the device: RNDIS HALT, then revoke the send and receive
    /// buffers (the host stops using them; the component may then tear
    /// down the GPADLs).
    pub fn halt(&mut self, buffers: &mut dyn Buffers) {
        if !matches!(self.phase, Phase::Running | Phase::Init(_)) {
            return;
        }
        if self.section_size > 0 {
            let id = self.request_id();
            let mut bytes = [0u8; 16];
            if let Some(len) = rndis::write_request_id(&mut bytes, rndis_type::HALT, id) {
                let _ = self.send_rndis_control(buffers, &bytes[..len], true);
            }
        }
        let revoke_send = nvsp::RevokeBuffer {
            id: nvsp::SEND_BUFFER_ID.into(),
        };
        self.send_nvsp(nvsp_type::REVOKE_SEND_BUFFER, revoke_send.as_bytes(), None);
        let revoke_receive = nvsp::RevokeBuffer {
            id: nvsp::RECEIVE_BUFFER_ID.into(),
        };
        self.send_nvsp(
            nvsp_type::REVOKE_RECEIVE_BUFFER,
            revoke_receive.as_bytes(),
            None,
        );
        self.control = None;
        self.nvsp_sent_at = None;
        self.phase = Phase::Halted;
        let _ = self.events.push_back(Event::Halted);
    }
}

/// Control messages (completions, indications) longer than this are
/// refused: the longest the driver asks for is far shorter.
const MAX_CONTROL_MESSAGE: usize = 512;

enum FrameRefusal {
    TooLong,
    Malformed(&'static str),
}

/// A data packet's frame (its range in `bytes`), whether the host verified
/// its checksums, and whether its per-packet info was malformed.
fn frame_view(
    bytes: &[u8],
    max_frame: usize,
    checksum_offload: bool,
) -> Result<(core::ops::Range<usize>, bool, bool), FrameRefusal> {
    let message =
        rndis::parse(bytes).map_err(|_| FrameRefusal::Malformed("a data packet too short"))?;
    let packet = message
        .packet()
        .map_err(|_| FrameRefusal::Malformed("a data packet whose offsets leave its message"))?;
    let frame = packet.data;
    if frame.len() > max_frame {
        return Err(FrameRefusal::TooLong);
    }
    if frame.len() < ETHERNET_HEADER as usize {
        return Err(FrameRefusal::Malformed(
            "a frame shorter than an Ethernet header",
        ));
    }
    let (verified, bad_ppi) = match packet.ppi_u32(rndis::ppi::TCP_IP_CHECKSUM) {
        Ok(Some(bits)) => {
            use rndis::checksum_rx as rx;
            let failed = bits & (rx::TCP_FAILED | rx::UDP_FAILED | rx::IP_FAILED) != 0;
            let l4 = bits & (rx::TCP_SUCCEEDED | rx::UDP_SUCCEEDED) != 0;
            (!failed && l4 && bits & rx::IP_SUCCEEDED != 0, false)
        }
        Ok(None) => (false, false),
        Err(_) => (false, true),
    };
    // The frame's place in `bytes`: the body starts after the header.
    let start = frame.as_ptr() as usize - bytes.as_ptr() as usize;
    Ok((
        start..start + frame.len(),
        verified && checksum_offload,
        bad_ppi,
    ))
}

/// The transmit checksum request for a frame: IPv4 with TCP or UDP (the
/// host fills in the IP header, TCP or UDP checksum); None for anything
/// else (sent as it is).
fn checksum_request(buffers: &mut dyn Buffers, token: u32) -> Option<u32> {
    use rndis::checksum_tx as tx;
    let mut head = [0u8; 34];
    if !buffers.peek_frame(token, &mut head) {
        return None;
    }
    if u16::from_be_bytes([head[12], head[13]]) != 0x0800 || head[14] >> 4 != 4 {
        return None;
    }
    let ip_header = u32::from(head[14] & 0x0f) * 4;
    if ip_header < 20 {
        return None;
    }
    let l4 = match head[23] {
        6 => tx::TCP_CHECKSUM,
        17 => tx::UDP_CHECKSUM,
        _ => return None,
    };
    let l4_offset = ETHERNET_HEADER + ip_header;
    Some(tx::IS_IPV4 | tx::IP_HEADER_CHECKSUM | l4 | (l4_offset << tx::TCP_HEADER_OFFSET_SHIFT))
}

#[cfg(test)]
#[path = "initiator_tests.rs"]
mod tests;
