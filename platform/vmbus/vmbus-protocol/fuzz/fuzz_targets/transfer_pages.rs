//! Transfer-page packets (ranges into a receive buffer): the input as the
//! header area of a hostile packet. Whatever the parser accepts must lie in
//! the header area and carry the header's set id and range count. (Checking
//! the ranges against the receive buffer the driver shared is the data
//! path's job; its own target belongs with that code.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmbus_protocol::packet::{parse_packet, PacketKind, PacketType, TransferPageRange};

fuzz_target!(|data: &[u8]| {
    if data.len() < 8 {
        return;
    }
    let area_len = (data.len() / 8) * 8;
    let mut packet = vec![0u8; 16];
    let offset8 = (2 + area_len / 8).min(u16::MAX as usize) as u16;
    // Some inputs carry a payload after the header area.
    let len8 = offset8.saturating_add((data.len() % 3) as u16);
    packet[0..2].copy_from_slice(&PacketType::TransferPages.wire().to_le_bytes());
    packet[2..4].copy_from_slice(&offset8.to_le_bytes());
    packet[4..6].copy_from_slice(&len8.to_le_bytes());
    packet.extend_from_slice(&data[..area_len]);
    packet.resize(16 + area_len + 16, 0);
    let Ok(parsed) = parse_packet(&packet) else {
        return;
    };
    let PacketKind::TransferPages {
        transfer_page_set_id,
        ranges,
    } = parsed.kind
    else {
        panic!("type changed")
    };
    assert_eq!(
        transfer_page_set_id,
        u16::from_le_bytes([data[0], data[1]]),
        "set id from the header"
    );
    assert!(!ranges.is_empty());
    assert!(8 + ranges.len() * core::mem::size_of::<TransferPageRange>() <= area_len);
    let range_count = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
    assert_eq!(ranges.len(), range_count as usize);
});
