//! The NIC host driven by a small scripted guest: the guest writes NVSP
//! packets into each channel's out ring with `vmbus-ring` (as netvsc
//! does), the endpoints drain them and the controller answers; the guest
//! reads completions and transfer-page packets from the in rings and the
//! RNDIS messages from its receive buffer. The backend is a `MemoryNet`.

use super::*;
use crate::memory::test_ring::VecRing;
use crate::memory::VecMemory;
use crate::net::{GuestFrames, MemoryNetHandle};
use crate::vmbus::DeviceKind;
use vmbus_protocol::packet::PacketKind;
use vmbus_ring::{GpaRange, RingReader, RingWriter};

const PAGE: u64 = 4096;
const RING_DATA_PAGES: u64 = 8;
/// Channel k's out ring: pages 20k..20k+9, its in ring 20k+9..20k+18.
const CHANNEL_STRIDE: u64 = 20;
const RECEIVE_PAGES: core::ops::Range<u64> = 64..80;
const SEND_PAGES: core::ops::Range<u64> = 80..86;
/// The guest's own pages for GPA-direct sends.
const DATA_PAGE: u64 = 96;
const MEMORY_PAGES: u64 = 128;
const RECEIVE_GPADL: u32 = 0x10;
const SEND_GPADL: u32 = 0x11;

/// One channel as both sides see it.
struct Channel {
    relid: u32,
    endpoint: ChannelEndpoint,
    writer: RingWriter<VecRing>,
    reader: RingReader<VecRing>,
    /// Packets read while looking for a completion, not yet looked at.
    stash: Vec<FromHost>,
}

/// What the host sent on a channel, as the guest read it.
#[derive(Debug)]
enum FromHost {
    Completion {
        transaction_id: u64,
        message_type: u32,
        payload: Vec<u8>,
    },
    InBand {
        payload: Vec<u8>,
    },
    /// A transfer-page packet: its set id, NVSP message and ranges.
    Receive {
        transaction_id: u64,
        set_id: u16,
        channel_type: u32,
        ranges: Vec<(u32, u32)>,
    },
}

struct Rig {
    memory: &'static VecMemory,
    controller: NetController,
    channels: Vec<Channel>,
    net: MemoryNetHandle,
    next_id: u64,
    next_request: u32,
}

fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
}

