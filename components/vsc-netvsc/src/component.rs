//! The component: the [`Initiator`] wired to its channels (the primary
//! and the sub-channels, through the bus manager and synic), its two
//! buffers (`buffer0` the receive buffer, `buffer1` the send buffer, each
//! shared with the host by a GPADL) and its net client (`net_queue`'s
//! `NetServer` over the `[[net]]` grant).
//!
//! Received frames are copied twice: out of the receive buffer into
//! private memory (where the RNDIS message is checked), then into the
//! client's receive buffer. Frames to send are copied once into a
//! send-buffer section when short; long ones are named to the host
//! GPA-direct in the client's own buffer (the driver writes only their
//! RNDIS header, in the send buffer).

use crate::flow;
use crate::initiator::{
    Buffers, Config, Event, Initiator, Note, Output, Tag, TxRefused, TxRequest, MAX_SLOTS, MAX_TX,
};
use component_api::{println, ChannelSet, Component, Env, Refusal, Region, RegionName};
use ic_channel::memory::ChannelRing;
use ic_channel::{give_up, rings, zero_rings, ChannelIds, RingRegions};
use net_queue::{
    info, NetRegions, NetServer, TxFrame, BUFFER_SIZE, RX_CHECKSUM_VERIFIED, TX_CHECKSUM_OFFLOAD,
};
use vmbus_channel::{
    ChannelError, DataChannel, ReceiveBuffer, Received, Refusal as ChannelRefusal, SharedBuffer,
};
use vmbus_ipc::{bus, synic};
use vmbus_protocol::nvsp;
use vmbus_ring::{RingError, RingReader, RingWriter};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub const IDS: ChannelIds = ic_channel::driver_ids!();

/// Sub-channels the driver can open (the description's `sub_channels`,
/// at most 7).
pub const SUB_CHANNELS: usize = if driver::SUB_CHANNELS < 7 {
    driver::SUB_CHANNELS
} else {
    7
};
pub const CHANNELS: usize = 1 + SUB_CHANNELS;
/// Sub-channel K's ring regions follow the primary's, four each, in the
/// generated order (checked: the first buffer comes right after them).
const _: () = assert!(
    regions::BUFFER0.0 as usize
        == regions::RING_OUT_CONTROL.0 as usize + 4 * (1 + driver::SUB_CHANNELS)
);
const RECEIVE_BUFFER: u8 = 0;
const SEND_BUFFER: u8 = 1;
const _: () = assert!(
    driver::BUFFER_BYTES.len() >= 2,
    "network needs buffers = [receive, send]"
);

/// A request the host has not answered in this long: the description's
/// `request_timeout_ms`, else 5 s.
const REQUEST_TIMEOUT_NS: u64 = match driver::REQUEST_TIMEOUT_MS {
    Some(ms) => ms * 1_000_000,
    None => 5_000_000_000,
};
const CONFIG: Config = Config {
    mtu: 1500,
    sub_channels: SUB_CHANNELS as u16,
    receive_buffer_bytes: driver::BUFFER_BYTES[0] as u32,
    send_buffer_bytes: driver::BUFFER_BYTES[1] as u32,
    checksum_offload: true,
    copy_break: 512,
    request_timeout_ns: REQUEST_TIMEOUT_NS,
    keepalive_ns: 10_000_000_000,
};
/// Outputs kept free before a host packet is read (a receive queues one
/// completion; its RNDIS answers may queue a control message and its
/// completion).
const OUTPUT_RESERVE: usize = 8;
/// Bytes of the private copy of one host packet.
const PACKET_BYTES: usize = 8192;
/// Rounds of pumping per notification (each moves at least one thing).
const PUMP_ROUNDS: usize = 4096;
/// Console lines for refusals and notes: the first this many, then one in
/// [`NOTE_LOG_EVERY`] (a hostile host cannot flood the console).
const NOTES_LOGGED: u64 = 32;
const NOTE_LOG_EVERY: u64 = 1024;

