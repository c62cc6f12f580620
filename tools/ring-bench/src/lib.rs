//! The interleaved ring benchmark: a writer and a reader, pinned to two
//! cores and both spinning, stream packets through one double-mapped ring
//! memory (control page + 256 KiB data area, the same memory for every
//! contender); the reader copies every payload out into private memory.
//!
//! Series, measured round by round in one run (A B C A B C ...) because
//! these machines are shared and change speed over minutes:
//! - `cross-core copy`: the physical limit. The same bytes written by one
//!   core and copied out by the other with no ring protocol (see
//!   [`CrossCoreCopy`] for its minimal synchronisation);
//! - `memcpy`: the reader's copy alone, on one core, from a warm buffer;
//! - `ours`: `vmbus_ring`, publishing the write index per packet and the
//!   read index per batch of up to 64 packets;
//! - `ours, publish per 16`: the batch API (one publication, one fence and
//!   one signal decision per 16 packets);
//! - any contender passed to [`main_with`] (`openvmm`).
//!
//! Group `ring` runs both halves as threads of this process; group
//! `ring-hosted` runs the reader in a second process (this binary,
//! re-executed with `--reader-child`) mapping the same memfd, as two
//! hosted components would.
//!
//! With `VMBUS_BENCH_JSON=FILE` every (series, size, metric) appends one
//! result record (docs/performance.md's contract) to FILE.

#![forbid(unsafe_code)]

mod contenders;

pub use contenders::{CrossCoreCopy, Ours, OursPublishingEvery};

use bench_record::Record;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::Instant;
use vmbus_ring::{DoubleMappedRingMemory, RingMemory};

/// The ring's data area: 256 KiB, as a storage or network channel's ring.
pub const DATA_LEN: usize = 256 * 1024;
/// Payload sizes measured.
pub const SIZES: [usize; 6] = [64, 256, 1024, 4096, 16384, 65536];
/// The reader publishes its read index at least once per this many packets.
pub const READ_BATCH: usize = 64;
/// ... and at least once per this many bytes of packets: a batch of 64
/// large packets would be the whole ring, and a writer waiting for space
/// would wait until the reader has drained all of it (no overlap at all).
pub const READ_BATCH_BYTES: usize = DATA_LEN / 4;
pub const WRITER_CORE: usize = 0;
pub const READER_CORE: usize = 1;

/// A ring implementation under test, as two halves the harness runs on the
/// two cores (threads of one process, or the reader in a second process).
pub trait Contender: Sync {
    /// Series name in the table and the JSON records.
    fn name(&self) -> &'static str;
    /// The writer: `packets` packets of `size` payload bytes, spinning while
    /// the ring is full, publishing the write index per packet (unless the
    /// contender is a batching variant, which its name says). Stamp packet
    /// `i` with [`stamp`] before writing it. Returns the signals the ring
    /// asked for (0 if it cannot tell).
    fn write(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64;
    /// The reader: `packets` packets, spinning while the ring is empty,
    /// copying every payload into private memory and publishing the read
    /// index once per batch of up to [`READ_BATCH`] packets and
    /// [`READ_BATCH_BYTES`] bytes (and whenever the ring looks empty),
    /// interrupt mask clear; when the ring looks empty (reader) or full
    /// (writer), call [`backoff`] before looking again. Returns the wrapping sum
    /// of [`stamp_of`] over the payloads.
    fn read(&self, memory: &DoubleMappedRingMemory, size: usize, packets: u64) -> u64;
}

/// How long a side that found the ring empty (reader) or full (writer)
/// waits before it looks again, in `spin_loop` hints. Every contender's
/// loops call [`backoff`], so the polling policy is the same for all.
/// Looking again at once keeps the control page's cache line bouncing
/// between the cores on every packet (each look pulls it over, and the
/// writer's next index store pulls it back); waiting a moment lets packets
/// pile up so that one look serves many. Set by `--backoff N` (default
/// [`DEFAULT_BACKOFF`]).
pub static BACKOFF_SPINS: std::sync::atomic::AtomicU32 =
    std::sync::atomic::AtomicU32::new(DEFAULT_BACKOFF);
pub const DEFAULT_BACKOFF: u32 = 64;

/// Wait a moment before looking at the ring again (see [`BACKOFF_SPINS`]).
#[inline]
pub fn backoff() {
    for _ in 0..BACKOFF_SPINS.load(std::sync::atomic::Ordering::Relaxed) {
        std::hint::spin_loop();
    }
    std::hint::spin_loop();
}

/// Mark a payload (at least 8 bytes) as packet `index`.
pub fn stamp(payload: &mut [u8], index: u64) {
    payload[..8].copy_from_slice(&index.to_le_bytes());
}

/// The mark [`stamp`] put on a payload.
pub fn stamp_of(payload: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&payload[..8]);
    u64::from_le_bytes(bytes)
}