impl Rig {
    fn new(config: NetConfig) -> Rig {
        let memory: &'static VecMemory = alloc::boxed::Box::leak(alloc::boxed::Box::new(
            VecMemory::new((MEMORY_PAGES * PAGE) as usize),
        ));
        let (net, handle) = MemoryNet::new(1024, GuestFrames::Keep);
        let mut controller = NetController::new(config);
        controller.set_backend(alloc::boxed::Box::new(net));
        let mut rig = Rig {
            memory,
            controller,
            channels: Vec::new(),
            net: handle,
            next_id: 1,
            next_request: 1,
        };
        rig.open_channel();
        rig
    }

    /// Opens channel `channels.len()` (0 the primary).
    fn open_channel(&mut self) -> usize {
        let index = self.channels.len() as u64;
        let base = index * CHANNEL_STRIDE;
        let out_pages: Vec<u64> = (base..base + 1 + RING_DATA_PAGES).collect();
        let in_pages: Vec<u64> =
            (base + 1 + RING_DATA_PAGES..base + 2 + 2 * RING_DATA_PAGES).collect();
        let mut endpoint = ChannelEndpoint::new(
            DeviceKind::Network,
            1 + index as u32,
            &out_pages,
            &in_pages,
            self.memory,
            0,
        );
        endpoint
            .gpadls
            .insert(RECEIVE_GPADL, RECEIVE_PAGES.collect());
        endpoint.gpadls.insert(SEND_GPADL, SEND_PAGES.collect());
        let writer = RingWriter::new(
            VecRing::new(self.memory, base * PAGE, RING_DATA_PAGES),
            false,
        )
        .unwrap();
        let reader = RingReader::new(VecRing::new(
            self.memory,
            (base + 1 + RING_DATA_PAGES) * PAGE,
            RING_DATA_PAGES,
        ))
        .unwrap();
        let relid = 30 + index as u32;
        self.controller.channel_opened(index as u16, relid);
        self.channels.push(Channel {
            relid,
            endpoint,
            writer,
            reader,
            stash: Vec::new(),
        });
        index as usize
    }

    /// Runs the host's step on every channel (primary first).
    fn step(&mut self) {
        for (index, channel) in self.channels.iter_mut().enumerate() {
            channel.endpoint.step(self.memory, 1, 0);
            let packets = core::mem::take(&mut channel.endpoint.storage_inbox);
            self.controller.serve(
                &mut channel.endpoint,
                self.memory,
                channel.relid,
                index as u16,
                packets,
            );
        }
    }

    fn nvsp(message_type: u32, payload: &[u8]) -> Vec<u8> {
        let mut bytes = alloc::vec![0u8; 64];
        let len = nvsp::write_message(&mut bytes, message_type, payload).unwrap();
        bytes.truncate(len);
        bytes
    }

    /// An in-band NVSP message on channel `on`; its transaction id.
    fn send(&mut self, on: usize, message_type: u32, payload: &[u8]) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = Self::nvsp(message_type, payload);
        let _ = self.channels[on]
            .writer
            .write_in_band(id, true, &bytes)
            .unwrap();
        self.step();
        id
    }

    /// Everything the host sent on channel `on` since the last look.
    fn host_sent(&mut self, on: usize) -> Vec<FromHost> {
        let mut seen = core::mem::take(&mut self.channels[on].stash);
        let mut buffer = alloc::vec![0u8; 4096];
        let reader = &mut self.channels[on].reader;
        while let Some(packet) = reader.read_packet(&mut buffer).unwrap() {
            let message_type = if packet.payload.len() >= 4 {
                le32(packet.payload, 0)
            } else {
                u32::MAX
            };
            seen.push(match packet.kind {
                PacketKind::Completion => FromHost::Completion {
                    transaction_id: packet.transaction_id,
                    message_type,
                    payload: packet.payload[4.min(packet.payload.len())..].to_vec(),
                },
                PacketKind::TransferPages {
                    transfer_page_set_id,
                    ranges,
                } => {
                    assert_eq!(message_type, nvsp_type::SEND_RNDIS_PACKET);
                    assert!(packet.completion_requested);
                    FromHost::Receive {
                        transaction_id: packet.transaction_id,
                        set_id: transfer_page_set_id,
                        channel_type: le32(packet.payload, 4),
                        ranges: ranges
                            .iter()
                            .map(|r| (r.byte_offset.get(), r.byte_count.get()))
                            .collect(),
                    }
                }
                _ => FromHost::InBand {
                    payload: packet.payload.to_vec(),
                },
            });
        }
        let _ = reader.finish_batch().unwrap();
        seen
    }

    /// The one completion of `id` on channel `on`: (message type, payload).
    fn completion(&mut self, on: usize, id: u64) -> (u32, Vec<u8>) {
        let mut found = Vec::new();
        for seen in self.host_sent(on) {
            match seen {
                FromHost::Completion {
                    transaction_id,
                    message_type,
                    payload,
                } if transaction_id == id => found.push((message_type, payload)),
                other => self.channels[on].stash.push(other),
            }
        }
        assert_eq!(found.len(), 1, "one completion of {id}");
        found.into_iter().next().unwrap()
    }

    fn init(&mut self, version: u32) -> u32 {
        let init = nvsp::Init {
            min_protocol_version: version.into(),
            max_protocol_version: version.into(),
        };
        let id = self.send(0, nvsp_type::INIT, init.as_bytes());
        let (message_type, payload) = self.completion(0, id);
        assert_eq!(message_type, nvsp_type::INIT_COMPLETE);
        le32(&payload, 8)
    }

    /// INIT (newest first), NDIS config and version, both buffers.
    /// Returns the receive buffer's (section size, count).
    fn handshake(&mut self) -> (u32, u32) {
        let mut agreed = None;
        for version in nvsp::version::NEWEST_FIRST {
            if self.init(version) == nvsp::status::SUCCESS {
                agreed = Some(version);
                break;
            }
        }
        assert!(agreed.is_some());
        let config = nvsp::SendNdisConfig {
            mtu: 1514.into(),
            ..Default::default()
        };
        self.send(0, nvsp_type::SEND_NDIS_CONFIG, config.as_bytes());
        let ndis = nvsp::SendNdisVersion {
            ndis_major_version: 6.into(),
            ndis_minor_version: 30.into(),
        };
        self.send(0, nvsp_type::SEND_NDIS_VERSION, ndis.as_bytes());
        assert!(
            self.host_sent(0).is_empty(),
            "NDIS config/version get no answer"
        );
        let request = nvsp::SendBuffer {
            gpadl_handle: RECEIVE_GPADL.into(),
            id: nvsp::RECEIVE_BUFFER_ID.into(),
            reserved: 0.into(),
        };
        let id = self.send(0, nvsp_type::SEND_RECEIVE_BUFFER, request.as_bytes());
        let (message_type, payload) = self.completion(0, id);
        assert_eq!(message_type, nvsp_type::SEND_RECEIVE_BUFFER_COMPLETE);
        assert_eq!(le32(&payload, 0), nvsp::status::SUCCESS);
        assert_eq!(le32(&payload, 4), 1, "one section");
        let (size, count) = (le32(&payload, 12), le32(&payload, 16));
        assert_eq!(le32(&payload, 8), 0);
        assert_eq!(le32(&payload, 20), size * count);
        let request = nvsp::SendBuffer {
            gpadl_handle: SEND_GPADL.into(),
            id: nvsp::SEND_BUFFER_ID.into(),
            reserved: 0.into(),
        };
        let id = self.send(0, nvsp_type::SEND_SEND_BUFFER, request.as_bytes());
        let (message_type, payload) = self.completion(0, id);
        assert_eq!(message_type, nvsp_type::SEND_SEND_BUFFER_COMPLETE);
        assert_eq!(
            (le32(&payload, 0), le32(&payload, 4)),
            (nvsp::status::SUCCESS, SEND_SECTION_SIZE)
        );
        (size, count)
    }

    /// RNDIS bytes into send-buffer section `section` and a
    /// SEND_RNDIS_PACKET naming it; the NVSP completion status.
    fn send_rndis(&mut self, on: usize, channel_type: u32, section: u32, bytes: &[u8]) -> u32 {
        let gpa = SEND_PAGES.start * PAGE + u64::from(section) * u64::from(SEND_SECTION_SIZE);
        self.memory.write(gpa, bytes).unwrap();
        let request = nvsp::SendRndisPacket {
            channel_type: channel_type.into(),
            send_buffer_section_index: section.into(),
            send_buffer_section_size: (bytes.len() as u32).into(),
        };
        let id = self.send(on, nvsp_type::SEND_RNDIS_PACKET, request.as_bytes());
        let (message_type, payload) = self.completion(on, id);
        assert_eq!(message_type, nvsp_type::SEND_RNDIS_PACKET_COMPLETE);
        le32(&payload, 0)
    }

    /// RNDIS bytes in the guest's own pages, sent GPA-direct (one range).
    fn send_rndis_gpa(&mut self, on: usize, gpa: u64, bytes: &[u8]) -> u32 {
        self.memory.write(gpa, bytes).unwrap();
        let request = nvsp::SendRndisPacket {
            channel_type: nvsp::channel_type::DATA.into(),
            send_buffer_section_index: nvsp::NO_SEND_BUFFER_SECTION.into(),
            send_buffer_section_size: 0.into(),
        };
        let payload = Self::nvsp(nvsp_type::SEND_RNDIS_PACKET, request.as_bytes());
        let first = gpa / PAGE;
        let last = (gpa + bytes.len() as u64).div_ceil(PAGE);
        let pfns: Vec<u64> = (first..last).collect();
        let id = self.next_id;
        self.next_id += 1;
        let _ = self.channels[on]
            .writer
            .write_gpa_direct(
                id,
                true,
                &[GpaRange {
                    byte_offset: (gpa % PAGE) as u32,
                    byte_count: bytes.len() as u32,
                    pfns: &pfns,
                }],
                &payload,
            )
            .unwrap();
        self.step();
        let (_, payload) = self.completion(on, id);
        le32(&payload, 0)
    }

    fn receive_bytes(&self, offset: u32, count: u32) -> Vec<u8> {
        let mut bytes = alloc::vec![0u8; count as usize];
        self.memory
            .read(RECEIVE_PAGES.start * PAGE + u64::from(offset), &mut bytes)
            .unwrap();
        bytes
    }

    /// The guest completes a receive packet.
    fn complete_receive(&mut self, on: usize, transaction_id: u64) {
        let complete = nvsp::SendRndisPacketComplete {
            status: nvsp::status::SUCCESS.into(),
        };
        let bytes = Self::nvsp(nvsp_type::SEND_RNDIS_PACKET_COMPLETE, complete.as_bytes());
        let _ = self.channels[on]
            .writer
            .write_completion(transaction_id, &bytes)
            .unwrap();
        self.step();
    }

    /// A control request; the RNDIS answer the host put in the receive
    /// buffer (the receive packet completed).
    fn control(&mut self, request: &[u8]) -> Vec<u8> {
        assert_eq!(
            self.send_rndis(0, nvsp::channel_type::CONTROL, 0, request),
            nvsp::status::SUCCESS
        );
        self.step();
        let receives: Vec<FromHost> = self.host_sent(0);
        let [FromHost::Receive {
            transaction_id,
            set_id,
            channel_type,
            ranges,
        }] = receives.as_slice()
        else {
            panic!("one receive expected: {receives:?}");
        };
        assert_eq!(*set_id, nvsp::RECEIVE_BUFFER_ID);
        assert_eq!(*channel_type, nvsp::channel_type::CONTROL);
        assert_eq!(ranges.len(), 1);
        let answer = self.receive_bytes(ranges[0].0, ranges[0].1);
        let id = *transaction_id;
        self.complete_receive(0, id);
        answer
    }

    fn request_id(&mut self) -> u32 {
        self.next_request += 1;
        self.next_request
    }

    fn query(&mut self, oid: u32) -> (u32, Vec<u8>) {
        let id = self.request_id();
        let mut out = [0u8; 64];
        let len = rndis::write_oid_request(&mut out, rndis_type::QUERY, id, oid, &[]).unwrap();
        let answer = self.control(&out[..len]);
        let message = rndis::parse(&answer).unwrap();
        assert_eq!(message.message_type, rndis_type::QUERY_COMPLETE);
        let (complete, info) = message.query_complete().unwrap();
        assert_eq!(complete.request_id.get(), id);
        (complete.status.get(), info.to_vec())
    }

    fn set(&mut self, oid: u32, info: &[u8]) -> u32 {
        let id = self.request_id();
        let mut out = [0u8; 1024];
        let len = rndis::write_oid_request(&mut out, rndis_type::SET, id, oid, info).unwrap();
        let answer = self.control(&out[..len]);
        let message = rndis::parse(&answer).unwrap();
        assert_eq!(message.message_type, rndis_type::SET_COMPLETE);
        let complete: rndis::StatusComplete = message.fixed().unwrap();
        assert_eq!(complete.request_id.get(), id);
        complete.status.get()
    }

    /// Handshake, RNDIS INITIALIZE, packet filter: the data path is up.
    fn up(&mut self) -> (u32, u32) {
        let sections = self.handshake();
        let id = self.request_id();
        let mut out = [0u8; 64];
        let len = rndis::write_initialize(&mut out, id, rndis::GUEST_MAX_TRANSFER_SIZE).unwrap();
        let answer = self.control(&out[..len]);
        let message = rndis::parse(&answer).unwrap();
        assert_eq!(message.message_type, rndis_type::INITIALIZE_COMPLETE);
        let complete: rndis::InitializeComplete = message.fixed().unwrap();
        assert_eq!(complete.request_id.get(), id);
        assert_eq!(complete.status.get(), rndis::status::SUCCESS);
        assert_eq!(complete.medium.get(), rndis::MEDIUM_802_3);
        assert_eq!(
            self.set(
                oid::GEN_CURRENT_PACKET_FILTER,
                &(rndis::packet_filter::DIRECTED | rndis::packet_filter::BROADCAST).to_le_bytes()
            ),
            rndis::status::SUCCESS
        );
        assert!(self.controller.ready());
        sections
    }

    /// The receive packets on channel `on`: (transaction id, frames).
    fn received_frames(&mut self, on: usize) -> Vec<(u64, Vec<Vec<u8>>)> {
        let mut packets = Vec::new();
        for seen in self.host_sent(on) {
            let FromHost::Receive {
                transaction_id,
                channel_type,
                ranges,
                ..
            } = seen
            else {
                continue;
            };
            assert_eq!(channel_type, nvsp::channel_type::DATA);
            let frames = ranges
                .iter()
                .map(|&(offset, count)| {
                    let bytes = self.receive_bytes(offset, count);
                    let message = rndis::parse(&bytes).unwrap();
                    assert_eq!(message.message_type, rndis_type::PACKET);
                    message.packet().unwrap().data.to_vec()
                })
                .collect();
            packets.push((transaction_id, frames));
        }
        packets
    }
}

