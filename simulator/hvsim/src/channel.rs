//! The host end of an open channel: its two rings in the guest's GPADL
//! pages, read and written the way Hyper-V does, plus the host side of the
//! integration components (heartbeat, shutdown, time sync, KVP) and the
//! packet-level fault injection.
//!
//! The host reads the guest-to-host ("out") ring and writes the
//! host-to-guest ("in") ring. Its own indices live here, in private memory;
//! the guest's indices are loaded and validated (below the data size, a
//! multiple of 8) every time, and packets are copied out and validated with
//! `vmbus_protocol::packet::parse_packet` before use. A ring that breaks the
//! rules is marked broken and no longer touched. The host counts the
//! guest's signals against the packets it consumed, and classifies each:
//! called for by the rules, or unnecessary (the out ring did not go from
//! empty to non-empty since the host last drained it, and no in-ring space
//! the host waited for was freed; docs/hvsim.md, "Signal accounting").
//!
//! The ring code is written here over `GuestMemory` rather than with
//! `vmbus-ring` because the host must also be able to break the rules on
//! purpose (bad indices, malformed packets), which that crate prevents.

use crate::data_path::{self, ChannelGpadls, HostReceiveBuffer, ResolvedRange};
use crate::vmbus::DeviceKind;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use hyperv_defs::PAGE_SIZE;
use vmbus_protocol::ic::{
    self, message_type as ic_type, HeartbeatMessage, IcFlags, IcMessageHeader, IcVersion,
    KvpGetSetMessage, ShutdownMessage, TimesyncRefMessage,
};
use vmbus_protocol::packet::{
    control, descriptor_for, parse_packet, PacketDescriptor, PacketKind, PacketType,
    TransferPageHeader, TransferPageRange, DESCRIPTOR_SIZE, TRAILER_SIZE,
};
use zerocopy::{FromBytes, FromZeros, IntoBytes};

/// What the endpoint asks the server to do after a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelEvent {
    None,
    /// Set the channel's event flag for the guest.
    SignalGuest,
}

/// How a ring was found broken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingFault {
    /// The guest's index is out of range or misaligned.
    BadIndex { which: &'static str, value: u32 },
    /// A packet's descriptor or length is malformed.
    BadPacket(String),
    /// Guest memory access failed (GPADL page outside memory).
    Memory,
}

/// One ring inside GPADL pages: page 0 is the control page, the rest the
/// data area, in GPADL order (not necessarily contiguous in guest memory).
struct HostRing {
    pages: Vec<u64>,
}

impl HostRing {
    fn data_size(&self) -> u32 {
        ((self.pages.len() - 1) as u64 * PAGE_SIZE) as u32
    }

    fn control_gpa(&self, offset: usize) -> u64 {
        self.pages[0] * PAGE_SIZE + offset as u64
    }

    fn load<M: GuestMemory>(&self, memory: &M, offset: usize) -> Result<u32, RingFault> {
        memory
            .load_u32(self.control_gpa(offset))
            .map_err(|_| RingFault::Memory)
    }

    fn store<M: GuestMemory>(
        &self,
        memory: &M,
        offset: usize,
        value: u32,
    ) -> Result<(), RingFault> {
        memory
            .store_u32(self.control_gpa(offset), value)
            .map_err(|_| RingFault::Memory)
    }

    /// Loads the peer's index and checks it.
    fn peer_index<M: GuestMemory>(
        &self,
        memory: &M,
        offset: usize,
        which: &'static str,
    ) -> Result<u32, RingFault> {
        let value = self.load(memory, offset)?;
        if value >= self.data_size() || value % 8 != 0 {
            return Err(RingFault::BadIndex { which, value });
        }
        Ok(value)
    }

    /// Copies data-area bytes starting at `offset`, wrapping at the end.
    fn read<M: GuestMemory>(
        &self,
        memory: &M,
        offset: u32,
        out: &mut [u8],
    ) -> Result<(), RingFault> {
        let size = self.data_size() as u64;
        let mut position = offset as u64 % size;
        let mut rest = out;
        while !rest.is_empty() {
            let page = self.pages[1 + (position / PAGE_SIZE) as usize];
            let in_page = (PAGE_SIZE - position % PAGE_SIZE).min(size - position) as usize;
            let take = in_page.min(rest.len());
            let (now, later) = rest.split_at_mut(take);
            memory
                .read(page * PAGE_SIZE + position % PAGE_SIZE, now)
                .map_err(|_| RingFault::Memory)?;
            rest = later;
            position = (position + take as u64) % size;
        }
        Ok(())
    }

    fn write<M: GuestMemory>(&self, memory: &M, offset: u32, data: &[u8]) -> Result<(), RingFault> {
        let size = self.data_size() as u64;
        let mut position = offset as u64 % size;
        let mut rest = data;
        while !rest.is_empty() {
            let page = self.pages[1 + (position / PAGE_SIZE) as usize];
            let in_page = (PAGE_SIZE - position % PAGE_SIZE).min(size - position) as usize;
            let take = in_page.min(rest.len());
            memory
                .write(page * PAGE_SIZE + position % PAGE_SIZE, &rest[..take])
                .map_err(|_| RingFault::Memory)?;
            rest = &rest[take..];
            position = (position + take as u64) % size;
        }
        Ok(())
    }
}

/// A packet the host received from the guest (copied and validated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedPacket {
    pub packet_type: u16,
    pub transaction_id: u64,
    pub completion_requested: bool,
    pub payload: Vec<u8>,
    /// A GPA-direct packet's ranges, resolved through the channel's GPADLs.
    pub ranges: Vec<ResolvedRange>,
    /// The guest memory those ranges describe, read as a device would.
    pub data: Vec<u8>,
    /// A range named a page outside every GPADL of the channel: nothing
    /// was read and the packet is not completed.
    pub outside_gpadls: bool,
}

/// Counters of one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    pub signals: u64,
    pub unnecessary_signals: u64,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub signals_to_guest: u64,
    /// Guest responses whose transaction ID the host never sent or already saw.
    pub unknown_responses: u64,
    /// Packets the host could not write yet (ring full).
    pub sends_deferred: u64,
    /// Signals to the guest because reading the out ring freed the space
    /// its pending_send_sz asked for.
    pub space_signals_to_guest: u64,
    /// Guest signals for packets the host had already read in a drain
    /// that was running when the guest wrote them (a race the rules allow,
    /// not counted as unnecessary).
    pub late_signals: u64,
    /// Steps with deferred sends that did not retry them: the host waits
    /// for the guest's signal (the guest announced pending_send_sz).
    pub waits_for_space_signal: u64,
    /// GPA-direct packets whose ranges all resolved.
    pub gpa_direct_received: u64,
    /// Rule violation: a GPA-direct range naming a page outside every
    /// GPADL the guest created for the channel.
    pub gpa_outside_gpadls: u64,
    pub transfer_pages_sent: u64,
    /// Poll windows that ended with the out ring still empty after the
    /// host cleared its interrupt_mask and looked again (the host slept).
    pub poll_sleeps: u64,
    /// Poll windows whose look after clearing the mask found data the
    /// guest wrote meanwhile (without it the data would wait for a signal
    /// the guest did not owe).
    pub poll_rechecks_found: u64,
}