fn ring_regions(lane: usize) -> RingRegions {
    if lane == 0 {
        return IDS.rings;
    }
    // At most 8 lanes of 4 regions: fits the region numbering.
    let first = regions::RING_OUT_CONTROL.0 + 4 * lane as u8;
    RingRegions {
        out_control: RegionName(first),
        out_data: RegionName(first + 1),
        in_control: RegionName(first + 2),
        in_data: RegionName(first + 3),
    }
}

struct Lane {
    generation: Option<u32>,
    connection_id: u32,
    open_asked: bool,
    channel: Option<DataChannel<ChannelRing, Tag, MAX_SLOTS>>,
}

impl Lane {
    const fn new() -> Lane {
        Lane {
            generation: None,
            connection_id: 0,
            open_asked: false,
            channel: None,
        }
    }
}

/// A host-visible buffer of ours: its region and, once the host accepted
/// its GPADL, how the host knows it.
#[derive(Clone, Copy)]
struct HostBuffer {
    region: Region,
    shared: Option<SharedBuffer>,
}

/// The client: its server half, its data region (for GPA-direct) and the
/// frames taken from it that the host has not completed.
struct Client {
    server: NetServer,
    data: Option<SharedBuffer>,
    frames: [Option<TxFrame>; MAX_TX],
    /// A frame taken that the initiator could not take yet (busy).
    waiting: Option<u32>,
}

pub struct Network {
    lanes: [Lane; CHANNELS],
    initiator: Initiator,
    receive: HostBuffer,
    send: HostBuffer,
    gpadls_asked: bool,
    started: bool,
    client: Option<Client>,
    notes: u64,
    /// A host packet copied out of its ring: a transfer-page packet of
    /// the most ranges NVSP allows fits.
    packet: [u8; PACKET_BYTES],
    wakeup: synic::Wakeup,
}

/// What the initiator reaches: the two buffers and the client.
struct Memory<'a> {
    receive: Region,
    send: Region,
    client: Option<&'a mut Client>,
}

impl Buffers for Memory<'_> {
    fn read_receive(&mut self, offset: u32, out: &mut [u8]) -> bool {
        self.receive.read_bulk(offset as usize, out).is_ok()
    }
    fn write_send(&mut self, offset: u32, bytes: &[u8]) -> bool {
        self.send.write_bulk(offset as usize, bytes).is_ok()
    }
    fn peek_frame(&mut self, token: u32, out: &mut [u8]) -> bool {
        let Some(client) = self.client.as_deref() else {
            return false;
        };
        let Some(Some(frame)) = client.frames.get(token as usize) else {
            return false;
        };
        out.len() <= frame.len()
            && client
                .server
                .data()
                .read_bulk(frame.offset() as usize, out)
                .is_ok()
    }
    fn copy_frame(&mut self, token: u32, offset: u32, len: u32) -> bool {
        let Some(client) = self.client.as_deref() else {
            return false;
        };
        let Some(Some(frame)) = client.frames.get(token as usize) else {
            return false;
        };
        let mut bytes = [0u8; BUFFER_SIZE];
        let Some(bytes) = bytes.get_mut(..len as usize) else {
            return false;
        };
        len as usize == frame.len()
            && client.server.frame(frame, bytes).is_ok()
            && self.send.write_bulk(offset as usize, bytes).is_ok()
    }
    fn deliver(&mut self, _lane: u8, frame: &[u8], checksum_verified: bool) -> bool {
        let Some(client) = self.client.as_deref_mut() else {
            return false;
        };
        let slot = match client.server.take_rx() {
            Ok(Some(slot)) => slot,
            _ => {
                client.server.counters_mut().rx_no_buffer += 1;
                return false;
            }
        };
        let flags = if checksum_verified {
            RX_CHECKSUM_VERIFIED
        } else {
            0
        };
        client.server.deliver(slot, frame, flags).unwrap_or(false)
    }
}

