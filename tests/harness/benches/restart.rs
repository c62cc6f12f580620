//! The restart benchmark, hosted (`cargo xtask bench-restart`, which runs
//! `cargo bench -p ipc-harness --bench restart`; `--smoke` for a few
//! restarts, as `cargo xtask test` does). Not a timed test: it prints
//! numbers and, when `VMBUS_BENCH_JSON` names a file, appends its records
//! (docs/performance.md's contract) to it.
//!
//! The system is tests/systems/storage-stress.toml (release build): this
//! process is the block client `stress`, the storage driver (vsc-storvsc)
//! serves it LUN 0, a file, through the hvsim process. The description
//! gives storage `fault_window_ms = 0`, so vmbus restarts it however often
//! it faults.
//!
//! Restart latency (group `restart`, series `hosted`, one observation per
//! restart): a QD32 random-write workload runs; the driver is killed with
//! SIGKILL; measured from the instant before the `kill` call (the fault)
//! to the first request the client sees completed after the restarted
//! driver published its new generation (the first answered request), on
//! this process's monotonic clock. vmbus's own view (its fault
//! notification to the channel open again, from its `open again ... us`
//! line) is printed beside it.
//!
//! Signals per packet (group `signals`): before the restarts, a QD32
//! random-write stream; hvsim's `signals` operator command before and
//! after it gives the guest's signals and the packets the host consumed on
//! the storage channels (primary and sub-channels), and how many signals
//! the rules did not call for (docs/hvsim.md, "Signal accounting").

#[path = "../tests/storage_common/mod.rs"]
mod storage_common;

use bench_record::Record;
use blk_workload::{run_to_end, Config, Ledger, Pattern, Slot, Workload};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use storage_common::*;

const SECOND: u64 = 1_000_000_000;
/// Requests completed between a restart and the next kill (the stream is
/// running again, not just one request).
const SETTLE_REQUESTS: u64 = 64;

struct Settings {
    smoke: bool,
    restarts: usize,
    signal_rounds: usize,
    stream_requests: u64,
}

impl Settings {
    fn parse() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let smoke = args.iter().any(|a| a == "--smoke");
        let number = |name: &str| bench_record::arg::<u64>(&args, name);
        Settings {
            smoke,
            restarts: number("--restarts").unwrap_or(if smoke { 3 } else { 100 }) as usize,
            signal_rounds: number("--signal-rounds").unwrap_or(if smoke { 1 } else { 5 }) as usize,
            stream_requests: number("--stream-requests").unwrap_or(if smoke {
                500
            } else {
                20_000
            }),
        }
    }
}

