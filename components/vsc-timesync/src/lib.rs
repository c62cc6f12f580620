//! `timesync`: the time-synchronisation integration-component driver, and
//! the guest's time service.
//!
//! The host sends its time (100 ns units since 1601-01-01 UTC) as a sync
//! (set the clock now: at boot, after a resume) or a sample (periodic
//! drift correction). The channel loop (`ic-channel`) opens the channel,
//! negotiates framework 3.0/1.0 and timesync 4.0/3.0/1.0 and reports them;
//! this crate answers every message, keeps the last host time with the
//! guest monotonic time it arrived at (`Env::now_ns`), and serves
//! `timesync::Request::Now` on `client`: the host time advanced by the
//! guest time elapsed since.
//!
//! Messages of 4.0 also carry the partition reference time at which the
//! host took the sample. timesync reads reference time itself from the
//! reference TSC page (`reference_tsc`, mapped read-only; `synic` enabled
//! it) and the TSC ([`Env::time_stamp_counter`]), and relates the two: the
//! difference is how long ago the host took the sample (its delivery
//! delay), and the sample is advanced by it, as Linux's hv_utils does. A
//! delay outside 0 ..= [`MAX_SAMPLE_AGE`] (a hostile or broken host, a
//! page that is not valid) relates nothing: the sample is used as it came
//! and counted.
//!
//! It notifies each client (`driver::CLIENT_EVENTS`) after each sample
//! (the client's periodic tick).
//!
//! Trusts: nothing from the host: a body shorter than its version's
//! message is rejected; a message with neither the sync nor the sample flag
//! is answered but not used. The host is the authority on wall-clock time,
//! so its values are taken as they come (arithmetic saturates).
//! Writes: its own rings, the console.
#![no_std]
#![forbid(unsafe_code)]

use component_api::{println, Channel, Env, Refusal};
use core::sync::atomic::Ordering;
use hyperv_defs::reference_tsc;
use ic_channel::{ChannelIds, DriverService, IcDriver, IcService, Rejection};
use vmbus_ipc::timesync::{civil_time, Reply, Request};
use vmbus_protocol::ic::{
    self, read_body, timesync_flags, IcVersion, TimesyncMessage, TimesyncRefMessage, STATUS_OK,
};

include!(concat!(env!("OUT_DIR"), "/ids.rs"));

pub const IDS: ChannelIds = ic_channel::driver_ids!();

/// One console line per this many samples (syncs are always printed).
pub const LOG_EVERY: u32 = 10;

/// The oldest sample (in reference time, 100 ns units) that is advanced by
/// its age: 10 s. An older or future "age" is the host's error.
pub const MAX_SAMPLE_AGE: u64 = 100_000_000;

/// How a sample related to reference time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relation {
    /// Taken this long before it arrived (100 ns units); the sample was
    /// advanced by it.
    Age(u64),
    /// Reference time arrived at (from the page) minus the sample's, when
    /// outside 0 ..= MAX_SAMPLE_AGE.
    Implausible(i64),
    /// No reference time here: a version 3 message, no valid page, no TSC.
    Unavailable,
}

/// The last time the host told us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    pub host_100ns_since_1601: u64,
    pub guest_ns: u64,
}

#[derive(Default)]
pub struct TimesyncService {
    pub last: Option<Sample>,
    /// Syncs and samples used.
    pub samples: u32,
    /// Messages with neither flag.
    pub ignored: u32,
    /// How the last sample related to reference time.
    pub last_relation: Option<Relation>,
    /// Samples advanced by their age / with an implausible age / with no
    /// reference time.
    pub related: u32,
    pub implausible: u32,
    pub unrelated: u32,
}

/// Reference time now from the reference TSC page and the TSC, if the page
/// is valid and the TSC readable.
pub fn reference_time_now(env: &mut dyn Env) -> Option<u64> {
    let page = env.region(regions::REFERENCE_TSC);
    let load_u32 = |at: usize| {
        page.atomic_u32(at)
            .map_or(reference_tsc::SEQUENCE_INVALID, |word| {
                word.load(Ordering::Acquire)
            })
    };
    let load_u64 = |at: usize| {
        page.atomic_u64(at)
            .map_or(0, |word| word.load(Ordering::Acquire))
    };
    let tsc = env.time_stamp_counter()?.ticks;
    reference_tsc::read_reference_time(load_u32, load_u64, || tsc)
        .ok()
        .map(|(time, _)| time)
}

