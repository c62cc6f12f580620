//! `cargo xtask bench-isolation [--smoke] [--rounds N] [--requests K]
//! [--mib M] [--only ic|storage|net]`: what isolation costs (issue 14,
//! "Isolated against monolithic"), hosted.
//!
//! The same components, from the same descriptions, built twice (release):
//! isolated (today's hosted runtime: one process per component, channels
//! as eventfds and sockets; run as `xtask hosted DESCRIPTION --release`)
//! and monolithic (`hosted_runtime::monolith`: one process, the components
//! as threads, in-process notifications and direct protected calls; run as
//! the generated binary). The simulated host (hvsim) is its own process on
//! the hypervisor transport in both. Both are child processes of this one
//! and their lines reach it the same way (the host's through the
//! launcher's or the monolith's output, then a pipe), so what differs is
//! only the platform under the components.
//!
//! Workloads, each run on a fresh system per round, the two builds
//! interleaved (isolated, monolithic, then monolithic, isolated, ...):
//! - `ic`: an IC request round trip: hvsim's operator command `kvp-get`
//!   (the host sends a KVP GET to the guest's kvp driver) to the host's
//!   event of the driver's answer (system.toml); each sample is the median
//!   of K round trips;
//! - `storage`: the guest benchmark component blk-bench (`stress` of
//!   tests/systems/storage-stress.toml) on a file disk: 4 KiB random read
//!   and write IOPS at queue depth 1 and 32, and its QD1 latency;
//! - `net`: TCP through the guest's echo port (tests/systems/network.toml,
//!   hvsim's user-space network): M MiB sent and echoed back, MB/s, and
//!   the NIC's frames per second (both directions, counted by hvsim).
//!
//! Results: a table on stdout and, if `VMBUS_BENCH_JSON` names a file, one
//! JSON record per line appended to it (group `isolation`, series
//! `isolated` and `monolithic`, baseline `monolithic`, `x` null: the
//! workload is in the metric's name; a sample per round).

use crate::util::{workspace_root, Result};
use bench_record::Record;
use ipc_harness::monolith::{monolith_command, LineProcess};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const IC_SYSTEM: &str = "system.toml";
const STORAGE_SYSTEM: &str = "tests/systems/storage-stress.toml";
const STORAGE_SCENARIO: &str = "tests/systems/storage-stress.hvsim";
const NET_SYSTEM: &str = "tests/systems/network.toml";
/// blk-bench's 128 KiB tests cover 1024 requests' worth of the disk.
const DISK_MIB: u64 = 160;
const ECHO_PORT: u16 = 7;
const BOOT_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Build {
    Isolated,
    Monolithic,
}

impl Build {
    fn series(self) -> &'static str {
        match self {
            Build::Isolated => "isolated",
            Build::Monolithic => "monolithic",
        }
    }
}

struct Settings {
    smoke: bool,
    rounds: usize,
    requests: usize,
    mib: u64,
    only: Option<String>,
}

impl Settings {
    fn parse(args: &[String]) -> Result<Settings> {
        let smoke = args.iter().any(|a| a == "--smoke");
        let value = |name: &str| {
            args.iter()
                .position(|a| a == name)
                .and_then(|i| args.get(i + 1))
                .cloned()
        };
        let number = |name: &str, default: u64| -> Result<u64> {
            match value(name) {
                Some(text) => text
                    .parse()
                    .map_err(|_| format!("{name} needs a number, not {text:?}")),
                None => Ok(default),
            }
        };
        Ok(Settings {
            smoke,
            rounds: number("--rounds", if smoke { 1 } else { 5 })?.clamp(1, 100) as usize,
            requests: number("--requests", if smoke { 20 } else { 300 })?.clamp(1, 100_000)
                as usize,
            mib: number("--mib", if smoke { 1 } else { 32 })?.clamp(1, 1024),
            only: value("--only"),
        })
    }

    fn runs(&self, workload: &str) -> bool {
        self.only.as_deref().is_none_or(|only| only == workload)
    }
}

/// One metric of one workload: samples per build, one per round.
struct Metric {
    name: String,
    unit: &'static str,
    higher_is_better: bool,
    isolated: Vec<f64>,
    monolithic: Vec<f64>,
}

#[derive(Default)]
struct Results {
    metrics: Vec<Metric>,
}

impl Results {
    fn add(&mut self, build: Build, name: &str, unit: &'static str, higher: bool, value: f64) {
        let index = match self.metrics.iter().position(|m| m.name == name) {
            Some(index) => index,
            None => {
                self.metrics.push(Metric {
                    name: name.to_string(),
                    unit,
                    higher_is_better: higher,
                    isolated: Vec::new(),
                    monolithic: Vec::new(),
                });
                self.metrics.len() - 1
            }
        };
        match build {
            Build::Isolated => self.metrics[index].isolated.push(value),
            Build::Monolithic => self.metrics[index].monolithic.push(value),
        }
    }
}