impl Component for Network {
    fn init(env: &mut dyn Env) -> Self {
        let client = net_clients::CLIENTS.first().and_then(|grant| {
            let regions = NetRegions {
                rx_free: env.region(grant.rx_free),
                rx_active: env.region(grant.rx_active),
                tx_free: env.region(grant.tx_free),
                tx_active: env.region(grant.tx_active),
                info: env.region(grant.info),
                data: env.region(grant.data),
            };
            let server = match NetServer::new(regions, grant.buffers) {
                Ok(server) => server,
                Err(error) => {
                    println!(
                        env,
                        "{}: its net regions are unusable: {error:?}", grant.name
                    );
                    return None;
                }
            };
            let data = regions
                .data
                .guest_physical()
                .and_then(|gpa| SharedBuffer::new(gpa, regions.data.len(), 0).ok());
            Some(Client {
                server,
                data,
                frames: [const { None }; MAX_TX],
                waiting: None,
            })
        });
        // Frames go GPA-direct only from a host-visible data region; else
        // every frame is copied into a section.
        let mut config = CONFIG;
        if client.as_ref().is_some_and(|c| c.data.is_none()) {
            println!(
                env,
                "the client's data region is not host visible: every frame is copied"
            );
            config.copy_break = u32::MAX;
        }
        let mut driver = Network {
            lanes: [const { Lane::new() }; CHANNELS],
            initiator: Initiator::new(config),
            receive: HostBuffer {
                region: env.region(regions::BUFFER0),
                shared: None,
            },
            send: HostBuffer {
                region: env.region(regions::BUFFER1),
                shared: None,
            },
            gpadls_asked: false,
            started: false,
            client,
            notes: 0,
            packet: [0; PACKET_BYTES],
            wakeup: synic::Wakeup::default(),
        };
        driver.on_bus_event(env);
        driver
    }

    fn notified(&mut self, env: &mut dyn Env, set: ChannelSet) {
        if set.contains(IDS.vmbus_event) {
            self.on_bus_event(env);
        }
        if set.contains(IDS.synic) {
            let fired = match IDS.synic_call.call(env, &synic::Request::Pending) {
                Ok(synic::Reply::Pending(bits)) => bits,
                other => {
                    println!(
                        env,
                        "synic Pending failed: {other:?}; polling every channel"
                    );
                    u16::MAX
                }
            };
            for lane in 0..CHANNELS {
                if fired & (1 << lane) != 0 {
                    self.poll(env, lane);
                }
            }
            if fired == 0 {
                self.wakeup.forget();
            }
        }
        self.pump(env);
    }

    fn protected(
        &mut self,
        _env: &mut dyn Env,
        _channel: component_api::Channel,
        _message: &[u8],
        _reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        Err(Refusal::NOT_SERVED)
    }
}

impl Network {
    fn memory(&mut self) -> (&mut Initiator, Memory<'_>) {
        (
            &mut self.initiator,
            Memory {
                receive: self.receive.region,
                send: self.send.region,
                client: self.client.as_mut(),
            },
        )
    }

    fn on_bus_event(&mut self, env: &mut dyn Env) {
        for lane in 0..CHANNELS {
            if lane > 0 && usize::from(self.initiator.sub_channels()) < lane {
                break;
            }
            self.on_channel_event(env, lane);
        }
        if self.lanes[0].channel.is_some() && !self.started {
            self.check_buffers(env);
        }
        self.pump(env);
    }

