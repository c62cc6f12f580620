//! The data-path send shapes end to end in one process: the guest side is
//! `vmbus-channel`'s `DataChannel` over rings in the simulated guest memory,
//! the host side hvsim's `ChannelEndpoint` over the same memory. Every
//! shape is streamed and every byte checked; then each fault.

mod common;

use common::vmbus::*;
use hv_interface::GuestMemory;
use hvsim::channel::ChannelEndpoint;
use hvsim::data_path::HostReceiveBuffer;
use hvsim::memory::VecMemory;
use hvsim::vmbus::DeviceKind;
use std::sync::atomic::AtomicU32;
use vmbus_channel::{
    ChannelError, DataChannel, ReceiveBuffer, Received, Refusal, SharedBuffer, TransferError,
};
use vmbus_ring::{MemoryError, RingMemory, RingReader, RingWriter};

const PAGE: u64 = 4096;
const RING_DATA_PAGES: u64 = 8;
const OUT_CONTROL: u64 = 16;
const IN_CONTROL: u64 = OUT_CONTROL + 1 + RING_DATA_PAGES;
const RING_GPADL: u32 = 0x2000;
const DATA_GPADL: u32 = 0x2001;
const DATA_FIRST: u64 = 64;
const DATA_PAGES: u64 = 16;
const RECEIVE_GPADL: u32 = 0x2002;
const RECEIVE_FIRST: u64 = 128;
const RECEIVE_PAGES: u64 = 32;
const RECEIVE_SET: u16 = 0xCAFE;
/// A page the guest never put in any GPADL.
const UNSHARED_PAGE: u64 = 200;

/// One ring in the simulated guest memory (contiguous pages), as the
/// guest maps it.
struct GuestRing<'a> {
    memory: &'a VecMemory,
    control: u64,
}

impl GuestRing<'_> {
    fn data(&self) -> u64 {
        self.control + PAGE
    }
}

impl RingMemory for GuestRing<'_> {
    fn control(&self, offset: usize) -> Result<&AtomicU32, MemoryError> {
        if offset >= PAGE as usize {
            return Err(MemoryError);
        }
        self.memory
            .word(self.control + offset as u64)
            .ok_or(MemoryError)
    }
    fn data_len(&self) -> usize {
        (RING_DATA_PAGES * PAGE) as usize
    }
    fn double_mapped(&self) -> bool {
        false
    }
    fn read_data(&self, offset: usize, out: &mut [u8]) -> Result<(), MemoryError> {
        if offset + out.len() > self.data_len() {
            return Err(MemoryError);
        }
        self.memory
            .read(self.data() + offset as u64, out)
            .map_err(|_| MemoryError)
    }
    fn write_data(&self, offset: usize, data: &[u8]) -> Result<(), MemoryError> {
        if offset + data.len() > self.data_len() {
            return Err(MemoryError);
        }
        self.memory
            .write(self.data() + offset as u64, data)
            .map_err(|_| MemoryError)
    }
}

type Guest<'a> = DataChannel<GuestRing<'a>, u64, 64>;

fn pages(first: u64, count: u64) -> Vec<u64> {
    (first..first + count).collect()
}

fn setup(memory: &VecMemory) -> (Guest<'_>, ChannelEndpoint) {
    setup_kind(memory, DeviceKind::Generic)
}

fn setup_kind(memory: &VecMemory, kind: DeviceKind) -> (Guest<'_>, ChannelEndpoint) {
    let out_ring = || GuestRing {
        memory,
        control: OUT_CONTROL * PAGE,
    };
    let in_ring = || GuestRing {
        memory,
        control: IN_CONTROL * PAGE,
    };
    let mut guest = DataChannel::new(
        RingWriter::new(out_ring(), true).unwrap(),
        RingReader::new(in_ring()).unwrap(),
    );
    guest.set_receive_buffer(Some(ReceiveBuffer {
        buffer: SharedBuffer::new(
            RECEIVE_FIRST * PAGE,
            (RECEIVE_PAGES * PAGE) as usize,
            RECEIVE_GPADL,
        )
        .unwrap(),
        transfer_page_set_id: RECEIVE_SET,
    }));
    let mut host = ChannelEndpoint::new(
        kind,
        RING_GPADL,
        &pages(OUT_CONTROL, 1 + RING_DATA_PAGES),
        &pages(IN_CONTROL, 1 + RING_DATA_PAGES),
        memory,
        0,
    );
    host.gpadls
        .insert(DATA_GPADL, pages(DATA_FIRST, DATA_PAGES));
    host.gpadls
        .insert(RECEIVE_GPADL, pages(RECEIVE_FIRST, RECEIVE_PAGES));
    host.receive_buffer = Some(HostReceiveBuffer {
        gpadl_id: RECEIVE_GPADL,
        transfer_page_set_id: RECEIVE_SET,
        cursor: 0,
    });
    (guest, host)
}