const GUEST_MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x00, 0x00, 0x01];

/// An Ethernet frame to the guest's MAC: `len` bytes, `seed` in it.
fn frame_to_guest(len: usize, seed: u8) -> Vec<u8> {
    let mut frame: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_add(seed)).collect();
    frame[..6].copy_from_slice(&GUEST_MAC);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    frame[12..14].copy_from_slice(&0x88B5u16.to_be_bytes());
    frame
}

/// An RNDIS data packet around `frame` (per-packet info `ppis`).
fn packet_message(frame: &[u8], ppis: &[(u32, &[u8])]) -> Vec<u8> {
    let mut out = alloc::vec![0u8; 256];
    let len = rndis::write_packet_header(&mut out, frame.len(), ppis).unwrap();
    out.truncate(len);
    out.extend_from_slice(frame);
    out
}

fn rig() -> Rig {
    Rig::new(NetConfig::default())
}

#[test]
fn the_handshake_follows_hyper_v() {
    let mut rig = Rig::new(NetConfig {
        newest_version: nvsp::version::V5,
        ..NetConfig::default()
    });
    // Newer than the host speaks: refused, the guest tries the next.
    assert_eq!(rig.init(nvsp::version::V61), nvsp::status::FAILURE);
    assert_eq!(rig.init(nvsp::version::V6), nvsp::status::FAILURE);
    assert_eq!(rig.controller.stats.versions_refused, 2);
    let (size, count) = rig.handshake();
    assert_eq!(rig.controller.version(), Some(nvsp::version::V5));
    assert_eq!(size, 1728, "Hyper-V's section size for MTU 1500");
    assert_eq!(count, (16 * 4096) / 1728);
    assert_eq!(rig.controller.receive_sections(), Some((size, count)));
    assert_eq!(rig.controller.stats.rule_violations, 0);
}

#[test]
fn out_of_order_messages_are_refused_and_counted() {
    let mut rig = rig();
    let request = nvsp::SendBuffer {
        gpadl_handle: RECEIVE_GPADL.into(),
        id: nvsp::RECEIVE_BUFFER_ID.into(),
        reserved: 0.into(),
    };
    let id = rig.send(0, nvsp_type::SEND_RECEIVE_BUFFER, request.as_bytes());
    let (_, payload) = rig.completion(0, id);
    assert_eq!(le32(&payload, 0), nvsp::status::FAILURE);
    let packet = nvsp::SendRndisPacket {
        channel_type: 0.into(),
        send_buffer_section_index: 0.into(),
        send_buffer_section_size: 8.into(),
    };
    let id = rig.send(0, nvsp_type::SEND_RNDIS_PACKET, packet.as_bytes());
    let (_, payload) = rig.completion(0, id);
    assert_eq!(le32(&payload, 0), nvsp::status::FAILURE);
    // A GPADL that is not the channel's.
    rig.handshake();
    assert_eq!(rig.controller.stats.rule_violations, 2);
    let mut fresh = self::rig();
    fresh.init(nvsp::version::V61);
    fresh.send(
        0,
        nvsp_type::SEND_NDIS_VERSION,
        nvsp::SendNdisVersion {
            ndis_major_version: 6.into(),
            ndis_minor_version: 30.into(),
        }
        .as_bytes(),
    );
    let request = nvsp::SendBuffer {
        gpadl_handle: 0x77.into(),
        id: nvsp::RECEIVE_BUFFER_ID.into(),
        reserved: 0.into(),
    };
    let id = fresh.send(0, nvsp_type::SEND_RECEIVE_BUFFER, request.as_bytes());
    let (_, payload) = fresh.completion(0, id);
    assert_eq!(le32(&payload, 0), nvsp::status::FAILURE);
    assert!(fresh.controller.violations.back().unwrap().contains("0x77"));
    // Nonsense types.
    fresh.send(0, 4242, &[]);
    assert_eq!(fresh.controller.stats.rule_violations, 2);
}