    fn on_channel_event(&mut self, env: &mut dyn Env, lane: usize) {
        let channel = lane as u8;
        let info = match IDS.vmbus.call(env, &bus::Request::Query { channel }) {
            Ok(bus::Reply::Channel(info)) => info,
            other => {
                println!(env, "vmbus answered Query {channel} with {other:?}");
                return;
            }
        };
        if self.lanes[lane].generation != Some(info.generation) {
            self.detach(env, lane, "a new offer");
            self.lanes[lane].generation = Some(info.generation);
            self.lanes[lane].open_asked = false;
        }
        self.lanes[lane].connection_id = info.connection_id;
        match info.state {
            bus::ChannelState::Offered | bus::ChannelState::Failed { .. } => {
                if !self.lanes[lane].open_asked && (lane == 0 || self.lanes[0].channel.is_some()) {
                    self.lanes[lane].open_asked = true;
                    if zero_rings(env, ring_regions(lane)).is_err() {
                        give_up(env, "the ring regions cannot be zeroed");
                    }
                    let open = bus::Request::Open {
                        channel,
                        user_data: heapless::Vec::new(),
                    };
                    if let Err(error) = IDS.vmbus.call(env, &open) {
                        println!(env, "vmbus Open {channel} failed: {error:?}");
                    }
                }
            }
            bus::ChannelState::Open => {
                if self.lanes[lane].channel.is_none() {
                    self.attach(env, lane);
                }
            }
            bus::ChannelState::Opening | bus::ChannelState::NotOffered => {}
            other => {
                if self.lanes[lane].channel.is_some() {
                    println!(env, "channel {lane} {other:?}");
                }
                self.detach(env, lane, "the channel is gone");
            }
        }
    }

    fn attach(&mut self, env: &mut dyn Env, lane: usize) {
        let Ok((out_ring, in_ring)) = rings(env, ring_regions(lane)) else {
            give_up(env, "the ring regions cannot hold two rings");
        };
        let (Ok(reader), Ok(writer)) = (RingReader::new(in_ring), RingWriter::new(out_ring, true))
        else {
            give_up(env, "ring indices out of range at open");
        };
        let mut channel = DataChannel::new(writer, reader);
        // Every channel's receives land in the one receive buffer.
        channel.set_receive_buffer(self.receive_buffer());
        self.lanes[lane].channel = Some(channel);
        if lane == 0 {
            if !self.gpadls_asked {
                self.gpadls_asked = true;
                for buffer in [RECEIVE_BUFFER, SEND_BUFFER] {
                    match IDS.vmbus.call(env, &bus::Request::CreateGpadl { buffer }) {
                        Ok(bus::Reply::Accepted) => {}
                        other => println!(env, "CreateGpadl of buffer {buffer}: {other:?}"),
                    }
                }
            }
            self.check_buffers(env);
        } else {
            println!(env, "sub-channel {lane} open");
            self.initiator.lane_opened(lane as u8);
        }
        self.poll(env, lane);
    }

    fn receive_buffer(&self) -> Option<ReceiveBuffer> {
        self.receive.shared.map(|buffer| ReceiveBuffer {
            buffer,
            transfer_page_set_id: nvsp::RECEIVE_BUFFER_ID,
        })
    }

    /// The channel `lane` is gone: what it had in flight is lost. On the
    /// primary the device starts over (the client keeps its buffers by the
    /// generation rule once the device is served again).
    fn detach(&mut self, env: &mut dyn Env, lane: usize, why: &str) {
        let Some(mut channel) = self.lanes[lane].channel.take() else {
            return;
        };
        let lost: heapless::Vec<Tag, MAX_SLOTS> =
            channel.fail_outstanding().map(|(_, tag)| tag).collect();
        if lane == 0 {
            println!(env, "primary channel lost ({why}); starting over");
            self.initiator.channel_lost();
            self.receive.shared = None;
            self.send.shared = None;
            self.gpadls_asked = false;
            self.started = false;
            for sub in 1..CHANNELS {
                self.lanes[sub].channel = None;
            }
            if let Some(client) = self.client.as_mut() {
                // The client sees the link down and the device gone now
                // (it keeps its buffers until the next generation).
                client.server.set_link(false);
                client.server.withdraw();
                if let Some(grant) = net_clients::CLIENTS.first() {
                    env.notify(grant.notify);
                }
            }
            self.handle_events(env);
        } else {
            self.initiator.lane_lost(lane as u8);
            for tag in lost {
                self.initiator.request_lost(tag);
            }
        }
    }

