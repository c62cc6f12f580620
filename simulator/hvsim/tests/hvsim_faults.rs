//! Every injected fault, observed by the scripted guest the way a careful
//! guest would see it: malformed control messages, malformed and oversized
//! packets, out-of-range ring indices, unknown and repeated completions, a
//! rescind at each step of a channel's life, floods of messages and of
//! interrupts, and delayed replies.
#![forbid(unsafe_code)]

mod common;

use common::vmbus::*;
use common::*;
use hv_interface::{GuestMemory, Hypervisor};
use hvsim::channel::PacketFault;
use hvsim::vmbus::{ChannelState, RescindPoint};
use hyperv_defs::{msr, HvStatus, SintMsr};
use std::time::Duration;
use vmbus_protocol::messages::*;
use vmbus_protocol::packet::{control, parse_packet, PacketError};
use vmbus_protocol::{parse, ChannelMessage, ProtocolError, ProtocolVersion, VmbusMessage};
use zerocopy::IntoBytes;

#[test]
fn malformed_control_messages_reach_the_guest_as_sent() {
    let mut h = start_vmbus("bad-control", config());
    h.boot();
    let truncated_offer = OfferChannel::empty().as_bytes()[..100].to_vec();
    let unknown_type = [0xEEu8, 0, 0, 0, 0, 0, 0, 0];
    let gpadl_created_for_nothing = {
        let mut created = GpadlCreated::empty();
        created.gpadl_id = 0xDEAD.into();
        created.as_bytes().to_vec()
    };
    h.with(|s| {
        s.flood_messages(&truncated_offer, 1);
        s.flood_messages(&unknown_type, 1);
        s.flood_messages(&gpadl_created_for_nothing, 1);
    });
    let version = ProtocolVersion::V5_3;
    let first = h.receive_message(Duration::from_secs(2)).unwrap();
    assert!(matches!(
        parse(&first, version),
        Err(ProtocolError::TooShort {
            message_type: 1,
            ..
        })
    ));
    let second = h.receive_message(Duration::from_secs(2)).unwrap();
    assert_eq!(
        parse(&second, version),
        Err(ProtocolError::UnknownMessageType(0xEE))
    );
    // Well-formed but about a GPADL the guest never created.
    let third = h.receive_message(Duration::from_secs(2)).unwrap();
    match parse(&third, version).unwrap() {
        ChannelMessage::GpadlCreated(created) => assert_eq!(created.gpadl_id.get(), 0xDEAD),
        other => panic!("{other:?}"),
    }
    h.finish();
}