pub fn run(args: &[String]) -> Result {
    let settings = Settings::parse(args)?;
    let root = workspace_root();
    println!(
        "isolation benchmark (hosted{}): {} round(s), isolated = a process per component, monolithic = one process, components as threads; hvsim its own process in both",
        if settings.smoke { ", smoke run" } else { "" },
        settings.rounds
    );
    let folder = root.join("target").join("bench-isolation");
    std::fs::create_dir_all(&folder).map_err(|e| format!("{}: {e}", folder.display()))?;
    let disk = folder.join("disk.img");
    if settings.runs("storage") {
        make_disk(&disk)?;
    }
    // Both builds of every description first: a round times systems, not
    // cargo.
    for (workload, description) in [
        ("ic", IC_SYSTEM),
        ("storage", STORAGE_SYSTEM),
        ("net", NET_SYSTEM),
    ] {
        if settings.runs(workload) {
            prebuild(&root, description)?;
        }
    }
    let mut results = Results::default();
    let mut failures = 0;
    for round in 0..settings.rounds {
        let order = if round % 2 == 0 {
            [Build::Isolated, Build::Monolithic]
        } else {
            [Build::Monolithic, Build::Isolated]
        };
        for build in order {
            let mut outcomes = Vec::new();
            if settings.runs("ic") {
                outcomes.push((
                    "ic",
                    ic_round_trips(&root, build, settings.requests, &mut results),
                ));
            }
            if settings.runs("storage") {
                outcomes.push(("storage", storage(&root, build, &disk, &mut results)));
            }
            if settings.runs("net") {
                outcomes.push(("net", net(&root, build, settings.mib, &mut results)));
            }
            // A failed run loses its sample, not the rounds so far; the
            // benchmark still fails at the end.
            for (workload, outcome) in outcomes {
                if let Err(error) = outcome {
                    println!(
                        "[bench-isolation] round {}, {} {workload}: FAILED: {error}",
                        round + 1,
                        build.series()
                    );
                    failures += 1;
                }
            }
        }
        println!(
            "[bench-isolation] round {} of {} done",
            round + 1,
            settings.rounds
        );
    }
    print_table(&results);
    write_records(&results)?;
    if failures > 0 {
        return Err(format!("{failures} workload run(s) failed (above)"));
    }
    Ok(())
}

/// Build the isolated components (and host) and the monolith of
/// `description`, release.
fn prebuild(root: &Path, description: &str) -> Result {
    println!("[bench-isolation] building {description}, isolated and monolithic (release)");
    let path = root.join(description);
    let layout = sysdesc::compile_file(&path).map_err(|d| d.to_string())?;
    let packages: Vec<String> = layout
        .components
        .iter()
        .map(|c| c.package.clone())
        .collect();
    hosted_runtime::build_components(root, &path, &packages, bench_record::optimised_builds())
        .map_err(|e| format!("build failed: {e}"))?;
    monolith_command(description, true, &[])?;
    Ok(())
}

/// The command that runs `description` in `build`, the host getting
/// `host_args` (and, for the isolated build, `xtask hosted`'s `--net`).
fn command(
    build: Build,
    description: &str,
    host_args: &[&str],
    net: Option<&str>,
) -> Result<Command> {
    match build {
        Build::Isolated => {
            let exe = std::env::current_exe().map_err(|e| format!("no xtask binary: {e}"))?;
            let mut command = Command::new(exe);
            command
                .current_dir(workspace_root())
                .arg("hosted")
                .arg(description)
                .args(bench_record::optimised_builds().then_some("--release"))
                .arg("--net")
                .arg(net.unwrap_or("none"));
            for arg in host_args {
                command.arg("--host-arg").arg(arg);
            }
            Ok(command)
        }
        Build::Monolithic => {
            let mut args: Vec<&str> = host_args.to_vec();
            args.extend(["--net", net.unwrap_or("none")]);
            monolith_command(description, true, &args)
        }
    }
}

fn start(
    build: Build,
    description: &str,
    host_args: &[&str],
    net: Option<&str>,
) -> Result<LineProcess> {
    LineProcess::start(command(build, description, host_args, net)?)
}