    fn check_buffers(&mut self, env: &mut dyn Env) {
        for buffer in [RECEIVE_BUFFER, SEND_BUFFER] {
            let target = if buffer == RECEIVE_BUFFER {
                self.receive
            } else {
                self.send
            };
            if target.shared.is_some() {
                continue;
            }
            match IDS.vmbus.call(env, &bus::Request::Buffer { buffer }) {
                Ok(bus::Reply::Buffer(bus::BufferInfo {
                    state: bus::BufferState::Created { gpadl_id },
                    bytes,
                })) => {
                    let shared = target
                        .region
                        .guest_physical()
                        .and_then(|gpa| SharedBuffer::new(gpa, bytes as usize, gpadl_id).ok());
                    let Some(shared) = shared else {
                        give_up(env, "a buffer cannot be described");
                    };
                    if buffer == RECEIVE_BUFFER {
                        self.receive.shared = Some(shared);
                    } else {
                        self.send.shared = Some(shared);
                    }
                }
                Ok(bus::Reply::Buffer(bus::BufferInfo {
                    state: bus::BufferState::Failed { status },
                    ..
                })) => {
                    println!(env, "the host refused buffer {buffer}'s GPADL: {status:#x}");
                    give_up(env, "no receive or send buffer");
                }
                Ok(_) => {}
                Err(error) => println!(env, "vmbus Buffer failed: {error:?}"),
            }
        }
        let (Some(receive), Some(send)) = (self.receive.shared, self.send.shared) else {
            return;
        };
        let receive_buffer = self.receive_buffer();
        for lane in self.lanes.iter_mut() {
            if let Some(channel) = lane.channel.as_mut() {
                channel.set_receive_buffer(receive_buffer);
            }
        }
        self.started = true;
        self.initiator
            .start(receive.gpadl_id(), send.gpadl_id(), env.now_ns());
    }

    fn poll(&mut self, env: &mut dyn Env, lane: usize) {
        for _ in 0..PUMP_ROUNDS {
            let Some(channel) = self.lanes[lane].channel.as_mut() else {
                return;
            };
            if channel.begin_round().is_err() {
                give_up(env, "the in ring's control page is out of reach");
            }
            self.drain(env, lane);
            let Some(channel) = self.lanes[lane].channel.as_mut() else {
                return;
            };
            let end = match channel.end_round() {
                Ok(end) => end,
                Err(_) => give_up(env, "the host broke the in ring"),
            };
            if end.signal_host {
                self.signal_host(env, lane);
            }
            if !end.more {
                return;
            }
        }
    }

