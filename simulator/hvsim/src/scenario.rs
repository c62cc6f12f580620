//! The simulated host's scenario: what the host does by itself while the
//! guest runs (time samples, its KVP pairs, malformed packets, rescinds,
//! offers at runtime, a shutdown request), which devices it offers and
//! which VMBus versions it accepts.
//!
//! One file, one format, both backends: a scenario is a TOML file
//! (`tests/systems/*.hvsim`, keys in `docs/hvsim.md`) deserialised with
//! serde into [`Scenario`]. The hosted host reads it at start
//! (`hvsim --script FILE`); for the seL4 image, hvsim's build script reads
//! the same file with the same code, checks it and writes it out as the
//! Rust expression that builds it ([`Scenario::to_rust`]), which the
//! protection domain includes (no parser and no serde in the image: serde's
//! `alloc` feature would ask every `no_std` component for an allocator).
//! Every key is optional: a missing key keeps the bring-up run's value
//! ([`Scenario::default`]).
//!
//! This file is also compiled into hvsim's build script (by path), so it
//! uses only `alloc`, `uuid` and, off seL4, serde and `toml`.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
#[cfg(not(target_os = "none"))]
use serde::{Deserialize, Serialize};

/// The VMBus versions the simulator speaks, as `major.minor`.
pub const VERSIONS: &[&str] = &["2.4", "3.0", "4.0", "4.1", "5.0", "5.1", "5.2", "5.3"];

/// The integration components by name (the devices the host speaks).
pub const DEVICES: &[&str] = &["heartbeat", "shutdown", "timesync", "kvp"];

/// The malformed KVP packets the host can send (the operator command
/// `malformed RELID FAULT` takes the same names).
pub const FAULTS: &[&str] = &[
    "offset-too-small",
    "length-before-offset",
    "unknown-type",
    "unknown-flags",
    "length-beyond-ring",
];

