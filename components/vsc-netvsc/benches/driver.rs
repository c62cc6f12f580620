//! The driver-alone benchmark (`cargo xtask bench-net --driver [--smoke]
//! [--rounds N] [--frames N]`): the initiator with real `vmbus-channel`
//! rings against hvsim's NIC host in one process (tests/rig), the host's
//! `MemoryNet` generating frames for the guest (receive) and sinking what
//! it sends (transmit). Frames per second at 64 bytes and throughput at
//! 1500 bytes, both directions, each against a memcpy of the same bytes
//! measured interleaved in the same run (A B, then B A), medians with the
//! min-max over the rounds; interrupts (host -> guest) and signals (guest
//! -> host) per frame. Everything runs on one thread: the host's work (its
//! copies into and out of guest memory, RSS hashing) is in the numbers.
//!
//! With `VMBUS_BENCH_JSON` set it appends its records (group `net`) for
//! `cargo xtask bench`.

#[path = "../tests/rig/mod.rs"]
mod rig;

use bench_record::Record;
use hvsim::channel::network::NetConfig;
use hvsim::net::GuestFrames;
use rig::{config, frame, Rig};
use std::hint::black_box;
use std::time::Instant;
use vsc_netvsc::initiator::{Config, TxRefused};

struct Args {
    rounds: usize,
    frames: u64,
}

fn args() -> Args {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| bench_record::arg::<u64>(&argv, name);
    let smoke = argv.iter().any(|a| a == "--smoke");
    Args {
        rounds: value("--rounds").unwrap_or(if smoke { 1 } else { 7 }) as usize,
        frames: value("--frames").unwrap_or(if smoke { 2_000 } else { 100_000 }),
    }
}

/// One measured run: frames, bytes, seconds, interrupts, signals.
#[derive(Clone, Copy, Default)]
struct Sample {
    frames: u64,
    bytes: u64,
    seconds: f64,
    interrupts: u64,
    signals: u64,
}

impl Sample {
    fn frames_per_second(&self) -> f64 {
        self.frames as f64 / self.seconds
    }
    fn megabytes_per_second(&self) -> f64 {
        self.bytes as f64 / self.seconds / 1e6
    }
}

fn single_channel() -> Config {
    Config {
        sub_channels: 0,
        ..config()
    }
}

fn started(frames: GuestFrames) -> Rig {
    let mut rig = Rig::with_frames(NetConfig::default(), single_channel(), frames);
    rig.mem.keep = false;
    rig.run();
    assert!(rig.initiator.is_running(), "the driver did not start");
    rig
}