/// What a reader of packets `0..packets` must return.
pub fn expected_sum(packets: u64) -> u64 {
    let (a, b) = if packets.is_multiple_of(2) {
        (packets / 2, packets.wrapping_sub(1))
    } else {
        (packets, packets.wrapping_sub(1) / 2)
    };
    a.wrapping_mul(b)
}

/// Pin the calling thread to `core` (a no-op on a machine without it, so
/// the benchmark still runs on one core, only slower).
pub fn pin_to(core: usize) {
    if let Some(id) = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .find(|id| id.id == core)
    {
        core_affinity::set_for_current(id);
    }
}

#[derive(Clone, Copy, Debug)]
struct Measurement {
    seconds: f64,
    packets: u64,
    signals: u64,
}

/// Zero the ring's control page before each run: every contender starts
/// from an empty ring with the same memory.
fn reset(memory: &DoubleMappedRingMemory) {
    for offset in (0..4096).step_by(4) {
        memory
            .control(offset)
            .expect("control word")
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

fn run_threads(
    contender: &dyn Contender,
    memory: &DoubleMappedRingMemory,
    size: usize,
    packets: u64,
) -> Measurement {
    reset(memory);
    let start_line = Barrier::new(2);
    let (start, signals, end, sum) = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            pin_to(WRITER_CORE);
            start_line.wait();
            let start = Instant::now();
            (start, contender.write(memory, size, packets))
        });
        let reader = scope.spawn(|| {
            pin_to(READER_CORE);
            start_line.wait();
            let sum = contender.read(memory, size, packets);
            (Instant::now(), sum)
        });
        let (start, signals) = writer.join().expect("writer thread");
        let (end, sum) = reader.join().expect("reader thread");
        (start, signals, end, sum)
    });
    assert_eq!(
        sum,
        expected_sum(packets),
        "{}: the reader got other payloads than were written",
        contender.name()
    );
    Measurement {
        seconds: end.duration_since(start).as_secs_f64(),
        packets,
        signals,
    }
}

/// The reader in a second process mapping the same memfd: this binary
/// again, with `--reader-child BACKOFF NAME PATH SIZE PACKETS`.
fn run_processes(
    contender: &dyn Contender,
    memory: &DoubleMappedRingMemory,
    size: usize,
    packets: u64,
) -> Measurement {
    reset(memory);
    let exe = std::env::current_exe().expect("current_exe");
    let mut child = Command::new(exe)
        .args([
            "--reader-child".to_string(),
            BACKOFF_SPINS
                .load(std::sync::atomic::Ordering::Relaxed)
                .to_string(),
            contender.name().to_string(),
            memory.share_path(),
            size.to_string(),
            packets.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the reader process");
    let mut lines = BufReader::new(child.stdout.take().expect("child stdout")).lines();
    let ready = lines.next().and_then(Result::ok);
    assert_eq!(
        ready.as_deref(),
        Some("ready"),
        "reader process did not start"
    );
    let (seconds, signals, done) = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_to(WRITER_CORE);
                let start = Instant::now();
                let signals = contender.write(memory, size, packets);
                // The reader's "done" line is its end; the pipe adds a few
                // microseconds to runs of tens of milliseconds.
                let done = lines.next().and_then(Result::ok);
                (start.elapsed().as_secs_f64(), signals, done)
            })
            .join()
            .expect("writer thread")
    });
    let status = child.wait().expect("wait for the reader process");
    assert!(status.success(), "reader process failed: {status}");
    let sum: Option<u64> = done
        .as_deref()
        .and_then(|line| line.strip_prefix("done "))
        .and_then(|sum| sum.parse().ok());
    assert_eq!(
        sum,
        Some(expected_sum(packets)),
        "{}: the reader process got other payloads than were written",
        contender.name()
    );
    Measurement {
        seconds,
        packets,
        signals,
    }
}

fn reader_child(contenders: &[&dyn Contender], args: &[String]) {
    let [spins, name, path, size, packets] = args else {
        panic!("--reader-child BACKOFF NAME PATH SIZE PACKETS");
    };
    BACKOFF_SPINS.store(
        spins.parse().expect("backoff"),
        std::sync::atomic::Ordering::Relaxed,
    );
    let contender = contenders
        .iter()
        .find(|c| c.name() == name)
        .expect("unknown contender");
    let size: usize = size.parse().expect("size");
    let packets: u64 = packets.parse().expect("packets");
    let memory = DoubleMappedRingMemory::open_shared(Path::new(path), DATA_LEN)
        .expect("map the shared ring");
    pin_to(READER_CORE);
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")
        .and_then(|_| out.flush())
        .expect("stdout");
    let sum = contender.read(&memory, size, packets);
    writeln!(out, "done {sum}")
        .and_then(|_| out.flush())
        .expect("stdout");
}

