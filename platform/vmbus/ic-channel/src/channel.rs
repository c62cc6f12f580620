//! The channel loop: bring the channel up through the bus manager, read the
//! host's IC messages from the in ring, answer negotiation here and hand
//! every other message to the service, write the answers to the out ring and
//! signal the host through synic only when the ring asks for it.

use crate::memory::{rings, zero_rings, ChannelRing, RingRegions};
use component_api::{println, Channel, Client, Env, Refusal};
use vmbus_ipc::{bus, synic};
use vmbus_protocol::ic::{
    self, answer_negotiate, IcFlags, IcMessageHeader, IcVersion, Negotiated, IC_HEADERS_SIZE,
    PIPE_PACKET_DATA,
};
use vmbus_protocol::packet::PacketKind;
use vmbus_ring::RingMemory;
use vmbus_ring::{RingError, RingReader, RingWriter, Signal};
use zerocopy::{FromBytes, IntoBytes};

/// The largest packet a VSC accepts. The biggest IC message (a KVP
/// enumerate: headers + 2572-byte pair) is well below; a bigger packet is
/// not an IC message, and since the ring cannot skip a packet it has not
/// copied, it makes the driver give up (see [`IcChannel::poll`]).
pub const PACKET_BUFFER: usize = 4096;

/// Malformed packets in a row (without one good packet between them) after
/// which the driver gives up: either the read position is lost (a packet
/// too short to have a length does not advance it) or the host is only
/// sending garbage.
pub const MAX_BAD_IN_A_ROW: u32 = 16;

/// Open requests per channel generation before the driver stops asking.
pub const MAX_OPEN_ATTEMPTS: u8 = 3;

/// How long the out ring may stay full (the host not reading our answers)
/// before the driver calls it a host fault: counted, reported once, and
/// calls that need the channel are refused until the host makes space.
pub const HOST_SPACE_TIMEOUT_NS: u64 = 5_000_000_000;

/// The refusal a client gets for a call that needs the channel while the
/// host does not read it (a host fault, see [`HOST_SPACE_TIMEOUT_NS`]).
pub const CHANNEL_STALLED: Refusal = Refusal(0x100);

/// Console lines for rejected messages: the first this many, then one per
/// [`REJECT_LOG_EVERY`], so a hostile host cannot flood the console.
const REJECT_LOG_FIRST: u32 = 8;
const REJECT_LOG_EVERY: u32 = 100;

/// What the channel loop needs to know of the component's generated ids.
#[derive(Clone, Copy, Debug)]
pub struct ChannelIds {
    /// The VSC's ring regions: per ring a control page and a data area
    /// (double mapped where the runtime can).
    pub rings: RingRegions,
    /// Calls to synic (`synic_call`): SignalHost.
    pub synic_call: Client<synic::Synic>,
    /// Calls to the bus manager (`vmbus`).
    pub vmbus: Client<bus::Bus>,
    /// Notifications from the bus manager (`vmbus_event`): the channel's
    /// state changed.
    pub vmbus_event: Channel,
    /// Notifications from synic (`synic`): the host signalled the channel.
    pub synic: Channel,
}

/// Why a message was not answered. It is counted and logged; the host
/// times out on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rejection(pub &'static str);

/// A message type's service: heartbeat, shutdown, timesync, KVP.
pub trait IcService {
    /// `ic::message_type::*` of the messages this service answers.
    const MESSAGE_TYPE: u16;
    /// The message versions it speaks, newest first.
    const MESSAGE_VERSIONS: &'static [(u16, u16)];
    /// Serve one request. `body` is the private copy of the message body
    /// (bounded by the pipe header); the answer is written in place, as IC
    /// answers are the request with the header flags turned around. Returns
    /// the status for the answer's header, or a rejection (no answer).
    fn handle(
        &mut self,
        env: &mut dyn Env,
        version: IcVersion,
        body: &mut [u8],
    ) -> Result<u32, Rejection>;
}

/// Counters, for tests and the console.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets: u32,
    pub answered: u32,
    pub rejected: u32,
    pub negotiations: u32,
    /// Answers that found the out ring full and waited for space (none is
    /// ever dropped).
    pub answers_waited: u32,
    /// Times the host left the out ring full for longer than
    /// [`HOST_SPACE_TIMEOUT_NS`] (a host fault; reported once each).
    pub host_faults: u32,
    pub signals: u32,
    pub signal_failures: u32,
    /// Signals synic answered `ChannelClosed` (the channel was rescinded
    /// or closed before we heard): expected, not failures.
    pub signals_after_close: u32,
    /// Notifications from synic that found no open channel.
    pub spurious: u32,
    /// Drain rounds (mask, read, publish, unmask, look again).
    pub rounds: u32,
    /// Looks after the unmask that found data: packets the host wrote
    /// without an interrupt, which a loop without that look would leave.
    pub rechecks_found_data: u32,
}

