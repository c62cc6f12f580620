//! Any bytes to the integration-component parsers and the negotiation helper.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vmbus_protocol::ic;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = ic::parse_ic_message(data) {
        let _ = ic::parse_negotiate(message.body);
        let _ = ic::read_body::<ic::ShutdownMessage>(message.body);
        let _ = ic::read_body::<ic::TimesyncRefMessage>(message.body);
        if let Ok(kvp) = ic::read_body::<ic::KvpEnumerateMessage>(message.body) {
            let _ = kvp.value.key_bytes();
            let _ = kvp.value.value_bytes();
        }
    }
    let mut out = [0u8; 64];
    if let Ok((len, chosen)) =
        ic::answer_negotiate(data, &ic::versions::FRAMEWORK, &ic::versions::TIMESYNC, &mut out)
    {
        assert_eq!(ic::read_negotiate_response(&out[..len]), Ok(chosen));
    }
    let _ = ic::read_negotiate_response(data);
});
