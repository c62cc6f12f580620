//! The storage benchmark, hosted (`cargo xtask bench-storage`, which runs
//! `cargo bench -p ipc-harness --bench storage`; `--smoke` for a few
//! iterations, as `cargo xtask test` does). Not a timed test: it prints
//! numbers.
//!
//! The whole isolated stack: this process is the block client `stress` of
//! tests/systems/storage-stress.toml (blk-workload over block-queue) ->
//! the storvsc process (vsc-storvsc, release build) -> the hvsim process
//! (the storage host, `FileDisk`) -> a file. Against it, in the same run,
//! the same operations done by this process directly on the same file
//! (`pread`/`pwrite`, opened read-write as `FileDisk` opens it, one request
//! at a time as `FileDisk` serves them). The two are interleaved (stack,
//! direct, stack, direct, ...) over several rounds; each cell is the
//! median over the rounds with the min-max; the ratio is stack / direct.
//!
//! Also: latency at queue depth 1 (median and p99 over every request of
//! every round), the time from a SIGKILL of storvsc to the first request
//! served by the restarted driver, and CPU time per request of the storvsc
//! and hvsim processes (from /proc/PID/stat; the kernel counts in clock
//! ticks, so a cell is only as good as the run is long).
//!
//! With `VMBUS_BENCH_JSON` set it appends its records for `cargo xtask
//! bench`: group `storage` (each test's rate per round, stack against
//! pread/pwrite; the QD1 latencies and the CPU per request), and the
//! restart times in group `restart`.

#[path = "../tests/storage_common/mod.rs"]
mod storage_common;

use bench_record::Record;
use blk_workload::{run_to_end, Config, Ledger, Pattern, Slot, Workload};
use rand_core::{Rng, SeedableRng};
use rand_xorshift::XorShiftRng;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use storage_common::*;

const SECOND: u64 = 1_000_000_000;

struct Settings {
    smoke: bool,
    rounds: usize,
    disk_mib: u64,
    /// Requests per cell, scaled by each test's own factor.
    scale: f64,
    kills: usize,
}

impl Settings {
    fn parse() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let smoke = args.iter().any(|a| a == "--smoke");
        let number = |name: &str| bench_record::arg::<f64>(&args, name);
        if smoke {
            return Settings {
                smoke,
                rounds: number("--rounds").unwrap_or(1.0) as usize,
                disk_mib: 32,
                scale: 0.05,
                kills: 1,
            };
        }
        Settings {
            smoke,
            rounds: number("--rounds").unwrap_or(7.0) as usize,
            disk_mib: 256,
            scale: number("--scale").unwrap_or(2.0),
            kills: number("--kills").unwrap_or(3.0) as usize,
        }
    }
}

#[derive(Clone, Copy)]
struct Test {
    name: &'static str,
    pattern: Pattern,
    depth: u32,
    /// Blocks per request.
    blocks: u32,
    /// Requests per cell at scale 1.
    ops: u64,
    /// Report MB/s rather than IOPS.
    throughput: bool,
}

const TESTS: [Test; 6] = [
    Test {
        name: "4 KiB random read, QD1",
        pattern: Pattern::RandomRead,
        depth: 1,
        blocks: 8,
        ops: 4000,
        throughput: false,
    },
    Test {
        name: "4 KiB random read, QD32",
        pattern: Pattern::RandomRead,
        depth: 32,
        blocks: 8,
        ops: 20000,
        throughput: false,
    },
    Test {
        name: "4 KiB random write, QD1",
        pattern: Pattern::RandomWrite,
        depth: 1,
        blocks: 8,
        ops: 4000,
        throughput: false,
    },
    Test {
        name: "4 KiB random write, QD32",
        pattern: Pattern::RandomWrite,
        depth: 32,
        blocks: 8,
        ops: 20000,
        throughput: false,
    },
    Test {
        name: "128 KiB sequential read, QD8",
        pattern: Pattern::SequentialRead,
        depth: 8,
        blocks: 256,
        ops: 2000,
        throughput: true,
    },
    Test {
        name: "128 KiB sequential write, QD8",
        pattern: Pattern::SequentialWrite,
        depth: 8,
        blocks: 256,
        ops: 2000,
        throughput: true,
    },
];

/// One measurement.
struct Sample {
    seconds: f64,
    ops: u64,
    bytes: u64,
    latencies_ns: Vec<u64>,
    /// CPU seconds of storvsc and hvsim meanwhile (stack only).
    cpu: Option<(f64, f64)>,
}

