//! The operator of the simulated host in the seL4 image, where no test or
//! person types commands: a fixed [`Script`] run on every step of the host
//! (each hypervisor call from `synic` and each timer tick).
//!
//! It sends time samples periodically, pushes the host's KVP pairs once the
//! KVP channel is negotiated, and after a number of answered heartbeats
//! asks the guest to shut down (which ends the run: the guest unloads VMBus
//! and powers off). For the isolation test it can also send malformed
//! packets on the KVP channel, rescind the KVP channel and offer the same
//! device again once the guest released it, offer more devices while the
//! guest runs, and read a pair from the guest's pool. The offered devices
//! and the VMBus versions the host accepts are the script's too. Everything
//! it does it reports as a line of text for the console. Heartbeat requests themselves are the channel's
//! own periodic work (`IcState::heartbeat_interval_ns`).
//!
//! Trusts: nothing from the guest beyond what the simulator validated.
//! Writes: only through the simulator's operator API.

use crate::channel::network::{NetConfig, NetFault};
use crate::channel::storage::{StorageConfig, StorageFault};
use crate::channel::PacketFault;
use crate::scenario::{
    parse_device, parse_network_version, parse_storage_version, parse_version, DeviceName, IcName,
    Invalid, Scenario, IDE_CLASS, KEYBOARD_CLASS, MOUSE_CLASS, NIC_CLASS, SCSI_CLASS, VIDEO_CLASS,
};
use crate::sim::Simulator;
use crate::vmbus::{DeviceConfig, DeviceKind, ServerConfig};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use hv_interface::GuestMemory;
use vmbus_protocol::ic::timesync_flags;
use vmbus_protocol::ProtocolVersion;

/// A device the script offers: an integration component the host speaks,
/// or a device of any other class (a generic device: the host only
/// completes its packets; a guest without a driver leaves it alone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptDevice {
    Ic(DeviceKind),
    Generic { class: u128 },
}

/// The instance GUID of the device at `index` (fixed, the same as the
/// transport binary's, so runs are reproducible).
pub fn instance(index: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(0x4856_5349_4d00_0000_0000_0000_0000_0000 | index)
}

impl ScriptDevice {
    pub fn from_name(name: DeviceName) -> ScriptDevice {
        match name {
            DeviceName::Ic(IcName::Heartbeat) => ScriptDevice::Ic(DeviceKind::Heartbeat),
            DeviceName::Ic(IcName::Shutdown) => ScriptDevice::Ic(DeviceKind::Shutdown),
            DeviceName::Ic(IcName::TimeSync) => ScriptDevice::Ic(DeviceKind::TimeSync),
            DeviceName::Ic(IcName::Kvp) => ScriptDevice::Ic(DeviceKind::Kvp),
            DeviceName::Class(class) => ScriptDevice::Generic { class },
        }
    }

    pub fn config(self, index: u128) -> DeviceConfig {
        match self {
            ScriptDevice::Ic(kind) => DeviceConfig::ic(kind, instance(index)),
            ScriptDevice::Generic { class } => DeviceConfig {
                class: uuid::Uuid::from_u128(class),
                instance: instance(index),
                kind: if class == vmbus_protocol::datapath_test::CLASS.as_u128() {
                    DeviceKind::DataPathTest
                } else if class == SCSI_CLASS || class == IDE_CLASS {
                    DeviceKind::Storage
                } else if class == NIC_CLASS {
                    DeviceKind::Network
                } else if class == KEYBOARD_CLASS {
                    DeviceKind::Keyboard
                } else if class == MOUSE_CLASS {
                    DeviceKind::Mouse
                } else if class == VIDEO_CLASS {
                    DeviceKind::Video
                } else {
                    DeviceKind::Generic
                },
                monitored: false,
                // synthvid is a message-mode pipe, as on Hyper-V.
                message_pipe: class == VIDEO_CLASS,
            },
        }
    }
}

/// Once the data-path test's stream runs (the host knows the receive
/// buffer): a transfer-page range past its end and a completion for an id
/// the guest never used. Whether they were sent.
fn datapath_faults<M: GuestMemory>(sim: &mut Simulator<M>, report: &mut Vec<String>) -> bool {
    let Some(relid) = sim.channel_of(DeviceKind::DataPathTest) else {
        return false;
    };
    let started = sim
        .vmbus
        .endpoint(relid)
        .is_some_and(|endpoint| endpoint.datapath.in_band_sent > 0);
    if !started {
        return false;
    }
    let sent = sim.with_channel(
        relid,
        |endpoint, memory| {
            let outside = endpoint.inject_transfer_outside(memory, 0xBAD0_0000_0000_0001);
            let unknown = endpoint.inject_unknown_completion(memory);
            (outside, unknown)
        },
        |&(outside, unknown)| outside == Some(true) || unknown,
    );
    let Some((Some(_), _)) = sent else {
        return false;
    };
    report.push(format!(
        "host: datapath faults sent on relid {relid}: a transfer-page range past the receive buffer, a completion for an unknown id"
    ));
    true
}

/// The data-path test device asked for the host's totals on one of its
/// channels (the primary, channel 0, or sub-channel K): print them with
/// the rule-violation counters (the hosted and QEMU tests check them).
fn datapath_report<M: GuestMemory>(sim: &mut Simulator<M>, report: &mut Vec<String>) {
    let rule_violations = sim.vmbus.stats.rule_violations;
    for relid in sim.vmbus.open_channels() {
        let index = sim.vmbus.primary_of(relid).map_or(0, |primary| {
            sim.vmbus
                .sub_channels(primary)
                .into_iter()
                .find(|&(sub, _)| sub == relid)
                .map_or(0, |(_, index)| index)
        });
        let Some(endpoint) = sim.vmbus.endpoint_mut(relid) else {
            continue;
        };
        if endpoint.kind != DeviceKind::DataPathTest
            || !core::mem::take(&mut endpoint.datapath.report_requested)
        {
            continue;
        }
        let host = &endpoint.datapath;
        let stats = &endpoint.stats;
        report.push(format!(
            "host: datapath channel {index} checked {} in-band and {} GPA-direct packets, {} bytes, {} errors; \
             sent {} in-band and {} transfer-page packets, the guest found {} errors in {} bytes",
            host.in_band_checked,
            host.gpa_direct_checked,
            host.bytes_checked,
            host.errors,
            host.in_band_sent,
            host.transfers_sent,
            host.guest_errors,
            host.guest_bytes_checked,
        ));
        report.push(format!(
            "host: datapath channel {index} rule violations {}, GPA outside GPADLs {}, unknown completions {}, unnecessary signals {}",
            rule_violations, stats.gpa_outside_gpadls, stats.unknown_responses, stats.unnecessary_signals
        ));
        report.push(format!(
            "host: datapath channel {index} signals: {}",
            stats.signal_report()
        ));
    }
}

