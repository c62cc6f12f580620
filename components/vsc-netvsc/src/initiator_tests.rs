//! The initiator against a scripted host: every output it queues is
//! answered (or not) by `Host`, which plays netvsp with the knobs a test
//! turns (versions, buffer answers, MTU, RSS, faults), and `Memory`, the
//! receive buffer, send buffer and client frames the initiator reaches.

use super::*;
use std::collections::BTreeMap;
use std::vec;
use std::vec::Vec as StdVec;
use vmbus_protocol::rndis::status as ndis;

const RECEIVE_BYTES: usize = 64 * 1024;
const SEND_BYTES: usize = 64 * 1024;
const MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x01, 0x02, 0x03];

struct Memory {
    receive: StdVec<u8>,
    send: StdVec<u8>,
    frames: BTreeMap<u32, StdVec<u8>>,
    delivered: StdVec<(u8, StdVec<u8>, bool)>,
    client_has_buffers: bool,
}

impl Memory {
    fn new() -> Memory {
        Memory {
            receive: vec![0; RECEIVE_BYTES],
            send: vec![0; SEND_BYTES],
            frames: BTreeMap::new(),
            delivered: StdVec::new(),
            client_has_buffers: true,
        }
    }
}

impl Buffers for Memory {
    fn read_receive(&mut self, offset: u32, out: &mut [u8]) -> bool {
        let start = offset as usize;
        match self.receive.get(start..start + out.len()) {
            Some(bytes) => {
                out.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
    fn write_send(&mut self, offset: u32, bytes: &[u8]) -> bool {
        let start = offset as usize;
        match self.send.get_mut(start..start + bytes.len()) {
            Some(place) => {
                place.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
    fn peek_frame(&mut self, token: u32, out: &mut [u8]) -> bool {
        match self.frames.get(&token).and_then(|f| f.get(..out.len())) {
            Some(bytes) => {
                out.copy_from_slice(bytes);
                true
            }
            None => false,
        }
    }
    fn copy_frame(&mut self, token: u32, offset: u32, len: u32) -> bool {
        let Some(frame) = self.frames.get(&token).cloned() else {
            return false;
        };
        frame.len() == len as usize && self.write_send(offset, &frame)
    }
    fn deliver(&mut self, lane: u8, frame: &[u8], checksum_verified: bool) -> bool {
        if !self.client_has_buffers {
            return false;
        }
        self.delivered
            .push((lane, frame.to_vec(), checksum_verified));
        true
    }
}

/// A frame the host got from the guest.
#[derive(Debug)]
struct Sent {
    lane: u8,
    frame: StdVec<u8>,
    checksum: Option<u32>,
    direct: bool,
}

struct Host {
    versions: StdVec<u32>,
    receive_status: u32,
    /// (offset, sub allocation size, count, end) of the one section.
    receive_section: (u32, u32, u32, u32),
    section_size: u32,
    send_status: u32,
    mtu: u32,
    link_up: bool,
    rss_queues: u32,
    grant_sub_channels: Option<u32>,
    refuse_offload: bool,
    /// RNDIS requests not answered (they still get their NVSP completion).
    silent_rndis: bool,
    /// NVSP start requests not answered.
    silent_nvsp: bool,
    /// Hold transmit completions (in `held`).
    hold_tx: bool,
    held: StdVec<(Tag, bool)>,
    /// Every NVSP message type the guest sent, in order.
    nvsp_log: StdVec<u32>,
    /// Every RNDIS control request: (type, oid or 0, information buffer).
    rndis_log: StdVec<(u32, u32, StdVec<u8>)>,
    sent: StdVec<Sent>,
    /// Transfer-page completions the guest sent: (transaction, status).
    completions: StdVec<(u64, u32)>,
    next_transaction: u64,
    next_receive_at: usize,
}

fn nvsp_message(message_type: u32, payload: &[u8]) -> StdVec<u8> {
    let mut out = vec![0u8; 40];
    let len = nvsp::write_message(&mut out, message_type, payload).unwrap();
    out.truncate(len);
    out
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

impl Host {
    fn new() -> Host {
        Host {
            versions: vec![nvsp_version::V61],
            receive_status: nvsp::status::SUCCESS,
            receive_section: (0, 1728, 37, 1728 * 37),
            section_size: 2048,
            send_status: nvsp::status::SUCCESS,
            mtu: 1500,
            link_up: true,
            rss_queues: 0,
            grant_sub_channels: None,
            refuse_offload: false,
            silent_rndis: false,
            silent_nvsp: false,
            hold_tx: false,
            held: StdVec::new(),
            nvsp_log: StdVec::new(),
            rndis_log: StdVec::new(),
            sent: StdVec::new(),
            completions: StdVec::new(),
            next_transaction: 1000,
            next_receive_at: 0,
        }
    }

    /// Answer everything the initiator queued (and what that makes it
    /// queue), in order.
    fn run(&mut self, init: &mut Initiator, mem: &mut Memory) {
        for _ in 0..10_000 {
            let Some(output) = init.front().copied() else {
                return;
            };
            init.pop_sent();
            self.handle(init, mem, output);
        }
        panic!("the initiator never stops sending");
    }

    fn complete(&mut self, init: &mut Initiator, mem: &mut Memory, tag: Tag, message: &[u8]) {
        init.on_completion(tag, message, mem);
    }

    fn handle(&mut self, init: &mut Initiator, mem: &mut Memory, output: Output) {
        match output {
            Output::Completion {
                transaction_id,
                message,
                ..
            } => {
                let parsed = nvsp::parse(&message).unwrap();
                assert_eq!(parsed.message_type, nvsp_type::SEND_RNDIS_PACKET_COMPLETE);
                self.completions.push((transaction_id, u32_at(&message, 4)));
            }
            Output::Direct {
                lane,
                tag,
                message,
                header_offset,
                header_len,
                token,
                frame_len,
            } => {
                self.nvsp_log.push(u32_at(&message, 0));
                assert_eq!(u32_at(&message, 8), nvsp::NO_SEND_BUFFER_SECTION);
                let mut bytes = mem.send
                    [header_offset as usize..(header_offset + header_len) as usize]
                    .to_vec();
                let frame = mem.frames[&token].clone();
                assert_eq!(frame.len(), frame_len as usize);
                bytes.extend_from_slice(&frame);
                self.take_packet(lane, &bytes, true);
                self.tx_done(init, mem, tag);
            }
            Output::InBand { lane, tag, message } => {
                let message_type = u32_at(&message, 0);
                self.nvsp_log.push(message_type);
                match message_type {
                    nvsp_type::INIT => {
                        let version = u32_at(&message, 4);
                        assert_eq!(u32_at(&message, 8), version, "min = max");
                        if self.silent_nvsp {
                            return;
                        }
                        let status = if self.versions.contains(&version) {
                            nvsp::status::SUCCESS
                        } else {
                            nvsp::status::FAILURE
                        };
                        let complete = nvsp::InitComplete {
                            status: status.into(),
                            ..Default::default()
                        };
                        let reply = nvsp_message(nvsp_type::INIT_COMPLETE, complete.as_bytes());
                        self.complete(init, mem, tag.unwrap(), &reply);
                    }
                    nvsp_type::SEND_RECEIVE_BUFFER => {
                        assert_eq!(u32_at(&message, 4), 7, "the receive GPADL");
                        assert_eq!(&message[8..10], &0xcafeu16.to_le_bytes());
                        let (offset, size, count, end) = self.receive_section;
                        let section = nvsp::ReceiveBufferSection {
                            offset: offset.into(),
                            sub_allocation_size: size.into(),
                            num_sub_allocations: count.into(),
                            end_offset: end.into(),
                        };
                        let mut reply = [0u8; 64];
                        let len = nvsp::write_receive_buffer_complete(
                            &mut reply,
                            nvsp_version::V61,
                            self.receive_status,
                            &[section],
                        )
                        .unwrap();
                        self.complete(init, mem, tag.unwrap(), &reply[..len]);
                    }
                    nvsp_type::SEND_SEND_BUFFER => {
                        assert_eq!(u32_at(&message, 4), 9, "the send GPADL");
                        let complete = nvsp::SendSendBufferComplete {
                            status: self.send_status.into(),
                            section_size: self.section_size.into(),
                        };
                        let reply =
                            nvsp_message(nvsp_type::SEND_SEND_BUFFER_COMPLETE, complete.as_bytes());
                        self.complete(init, mem, tag.unwrap(), &reply);
                    }
                    nvsp_type::SUBCHANNEL => {
                        let asked = u32_at(&message, 8);
                        let complete = nvsp::SubchannelComplete {
                            status: nvsp::status::SUCCESS.into(),
                            num_subchannels: self.grant_sub_channels.unwrap_or(asked).into(),
                        };
                        let reply = nvsp_message(nvsp_type::SUBCHANNEL, complete.as_bytes());
                        self.complete(init, mem, tag.unwrap(), &reply);
                    }
                    nvsp_type::SEND_RNDIS_PACKET => {
                        let channel_type = u32_at(&message, 4);
                        let section = u32_at(&message, 8);
                        let size = u32_at(&message, 12);
                        let section_size = init.section_size();
                        assert!(size <= section_size);
                        let at = (section * section_size) as usize;
                        let bytes = mem.send[at..at + size as usize].to_vec();
                        let rndis_type = u32_at(&bytes, 0);
                        if channel_type == nvsp::channel_type::DATA {
                            assert_eq!(rndis_type, rndis_type::PACKET);
                            self.take_packet(lane, &bytes, false);
                            return self.tx_done(init, mem, tag.unwrap());
                        }
                        // A control request: its NVSP completion, then the
                        // RNDIS answer through the receive buffer.
                        let complete = nvsp_message(
                            nvsp_type::SEND_RNDIS_PACKET_COMPLETE,
                            &nvsp::status::SUCCESS.to_le_bytes(),
                        );
                        self.complete(init, mem, tag.unwrap(), &complete);
                        self.answer_rndis(init, mem, &bytes);
                    }
                    nvsp_type::SEND_NDIS_CONFIG
                    | nvsp_type::SEND_NDIS_VERSION
                    | nvsp_type::REVOKE_SEND_BUFFER
                    | nvsp_type::REVOKE_RECEIVE_BUFFER => assert!(tag.is_none()),
                    other => panic!("unexpected NVSP message {other}"),
                }
            }
        }
    }

    fn tx_done(&mut self, init: &mut Initiator, mem: &mut Memory, tag: Tag) {
        if self.hold_tx {
            self.held.push((tag, true));
            return;
        }
        let complete = nvsp_message(
            nvsp_type::SEND_RNDIS_PACKET_COMPLETE,
            &nvsp::status::SUCCESS.to_le_bytes(),
        );
        self.complete(init, mem, tag, &complete);
    }

    /// A data packet from the guest: checked byte for byte and kept.
    fn take_packet(&mut self, lane: u8, bytes: &[u8], direct: bool) {
        let message = rndis::parse(bytes).expect("a whole RNDIS message");
        assert_eq!(message.message_type, rndis_type::PACKET);
        let packet = message.packet().expect("sane offsets");
        let checksum = packet.ppi_u32(rndis::ppi::TCP_IP_CHECKSUM).unwrap();
        self.sent.push(Sent {
            lane,
            frame: packet.data.to_vec(),
            checksum,
            direct,
        });
    }

    fn answer_rndis(&mut self, init: &mut Initiator, mem: &mut Memory, request: &[u8]) {
        let message = rndis::parse(request).unwrap();
        let mut reply = [0u8; 1024];
        let len = match message.message_type {
            rndis_type::INITIALIZE => {
                self.rndis_log
                    .push((rndis_type::INITIALIZE, 0, StdVec::new()));
                let complete = rndis::InitializeComplete {
                    request_id: message.request_id().unwrap().into(),
                    status: ndis::SUCCESS.into(),
                    major_version: 1.into(),
                    max_packets_per_message: 8.into(),
                    max_transfer_size: 0x4000.into(),
                    packet_alignment_factor: 3.into(),
                    ..Default::default()
                };
                rndis::write_message(
                    &mut reply,
                    rndis_type::INITIALIZE_COMPLETE,
                    complete.as_bytes(),
                    &[],
                )
            }
            rndis_type::QUERY => {
                let (request, _) = message.oid_request().unwrap();
                let id = request.request_id.get();
                let oid = request.oid.get();
                self.rndis_log.push((rndis_type::QUERY, oid, StdVec::new()));
                let (status, info): (u32, StdVec<u8>) = match oid {
                    oid::IEEE_802_3_PERMANENT_ADDRESS => (ndis::SUCCESS, MAC.to_vec()),
                    oid::GEN_MAXIMUM_FRAME_SIZE => (ndis::SUCCESS, self.mtu.to_le_bytes().to_vec()),
                    oid::GEN_LINK_SPEED => (ndis::SUCCESS, 100_000_000u32.to_le_bytes().to_vec()),
                    oid::GEN_MEDIA_CONNECT_STATUS => {
                        let state = if self.link_up {
                            rndis::media_state::CONNECTED
                        } else {
                            rndis::media_state::DISCONNECTED
                        };
                        (ndis::SUCCESS, state.to_le_bytes().to_vec())
                    }
                    oid::GEN_RECEIVE_SCALE_CAPABILITIES if self.rss_queues > 0 => {
                        let caps = rndis::RssCapabilities {
                            number_of_receive_queues: self.rss_queues.into(),
                            number_of_indirection_table_entries: 128.into(),
                            ..Default::default()
                        };
                        (ndis::SUCCESS, caps.as_bytes().to_vec())
                    }
                    _ => (ndis::NOT_SUPPORTED, StdVec::new()),
                };
                rndis::write_query_complete(&mut reply, id, status, &info)
            }
            rndis_type::SET => {
                let (request, info) = message.oid_request().unwrap();
                let oid = request.oid.get();
                self.rndis_log.push((rndis_type::SET, oid, info.to_vec()));
                let status = if oid == oid::TCP_OFFLOAD_PARAMETERS && self.refuse_offload {
                    ndis::NOT_SUPPORTED
                } else {
                    ndis::SUCCESS
                };
                rndis::write_status_complete(
                    &mut reply,
                    rndis_type::SET_COMPLETE,
                    request.request_id.get(),
                    status,
                )
            }
            rndis_type::KEEPALIVE => {
                self.rndis_log
                    .push((rndis_type::KEEPALIVE, 0, StdVec::new()));
                rndis::write_status_complete(
                    &mut reply,
                    rndis_type::KEEPALIVE_COMPLETE,
                    message.request_id().unwrap(),
                    ndis::SUCCESS,
                )
            }
            rndis_type::RESET => {
                self.rndis_log.push((rndis_type::RESET, 0, StdVec::new()));
                let complete = rndis::ResetComplete::default();
                rndis::write_message(
                    &mut reply,
                    rndis_type::RESET_COMPLETE,
                    complete.as_bytes(),
                    &[],
                )
            }
            rndis_type::HALT => {
                self.rndis_log.push((rndis_type::HALT, 0, StdVec::new()));
                return;
            }
            other => panic!("unexpected RNDIS request {other:#x}"),
        };
        if self.silent_rndis {
            return;
        }
        self.receive(init, mem, 0, &[&reply[..len.unwrap()]]);
    }

    /// Write `messages` into the receive buffer and hand them to the guest
    /// as one transfer-page packet on `lane`; its transaction id.
    fn receive(
        &mut self,
        init: &mut Initiator,
        mem: &mut Memory,
        lane: u8,
        messages: &[&[u8]],
    ) -> u64 {
        let mut ranges = StdVec::new();
        for message in messages {
            if self.next_receive_at + message.len() > RECEIVE_BYTES {
                self.next_receive_at = 0;
            }
            let at = self.next_receive_at;
            mem.receive[at..at + message.len()].copy_from_slice(message);
            ranges.push((at as u32, message.len() as u32));
            self.next_receive_at += message.len().div_ceil(64) * 64;
        }
        self.receive_ranges(init, mem, lane, &ranges)
    }

    fn receive_ranges(
        &mut self,
        init: &mut Initiator,
        mem: &mut Memory,
        lane: u8,
        ranges: &[(u32, u32)],
    ) -> u64 {
        let transaction_id = self.next_transaction;
        self.next_transaction += 1;
        let send = nvsp::SendRndisPacket {
            channel_type: nvsp::channel_type::DATA.into(),
            send_buffer_section_index: nvsp::NO_SEND_BUFFER_SECTION.into(),
            send_buffer_section_size: 0.into(),
        };
        let payload = nvsp_message(nvsp_type::SEND_RNDIS_PACKET, send.as_bytes());
        init.on_receive(lane, transaction_id, &payload, ranges.iter().copied(), mem);
        self.run(init, mem);
        transaction_id
    }

    fn completion_status(&self, transaction_id: u64) -> Option<u32> {
        self.completions
            .iter()
            .find(|(id, _)| *id == transaction_id)
            .map(|(_, status)| *status)
    }
}

fn config() -> Config {
    Config {
        receive_buffer_bytes: RECEIVE_BYTES as u32,
        send_buffer_bytes: SEND_BYTES as u32,
        ..Config::default()
    }
}

fn events(init: &mut Initiator) -> StdVec<Event> {
    core::iter::from_fn(|| init.pop_event()).collect()
}

/// A started initiator against `host`.
fn started(config: Config, host: &mut Host, mem: &mut Memory) -> (Initiator, StdVec<Event>) {
    let mut init = Initiator::new(config);
    init.start(7, 9, 0);
    host.run(&mut init, mem);
    let events = events(&mut init);
    (init, events)
}

fn up(events: &[Event]) -> Option<Device> {
    events.iter().find_map(|e| match e {
        Event::Up(device) => Some(*device),
        _ => None,
    })
}

fn failed(events: &[Event]) -> Option<&'static str> {
    events.iter().find_map(|e| match e {
        Event::Failed(why) => Some(*why),
        _ => None,
    })
}

fn frame(len: usize, seed: u8) -> StdVec<u8> {
    let mut frame: StdVec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(7) ^ seed).collect();
    frame[12] = 0x08;
    frame[13] = 0x06; // ARP: no checksum offload
    frame
}

/// An IPv4/TCP frame (20-byte IP header).
fn tcp_frame(len: usize) -> StdVec<u8> {
    let mut frame = frame(len, 1);
    frame[12] = 0x08;
    frame[13] = 0x00;
    frame[14] = 0x45;
    frame[23] = 6;
    frame
}

fn data_packet(frame: &[u8], ppis: &[(u32, &[u8])]) -> StdVec<u8> {
    let mut out = vec![0u8; 256 + frame.len()];
    let header = rndis::write_packet_header(&mut out, frame.len(), ppis).unwrap();
    out[header..header + frame.len()].copy_from_slice(frame);
    out.truncate(header + frame.len());
    out
}

#[test]
fn starts_with_the_newest_version_and_comes_up() {
    let mut host = Host::new();
    let mut mem = Memory::new();
    let (init, events) = started(config(), &mut host, &mut mem);
    assert_eq!(
        events[0],
        Event::Negotiated {
            version: nvsp_version::V61
        }
    );
    let device = up(&events).expect("up");
    assert_eq!(device.mac, MAC);
    assert_eq!(device.mtu, 1500);
    assert!(device.link_up);
    assert!(device.checksum_offload);
    assert_eq!(device.link_speed, 100_000_000);
    assert!(init.is_running());
    assert_eq!(
        &host.nvsp_log[..5],
        &[
            nvsp_type::INIT,
            nvsp_type::SEND_NDIS_CONFIG,
            nvsp_type::SEND_NDIS_VERSION,
            nvsp_type::SEND_RECEIVE_BUFFER,
            nvsp_type::SEND_SEND_BUFFER
        ]
    );
    let requests: StdVec<(u32, u32)> = host.rndis_log.iter().map(|(t, o, _)| (*t, *o)).collect();
    assert_eq!(
        requests,
        [
            (rndis_type::INITIALIZE, 0),
            (rndis_type::QUERY, oid::IEEE_802_3_PERMANENT_ADDRESS),
            (rndis_type::QUERY, oid::GEN_MAXIMUM_FRAME_SIZE),
            (rndis_type::QUERY, oid::GEN_LINK_SPEED),
            (rndis_type::QUERY, oid::GEN_MEDIA_CONNECT_STATUS),
            (rndis_type::SET, oid::TCP_OFFLOAD_PARAMETERS),
            (rndis_type::SET, oid::GEN_CURRENT_PACKET_FILTER),
        ]
    );
    // The offload parameters: IPv4, TCP and UDP checksums both ways.
    let offload = &host.rndis_log[5].2;
    assert_eq!(offload.len(), rndis::OFFLOAD_PARAMETERS_SIZE_REVISION_1);
    assert_eq!(&offload[4..7], &[4, 4, 4]);
    let filter = u32_at(&host.rndis_log[6].2, 0);
    assert_eq!(filter, 0x1 | 0x8 | 0x4);
    // Every section is free again once the start's requests completed.
    assert_eq!(init.free_sections(), init.free_sections().max(1));
    assert_eq!(init.section_size(), 2048);
    assert!(init.receive_section().is_some());
}

#[test]
fn older_hosts_are_asked_in_order() {
    let mut host = Host::new();
    host.versions = vec![nvsp_version::V5, nvsp_version::V2];
    let mut mem = Memory::new();
    let (init, events) = started(config(), &mut host, &mut mem);
    assert_eq!(init.version(), Some(nvsp_version::V5));
    assert!(up(&events).is_some());
    assert_eq!(&host.nvsp_log[..3], &[nvsp_type::INIT; 3]);

    let mut host = Host::new();
    host.versions = vec![nvsp_version::V2];
    let (init, _) = started(config(), &mut host, &mut mem);
    assert_eq!(init.version(), Some(nvsp_version::V2));

    let mut host = Host::new();
    host.versions = vec![nvsp_version::V1];
    let (init, events) = started(config(), &mut host, &mut mem);
    assert!(init.has_failed());
    assert_eq!(
        failed(&events),
        Some("the host speaks no NVSP version we know")
    );
    assert_eq!(host.nvsp_log, [nvsp_type::INIT; 5]);
}

#[test]
fn refused_or_hostile_buffers_fail_the_start() {
    let mut mem = Memory::new();
    for (what, change) in [
        ("receive refused", 0),
        ("section end beyond the buffer", 1),
        ("slots beyond the section end", 2),
        ("send refused", 3),
        ("section size 0", 4),
        ("section size larger than the buffer", 5),
    ] {
        let mut host = Host::new();
        match change {
            0 => host.receive_status = nvsp::status::FAILURE,
            1 => host.receive_section = (0, 1728, 10, RECEIVE_BYTES as u32 + 1),
            2 => host.receive_section = (0, 1728, 100, 1728 * 37),
            3 => host.send_status = nvsp::status::FAILURE,
            4 => host.section_size = 0,
            _ => host.section_size = SEND_BYTES as u32 * 2,
        }
        let (init, events) = started(config(), &mut host, &mut mem);
        assert!(init.has_failed(), "{what}");
        assert!(up(&events).is_none(), "{what}");
    }
}

#[test]
fn the_mtu_is_the_smaller_of_ours_and_the_hosts() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    host.mtu = 1400;
    let (_, events) = started(config(), &mut host, &mut mem);
    assert_eq!(up(&events).unwrap().mtu, 1400);
    let mut host = Host::new();
    host.mtu = 9000;
    let (_, events) = started(config(), &mut host, &mut mem);
    assert_eq!(up(&events).unwrap().mtu, 1500);
    let mut host = Host::new();
    host.mtu = 10;
    let (init, events) = started(config(), &mut host, &mut mem);
    assert_eq!(up(&events).unwrap().mtu, 1500, "a nonsense MTU is ignored");
    assert!(init.stats.refused_rndis > 0);
}

#[test]
fn a_refused_offload_is_not_fatal() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    host.refuse_offload = true;
    let (_, events) = started(config(), &mut host, &mut mem);
    assert!(!up(&events).unwrap().checksum_offload);
    assert!(events.contains(&Event::Note(Note::Declined("checksum offload"))));
    let mut host = Host::new();
    let (_, events) = started(
        Config {
            checksum_offload: false,
            ..config()
        },
        &mut host,
        &mut mem,
    );
    assert!(!up(&events).unwrap().checksum_offload);
    assert!(host
        .rndis_log
        .iter()
        .all(|(_, oid, _)| *oid != oid::TCP_OFFLOAD_PARAMETERS));
}

#[test]
fn received_frames_are_delivered_and_completed() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    let (mut init, _) = started(config(), &mut host, &mut mem);
    let frames = [frame(60, 1), frame(1514, 2), frame(14, 3)];
    let checksum =
        (rndis::checksum_rx::IP_SUCCEEDED | rndis::checksum_rx::TCP_SUCCEEDED).to_le_bytes();
    let packets = [
        data_packet(&frames[0], &[]),
        data_packet(&frames[1], &[(rndis::ppi::TCP_IP_CHECKSUM, &checksum)]),
        data_packet(&frames[2], &[(rndis::ppi::HASH_VALUE, &[1, 2, 3, 4])]),
    ];
    let slices: StdVec<&[u8]> = packets.iter().map(|p| p.as_slice()).collect();
    let id = host.receive(&mut init, &mut mem, 1, &slices);
    assert_eq!(host.completion_status(id), Some(nvsp::status::SUCCESS));
    assert_eq!(mem.delivered.len(), 3);
    for (delivered, frame) in mem.delivered.iter().zip(&frames) {
        assert_eq!(&delivered.1, frame);
        assert_eq!(delivered.0, 1, "the lane it came on");
    }
    assert_eq!(
        mem.delivered.iter().map(|d| d.2).collect::<StdVec<_>>(),
        [false, true, false]
    );
    assert_eq!(init.stats.rx_frames, 3);
    // No client buffer: dropped, counted, still completed.
    mem.client_has_buffers = false;
    let id = host.receive(&mut init, &mut mem, 0, &[&packets[0]]);
    assert_eq!(host.completion_status(id), Some(nvsp::status::SUCCESS));
    assert_eq!(init.stats.rx_no_buffer, 1);
}

#[test]
fn hostile_receives_are_refused_counted_and_completed() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    let (mut init, _) = started(config(), &mut host, &mut mem);
    let good = data_packet(&frame(100, 9), &[]);
    let too_long = data_packet(&frame(1515, 1), &[]);
    // The RNDIS length claims more than the range.
    let mut long_claim = good.clone();
    long_claim[4..8].copy_from_slice(&(good.len() as u32 + 1).to_le_bytes());
    // The data offset points past the message.
    let mut data_outside = good.clone();
    data_outside[8..12].copy_from_slice(&4000u32.to_le_bytes());
    // A broken PPI: the frame still goes, its checksum claim does not.
    let mut bad_ppi = data_packet(&frame(100, 9), &[(rndis::ppi::TCP_IP_CHECKSUM, &[0xff; 4])]);
    bad_ppi[44..48].copy_from_slice(&0u32.to_le_bytes());
    // An RNDIS completion for nothing asked, an unknown type, a runt.
    let mut stray = [0u8; 64];
    let stray_len =
        rndis::write_status_complete(&mut stray, rndis_type::SET_COMPLETE, 77, 0).unwrap();
    let mut unknown = good.clone();
    unknown[0..4].copy_from_slice(&0x1234u32.to_le_bytes());
    let runt = data_packet(&[0x11; 13], &[]);
    let before = init.stats;
    let id = host.receive(
        &mut init,
        &mut mem,
        0,
        &[
            &too_long,
            &long_claim,
            &data_outside,
            &bad_ppi,
            &stray[..stray_len],
            &unknown,
            &runt,
            &good,
        ],
    );
    assert_eq!(host.completion_status(id), Some(nvsp::status::SUCCESS));
    assert_eq!(
        mem.delivered.len(),
        2,
        "only the good frame and the one with a bad PPI"
    );
    assert!(!mem.delivered[0].2);
    assert_eq!(
        init.stats.refused_frames_too_long - before.refused_frames_too_long,
        1
    );
    assert_eq!(
        init.stats.refused_completions - before.refused_completions,
        1
    );
    assert_eq!(init.stats.refused - before.refused, 7);
    // A receive whose NVSP message is not SEND_RNDIS_PACKET: completed
    // with a failure, nothing read.
    let payload = nvsp_message(nvsp_type::SEND_NDIS_VERSION, &[0; 8]);
    init.on_receive(0, 555, &payload, [(0u32, 100u32)].into_iter(), &mut mem);
    host.run(&mut init, &mut mem);
    assert_eq!(host.completion_status(555), Some(nvsp::status::FAILURE));
    // A receive the channel refused (a range outside the buffer).
    init.on_receive_refused(2, 556);
    host.run(&mut init, &mut mem);
    assert_eq!(host.completion_status(556), Some(nvsp::status::FAILURE));
    // An RNDIS message longer than the driver takes.
    let id = host.receive_ranges(&mut init, &mut mem, 0, &[(0, MAX_RNDIS_MESSAGE as u32 + 1)]);
    assert_eq!(host.completion_status(id), Some(nvsp::status::SUCCESS));
    assert_eq!(mem.delivered.len(), 2);
    assert!(init.is_running(), "nothing of this stops the device");
}

#[test]
fn link_indications_reach_the_client() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    host.link_up = false;
    let (mut init, events) = started(config(), &mut host, &mut mem);
    assert!(!up(&events).unwrap().link_up);
    let mut buf = [0u8; 64];
    let len = rndis::write_indicate_status(&mut buf, ndis::MEDIA_CONNECT, &[]).unwrap();
    host.receive(&mut init, &mut mem, 0, &[&buf[..len]]);
    assert_eq!(events_of(&mut init), [Event::Link(true)]);
    let len = rndis::write_indicate_status(&mut buf, ndis::NETWORK_CHANGE, &[]).unwrap();
    host.receive(&mut init, &mut mem, 0, &[&buf[..len]]);
    assert_eq!(
        events_of(&mut init),
        [Event::Link(false), Event::Link(true)]
    );
    let len = rndis::write_indicate_status(&mut buf, ndis::MEDIA_DISCONNECT, &[]).unwrap();
    host.receive(&mut init, &mut mem, 0, &[&buf[..len]]);
    host.receive(&mut init, &mut mem, 0, &[&buf[..len]]);
    assert_eq!(
        events_of(&mut init),
        [Event::Link(false)],
        "no change, no event"
    );
    // A status buffer outside the message.
    let len = rndis::write_indicate_status(&mut buf, ndis::MEDIA_CONNECT, &[1, 2, 3, 4]).unwrap();
    buf[16..20].copy_from_slice(&100u32.to_le_bytes());
    host.receive(&mut init, &mut mem, 0, &[&buf[..len]]);
    assert!(!init.device().link_up);
    assert_eq!(init.stats.link_changes, 4);
}

