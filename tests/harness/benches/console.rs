//! The console benchmark, hosted (`cargo bench -p ipc-harness --bench
//! console`; `-- --smoke` for one short round, as `cargo xtask test` runs
//! it through `cargo xtask bench --smoke`). Not a timed test: it prints
//! numbers and, when `VMBUS_BENCH_JSON` names a file, appends its records
//! (group `console-hosted`) to it.
//!
//! The system is system.toml as it ships, the simulated host offering the
//! ICs and the three console devices. Everything is timed on this
//! process's clock through hvsim's operator commands, so each time
//! includes an operator round trip or two; the round trip alone is
//! measured beside it (series `operator round trip`) as the floor.
//!
//! - Keystroke to screen: a key typed at the host (`key`, alternately `a`
//!   and Backspace, each make then break) to the first damage the host
//!   sees on the prompt row (`screen-damage`: the terminal drew the echo
//!   and the video driver sent the dirt).
//! - Updates per second, full-screen redraw: the host turns dirt off and
//!   on again (`video-fault updates-off` / `updates-on`, a feature change
//!   as Hyper-V sends it); the driver gives the terminal a new mode
//!   generation and the terminal redraws everything; timed to the host's
//!   full-screen damage. One-line change: the keystrokes above.
//! - Dirt bytes per update, from the host's counters (`video-report`).
//! - Baseline, interleaved with the rounds: one core copying the same
//!   bytes (3 MiB for a full screen, the dirt bytes for a line), the cost
//!   of the pixels alone.

#[path = "../tests/vmbus_common/mod.rs"]
mod vmbus_common;

use bench_record::Record;
use ipc_harness::Harness;
use std::time::{Duration, Instant};

const DEVICES: &str = "heartbeat,shutdown,timesync,kvp,keyboard,mouse,video";
const PROMPT_TOP: u32 = 41 * 18;
const WAIT: Duration = Duration::from_secs(10);

struct Settings {
    rounds: usize,
    keys: usize,
    redraws: usize,
}

impl Settings {
    fn parse() -> Settings {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let smoke = args.iter().any(|a| a == "--smoke");
        let number = |name: &str| bench_record::arg::<usize>(&args, name);
        Settings {
            rounds: number("--rounds").unwrap_or(if smoke { 1 } else { 5 }),
            keys: number("--keys").unwrap_or(if smoke { 10 } else { 100 }),
            redraws: number("--redraws").unwrap_or(if smoke { 2 } else { 10 }),
        }
    }
}

/// hvsim's damage answer `Some((x, y, w, h))`.
fn damage(answer: &str) -> Option<(u32, u32, u32, u32)> {
    let inner = answer.strip_prefix("Some((")?.strip_suffix("))")?;
    let v: Vec<u32> = inner
        .split(", ")
        .map(|n| n.parse().ok())
        .collect::<Option<_>>()?;
    (v.len() == 4).then(|| (v[0], v[1], v[2], v[3]))
}

/// Take damage until `done` holds for one, or panic after WAIT.
fn until_damage(harness: &Harness, done: impl Fn((u32, u32, u32, u32)) -> bool) {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    loop {
        if let Some(rect) = damage(&harness.host("screen-damage")) {
            if done(rect) {
                return;
            }
            seen.push(rect);
        }
        assert!(
            Instant::now() < deadline,
            "the host saw no such damage, only {seen:?}; {}",
            harness.host("video-report")
        );
    }
}

fn drain(harness: &Harness) {
    std::thread::sleep(Duration::from_millis(20));
    while harness.host("screen-damage") != "None" {}
}