/// The restart benchmark's closing line: the distribution of its
/// fault-to-answer times (ms).
fn restart_bench_summary(times_ns: &[u64]) -> String {
    let mut sorted = times_ns.to_vec();
    sorted.sort_unstable();
    let at = |p: u64| sorted[((sorted.len() as u64 - 1) * p / 100) as usize] / 1_000;
    format!(
        "host: restart bench: done: {} restarts, fault to first answer p50 {} us, p99 {} us, max {} us",
        sorted.len(),
        at(50),
        at(99),
        at(100)
    )
}

/// The first instance index of devices added while the guest runs (those
/// offered at start count from 1).
pub const ADDED_INSTANCE_BASE: u128 = 0x100;

/// Windows file time (100 ns units since 1601-01-01) of 2026-01-01 00:00
/// UTC: the host's clock at guest time zero (the image has no wall clock).
pub const HOST_EPOCH_FILE_TIME: u64 = 134_116_992_000_000_000;

/// What the host does by itself while the guest runs: a [`Scenario`]
/// (the file format, read with serde) turned into the simulator's types by
/// [`Script::from_scenario`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Script {
    /// A time sample every this many nanoseconds (0: never). The first one
    /// goes out as soon as time sync is negotiated, with the SYNC flag.
    pub time_sample_period_ns: u64,
    /// (key, value) pairs pushed into the guest's external pool (pool 0)
    /// once KVP is negotiated.
    pub host_pairs: Vec<(String, String)>,
    /// Ask the guest to shut down once this many heartbeats were answered.
    pub shutdown_after_heartbeats: Option<u64>,
    /// Isolation test: malformed packets on the KVP channel, in this order,
    /// the first once `kvp_fault_after_heartbeats` heartbeats were answered
    /// and each next one `kvp_fault_every` (at least 1) heartbeats later.
    pub kvp_faults: Vec<PacketFault>,
    pub kvp_fault_after_heartbeats: u64,
    pub kvp_fault_every: u64,
    /// The VMBus versions the host accepts (a guest asking for anything
    /// else is refused and must fall back).
    pub min_version: ProtocolVersion,
    pub max_version: ProtocolVersion,
    /// The devices offered at start, in relid order.
    pub devices: Vec<ScriptDevice>,
    /// Devices offered while the guest runs, all at once, once
    /// `add_devices_after_heartbeats` heartbeats were answered.
    pub added_devices: Vec<ScriptDevice>,
    pub add_devices_after_heartbeats: u64,
    /// Rescind the KVP channel once this many heartbeats were answered;
    /// when the guest released the relid, offer the same device (same
    /// instance) again.
    pub kvp_rescind_after_heartbeats: Option<u64>,
    /// Ask the guest for this key of its own pool (`POOL_GUEST`) once
    /// `kvp_get_after_heartbeats` heartbeats were answered, and print the
    /// answer.
    pub kvp_get_guest_key: Option<String>,
    pub kvp_get_after_heartbeats: u64,
    /// How much longer than its period a gap between two heartbeat (or
    /// time sync) answers may be and still count as on time: the host acts
    /// only on its timer ticks and on calls, so its requests go out up to a
    /// tick late.
    pub gap_allowance_ns: u64,
    /// Fault injection: stop these guest components once this many
    /// heartbeats were answered (the runner hands them out with
    /// [`ScriptRunner::take_due_crashes`]; the seL4 PD asks the monitor).
    pub crash_after_heartbeats: Vec<(u64, String)>,
    /// Total bytes all GPADLs may describe at once.
    pub gpadl_memory_limit: u64,
    /// Devices offered with a monitor ID.
    pub monitored_devices: Vec<ScriptDevice>,
    /// See `Scenario::datapath_host_faults`.
    pub datapath_host_faults: bool,
    /// The storage controllers' setup.
    pub storage: StorageConfig,
    /// Memory disks (bytes) for the first storage device's next LUNs.
    pub storage_memory_disks: Vec<u64>,
    /// Hot add a memory disk of this many bytes after this many heartbeats.
    pub storage_hot_add: Option<(u64, u64)>,
    pub storage_remove_after_heartbeats: Option<u64>,
    pub storage_rescind_after_heartbeats: Option<u64>,
    /// (heartbeats answered, fault), in the scenario's order.
    pub storage_faults: Vec<(u64, StorageFault)>,
    /// The NIC hosts' setup.
    pub network: NetConfig,
    /// Link down, then up again, after these many heartbeats.
    pub network_link_down_after_heartbeats: Option<u64>,
    pub network_link_up_after_heartbeats: Option<u64>,
    /// Rescind the first network device; offer it again once released.
    pub network_rescind_after_heartbeats: Option<u64>,
    /// (heartbeats answered, fault), in the scenario's order.
    pub network_faults: Vec<(u64, NetFault)>,
    /// (heartbeats answered, keyboard or mouse step), in order.
    pub input_steps: Vec<(u64, crate::input_step::InputStep)>,
    /// The restart benchmark: (faults, the driver's component name, its
    /// device) (`Scenario::restart_bench_faults`).
    pub restart_bench: Option<(u64, String, DeviceKind)>,
}