impl ChannelStats {
    /// Guest signals the rules called for: every signal the host did not
    /// count as unnecessary (late ones included: the guest rightly found
    /// the ring empty, the running drain read its packet first).
    pub fn signals_called_for(&self) -> u64 {
        self.signals.saturating_sub(self.unnecessary_signals)
    }

    /// The guest's signals per packet the host consumed (None before the
    /// first packet).
    pub fn signals_per_packet(&self) -> Option<f64> {
        (self.packets_received > 0).then(|| self.signals as f64 / self.packets_received as f64)
    }

    /// The signal accounting in one line (`hvsim` operator command
    /// `signals`, the script runner's `host: signals ...` lines).
    pub fn signal_report(&self) -> String {
        alloc::format!(
            "packets {} signals {} called-for {} late {} unnecessary {}",
            self.packets_received,
            self.signals,
            self.signals_called_for(),
            self.late_signals,
            self.unnecessary_signals
        )
    }

    /// These counts minus an earlier snapshot of the same channel (a
    /// benchmark's window).
    pub fn since(&self, earlier: &ChannelStats) -> SignalWindow {
        SignalWindow {
            packets: self
                .packets_received
                .saturating_sub(earlier.packets_received),
            signals: self.signals.saturating_sub(earlier.signals),
            unnecessary: self
                .unnecessary_signals
                .saturating_sub(earlier.unnecessary_signals),
        }
    }
}

/// Guest signals against the packets the host consumed over a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalWindow {
    pub packets: u64,
    pub signals: u64,
    /// Signals the rules did not call for.
    pub unnecessary: u64,
}

/// The last heartbeat the guest answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub sequence: u64,
    pub at_ns: u64,
}

/// A KVP answer from the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KvpResponse {
    pub operation: u8,
    pub pool: u8,
    pub status: u32,
    pub key: String,
    pub value: String,
}

/// What an outstanding host request was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Request {
    Negotiate,
    Heartbeat(u64),
    Shutdown,
    TimeSync,
    Kvp,
}

/// The integration-component state of an IC channel.
#[derive(Clone, Debug, Default)]
pub struct IcState {
    pub framework: Option<IcVersion>,
    pub message_version: Option<IcVersion>,
    /// The guest answered the negotiation without a common version.
    pub negotiation_failed: bool,
    pub heartbeat_interval_ns: u64,
    /// When the last periodic heartbeat went out (None: not yet).
    last_heartbeat_sent_ns: Option<u64>,
    heartbeat_sequence: u64,
    pub last_heartbeat: Option<Heartbeat>,
    pub shutdown_status: Option<u32>,
    pub timesync_answers: u64,
    pub kvp_responses: VecDeque<KvpResponse>,
}

/// UTF-16LE encoding with a terminating NUL, as KVP carries strings.
pub fn utf16_bytes(text: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    bytes.extend_from_slice(&[0, 0]);
    bytes
}

fn utf16_string(bytes: &[u8]) -> String {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    String::from_utf16_lossy(&units)
}

/// The host end of one open channel.
pub struct ChannelEndpoint {
    pub kind: DeviceKind,
    pub ring_gpadl: u32,
    out_ring: HostRing,
    in_ring: HostRing,
    /// The host's own indices (never read back from shared memory).
    out_read: u32,
    in_write: u32,
    /// The host was asleep on the out ring (its interrupt_mask clear) and
    /// had found it empty: the next write makes it non-empty and deserves
    /// one signal.
    expect_signal: bool,
    /// The host read data from the out ring while `expect_signal` was
    /// still unclaimed: the guest's signal for that write may arrive after
    /// the host already consumed it (it wrote before the mask was set, or
    /// while the host cleared it and looked again).
    drained_unclaimed_write: bool,
    /// How long (ns) the host keeps polling the out ring after it last
    /// found data there, with the ring's interrupt_mask set so that a
    /// streaming guest does not signal (0: never polls, never sets the
    /// mask; the host reads the ring only when signalled).
    pub poll_window_ns: u64,
    /// Polling the out ring (its interrupt_mask set) until this time.
    polling_until: Option<u64>,
    /// Bytes of in-ring space the host waits for (pending_send_sz set).
    waiting_for_space: u32,
    /// Packets the last drain read that the guest wrote while it ran:
    /// signals the guest may have sent for them are late, not unnecessary.
    late_signal_credits: u64,
    deferred: VecDeque<Vec<u8>>,
    next_transaction: u64,
    outstanding: BTreeMap<u64, Request>,
    last_completion: Option<u64>,
    pub broken: Option<RingFault>,
    pub stats: ChannelStats,
    pub received: VecDeque<ReceivedPacket>,
    pub ic: IcState,
    /// The channel's created GPADLs other than the ring (the server keeps
    /// this in step with its GPADL records).
    pub gpadls: ChannelGpadls,
    /// Where transfer-page packets put their data (set by the device
    /// protocol, or by tests).
    pub receive_buffer: Option<HostReceiveBuffer>,
    /// The data-path test device's state (`channel/datapath.rs`).
    pub datapath: datapath::DataPathHost,
    /// The synthetic keyboard's and mouse's host state
    /// (`channel/keyboard.rs`, `channel/mouse.rs`).
    pub keyboard: keyboard::KeyboardHost,
    pub mouse: mouse::MouseHost,
    /// A storage or network channel's packets of the last step: the
    /// server hands them to the device's controller (`channel/storage.rs`,
    /// `channel/network.rs`), which spans the primary and its sub-channels.
    /// (Named for the first device that used it; the storvsc tests outside
    /// hvsim reach it by this name.)
    pub storage_inbox: Vec<ReceivedPacket>,
    now_ns: u64,
}

/// Host requests awaiting a guest answer, per channel.
const MAX_OUTSTANDING: usize = 256;

/// Packets kept in `received` for inspection (oldest dropped).
const RECEIVED_KEEP: usize = 64;