impl Sample {
    fn rate(&self, throughput: bool) -> f64 {
        if throughput {
            self.bytes as f64 / self.seconds / 1e6
        } else {
            self.ops as f64 / self.seconds
        }
    }
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux this runs on.
    Some((utime + stime) / 100.0)
}

struct Bench {
    harness: ipc_harness::Harness,
    port: StressPort,
    client: block_queue::BlockClient<QUEUE>,
    file: File,
    disk_blocks: u64,
    next_seq: u64,
}

impl Bench {
    fn stack(&mut self, test: &Test, ops: u64, seed: u64) -> Sample {
        let slots = (self.disk_blocks / u64::from(test.blocks)) as usize;
        let mut slot_records = vec![Slot::default(); slots];
        let (ledger_bps, ledger_run) = (test.blocks, 1);
        let mut latencies = vec![0u64; ops as usize];
        let config = Config {
            pattern: test.pattern,
            depth: test.depth,
            ops,
            seed,
            stamp_writes: false,
            check_reads: false,
        };
        let pids = (
            self.harness.system().pid("storage"),
            self.harness.system().host_pid(),
        );
        let before = (pids.0.and_then(cpu_seconds), pids.1.and_then(cpu_seconds));
        let started = Instant::now();
        let mut workload = Workload::new(
            &mut self.client,
            Ledger::new(&mut slot_records[..], ledger_bps, ledger_run),
            config,
            self.next_seq,
            &mut latencies[..],
        )
        .expect("the test fits the grant");
        run_to_end(&mut workload, &mut self.client, &mut self.port, 20 * SECOND)
            .expect("the stack completes every request");
        let seconds = started.elapsed().as_secs_f64();
        let after = (pids.0.and_then(cpu_seconds), pids.1.and_then(cpu_seconds));
        let counters = workload.counters();
        self.next_seq = workload.next_seq();
        let kept = workload.latencies().len();
        drop(workload);
        assert_eq!(counters.failures() + counters.short, 0, "{counters:?}");
        latencies.truncate(kept);
        let cpu = match (before, after) {
            ((Some(a), Some(b)), (Some(c), Some(d))) => Some((c - a, d - b)),
            _ => None,
        };
        Sample {
            seconds,
            ops: counters.completed,
            bytes: counters.bytes,
            latencies_ns: latencies,
            cpu,
        }
    }

    fn direct(&mut self, test: &Test, ops: u64, seed: u64) -> Sample {
        let io = test.blocks as usize * BLOCK;
        let slots = self.disk_blocks / u64::from(test.blocks);
        let mut buffer = vec![0x5au8; io];
        let mut rng = XorShiftRng::seed_from_u64(seed);
        let mut latencies = Vec::with_capacity(ops as usize);
        let mut cursor = 0;
        let started = Instant::now();
        for _ in 0..ops {
            let slot = match test.pattern {
                Pattern::SequentialRead | Pattern::SequentialWrite => {
                    cursor = (cursor + 1) % slots;
                    cursor
                }
                _ => rng.next_u64() % slots,
            };
            let offset = slot * io as u64;
            let one = Instant::now();
            match test.pattern {
                Pattern::RandomWrite | Pattern::SequentialWrite => {
                    self.file.write_all_at(&buffer, offset).expect("pwrite")
                }
                _ => self.file.read_exact_at(&mut buffer, offset).expect("pread"),
            }
            latencies.push(one.elapsed().as_nanos() as u64);
        }
        Sample {
            seconds: started.elapsed().as_secs_f64(),
            ops,
            bytes: ops * io as u64,
            latencies_ns: latencies,
            cpu: None,
        }
    }