struct Rings {
    reader: RingReader<ChannelRing>,
    writer: RingWriter<ChannelRing>,
}

/// The state of one IC channel. The component owns one and forwards its
/// `vmbus_event` and `synic` notifications to it.
pub struct IcChannel {
    ids: ChannelIds,
    generation: Option<u32>,
    connection_id: u32,
    relid: u32,
    open_attempts: u8,
    rings: Option<Rings>,
    negotiated: Option<Negotiated>,
    bad_in_a_row: u32,
    stats: Stats,
    /// An answer (in `buffer`) that found the out ring full. While it
    /// waits, the in ring is not read (the buffer holds it, and the host
    /// must read before it may write more): back pressure, no loss.
    pending_answer: Option<Answer>,
    /// When the pending answer first found the ring full.
    waiting_since_ns: Option<u64>,
    /// The current wait was reported as a host fault.
    host_fault: bool,
    buffer: [u8; PACKET_BUFFER],
}

/// Stop this driver deliberately: print why, then fault. The bus manager
/// sees the fault, closes the channel, zeroes the rings and restarts us.
/// Used only where continuing could mean misreading the ring.
pub fn give_up(env: &mut dyn Env, reason: &str) -> ! {
    println!(
        env,
        "giving up: {reason}; faulting so that vmbus resets the channel"
    );
    panic!("ic-channel gave up: {reason}");
}

impl IcChannel {
    pub fn new(ids: ChannelIds) -> Self {
        Self {
            ids,
            generation: None,
            connection_id: 0,
            relid: 0,
            open_attempts: 0,
            rings: None,
            negotiated: None,
            bad_in_a_row: 0,
            stats: Stats::default(),
            pending_answer: None,
            waiting_since_ns: None,
            host_fault: false,
            buffer: [0; PACKET_BUFFER],
        }
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }
    pub fn is_open(&self) -> bool {
        self.rings.is_some()
    }
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// The bus manager notified us (or we just started): ask where the
    /// channel stands and act on it.
    pub fn on_bus_event<S: IcService>(&mut self, env: &mut dyn Env, service: &mut S) {
        let info = match self
            .ids
            .vmbus
            .call(env, &bus::Request::Query { channel: 0 })
        {
            Ok(bus::Reply::Channel(info)) => info,
            Ok(other) => {
                println!(env, "vmbus answered Query with {other:?}");
                return;
            }
            Err(error) => {
                println!(env, "vmbus Query failed: {error:?}");
                return;
            }
        };
        if self.generation != Some(info.generation) {
            // A new offer or a reopen: nothing of the old rings is valid.
            if self.rings.take().is_some() {
                println!(env, "channel generation changed: rings dropped");
            }
            self.generation = Some(info.generation);
            self.negotiated = None;
            self.open_attempts = 0;
            self.bad_in_a_row = 0;
        }
        self.connection_id = info.connection_id;
        self.relid = info.relid;
        match info.state {
            bus::ChannelState::Offered | bus::ChannelState::Failed { .. } => {
                if let bus::ChannelState::Failed { status } = info.state {
                    println!(env, "open failed with status {status:#x}");
                }
                self.rings = None;
                self.request_open(env);
            }
            bus::ChannelState::Open => {
                if self.rings.is_none() {
                    self.attach(env);
                    // Data (and its signal) can arrive before we learn
                    // that the channel is open: look once now.
                    self.poll(env, service);
                }
            }
            bus::ChannelState::Opening => {}
            state @ (bus::ChannelState::NotOffered
            | bus::ChannelState::Closing
            | bus::ChannelState::Rescinded
            | bus::ChannelState::Held) => {
                if self.rings.take().is_some() {
                    println!(env, "channel {state:?}: rings released");
                }
                self.negotiated = None;
            }
        }
        if self.rings.is_none() {
            // An answer for rings that are gone has no one to go to.
            self.pending_answer = None;
            self.waiting_since_ns = None;
            self.host_fault = false;
        }
    }

    fn request_open(&mut self, env: &mut dyn Env) {
        if self.open_attempts >= MAX_OPEN_ATTEMPTS {
            return;
        }
        self.open_attempts += 1;
        // The bus manager presents the channel as offered (or failed) only
        // once no GPADL describes the rings: the host holds nothing of
        // them, and it gets them only after this call. Start them from
        // zero so nothing of an earlier life (ours after a restart, or the
        // host's) is trusted or shown to the host. Only we map them.
        if zero_rings(env, self.ids.rings).is_err() {
            give_up(env, "the ring regions cannot be zeroed");
        }
        let request = bus::Request::Open {
            channel: 0,
            user_data: heapless::Vec::new(),
        };
        match self.ids.vmbus.call(env, &request) {
            Ok(bus::Reply::Accepted) => {}
            Ok(other) => println!(env, "vmbus answered Open with {other:?}"),
            Err(error) => println!(env, "vmbus Open failed: {error:?}"),
        }
    }

