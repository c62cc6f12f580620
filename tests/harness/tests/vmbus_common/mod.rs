//! Shared by the `vmbus_*` tests: start `system.toml` (the VMBus system) hosted
//! with the `hvsim` process reporting what the guest did (`--events`), and
//! read the host's event lines and the launcher's line timeline.
//!
//! Every wait ends on an output line (the launcher's condition variable)
//! or a channel event, within `ipc_harness::WAIT`.

#![allow(dead_code)]

use component_api::{call, CallError};
use ipc_harness::{Double, Harness};
use std::time::Duration;
use vmbus_ipc::{bus, kvp, timesync};

pub const SYSTEM: &str = "system.toml";

/// The four integration components the host offers by default, by relid.
pub const DRIVERS: [&str; 4] = ["heartbeat", "shutdown", "timesync", "kvp"];

/// A class no driver in the description claims (VSS, the volume shadow
/// copy IC): an offer of it must be logged and left alone.
pub const UNDRIVEN_CLASS: &str = "35fa2e29-ea23-4236-96ae-3a6ebacba440";

/// Start the VMBus system with the host reporting events; `host_args` are
/// more options for `hvsim` and `doubles` the components the test plays.
pub fn start(host_args: &[&str], doubles: &[&str]) -> Harness {
    let mut builder = Harness::builder(SYSTEM)
        .host_args(&["--events"])
        .host_args(host_args);
    for name in doubles {
        builder = builder.double(name);
    }
    builder.start().expect("the VMBus system starts")
}

/// Wait until vmbus reports `count` offered devices open; the line index
/// after it.
pub fn wait_all_open(harness: &Harness, count: usize) -> usize {
    harness.expect_output(&format!("[vmbus] all {count} offered devices open"), 0)
}

/// Wait until every named driver reported its negotiated IC versions to
/// vmbus (its service is then ready).
pub fn wait_negotiated(harness: &Harness, drivers: &[&str], from: usize) {
    for driver in drivers {
        harness.expect_output(&format!("[vmbus] {driver}: framework "), from);
    }
}

/// Wait until the host has seen the IC negotiation of `kind` (`Heartbeat`,
/// `Shutdown`, `TimeSync`, `Kvp`) at or after line `from`: the host sends
/// requests on a channel only after it.
pub fn wait_host_negotiated(harness: &Harness, kind: &str, from: usize) -> usize {
    harness.expect_output(&format!("hvsim event: negotiated {kind} relid "), from)
}

/// The host's timestamp (`at N us`) in an event line.
pub fn host_time(line: &str) -> Option<Duration> {
    let at = line.rfind(" at ")?;
    let rest = line[at + 4..].strip_suffix(" us")?;
    rest.trim().parse().ok().map(Duration::from_micros)
}

/// Host event lines containing `needle`, with the host's timestamps.
pub fn host_events(harness: &Harness, needle: &str) -> Vec<(Duration, String)> {
    harness
        .system()
        .output()
        .into_iter()
        .filter(|line| line.contains("hvsim event: ") && line.contains(needle))
        .filter_map(|line| host_time(&line).map(|t| (t, line)))
        .collect()
}

/// When (since the launch) the first line containing `needle` at or after
/// line `from` came, waiting for it; and the index after it.
pub fn line_time(harness: &Harness, needle: &str, from: usize) -> (Duration, usize) {
    let next = harness.expect_output(needle, from);
    let timeline = harness.system().output_timed();
    (timeline[next - 1].0, next)
}

/// The longest interval between consecutive instants (sorted).
pub fn longest_gap(times: &[Duration]) -> Duration {
    times
        .windows(2)
        .map(|pair| pair[1].saturating_sub(pair[0]))
        .max()
        .unwrap_or_default()
}