/// A scenario as written in its file. Durations are in milliseconds,
/// versions `major.minor`, devices an IC name or a class GUID, faults one of
/// [`FAULTS`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(
    not(target_os = "none"),
    derive(Serialize, Deserialize),
    serde(deny_unknown_fields, default)
)]
pub struct Scenario {
    /// A time sample every this many milliseconds (0: never). The first one
    /// goes out as soon as time sync is negotiated, with the SYNC flag.
    pub time_sample_period_ms: u64,
    /// (key, value) pairs pushed into the guest's external pool (pool 0)
    /// once KVP is negotiated.
    pub host_pairs: Vec<(String, String)>,
    /// Ask the guest to shut down once this many heartbeats were answered.
    pub shutdown_after_heartbeats: Option<u64>,
    /// Malformed packets on the KVP channel, in this order: the first once
    /// `kvp_fault_after_heartbeats` heartbeats were answered, each next one
    /// `kvp_fault_every` (at least 1) heartbeats later.
    pub kvp_faults: Vec<String>,
    pub kvp_fault_after_heartbeats: u64,
    pub kvp_fault_every: u64,
    /// The VMBus versions the host accepts (a guest asking for anything
    /// else is refused and must fall back).
    pub min_version: String,
    pub max_version: String,
    /// The devices offered at start, in relid order.
    pub devices: Vec<String>,
    /// Devices offered while the guest runs, all at once, once
    /// `add_devices_after_heartbeats` heartbeats were answered.
    pub added_devices: Vec<String>,
    pub add_devices_after_heartbeats: u64,
    /// Rescind the KVP channel once this many heartbeats were answered and
    /// offer the same device again when the guest released it.
    pub kvp_rescind_after_heartbeats: Option<u64>,
    /// Ask the guest for this key of its own pool once
    /// `kvp_get_after_heartbeats` heartbeats were answered.
    pub kvp_get_guest_key: Option<String>,
    pub kvp_get_after_heartbeats: u64,
    /// How much longer than its period a gap between two heartbeat (or time
    /// sync) answers may be and still count as on time. The host acts on
    /// its 50 ms timer ticks and on calls, and an idle guest's QEMU wakes
    /// late when the machine running it is busy (up to 131 ms seen in 200
    /// boots on a loaded 2-core machine); a missed beat shows as a whole
    /// period more.
    pub gap_allowance_ms: u64,
    /// Fault injection: (heartbeats answered, guest component) pairs; once
    /// that many heartbeats were answered the component is stopped as if
    /// it had faulted (the seL4 image's monitor does it, in a root task
    /// built for fault injection; the hosted host cannot reach the guest's
    /// processes and only says so: hosted tests kill with SIGKILL).
    pub crash_after_heartbeats: Vec<(u64, String)>,
    /// The total memory all GPADLs may describe at once, in KiB (Hyper-V:
    /// about 1280 MiB on Windows Server 2019 and later); a GPADL beyond it
    /// is refused with STATUS_QUOTA_EXCEEDED.
    pub gpadl_memory_limit_kib: u64,
    /// Devices (names as in `devices`) offered with a monitor ID: the
    /// guest signals them through the monitor page. At the shutdown
    /// request the host reports how each kind of signal arrived.
    pub monitored_devices: Vec<String>,
    /// Hostile-host test of the data-path test device: once the guest's
    /// stream started, send a transfer-page packet naming a range past the
    /// end of its receive buffer and a completion for an id it never used.
    pub datapath_host_faults: bool,
    /// The storage devices (`storage`, `ide`): the newest storage
    /// protocol version the host accepts (`major.minor` of
    /// [`STORAGE_VERSIONS`]), the sub-channels it offers at most, the
    /// largest transfer.
    pub storage_version: String,
    pub storage_max_sub_channels: u16,
    pub storage_max_transfer_kib: u64,
    /// Disks in the host's memory, in KiB, given to the first storage
    /// device as its next LUNs (after disks from the command line).
    pub storage_memory_disks_kib: Vec<u64>,
    /// Hot add: a memory disk of this many KiB as the next free LUN once
    /// `storage_hot_add_after_heartbeats` heartbeats were answered.
    pub storage_hot_add_kib: Option<u64>,
    pub storage_hot_add_after_heartbeats: u64,
    /// Hot remove the highest LUN once this many heartbeats were answered.
    pub storage_remove_after_heartbeats: Option<u64>,
    /// Rescind the storage controller (I/O in flight stays unanswered)
    /// once this many heartbeats were answered.
    pub storage_rescind_after_heartbeats: Option<u64>,
    /// (heartbeats answered, fault) pairs: the fault (`delay MS [COUNT]`,
    /// `withhold COUNT`, `fail KEY`, `short`, `corrupt KIND`) is armed on
    /// the first storage device for its next I/O requests.
    pub storage_faults: Vec<(u64, String)>,
    /// The network devices (`network`): the newest NVSP version the host
    /// accepts (one of [`NETWORK_VERSIONS`]), the sub-channels it grants
    /// at most, the MTU.
    pub network_version: String,
    pub network_max_sub_channels: u16,
    pub network_mtu: u32,
    /// Pull the cable of the first network device once this many
    /// heartbeats were answered; plug it in again at the second count.
    pub network_link_down_after_heartbeats: Option<u64>,
    pub network_link_up_after_heartbeats: Option<u64>,
    /// Rescind the first network device once this many heartbeats were
    /// answered and offer the same device again when the guest released it.
    pub network_rescind_after_heartbeats: Option<u64>,
    /// (heartbeats answered, fault) pairs: the fault (the words
    /// `NetFault::parse` takes) is armed on the first network device.
    pub network_faults: Vec<(u64, String)>,
    /// (heartbeats answered, step) pairs: keyboard and mouse steps
    /// (`hvsim::input_step`: `key CODE [e0] [up]`, `type TEXT`, `mouse X Y
    /// [BUTTONS]`, `keyboard-fault NAME`, `mouse-fault NAME`), each run once
    /// that many heartbeats were answered and its device is ready.
    pub input_steps: Vec<(u64, String)>,
    /// The restart benchmark (`cargo xtask bench-restart --qemu`): once a
    /// heartbeat was answered, stop the guest component named by
    /// `restart_bench_driver` as if it faulted this many times, each as
    /// soon as the restarted driver answered the host's first request on
    /// its reopened channel (fault injection, as `crash_after_heartbeats`:
    /// the seL4 image only), and print each fault-to-answer time.
    pub restart_bench_faults: u64,
    /// The IC driver the restart benchmark faults: its component and its
    /// device have this name (`heartbeat`, `shutdown`, `timesync`, `kvp`).
    pub restart_bench_driver: String,
    /// In the seL4 image under QEMU (`-vga std`, the i8042): show a test
    /// pattern on QEMU's display at boot and log every key and mouse
    /// packet the host's PS/2 devices report (the QEMU console boot test;
    /// docs/console.md, "In QEMU").
    pub qemu_console_test: bool,
}

/// The storage protocol versions (`major.minor`, as vstor writes them:
/// Win10, Win8.1, Win8, Win7, Win6).
pub const STORAGE_VERSIONS: &[&str] = &["6.2", "6.0", "5.1", "4.2", "2.0"];

/// The NVSP versions (`major.minor` as netvsp writes them), newest first.
pub const NETWORK_VERSIONS: &[&str] = &["6.1", "6.0", "5.0", "4.0", "3.2"];

/// An NVSP version's wire value (`0x60001` for `6.1`).
pub fn parse_network_version(text: &str) -> Option<u32> {
    if !NETWORK_VERSIONS.contains(&text) {
        return None;
    }
    let (major, minor) = text.split_once('.')?;
    Some(major.parse::<u32>().ok()? << 16 | minor.parse::<u32>().ok()?)
}