/// The storage channels' totals in hvsim's `signals` answer: (packets,
/// signals, unnecessary signals).
fn storage_signals(answer: &str) -> (u64, u64, u64) {
    let mut totals = (0, 0, 0);
    for entry in answer.split("; ").filter(|e| e.contains(" Storage: ")) {
        let words: Vec<&str> = entry.split_whitespace().collect();
        let field = |name: &str| -> u64 {
            words
                .iter()
                .position(|w| *w == name)
                .and_then(|i| words.get(i + 1))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in hvsim's signals answer {entry:?}"))
        };
        totals.0 += field("packets");
        totals.1 += field("signals");
        totals.2 += field("unnecessary");
    }
    totals
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn summary(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    format!(
        "p50 {:.2} p99 {:.2} max {:.2} (n = {})",
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted[sorted.len() - 1],
        sorted.len()
    )
}

fn main() {
    let settings = Settings::parse();
    let scratch = Scratch::new("restart-bench");
    let disk = scratch.path("disk.img");
    let disk_mib = 32u64;
    {
        let file = File::create(&disk).unwrap();
        let chunk = vec![0x11u8; 1 << 20];
        for mib in 0..disk_mib {
            file.write_all_at(&chunk, mib << 20).unwrap();
        }
    }
    let harness = start(&disk, true);
    let mut port = StressPort::new(&harness);
    let mut client = port.client();
    let generation = port
        .wait_serving(&mut client, None, Duration::from_secs(60))
        .expect("the disk is served");
    println!(
        "restart benchmark (hosted{}): storage-stress system, QD32 4 KiB random writes on a {disk_mib} MiB file",
        if settings.smoke { ", smoke run" } else { "" }
    );
    let disk_blocks = disk_mib << 11;
    let slots = (disk_blocks / 8) as usize;
    let mut slot_records = vec![Slot::default(); slots];
    let mut next_seq = 1;
    let stream = |seed: u64, ops: u64| Config {
        pattern: Pattern::RandomWrite,
        depth: 32,
        ops,
        seed,
        stamp_writes: false,
        check_reads: false,
    };
    let mut records = Vec::new();

    // Signals per packet under a QD32 stream.
    let mut per_packet = Vec::new();
    let mut unnecessary = Vec::new();
    for round in 0..settings.signal_rounds {
        let before = storage_signals(&harness.host("signals"));
        let mut workload = Workload::new(
            &mut client,
            Ledger::new(&mut slot_records[..], 8, 1),
            stream(round as u64 + 1, settings.stream_requests),
            next_seq,
            &mut [],
        )
        .expect("the stream fits the grant");
        run_to_end(&mut workload, &mut client, &mut port, 60 * SECOND)
            .expect("the stack completes every request");
        next_seq = workload.next_seq();
        drop(workload);
        let after = storage_signals(&harness.host("signals"));
        let packets = after.0 - before.0;
        let signals = after.1 - before.1;
        let wasted = after.2 - before.2;
        println!(
            "signals, round {}: {packets} packets, {signals} signals ({:.4} per packet), {wasted} not called for",
            round + 1,
            signals as f64 / packets.max(1) as f64
        );
        per_packet.push(signals as f64 / packets.max(1) as f64);
        unnecessary.push(wasted as f64);
    }
    let note = "hosted: storvsc's channels (primary and sub-channels), QD32 4 KiB random writes, counted by hvsim";
    records.push(
        Record::new(
            "signals",
            "storage (hosted)",
            "signals per packet",
            "signals/packet",
            false,
        )
        .x(32.0, "queue depth")
        .samples(&per_packet)
        .note(note),
    );
    records.push(
        Record::new(
            "signals",
            "storage (hosted)",
            "signals not called for",
            "signals",
            false,
        )
        .x(32.0, "queue depth")
        .samples(&unnecessary)
        .note(note),
    );

    // Restarts under the stream.
    let mut workload = Workload::new(
        &mut client,
        Ledger::new(&mut slot_records[..], 8, 2),
        stream(99, u64::MAX),
        next_seq,
        &mut [],
    )
    .expect("fits");
    let mut latencies_ms = Vec::with_capacity(settings.restarts);
    let mut generation = generation;
    let faults_before = harness.system().faults().len();
    for restart in 1..=settings.restarts {
        let settled = workload.counters().completed + SETTLE_REQUESTS;
        while workload.counters().completed < settled {
            workload.step(&mut client, &mut port, SECOND / 10).unwrap();
        }
        let killed = Instant::now();
        harness.kill("storage");
        harness.expect_fault("storage", faults_before + restart);
        generation = port
            .wait_serving(&mut client, Some(generation), Duration::from_secs(30))
            .unwrap_or_else(|| harness.fail("the restarted driver does not serve"));
        let completed = workload.counters().completed;
        while workload.counters().completed == completed {
            workload
                .step(&mut client, &mut port, SECOND / 1000)
                .unwrap();
            if killed.elapsed() > Duration::from_secs(30) {
                harness.fail("no request answered after the restart");
            }
        }
        latencies_ms.push(killed.elapsed().as_secs_f64() * 1e3);
    }
    workload.stop();
    run_to_end(&mut workload, &mut client, &mut port, 20 * SECOND).unwrap();
    let counters = workload.counters();
    drop(workload);
    assert_eq!(counters.failures() + counters.short, 0, "{counters:?}");
    // vmbus's view: its fault notification to the channel open again.
    let vmbus_ms: Vec<f64> = harness
        .system()
        .output()
        .iter()
        .filter(|l| l.contains("(storage) open again "))
        .filter_map(|l| {
            let at = l.find(" after its fault (")? + " after its fault (".len();
            let us: f64 = l[at..].split_whitespace().next()?.parse().ok()?;
            Some(us / 1e3)
        })
        .collect();
    println!(
        "restart, SIGKILL of storvsc under QD32 writes to the first request answered after it: {} ms",
        summary(&latencies_ms)
    );
    if !vmbus_ms.is_empty() {
        println!(
            "  vmbus: fault seen to the channel open again: {} ms (the lines its console budget let through)",
            summary(&vmbus_ms)
        );
    }
    println!("client: {:?}", client.stats());
    records.push(
        Record::new("restart", "hosted", "fault to first answered request", "ms", false)
            .distribution(&latencies_ms)
            .note("SIGKILL of storvsc under QD32 random writes to the first request the client sees completed by the restarted driver (this process's monotonic clock)"),
    );
    for record in &records {
        record.emit();
    }
}
