//! Flow-control tests of the channel loop: the lost wakeup between the last
//! empty read and the publish, answers on a full out ring, pending_send_sz
//! both ways and interrupt masking, at ring level against [`TestHost`].

use crate::channel::IcChannel;
use crate::memory::probe;
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
    let in_read_index = IDS.ring_out_bytes + control::READ_INDEX;
    let late: Rc<Cell<Option<bool>>> = Rc::new(Cell::new(None));
    {
        let (host, late) = (host.clone(), late.clone());
        probe::set(move |offset| {
            // The driver's first touch of the in ring's read index after
            // reading the request is its publish.
            if offset == in_read_index && late.get().is_none() {
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