fn events_of(init: &mut Initiator) -> StdVec<Event> {
    events(init)
        .into_iter()
        .filter(|e| !matches!(e, Event::Note(_)))
        .collect()
}

fn tx(token: u32, len: usize, checksum_offload: bool) -> TxRequest {
    TxRequest {
        token,
        len: len as u32,
        checksum_offload,
        flow_hash: token,
    }
}

#[test]
fn short_frames_are_copied_long_ones_go_direct() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    let (mut init, _) = started(config(), &mut host, &mut mem);
    let sections = init.free_sections();
    let places = init.free_places();
    assert!(places > 0);
    mem.frames.insert(1, frame(60, 1));
    mem.frames.insert(2, frame(1514, 2));
    init.transmit(tx(1, 60, false), &mut mem).unwrap();
    init.transmit(tx(2, 1514, false), &mut mem).unwrap();
    host.run(&mut init, &mut mem);
    assert_eq!(host.sent.len(), 2);
    assert_eq!(host.sent[0].frame, mem.frames[&1]);
    assert!(!host.sent[0].direct);
    assert_eq!(host.sent[1].frame, mem.frames[&2]);
    assert!(host.sent[1].direct);
    assert_eq!(
        events_of(&mut init),
        [
            Event::TxDone {
                token: 1,
                sent: true
            },
            Event::TxDone {
                token: 2,
                sent: true
            }
        ]
    );
    assert_eq!(
        (init.free_sections(), init.free_places()),
        (sections, places)
    );
    assert_eq!(
        (
            init.stats.tx_copied,
            init.stats.tx_direct,
            init.stats.tx_frames
        ),
        (1, 1, 2)
    );
    // Lengths outside an Ethernet frame of this MTU.
    assert_eq!(
        init.transmit(tx(3, 13, false), &mut mem),
        Err(TxRefused::BadLength)
    );
    assert_eq!(
        init.transmit(tx(3, 1515, false), &mut mem),
        Err(TxRefused::BadLength)
    );
}

