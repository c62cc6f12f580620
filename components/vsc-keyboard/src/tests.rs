extern crate std;
use super::*;
use component_api::ChannelSet;
use env_double::EnvDouble;
use ic_channel::testing::TestHost;
use std::vec::Vec;
use vmbus_protocol::synthkbd::{Keystroke, ProtocolResponse};

fn started() -> (EnvDouble, TestHost, Keyboard) {
    let mut env = EnvDouble::new();
    let host = TestHost::new(&mut env, IDS);
    let mut driver = Keyboard::init(&mut env);
    driver.notified(&mut env, ChannelSet(IDS.vmbus_event.bit()));
    assert!(driver.link.is_open());
    (env, host, driver)
}

fn deliver(env: &mut EnvDouble, host: &mut TestHost, driver: &mut Keyboard, payload: &[u8]) {
    host.send(payload);
    driver.notified(env, ChannelSet(IDS.synic.bit()));
}

/// Started, the protocol request answered with `accepted`.
fn negotiated(accepted: bool) -> (EnvDouble, TestHost, Keyboard) {
    let (mut env, mut host, mut driver) = started();
    let (_, request) = host
        .receive()
        .expect("the driver asks for the protocol at open");
    assert_eq!(
        &request[..8],
        synthkbd::ProtocolRequest::new(synthkbd::VERSION_1_0).as_bytes()
    );
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        ProtocolResponse::new(accepted).as_bytes(),
    );
    (env, host, driver)
}

fn next(env: &mut EnvDouble, driver: &mut Keyboard) -> (Vec<KeyStroke>, u32) {
    let message = env_double::encode_request::<keyboard::Keyboard>(&Request::Next);
    let mut reply = [0u8; component_api::MAX_MESSAGE];
    let len = driver
        .protected(env, channels::TERMINAL, &message, &mut reply)
        .unwrap();
    match env_double::decode_reply::<keyboard::Keyboard>(&reply[..len]) {
        Reply::Keys { keys, dropped } => (keys.into_iter().collect(), dropped),
    }
}

#[test]
fn keystrokes_reach_the_client_in_order_with_their_flags() {
    let (mut env, mut host, mut driver) = negotiated(true);
    assert!(driver.device.accepted);
    assert!(env.console.contains("protocol 1.0 accepted"));
    for (code, flags) in [
        (0x1e, 0),
        (0x1e, info::BREAK),
        (0x48, info::E0),
        (0x1d, info::E1 | info::BREAK),
        (0x00e9, info::UNICODE),
    ] {
        deliver(
            &mut env,
            &mut host,
            &mut driver,
            Keystroke::new(code, flags).as_bytes(),
        );
    }
    // Notified once: when the queue became non-empty.
    assert_eq!(env.notifications_on(channels::TERMINAL_EVENT), 1);
    let (keys, dropped) = next(&mut env, &mut driver);
    assert_eq!(dropped, 0);
    let expected = [
        key_stroke(0x1e, 0),
        KeyStroke {
            code: 0x1e,
            prefix: Prefix::None,
            released: true,
            unicode: false,
        },
        KeyStroke {
            code: 0x48,
            prefix: Prefix::E0,
            released: false,
            unicode: false,
        },
        KeyStroke {
            code: 0x1d,
            prefix: Prefix::E1,
            released: true,
            unicode: false,
        },
        KeyStroke {
            code: 0xe9,
            prefix: Prefix::None,
            released: false,
            unicode: true,
        },
    ];
    assert_eq!(keys, expected);
    assert_eq!(next(&mut env, &mut driver).0, []);
}

#[test]
fn a_full_queue_drops_the_newest_and_counts_them() {
    let (mut env, mut host, mut driver) = negotiated(true);
    let total = QUEUE + 10;
    for i in 0..total {
        deliver(
            &mut env,
            &mut host,
            &mut driver,
            Keystroke::new(i as u16, 0).as_bytes(),
        );
    }
    assert_eq!(driver.device.stats.dropped, 10);
    let (first, dropped) = next(&mut env, &mut driver);
    assert_eq!(dropped, 10);
    assert_eq!(first.len(), keyboard::MAX_KEYS);
    assert_eq!(first[0].code, 0);
    let mut codes: Vec<u16> = first.iter().map(|k| k.code).collect();
    loop {
        let (keys, dropped) = next(&mut env, &mut driver);
        assert_eq!(dropped, 0, "reported once");
        if keys.is_empty() {
            break;
        }
        codes.extend(keys.iter().map(|k| k.code));
    }
    assert_eq!(codes, (0..QUEUE as u16).collect::<Vec<_>>());
}