/// The network fault names (`NetFault::parse`; listed here without that
/// type, which the build script lacks); `withhold-tx` takes a count.
pub const NETWORK_FAULTS: &[&str] = &[
    "range-outside",
    "range-misaligned",
    "section-in-use",
    "frame-too-long",
    "rndis-length",
    "bad-page-set",
    "unknown-completion",
    "duplicate-completion",
    "withhold-tx",
    "bad-send-table",
    "unsolicited-control",
    "bad-indicate-status",
    "unknown-nvsp",
    "short-nvsp",
];

/// Whether `text` names a network fault.
pub fn is_network_fault(text: &str) -> bool {
    match text.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["withhold-tx", count] => count.parse::<u32>().is_ok(),
        [name] => *name != "withhold-tx" && NETWORK_FAULTS.contains(name),
        _ => false,
    }
}

/// A storage version's wire value (`0x0602` for `6.2`).
pub fn parse_storage_version(text: &str) -> Option<u16> {
    if !STORAGE_VERSIONS.contains(&text) {
        return None;
    }
    let (major, minor) = text.split_once('.')?;
    Some(major.parse::<u16>().ok()? << 8 | minor.parse::<u16>().ok()?)
}

/// Whether `text` names a storage fault (the words `StorageFault::parse`
/// takes; checked here without that type, which the build script lacks).
pub fn is_storage_fault(text: &str) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    let number = |w: &str| w.parse::<u32>().is_ok();
    match words.as_slice() {
        ["delay", ms] => number(ms),
        ["delay", ms, count] => number(ms) && number(count),
        ["withhold", count] => number(count),
        ["fail", key] => [
            "not-ready",
            "medium-error",
            "hardware-error",
            "illegal-request",
            "unit-attention",
            "data-protect",
            "aborted-command",
        ]
        .contains(key),
        ["short"] => true,
        ["corrupt", kind] => {
            ["unknown-id", "duplicate", "transfer-beyond", "sense-beyond"].contains(kind)
        }
        _ => false,
    }
}

impl Default for Scenario {
    /// The bring-up run: every integration component, VMBus 2.4 to 5.3, a
    /// time sample every second, one host pair, shut down after five
    /// heartbeats.
    fn default() -> Self {
        Scenario {
            time_sample_period_ms: 1000,
            host_pairs: vec![("HostName".into(), "hvsim".into())],
            shutdown_after_heartbeats: Some(5),
            kvp_faults: Vec::new(),
            kvp_fault_after_heartbeats: 0,
            kvp_fault_every: 1,
            min_version: "2.4".into(),
            max_version: "5.3".into(),
            devices: DEVICES.iter().map(|d| d.to_string()).collect(),
            added_devices: Vec::new(),
            add_devices_after_heartbeats: 0,
            kvp_rescind_after_heartbeats: None,
            kvp_get_guest_key: None,
            kvp_get_after_heartbeats: 0,
            gap_allowance_ms: 250,
            crash_after_heartbeats: Vec::new(),
            gpadl_memory_limit_kib: 1280 << 10,
            monitored_devices: Vec::new(),
            datapath_host_faults: false,
            storage_version: "6.2".into(),
            storage_max_sub_channels: 4,
            storage_max_transfer_kib: 256,
            storage_memory_disks_kib: Vec::new(),
            storage_hot_add_kib: None,
            storage_hot_add_after_heartbeats: 0,
            storage_remove_after_heartbeats: None,
            storage_rescind_after_heartbeats: None,
            storage_faults: Vec::new(),
            network_version: "6.1".into(),
            network_max_sub_channels: 4,
            network_mtu: 1500,
            network_link_down_after_heartbeats: None,
            network_link_up_after_heartbeats: None,
            network_rescind_after_heartbeats: None,
            network_faults: Vec::new(),
            input_steps: Vec::new(),
            restart_bench_faults: 0,
            restart_bench_driver: "kvp".into(),
            qemu_console_test: false,
        }
    }
}

/// A scenario value that is well-formed TOML but means nothing: the key it
/// is under and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    pub key: &'static str,
    pub why: String,
}

/// `major.minor` of a known version.
pub fn parse_version(text: &str) -> Option<(u16, u16)> {
    if !VERSIONS.contains(&text) {
        return None;
    }
    let (major, minor) = text.split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The integration components the host speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcName {
    Heartbeat,
    Shutdown,
    TimeSync,
    Kvp,
}

/// A device name: an integration component, or a class GUID (a generic
/// device: the host only completes its packets).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceName {
    Ic(IcName),
    Class(u128),
}

/// A class GUID in its hyphenated form (36 characters), as its u128.
fn class_guid(text: &str) -> Option<u128> {
    if text.len() != 36 {
        return None;
    }
    uuid::Uuid::try_parse(text).ok().map(|guid| guid.as_u128())
}

/// The storage classes (`vmbus_protocol::guid::class::SCSI` and `IDE`,
/// written out for the build script like the data-path class below).
pub const SCSI_CLASS: u128 = 0xba6163d9_04a1_4d29_b605_72e2ffb1dc7f;
pub const IDE_CLASS: u128 = 0x32412632_86cb_44a2_9b5c_50d1417354f5;

