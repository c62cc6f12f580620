//! The network benchmark, hosted (`cargo xtask bench-net`, which runs
//! `cargo bench -p ipc-harness --bench net`; `--smoke` for a few
//! iterations). Not a timed test: it prints numbers (docs/network.md has
//! a run's).
//!
//! The whole isolated path: this Linux process -> a loopback TCP
//! connection -> hvsim's user-space network (a smoltcp gateway at
//! 10.0.2.2) -> the simulated NIC (NVSP/RNDIS over VMBus rings) -> the
//! driver process `network` (vsc-netvsc) -> the net interface -> the
//! client process `web` (net-client, smoltcp) -> its echo port 7 -> and
//! all the way back (tests/systems/network.toml, release builds). Against
//! it, in the same run, the same transfer through a Linux echo server on
//! loopback. The two alternate (guest, loopback, guest, loopback, ...)
//! over the rounds; each cell is the median over the rounds with the
//! min-max; the ratio is guest / loopback. Round-trip latency: a 64-byte
//! TCP ping-pong on one connection, median and p99, the two paths again
//! alternating in batches; and ICMP echo through a TAP in a namespace of
//! the benchmark's own (`ping` to the guest against `ping` to the TAP's
//! own address), where namespaces can be made.
//!
//! With `VMBUS_BENCH_JSON` set it appends its records (group `net`) for
//! `cargo xtask bench`.

#[path = "../tests/net_common/mod.rs"]
mod net_common;

use bench_record::Record;
use net_common::*;
use std::time::Duration;

struct Settings {
    rounds: usize,
    bytes: u64,
    round_trips: usize,
}

impl Settings {
    fn parse() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let number = |name: &str| bench_record::arg::<u64>(&args, name);
        if args.iter().any(|a| a == "--smoke") {
            return Settings {
                rounds: number("--rounds").unwrap_or(1) as usize,
                bytes: 1 << 20,
                round_trips: 50,
            };
        }
        Settings {
            rounds: number("--rounds").unwrap_or(5).clamp(1, 50) as usize,
            bytes: number("--mib").unwrap_or(32).clamp(1, 1024) << 20,
            round_trips: number("--round-trips").unwrap_or(2000).clamp(10, 100_000) as usize,
        }
    }
}

fn megabytes_per_second(bytes: u64, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e6
}

/// ICMP echo round trips through a TAP in a namespace: `ping` to the
/// guest against `ping` to the TAP's own address (answered by Linux
/// itself), alternating in batches of 50.
fn icmp_round_trips(settings: &Settings) -> Result<(), String> {
    let tap = start_tap_system_with("net-bench", true)?;
    wait_for_ping(&tap.namespace, Duration::from_secs(30))
        .ok_or("the guest answers no ping within 30 s")?;
    let (mut guest, mut local) = (Vec::new(), Vec::new());
    let batch = 50usize;
    while guest.len() < settings.round_trips {
        let count = batch.to_string();
        let args = ["-c", count.as_str(), "-i", "0.01", "-W", "1", "-n"];
        let answers = ping_times(&ping(&tap.namespace, &args, netns::GUEST));
        if answers.len() < batch {
            return Err(format!("{} of {batch} pings answered", answers.len()));
        }
        guest.extend(answers);
        local.extend(ping_times(&ping(&tap.namespace, &args, netns::GATEWAY)));
    }
    const ICMP_LOCAL: &str = "Linux answering its own TAP address";
    Record::new("net", "guest (TAP -> hvsim -> netvsc -> web)", "ICMP echo round trip", "ms", false)
        .distribution(&guest)
        .baseline(ICMP_LOCAL)
        .note("ping in a namespace of the benchmark's own, in batches of 50 alternating with the baseline")
        .emit();
    Record::new("net", ICMP_LOCAL, "ICMP echo round trip", "ms", false)
        .distribution(&local)
        .emit();
    let (g, l) = (summarize(&guest), summarize(&local));
    println!(
        "ICMP echo round trip through the TAP, {} each (ms): guest (TAP -> hvsim -> netvsc -> web) median {:.3} p99 {:.3} (min {:.3}, max {:.3}); Linux answering its own TAP address median {:.3} p99 {:.3}",
        guest.len(),
        g.median,
        g.p99,
        g.min,
        g.max,
        l.median,
        l.p99
    );
    println!("host: {}", tap.harness.host("net-report"));
    Ok(())
}