#[test]
fn rndis_control_is_answered_through_the_receive_buffer() {
    let mut rig = rig();
    rig.up();
    let (status, mac) = rig.query(oid::IEEE_802_3_PERMANENT_ADDRESS);
    assert_eq!(
        (status, mac.as_slice()),
        (rndis::status::SUCCESS, &GUEST_MAC[..])
    );
    let (_, mtu) = rig.query(oid::GEN_MAXIMUM_FRAME_SIZE);
    assert_eq!(le32(&mtu, 0), 1500);
    let (_, media) = rig.query(oid::GEN_MEDIA_CONNECT_STATUS);
    assert_eq!(le32(&media, 0), rndis::media_state::CONNECTED);
    let (_, speed) = rig.query(oid::GEN_LINK_SPEED);
    assert_eq!(le32(&speed, 0), 100_000_000);
    let (status, capabilities) = rig.query(oid::GEN_RECEIVE_SCALE_CAPABILITIES);
    assert_eq!(status, rndis::status::SUCCESS);
    let (capabilities, _) = rndis::RssCapabilities::read_from_prefix(&capabilities).unwrap();
    assert_eq!(capabilities.number_of_receive_queues.get(), 5);
    let (status, info) = rig.query(0x0102_0304);
    assert_eq!((status, info.len()), (rndis::status::NOT_SUPPORTED, 0));
    assert_eq!(
        rig.set(0x0102_0304, &[1, 2, 3, 4]),
        rndis::status::NOT_SUPPORTED
    );
    // KEEPALIVE and RESET.
    let mut out = [0u8; 32];
    let len = rndis::write_request_id(&mut out, rndis_type::KEEPALIVE, 77).unwrap();
    let answer = rig.control(&out[..len]);
    let message = rndis::parse(&answer).unwrap();
    assert_eq!(message.message_type, rndis_type::KEEPALIVE_COMPLETE);
    assert_eq!(message.request_id().unwrap(), 77);
    let len = rndis::write_reset(&mut out).unwrap();
    let answer = rig.control(&out[..len]);
    assert_eq!(
        rndis::parse(&answer).unwrap().message_type,
        rndis_type::RESET_COMPLETE
    );
    assert_eq!(
        rig.controller.sections_in_use(),
        0,
        "every answer completed"
    );
    assert_eq!(rig.controller.stats.rule_violations, 0);
    // HALT: no answer, and frames stop going up.
    let len = rndis::write_request_id(&mut out, rndis_type::HALT, 78).unwrap();
    assert_eq!(
        rig.send_rndis(0, nvsp::channel_type::CONTROL, 0, &out[..len]),
        nvsp::status::SUCCESS
    );
    rig.step();
    assert!(rig.host_sent(0).is_empty());
    assert!(!rig.controller.ready());
}

#[test]
fn frames_reach_the_backend_from_sections_and_guest_pages() {
    let mut rig = rig();
    rig.up();
    let before = rig.controller.stats;
    let first = frame_to_guest(60, 1);
    let second = frame_to_guest(1514, 2);
    // Two packets batched in one section, the second 8-aligned.
    let mut batch = packet_message(&first, &[]);
    batch.resize(batch.len().div_ceil(8) * 8, 0);
    let padded = batch.len() as u32;
    batch[4..8].copy_from_slice(&padded.to_le_bytes());
    batch.extend_from_slice(&packet_message(&second, &[]));
    assert_eq!(
        rig.send_rndis(0, nvsp::channel_type::DATA, 1, &batch),
        nvsp::status::SUCCESS
    );
    assert_eq!(rig.net.take_sent().unwrap(), first);
    assert_eq!(rig.net.take_sent().unwrap(), second);
    // GPA-direct, crossing a page.
    let third = frame_to_guest(900, 3);
    let gpa = DATA_PAGE * PAGE + 4096 - 300;
    assert_eq!(
        rig.send_rndis_gpa(0, gpa, &packet_message(&third, &[])),
        nvsp::status::SUCCESS
    );
    assert_eq!(rig.net.take_sent().unwrap(), third);
    let stats = rig.controller.stats;
    assert_eq!(
        (
            stats.tx_frames,
            stats.tx_from_send_buffer - before.tx_from_send_buffer,
            stats.tx_gpa_direct
        ),
        (3, 1, 1)
    );
    assert_eq!(stats.rule_violations, 0);
}