/// The data-path test device's class (`vmbus_protocol::datapath_test::CLASS`;
/// written out here because the build script reads this file without that
/// crate; a test in `channel/datapath.rs` keeps the two equal).
pub const DATAPATH_TEST_CLASS: u128 = 0x5e1f7e57_da7a_4a7c_9d3b_0c8a9e5f2d61;

/// The synthetic NIC's class (`vmbus_protocol::guid::class::NIC`, written
/// out for the build script; a test in `script.rs` keeps the two equal).
pub const NIC_CLASS: u128 = 0xf8615163_df3e_46c5_913f_f2d2f965ed0e;
/// The synthetic keyboard and the synthetic HID mouse.
pub const KEYBOARD_CLASS: u128 = 0xf912ad6d_2b17_48ea_bd65_f927a61c7684;
pub const MOUSE_CLASS: u128 = 0xcfa8b69e_5b4a_4cc0_b98b_8ba1a1f3f95a;

/// The synthetic video class (`vmbus_protocol::guid::class::SYNTHETIC_VIDEO`,
/// written out for the build script; a test in `channel/synthvid` keeps
/// the two equal).
pub const VIDEO_CLASS: u128 = 0xda0a7802_e377_4aac_8e77_0558eb1073f8;

pub fn parse_device(text: &str) -> Option<DeviceName> {
    let ic = match text {
        "heartbeat" => Some(IcName::Heartbeat),
        "shutdown" => Some(IcName::Shutdown),
        "timesync" => Some(IcName::TimeSync),
        "kvp" => Some(IcName::Kvp),
        // The data-path test device (a test-only class of our own).
        "datapath" => return Some(DeviceName::Class(DATAPATH_TEST_CLASS)),
        // The storage host (storvsp): a SCSI controller, an IDE channel.
        "storage" => return Some(DeviceName::Class(SCSI_CLASS)),
        "ide" => return Some(DeviceName::Class(IDE_CLASS)),
        // The NIC host (netvsp).
        "network" => return Some(DeviceName::Class(NIC_CLASS)),
        // The synthetic keyboard and mouse (channel/keyboard.rs, mouse.rs).
        "keyboard" => return Some(DeviceName::Class(KEYBOARD_CLASS)),
        "mouse" => return Some(DeviceName::Class(MOUSE_CLASS)),
        // The synthetic video host (synthvid's VSP).
        "video" => return Some(DeviceName::Class(VIDEO_CLASS)),
        _ => None,
    };
    if let Some(ic) = ic {
        return Some(DeviceName::Ic(ic));
    }
    class_guid(text).map(DeviceName::Class)
}

