//! The NIC host behind the whole simulated bus: a scripted guest connects,
//! opens the synthetic NIC's channel, shares its receive and send buffers
//! through GPADLs, brings NVSP and RNDIS up through the ring, exchanges
//! frames with a memory network, asks for sub-channels (which the bus
//! offers), hears the link go down, and has the NIC rescinded and offered
//! again.
#![forbid(unsafe_code)]

mod common;

use common::vmbus::*;
use hv_interface::{GuestMemory, Hypervisor};
use hvsim::net::{GuestFrames, MemoryNet};
use hvsim::vmbus::{DeviceConfig, DeviceKind, ServerConfig};
use std::time::Duration;
use vmbus_protocol::messages::ChannelMessage;
use vmbus_protocol::nvsp::{self, message_type as nvsp_type};
use vmbus_protocol::packet::{parse_packet, PacketKind};
use vmbus_protocol::rndis::{self, message_type as rndis_type};
use vmbus_protocol::VmbusMessage;
use zerocopy::IntoBytes;

const NIC_INSTANCE: uuid::Uuid = uuid::uuid!("11111111-2222-3333-4444-0000000000ee");
const RECEIVE_GPA: u64 = 0x30_0000;
const RECEIVE_PAGES: u64 = 16;
const SEND_GPA: u64 = 0x32_0000;
const SEND_PAGES: u64 = 6;
const MAC: [u8; 6] = [0x00, 0x15, 0x5d, 0x00, 0x00, 0x01];

fn nic_config() -> ServerConfig {
    let mut config = ServerConfig {
        devices: vec![DeviceConfig::ic(DeviceKind::Network, NIC_INSTANCE)],
        ..ServerConfig::default()
    };
    config.network.max_sub_channels = 2;
    config
}

fn nvsp_message(message_type: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; nvsp::GUEST_MESSAGE_SIZE];
    nvsp::write_message(&mut bytes, message_type, payload).unwrap();
    bytes
}

/// What the host sent: a completion/in-band (id, type, NVSP bytes) or a
/// receive (id, channel type, ranges).
#[derive(Debug)]
enum Seen {
    Packet(u64, u16, Vec<u8>),
    Receive(u64, u32, Vec<(u32, u32)>),
}

fn next_seen(h: &mut VmbusHarness, rings: &mut GuestRings) -> Option<Seen> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(bytes) = h.read_raw_packet(rings).expect("well-formed ring") {
            let packet = parse_packet(&bytes).expect("well-formed packet");
            return Some(match packet.kind {
                PacketKind::TransferPages {
                    transfer_page_set_id,
                    ranges,
                } => {
                    assert_eq!(transfer_page_set_id, nvsp::RECEIVE_BUFFER_ID);
                    let message = nvsp::parse(packet.payload).unwrap();
                    assert_eq!(message.message_type, nvsp_type::SEND_RNDIS_PACKET);
                    let request: nvsp::SendRndisPacket = message.payload_as().unwrap();
                    Seen::Receive(
                        packet.transaction_id,
                        request.channel_type.get(),
                        ranges
                            .iter()
                            .map(|r| (r.byte_offset.get(), r.byte_count.get()))
                            .collect(),
                    )
                }
                PacketKind::Completion => {
                    Seen::Packet(packet.transaction_id, 0xB, packet.payload.to_vec())
                }
                _ => Seen::Packet(packet.transaction_id, 0x6, packet.payload.to_vec()),
            });
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        let _ = h.guest.wait_interrupt(Some(2_000_000));
    }
}

/// An NVSP request in band; its completion's NVSP bytes.
fn call(
    h: &mut VmbusHarness,
    rings: &mut GuestRings,
    id: u64,
    message_type: u32,
    payload: &[u8],
) -> Vec<u8> {
    if h.write_packet(rings, id, &nvsp_message(message_type, payload), true) {
        h.signal_channel(rings);
    }
    match next_seen(h, rings) {
        Some(Seen::Packet(got, 0xB, bytes)) if got == id => bytes,
        other => panic!("completion of {id} expected, got {other:?}"),
    }
}

fn status_of(bytes: &[u8]) -> u32 {
    u32::from_le_bytes(bytes[4..8].try_into().unwrap())
}