    fn attach(&mut self, env: &mut dyn Env) {
        let Ok((out_ring, in_ring)) = rings(env, self.ids.rings) else {
            give_up(env, "the ring regions cannot hold two rings");
        };
        // Said at open so boot tests see the runtime honoured `double`.
        let mapped = if out_ring.double_mapped() && in_ring.double_mapped() {
            "twice"
        } else {
            "once"
        };
        // Our own indices are read once here; a host that corrupted them
        // before we attached gets the channel reset.
        // Our writer announces pending_send_sz (feature bit 0 on the out
        // ring): on a full ring it waits for the host's signal.
        let rings = match (RingReader::new(in_ring), RingWriter::new(out_ring, true)) {
            (Ok(reader), Ok(writer)) => Rings { reader, writer },
            _ => give_up(env, "ring indices out of range at open"),
        };
        self.rings = Some(rings);
        println!(
            env,
            "channel open: relid {} connection {}, rings mapped {}",
            self.relid,
            self.connection_id,
            mapped
        );
    }

    /// synic notified us: read everything the host has written.
    ///
    /// Each round masks the host's interrupts, drains the in ring,
    /// publishes the read index, unmasks and looks again. The host decides
    /// whether to interrupt from the published read index (empty ->
    /// non-empty) and the mask, so a packet it wrote after our last empty
    /// read but before the publish or the unmask brought no interrupt:
    /// only that last look finds it. The rounds end when a look after the
    /// unmask finds the ring empty; every round but the last read packets
    /// the host wrote meanwhile, so they last only while the host keeps
    /// writing at least as fast as we answer.
    pub fn poll<S: IcService>(&mut self, env: &mut dyn Env, service: &mut S) {
        if self.rings.is_none() {
            self.stats.spurious += 1;
            return;
        }
        loop {
            if self.pending_answer.is_some() {
                match self.flush_pending_answer(env) {
                    Some(true) => self.signal_host(env),
                    Some(false) => {}
                    None => {
                        // Still full: the host signals once it has read
                        // enough (pending_send_sz), or we look again at
                        // the next notification.
                        self.check_host_fault(env);
                        return;
                    }
                }
            }
            let Some(rings) = self.rings.as_ref() else {
                return;
            };
            if let Err(error) = rings.reader.mask_interrupts() {
                println!(env, "in ring: {error:?}");
                give_up(env, "the in ring's control page is out of reach");
            }
            let mut signal = self.drain(env, service);
            let Some(rings) = self.rings.as_mut() else {
                return;
            };
            match rings.reader.finish_batch() {
                Ok(Signal(wanted)) => signal |= wanted,
                Err(error) => {
                    println!(env, "in ring: {error:?}");
                    give_up(env, "the host broke the in ring");
                }
            }
            let more = match rings.reader.unmask_interrupts() {
                Ok(more) => more,
                Err(error) => {
                    println!(env, "in ring: {error:?}");
                    give_up(env, "the host broke the in ring");
                }
            };
            if signal {
                self.signal_host(env);
            }
            self.stats.rounds += 1;
            if !more || self.pending_answer.is_some() {
                return;
            }
            self.stats.rechecks_found_data += 1;
        }
    }

    /// Read, serve and answer every packet in the in ring (not published:
    /// that is [`IcChannel::poll`]'s). Returns whether the host must be
    /// signalled for the answers.
    fn drain<S: IcService>(&mut self, env: &mut dyn Env, service: &mut S) -> bool {
        let mut signal = false;
        loop {
            let Some(rings) = self.rings.as_mut() else {
                return signal;
            };
            let len = match rings.reader.try_read(&mut self.buffer) {
                Ok(None) => break,
                Ok(Some(info)) => info.len,
                Err(RingError::BadPacket(error)) => {
                    self.stats.packets += 1;
                    self.bad_in_a_row += 1;
                    if self.bad_in_a_row > MAX_BAD_IN_A_ROW {
                        give_up(env, "too many malformed packets in a row");
                    }
                    self.reject(env, "malformed packet", Some(&error));
                    continue;
                }
                Err(error) => {
                    // Corrupt indices, a truncated or oversized packet, a
                    // descriptor changing under our copy: the read position
                    // can no longer be trusted.
                    println!(env, "in ring: {error:?}");
                    give_up(env, "the host broke the in ring");
                }
            };
            self.stats.packets += 1;
            match self.handle_packet(env, service, len) {
                Ok(answer) => {
                    self.bad_in_a_row = 0;
                    match self.write_answer(env, answer) {
                        Some(wanted) => signal |= wanted,
                        None => {
                            // The answer waits in the buffer: read no more.
                            self.stats.answers_waited += 1;
                            self.pending_answer = Some(answer);
                            self.waiting_since_ns = Some(env.now_ns());
                            return signal;
                        }
                    }
                }
                Err(rejection) => {
                    self.bad_in_a_row += 1;
                    if self.bad_in_a_row > MAX_BAD_IN_A_ROW {
                        give_up(env, "too many malformed messages in a row");
                    }
                    self.reject(env, rejection.0, None);
                }
            }
        }
        signal
    }