/// The reader's copy alone: `size`-byte pieces of a warm 256 KiB buffer
/// into private memory, on the reader's core.
fn run_memcpy(size: usize, packets: u64) -> Measurement {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                pin_to(READER_CORE);
                let source = vec![0x5Au8; DATA_LEN];
                let mut private = vec![0u8; size];
                let mut offset = 0;
                let start = Instant::now();
                for _ in 0..packets {
                    if offset + size > DATA_LEN {
                        offset = 0;
                    }
                    private.copy_from_slice(&source[offset..offset + size]);
                    std::hint::black_box(&mut private);
                    offset += size;
                }
                Measurement {
                    seconds: start.elapsed().as_secs_f64(),
                    packets,
                    signals: 0,
                }
            })
            .join()
            .expect("memcpy thread")
    })
}

struct Options {
    rounds: usize,
    bytes_per_run: u64,
    max_packets: u64,
    groups: Vec<&'static str>,
    sizes: Vec<usize>,
    /// Only these series (all when empty), for profiling one of them.
    series: Vec<String>,
}

fn parse_options(args: &[String]) -> Options {
    let mut options = Options {
        rounds: 5,
        bytes_per_run: 128 << 20,
        max_packets: 1 << 19,
        groups: vec!["ring", "ring-hosted"],
        sizes: SIZES.to_vec(),
        series: Vec::new(),
    };
    let mut rounds = None;
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().cloned().unwrap_or_default();
        match arg.as_str() {
            "--smoke" => {
                options.rounds = 1;
                options.bytes_per_run = 1 << 20;
                options.max_packets = 4096;
            }
            "--long" => {
                options.rounds = 11;
                options.bytes_per_run = 512 << 20;
                options.max_packets = 1 << 21;
            }
            "--rounds" => rounds = value().parse().ok(),
            "--backoff" => BACKOFF_SPINS.store(
                value().parse().expect("--backoff SPINS"),
                std::sync::atomic::Ordering::Relaxed,
            ),
            "--only" => {
                let group = value();
                options.groups = match group.as_str() {
                    "ring" => vec!["ring"],
                    "ring-hosted" => vec!["ring-hosted"],
                    other => panic!("--only ring|ring-hosted, not {other}"),
                };
            }
            "--sizes" => {
                options.sizes = value()
                    .split(',')
                    .map(|s| s.parse().expect("--sizes 64,1024,..."))
                    .collect();
            }
            "--series" => {
                options.series = value().split(',').map(str::to_string).collect();
            }
            // `cargo bench` passes --bench; nothing else is expected.
            "--bench" => {}
            other => panic!(
                "unknown argument {other}; usage: ring-bench [--smoke] [--long] [--rounds N] [--only ring|ring-hosted] [--sizes 64,256,...] [--series NAME,...] [--backoff SPINS]"
            ),
        }
    }
    if let Some(rounds) = rounds {
        options.rounds = rounds;
    }
    options
}

fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores} cores, {model}")
}

/// (median, min, max)
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    (median, sorted[0], sorted[n - 1])
}