impl Scenario {
    /// Every value means something: known versions (min <= max), devices
    /// and faults, durations that fit in nanoseconds, a KVP key of plain
    /// characters.
    pub fn check(&self) -> Result<(), Invalid> {
        let invalid = |key: &'static str, why: String| Err(Invalid { key, why });
        for (key, value) in [
            ("time_sample_period_ms", self.time_sample_period_ms),
            ("gap_allowance_ms", self.gap_allowance_ms),
        ] {
            if value.checked_mul(1_000_000).is_none() {
                return invalid(key, format!("{value} ms is too long"));
            }
        }
        if self.gpadl_memory_limit_kib.checked_mul(1024).is_none() {
            return invalid(
                "gpadl_memory_limit_kib",
                format!("{} KiB is too much", self.gpadl_memory_limit_kib),
            );
        }
        let mut versions = [(0, 0); 2];
        for (slot, (key, value)) in [
            ("min_version", &self.min_version),
            ("max_version", &self.max_version),
        ]
        .into_iter()
        .enumerate()
        {
            match parse_version(value) {
                Some(version) => versions[slot] = version,
                None => {
                    return invalid(
                        key,
                        format!(
                            "unknown VMBus version `{value}`; known: {}",
                            VERSIONS.join(", ")
                        ),
                    )
                }
            }
        }
        if versions[0] > versions[1] {
            return invalid(
                "min_version",
                format!(
                    "{} is above max_version {}",
                    self.min_version, self.max_version
                ),
            );
        }
        for (key, list) in [
            ("devices", &self.devices),
            ("added_devices", &self.added_devices),
            ("monitored_devices", &self.monitored_devices),
        ] {
            if let Some(bad) = list.iter().find(|d| parse_device(d).is_none()) {
                return invalid(
                    key,
                    format!(
                        "unknown device `{bad}`; known: {} or a class GUID",
                        DEVICES.join(", ")
                    ),
                );
            }
        }
        if let Some(bad) = self
            .kvp_faults
            .iter()
            .find(|f| !FAULTS.contains(&f.as_str()))
        {
            return invalid(
                "kvp_faults",
                format!("unknown fault `{bad}`; known: {}", FAULTS.join(", ")),
            );
        }
        if parse_storage_version(&self.storage_version).is_none() {
            return invalid(
                "storage_version",
                format!(
                    "unknown storage version `{}`; known: {}",
                    self.storage_version,
                    STORAGE_VERSIONS.join(", ")
                ),
            );
        }
        if self.storage_max_sub_channels > 8 {
            return invalid("storage_max_sub_channels", "at most 8".into());
        }
        if !(4..=8192).contains(&self.storage_max_transfer_kib) {
            return invalid("storage_max_transfer_kib", "4 to 8192 KiB".into());
        }
        let disk_sizes = self
            .storage_memory_disks_kib
            .iter()
            .chain(self.storage_hot_add_kib.iter());
        for &kib in disk_sizes {
            // Whole 512-byte blocks, and no more than the host's heap can
            // sensibly hold.
            if kib == 0 || kib > 64 << 10 {
                return invalid(
                    if self.storage_hot_add_kib == Some(kib) {
                        "storage_hot_add_kib"
                    } else {
                        "storage_memory_disks_kib"
                    },
                    format!("{kib} KiB: 1 to 65536 KiB"),
                );
            }
        }
        if self.storage_memory_disks_kib.len() > 64 {
            return invalid("storage_memory_disks_kib", "at most 64 disks".into());
        }
        if let Some((_, bad)) = self
            .storage_faults
            .iter()
            .find(|(_, fault)| !is_storage_fault(fault))
        {
            return invalid(
                "storage_faults",
                format!(
                    "unknown storage fault `{bad}`; known: delay MS [COUNT], withhold COUNT, fail KEY, short, corrupt unknown-id|duplicate|transfer-beyond|sense-beyond"
                ),
            );
        }
        if parse_network_version(&self.network_version).is_none() {
            return invalid(
                "network_version",
                format!(
                    "unknown network version `{}`; known: {}",
                    self.network_version,
                    NETWORK_VERSIONS.join(", ")
                ),
            );
        }
        if self.network_max_sub_channels > 8 {
            return invalid("network_max_sub_channels", "at most 8".into());
        }
        if !(576..=9000).contains(&self.network_mtu) {
            return invalid("network_mtu", "576 to 9000".into());
        }
        if let Some((_, bad)) = self
            .network_faults
            .iter()
            .find(|(_, fault)| !is_network_fault(fault))
        {
            return invalid(
                "network_faults",
                format!(
                    "unknown network fault `{bad}`; known: {} (withhold-tx COUNT)",
                    NETWORK_FAULTS.join(", ")
                ),
            );
        }
        if let Some(why) = self
            .input_steps
            .iter()
            .find_map(|(_, step)| crate::input_step::parse_input_step(step).err())
        {
            return invalid("input_steps", why);
        }
        if self.kvp_fault_every == 0 {
            return invalid("kvp_fault_every", "must be at least 1".into());
        }
        if let Some(key) = &self.kvp_get_guest_key {
            if !is_plain_key(key) {
                return invalid(
                    "kvp_get_guest_key",
                    format!("`{key}` is not a key (letters, digits, `_`, `-`, `.`)"),
                );
            }
        }
        if let Some((key, _)) = self.host_pairs.iter().find(|(key, _)| !is_plain_key(key)) {
            return invalid(
                "host_pairs",
                format!("`{key}` is not a key (letters, digits, `_`, `-`, `.`)"),
            );
        }
        if self.restart_bench_faults > 0
            && !["heartbeat", "shutdown", "timesync", "kvp"]
                .contains(&self.restart_bench_driver.as_str())
        {
            return invalid(
                "restart_bench_driver",
                format!(
                    "`{}` is not an integration-component driver (heartbeat, shutdown, timesync, kvp)",
                    self.restart_bench_driver
                ),
            );
        }
        if let Some((_, name)) = self.crash_after_heartbeats.iter().find(|(_, name)| {
            name.is_empty()
                || name.len() > 32
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        }) {
            return invalid(
                "crash_after_heartbeats",
                format!("`{name}` is not a component name"),
            );
        }
        Ok(())
    }
}

fn is_plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
}