/// Host -> guest: `count` frames of `len` bytes from the host's generator
/// delivered into the client's buffers.
fn receive(count: u64, len: usize) -> Sample {
    let mut rig = started(GuestFrames::Discard);
    let mac = rig.device().unwrap().mac;
    let before = (rig.host_interrupts, rig.guest_signals);
    assert!(rig.net.generate(&frame(len, mac, 7), count));
    let start = Instant::now();
    for _ in 0..count * 10 + 1000 {
        rig.run();
        if rig.mem.delivered_count >= count {
            break;
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    assert_eq!(rig.mem.delivered_count, count, "every frame delivered");
    Sample {
        frames: count,
        bytes: rig.mem.delivered_bytes,
        seconds,
        interrupts: rig.host_interrupts - before.0,
        signals: rig.guest_signals - before.1,
    }
}

/// Guest -> host: `count` frames of `len` bytes from the client's buffers
/// (copied into sections up to the copy break, GPA-direct above) to the
/// host's sink.
fn transmit(count: u64, len: usize) -> Sample {
    let mut rig = started(GuestFrames::Discard);
    let peer = [0x02, 0, 0, 0, 0, 0x99];
    let tokens = rig::FRAMES as u32;
    for token in 0..tokens {
        rig.put_frame(token, &frame(len, peer, token));
    }
    let before = (rig.host_interrupts, rig.guest_signals);
    let mut free: Vec<u32> = (0..tokens).collect();
    let mut sent = 0u64;
    let mut completed = 0usize;
    let start = Instant::now();
    while (rig.tx_done.len() as u64) < count {
        while sent < count {
            let Some(token) = free.pop() else { break };
            match rig.transmit(token, false) {
                Ok(()) => sent += 1,
                Err(TxRefused::Busy) => {
                    free.push(token);
                    break;
                }
                Err(error) => panic!("transmit refused: {error:?}"),
            }
        }
        rig.run();
        // Completed frames' buffers are the client's again.
        for &(token, ok) in &rig.tx_done[completed..] {
            assert!(ok, "frame {token} not sent");
            free.push(token);
        }
        completed = rig.tx_done.len();
    }
    let seconds = start.elapsed().as_secs_f64();
    let counters = rig.net.counters();
    assert_eq!(counters.tx_frames, count, "every frame reached the host");
    Sample {
        frames: count,
        bytes: counters.tx_bytes,
        seconds,
        interrupts: rig.host_interrupts - before.0,
        signals: rig.guest_signals - before.1,
    }
}

/// The same bytes moved by memcpy: `count` frames of `len` bytes copied
/// from one buffer to another (through a ring of 256 buffers, as the
/// client's are).
fn memcpy(count: u64, len: usize) -> Sample {
    let source: Vec<u8> = (0..len * 256).map(|i| i as u8).collect();
    let mut target = vec![0u8; len * 256];
    let start = Instant::now();
    for index in 0..count as usize {
        let at = (index % 256) * len;
        target[at..at + len].copy_from_slice(black_box(&source[at..at + len]));
        black_box(&mut target);
    }
    let seconds = start.elapsed().as_secs_f64();
    Sample {
        frames: count,
        bytes: count * len as u64,
        seconds,
        ..Sample::default()
    }
}

fn median(values: &mut [f64]) -> (f64, f64, f64) {
    values.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

fn main() {
    let args = args();
    println!(
        "netvsc driver alone against hvsim's NIC host, one thread, {} rounds of {} frames (stack / memcpy interleaved)",
        args.rounds, args.frames
    );
    println!("| test | driver (with the host) | memcpy | driver / memcpy | interrupts / frame | signals / frame |");
    println!("|---|---|---|---|---|---|");
    let tests: [(&str, usize, bool); 4] = [
        ("receive, 64 B", 64, true),
        ("transmit, 64 B", 64, false),
        ("receive, 1500 B", 1514, true),
        ("transmit, 1500 B", 1514, false),
    ];
    for (name, len, is_receive) in tests {
        let mut stack = Vec::new();
        let mut copy = Vec::new();
        for round in 0..args.rounds {
            let run = |_: ()| {
                if is_receive {
                    receive(args.frames, len)
                } else {
                    transmit(args.frames, len)
                }
            };
            if round % 2 == 0 {
                stack.push(run(()));
                copy.push(memcpy(args.frames, len));
            } else {
                copy.push(memcpy(args.frames, len));
                stack.push(run(()));
            }
        }
        let small = len < 100;
        let metric = |s: &Sample| {
            if small {
                s.frames_per_second()
            } else {
                s.megabytes_per_second()
            }
        };
        let unit = if small { "frames/s" } else { "MB/s" };
        const DRIVER: &str = "netvsc driver with hvsim's NIC host (one thread)";
        let metric_name = format!("driver alone, {name}");
        Record::new("net", DRIVER, &metric_name, unit, true)
            .samples(&stack.iter().map(metric).collect::<Vec<_>>())
            .baseline("memcpy")
            .note("the host's copies and RSS hashing are in the numbers")
            .emit();
        Record::new("net", "memcpy", &metric_name, unit, true)
            .samples(&copy.iter().map(metric).collect::<Vec<_>>())
            .emit();
        let per_frame = |count: fn(&Sample) -> u64| {
            stack
                .iter()
                .map(|s| count(s) as f64 / s.frames as f64)
                .collect::<Vec<_>>()
        };
        Record::new(
            "net",
            name,
            "driver alone: host interrupts per frame",
            "per frame",
            false,
        )
        .samples(&per_frame(|s| s.interrupts))
        .emit();
        Record::new(
            "net",
            name,
            "driver alone: guest signals per frame",
            "per frame",
            false,
        )
        .samples(&per_frame(|s| s.signals))
        .emit();
        let (s, s_min, s_max) = median(&mut stack.iter().map(metric).collect::<Vec<_>>());
        let (c, c_min, c_max) = median(&mut copy.iter().map(metric).collect::<Vec<_>>());
        let (r, r_min, r_max) = median(
            &mut stack
                .iter()
                .zip(&copy)
                .map(|(a, b)| metric(a) / metric(b))
                .collect::<Vec<_>>(),
        );
        let frames: u64 = stack.iter().map(|s| s.frames).sum();
        let interrupts: u64 = stack.iter().map(|s| s.interrupts).sum();
        let signals: u64 = stack.iter().map(|s| s.signals).sum();
        println!(
            "| {name} | {s:.0} [{s_min:.0}-{s_max:.0}] {unit} | {c:.0} [{c_min:.0}-{c_max:.0}] {unit} | {r:.4} [{r_min:.4}-{r_max:.4}] | {:.3} | {:.3} |",
            interrupts as f64 / frames as f64,
            signals as f64 / frames as f64,
        );
    }
}
