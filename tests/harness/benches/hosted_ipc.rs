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

use component_api::{Env, MAX_MESSAGE};
use hostedtest_echo::{PRODUCE_COUNT, PRODUCE_SIZE, QUEUE_SLOT};
use ipc_harness::{Double, Event, Harness, WAIT};
use spsc_queue::Consumer;
use std::time::Instant;

const ROUNDS: usize = 7;
const ROUND_TRIPS: usize = 3000;
const SIZES: [usize; 4] = [64, 512, 1024, 4096];
/// Bytes per queue run (at least this many messages' worth).
const QUEUE_BYTES: usize = 64 << 20;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

/// Median and p99 of round trips, in microseconds.
fn summarise(mut samples: Vec<f64>) -> (f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

fn notification_round_trips(driver: &mut Double) -> Vec<f64> {
    let ping = driver.channel("ping");
    let endpoint = driver.env();
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for _ in 0..ROUND_TRIPS {
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

fn call_round_trips(driver: &mut Double) -> Vec<f64> {
    let echo = driver.channel("echo");
    let endpoint = driver.env();
    let mut reply = [0u8; MAX_MESSAGE];
    let mut samples = Vec::with_capacity(ROUND_TRIPS);
    for i in 0..ROUND_TRIPS as u64 {
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
fn queue_throughput(driver: &mut Double, size: usize) -> (f64, f64) {
    let count = (QUEUE_BYTES / size).max(10_000) as u32;
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
    let harness = Harness::builder("tests/systems/hosted_ipc.toml")
        .double("ht_driver")
        .release()
        .start()
        .expect("the benchmark system starts");
    let mut driver = harness.double("ht_driver");
    harness.expect_output("echo started", 0);

    // Warm up every path once.
    notification_round_trips(&mut driver);
    call_round_trips(&mut driver);
    queue_throughput(&mut driver, 1024);

    let mut notify_median = Vec::new();
    let mut notify_p99 = Vec::new();
    let mut call_median = Vec::new();
    let mut call_p99 = Vec::new();
    let mut queue_rates: Vec<(Vec<f64>, Vec<f64>)> =
        SIZES.iter().map(|_| Default::default()).collect();
    for round in 0..ROUNDS {
        // Alternate the order so neither path always runs first.
        let (median, p99) = if round % 2 == 0 {
            let n = summarise(notification_round_trips(&mut driver));
            let c = summarise(call_round_trips(&mut driver));
            call_median.push(c.0);
            call_p99.push(c.1);
            n
        } else {
            let c = summarise(call_round_trips(&mut driver));
            call_median.push(c.0);
            call_p99.push(c.1);
            summarise(notification_round_trips(&mut driver))
        };
        notify_median.push(median);
        notify_p99.push(p99);
        for (i, size) in SIZES.iter().enumerate() {
            let (bytes, messages) = queue_throughput(&mut driver, *size);
            queue_rates[i].0.push(bytes);
            queue_rates[i].1.push(messages);
        }
    }

    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    println!(
        "hosted IPC between two processes: {ROUNDS} interleaved rounds, {ROUND_TRIPS} round trips each, {cpus} CPU(s)"
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
