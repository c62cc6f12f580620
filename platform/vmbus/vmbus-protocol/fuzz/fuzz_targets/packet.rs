//! Any bytes to the ring packet parser; accepted GPA ranges must iterate.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmbus_protocol::packet::{parse_packet, PacketKind};

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = parse_packet(data) {
        assert!(packet.payload.len() <= data.len());
        if let PacketKind::GpaDirect(ranges) = packet.kind {
            assert_eq!(ranges.iter().count(), ranges.len());
            for range in ranges.iter() {
                assert_eq!(range.pfns().count(), range.pfn_count());
            }
        }
    }
});