/// The Rust expression that builds `scenario` (for the seL4 image, whose
/// build script writes it out; `{:?}` of a string is a valid literal).
#[cfg(not(target_os = "none"))]
impl Scenario {
    pub fn to_rust(&self) -> String {
        let strings = |list: &[String]| {
            let items: Vec<String> = list.iter().map(|s| format!("{s:?}.into()")).collect();
            format!("alloc::vec![{}]", items.join(", "))
        };
        let pairs: Vec<String> = self
            .host_pairs
            .iter()
            .map(|(k, v)| format!("({k:?}.into(), {v:?}.into())"))
            .collect();
        let key = match &self.kvp_get_guest_key {
            Some(key) => format!("Some({key:?}.into())"),
            None => "None".into(),
        };
        format!(
            "hvsim::scenario::Scenario {{ time_sample_period_ms: {}, host_pairs: alloc::vec![{}], \
             shutdown_after_heartbeats: {:?}, kvp_faults: {}, kvp_fault_after_heartbeats: {}, \
             kvp_fault_every: {}, min_version: {:?}.into(), max_version: {:?}.into(), devices: {}, \
             added_devices: {}, add_devices_after_heartbeats: {}, kvp_rescind_after_heartbeats: {:?}, \
             kvp_get_guest_key: {key}, kvp_get_after_heartbeats: {}, gap_allowance_ms: {}, \
             crash_after_heartbeats: alloc::vec![{}], gpadl_memory_limit_kib: {}, monitored_devices: {}, datapath_host_faults: {}, \
             storage_version: {:?}.into(), storage_max_sub_channels: {}, storage_max_transfer_kib: {}, \
             storage_memory_disks_kib: alloc::vec!{:?}, storage_hot_add_kib: {:?}, storage_hot_add_after_heartbeats: {}, \
             storage_remove_after_heartbeats: {:?}, storage_rescind_after_heartbeats: {:?}, storage_faults: alloc::vec![{}], \
             network_version: {:?}.into(), network_max_sub_channels: {}, network_mtu: {}, \
             network_link_down_after_heartbeats: {:?}, network_link_up_after_heartbeats: {:?}, \
             network_rescind_after_heartbeats: {:?}, network_faults: alloc::vec![{}], \
             input_steps: alloc::vec![{}], restart_bench_faults: {}, restart_bench_driver: {:?}.into(), \
             qemu_console_test: {} }}",
            self.time_sample_period_ms,
            pairs.join(", "),
            self.shutdown_after_heartbeats,
            strings(&self.kvp_faults),
            self.kvp_fault_after_heartbeats,
            self.kvp_fault_every,
            self.min_version,
            self.max_version,
            strings(&self.devices),
            strings(&self.added_devices),
            self.add_devices_after_heartbeats,
            self.kvp_rescind_after_heartbeats,
            self.kvp_get_after_heartbeats,
            self.gap_allowance_ms,
            self.crash_after_heartbeats
                .iter()
                .map(|(after, name)| format!("({after}, {name:?}.into())"))
                .collect::<Vec<_>>()
                .join(", "),
            self.gpadl_memory_limit_kib,
            strings(&self.monitored_devices),
            self.datapath_host_faults,
            self.storage_version,
            self.storage_max_sub_channels,
            self.storage_max_transfer_kib,
            self.storage_memory_disks_kib,
            self.storage_hot_add_kib,
            self.storage_hot_add_after_heartbeats,
            self.storage_remove_after_heartbeats,
            self.storage_rescind_after_heartbeats,
            self.storage_faults
                .iter()
                .map(|(after, fault)| format!("({after}, {fault:?}.into())"))
                .collect::<Vec<_>>()
                .join(", "),
            self.network_version,
            self.network_max_sub_channels,
            self.network_mtu,
            self.network_link_down_after_heartbeats,
            self.network_link_up_after_heartbeats,
            self.network_rescind_after_heartbeats,
            self.network_faults
                .iter()
                .map(|(after, fault)| format!("({after}, {fault:?}.into())"))
                .collect::<Vec<_>>()
                .join(", "),
            self.input_steps
                .iter()
                .map(|(after, step)| format!("({after}, {step:?}.into())"))
                .collect::<Vec<_>>()
                .join(", "),
            self.restart_bench_faults,
            self.restart_bench_driver,
            self.qemu_console_test,
        )
    }
}

