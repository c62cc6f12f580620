//! The VMBus server driven by a scripted guest through the hosted
//! transport: version negotiation and connection-ID rules, offers, GPADLs,
//! open/close, rescind and RelIdReleased, Unload, offers added while the
//! guest runs, monitor pages, and rejection of malformed guest messages.
#![forbid(unsafe_code)]

mod common;

use common::vmbus::*;
use common::*;
use hv_interface::GuestMemory;
use hvsim::vmbus::{
    ChannelState, DeviceConfig, DeviceKind, ServerConfig, STATUS_INVALID_PARAMETER,
    STATUS_QUOTA_EXCEEDED, STATUS_UNSUCCESSFUL,
};
use hyperv_defs::HvStatus;
use std::time::Duration;
use vmbus_protocol::messages::*;
use vmbus_protocol::{ChannelMessage, ProtocolVersion, VmbusMessage};
use zerocopy::IntoBytes;

#[test]
fn version_negotiation_and_connection_ids() {
    let mut h = start_vmbus("versions", config());
    // 5.3 on connection 1 is the wrong connection: rejected, no reply.
    assert_eq!(
        h.initiate_contact(ProtocolVersion::V5_3, legacy()),
        HvStatus::SUCCESS
    );
    h.expect_none(50);
    assert_eq!(h.rejected(), 1);
    // 6.0 is not offered by this host: version_supported = 0.
    let response = h.connect(ProtocolVersion::V6_0);
    assert_eq!(response.version_supported, 0);
    // 5.3 on connection 4 works; msg_conn_id names where messages go.
    let response = h.connect(ProtocolVersion::V5_3);
    assert_eq!(response.version_supported, 1);
    assert_eq!(response.msg_conn_id.get(), 1);
    assert_eq!(h.with(|s| s.vmbus.version()), Some(ProtocolVersion::V5_3));
    // A second InitiateContact without Unload is rejected.
    assert_eq!(
        h.initiate_contact(ProtocolVersion::V5_3, v5_contact()),
        HvStatus::SUCCESS
    );
    h.expect_none(50);
    assert_eq!(h.rejected(), 2);
    // After 5.0 connection 4 carries only InitiateContact.
    assert_eq!(
        h.post_message(v5_contact(), &RequestOffers::empty()),
        HvStatus::SUCCESS
    );
    h.expect_none(50);
    assert_eq!(h.rejected(), 3);
    h.finish();
}

#[test]
fn redirected_message_connection() {
    let mut config = config();
    config.msg_conn_id = 0x80_0074;
    let mut h = start_vmbus("redirect", config);
    let response = h.connect(ProtocolVersion::V5_2);
    assert_eq!(response.msg_conn_id.get(), 0x80_0074);
    // Messages to connection 1 are now on the wrong connection.
    assert_eq!(
        h.post_message(legacy(), &RequestOffers::empty()),
        HvStatus::SUCCESS
    );
    h.expect_none(50);
    assert_eq!(h.rejected(), 1);
    let offers = h.request_offers();
    assert_eq!(offers.len(), 5);
    h.finish();
}

#[test]
fn older_host_refuses_connection_4_and_accepts_legacy() {
    let config = ServerConfig {
        max_version: ProtocolVersion::V4_1,
        ..config()
    };
    let mut h = start_vmbus("older", config);
    // A 4.1 host has no connection 4: the guest falls back.
    assert_eq!(
        h.initiate_contact(ProtocolVersion::V5_3, v5_contact()),
        HvStatus::INVALID_CONNECTION_ID
    );
    let response = h.connect(ProtocolVersion::V4_1);
    assert_eq!(response.version_supported, 1);
    assert_eq!(response.msg_conn_id.get(), 0);
    let offers = h.request_offers();
    assert_eq!(offers.len(), 5);
    h.finish();

    for version in [
        ProtocolVersion::V2_4,
        ProtocolVersion::V3_0,
        ProtocolVersion::V4_0,
        ProtocolVersion::V5_0,
        ProtocolVersion::V5_1,
    ] {
        let mut h = start_vmbus("each-version", common::vmbus::config());
        assert_eq!(h.connect(version).version_supported, 1, "{version}");
        assert_eq!(h.request_offers().len(), 5, "{version}");
        h.finish();
    }
    // Versions below the configured minimum are refused.
    let mut h = start_vmbus(
        "min-version",
        ServerConfig {
            min_version: ProtocolVersion::V3_0,
            ..common::vmbus::config()
        },
    );
    assert_eq!(h.connect(ProtocolVersion::V2_4).version_supported, 0);
    h.finish();
}

