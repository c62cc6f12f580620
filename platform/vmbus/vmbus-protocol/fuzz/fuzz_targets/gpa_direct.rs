//! GPA-direct packets, both send shapes: the input is turned into a page
//! buffer (offset and length per page) and a multi-page range list, each
//! written by the ring writer and read back by the reader; what the
//! parser accepts must be exactly what was described. The input is also
//! parsed as the header area of a hostile GPA-direct packet.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmbus_protocol::packet::{parse_packet, PacketKind, PacketType, PAGE_SIZE};
use vmbus_ring::{GpaRange, HeapRingMemory, RingError, RingReader, RingWriter};

const RING: usize = 16 * 1024;

fn word(data: &[u8], i: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (k, b) in bytes.iter_mut().enumerate() {
        *b = data.get(i + k).copied().unwrap_or(0);
    }
    u32::from_le_bytes(bytes)
}

/// Read back the one packet in the ring and return its ranges as
/// (byte_offset, byte_count, pfns).
fn read_back(memory: &HeapRingMemory) -> Vec<(u32, u32, Vec<u64>)> {
    let mut reader = RingReader::new(memory).unwrap();
    let mut out = vec![0u8; RING];
    let packet = reader
        .read_packet(&mut out)
        .unwrap()
        .expect("the packet written");
    let PacketKind::GpaDirect(ranges) = packet.kind else {
        panic!("not GPA-direct: {:?}", packet.kind)
    };
    ranges
        .iter()
        .map(|r| (r.byte_offset, r.byte_count, r.pfns().collect()))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    // Hostile: the input as the header area of a GPA-direct packet.
    let mut packet = vec![0u8; 16];
    let area_len = (data.len() / 8) * 8;
    let offset8 = (2 + area_len / 8).min(u16::MAX as usize) as u16;
    packet[0..2].copy_from_slice(&PacketType::GpaDirect.wire().to_le_bytes());
    packet[2..4].copy_from_slice(&offset8.to_le_bytes());
    packet[4..6].copy_from_slice(&offset8.to_le_bytes());
    packet.extend_from_slice(&data[..area_len]);
    if let Ok(parsed) = parse_packet(&packet) {
        let PacketKind::GpaDirect(ranges) = parsed.kind else {
            panic!("type changed")
        };
        let mut described = 8;
        for range in ranges.iter() {
            assert!((range.byte_offset as usize) < PAGE_SIZE && range.byte_count > 0);
            let pages =
                (range.byte_offset as usize + range.byte_count as usize).div_ceil(PAGE_SIZE);
            assert_eq!(range.pfn_count(), pages);
            described += 8 + 8 * pages;
        }
        assert!(described <= area_len, "ranges beyond the header area");
    }

    // Page buffer: up to 8 (gpa, len) pairs from the input.
    let buffers: Vec<(u64, u32)> = data
        .chunks_exact(6)
        .take(8)
        .map(|c| {
            let gpa = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as u64 * 8;
            let len = u16::from_le_bytes([c[4], c[5]]) as u32 % (PAGE_SIZE as u32 + 2);
            (gpa, len)
        })
        .collect();
    let memory = HeapRingMemory::new(RING);
    let mut writer = RingWriter::new(&memory, false).unwrap();
    match writer.write_gpa_direct_buffers(7, true, &buffers, b"payload") {
        Ok(_) => {
            let ranges = read_back(&memory);
            assert_eq!(ranges.len(), buffers.len());
            for ((offset, count, pfns), (gpa, len)) in ranges.iter().zip(&buffers) {
                assert_eq!(*offset as u64, gpa % PAGE_SIZE as u64);
                assert_eq!(*count, *len);
                assert_eq!(pfns.as_slice(), &[gpa / PAGE_SIZE as u64]);
            }
        }
        Err(RingError::BadRange) => {
            assert!(
                buffers.is_empty()
                    || buffers.iter().any(|&(gpa, len)| {
                        len == 0 || (gpa % PAGE_SIZE as u64) as usize + len as usize > PAGE_SIZE
                    })
            );
        }
        Err(error) => panic!("page buffer: {error:?}"),
    }

    // Multi-page range list: up to 4 ranges, each with its PFNs.
    let mut pfn_store: Vec<Vec<u64>> = Vec::new();
    let mut shapes = Vec::new();
    let mut at = 0;
    while shapes.len() < 4 && at + 8 <= data.len() {
        let byte_offset = word(data, at) % (PAGE_SIZE as u32 + 1);
        let byte_count = word(data, at + 4) % (64 * 1024);
        at += 8;
        let pages = (byte_offset as usize + byte_count as usize).div_ceil(PAGE_SIZE);
        // Sometimes one PFN too few or too many: must be refused.
        let skew = (byte_count % 7) as usize;
        let given = match skew {
            0 => pages.saturating_sub(1),
            1 => pages + 1,
            _ => pages,
        };
        pfn_store.push((0..given as u64).map(|i| 0x1000 + i + at as u64).collect());
        shapes.push((byte_offset, byte_count));
    }
    let ranges: Vec<GpaRange<'_>> = shapes
        .iter()
        .zip(&pfn_store)
        .map(|(&(byte_offset, byte_count), pfns)| GpaRange {
            byte_offset,
            byte_count,
            pfns,
        })
        .collect();
    let valid = !ranges.is_empty()
        && ranges.iter().all(|r| {
            r.byte_count > 0
                && (r.byte_offset as usize) < PAGE_SIZE
                && (r.byte_offset as usize + r.byte_count as usize).div_ceil(PAGE_SIZE)
                    == r.pfns.len()
        });
    let memory = HeapRingMemory::new(RING);
    let mut writer = RingWriter::new(&memory, false).unwrap();
    match writer.write_gpa_direct(9, false, &ranges, &data[..data.len().min(64)]) {
        Ok(_) => {
            assert!(valid, "a malformed range list was written");
            let read = read_back(&memory);
            assert_eq!(read.len(), ranges.len());
            for ((offset, count, pfns), range) in read.iter().zip(&ranges) {
                assert_eq!((*offset, *count), (range.byte_offset, range.byte_count));
                assert_eq!(pfns.as_slice(), range.pfns);
            }
        }
        Err(RingError::BadRange) => assert!(!valid, "a valid range list was refused"),
        Err(RingError::TooLarge { .. }) => assert!(valid),
        Err(error) => panic!("range list: {error:?}"),
    }
});
