//! The operator of the simulated host in the seL4 image, where no test or
//! person types commands: a fixed [`Script`] run on every step of the host
//! (each hypervisor call from `synic` and each timer tick).
//!
//! It sends time samples periodically, pushes the host's KVP pairs once the
//! KVP channel is negotiated, and after a number of answered heartbeats
//! asks the guest to shut down (which ends the run: the guest unloads VMBus
//! and powers off). For the isolation test it can also send malformed
//! packets on the KVP channel. Everything it does it reports as a line of
//! text for the console. Heartbeat requests themselves are the channel's
//! own periodic work (`IcState::heartbeat_interval_ns`).
//!
//! Trusts: nothing from the guest beyond what the simulator validated.
//! Writes: only through the simulator's operator API.

use crate::channel::PacketFault;
use crate::sim::Simulator;
use crate::vmbus::{DeviceConfig, DeviceKind, ServerConfig};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use vmbus_protocol::ic::timesync_flags;

/// Windows file time (100 ns units since 1601-01-01) of 2026-01-01 00:00
/// UTC: the host's clock at guest time zero (the image has no wall clock).
pub const HOST_EPOCH_FILE_TIME: u64 = 134_116_992_000_000_000;

/// What the host does by itself while the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Script {
    /// A time sample every this many nanoseconds (0: never). The first one
    /// goes out as soon as time sync is negotiated, with the SYNC flag.
    pub time_sample_period_ns: u64,
    /// (key, value) pairs pushed into the guest's external pool (pool 0)
    /// once KVP is negotiated.
    pub host_pairs: &'static [(&'static str, &'static str)],
    /// Ask the guest to shut down once this many heartbeats were answered.
    pub shutdown_after_heartbeats: Option<u64>,
    /// Isolation test: malformed packets on the KVP channel, in this order,
    /// the first once `kvp_fault_after_heartbeats` heartbeats were answered
    /// and each next one `kvp_fault_every` (at least 1) heartbeats later.
    pub kvp_faults: &'static [PacketFault],
    pub kvp_fault_after_heartbeats: u64,
    pub kvp_fault_every: u64,
    /// How much longer than its period a gap between two heartbeat (or
    /// time sync) answers may be and still count as on time: the host acts
    /// only on its timer ticks and on calls, so its requests go out up to a
    /// tick late.
    pub gap_allowance_ns: u64,
}

impl Script {
    /// The bring-up run: samples every second, one host pair, shut down
    /// after five heartbeats.
    pub const DEFAULT: Script = Script {
        time_sample_period_ns: 1_000_000_000,
        host_pairs: &[("HostName", "hvsim")],
        shutdown_after_heartbeats: Some(5),
        kvp_faults: &[],
        kvp_fault_after_heartbeats: 0,
        kvp_fault_every: 1,
        gap_allowance_ns: 100_000_000,
    };
}

/// The devices the host offers in the image: the four integration
/// components, with fixed instance GUIDs (the same as the transport
/// binary's) so runs are reproducible.
pub fn integration_components() -> ServerConfig {
    let devices = [
        DeviceKind::Heartbeat,
        DeviceKind::Shutdown,
        DeviceKind::TimeSync,
        DeviceKind::Kvp,
    ]
    .into_iter()
    .enumerate()
    .map(|(index, kind)| {
        let instance = 0x4856_5349_4d00_0000_0000_0000_0000_0000 | (index as u128 + 1);
        DeviceConfig::ic(kind, uuid::Uuid::from_u128(instance))
    })
    .collect();
    ServerConfig {
        devices,
        ..ServerConfig::default()
    }
}

/// The longest gap between consecutive answers of one service.
#[derive(Clone, Copy, Debug, Default)]
struct GapWatch {
    last_ns: Option<u64>,
    longest_ns: u64,
}

impl GapWatch {
    fn answered(&mut self, now_ns: u64) {
        if let Some(last) = self.last_ns {
            self.longest_ns = self.longest_ns.max(now_ns.saturating_sub(last));
        }
        self.last_ns = Some(now_ns);
    }

    fn verdict(&self, what: &str, period_ns: u64, allowance_ns: u64) -> String {
        let within = self.longest_ns <= period_ns + allowance_ns;
        format!(
            "host: {what} answers {} their period (longest gap {} ms, period {} ms + {} ms allowance)",
            if within { "within" } else { "NOT within" },
            self.longest_ns / 1_000_000,
            period_ns / 1_000_000,
            allowance_ns / 1_000_000
        )
    }
}