#[test]
fn offers_carry_guids_pipe_mode_and_monitor_allocation() {
    let mut h = start_vmbus("offers", config());
    let offers = h.boot();
    assert_eq!(offers.len(), 5);
    let heartbeat = offers
        .iter()
        .find(|o| o.interface_instance.to_uuid() == HEARTBEAT_INSTANCE)
        .unwrap();
    assert_eq!(
        heartbeat.interface_type.to_uuid(),
        vmbus_protocol::guid::class::HEARTBEAT
    );
    assert_eq!(heartbeat.pipe_mode(), Some(PIPE_MODE_MESSAGE));
    assert!(!heartbeat.monitor_allocated());
    assert!(heartbeat.is_dedicated_interrupt());
    let disk = offers
        .iter()
        .find(|o| o.interface_instance.to_uuid() == DISK_INSTANCE)
        .unwrap();
    assert_eq!(
        disk.interface_type.to_uuid(),
        vmbus_protocol::guid::class::SCSI
    );
    assert!(disk.monitor_allocated());
    assert_eq!(disk.monitor_id, 0);
    assert_eq!(disk.pipe_mode(), None);
    // Relids are distinct and non-zero; connection IDs distinct.
    let mut relids: Vec<u32> = offers.iter().map(|o| o.child_relid.get()).collect();
    relids.sort();
    relids.dedup();
    assert_eq!(relids.len(), 5);
    assert!(!relids.contains(&0));
    // A second RequestOffers is rejected.
    assert_eq!(h.send(&RequestOffers::empty()), HvStatus::SUCCESS);
    h.expect_none(50);
    assert_eq!(h.rejected(), 1);
    // A device added while the guest runs is offered at once.
    let instance = uuid::uuid!("99999999-0000-0000-0000-000000000001");
    let relid = h.with(|s| {
        s.add_device(DeviceConfig {
            class: vmbus_protocol::guid::class::NIC,
            instance,
            kind: DeviceKind::Generic,
            monitored: true,
            message_pipe: false,
        })
    });
    match h.expect() {
        ChannelMessage::OfferChannel(offer) => {
            assert_eq!(offer.child_relid.get(), relid);
            assert_eq!(offer.interface_instance.to_uuid(), instance);
            assert!(offer.monitor_allocated());
            assert_eq!(offer.monitor_id, 1);
        }
        other => panic!("{other:?}"),
    }
    h.finish();
}