/// Read a scenario file's text: TOML syntax and types first, then
/// [`Scenario::check`]. Errors name `path:line:column` of the offending
/// value.
#[cfg(not(target_os = "none"))]
pub fn parse_file(path: &str, text: &str) -> Result<Scenario, String> {
    let position = |offset: usize| {
        let before = &text[..offset.min(text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.len() - before.rfind('\n').map_or(0, |at| at + 1) + 1;
        format!("{path}:{line}:{column}")
    };
    let scenario: Scenario = toml::from_str(text).map_err(|error| {
        let at = error
            .span()
            .map_or(path.to_string(), |span| position(span.start));
        format!("{at}: {}", error.message())
    })?;
    scenario.check().map_err(|invalid| {
        // Where the key's value is: parse again keeping spans.
        let spans: Result<alloc::collections::BTreeMap<String, toml::Spanned<toml::Value>>, _> =
            toml::from_str(text);
        let at = spans
            .ok()
            .and_then(|spans| {
                spans
                    .get(invalid.key)
                    .map(|value| position(value.span().start))
            })
            .unwrap_or_else(|| path.to_string());
        format!("{at}: {}: {}", invalid.key, invalid.why)
    })?;
    Ok(scenario)
}

#[cfg(all(test, not(target_os = "none")))]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_bring_up_run() {
        assert_eq!(
            parse_file("x.hvsim", "# nothing\n").unwrap(),
            Scenario::default()
        );
        assert!(Scenario::default().check().is_ok());
    }

    #[test]
    fn keys_override_the_defaults() {
        let scenario = parse_file(
            "x.hvsim",
            "kvp_faults = [\"unknown-type\", \"length-beyond-ring\"]\n\
             kvp_fault_after_heartbeats = 2\nshutdown_after_heartbeats = 9\n\
             min_version = \"4.0\"\nmax_version = \"4.0\"\n\
             devices = [\"heartbeat\", \"kvp\"]\n\
             added_devices = [\"ba6163d9-04a1-4d29-b605-72e2ffb1dc7f\"]\n\
             host_pairs = [[\"A\", \"1\"], [\"B\", \"2\"]]\n\
             kvp_get_guest_key = \"GuestClient\"\n",
        )
        .unwrap();
        assert_eq!(scenario.kvp_faults, ["unknown-type", "length-beyond-ring"]);
        assert_eq!(scenario.kvp_fault_after_heartbeats, 2);
        assert_eq!(scenario.shutdown_after_heartbeats, Some(9));
        assert_eq!(scenario.min_version, "4.0");
        assert_eq!(scenario.devices, ["heartbeat", "kvp"]);
        assert_eq!(
            parse_device(&scenario.added_devices[0]),
            Some(DeviceName::Class(0xba6163d9_04a1_4d29_b605_72e2ffb1dc7f))
        );
        assert_eq!(scenario.host_pairs[1], ("B".into(), "2".into()));
        assert_eq!(scenario.kvp_get_guest_key.as_deref(), Some("GuestClient"));
        assert_eq!(
            scenario.time_sample_period_ms, 1000,
            "untouched keys keep their default"
        );
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let error = |text: &str| parse_file("s.hvsim", text).unwrap_err();
        assert_eq!(
            error("# c\nkvp_fault = 1\n"),
            "s.hvsim:2:1: unknown field `kvp_fault`, expected one of `time_sample_period_ms`, `host_pairs`, `shutdown_after_heartbeats`, `kvp_faults`, `kvp_fault_after_heartbeats`, `kvp_fault_every`, `min_version`, `max_version`, `devices`, `added_devices`, `add_devices_after_heartbeats`, `kvp_rescind_after_heartbeats`, `kvp_get_guest_key`, `kvp_get_after_heartbeats`, `gap_allowance_ms`, `crash_after_heartbeats`, `gpadl_memory_limit_kib`, `monitored_devices`, `datapath_host_faults`, `storage_version`, `storage_max_sub_channels`, `storage_max_transfer_kib`, `storage_memory_disks_kib`, `storage_hot_add_kib`, `storage_hot_add_after_heartbeats`, `storage_remove_after_heartbeats`, `storage_rescind_after_heartbeats`, `storage_faults`, `network_version`, `network_max_sub_channels`, `network_mtu`, `network_link_down_after_heartbeats`, `network_link_up_after_heartbeats`, `network_rescind_after_heartbeats`, `network_faults`, `input_steps`, `restart_bench_faults`, `restart_bench_driver`, `qemu_console_test`"
        );
        assert_eq!(
            error("kvp_faults = [\"unknown\"]"),
            "s.hvsim:1:14: kvp_faults: unknown fault `unknown`; known: offset-too-small, length-before-offset, unknown-type, unknown-flags, length-beyond-ring"
        );
        assert!(error("kvp_fault_every = -1").starts_with("s.hvsim:1:19: "));
        assert!(error("\nmax_version = \"4.2\"")
            .starts_with("s.hvsim:2:15: max_version: unknown VMBus version `4.2`"));
        assert!(error("min_version = \"5.0\"\nmax_version = \"4.0\"")
            .contains("5.0 is above max_version 4.0"));
        assert!(
            error("devices = [\"heartbeat\", \"disk\"]").contains("devices: unknown device `disk`")
        );
        assert!(
            error("added_devices = [\"ba6163d9-04a1-4d29-b605-72e2ffb1dc7\"]")
                .contains("unknown device")
        );
        assert!(error("kvp_get_guest_key = \"a b\"").contains("is not a key"));
        assert!(error("kvp_fault_every = 0").contains("must be at least 1"));
        assert!(
            error("crash_after_heartbeats = [[2, \"Synic!\"]]").contains("not a component name")
        );
        assert!(error("time_sample_period_ms = 18446744073709551").contains("too long"));
        assert!(error("time_sample_period_ms = 18446744073709551615").starts_with("s.hvsim:1:25: "));
        assert!(error("devices = \"heartbeat\"").starts_with("s.hvsim:1:11: "));
        assert!(error("storage_version = \"6.1\"").contains("unknown storage version `6.1`"));
        assert!(error("storage_faults = [[1, \"fail later\"]]").contains("unknown storage fault"));
        assert!(error("storage_memory_disks_kib = [0]").contains("1 to 65536 KiB"));
        assert!(error("storage_max_sub_channels = 9").contains("at most 8"));
        assert!(error("network_version = \"6.2\"").contains("unknown network version `6.2`"));
        assert!(error("network_max_sub_channels = 9").contains("at most 8"));
        assert!(error("network_mtu = 100").contains("576 to 9000"));
        assert!(error("network_faults = [[1, \"withhold-tx\"]]").contains("unknown network fault"));
    }

    #[test]
    fn network_names_versions_and_faults() {
        assert_eq!(parse_device("network"), Some(DeviceName::Class(NIC_CLASS)));
        assert_eq!(parse_network_version("6.1"), Some(0x60001));
        assert_eq!(parse_network_version("3.2"), Some(0x30002));
        assert_eq!(parse_network_version("6.2"), None);
        assert!(is_network_fault("range-outside") && is_network_fault("withhold-tx 3"));
        assert!(!is_network_fault("withhold-tx") && !is_network_fault("range-outside 2"));
        let scenario = parse_file(
            "n.hvsim",
            "devices = [\"heartbeat\", \"network\"]\nnetwork_faults = [[2, \"bad-page-set\"]]\n\
             network_link_down_after_heartbeats = 3\nnetwork_link_up_after_heartbeats = 4\n",
        )
        .unwrap();
        assert_eq!(scenario.network_faults, [(2, "bad-page-set".into())]);
        let source = scenario.to_rust();
        for part in [
            r#"network_version: "6.1".into(),"#,
            "network_link_down_after_heartbeats: Some(3),",
            r#"network_faults: alloc::vec![(2, "bad-page-set".into())],"#,
        ] {
            assert!(source.contains(part), "{part} not in {source}");
        }
    }

    #[test]
    fn the_restart_benchmark_names_an_ic_driver() {
        let scenario = parse_file(
            "r.hvsim",
            "restart_bench_faults = 100\nrestart_bench_driver = \"timesync\"\n",
        )
        .unwrap();
        let source = scenario.to_rust();
        assert!(
            source.contains(
                r#"restart_bench_faults: 100, restart_bench_driver: "timesync".into(), qemu_console_test: false }"#
            ),
            "{source}"
        );
        let error = parse_file(
            "r.hvsim",
            "restart_bench_faults = 1\nrestart_bench_driver = \"storage\"\n",
        )
        .unwrap_err();
        assert!(
            error.contains("not an integration-component driver"),
            "{error}"
        );
    }

    #[test]
    fn the_qemu_console_test_is_a_scenario_key() {
        let scenario = parse_file("q.hvsim", "qemu_console_test = true\n").unwrap();
        assert!(scenario.qemu_console_test);
        assert!(scenario.to_rust().ends_with("qemu_console_test: true }"));
        assert!(!Scenario::default().qemu_console_test);
    }

    #[test]
    fn storage_names_and_versions() {
        assert_eq!(parse_device("storage"), Some(DeviceName::Class(SCSI_CLASS)));
        assert_eq!(parse_device("ide"), Some(DeviceName::Class(IDE_CLASS)));
        assert_eq!(parse_storage_version("6.2"), Some(0x0602));
        assert_eq!(parse_storage_version("2.0"), Some(0x0200));
        assert_eq!(parse_storage_version("6.1"), None);
        assert!(is_storage_fault("delay 5 2") && is_storage_fault("corrupt duplicate"));
        assert!(!is_storage_fault("delay") && !is_storage_fault("fail"));
    }

    #[test]
    fn the_rust_expression_names_every_value() {
        let scenario = Scenario {
            host_pairs: vec![("Key".into(), "say \"hi\"".into())],
            kvp_faults: vec!["unknown-type".into()],
            kvp_get_guest_key: Some("K".into()),
            shutdown_after_heartbeats: None,
            storage_memory_disks_kib: vec![64],
            storage_faults: vec![(3, "fail medium-error".into())],
            ..Scenario::default()
        };
        let source = scenario.to_rust();
        for part in [
            "time_sample_period_ms: 1000,",
            r#"host_pairs: alloc::vec![("Key".into(), "say \"hi\"".into())],"#,
            "shutdown_after_heartbeats: None,",
            r#"kvp_faults: alloc::vec!["unknown-type".into()],"#,
            r#"min_version: "2.4".into(),"#,
            r#"devices: alloc::vec!["heartbeat".into(), "shutdown".into(), "timesync".into(), "kvp".into()],"#,
            r#"kvp_get_guest_key: Some("K".into()),"#,
            "gap_allowance_ms: 250,",
            "crash_after_heartbeats: alloc::vec![],",
            "gpadl_memory_limit_kib: 1310720,",
            "monitored_devices: alloc::vec![],",
            "datapath_host_faults: false,",
            r#"storage_version: "6.2".into(),"#,
            "storage_memory_disks_kib: alloc::vec![64],",
            r#"storage_faults: alloc::vec![(3, "fail medium-error".into())],"#,
        ] {
            assert!(source.contains(part), "{part} not in {source}");
        }
    }
}