/// RNDIS bytes through send-buffer section 0; waits for the send's
/// completion and, for a control request, returns the answer the host
/// put in the receive buffer (completing its receive packet).
fn rndis_call(
    h: &mut VmbusHarness,
    rings: &mut GuestRings,
    id: u64,
    bytes: &[u8],
    control: bool,
) -> Option<Vec<u8>> {
    h.memory.write(SEND_GPA, bytes).unwrap();
    let request = nvsp::SendRndisPacket {
        channel_type: (if control { 1u32 } else { 0 }).into(),
        send_buffer_section_index: 0.into(),
        send_buffer_section_size: (bytes.len() as u32).into(),
    };
    if h.write_packet(
        rings,
        id,
        &nvsp_message(nvsp_type::SEND_RNDIS_PACKET, request.as_bytes()),
        true,
    ) {
        h.signal_channel(rings);
    }
    let mut answer = None;
    let mut completed = false;
    while !completed || (control && answer.is_none()) {
        match next_seen(h, rings).expect("the host answers") {
            Seen::Packet(got, 0xB, bytes) if got == id => {
                assert_eq!(status_of(&bytes), nvsp::status::SUCCESS);
                completed = true;
            }
            Seen::Receive(receive_id, channel_type, ranges) => {
                assert_eq!(channel_type, nvsp::channel_type::CONTROL);
                let (offset, count) = ranges[0];
                let mut bytes = vec![0u8; count as usize];
                h.memory
                    .read(RECEIVE_GPA + u64::from(offset), &mut bytes)
                    .unwrap();
                answer = Some(bytes);
                complete_receive(h, rings, receive_id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    answer
}

fn complete_receive(h: &mut VmbusHarness, rings: &mut GuestRings, id: u64) {
    let complete = nvsp::SendRndisPacketComplete {
        status: nvsp::status::SUCCESS.into(),
    };
    let bytes = nvsp_message(nvsp_type::SEND_RNDIS_PACKET_COMPLETE, complete.as_bytes());
    // A completion packet (type 0xB), as netvsc sends it.
    if write_completion(h, rings, id, &bytes) {
        h.signal_channel(rings);
    }
}

/// Writes a completion packet into the out ring (write_packet writes
/// in-band packets only).
fn write_completion(h: &mut VmbusHarness, rings: &mut GuestRings, id: u64, payload: &[u8]) -> bool {
    use vmbus_protocol::packet::{control, descriptor_for, PacketType};
    let descriptor = descriptor_for(PacketType::Completion, 0, payload.len(), id, false).unwrap();
    let mut bytes = descriptor.as_bytes().to_vec();
    bytes.extend_from_slice(payload);
    bytes.resize(descriptor.len8.get() as usize * 8, 0);
    let start = rings.out_write;
    bytes.extend_from_slice(&((start as u64) << 32).to_le_bytes());
    let size = rings.data_size();
    for (i, byte) in bytes.iter().enumerate() {
        let offset = (start as usize + i) % size as usize;
        h.memory
            .write(rings.out_data() + offset as u64, &[*byte])
            .unwrap();
    }
    let read = h
        .memory
        .load_u32(rings.out_control() + control::READ_INDEX as u64)
        .unwrap();
    rings.out_write = (start + bytes.len() as u32) % size;
    h.memory
        .store_u32(
            rings.out_control() + control::WRITE_INDEX as u64,
            rings.out_write,
        )
        .unwrap();
    read == start
}

#[test]
fn a_guest_brings_the_nic_up_exchanges_frames_and_survives_rescind() {
    let mut h = start_vmbus("network", nic_config());
    let (net, wire) = MemoryNet::new(64, GuestFrames::Keep);
    assert!(h.with(|sim| sim.net_set_backend(Box::new(net))));
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, NIC_INSTANCE);
    assert_eq!(
        offers
            .iter()
            .find(|o| o.child_relid.get() == relid)
            .unwrap()
            .interface_type
            .to_uuid(),
        vmbus_protocol::guid::class::NIC
    );
    let mut rings = h.open_channel(relid);
    // The buffers, shared on the primary.
    let receive_pfns: Vec<u64> = (0..RECEIVE_PAGES).map(|p| RECEIVE_GPA / 4096 + p).collect();
    let send_pfns: Vec<u64> = (0..SEND_PAGES).map(|p| SEND_GPA / 4096 + p).collect();
    assert_eq!(
        h.create_gpadl(relid, 0x2001, &receive_pfns)
            .creation_status
            .get(),
        0
    );
    assert_eq!(
        h.create_gpadl(relid, 0x2002, &send_pfns)
            .creation_status
            .get(),
        0
    );

    let init = nvsp::Init {
        min_protocol_version: nvsp::version::V61.into(),
        max_protocol_version: nvsp::version::V61.into(),
    };
    let answer = call(&mut h, &mut rings, 1, nvsp_type::INIT, init.as_bytes());
    assert_eq!(
        u32::from_le_bytes(answer[0..4].try_into().unwrap()),
        nvsp_type::INIT_COMPLETE
    );
    assert_eq!(
        u32::from_le_bytes(answer[12..16].try_into().unwrap()),
        nvsp::status::SUCCESS
    );
    for (message_type, payload) in [
        (
            nvsp_type::SEND_NDIS_CONFIG,
            nvsp::SendNdisConfig {
                mtu: 1514.into(),
                ..Default::default()
            }
            .as_bytes()
            .to_vec(),
        ),
        (
            nvsp_type::SEND_NDIS_VERSION,
            nvsp::SendNdisVersion {
                ndis_major_version: 6.into(),
                ndis_minor_version: 30.into(),
            }
            .as_bytes()
            .to_vec(),
        ),
    ] {
        if h.write_packet(&mut rings, 0, &nvsp_message(message_type, &payload), false) {
            h.signal_channel(&rings);
        }
    }
    let buffer = |gpadl: u32, id: u16| nvsp::SendBuffer {
        gpadl_handle: gpadl.into(),
        id: id.into(),
        reserved: 0.into(),
    };
    let answer = call(
        &mut h,
        &mut rings,
        2,
        nvsp_type::SEND_RECEIVE_BUFFER,
        buffer(0x2001, nvsp::RECEIVE_BUFFER_ID).as_bytes(),
    );
    assert_eq!(status_of(&answer), nvsp::status::SUCCESS);
    let section_size = u32::from_le_bytes(answer[16..20].try_into().unwrap());
    assert_eq!(section_size, 1728);
    let answer = call(
        &mut h,
        &mut rings,
        3,
        nvsp_type::SEND_SEND_BUFFER,
        buffer(0x2002, nvsp::SEND_BUFFER_ID).as_bytes(),
    );
    assert_eq!(status_of(&answer), nvsp::status::SUCCESS);

    // RNDIS up, the MAC, the packet filter.
    let mut out = [0u8; 128];
    let len = rndis::write_initialize(&mut out, 1, rndis::GUEST_MAX_TRANSFER_SIZE).unwrap();
    let answer = rndis_call(&mut h, &mut rings, 4, &out[..len], true).unwrap();
    assert_eq!(
        rndis::parse(&answer).unwrap().message_type,
        rndis_type::INITIALIZE_COMPLETE
    );
    let len = rndis::write_oid_request(
        &mut out,
        rndis_type::QUERY,
        2,
        rndis::oid::IEEE_802_3_PERMANENT_ADDRESS,
        &[],
    )
    .unwrap();
    let answer = rndis_call(&mut h, &mut rings, 5, &out[..len], true).unwrap();
    let message = rndis::parse(&answer).unwrap();
    assert_eq!(message.query_complete().unwrap().1, &MAC[..]);
    let filter = (rndis::packet_filter::DIRECTED | rndis::packet_filter::BROADCAST).to_le_bytes();
    let len = rndis::write_oid_request(
        &mut out,
        rndis_type::SET,
        3,
        rndis::oid::GEN_CURRENT_PACKET_FILTER,
        &filter,
    )
    .unwrap();
    rndis_call(&mut h, &mut rings, 6, &out[..len], true).unwrap();

    // A frame out...
    let mut frame = vec![0xA5u8; 60];
    frame[..6].copy_from_slice(&[0xFF; 6]);
    let mut message = vec![0u8; 64];
    let len = rndis::write_packet_header(&mut message, frame.len(), &[]).unwrap();
    message.truncate(len);
    message.extend_from_slice(&frame);
    assert!(rndis_call(&mut h, &mut rings, 7, &message, false).is_none());
    assert_eq!(wire.take_sent().unwrap(), frame);
    // ... and one in.
    let mut incoming = vec![0x5Au8; 100];
    incoming[..6].copy_from_slice(&MAC);
    assert!(wire.push_to_guest(&incoming));
    h.settle();
    let Some(Seen::Receive(id, channel_type, ranges)) = next_seen(&mut h, &mut rings) else {
        panic!("a receive");
    };
    assert_eq!(channel_type, nvsp::channel_type::DATA);
    let mut bytes = vec![0u8; ranges[0].1 as usize];
    h.memory
        .read(RECEIVE_GPA + u64::from(ranges[0].0), &mut bytes)
        .unwrap();
    assert_eq!(
        rndis::parse(&bytes).unwrap().packet().unwrap().data,
        &incoming[..]
    );
    complete_receive(&mut h, &mut rings, id);

    // Sub-channels: the bus offers them.
    let request = nvsp::SubchannelRequest {
        operation: nvsp::SUBCHANNEL_ALLOCATE.into(),
        num_subchannels: 2.into(),
    };
    let answer = call(
        &mut h,
        &mut rings,
        8,
        nvsp_type::SUBCHANNEL,
        request.as_bytes(),
    );
    assert_eq!(status_of(&answer), nvsp::status::SUCCESS);
    let mut sub_offers = Vec::new();
    while let Some(message) = h.next(Duration::from_secs(2)) {
        if let ChannelMessage::OfferChannel(offer) = message {
            assert_eq!(offer.interface_instance.to_uuid(), NIC_INSTANCE);
            assert_ne!(offer.sub_channel_index.get(), 0);
            sub_offers.push(offer.child_relid.get());
            if sub_offers.len() == 2 {
                break;
            }
        }
    }
    assert_eq!(sub_offers.len(), 2);
    for &sub in &sub_offers {
        h.open_channel(sub);
    }
    // Once they are open: the send indirection table on the primary.
    h.settle();
    match next_seen(&mut h, &mut rings) {
        Some(Seen::Packet(_, 0x6, bytes)) => {
            let message = nvsp::parse(&bytes).unwrap();
            assert_eq!(message.message_type, nvsp_type::SEND_INDIRECTION_TABLE);
            assert!(message
                .send_table(nvsp::version::V61)
                .unwrap()
                .iter()
                .all(|&c| c < 3));
        }
        other => panic!("send table expected, got {other:?}"),
    }

    // The link goes down: INDICATE_STATUS through the receive buffer.
    assert!(h.with(|sim| sim.net_set_link(false)));
    h.settle();
    let Some(Seen::Receive(id, channel_type, ranges)) = next_seen(&mut h, &mut rings) else {
        panic!("an indication");
    };
    assert_eq!(channel_type, nvsp::channel_type::CONTROL);
    let mut bytes = vec![0u8; ranges[0].1 as usize];
    h.memory
        .read(RECEIVE_GPA + u64::from(ranges[0].0), &mut bytes)
        .unwrap();
    assert_eq!(
        rndis::parse(&bytes).unwrap().indicate_status().unwrap().0,
        rndis::status::MEDIA_DISCONNECT
    );
    complete_receive(&mut h, &mut rings, id);
    h.settle();
    let stats = h.with(|sim| sim.net().unwrap().stats);
    assert_eq!(
        stats.rule_violations,
        0,
        "{:?}",
        h.with(|sim| sim.net().unwrap().violations.clone())
    );
    assert_eq!((stats.tx_frames, stats.rx_frames), (1, 1));
    assert_eq!(stats.sub_channels_offered, 2);

    // Rescind: the sub-channels and the primary; offered again once released.
    assert!(h.with(|sim| sim.rescind(relid)));
    let mut rescinded = Vec::new();
    while let Some(message) = h.next(Duration::from_secs(2)) {
        if let ChannelMessage::RescindChannelOffer(rescind) = message {
            rescinded.push(rescind.child_relid.get());
            if rescinded.len() == 3 {
                break;
            }
        }
    }
    assert_eq!(rescinded.len(), 3);
    assert_eq!(
        h.with(|sim| sim.net_offer_again()),
        None,
        "not released yet"
    );
    for gpadl in [0x2001u32, 0x2002, 0x1000 + relid] {
        let mut teardown = vmbus_protocol::messages::GpadlTeardown::empty();
        teardown.child_relid = relid.into();
        teardown.gpadl_id = gpadl.into();
        h.send(&teardown);
        assert!(matches!(h.expect(), ChannelMessage::GpadlTorndown(_)));
    }
    for &released in &rescinded {
        if released != relid {
            let mut teardown = vmbus_protocol::messages::GpadlTeardown::empty();
            teardown.child_relid = released.into();
            teardown.gpadl_id = (0x1000 + released).into();
            h.send(&teardown);
            assert!(matches!(h.expect(), ChannelMessage::GpadlTorndown(_)));
        }
        let mut release = vmbus_protocol::messages::RelIdReleased::empty();
        release.child_relid = released.into();
        h.send(&release);
    }
    h.settle();
    let again = h.with(|sim| sim.net_offer_again()).expect("offered again");
    match h.expect() {
        ChannelMessage::OfferChannel(offer) => {
            assert_eq!(offer.child_relid.get(), again);
            assert_eq!(offer.interface_instance.to_uuid(), NIC_INSTANCE);
        }
        other => panic!("offer expected, got {other:?}"),
    }
    assert_eq!(h.with(|sim| sim.vmbus.stats.rule_violations), 0);
}