#[test]
fn checksum_offload_asks_the_host_for_ipv4_tcp() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    let (mut init, _) = started(config(), &mut host, &mut mem);
    mem.frames.insert(1, tcp_frame(100));
    mem.frames.insert(2, frame(100, 0));
    mem.frames.insert(3, tcp_frame(1000));
    init.transmit(tx(1, 100, true), &mut mem).unwrap();
    init.transmit(tx(2, 100, true), &mut mem).unwrap();
    init.transmit(tx(3, 1000, true), &mut mem).unwrap();
    host.run(&mut init, &mut mem);
    use rndis::checksum_tx as c;
    let wanted = c::IS_IPV4 | c::IP_HEADER_CHECKSUM | c::TCP_CHECKSUM | (34 << 16);
    assert_eq!(host.sent[0].checksum, Some(wanted));
    assert_eq!(host.sent[1].checksum, None, "not IPv4: sent as it is");
    assert_eq!(host.sent[2].checksum, Some(wanted));
    assert!(host.sent[2].direct);
    assert_eq!(host.sent[2].frame, mem.frames[&3]);
}

#[test]
fn hostile_send_completions_are_refused() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    let (mut init, _) = started(config(), &mut host, &mut mem);
    host.hold_tx = true;
    mem.frames.insert(1, frame(60, 1));
    mem.frames.insert(2, frame(60, 2));
    init.transmit(tx(1, 60, false), &mut mem).unwrap();
    init.transmit(tx(2, 60, false), &mut mem).unwrap();
    host.run(&mut init, &mut mem);
    let (first, _) = host.held[0];
    let (second, _) = host.held[1];
    let ok = nvsp_message(
        nvsp_type::SEND_RNDIS_PACKET_COMPLETE,
        &nvsp::status::SUCCESS.to_le_bytes(),
    );
    let failed = nvsp_message(
        nvsp_type::SEND_RNDIS_PACKET_COMPLETE,
        &nvsp::status::FAILURE.to_le_bytes(),
    );
    init.on_completion(first, &ok, &mut mem);
    // Again: the slot is free now.
    let refused = init.stats.refused_completions;
    init.on_completion(first, &ok, &mut mem);
    assert_eq!(init.stats.refused_completions, refused + 1);
    // A tag that was never ours.
    init.on_completion(Tag { slot: 200, seq: 9 }, &ok, &mut mem);
    assert_eq!(init.stats.refused_completions, refused + 2);
    // A failure status: the frame is given back as not sent.
    init.on_completion(second, &failed, &mut mem);
    assert_eq!(
        events_of(&mut init),
        [
            Event::TxDone {
                token: 1,
                sent: true
            },
            Event::TxDone {
                token: 2,
                sent: false
            }
        ]
    );
    // The wrong message type in a completion: refused, the frame failed.
    init.transmit(tx(1, 60, false), &mut mem).unwrap();
    host.run(&mut init, &mut mem);
    let (third, _) = host.held[2];
    let wrong = nvsp_message(nvsp_type::INIT_COMPLETE, &[0; 12]);
    init.on_completion(third, &wrong, &mut mem);
    assert_eq!(
        events_of(&mut init),
        [Event::TxDone {
            token: 1,
            sent: false
        }]
    );
    assert_eq!(init.tx_in_flight(), 0);
    // A stale tag for a slot that has been reused since: refused, the
    // frame now in that slot stays in flight.
    mem.frames.insert(5, frame(60, 5));
    init.transmit(tx(5, 60, false), &mut mem).unwrap();
    host.run(&mut init, &mut mem);
    let (reused, _) = host.held[3];
    assert_eq!(
        reused.slot, third.slot,
        "the free list hands the slot out again"
    );
    init.on_completion(third, &ok, &mut mem);
    assert_eq!(init.tx_in_flight(), 1);
    assert_eq!(events_of(&mut init), []);
    init.on_completion(reused, &ok, &mut mem);
    assert_eq!(
        events_of(&mut init),
        [Event::TxDone {
            token: 5,
            sent: true
        }]
    );
    // A completion too short for NVSP.
    init.transmit(tx(1, 60, false), &mut mem).unwrap();
    host.run(&mut init, &mut mem);
    let (fourth, _) = host.held[4];
    init.on_completion(fourth, &[1, 2], &mut mem);
    assert_eq!(
        events_of(&mut init),
        [Event::TxDone {
            token: 1,
            sent: false
        }]
    );
}