    fn drain(&mut self, env: &mut dyn Env, lane: usize) {
        for _ in 0..PUMP_ROUNDS {
            if self.initiator.output_room() < OUTPUT_RESERVE {
                // Every receive queues a completion: send what is queued
                // first, or stop reading until the out ring has room (the
                // host signals when it has read).
                let mut signal = [false; CHANNELS];
                self.send_outputs(env, &mut signal);
                for (lane, wanted) in signal.into_iter().enumerate() {
                    if wanted {
                        self.signal_host(env, lane);
                    }
                }
                if self.initiator.output_room() < OUTPUT_RESERVE {
                    return;
                }
            }
            // Disjoint borrows: the ring copies into `packet` while the
            // initiator reaches the buffers and the client.
            let Network {
                lanes,
                initiator,
                receive,
                send,
                client,
                packet,
                ..
            } = self;
            let Some(channel) = lanes[lane].channel.as_mut() else {
                return;
            };
            let mut memory = Memory {
                receive: receive.region,
                send: send.region,
                client: client.as_mut(),
            };
            let mut refused = None;
            match channel.receive(&mut packet[..]) {
                Ok(Some(Received::Completion {
                    context: tag,
                    payload,
                    ..
                })) => initiator.on_completion(tag, payload, &mut memory),
                Ok(Some(Received::InBand { payload, .. })) => initiator.on_in_band(payload),
                Ok(Some(Received::TransferPages {
                    transaction_id,
                    ranges,
                    payload,
                    ..
                })) => initiator.on_receive(
                    lane as u8,
                    transaction_id,
                    payload,
                    ranges.iter().map(|range| (range.offset, range.len)),
                    &mut memory,
                ),
                Ok(None) => return,
                Err(ChannelError::Refused(ChannelRefusal::Transfer { transaction_id, .. })) => {
                    initiator.on_receive_refused(lane as u8, transaction_id)
                }
                Err(ChannelError::Refused(refusal)) => refused = Some(refusal),
                Err(error) => {
                    println!(env, "in ring {lane}: {error:?}");
                    give_up(env, "the host broke the in ring");
                }
            }
            if let Some(refusal) = refused {
                if self.note() {
                    println!(env, "refused a host packet on channel {lane}: {refusal:?}");
                }
            }
        }
    }

    /// Take the client's frames, put the initiator's outputs on the rings,
    /// answer the client, until nothing moves.
    fn pump(&mut self, env: &mut dyn Env) {
        let now = env.now_ns();
        {
            let (initiator, mut memory) = self.memory();
            initiator.tick(now, &mut memory);
        }
        let mut signal = [false; CHANNELS];
        for _ in 0..PUMP_ROUNDS {
            let mut moved = self.take_frames();
            moved |= self.send_outputs(env, &mut signal);
            moved |= self.handle_events(env);
            if !moved {
                let again = self
                    .client
                    .as_mut()
                    .is_some_and(|c| !c.server.prepare_to_sleep().unwrap_or(true));
                if !again || !self.initiator.can_transmit() {
                    break;
                }
            }
        }
        for (lane, wanted) in signal.into_iter().enumerate() {
            if wanted {
                self.signal_host(env, lane);
            }
        }
        if let Some(client) = self.client.as_mut() {
            let due = client.server.wake_due(now);
            if client.server.client_needs_signal() || due {
                if let Some(grant) = net_clients::CLIENTS.first() {
                    env.notify(grant.notify);
                }
            }
        }
        self.keep_wakeup(env, now);
    }

    fn take_frames(&mut self) -> bool {
        let mut moved = false;
        for _ in 0..MAX_TX {
            let Network {
                initiator,
                receive,
                send,
                client,
                ..
            } = self;
            let Some(state) = client.as_mut() else {
                return moved;
            };
            if !initiator.can_transmit() {
                return moved;
            }
            let token = match state.waiting.take() {
                Some(token) => token,
                None => {
                    let Some(free) = state.frames.iter().position(|f| f.is_none()) else {
                        return moved;
                    };
                    match state.server.next_tx() {
                        Ok(Some(frame)) => {
                            state.frames[free] = Some(frame);
                            free as u32
                        }
                        _ => return moved,
                    }
                }
            };
            let Some(frame) = state.frames[token as usize].as_ref() else {
                continue;
            };
            // One flow, one channel: spread by buffer, a TCP stream came
            // out of order at the host (flow.rs).
            let mut header = [0u8; flow::HEADER_BYTES];
            let header_len = frame.len().min(header.len());
            let flow_hash = match state
                .server
                .data()
                .read(frame.offset() as usize, &mut header[..header_len])
            {
                Ok(()) => flow::flow_hash(&header[..header_len]),
                Err(_) => 0,
            };
            let request = TxRequest {
                token,
                len: frame.len() as u32,
                checksum_offload: frame.flags() & TX_CHECKSUM_OFFLOAD != 0,
                flow_hash,
            };
            let mut memory = Memory {
                receive: receive.region,
                send: send.region,
                client: Some(state),
            };
            let result = initiator.transmit(request, &mut memory);
            let Some(state) = memory.client else {
                return moved;
            };
            match result {
                Ok(()) => moved = true,
                Err(TxRefused::Busy) => {
                    state.waiting = Some(token);
                    return moved;
                }
                Err(TxRefused::NotRunning | TxRefused::BadLength) => {
                    if let Some(frame) = state.frames[token as usize].take() {
                        let _ = state.server.complete_tx(frame, false);
                    }
                    moved = true;
                }
            }
        }
        moved
    }

