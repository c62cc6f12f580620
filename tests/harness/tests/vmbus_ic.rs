//! Each integration component's protocol end to end, hosted: the
//! simulated host process on one side, the driver and its client on the
//! other, everything observed from the host's view (`hvsim --events`) and
//! the client's (the real `client`, or the test playing it).
#![forbid(unsafe_code)]

mod vmbus_common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vmbus_common::*;
use vmbus_ipc::{kvp, timesync};

#[test]
fn heartbeat_the_host_sees_each_sequence_answered_plus_one() {
    let harness = start(&["--heartbeat-interval-ms", "100"], &[]);
    wait_all_open(&harness, 4);
    // The host records a heartbeat only when the answer is its sequence + 1.
    let mut from = 0;
    let mut sequences = Vec::new();
    while sequences.len() < 5 {
        let (next, line) = harness.expect_line("hvsim event: heartbeat sequence ", from);
        from = next;
        let sequence: u64 = line
            .split("sequence ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| harness.fail(&format!("no sequence in {line:?}")));
        sequences.push(sequence);
    }
    assert!(
        sequences.windows(2).all(|pair| pair[1] > pair[0]),
        "{sequences:?}"
    );
    let last = harness.host("heartbeat");
    assert!(last.starts_with("Some(Heartbeat { sequence: "), "{last}");
    harness.expect_output("[heartbeat] heartbeat 10 answered", 0);
}

#[test]
fn shutdown_a_host_request_reaches_the_client_and_the_system_powers_off_with_unload() {
    let harness = start(&[], &[]);
    wait_all_open(&harness, 4);
    wait_host_negotiated(&harness, "Shutdown", 0);
    assert_eq!(harness.host("shutdown"), "true");
    let from = harness.expect_output("[client] host asks for PowerOff", 0);
    harness.expect_output("hvsim event: shutdown answered status 0x0", 0);
    // vmbus closes every channel, unloads, then powers off with 0.
    for relid in 1..=4 {
        harness.expect_output(&format!("hvsim event: closed relid {relid} "), from);
    }
    harness.expect_output("hvsim event: unloaded", from);
    harness.expect_output("[vmbus] VMBus unloaded; powering off with code 0", from);
    assert_eq!(
        harness.system().wait_for_power_off(ipc_harness::WAIT),
        Some(0)
    );
    assert!(
        harness.system().faults().is_empty(),
        "{:?}",
        harness.system().faults()
    );
}

#[test]
fn time_sync_the_client_reads_a_time_consistent_with_the_hosts() {
    let harness = start(&["--time-interval-ms", "200"], &["client"]);
    let mut client = harness.double("client");
    wait_all_open(&harness, 4);
    // The driver ticks the client after each host sample.
    assert!(client.wait_notified("timesync_event", ipc_harness::WAIT));
    harness.expect_output("hvsim event: time sample 1 answered", 0);
    let timesync::Reply::Time {
        now_100ns_since_1601,
        samples,
        ..
    } = time_now(&mut client)
    else {
        harness.fail("the time service is not synced after a sample")
    };
    let host_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    let guest_now = Duration::from_nanos(
        (now_100ns_since_1601 - timesync::UNIX_EPOCH_100NS).saturating_mul(100),
    );
    let skew = host_now.abs_diff(guest_now);
    eprintln!("time service vs host clock: {skew:?} apart after {samples} sample(s)");
    assert!(samples >= 1);
    // The guest time is the host's sample advanced by guest time since:
    // within a fraction of a second of the host clock.
    assert!(skew < Duration::from_millis(500), "skew {skew:?}");
    // It keeps advancing between samples.
    assert!(client.wait_notified("timesync_event", ipc_harness::WAIT));
    let timesync::Reply::Time {
        now_100ns_since_1601: later,
        samples: later_samples,
        ..
    } = time_now(&mut client)
    else {
        harness.fail("the time service lost its sync")
    };
    assert!(later > now_100ns_since_1601 && later_samples > samples);
}

#[test]
fn kvp_the_host_pushes_a_pair_the_client_reads_and_reads_the_clients_pair() {
    let harness = start(&[], &["client"]);
    let mut client = harness.double("client");
    wait_all_open(&harness, 4);
    wait_host_negotiated(&harness, "Kvp", 0);
    // Host -> guest: the external pool, answered with status 0, readable
    // by the client.
    assert_eq!(
        host_kvp_set(&harness, kvp::POOL_EXTERNAL, "HostName", "hvsim-host"),
        0
    );
    let value = kvp_call(
        &mut client,
        kvp::Request::Get {
            pool: kvp::POOL_EXTERNAL,
            key: text("HostName"),
        },
    )
    .expect("the KVP service answers");
    assert_eq!(value, kvp::Reply::Value(text("hvsim-host")));
    // Guest -> host: the client writes the guest pool; the host reads it.
    let done = kvp_call(
        &mut client,
        kvp::Request::Set {
            pool: kvp::POOL_GUEST,
            key: text("GuestState"),
            value: text("testing"),
        },
    )
    .expect("the KVP service answers");
    assert_eq!(done, kvp::Reply::Done);
    assert_eq!(
        host_kvp_get(&harness, kvp::POOL_GUEST, "GuestState"),
        (0, "testing".to_string())
    );
    // The host may not write the guest pool (Hyper-V's rights).
    assert_ne!(
        host_kvp_set(&harness, kvp::POOL_GUEST, "GuestState", "x"),
        0
    );
    // A key nobody set: an error status, no value.
    assert_ne!(host_kvp_get(&harness, kvp::POOL_GUEST, "Missing").0, 0);
}

#[test]
fn kvp_with_the_real_client_both_ways() {
    let harness = start(&["--time-interval-ms", "200"], &[]);
    wait_all_open(&harness, 4);
    wait_host_negotiated(&harness, "Kvp", 0);
    // The client wrote its pair at start; the host reads it.
    harness.expect_output("[kvp] client set pool 1 \"GuestClient\"", 0);
    assert_eq!(
        host_kvp_get(&harness, kvp::POOL_GUEST, "GuestClient"),
        (0, "ready".to_string())
    );
    // The host's pair shows up in the client's report (printed each tick).
    let from = harness.system().output().len();
    assert_eq!(
        host_kvp_set(&harness, kvp::POOL_EXTERNAL, "Greeting", "hello"),
        0
    );
    harness.expect_output("[client] kvp from host: Greeting = hello", from);
    harness.expect_output("[client] time 20", from);
}
