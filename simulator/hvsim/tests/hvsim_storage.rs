//! The storage host behind the whole simulated bus: a scripted guest
//! connects, opens the SCSI controller's channel, initializes storvsp's
//! protocol through the ring, asks for sub-channels (which the bus
//! offers), sees ENUMERATE_BUS after a hot add, and has the controller
//! rescinded with a request the host never completes.
#![forbid(unsafe_code)]

mod common;

use common::vmbus::*;
use hvsim::disk::MemoryDisk;
use hvsim::vmbus::{DeviceConfig, DeviceKind, ServerConfig};
use std::time::Duration;
use vmbus_protocol::messages::ChannelMessage;
use vmbus_protocol::scsi::Cdb6;
use vmbus_protocol::storage::{
    self as vstor, operation, status, version, ProtocolVersion, ScsiRequest, SubChannelCount,
    VstorHeader,
};
use zerocopy::{FromBytes, IntoBytes};

const STORAGE_INSTANCE: uuid::Uuid = uuid::uuid!("11111111-2222-3333-4444-0000000000aa");

fn storage_config() -> ServerConfig {
    let mut config = ServerConfig {
        devices: vec![DeviceConfig {
            class: vmbus_protocol::guid::class::SCSI,
            instance: STORAGE_INSTANCE,
            kind: DeviceKind::Storage,
            monitored: false,
            message_pipe: false,
        }],
        ..ServerConfig::default()
    };
    config.storage.max_sub_channels = 2;
    config
}

fn vstor_packet(op: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![0u8; vstor::MAX_PACKET_SIZE];
    vstor::write_packet(
        &mut bytes,
        version::WIN10,
        op,
        vstor::VSTOR_FLAG_REQUEST_COMPLETION,
        0,
        payload,
    )
    .unwrap();
    bytes
}

/// Sends a request; returns the host's answer (type, header, payload).
fn call(
    h: &mut VmbusHarness,
    rings: &mut GuestRings,
    id: u64,
    op: u32,
    payload: &[u8],
) -> (u64, u16, VstorHeader, Vec<u8>) {
    if h.write_packet(rings, id, &vstor_packet(op, payload), true) {
        h.signal_channel(rings);
    }
    let (transaction_id, packet_type, bytes) = h
        .wait_packet(rings, Duration::from_secs(5))
        .expect("an answer");
    let (header, rest) = VstorHeader::read_from_prefix(&bytes).unwrap();
    (transaction_id, packet_type, header, rest.to_vec())
}