#[test]
fn malformed_and_oversized_packets_on_a_chosen_channel() {
    let mut h = start_vmbus("bad-packets", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let mut rings = h.open_channel(relid);
    let cases = [
        (
            PacketFault::OffsetTooSmall,
            Some(PacketError::OffsetTooSmall),
        ),
        (
            PacketFault::LengthBeforeOffset,
            Some(PacketError::LengthBeforeOffset),
        ),
        (PacketFault::UnknownType, None),
        (PacketFault::UnknownFlags, None),
    ];
    for (fault, expected) in cases {
        assert!(h.with(|s| s.inject_malformed_packet(relid, fault)));
        let bytes = h.read_raw_packet(&mut rings).unwrap().expect("a packet");
        let error = parse_packet(&bytes).expect_err("malformed");
        if let Some(expected) = expected {
            assert_eq!(error, expected, "{fault:?}");
        }
        // A malformed descriptor's length cannot be trusted to find the
        // next packet; a careful guest resynchronises on the write index
        // (ours does so here to try the next fault).
        let write = h
            .memory
            .load_u32(rings.in_control() + control::WRITE_INDEX as u64)
            .unwrap();
        rings.in_read = write;
        h.memory
            .store_u32(rings.in_control() + control::READ_INDEX as u64, write)
            .unwrap();
    }
    // A length beyond what the ring holds: a careful reader refuses it
    // before copying.
    assert!(h.with(|s| s.inject_malformed_packet(relid, PacketFault::LengthBeyondRing)));
    let error = h
        .read_raw_packet(&mut rings)
        .expect_err("length beyond ring");
    assert!(error.contains("available"), "{error}");

    // Oversized but well-formed: a packet far larger than the device's
    // protocol allows, on a fresh channel.
    let relid = VmbusHarness::relid_of(&offers, HEARTBEAT_INSTANCE);
    let mut rings = h.open_channel(relid);
    let _negotiate = h.wait_packet(&mut rings, Duration::from_secs(2)).unwrap();
    assert!(h.with(|s| s.inject_oversized_packet(relid, 12_000)));
    let (_, _, payload) = h.wait_packet(&mut rings, Duration::from_secs(2)).unwrap();
    assert!(payload.len() >= 12_000);
    h.finish();
}

#[test]
fn out_of_range_ring_indices() {
    let mut h = start_vmbus("bad-index", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let mut rings = h.open_channel(relid);
    let size = rings.data_size();
    for bad in [size, size + 8, 4, u32::MAX] {
        assert!(h.with(|s| s.corrupt_ring_index(relid, bad)));
        let error = h.read_raw_packet(&mut rings).expect_err("bad index");
        assert!(error.contains("bad write index"), "{error}");
    }
    // The host can also lie about its read index of the guest's out ring.
    h.with(|s| {
        let memory_relid = relid;
        s.with_channel(
            memory_relid,
            |e, m| e.corrupt_out_read_index(m, size + 16),
            |_| false,
        )
    });
    let read = h
        .memory
        .load_u32(rings.out_control() + control::READ_INDEX as u64)
        .unwrap();
    assert_eq!(read, size + 16);
    h.finish();
}

#[test]
fn unknown_and_repeated_completions() {
    let mut h = start_vmbus("completions", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let mut rings = h.open_channel(relid);
    // A real request and its completion.
    assert!(h.write_packet(&mut rings, 41, &[0; 16], true));
    h.signal_channel(&rings);
    let (id, kind, _) = h.wait_packet(&mut rings, Duration::from_secs(2)).unwrap();
    assert_eq!((id, kind), (41, 0xB));
    // The same completion again, then one the guest never asked for.
    assert!(h.with(|s| s.repeat_last_completion(relid)));
    let (id, kind, _) = h.wait_packet(&mut rings, Duration::from_secs(2)).unwrap();
    assert_eq!((id, kind), (41, 0xB));
    assert!(h.with(|s| s.send_completion(relid, 0xDEAD_BEEF)));
    let (id, kind, _) = h.wait_packet(&mut rings, Duration::from_secs(2)).unwrap();
    assert_eq!((id, kind), (0xDEAD_BEEF, 0xB));
    h.finish();
}

/// Runs a channel's life up to `point` with a rescind armed there and
/// checks the guest gets RescindChannelOffer at that step.
fn rescind_at(point: RescindPoint) {
    let mut h = start_vmbus("rescind-at", config());
    h.with(|s| s.vmbus.faults.rescind_at.push((DISK_INSTANCE, point)));
    let response = h.connect(ProtocolVersion::V5_3);
    assert_eq!(response.version_supported, 1);
    h.send(&RequestOffers::empty());
    let mut relid = None;
    let mut rescinded = false;
    loop {
        match h.expect() {
            ChannelMessage::OfferChannel(offer) => {
                if offer.interface_instance.to_uuid() == DISK_INSTANCE {
                    relid = Some(offer.child_relid.get());
                }
            }
            ChannelMessage::RescindChannelOffer(rescind) => {
                assert_eq!(point, RescindPoint::AfterOffer);
                assert_eq!(Some(rescind.child_relid.get()), relid);
                rescinded = true;
            }
            ChannelMessage::AllOffersDelivered(_) => break,
            other => panic!("{other:?}"),
        }
    }
    let relid = relid.unwrap();
    let expect_rescind = |h: &mut VmbusHarness| match h.expect() {
        ChannelMessage::RescindChannelOffer(rescind) => {
            assert_eq!(rescind.child_relid.get(), relid)
        }
        other => panic!("{point:?}: expected a rescind, got {other:?}"),
    };
    if !rescinded {
        h.memory
            .write(VmbusHarness::ring_base(relid), &[0u8; 10 * 4096])
            .unwrap();
        h.send_gpadl(relid, 0x50, &VmbusHarness::ring_pfns(relid));
        if point == RescindPoint::OnGpadlHeader {
            expect_rescind(&mut h);
        } else {
            assert!(
                matches!(h.expect(), ChannelMessage::GpadlCreated(c) if c.creation_status.get() == 0)
            );
            if point == RescindPoint::AfterGpadlCreated {
                expect_rescind(&mut h);
            } else {
                h.send(&VmbusHarness::open_message(relid, 0x50));
                if point == RescindPoint::OnOpen {
                    expect_rescind(&mut h);
                } else {
                    assert!(
                        matches!(h.expect(), ChannelMessage::OpenChannelResult(r) if r.status.get() == 0)
                    );
                    if point == RescindPoint::AfterOpenResult {
                        expect_rescind(&mut h);
                    } else {
                        h.close_channel(relid);
                        expect_rescind(&mut h);
                    }
                }
            }
        }
    }
    assert_eq!(
        h.with(|s| s.vmbus.channel_state(relid)),
        Some(ChannelState::Rescinded)
    );
    // The guest can always finish: tear down what it created, release.
    if point != RescindPoint::AfterOffer && point != RescindPoint::OnGpadlHeader {
        let mut teardown = GpadlTeardown::empty();
        teardown.child_relid = relid.into();
        teardown.gpadl_id = 0x50.into();
        h.send(&teardown);
        assert!(matches!(h.expect(), ChannelMessage::GpadlTorndown(_)));
    }
    let mut released = RelIdReleased::empty();
    released.child_relid = relid.into();
    h.send(&released);
    h.settle();
    assert_eq!(h.with(|s| s.vmbus.channel_state(relid)), None);
    assert_eq!(h.rejected(), 0, "{point:?}");
    h.finish();
}

#[test]
fn rescind_at_every_step_of_a_channels_life() {
    for point in [
        RescindPoint::AfterOffer,
        RescindPoint::OnGpadlHeader,
        RescindPoint::AfterGpadlCreated,
        RescindPoint::OnOpen,
        RescindPoint::AfterOpenResult,
        RescindPoint::OnClose,
    ] {
        rescind_at(point);
    }
}

#[test]
fn message_flood_is_delivered_through_pending_and_eom() {
    let mut h = start_vmbus("flood-messages", config());
    h.boot();
    let all_offers = AllOffersDelivered::empty();
    h.with(|s| s.flood_messages(all_offers.as_bytes(), 200));
    let mut received = 0;
    while let Some(bytes) = h.receive_message(Duration::from_millis(200)) {
        assert_eq!(bytes, all_offers.as_bytes());
        received += 1;
    }
    assert_eq!(received, 200);
    // Each message after the first needed an EOM.
    let eoms = h.with(|s| s.host.synic.stats.eom_writes);
    assert!(eoms >= 199, "{eoms}");
    h.finish();
}

#[test]
fn interrupt_flood_with_and_without_auto_eoi() {
    let mut h = start_vmbus("flood-interrupts", config());
    // Auto-EOI: every assertion is an interrupt.
    h.with(|s| s.flood_interrupts(100));
    let mut taken = 0;
    while h.guest.wait_interrupt(Some(50_000_000)).unwrap().is_some() {
        taken += 1;
    }
    assert_eq!(taken, 100);
    // Without auto-EOI the APIC holds one in service and coalesces the rest.
    h.guest
        .msr_write(
            msr::SINT0 + VMBUS_SINT as u32,
            SintMsr::new(VECTOR, false, false).0,
        )
        .unwrap();
    h.with(|s| s.flood_interrupts(100));
    assert!(h
        .guest
        .wait_interrupt(Some(1_000_000_000))
        .unwrap()
        .is_some());
    assert!(h.guest.wait_interrupt(Some(30_000_000)).unwrap().is_none());
    h.guest.end_of_interrupt().unwrap();
    assert!(h
        .guest
        .wait_interrupt(Some(1_000_000_000))
        .unwrap()
        .is_some());
    h.guest.end_of_interrupt().unwrap();
    assert!(h.guest.wait_interrupt(Some(30_000_000)).unwrap().is_none());
    h.finish();
}

#[test]
fn delayed_replies() {
    let mut h = start_vmbus("delayed", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    h.with(|s| s.vmbus.faults.reply_delay_ns = 300_000_000);
    h.send_gpadl(relid, 0x60, &[0x300, 0x301]);
    assert!(h.receive_message(Duration::from_millis(100)).is_none());
    match h.expect() {
        ChannelMessage::GpadlCreated(created) => assert_eq!(created.creation_status.get(), 0),
        other => panic!("{other:?}"),
    }
    // VersionResponse after Unload is delayed as well.
    h.send(&Unload::empty());
    assert!(h.receive_message(Duration::from_millis(100)).is_none());
    assert!(matches!(h.expect(), ChannelMessage::UnloadResponse(_)));
    assert_eq!(
        h.initiate_contact(ProtocolVersion::V5_3, v5_contact()),
        HvStatus::SUCCESS
    );
    assert!(h.receive_message(Duration::from_millis(100)).is_none());
    assert!(matches!(h.expect(), ChannelMessage::VersionResponse(r) if r.version_supported == 1));
    h.finish();
}

#[test]
fn offer_sizes_used_by_faults() {
    assert_eq!(GpadlCreated::SIZE, 20);
    assert_eq!(RescindChannelOffer::SIZE, 12);
}