#[test]
fn gpadl_creation_validation_and_teardown() {
    let config = ServerConfig {
        gpadl_memory_limit: 64 * 4096,
        ..config()
    };
    let mut h = start_vmbus("gpadl", config);
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    // 40 pages: a header and a body message.
    let pfns: Vec<u64> = (0x200..0x228).collect();
    let created = h.create_gpadl(relid, 0x10, &pfns);
    assert_eq!(created.creation_status.get(), 0);
    assert_eq!(created.gpadl_id.get(), 0x10);
    assert_eq!(h.with(|s| s.vmbus.gpadl_bytes()), 40 * 4096);
    // The same ID again is refused.
    let created = h.create_gpadl(relid, 0x10, &[0x300]);
    assert_eq!(created.creation_status.get(), STATUS_UNSUCCESSFUL);
    // A PFN outside guest memory is refused.
    let created = h.create_gpadl(relid, 0x11, &[MEMORY_SIZE / 4096]);
    assert_eq!(created.creation_status.get(), STATUS_UNSUCCESSFUL);
    // Beyond the shared-memory limit (64 pages, 40 in use) is refused with
    // Hyper-V's quota status; not a malformed message.
    let rejected = h.rejected();
    let big: Vec<u64> = (0x300..0x31A).collect();
    let created = h.create_gpadl(relid, 0x12, &big);
    assert_eq!(created.creation_status.get(), STATUS_QUOTA_EXCEEDED);
    assert_eq!(h.rejected(), rejected);
    assert_eq!(h.with(|s| s.vmbus.stats.gpadls_over_limit), 1);
    // Up to the limit exactly is fine.
    let exact: Vec<u64> = (0x300..0x318).collect();
    let created = h.create_gpadl(relid, 0x14, &exact);
    assert_eq!(created.creation_status.get(), 0);
    let mut teardown = GpadlTeardown::empty();
    teardown.child_relid = relid.into();
    teardown.gpadl_id = 0x14.into();
    assert_eq!(h.send(&teardown), HvStatus::SUCCESS);
    assert!(matches!(h.expect(), ChannelMessage::GpadlTorndown(_)));
    // A GPADL for a relid that was never offered is refused.
    let created = h.create_gpadl(0x7FF, 0x13, &[0x300]);
    assert_eq!(created.creation_status.get(), STATUS_UNSUCCESSFUL);
    // A body for a GPADL nobody announced is rejected without a reply.
    let rejected = h.rejected();
    let mut body = GpadlBody::empty();
    body.gpadl_id = 0x55.into();
    let mut bytes = body.as_bytes().to_vec();
    bytes.extend_from_slice(&0x300u64.to_le_bytes());
    assert_eq!(h.post(1, &bytes), HvStatus::SUCCESS);
    h.expect_none(50);
    assert_eq!(h.rejected(), rejected + 1);
    // Teardown answers GpadlTorndown and frees the memory.
    let mut teardown = GpadlTeardown::empty();
    teardown.child_relid = relid.into();
    teardown.gpadl_id = 0x10.into();
    assert_eq!(h.send(&teardown), HvStatus::SUCCESS);
    match h.expect() {
        ChannelMessage::GpadlTorndown(torndown) => assert_eq!(torndown.gpadl_id.get(), 0x10),
        other => panic!("{other:?}"),
    }
    assert_eq!(h.with(|s| s.vmbus.gpadl_bytes()), 0);
    // Tearing down an unknown GPADL is rejected.
    assert_eq!(h.send(&teardown), HvStatus::SUCCESS);
    h.expect_none(50);
    assert_eq!(h.rejected(), rejected + 2);
    h.finish();
}