#[test]
fn the_checksums_the_guest_leaves_are_filled_in() {
    let mut rig = rig();
    rig.up();
    // An IPv4/UDP frame with both checksums zero; the guest asks for them.
    let mut frame = alloc::vec![0u8; 14 + 20 + 8 + 4];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    frame[14] = 0x45;
    frame[16..18].copy_from_slice(&32u16.to_be_bytes());
    frame[22] = 64;
    frame[23] = 17;
    frame[26..30].copy_from_slice(&[10, 0, 2, 15]);
    frame[30..34].copy_from_slice(&[10, 0, 2, 2]);
    frame[34..36].copy_from_slice(&1234u16.to_be_bytes());
    frame[36..38].copy_from_slice(&7u16.to_be_bytes());
    frame[38..40].copy_from_slice(&12u16.to_be_bytes());
    frame[42..46].copy_from_slice(b"ping");
    use rndis::checksum_tx as c;
    let flags = (c::IS_IPV4 | c::UDP_CHECKSUM | c::IP_HEADER_CHECKSUM).to_le_bytes();
    let message = packet_message(&frame, &[(rndis::ppi::TCP_IP_CHECKSUM, &flags)]);
    assert_eq!(
        rig.send_rndis(0, nvsp::channel_type::DATA, 0, &message),
        nvsp::status::SUCCESS
    );
    let sent = rig.net.take_sent().unwrap();
    // Each checksum verifies: the sum over its range folds to 0xFFFF.
    let verify = |bytes: &[u8]| {
        let mut sum: u32 = bytes
            .chunks(2)
            .map(|p| u32::from(u16::from_be_bytes([p[0], *p.get(1).unwrap_or(&0)])))
            .sum();
        while sum > 0xFFFF {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
        sum
    };
    assert_eq!(verify(&sent[14..34]), 0xFFFF, "IPv4 header checksum");
    let mut pseudo = sent[26..34].to_vec();
    pseudo.extend_from_slice(&[0, 17, 0, 12]);
    pseudo.extend_from_slice(&sent[34..46]);
    assert_eq!(verify(&pseudo), 0xFFFF, "UDP checksum");
    assert_ne!(&sent[40..42], &[0, 0]);
    assert_eq!(rig.controller.stats.tx_checksums_filled, 1);
}

#[test]
fn received_frames_fill_sections_that_come_back_only_when_completed() {
    let mut rig = rig();
    let (size, count) = rig.up();
    let total = count as usize + 10;
    let frames: Vec<Vec<u8>> = (0..total)
        .map(|i| frame_to_guest(60 + i * 20, i as u8))
        .collect();
    for frame in &frames {
        assert!(rig.net.push_to_guest(frame));
    }
    rig.step();
    let packets = rig.received_frames(0);
    let got: Vec<Vec<u8>> = packets.iter().flat_map(|(_, f)| f.clone()).collect();
    assert_eq!(got.len(), count as usize, "one section per frame, all used");
    assert_eq!(got[..], frames[..count as usize]);
    assert!(packets
        .iter()
        .all(|(_, f)| f.len() <= MAX_RANGES_PER_RECEIVE));
    assert_eq!(rig.controller.sections_in_use(), count as usize);
    // Nothing more goes up until the guest completes.
    rig.step();
    assert!(rig.received_frames(0).is_empty());
    let (first, first_frames) = &packets[0];
    let freed = first_frames.len();
    rig.complete_receive(0, *first);
    let more = rig.received_frames(0);
    let more_frames: Vec<Vec<u8>> = more.iter().flat_map(|(_, f)| f.clone()).collect();
    assert_eq!(more_frames.len(), freed.min(10));
    assert_eq!(
        more_frames[..],
        frames[count as usize..count as usize + more_frames.len()]
    );
    // A completion twice is a completion for nothing outstanding.
    rig.complete_receive(0, *first);
    assert_eq!(rig.controller.stats.unknown_completions, 1);
    assert_eq!(rig.controller.stats.rule_violations, 1);
    assert!(size >= 1514 + 44);
}

#[test]
fn a_hostile_guest_is_counted_never_trusted() {
    let mut rig = rig();
    rig.up();
    let violations = |rig: &Rig| rig.controller.stats.rule_violations;
    // A section beyond the send buffer (6 pages hold 4 sections).
    let request = nvsp::SendRndisPacket {
        channel_type: 0.into(),
        send_buffer_section_index: 4.into(),
        send_buffer_section_size: 100.into(),
    };
    let id = rig.send(0, nvsp_type::SEND_RNDIS_PACKET, request.as_bytes());
    assert_eq!(
        le32(&rig.completion(0, id).1, 0),
        nvsp::status::INVALID_RNDIS_PACKET
    );
    assert_eq!(violations(&rig), 1);
    // RNDIS length beyond the bytes the section holds.
    let mut message = packet_message(&frame_to_guest(60, 0), &[]);
    let long = message.len() as u32 + 64;
    message[4..8].copy_from_slice(&long.to_le_bytes());
    assert_eq!(
        rig.send_rndis(0, 0, 0, &message),
        nvsp::status::INVALID_RNDIS_PACKET
    );
    assert_eq!(violations(&rig), 2);
    // data_length past the message.
    let mut message = packet_message(&frame_to_guest(60, 0), &[]);
    message[12..16].copy_from_slice(&4000u32.to_le_bytes());
    assert_eq!(
        rig.send_rndis(0, 0, 0, &message),
        nvsp::status::INVALID_RNDIS_PACKET
    );
    // A frame longer than the MTU.
    let message = packet_message(&frame_to_guest(1600, 0), &[]);
    assert_eq!(
        rig.send_rndis(0, 0, 0, &message),
        nvsp::status::INVALID_RNDIS_PACKET
    );
    assert_eq!(violations(&rig), 4);
    assert_eq!(rig.controller.stats.tx_refused, 2);
    assert!(rig.net.take_sent().is_none(), "nothing malformed left");
    // Pages outside guest memory.
    let request = nvsp::SendRndisPacket {
        channel_type: 0.into(),
        send_buffer_section_index: nvsp::NO_SEND_BUFFER_SECTION.into(),
        send_buffer_section_size: 0.into(),
    };
    let payload = Rig::nvsp(nvsp_type::SEND_RNDIS_PACKET, request.as_bytes());
    let outside = [MEMORY_PAGES + 5];
    let _ = rig.channels[0]
        .writer
        .write_gpa_direct(
            99,
            true,
            &[GpaRange {
                byte_offset: 0,
                byte_count: 100,
                pfns: &outside,
            }],
            &payload,
        )
        .unwrap();
    rig.step();
    assert_eq!(
        le32(&rig.completion(0, 99).1, 0),
        nvsp::status::INVALID_RNDIS_PACKET
    );
    assert_eq!(rig.controller.stats.gpa_outside_memory, 1);
    // A completion for nothing the host sent.
    rig.complete_receive(0, 0x5555);
    assert_eq!(rig.controller.stats.unknown_completions, 1);
    // Not NVSP at all.
    let _ = rig.channels[0]
        .writer
        .write_in_band(7, true, &[1, 2])
        .unwrap();
    rig.step();
    assert_eq!(violations(&rig), 7);
    // The data path still works.
    let frame = frame_to_guest(80, 9);
    assert_eq!(
        rig.send_rndis(0, 0, 2, &packet_message(&frame, &[])),
        nvsp::status::SUCCESS
    );
    assert_eq!(rig.net.take_sent().unwrap(), frame);
}

#[test]
fn the_link_goes_down_and_comes_back() {
    let mut rig = rig();
    rig.up();
    rig.controller.set_link(false);
    rig.step();
    let seen = rig.host_sent(0);
    let [FromHost::Receive {
        transaction_id,
        channel_type,
        ranges,
        ..
    }] = seen.as_slice()
    else {
        panic!("{seen:?}");
    };
    assert_eq!(*channel_type, nvsp::channel_type::CONTROL);
    let bytes = rig.receive_bytes(ranges[0].0, ranges[0].1);
    let message = rndis::parse(&bytes).unwrap();
    assert_eq!(message.message_type, rndis_type::INDICATE_STATUS);
    assert_eq!(
        message.indicate_status().unwrap().0,
        rndis::status::MEDIA_DISCONNECT
    );
    let id = *transaction_id;
    rig.complete_receive(0, id);
    let (_, media) = rig.query(oid::GEN_MEDIA_CONNECT_STATUS);
    assert_eq!(le32(&media, 0), rndis::media_state::DISCONNECTED);
    // Frames neither way while down.
    rig.net.push_to_guest(&frame_to_guest(60, 1));
    rig.step();
    assert!(rig.received_frames(0).is_empty());
    assert_eq!(rig.controller.stats.rx_dropped_link_down, 1);
    let message = packet_message(&frame_to_guest(60, 1), &[]);
    assert_eq!(rig.send_rndis(0, 0, 0, &message), nvsp::status::SUCCESS);
    assert!(rig.net.take_sent().is_none());
    assert_eq!(rig.controller.stats.tx_dropped_link_down, 1);
    rig.controller.set_link(true);
    rig.step();
    let seen = rig.host_sent(0);
    let [FromHost::Receive { ranges, .. }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    let bytes = rig.receive_bytes(ranges[0].0, ranges[0].1);
    assert_eq!(
        rndis::parse(&bytes).unwrap().indicate_status().unwrap().0,
        rndis::status::MEDIA_CONNECT
    );
    assert_eq!(rig.controller.stats.link_changes_sent, 2);
}

/// RSS parameters for `channels` channels with `key`.
fn rss_parameters(channels: u32, key: &[u8; 40]) -> Vec<u8> {
    let table_offset = core::mem::size_of::<rndis::RssParameters>();
    let key_offset = table_offset + 128 * 4;
    let parameters = rndis::RssParameters {
        header: rndis::NdisObjectHeader {
            object_type: rndis::object_type::RSS_PARAMETERS,
            revision: rndis::RSS_PARAMETERS_REVISION_2,
            size: (rndis::RSS_PARAMETERS_SIZE_REVISION_2 as u16).into(),
        },
        hash_information: (rndis::rss_hash::FUNCTION_TOEPLITZ
            | rndis::rss_hash::IPV4
            | rndis::rss_hash::TCP_IPV4)
            .into(),
        indirection_table_size: (128 * 4u16).into(),
        indirection_table_offset: (table_offset as u32).into(),
        hash_secret_key_size: 40.into(),
        hash_secret_key_offset: (key_offset as u32).into(),
        ..Default::default()
    };
    let mut bytes = parameters.as_bytes().to_vec();
    for entry in 0..128u32 {
        bytes.extend_from_slice(&(entry % channels).to_le_bytes());
    }
    bytes.extend_from_slice(key);
    bytes
}

fn tcp_frame(source_port: u16) -> Vec<u8> {
    let mut frame = alloc::vec![0u8; 14 + 20 + 20];
    frame[..6].copy_from_slice(&GUEST_MAC);
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    frame[14] = 0x45;
    frame[14 + 9] = 6;
    frame[14 + 12..14 + 16].copy_from_slice(&[10, 0, 2, 2]);
    frame[14 + 16..14 + 20].copy_from_slice(&[10, 0, 2, 15]);
    frame[34..36].copy_from_slice(&source_port.to_be_bytes());
    frame[36..38].copy_from_slice(&80u16.to_be_bytes());
    frame
}

#[test]
fn sub_channels_share_the_receive_buffer_and_rss_spreads_flows() {
    let mut rig = rig();
    rig.up();
    let request = nvsp::SubchannelRequest {
        operation: nvsp::SUBCHANNEL_ALLOCATE.into(),
        num_subchannels: 2.into(),
    };
    let id = rig.send(0, nvsp_type::SUBCHANNEL, request.as_bytes());
    let (message_type, payload) = rig.completion(0, id);
    assert_eq!(message_type, nvsp_type::SUBCHANNEL);
    assert_eq!(
        (le32(&payload, 0), le32(&payload, 4)),
        (nvsp::status::SUCCESS, 2)
    );
    assert_eq!(rig.controller.sub_channels_requested.take(), Some(2));
    // The server offers them; the guest opens both.
    rig.open_channel();
    rig.open_channel();
    rig.step();
    // The send table goes out on the primary once they are open.
    let seen = rig.host_sent(0);
    let [FromHost::InBand { payload }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    let message = nvsp::parse(payload).unwrap();
    assert_eq!(message.message_type, nvsp_type::SEND_INDIRECTION_TABLE);
    let table = message.send_table(nvsp::version::V61).unwrap();
    assert_eq!(table.len(), nvsp::SEND_TABLE_ENTRIES);
    assert!(table.iter().all(|&entry| entry < 3));
    // A bad table is refused; a good one spreads the flows.
    let mut bad = rss_parameters(3, &[7; 40]);
    bad[core::mem::size_of::<rndis::RssParameters>()..][..4].copy_from_slice(&9u32.to_le_bytes());
    assert_eq!(
        rig.set(oid::GEN_RECEIVE_SCALE_PARAMETERS, &bad),
        rndis::status::INVALID_DATA
    );
    let key: [u8; 40] = core::array::from_fn(|i| (i as u8).wrapping_mul(37).wrapping_add(11));
    assert_eq!(
        rig.set(oid::GEN_RECEIVE_SCALE_PARAMETERS, &rss_parameters(3, &key)),
        rndis::status::SUCCESS
    );
    assert_eq!(rig.controller.rss_table().len(), 128);
    let mut expected = [0usize; 3];
    for port in 0..60u16 {
        let frame = tcp_frame(40000 + port);
        let (channel, _, _) = rig.controller.rss.channel_for(&frame).unwrap();
        expected[channel as usize] += 1;
        rig.net.push_to_guest(&frame);
    }
    rig.step();
    // 60 frames, 37 sections: the guest completes and more come, in rounds.
    let mut got = [0usize; 3];
    for _ in 0..10 {
        for (channel, count) in got.iter_mut().enumerate() {
            for (id, frames) in rig.received_frames(channel) {
                *count += frames.len();
                rig.complete_receive(channel, id);
            }
        }
    }
    assert_eq!(got, expected);
    assert!(got.iter().all(|&n| n > 0), "{got:?}");
    assert_eq!(rig.controller.sections_in_use(), 0);
    // Control on a sub-channel is refused.
    let mut out = [0u8; 32];
    let len = rndis::write_request_id(&mut out, rndis_type::KEEPALIVE, 5).unwrap();
    assert_eq!(
        rig.send_rndis(1, nvsp::channel_type::CONTROL, 0, &out[..len]),
        nvsp::status::INVALID_RNDIS_PACKET
    );
    // A count beyond what the host offers.
    let request = nvsp::SubchannelRequest {
        operation: nvsp::SUBCHANNEL_ALLOCATE.into(),
        num_subchannels: 9.into(),
    };
    let id = rig.send(0, nvsp_type::SUBCHANNEL, request.as_bytes());
    assert_eq!(le32(&rig.completion(0, id).1, 0), nvsp::status::FAILURE);
    // A sub-channel closing gives its held sections back.
    rig.net.push_to_guest(&tcp_frame(40000));
    rig.step();
    let held = rig.controller.sections_in_use();
    assert_eq!(held, 1);
    for channel in [1u32, 2] {
        rig.controller.forget_channel(30 + channel);
    }
    assert!(rig.controller.sections_in_use() <= held);
}

/// The first receive packet after `fault` with one frame pushed.
fn receive_with(fault: NetFault) -> (Rig, Vec<FromHost>) {
    let mut rig = rig();
    rig.up();
    rig.controller.inject(fault);
    rig.net.push_to_guest(&frame_to_guest(100, 1));
    rig.step();
    let seen = rig.host_sent(0);
    assert_eq!(rig.controller.stats.faults_injected, 1, "{fault:?}");
    (rig, seen)
}

#[test]
fn receive_faults_make_the_host_hostile() {
    let receive_len = (RECEIVE_PAGES.end - RECEIVE_PAGES.start) * PAGE;
    let (_, seen) = receive_with(NetFault::RangeOutside);
    let [FromHost::Receive { ranges, .. }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    assert!(u64::from(ranges[0].0) + u64::from(ranges[0].1) > receive_len);

    let (rig, seen) = receive_with(NetFault::RangeMisaligned);
    let [FromHost::Receive { ranges, .. }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    let (size, _) = rig.controller.receive_sections().unwrap();
    assert_ne!(ranges[0].0 % size, 0);

    let (_, seen) = receive_with(NetFault::BadPageSet);
    let [FromHost::Receive { set_id, .. }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    assert_ne!(*set_id, nvsp::RECEIVE_BUFFER_ID);

    let (rig, seen) = receive_with(NetFault::FrameTooLong);
    let [FromHost::Receive { ranges, .. }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    let bytes = rig.receive_bytes(ranges[0].0, ranges[0].1);
    let message = rndis::parse(&bytes).unwrap();
    assert!(message.packet().unwrap().data.len() > 1518);

    let (rig, seen) = receive_with(NetFault::RndisLength);
    let [FromHost::Receive { ranges, .. }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    let bytes = rig.receive_bytes(ranges[0].0, ranges[0].1);
    assert!(rndis::parse(&bytes).unwrap().packet().is_err());

    // Into a section the guest still holds.
    let mut rig = self::rig();
    rig.up();
    rig.net.push_to_guest(&frame_to_guest(100, 1));
    rig.step();
    let seen = rig.host_sent(0);
    let [FromHost::Receive { ranges: held, .. }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    let held = held[0].0;
    rig.controller.inject(NetFault::SectionInUse);
    rig.net.push_to_guest(&frame_to_guest(100, 2));
    rig.step();
    let seen = rig.host_sent(0);
    let [FromHost::Receive { ranges, .. }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    assert_eq!(ranges[0].0, held, "that section is the guest's still");
}

#[test]
fn other_faults_make_the_host_hostile() {
    // Each fault at the next step, without guest traffic.
    let step_with = |fault: NetFault| {
        let mut rig = self::rig();
        rig.up();
        rig.controller.inject(fault);
        rig.step();
        let seen = rig.host_sent(0);
        assert_eq!(rig.controller.stats.faults_injected, 1, "{fault:?}");
        (rig, seen)
    };
    let (_, seen) = step_with(NetFault::UnknownCompletion);
    assert!(matches!(
        seen.as_slice(),
        [FromHost::Completion { transaction_id, message_type, .. }]
            if *transaction_id >> 48 == 0xBAD0 && *message_type == nvsp_type::SEND_RNDIS_PACKET_COMPLETE
    ));
    let (_, seen) = step_with(NetFault::BadSendTable);
    let [FromHost::InBand { payload }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    let table = nvsp::parse(payload)
        .unwrap()
        .send_table(nvsp::version::V61)
        .unwrap();
    assert!(table.iter().all(|&entry| entry as usize >= MAX_CHANNELS));
    let (rig, seen) = step_with(NetFault::UnsolicitedControl);
    let [FromHost::Receive { ranges, .. }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    let bytes = rig.receive_bytes(ranges[0].0, ranges[0].1);
    let message = rndis::parse(&bytes).unwrap();
    assert_eq!(message.message_type, rndis_type::QUERY_COMPLETE);
    assert_eq!(message.request_id().unwrap(), 0xBAD0_0001);
    let (rig, seen) = step_with(NetFault::BadIndicateStatus);
    let [FromHost::Receive { ranges, .. }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    let bytes = rig.receive_bytes(ranges[0].0, ranges[0].1);
    assert!(rndis::parse(&bytes).unwrap().indicate_status().is_err());
    let (_, seen) = step_with(NetFault::UnknownNvsp);
    let [FromHost::InBand { payload }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    assert_eq!(nvsp::parse(payload).unwrap().message_type, 99);
    let (_, seen) = step_with(NetFault::ShortNvsp);
    let [FromHost::InBand { payload }] = seen.as_slice() else {
        panic!("{seen:?}");
    };
    let message = nvsp::parse(payload).unwrap();
    assert_eq!(message.message_type, nvsp_type::SEND_INDIRECTION_TABLE);
    assert!(message.send_table(nvsp::version::V61).is_err());

    // On the guest's sends: completed twice, or never.
    let mut rig = self::rig();
    rig.up();
    rig.controller.inject(NetFault::DuplicateCompletion);
    let message = packet_message(&frame_to_guest(60, 1), &[]);
    rig.memory.write(SEND_PAGES.start * PAGE, &message).unwrap();
    let request = nvsp::SendRndisPacket {
        channel_type: 0.into(),
        send_buffer_section_index: 0.into(),
        send_buffer_section_size: (message.len() as u32).into(),
    };
    let id = rig.send(0, nvsp_type::SEND_RNDIS_PACKET, request.as_bytes());
    let completions = rig
        .host_sent(0)
        .into_iter()
        .filter(|seen| matches!(seen, FromHost::Completion { transaction_id, .. } if *transaction_id == id))
        .count();
    assert_eq!(completions, 2);
    rig.controller.inject(NetFault::WithholdTx { count: 2 });
    for _ in 0..3 {
        rig.send(0, nvsp_type::SEND_RNDIS_PACKET, request.as_bytes());
    }
    let completions = rig
        .host_sent(0)
        .into_iter()
        .filter(|seen| matches!(seen, FromHost::Completion { .. }))
        .count();
    assert_eq!(completions, 1, "two withheld, the third completed");
    assert_eq!(rig.net.counters().tx_frames, 4, "withheld frames still go");
}

#[test]
fn faults_parse_by_name() {
    assert_eq!(
        NetFault::parse(&["range-outside"]),
        Some(NetFault::RangeOutside)
    );
    assert_eq!(
        NetFault::parse(&["withhold-tx", "3"]),
        Some(NetFault::WithholdTx { count: 3 })
    );
    assert_eq!(NetFault::parse(&["withhold-tx"]), None);
    assert_eq!(NetFault::parse(&["nonsense"]), None);
    for name in NetFault::USAGE.split(" | ") {
        let words: Vec<&str> = name
            .split_whitespace()
            .map(|w| if w == "COUNT" { "1" } else { w })
            .collect();
        assert!(NetFault::parse(&words).is_some(), "{name}");
    }
}

#[test]
fn completions_after_a_revoke_are_not_blamed() {
    let mut rig = rig();
    rig.up();
    rig.net.push_to_guest(&frame_to_guest(100, 1));
    rig.step();
    let held = rig.received_frames(0);
    assert_eq!(held.len(), 1);
    let revoke = nvsp::RevokeBuffer {
        id: nvsp::RECEIVE_BUFFER_ID.into(),
    };
    rig.send(0, nvsp_type::REVOKE_RECEIVE_BUFFER, revoke.as_bytes());
    assert_eq!(rig.controller.receive_sections(), None);
    rig.complete_receive(0, held[0].0);
    assert_eq!(rig.controller.stats.unknown_completions, 0);
    assert_eq!(rig.controller.stats.rule_violations, 0);
    // Frames now have nowhere to go.
    rig.net.push_to_guest(&frame_to_guest(100, 2));
    rig.step();
    assert!(rig.host_sent(0).is_empty());
    assert_eq!(rig.controller.stats.rx_dropped_no_buffer, 1);
    // Once only: a second completion is one for nothing.
    rig.complete_receive(0, held[0].0);
    assert_eq!(rig.controller.stats.unknown_completions, 1);
}

#[test]
fn a_reopened_primary_starts_from_nothing() {
    let mut rig = rig();
    rig.up();
    rig.net.push_to_guest(&frame_to_guest(100, 1));
    rig.step();
    assert_eq!(rig.controller.sections_in_use(), 1);
    rig.controller.forget_channel(30);
    assert!(rig.controller.version().is_none());
    assert_eq!(rig.controller.sections_in_use(), 0);
    assert!(!rig.controller.ready());
    rig.controller.channel_opened(0, 30);
    assert!(rig.controller.version().is_none());
}

#[test]
fn random_guest_bytes_never_panic_the_host() {
    // A seeded xorshift: reproducible, no dependency.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let types = [
        nvsp_type::INIT,
        nvsp_type::SEND_NDIS_CONFIG,
        nvsp_type::SEND_NDIS_VERSION,
        nvsp_type::SEND_RECEIVE_BUFFER,
        nvsp_type::SEND_SEND_BUFFER,
        nvsp_type::REVOKE_RECEIVE_BUFFER,
        nvsp_type::REVOKE_SEND_BUFFER,
        nvsp_type::SEND_RNDIS_PACKET,
        nvsp_type::SUBCHANNEL,
        nvsp_type::SWITCH_DATA_PATH,
        nvsp_type::SEND_INDIRECTION_TABLE,
    ];
    let mut rig = rig();
    rig.up();
    for round in 0..3000u64 {
        let pick = next();
        // Random RNDIS bytes in a send-buffer section, sometimes a valid
        // header in front so the parser gets further.
        let mut rndis_bytes: Vec<u8> = (0..(pick % 200) as usize).map(|_| next() as u8).collect();
        if pick & 1 == 0 && rndis_bytes.len() >= 8 {
            let kind = [1u32, 2, 4, 5, 6, 8, 3, 7][(pick >> 8) as usize % 8];
            rndis_bytes[..4].copy_from_slice(&kind.to_le_bytes());
            let len = (rndis_bytes.len() as u32).min((pick >> 16) as u32 % 256);
            rndis_bytes[4..8].copy_from_slice(&len.to_le_bytes());
        }
        rig.memory
            .write(
                SEND_PAGES.start * PAGE + (pick >> 20) % 4 * 6144,
                &rndis_bytes,
            )
            .unwrap();
        let message_type = types[(pick >> 24) as usize % types.len()];
        let mut payload: Vec<u8> = (0..16).map(|_| next() as u8).collect();
        if message_type == nvsp_type::SEND_RNDIS_PACKET && pick & 2 == 0 {
            payload[4..8].copy_from_slice(&(((pick >> 20) % 5) as u32).to_le_bytes());
            payload[8..12].copy_from_slice(&(rndis_bytes.len() as u32).to_le_bytes());
        }
        let id = rig.next_id;
        rig.next_id += 1;
        let bytes = Rig::nvsp(message_type, &payload);
        let _ = rig.channels[0]
            .writer
            .write_in_band(id, pick & 4 == 0, &bytes);
        if pick % 7 == 0 {
            let _ = rig.channels[0].writer.write_completion(
                next() % 64,
                &Rig::nvsp(nvsp_type::SEND_RNDIS_PACKET_COMPLETE, &[1, 0, 0, 0]),
            );
        }
        if pick % 11 == 0 {
            rig.net
                .push_to_guest(&frame_to_guest(60 + (pick % 1400) as usize, round as u8));
        }
        rig.step();
        // The guest keeps reading (and completing what it received).
        for seen in rig.host_sent(0) {
            if let FromHost::Receive { transaction_id, .. } = seen {
                if pick % 3 != 0 {
                    rig.complete_receive(0, transaction_id);
                }
            }
        }
    }
    let stats = rig.controller.stats;
    assert!(stats.rule_violations > 100, "{stats:?}");
    assert!(stats.nvsp_messages > 2000, "{stats:?}");
    assert!(rig.channels[0].endpoint.broken.is_none());
}

/// The host's own cost per frame, both ways, with a guest that completes
/// at once (run with `--ignored --nocapture`, in release for numbers).
#[test]
#[ignore]
fn throughput_of_the_host_alone() {
    extern crate std;
    const FRAMES: u64 = 200_000;
    let mut rig = rig();
    rig.up();
    // Receive: the generator's 1514-byte frames up, completed by the guest.
    assert!(rig.net.generate(&frame_to_guest(1514, 7), FRAMES));
    let start = std::time::Instant::now();
    let mut received = 0u64;
    for _ in 0..FRAMES * 4 {
        rig.step();
        for (id, frames) in rig.received_frames(0) {
            received += frames.len() as u64;
            rig.complete_receive(0, id);
        }
        if received == FRAMES {
            break;
        }
    }
    let rx = start.elapsed();
    assert_eq!(
        received,
        FRAMES,
        "{:?} {:?}",
        rig.controller.stats,
        rig.net.counters()
    );
    // Transmit: 1514-byte frames from send-buffer sections, 3 per packet
    // (as many as fit in 6144 bytes).
    rig.net.set_guest_frames(GuestFrames::Discard);
    let mut batch = Vec::new();
    for _ in 0..3 {
        batch.extend_from_slice(&packet_message(&frame_to_guest(1514, 1), &[]));
    }
    let sends = FRAMES / 3;
    let start = std::time::Instant::now();
    for section in 0..sends {
        let status = rig.send_rndis(0, nvsp::channel_type::DATA, (section % 4) as u32, &batch);
        assert_eq!(status, nvsp::status::SUCCESS);
    }
    let tx = start.elapsed();
    assert_eq!(rig.net.counters().tx_frames, sends * 3);
    let rate = |d: core::time::Duration, frames: u64| frames as f64 / d.as_secs_f64();
    let (rx, tx) = (rate(rx, FRAMES), rate(tx, sends * 3));
    std::println!(
        "host + scripted guest, one thread: rx {rx:.0} frames/s ({:.0} MB/s), tx {tx:.0} frames/s ({:.0} MB/s) of 1514 bytes",
        rx * 1514.0 / 1e6,
        tx * 1514.0 / 1e6
    );
}

#[test]
fn a_header_in_the_send_buffer_and_the_frame_in_guest_pages() {
    // vsc-netvsc's GPA-direct shape: two ranges, the RNDIS header in a
    // place of the send buffer, the frame in the client's buffer (here
    // crossing a page), no section index.
    let mut rig = rig();
    rig.up();
    let frame = frame_to_guest(1514, 42);
    let mut header = alloc::vec![0u8; 64];
    let len = rndis::write_packet_header(&mut header, frame.len(), &[]).unwrap();
    header.truncate(len);
    let header_gpa = SEND_PAGES.start * PAGE + 3 * u64::from(SEND_SECTION_SIZE) + 128;
    let frame_gpa = DATA_PAGE * PAGE + 4096 - 700;
    rig.memory.write(header_gpa, &header).unwrap();
    rig.memory.write(frame_gpa, &frame).unwrap();
    let request = nvsp::SendRndisPacket {
        channel_type: nvsp::channel_type::DATA.into(),
        send_buffer_section_index: nvsp::NO_SEND_BUFFER_SECTION.into(),
        send_buffer_section_size: 0.into(),
    };
    let payload = Rig::nvsp(nvsp_type::SEND_RNDIS_PACKET, request.as_bytes());
    let header_pfn = [header_gpa / PAGE];
    let frame_pfns = [frame_gpa / PAGE, frame_gpa / PAGE + 1];
    let _ = rig.channels[0]
        .writer
        .write_gpa_direct(
            500,
            true,
            &[
                GpaRange {
                    byte_offset: (header_gpa % PAGE) as u32,
                    byte_count: header.len() as u32,
                    pfns: &header_pfn,
                },
                GpaRange {
                    byte_offset: (frame_gpa % PAGE) as u32,
                    byte_count: frame.len() as u32,
                    pfns: &frame_pfns,
                },
            ],
            &payload,
        )
        .unwrap();
    rig.step();
    assert_eq!(le32(&rig.completion(0, 500).1, 0), nvsp::status::SUCCESS);
    assert_eq!(rig.net.take_sent().unwrap(), frame);
    assert_eq!(rig.controller.stats.rule_violations, 0);
}
