//! `heartbeat`: the heartbeat integration-component driver.
//!
//! The host sends a heartbeat with a sequence number every few seconds and
//! takes the guest for alive while the answers (sequence + 1) come back.
//! The channel loop (`ic-channel`) opens the channel through `vmbus`,
//! negotiates framework 3.0/1.0 and heartbeat 3.0/1.0 and reports them;
//! this crate answers the heartbeats and prints a line for the first and
//! then every [`LOG_EVERY`]th.
//!
//! Trusts: nothing from the host (a body shorter than a heartbeat is
//! rejected and counted; see `ic-channel` for when the driver gives up).
//! Writes: its own rings (answers) and the console.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, Env};
use ic_channel::{body_mut, ChannelIds, DriverService, IcDriver, IcService, Rejection};
use vmbus_protocol::ic::{self, HeartbeatMessage, IcVersion, STATUS_OK};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// One console line per this many heartbeats (the host sends one every
/// few seconds; a line each would drown the console).
pub const LOG_EVERY: u64 = 10;

pub const IDS: ChannelIds = ic_channel::driver_ids!();

#[derive(Default)]
pub struct HeartbeatService {
    pub answered: u64,
    pub last_sequence: Option<u64>,
}

impl IcService for HeartbeatService {
    const MESSAGE_TYPE: u16 = ic::message_type::HEARTBEAT;
    const MESSAGE_VERSIONS: &'static [(u16, u16)] = &ic::versions::HEARTBEAT;

    fn handle(
        &mut self,
        env: &mut dyn Env,
        _version: IcVersion,
        body: &mut [u8],
    ) -> Result<u32, Rejection> {
        let message: &mut HeartbeatMessage = body_mut(body)?;
        let sequence = message.sequence.get();
        // Wrapping: the number is the host's; its overflow is not our fault.
        message.sequence = sequence.wrapping_add(1).into();
        self.answered += 1;
        self.last_sequence = Some(sequence);
        if self.answered == 1 || self.answered.is_multiple_of(LOG_EVERY) {
            println!(
                env,
                "heartbeat {} answered (sequence {sequence})", self.answered
            );
        }
        Ok(STATUS_OK)
    }
}

impl DriverService for HeartbeatService {
    const IDS: ChannelIds = IDS;
}

/// The component: the channel loop around [`HeartbeatService`].
pub type Heartbeat = IcDriver<HeartbeatService>;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use component_api::{Channel, Component, Refusal};
    use env_double::EnvDouble;
    use ic_channel::testing::*;
    use std::vec;

    fn started() -> (EnvDouble, TestHost, Heartbeat) {
        open_driver()
    }

    #[test]
    fn negotiates_the_newest_versions_the_host_offers() {
        let (mut env, mut host, mut component) = started();
        host.send(&negotiate_request(
            &[(1, 0), (3, 0)],
            &[(1, 0), (3, 0), (4, 0)],
        ));
        notify_synic(&mut component, &mut env);
        let (header, body) = host.receive_ic().unwrap();
        assert_eq!(header.status.get(), STATUS_OK);
        assert_eq!(negotiated_in(&body), Some(((3, 0), (3, 0))));
        assert_eq!(host.bus.borrow().reported, vec![((3, 0), (3, 0))]);
    }

    #[test]
    fn an_old_host_gets_1_0() {
        let (mut env, mut host, mut component) = started();
        host.send(&negotiate_request(&[(1, 0)], &[(1, 0)]));
        notify_synic(&mut component, &mut env);
        let (_, body) = host.receive_ic().unwrap();
        assert_eq!(negotiated_in(&body), Some(((1, 0), (1, 0))));
    }

    #[test]
    fn versions_the_guest_does_not_speak_fail_the_negotiation() {
        let (mut env, mut host, mut component) = started();
        host.send(&negotiate_request(&[(2, 0)], &[(3, 0)]));
        notify_synic(&mut component, &mut env);
        let (header, body) = host.receive_ic().unwrap();
        assert_eq!(header.status.get(), ic::STATUS_FAIL);
        assert_eq!(negotiated_in(&body), None);
        host.send(&heartbeat(1));
        notify_synic(&mut component, &mut env);
        assert!(host.receive().is_none());
    }

    #[test]
    fn echoes_sequence_plus_one_and_logs_every_tenth() {
        let (mut env, mut host, mut component) = started();
        negotiate(&mut component, &mut env, &mut host, &[(3, 0)], &[(3, 0)]);
        for sequence in 100..100 + LOG_EVERY {
            let transaction = host.send(&heartbeat(sequence));
            notify_synic(&mut component, &mut env);
            let (id, payload) = host.receive().unwrap();
            assert_eq!(id, transaction);
            let message = ic::parse_ic_message(&payload).unwrap();
            assert_eq!(
                message.header.flags(),
                ic::IcFlags::TRANSACTION | ic::IcFlags::RESPONSE
            );
            let body: HeartbeatMessage = ic::read_body(message.body).unwrap();
            assert_eq!(body.sequence.get(), sequence + 1);
        }
        assert_eq!(component.service.answered, LOG_EVERY);
        assert!(env.console.contains("heartbeat 1 answered (sequence 100)"));
        assert!(env.console.contains("heartbeat 10 answered (sequence 109)"));
        assert!(!env.console.contains("heartbeat 2 answered"));
        // The sequence wraps instead of overflowing.
        host.send(&heartbeat(u64::MAX));
        notify_synic(&mut component, &mut env);
        let (_, body) = host.receive_ic().unwrap();
        let body: HeartbeatMessage = ic::read_body(&body).unwrap();
        assert_eq!(body.sequence.get(), 0);
    }

    #[test]
    fn a_short_heartbeat_is_rejected_without_an_answer() {
        let (mut env, mut host, mut component) = started();
        negotiate(&mut component, &mut env, &mut host, &[(3, 0)], &[(3, 0)]);
        host.send(&ic_request(ic::message_type::HEARTBEAT, (3, 0), &[1, 2, 3]));
        notify_synic(&mut component, &mut env);
        assert!(host.receive().is_none());
        assert_eq!(component.channel.stats().rejected, 1);
        assert!(env.console.contains("body shorter than its message"));
    }

    #[test]
    fn heartbeat_has_no_client_and_refuses_every_call() {
        let (mut env, _host, mut component) = started();
        let mut reply = [0u8; 16];
        for channel in 0..8 {
            assert_eq!(
                component.protected(&mut env, Channel(channel), &[0], &mut reply),
                Err(Refusal::NOT_SERVED)
            );
        }
    }
}