/// (dirt messages, dirt bytes) from `video-report`.
fn dirt_counters(harness: &Harness) -> (u64, u64) {
    let report = harness.host("video-report");
    let field = |name: &str| -> u64 {
        let at = report.find(name).expect("video-report counters") + name.len();
        report[at..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .expect("a number")
    };
    (field("dirt_messages: "), field("dirt_bytes: "))
}

fn median_min_max(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

/// Copy `bytes` bytes `times` times on one core: updates per second.
fn copy_rate(bytes: usize, times: usize) -> f64 {
    let source = vec![0x5au8; bytes];
    let mut target = vec![0u8; bytes];
    let start = Instant::now();
    for i in 0..times {
        target.copy_from_slice(&source);
        std::hint::black_box(&mut target);
        target[i % bytes] ^= 1;
    }
    times as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let settings = Settings::parse();
    let mut builder = Harness::builder("system.toml").host_args(&["--devices", DEVICES]);
    if bench_record::optimised_builds() {
        builder = builder.release();
    }
    let harness = builder.start().expect("system.toml starts");
    vmbus_common::wait_all_open(&harness, 7);
    harness.expect_output("[terminal] terminal: ", 0);
    // The first full picture.
    let deadline = Instant::now() + WAIT;
    while !harness.host("screenshot /dev/null").contains("1024x768") {
        assert!(Instant::now() < deadline, "no picture");
        std::thread::sleep(Duration::from_millis(20));
    }
    drain(&harness);

    let mut key_latency = Vec::new();
    let mut floor = Vec::new();
    let (mut full_rate, mut line_rate) = (Vec::new(), Vec::new());
    let (mut full_copy, mut line_copy) = (Vec::new(), Vec::new());
    let (mut full_bytes, mut line_bytes) = (Vec::new(), Vec::new());
    for _round in 0..settings.rounds {
        // Full-screen redraws.
        full_copy.push(copy_rate(1024 * 768 * 4, 200));
        let (messages, bytes) = dirt_counters(&harness);
        let mut spent = Duration::ZERO;
        for _ in 0..settings.redraws {
            harness.host("video-fault updates-off");
            drain(&harness);
            let start = Instant::now();
            harness.host("video-fault updates-on");
            until_damage(&harness, |(_, _, w, h)| w == 1024 && h == 768);
            spent += start.elapsed();
        }
        full_rate.push(settings.redraws as f64 / spent.as_secs_f64());
        let (messages_after, bytes_after) = dirt_counters(&harness);
        full_bytes.push((bytes_after - bytes) as f64 / (messages_after - messages).max(1) as f64);
        drain(&harness);

        // One-line changes: keystrokes echoed on the prompt row.
        let (messages, bytes) = dirt_counters(&harness);
        let mut spent = Duration::ZERO;
        for i in 0..settings.keys {
            let code = if i % 2 == 0 { 0x1e } else { 0x0e };
            let start = Instant::now();
            assert_eq!(harness.host(&format!("key {code:#x}")), "true");
            until_damage(&harness, |(_, y, _, h)| y + h > PROMPT_TOP);
            let took = start.elapsed();
            spent += took;
            key_latency.push(took.as_secs_f64() * 1e6);
            assert_eq!(harness.host(&format!("key {code:#x} up")), "true");
            drain(&harness);
        }
        line_rate.push(settings.keys as f64 / spent.as_secs_f64());
        let (messages_after, bytes_after) = dirt_counters(&harness);
        let per_line = (bytes_after - bytes) as f64 / (messages_after - messages).max(1) as f64;
        line_bytes.push(per_line);
        line_copy.push(copy_rate((per_line as usize).max(1), 20_000));

        // The floor: an operator round trip with nothing to take.
        for _ in 0..settings.keys {
            let start = Instant::now();
            harness.host("screen-damage");
            floor.push(start.elapsed().as_secs_f64() * 1e6);
        }
    }

    let show = |name: &str, unit: &str, values: &[f64]| {
        let (median, min, max) = median_min_max(values);
        println!("{name:<48} {median:>12.1} {unit}  [{min:.1} - {max:.1}]");
    };
    println!(
        "console, hosted: {} rounds, {} keys and {} full redraws per round",
        settings.rounds, settings.keys, settings.redraws
    );
    show("keystroke to screen (host damage)", "us", &key_latency);
    show("operator round trip (floor)", "us", &floor);
    show("full-screen redraw, updates/s", "/s", &full_rate);
    show(
        "full-screen copy on one core (baseline), /s",
        "/s",
        &full_copy,
    );
    show("full-screen dirt bytes per update", "B", &full_bytes);
    show("one-line change, updates/s", "/s", &line_rate);
    show("one-line copy on one core (baseline), /s", "/s", &line_copy);
    show("one-line dirt bytes per update", "B", &line_bytes);

    Record::new(
        "console-hosted",
        "isolated stack",
        "keystroke to screen",
        "us",
        false,
    )
    .distribution(&key_latency)
    .note("host key to the host's damage on the prompt row, hosted")
    .emit();
    Record::new(
        "console-hosted",
        "operator round trip",
        "keystroke to screen",
        "us",
        false,
    )
    .distribution(&floor)
    .note("the measurement's floor: one operator round trip")
    .emit();
    for (x, label, rate, copy, bytes) in [
        (0.0, "full screen", &full_rate, &full_copy, &full_bytes),
        (1.0, "one line", &line_rate, &line_copy, &line_bytes),
    ] {
        let x_label = "update (0 full screen, 1 one line)";
        Record::new(
            "console-hosted",
            "isolated stack",
            "updates per second",
            "1/s",
            true,
        )
        .x(x, x_label)
        .samples(rate)
        .baseline("copy on one core")
        .note(label)
        .emit();
        Record::new(
            "console-hosted",
            "copy on one core",
            "updates per second",
            "1/s",
            true,
        )
        .x(x, x_label)
        .samples(copy)
        .note(label)
        .emit();
        Record::new(
            "console-hosted",
            "isolated stack",
            "dirt bytes per update",
            "B",
            false,
        )
        .x(x, x_label)
        .samples(bytes)
        .note(label)
        .emit();
    }
}