#[test]
fn the_driver_waits_when_sections_and_slots_run_out() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    let (mut init, _) = started(config(), &mut host, &mut mem);
    host.hold_tx = true;
    mem.frames.insert(1, frame(60, 1));
    let copies = init.free_sections();
    for _ in 0..copies {
        init.transmit(tx(1, 60, false), &mut mem).unwrap();
    }
    // No section left: a short frame waits, a long one still goes direct.
    assert_eq!(
        init.transmit(tx(1, 60, false), &mut mem),
        Err(TxRefused::Busy)
    );
    mem.frames.insert(2, frame(1514, 2));
    init.transmit(tx(2, 1514, false), &mut mem).unwrap();
    host.run(&mut init, &mut mem);
    let ok = nvsp_message(
        nvsp_type::SEND_RNDIS_PACKET_COMPLETE,
        &nvsp::status::SUCCESS.to_le_bytes(),
    );
    let (tag, _) = host.held[0];
    init.on_completion(tag, &ok, &mut mem);
    init.transmit(tx(1, 60, false), &mut mem).unwrap();
    assert_eq!(init.free_sections(), 0);
}

#[test]
fn a_quiet_host_gets_a_keepalive_and_a_silent_one_a_reset() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    let config = config();
    let (mut init, _) = started(config, &mut host, &mut mem);
    let second = 1_000_000_000;
    assert_eq!(init.next_deadline(), Some(config.keepalive_ns));
    init.tick(config.keepalive_ns, &mut mem);
    host.run(&mut init, &mut mem);
    assert_eq!(host.rndis_log.last().unwrap().0, rndis_type::KEEPALIVE);
    assert!(init.is_running());
    // The host stops answering: the keepalive times out, RESET goes, the
    // host answers the reset, the filter is set again.
    host.silent_rndis = true;
    let mut now = 2 * config.keepalive_ns;
    init.tick(now, &mut mem);
    host.run(&mut init, &mut mem);
    now += config.request_timeout_ns;
    init.tick(now, &mut mem);
    assert!(events(&mut init).contains(&Event::Note(Note::Reset)));
    host.silent_rndis = false;
    host.run(&mut init, &mut mem);
    let last: StdVec<(u32, u32)> = host
        .rndis_log
        .iter()
        .rev()
        .take(2)
        .map(|(t, o, _)| (*t, *o))
        .collect();
    assert_eq!(
        last,
        [
            (rndis_type::SET, oid::GEN_CURRENT_PACKET_FILTER),
            (rndis_type::RESET, 0)
        ]
    );
    assert!(init.is_running());
    assert_eq!((init.stats.keepalives, init.stats.resets), (2, 1));
    // A reset never completed fails the device.
    host.silent_rndis = true;
    now += config.keepalive_ns + second;
    init.tick(now, &mut mem);
    host.run(&mut init, &mut mem);
    now += config.request_timeout_ns;
    init.tick(now, &mut mem);
    host.run(&mut init, &mut mem);
    now += config.request_timeout_ns;
    init.tick(now, &mut mem);
    assert_eq!(
        failed(&events(&mut init)),
        Some("the host did not complete an RNDIS RESET")
    );
}

