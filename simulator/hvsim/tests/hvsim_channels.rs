//! Open channels driven by a scripted guest: the heartbeat, shutdown, time
//! sync and KVP hosts with their operator API, completions for generic
//! devices, the unnecessary-signal count, and a host that stops touching a
//! ring the guest broke.
#![forbid(unsafe_code)]

mod common;

use common::vmbus::*;
use hv_interface::GuestMemory;
use hvsim::channel::RingFault;
use hvsim::vmbus::DeviceKind;
use std::time::Duration;
use vmbus_protocol::ic::{
    self, HeartbeatMessage, KvpGetSetMessage, ShutdownMessage, TimesyncRefMessage,
};
use vmbus_protocol::packet::control;
use zerocopy::{FromBytes, IntoBytes};

fn open_ic(
    h: &mut VmbusHarness,
    instance: uuid::Uuid,
    versions: &[(u16, u16)],
) -> (u32, GuestRings, ic::Negotiated) {
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, instance);
    let mut rings = h.open_channel(relid);
    let chosen = h.answer_ic_negotiate(&mut rings, versions);
    h.settle();
    (relid, rings, chosen)
}

#[test]
fn heartbeat_host_records_the_guests_answer() {
    let mut h = start_vmbus("heartbeat", config());
    let (relid, mut rings, chosen) = open_ic(&mut h, HEARTBEAT_INSTANCE, &[(3, 0)]);
    assert_eq!(
        (chosen.message.major.get(), chosen.message.minor.get()),
        (3, 0)
    );
    assert!(h.with(|s| s.vmbus.endpoint(relid).unwrap().negotiated()));
    assert_eq!(h.with(|s| s.last_heartbeat()), None);
    // The first heartbeat goes out right after negotiation.
    let (header, body) = h.answer_ic(&mut rings, |body| {
        let mut message = HeartbeatMessage::read_from_prefix(body).unwrap().0;
        message.sequence = (message.sequence.get() + 1).into();
        message.as_bytes().to_vec()
    });
    assert_eq!(header.message_type.get(), ic::message_type::HEARTBEAT);
    let sent = HeartbeatMessage::read_from_prefix(&body[..])
        .unwrap()
        .0
        .sequence
        .get();
    h.settle();
    let last = h.with(|s| s.last_heartbeat()).expect("heartbeat recorded");
    assert_eq!(last.sequence, sent + 1);
    // The operator can ask for one now; a wrong answer is not recorded.
    assert!(h.with(|s| s.request_heartbeat()));
    h.answer_ic(&mut rings, |body| body.to_vec());
    h.settle();
    assert_eq!(h.with(|s| s.last_heartbeat()).unwrap().sequence, sent + 1);
    // Periodic heartbeats follow at the channel's interval.
    h.with(|s| {
        s.vmbus
            .endpoint_mut(relid)
            .unwrap()
            .ic
            .heartbeat_interval_ns = 20_000_000;
    });
    for _ in 0..2 {
        h.answer_ic(&mut rings, |body| {
            let mut message = HeartbeatMessage::read_from_prefix(body).unwrap().0;
            message.sequence = (message.sequence.get() + 1).into();
            message.as_bytes().to_vec()
        });
    }
    h.settle();
    assert!(h.with(|s| s.last_heartbeat()).unwrap().sequence > sent + 1);
    h.finish();
}

#[test]
fn shutdown_host_asks_and_reads_the_status() {
    let mut h = start_vmbus("shutdown", config());
    let (_, mut rings, chosen) = open_ic(&mut h, SHUTDOWN_INSTANCE, &[(3, 2), (3, 0)]);
    assert_eq!(
        (chosen.message.major.get(), chosen.message.minor.get()),
        (3, 2)
    );
    assert!(h.with(|s| s.request_shutdown(ic::shutdown_flags::REBOOT)));
    let (header, body) = h.answer_ic(&mut rings, |_| Vec::new());
    assert_eq!(header.message_type.get(), ic::message_type::SHUTDOWN);
    let request = ShutdownMessage::read_from_prefix(&body[..]).unwrap().0;
    assert_eq!(request.flags.get(), ic::shutdown_flags::REBOOT);
    h.settle();
    assert_eq!(h.with(|s| s.shutdown_status()), Some(ic::STATUS_OK));
    h.finish();
}

