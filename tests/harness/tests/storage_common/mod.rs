//! Shared by the storage reliability tests and the storage benchmark: the
//! stress system (tests/systems/storage-stress.toml) hosted on a disk
//! image file, with the test process as its block client `stress`
//! (a double: its regions and its notification to the storage driver).
#![allow(dead_code)]

use blk_workload::Port;
use block_queue::BlockClient;
use ipc_harness::{Double, Harness};
pub use linux_tools::Scratch;
use std::path::Path;
use std::time::{Duration, Instant};

pub const SYSTEM: &str = "tests/systems/storage-stress.toml";
pub const SCENARIO: &str = "tests/systems/storage-stress.hvsim";
/// The client's queue (the description's `queue`).
pub const QUEUE: usize = 32;
pub const BLOCK: usize = 512;
/// The heartbeat and time-sample period the host is given.
pub const PERIOD: Duration = Duration::from_millis(500);

/// A blank disk image of `mib` MiB.
pub fn blank_disk(path: &Path, mib: u64) {
    let file = std::fs::File::create(path).unwrap();
    file.set_len(mib << 20).unwrap();
}

/// Start the stress system on `disk` with the host reporting events and
/// sending heartbeats and time samples every [`PERIOD`].
pub fn start(disk: &Path, release: bool) -> Harness {
    let root = ipc_harness::workspace_root();
    let script = root.join(SCENARIO).display().to_string();
    let disk = disk.display().to_string();
    let period = PERIOD.as_millis().to_string();
    let mut builder = Harness::builder(SYSTEM).double("stress").host_args(&[
        "--events",
        "--script",
        &script,
        "--disk",
        &disk,
        "--heartbeat-interval-ms",
        &period,
        "--time-interval-ms",
        &period,
    ]);
    if release {
        builder = builder.release();
    }
    builder.start().expect("the storage stress system starts")
}

/// The test process as the block client: the workload's [`Port`].
pub struct StressPort {
    pub double: Double,
    start: Instant,
    pub signals: u64,
}

impl StressPort {
    pub fn new(harness: &Harness) -> StressPort {
        StressPort {
            double: harness.double("stress"),
            start: Instant::now(),
            signals: 0,
        }
    }

    pub fn client(&self) -> BlockClient<QUEUE> {
        BlockClient::new(
            self.double.region("blk0_requests"),
            self.double.region("blk0_responses"),
            self.double.region("blk0_info"),
            self.double.region("blk0_data"),
        )
        .expect("the grant's regions fit the block interface")
    }

    /// Wait until the driver serves (the info page is ready) with a
    /// generation other than `not`; the generation, or `None` on timeout.
    pub fn wait_serving(
        &mut self,
        client: &mut BlockClient<QUEUE>,
        not: Option<u32>,
        timeout: Duration,
    ) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(device) = client.device() {
                if Some(device.generation) != not {
                    return Some(device.generation);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // The driver notifies when it publishes; poll too, in case it
            // did before this test listened.
            self.double
                .wait_notified("blk0", left.min(Duration::from_millis(20)));
        }
    }
}

impl Port for StressPort {
    fn now_ns(&mut self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }
    fn signal_driver(&mut self) {
        self.signals += 1;
        self.double.notify("blk0");
    }
    fn wait(&mut self, timeout_ns: u64) -> bool {
        self.double
            .wait_notified("blk0", Duration::from_nanos(timeout_ns))
    }
}

/// The host's timestamp (`at N us`) in an event line.
pub fn host_time(line: &str) -> Option<Duration> {
    let at = line.rfind(" at ")?;
    let rest = line[at + 4..].strip_suffix(" us")?;
    rest.trim().parse().ok().map(Duration::from_micros)
}

/// When the host saw each event line containing `needle`.
pub fn host_event_times(harness: &Harness, needle: &str) -> Vec<Duration> {
    harness
        .system()
        .output()
        .into_iter()
        .filter(|line| line.contains("hvsim event: ") && line.contains(needle))
        .filter_map(|line| host_time(&line))
        .collect()
}

/// The longest interval between consecutive instants.
pub fn longest_gap(times: &[Duration]) -> Duration {
    times
        .windows(2)
        .map(|pair| pair[1].saturating_sub(pair[0]))
        .max()
        .unwrap_or_default()
}