impl ChannelEndpoint {
    pub fn new<M: GuestMemory>(
        kind: DeviceKind,
        ring_gpadl: u32,
        out_pages: &[u64],
        in_pages: &[u64],
        memory: &M,
        now_ns: u64,
    ) -> Self {
        let mut endpoint = ChannelEndpoint {
            kind,
            ring_gpadl,
            out_ring: HostRing {
                pages: out_pages.to_vec(),
            },
            in_ring: HostRing {
                pages: in_pages.to_vec(),
            },
            out_read: 0,
            in_write: 0,
            expect_signal: true,
            drained_unclaimed_write: false,
            poll_window_ns: 0,
            polling_until: None,
            waiting_for_space: 0,
            late_signal_credits: 0,
            deferred: VecDeque::new(),
            next_transaction: 1,
            outstanding: BTreeMap::new(),
            last_completion: None,
            broken: None,
            stats: ChannelStats::default(),
            received: VecDeque::new(),
            ic: IcState {
                heartbeat_interval_ns: 1_000_000_000,
                ..IcState::default()
            },
            gpadls: ChannelGpadls::default(),
            receive_buffer: None,
            datapath: datapath::DataPathHost::default(),
            keyboard: keyboard::KeyboardHost::default(),
            mouse: mouse::MouseHost::default(),
            storage_inbox: Vec::new(),
            now_ns,
        };
        // The host starts from the indices the guest left in the control
        // pages (zero on a fresh ring), validated like any guest index.
        match (
            endpoint
                .out_ring
                .peer_index(memory, control::READ_INDEX, "out read_index"),
            endpoint
                .in_ring
                .peer_index(memory, control::WRITE_INDEX, "in write_index"),
        ) {
            (Ok(read), Ok(write)) => {
                endpoint.out_read = read;
                endpoint.in_write = write;
            }
            (Err(fault), _) | (_, Err(fault)) => endpoint.broken = Some(fault),
        }
        // As Hyper-V: the host announces pending_send_sz on the ring it
        // writes (it waits for the guest's signal when the ring is full,
        // and signals the guest when it frees out-ring space the guest
        // waits for).
        // The out ring's interrupt_mask is the host's: a ring reused from an
        // earlier open must not keep a mask a former endpoint left set (the
        // guest would never signal and this endpoint, asleep, never look).
        if endpoint.broken.is_none()
            && endpoint
                .out_ring
                .store(memory, control::INTERRUPT_MASK, 0)
                .is_err()
        {
            endpoint.fail(RingFault::Memory);
        }
        if endpoint.broken.is_none()
            && memory
                .fetch_or_u32(
                    endpoint.in_ring.control_gpa(control::FEATURE_BITS),
                    control::FEATURE_PENDING_SEND_SZ,
                )
                .is_err()
        {
            endpoint.fail(RingFault::Memory);
        }
        if kind.is_ic() && endpoint.broken.is_none() {
            endpoint.send_negotiate(memory);
        }
        endpoint
    }

    fn fail(&mut self, fault: RingFault) {
        if self.broken.is_none() {
            self.broken = Some(fault);
        }
    }

    /// Handles `signals` guest signals, drains the out ring, retries
    /// deferred sends and runs timers. Returns whether to signal the guest.
    pub fn step<M: GuestMemory>(&mut self, memory: &M, signals: u64, now_ns: u64) -> ChannelEvent {
        self.now_ns = now_ns;
        if self.broken.is_some() {
            self.stats.signals += signals;
            return ChannelEvent::None;
        }
        let mut signal_guest = false;
        if signals > 0 {
            self.stats.signals += signals;
            let necessary = self.signal_was_necessary(memory);
            let mut unnecessary = signals.saturating_sub(necessary);
            let late = unnecessary.min(self.late_signal_credits);
            unnecessary -= late;
            self.stats.late_signals += late;
            self.stats.unnecessary_signals += unnecessary;
        }
        self.late_signal_credits = 0;
        // Like Hyper-V, the host reads the out ring when signalled (a guest
        // that forgets to signal stalls, as it would there), and then
        // drains it; with a poll window it stays awake (interrupt_mask set,
        // so a streaming guest need not signal) and looks at every step
        // until the ring has stayed empty for the window.
        if signals > 0 || self.polling_until.is_some() {
            if self.poll_window_ns > 0 && self.polling_until.is_none() {
                self.mask_out_ring(memory, true);
            }
            let before = self.out_read;
            let size = self.out_ring.data_size();
            let published_at_start = self
                .out_ring
                .peer_index(memory, control::WRITE_INDEX, "out write_index")
                .map_or(0, |write| (write + size - before) % size);
            loop {
                let consumed = (self.out_read + size - before) % size;
                let Some(packet) = self.read_packet(memory) else {
                    break;
                };
                // Written while we drained: we publish our read index per
                // packet, so the guest may have found the ring empty and
                // signalled for a packet this drain has already read.
                if consumed >= published_at_start {
                    self.late_signal_credits += 1;
                }
                signal_guest |= self.handle_packet(memory, packet);
            }
            if self.out_read != before && self.expect_signal {
                self.drained_unclaimed_write = true;
            }
            if self.broken.is_some() {
                self.polling_until = None;
            } else if self.poll_window_ns == 0 {
                self.arm_for_signal();
            } else if self.out_read != before || self.polling_until.is_none() {
                self.polling_until = Some(now_ns.saturating_add(self.poll_window_ns));
            } else if self.polling_until.is_some_and(|until| now_ns >= until) {
                signal_guest |= self.sleep_or_resume(memory, now_ns);
            }
            // A writer blocked on a full out ring asked (pending_send_sz)
            // to be signalled once enough space is free.
            if self.out_read != before && self.space_freed_for_guest(memory, before) {
                self.stats.space_signals_to_guest += 1;
                signal_guest = true;
            }
        }
        // A full in ring: a guest that announced pending_send_sz signals
        // when it has freed the space, so the host waits for that signal
        // (strict: it does not look before); one that did not must be
        // polled.
        if !self.deferred.is_empty() && signals == 0 && self.guest_signals_for_space(memory) {
            self.stats.waits_for_space_signal += 1;
        } else {
            signal_guest |= self.flush_deferred(memory);
        }
        if self.kind == DeviceKind::DataPathTest {
            signal_guest |= self.datapath_pump(memory);
        }
        if self.kind == DeviceKind::Heartbeat
            && self.ic.message_version.is_some()
            && self
                .ic
                .last_heartbeat_sent_ns
                .is_none_or(|sent| now_ns >= sent.saturating_add(self.ic.heartbeat_interval_ns))
        {
            self.ic.last_heartbeat_sent_ns = Some(now_ns);
            signal_guest |= self.send_heartbeat(memory);
        }
        if signal_guest {
            self.stats.signals_to_guest += 1;
            ChannelEvent::SignalGuest
        } else {
            ChannelEvent::None
        }
    }

