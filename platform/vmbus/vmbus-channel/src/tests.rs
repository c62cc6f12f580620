//! The channel against a host end made of plain `vmbus-ring` writers and
//! readers over heap memory, which can also send what a host must not.

use crate::*;
use proptest::prelude::*;
use std::sync::Arc;
use std::vec::Vec;
use vmbus_protocol::packet::{
    descriptor_for, parse_packet, PacketKind, PacketType, TransferPageHeader, TransferPageRange,
};
use vmbus_ring::{HeapRingMemory, RingError, RingReader, RingWriter, Signal};
use zerocopy::byteorder::little_endian::{U16, U32};
use zerocopy::IntoBytes;

type Memory = Arc<HeapRingMemory>;
type Channel = DataChannel<Memory, u32, 4>;

struct Host {
    reader: RingReader<Memory>,
    writer: RingWriter<Memory>,
}

const RECEIVE_SET: u16 = 0xCAFE;

fn setup(ring_bytes: usize) -> (Channel, Host) {
    let out_ring = Arc::new(HeapRingMemory::new(ring_bytes));
    let in_ring = Arc::new(HeapRingMemory::new(ring_bytes));
    let guest = DataChannel::new(
        RingWriter::new(out_ring.clone(), true).unwrap(),
        RingReader::new(in_ring.clone()).unwrap(),
    );
    let host = Host {
        reader: RingReader::new(out_ring).unwrap(),
        writer: RingWriter::new(in_ring, true).unwrap(),
    };
    (guest, host)
}

fn data_buffer() -> SharedBuffer {
    SharedBuffer::new(0x10_0000, 3 * 4096, 5).unwrap()
}

fn receive_buffer() -> ReceiveBuffer {
    ReceiveBuffer {
        buffer: SharedBuffer::new(0x80_0000, 16 * 4096, 6).unwrap(),
        transfer_page_set_id: RECEIVE_SET,
    }
}

impl Host {
    /// Read one guest packet and hand its parsed view to `check`.
    fn read(&mut self, check: impl FnOnce(vmbus_protocol::packet::Packet<'_>)) {
        let mut bytes = [0u8; 4096];
        let info = self.reader.try_read(&mut bytes).unwrap().expect("a packet");
        check(parse_packet(&bytes[..info.len]).unwrap());
        let _ = self.reader.finish_batch().unwrap();
    }

    fn complete(&mut self, id: u64, payload: &[u8]) {
        let _ = self.writer.write_completion(id, payload).unwrap();
    }

    fn transfer_pages(&mut self, id: u64, set: u16, ranges: &[(u32, u32)]) {
        let mut header = TransferPageHeader {
            transfer_page_set_id: U16::new(set),
            sender_owns_set: 0,
            reserved: 0,
            range_count: U32::new(ranges.len() as u32),
        }
        .as_bytes()
        .to_vec();
        for &(offset, count) in ranges {
            header.extend_from_slice(
                TransferPageRange {
                    byte_count: U32::new(count),
                    byte_offset: U32::new(offset),
                }
                .as_bytes(),
            );
        }
        let descriptor =
            descriptor_for(PacketType::TransferPages, header.len(), 8, id, true).unwrap();
        let _ = self
            .writer
            .write_parts(&descriptor, &header, &[0x11; 8])
            .unwrap();
    }
}

#[test]
fn in_band_request_completes_once() {
    let (mut guest, mut host) = setup(16384);
    let sent = guest.send_in_band(b"request", Some(7)).unwrap();
    assert!(sent.signal.0, "empty -> non-empty signals the host");
    let id = sent.transaction_id.unwrap();
    host.read(|packet| {
        assert_eq!(packet.kind, PacketKind::InBand);
        assert!(packet.completion_requested);
        assert_eq!(packet.transaction_id, id);
        assert_eq!(&packet.payload[..7], b"request");
    });
    host.complete(id, b"done");
    host.complete(id, b"again");
    host.complete(id + 100, b"made up");
    let mut out = [0u8; 256];
    match guest.receive(&mut out).unwrap().unwrap() {
        Received::Completion {
            transaction_id,
            context,
            payload,
        } => {
            assert_eq!((transaction_id, context), (id, 7));
            assert_eq!(&payload[..4], b"done");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::StaleCompletion(id)))
    );
    assert_eq!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::UnknownCompletion(id + 100)))
    );
    assert_eq!(guest.receive(&mut out), Ok(None));
    let stats = guest.stats();
    assert_eq!(stats.received_completions, 1);
    assert_eq!(stats.refused_stale_completions, 1);
    assert_eq!(stats.refused_unknown_completions, 1);
    assert_eq!(guest.outstanding(), 0);
}

