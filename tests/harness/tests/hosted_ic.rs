//! The integration-component drivers and their client in the whole VMBus
//! system (`tests/systems/vmbus.toml`), hosted, against the simulated host
//! process driven through its operator commands: each driver negotiates,
//! heartbeats come back, a host time sample reaches the client, host KVP
//! pairs reach the client and the client's pair reaches the host, and a
//! host shutdown request powers the system off cleanly.

use ipc_harness::{Harness, WAIT};
use std::time::{Duration, Instant};

const SYSTEM: &str = "tests/systems/vmbus.toml";

/// Ask the host until its answer contains `needle` (the guest answers
/// asynchronously; the host's view is polled, bounded by [`WAIT`]).
fn host_until(harness: &Harness, command: &str, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = harness.host(command);
        if answer.contains(needle) {
            return answer;
        }
        if Instant::now() > deadline {
            harness.fail(&format!(
                "host {command:?} never showed {needle:?}: {answer}"
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn integration_components_serve_the_host_and_the_client_and_shut_down() {
    let harness = Harness::builder(SYSTEM)
        .start()
        .expect("the VMBus system starts hosted");
    for line in [
        "[heartbeat] negotiated framework 3.0, message 3.0",
        "[shutdown] negotiated framework 3.0, message 3.2",
        "[timesync] negotiated framework 3.0, message 4.0",
        "[kvp] negotiated framework 3.0, message 5.0",
        "[heartbeat] heartbeat 1 answered",
        "[client] time not synced yet",
    ] {
        harness.expect_output(line, 0);
    }

    // Time: a host sync reaches timesync, which ticks the client.
    let from = harness.system().output().len();
    assert_eq!(harness.host("time"), "true");
    let from = harness.expect_output("[timesync] time sync 1: host time 2", from);
    harness.expect_output("[client] time 2", from);

    // KVP, host to client: the next tick lists the host's pair.
    assert_eq!(harness.host("kvp-set 0 VirtualMachineName vm-one"), "true");
    let from = harness.expect_output("[kvp] host set pool 0 \"VirtualMachineName\"", 0);
    assert_eq!(harness.host("time"), "true");
    harness.expect_output("[client] kvp from host: VirtualMachineName = vm-one", from);

    // KVP, client to host: the client's pair in the guest pool.
    assert_eq!(harness.host("kvp-get 1 GuestClient"), "true");
    host_until(&harness, "kvp-responses", "value: \"ready\"");

    // Shutdown: the host's request reaches the client, which unloads the
    // bus; vmbus powers off with code 0.
    assert_eq!(harness.host("shutdown"), "true");
    let from = harness.expect_output("[shutdown] host requests PowerOff", 0);
    harness.expect_output("[client] host asks for PowerOff", from);
    assert_eq!(harness.system().wait_for_power_off(WAIT), Some(0));
    assert!(
        harness.system().faults().is_empty(),
        "{:?}",
        harness.system().faults()
    );
}