fn wait(
    system: &mut LineProcess,
    needle: &str,
    from: usize,
    build: Build,
) -> Result<(usize, Instant)> {
    system.wait_for(needle, from, BOOT_WAIT).ok_or_else(|| {
        let lines = system.lines();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        format!(
            "{}: no line with {needle:?}; last lines:\n{tail}",
            build.series()
        )
    })
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[sorted.len() / 2]
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// K host-initiated KVP GETs, one at a time: command to answer event.
fn ic_round_trips(root: &Path, build: Build, requests: usize, results: &mut Results) -> Result {
    let _ = root;
    let mut system = start(
        build,
        IC_SYSTEM,
        &["--events", "--time-interval-ms", "5000"],
        None,
    )?;
    wait(&mut system, "hvsim event: negotiated Kvp", 0, build)?;
    // A few first, so neither build pays its first-use costs in the samples.
    let mut times = Vec::with_capacity(requests);
    for i in 0..requests + 5 {
        let from = system.lines().len();
        let sent = system.send("kvp-get 1 GuestClient")?;
        let (_, answered) = wait(&mut system, "hvsim event: kvp answer", from, build)?;
        if i >= 5 {
            times.push(answered.duration_since(sent).as_secs_f64() * 1e6);
        }
    }
    results.add(
        build,
        "IC round trip (host KVP GET to the driver's answer), median",
        "us",
        false,
        median(&times),
    );
    results.add(
        build,
        "IC round trip, p99",
        "us",
        false,
        percentile(&times, 0.99),
    );
    Ok(())
}

/// A disk file written out (not sparse), so both builds read real pages.
fn make_disk(path: &Path) -> Result {
    if std::fs::metadata(path).is_ok_and(|m| m.len() == DISK_MIB << 20) {
        return Ok(());
    }
    let mut file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 1) as u8).collect();
    for _ in 0..DISK_MIB {
        file.write_all(&chunk)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(())
}

/// The guest benchmark component's run: its IOPS and QD1 latency lines.
fn storage(root: &Path, build: Build, disk: &Path, results: &mut Results) -> Result {
    let script = root.join(STORAGE_SCENARIO).display().to_string();
    let disk = disk.display().to_string();
    let mut system = start(
        build,
        STORAGE_SYSTEM,
        &["--events", "--script", &script, "--disk", &disk],
        None,
    )?;
    wait(&mut system, "blk-bench: done", 0, build)?;
    let lines = system.lines();
    drop(system);
    for (test, short) in [
        ("4 KiB random read, QD1", "storage 4 KiB random read QD1"),
        ("4 KiB random read, QD32", "storage 4 KiB random read QD32"),
        ("4 KiB random write, QD1", "storage 4 KiB random write QD1"),
        (
            "4 KiB random write, QD32",
            "storage 4 KiB random write QD32",
        ),
    ] {
        let prefix = format!("blk-bench: {test}: ");
        let mine: Vec<&String> = lines.iter().filter(|l| l.contains(&prefix)).collect();
        let iops = mine
            .iter()
            .find_map(|l| {
                l.split(" IOPS")
                    .next()?
                    .rsplit(' ')
                    .next()?
                    .parse::<f64>()
                    .ok()
            })
            .filter(|_| {
                mine.iter()
                    .any(|l| l.contains(" IOPS, ") && l.contains(", 0 failed"))
            })
            .ok_or_else(|| format!("{}: no clean IOPS line for {test}", build.series()))?;
        results.add(build, short, "IOPS", true, iops);
        if let Some(median) = mine.iter().find_map(|l| {
            l.split("latency median ")
                .nth(1)?
                .split(" us")
                .next()?
                .parse::<f64>()
                .ok()
        }) {
            results.add(
                build,
                &format!("{short} latency, median"),
                "us",
                false,
                median,
            );
        }
    }
    Ok(())
}

/// (tx frames, rx frames) from hvsim's `net-report` answer.
fn frames(report: &str) -> Option<(u64, u64)> {
    let number_before = |text: &str, marker: &str| -> Option<u64> {
        let at = text.find(marker)?;
        text[..at].rsplit(' ').next()?.parse().ok()
    };
    let tx = report.split("tx ").nth(1)?;
    let rx = report.split("; rx ").nth(1)?;
    Some((number_before(tx, " frames")?, number_before(rx, " frames")?))
}

fn net_report(system: &mut LineProcess, build: Build) -> Result<(u64, u64)> {
    let mut from = system.lines().len();
    system.send("net-report")?;
    // The host's answer (other lines mention the network too).
    for _ in 0..1000 {
        let (index, _) = wait(system, "[hvsim] network ", from, build)?;
        let line = system.lines()[index].clone();
        if let Some(frames) = frames(&line) {
            return Ok(frames);
        }
        from = index + 1;
    }
    Err(format!("{}: no net-report answer", build.series()))
}