    fn reject(&mut self, env: &mut dyn Env, reason: &str, detail: Option<&dyn core::fmt::Debug>) {
        self.stats.rejected += 1;
        let count = self.stats.rejected;
        if count <= REJECT_LOG_FIRST || count.is_multiple_of(REJECT_LOG_EVERY) {
            match detail {
                Some(detail) => println!(env, "rejected ({count} so far): {reason}: {detail:?}"),
                None => println!(env, "rejected ({count} so far): {reason}"),
            }
        }
    }

    /// Handle the packet copied into the buffer; the answer, if any, is
    /// written over the request in the buffer.
    fn handle_packet<S: IcService>(
        &mut self,
        env: &mut dyn Env,
        service: &mut S,
        packet_len: usize,
    ) -> Result<Answer, Rejection> {
        let packet = vmbus_protocol::packet::parse_packet(&self.buffer[..packet_len])
            .map_err(|_| Rejection("malformed packet"))?;
        if packet.kind != PacketKind::InBand {
            return Err(Rejection("not an in-band packet"));
        }
        let transaction_id = packet.transaction_id;
        let payload_start = packet_len - packet.payload.len();
        let payload = &mut self.buffer[payload_start..packet_len];
        let (header, message_len) = check_frame(payload)?;
        let answer = if header.message_type.get() == ic::message_type::NEGOTIATE {
            let mut response = [0u8; 64];
            let (len, chosen) = answer_negotiate(
                &payload[..message_len],
                &ic::versions::FRAMEWORK,
                S::MESSAGE_VERSIONS,
                &mut response,
            )
            .map_err(|_| Rejection("malformed negotiate message"))?;
            payload[..len].copy_from_slice(&response[..len]);
            self.stats.negotiations += 1;
            self.on_negotiated(env, chosen);
            len
        } else if header.message_type.get() == S::MESSAGE_TYPE {
            let Some(negotiated) = self.negotiated else {
                return Err(Rejection("message before version negotiation"));
            };
            let body = &mut payload[IC_HEADERS_SIZE..message_len];
            let status = service.handle(env, negotiated.message, body)?;
            let mut answer_header = header;
            answer_header.set_flags(IcFlags::TRANSACTION | IcFlags::RESPONSE);
            answer_header.status = status.into();
            payload[8..IC_HEADERS_SIZE].copy_from_slice(answer_header.as_bytes());
            message_len
        } else {
            return Err(Rejection("message type of another service"));
        };
        Ok(Answer {
            transaction_id,
            start: payload_start,
            len: answer,
        })
    }

    fn on_negotiated(&mut self, env: &mut dyn Env, chosen: Option<Negotiated>) {
        self.negotiated = chosen;
        let Some(chosen) = chosen else {
            println!(env, "negotiation: the host offers no version we speak");
            return;
        };
        let framework = (chosen.framework.major.get(), chosen.framework.minor.get());
        let message = (chosen.message.major.get(), chosen.message.minor.get());
        println!(
            env,
            "negotiated framework {}.{}, message {}.{}",
            framework.0,
            framework.1,
            message.0,
            message.1
        );
        let report = bus::Request::ReportVersions { framework, message };
        match self.ids.vmbus.call(env, &report) {
            Ok(bus::Reply::Accepted) => {}
            Ok(other) => println!(env, "vmbus answered ReportVersions with {other:?}"),
            Err(error) => println!(env, "vmbus ReportVersions failed: {error:?}"),
        }
    }

    /// Write an answer: `Some(signal)` once written (whether the host must
    /// be signalled), `None` if the out ring is full. The ring has then
    /// published pending_send_sz and looked again, so the host signals us
    /// once it has read enough.
    fn write_answer(&mut self, env: &mut dyn Env, answer: Answer) -> Option<bool> {
        let rings = self.rings.as_mut()?;
        let bytes = &self.buffer[answer.start..answer.start + answer.len];
        match rings
            .writer
            .write_in_band(answer.transaction_id, false, bytes)
        {
            Ok(Signal(signal)) => {
                self.stats.answered += 1;
                Some(signal)
            }
            Err(RingError::Full { .. }) => None,
            Err(error) => {
                println!(env, "out ring: {error:?}");
                give_up(env, "the host broke the out ring");
            }
        }
    }

