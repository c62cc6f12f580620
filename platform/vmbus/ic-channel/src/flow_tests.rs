//! Flow-control tests of the channel loop: the lost wakeup between the last
//! empty read and the publish, answers on a full out ring, pending_send_sz
//! both ways and interrupt masking, at ring level against [`TestHost`].

use crate::channel::IcChannel;
use crate::memory::{probe, RingSide};
use crate::test_service::{Echo, IDS};
use crate::testing::*;
use env_double::EnvDouble;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use vmbus_protocol::ic::{self, HeartbeatMessage};
use vmbus_protocol::packet::control;

fn open_negotiated() -> (EnvDouble, TestHost, IcChannel, Echo) {
    let mut env = EnvDouble::new();
    let mut host = TestHost::new(&mut env, IDS);
    let mut channel = IcChannel::new(IDS);
    let mut echo = Echo::default();
    channel.on_bus_event(&mut env, &mut echo);
    channel.on_bus_event(&mut env, &mut echo);
    assert!(channel.is_open());
    host.send(&negotiate_request(&[(3, 0)], &[(3, 0)]));
    channel.poll(&mut env, &mut echo);
    assert!(host.receive_ic().is_some(), "negotiation answered");
    (env, host, channel, echo)
}

/// The sequence number of a heartbeat answer.
fn answered_sequence(host: &mut TestHost) -> Option<u64> {
    let (_, body) = host.receive_ic()?;
    let message: HeartbeatMessage = ic::read_body(&body).unwrap();
    Some(message.sequence.get())
}

/// The host writes a request at exactly the worst moment: after the driver
/// found the in ring empty and before it publishes its read index. The
/// host judges empty -> non-empty by the published index, so it does not
/// signal; the driver must look again after publishing or that request
/// (and the channel) waits for good.
#[test]
fn a_packet_written_just_before_the_read_index_is_published_is_answered() {
    let (mut env, host, mut channel, mut echo) = open_negotiated();
    let host = Rc::new(RefCell::new(host));
    host.borrow_mut().send(&heartbeat(10));
    let late: Rc<Cell<Option<bool>>> = Rc::new(Cell::new(None));
    {
        let (host, late) = (host.clone(), late.clone());
        probe::set(move |side, offset| {
            // The driver's first touch of the in ring's read index after
            // reading the request is its publish.
            if side == RingSide::In && offset == control::READ_INDEX && late.get().is_none() {
                let (_, signal) = host.borrow_mut().send_signalled(&heartbeat(20));
                late.set(Some(signal));
            }
        });
    }
    channel.poll(&mut env, &mut echo);
    probe::clear();
    let host_signalled = late.get().expect("the host wrote during the poll");
    if host_signalled {
        // The host's signal reaches the driver as a synic notification.
        channel.poll(&mut env, &mut echo);
    }
    let mut host = host.borrow_mut();
    assert_eq!(answered_sequence(&mut host), Some(11));
    assert_eq!(
        answered_sequence(&mut host),
        Some(21),
        "the late request was never answered: the channel stalled"
    );
}

/// The out ring's control word at `offset`.
fn out_control(host: &TestHost, offset: usize) -> u32 {
    host.control_word(RingSide::Out, offset)
}

fn in_control(host: &TestHost, offset: usize) -> u32 {
    host.control_word(RingSide::In, offset)
}

/// The host writes requests (sequence 10, 20, ...) until the in ring is
/// full; returns how many it wrote.
fn fill_in_ring(host: &mut TestHost, next_sequence: &mut u64) -> u64 {
    let mut written = 0;
    while host.try_send(&heartbeat(*next_sequence)).is_ok() {
        *next_sequence += 10;
        written += 1;
    }
    written
}

/// The host keeps writing and never reads answers: the driver's out ring
/// fills, the answer that does not fit waits (pending_send_sz published,
/// the in ring no longer read), and once the host reads, the one signal
/// it owes resumes everything. Every request is answered once, in order.
#[test]
fn a_full_out_ring_holds_the_answer_until_the_hosts_one_signal() {
    let (mut env, mut host, mut channel, mut echo) = open_negotiated();
    assert_eq!(
        out_control(&host, control::FEATURE_BITS) & control::FEATURE_PENDING_SEND_SZ,
        control::FEATURE_PENDING_SEND_SZ,
        "the driver announces pending_send_sz on the ring it writes"
    );
    let mut next = 10;
    let mut sent = 0;
    for _ in 0..4 {
        sent += fill_in_ring(&mut host, &mut next);
        channel.poll(&mut env, &mut echo);
        if channel.answer_waiting() {
            break;
        }
    }
    assert!(channel.answer_waiting(), "the out ring never filled");
    assert_ne!(out_control(&host, control::PENDING_SEND_SZ), 0);
    // Notifications while the ring is full read nothing more and drop nothing.
    let packets = channel.stats().packets;
    for _ in 0..100 {
        channel.poll(&mut env, &mut echo);
    }
    assert_eq!(channel.stats().packets, packets, "the in ring waits");
    assert!(channel.answer_waiting());

    let mut answers = Vec::new();
    while let Some(sequence) = answered_sequence(&mut host) {
        answers.push(sequence);
    }
    assert_eq!(host.space_signals, 1, "reading frees the space once");
    // That one signal is enough for everything that is left.
    for _ in 0..4 {
        channel.poll(&mut env, &mut echo);
        while let Some(sequence) = answered_sequence(&mut host) {
            answers.push(sequence);
        }
        if !channel.answer_waiting() && answers.len() as u64 == sent {
            break;
        }
        // The driver filled the ring again: the host reads and signals.
        assert!(channel.answer_waiting());
    }
    let expected: Vec<u64> = (1..=sent).map(|i| i * 10 + 1).collect();
    assert_eq!(answers, expected, "every request answered once, in order");
    assert!(channel.stats().answers_waited >= 1);
    assert_eq!(channel.stats().host_faults, 0);
    println!(
        "out ring full: {sent} requests, {} answers waited, host space signals {}",
        channel.stats().answers_waited,
        host.space_signals
    );
}