#[test]
fn open_and_close_rules() {
    let mut h = start_vmbus("open", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let pfns = VmbusHarness::ring_pfns(relid);
    let created = h.create_gpadl(relid, 0x20, &pfns);
    assert_eq!(created.creation_status.get(), 0);
    let expect_result = |h: &mut VmbusHarness| match h.expect() {
        ChannelMessage::OpenChannelResult(result) => result.status.get(),
        other => panic!("{other:?}"),
    };
    // A downstream offset leaving no data page is refused.
    let mut open = VmbusHarness::open_message(relid, 0x20);
    open.downstream_ring_page_offset = 9.into();
    h.send(&open);
    assert_eq!(expect_result(&mut h), STATUS_UNSUCCESSFUL);
    // A VP that does not exist is refused.
    let mut open = VmbusHarness::open_message(relid, 0x20);
    open.target_vp = 1.into();
    h.send(&open);
    assert_eq!(expect_result(&mut h), STATUS_UNSUCCESSFUL);
    // An unknown ring GPADL is refused.
    h.send(&VmbusHarness::open_message(relid, 0x99));
    assert_eq!(expect_result(&mut h), STATUS_UNSUCCESSFUL);
    // The right one opens; opening again is refused.
    h.send(&VmbusHarness::open_message(relid, 0x20));
    assert_eq!(expect_result(&mut h), 0);
    assert_eq!(
        h.with(|s| s.vmbus.channel_state(relid)),
        Some(ChannelState::Open)
    );
    h.send(&VmbusHarness::open_message(relid, 0x20));
    assert_eq!(expect_result(&mut h), STATUS_UNSUCCESSFUL);
    // The ring GPADL cannot be torn down while the channel is open.
    let mut teardown = GpadlTeardown::empty();
    teardown.child_relid = relid.into();
    teardown.gpadl_id = 0x20.into();
    let rejected = h.rejected();
    h.send(&teardown);
    h.expect_none(50);
    assert_eq!(h.rejected(), rejected + 1);
    // The channel's event connection works while open...
    let connection = VmbusHarness::connection_of(&offers, relid);
    assert_eq!(h.signal(connection, 0), HvStatus::SUCCESS);
    // ...and is gone after CloseChannel (no reply to a close).
    h.close_channel(relid);
    h.expect_none(50);
    assert_eq!(h.signal(connection, 0), HvStatus::INVALID_CONNECTION_ID);
    assert_eq!(
        h.with(|s| s.vmbus.channel_state(relid)),
        Some(ChannelState::Offered)
    );
    // Closing a closed channel is rejected; teardown now works.
    let rejected = h.rejected();
    h.close_channel(relid);
    h.expect_none(50);
    assert_eq!(h.rejected(), rejected + 1);
    h.send(&teardown);
    assert!(matches!(h.expect(), ChannelMessage::GpadlTorndown(_)));
    h.finish();
}

#[test]
fn rescind_and_relid_release() {
    let mut h = start_vmbus("rescind", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let connection = VmbusHarness::connection_of(&offers, relid);
    let _rings = h.open_channel(relid);
    // RelIdReleased before a rescind is rejected.
    let mut released = RelIdReleased::empty();
    released.child_relid = relid.into();
    h.send(&released);
    h.expect_none(50);
    assert_eq!(h.rejected(), 1);
    assert!(h.with(|s| s.rescind(relid)));
    match h.expect() {
        ChannelMessage::RescindChannelOffer(rescind) => {
            assert_eq!(rescind.child_relid.get(), relid)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        h.with(|s| s.vmbus.channel_state(relid)),
        Some(ChannelState::Rescinded)
    );
    // The channel's connection is gone at once.
    assert_eq!(h.signal(connection, 0), HvStatus::INVALID_CONNECTION_ID);
    // The guest tears its GPADL down, then releases the relid.
    let mut teardown = GpadlTeardown::empty();
    teardown.child_relid = relid.into();
    teardown.gpadl_id = (0x1000 + relid).into();
    h.send(&teardown);
    assert!(matches!(h.expect(), ChannelMessage::GpadlTorndown(_)));
    h.send(&released);
    h.settle();
    assert_eq!(h.with(|s| s.vmbus.channel_state(relid)), None);
    assert_eq!(h.with(|s| s.vmbus.stats.rule_violations), 0);
    // The same device offered again is a new channel (the relid may be reused).
    let new_relid = h.with(|s| s.add_device(common::vmbus::default_devices()[4].clone()));
    match h.expect() {
        ChannelMessage::OfferChannel(offer) => assert_eq!(offer.child_relid.get(), new_relid),
        other => panic!("{other:?}"),
    }
    h.finish();
}

#[test]
fn a_gpadl_being_created_goes_with_its_rescinded_channel_and_late_bodies_are_ignored() {
    let mut h = start_vmbus("rescind-gpadl", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    // A 60-page GPADL: the header and the first body, not the last.
    let pfns: Vec<u64> = (0x200..0x23C).collect();
    let messages: Vec<Vec<u8>> =
        vmbus_protocol::gpadl::GpadlMessages::for_pages(relid, 0x40, &pfns)
            .unwrap()
            .map(|m| m.as_bytes().to_vec())
            .collect();
    assert_eq!(messages.len(), 3);
    for message in &messages[..2] {
        assert_eq!(h.post(1, message), HvStatus::SUCCESS);
    }
    h.settle();
    assert!(h.with(|s| s.rescind(relid)));
    assert!(matches!(h.expect(), ChannelMessage::RescindChannelOffer(_)));
    // The guest had already posted the last body.
    assert_eq!(h.post(1, &messages[2]), HvStatus::SUCCESS);
    h.expect_none(50);
    assert_eq!(h.rejected(), 0);
    assert_eq!(h.with(|s| s.vmbus.stats.bodies_after_rescind), 1);
    assert_eq!(h.with(|s| s.vmbus.gpadl_count()), 0);
    let mut released = RelIdReleased::empty();
    released.child_relid = relid.into();
    h.send(&released);
    h.settle();
    assert_eq!(h.with(|s| s.vmbus.stats.rule_violations), 0);
    h.finish();
}

fn modify(relid: u32, target_vp: u32) -> ModifyChannel {
    let mut modify = ModifyChannel::empty();
    modify.child_relid = relid.into();
    modify.target_vp = target_vp.into();
    modify
}

#[test]
fn modify_channel_retargets_an_open_channel_and_answers_from_5_3() {
    let mut h = start_vmbus(
        "modify",
        ServerConfig {
            vp_count: 2,
            ..config()
        },
    );
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    // Not open yet: rejected, no answer.
    h.send(&modify(relid, 1));
    h.expect_none(50);
    assert_eq!(h.rejected(), 1);
    let _rings = h.open_channel(relid);
    assert_eq!(h.with(|s| s.vmbus.target_vp(relid)), Some(0));
    h.send(&modify(relid, 1));
    match h.expect() {
        ChannelMessage::ModifyChannelResponse(response) => {
            assert_eq!(response.child_relid.get(), relid);
            assert_eq!(response.status.get(), 0);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.with(|s| s.vmbus.target_vp(relid)), Some(1));
    // A VP that does not exist: refused in the answer, nothing moves.
    h.send(&modify(relid, 2));
    match h.expect() {
        ChannelMessage::ModifyChannelResponse(response) => {
            assert_eq!(response.status.get(), STATUS_INVALID_PARAMETER)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.with(|s| s.vmbus.target_vp(relid)), Some(1));
    assert_eq!(h.with(|s| s.vmbus.stats.channels_retargeted), 1);
    assert_eq!(h.rejected(), 1);
    h.finish();
}

#[test]
fn before_5_3_modify_channel_has_no_answer() {
    let mut h = start_vmbus("modify-4.1", config());
    let response = h.connect(ProtocolVersion::V4_1);
    assert_eq!(response.version_supported, 1);
    let offers = h.request_offers();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let _rings = h.open_channel(relid);
    h.send(&modify(relid, 0));
    h.expect_none(50);
    assert_eq!(h.with(|s| s.vmbus.stats.channels_retargeted), 1);
    // One VP: VP 1 does not exist, and without an answer that is a
    // rejected message.
    h.send(&modify(relid, 1));
    h.expect_none(50);
    assert_eq!(h.rejected(), 1);
    h.finish();
}

#[test]
fn sub_channels_are_offered_for_an_open_primary_and_rescinded_before_it() {
    let mut h = start_vmbus("sub-channels", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    // Not before the primary is open (the guest asks over it).
    assert!(h.with(|s| s.offer_sub_channels(relid, 2)).is_empty());
    let _rings = h.open_channel(relid);
    let subs = h.with(|s| s.offer_sub_channels(relid, 2));
    assert_eq!(subs.len(), 2);
    for (n, sub) in subs.iter().enumerate() {
        match h.expect() {
            ChannelMessage::OfferChannel(offer) => {
                assert_eq!(offer.child_relid.get(), *sub);
                assert_eq!(offer.sub_channel_index.get(), n as u16 + 1);
                assert_eq!(offer.interface_instance.to_uuid(), DISK_INSTANCE);
            }
            other => panic!("{other:?}"),
        }
    }
    // More later continue the numbering.
    let more = h.with(|s| s.offer_sub_channels(relid, 1));
    match h.expect() {
        ChannelMessage::OfferChannel(offer) => assert_eq!(offer.sub_channel_index.get(), 3),
        other => panic!("{other:?}"),
    }
    // The primary's rescind goes after its sub-channels'.
    assert!(h.with(|s| s.rescind(relid)));
    let mut order = Vec::new();
    for _ in 0..4 {
        match h.expect() {
            ChannelMessage::RescindChannelOffer(r) => order.push(r.child_relid.get()),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(order, [subs[0], subs[1], more[0], relid]);
    h.finish();
}

#[test]
fn unload_and_reconnect() {
    let mut h = start_vmbus("unload", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, HEARTBEAT_INSTANCE);
    let _rings = h.open_channel(relid);
    h.send(&Unload::empty());
    assert!(matches!(h.expect(), ChannelMessage::UnloadResponse(_)));
    assert_eq!(h.with(|s| s.vmbus.version()), None);
    assert_eq!(h.with(|s| s.vmbus.gpadl_count()), 0);
    assert_eq!(h.with(|s| s.vmbus.open_channels().len()), 0);
    // The ring's GPADL was never torn down: a leak Hyper-V's rules forbid.
    assert_eq!(h.with(|s| s.vmbus.stats.rule_violations), 1);
    assert!(h.with(|s| s.vmbus.violations[0].contains("still held at Unload")));
    // Everything works again from the start.
    let offers = h.boot();
    assert_eq!(offers.len(), 5);
    h.finish();
}

#[test]
fn malformed_guest_messages_are_rejected() {
    let mut h = start_vmbus("malformed", config());
    // Before InitiateContact nothing but InitiateContact is accepted.
    h.post_message(legacy(), &RequestOffers::empty());
    h.expect_none(30);
    assert_eq!(h.rejected(), 1);
    h.boot();
    let cases: Vec<Vec<u8>> = vec![
        vec![1, 2, 3],                                                // shorter than a header
        99u32.to_le_bytes().iter().chain(&[0; 4]).copied().collect(), // unknown type
        OpenChannel::empty().as_bytes()[..40].to_vec(),               // truncated OpenChannel
        {
            // GpadlHeader whose range_buflen disagrees with range_count.
            let mut header = GpadlHeader::empty();
            header.child_relid = 1.into();
            header.gpadl_id = 0x77.into();
            header.range_count = 3.into();
            header.range_buflen = 16.into();
            let mut bytes = header.as_bytes().to_vec();
            bytes.extend_from_slice(&[0; 16]);
            bytes
        },
        VersionResponse::empty().as_bytes().to_vec(), // a host-to-guest message
    ];
    let before = h.rejected();
    for (index, bytes) in cases.iter().enumerate() {
        assert_eq!(h.post(1, bytes), HvStatus::SUCCESS, "case {index}");
    }
    // The GPADL case may be refused with GpadlCreated(failure) instead.
    while let Some(message) = h.next(Duration::from_millis(50)) {
        match message {
            ChannelMessage::GpadlCreated(created) => {
                assert_eq!(created.creation_status.get(), STATUS_UNSUCCESSFUL)
            }
            other => panic!("reply to a malformed message: {other:?}"),
        }
    }
    assert_eq!(h.rejected(), before + cases.len() as u64);
    let reasons = h.with(|s| s.vmbus.rejections.clone());
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("unknown message type 99")),
        "{reasons:?}"
    );
    h.finish();
}

#[test]
fn full_control_port_answers_insufficient_buffers() {
    let config = ServerConfig {
        port_capacity: 3,
        ..config()
    };
    let mut h = start_vmbus("buffers", config);
    h.boot();
    h.with(|s| s.vmbus.faults.paused = true);
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(h.send(&RequestOffers::empty()));
    }
    assert_eq!(
        statuses,
        vec![
            HvStatus::SUCCESS,
            HvStatus::SUCCESS,
            HvStatus::SUCCESS,
            HvStatus::INSUFFICIENT_BUFFERS
        ]
    );
    // Once the server drains the port, posting works again.
    h.with(|s| s.vmbus.faults.paused = false);
    h.settle();
    assert_eq!(h.send(&RequestOffers::empty()), HvStatus::SUCCESS);
    h.finish();
}

#[test]
fn monitor_page_signals_reach_the_host() {
    let mut h = start_vmbus("monitor", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let mut rings = h.open_channel(relid);
    // The guest writes a packet and, instead of a hypercall, sets its
    // monitor bit (monitor ID 0: group 0, bit 0) in the second page.
    assert!(h.write_packet(&mut rings, 7, &[1, 2, 3, 4], true));
    h.memory
        .fetch_or_u32(
            MONITOR2_GPA + hyperv_defs::MonitorPage::pending_offset(0) as u64,
            1,
        )
        .unwrap();
    // The host consumed the bit and the packet, and completed it.
    let (transaction_id, packet_type, _) = h
        .wait_packet(&mut rings, Duration::from_secs(5))
        .expect("completion");
    assert_eq!(transaction_id, 7);
    assert_eq!(packet_type, 0xB);
    let pending = h
        .memory
        .load_u32(MONITOR2_GPA + hyperv_defs::MonitorPage::pending_offset(0) as u64)
        .unwrap();
    assert_eq!(pending & 1, 0);
    let stats = h.with(|s| s.vmbus.endpoint(relid).unwrap().stats);
    assert_eq!(stats.signals, 1);
    assert_eq!(stats.unnecessary_signals, 0);
    assert_eq!(h.with(|s| s.vmbus.stats.monitor_signals), 1);
    // The host wrote its latency and what bit 0 stands for at open.
    let latency = MONITOR2_GPA + core::mem::offset_of!(hyperv_defs::MonitorPage, latency) as u64;
    let mut bytes = [0u8; 2];
    h.memory.read(latency, &mut bytes).unwrap();
    assert_eq!(u16::from_le_bytes(bytes), 100);
    let parameter =
        MONITOR2_GPA + core::mem::offset_of!(hyperv_defs::MonitorPage, parameter) as u64;
    assert_eq!(
        h.memory.load_u32(parameter).unwrap(),
        VmbusHarness::connection_of(&offers, relid)
    );
    assert_eq!(h.with(|s| s.vmbus.stats.rule_violations), 0);
    // A bit no monitored channel owns (id 33) goes nowhere: a violation.
    h.memory
        .fetch_or_u32(
            MONITOR2_GPA + hyperv_defs::MonitorPage::pending_offset(1) as u64,
            2,
        )
        .unwrap();
    h.settle();
    assert_eq!(h.with(|s| s.vmbus.stats.rule_violations), 1);
    assert!(h.with(|s| s.vmbus.violations[0].contains("monitor pending bit 33")));
    h.finish();
}

#[test]
fn before_5_0_the_interrupt_page_is_named_and_shared_interrupt_channels_are_marked() {
    let mut h = start_vmbus(
        "interrupt-page",
        ServerConfig {
            shared_interrupt: vec![DISK_INSTANCE],
            ..config()
        },
    );
    const INTERRUPT_PAGE: u64 = 0x7000;
    let mut contact = InitiateContact::empty();
    contact.version_requested = ProtocolVersion::V4_1.0.into();
    contact.interrupt_page_or_target_info = INTERRUPT_PAGE.into();
    contact.monitor_page1 = MONITOR1_GPA.into();
    contact.monitor_page2 = MONITOR2_GPA.into();
    assert_eq!(h.post_message(legacy(), &contact), HvStatus::SUCCESS);
    match h.expect() {
        ChannelMessage::VersionResponse(response) => assert_eq!(response.version_supported, 1),
        other => panic!("{other:?}"),
    }
    let offers = h.request_offers();
    let disk = offers
        .iter()
        .find(|o| o.child_relid.get() == VmbusHarness::relid_of(&offers, DISK_INSTANCE))
        .unwrap();
    assert!(!disk.is_dedicated_interrupt());
    assert!(offers
        .iter()
        .filter(|o| o.child_relid.get() != disk.child_relid.get())
        .all(|o| o.is_dedicated_interrupt()));
    let relid = disk.child_relid.get();
    let connection = disk.connection_id.get();
    let mut rings = h.open_channel(relid);
    assert!(h.write_packet(&mut rings, 9, &[1; 8], true));
    // Linux's order: the relid's bit in the send half, then the signal.
    h.memory
        .fetch_or_u32(
            INTERRUPT_PAGE + 2048 + (relid as u64 / 32) * 4,
            1 << (relid % 32),
        )
        .unwrap();
    assert_eq!(h.signal(connection, 0), HvStatus::SUCCESS);
    assert!(h.wait_packet(&mut rings, Duration::from_secs(5)).is_some());
    assert_eq!(h.with(|s| s.vmbus.stats.interrupt_page_marks), 1);
    assert_eq!(
        h.memory
            .load_u32(INTERRUPT_PAGE + 2048 + (relid as u64 / 32) * 4)
            .unwrap(),
        0,
        "the host took the bit"
    );
    h.finish();
}

#[test]
fn message_sizes_match_the_facts_sheet() {
    // The scripted guest relies on these; a mismatch would make every test
    // above meaningless.
    assert_eq!(OfferChannel::SIZE, 196);
    assert_eq!(OpenChannel::SIZE, 148);
    assert_eq!(InitiateContact::SIZE, 40);
    assert_eq!(VersionResponse::SIZE, 16);
}