fn data_buffer() -> SharedBuffer {
    SharedBuffer::new(DATA_FIRST * PAGE, (DATA_PAGES * PAGE) as usize, DATA_GPADL).unwrap()
}

/// A deterministic byte pattern (xorshift), so every byte is checkable.
struct Pattern(u64);
impl Pattern {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// Drain the guest's in ring; returns the completions' contexts.
fn guest_completions(guest: &mut Guest<'_>) -> Vec<u64> {
    let mut out = vec![0u8; 4096];
    let mut contexts = Vec::new();
    while let Some(received) = guest.receive(&mut out).unwrap() {
        match received {
            Received::Completion { context, .. } => contexts.push(context),
            other => panic!("unexpected {other:?}"),
        }
    }
    let _ = guest.reader().finish_batch().unwrap();
    contexts
}

#[test]
fn every_send_shape_streams_every_byte_to_the_host() {
    let memory = VecMemory::new(1 << 20);
    let (mut guest, mut host) = setup(&memory);
    let mut pattern = Pattern(0x1234_5678_9ABC_DEF1);
    let contents = pattern.bytes((DATA_PAGES * PAGE) as usize);
    memory.write(DATA_FIRST * PAGE, &contents).unwrap();
    let buffer = data_buffer();
    let mut now = 0;
    for round in 0..300u64 {
        let shape = round % 3;
        let offset = (pattern.next() % (DATA_PAGES * PAGE - 1)) as usize;
        let len =
            1 + (pattern.next() as usize % ((DATA_PAGES * PAGE) as usize - offset)).min(20_000);
        let payload_len = (pattern.next() % 200) as usize;
        let payload = pattern.bytes(payload_len);
        let sent = match shape {
            0 => guest.send_in_band(&payload, Some(round)),
            1 => {
                guest.send_page_buffer(&[buffer.slice(offset, len).unwrap()], &payload, Some(round))
            }
            _ => {
                guest.send_multi_page(&[buffer.slice(offset, len).unwrap()], &payload, Some(round))
            }
        };
        let sent = match sent {
            Ok(sent) => sent,
            Err(error) => {
                // Only the page-buffer limit may refuse (64 pages).
                assert_eq!(error.error, ChannelError::TooManyPages, "{error:?}");
                continue;
            }
        };
        now += 1000;
        let _ = host.step(&memory, u64::from(sent.signal.0), now);
        let packet = host.received.back().expect("the host read the packet");
        assert_eq!(packet.transaction_id, sent.transaction_id.unwrap());
        assert_eq!(&packet.payload[..payload.len()], &payload[..]);
        if shape == 0 {
            assert!(packet.data.is_empty());
        } else {
            assert!(!packet.outside_gpadls);
            assert_eq!(
                packet.data,
                &contents[offset..offset + len],
                "round {round}"
            );
        }
        assert_eq!(guest_completions(&mut guest), [round]);
    }
    assert_eq!(host.stats.gpa_outside_gpadls, 0);
    assert!(host.stats.gpa_direct_received > 150);
    assert_eq!(guest.stats().refused(), 0);
    assert!(host.broken.is_none());
}

#[test]
fn transfer_pages_stream_every_byte_to_the_guest() {
    let memory = VecMemory::new(1 << 20);
    let (mut guest, mut host) = setup(&memory);
    let mut pattern = Pattern(0xFEED_F00D_1234_0001);
    let mut out = vec![0u8; 4096];
    let mut delivered = 0u64;
    for round in 0..200u64 {
        let chunks: Vec<Vec<u8>> = (0..1 + pattern.next() % 4)
            .map(|_| {
                let len = 1 + (pattern.next() % 9000) as usize;
                pattern.bytes(len)
            })
            .collect();
        let views: Vec<&[u8]> = chunks.iter().map(Vec::as_slice).collect();
        host.send_transfer_pages(&memory, 1000 + round, &views)
            .expect("fits the receive buffer");
        let received = guest.receive(&mut out).unwrap().expect("a packet");
        let Received::TransferPages {
            transaction_id,
            ranges,
            ..
        } = received
        else {
            panic!("{received:?}");
        };
        assert_eq!(transaction_id, 1000 + round);
        assert_eq!(ranges.len(), chunks.len());
        for (range, chunk) in ranges.iter().zip(&chunks) {
            let mut got = vec![0u8; range.len as usize];
            memory
                .read(RECEIVE_FIRST * PAGE + range.offset as u64, &mut got)
                .unwrap();
            assert_eq!(&got, chunk);
            delivered += got.len() as u64;
        }
        let _ = guest.reader().finish_batch().unwrap();
        let signal = guest.send_completion(transaction_id, &[]).unwrap();
        let _ = host.step(&memory, u64::from(signal.0), round);
        assert_eq!(host.received.back().unwrap().transaction_id, 1000 + round);
    }
    assert!(delivered > 1 << 20, "the cursor wrapped the buffer");
    assert_eq!(guest.stats().received_transfer_pages, 200);
    assert_eq!(guest.stats().refused(), 0);
}

#[test]
fn a_range_outside_every_gpadl_is_a_counted_violation() {
    let memory = VecMemory::new(1 << 20);
    let (mut guest, mut host) = setup(&memory);
    let unshared = SharedBuffer::new(UNSHARED_PAGE * PAGE, PAGE as usize, 0x9999).unwrap();
    let ring = SharedBuffer::new(OUT_CONTROL * PAGE, PAGE as usize, RING_GPADL).unwrap();
    let shared = data_buffer();
    for (buffer, outside) in [(unshared, true), (ring, true), (shared, false)] {
        let sent = guest
            .send_multi_page(&[buffer.slice(0, 100).unwrap()], b"", Some(1))
            .unwrap();
        let _ = host.step(&memory, u64::from(sent.signal.0), 0);
        let packet = host.received.back().unwrap();
        assert_eq!(packet.outside_gpadls, outside);
        // A violation is not completed; a good request is.
        assert_eq!(guest_completions(&mut guest).len(), usize::from(!outside));
    }
    assert_eq!(host.stats.gpa_outside_gpadls, 2);
    assert_eq!(host.stats.gpa_direct_received, 1);
    assert!(host.broken.is_none(), "a violation is counted, not fatal");
    // A mixed packet (one good range, one outside) is refused whole.
    let sent = guest
        .send_page_buffer(
            &[shared.slice(0, 10).unwrap(), unshared.slice(0, 10).unwrap()],
            b"",
            Some(2),
        )
        .unwrap();
    let _ = host.step(&memory, u64::from(sent.signal.0), 0);
    assert_eq!(host.stats.gpa_outside_gpadls, 3);
    assert!(host.received.back().unwrap().data.is_empty());
}

#[test]
fn host_faults_are_refused_and_counted_by_the_guest() {
    let memory = VecMemory::new(1 << 20);
    let (mut guest, mut host) = setup(&memory);
    let mut out = vec![0u8; 4096];
    host.inject_transfer_outside(&memory, 77).unwrap();
    assert_eq!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::Transfer {
            transaction_id: 77,
            error: TransferError::RangeOutside {
                index: 0,
                offset: (RECEIVE_PAGES * PAGE - 8) as u32,
                count: 64
            }
        }))
    );
    let _signal = host.inject_unknown_completion(&memory);
    assert!(matches!(
        guest.receive(&mut out),
        Err(ChannelError::Refused(Refusal::UnknownCompletion(_)))
    ));
    // A real completion still matches afterwards.
    let sent = guest.send_in_band(b"ping", Some(5)).unwrap();
    let _ = host.step(&memory, u64::from(sent.signal.0), 0);
    assert_eq!(guest_completions(&mut guest), [5]);
    let stats = guest.stats();
    assert_eq!(stats.refused_transfer_outside, 1);
    assert_eq!(stats.refused_unknown_completions, 1);
    assert_eq!(stats.received_completions, 1);
}