/// TCP through the guest's echo port over the user-space network against
/// a Linux echo server on loopback: throughput and round trips.
fn tcp(settings: &Settings) -> Result<(), String> {
    let system = start_user(SYSTEM, &[], true);
    let ready = wait_for_echo(system.echo, Duration::from_secs(20))?;
    println!(
        "guest echo reachable {} ms after the forward was up",
        ready.as_millis()
    );
    let loopback = loopback_echo_server();
    // Warm up both paths (ARP, windows, page faults).
    for address in [system.echo, loopback] {
        transfer(address, 1 << 20)?;
    }
    let (mut guest, mut local) = (Vec::new(), Vec::new());
    for round in 0..settings.rounds {
        let time = transfer(system.echo, settings.bytes)
            .map_err(|e| format!("round {round}, guest: {e}"))?;
        guest.push(megabytes_per_second(settings.bytes, time));
        let time = transfer(loopback, settings.bytes)?;
        local.push(megabytes_per_second(settings.bytes, time));
    }
    const GUEST: &str = "guest (user network -> netvsc -> web echo)";
    const LOOPBACK: &str = "Linux loopback echo";
    let metric = format!("TCP echo throughput, {} MiB each way", settings.bytes >> 20);
    Record::new("net", GUEST, &metric, "MB/s", true)
        .samples(&guest)
        .baseline(LOOPBACK)
        .emit();
    Record::new("net", LOOPBACK, &metric, "MB/s", true)
        .samples(&local)
        .emit();
    let (g, l) = (summarize(&guest), summarize(&local));
    println!(
        "TCP echo throughput, {} MiB each way per transfer, {} rounds (MB/s each way, median (min-max)):",
        settings.bytes >> 20,
        settings.rounds
    );
    println!(
        "  guest (user network -> netvsc -> web echo): {:.1} ({:.1}-{:.1})",
        g.median, g.min, g.max
    );
    println!(
        "  Linux loopback echo:                        {:.1} ({:.1}-{:.1})",
        l.median, l.min, l.max
    );
    println!("  ratio guest / loopback: {:.4}", g.median / l.median);

    let batch = (settings.round_trips / 10).max(1);
    let (mut guest, mut local) = (Vec::new(), Vec::new());
    while guest.len() < settings.round_trips {
        for (address, samples) in [(system.echo, &mut guest), (loopback, &mut local)] {
            let times = round_trips(address, batch, 64)?;
            samples.extend(times.iter().map(|t| t.as_secs_f64() * 1e6));
        }
    }
    Record::new("net", GUEST, "TCP round trip, 64 bytes", "us", false)
        .distribution(&guest)
        .baseline(LOOPBACK)
        .emit();
    Record::new("net", LOOPBACK, "TCP round trip, 64 bytes", "us", false)
        .distribution(&local)
        .emit();
    let (g, l) = (summarize(&guest), summarize(&local));
    println!(
        "TCP round trip, 64 bytes, {} each (us): guest median {:.0} p99 {:.0} (min {:.0}, max {:.0}); loopback median {:.0} p99 {:.0}",
        guest.len(),
        g.median,
        g.p99,
        g.min,
        g.max,
        l.median,
        l.p99
    );
    println!("host: {}", system.harness.host("net-report"));
    Ok(())
}

fn main() {
    let settings = Settings::parse();
    let mut failed = Vec::new();
    if let Err(error) = icmp_round_trips(&settings) {
        println!("ICMP round trips: not measured: {error}");
        failed.push("icmp");
    }
    if let Err(error) = tcp(&settings) {
        println!("TCP: not measured: {error}");
        failed.push("tcp");
    }
    if !failed.is_empty() {
        eprintln!("bench-net: not measured: {}", failed.join(", "));
        std::process::exit(1);
    }
}