    /// Try the answer that waits for space again: `Some(signal)` once it
    /// is written, `None` while the ring is still full.
    fn flush_pending_answer(&mut self, env: &mut dyn Env) -> Option<bool> {
        let answer = self.pending_answer?;
        let signal = self.write_answer(env, answer)?;
        self.pending_answer = None;
        self.waiting_since_ns = None;
        if self.host_fault {
            self.host_fault = false;
            println!(env, "out ring has space again: answering resumes");
        }
        Some(signal)
    }

    /// Call a wait for space that lasts too long a host fault: counted and
    /// reported once per wait (no busy loop: we only look again when
    /// notified or asked).
    fn check_host_fault(&mut self, env: &mut dyn Env) {
        let Some(since) = self.waiting_since_ns else {
            return;
        };
        let waited = env.now_ns().saturating_sub(since);
        if self.host_fault || waited < HOST_SPACE_TIMEOUT_NS {
            return;
        }
        self.host_fault = true;
        self.stats.host_faults += 1;
        println!(
            env,
            "host fault ({} so far): the out ring has been full for {} ms; an answer waits and the in ring is not read",
            self.stats.host_faults,
            waited / 1_000_000
        );
    }

    /// Whether the host is at fault for not reading the channel: an answer
    /// has waited for space in the out ring for longer than
    /// [`HOST_SPACE_TIMEOUT_NS`]. (Look with [`IcChannel::poll`] first: a
    /// host that made space without the signal it owes is not blamed.)
    pub fn host_fault(&mut self, env: &mut dyn Env) -> bool {
        self.check_host_fault(env);
        self.host_fault
    }

    /// An answer waits for space in the out ring.
    pub fn answer_waiting(&self) -> bool {
        self.pending_answer.is_some()
    }

    fn signal_host(&mut self, env: &mut dyn Env) {
        let request = synic::Request::SignalHost {
            connection_id: self.connection_id,
        };
        match self.ids.synic_call.call(env, &request) {
            Ok(synic::Reply::Done) => self.stats.signals += 1,
            // Rescinded or closed a moment ago; vmbus tells us next.
            Ok(synic::Reply::ChannelClosed) => self.stats.signals_after_close += 1,
            other => {
                self.stats.signal_failures += 1;
                println!(env, "SignalHost failed: {other:?}");
            }
        }
    }
}

/// Where an answer lies in the buffer.
#[derive(Clone, Copy, Debug)]
struct Answer {
    transaction_id: u64,
    start: usize,
    len: usize,
}

/// Check the pipe and IC headers of a payload; returns the IC header and
/// the message length (pipe header included) the pipe header claims. The
/// payload may be longer (packets are padded to 8 bytes).
pub fn check_frame(payload: &[u8]) -> Result<(IcMessageHeader, usize), Rejection> {
    let message =
        ic::parse_ic_message(payload).map_err(|_| Rejection("shorter than IC headers"))?;
    if message.pipe.packet_type.get() != PIPE_PACKET_DATA {
        return Err(Rejection("not a pipe data packet"));
    }
    let message_len = (message.pipe.data_size.get() as usize)
        .checked_add(8)
        .filter(|len| (IC_HEADERS_SIZE..=payload.len()).contains(len))
        .ok_or(Rejection(
            "pipe size beyond the packet or below the IC header",
        ))?;
    let header = message.header;
    if header.flags().contains(IcFlags::RESPONSE) {
        return Err(Rejection("a response where a request belongs"));
    }
    Ok((header, message_len))
}