/// Through the whole server: a GPADL the guest creates over a data region
/// after opening the channel becomes resolvable for GPA-direct packets,
/// and stops being so once torn down; the ring's own pages never are.
#[test]
fn the_server_resolves_through_the_channels_created_gpadls() {
    use vmbus_protocol::messages::GpadlTeardown;
    use vmbus_protocol::packet::{descriptor_for, PacketType};
    use vmbus_protocol::{ChannelMessage, VmbusMessage};
    use zerocopy::IntoBytes;

    let mut h = start_vmbus("data-path-gpadls", config());
    let offers = h.boot();
    let relid = VmbusHarness::relid_of(&offers, DISK_INSTANCE);
    let mut rings = h.open_channel(relid);
    let data_pfns: Vec<u64> = (0x300..0x304).collect();
    let contents: Vec<u8> = (0..4 * 4096).map(|i| (i * 7 % 251) as u8).collect();
    h.memory.write(0x300 * PAGE, &contents).unwrap();
    let created = h.create_gpadl(relid, 0x3000, &data_pfns);
    assert_eq!(created.creation_status.get(), 0);

    // One multi-page range: 6000 bytes from offset 100 of page 0x301.
    let write_gpa_direct = |h: &mut VmbusHarness, rings: &mut GuestRings, id: u64, pfns: &[u64]| {
        let mut header = Vec::new();
        header.extend_from_slice(&0u32.to_le_bytes());
        header.extend_from_slice(&1u32.to_le_bytes());
        header.extend_from_slice(&6000u32.to_le_bytes());
        header.extend_from_slice(&100u32.to_le_bytes());
        for pfn in pfns {
            header.extend_from_slice(&pfn.to_le_bytes());
        }
        let descriptor = descriptor_for(PacketType::GpaDirect, header.len(), 0, id, true).unwrap();
        let mut bytes = descriptor.as_bytes().to_vec();
        bytes.extend_from_slice(&header);
        let start = rings.out_write;
        bytes.extend_from_slice(&((start as u64) << 32).to_le_bytes());
        h.memory
            .write(rings.out_data() + start as u64, &bytes)
            .unwrap();
        rings.out_write = start + bytes.len() as u32;
        h.memory
            .store_u32(rings.out_control(), rings.out_write)
            .unwrap();
        h.signal_channel(rings);
        h.settle();
        h.with(|s| {
            let endpoint = s.vmbus.endpoint(relid).unwrap();
            let packet = endpoint.received.back().unwrap().clone();
            (packet, endpoint.stats)
        })
    };

    let (packet, stats) = write_gpa_direct(&mut h, &mut rings, 1, &[0x301, 0x302]);
    assert!(!packet.outside_gpadls);
    assert_eq!(packet.data, &contents[4096 + 100..4096 + 6100]);
    assert_eq!(stats.gpa_direct_received, 1);

    // The ring's pages are not a data buffer.
    let ring_pfns = VmbusHarness::ring_pfns(relid);
    let (packet, stats) = write_gpa_direct(&mut h, &mut rings, 2, &ring_pfns[1..3]);
    assert!(packet.outside_gpadls);
    assert_eq!(stats.gpa_outside_gpadls, 1);

    let mut teardown = GpadlTeardown::empty();
    teardown.child_relid = relid.into();
    teardown.gpadl_id = 0x3000.into();
    let _ = h.send(&teardown);
    assert!(matches!(h.expect(), ChannelMessage::GpadlTorndown(_)));
    let (packet, stats) = write_gpa_direct(&mut h, &mut rings, 3, &[0x301, 0x302]);
    assert!(
        packet.outside_gpadls,
        "a torn-down GPADL no longer resolves"
    );
    assert_eq!(stats.gpa_outside_gpadls, 2);
    assert!(packet.data.is_empty());
    h.finish();
}