/// The relid the host serves an IC on (`None` if not open).
pub fn relid_of(harness: &Harness, driver: &str) -> Option<u32> {
    let answer = harness.host(&format!("relid {driver}"));
    answer
        .strip_prefix("Some(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|number| number.parse().ok())
}

/// The host pushes `key = value` into `pool`; waits for the guest's answer
/// and returns its status.
pub fn host_kvp_set(harness: &Harness, pool: u8, key: &str, value: &str) -> u32 {
    let from = harness.system().output().len();
    assert_eq!(
        harness.host(&format!("kvp-set {pool} {key} {value}")),
        "true"
    );
    kvp_answer(harness, &format!("key {key:?}"), from).0
}

/// The host asks the guest for `key` in `pool`; (status, value).
pub fn host_kvp_get(harness: &Harness, pool: u8, key: &str) -> (u32, String) {
    let from = harness.system().output().len();
    assert_eq!(harness.host(&format!("kvp-get {pool} {key}")), "true");
    kvp_answer(harness, &format!("key {key:?}"), from)
}

fn kvp_answer(harness: &Harness, key: &str, from: usize) -> (u32, String) {
    let mut at = from;
    loop {
        let (next, line) = harness.expect_line("hvsim event: kvp answer", at);
        at = next;
        if !line.contains(key) {
            continue;
        }
        let status = line
            .split(" status ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|hex| u32::from_str_radix(hex.trim_start_matches("0x"), 16).ok())
            .unwrap_or_else(|| harness.fail(&format!("no status in {line:?}")));
        let value = line
            .split(" value \"")
            .nth(1)
            .and_then(|rest| rest.rsplit_once("\" at "))
            .map(|(value, _)| value.to_string())
            .unwrap_or_default();
        return (status, value);
    }
}

/// One row of the status view, through `bus::Request::Device`.
pub fn device_row(client: &mut Double, index: u8) -> Result<bus::Reply, CallError> {
    let channel = client.channel("vmbus");
    call::<bus::Bus>(client.env(), channel, &bus::Request::Device { index })
}

/// Every row of the status view.
pub fn device_rows(client: &mut Double) -> Vec<bus::DeviceStatus> {
    let mut rows = Vec::new();
    for index in 0..=u8::MAX {
        match device_row(client, index).expect("vmbus answers Device") {
            bus::Reply::Device(row) => rows.push(row),
            bus::Reply::NoSuchDevice => break,
            other => panic!("Device {{ index: {index} }}: {other:?}"),
        }
    }
    rows
}

pub fn time_now(client: &mut Double) -> timesync::Reply {
    let channel = client.channel("timesync");
    call::<timesync::TimeSync>(client.env(), channel, &timesync::Request::Now)
        .expect("the time service answers")
}

pub fn kvp_call(client: &mut Double, request: kvp::Request) -> Result<kvp::Reply, CallError> {
    let channel = client.channel("kvp");
    call::<kvp::Kvp>(client.env(), channel, &request)
}

pub fn text<const N: usize>(text: &str) -> heapless::String<N> {
    heapless::String::try_from(text).expect("fits")
}

/// The heartbeat and time-sample period the recovery and restart tests
/// give the host.
#[allow(dead_code)]
pub const PERIOD: Duration = Duration::from_millis(500);

/// The whole system with the host sending heartbeats and time samples
/// every [`PERIOD`], once every channel is open and negotiated.
#[allow(dead_code)]
pub fn start_with_periods() -> Harness {
    let period = PERIOD.as_millis().to_string();
    let harness = start(
        &[
            "--heartbeat-interval-ms",
            &period,
            "--time-interval-ms",
            &period,
        ],
        &[],
    );
    wait_all_open(&harness, 4);
    for kind in ["Heartbeat", "Shutdown", "TimeSync", "Kvp"] {
        wait_host_negotiated(&harness, kind, 0);
    }
    harness
}

/// Wait for `count` more output lines containing `needle` after line
/// `from`; returns the line of the last.
#[allow(dead_code)]
pub fn wait_lines(harness: &Harness, needle: &str, count: usize, from: usize) -> usize {
    let mut at = from;
    for _ in 0..count {
        at = harness.expect_output(needle, at);
    }
    at
}