    /// The host no longer expects data on its own: the guest's next
    /// empty -> non-empty write calls for one signal.
    fn arm_for_signal(&mut self) {
        self.expect_signal = true;
        self.drained_unclaimed_write = false;
    }

    fn mask_out_ring<M: GuestMemory>(&mut self, memory: &M, masked: bool) {
        if let Err(fault) = self
            .out_ring
            .store(memory, control::INTERRUPT_MASK, u32::from(masked))
        {
            self.fail(fault);
        }
    }

    /// The poll window ran out on an empty out ring: clear the mask, and
    /// only then look once more (a full fence between, pairing with the
    /// guest's fence between publishing its write index and reading the
    /// mask): a packet the guest wrote while it still saw the mask set,
    /// and so did not signal, is found here, not lost. Found data keeps the
    /// host awake (mask set again, the packets drained, a new window);
    /// otherwise it sleeps until signalled. Returns whether to signal the
    /// guest.
    fn sleep_or_resume<M: GuestMemory>(&mut self, memory: &M, now_ns: u64) -> bool {
        self.polling_until = None;
        self.mask_out_ring(memory, false);
        self.arm_for_signal();
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        let write = match self
            .out_ring
            .peer_index(memory, control::WRITE_INDEX, "out write_index")
        {
            Ok(write) => write,
            Err(fault) => {
                self.fail(fault);
                return false;
            }
        };
        if self.broken.is_some() || write == self.out_read {
            self.stats.poll_sleeps += 1;
            return false;
        }
        // The guest may have seen the mask clear and signalled for this
        // write: that signal is owed (`expect_signal`) though the host
        // reads the packets now.
        self.stats.poll_rechecks_found += 1;
        self.mask_out_ring(memory, true);
        self.polling_until = Some(now_ns.saturating_add(self.poll_window_ns));
        let before = self.out_read;
        let mut signal_guest = false;
        while let Some(packet) = self.read_packet(memory) {
            signal_guest |= self.handle_packet(memory, packet);
        }
        if self.out_read != before {
            self.drained_unclaimed_write = true;
        }
        signal_guest
    }

    /// Whether the host is polling the out ring (its interrupt_mask set).
    pub fn polling(&self) -> bool {
        self.polling_until.is_some()
    }

    /// Whether the guest announced pending_send_sz (feature bit 0 on the
    /// out ring, which it writes): then it also signals the host when it
    /// frees in-ring space the host waits for.
    fn guest_signals_for_space<M: GuestMemory>(&self, memory: &M) -> bool {
        self.out_ring
            .load(memory, control::FEATURE_BITS)
            .is_ok_and(|bits| bits & control::FEATURE_PENDING_SEND_SZ != 0)
    }

    /// The reader's signal rule: the guest announced pending_send_sz, set
    /// it, and this drain (which started at `read_before`) made the free
    /// space cross it: it was at most pending_send_sz before and is more
    /// now. A pending_send_sz the ring can never satisfy breaks the ring.
    fn space_freed_for_guest<M: GuestMemory>(&mut self, memory: &M, read_before: u32) -> bool {
        if !self.guest_signals_for_space(memory) {
            return false;
        }
        let Ok(pending) = self.out_ring.load(memory, control::PENDING_SEND_SZ) else {
            return false;
        };
        if pending == 0 {
            return false;
        }
        let size = self.out_ring.data_size();
        if pending >= size {
            self.fail(RingFault::BadIndex {
                which: "out pending_send_sz",
                value: pending,
            });
            return false;
        }
        let Ok(write) = self
            .out_ring
            .peer_index(memory, control::WRITE_INDEX, "out write_index")
        else {
            return false;
        };
        let free = |read: u32| size - (write + size - read) % size;
        free(read_before) <= pending && free(self.out_read) > pending
    }

    /// How many of the guest's signals since the last step the rules
    /// called for: one for the out ring going empty -> non-empty, one for
    /// in-ring space the host waited for.
    fn signal_was_necessary<M: GuestMemory>(&mut self, memory: &M) -> u64 {
        let out_has_data =
            match self
                .out_ring
                .peer_index(memory, control::WRITE_INDEX, "out write_index")
            {
                Ok(write) => write != self.out_read || self.drained_unclaimed_write,
                Err(fault) => {
                    self.fail(fault);
                    return 0;
                }
            };
        let mut necessary = 0;
        if out_has_data && self.expect_signal {
            self.expect_signal = false;
            self.drained_unclaimed_write = false;
            necessary += 1;
        }
        // A reader's signal: the guest freed in-ring space we waited for.
        if self.waiting_for_space > 0
            && self
                .in_free(memory)
                .is_ok_and(|free| free > self.waiting_for_space)
        {
            necessary += 1;
        }
        necessary
    }