/// The script's progress.
pub struct ScriptRunner {
    script: Script,
    next_time_sample_ns: Option<u64>,
    /// The KVP channel (relid) the pairs were pushed on while it stayed
    /// open.
    pairs_pushed_on: Option<u32>,
    heartbeats_answered: u64,
    last_sequence: Option<u64>,
    shutdown_requested: bool,
    kvp_faults_sent: usize,
    next_kvp_fault_at: u64,
    /// When the last malformed KVP packet went out and the guest has not
    /// served KVP again since (the host's KVP pairs were not re-pushed).
    kvp_fault_sent_ns: Option<u64>,
    heartbeat_gaps: GapWatch,
    heartbeat_period_ns: u64,
    /// Time sync answers seen on (relid, count).
    timesync_answers: Option<(u32, u64)>,
    timesync_gaps: GapWatch,
}

impl ScriptRunner {
    pub fn new(script: Script) -> Self {
        ScriptRunner {
            script,
            next_time_sample_ns: None,
            pairs_pushed_on: None,
            heartbeats_answered: 0,
            last_sequence: None,
            shutdown_requested: false,
            kvp_faults_sent: 0,
            next_kvp_fault_at: script.kvp_fault_after_heartbeats,
            kvp_fault_sent_ns: None,
            heartbeat_gaps: GapWatch::default(),
            heartbeat_period_ns: 0,
            timesync_answers: None,
            timesync_gaps: GapWatch::default(),
        }
    }

    pub fn heartbeats_answered(&self) -> u64 {
        self.heartbeats_answered
    }

    /// Does what is due at `now_ns`; returns the lines to print.
    pub fn run<M: GuestMemory>(&mut self, sim: &mut Simulator<M>, now_ns: u64) -> Vec<String> {
        let mut report = Vec::new();
        if let Some(beat) = sim.last_heartbeat() {
            if self.last_sequence != Some(beat.sequence) {
                self.last_sequence = Some(beat.sequence);
                self.heartbeats_answered += 1;
                self.heartbeat_gaps.answered(beat.at_ns);
                if let Some(endpoint) = sim
                    .channel_of(DeviceKind::Heartbeat)
                    .and_then(|relid| sim.vmbus.endpoint(relid))
                {
                    self.heartbeat_period_ns = endpoint.ic.heartbeat_interval_ns;
                }
                report.push(format!(
                    "host: heartbeat {} answered (sequence {})",
                    self.heartbeats_answered, beat.sequence
                ));
            }
        }
        self.watch_time_sync(sim, now_ns);
        self.time_samples(sim, now_ns, &mut report);
        self.host_pairs(sim, now_ns, &mut report);
        self.kvp_faults(sim, now_ns, &mut report);
        if let Some(after) = self.script.shutdown_after_heartbeats {
            if !self.shutdown_requested
                && self.heartbeats_answered >= after
                && sim.request_shutdown(0)
            {
                self.shutdown_requested = true;
                report.push(self.heartbeat_gaps.verdict(
                    "heartbeat",
                    self.heartbeat_period_ns,
                    self.script.gap_allowance_ns,
                ));
                report.push(self.timesync_gaps.verdict(
                    "time sync",
                    self.script.time_sample_period_ns,
                    self.script.gap_allowance_ns,
                ));
                report.push(format!(
                    "host: {} heartbeats answered; asking the guest to shut down",
                    self.heartbeats_answered
                ));
            }
        }
        report
    }

    fn watch_time_sync<M: GuestMemory>(&mut self, sim: &Simulator<M>, now_ns: u64) {
        let Some(relid) = sim.channel_of(DeviceKind::TimeSync) else {
            return;
        };
        let Some(count) = sim.vmbus.endpoint(relid).map(|e| e.ic.timesync_answers) else {
            return;
        };
        if self.timesync_answers != Some((relid, count)) {
            // A new channel starts its count again: only an increase on the
            // same channel is an answer.
            if matches!(self.timesync_answers, Some((r, c)) if r == relid && count > c) {
                self.timesync_gaps.answered(now_ns);
            } else if count > 0 {
                self.timesync_gaps.last_ns.get_or_insert(now_ns);
            }
            self.timesync_answers = Some((relid, count));
        }
    }

    fn time_samples<M: GuestMemory>(
        &mut self,
        sim: &mut Simulator<M>,
        now_ns: u64,
        report: &mut Vec<String>,
    ) {
        if self.script.time_sample_period_ns == 0 {
            return;
        }
        if sim.channel_of(DeviceKind::TimeSync).is_none() {
            self.next_time_sample_ns = None;
            return;
        }
        let (due, flags) = match self.next_time_sample_ns {
            None => (true, timesync_flags::SYNC),
            Some(at) => (now_ns >= at, timesync_flags::SAMPLE),
        };
        if !due {
            return;
        }
        let parent_time = HOST_EPOCH_FILE_TIME + now_ns / 100;
        if sim.send_time(parent_time, flags) {
            self.next_time_sample_ns = Some(now_ns + self.script.time_sample_period_ns);
            if flags == timesync_flags::SYNC {
                report.push(String::from("host: time sync started"));
            }
        }
    }

