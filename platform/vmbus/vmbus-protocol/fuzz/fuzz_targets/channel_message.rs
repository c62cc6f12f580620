//! Any bytes, any negotiated version, to the channel-message parser.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmbus_protocol::{parse, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let version = ProtocolVersion(u32::from_le_bytes([data[0], data[1], data[2], data[3]]));
    let message = &data[4..];
    if let Ok(parsed) = parse(message, version) {
        let message_type = vmbus_protocol::messages::peek_type(message).unwrap();
        assert!(message_type.introduced_in().unwrap() <= version, "{parsed:?}");
    }
});