impl Script {
    /// The simulator's form of `scenario`, or why it means nothing.
    pub fn from_scenario(scenario: &Scenario) -> Result<Script, Invalid> {
        scenario.check()?;
        let version = |text: &str| {
            let (major, minor) = parse_version(text).unwrap_or((0, 0));
            ProtocolVersion::new(major, minor)
        };
        let devices = |names: &[String]| {
            names
                .iter()
                .filter_map(|name| parse_device(name))
                .map(ScriptDevice::from_name)
                .collect()
        };
        Ok(Script {
            time_sample_period_ns: scenario.time_sample_period_ms * 1_000_000,
            host_pairs: scenario.host_pairs.clone(),
            shutdown_after_heartbeats: scenario.shutdown_after_heartbeats,
            kvp_faults: scenario
                .kvp_faults
                .iter()
                .filter_map(|name| PacketFault::from_name(name))
                .collect(),
            kvp_fault_after_heartbeats: scenario.kvp_fault_after_heartbeats,
            kvp_fault_every: scenario.kvp_fault_every,
            min_version: version(&scenario.min_version),
            max_version: version(&scenario.max_version),
            devices: devices(&scenario.devices),
            added_devices: devices(&scenario.added_devices),
            add_devices_after_heartbeats: scenario.add_devices_after_heartbeats,
            kvp_rescind_after_heartbeats: scenario.kvp_rescind_after_heartbeats,
            kvp_get_guest_key: scenario.kvp_get_guest_key.clone(),
            kvp_get_after_heartbeats: scenario.kvp_get_after_heartbeats,
            gap_allowance_ns: scenario.gap_allowance_ms * 1_000_000,
            crash_after_heartbeats: scenario.crash_after_heartbeats.clone(),
            gpadl_memory_limit: scenario.gpadl_memory_limit_kib * 1024,
            monitored_devices: devices(&scenario.monitored_devices),
            datapath_host_faults: scenario.datapath_host_faults,
            storage: StorageConfig {
                newest_version: parse_storage_version(&scenario.storage_version)
                    .unwrap_or(vmbus_protocol::storage::version::WIN10),
                max_sub_channels: scenario.storage_max_sub_channels,
                max_transfer_bytes: (scenario.storage_max_transfer_kib * 1024) as u32,
                ide: false,
            },
            storage_memory_disks: scenario
                .storage_memory_disks_kib
                .iter()
                .map(|kib| kib * 1024)
                .collect(),
            storage_hot_add: scenario
                .storage_hot_add_kib
                .map(|kib| (scenario.storage_hot_add_after_heartbeats, kib * 1024)),
            storage_remove_after_heartbeats: scenario.storage_remove_after_heartbeats,
            storage_rescind_after_heartbeats: scenario.storage_rescind_after_heartbeats,
            storage_faults: scenario
                .storage_faults
                .iter()
                .filter_map(|(after, text)| {
                    let words: Vec<&str> = text.split_whitespace().collect();
                    StorageFault::parse(&words).map(|fault| (*after, fault))
                })
                .collect(),
            network: NetConfig {
                newest_version: parse_network_version(&scenario.network_version)
                    .unwrap_or(vmbus_protocol::nvsp::version::V61),
                max_sub_channels: scenario.network_max_sub_channels,
                mtu: scenario.network_mtu,
                ..NetConfig::default()
            },
            network_link_down_after_heartbeats: scenario.network_link_down_after_heartbeats,
            network_link_up_after_heartbeats: scenario.network_link_up_after_heartbeats,
            network_rescind_after_heartbeats: scenario.network_rescind_after_heartbeats,
            network_faults: scenario
                .network_faults
                .iter()
                .filter_map(|(after, text)| {
                    let words: Vec<&str> = text.split_whitespace().collect();
                    NetFault::parse(&words).map(|fault| (*after, fault))
                })
                .collect(),
            input_steps: scenario
                .input_steps
                .iter()
                .filter_map(|(after, text)| {
                    crate::input_step::parse_input_step(text)
                        .ok()
                        .map(|step| (*after, step))
                })
                .collect(),
            restart_bench: (scenario.restart_bench_faults > 0)
                .then(|| {
                    let kind = match scenario.restart_bench_driver.as_str() {
                        "heartbeat" => DeviceKind::Heartbeat,
                        "shutdown" => DeviceKind::Shutdown,
                        "timesync" => DeviceKind::TimeSync,
                        "kvp" => DeviceKind::Kvp,
                        _ => return None,
                    };
                    Some((
                        scenario.restart_bench_faults,
                        scenario.restart_bench_driver.clone(),
                        kind,
                    ))
                })
                .flatten(),
        })
    }

    /// The server the host starts with: the script's devices (instances
    /// numbered from 1 in order) and versions.
    pub fn server_config(&self) -> ServerConfig {
        ServerConfig {
            devices: self
                .devices
                .iter()
                .enumerate()
                .map(|(index, device)| {
                    let mut config = device.config(index as u128 + 1);
                    config.monitored = self.monitored_devices.contains(device);
                    config
                })
                .collect(),
            min_version: self.min_version,
            max_version: self.max_version,
            gpadl_memory_limit: self.gpadl_memory_limit,
            storage: self.storage,
            network: self.network,
            ..ServerConfig::default()
        }
    }

    /// Gives the first storage device the scenario's memory disks as its
    /// next free LUNs; the lines to print.
    pub fn attach_memory_disks<M: GuestMemory>(&self, sim: &mut Simulator<M>) -> Vec<String> {
        let mut report = Vec::new();
        for &bytes in &self.storage_memory_disks {
            let disk = crate::disk::MemoryDisk::new(512, bytes / 512);
            match sim.storage_attach(alloc::boxed::Box::new(disk)) {
                Some(lun) => report.push(format!(
                    "host: storage LUN {lun}: a memory disk of {} KiB",
                    bytes / 1024
                )),
                None => report.push(String::from(
                    "host: no storage device (or no free LUN) for a memory disk",
                )),
            }
        }
        report
    }
}

impl Default for Script {
    /// The bring-up run ([`Scenario::default`]).
    fn default() -> Self {
        match Script::from_scenario(&Scenario::default()) {
            Ok(script) => script,
            Err(invalid) => unreachable!("the default scenario is valid: {invalid:?}"),
        }
    }
}