/// Read a fixed-size body from the front of a message body, or reject.
pub fn body_mut<T: FromBytes + IntoBytes + zerocopy::KnownLayout + zerocopy::Unaligned>(
    body: &mut [u8],
) -> Result<&mut T, Rejection> {
    T::mut_from_prefix(body)
        .map(|(value, _)| value)
        .map_err(|_| Rejection("body shorter than its message"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_service::{Echo, IDS};
    use crate::testing::*;
    use env_double::EnvDouble;
    use vmbus_protocol::ic::{message_type, HeartbeatMessage, STATUS_FAIL, STATUS_OK};

    fn open_channel() -> (EnvDouble, TestHost, IcChannel, Echo) {
        let mut env = EnvDouble::new();
        let host = TestHost::new(&mut env, IDS);
        let mut channel = IcChannel::new(IDS);
        let mut echo = Echo::default();
        channel.on_bus_event(&mut env, &mut echo);
        assert_eq!(host.bus.borrow().open_requests, 1);
        assert!(!channel.is_open(), "open only once vmbus says so");
        channel.on_bus_event(&mut env, &mut echo);
        assert!(channel.is_open());
        (env, host, channel, echo)
    }

    fn negotiate(
        env: &mut EnvDouble,
        host: &mut TestHost,
        channel: &mut IcChannel,
        echo: &mut Echo,
    ) {
        host.send(&negotiate_request(&[(1, 0), (3, 0)], &[(1, 0), (3, 0)]));
        channel.poll(env, echo);
        let (header, body) = host.receive_ic().unwrap();
        assert_eq!(header.status.get(), STATUS_OK);
        assert_eq!(negotiated_in(&body), Some(((3, 0), (3, 0))));
    }

    #[test]
    fn opens_negotiates_reports_and_answers() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        negotiate(&mut env, &mut host, &mut channel, &mut echo);
        assert_eq!(host.bus.borrow().reported, vec![((3, 0), (3, 0))]);
        let transaction = host.send(&heartbeat(41));
        channel.poll(&mut env, &mut echo);
        let (id, payload) = host.receive().unwrap();
        assert_eq!(id, transaction);
        let message = ic::parse_ic_message(&payload).unwrap();
        assert_eq!(
            message.header.flags(),
            IcFlags::TRANSACTION | IcFlags::RESPONSE
        );
        let body: HeartbeatMessage = ic::read_body(message.body).unwrap();
        assert_eq!(body.sequence.get(), 42);
        assert_eq!(channel.stats().answered, 2);
        assert!(env
            .console
            .contains("negotiated framework 3.0, message 3.0"));
    }

    #[test]
    fn signals_only_on_empty_to_non_empty() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        negotiate(&mut env, &mut host, &mut channel, &mut echo);
        assert_eq!(*host.signals.borrow(), vec![TEST_CONNECTION_ID]);
        // Two answers into a ring the host has not read: one signal.
        host.send(&heartbeat(1));
        host.send(&heartbeat(2));
        channel.poll(&mut env, &mut echo);
        assert_eq!(host.signals.borrow().len(), 2);
        // The host has not read those yet: no signal for a third.
        host.send(&heartbeat(3));
        channel.poll(&mut env, &mut echo);
        assert_eq!(host.signals.borrow().len(), 2);
        assert_eq!(echo.served, 3);
        // A notification with nothing to read signals nothing.
        while host.receive().is_some() {}
        channel.poll(&mut env, &mut echo);
        assert_eq!(host.signals.borrow().len(), 2);
    }

    #[test]
    fn a_signal_for_a_channel_closed_meanwhile_is_no_failure() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        negotiate(&mut env, &mut host, &mut channel, &mut echo);
        // Rescinded between the host's request and our answer's signal.
        host.channel_closed.set(true);
        host.send(&heartbeat(1));
        channel.poll(&mut env, &mut echo);
        let stats = channel.stats();
        assert_eq!((stats.signals_after_close, stats.signal_failures), (1, 0));
        assert!(
            !env.console.contains("SignalHost failed"),
            "{}",
            env.console
        );
    }

    #[test]
    fn no_common_version_fails_and_later_messages_are_rejected() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        host.send(&negotiate_request(&[(3, 0)], &[(2, 0), (9, 9)]));
        channel.poll(&mut env, &mut echo);
        let (header, body) = host.receive_ic().unwrap();
        assert_eq!(header.status.get(), STATUS_FAIL);
        assert_eq!(negotiated_in(&body), None);
        assert!(host.bus.borrow().reported.is_empty());
        host.send(&heartbeat(5));
        channel.poll(&mut env, &mut echo);
        assert!(host.receive().is_none());
        assert_eq!(echo.served, 0);
        assert_eq!(channel.stats().rejected, 1);
        assert!(env.console.contains("message before version negotiation"));
    }

    #[test]
    fn data_written_before_the_open_notification_is_read_at_open() {
        let mut env = EnvDouble::new();
        let mut host = TestHost::new(&mut env, IDS);
        let mut channel = IcChannel::new(IDS);
        let mut echo = Echo::default();
        channel.on_bus_event(&mut env, &mut echo);
        // The host writes (and signals) before the VSC learns of the open.
        host.send(&negotiate_request(&[(3, 0)], &[(3, 0)]));
        channel.poll(&mut env, &mut echo);
        assert_eq!(channel.stats().spurious, 1);
        channel.on_bus_event(&mut env, &mut echo);
        assert!(host.receive_ic().is_some());
    }

    #[test]
    fn malformed_messages_are_rejected_and_the_channel_goes_on() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        negotiate(&mut env, &mut host, &mut channel, &mut echo);
        // Shorter than the IC headers.
        host.send(&[1, 0, 0, 0, 4, 0, 0, 0]);
        // A pipe size beyond the packet.
        let mut lying = heartbeat(1);
        lying[4] = 0xff;
        host.send(&lying);
        // A pipe size below the IC header.
        let mut short = heartbeat(1);
        short[4..8].copy_from_slice(&4u32.to_le_bytes());
        host.send(&short);
        // Not a pipe data packet.
        let mut control = heartbeat(1);
        control[0] = 2;
        host.send(&control);
        // A response instead of a request.
        let mut response = heartbeat(1);
        response[8 + 17] = IcFlags::RESPONSE.bits();
        host.send(&response);
        // Another service's message type.
        host.send(&ic_request(message_type::KVP, (5, 0), &[0; 16]));
        // A heartbeat body cut short (the service rejects it).
        host.send(&ic_request(message_type::HEARTBEAT, (3, 0), &[0; 8]));
        // A completion packet instead of in-band data.
        host.send_raw(&descriptor(0xB, 2, 4, 0), &[], &[0; 16]);
        // An unknown packet type and unknown flags.
        host.send_raw(&descriptor(0x42, 2, 4, 0), &[], &[0; 16]);
        host.send_raw(&descriptor(in_band(), 2, 4, 0x80), &[], &[0; 16]);
        // A payload offset inside the descriptor, and one past the end.
        host.send_raw(&descriptor(in_band(), 1, 4, 0), &[], &[0; 16]);
        host.send_raw(&descriptor(in_band(), 4, 3, 0), &[], &[0; 8]);
        // And a good one after all that.
        host.send(&heartbeat(7));
        channel.poll(&mut env, &mut echo);
        assert_eq!(channel.stats().rejected, 12);
        assert_eq!(echo.served, 1);
        let (_, body) = host.receive_ic().unwrap();
        let body: HeartbeatMessage = ic::read_body(&body).unwrap();
        assert_eq!(body.sequence.get(), 8);
        assert!(host.receive().is_none());
        assert!(env
            .console
            .contains("rejected (1 so far): shorter than IC headers"));
    }

    #[test]
    #[should_panic(expected = "gave up")]
    fn a_corrupt_write_index_makes_the_driver_give_up() {
        let (mut env, host, mut channel, mut echo) = open_channel();
        host.poke_in_control(0, 12);
        channel.poll(&mut env, &mut echo);
    }

    #[test]
    #[should_panic(expected = "gave up")]
    fn a_length_beyond_what_was_written_makes_the_driver_give_up() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        let mut raw = descriptor(in_band(), 2, u16::MAX, 0).as_bytes().to_vec();
        raw.resize(32, 0xee);
        // Written as 32 bytes of payload behind a sane descriptor, then the
        // descriptor overwritten in place: the reader sees len8 = 65535.
        host.send(&raw[16..]);
        host.poke_in_data(0, &raw[..16]);
        channel.poll(&mut env, &mut echo);
    }

    #[test]
    fn a_packet_too_short_to_skip_makes_the_driver_give_up() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        host.send(&[0u8; 16]);
        // len8 = 1: shorter than a descriptor, so there is no trustworthy
        // way past it; the reader does not move and the driver gives up.
        host.poke_in_data(0, descriptor(in_band(), 2, 1, 0).as_bytes());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            channel.poll(&mut env, &mut echo)
        }));
        assert!(outcome.is_err());
        assert!(env
            .console
            .contains("giving up: too many malformed packets in a row"));
    }

    #[test]
    #[should_panic(expected = "gave up")]
    fn a_packet_larger_than_any_ic_message_makes_the_driver_give_up() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        host.send(&vec![0u8; PACKET_BUFFER]);
        channel.poll(&mut env, &mut echo);
    }

    #[test]
    fn garbage_without_end_makes_the_driver_give_up() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        for _ in 0..MAX_BAD_IN_A_ROW {
            host.send(&[0u8; 8]);
        }
        channel.poll(&mut env, &mut echo);
        assert_eq!(channel.stats().rejected, MAX_BAD_IN_A_ROW);
        host.send(&[0u8; 8]);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            channel.poll(&mut env, &mut echo)
        }));
        assert!(outcome.is_err());
        assert!(env.console.contains("giving up: too many malformed"));
    }

    #[test]
    fn a_new_generation_resets_the_rings_and_versions() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        negotiate(&mut env, &mut host, &mut channel, &mut echo);
        host.send(&heartbeat(1));
        // vmbus closed and re-offered: generation 2, offered.
        host.set_state(bus::ChannelState::Offered, 2);
        channel.on_bus_event(&mut env, &mut echo);
        assert!(!channel.is_open());
        assert_eq!(channel.negotiated(), None);
        assert_eq!(host.bus.borrow().open_requests, 2);
        // The rings were zeroed before the reopen: the stale heartbeat is gone.
        channel.on_bus_event(&mut env, &mut echo);
        host.reattach();
        assert!(host.receive().is_none());
        assert_eq!(echo.served, 0);
        // Messages before a new negotiation are not served.
        host.send(&heartbeat(1));
        channel.poll(&mut env, &mut echo);
        assert!(host.receive().is_none());
        negotiate(&mut env, &mut host, &mut channel, &mut echo);
    }

    #[test]
    fn a_restarted_driver_zeroes_its_rings_before_it_asks_to_open() {
        let mut env = EnvDouble::new();
        let host = TestHost::new(&mut env, IDS);
        // What the driver's earlier life and the host left in the rings:
        // indices, packets, control bits, in both rings.
        host.scribble_rings();
        // A restarted driver: fresh state, the channel offered again.
        let mut channel = IcChannel::new(IDS);
        let mut echo = Echo::default();
        channel.on_bus_event(&mut env, &mut echo);
        assert_eq!(host.bus.borrow().rings_zero_at_open, [true]);
        channel.on_bus_event(&mut env, &mut echo);
        assert!(channel.is_open());
        // A reopen in the same life (a new generation) zeroes them too.
        host.scribble_rings();
        host.set_state(bus::ChannelState::Offered, 2);
        channel.on_bus_event(&mut env, &mut echo);
        assert_eq!(host.bus.borrow().rings_zero_at_open, [true, true]);
    }

    #[test]
    fn rescind_releases_the_rings() {
        let (mut env, mut host, mut channel, mut echo) = open_channel();
        host.set_state(bus::ChannelState::Rescinded, 1);
        channel.on_bus_event(&mut env, &mut echo);
        assert!(!channel.is_open());
        host.send(&heartbeat(1));
        channel.poll(&mut env, &mut echo);
        assert_eq!(channel.stats().spurious, 1);
        assert!(env.console.contains("Rescinded: rings released"));
    }

    #[test]
    fn open_is_retried_a_bounded_number_of_times() {
        let mut env = EnvDouble::new();
        let host = TestHost::new(&mut env, IDS);
        let mut channel = IcChannel::new(IDS);
        let mut echo = Echo::default();
        for _ in 0..5 {
            host.set_state(
                bus::ChannelState::Failed {
                    status: 0xc000_0001,
                },
                1,
            );
            channel.on_bus_event(&mut env, &mut echo);
        }
        assert_eq!(
            host.bus.borrow().open_requests,
            u32::from(MAX_OPEN_ATTEMPTS)
        );
    }
}