#[test]
fn a_start_request_never_answered_fails_the_start() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    host.silent_nvsp = true;
    let (mut init, events_so_far) = started(config(), &mut host, &mut mem);
    assert!(up(&events_so_far).is_none());
    assert_eq!(init.next_deadline(), Some(config().request_timeout_ns));
    init.tick(config().request_timeout_ns - 1, &mut mem);
    assert!(!init.has_failed());
    init.tick(config().request_timeout_ns, &mut mem);
    assert!(init.has_failed());
    assert_eq!(
        failed(&events(&mut init)),
        Some("the host did not answer an NVSP request")
    );
    // An RNDIS request never answered during the start.
    let mut host = Host::new();
    host.silent_rndis = true;
    let (mut init, _) = started(config(), &mut host, &mut mem);
    init.tick(config().request_timeout_ns, &mut mem);
    assert_eq!(
        failed(&events(&mut init)),
        Some("the host did not answer an RNDIS request")
    );
}

#[test]
fn sub_channels_and_rss_when_the_host_has_queues() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    host.rss_queues = 4;
    let config = Config {
        sub_channels: 2,
        ..config()
    };
    let (mut init, events) = started(config, &mut host, &mut mem);
    assert!(events.contains(&Event::SubChannels(2)));
    assert!(up(&events).is_some());
    assert!(host.nvsp_log.contains(&nvsp_type::SUBCHANNEL));
    let (_, _, rss) = host
        .rndis_log
        .iter()
        .find(|(t, o, _)| *t == rndis_type::SET && *o == oid::GEN_RECEIVE_SCALE_PARAMETERS)
        .expect("RSS parameters set");
    assert_eq!(rss.len(), 40 + 512 + 40);
    assert_eq!(u32_at(rss, 16), 40, "the table right after the record");
    let table: StdVec<u32> = (0..6).map(|i| u32_at(rss, 40 + 4 * i)).collect();
    assert_eq!(table, [0, 1, 2, 0, 1, 2]);
    assert_eq!(init.sub_channels(), 2);
    // The send table: frames go where it says, once that lane is open.
    let mut buf = [0u8; 128];
    let table: [u32; 16] = core::array::from_fn(|i| (i % 3) as u32);
    let len = nvsp::write_send_table(&mut buf, &table).unwrap();
    init.on_in_band(&buf[..len]);
    init.lane_opened(2);
    mem.frames.insert(1, frame(60, 1));
    mem.frames.insert(2, frame(60, 2));
    init.transmit(tx(1, 60, false), &mut mem).unwrap(); // hash 1 -> lane 1: not open
    init.transmit(tx(2, 60, false), &mut mem).unwrap(); // hash 2 -> lane 2
    host.run(&mut init, &mut mem);
    assert_eq!(
        host.sent.iter().map(|s| s.lane).collect::<StdVec<_>>(),
        [0, 2]
    );
    // A hostile send table: refused, the old one stays.
    let refused = init.stats.refused_nvsp;
    buf[4..8].copy_from_slice(&0u32.to_le_bytes());
    init.on_in_band(&buf[..len]);
    assert_eq!(init.stats.refused_nvsp, refused + 1);
    assert_eq!(init.send_table()[2], 2);
    // More sub-channels granted than asked: refused, clamped.
    let mut host = Host::new();
    host.rss_queues = 8;
    host.grant_sub_channels = Some(6);
    let (init, events) = started(config, &mut host, &mut mem);
    assert!(events.contains(&Event::SubChannels(2)));
    assert!(init.stats.refused_nvsp > 0);
    // Before version 5 no sub-channels are asked for.
    let mut host = Host::new();
    host.rss_queues = 4;
    host.versions = vec![nvsp_version::V4];
    let (_, events) = started(config, &mut host, &mut mem);
    assert!(!host.nvsp_log.contains(&nvsp_type::SUBCHANNEL));
    assert!(up(&events).is_some());
}