#[test]
fn a_guest_initializes_the_controller_gets_sub_channels_and_rescans() {
    let mut h = start_vmbus("storage", storage_config());
    h.with(|sim| {
        sim.storage_attach(Box::new(MemoryDisk::new(512, 64)))
            .unwrap()
    });
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, STORAGE_INSTANCE);
    let mut rings = h.open_channel(relid);

    let (id, kind, header, _) = call(&mut h, &mut rings, 1, operation::BEGIN_INITIALIZATION, &[]);
    assert_eq!((id, kind), (1, 0xB));
    assert_eq!(header.operation.get(), operation::COMPLETE_IO);
    assert_eq!(header.status.get(), status::SUCCESS);
    let asked = ProtocolVersion {
        major_minor: 0x0700.into(),
        revision: 0.into(),
    };
    let (_, _, header, _) = call(
        &mut h,
        &mut rings,
        2,
        operation::QUERY_PROTOCOL_VERSION,
        asked.as_bytes(),
    );
    assert_eq!(header.status.get(), status::REVISION_MISMATCH);
    let asked = ProtocolVersion {
        major_minor: version::WIN10.into(),
        revision: 0.into(),
    };
    let (_, _, header, _) = call(
        &mut h,
        &mut rings,
        3,
        operation::QUERY_PROTOCOL_VERSION,
        asked.as_bytes(),
    );
    assert_eq!(header.status.get(), status::SUCCESS);
    let (_, _, _, payload) = call(&mut h, &mut rings, 4, operation::QUERY_PROPERTIES, &[]);
    let (properties, _) = vstor::ChannelProperties::read_from_prefix(&payload).unwrap();
    assert_eq!(properties.max_channel_count.get(), 2);
    let (_, _, header, _) = call(&mut h, &mut rings, 5, operation::END_INITIALIZATION, &[]);
    assert_eq!(header.status.get(), status::SUCCESS);

    // CREATE_SUB_CHANNELS after initialization: the bus offers them.
    let count = SubChannelCount { count: 2.into() };
    let (_, _, header, _) = call(
        &mut h,
        &mut rings,
        6,
        operation::CREATE_SUB_CHANNELS,
        count.as_bytes(),
    );
    assert_eq!(header.status.get(), status::SUCCESS);
    let mut sub_offers = 0;
    while let Some(message) = h.next(Duration::from_secs(2)) {
        if let ChannelMessage::OfferChannel(offer) = message {
            assert_eq!(offer.interface_instance.to_uuid(), STORAGE_INSTANCE);
            assert_ne!(offer.sub_channel_index.get(), 0);
            sub_offers += 1;
            if sub_offers == 2 {
                break;
            }
        }
    }
    assert_eq!(sub_offers, 2);
    // Asked again for 2: a count in all, not more of them (as Hyper-V).
    let (_, _, header, _) = call(
        &mut h,
        &mut rings,
        60,
        operation::CREATE_SUB_CHANNELS,
        count.as_bytes(),
    );
    assert_eq!(header.status.get(), status::SUCCESS);

    // TEST UNIT READY in band (no data).
    let request = ScsiRequest::new(0, Cdb6::test_unit_ready().as_bytes(), 2, 0, version::WIN10);
    let (id, _, header, payload) = call(
        &mut h,
        &mut rings,
        7,
        operation::EXECUTE_SRB,
        request.as_bytes(),
    );
    assert_eq!(id, 7);
    assert_eq!(header.status.get(), status::SUCCESS);
    assert_eq!(payload.len(), vstor::PAYLOAD_SIZE);
    assert_eq!(payload[2], vstor::srb::SUCCESS);

    // Hot add: the guest is told to rescan.
    assert_eq!(
        h.with(|sim| sim.storage_hot_add(Box::new(MemoryDisk::new(512, 8)))),
        Some(1)
    );
    let (id, kind, bytes) = h
        .wait_packet(&mut rings, Duration::from_secs(5))
        .expect("ENUMERATE_BUS");
    assert_eq!((id, kind), (0, 0x6));
    let (header, _) = VstorHeader::read_from_prefix(&bytes).unwrap();
    assert_eq!(header.operation.get(), operation::ENUMERATE_BUS);

    // A request the host never completes, then the controller is
    // rescinded with it in flight.
    h.with(|sim| sim.storage_inject(hvsim::channel::storage::StorageFault::Withhold { count: 1 }));
    let read = ScsiRequest::new(
        0,
        vmbus_protocol::scsi::Cdb10::sync_cache(0, 0).as_bytes(),
        2,
        0,
        version::WIN10,
    );
    if h.write_packet(
        &mut rings,
        8,
        &vstor_packet(operation::EXECUTE_SRB, read.as_bytes()),
        true,
    ) {
        h.signal_channel(&rings);
    }
    assert!(h
        .wait_packet(&mut rings, Duration::from_millis(300))
        .is_none());
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
    assert!(rescinded.contains(&relid), "{rescinded:?}");
    assert_eq!(rescinded.len(), 3, "the primary and its two sub-channels");
    let stats = h.with(|sim| sim.vmbus.storage[&STORAGE_INSTANCE].stats);
    assert_eq!(stats.requests, 2);
    assert_eq!(stats.completions_withheld, 1);
    assert_eq!(stats.sub_channels_offered, 2);
    assert_eq!(stats.enumerate_bus_sent, 1);
    assert_eq!(stats.rule_violations, 0);
    h.finish();
}