#[cfg(test)]
mod hostile {
    use super::*;
    use crate::test_service::{Echo, IDS};
    use crate::testing::*;
    use env_double::EnvDouble;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any in-band payload, and any mutation of a valid negotiate or
        /// heartbeat message, is answered or rejected (counted), never a
        /// panic, and the channel keeps working afterwards.
        #[test]
        fn any_payload_is_answered_or_rejected(
            negotiated in any::<bool>(),
            base in 0usize..3,
            flips in proptest::collection::vec((0usize..96, any::<u8>()), 0..6),
            random in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut env = EnvDouble::new();
            let mut host = TestHost::new(&mut env, IDS);
            let mut channel = IcChannel::new(IDS);
            let mut echo = Echo::default();
            channel.on_bus_event(&mut env, &mut echo);
            channel.on_bus_event(&mut env, &mut echo);
            if negotiated {
                host.send(&negotiate_request(&[(3, 0)], &[(3, 0)]));
                channel.poll(&mut env, &mut echo);
                prop_assert!(host.receive().is_some());
            }
            let mut payload = match base {
                0 => negotiate_request(&[(3, 0), (1, 0)], &[(3, 0), (1, 0)]),
                1 => heartbeat(1),
                _ => random,
            };
            for (at, value) in flips {
                if let Some(byte) = payload.get_mut(at) {
                    *byte = value;
                }
            }
            let rejected = channel.stats().rejected;
            host.send(&payload);
            channel.poll(&mut env, &mut echo);
            let answered = host.receive().is_some();
            prop_assert!(answered != (channel.stats().rejected == rejected + 1));
            // Still alive: a negotiation is answered.
            host.send(&negotiate_request(&[(3, 0)], &[(3, 0)]));
            channel.poll(&mut env, &mut echo);
            prop_assert!(host.receive().is_some());
        }
    }
}