#[test]
fn halt_sends_halt_and_revokes_the_buffers() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    let (mut init, _) = started(config(), &mut host, &mut mem);
    init.halt(&mut mem);
    host.run(&mut init, &mut mem);
    assert_eq!(host.rndis_log.last().unwrap().0, rndis_type::HALT);
    assert_eq!(
        &host.nvsp_log[host.nvsp_log.len() - 2..],
        &[
            nvsp_type::REVOKE_SEND_BUFFER,
            nvsp_type::REVOKE_RECEIVE_BUFFER
        ]
    );
    assert!(events(&mut init).contains(&Event::Halted));
    mem.frames.insert(1, frame(60, 1));
    assert_eq!(
        init.transmit(tx(1, 60, false), &mut mem),
        Err(TxRefused::NotRunning)
    );
}

#[test]
fn a_lost_channel_gives_every_frame_back() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    let (mut init, _) = started(config(), &mut host, &mut mem);
    host.hold_tx = true;
    mem.frames.insert(1, frame(60, 1));
    mem.frames.insert(2, frame(1514, 2));
    init.transmit(tx(1, 60, false), &mut mem).unwrap();
    init.transmit(tx(2, 1514, false), &mut mem).unwrap();
    host.run(&mut init, &mut mem);
    init.channel_lost();
    let mut done = events_of(&mut init);
    done.sort_by_key(|e| match e {
        Event::TxDone { token, .. } => *token,
        _ => 0,
    });
    assert_eq!(
        done,
        [
            Event::TxDone {
                token: 1,
                sent: false
            },
            Event::TxDone {
                token: 2,
                sent: false
            }
        ]
    );
    // A late completion for the old channel's request is refused.
    let ok = nvsp_message(
        nvsp_type::SEND_RNDIS_PACKET_COMPLETE,
        &nvsp::status::SUCCESS.to_le_bytes(),
    );
    init.on_completion(host.held[0].0, &ok, &mut mem);
    assert_eq!(init.stats.refused_completions, 1);
    // And it starts again.
    let mut host = Host::new();
    init.start(7, 9, 0);
    host.run(&mut init, &mut mem);
    assert!(init.is_running());
}