    fn host_pairs<M: GuestMemory>(
        &mut self,
        sim: &mut Simulator<M>,
        now_ns: u64,
        report: &mut Vec<String>,
    ) {
        let Some(relid) = sim.channel_of(DeviceKind::Kvp) else {
            // Closed (a restarted driver reopens it with an empty store):
            // push again once it is open.
            self.pairs_pushed_on = None;
            return;
        };
        if self.pairs_pushed_on == Some(relid) {
            return;
        }
        let mut all = true;
        for (key, value) in self.script.host_pairs {
            all &= sim.kvp_set(vmbus_ipc::kvp::POOL_EXTERNAL, key, value);
        }
        if all {
            self.pairs_pushed_on = Some(relid);
            if !self.script.host_pairs.is_empty() {
                report.push(format!(
                    "host: {} KVP pair(s) pushed on relid {relid}",
                    self.script.host_pairs.len()
                ));
            }
            // KVP negotiated and accepted a SET again: it serves again.
            if let Some(at) = self.kvp_fault_sent_ns.take() {
                report.push(format!(
                    "host: KVP serving again {} ms after the malformed packet",
                    now_ns.saturating_sub(at) / 1_000_000
                ));
            }
        }
    }

    fn kvp_faults<M: GuestMemory>(
        &mut self,
        sim: &mut Simulator<M>,
        now_ns: u64,
        report: &mut Vec<String>,
    ) {
        let Some(&fault) = self.script.kvp_faults.get(self.kvp_faults_sent) else {
            return;
        };
        if self.heartbeats_answered < self.next_kvp_fault_at {
            return;
        }
        let Some(relid) = sim.channel_of(DeviceKind::Kvp) else {
            return;
        };
        if sim.inject_malformed_packet(relid, fault) {
            self.kvp_faults_sent += 1;
            self.kvp_fault_sent_ns = Some(now_ns);
            self.next_kvp_fault_at = self.heartbeats_answered + self.script.kvp_fault_every.max(1);
            report.push(format!(
                "host: malformed packet ({:?}) sent on KVP relid {relid}",
                fault
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pd::RegionMemory;
    use component_api::Region;

    fn host() -> Simulator<RegionMemory> {
        let memory = alloc::boxed::Box::leak(alloc::vec![0u64; 4 * 512].into_boxed_slice());
        // SAFETY: leaked, so valid for the test's lifetime; 8-aligned.
        let region = unsafe { Region::new(memory.as_mut_ptr().cast(), 4 * 4096, true, false) }
            .with_guest_physical(0x10_0000);
        Simulator::new(
            RegionMemory::new(&[region]).unwrap(),
            integration_components(),
        )
    }

    #[test]
    fn the_image_offers_the_four_integration_components_with_distinct_instances() {
        let config = integration_components();
        let kinds: Vec<DeviceKind> = config.devices.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [
                DeviceKind::Heartbeat,
                DeviceKind::Shutdown,
                DeviceKind::TimeSync,
                DeviceKind::Kvp
            ]
        );
        let mut instances: Vec<_> = config.devices.iter().map(|d| d.instance).collect();
        instances.dedup();
        assert_eq!(instances.len(), 4);
    }

    #[test]
    fn gaps_are_measured_between_answers_and_judged_against_the_period() {
        let mut watch = GapWatch::default();
        for at in [5, 1_005, 2_090, 3_000] {
            watch.answered(at * 1_000_000);
        }
        assert_eq!(watch.longest_ns, 1_085_000_000);
        assert!(watch
            .verdict("heartbeat", 1_000_000_000, 100_000_000)
            .contains("answers within their period (longest gap 1085 ms"));
        assert!(watch
            .verdict("heartbeat", 1_000_000_000, 50_000_000)
            .contains("NOT within"));
    }

    #[test]
    fn nothing_is_sent_before_the_channels_are_open() {
        let mut sim = host();
        let mut runner = ScriptRunner::new(Script {
            kvp_faults: &[PacketFault::UnknownType],
            shutdown_after_heartbeats: Some(0),
            ..Script::DEFAULT
        });
        for step in 0..5u64 {
            assert!(runner.run(&mut sim, step * 2_000_000_000).is_empty());
        }
        assert_eq!(runner.heartbeats_answered(), 0);
        assert!(!runner.shutdown_requested);
        assert_eq!(runner.kvp_faults_sent, 0);
        assert!(runner.next_time_sample_ns.is_none());
    }
}