/// The devices the host offers in the image by default: the four
/// integration components, with fixed instance GUIDs (the same as the
/// transport binary's) so runs are reproducible.
/// A disk given from outside the scenario (the hosted host's `--disk`,
/// QEMU's IDE disk in the seL4 image) when the scenario offers no storage
/// controller: one SCSI controller is added after the scenario's devices
/// to serve it (a disk nobody can reach would be a silent surprise).
pub fn add_storage_for_disk(config: &mut ServerConfig) {
    if config.devices.iter().any(|d| d.kind == DeviceKind::Storage) {
        return;
    }
    let index = config.devices.len() as u128 + 1;
    config.devices.push(
        ScriptDevice::from_name(DeviceName::Class(crate::scenario::SCSI_CLASS)).config(index),
    );
}

/// A network backend given from outside the scenario (the hosted host's
/// `--net tap:IF` / `--net user:ADDR`, QEMU's NE2000 in the seL4 image)
/// when the scenario offers no NIC: one network device is added after the
/// scenario's devices to carry it. Without a backend the host offers a
/// NIC only if the scenario names `network` (its frames then go to a
/// memory network that drops them), so the bring-up run and its counted
/// expectations do not change.
pub fn add_network(config: &mut ServerConfig) {
    if config.devices.iter().any(|d| d.kind == DeviceKind::Network) {
        return;
    }
    let index = config.devices.len() as u128 + 1;
    config
        .devices
        .push(ScriptDevice::from_name(DeviceName::Class(NIC_CLASS)).config(index));
}

/// The console devices (synthetic video, keyboard and mouse) for a host
/// that has a display to show them on (the seL4 image under QEMU with
/// its std VGA): each one the scenario does not offer already.
pub fn add_console_devices(config: &mut ServerConfig) {
    for (class, kind) in [
        (VIDEO_CLASS, DeviceKind::Video),
        (KEYBOARD_CLASS, DeviceKind::Keyboard),
        (MOUSE_CLASS, DeviceKind::Mouse),
    ] {
        if config.devices.iter().any(|d| d.kind == kind) {
            continue;
        }
        let index = config.devices.len() as u128 + 1;
        config
            .devices
            .push(ScriptDevice::from_name(DeviceName::Class(class)).config(index));
    }
}

pub fn integration_components() -> ServerConfig {
    Script::default().server_config()
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

/// Where the restart benchmark is (`Script::restart_bench`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RestartBench {
    /// Fault the driver once its channel is open and negotiated, not
    /// before `not_before_ns`.
    Serving {
        not_before_ns: u64,
    },
    /// Faulted at `at_ns`; `gone`: its channel was seen closed or not yet
    /// negotiated since (so a negotiated channel is the reopened one).
    Faulted {
        at_ns: u64,
        gone: bool,
    },
    Done,
}

/// Between the restarted driver's answer and the next fault: the channel
/// settles (the driver's other requests, the host's pushes).
const RESTART_BENCH_SETTLE_NS: u64 = 20_000_000;

/// What the restart benchmark does at one look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BenchStep {
    Nothing,
    /// Fault the driver now.
    Fault,
    /// The restarted driver answered, this long (ns) after its fault.
    Answered(u64),
}

impl RestartBench {
    /// One look at the driver's channel (`negotiated`: open, and the
    /// driver answered the host's negotiation on it) at `now_ns`, after
    /// `measured` of `faults` restarts.
    fn advance(&mut self, negotiated: bool, now_ns: u64, measured: u64, faults: u64) -> BenchStep {
        match *self {
            RestartBench::Serving { not_before_ns } if negotiated && now_ns >= not_before_ns => {
                *self = RestartBench::Faulted {
                    at_ns: now_ns,
                    gone: false,
                };
                BenchStep::Fault
            }
            RestartBench::Faulted { at_ns, .. } if !negotiated => {
                *self = RestartBench::Faulted { at_ns, gone: true };
                BenchStep::Nothing
            }
            // Negotiated again after it was gone: the reopened channel.
            RestartBench::Faulted { at_ns, gone: true } => {
                *self = if measured + 1 >= faults {
                    RestartBench::Done
                } else {
                    RestartBench::Serving {
                        not_before_ns: now_ns + RESTART_BENCH_SETTLE_NS,
                    }
                };
                BenchStep::Answered(now_ns.saturating_sub(at_ns))
            }
            _ => BenchStep::Nothing,
        }
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
    devices_added: bool,
    rescind: RescindProgress,
    kvp_get_sent: bool,
    /// The VMBus version negotiated when last looked (None: not connected,
    /// or unloaded).
    connected: Option<ProtocolVersion>,
    /// Crashes of `crash_after_heartbeats` handed out so far.
    crashes_taken: usize,
    /// Crashes the restart benchmark asked for, not yet handed out.
    bench_crashes: Vec<String>,
    restart_bench: RestartBench,
    /// Restarts measured: (fault to answer, ns).
    restart_bench_times: Vec<u64>,
    /// The data-path test's host faults went out.
    datapath_faults_sent: bool,
    storage_added: bool,
    storage_removed: bool,
    storage_rescinded: bool,
    storage_faults_armed: usize,
    network_link_down: bool,
    network_link_up: bool,
    network_rescind: NetRescind,
    network_faults_armed: usize,
    input_steps_run: usize,
}

/// Where the network device's rescind and re-offer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NetRescind {
    NotYet,
    Rescinded { relid: u32 },
    Done,
}

/// Where the KVP rescind and re-offer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RescindProgress {
    NotYet,
    /// Rescinded `relid` (whose device had `instance`); waiting for the
    /// guest's RelIdReleased.
    Rescinded {
        relid: u32,
        instance: uuid::Uuid,
    },
    /// Offered again as `relid`; the marker pair not yet pushed on it.
    Reoffered {
        relid: u32,
    },
    Done,
}

/// The pair pushed on the re-offered KVP channel, so that the client shows
/// that the new channel serves.
pub const REOFFER_PAIR: (&str, &str) = ("HostReoffered", "yes");