#[test]
fn receives_never_overflow_the_output_queue_silently() {
    let mut mem = Memory::new();
    let mut host = Host::new();
    let (mut init, _) = started(config(), &mut host, &mut mem);
    let packet = data_packet(&frame(60, 1), &[]);
    mem.receive[..packet.len()].copy_from_slice(&packet);
    let send = nvsp::SendRndisPacket::default();
    let payload = nvsp_message(nvsp_type::SEND_RNDIS_PACKET, send.as_bytes());
    let room = init.output_room();
    let completed_before = host.completions.len();
    // The component reads no more host packets once the room is low; the
    // initiator refuses frames before that and counts what it could not
    // queue.
    for id in 0..room as u64 {
        init.on_receive(
            0,
            id,
            &payload,
            [(0u32, packet.len() as u32)].into_iter(),
            &mut mem,
        );
        if init.output_room() < 16 {
            mem.frames.insert(1, frame(60, 1));
            assert_eq!(
                init.transmit(tx(1, 60, false), &mut mem),
                Err(TxRefused::Busy)
            );
        }
    }
    assert_eq!(init.output_room(), 0);
    assert_eq!(init.stats.completions_lost, 0);
    init.on_receive(
        0,
        9999,
        &payload,
        [(0u32, packet.len() as u32)].into_iter(),
        &mut mem,
    );
    assert_eq!(init.stats.completions_lost, 1);
    host.run(&mut init, &mut mem);
    assert_eq!(host.completions.len() - completed_before, room);
    assert_eq!(mem.delivered.len(), room + 1);
}
