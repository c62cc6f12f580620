//! Ring behaviour over single- and double-mapped memory.

extern crate std;
use super::*;
use core::sync::atomic::Ordering;
use std::vec;
use std::vec::Vec;
use vmbus_protocol::packet::{control, PacketKind};

const SIZE: usize = 4096;

fn both_memories() -> [(&'static str, std::boxed::Box<dyn RingMemory>); 2] {
    [
        ("single", std::boxed::Box::new(HeapRingMemory::new(SIZE))),
        (
            "double",
            std::boxed::Box::new(DoubleMappedRingMemory::new(SIZE).unwrap()),
        ),
    ]
}

/// A writer (with or without flow control) and a reader on `memory`, and
/// a buffer every packet of the ring fits in.
fn ends<M: RingMemory + Copy>(
    memory: M,
    flow_control: bool,
) -> (RingWriter<M>, RingReader<M>, Vec<u8>) {
    let writer = RingWriter::new(memory, flow_control).unwrap();
    let reader = RingReader::new(memory).unwrap();
    (writer, reader, vec![0u8; SIZE])
}

fn control_word(memory: &dyn RingMemory, offset: usize) -> u32 {
    memory.control(offset).unwrap().load(Ordering::SeqCst)
}

#[test]
fn in_band_round_trip_across_the_wrap() {
    for (name, memory) in both_memories() {
        let memory = &*memory;
        let (mut writer, mut reader, mut out) = ends(memory, true);
        // Sizes that do not divide 4 KiB, so packets straddle the end.
        let mut straddled = 0;
        for i in 0..500u64 {
            let len = 37 + (i as usize * 13) % 300;
            let start = control_word(memory, control::WRITE_INDEX) as usize;
            if start + 16 + len > SIZE {
                straddled += 1;
            }
            let payload: Vec<u8> = (0..len).map(|b| (b as u64 + i) as u8).collect();
            let _ = writer.write_in_band(i, i % 2 == 0, &payload).unwrap();
            let packet = reader.read_packet(&mut out).unwrap().unwrap();
            assert_eq!(packet.transaction_id, i, "{name}");
            assert_eq!(packet.completion_requested, i % 2 == 0);
            assert_eq!(packet.kind, PacketKind::InBand);
            assert_eq!(&packet.payload[..len], &payload[..], "{name} packet {i}");
            let _ = reader.finish_batch().unwrap();
        }
        assert!(
            straddled > 10,
            "{name}: only {straddled} packets crossed the end"
        );
        assert!(!reader.has_data().unwrap());
    }
}

#[test]
fn double_mapping_aliases() {
    let memory = DoubleMappedRingMemory::new(SIZE).unwrap();
    memory
        .write_data(SIZE - 4, &[1, 2, 3, 4, 5, 6, 7, 8])
        .unwrap();
    let mut out = [0u8; 4];
    memory.read_data(0, &mut out).unwrap();
    assert_eq!(out, [5, 6, 7, 8]);
}

#[test]
fn signal_only_on_empty_to_non_empty_with_mask_clear() {
    for (name, memory) in both_memories() {
        let memory = &*memory;
        let (mut writer, mut reader, mut out) = ends(memory, true);
        assert_eq!(
            writer.write_in_band(1, false, b"a").unwrap(),
            Signal(true),
            "{name}"
        );
        assert_eq!(writer.write_in_band(2, false, b"b").unwrap(), Signal(false));
        // Reading without publishing does not make the ring look empty.
        reader.read_packet(&mut out).unwrap().unwrap();
        assert_eq!(writer.write_in_band(3, false, b"c").unwrap(), Signal(false));
        while reader.try_read(&mut out).unwrap().is_some() {}
        let _ = reader.finish_batch().unwrap();
        assert_eq!(writer.write_in_band(4, false, b"d").unwrap(), Signal(true));
        reader.try_read(&mut out).unwrap().unwrap();
        let _ = reader.finish_batch().unwrap();
        reader.mask_interrupts().unwrap();
        assert_eq!(writer.write_in_band(5, false, b"e").unwrap(), Signal(false));
        // Unmasking finds the packet written while masked.
        assert!(reader.unmask_interrupts().unwrap());
        // Drained but not published: still not safe to sleep.
        reader.try_read(&mut out).unwrap().unwrap();
        assert!(reader.unmask_interrupts().unwrap());
        let _ = reader.finish_batch().unwrap();
        assert!(!reader.unmask_interrupts().unwrap());
        assert_eq!(writer.signals(), 2);
    }
}

#[test]
fn batch_publishes_read_index_once() {
    let memory = HeapRingMemory::new(SIZE);
    let (mut writer, mut reader, mut out) = ends(&memory, true);
    for i in 0..5 {
        let _ = writer.write_in_band(i, false, &[0u8; 100]).unwrap();
    }
    for _ in 0..5 {
        reader.try_read(&mut out).unwrap().unwrap();
        assert_eq!(control_word(&memory, control::READ_INDEX), 0);
    }
    assert!(reader.try_read(&mut out).unwrap().is_none());
    let _ = reader.finish_batch().unwrap();
    assert_eq!(
        control_word(&memory, control::READ_INDEX),
        control_word(&memory, control::WRITE_INDEX)
    );
}

#[test]
fn batched_writes_publish_once_and_signal_once() {
    for (name, memory) in both_memories() {
        let memory = &*memory;
        let (mut writer, mut reader, mut out) = ends(memory, true);
        writer.begin_batch();
        for i in 0..3 {
            assert_eq!(
                writer.write_in_band(i, false, b"batched").unwrap(),
                Signal(false),
                "{name}: a write inside a batch never signals"
            );
        }
        // Nothing is visible before the publication.
        assert_eq!(control_word(memory, control::WRITE_INDEX), 0, "{name}");
        assert!(reader.try_read(&mut out).unwrap().is_none(), "{name}");
        // Empty before the batch's first packet: one signal for three.
        assert_eq!(writer.publish().unwrap(), Signal(true), "{name}");
        assert_eq!(writer.publish().unwrap(), Signal(false), "{name}: ended");
        for _ in 0..3 {
            reader.try_read(&mut out).unwrap().unwrap();
        }
        // A batch that starts while the reader's published index is
        // behind (it read but did not publish) must not signal.
        writer.begin_batch();
        let _ = writer.write_in_band(3, false, b"more").unwrap();
        assert_eq!(writer.publish().unwrap(), Signal(false), "{name}");
        while reader.try_read(&mut out).unwrap().is_some() {}
        let _ = reader.finish_batch().unwrap();
        // An empty batch publishes nothing.
        writer.begin_batch();
        assert_eq!(writer.publish().unwrap(), Signal(false), "{name}");
        assert_eq!(writer.signals(), 1, "{name}");
    }
}

#[test]
fn pending_send_size_flow_control() {
    let memory = HeapRingMemory::new(SIZE);
    let (mut writer, mut reader, mut out) = ends(&memory, true);
    assert_eq!(
        control_word(&memory, control::FEATURE_BITS) & control::FEATURE_PENDING_SEND_SZ,
        1
    );
    let payload = [7u8; 1000]; // footprint 1024
    for i in 0..3 {
        let _ = writer.write_in_band(i, false, &payload).unwrap();
    }
    // 3072 used, 1024 free: a 1024-byte packet needs more than 1024.
    assert_eq!(
        writer.write_in_band(3, false, &payload),
        Err(RingError::Full {
            needed: 1024,
            free: 1024
        })
    );
    assert_eq!(control_word(&memory, control::PENDING_SEND_SZ), 1024);
    reader.try_read(&mut out).unwrap().unwrap();
    assert_eq!(
        reader.finish_batch().unwrap(),
        Signal(true),
        "crossed pending_send_sz"
    );
    let _ = writer.write_in_band(3, false, &payload).unwrap();
    assert_eq!(
        control_word(&memory, control::PENDING_SEND_SZ),
        0,
        "cleared after success"
    );
    reader.try_read(&mut out).unwrap().unwrap();
    assert_eq!(
        reader.finish_batch().unwrap(),
        Signal(false),
        "nobody is waiting"
    );
}

#[test]
fn without_flow_control_the_reader_never_signals() {
    let memory = HeapRingMemory::new(SIZE);
    let (mut writer, mut reader, mut out) = ends(&memory, false);
    for i in 0..3 {
        let _ = writer.write_in_band(i, false, &[0u8; 1000]).unwrap();
    }
    assert!(matches!(
        writer.write_in_band(3, false, &[0u8; 1000]),
        Err(RingError::Full { .. })
    ));
    assert_eq!(control_word(&memory, control::PENDING_SEND_SZ), 0);
    reader.try_read(&mut out).unwrap().unwrap();
    assert_eq!(reader.finish_batch().unwrap(), Signal(false));
}

#[test]
fn oversized_packets_are_refused() {
    let memory = HeapRingMemory::new(SIZE);
    let mut writer = RingWriter::new(&memory, true).unwrap();
    assert!(matches!(
        writer.write_in_band(0, false, &[0u8; SIZE]),
        Err(RingError::TooLarge { .. })
    ));
    // The largest packet that fits an empty ring.
    let max_payload = writer.max_packet_len() - 16;
    let _ = writer
        .write_in_band(0, false, &vec![1u8; max_payload])
        .unwrap();
    let mut reader = RingReader::new(&memory).unwrap();
    let mut small = [0u8; 64];
    assert_eq!(
        reader.try_read(&mut small),
        Err(RingError::BufferTooSmall {
            needed: writer.max_packet_len()
        })
    );
}

#[test]
fn gpa_direct_packets() {
    for (name, memory) in both_memories() {
        let memory = &*memory;
        let (mut writer, mut reader, mut out) = ends(memory, true);
        // One single-page range per buffer.
        let _ = writer
            .write_gpa_direct_buffers(9, true, &[(0x5000 + 16, 100), (0x9000, 4096)], b"req")
            .unwrap();
        let packet = reader.read_packet(&mut out).unwrap().unwrap();
        let PacketKind::GpaDirect(ranges) = packet.kind else {
            panic!("{name}: {:?}", packet.kind)
        };
        let ranges: Vec<_> = ranges.iter().collect();
        assert_eq!(ranges.len(), 2);
        assert_eq!((ranges[0].byte_offset, ranges[0].byte_count), (16, 100));
        assert_eq!(ranges[0].pfns().collect::<Vec<_>>(), [5]);
        assert_eq!(ranges[1].pfns().collect::<Vec<_>>(), [9]);
        assert_eq!(&packet.payload[..3], b"req");
        // One multi-page buffer.
        let pfns = [10u64, 11, 12];
        let range = GpaRange {
            byte_offset: 512,
            byte_count: 8192,
            pfns: &pfns,
        };
        let _ = writer
            .write_gpa_direct(10, false, &[range], b"mpb")
            .unwrap();
        let packet = reader.read_packet(&mut out).unwrap().unwrap();
        let PacketKind::GpaDirect(ranges) = packet.kind else {
            panic!()
        };
        let only = ranges.iter().next().unwrap();
        assert_eq!(only.pfns().collect::<Vec<_>>(), pfns);
        assert_eq!(only.byte_count, 8192);
        // Malformed requests never reach the ring.
        assert_eq!(
            writer.write_gpa_direct_buffers(1, false, &[(0x5ff0, 32)], b""),
            Err(RingError::BadRange)
        );
        assert_eq!(
            writer.write_gpa_direct(1, false, &[], b""),
            Err(RingError::BadRange)
        );
    }
}

#[test]
fn hostile_indices_are_refused_on_every_load() {
    let memory = HeapRingMemory::new(SIZE);
    let (mut writer, mut reader, mut out) = ends(&memory, true);
    let _ = writer.write_in_band(1, false, b"x").unwrap();
    memory
        .control(control::WRITE_INDEX)
        .unwrap()
        .store(12, Ordering::SeqCst);
    assert_eq!(
        reader.try_read(&mut out),
        Err(RingError::CorruptIndex {
            which: ring::IndexKind::Write,
            value: 12
        })
    );
    memory
        .control(control::WRITE_INDEX)
        .unwrap()
        .store(SIZE as u32, Ordering::SeqCst);
    assert!(matches!(
        reader.try_read(&mut out),
        Err(RingError::CorruptIndex { .. })
    ));
    memory
        .control(control::READ_INDEX)
        .unwrap()
        .store(4, Ordering::SeqCst);
    assert!(matches!(
        writer.write_in_band(2, false, b"y"),
        Err(RingError::CorruptIndex {
            which: ring::IndexKind::Read,
            ..
        })
    ));
}

#[test]
fn hostile_packets_are_refused() {
    let memory = HeapRingMemory::new(SIZE);
    let (mut writer, mut reader, mut out) = ends(&memory, true);
    // An unknown type is consumed and reported; the next packet reads fine.
    let _ = writer.write_in_band(1, false, b"bad").unwrap();
    memory.poke(0, &[0x5, 0]);
    let _ = writer.write_in_band(2, false, b"good").unwrap();
    assert_eq!(
        reader.read_packet(&mut out),
        Err(RingError::BadPacket(
            vmbus_protocol::packet::PacketError::UnknownType(5)
        ))
    );
    assert_eq!(
        reader
            .read_packet(&mut out)
            .unwrap()
            .unwrap()
            .transaction_id,
        2
    );
    // A length beyond what the writer published.
    let start = control_word(&memory, control::WRITE_INDEX) as usize;
    let _ = writer.write_in_band(3, false, b"x").unwrap();
    memory.poke(start + 4, &200u16.to_le_bytes());
    assert!(matches!(
        reader.try_read(&mut out),
        Err(RingError::Truncated { .. })
    ));
}

#[test]
fn region_memory_checks_its_control_page() {
    let control_page = component_api::region::Region::leaked(4096);
    let data = component_api::region::Region::leaked(SIZE);
    let control = control_page;
    let memory = RegionRingMemory::new(control, data).unwrap();
    assert!(memory.control(4096).is_err());
    assert!(memory.control(2).is_err());
    let mut writer = RingWriter::new(memory, true).unwrap();
    let mut reader = RingReader::new(memory).unwrap();
    let _ = writer.write_in_band(5, false, b"region").unwrap();
    let mut out = [0u8; 64];
    assert_eq!(
        reader
            .read_packet(&mut out)
            .unwrap()
            .unwrap()
            .transaction_id,
        5
    );
    // A control region smaller than a page is refused.
    let small = control_page.subregion(0, 64).unwrap();
    assert!(RegionRingMemory::new(small, data).is_err());
}

#[test]
fn two_threads_stream_without_loss() {
    use std::sync::Arc;
    let memory = Arc::new(DoubleMappedRingMemory::new(4 * SIZE).unwrap());
    let reader_memory = memory.clone();
    const COUNT: u64 = 20_000;
    let consumer = std::thread::spawn(move || {
        let mut reader = RingReader::new(reader_memory).unwrap();
        let mut out = vec![0u8; 4 * SIZE];
        let mut expected = 0u64;
        while expected < COUNT {
            while let Some(packet) = reader.read_packet(&mut out).unwrap() {
                assert_eq!(packet.transaction_id, expected);
                assert_eq!(packet.payload[0], expected as u8);
                expected += 1;
            }
            let _ = reader.finish_batch().unwrap();
            std::thread::yield_now();
        }
    });
    let mut writer = RingWriter::new(memory, true).unwrap();
    let mut payload = [0u8; 200];
    for i in 0..COUNT {
        payload[0] = i as u8;
        loop {
            match writer.write_in_band(i, false, &payload) {
                Ok(_) => break,
                Err(RingError::Full { .. }) => std::thread::yield_now(),
                Err(other) => panic!("{other:?}"),
            }
        }
    }
    consumer.join().unwrap();
}

/// The bytes a writer leaves in the ring for payloads of every padding
/// (0-7 bytes), across the wrap: zero padding after the payload, then the
/// trailer (the packet's start offset in the upper 32 bits), and the next
/// packet right after it. The reader never looks at either, so only the
/// raw bytes show them.
#[test]
fn padding_is_zero_and_the_trailer_names_the_packet_start() {
    for (name, memory) in both_memories() {
        let memory = &*memory;
        let (mut writer, mut reader, mut out) = ends(memory, false);
        // Dirty the data area so zero padding is the writer's doing.
        memory.write_data(0, &[0xEE; SIZE]).unwrap();
        let mut start = 0usize;
        for round in 0..200usize {
            let payload_len = 1 + round % 23;
            let payload = vec![0xA5u8; payload_len];
            let _ = writer.write_in_band(round as u64, false, &payload).unwrap();
            let packet_len = (16 + payload_len).div_ceil(8) * 8;
            let mut raw = vec![0u8; packet_len + 8];
            for (i, byte) in raw.iter_mut().enumerate() {
                let mut one = [0u8];
                memory.read_data((start + i) % SIZE, &mut one).unwrap();
                *byte = one[0];
            }
            assert!(
                raw[16 + payload_len..packet_len].iter().all(|&b| b == 0),
                "{name}: padding of a {payload_len}-byte payload"
            );
            let trailer = u64::from_le_bytes(raw[packet_len..].try_into().unwrap());
            assert_eq!(trailer, (start as u64) << 32, "{name}: trailer");
            let info = reader.try_read(&mut out).unwrap().unwrap();
            assert_eq!(info.len, packet_len, "{name}: packet length");
            assert_eq!(&out[16..16 + payload_len], &payload[..], "{name}: payload");
            let _ = reader.finish_batch().unwrap();
            start = (start + packet_len + 8) % SIZE;
            assert_eq!(control_word(memory, control::WRITE_INDEX) as usize, start);
        }
    }
}