    fn send_outputs(&mut self, env: &mut dyn Env, signal: &mut [bool; CHANNELS]) -> bool {
        let mut moved = false;
        for _ in 0..MAX_SLOTS * 2 {
            let Some(output) = self.initiator.front().copied() else {
                return moved;
            };
            let lane = (output.lane() as usize).min(CHANNELS - 1);
            let lane = if self.lanes[lane].channel.is_some() {
                lane
            } else {
                0
            };
            let direct_slices = match output {
                Output::Direct {
                    header_offset,
                    header_len,
                    token,
                    frame_len,
                    ..
                } => {
                    let header = self
                        .send
                        .shared
                        .and_then(|b| b.slice(header_offset as usize, header_len as usize).ok());
                    let frame = self.client.as_ref().and_then(|c| {
                        let offset = c.frames.get(token as usize)?.as_ref()?.offset();
                        c.data?.slice(offset as usize, frame_len as usize).ok()
                    });
                    match (header, frame) {
                        (Some(header), Some(frame)) => Some([header, frame]),
                        _ => {
                            self.initiator.send_failed();
                            moved = true;
                            continue;
                        }
                    }
                }
                _ => None,
            };
            let Some(channel) = self.lanes[lane].channel.as_mut() else {
                return moved;
            };
            let result = match output {
                Output::InBand { tag, message, .. } => channel
                    .send_in_band(&message, tag)
                    .map(|sent| sent.signal.0)
                    .map_err(|e| e.error),
                Output::Direct { tag, message, .. } => channel
                    .send_page_buffer(
                        direct_slices.as_ref().map_or(&[][..], |s| &s[..]),
                        &message,
                        Some(tag),
                    )
                    .map(|sent| sent.signal.0)
                    .map_err(|e| e.error),
                Output::Completion {
                    transaction_id,
                    message,
                    ..
                } => channel
                    .send_completion(transaction_id, &message)
                    .map(|signal| signal.0),
            };
            match result {
                Ok(wanted) => {
                    signal[lane] |= wanted;
                    self.initiator.pop_sent();
                    moved = true;
                }
                Err(ChannelError::Ring(RingError::Full { .. })) => {
                    // The host signals when it has read enough.
                    return moved;
                }
                Err(error) => {
                    if self.note() {
                        println!(env, "send on channel {lane} failed: {error:?}");
                    }
                    self.initiator.send_failed();
                    moved = true;
                }
            }
        }
        moved
    }

