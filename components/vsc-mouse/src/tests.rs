extern crate std;
use super::*;
use component_api::ChannelSet;
use env_double::EnvDouble;
use ic_channel::testing::TestHost;
use std::vec::Vec;
use synthhid::{message_type, HidHeader, ProtocolResponse};

fn framed_vec(message: &[u8]) -> Vec<u8> {
    let mut out = std::vec![0u8; message.len() + 8];
    let len = synthhid::frame(message, &mut out).unwrap();
    out.truncate(len);
    out
}

fn device_info(report: &[u8]) -> Vec<u8> {
    let mut out = std::vec![0u8; 512];
    let len = synthhid::device_info(0x045e, 0x0621, report, &mut out).unwrap();
    out.truncate(len);
    out
}

fn input_report(bytes: &[u8]) -> Vec<u8> {
    let mut message = HidHeader::new(message_type::INPUT_REPORT, bytes.len())
        .as_bytes()
        .to_vec();
    message.extend_from_slice(bytes);
    framed_vec(&message)
}

fn deliver(env: &mut EnvDouble, host: &mut TestHost, driver: &mut Mouse, payload: &[u8]) {
    host.send(payload);
    driver.notified(env, ChannelSet(IDS.synic.bit()));
}

fn started() -> (EnvDouble, TestHost, Mouse) {
    let mut env = EnvDouble::new();
    let mut host = TestHost::new(&mut env, IDS);
    let mut driver = Mouse::init(&mut env);
    driver.notified(&mut env, ChannelSet(IDS.vmbus_event.bit()));
    assert!(driver.link.is_open());
    let (_, request) = host.receive().expect("the protocol request at open");
    assert_eq!(
        &request[..20],
        framed_vec(synthhid::ProtocolRequest::new(synthhid::VERSION_2_0).as_bytes()).as_slice()
    );
    (env, host, driver)
}

/// Protocol approved, the Hyper-V descriptor given and acknowledged.
fn ready() -> (EnvDouble, TestHost, Mouse) {
    let (mut env, mut host, mut driver) = started();
    let response = framed_vec(ProtocolResponse::new(synthhid::VERSION_2_0, true).as_bytes());
    deliver(&mut env, &mut host, &mut driver, &response);
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &framed_vec(&device_info(hid::HYPERV_MOUSE)),
    );
    let (_, ack) = host.receive().expect("the device info is acknowledged");
    assert_eq!(
        &ack[..17],
        framed_vec(synthhid::DeviceInfoAck::new().as_bytes()).as_slice()
    );
    (env, host, driver)
}

fn next(env: &mut EnvDouble, driver: &mut Mouse) -> (Vec<PointerEvent>, u32) {
    let message = env_double::encode_request::<mouse::Mouse>(&Request::Next);
    let mut reply = [0u8; component_api::MAX_MESSAGE];
    let len = driver
        .protected(env, channels::TERMINAL, &message, &mut reply)
        .unwrap();
    match env_double::decode_reply::<mouse::Mouse>(&reply[..len]) {
        Reply::Events { events, dropped } => (events.into_iter().collect(), dropped),
    }
}

fn hyperv_report(x: u16, y: u16, buttons: u8, wheel: i8) -> Vec<u8> {
    let mut report = std::vec![buttons];
    report.extend_from_slice(&x.to_le_bytes());
    report.extend_from_slice(&y.to_le_bytes());
    report.push(wheel as u8);
    input_report(&report)
}

