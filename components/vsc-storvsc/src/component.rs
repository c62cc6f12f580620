//! The component: the [`Initiator`] wired to its channels (the primary and
//! the sub-channels, through the bus manager and synic), its private
//! buffer (`buffer0`: discovery replies and UNMAP lists, shared with a
//! GPADL) and its block clients (`block_queue::BlockServer` per
//! `[[block]]` grant).
//!
//! Data never passes through this component: a client's READ or WRITE
//! becomes an SRB whose GPA-direct range names the client's own data
//! region (held by address only), so the host moves the bytes between the
//! disk and the client's pages directly.

use crate::initiator::{
    Area, BlockOp, BlockRequest, Command, Config, DataRef, Event, Grant, Initiator, Note, Tag,
    MAX_CLIENTS, MAX_SLOTS, PRIVATE_BYTES,
};
use crate::wire::{self, Address, Completion};
use block_queue::{BlockServer, ServerRequest};
use component_api::{println, ChannelSet, Component, Env, Refusal};
use ic_channel::memory::ChannelRing;
use ic_channel::{give_up, rings, zero_rings, ChannelIds, RingRegions};
use vmbus_channel::{ChannelError, DataChannel, Received, SharedBuffer};
use vmbus_ipc::{bus, synic};
use vmbus_protocol::storage::MAX_PACKET_SIZE;
use vmbus_ring::{RingError, RingReader, RingWriter};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub const IDS: ChannelIds = ic_channel::driver_ids!();

/// Sub-channels the driver can open (the description's `sub_channels`).
pub const SUB_CHANNELS: usize = 2;
const _: () = assert!(driver::SUB_CHANNELS == SUB_CHANNELS);
pub const CHANNELS: usize = 1 + SUB_CHANNELS;
const SUB_RINGS: [RingRegions; SUB_CHANNELS] = [
    RingRegions {
        out_control: regions::RING_OUT_CONTROL1,
        out_data: regions::RING_OUT1,
        in_control: regions::RING_IN_CONTROL1,
        in_data: regions::RING_IN1,
    },
    RingRegions {
        out_control: regions::RING_OUT_CONTROL2,
        out_data: regions::RING_OUT2,
        in_control: regions::RING_IN_CONTROL2,
        in_data: regions::RING_IN2,
    },
];
const PRIVATE_BUFFER: u8 = 0;
const _: () = assert!(driver::BUFFER_BYTES[0] >= PRIVATE_BYTES as usize);

/// A command the host has not completed in this long starts a bus reset:
/// the description's `request_timeout_ms` for this driver, else 30 s.
const IO_TIMEOUT_NS: u64 = match driver::REQUEST_TIMEOUT_MS {
    Some(ms) => ms * 1_000_000,
    None => 30_000_000_000,
};
/// Timeouts: a command past [`IO_TIMEOUT_NS`] starts a bus reset; a reset
/// not completed in 10 s restarts the driver.
const CONFIG: Config = Config {
    sub_channels: SUB_CHANNELS as u16,
    io_timeout_ns: IO_TIMEOUT_NS,
    reset_timeout_ns: 10_000_000_000,
};
/// Rounds of pumping per notification (each moves at least one thing).
const PUMP_ROUNDS: usize = 4096;
const REFUSALS_LOGGED: u64 = 8;
/// Console lines for retries, refusals and errors: the first this many,
/// then one in [`NOTE_LOG_EVERY`] (a hostile host cannot flood the console).
const NOTES_LOGGED: u64 = 32;
const NOTE_LOG_EVERY: u64 = 256;