impl ScriptRunner {
    pub fn new(script: Script) -> Self {
        ScriptRunner {
            next_kvp_fault_at: script.kvp_fault_after_heartbeats,
            script,
            next_time_sample_ns: None,
            pairs_pushed_on: None,
            heartbeats_answered: 0,
            last_sequence: None,
            shutdown_requested: false,
            kvp_faults_sent: 0,
            kvp_fault_sent_ns: None,
            heartbeat_gaps: GapWatch::default(),
            heartbeat_period_ns: 0,
            timesync_answers: None,
            timesync_gaps: GapWatch::default(),
            devices_added: false,
            rescind: RescindProgress::NotYet,
            kvp_get_sent: false,
            connected: None,
            crashes_taken: 0,
            bench_crashes: Vec::new(),
            restart_bench: RestartBench::Serving { not_before_ns: 0 },
            restart_bench_times: Vec::new(),
            datapath_faults_sent: false,
            storage_added: false,
            storage_removed: false,
            storage_rescinded: false,
            storage_faults_armed: 0,
            network_link_down: false,
            network_link_up: false,
            network_rescind: NetRescind::NotYet,
            network_faults_armed: 0,
            input_steps_run: 0,
        }
    }

    /// Guest components whose fault injection is due (their heartbeat
    /// count reached), each handed out once, in the scenario's order.
    pub fn take_due_crashes(&mut self) -> Vec<String> {
        let mut due = core::mem::take(&mut self.bench_crashes);
        while let Some((after, name)) = self.script.crash_after_heartbeats.get(self.crashes_taken) {
            if self.heartbeats_answered < *after {
                break;
            }
            due.push(name.clone());
            self.crashes_taken += 1;
        }
        due
    }

    pub fn heartbeats_answered(&self) -> u64 {
        self.heartbeats_answered
    }

