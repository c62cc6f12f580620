//! `client`: a small user of the integration-component services.
//!
//! At start it writes a pair into the guest KVP pool (`GuestClient` =
//! `ready`, for the host to enumerate) and prints the time and the pairs
//! the host gave us. Then it is driven by notifications only (it never
//! sleeps or polls): on `timesync_event` (a tick after each host time
//! sample), it prints the time and the host's
//! pairs again and counts the ticks in the guest pool (`GuestClientTicks`,
//! and `GuestClient` again, in case a restarted KVP driver found its
//! saved pools corrupt and started empty);
//! on `shutdown_event` it asks the shutdown driver what the host wants and,
//! for a power-off or reboot request, asks `vmbus` to unload the bus and
//! power off with code 0 (this system cannot reboot, so a reboot request
//! ends the run too).
//!
//! Trusts: the services' replies as far as their types go (text is only
//! printed). A service that fails a call (restarting, say) is reported and
//! skipped; the next tick asks again. Writes: the console and, through the
//! KVP service, its own pairs in the guest pool.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, ChannelSet, Component, Env};
use vmbus_ipc::{bus, kvp, shutdown, timesync};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

/// The pair this client writes for the host.
pub const READY_KEY: &str = "GuestClient";
pub const READY_VALUE: &str = "ready";
pub const TICKS_KEY: &str = "GuestClientTicks";
/// At most this many of the host's pairs are printed per report.
pub const MAX_LISTED: u16 = 4;

pub struct Client {
    pub ticks: u32,
    /// The unload has been asked for: later notifications change nothing.
    pub unloading: bool,
}

fn set_pair(env: &mut dyn Env, key: &str, value: &str) {
    let (Ok(wire_key), Ok(wire_value)) = (
        heapless::String::try_from(key),
        heapless::String::try_from(value),
    ) else {
        println!(env, "kvp pair {key} is too long to send");
        return;
    };
    let request = kvp::Request::Set {
        pool: kvp::POOL_GUEST,
        key: wire_key,
        value: wire_value,
    };
    match channels::KVP.call(env, &request) {
        Ok(kvp::Reply::Done) => {}
        other => println!(env, "kvp set {key}: {other:?}"),
    }
}

impl Client {
    /// Print the time and the host's KVP pairs.
    pub fn report(&mut self, env: &mut dyn Env) {
        match channels::TIMESYNC.call(env, &timesync::Request::Now) {
            Ok(timesync::Reply::Time {
                now_100ns_since_1601,
                samples,
                ..
            }) => println!(
                env,
                "time {} ({samples} host samples)",
                timesync::civil_time(now_100ns_since_1601)
            ),
            Ok(timesync::Reply::NotSynced) => println!(env, "time not synced yet"),
            Err(error) => println!(env, "time service: {error:?}"),
        }
        for index in 0..MAX_LISTED {
            let request = kvp::Request::Enumerate {
                pool: kvp::POOL_EXTERNAL,
                index,
            };
            match channels::KVP.call(env, &request) {
                Ok(kvp::Reply::Pair { key, value }) => {
                    println!(env, "kvp from host: {key} = {value}")
                }
                Ok(kvp::Reply::NotFound) => {
                    if index == 0 {
                        println!(env, "kvp: no pairs from the host yet");
                    }
                    break;
                }
                other => {
                    println!(env, "kvp service: {other:?}");
                    break;
                }
            }
        }
    }

    /// A tick: report, and let the host see we are alive.
    pub fn tick(&mut self, env: &mut dyn Env) {
        self.ticks = self.ticks.wrapping_add(1);
        self.report(env);
        let mut count = heapless::String::<12>::new();
        let _ = core::fmt::write(&mut count, format_args!("{}", self.ticks));
        set_pair(env, TICKS_KEY, &count);
        // Again on every tick: a restarted KVP driver keeps its pools, but
        // starts empty if it found them corrupt.
        set_pair(env, READY_KEY, READY_VALUE);
    }