/// Relate a sample taken at reference time `sample_reference` to
/// reference time `now` (either unknown: unavailable).
pub fn relate(sample_reference: Option<u64>, now: Option<u64>) -> Relation {
    let (Some(sample), Some(now)) = (sample_reference, now) else {
        return Relation::Unavailable;
    };
    let age = now.wrapping_sub(sample) as i64;
    match u64::try_from(age) {
        Ok(age) if age <= MAX_SAMPLE_AGE => Relation::Age(age),
        _ => Relation::Implausible(age),
    }
}

impl TimesyncService {
    /// The current time as the host last told it, advanced by guest time.
    pub fn now(&self, guest_ns: u64) -> Reply {
        match self.last {
            None => Reply::NotSynced,
            Some(sample) => {
                let elapsed_100ns = guest_ns.saturating_sub(sample.guest_ns) / 100;
                Reply::Time {
                    now_100ns_since_1601: sample
                        .host_100ns_since_1601
                        .saturating_add(elapsed_100ns),
                    samples: self.samples,
                    last_sample_ns: sample.guest_ns,
                }
            }
        }
    }
}

impl IcService for TimesyncService {
    const MESSAGE_TYPE: u16 = ic::message_type::TIMESYNC;
    const MESSAGE_VERSIONS: &'static [(u16, u16)] = &ic::versions::TIMESYNC;

    fn handle(
        &mut self,
        env: &mut dyn Env,
        version: IcVersion,
        body: &mut [u8],
    ) -> Result<u32, Rejection> {
        let short = |_| Rejection("body shorter than its timesync message");
        let (host_time, sample_reference, flags) = if version.major.get() >= 4 {
            let message: TimesyncRefMessage = read_body(body).map_err(short)?;
            (
                message.parent_time.get(),
                Some(message.vm_reference_time.get()),
                message.flags,
            )
        } else {
            let message: TimesyncMessage = read_body(body).map_err(short)?;
            (message.parent_time.get(), None, message.flags)
        };
        let sync = flags & timesync_flags::SYNC != 0;
        if !sync && flags & timesync_flags::SAMPLE == 0 {
            self.ignored += 1;
            return Ok(STATUS_OK);
        }
        let now_reference = match sample_reference {
            Some(_) => reference_time_now(env),
            None => None,
        };
        let guest_ns = env.now_ns();
        let relation = relate(sample_reference, now_reference);
        let host_time = match relation {
            Relation::Age(age) => {
                self.related = self.related.saturating_add(1);
                host_time.saturating_add(age)
            }
            Relation::Implausible(_) => {
                self.implausible = self.implausible.saturating_add(1);
                host_time
            }
            Relation::Unavailable => {
                self.unrelated = self.unrelated.saturating_add(1);
                host_time
            }
        };
        self.last_relation = Some(relation);
        self.last = Some(Sample {
            host_100ns_since_1601: host_time,
            guest_ns,
        });
        self.samples = self.samples.saturating_add(1);
        // The first related sample is worth a line of its own: hosted, the
        // host publishes its page only once it has measured the TSC's rate
        // (tens of ms), often after the first sample.
        let first_related = matches!(relation, Relation::Age(_)) && self.related == 1;
        if sync || self.samples == 1 || first_related || self.samples.is_multiple_of(LOG_EVERY) {
            println!(
                env,
                "time {} {}: host time {}",
                if sync { "sync" } else { "sample" },
                self.samples,
                civil_time(host_time)
            );
            match relation {
                Relation::Age(age) => println!(
                    env,
                    "sample related to reference time: taken {} us before it arrived (reference time {}.{:07} s; {} of {} samples related)",
                    age / 10,
                    now_reference.unwrap_or(0) / 10_000_000,
                    now_reference.unwrap_or(0) % 10_000_000,
                    self.related,
                    self.samples
                ),
                Relation::Implausible(age) => println!(
                    env,
                    "reference time: the host's sample is {} x 100 ns from ours: not related ({} so far)",
                    age,
                    self.implausible
                ),
                Relation::Unavailable => println!(
                    env,
                    "reference time unavailable (no valid reference TSC page or a 3.0 message): the sample is used as it came"
                ),
            }
        }
        for event in driver::CLIENT_EVENTS {
            env.notify(*event);
        }
        Ok(STATUS_OK)
    }
}

