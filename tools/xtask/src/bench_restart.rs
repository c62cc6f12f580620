//! `cargo xtask bench-restart [--smoke] [--restarts N] [--qemu]` and
//! `cargo xtask bench-boot [--smoke] [--boots N]`: how long a crashed
//! driver takes to serve again, and how long the system takes from the
//! start of the guest to every offered channel open (docs/performance.md,
//! "Restart and boot"; what exactly is measured: docs/vmbus-system.md,
//! "Measuring restart and boot").
//!
//! Both print a summary and, when `VMBUS_BENCH_JSON` names a file, append
//! their result records to it (groups `restart`, `signals`, `boot`).
//!
//! - hosted restart: `cargo bench -p ipc-harness --bench restart`
//!   (tests/harness/benches/restart.rs: 100 SIGKILLs of storvsc under a
//!   QD32 write stream; also the stream's signals per packet);
//! - `--qemu`: the seL4 image of tests/systems/restart-bench.toml with the
//!   scenario tests/systems/restart-bench.hvsim: the simulated host has
//!   the monitor fault KVP 100 times in one boot and prints, in guest
//!   time, each fault and the restarted driver's first answer; then the
//!   data-path test (tests/systems/datapath.toml) for the guest's signals
//!   per packet while it streams (group `signals`, series `datapath
//!   (qemu)`, one sample per channel);
//! - boot: system.toml booted N times in QEMU; the guest time of the last
//!   channel-open line of vmbus (primaries and sub-channels) in each boot.

use crate::image::{build, ImageSpec};
use crate::qemu::{boot_until, Echo};
use crate::util::{workspace_root, Result};
use bench_record::Record;
use std::process::Command;

fn number(args: &[String], name: &str) -> Option<u64> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `p50 p99 max (n)` of some observations.
fn summary(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    format!(
        "p50 {:.1} p99 {:.1} max {:.1} (n = {})",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1],
        sorted.len()
    )
}

/// Append one distribution record (in ms) to the results file, if
/// `cargo xtask bench` named one.
fn write_distribution(group: &str, series: &str, metric: &str, samples: &[f64], note: &str) {
    Record::new(group, series, metric, "ms", false)
        .distribution(samples)
        .note(note)
        .emit();
}

/// Append one record of per-sample values that are not a distribution.
fn write_record(group: &str, series: &str, metric: &str, unit: &str, samples: &[f64], note: &str) {
    Record::new(group, series, metric, unit, false)
        .samples(samples)
        .note(note)
        .emit();
}

/// The number after `key` in `line` (`... key 1234 us`).
fn value_after(line: &str, key: &str) -> Option<u64> {
    let at = line.find(key)? + key.len();
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .find(|w| !w.is_empty())?
        .parse()
        .ok()
}

pub fn restart(args: &[String]) -> Result {
    if args.iter().any(|a| a == "--qemu") {
        return restart_qemu(args);
    }
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .arg("bench")
        .args(unoptimised_profile().into_iter().flatten())
        .args(["-p", "ipc-harness", "--bench", "restart", "--"])
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo bench: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the restart benchmark failed: {status}"))
    }
}

/// `cargo bench`'s profile for a smoke run (bench_record::UNOPTIMISED_ENV):
/// the dev profile the tests already built.
fn unoptimised_profile() -> Option<[&'static str; 2]> {
    (!bench_record::optimised_builds()).then_some(["--profile", "dev"])
}

const RESTART_SYSTEM: &str = "tests/systems/restart-bench.toml";
const RESTART_SCENARIO: &str = "tests/systems/restart-bench.hvsim";
const RESTART_SMOKE_SCENARIO: &str = "tests/systems/restart-bench-smoke.hvsim";
/// hvsim's line for each restart (guest time, microseconds).
const RESTART_LINE: &str = "host: restart bench: kvp answered ";
const RESTART_DONE: &str = "host: restart bench: done";

