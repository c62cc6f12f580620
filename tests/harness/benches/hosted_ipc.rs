//! Benchmark of the hosted runtime's IPC between two component processes
//! (`cargo bench -p ipc-harness`; not a timed test).
//!
//! The bench process plays `ht_driver`; `ht_echo` is a separate process
//! (release build). Measured, in interleaved rounds:
//! - notification round trip: notify `ping`, wait for the echo's `ping`;
//! - protected-call round trip: an 8-byte call echoed back;
//! - SPSC queue throughput in a shared region (`platform/api/spsc-queue`,
//!   with signal suppression), the echo producing, the bench consuming,
//!   for several message sizes.
//!
//! Each round gives a median and a 99th percentile (round trips) or a
//! rate (queue); the report is the median over rounds with the min-max.
//!
//! `-- --rounds N` (7), `-- --smoke` (one short round: it runs, its
//! numbers mean nothing). With `VMBUS_BENCH_JSON` set it appends its
//! records (group `ipc`; every round trip as a distribution, the queue
//! rates per round) for `cargo xtask bench`.

use bench_record::Record;
use component_api::{Env, MAX_MESSAGE};
use hostedtest_echo::{PRODUCE_COUNT, PRODUCE_SIZE, QUEUE_SLOT};
use ipc_harness::{Double, Event, Harness, WAIT};
use spsc_queue::Consumer;
use std::time::Instant;

const SIZES: [usize; 4] = [64, 512, 1024, 4096];

struct Settings {
    rounds: usize,
    round_trips: usize,
    /// Bytes per queue run (at least `min_messages` messages' worth).
    queue_bytes: usize,
    min_messages: usize,
}