#[test]
fn timesync_host_sends_samples() {
    let mut h = start_vmbus("timesync", config());
    let (relid, mut rings, _) = open_ic(&mut h, TIMESYNC_INSTANCE, &[(4, 0)]);
    let time = 133_000_000_000_000_000u64;
    // The sample carries the partition reference time it was taken at.
    let reference_time = h.with(|s| {
        s.advance_clock(2_500_000_000);
        s.host.synic.reference_time()
    });
    assert_eq!(reference_time, 25_000_000);
    assert!(h.with(|s| s.send_time(time, ic::timesync_flags::SYNC)));
    let (header, body) = h.answer_ic(&mut rings, |body| body.to_vec());
    assert_eq!(header.message_type.get(), ic::message_type::TIMESYNC);
    let sample = TimesyncRefMessage::read_from_prefix(&body[..]).unwrap().0;
    assert_eq!(sample.parent_time.get(), time);
    assert_eq!(sample.vm_reference_time.get(), reference_time);
    assert_eq!(sample.flags, ic::timesync_flags::SYNC);
    h.settle();
    assert_eq!(
        h.with(|s| s.vmbus.endpoint(relid).unwrap().ic.timesync_answers),
        1
    );
    h.finish();
}

#[test]
fn kvp_host_pushes_and_reads_pairs() {
    let mut h = start_vmbus("kvp", config());
    let (_, mut rings, _) = open_ic(&mut h, KVP_INSTANCE, &[(5, 0)]);
    assert!(h.with(|s| s.kvp_set(0, "HostName", "hvsim-host")));
    let (header, body) = h.answer_ic(&mut rings, |body| body.to_vec());
    assert_eq!(header.message_type.get(), ic::message_type::KVP);
    let set = KvpGetSetMessage::read_from_prefix(&body[..]).unwrap().0;
    assert_eq!(set.header.operation, ic::kvp_operation::SET);
    assert_eq!(
        set.value.key_bytes().unwrap(),
        &hvsim::channel::utf16_bytes("HostName")[..]
    );
    assert_eq!(
        set.value.value_bytes().unwrap(),
        &hvsim::channel::utf16_bytes("hvsim-host")[..]
    );
    // GET: the guest answers with its value.
    assert!(h.with(|s| s.kvp_get(1, "OSName")));
    h.answer_ic(&mut rings, |body| {
        let mut message = KvpGetSetMessage::read_from_prefix(body).unwrap().0;
        let value = hvsim::channel::utf16_bytes("seL4");
        message.value.value_size = (value.len() as u32).into();
        message.value.value[..value.len()].copy_from_slice(&value);
        message.as_bytes().to_vec()
    });
    h.settle();
    let responses = h.with(|s| s.kvp_responses());
    assert_eq!(responses.len(), 2);
    assert_eq!(responses[1].operation, ic::kvp_operation::GET);
    assert_eq!(responses[1].pool, 1);
    assert_eq!(responses[1].key, "OSName");
    assert_eq!(responses[1].value, "seL4");
    assert_eq!(responses[1].status, ic::STATUS_OK);
    // Responses nobody asked for are counted, not trusted.
    let relid = h.with(|s| s.channel_of(DeviceKind::Kvp)).unwrap();
    if h.write_packet(&mut rings, 0xBAD, &[0u8; 40], false) {
        h.signal_channel(&rings);
    }
    h.settle();
    assert_eq!(
        h.with(|s| s.vmbus.endpoint(relid).unwrap().stats.unknown_responses),
        1
    );
    h.finish();
}