#[test]
fn reports_are_decoded_through_the_descriptor() {
    let (mut env, mut host, mut driver) = ready();
    assert!(env.console.contains("protocol 2.0 approved"));
    assert!(
        env.console.contains(
            "device 045e:0621: 6-byte reports, 5 buttons, X 0..=32767, Y 0..=32767, wheel"
        ),
        "{}",
        env.console
    );
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &hyperv_report(0, 0x7fff, 0, 0),
    );
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &hyperv_report(0x4000, 100, 0b101, -3),
    );
    assert_eq!(env.notifications_on(channels::TERMINAL_EVENT), 1);
    let (events, dropped) = next(&mut env, &mut driver);
    assert_eq!(dropped, 0);
    assert_eq!(
        events,
        [
            PointerEvent {
                x: 0,
                y: 0x7fff,
                buttons: 0,
                wheel: 0
            },
            PointerEvent {
                x: 0x4000,
                y: 100,
                buttons: 0b101,
                wheel: -3
            }
        ]
    );
}

#[test]
fn another_descriptor_is_scaled_to_the_full_range() {
    let (mut env, mut host, mut driver) = started();
    let response = framed_vec(ProtocolResponse::new(synthhid::VERSION_2_0, true).as_bytes());
    deliver(&mut env, &mut host, &mut driver, &response);
    // Report ID 2, 3 buttons, X and Y 0..=1023 in 16 bits.
    let descriptor = [
        0x05, 0x01, 0x09, 0x02, 0xa1, 0x01, 0x85, 0x02, 0x05, 0x09, 0x19, 0x01, 0x29, 0x03, 0x15,
        0x00, 0x25, 0x01, 0x95, 0x03, 0x75, 0x01, 0x81, 0x02, 0x95, 0x05, 0x81, 0x01, 0x05, 0x01,
        0x09, 0x30, 0x09, 0x31, 0x15, 0x00, 0x26, 0xff, 0x03, 0x75, 0x10, 0x95, 0x02, 0x81, 0x02,
        0xc0,
    ];
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &framed_vec(&device_info(&descriptor)),
    );
    assert!(host.receive().is_some(), "acknowledged");
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &input_report(&[2, 0b010, 0xff, 0x03, 0x00, 0x02]),
    );
    // Another report ID is refused.
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &input_report(&[3, 0b010, 0xff, 0x03, 0x00, 0x02]),
    );
    assert_eq!(driver.device.stats.refused_report_size, 1);
    let (events, _) = next(&mut env, &mut driver);
    assert_eq!(
        events,
        [PointerEvent {
            x: 0x7fff,
            y: (512 * 0x7fff / 1023) as u16,
            buttons: 0b010,
            wheel: 0
        }]
    );
}

#[test]
fn descriptor_lengths_that_disagree_are_refused_without_an_ack() {
    let (mut env, mut host, mut driver) = started();
    let response = framed_vec(ProtocolResponse::new(synthhid::VERSION_2_0, true).as_bytes());
    deliver(&mut env, &mut host, &mut driver, &response);
    // bLength past what arrived.
    let mut info = device_info(hid::HYPERV_MOUSE);
    info[40] = 250;
    deliver(&mut env, &mut host, &mut driver, &framed_vec(&info));
    // wDescriptorLength longer than what arrived.
    let mut info = device_info(hid::HYPERV_MOUSE);
    info[47] = info[47].wrapping_add(9);
    deliver(&mut env, &mut host, &mut driver, &framed_vec(&info));
    // A report descriptor without a pointer.
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &framed_vec(&device_info(&hid::HYPERV_MOUSE[..28])),
    );
    assert_eq!(driver.device.stats.refused_descriptor_lengths, 2);
    assert_eq!(driver.device.stats.refused_report_descriptors, 1);
    assert!(driver.device.layout.is_none());
    assert!(host.receive().is_none(), "nothing acknowledged");
    assert!(
        env.console.contains("BadDescriptorLength(250)"),
        "{}",
        env.console
    );
    // Reports before a usable device info are refused.
    deliver(&mut env, &mut host, &mut driver, &hyperv_report(1, 1, 0, 0));
    assert_eq!(driver.device.stats.refused_early, 1);
    // A good device info still works after all that.
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &framed_vec(&device_info(hid::HYPERV_MOUSE)),
    );
    assert!(host.receive().is_some());
    deliver(&mut env, &mut host, &mut driver, &hyperv_report(1, 1, 0, 0));
    assert_eq!(next(&mut env, &mut driver).0.len(), 1);
}