fn ring_regions(lane: usize) -> RingRegions {
    if lane == 0 {
        IDS.rings
    } else {
        SUB_RINGS[lane - 1]
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

struct Client {
    server: Option<BlockServer>,
    data: Option<SharedBuffer>,
    /// The area the info page publishes (re-published only when it
    /// changes: a new generation makes the client reissue).
    /// What was published: the area and whether it takes DISCARD.
    served: Option<(Area, bool)>,
}

pub struct Storage {
    lanes: [Lane; CHANNELS],
    initiator: Initiator,
    private: Option<SharedBuffer>,
    private_asked: bool,
    address: Address,
    clients: heapless::Vec<Client, MAX_CLIENTS>,
    next_lane: usize,
    refusals: u64,
    notes: u64,
    packet: [u8; 512],
    /// The wakeup synic holds for us (`SetTimeout`), as far as we know.
    wakeup: synic::Wakeup,
}

impl Component for Storage {
    fn init(env: &mut dyn Env) -> Self {
        let mut grants: heapless::Vec<Grant, MAX_CLIENTS> = heapless::Vec::new();
        let mut clients = heapless::Vec::new();
        for client in block_clients::CLIENTS.iter().take(MAX_CLIENTS) {
            let server = BlockServer::new(
                env.region(client.requests),
                env.region(client.responses),
                env.region(client.info),
                client.data_bytes,
            );
            let server = match server {
                Ok(server) => Some(server),
                Err(error) => {
                    println!(
                        env,
                        "{}: its block regions are unusable: {error:?}", client.name
                    );
                    None
                }
            };
            // The data region by address only: its pages are named to the
            // host, its bytes never touched here.
            let data = env
                .region_address(client.data)
                .and_then(|address| SharedBuffer::new(address.guest_physical, address.len, 0).ok());
            let _ = grants.push(Grant {
                lun: client.lun,
                partition: client.partition,
                read_only: client.read_only,
                data_bytes: client.data_bytes as u64,
            });
            let _ = clients.push(Client {
                server,
                data,
                served: None,
            });
        }
        let mut driver = Storage {
            lanes: [Lane::new(), Lane::new(), Lane::new()],
            initiator: Initiator::new(CONFIG, &grants),
            private: None,
            private_asked: false,
            address: Address::default(),
            clients,
            next_lane: 0,
            refusals: 0,
            notes: 0,
            packet: [0; 512],
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
                // Our wakeup, or a restarted synic that forgot it: either
                // way synic holds none for us now; ask again below.
                self.wakeup.forget();
            }
        }
        // Client signals (and everything above) end in a pump: requests
        // are taken, commands sent, answers given.
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

impl Storage {
    fn on_bus_event(&mut self, env: &mut dyn Env) {
        for lane in 0..CHANNELS {
            if lane > 0 && usize::from(self.initiator.sub_channels()) < lane {
                break;
            }
            self.on_channel_event(env, lane);
        }
        if self.lanes[0].channel.is_some() && self.private.is_none() {
            self.check_private_buffer(env);
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
        self.lanes[lane].channel = Some(DataChannel::new(writer, reader));
        if lane == 0 {
            if !self.private_asked {
                self.private_asked = true;
                let request = bus::Request::CreateGpadl {
                    buffer: PRIVATE_BUFFER,
                };
                match IDS.vmbus.call(env, &request) {
                    Ok(bus::Reply::Accepted) => {}
                    other => println!(env, "CreateGpadl of the private buffer: {other:?}"),
                }
            }
            self.check_private_buffer(env);
        } else {
            println!(env, "sub-channel {lane} open");
        }
        self.poll(env, lane);
    }

    /// The channel `lane` is gone: what it had in flight is lost. On a
    /// sub-channel that is a failed attempt (retried on another channel);
    /// on the primary the controller starts over.
    fn detach(&mut self, env: &mut dyn Env, lane: usize, why: &str) {
        let Some(mut channel) = self.lanes[lane].channel.take() else {
            return;
        };
        let lost: heapless::Vec<Tag, MAX_SLOTS> =
            channel.fail_outstanding().map(|(_, tag)| tag).collect();
        if lane == 0 {
            println!(
                env,
                "primary channel lost ({why}): {} commands in flight are answered",
                self.initiator.outstanding()
            );
            self.initiator.channel_lost();
            self.private = None;
            self.private_asked = false;
            for client in self.clients.iter_mut() {
                client.served = None;
                if let Some(server) = client.server.as_mut() {
                    server.withdraw(true);
                }
            }
            // Sub-channels go with their primary.
            for sub in 1..CHANNELS {
                self.lanes[sub].channel = None;
            }
        } else {
            for tag in lost {
                self.initiator.send_failed(tag);
            }
        }
    }

    fn check_private_buffer(&mut self, env: &mut dyn Env) {
        let request = bus::Request::Buffer {
            buffer: PRIVATE_BUFFER,
        };
        match IDS.vmbus.call(env, &request) {
            Ok(bus::Reply::Buffer(bus::BufferInfo {
                state: bus::BufferState::Created { gpadl_id },
                bytes,
            })) => {
                let region = env.region(regions::BUFFER0);
                let shared = region
                    .guest_physical()
                    .and_then(|gpa| SharedBuffer::new(gpa, bytes as usize, gpadl_id).ok());
                let Some(shared) = shared else {
                    give_up(env, "the private buffer cannot be described");
                };
                self.private = Some(shared);
                self.initiator.start();
            }
            Ok(bus::Reply::Buffer(bus::BufferInfo {
                state: bus::BufferState::Failed { status },
                ..
            })) => {
                println!(
                    env,
                    "the host refused the private buffer's GPADL: {status:#x}"
                );
                give_up(env, "no private buffer");
            }
            Ok(_) => {}
            Err(error) => println!(env, "vmbus Buffer failed: {error:?}"),
        }
    }

    /// Drain channel `lane` in rounds (mask, drain, publish, unmask, look
    /// again).
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
        let now = env.now_ns();
        for _ in 0..PUMP_ROUNDS {
            let Some(channel) = self.lanes[lane].channel.as_mut() else {
                return;
            };
            let received = match channel.receive(&mut self.packet) {
                Ok(Some(received)) => received,
                Ok(None) => return,
                Err(ChannelError::Refused(refusal)) => {
                    self.refusals += 1;
                    if self.refusals <= REFUSALS_LOGGED {
                        println!(env, "refused a host packet on channel {lane}: {refusal:?}");
                    }
                    continue;
                }
                Err(error) => {
                    println!(env, "in ring {lane}: {error:?}");
                    give_up(env, "the host broke the in ring");
                }
            };
            match received {
                Received::Completion {
                    context: tag,
                    payload,
                    ..
                } => {
                    let Some(command) = self.initiator.command(tag) else {
                        self.initiator.on_malformed(tag);
                        continue;
                    };
                    match wire::decode_completion(payload, &command, self.initiator.version()) {
                        Ok(completion) => {
                            if let Completion::Control {
                                properties: Some((_, address)),
                                ..
                            } = completion
                            {
                                self.address = address;
                            }
                            let region = env.region(regions::BUFFER0);
                            let mut read_private = |offset: u32, out: &mut [u8]| {
                                if region.read_bulk(offset as usize, out).is_err() {
                                    out.fill(0);
                                }
                            };
                            self.initiator.on_completion(
                                tag,
                                completion.reply(),
                                now,
                                &mut read_private,
                            );
                        }
                        Err(error) => {
                            self.refusals += 1;
                            if self.refusals <= REFUSALS_LOGGED {
                                println!(env, "refused a completion on channel {lane}: {error:?}");
                            }
                            self.initiator.on_malformed(tag);
                        }
                    }
                }
                Received::InBand { payload, .. } => match wire::decode_host_packet(payload) {
                    Ok(Some(event)) => {
                        println!(env, "host: {event:?}; rescanning");
                        self.initiator.on_host_event(event);
                    }
                    Ok(None) => {}
                    Err(error) => {
                        self.refusals += 1;
                        if self.refusals <= REFUSALS_LOGGED {
                            println!(env, "refused a host packet: {error:?}");
                        }
                    }
                },
                // No receive buffer is ever shared: the channel refuses
                // these before they get here.
                Received::TransferPages { .. } => self.refusals += 1,
            }
        }
    }

    /// Take client requests, send commands, answer clients, until nothing
    /// moves.
    fn pump(&mut self, env: &mut dyn Env) {
        let now = env.now_ns();
        let timeouts = self.initiator.stats.timeouts;
        self.initiator.tick(now);
        if self.initiator.stats.timeouts != timeouts {
            println!(
                env,
                "{} requests not completed in {} ms: resetting the bus",
                self.initiator.stats.timeouts - timeouts,
                IO_TIMEOUT_NS / 1_000_000
            );
        }
        let mut signal = [false; CHANNELS];
        for _ in 0..PUMP_ROUNDS {
            let mut moved = self.take_requests(env);
            moved |= self.send_commands(env, &mut signal);
            moved |= self.handle_events(env);
            if !moved {
                // Before sleeping: ask every client for a signal and look
                // once more (the queues' double check).
                let mut again = false;
                for client in self.clients.iter_mut() {
                    if let Some(server) = client.server.as_mut() {
                        again |= !server.prepare_to_sleep().unwrap_or(true);
                    }
                }
                // Requests that came meanwhile are taken only if a slot is
                // free; otherwise a completion frees one and pumps again.
                if !again || !self.initiator.can_accept() {
                    break;
                }
            }
        }
        for (lane, wanted) in signal.into_iter().enumerate() {
            if wanted {
                self.signal_host(env, lane);
            }
        }
        for (index, client) in self.clients.iter_mut().enumerate() {
            if let Some(server) = client.server.as_mut() {
                if server.client_needs_signal() {
                    env.notify(block_clients::CLIENTS[index].notify);
                }
            }
        }
        self.keep_wakeup(env, now);
    }

    /// Have synic wake us by the earliest deadline of what is outstanding
    /// (a host that never answers and no other traffic must not leave a
    /// client waiting for good); [`synic::Wakeup`] asks only when needed.
    fn keep_wakeup(&mut self, env: &mut dyn Env, now: u64) {
        let wanted = self.initiator.next_deadline();
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

    fn take_requests(&mut self, env: &mut dyn Env) -> bool {
        let mut moved = false;
        for index in 0..self.clients.len() {
            for _ in 0..MAX_SLOTS {
                if !self.initiator.can_accept() {
                    return moved;
                }
                let Some(server) = self.clients[index].server.as_mut() else {
                    break;
                };
                let request = match server.next_request() {
                    Ok(Some(request)) => request,
                    Ok(None) => break,
                    Err(error) => {
                        println!(
                            env,
                            "{}: its queues are broken ({error:?}); not served any more",
                            block_clients::CLIENTS[index].name
                        );
                        self.clients[index].server = None;
                        break;
                    }
                };
                moved = true;
                let request = match request {
                    ServerRequest::Read {
                        id,
                        disk_block,
                        count,
                        data_offset,
                        ..
                    } => BlockRequest {
                        op: BlockOp::Read,
                        id,
                        disk_block,
                        count,
                        offset: data_offset,
                    },
                    ServerRequest::Write {
                        id,
                        disk_block,
                        count,
                        data_offset,
                        ..
                    } => BlockRequest {
                        op: BlockOp::Write,
                        id,
                        disk_block,
                        count,
                        offset: data_offset,
                    },
                    ServerRequest::Flush { id } => BlockRequest {
                        op: BlockOp::Flush,
                        id,
                        disk_block: 0,
                        count: 0,
                        offset: 0,
                    },
                    ServerRequest::Discard {
                        id,
                        disk_block,
                        count,
                    } => BlockRequest {
                        op: BlockOp::Discard,
                        id,
                        disk_block,
                        count,
                        offset: 0,
                    },
                };
                self.initiator.submit(index as u8, request);
            }
        }
        moved
    }

    /// The lane for an SRB: the open channel with the fewest outstanding
    /// (round robin among equals), so requests spread over the
    /// sub-channels.
    fn pick_lane(&mut self, control: bool) -> Option<usize> {
        if control {
            return self.lanes[0]
                .channel
                .as_ref()
                .filter(|c| c.outstanding() < MAX_SLOTS)
                .map(|_| 0);
        }
        let mut best: Option<(usize, usize)> = None;
        for step in 0..CHANNELS {
            let lane = (self.next_lane + step) % CHANNELS;
            let Some(channel) = self.lanes[lane].channel.as_ref() else {
                continue;
            };
            let load = channel.outstanding();
            if load < MAX_SLOTS && best.is_none_or(|(_, best_load)| load < best_load) {
                best = Some((lane, load));
            }
        }
        let (lane, _) = best?;
        self.next_lane = (lane + 1) % CHANNELS;
        Some(lane)
    }

    fn send_commands(&mut self, env: &mut dyn Env, signal: &mut [bool; CHANNELS]) -> bool {
        let mut moved = false;
        let now = env.now_ns();
        for _ in 0..MAX_SLOTS * 2 {
            if self.private.is_none() {
                return moved;
            }
            let Some((tag, command)) = self.initiator.pop_send() else {
                return moved;
            };
            let Some(lane) = self.pick_lane(matches!(command, Command::Control(_))) else {
                self.initiator.unsent(tag);
                return moved;
            };
            let mut packet = [0u8; MAX_PACKET_SIZE];
            let len = wire::encode(
                &command,
                self.initiator.version(),
                self.address,
                &mut packet,
            );
            let slice = match command {
                Command::Srb(srb) => match srb.data {
                    DataRef::None => None,
                    DataRef::Private { offset, len, fill } => {
                        if let Some(bytes) = fill {
                            let region = env.region(regions::BUFFER0);
                            if region.write_bulk(offset as usize, &bytes).is_err() {
                                self.initiator.send_failed(tag);
                                continue;
                            }
                        }
                        self.private
                            .and_then(|b| b.slice(offset as usize, len as usize).ok())
                    }
                    DataRef::Client {
                        client,
                        offset,
                        len,
                    } => self
                        .clients
                        .get(client as usize)
                        .and_then(|c| c.data)
                        .and_then(|b| b.slice(offset as usize, len as usize).ok()),
                },
                Command::Control(_) => None,
            };
            let needs_data = matches!(command, Command::Srb(srb) if !srb.data.is_empty());
            if needs_data && slice.is_none() {
                // A data range that cannot be described: never sent.
                self.initiator.send_failed(tag);
                continue;
            }
            let Some(channel) = self.lanes[lane].channel.as_mut() else {
                self.initiator.unsent(tag);
                return moved;
            };
            let result = match slice {
                Some(slice) => channel.send_multi_page(&[slice], &packet[..len], Some(tag)),
                None => channel.send_in_band(&packet[..len], Some(tag)),
            };
            match result {
                Ok(sent) => {
                    moved = true;
                    signal[lane] |= sent.signal.0;
                    self.initiator.sent(tag, now);
                }
                Err(error) if matches!(error.error, ChannelError::Ring(RingError::Full { .. })) => {
                    // The host signals when it has read enough.
                    self.initiator.unsent(tag);
                    return moved;
                }
                Err(error) => {
                    println!(env, "send on channel {lane} failed: {:?}", error.error);
                    self.initiator.send_failed(tag);
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
                Event::Respond { client, response } => {
                    if response.status != block_queue::Status::Ok && self.note() {
                        println!(
                            env,
                            "request {} of {}: {:?} after {} blocks",
                            response.id,
                            block_clients::CLIENTS
                                .get(client as usize)
                                .map_or("?", |c| c.name),
                            response.status,
                            response.count
                        );
                    }
                    let Some(server) = self
                        .clients
                        .get_mut(client as usize)
                        .and_then(|c| c.server.as_mut())
                    else {
                        continue;
                    };
                    if let Err(error) =
                        server.complete(response.id, response.status, response.count)
                    {
                        println!(env, "answering request {}: {error:?}", response.id);
                    }
                }
                Event::Initialized {
                    version,
                    properties,
                    sub_channels,
                } => {
                    println!(
                        env,
                        "storage protocol {}.{}; the host allows {} channels, {} bytes per transfer; {} sub-channels",
                        version >> 8,
                        version & 0xFF,
                        properties.max_channels,
                        properties.max_transfer_bytes,
                        sub_channels
                    );
                    // The sub-channels are offered now: open them as they come.
                    self.on_bus_event_lanes(env);
                }
                Event::LunFound {
                    lun,
                    blocks,
                    block_size,
                    unmap,
                } => println!(
                    env,
                    "LUN {lun}: {blocks} blocks of {block_size} bytes ({} MiB){}",
                    (blocks * u64::from(block_size)) >> 20,
                    if unmap { ", UNMAP" } else { "" }
                ),
                Event::GrantUnusable { client, why } => {
                    let name = block_clients::CLIENTS
                        .get(client as usize)
                        .map_or("?", |c| c.name);
                    println!(env, "{name}: not served: {why}");
                    if let Some(state) = self.clients.get_mut(client as usize) {
                        state.served = None;
                        if let Some(server) = state.server.as_mut() {
                            server.withdraw(true);
                        }
                    }
                }
                Event::Serving { first, luns } => {
                    if first {
                        println!(env, "{luns} LUNs found; serving");
                    }
                    self.serve_clients(env);
                }
                Event::Note(note) => {
                    if self.note() {
                        match note {
                            Note::Retry { why, attempt } => {
                                println!(env, "{why}: sent again (attempt {})", attempt + 1)
                            }
                            Note::GaveUp { why } => println!(env, "{why}: no attempts left"),
                            Note::Refused(what) => println!(env, "refused {what}"),
                            Note::Late => println!(env, "refused a late or repeated completion"),
                        }
                    }
                }
                Event::Failed(why) => give_up(env, why),
            }
        }
        moved
    }

    /// Whether to print the next note (rate limited).
    fn note(&mut self) -> bool {
        self.notes += 1;
        self.notes <= NOTES_LOGGED || self.notes.is_multiple_of(NOTE_LOG_EVERY)
    }

    fn on_bus_event_lanes(&mut self, env: &mut dyn Env) {
        for lane in 1..CHANNELS {
            if usize::from(self.initiator.sub_channels()) < lane {
                break;
            }
            self.on_channel_event(env, lane);
        }
    }

    /// Publish each client's area (a new generation only when it changed).
    fn serve_clients(&mut self, env: &mut dyn Env) {
        for index in 0..self.clients.len() {
            let Some(area) = self.initiator.area(index as u8) else {
                continue;
            };
            let discard = self.initiator.discard_supported(index as u8);
            if self.clients[index].served == Some((area, discard)) {
                continue;
            }
            let max_transfer = self.initiator.piece_limit(index as u8);
            let ident = self.initiator.ident.clone();
            let Some(server) = self.clients[index].server.as_mut() else {
                continue;
            };
            let grant = block_queue::Grant {
                first_block: area.first_block,
                blocks: area.blocks,
                read_only: area.read_only,
            };
            match server.serve_with_discard(grant, area.block_size, max_transfer, &ident, discard) {
                Ok(generation) => {
                    self.clients[index].served = Some((area, discard));
                    let client = &block_clients::CLIENTS[index];
                    println!(
                        env,
                        "serving {} (generation {generation}): LUN {}{}, blocks {}..{} of {} bytes{}{}",
                        client.name,
                        client.lun,
                        match client.partition {
                            Some(1) => " partition 1",
                            Some(2) => " partition 2",
                            Some(3) => " partition 3",
                            Some(4) => " partition 4",
                            _ => "",
                        },
                        area.first_block,
                        area.first_block + area.blocks,
                        area.block_size,
                        if area.read_only { ", read-only" } else { "" },
                        if discard { ", discard" } else { "" }
                    );
                    env.notify(client.notify);
                }
                Err(error) => println!(
                    env,
                    "{}: cannot publish: {error:?}",
                    block_clients::CLIENTS[index].name
                ),
            }
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