    /// The shutdown driver notified us.
    pub fn on_shutdown_event(&mut self, env: &mut dyn Env) {
        if self.unloading {
            return;
        }
        let pending = match channels::SHUTDOWN.call(env, &shutdown::Request::Pending) {
            Ok(reply) => reply,
            Err(error) => {
                println!(env, "shutdown service: {error:?}");
                return;
            }
        };
        let shutdown::Reply::Requested {
            kind,
            force,
            reason,
        } = pending
        else {
            return;
        };
        println!(
            env,
            "host asks for {kind:?}{} (\"{reason}\"): unloading the bus and powering off",
            if force { ", forced" } else { "" }
        );
        self.report(env);
        self.unloading = true;
        let request = bus::Request::Unload {
            power_off_code: Some(0),
        };
        match channels::VMBUS.call(env, &request) {
            Ok(bus::Reply::Accepted) => {}
            other => {
                println!(env, "vmbus refused the unload: {other:?}");
                // Let a later notification try again.
                self.unloading = false;
            }
        }
    }
}

impl Component for Client {
    fn init(env: &mut dyn Env) -> Self {
        let mut client = Client {
            ticks: 0,
            unloading: false,
        };
        set_pair(env, READY_KEY, READY_VALUE);
        client.report(env);
        // A request may have come before we started.
        client.on_shutdown_event(env);
        client
    }