#[test]
fn generic_device_completions_and_unnecessary_signals() {
    let mut h = start_vmbus("signals", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let mut rings = h.open_channel(relid);
    // Empty -> non-empty: the guest must signal, and that signal counts as needed.
    assert!(h.write_packet(&mut rings, 1, &[0xAA; 24], true));
    h.signal_channel(&rings);
    let (transaction_id, packet_type, _) =
        h.wait_packet(&mut rings, Duration::from_secs(5)).unwrap();
    assert_eq!((transaction_id, packet_type), (1, 0xB));
    // A signal with nothing new in the ring is unnecessary.
    h.signal_channel(&rings);
    // Two packets, then two signals: only the first was needed.
    assert!(h.write_packet(&mut rings, 2, &[1; 8], false));
    assert!(!h.write_packet(&mut rings, 3, &[2; 8], false));
    h.signal_channel(&rings);
    h.signal_channel(&rings);
    h.settle();
    let stats = h.with(|s| s.vmbus.endpoint(relid).unwrap().stats);
    assert_eq!(stats.signals, 4);
    assert_eq!(stats.unnecessary_signals, 2);
    assert_eq!(stats.packets_received, 3);
    // The host advanced the out ring's read index to the guest's write index.
    let read = h
        .memory
        .load_u32(rings.out_control() + control::READ_INDEX as u64)
        .unwrap();
    assert_eq!(read, rings.out_write);
    h.finish();
}

#[test]
fn a_guest_that_breaks_its_ring_is_not_trusted() {
    let mut h = start_vmbus("broken-ring", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let rings = h.open_channel(relid);
    // A descriptor with offset8 < 2.
    let mut bad = [0u8; 24];
    bad[0] = 6;
    bad[2] = 1; // offset8
    bad[4] = 2; // len8
    let data = rings.out_data();
    h.memory.write(data, &bad).unwrap();
    h.memory.store_u32(rings.out_control(), 24).unwrap();
    h.signal_channel(&rings);
    h.settle();
    let broken = h.with(|s| s.vmbus.endpoint(relid).unwrap().broken.clone());
    assert!(
        matches!(broken, Some(RingFault::BadPacket(_))),
        "{broken:?}"
    );
    // The host no longer reads it: the read index stays put.
    assert_eq!(h.memory.load_u32(rings.out_control() + 4).unwrap(), 0);

    // Another channel: an out-of-range write index.
    let relid = VmbusHarness::relid_of(&offers, HEARTBEAT_INSTANCE);
    let rings = h.open_channel(relid);
    h.memory
        .store_u32(rings.out_control(), rings.data_size() + 8)
        .unwrap();
    h.signal_channel(&rings);
    h.settle();
    let broken = h.with(|s| s.vmbus.endpoint(relid).unwrap().broken.clone());
    assert!(
        matches!(broken, Some(RingFault::BadIndex { .. })),
        "{broken:?}"
    );
    // A misaligned read index on the in ring: the host's next write finds
    // it and stops writing.
    let relid = VmbusHarness::relid_of(&offers, KVP_INSTANCE);
    let mut rings = h.open_channel(relid);
    h.answer_ic_negotiate(&mut rings, &[(5, 0)]);
    h.settle();
    h.memory.store_u32(rings.in_control() + 4, 4).unwrap();
    assert!(h.with(|s| s.kvp_set(0, "k", "v")));
    let broken = h.with(|s| s.vmbus.endpoint(relid).unwrap().broken.clone());
    assert_eq!(
        broken,
        Some(RingFault::BadIndex {
            which: "in read_index",
            value: 4
        })
    );
    h.finish();
}

#[test]
fn host_reads_only_when_signalled_and_honours_pending_send_size() {
    let mut h = start_vmbus("pending-send", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let mut rings = h.open_channel(relid);
    // A packet without a signal stays unread (as on Hyper-V).
    assert!(h.write_packet(&mut rings, 1, &[0; 8], false));
    h.settle();
    assert_eq!(
        h.with(|s| s.vmbus.endpoint(relid).unwrap().stats.packets_received),
        0
    );
    // The guest (a writer waiting for room, which announced
    // pending_send_sz with feature bit 0) asks to be told when more than
    // what is free now (all but the packet's 32 bytes) is free, then
    // signals: the host drains, the free space crosses it, the host
    // signals back.
    let all_but_one_packet = rings.data_size() - 32;
    h.memory
        .fetch_or_u32(
            rings.out_control() + control::FEATURE_BITS as u64,
            control::FEATURE_PENDING_SEND_SZ,
        )
        .unwrap();
    h.memory
        .store_u32(
            rings.out_control() + control::PENDING_SEND_SZ as u64,
            all_but_one_packet,
        )
        .unwrap();
    assert!(!h.take_event_flag(relid as u16));
    h.signal_channel(&rings);
    h.settle();
    assert_eq!(
        h.with(|s| s.vmbus.endpoint(relid).unwrap().stats.packets_received),
        1
    );
    assert!(h.take_event_flag(relid as u16));
    // Without pending_send_sz, draining alone does not signal the guest.
    h.memory
        .store_u32(rings.out_control() + control::PENDING_SEND_SZ as u64, 0)
        .unwrap();
    assert!(h.write_packet(&mut rings, 2, &[0; 8], false));
    h.signal_channel(&rings);
    h.settle();
    assert!(!h.take_event_flag(relid as u16));
    // Nor when the space was already free before the drain (no crossing).
    h.memory
        .store_u32(rings.out_control() + control::PENDING_SEND_SZ as u64, 64)
        .unwrap();
    assert!(h.write_packet(&mut rings, 3, &[0; 8], false));
    h.signal_channel(&rings);
    h.settle();
    assert!(!h.take_event_flag(relid as u16));
    // Nor for a guest that did not announce pending_send_sz.
    h.memory
        .fetch_and_u32(
            rings.out_control() + control::FEATURE_BITS as u64,
            !control::FEATURE_PENDING_SEND_SZ,
        )
        .unwrap();
    h.memory
        .store_u32(
            rings.out_control() + control::PENDING_SEND_SZ as u64,
            all_but_one_packet,
        )
        .unwrap();
    assert!(h.write_packet(&mut rings, 4, &[0; 8], false));
    h.signal_channel(&rings);
    h.settle();
    assert!(!h.take_event_flag(relid as u16));
    assert_eq!(
        h.with(|s| s
            .vmbus
            .endpoint(relid)
            .unwrap()
            .stats
            .space_signals_to_guest),
        1
    );
    h.finish();
}