impl DriverService for TimesyncService {
    const IDS: ChannelIds = IDS;

    fn serve_client(
        &mut self,
        env: &mut dyn Env,
        channel: Channel,
        message: &[u8],
        reply: &mut [u8],
    ) -> Result<usize, Refusal> {
        serve::timesync(channel, message, reply, |_, request| match request {
            Request::Now => Ok(self.now(env.now_ns())),
        })
    }
}

/// The component: the channel loop around [`TimesyncService`].
pub type Timesync = IcDriver<TimesyncService>;

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use component_api::Component;
    use env_double::EnvDouble;
    use ic_channel::testing::*;
    use std::vec;
    use std::vec::Vec;
    use vmbus_ipc::timesync::UNIX_EPOCH_100NS;
    use zerocopy::FromZeros;

    /// 2026-11-25 00:00:00 UTC.
    const HOST_TIME: u64 = UNIX_EPOCH_100NS + 1_795_564_800 * 10_000_000;

    fn started(offered: &[(u16, u16)]) -> (EnvDouble, TestHost, Timesync) {
        let (mut env, mut host, mut component) = open_driver_with(|env| {
            let page = env.add_region_with(4096, false, Some(0xA_0000));
            assert_eq!(page, regions::REFERENCE_TSC);
        });
        negotiate(
            &mut component,
            &mut env,
            &mut host,
            &[(3, 0), (1, 0)],
            offered,
        );
        (env, host, component)
    }

    fn sample_4(time: u64, flags: u8) -> Vec<u8> {
        let mut body = TimesyncRefMessage::new_zeroed();
        body.parent_time = time.into();
        body.vm_reference_time = 12345.into();
        body.flags = flags;
        ic_request(ic::message_type::TIMESYNC, (4, 0), &bytes_of(&body))
    }

    fn ask(component: &mut Timesync, env: &mut EnvDouble) -> Reply {
        let message = env_double::encode_request::<vmbus_ipc::timesync::TimeSync>(&Request::Now);
        let mut reply = [0u8; 64];
        let len = component
            .protected(env, channels::CLIENT, &message, &mut reply)
            .unwrap();
        env_double::decode_reply::<vmbus_ipc::timesync::TimeSync>(&reply[..len])
    }

    #[test]
    fn negotiates_4_0_and_falls_back_to_3_0() {
        let (mut env, mut host, mut component) = open_driver::<TimesyncService>();
        let newest = [(1, 0), (3, 0), (4, 0)];
        let chosen = negotiate(&mut component, &mut env, &mut host, &[(3, 0)], &newest);
        assert_eq!(chosen, Some(((3, 0), (4, 0))));
        let older = [(1, 0), (3, 0), (2, 0)];
        assert_eq!(
            negotiate(&mut component, &mut env, &mut host, &[(3, 0)], &older),
            Some(((3, 0), (3, 0)))
        );
        assert_eq!(
            host.bus.borrow().reported,
            vec![((3, 0), (4, 0)), ((3, 0), (3, 0))]
        );
    }

    #[test]
    fn now_is_the_last_sample_advanced_by_guest_time() {
        let (mut env, mut host, mut component) = started(&[(4, 0)]);
        assert_eq!(ask(&mut component, &mut env), Reply::NotSynced);
        env.now_ns = 5_000_000_000;
        host.send(&sample_4(HOST_TIME, timesync_flags::SYNC));
        notify_synic(&mut component, &mut env);
        let (header, _) = host.receive_ic().unwrap();
        assert_eq!(header.status.get(), STATUS_OK);
        assert_eq!(
            header.flags(),
            ic::IcFlags::TRANSACTION | ic::IcFlags::RESPONSE
        );
        assert!(env
            .console
            .contains("time sync 1: host time 2026-11-25 00:00:00 UTC"));
        env.now_ns += 1_500_000_000;
        assert_eq!(
            ask(&mut component, &mut env),
            Reply::Time {
                now_100ns_since_1601: HOST_TIME + 15_000_000,
                samples: 1,
                last_sample_ns: 5_000_000_000,
            }
        );
        // A later sample replaces it.
        host.send(&sample_4(HOST_TIME + 100_000_000, timesync_flags::SAMPLE));
        notify_synic(&mut component, &mut env);
        host.receive_ic().unwrap();
        assert_eq!(
            ask(&mut component, &mut env),
            Reply::Time {
                now_100ns_since_1601: HOST_TIME + 100_000_000,
                samples: 2,
                last_sample_ns: 6_500_000_000,
            }
        );
    }

    /// The hypervisor's side of the reference TSC page: `clock` under
    /// `sequence`.
    fn publish(env: &EnvDouble, clock: reference_tsc::TscClock, sequence: u32) {
        let page = env.test_view(regions::REFERENCE_TSC);
        page.write(reference_tsc::SCALE_OFFSET, &clock.scale.to_le_bytes())
            .unwrap();
        page.write(reference_tsc::OFFSET_OFFSET, &clock.offset.to_le_bytes())
            .unwrap();
        page.write(reference_tsc::SEQUENCE_OFFSET, &sequence.to_le_bytes())
            .unwrap();
    }

    #[test]
    fn the_first_related_sample_is_reported_even_when_it_is_not_the_first() {
        let (mut env, mut host, mut component) = started(&[(4, 0)]);
        // No valid page yet (sequence 0): the first sample is unrelated.
        env.now_ns = 1_000_000_000;
        host.send(&sample_4(HOST_TIME, timesync_flags::SAMPLE));
        notify_synic(&mut component, &mut env);
        host.receive_ic().unwrap();
        assert_eq!(component.service.last_relation, Some(Relation::Unavailable));
        assert!(!env.console.contains("sample related to reference time"));
        // The host publishes its page; the second sample is related and
        // says so although samples 2..LOG_EVERY are otherwise quiet.
        let ticks = 7_000_000_000;
        env.time_stamp_counter = Some(component_api::TimeStampCounter {
            ticks,
            ticks_per_second: 0,
        });
        let clock =
            reference_tsc::TscClock::calibrated(1_000_000_000, ticks, 12345 + 2000).unwrap();
        publish(&env, clock, 1);
        host.send(&sample_4(HOST_TIME + 10_000_000, timesync_flags::SAMPLE));
        notify_synic(&mut component, &mut env);
        host.receive_ic().unwrap();
        assert_eq!(component.service.related, 1);
        assert!(
            env.console
                .contains("sample related to reference time: taken 200 us before it arrived"),
            "{}",
            env.console
        );
    }

    #[test]
    fn a_sample_is_advanced_by_its_age_in_reference_time() {
        let (mut env, mut host, mut component) = started(&[(4, 0)]);
        // A 1 GHz TSC; when it reads 7e9 the reference time is 12345 +
        // 5000: the sample (taken at 12345) is 500 us old on arrival.
        let ticks = 7_000_000_000;
        env.time_stamp_counter = Some(component_api::TimeStampCounter {
            ticks,
            ticks_per_second: 0,
        });
        let clock =
            reference_tsc::TscClock::calibrated(1_000_000_000, ticks, 12345 + 5000).unwrap();
        publish(&env, clock, 1);
        env.now_ns = 1_000_000_000;
        host.send(&sample_4(HOST_TIME, timesync_flags::SYNC));
        notify_synic(&mut component, &mut env);
        host.receive_ic().unwrap();
        assert_eq!(component.service.last_relation, Some(Relation::Age(5000)));
        assert_eq!(component.service.related, 1);
        assert!(
            env.console
                .contains("sample related to reference time: taken 500 us before"),
            "{}",
            env.console
        );
        match ask(&mut component, &mut env) {
            Reply::Time {
                now_100ns_since_1601,
                ..
            } => assert_eq!(now_100ns_since_1601, HOST_TIME + 5000),
            other => panic!("{other:?}"),
        }
        // A host whose sample is from our future: used as it came, counted.
        let future = reference_tsc::TscClock::calibrated(1_000_000_000, ticks, 12000).unwrap();
        publish(&env, future, 2);
        host.send(&sample_4(HOST_TIME, timesync_flags::SAMPLE));
        notify_synic(&mut component, &mut env);
        host.receive_ic().unwrap();
        assert_eq!(
            component.service.last_relation,
            Some(Relation::Implausible(-345))
        );
        assert_eq!(component.service.implausible, 1);
        match ask(&mut component, &mut env) {
            Reply::Time {
                now_100ns_since_1601,
                ..
            } => assert_eq!(now_100ns_since_1601, HOST_TIME),
            other => panic!("{other:?}"),
        }
        // Sequence 0: the page is not valid, nothing is related.
        publish(&env, clock, 0);
        host.send(&sample_4(HOST_TIME, timesync_flags::SAMPLE));
        notify_synic(&mut component, &mut env);
        host.receive_ic().unwrap();
        assert_eq!(component.service.last_relation, Some(Relation::Unavailable));
        assert_eq!(component.service.unrelated, 1);
    }

    #[test]
    fn version_3_samples_use_the_old_layout() {
        let (mut env, mut host, mut component) = started(&[(3, 0)]);
        let mut body = TimesyncMessage::new_zeroed();
        body.parent_time = HOST_TIME.into();
        body.flags = timesync_flags::SAMPLE;
        host.send(&ic_request(
            ic::message_type::TIMESYNC,
            (3, 0),
            &bytes_of(&body),
        ));
        notify_synic(&mut component, &mut env);
        host.receive_ic().unwrap();
        assert!(matches!(
            ask(&mut component, &mut env),
            Reply::Time {
                now_100ns_since_1601: HOST_TIME,
                samples: 1,
                ..
            }
        ));
        // A 4.0-sized body is too short for the 3.0 layout.
        host.send(&sample_4(HOST_TIME, timesync_flags::SAMPLE));
        notify_synic(&mut component, &mut env);
        assert!(host.receive().is_none());
        assert_eq!(component.channel.stats().rejected, 1);
    }

    #[test]
    fn messages_without_flags_are_answered_but_not_used() {
        let (mut env, mut host, mut component) = started(&[(4, 0)]);
        host.send(&sample_4(HOST_TIME, 0));
        notify_synic(&mut component, &mut env);
        assert!(host.receive_ic().is_some());
        assert_eq!(component.service.ignored, 1);
        assert_eq!(ask(&mut component, &mut env), Reply::NotSynced);
    }

    #[test]
    fn a_short_sample_is_rejected_and_time_does_not_overflow() {
        let (mut env, mut host, mut component) = started(&[(4, 0)]);
        host.send(&ic_request(ic::message_type::TIMESYNC, (4, 0), &[0; 10]));
        notify_synic(&mut component, &mut env);
        assert!(host.receive().is_none());
        assert_eq!(component.channel.stats().rejected, 1);
        host.send(&sample_4(u64::MAX - 1, timesync_flags::SYNC));
        notify_synic(&mut component, &mut env);
        env.now_ns = u64::MAX;
        assert!(matches!(
            ask(&mut component, &mut env),
            Reply::Time {
                now_100ns_since_1601: u64::MAX,
                ..
            }
        ));
    }

    #[test]
    fn each_used_sample_ticks_the_client() {
        let (mut env, mut host, mut component) = started(&[(4, 0)]);
        host.send(&sample_4(HOST_TIME, timesync_flags::SAMPLE));
        host.send(&sample_4(HOST_TIME, 0));
        host.send(&sample_4(HOST_TIME, timesync_flags::SYNC));
        notify_synic(&mut component, &mut env);
        assert_eq!(env.notifications_on(channels::CLIENT_EVENT), 2);
    }

    #[test]
    fn only_the_client_end_is_served() {
        let (mut env, _host, mut component) = started(&[(4, 0)]);
        let mut reply = [0u8; 16];
        assert_eq!(
            component.protected(&mut env, channels::VMBUS.channel(), &[0], &mut reply),
            Err(Refusal::NOT_SERVED)
        );
        assert_eq!(
            component.protected(&mut env, channels::CLIENT, &[9], &mut reply),
            Err(Refusal::WRONG_PROTOCOL)
        );
    }
}