#[test]
fn sends_without_context_ask_for_no_completion() {
    let (mut guest, mut host) = setup(16384);
    let sent = guest.send_in_band(b"note", None).unwrap();
    assert_eq!(sent.transaction_id, None);
    host.read(|packet| assert!(!packet.completion_requested));
    assert_eq!(guest.outstanding(), 0);
}

#[test]
fn page_buffer_describes_one_page_per_range() {
    let (mut guest, mut host) = setup(16384);
    let buffer = data_buffer();
    let slices = [
        buffer.slice(4000, 200).unwrap(),
        buffer.slice(8192, 10).unwrap(),
    ];
    let sent = guest.send_page_buffer(&slices, b"hdr", Some(1)).unwrap();
    host.read(|packet| {
        let PacketKind::GpaDirect(ranges) = packet.kind else {
            panic!("{:?}", packet.kind)
        };
        let got: Vec<(u32, u32, Vec<u64>)> = ranges
            .iter()
            .map(|r| (r.byte_offset, r.byte_count, r.pfns().collect()))
            .collect();
        assert_eq!(
            got,
            [
                (4000, 96, std::vec![0x100]),
                (0, 104, std::vec![0x101]),
                (0, 10, std::vec![0x102]),
            ]
        );
        assert_eq!(packet.transaction_id, sent.transaction_id.unwrap());
        assert_eq!(&packet.payload[..3], b"hdr");
    });
    assert_eq!(guest.stats().sent_page_buffer, 1);
}

#[test]
fn multi_page_describes_each_slice_as_one_range() {
    let (mut guest, mut host) = setup(16384);
    let buffer = data_buffer();
    let slices = [
        buffer.slice(100, 9000).unwrap(),
        buffer.slice(12000, 288).unwrap(),
    ];
    let _ = guest.send_multi_page(&slices, b"cmd", None).unwrap();
    host.read(|packet| {
        let PacketKind::GpaDirect(ranges) = packet.kind else {
            panic!("{:?}", packet.kind)
        };
        let got: Vec<(u32, u32, Vec<u64>)> = ranges
            .iter()
            .map(|r| (r.byte_offset, r.byte_count, r.pfns().collect()))
            .collect();
        assert_eq!(
            got,
            [
                (100, 9000, std::vec![0x100, 0x101, 0x102]),
                (12000 - 8192, 288, std::vec![0x102]),
            ]
        );
    });
}

#[test]
fn limits_and_full_rings_give_the_context_back() {
    let (mut guest, _host) = setup(8192);
    let big = SharedBuffer::new(0x100_0000, 300 * 4096, 9).unwrap();
    let all = big.slice(0, 300 * 4096).unwrap();
    let refused = guest.send_multi_page(&[all], b"", Some(3)).unwrap_err();
    assert_eq!(refused.error, ChannelError::TooManyPages);
    assert_eq!(refused.context, Some(3));
    let refused = guest
        .send_page_buffer(&[big.slice(0, 65 * 4096).unwrap()], b"", Some(4))
        .unwrap_err();
    assert_eq!(
        (refused.error, refused.context),
        (ChannelError::TooManyPages, Some(4))
    );
    assert_eq!(
        guest.send_page_buffer(&[], b"", Some(5)).unwrap_err().error,
        ChannelError::TooManyPages
    );
    // Fill the out ring (the host never reads).
    let mut sent = 0;
    let refused = loop {
        match guest.send_in_band(&[0u8; 1000], Some(sent)) {
            Ok(_) => {
                sent += 1;
                let _ = guest.fail_outstanding().count();
            }
            Err(error) => break error,
        }
        assert!(sent < 100);
    };
    assert!(matches!(
        refused.error,
        ChannelError::Ring(RingError::Full { .. })
    ));
    assert_eq!(refused.context, Some(sent));
    assert_eq!(guest.outstanding(), 0);
}

#[test]
fn too_many_outstanding_is_refused() {
    let (mut guest, _host) = setup(65536);
    for context in 0..4 {
        let _ = guest.send_in_band(b"x", Some(context)).unwrap();
    }
    let refused = guest.send_in_band(b"x", Some(4)).unwrap_err();
    assert_eq!(refused.error, ChannelError::TooManyOutstanding);
    let failed: Vec<u32> = {
        let mut contexts: Vec<u32> = guest.fail_outstanding().map(|(_, c)| c).collect();
        contexts.sort();
        contexts
    };
    assert_eq!(failed, [0, 1, 2, 3]);
}

