//! Isolation and recovery, hosted: the simulated host sends malformed
//! packets on the KVP channel. Only the KVP driver rejects them (a bad
//! packet it can skip) or faults (a packet that breaks the ring); vmbus
//! closes the channel, tears its GPADL down, resets the rings, restarts
//! the driver and opens the channel again; KVP works again, with the pairs
//! acknowledged before the fault (kept in its `store` region). Heartbeat and
//! time sync keep running throughout: from the host's view no interval
//! between two answered heartbeats, or two answered time samples, is
//! longer than their period plus scheduling slack (a missed beat would
//! show as two periods).
//!
//! The isolation scenario itself (a skippable packet, then one that breaks
//! the ring, heartbeats and time samples within their period throughout)
//! is `tests/systems/kvp-fault.hvsim`, run hosted by `vmbus_scenarios.rs`
//! and in QEMU by `cargo xtask boot-test`; the tests here drive what a
//! scenario file does not express (operator commands one by one, kill -9,
//! repeated faults).
#![forbid(unsafe_code)]

mod vmbus_common;

use vmbus_common::*;

fn assert_only_kvp_faulted(harness: &ipc_harness::Harness) {
    for record in harness.system().faults() {
        assert_eq!(record.component, "kvp", "{record:?}");
    }
    for name in [
        "console",
        "synic",
        "vmbus",
        "heartbeat",
        "shutdown",
        "timesync",
        "client",
    ] {
        assert_eq!(harness.system().restarts(name), 0, "{name} restarted");
    }
}

#[test]
fn a_malformed_packet_the_kvp_driver_can_skip_is_rejected_and_kvp_keeps_working() {
    let harness = start_with_periods();
    let kvp = relid_of(&harness, "kvp").unwrap_or_else(|| harness.fail("kvp is not open"));
    // Packets whose descriptor still frames them (the driver can step over
    // them). A length shorter than the descriptor's data offset cannot be
    // skipped safely: that one resets the channel (next test's kind).
    for fault in ["unknown-type", "offset-too-small", "unknown-flags"] {
        let from = harness.system().output().len();
        assert_eq!(harness.host(&format!("malformed {kvp} {fault}")), "true");
        harness.expect_output("[kvp] rejected (", from);
        // The packet after it is served: the driver skipped only the bad one.
        assert_eq!(host_kvp_set(&harness, 0, "StillServing", fault), 0);
    }
    assert!(
        harness.system().faults().is_empty(),
        "{:?}",
        harness.system().faults()
    );
    assert_only_kvp_faulted(&harness);
    assert_eq!(harness.system().restarts("kvp"), 0);
}

#[test]
fn a_killed_kvp_driver_is_restarted_with_its_pairs_while_heartbeats_go_on() {
    let harness = start_with_periods();
    assert_eq!(host_kvp_set(&harness, 0, "BeforeKill", "1"), 0);
    let from = harness.system().output().len();
    harness.kill("kvp");
    // A crash from outside (SIGKILL) is a fault like any other: vmbus
    // recovers the channel and restarts the driver.
    harness.expect_fault("kvp", 1);
    harness.expect_restarts("kvp", 1);
    harness.expect_output("[vmbus] kvp faulted", from);
    wait_host_negotiated(&harness, "Kvp", from);
    // The pools outlived the process: restored from the `store` region,
    // read by the client and by the host without being pushed again.
    let (restored, line) = harness.expect_line("[kvp] store: ", from);
    assert!(line.contains(" pairs restored (generation "), "{line}");
    harness.expect_output("[client] kvp from host: BeforeKill = 1", restored);
    assert_eq!(
        host_kvp_get(&harness, 0, "BeforeKill"),
        (0, "1".to_string())
    );
    assert_eq!(host_kvp_set(&harness, 0, "AfterKill", "2"), 0);
    // Heartbeats go on, and nothing else restarted.
    let after = harness.system().output().len();
    wait_lines(&harness, "hvsim event: heartbeat sequence ", 3, after);
    assert_only_kvp_faulted(&harness);
    assert!(matches!(
        harness.system().faults()[0].fault,
        component_api::Fault::Crashed { signal: 9 }
    ));
}

#[test]
fn a_kvp_driver_that_keeps_faulting_is_held_while_the_others_run_on() {
    let harness = start_with_periods();
    // Three ways to break the ring; vmbus holds a driver stopped after 3
    // faults within 10 s.
    let faults = [
        "malformed {} length-beyond-ring",
        "malformed {} length-before-offset",
        "corrupt-index {} 3",
    ];
    for (round, command) in faults.iter().enumerate() {
        let round = round + 1;
        let kvp = relid_of(&harness, "kvp")
            .unwrap_or_else(|| harness.fail(&format!("kvp is not open before fault {round}")));
        let from = harness.system().output().len();
        assert_eq!(
            harness.host(&command.replace("{}", &kvp.to_string())),
            "true"
        );
        harness.expect_fault("kvp", round);
        if round < 3 {
            harness.expect_output(&format!("[vmbus] relid {kvp} (kvp) open again "), from);
            wait_host_negotiated(&harness, "Kvp", from);
        }
    }
    harness.expect_output("[vmbus] kvp held stopped: 3 faults within ", 0);
    assert_eq!(harness.system().restarts("kvp"), 2);
    // Heartbeats and time samples go on.
    let after = harness.system().output().len();
    wait_lines(&harness, "hvsim event: heartbeat sequence ", 2, after);
    wait_lines(&harness, "hvsim event: time sample ", 2, after);
    assert_only_kvp_faulted(&harness);
}