fn restart_qemu(args: &[String]) -> Result {
    crate::setup::run_setup()?;
    let smoke = args.iter().any(|a| a == "--smoke");
    let scenario = if smoke {
        RESTART_SMOKE_SCENARIO
    } else {
        RESTART_SCENARIO
    };
    let image = build(&ImageSpec::new(RESTART_SYSTEM, Some(scenario)))?;
    let until = [RESTART_DONE.to_string()];
    let boot = boot_until(&image, None, Echo::Quiet, Some(&until))?;
    let latencies: Vec<f64> = boot
        .lines()
        .iter()
        .filter(|l| l.contains(RESTART_LINE))
        .filter_map(|l| value_after(l, RESTART_LINE))
        .map(|us| us as f64 / 1e3)
        .collect();
    if !boot.until_met || latencies.is_empty() {
        for line in boot.lines().iter().rev().take(40).rev() {
            eprintln!("{line}");
        }
        return Err(format!(
            "the guest did not finish the restarts (no `{RESTART_DONE}`, {} measured)",
            latencies.len()
        ));
    }
    println!(
        "restart in QEMU (seL4 image {RESTART_SYSTEM}): the monitor faults kvp, to its answer to the host's first request after the restart, guest time: {} ms ({:.0} s wall clock)",
        summary(&latencies),
        boot.elapsed.as_secs_f64()
    );
    write_distribution(
        "restart",
        "qemu",
        "fault to first answered request",
        &latencies,
        "seL4 in QEMU (TCG): kvp stopped by the monitor as if it faulted (hvsim's fault injection) to kvp's answer to the host's first request on the reopened channel (the IC negotiation), both in guest time (TSC) as hvsim sees them",
    );
    signals_qemu()
}

const DATAPATH_SYSTEM: &str = "tests/systems/datapath.toml";
const DATAPATH_SCENARIO: &str = "tests/systems/datapath.hvsim";
/// hvsim's signal accounting per data-path channel, at the end of the
/// stream (`host: datapath channel K signals: packets P signals S ...`).
const DATAPATH_SIGNALS: &str = "signals: packets ";

/// Signals per packet in QEMU: the data-path test (a test driver streams
/// every send shape both ways over a primary and two sub-channels against
/// hvsim's data-path device); one sample per channel.
fn signals_qemu() -> Result {
    let image = build(&ImageSpec::new(DATAPATH_SYSTEM, Some(DATAPATH_SCENARIO)))?;
    let boot = boot_until(&image, None, Echo::Quiet, None)?;
    let mut per_packet = Vec::new();
    let mut unnecessary = Vec::new();
    for line in boot.lines().iter().filter(|l| l.contains(DATAPATH_SIGNALS)) {
        let (Some(packets), Some(signals), Some(wasted)) = (
            value_after(line, "packets "),
            value_after(line, " signals "),
            value_after(line, "unnecessary "),
        ) else {
            return Err(format!("cannot read the signal line {line:?}"));
        };
        println!("signals in QEMU (data-path test): {line}");
        per_packet.push(signals as f64 / packets.max(1) as f64);
        unnecessary.push(wasted as f64);
    }
    if per_packet.is_empty() {
        return Err(format!(
            "the data-path test printed no signal accounting (`{DATAPATH_SIGNALS}`)"
        ));
    }
    let note = "seL4 in QEMU: the data-path test driver streaming every send shape both ways on each of 3 channels, counted by hvsim; one sample per channel";
    write_record(
        "signals",
        "datapath (qemu)",
        "signals per packet",
        "signals/packet",
        &per_packet,
        note,
    );
    write_record(
        "signals",
        "datapath (qemu)",
        "signals not called for",
        "signals",
        &unnecessary,
        note,
    );
    Ok(())
}

const BOOT_SYSTEM: &str = "system.toml";
/// vmbus's channel-open lines (primaries: `relid N (NAME) open (guest
/// time T us)`, sub-channels `relid N (NAME sub-channel K) open ...`).
const OPEN_LINE: &str = ") open (guest time ";
/// Every offered channel is open once the storage and network
/// sub-channels follow their primaries; the second answered heartbeat
/// comes a period (1 s) after the first and is the end of a boot.
const BOOT_UNTIL: &str = "[hvsim] host: heartbeat 2 answered";