#[test]
fn completions_after_a_reset_are_stale() {
    let (mut guest, mut host) = setup(16384);
    let id = guest
        .send_in_band(b"x", Some(1))
        .unwrap()
        .transaction_id
        .unwrap();
    assert_eq!(guest.fail_outstanding().count(), 1);
    host.complete(id, b"");
    let mut out = [0u8; 64];
    assert_eq!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::StaleCompletion(id)))
    );
}

#[test]
fn transfer_pages_inside_the_receive_buffer_are_delivered() {
    let (mut guest, mut host) = setup(16384);
    let mut out = [0u8; 512];
    host.transfer_pages(40, RECEIVE_SET, &[(0, 1514)]);
    // Before the receive buffer is known, nothing may point into it.
    assert_eq!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::Transfer {
            transaction_id: 40,
            error: TransferError::NoReceiveBuffer
        }))
    );
    guest.set_receive_buffer(Some(receive_buffer()));
    host.transfer_pages(41, RECEIVE_SET, &[(4096, 1514), (16 * 4096 - 60, 60)]);
    match guest.receive(&mut out).unwrap().unwrap() {
        Received::TransferPages {
            transaction_id,
            completion_requested,
            ranges,
            ..
        } => {
            assert_eq!(transaction_id, 41);
            assert!(completion_requested);
            assert!(ranges.iter().eq([
                ReceivedRange {
                    offset: 4096,
                    len: 1514
                },
                ReceivedRange {
                    offset: 16 * 4096 - 60,
                    len: 60
                }
            ]));
        }
        other => panic!("{other:?}"),
    }
    let _ = guest.send_completion(41, b"ok").unwrap();
    host.read(|packet| {
        assert_eq!(packet.kind, PacketKind::Completion);
        assert_eq!(packet.transaction_id, 41);
    });
}

#[test]
fn transfer_pages_outside_the_receive_buffer_are_refused_and_counted() {
    let (mut guest, mut host) = setup(16384);
    guest.set_receive_buffer(Some(receive_buffer()));
    let mut out = [0u8; 512];
    host.transfer_pages(50, RECEIVE_SET, &[(0, 10), (16 * 4096 - 60, 61)]);
    host.transfer_pages(51, RECEIVE_SET + 1, &[(0, 10)]);
    host.transfer_pages(52, RECEIVE_SET, &[(u32::MAX - 3, 8)]);
    host.transfer_pages(53, RECEIVE_SET, &[(0, 64)]);
    assert_eq!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::Transfer {
            transaction_id: 50,
            error: TransferError::RangeOutside {
                index: 1,
                offset: 16 * 4096 - 60,
                count: 61
            }
        }))
    );
    assert!(matches!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::Transfer {
            error: TransferError::WrongSet { .. },
            ..
        }))
    ));
    assert!(matches!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::Transfer {
            error: TransferError::RangeOutside { .. },
            ..
        }))
    ));
    // The channel goes on after refusals.
    assert!(matches!(
        guest.receive(&mut out),
        Ok(Some(Received::TransferPages {
            transaction_id: 53,
            ..
        }))
    ));
    let stats = guest.stats();
    assert_eq!(stats.refused_transfer_outside, 2);
    assert_eq!(stats.refused_transfer_wrong_set, 1);
    assert_eq!(stats.received_transfer_pages, 1);
    assert_eq!(stats.refused(), 3);
}

#[test]
fn host_gpa_direct_and_malformed_packets_are_refused() {
    let (mut guest, mut host) = setup(16384);
    let pfn = [0x100u64];
    let _ = host
        .writer
        .write_gpa_direct(
            9,
            false,
            &[vmbus_ring::GpaRange {
                byte_offset: 0,
                byte_count: 16,
                pfns: &pfn,
            }],
            b"",
        )
        .unwrap();
    // A descriptor of an unknown type (0x5): consumed and counted.
    let mut descriptor = descriptor_for(PacketType::InBand, 0, 8, 1, false).unwrap();
    descriptor.packet_type = U16::new(5);
    let _ = host.writer.write_parts(&descriptor, &[], &[0; 8]).unwrap();
    let _ = host.writer.write_in_band(2, false, b"after").unwrap();
    let mut out = [0u8; 256];
    assert_eq!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::GpaDirectFromHost))
    );
    assert!(matches!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::BadPacket(_)))
    ));
    assert!(matches!(
        guest.receive(&mut out),
        Ok(Some(Received::InBand {
            transaction_id: 2,
            ..
        }))
    ));
    assert_eq!(guest.stats().refused_gpa_direct, 1);
    assert_eq!(guest.stats().refused_bad_packets, 1);
}

/// What a hostile host may send in one packet.
#[derive(Clone, Debug)]
enum HostPacket {
    Completion(u64),
    Transfer(u16, Vec<(u32, u32)>),
    InBand(Vec<u8>),
    Raw(u16, u16, Vec<u8>),
}