    /// Reads one packet from the out ring, validating everything.
    fn read_packet<M: GuestMemory>(&mut self, memory: &M) -> Option<ReceivedPacket> {
        if self.broken.is_some() {
            return None;
        }
        let size = self.out_ring.data_size();
        let write = match self
            .out_ring
            .peer_index(memory, control::WRITE_INDEX, "out write_index")
        {
            Ok(write) => write,
            Err(fault) => {
                self.fail(fault);
                return None;
            }
        };
        if write == self.out_read {
            return None;
        }
        let available = (write + size - self.out_read) % size;
        let mut descriptor_bytes = [0u8; DESCRIPTOR_SIZE];
        if let Err(fault) = self
            .out_ring
            .read(memory, self.out_read, &mut descriptor_bytes)
        {
            self.fail(fault);
            return None;
        }
        let descriptor = PacketDescriptor::read_from_bytes(&descriptor_bytes).expect("16 bytes");
        let len = descriptor.len8.get() as u32 * 8;
        if len < DESCRIPTOR_SIZE as u32 || len + TRAILER_SIZE as u32 > available {
            self.fail(RingFault::BadPacket(alloc::format!(
                "packet of {len} bytes with {available} available"
            )));
            return None;
        }
        let mut bytes = alloc::vec![0u8; len as usize];
        if let Err(fault) = self.out_ring.read(memory, self.out_read, &mut bytes) {
            self.fail(fault);
            return None;
        }
        let packet = match parse_packet(&bytes) {
            Ok(packet) => packet,
            Err(error) => {
                self.fail(RingFault::BadPacket(alloc::format!("{error:?}")));
                return None;
            }
        };
        let mut received = ReceivedPacket {
            packet_type: descriptor.packet_type.get(),
            transaction_id: packet.transaction_id,
            completion_requested: packet.completion_requested,
            payload: packet.payload.to_vec(),
            ranges: Vec::new(),
            data: Vec::new(),
            outside_gpadls: false,
        };
        if matches!(
            packet.kind,
            PacketKind::GpaDirect(_) | PacketKind::TransferPages { .. }
        ) && self.kind.is_ic()
        {
            self.fail(RingFault::BadPacket(
                "IC channels carry in-band packets only".into(),
            ));
            return None;
        }
        if let (PacketKind::GpaDirect(ranges), DeviceKind::Storage | DeviceKind::Network) =
            (&packet.kind, self.kind)
        {
            // storvsc's and netvsc's data pages need no GPADL on Hyper-V:
            // the device host checks them against the memory it may see,
            // page by page, when it moves the data.
            self.stats.gpa_direct_received += 1;
            received.ranges = ranges
                .iter()
                .map(|range| ResolvedRange {
                    byte_offset: range.byte_offset,
                    byte_count: range.byte_count,
                    pfns: range.pfns().collect(),
                })
                .collect();
        } else if let PacketKind::GpaDirect(ranges) = packet.kind {
            match data_path::resolve(&self.gpadls, &ranges) {
                Ok(resolved) => match data_path::read_ranges(memory, &resolved) {
                    Some(data) => {
                        self.stats.gpa_direct_received += 1;
                        received.ranges = resolved;
                        received.data = data;
                    }
                    None => {
                        self.fail(RingFault::Memory);
                        return None;
                    }
                },
                Err(_) => {
                    self.stats.gpa_outside_gpadls += 1;
                    received.outside_gpadls = true;
                }
            }
        }
        self.out_read = (self.out_read + len + TRAILER_SIZE as u32) % size;
        if let Err(fault) = self
            .out_ring
            .store(memory, control::READ_INDEX, self.out_read)
        {
            self.fail(fault);
            return None;
        }
        self.stats.packets_received += 1;
        if self.received.len() == RECEIVED_KEEP {
            self.received.pop_front();
        }
        self.received.push_back(received.clone());
        Some(received)
    }

    fn in_free<M: GuestMemory>(&mut self, memory: &M) -> Result<u32, RingFault> {
        let read = self
            .in_ring
            .peer_index(memory, control::READ_INDEX, "in read_index")?;
        let size = self.in_ring.data_size();
        Ok(if self.in_write >= read {
            size - (self.in_write - read)
        } else {
            read - self.in_write
        })
    }

    /// Writes a whole packet (descriptor included) into the in ring.
    /// Returns Ok(true) if the guest must be signalled, Ok(false) if not,
    /// Err(()) if there is no room (the caller defers it).
    fn write_bytes<M: GuestMemory>(&mut self, memory: &M, packet: &[u8]) -> Result<bool, ()> {
        if self.broken.is_some() {
            return Err(());
        }
        let needed = packet.len() as u32 + TRAILER_SIZE as u32;
        // The writer always leaves 8 bytes free so full never equals empty.
        let mut room = self.in_free(memory).map(|free| needed < free);
        if room == Ok(false) {
            self.waiting_for_space = needed;
            let _ = self.in_ring.store(memory, control::PENDING_SEND_SZ, needed);
            // The guest may have freed the space before it could see
            // pending_send_sz (and so will not signal): look again.
            core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
            room = self.in_free(memory).map(|free| needed < free);
            if room == Ok(true) {
                // A guest that freed it after all may also have seen
                // pending_send_sz and signalled: late, not unnecessary.
                self.late_signal_credits += 1;
            }
        }
        match room {
            Ok(true) => {}
            Ok(false) => return Err(()),
            Err(fault) => {
                self.fail(fault);
                return Err(());
            }
        }
        if self.waiting_for_space > 0 {
            self.waiting_for_space = 0;
            let _ = self.in_ring.store(memory, control::PENDING_SEND_SZ, 0);
        }
        let start = self.in_write;
        let size = self.in_ring.data_size();
        let trailer = (start as u64) << 32;
        if self.in_ring.write(memory, start, packet).is_err()
            || self
                .in_ring
                .write(
                    memory,
                    (start + packet.len() as u32) % size,
                    &trailer.to_le_bytes(),
                )
                .is_err()
        {
            self.fail(RingFault::Memory);
            return Err(());
        }
        self.in_write = (start + needed) % size;
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        if self
            .in_ring
            .store(memory, control::WRITE_INDEX, self.in_write)
            .is_err()
        {
            self.fail(RingFault::Memory);
            return Err(());
        }
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        self.stats.packets_sent += 1;
        // The mask and the read index are looked at only after the write
        // index is published (and the fence): a guest that publishes its
        // read index or clears its mask after this load looks at the ring
        // again and finds the packet itself. A read index loaded before
        // the write could be one the guest has since moved to `start`
        // and gone to sleep on.
        let masked = self
            .in_ring
            .load(memory, control::INTERRUPT_MASK)
            .unwrap_or(1)
            != 0;
        if masked {
            return Ok(false);
        }
        let read_now = self
            .in_ring
            .load(memory, control::READ_INDEX)
            .unwrap_or(u32::MAX);
        Ok(read_now == start)
    }

    fn build_packet(
        packet_type: PacketType,
        transaction_id: u64,
        completion_requested: bool,
        payload: &[u8],
    ) -> Option<Vec<u8>> {
        let descriptor = descriptor_for(
            packet_type,
            0,
            payload.len(),
            transaction_id,
            completion_requested,
        )?;
        let mut bytes = descriptor.as_bytes().to_vec();
        bytes.extend_from_slice(payload);
        bytes.resize(descriptor.len8.get() as usize * 8, 0);
        Some(bytes)
    }

    /// Queues a packet for the guest; returns whether to signal now.
    fn send<M: GuestMemory>(&mut self, memory: &M, packet: Vec<u8>) -> bool {
        if !self.deferred.is_empty() {
            self.deferred.push_back(packet);
            self.stats.sends_deferred += 1;
            return false;
        }
        match self.write_bytes(memory, &packet) {
            Ok(signal) => signal,
            Err(()) => {
                if self.broken.is_none() {
                    self.deferred.push_back(packet);
                    self.stats.sends_deferred += 1;
                }
                false
            }
        }
    }

