//! Channel messages with the type forced to one the parser knows (offers
//! with sub-channel indices, OpenChannel, ModifyChannel and its response,
//! the GPADL messages, ...) and a real protocol version, so every input
//! reaches a message's own checks. Accepted fixed-size messages must be a
//! copy of the input's prefix.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmbus_protocol::gpadl::{GpadlAssembler, GpadlMessages};
use vmbus_protocol::{parse, ChannelMessage, ProtocolVersion};
use zerocopy::IntoBytes;

const VERSIONS: [ProtocolVersion; 10] = [
    ProtocolVersion::V0_13,
    ProtocolVersion::V1_1,
    ProtocolVersion::V2_4,
    ProtocolVersion::V3_0,
    ProtocolVersion::V4_0,
    ProtocolVersion::V4_1,
    ProtocolVersion::V5_0,
    ProtocolVersion::V5_2,
    ProtocolVersion::V5_3,
    ProtocolVersion::V6_0,
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let version = VERSIONS[data[0] as usize % VERSIONS.len()];
    let mut message = data[1..].to_vec();
    message.truncate(240);
    // Message types 0..=29 (0 and 18-20 are refused as unknown).
    let message_type = (data[1] % 30) as u32;
    if message.len() >= 4 {
        message[..4].copy_from_slice(&message_type.to_le_bytes());
    }
    let Ok(parsed) = parse(&message, version) else {
        return;
    };
    let prefix = |bytes: &[u8]| assert_eq!(bytes, &message[..bytes.len()], "{parsed:?}");
    match &parsed {
        ChannelMessage::OfferChannel(m) => prefix(m.as_bytes()),
        ChannelMessage::OpenChannel(m) => prefix(m.as_bytes()),
        ChannelMessage::OpenChannel2(m) => prefix(m.as_bytes()),
        ChannelMessage::ModifyChannel(m) => prefix(m.as_bytes()),
        ChannelMessage::ModifyChannelResponse(m) => prefix(m.as_bytes()),
        ChannelMessage::GpadlCreated(m) => prefix(m.as_bytes()),
        ChannelMessage::GpadlTorndown(m) => prefix(m.as_bytes()),
        ChannelMessage::RescindChannelOffer(m) => prefix(m.as_bytes()),
        ChannelMessage::GpadlHeader(header) => {
            // A header the parser accepts either starts an assembly or is
            // refused by it, never a panic; if a single range, rebuilding it
            // with GpadlMessages and assembling must give the same range.
            if let Ok(assembler) = GpadlAssembler::<8192>::new(header) {
                if let Ok(ranges) = assembler.ranges() {
                    if let [range] = ranges.as_slice() {
                        let rebuilt = GpadlMessages::new(
                            1,
                            2,
                            range.pfns,
                            range.byte_offset,
                            range.byte_count,
                        )
                        .expect("an assembled range rebuilds");
                        let mut again: Option<GpadlAssembler<8192>> = None;
                        for outgoing in rebuilt {
                            match parse(outgoing.as_bytes(), version).expect("ours parse") {
                                ChannelMessage::GpadlHeader(h) => {
                                    again = Some(GpadlAssembler::new(&h).expect("ours assemble"))
                                }
                                ChannelMessage::GpadlBody(b) => {
                                    again.as_mut().unwrap().add_body(&b).expect("our body");
                                }
                                other => panic!("{other:?}"),
                            }
                        }
                        let again = again.unwrap();
                        assert!(again.is_complete());
                        let ranges_again = again.ranges().unwrap();
                        assert_eq!(ranges_again[0].pfns, range.pfns);
                        assert_eq!(ranges_again[0].byte_offset, range.byte_offset);
                        assert_eq!(ranges_again[0].byte_count, range.byte_count);
                    }
                }
            }
        }
        _ => {}
    }
});