fn size_label(size: usize) -> String {
    if size >= 1024 {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

const BASELINE: &str = "cross-core copy";

/// One series' samples at one size, one per round.
#[derive(Default, Clone)]
struct Samples {
    mpkts: Vec<f64>,
    gbs: Vec<f64>,
    signals_per_packet: Vec<f64>,
}

/// Parse the command line, run the interleaved rounds over
/// [cross-core copy, memcpy, ours, ours publishing per 16, extra...],
/// print the tables and write the JSON records.
pub fn main_with(extra: Vec<Box<dyn Contender>>) {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let copy = CrossCoreCopy;
    let ours = Ours;
    let ours_batched = OursPublishingEvery(16);
    let mut contenders: Vec<&dyn Contender> = vec![&copy, &ours, &ours_batched];
    contenders.extend(extra.iter().map(|c| c.as_ref()));
    if args.first().map(String::as_str) == Some("--reader-child") {
        reader_child(&contenders, &args[1..]);
        return;
    }
    let options = parse_options(&args);
    let memory = DoubleMappedRingMemory::new(DATA_LEN).expect("double-mapped ring memory");
    // Fault every page in before any timing.
    memory
        .write_data(0, &vec![0u8; DATA_LEN])
        .expect("data area");
    println!("# ring benchmark");
    println!();
    println!(
        "machine: {}; data area {} KiB double-mapped; writer on core {WRITER_CORE}, reader on core {READER_CORE}, both spinning; {} interleaved rounds, up to {} MiB or {} packets per run; medians [min-max]",
        machine(),
        DATA_LEN >> 10,
        options.rounds,
        options.bytes_per_run >> 20,
        options.max_packets
    );
    for &group in &options.groups {
        let hosted = group == "ring-hosted";
        let mut series: Vec<Option<&dyn Contender>> = contenders.iter().map(|&c| Some(c)).collect();
        if !hosted {
            // memcpy (None) right after the baseline.
            series.insert(1, None);
        }
        let name = |s: &Option<&dyn Contender>| s.map_or("memcpy", |c| c.name());
        if !options.series.is_empty() {
            series.retain(|s| options.series.iter().any(|wanted| wanted == name(s)));
        }
        let mut samples = vec![vec![Samples::default(); options.sizes.len()]; series.len()];
        for _round in 0..options.rounds {
            for (size_index, &size) in options.sizes.iter().enumerate() {
                let packets = (options.bytes_per_run / size as u64).clamp(64, options.max_packets);
                for (series_index, contender) in series.iter().enumerate() {
                    let measured = match contender {
                        None => run_memcpy(size, packets),
                        Some(c) if hosted => run_processes(*c, &memory, size, packets),
                        Some(c) => run_threads(*c, &memory, size, packets),
                    };
                    let s = &mut samples[series_index][size_index];
                    let per_second = measured.packets as f64 / measured.seconds;
                    s.mpkts.push(per_second / 1e6);
                    s.gbs.push(per_second * size as f64 / 1e9);
                    s.signals_per_packet
                        .push(measured.signals as f64 / measured.packets as f64);
                }
            }
        }
        println!();
        println!(
            "## {group}{}",
            if hosted {
                ": the reader in a second process"
            } else {
                ": writer and reader threads of one process"
            }
        );
        println!();
        println!("| size | series | Mpkt/s | GB/s | / {BASELINE} | writer signals/packet |");
        println!("|---|---|---|---|---|---|");
        for (size_index, &size) in options.sizes.iter().enumerate() {
            let baseline = series
                .iter()
                .position(|s| name(s) == BASELINE)
                .map(|i| spread(&samples[i][size_index].gbs).0);
            for (series_index, s) in series.iter().enumerate() {
                let sample = &samples[series_index][size_index];
                let (p, p0, p1) = spread(&sample.mpkts);
                let (g, g0, g1) = spread(&sample.gbs);
                let ratio = baseline.map_or(String::new(), |b| format!("{:.2}", g / b));
                let signals = if matches!(s, Some(c) if c.name() != BASELINE) {
                    let (q, q0, q1) = spread(&sample.signals_per_packet);
                    format!("{q:.4} [{q0:.4}-{q1:.4}]")
                } else {
                    String::new()
                };
                println!(
                    "| {} | {} | {p:.2} [{p0:.2}-{p1:.2}] | {g:.2} [{g0:.2}-{g1:.2}] | {ratio} | {signals} |",
                    size_label(size),
                    name(s)
                );
                record(group, name(s), size, "throughput", "Mpkt/s", &sample.mpkts).emit();
                record(group, name(s), size, "bandwidth", "GB/s", &sample.gbs).emit();
                if matches!(s, Some(c) if c.name() != BASELINE) {
                    Record::new(
                        group,
                        name(s),
                        "writer signals per packet",
                        "signals/packet",
                        false,
                    )
                    .x(size as f64, "packet size (B)")
                    .samples(&sample.signals_per_packet)
                    .emit();
                }
            }
        }
    }
    println!();
    println!("{}", contenders::CROSS_CORE_COPY_NOTE);
}

/// A rate record (higher is better) of `series` at `size`, against the
/// cross-core copy.
fn record(
    group: &str,
    series: &str,
    size: usize,
    metric: &str,
    unit: &str,
    samples: &[f64],
) -> Record {
    let record = Record::new(group, series, metric, unit, true)
        .x(size as f64, "packet size (B)")
        .samples(samples);
    if series == BASELINE {
        // The report puts the series' name before its note.
        record.note(contenders::CROSS_CORE_COPY_NOTE.trim_start_matches("cross-core copy: "))
    } else if series == "memcpy" {
        record
            .baseline(BASELINE)
            .note("one core copying packet-sized pieces of a warm 256 KiB buffer")
    } else {
        record.baseline(BASELINE)
    }
}