    fn notified(&mut self, env: &mut dyn Env, set: ChannelSet) {
        if set.contains(channels::TIMESYNC_EVENT) && !self.unloading {
            self.tick(env);
        }
        if set.contains(channels::SHUTDOWN_EVENT) {
            self.on_shutdown_event(env);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use component_api::CallError;
    use env_double::EnvDouble;
    use std::cell::RefCell;
    use std::rc::Rc;
    use std::vec;
    use std::vec::Vec;

    type Pairs = Rc<RefCell<Vec<(u8, std::string::String, std::string::String)>>>;

    struct Services {
        pairs: Pairs,
        shutdown: Rc<RefCell<shutdown::Reply>>,
        time: Rc<RefCell<timesync::Reply>>,
    }

    fn services(env: &mut EnvDouble) -> Services {
        let pairs: Pairs = Rc::default();
        let store = pairs.clone();
        env.on_typed_call::<kvp::Kvp>(channels::KVP, move |request: kvp::Request| {
            let mut store = store.borrow_mut();
            match request {
                kvp::Request::Set { pool, key, value } => {
                    store.retain(|(p, k, _)| !(*p == pool && k == key.as_str()));
                    store.push((pool, key.as_str().into(), value.as_str().into()));
                    kvp::Reply::Done
                }
                kvp::Request::Enumerate { pool, index } => store
                    .iter()
                    .filter(|(p, _, _)| *p == pool)
                    .nth(index as usize)
                    .map_or(kvp::Reply::NotFound, |(_, k, v)| kvp::Reply::Pair {
                        key: k.as_str().try_into().unwrap(),
                        value: v.as_str().try_into().unwrap(),
                    }),
                _ => kvp::Reply::Refused,
            }
        });
        let shutdown = Rc::new(RefCell::new(shutdown::Reply::None));
        let pending = shutdown.clone();
        env.on_typed_call::<shutdown::Shutdown>(channels::SHUTDOWN, move |_: shutdown::Request| {
            pending.borrow().clone()
        });
        let time = Rc::new(RefCell::new(timesync::Reply::NotSynced));
        let now = time.clone();
        env.on_typed_call::<timesync::TimeSync>(channels::TIMESYNC, move |_: timesync::Request| {
            *now.borrow()
        });
        env.on_typed_call::<bus::Bus>(channels::VMBUS, |_: bus::Request| bus::Reply::Accepted);
        Services {
            pairs,
            shutdown,
            time,
        }
    }

    #[test]
    fn at_start_it_writes_its_pair_and_reports() {
        let mut env = EnvDouble::new();
        let services = services(&mut env);
        services
            .pairs
            .borrow_mut()
            .push((0, "VirtualMachineName".into(), "vm1".into()));
        let client = Client::init(&mut env);
        assert!(!client.unloading);
        assert!(services.pairs.borrow().contains(&(
            kvp::POOL_GUEST,
            READY_KEY.into(),
            READY_VALUE.into()
        )));
        assert!(env.console.contains("time not synced yet"));
        assert!(env
            .console
            .contains("kvp from host: VirtualMachineName = vm1"));
        assert!(env.calls_on::<bus::Bus>(channels::VMBUS).is_empty());
    }

    #[test]
    fn a_tick_prints_the_time_and_counts_in_the_guest_pool() {
        let mut env = EnvDouble::new();
        let services = services(&mut env);
        let mut client = Client::init(&mut env);
        // 2026-11-25 00:00:00 UTC.
        *services.time.borrow_mut() = timesync::Reply::Time {
            now_100ns_since_1601: timesync::UNIX_EPOCH_100NS + 1_795_564_800 * 10_000_000,
            samples: 3,
            last_sample_ns: 1,
        };
        client.tick(&mut env);
        client.tick(&mut env);
        assert!(env
            .console
            .contains("time 2026-11-25 00:00:00 UTC (3 host samples)"));
        assert!(env.console.contains("kvp: no pairs from the host yet"));
        assert!(services
            .pairs
            .borrow()
            .contains(&(kvp::POOL_GUEST, TICKS_KEY.into(), "2".into())));
    }

    #[test]
    fn a_shutdown_request_unloads_the_bus_with_power_off_once() {
        let mut env = EnvDouble::new();
        let services = services(&mut env);
        let mut client = Client::init(&mut env);
        // A notification without a request does nothing.
        client.notified(&mut env, ChannelSet(channels::SHUTDOWN_EVENT.bit()));
        assert!(env.calls_on::<bus::Bus>(channels::VMBUS).is_empty());
        *services.shutdown.borrow_mut() = shutdown::Reply::Requested {
            kind: shutdown::Kind::PowerOff,
            force: false,
            reason: "maintenance".try_into().unwrap(),
        };
        client.notified(&mut env, ChannelSet(channels::SHUTDOWN_EVENT.bit()));
        client.notified(&mut env, ChannelSet(channels::SHUTDOWN_EVENT.bit()));
        assert_eq!(
            env.calls_on::<bus::Bus>(channels::VMBUS),
            vec![bus::Request::Unload {
                power_off_code: Some(0)
            }]
        );
        assert!(client.unloading);
        assert!(env
            .console
            .contains("host asks for PowerOff (\"maintenance\")"));
    }

    #[test]
    fn timesync_ticks_drive_the_reports_until_unloading() {
        let mut env = EnvDouble::new();
        let services = services(&mut env);
        let mut client = Client::init(&mut env);
        client.notified(&mut env, ChannelSet(channels::TIMESYNC_EVENT.bit()));
        assert_eq!(client.ticks, 1);
        *services.shutdown.borrow_mut() = shutdown::Reply::Requested {
            kind: shutdown::Kind::PowerOff,
            force: false,
            reason: heapless::String::new(),
        };
        client.notified(&mut env, ChannelSet(channels::SHUTDOWN_EVENT.bit()));
        client.notified(&mut env, ChannelSet(channels::TIMESYNC_EVENT.bit()));
        assert_eq!(client.ticks, 1);
    }

    #[test]
    fn failing_services_are_reported_not_fatal() {
        let mut env = EnvDouble::new();
        env.on_call(channels::TIMESYNC, |_, _| Err(CallError::ServerFaulted));
        env.on_call(channels::KVP, |_, _| Err(CallError::ServerFaulted));
        env.on_call(channels::SHUTDOWN, |_, _| Err(CallError::ServerFaulted));
        let mut client = Client::init(&mut env);
        client.tick(&mut env);
        client.notified(&mut env, ChannelSet(channels::SHUTDOWN_EVENT.bit()));
        assert!(env.console.contains("time service: ServerFaulted"));
        assert!(env.console.contains("shutdown service: ServerFaulted"));
        assert!(!client.unloading);
    }

    #[test]
    fn a_refused_unload_is_tried_again_on_the_next_notification() {
        let mut env = EnvDouble::new();
        let services = services(&mut env);
        env.on_typed_call::<bus::Bus>(channels::VMBUS, |_: bus::Request| {
            bus::Reply::Refused(bus::Refusal::Unavailable)
        });
        let mut client = Client::init(&mut env);
        *services.shutdown.borrow_mut() = shutdown::Reply::Requested {
            kind: shutdown::Kind::Reboot,
            force: true,
            reason: heapless::String::new(),
        };
        client.notified(&mut env, ChannelSet(channels::SHUTDOWN_EVENT.bit()));
        assert!(!client.unloading);
        client.notified(&mut env, ChannelSet(channels::SHUTDOWN_EVENT.bit()));
        assert_eq!(env.calls_on::<bus::Bus>(channels::VMBUS).len(), 2);
    }
}