impl Settings {
    fn parse() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let rounds = args
            .iter()
            .position(|a| a == "--rounds")
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok());
        if args.iter().any(|a| a == "--smoke") {
            return Settings {
                rounds: rounds.unwrap_or(1),
                round_trips: 200,
                queue_bytes: 1 << 20,
                min_messages: 2_000,
            };
        }
        Settings {
            rounds: rounds.unwrap_or(7).clamp(1, 100),
            round_trips: 3000,
            queue_bytes: 64 << 20,
            min_messages: 10_000,
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Median and p99 of round trips, in microseconds.
fn summarise(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn notification_round_trips(driver: &mut Double, count: usize) -> Vec<f64> {
    let ping = driver.channel("ping");
    let endpoint = driver.env();
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let start = Instant::now();
        endpoint.notify(ping);
        loop {
            match endpoint.wait_event(Some(WAIT)) {
                Ok(Some(Event::Notified(set))) if set.contains(ping) => break,
                Ok(Some(_)) => continue,
                other => panic!("no ping back: {other:?}"),
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    samples
}

fn call_round_trips(driver: &mut Double, count: usize) -> Vec<f64> {
    let echo = driver.channel("echo");
    let endpoint = driver.env();
    let mut reply = [0u8; MAX_MESSAGE];
    let mut samples = Vec::with_capacity(count);
    for i in 0..count as u64 {
        let start = Instant::now();
        let len = endpoint
            .ppcall(echo, &i.to_le_bytes(), &mut reply)
            .expect("echo call");
        samples.push(start.elapsed().as_secs_f64() * 1e6);
        assert_eq!(&reply[..len], &i.to_le_bytes());
    }
    samples
}

/// Stream `count` messages of `size` bytes from the echo; bytes/s, msgs/s
/// and notifications the consumer received.
fn queue_throughput(driver: &mut Double, settings: &Settings, size: usize) -> (f64, f64) {
    let count = (settings.queue_bytes / size).max(settings.min_messages) as u32;
    let queue_channel = driver.channel("queue");
    let shared = driver.region("shared");
    let queue = driver.region("queue");
    let mut consumer = Consumer::new(queue, QUEUE_SLOT).expect("queue");
    shared
        .write(PRODUCE_SIZE, &(size as u32).to_le_bytes())
        .unwrap();
    let endpoint = driver.env();
    let mut buffer = vec![0u8; QUEUE_SLOT];
    let start = Instant::now();
    shared.write(PRODUCE_COUNT, &count.to_le_bytes()).unwrap();
    endpoint.notify(queue_channel);
    let mut received = 0u32;
    while received < count {
        let mut popped = false;
        while let Some(len) = consumer.pop(&mut buffer).expect("valid queue") {
            // Each message carries how many were left when it was sent:
            // proof that it is the next one, not a stale slot.
            let remaining = u32::from_le_bytes(buffer[..4].try_into().expect("4 bytes"));
            assert_eq!((len, remaining), (size, count - received));
            received += 1;
            popped = true;
        }
        if popped && consumer.producer_needs_signal() {
            endpoint.notify(queue_channel);
        }
        if received < count && consumer.prepare_to_sleep().expect("valid queue") {
            loop {
                match endpoint.wait_event(Some(WAIT)) {
                    Ok(Some(Event::Notified(set))) if set.contains(queue_channel) => break,
                    Ok(Some(_)) => continue,
                    other => panic!("queue stalled at {received}/{count}: {other:?}"),
                }
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    (count as f64 * size as f64 / seconds, count as f64 / seconds)
}

/// Median over rounds, with min and max.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.total_cmp(b));
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    let settings = Settings::parse();
    let (rounds, round_trips) = (settings.rounds, settings.round_trips);
    let harness = Harness::builder("tests/systems/hosted_ipc.toml")
        .double("ht_driver")
        .release()
        .start()
        .expect("the benchmark system starts");
    let mut driver = harness.double("ht_driver");
    harness.expect_output("echo started", 0);

    // Warm up every path once.
    notification_round_trips(&mut driver, round_trips);
    call_round_trips(&mut driver, round_trips);
    queue_throughput(&mut driver, &settings, 1024);

    let mut notify_median = Vec::new();
    let mut notify_p99 = Vec::new();
    let mut call_median = Vec::new();
    let mut call_p99 = Vec::new();
    // Every round trip of every round (the report's distributions).
    let mut notify_all = Vec::new();
    let mut call_all = Vec::new();
    let mut queue_rates: Vec<(Vec<f64>, Vec<f64>)> =
        SIZES.iter().map(|_| Default::default()).collect();
    for round in 0..rounds {
        // Alternate the order so neither path always runs first.
        let (notify, call) = if round % 2 == 0 {
            let n = notification_round_trips(&mut driver, round_trips);
            (n, call_round_trips(&mut driver, round_trips))
        } else {
            let c = call_round_trips(&mut driver, round_trips);
            (notification_round_trips(&mut driver, round_trips), c)
        };
        notify_all.extend_from_slice(&notify);
        call_all.extend_from_slice(&call);
        let (median, p99) = summarise(notify);
        notify_median.push(median);
        notify_p99.push(p99);
        let (median, p99) = summarise(call);
        call_median.push(median);
        call_p99.push(p99);
        for (i, size) in SIZES.iter().enumerate() {
            let (bytes, messages) = queue_throughput(&mut driver, &settings, *size);
            queue_rates[i].0.push(bytes);
            queue_rates[i].1.push(messages);
        }
    }

    let round_trip = |series: &str, observations: &[f64]| {
        Record::new("ipc", series, "round trip between two processes", "us", false)
            .distribution(observations)
            .note("every round trip of every round; the bench process against the echo process (release build)")
            .emit();
    };
    round_trip("notification", &notify_all);
    round_trip("protected call (8 bytes)", &call_all);
    for (size, (bytes, messages)) in SIZES.iter().zip(&queue_rates) {
        let series = "SPSC queue (producer process -> consumer process)";
        let megabytes: Vec<f64> = bytes.iter().map(|b| b / 1e6).collect();
        Record::new("ipc", series, "SPSC queue throughput", "MB/s", true)
            .x(*size as f64, "message size (B)")
            .samples(&megabytes)
            .emit();
        let millions: Vec<f64> = messages.iter().map(|m| m / 1e6).collect();
        Record::new("ipc", series, "SPSC queue messages", "M msgs/s", true)
            .x(*size as f64, "message size (B)")
            .samples(&millions)
            .emit();
    }

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "hosted IPC between two processes: {rounds} interleaved rounds, {round_trips} round trips each, {cpus} CPU(s)"
    );
    println!("values: median over rounds [min-max over rounds]");
    let show = |name: &str, values: Vec<f64>| {
        let (median, low, high) = spread(values);
        println!("  {name:<38} {median:>9.1} us  [{low:.1}-{high:.1}]");
    };
    show("notification round trip, median", notify_median);
    show("notification round trip, p99", notify_p99);
    show("protected call round trip, median", call_median);
    show("protected call round trip, p99", call_p99);
    println!("SPSC queue in a shared region (producer process -> consumer process):");
    for (size, (bytes, messages)) in SIZES.iter().zip(queue_rates) {
        let (b, bl, bh) = spread(bytes);
        let (m, ml, mh) = spread(messages);
        println!(
            "  {size:>5} B messages: {:>8.1} MB/s [{:.1}-{:.1}]  {:>6.2} M msgs/s [{:.2}-{:.2}]",
            b / 1e6,
            bl / 1e6,
            bh / 1e6,
            m / 1e6,
            ml / 1e6,
            mh / 1e6
        );
    }
}