    fn flush_deferred<M: GuestMemory>(&mut self, memory: &M) -> bool {
        let mut signal = false;
        while let Some(packet) = self.deferred.front().cloned() {
            match self.write_bytes(memory, &packet) {
                Ok(s) => {
                    signal |= s;
                    self.deferred.pop_front();
                }
                Err(()) => return signal,
            }
        }
        if self.waiting_for_space > 0 {
            self.waiting_for_space = 0;
            let _ = self.in_ring.store(memory, control::PENDING_SEND_SZ, 0);
        }
        signal
    }

    /// Sends an in-band packet; returns whether to signal the guest.
    pub fn send_in_band<M: GuestMemory>(
        &mut self,
        memory: &M,
        transaction_id: u64,
        completion_requested: bool,
        payload: &[u8],
    ) -> bool {
        match Self::build_packet(
            PacketType::InBand,
            transaction_id,
            completion_requested,
            payload,
        ) {
            Some(packet) => self.send(memory, packet),
            None => false,
        }
    }

    /// Sends a completion packet for `transaction_id`.
    pub fn send_completion<M: GuestMemory>(
        &mut self,
        memory: &M,
        transaction_id: u64,
        payload: &[u8],
    ) -> bool {
        self.last_completion = Some(transaction_id);
        match Self::build_packet(PacketType::Completion, transaction_id, false, payload) {
            Some(packet) => self.send(memory, packet),
            None => false,
        }
    }

    /// Fault injection: the last completion again.
    pub fn repeat_last_completion<M: GuestMemory>(&mut self, memory: &M) -> bool {
        match self.last_completion {
            Some(id) => self.send_completion(memory, id, &[]),
            None => false,
        }
    }