/// M MiB through the guest's echo port: MB/s, and the NIC's frames/s.
fn net(_root: &Path, build: Build, mib: u64, results: &mut Results) -> Result {
    let spec = format!("user:127.0.0.1:0={ECHO_PORT}");
    let mut system = start(
        build,
        NET_SYSTEM,
        &["--events", "--devices", ""],
        Some(&spec),
    )?;
    let (index, _) = wait(&mut system, "hvsim: net: user ", 0, build)?;
    let line = system.lines()[index].clone();
    let address: SocketAddr = line
        .split("net: user ")
        .nth(1)
        .and_then(|rest| rest.split(" -> ").next())
        .and_then(|a| a.trim().parse().ok())
        .ok_or_else(|| format!("no forward in {line:?}"))?;
    wait(&mut system, "web: link up", 0, build)?;
    let before = net_report(&mut system, build)?;
    let bytes = mib << 20;
    let started = Instant::now();
    echo_transfer(address, bytes)?;
    let seconds = started.elapsed().as_secs_f64();
    let after = net_report(&mut system, build)?;
    let frames = (after.0 - before.0) + (after.1 - before.1);
    results.add(
        build,
        "net TCP echo throughput (each way)",
        "MB/s",
        true,
        bytes as f64 / seconds / 1e6,
    );
    results.add(
        build,
        "net frames per second (NIC, both ways)",
        "frames/s",
        true,
        frames as f64 / seconds,
    );
    Ok(())
}

/// Send `bytes` through the echo service and read them all back (every
/// byte checked), the sender on its own thread.
fn echo_transfer(address: SocketAddr, bytes: u64) -> Result {
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match TcpStream::connect_timeout(&address, Duration::from_secs(5)) {
            Ok(stream) => break stream,
            Err(error) if Instant::now() >= deadline => {
                return Err(format!("connect {address}: {error}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let timeout = Some(Duration::from_secs(30));
    stream.set_nodelay(true).ok();
    stream
        .set_read_timeout(timeout)
        .map_err(|e| e.to_string())?;
    stream
        .set_write_timeout(timeout)
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = stream;
    let pattern = |at: u64| (at % 251) as u8;
    let sender = std::thread::spawn(move || -> Result {
        let mut block = vec![0u8; 64 * 1024];
        let mut sent = 0u64;
        while sent < bytes {
            let len = (bytes - sent).min(block.len() as u64) as usize;
            for (offset, byte) in block[..len].iter_mut().enumerate() {
                *byte = pattern(sent + offset as u64);
            }
            writer
                .write_all(&block[..len])
                .map_err(|e| format!("send at {sent}: {e}"))?;
            sent += len as u64;
        }
        Ok(())
    });
    let mut block = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    while got < bytes {
        let len = reader
            .read(&mut block)
            .map_err(|e| format!("receive at {got}: {e}"))?;
        if len == 0 {
            return Err(format!("the echo ended after {got} of {bytes} bytes"));
        }
        if let Some(bad) = (0..len).find(|&i| block[i] != pattern(got + i as u64)) {
            return Err(format!("echoed byte {} differs", got + bad as u64));
        }
        got += len as u64;
    }
    sender
        .join()
        .map_err(|_| "the sender panicked".to_string())?
}

fn print_table(results: &Results) {
    println!();
    println!("| workload | unit | isolated, median [min-max] | monolithic, median [min-max] | isolated / monolithic |");
    println!("|---|---|---|---|---|");
    let spread = |values: &[f64]| {
        if values.is_empty() {
            return "-".to_string();
        }
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        format!("{:.1} [{:.1}-{:.1}]", median(values), min, max)
    };
    for metric in &results.metrics {
        let ratio = if metric.isolated.is_empty() || metric.monolithic.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{:.3}",
                median(&metric.isolated) / median(&metric.monolithic)
            )
        };
        println!(
            "| {} | {} | {} | {} | {} |",
            metric.name,
            metric.unit,
            spread(&metric.isolated),
            spread(&metric.monolithic),
            ratio
        );
    }
}

/// One result record per metric and build (tools/bench-record), appended
/// to the results file if `cargo xtask bench` named one.
fn write_records(results: &Results) -> Result {
    for metric in &results.metrics {
        for (build, samples) in [
            (Build::Isolated, &metric.isolated),
            (Build::Monolithic, &metric.monolithic),
        ] {
            let mut record = Record::new(
                "isolation",
                build.series(),
                &metric.name,
                metric.unit,
                metric.higher_is_better,
            )
            .samples(samples)
            .note("hosted: isolated = a process per component, monolithic = one process (components as threads); hvsim its own process in both; one sample per interleaved round");
            if build == Build::Isolated {
                record = record.baseline("monolithic");
            }
            record.emit();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_read_from_the_net_report() {
        let report = "network 1: version 0x60001, link up, 3 channels; tx 120 frames 9000 bytes (120 packets: 3 send-buffer, 117 GPA-direct), 0 dropped link down, 0 refused; rx 80 frames 7000 bytes in 80 packets (by channel 1/2/3)";
        assert_eq!(frames(report), Some((120, 80)));
        assert_eq!(frames("no network device"), None);
    }
}