    fn handle_events(&mut self, env: &mut dyn Env) -> bool {
        let mut moved = false;
        while let Some(event) = self.initiator.pop_event() {
            moved = true;
            match event {
                Event::TxDone { token, sent } => {
                    if let Some(client) = self.client.as_mut() {
                        if let Some(frame) =
                            client.frames.get_mut(token as usize).and_then(Option::take)
                        {
                            let _ = client.server.complete_tx(frame, sent);
                        }
                    }
                }
                Event::Negotiated { version } => {
                    println!(env, "NVSP {}.{}", version >> 16, version & 0xffff)
                }
                Event::SubChannels(count) => {
                    println!(env, "the host offers {count} sub-channels");
                    for lane in 1..CHANNELS.min(usize::from(count) + 1) {
                        self.on_channel_event(env, lane);
                    }
                }
                Event::Up(device) => {
                    let m = device.mac;
                    println!(
                        env,
                        "NIC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}, MTU {}, link {}, {} Mbit/s{}",
                        m[0], m[1], m[2], m[3], m[4], m[5],
                        device.mtu,
                        if device.link_up { "up" } else { "down" },
                        device.link_speed / 10_000,
                        if device.checksum_offload { ", checksum offload" } else { "" }
                    );
                    self.serve(env, device);
                }
                Event::Link(up) => {
                    println!(env, "link {}", if up { "up" } else { "down" });
                    if let Some(client) = self.client.as_mut() {
                        client.server.set_link(up);
                    }
                    if let Some(grant) = net_clients::CLIENTS.first() {
                        env.notify(grant.notify);
                    }
                }
                Event::Note(note) => {
                    if self.note() {
                        match note {
                            Note::Refused(what) => println!(env, "refused {what}"),
                            Note::Reset => println!(env, "the host stopped answering: RNDIS RESET"),
                            Note::Declined(what) => println!(env, "the host declined {what}"),
                        }
                    }
                }
                Event::Halted => println!(env, "halted"),
                Event::Failed(why) => give_up(env, why),
            }
        }
        moved
    }

    fn serve(&mut self, env: &mut dyn Env, device: crate::initiator::Device) {
        let Some(client) = self.client.as_mut() else {
            return;
        };
        // Frames of the old generation are the client's again.
        client.frames = [const { None }; MAX_TX];
        client.waiting = None;
        let features = if device.checksum_offload {
            info::FEATURE_TX_CHECKSUM | info::FEATURE_RX_CHECKSUM
        } else {
            0
        };
        let served = client.server.serve(net_queue::Device {
            mac: device.mac,
            mtu: device.mtu,
            features,
            link_up: device.link_up,
        });
        match served {
            Ok(generation) => {
                let name = net_clients::CLIENTS.first().map_or("?", |c| c.name);
                println!(env, "serving {name} (generation {generation})");
                if let Some(grant) = net_clients::CLIENTS.first() {
                    env.notify(grant.notify);
                }
            }
            Err(error) => println!(env, "cannot publish the device: {error:?}"),
        }
    }

    fn note(&mut self) -> bool {
        self.notes += 1;
        self.notes <= NOTES_LOGGED || self.notes.is_multiple_of(NOTE_LOG_EVERY)
    }

    /// Have synic wake us by the earliest of the initiator's deadlines
    /// (timeouts, keepalive) and the client's wake-up time.
    fn keep_wakeup(&mut self, env: &mut dyn Env, now: u64) {
        let client = self
            .client
            .as_ref()
            .and_then(|c| c.server.client_wake_owed());
        let wanted = match (self.initiator.next_deadline(), client) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        match self
            .wakeup
            .keep(now, wanted, |request| IDS.synic_call.call(env, request))
        {
            None => {}
            Some(Ok(synic::Reply::NoTimer)) => println!(
                env,
                "synic has no timer: timeouts are noticed only when something else happens"
            ),
            Some(other) if self.note() => println!(env, "synic SetTimeout failed: {other:?}"),
            Some(_) => {}
        }
    }

    fn signal_host(&mut self, env: &mut dyn Env, lane: usize) {
        let request = synic::Request::SignalHost {
            connection_id: self.lanes[lane].connection_id,
        };
        match IDS.synic_call.call(env, &request) {
            Ok(synic::Reply::Done) | Ok(synic::Reply::ChannelClosed) => {}
            other => println!(env, "SignalHost failed: {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    /// `init` builds the state on the stack before the runtime moves it:
    /// the description's `stack_pages` must hold it with room to spare
    /// (tests/systems/network.toml gives 32 pages).
    #[test]
    fn the_state_fits_the_stack_it_is_built_on() {
        let bytes = core::mem::size_of::<super::Network>();
        std::println!("Network: {bytes} bytes");
        assert!(bytes < 96 * 1024, "{bytes} bytes");
    }
}