    /// Sends a transfer-page packet: each chunk is written into the guest's
    /// receive buffer GPADL (at the host's round-robin cursor) and named by
    /// one range. `None` if there is no receive buffer or its GPADL is not
    /// one of the channel's, or the chunks do not fit it; else whether to
    /// signal the guest.
    pub fn send_transfer_pages<M: GuestMemory>(
        &mut self,
        memory: &M,
        transaction_id: u64,
        chunks: &[&[u8]],
    ) -> Option<bool> {
        let mut receive = self.receive_buffer?;
        let pages = self.gpadls.pages(receive.gpadl_id)?.to_vec();
        let buffer_len = pages.len() as u64 * PAGE_SIZE;
        let total: u64 = chunks.iter().map(|chunk| chunk.len() as u64).sum();
        if total > buffer_len || chunks.is_empty() {
            return None;
        }
        let mut ranges = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            if receive.cursor + chunk.len() as u64 > buffer_len {
                receive.cursor = 0;
            }
            data_path::write_into(memory, &pages, receive.cursor, chunk)?;
            ranges.push((receive.cursor as u32, chunk.len() as u32));
            receive.cursor += (chunk.len() as u64).div_ceil(8) * 8;
        }
        self.receive_buffer = Some(receive);
        self.stats.transfer_pages_sent += 1;
        Some(self.send_transfer_ranges(
            memory,
            transaction_id,
            receive.transfer_page_set_id,
            &ranges,
        ))
    }

    /// A transfer-page packet naming `ranges` (offset, count) as they are.
    fn send_transfer_ranges<M: GuestMemory>(
        &mut self,
        memory: &M,
        transaction_id: u64,
        transfer_page_set_id: u16,
        ranges: &[(u32, u32)],
    ) -> bool {
        self.send_transfer_page_packet(memory, transaction_id, transfer_page_set_id, ranges, &[])
    }

    /// A transfer-page packet (completion requested) naming `ranges`
    /// (offset, count) of transfer page set `transfer_page_set_id` as they
    /// are, with `payload` after the ranges (a device protocol's message,
    /// e.g. NVSP's SEND_RNDIS_PACKET). The caller wrote the data.
    pub fn send_transfer_page_packet<M: GuestMemory>(
        &mut self,
        memory: &M,
        transaction_id: u64,
        transfer_page_set_id: u16,
        ranges: &[(u32, u32)],
        payload: &[u8],
    ) -> bool {
        let mut header = TransferPageHeader {
            transfer_page_set_id: transfer_page_set_id.into(),
            sender_owns_set: 0,
            reserved: 0,
            range_count: (ranges.len() as u32).into(),
        }
        .as_bytes()
        .to_vec();
        for &(offset, count) in ranges {
            header.extend_from_slice(
                TransferPageRange {
                    byte_count: count.into(),
                    byte_offset: offset.into(),
                }
                .as_bytes(),
            );
        }
        let Some(descriptor) = descriptor_for(
            PacketType::TransferPages,
            header.len(),
            payload.len(),
            transaction_id,
            true,
        ) else {
            return false;
        };
        let mut packet = descriptor.as_bytes().to_vec();
        packet.extend_from_slice(&header);
        packet.extend_from_slice(payload);
        packet.resize(descriptor.len8.get() as usize * 8, 0);
        self.send(memory, packet)
    }

    /// Fault injection: a transfer-page packet whose range runs past the
    /// end of the receive buffer (a hostile host). `None` without one.
    pub fn inject_transfer_outside<M: GuestMemory>(
        &mut self,
        memory: &M,
        transaction_id: u64,
    ) -> Option<bool> {
        let receive = self.receive_buffer?;
        let buffer_len = self.gpadls.pages(receive.gpadl_id)?.len() as u64 * PAGE_SIZE;
        let offset = (buffer_len - 8) as u32;
        Some(self.send_transfer_ranges(
            memory,
            transaction_id,
            receive.transfer_page_set_id,
            &[(offset, 64)],
        ))
    }

    /// Fault injection: a completion for a transaction ID the guest never
    /// used (high IDs, far beyond any counter the guest runs).
    pub fn inject_unknown_completion<M: GuestMemory>(&mut self, memory: &M) -> bool {
        let id = 0xBAD0_0000_0000_0000 | self.stats.packets_sent;
        match Self::build_packet(PacketType::Completion, id, false, &[]) {
            Some(packet) => self.send(memory, packet),
            None => false,
        }
    }

    /// Fault injection: raw bytes written as one packet (the write index
    /// advances by their length rounded up to 8, plus the trailer).
    pub fn inject_raw<M: GuestMemory>(&mut self, memory: &M, bytes: &[u8]) -> bool {
        let mut packet = bytes.to_vec();
        packet.resize(bytes.len().div_ceil(8) * 8, 0);
        self.send(memory, packet)
    }

    /// Fault injection: a packet with a malformed descriptor.
    pub fn inject_malformed<M: GuestMemory>(&mut self, memory: &M, fault: PacketFault) -> bool {
        let mut descriptor = PacketDescriptor::new_zeroed();
        descriptor.packet_type = PacketType::InBand.wire().into();
        descriptor.offset8 = 2.into();
        descriptor.len8 = 4.into();
        descriptor.transaction_id = 0x5151.into();
        match fault {
            PacketFault::OffsetTooSmall => descriptor.offset8 = 1.into(),
            PacketFault::LengthBeforeOffset => {
                descriptor.offset8 = 4.into();
                descriptor.len8 = 3.into();
            }
            PacketFault::UnknownType => descriptor.packet_type = 0x42.into(),
            PacketFault::UnknownFlags => descriptor.flags = 0x80.into(),
            PacketFault::LengthBeyondRing => descriptor.len8 = u16::MAX.into(),
        }
        let mut packet = descriptor.as_bytes().to_vec();
        packet.resize(32, 0xEE);
        self.send(memory, packet)
    }

    /// Fault injection: an oversized but well-formed packet (larger than
    /// the device protocol allows; `len` bytes of payload, at most what
    /// fits in the ring).
    pub fn inject_oversized<M: GuestMemory>(&mut self, memory: &M, len: usize) -> bool {
        let limit = self.in_ring.data_size() as usize - DESCRIPTOR_SIZE - TRAILER_SIZE - 16;
        let payload = alloc::vec![0xAB; len.min(limit)];
        self.send_in_band(memory, 0x0B16, false, &payload)
    }

    /// Fault injection: store an arbitrary value as the in ring's write
    /// index (out of range, misaligned, or just wrong).
    pub fn corrupt_in_write_index<M: GuestMemory>(&mut self, memory: &M, value: u32) -> bool {
        let _ = self.in_ring.store(memory, control::WRITE_INDEX, value);
        true
    }

    /// Fault injection: store an arbitrary value as the out ring's read
    /// index (which the guest, as writer, reads).
    pub fn corrupt_out_read_index<M: GuestMemory>(&mut self, memory: &M, value: u32) {
        let _ = self.out_ring.store(memory, control::READ_INDEX, value);
    }

    /// Handles a guest packet; returns whether to signal the guest.
    fn handle_packet<M: GuestMemory>(&mut self, memory: &M, packet: ReceivedPacket) -> bool {
        if self.kind == DeviceKind::DataPathTest {
            return self.datapath_packet(memory, packet);
        }
        if self.kind == DeviceKind::Keyboard {
            return self.keyboard_packet(memory, packet);
        }
        if self.kind == DeviceKind::Mouse {
            return self.mouse_packet(memory, packet);
        }
        if matches!(
            self.kind,
            DeviceKind::Storage | DeviceKind::Network | DeviceKind::Video
        ) {
            self.storage_inbox.push(packet);
            return false;
        }
        if !self.kind.is_ic() {
            // Generic device: complete what asks for completion, except a
            // request that named memory the guest never shared.
            if packet.completion_requested && !packet.outside_gpadls {
                return self.send_completion(memory, packet.transaction_id, &[]);
            }
            return false;
        }
        let Some(request) = self.outstanding.remove(&packet.transaction_id) else {
            self.stats.unknown_responses += 1;
            return false;
        };
        let Ok(message) = ic::parse_ic_message(&packet.payload) else {
            self.fail(RingFault::BadPacket(
                "IC response without IC headers".into(),
            ));
            return false;
        };
        if !message.header.flags().contains(IcFlags::RESPONSE) {
            self.stats.unknown_responses += 1;
            return false;
        }
        match request {
            Request::Negotiate => match ic::read_negotiate_response(&packet.payload) {
                Ok(Some(chosen)) => {
                    self.ic.framework = Some(chosen.framework);
                    self.ic.message_version = Some(chosen.message);
                }
                _ => self.ic.negotiation_failed = true,
            },
            Request::Heartbeat(sequence) => {
                if let Ok(body) = ic::read_body::<HeartbeatMessage>(message.body) {
                    if body.sequence.get() == sequence + 1 {
                        self.ic.last_heartbeat = Some(Heartbeat {
                            sequence: body.sequence.get(),
                            at_ns: self.now_ns,
                        });
                    }
                }
            }
            Request::Shutdown => self.ic.shutdown_status = Some(message.header.status.get()),
            Request::TimeSync => self.ic.timesync_answers += 1,
            Request::Kvp => {
                if let Ok(body) = ic::read_body::<KvpGetSetMessage>(message.body) {
                    let key = body.value.key_bytes().map(utf16_string).unwrap_or_default();
                    let value = body
                        .value
                        .value_bytes()
                        .map(utf16_string)
                        .unwrap_or_default();
                    if self.ic.kvp_responses.len() == 64 {
                        self.ic.kvp_responses.pop_front();
                    }
                    self.ic.kvp_responses.push_back(KvpResponse {
                        operation: body.header.operation,
                        pool: body.header.pool,
                        status: message.header.status.get(),
                        key,
                        value,
                    });
                }
            }
        }
        false
    }

    fn ic_message_type(&self) -> u16 {
        match self.kind {
            DeviceKind::Heartbeat => ic_type::HEARTBEAT,
            DeviceKind::Shutdown => ic_type::SHUTDOWN,
            DeviceKind::TimeSync => ic_type::TIMESYNC,
            DeviceKind::Kvp => ic_type::KVP,
            DeviceKind::Generic
            | DeviceKind::DataPathTest
            | DeviceKind::Storage
            | DeviceKind::Network
            | DeviceKind::Keyboard
            | DeviceKind::Mouse
            | DeviceKind::Video => 0,
        }
    }

    fn send_ic<M: GuestMemory>(
        &mut self,
        memory: &M,
        request: Request,
        message_type: u16,
        body: &[u8],
    ) -> bool {
        let transaction_id = self.next_transaction;
        self.next_transaction += 1;
        let header = IcMessageHeader {
            framework_version: self.ic.framework.unwrap_or(IcVersion::new(3, 0)),
            message_type: message_type.into(),
            message_version: self.ic.message_version.unwrap_or(IcVersion::new(3, 0)),
            message_size: (body.len() as u16).into(),
            status: 0.into(),
            transaction_id: transaction_id as u8,
            flags: (IcFlags::TRANSACTION | IcFlags::REQUEST).bits(),
            reserved: [0; 2],
        };
        let mut bytes = alloc::vec![0u8; ic::IC_HEADERS_SIZE + body.len()];
        if ic::write_ic_message(&mut bytes, &header, body).is_err() {
            return false;
        }
        // A guest that never answers must not grow the table without bound:
        // the oldest request is forgotten (its late answer counts as unknown).
        if self.outstanding.len() >= MAX_OUTSTANDING {
            self.outstanding.pop_first();
        }
        self.outstanding.insert(transaction_id, request);
        self.send_in_band(memory, transaction_id, false, &bytes)
    }

    fn send_negotiate<M: GuestMemory>(&mut self, memory: &M) -> bool {
        let framework: Vec<IcVersion> = ic::versions::FRAMEWORK
            .iter()
            .map(|&(major, minor)| IcVersion::new(major, minor))
            .collect();
        let service: &[(u16, u16)] = match self.kind {
            DeviceKind::Heartbeat => &ic::versions::HEARTBEAT,
            DeviceKind::Shutdown => &ic::versions::SHUTDOWN,
            DeviceKind::TimeSync => &ic::versions::TIMESYNC,
            DeviceKind::Kvp => &ic::versions::KVP,
            DeviceKind::Generic
            | DeviceKind::DataPathTest
            | DeviceKind::Storage
            | DeviceKind::Network
            | DeviceKind::Keyboard
            | DeviceKind::Mouse
            | DeviceKind::Video => &[],
        };
        let message: Vec<IcVersion> = service
            .iter()
            .map(|&(major, minor)| IcVersion::new(major, minor))
            .collect();
        let mut body = [0u8; 8 + 4 * 8];
        let Ok(len) = ic::write_negotiate(&mut body, &framework, &message) else {
            return false;
        };
        let body = body[..len].to_vec();
        self.send_ic(memory, Request::Negotiate, ic_type::NEGOTIATE, &body)
    }

    fn ready(&self, kind: DeviceKind) -> bool {
        self.kind == kind && self.ic.message_version.is_some() && self.broken.is_none()
    }

    fn send_heartbeat<M: GuestMemory>(&mut self, memory: &M) -> bool {
        self.ic.heartbeat_sequence += 10;
        let sequence = self.ic.heartbeat_sequence;
        let mut body = HeartbeatMessage::new_zeroed();
        body.sequence = sequence.into();
        let bytes = body.as_bytes().to_vec();
        self.send_ic(
            memory,
            Request::Heartbeat(sequence),
            ic_type::HEARTBEAT,
            &bytes,
        )
    }

    /// Operator: send a heartbeat request now. False if not negotiated.
    pub fn request_heartbeat<M: GuestMemory>(&mut self, memory: &M) -> Option<bool> {
        if !self.ready(DeviceKind::Heartbeat) {
            return None;
        }
        Some(self.send_heartbeat(memory))
    }

    /// Operator: ask the guest to shut down (`flags`: 0 shut down, 1
    /// force, 2 reboot). `None` if the channel is not negotiated.
    pub fn request_shutdown<M: GuestMemory>(
        &mut self,
        memory: &M,
        flags: u32,
        message: &str,
    ) -> Option<bool> {
        if !self.ready(DeviceKind::Shutdown) {
            return None;
        }
        let mut body = ShutdownMessage::new_zeroed();
        body.flags = flags.into();
        body.timeout_seconds = 0.into();
        let text = message.as_bytes();
        let len = text.len().min(body.display_message.len() - 1);
        body.display_message[..len].copy_from_slice(&text[..len]);
        let bytes = body.as_bytes().to_vec();
        self.ic.shutdown_status = None;
        Some(self.send_ic(memory, Request::Shutdown, ic_type::SHUTDOWN, &bytes))
    }

    /// Operator: send a time sample (`parent_time` in 100 ns units since
    /// 1601), taken at partition reference time `vm_reference_time` (the
    /// guest relates it to its own reading of reference time: how long ago
    /// the sample was taken).
    pub fn send_time<M: GuestMemory>(
        &mut self,
        memory: &M,
        parent_time: u64,
        vm_reference_time: u64,
        flags: u8,
    ) -> Option<bool> {
        if !self.ready(DeviceKind::TimeSync) {
            return None;
        }
        let mut body = TimesyncRefMessage::new_zeroed();
        body.parent_time = parent_time.into();
        body.vm_reference_time = vm_reference_time.into();
        body.flags = flags;
        let bytes = body.as_bytes().to_vec();
        Some(self.send_ic(memory, Request::TimeSync, ic_type::TIMESYNC, &bytes))
    }

    /// Operator: a KVP request (`operation` from `ic::kvp_operation`).
    pub fn kvp_request<M: GuestMemory>(
        &mut self,
        memory: &M,
        operation: u8,
        pool: u8,
        key: &str,
        value: &str,
    ) -> Option<bool> {
        if !self.ready(DeviceKind::Kvp) {
            return None;
        }
        let mut body = KvpGetSetMessage::new_zeroed();
        body.header.operation = operation;
        body.header.pool = pool;
        let key = utf16_bytes(key);
        let value = utf16_bytes(value);
        if key.len() > body.value.key.len() || value.len() > body.value.value.len() {
            return None;
        }
        body.value.value_type = 1.into(); // REG_SZ
        body.value.key_size = (key.len() as u32).into();
        body.value.value_size = (value.len() as u32).into();
        body.value.key[..key.len()].copy_from_slice(&key);
        body.value.value[..value.len()].copy_from_slice(&value);
        let bytes = body.as_bytes().to_vec();
        Some(self.send_ic(memory, Request::Kvp, ic_type::KVP, &bytes))
    }

    /// True if the IC negotiation finished with a common version.
    pub fn negotiated(&self) -> bool {
        self.ic.message_version.is_some()
    }

    /// The message type the service uses (for tests).
    pub fn service_message_type(&self) -> u16 {
        self.ic_message_type()
    }
}

/// Malformed packet shapes for [`ChannelEndpoint::inject_malformed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketFault {
    OffsetTooSmall,
    LengthBeforeOffset,
    UnknownType,
    UnknownFlags,
    LengthBeyondRing,
}

impl PacketFault {
    /// The fault by its name in scenarios and operator commands
    /// (`crate::scenario::FAULTS`).
    pub fn from_name(name: &str) -> Option<PacketFault> {
        Some(match name {
            "offset-too-small" => PacketFault::OffsetTooSmall,
            "length-before-offset" => PacketFault::LengthBeforeOffset,
            "unknown-type" => PacketFault::UnknownType,
            "unknown-flags" => PacketFault::UnknownFlags,
            "length-beyond-ring" => PacketFault::LengthBeyondRing,
            _ => return None,
        })
    }
}

mod datapath;
#[cfg(test)]
mod flow_tests;
pub mod keyboard;
pub mod mouse;
pub mod network;
pub mod scsi_target;
pub mod storage;
pub mod synthvid;