/// The data-path test device's host side (`channel/datapath.rs`): every
/// byte the guest sends is compared (a changed byte is counted in the
/// verdict), a stream naming a GPADL the guest never made is refused, and a
/// stream sends in-band and transfer-page packets with the pattern, no more
/// transfer pages in flight than the receive buffer holds.
#[test]
fn datapath_test_device_checks_every_byte_and_streams_back() {
    use vmbus_protocol::datapath_test::{self as test, op, StreamRequest, TestHeader, Verdict};
    use zerocopy::{FromBytes, IntoBytes};
    let memory = VecMemory::new(1 << 20);
    let (mut guest, mut host) = setup_kind(&memory, DeviceKind::DataPathTest);
    host.receive_buffer = None;
    let message = |operation: u32, len: u32, seed: u64, rest: &[u8]| {
        let mut bytes = TestHeader {
            op: operation.into(),
            len: len.into(),
            seed: seed.into(),
        }
        .as_bytes()
        .to_vec();
        bytes.extend_from_slice(rest);
        bytes
    };
    let verdict_of = |guest: &mut Guest<'_>| {
        let mut out = vec![0u8; 4096];
        let Some(Received::Completion { payload, .. }) = guest.receive(&mut out).unwrap() else {
            panic!("no completion");
        };
        let verdict = Verdict::read_from_prefix(payload).unwrap().0;
        let _ = guest.reader().finish_batch().unwrap();
        verdict
    };
    // In band: right, then one byte changed.
    let mut data = vec![0u8; 700];
    test::fill(9, 0, &mut data);
    let sent = guest
        .send_in_band(&message(op::IN_BAND, 700, 9, &data), Some(1))
        .unwrap();
    let _ = host.step(&memory, u64::from(sent.signal.0), 1);
    let verdict = verdict_of(&mut guest);
    assert_eq!(
        (verdict.bytes_checked.get(), verdict.errors.get()),
        (700, 0)
    );
    data[345] ^= 4;
    let sent = guest
        .send_in_band(&message(op::IN_BAND, 700, 9, &data), Some(2))
        .unwrap();
    let _ = host.step(&memory, u64::from(sent.signal.0), 2);
    assert_eq!(verdict_of(&mut guest).errors.get(), 1);
    // GPA direct (multi-page, two ranges) from the shared data buffer.
    let mut contents = vec![0u8; 9000];
    test::fill(11, 0, &mut contents);
    memory.write(DATA_FIRST * PAGE + 100, &contents).unwrap();
    let buffer = data_buffer();
    let slices = [
        buffer.slice(100, 4000).unwrap(),
        buffer.slice(4100, 5000).unwrap(),
    ];
    let sent = guest
        .send_multi_page(&slices, &message(op::GPA_DIRECT, 9000, 11, &[]), Some(3))
        .unwrap();
    let _ = host.step(&memory, u64::from(sent.signal.0), 3);
    let verdict = verdict_of(&mut guest);
    assert_eq!(
        (verdict.bytes_checked.get(), verdict.errors.get()),
        (9000, 0)
    );
    // A stream into a GPADL the guest never made: refused, nothing sent.
    let request = |gpadl: u32| StreamRequest {
        count: 5.into(),
        receive_gpadl: gpadl.into(),
        transfer_page_set_id: u32::from(RECEIVE_SET).into(),
        ranges: 3.into(),
    };
    let sent = guest
        .send_in_band(
            &message(op::START_HOST_STREAM, 1000, 77, request(0x9999).as_bytes()),
            Some(4),
        )
        .unwrap();
    let _ = host.step(&memory, u64::from(sent.signal.0), 4);
    assert_eq!(verdict_of(&mut guest).errors.get(), 1);
    assert_eq!(host.datapath.in_band_sent, 0);
    // A stream into the receive buffer: 5 in band, 5 transfer pages.
    let sent = guest
        .send_in_band(
            &message(
                op::START_HOST_STREAM,
                1000,
                77,
                request(RECEIVE_GPADL).as_bytes(),
            ),
            Some(5),
        )
        .unwrap();
    let _ = host.step(&memory, u64::from(sent.signal.0), 5);
    let mut out = vec![0u8; 4096];
    let (mut in_band, mut transfers) = (0, 0);
    for now in 6..50 {
        let mut signal = false;
        while let Some(received) = guest.receive(&mut out).unwrap() {
            let (id, errors) = match received {
                Received::Completion { payload, .. } => {
                    assert_eq!(
                        Verdict::read_from_prefix(payload).unwrap().0.errors.get(),
                        0
                    );
                    continue;
                }
                Received::InBand {
                    transaction_id,
                    payload,
                    ..
                } => {
                    let (header, rest) = TestHeader::read_from_prefix(payload).unwrap();
                    assert_eq!(header.seed.get(), 77 ^ transaction_id);
                    in_band += 1;
                    let errors = test::mismatches(header.seed.get(), 0, &rest[..1000]);
                    (transaction_id, errors)
                }
                Received::TransferPages {
                    transaction_id,
                    ranges,
                    ..
                } => {
                    assert_eq!(ranges.len(), 3);
                    let mut bytes = Vec::new();
                    for range in ranges.iter() {
                        let mut chunk = vec![0u8; range.len as usize];
                        memory
                            .read(RECEIVE_FIRST * PAGE + u64::from(range.offset), &mut chunk)
                            .unwrap();
                        bytes.extend_from_slice(&chunk);
                    }
                    assert_eq!(bytes.len(), 1000);
                    transfers += 1;
                    (
                        transaction_id,
                        test::mismatches(77 ^ transaction_id, 0, &bytes),
                    )
                }
            };
            assert_eq!(errors, 0);
            let verdict = Verdict {
                op: 0.into(),
                bytes_checked: 1000.into(),
                errors: 0.into(),
                reserved: 0.into(),
            };
            signal |= guest.send_completion(id, verdict.as_bytes()).unwrap().0;
        }
        signal |= guest.reader().finish_batch().unwrap().0;
        let _ = host.step(&memory, u64::from(signal), now);
    }
    assert_eq!((in_band, transfers), (5, 5));
    assert_eq!(host.datapath.guest_completions, 10);
    assert_eq!(host.datapath.guest_bytes_checked, 10_000);
    assert_eq!(
        host.datapath.errors, 2,
        "the changed byte and the refused stream"
    );
    assert_eq!(host.stats.unknown_responses, 0);
    assert_eq!(host.stats.gpa_outside_gpadls, 0);
    assert!(host.broken.is_none());
}