pub fn boot(args: &[String]) -> Result {
    crate::setup::run_setup()?;
    let smoke = args.iter().any(|a| a == "--smoke");
    let boots = number(args, "--boots").unwrap_or(if smoke { 1 } else { 10 }) as usize;
    let image = build(&ImageSpec::new(BOOT_SYSTEM, None))?;
    let disk = crate::disk::demo_disk()?;
    let until = [BOOT_UNTIL.to_string()];
    let mut to_open_ms = Vec::new();
    for index in 1..=boots {
        let boot = boot_until(&image, Some(&disk), Echo::Quiet, Some(&until))?;
        let opens: Vec<(usize, u64)> = boot
            .lines()
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("[vmbus] relid ") && l.contains(OPEN_LINE))
            .filter_map(|(i, l)| Some((i, value_after(l, OPEN_LINE)?)))
            .collect();
        let Some(&(last_index, last_us)) = opens.iter().max_by_key(|(_, us)| *us) else {
            return Err(format!(
                "boot {index}: no channel-open line of vmbus (`{OPEN_LINE}`)"
            ));
        };
        if !boot.until_met {
            return Err(format!("boot {index}: no `{BOOT_UNTIL}`"));
        }
        let wall = boot.times()[last_index];
        let last = &boot.lines()[last_index];
        let last_name = last
            .find(" (")
            .and_then(|at| last[at + 2..].split(')').next())
            .unwrap_or("?");
        // `all N offered devices open M ms after vmbus started (guest
        // time T us)`: vmbus started at T - M.
        let vmbus_started_ms = boot
            .lines()
            .iter()
            .find(|l| l.contains("offered devices open ") && l.contains("(guest time "))
            .and_then(|l| {
                let after = value_after(l, "offered devices open ")?;
                let at = value_after(l, "(guest time ")?;
                Some(at as f64 / 1e3 - after as f64)
            });
        println!(
            "boot {index}/{boots}: {} channels open, the last ({last_name}) at guest time {:.1} ms; vmbus started at {}; {:.1} s after QEMU started (wall clock)",
            opens.len(),
            last_us as f64 / 1e3,
            vmbus_started_ms.map_or("?".to_string(), |ms| format!("{ms:.0} ms")),
            wall.as_secs_f64()
        );
        to_open_ms.push(last_us as f64 / 1e3);
    }
    println!(
        "boot to every offered channel open (QEMU, guest time): {} ms",
        summary(&to_open_ms)
    );
    write_distribution(
        "boot",
        "qemu",
        "guest start to every offered channel open",
        &to_open_ms,
        "seL4 in QEMU (TCG), system.toml: guest time (TSC since the machine started: firmware, image loading, kernel, root task) of vmbus's last channel-open line (primaries and sub-channels)",
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_numbers_come_from_the_lines_the_system_prints() {
        let open = "[vmbus] relid 12 (storage sub-channel 2) open (guest time 845312 us)";
        assert!(open.contains(OPEN_LINE));
        assert_eq!(value_after(open, OPEN_LINE), Some(845_312));
        let again = "[hvsim] host: restart bench: kvp answered 18412 us after its fault (restart 7 of 100, guest time 9123456 us)";
        assert_eq!(value_after(again, RESTART_LINE), Some(18_412));
        let all =
            "[vmbus] all 6 offered devices open 151 ms after vmbus started (guest time 786001 us)";
        assert_eq!(value_after(all, "offered devices open "), Some(151));
        assert_eq!(value_after(all, "(guest time "), Some(786_001));
        let signals = "[hvsim] host: datapath channel 1 signals: packets 322 signals 33 called-for 33 late 0 unnecessary 0";
        assert!(signals.contains(DATAPATH_SIGNALS));
        assert_eq!(value_after(signals, " signals "), Some(33));
        assert_eq!(value_after(signals, "unnecessary "), Some(0));
        assert_eq!(value_after(open, "no such key"), None);
    }

    #[test]
    fn percentiles_index_the_sorted_observations() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&values, 0.5), 51.0);
        assert_eq!(percentile(&values, 0.99), 99.0);
        assert!(summary(&[3.0, 1.0, 2.0]).starts_with("p50 2.0 p99 3.0 max 3.0 (n = 3)"));
    }
}