#[test]
fn hostile_messages_are_refused_and_counted_and_the_driver_goes_on() {
    let (mut env, mut host, mut driver) = negotiated(true);
    // Unknown flags.
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        Keystroke::new(0x1e, 0x40).as_bytes(),
    );
    // Short, oversized (past the padding), unknown type.
    deliver(&mut env, &mut host, &mut driver, &[3, 0, 0, 0, 0x1e]);
    let mut long = [0u8; 24];
    long[..12].copy_from_slice(Keystroke::new(0x1e, 0).as_bytes());
    deliver(&mut env, &mut host, &mut driver, &long);
    deliver(&mut env, &mut host, &mut driver, &[9, 0, 0, 0, 0, 0, 0, 0]);
    let stats = driver.device.stats;
    assert_eq!(stats.refused_unknown_flags, 1);
    assert_eq!(stats.refused_short, 1);
    assert_eq!(stats.refused_oversized, 1);
    assert_eq!(stats.refused_unknown_type, 1);
    assert!(env.console.contains("UnknownFlags(64)"), "{}", env.console);
    assert!(next(&mut env, &mut driver).0.is_empty());
    // Still serving.
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        Keystroke::new(0x2c, 0).as_bytes(),
    );
    assert_eq!(next(&mut env, &mut driver).0, [key_stroke(0x2c, 0)]);
}

#[test]
fn without_an_accepted_protocol_no_keystroke_is_taken() {
    let (mut env, mut host, mut driver) = negotiated(false);
    assert!(!driver.device.accepted);
    assert!(env.console.contains("the host refused protocol 1.0"));
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        Keystroke::new(0x1e, 0).as_bytes(),
    );
    assert_eq!(driver.device.stats.refused_early, 1);
    assert!(next(&mut env, &mut driver).0.is_empty());
    assert_eq!(env.notifications_on(channels::TERMINAL_EVENT), 0);
}

#[test]
fn a_new_offer_starts_a_new_session() {
    let (mut env, host, mut driver) = negotiated(true);
    host.set_state(vmbus_ipc::bus::ChannelState::Rescinded, 1);
    driver.notified(&mut env, ChannelSet(IDS.vmbus_event.bit()));
    assert!(!driver.link.is_open());
    assert!(!driver.device.accepted);
}

#[test]
fn only_the_client_is_served() {
    let (mut env, _host, mut driver) = started();
    let message = env_double::encode_request::<keyboard::Keyboard>(&Request::Next);
    let mut reply = [0u8; 256];
    assert_eq!(
        driver.protected(&mut env, IDS.vmbus.channel(), &message, &mut reply),
        Err(Refusal::NOT_SERVED)
    );
}

proptest::proptest! {
    /// Any payload is a keystroke, a response, or refused and counted.
    #[test]
    fn any_host_message_is_taken_or_refused(
        payloads in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40), 1..16),
    ) {
        let mut env = EnvDouble::new();
        let mut device = KeyboardDevice::default();
        let _ = device.opened(&mut env);
        let _ = device.message(&mut env, ProtocolResponse::new(true).as_bytes());
        for payload in &payloads {
            let before = device.stats.refused() + device.stats.keys;
            let _ = device.message(&mut env, payload);
            let after = device.stats.refused() + device.stats.keys;
            proptest::prop_assert!(after - before <= 1);
            if let Ok(synthkbd::HostMessage::Keystroke(_)) = synthkbd::parse_host_message(payload) {
                proptest::prop_assert_eq!(after - before, 1);
            }
        }
        proptest::prop_assert!(device.queue.len() <= QUEUE);
    }
}