/// The host fills the in ring and waits with pending_send_sz; the driver,
/// reading, signals it exactly once. (An unread answer is left in the out
/// ring first, so the answers themselves need no signal: the one signal
/// is the space signal.)
#[test]
fn a_full_in_ring_resumes_with_one_signal_from_the_driver() {
    let (mut env, mut host, mut channel, mut echo) = open_negotiated();
    host.send(&heartbeat(10));
    channel.poll(&mut env, &mut echo);
    let signals = host.signals.borrow().len();
    let mut next = 20;
    let sent = fill_in_ring(&mut host, &mut next);
    assert!(sent > 10);
    assert_ne!(in_control(&host, control::PENDING_SEND_SZ), 0);
    assert_eq!(
        in_control(&host, control::FEATURE_BITS) & control::FEATURE_PENDING_SEND_SZ,
        control::FEATURE_PENDING_SEND_SZ
    );
    channel.poll(&mut env, &mut echo);
    assert_eq!(
        host.signals.borrow().len() - signals,
        1,
        "one signal for the space the host waited for"
    );
    host.try_send(&heartbeat(next))
        .expect("the host has room again");
    // Nothing was lost: the host reads every answer (the driver resumes
    // on the host's space signals).
    let mut answers = Vec::new();
    for _ in 0..8 {
        while let Some(sequence) = answered_sequence(&mut host) {
            answers.push(sequence);
        }
        channel.poll(&mut env, &mut echo);
    }
    let expected: Vec<u64> = (1..=sent + 2).map(|i| i * 10 + 1).collect();
    assert_eq!(answers, expected);
}

/// A host that never reads its ring: a host fault, counted and reported
/// once, no busy loop, and client calls that need the channel are refused
/// (not left hanging) until the host reads again.
#[test]
fn a_host_that_never_makes_space_is_a_fault_and_clients_get_an_error() {
    use crate::channel::{CHANNEL_STALLED, HOST_SPACE_TIMEOUT_NS};
    use crate::test_service::CLIENT;
    use crate::IcDriver;
    use component_api::{ChannelSet, Component};

    let (mut env, mut host, channel, echo) = open_negotiated();
    let mut driver = IcDriver {
        channel,
        service: echo,
    };
    let synic = ChannelSet(IDS.synic.bit());
    let mut next = 10;
    for _ in 0..4 {
        fill_in_ring(&mut host, &mut next);
        driver.notified(&mut env, synic);
    }
    assert!(driver.channel.answer_waiting());
    let mut reply = [0u8; 4];
    assert!(driver.protected(&mut env, CLIENT, &[], &mut reply).is_ok());
    env.now_ns += HOST_SPACE_TIMEOUT_NS - 1;
    driver.notified(&mut env, synic);
    assert_eq!(driver.channel.stats().host_faults, 0, "not yet");
    env.now_ns += 1;
    driver.notified(&mut env, synic);
    assert_eq!(driver.channel.stats().host_faults, 1);
    for _ in 0..50 {
        env.now_ns += HOST_SPACE_TIMEOUT_NS;
        driver.notified(&mut env, synic);
    }
    assert_eq!(driver.channel.stats().host_faults, 1, "reported once");
    assert_eq!(env.console.matches("host fault").count(), 1);
    assert_eq!(
        driver.protected(&mut env, CLIENT, &[], &mut reply),
        Err(CHANNEL_STALLED)
    );
    // The host reads again (and signals): answers resume, calls succeed.
    while answered_sequence(&mut host).is_some() {}
    driver.notified(&mut env, synic);
    assert!(env.console.contains("answering resumes"));
    while answered_sequence(&mut host).is_some() {}
    driver.notified(&mut env, synic);
    assert!(driver.protected(&mut env, CLIENT, &[], &mut reply).is_ok());
}