    /// Does what is due at `now_ns`; returns the lines to print.
    pub fn run<M: GuestMemory>(&mut self, sim: &mut Simulator<M>, now_ns: u64) -> Vec<String> {
        let mut report = Vec::new();
        let version = sim.vmbus.version();
        if self.connected.is_some() && version.is_none() {
            report.push(format!(
                "host: the guest unloaded VMBus (UnloadResponse sent); {} channels open",
                sim.vmbus.open_channels().len()
            ));
        }
        self.connected = version;
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
        self.add_devices(sim, &mut report);
        self.rescind_kvp(sim, &mut report);
        self.kvp_get(sim, &mut report);
        if self.script.datapath_host_faults && !self.datapath_faults_sent {
            self.datapath_faults_sent = datapath_faults(sim, &mut report);
        }
        datapath_report(sim, &mut report);
        self.storage_events(sim, &mut report);
        self.network_events(sim, &mut report);
        self.input_steps(sim, &mut report);
        self.restart_bench(sim, now_ns, &mut report);
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
                if !self.script.monitored_devices.is_empty() {
                    let stats = sim.vmbus.stats;
                    let as_expected = stats.monitor_signals > 0
                        && stats.hypercall_signals_on_monitored == 0
                        && stats.rule_violations == 0;
                    report.push(format!(
                        "host: monitored channels {} ({} monitor-page signals, {} hypercall signals, {} rule violations)",
                        if as_expected {
                            "signalled through the monitor page only"
                        } else {
                            "NOT signalled as Hyper-V expects"
                        },
                        stats.monitor_signals,
                        stats.hypercall_signals_on_monitored,
                        stats.rule_violations,
                    ));
                }
                storage_report(sim, &mut report);
                network_report(sim, &mut report);
                for line in sim.vmbus.signal_report() {
                    report.push(format!("host: signals {line}"));
                }
                report.push(format!(
                    "host: {} heartbeats answered; asking the guest to shut down",
                    self.heartbeats_answered
                ));
            }
        }
        report
    }

    /// The restart benchmark: fault the driver, wait for its reopened
    /// channel's answer to the host's first request (the IC negotiation),
    /// print the time between (guest time), again.
    fn restart_bench<M: GuestMemory>(
        &mut self,
        sim: &Simulator<M>,
        now_ns: u64,
        report: &mut Vec<String>,
    ) {
        let Some((faults, name, kind)) = self.script.restart_bench.clone() else {
            return;
        };
        if self.heartbeats_answered == 0 {
            return;
        }
        let negotiated = sim
            .channel_of(kind)
            .and_then(|relid| sim.vmbus.endpoint(relid))
            .is_some_and(|endpoint| endpoint.ic.framework.is_some());
        let measured = self.restart_bench_times.len() as u64;
        match self
            .restart_bench
            .advance(negotiated, now_ns, measured, faults)
        {
            BenchStep::Nothing => {}
            BenchStep::Fault => self.bench_crashes.push(name),
            BenchStep::Answered(took) => {
                self.restart_bench_times.push(took);
                report.push(format!(
                    "host: restart bench: {name} answered {} us after its fault (restart {} of {faults}, guest time {} us)",
                    took / 1_000,
                    measured + 1,
                    now_ns / 1_000
                ));
                if self.restart_bench == RestartBench::Done {
                    report.push(restart_bench_summary(&self.restart_bench_times));
                }
            }
        }
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
        for (key, value) in &self.script.host_pairs {
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

    fn add_devices<M: GuestMemory>(&mut self, sim: &mut Simulator<M>, report: &mut Vec<String>) {
        if self.devices_added
            || self.script.added_devices.is_empty()
            || self.heartbeats_answered < self.script.add_devices_after_heartbeats
            || sim.channel_of(DeviceKind::Heartbeat).is_none()
        {
            return;
        }
        self.devices_added = true;
        for (index, device) in self.script.added_devices.iter().enumerate() {
            let config = device.config(ADDED_INSTANCE_BASE + index as u128 + 1);
            let (class, instance) = (config.class, config.instance);
            let relid = sim.add_device(config);
            report.push(format!(
                "host: offered {} {instance} as relid {relid} while the guest runs",
                describe(*device, class)
            ));
        }
    }

    fn rescind_kvp<M: GuestMemory>(&mut self, sim: &mut Simulator<M>, report: &mut Vec<String>) {
        match self.rescind {
            RescindProgress::NotYet => {
                let Some(after) = self.script.kvp_rescind_after_heartbeats else {
                    return;
                };
                if self.heartbeats_answered < after {
                    return;
                }
                let Some(relid) = sim.channel_of(DeviceKind::Kvp) else {
                    return;
                };
                let Some(instance) = sim.vmbus.device(relid).map(|d| d.instance) else {
                    return;
                };
                if sim.rescind(relid) {
                    self.rescind = RescindProgress::Rescinded { relid, instance };
                    report.push(format!("host: KVP relid {relid} rescinded"));
                }
            }
            RescindProgress::Rescinded { relid, instance } => {
                // The guest's RelIdReleased removes the channel.
                if sim.vmbus.channel_state(relid).is_some() {
                    return;
                }
                let new_relid = sim.add_device(DeviceConfig::ic(DeviceKind::Kvp, instance));
                self.rescind = RescindProgress::Reoffered { relid: new_relid };
                report.push(format!(
                    "host: relid {relid} released by the guest; KVP {instance} offered again as relid {new_relid}"
                ));
            }
            RescindProgress::Reoffered { relid } => {
                if sim.channel_of(DeviceKind::Kvp) != Some(relid) {
                    return;
                }
                let (key, value) = REOFFER_PAIR;
                if sim.kvp_set(vmbus_ipc::kvp::POOL_EXTERNAL, key, value) {
                    self.rescind = RescindProgress::Done;
                    report.push(format!(
                        "host: re-offered KVP relid {relid} open; pair {key} = {value} pushed"
                    ));
                }
            }
            RescindProgress::Done => {}
        }
    }

    fn kvp_get<M: GuestMemory>(&mut self, sim: &mut Simulator<M>, report: &mut Vec<String>) {
        let Some(key) = self.script.kvp_get_guest_key.clone() else {
            return;
        };
        if sim.channel_of(DeviceKind::Kvp).is_none() {
            return;
        }
        if !self.kvp_get_sent {
            if self.heartbeats_answered >= self.script.kvp_get_after_heartbeats
                && sim.kvp_get(vmbus_ipc::kvp::POOL_GUEST, &key)
            {
                self.kvp_get_sent = true;
                report.push(format!("host: KVP GET pool 1 \"{key}\" sent"));
            }
            return;
        }
        for response in sim.kvp_responses() {
            if response.operation == vmbus_protocol::ic::kvp_operation::GET {
                report.push(format!(
                    "host: KVP GET pool {} \"{}\" answered: status {:#x}, value \"{}\"",
                    response.pool, response.key, response.status, response.value
                ));
            }
        }
    }
}

impl ScriptRunner {
    /// The scenario's storage events: hot add, hot remove, rescind,
    /// faults (each once its heartbeat count is reached and a storage
    /// device exists).
    fn storage_events<M: GuestMemory>(&mut self, sim: &mut Simulator<M>, report: &mut Vec<String>) {
        let answered = self.heartbeats_answered;
        if sim.vmbus.storage.is_empty() {
            return;
        }
        if let Some((after, bytes)) = self.script.storage_hot_add {
            if !self.storage_added && answered >= after {
                self.storage_added = true;
                let disk = crate::disk::MemoryDisk::new(512, bytes / 512);
                match sim.storage_hot_add(alloc::boxed::Box::new(disk)) {
                    Some(lun) => report.push(format!(
                        "host: storage LUN {lun} hot-added ({} KiB); ENUMERATE_BUS follows",
                        bytes / 1024
                    )),
                    None => report.push(String::from("host: storage hot add: no free LUN")),
                }
            }
        }
        if let Some(after) = self.script.storage_remove_after_heartbeats {
            if !self.storage_removed && answered >= after {
                self.storage_removed = true;
                match sim.storage_luns().last().copied() {
                    Some(lun) if sim.storage_hot_remove(lun) => report.push(format!(
                        "host: storage LUN {lun} hot-removed; ENUMERATE_BUS follows"
                    )),
                    _ => report.push(String::from("host: storage hot remove: no LUN")),
                }
            }
        }
        while let Some(&(after, fault)) = self.script.storage_faults.get(self.storage_faults_armed)
        {
            if answered < after || !sim.storage_inject(fault) {
                break;
            }
            self.storage_faults_armed += 1;
            report.push(format!("host: storage fault armed: {fault:?}"));
        }
        if let Some(after) = self.script.storage_rescind_after_heartbeats {
            if !self.storage_rescinded && answered >= after {
                if let Some(relid) = sim.storage_relid() {
                    self.storage_rescinded = true;
                    let in_flight = sim.storage_pending();
                    storage_report(sim, report);
                    if sim.rescind(relid) {
                        report.push(format!(
                            "host: storage relid {relid} rescinded with {in_flight} completions held"
                        ));
                    }
                }
            }
        }
    }
}

impl ScriptRunner {
    /// The scenario's network events: link down and up, rescind and
    /// re-offer, faults (each once its heartbeat count is reached and a
    /// network device exists).
    /// The keyboard and mouse steps that are due, in order; a step
    /// waits for its device to be ready.
    fn input_steps<M: GuestMemory>(&mut self, sim: &mut Simulator<M>, report: &mut Vec<String>) {
        let answered = self.heartbeats_answered;
        while let Some((after, step)) = self.script.input_steps.get(self.input_steps_run) {
            if answered < *after || !sim.input_ready(step) {
                break;
            }
            let result = sim.input_step(step);
            self.input_steps_run += 1;
            report.push(format!("host: input {step:?}: {result}"));
        }
    }

    fn network_events<M: GuestMemory>(&mut self, sim: &mut Simulator<M>, report: &mut Vec<String>) {
        let answered = self.heartbeats_answered;
        if sim.vmbus.network.is_empty() {
            return;
        }
        if let Some(after) = self.script.network_link_down_after_heartbeats {
            if !self.network_link_down && answered >= after && sim.net_set_link(false) {
                self.network_link_down = true;
                report.push(String::from(
                    "host: network link down (INDICATE_STATUS media disconnect)",
                ));
            }
        }
        if let Some(after) = self.script.network_link_up_after_heartbeats {
            if self.network_link_down
                && !self.network_link_up
                && answered >= after
                && sim.net_set_link(true)
            {
                self.network_link_up = true;
                report.push(String::from(
                    "host: network link up (INDICATE_STATUS media connect)",
                ));
            }
        }
        while let Some(&(after, fault)) = self.script.network_faults.get(self.network_faults_armed)
        {
            if answered < after || !sim.net_inject(fault) {
                break;
            }
            self.network_faults_armed += 1;
            report.push(format!("host: network fault armed: {fault:?}"));
        }
        match self.network_rescind {
            NetRescind::NotYet => {
                let due = self
                    .script
                    .network_rescind_after_heartbeats
                    .is_some_and(|after| answered >= after);
                let open = sim
                    .net_relid()
                    .filter(|&relid| sim.vmbus.endpoint(relid).is_some());
                if let (true, Some(relid)) = (due, open) {
                    network_report(sim, report);
                    if sim.rescind(relid) {
                        self.network_rescind = NetRescind::Rescinded { relid };
                        report.push(format!("host: network relid {relid} rescinded"));
                    }
                }
            }
            NetRescind::Rescinded { relid } => {
                if let Some(new) = sim.net_offer_again() {
                    self.network_rescind = NetRescind::Done;
                    report.push(format!(
                        "host: network relid {relid} released; offered again as relid {new}"
                    ));
                }
            }
            NetRescind::Done => {}
        }
    }
}

/// The totals of each NIC host a guest talked to, one line each.
pub fn network_report<M: GuestMemory>(sim: &Simulator<M>, report: &mut Vec<String>) {
    for (instance, controller) in &sim.vmbus.network {
        if controller.stats.nvsp_messages == 0 && controller.stats.rule_violations == 0 {
            continue;
        }
        report.push(format!("host: network {instance}: {}", controller.report()));
    }
}

/// The totals of each storage controller a guest talked to, one line each.
pub fn storage_report<M: GuestMemory>(sim: &Simulator<M>, report: &mut Vec<String>) {
    for (instance, controller) in &sim.vmbus.storage {
        if controller.stats.init_packets == 0 && controller.stats.rule_violations == 0 {
            continue;
        }
        report.push(format!("host: storage {instance}: {}", controller.report()));
    }
}

/// How a script device is named in the report.
fn describe(device: ScriptDevice, class: uuid::Uuid) -> String {
    match device {
        ScriptDevice::Ic(kind) => format!("{kind:?}"),
        ScriptDevice::Generic { .. } => format!("a device of class {class}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pd::RegionMemory;
    use component_api::Region;

    #[test]
    fn the_scenarios_gpadl_limit_reaches_the_server() {
        let scenario =
            crate::scenario::parse_file("x.hvsim", "gpadl_memory_limit_kib = 64\n").unwrap();
        let script = Script::from_scenario(&scenario).unwrap();
        assert_eq!(script.server_config().gpadl_memory_limit, 64 * 1024);
        assert_eq!(
            Script::default().server_config().gpadl_memory_limit,
            1280 << 20,
            "Hyper-V's limit by default"
        );
        let too_much = crate::scenario::parse_file(
            "x.hvsim",
            &alloc::format!("gpadl_memory_limit_kib = {}\n", i64::MAX),
        );
        assert!(too_much.is_err());
    }

    fn host() -> Simulator<RegionMemory> {
        let region = Region::leaked(4 * 4096).with_guest_physical(0x10_0000);
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
    fn the_script_chooses_the_devices_and_versions_the_host_starts_with() {
        const STORVSC: u128 = 0xba61_63d9_04a1_4d29_b605_72e2_ffb1_dc7f;
        let script = Script {
            min_version: ProtocolVersion::V4_0,
            max_version: ProtocolVersion::V4_0,
            devices: vec![
                ScriptDevice::Ic(DeviceKind::Kvp),
                ScriptDevice::Generic { class: STORVSC },
            ],
            ..Script::default()
        };
        let config = script.server_config();
        assert_eq!(
            (config.min_version, config.max_version),
            (ProtocolVersion::V4_0, ProtocolVersion::V4_0)
        );
        assert_eq!(config.devices.len(), 2);
        assert_eq!(config.devices[0].kind, DeviceKind::Kvp);
        assert_eq!(config.devices[0].class, vmbus_protocol::guid::class::KVP);
        assert_eq!(config.devices[0].instance, instance(1));
        // The storvsc class is served by the storage host.
        assert_eq!(config.devices[1].kind, DeviceKind::Storage);
        assert_eq!(
            config.devices[1].class.to_string(),
            "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f"
        );
        assert_eq!(
            config.devices[1].instance.to_string(),
            "48565349-4d00-0000-0000-000000000002"
        );
        assert!(!config.devices[1].message_pipe);
    }

    #[test]
    fn the_scenarios_storage_reaches_the_controller() {
        let scenario = crate::scenario::parse_file(
            "x.hvsim",
            "devices = [\"heartbeat\", \"storage\"]\nstorage_version = \"5.1\"\n\
             storage_max_sub_channels = 2\nstorage_max_transfer_kib = 512\n\
             storage_memory_disks_kib = [64, 128]\nstorage_faults = [[0, \"short\"]]\n",
        )
        .unwrap();
        let script = Script::from_scenario(&scenario).unwrap();
        let config = script.server_config();
        assert_eq!(config.storage.newest_version, 0x0501);
        assert_eq!(config.storage.max_sub_channels, 2);
        assert_eq!(config.storage.max_transfer_bytes, 512 * 1024);
        assert_eq!(script.storage_faults, [(0, StorageFault::Short)]);
        let region = Region::leaked(4 * 4096).with_guest_physical(0x10_0000);
        let mut sim = Simulator::new(RegionMemory::new(&[region]).unwrap(), config);
        let lines = script.attach_memory_disks(&mut sim);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(sim.storage_luns(), [0, 1]);
        let controller = sim.vmbus.storage.values().next().unwrap();
        assert_eq!(controller.lun(1).unwrap().disk.block_count(), 256);
        assert!(sim.storage_relid().is_some());
        // Hot add takes the next LUN; the IDE class is a one-disk controller.
        assert_eq!(
            sim.storage_hot_add(alloc::boxed::Box::new(crate::disk::MemoryDisk::new(512, 8))),
            Some(2)
        );
        assert!(sim.storage_hot_remove(2));
        let mut report = Vec::new();
        storage_report(&sim, &mut report);
        assert!(report.is_empty(), "no guest talked to it: {report:?}");
        let controller = sim.vmbus.storage.values().next().unwrap();
        assert!(controller.report().contains("version none, 2 LUNs"));
    }

    #[test]
    fn the_scenarios_network_reaches_the_nic_host() {
        assert_eq!(NIC_CLASS, vmbus_protocol::guid::class::NIC.as_u128());
        assert_eq!(
            KEYBOARD_CLASS,
            vmbus_protocol::guid::class::KEYBOARD.as_u128()
        );
        assert_eq!(MOUSE_CLASS, vmbus_protocol::guid::class::MOUSE.as_u128());
        let scenario = crate::scenario::parse_file(
            "x.hvsim",
            "devices = [\"heartbeat\", \"network\"]\nnetwork_version = \"5.0\"\n\
             network_max_sub_channels = 2\nnetwork_mtu = 9000\n\
             network_faults = [[0, \"withhold-tx 2\"]]\n",
        )
        .unwrap();
        let script = Script::from_scenario(&scenario).unwrap();
        let config = script.server_config();
        assert_eq!(config.devices[1].kind, DeviceKind::Network);
        assert_eq!(config.network.newest_version, 0x50000);
        assert_eq!(config.network.max_sub_channels, 2);
        assert_eq!(config.network.mtu, 9000);
        assert_eq!(
            script.network_faults,
            [(0, NetFault::WithholdTx { count: 2 })]
        );
        let region = Region::leaked(4 * 4096).with_guest_physical(0x10_0000);
        let mut sim = Simulator::new(RegionMemory::new(&[region]).unwrap(), config);
        assert!(sim.net_relid().is_some());
        assert!(sim.net_set_backend(alloc::boxed::Box::new(crate::net::MemoryNet::discarding())));
        assert!(sim.net_set_link(false));
        assert!(!sim.net().unwrap().link_up());
        // Offered again only once the old channel is gone.
        assert_eq!(sim.net_offer_again(), None);
        let mut report = Vec::new();
        network_report(&sim, &mut report);
        assert!(report.is_empty(), "no guest talked to it: {report:?}");
        // A backend from outside adds a NIC to a configuration without one.
        let mut plain = integration_components();
        add_network(&mut plain);
        add_network(&mut plain);
        assert_eq!(
            plain
                .devices
                .iter()
                .filter(|d| d.kind == DeviceKind::Network)
                .count(),
            1
        );
    }

    #[test]
    fn rescind_runtime_offers_and_get_wait_for_their_channels() {
        // Without a guest nothing is open: the scenarios must not act on
        // channels that do not exist (no rescind of relid 0, no offers
        // before the heartbeat channel serves, no GET into the void).
        let mut sim = host();
        let mut runner = ScriptRunner::new(Script {
            kvp_rescind_after_heartbeats: Some(0),
            added_devices: vec![ScriptDevice::Ic(DeviceKind::Kvp)],
            kvp_get_guest_key: Some("GuestClient".into()),
            ..Script::default()
        });
        for step in 0..3u64 {
            assert!(runner.run(&mut sim, step * 1_000_000_000).is_empty());
        }
        assert_eq!(runner.rescind, RescindProgress::NotYet);
        assert!(!runner.devices_added && !runner.kvp_get_sent);
        assert_eq!(sim.vmbus.channel_state(5), None);
    }

    #[test]
    fn the_restart_bench_times_each_fault_to_the_reopened_channels_answer() {
        const MS: u64 = 1_000_000;
        let mut bench = RestartBench::Serving { not_before_ns: 0 };
        // Not negotiated yet: no fault.
        assert_eq!(bench.advance(false, 0, 0, 2), BenchStep::Nothing);
        assert_eq!(bench.advance(true, MS, 0, 2), BenchStep::Fault);
        // The old channel, still negotiated until vmbus closes it, is not
        // the answer.
        assert_eq!(bench.advance(true, 2 * MS, 0, 2), BenchStep::Nothing);
        assert_eq!(bench.advance(false, 3 * MS, 0, 2), BenchStep::Nothing);
        assert_eq!(bench.advance(false, 5 * MS, 0, 2), BenchStep::Nothing);
        assert_eq!(
            bench.advance(true, 9 * MS, 0, 2),
            BenchStep::Answered(8 * MS)
        );
        // The next fault waits for the channel to settle.
        assert_eq!(bench.advance(true, 10 * MS, 1, 2), BenchStep::Nothing);
        assert_eq!(
            bench.advance(true, 9 * MS + RESTART_BENCH_SETTLE_NS, 1, 2),
            BenchStep::Fault
        );
        let at = 9 * MS + RESTART_BENCH_SETTLE_NS;
        assert_eq!(bench.advance(false, at + MS, 1, 2), BenchStep::Nothing);
        assert_eq!(
            bench.advance(true, at + 4 * MS, 1, 2),
            BenchStep::Answered(4 * MS)
        );
        // Both done: nothing more.
        assert_eq!(bench, RestartBench::Done);
        assert_eq!(bench.advance(true, at + 100 * MS, 2, 2), BenchStep::Nothing);
        assert!(restart_bench_summary(&[8 * MS, 4 * MS])
            .contains("2 restarts, fault to first answer p50 4000 us, p99 4000 us, max 8000 us"));
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
            kvp_faults: vec![PacketFault::UnknownType],
            shutdown_after_heartbeats: Some(0),
            ..Script::default()
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
