//! A hostile ring: the input supplies the control page indices and the data
//! area; the reader drains it. It must never ask the memory for an
//! out-of-range copy (RingError::Memory) and never panic.
#![no_main]
use core::sync::atomic::Ordering;
use libfuzzer_sys::fuzz_target;
use vmbus_protocol::packet::control;
use vmbus_ring::{HeapRingMemory, RingError, RingMemory, RingReader, RingWriter};

const SIZE: usize = 2048;

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let word = |i: usize| u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]);
    let memory = HeapRingMemory::new(SIZE);
    let body = &data[17..];
    memory.poke(0, &body[..body.len().min(SIZE)]);
    let set = |offset, value| memory.control(offset).unwrap().store(value, Ordering::SeqCst);
    // Indices are mostly made valid-looking so the packet paths get exercised.
    let mode = data[16];
    let fix = |value: u32| if mode & 1 == 0 { (value % SIZE as u32) & !7 } else { value };
    set(control::READ_INDEX, fix(word(0)));
    set(control::WRITE_INDEX, fix(word(4)));
    set(control::PENDING_SEND_SZ, word(8));
    set(control::FEATURE_BITS, word(12));
    let Ok(mut reader) = RingReader::new(&memory) else {
        return;
    };
    let mut out = vec![0u8; if mode & 2 == 0 { SIZE } else { 64 }];
    for _ in 0..64 {
        match reader.try_read(&mut out) {
            Ok(Some(info)) => assert!(info.len <= out.len()),
            Ok(None) => break,
            Err(RingError::Memory) => panic!("out-of-range request"),
            Err(RingError::BadPacket(_)) => {}
            Err(_) => break,
        }
    }
    assert_ne!(reader.finish_batch(), Err(RingError::Memory));
    // The writer against whatever the reader left behind.
    if let Ok(mut writer) = RingWriter::new(&memory, mode & 4 != 0) {
        let len = (word(0) % 600) as usize;
        let result = writer.write_in_band(1, false, &vec![0u8; len]);
        assert_ne!(result, Err(RingError::Memory));
    }
});