#[test]
fn datapath_test_device_takes_a_bounded_sub_channel_request() {
    use vmbus_protocol::datapath_test::{op, TestHeader, Verdict};
    use zerocopy::{FromBytes, IntoBytes};
    let memory = VecMemory::new(1 << 20);
    let (mut guest, mut host) = setup_kind(&memory, DeviceKind::DataPathTest);
    for (id, count, accepted) in [(1u64, 0u32, false), (2, 9, false), (3, 2, true)] {
        let header = TestHeader {
            op: op::CREATE_SUB_CHANNELS.into(),
            len: count.into(),
            seed: 0.into(),
        };
        let sent = guest.send_in_band(header.as_bytes(), Some(id)).unwrap();
        let _ = host.step(&memory, u64::from(sent.signal.0), id);
        let mut out = vec![0u8; 4096];
        let Some(Received::Completion { payload, .. }) = guest.receive(&mut out).unwrap() else {
            panic!("no completion");
        };
        let verdict = Verdict::read_from_prefix(payload).unwrap().0;
        let _ = guest.reader().finish_batch().unwrap();
        assert_eq!(verdict.errors.get(), u32::from(!accepted), "count {count}");
        // The bus (Vmbus::step_channels) offers them and takes the request.
        let requested = host.datapath.sub_channels_requested.take();
        assert_eq!(requested, accepted.then_some(count as u16), "count {count}");
    }
}