    /// SIGKILL storvsc while a QD32 write workload runs; the time until
    /// the restarted driver completes a request.
    fn restart_time(&mut self, since_last: &mut Instant) -> Duration {
        // vmbus holds a driver that faults 3 times within 10 s.
        while since_last.elapsed() < Duration::from_millis(5200) {
            std::thread::sleep(Duration::from_millis(50));
        }
        let slots = (self.disk_blocks / 8) as usize;
        let mut slot_records = vec![Slot::default(); slots];
        let (ledger_bps, ledger_run) = (8, 2);
        let config = Config {
            pattern: Pattern::RandomWrite,
            depth: 32,
            ops: u64::MAX,
            seed: 99,
            stamp_writes: false,
            check_reads: false,
        };
        let generation = self.client.device().map(|d| d.generation);
        let mut workload = Workload::new(
            &mut self.client,
            Ledger::new(&mut slot_records[..], ledger_bps, ledger_run),
            config,
            self.next_seq,
            &mut [],
        )
        .expect("fits");
        while workload.counters().completed < 500 {
            workload
                .step(&mut self.client, &mut self.port, SECOND / 10)
                .unwrap();
        }
        let faults = self.harness.system().faults().len();
        let killed = Instant::now();
        self.harness.kill("storage");
        self.harness.expect_fault("storage", faults + 1);
        self.port
            .wait_serving(&mut self.client, generation, Duration::from_secs(30))
            .expect("served again");
        let completed = workload.counters().completed;
        while workload.counters().completed == completed {
            workload
                .step(&mut self.client, &mut self.port, SECOND / 100)
                .unwrap();
            assert!(killed.elapsed() < Duration::from_secs(30), "not serving");
        }
        let took = killed.elapsed();
        *since_last = Instant::now();
        workload.stop();
        run_to_end(&mut workload, &mut self.client, &mut self.port, 20 * SECOND).unwrap();
        self.next_seq = workload.next_seq();
        took
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn spread(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    let mid = median(&mut sorted);
    format!(
        "{:.0} [{:.0}-{:.0}]",
        mid,
        sorted[0],
        sorted[sorted.len() - 1]
    )
}

fn main() {
    let settings = Settings::parse();
    let scratch = Scratch::new("bench");
    let disk = scratch.path("disk.img");
    // Written out (not sparse), so both sides read real page-cache pages.
    {
        let file = File::create(&disk).unwrap();
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i * 7 + 1) as u8).collect();
        for mib in 0..settings.disk_mib {
            file.write_all_at(&chunk, mib << 20).unwrap();
        }
        file.sync_all().unwrap();
    }
    let harness = start(&disk, true);
    let port = StressPort::new(&harness);
    let mut bench = Bench {
        file: OpenOptions::new()
            .read(true)
            .write(true)
            .open(&disk)
            .unwrap(),
        client: port.client(),
        port,
        harness,
        disk_blocks: settings.disk_mib << 11,
        next_seq: 1,
    };
    bench
        .port
        .wait_serving(&mut bench.client, None, Duration::from_secs(60))
        .expect("the disk is served");
    println!(
        "storage benchmark (hosted{}): {} rounds, a {} MiB disk file, stack = client -> storvsc -> hvsim -> file, direct = pread/pwrite on the file",
        if settings.smoke { ", smoke run" } else { "" },
        settings.rounds,
        settings.disk_mib
    );
    // Warm up both paths (page cache, first faults).
    for test in &TESTS {
        bench.stack(test, 50, 0);
        bench.direct(test, 50, 0);
    }
    let mut stack: Vec<Vec<Sample>> = TESTS.iter().map(|_| Vec::new()).collect();
    let mut direct: Vec<Vec<Sample>> = TESTS.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.rounds {
        for (index, test) in TESTS.iter().enumerate() {
            let ops = ((test.ops as f64 * settings.scale) as u64).max(20);
            let seed = round as u64 + 1;
            // A B then B A, so neither always goes first.
            if round % 2 == 0 {
                stack[index].push(bench.stack(test, ops, seed));
                direct[index].push(bench.direct(test, ops, seed));
            } else {
                direct[index].push(bench.direct(test, ops, seed));
                stack[index].push(bench.stack(test, ops, seed));
            }
        }
    }
    println!();
    println!("| test | stack | direct | stack / direct | storvsc CPU us/req | hvsim CPU us/req |");
    println!("|---|---|---|---|---|---|");
    for (index, test) in TESTS.iter().enumerate() {
        let unit = if test.throughput { "MB/s" } else { "IOPS" };
        let a: Vec<f64> = stack[index]
            .iter()
            .map(|s| s.rate(test.throughput))
            .collect();
        let b: Vec<f64> = direct[index]
            .iter()
            .map(|s| s.rate(test.throughput))
            .collect();
        let mut ratios: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x / y).collect();
        let ratio_spread = {
            let mid = median(&mut ratios);
            format!(
                "{:.3} [{:.3}-{:.3}]",
                mid,
                ratios[0],
                ratios[ratios.len() - 1]
            )
        };
        let cpu = |which: fn(&(f64, f64)) -> f64| {
            let mut per: Vec<f64> = stack[index]
                .iter()
                .filter_map(|s| s.cpu.as_ref().map(|c| which(c) * 1e6 / s.ops as f64))
                .collect();
            if per.is_empty() {
                "-".to_string()
            } else {
                format!("{:.1}", median(&mut per))
            }
        };
        println!(
            "| {} | {} {unit} | {} {unit} | {} | {} | {} |",
            test.name,
            spread(&a),
            spread(&b),
            ratio_spread,
            cpu(|c| c.0),
            cpu(|c| c.1)
        );
    }
    const STACK: &str = "isolated stack";
    const DIRECT: &str = "pread/pwrite";
    for (index, test) in TESTS.iter().enumerate() {
        let (unit, rate) = if test.throughput {
            ("MB/s", true)
        } else {
            ("IOPS", false)
        };
        for (series, samples) in [(STACK, &stack[index]), (DIRECT, &direct[index])] {
            let rates: Vec<f64> = samples.iter().map(|s| s.rate(rate)).collect();
            let mut record = Record::new("storage", series, test.name, unit, true).samples(&rates);
            if series == STACK {
                record = record
                    .baseline(DIRECT)
                    .note("client -> storvsc process -> hvsim process -> the file; against pread/pwrite on the same file by the bench process");
            }
            record.emit();
        }
        for (metric, which) in [
            ("storvsc CPU time per request", 0),
            ("hvsim CPU time per request", 1),
        ] {
            let per: Vec<f64> = stack[index]
                .iter()
                .filter_map(|s| {
                    s.cpu
                        .map(|c| if which == 0 { c.0 } else { c.1 } * 1e6 / s.ops as f64)
                })
                .collect();
            if !per.is_empty() {
                Record::new("storage", test.name, metric, "us", false)
                    .samples(&per)
                    .note("from /proc/PID/stat in clock ticks: only as good as the round is long")
                    .emit();
            }
        }
        if test.depth == 1 {
            for (series, samples) in [(STACK, &stack[index]), (DIRECT, &direct[index])] {
                let micros: Vec<f64> = samples
                    .iter()
                    .flat_map(|s| s.latencies_ns.iter().map(|&ns| ns as f64 / 1e3))
                    .collect();
                let mut record = Record::new(
                    "storage",
                    series,
                    &format!("latency, {}", test.name),
                    "us",
                    false,
                )
                .distribution(&micros);
                if series == STACK {
                    record = record.baseline(DIRECT);
                }
                record.emit();
            }
        }
    }
    println!();
    println!("| latency, QD1 | stack median | stack p99 | direct median | direct p99 |");
    println!("|---|---|---|---|---|");
    for (index, test) in TESTS.iter().enumerate().filter(|(_, t)| t.depth == 1) {
        let pooled = |samples: &[Sample]| {
            let mut all: Vec<u64> = samples
                .iter()
                .flat_map(|s| s.latencies_ns.iter().copied())
                .collect();
            all.sort_unstable();
            (percentile(&all, 0.5), percentile(&all, 0.99))
        };
        let (a50, a99) = pooled(&stack[index]);
        let (b50, b99) = pooled(&direct[index]);
        println!(
            "| {} | {:.1} us | {:.1} us | {:.1} us | {:.1} us |",
            test.name,
            a50 as f64 / 1e3,
            a99 as f64 / 1e3,
            b50 as f64 / 1e3,
            b99 as f64 / 1e3
        );
    }
    let mut since_last = Instant::now() - Duration::from_secs(10);
    let mut restarts: Vec<f64> = (0..settings.kills)
        .map(|_| bench.restart_time(&mut since_last).as_secs_f64() * 1e3)
        .collect();
    Record::new(
        "restart",
        "storvsc, SIGKILL under QD32 writes (hosted, bench-storage)",
        "kill to first completed request",
        "ms",
        false,
    )
    .distribution(&restarts)
    .emit();
    let all = restarts
        .iter()
        .map(|ms| format!("{ms:.1}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!();
    println!(
        "restart, SIGKILL of storvsc under a QD32 write load to its first completion: median {:.1} ms ({all} ms)",
        median(&mut restarts)
    );
    let stats = bench.client.stats();
    println!("client: {stats:?}");
}