fn host_packet() -> impl Strategy<Value = HostPacket> {
    prop_oneof![
        (0u64..12).prop_map(HostPacket::Completion),
        (
            prop_oneof![Just(RECEIVE_SET), any::<u16>()],
            proptest::collection::vec(
                prop_oneof![(0u32..70_000, 0u32..5000), (any::<u32>(), any::<u32>())],
                1..6
            )
        )
            .prop_map(|(set, ranges)| HostPacket::Transfer(set, ranges)),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(HostPacket::InBand),
        (
            any::<u16>(),
            any::<u16>(),
            proptest::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(kind, flags, header)| HostPacket::Raw(kind, flags, header)),
    ]
}

proptest! {
    /// Whatever the host sends, the channel never panics, delivers only
    /// completions of outstanding requests (each once) and transfer ranges
    /// inside the receive buffer, and counts every refusal.
    #[test]
    fn hostile_host_packets(packets in proptest::collection::vec(host_packet(), 1..24)) {
        let (mut guest, mut host) = setup(65536);
        guest.set_receive_buffer(Some(receive_buffer()));
        let mut outstanding = std::collections::BTreeSet::new();
        for context in 0..4u32 {
            let id = guest.send_in_band(b"r", Some(context)).unwrap().transaction_id.unwrap();
            outstanding.insert(id);
        }
        for packet in &packets {
            match packet {
                HostPacket::Completion(id) => host.complete(*id, b""),
                HostPacket::Transfer(set, ranges) => host.transfer_pages(1, *set, ranges),
                HostPacket::InBand(payload) => {
                    let _ = host.writer.write_in_band(3, false, payload).unwrap();
                }
                HostPacket::Raw(kind, flags, header) => {
                    let header = &header[..header.len() / 8 * 8];
                    let mut descriptor =
                        descriptor_for(PacketType::InBand, header.len(), 8, 4, false).unwrap();
                    descriptor.packet_type = U16::new(*kind);
                    descriptor.flags = U16::new(*flags);
                    let _ = host.writer.write_parts(&descriptor, header, &[0; 8]).unwrap();
                }
            }
        }
        let mut out = [0u8; 1024];
        let (mut delivered, mut refused) = (0u64, 0u64);
        for _ in 0..packets.len() {
            match guest.receive(&mut out) {
                Ok(Some(Received::Completion { transaction_id, .. })) => {
                    prop_assert!(outstanding.remove(&transaction_id));
                    delivered += 1;
                }
                Ok(Some(Received::TransferPages { ranges, .. })) => {
                    for range in ranges.iter() {
                        prop_assert!(range.len > 0);
                        prop_assert!(range.offset as u64 + range.len as u64 <= 16 * 4096);
                    }
                    delivered += 1;
                }
                Ok(Some(Received::InBand { .. })) => delivered += 1,
                Ok(None) => prop_assert!(false, "a packet is missing"),
                Err(ChannelError::Refused(_)) => refused += 1,
                Err(other) => prop_assert!(false, "{other:?}"),
            }
        }
        prop_assert_eq!(guest.receive(&mut out), Ok(None));
        prop_assert_eq!(guest.stats().refused(), refused);
        prop_assert_eq!(delivered + refused, packets.len() as u64);
        prop_assert_eq!(guest.outstanding(), outstanding.len());
    }
}

/// A host packet written after the round's last empty read and before the
/// publish brings no interrupt (the published read index says "not
/// empty"): `end_round` must say so, or the channel stalls.
#[test]
fn a_packet_written_before_the_round_ends_is_reported_by_end_round() {
    let (mut guest, mut host) = setup(16 * 4096);
    guest.begin_round().unwrap();
    let _ = host.writer.write_in_band(1, false, &[1; 16]).unwrap();
    let mut out = [0u8; 256];
    assert!(guest.receive(&mut out).unwrap().is_some());
    assert!(guest.receive(&mut out).unwrap().is_none());
    // The host writes now: the published read index is still the round's
    // start, so its write asks for no interrupt.
    let Signal(interrupt) = host.writer.write_in_band(2, false, &[2; 16]).unwrap();
    assert!(!interrupt, "the host would not interrupt");
    let end = guest.end_round().unwrap();
    assert!(end.more, "the late packet must be reported");
    assert!(!end.signal_host);
    assert!(guest.receive(&mut out).unwrap().is_some());
    assert!(guest.receive(&mut out).unwrap().is_none());
    let end = guest.end_round().unwrap();
    assert!(!end.more);
    // Unmasked and published: the next packet interrupts.
    let Signal(interrupt) = host.writer.write_in_band(3, false, &[3; 16]).unwrap();
    assert!(interrupt);
}