#[test]
fn hostile_reports_and_messages_are_refused_and_counted() {
    let (mut env, mut host, mut driver) = ready();
    // Larger than the descriptor says, and shorter.
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &input_report(&[0, 1, 2, 3, 4, 5, 6]),
    );
    deliver(&mut env, &mut host, &mut driver, &input_report(&[0, 1, 2]));
    assert_eq!(driver.device.stats.refused_report_size, 2);
    assert!(
        env.console
            .contains("input report of 7 bytes, descriptor says 6"),
        "{}",
        env.console
    );
    // Framing: an unknown type, a pipe size past the packet, garbage.
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &framed_vec(HidHeader::new(9, 0).as_bytes()),
    );
    let mut lying = hyperv_report(1, 1, 0, 0);
    lying[4] = 0xff;
    deliver(&mut env, &mut host, &mut driver, &lying);
    deliver(&mut env, &mut host, &mut driver, &[0xee; 40]);
    assert_eq!(driver.device.stats.refused_framing, 3);
    assert!(next(&mut env, &mut driver).0.is_empty());
    // Still serving.
    deliver(&mut env, &mut host, &mut driver, &hyperv_report(7, 8, 1, 0));
    assert_eq!(
        next(&mut env, &mut driver).0,
        [PointerEvent {
            x: 7,
            y: 8,
            buttons: 1,
            wheel: 0
        }]
    );
}

#[test]
fn a_full_queue_drops_and_counts() {
    let (mut env, mut host, mut driver) = ready();
    for i in 0..QUEUE + 5 {
        deliver(
            &mut env,
            &mut host,
            &mut driver,
            &hyperv_report(i as u16, 0, 0, 0),
        );
    }
    assert_eq!(driver.device.stats.dropped, 5);
    let (events, dropped) = next(&mut env, &mut driver);
    assert_eq!((events.len(), dropped), (mouse::MAX_EVENTS, 5));
    assert_eq!(events[0].x, 0);
}

#[test]
fn a_refused_protocol_takes_no_device_info() {
    let (mut env, mut host, mut driver) = started();
    let response = framed_vec(ProtocolResponse::new(synthhid::VERSION_2_0, false).as_bytes());
    deliver(&mut env, &mut host, &mut driver, &response);
    deliver(
        &mut env,
        &mut host,
        &mut driver,
        &framed_vec(&device_info(hid::HYPERV_MOUSE)),
    );
    assert!(driver.device.layout.is_none());
    assert_eq!(driver.device.stats.refused_early, 1);
    assert!(host.receive().is_none());
}

proptest::proptest! {
    /// Any payload, after any prefix of the handshake, is taken or
    /// refused and counted; nothing panics and the queue stays bounded.
    #[test]
    fn any_host_message_is_taken_or_refused(
        payloads in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96), 1..16),
        handshake in 0usize..3,
    ) {
        let mut env = EnvDouble::new();
        let mut device = MouseDevice::default();
        let _ = device.opened(&mut env);
        let response = framed_vec(ProtocolResponse::new(synthhid::VERSION_2_0, true).as_bytes());
        let info = framed_vec(&device_info(hid::HYPERV_MOUSE));
        for message in [response, info].iter().take(handshake) {
            let _ = device.message(&mut env, message);
        }
        for payload in &payloads {
            let before = device.stats.refused() + device.stats.reports;
            let _ = device.message(&mut env, payload);
            let after = device.stats.refused() + device.stats.reports;
            // Each is counted once, as a report or a refusal, unless it
            // was a protocol response or device info.
            proptest::prop_assert!(after - before <= 1);
        }
        proptest::prop_assert!(device.queue.len() <= QUEUE);
    }
}
