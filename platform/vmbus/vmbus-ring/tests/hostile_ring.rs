//! Property tests: rings filled with random or mutated bytes and indices.
//! Every operation must return a value or an error, never panic, and never
//! ask the memory for an out-of-range copy (that would surface as
//! `RingError::Memory`, which these tests forbid).
// Heap memory is not built for the loom model (tests/loom_ring.rs).
#![cfg(not(loom))]

use core::sync::atomic::Ordering;
use proptest::prelude::*;
use std::collections::VecDeque;
use vmbus_protocol::packet::control;
use vmbus_ring::{GpaRange, HeapRingMemory, RingError, RingMemory, RingReader, RingWriter};

const SIZE: usize = 1024;

fn any_index() -> impl Strategy<Value = u32> {
    prop_oneof![
        (0u32..(SIZE as u32 / 8)).prop_map(|i| i * 8),
        0u32..(SIZE as u32 + 16),
        any::<u32>(),
    ]
}

fn store(memory: &HeapRingMemory, offset: usize, value: u32) {
    memory
        .control(offset)
        .unwrap()
        .store(value, Ordering::SeqCst);
}

fn drain(reader: &mut RingReader<&HeapRingMemory>, out: &mut [u8]) {
    for _ in 0..200 {
        match reader.try_read(out) {
            Ok(Some(info)) => assert!(info.len <= out.len()),
            Ok(None) => break,
            Err(RingError::Memory) => panic!("ring asked for out-of-range memory"),
            // A consumed bad packet: keep going; anything else stops the channel.
            Err(RingError::BadPacket(_)) => continue,
            Err(_) => break,
        }
    }
    assert_ne!(reader.finish_batch(), Err(RingError::Memory));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn random_rings(
        data in proptest::collection::vec(any::<u8>(), SIZE),
        read in any_index(),
        write in any_index(),
        pending in any_index(),
        features in 0u32..4,
        out_len in prop_oneof![Just(SIZE), 0usize..SIZE],
    ) {
        let memory = HeapRingMemory::new(SIZE);
        memory.poke(0, &data);
        store(&memory, control::READ_INDEX, read);
        store(&memory, control::WRITE_INDEX, write);
        store(&memory, control::PENDING_SEND_SZ, pending);
        store(&memory, control::FEATURE_BITS, features);
        if let Ok(mut reader) = RingReader::new(&memory) {
            let mut out = vec![0u8; out_len];
            drain(&mut reader, &mut out);
        }
    }

    #[test]
    fn mutated_rings(
        sizes in proptest::collection::vec(0usize..200, 1..12),
        gpa in proptest::collection::vec(any::<bool>(), 12),
        edits in proptest::collection::vec((0usize..SIZE, any::<u8>()), 1..10),
        index_edit in proptest::option::of(any_index()),
    ) {
        let memory = HeapRingMemory::new(SIZE);
        let mut writer = RingWriter::new(&memory, true).unwrap();
        let pfns = [1u64, 2, 3];
        for (i, size) in sizes.iter().enumerate() {
            let payload = vec![i as u8; *size];
            let result = if gpa[i] {
                let range = GpaRange { byte_offset: 8, byte_count: 8192, pfns: &pfns };
                writer.write_gpa_direct(i as u64, true, &[range], &payload)
            } else {
                writer.write_in_band(i as u64, false, &payload)
            };
            match result {
                Ok(_) | Err(RingError::Full { .. }) => {}
                Err(other) => panic!("{other:?}"),
            }
        }
        for (at, value) in edits {
            memory.poke(at, &[value]);
        }
        if let Some(write) = index_edit {
            store(&memory, control::WRITE_INDEX, write);
        }
        let mut reader = RingReader::new(&memory).unwrap();
        let mut out = vec![0u8; SIZE];
        drain(&mut reader, &mut out);
    }

    #[test]
    fn writer_against_hostile_reader_index(
        read in any_index(),
        interrupt_mask in any::<u32>(),
        sizes in proptest::collection::vec(0usize..600, 1..8),
    ) {
        let memory = HeapRingMemory::new(SIZE);
        let mut writer = RingWriter::new(&memory, true).unwrap();
        store(&memory, control::READ_INDEX, read);
        store(&memory, control::INTERRUPT_MASK, interrupt_mask);
        for size in sizes {
            let result = writer.write_in_band(0, false, &vec![0u8; size]);
            prop_assert_ne!(result, Err(RingError::Memory));
        }
    }

    /// The ring behaves like a FIFO queue of packets (model check).
    #[test]
    fn ring_matches_a_queue(ops in proptest::collection::vec((0u8..3, 0usize..300), 1..200)) {
        let memory = HeapRingMemory::new(SIZE);
        let mut writer = RingWriter::new(&memory, true).unwrap();
        let mut reader = RingReader::new(&memory).unwrap();
        let mut model: VecDeque<(u64, usize)> = VecDeque::new();
        let mut out = vec![0u8; SIZE];
        let mut next_id = 0u64;
        for (op, size) in ops {
            match op {
                0 => match writer.write_in_band(next_id, false, &vec![next_id as u8; size]) {
                    Ok(_) => { model.push_back((next_id, size)); next_id += 1; }
                    Err(RingError::Full { .. }) => {}
                    Err(other) => panic!("{other:?}"),
                },
                1 => match reader.read_packet(&mut out).unwrap() {
                    Some(packet) => {
                        let (id, size) = model.pop_front().expect("model has a packet");
                        prop_assert_eq!(packet.transaction_id, id);
                        prop_assert!(packet.payload.len() >= size && packet.payload.len() < size + 8);
                        prop_assert!(packet.payload[..size].iter().all(|b| *b == id as u8));
                    }
                    None => prop_assert!(model.is_empty()),
                },
                _ => { let _ = reader.finish_batch().unwrap(); }
            }
        }
    }
}
