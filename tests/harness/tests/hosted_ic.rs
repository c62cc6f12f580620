//! The integration-component drivers and their client in the whole VMBus
//! system (`system.toml`), hosted, against the simulated host
//! process driven through its operator commands: each driver negotiates,
//! heartbeats come back, a host time sample reaches the client, host KVP
//! pairs reach the client and the client's pair reaches the host, and a
//! host shutdown request powers the system off cleanly.

use ipc_harness::{Harness, WAIT};
use std::time::{Duration, Instant};

const SYSTEM: &str = "system.toml";

/// Ask the host until its answer contains `needle`: the guest answers
/// asynchronously, and a host command is refused ("false") until the host
/// has seen the guest's negotiation answer. Polled, bounded by [`WAIT`].
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
    host_until(&harness, "time", "true");
    let from = harness.expect_output("[timesync] time sync 1: host time 2", from);
    harness.expect_output("[client] time 2", from);

    // KVP, host to client: the next tick lists the host's pair.
    host_until(&harness, "kvp-set 0 VirtualMachineName vm-one", "true");
    let from = harness.expect_output("[kvp] host set pool 0 \"VirtualMachineName\"", 0);
    host_until(&harness, "time", "true");
    harness.expect_output("[client] kvp from host: VirtualMachineName = vm-one", from);

    // KVP, client to host: the client's pair in the guest pool.
    host_until(&harness, "kvp-get 1 GuestClient", "true");
    host_until(&harness, "kvp-responses", "value: \"ready\"");

    // Shutdown: the host's request reaches the client, which unloads the
    // bus; vmbus powers off with code 0.
    host_until(&harness, "shutdown", "true");
    let from = harness.expect_output("[shutdown] host requests PowerOff", 0);
    harness.expect_output("[client] host asks for PowerOff", from);
    assert_eq!(harness.system().wait_for_power_off(WAIT), Some(0));
    assert!(
        harness.system().faults().is_empty(),
        "{:?}",
        harness.system().faults()
    );
}

/// The sequence number of the last heartbeat the guest answered.
fn last_heartbeat(harness: &Harness) -> u64 {
    let answer = host_until(harness, "heartbeat", "sequence: ");
    answer
        .split("sequence: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|digits| digits.parse().ok())
        .unwrap_or_else(|| harness.fail(&format!("no sequence in {answer:?}")))
}

/// The time of the first output line at or after `from` containing `needle`.
fn line_time(harness: &Harness, needle: &str, from: usize) -> Duration {
    harness.expect_output(needle, from);
    harness
        .system()
        .output_timed()
        .iter()
        .skip(from)
        .find(|(_, line)| line.contains(needle))
        .map(|(at, _)| *at)
        .unwrap_or_else(|| harness.fail(&format!("no timed line {needle:?}")))
}

#[test]
fn a_killed_kvp_driver_is_restarted_and_serves_again_while_heartbeats_go_on() {
    let harness = Harness::builder(SYSTEM)
        .start()
        .expect("the VMBus system starts hosted");
    harness.expect_output("[kvp] negotiated framework 3.0, message 5.0", 0);
    host_until(&harness, "kvp-set 0 before restart", "true");
    harness.expect_output("[kvp] host set pool 0 \"before\"", 0);

    let beat_before_kill = last_heartbeat(&harness);
    let from = harness.system().output().len();
    let killed_at = harness
        .system()
        .output_timed()
        .last()
        .map(|(at, _)| *at)
        .unwrap_or_default();
    harness.kill("kvp");
    harness.expect_fault("kvp", 1);
    harness.expect_restarts("kvp", 1);
    // The restarted driver may print before vmbus's line does.
    let since_kill = from;
    let from = harness.expect_output("[vmbus] kvp restarted (restart 1)", from);
    let open_at = line_time(&harness, "[kvp] channel open", from);
    let serving_at = line_time(
        &harness,
        "[kvp] negotiated framework 3.0, message 5.0",
        from,
    );
    eprintln!(
        "kvp restart: channel open again {:?} and negotiated {:?} after the kill",
        open_at.saturating_sub(killed_at),
        serving_at.saturating_sub(killed_at)
    );

    // The new life restores the pools from its `store` region and serves
    // the host and the client again: the client reads the pair set before
    // the kill (not pushed again) and the one set after.
    let (_, restored) = harness.expect_line("[kvp] store: ", since_kill);
    assert!(
        restored.contains(" pairs restored (generation "),
        "{restored}"
    );
    host_until(&harness, "kvp-set 0 after restart", "true");
    harness.expect_output("[kvp] host set pool 0 \"after\"", from);
    host_until(&harness, "time", "true");
    harness.expect_output("[client] kvp from host: before = restart", from);
    harness.expect_output("[client] kvp from host: after = restart", from);
    host_until(&harness, "kvp-get 1 GuestClient", "true");
    host_until(&harness, "kvp-responses", "value: \"ready\"");
    // Heartbeats went on: the host's last answered sequence moves past
    // the one it had when kvp was killed, and nothing else restarted.
    let deadline = Instant::now() + WAIT;
    while last_heartbeat(&harness) <= beat_before_kill {
        if Instant::now() > deadline {
            harness.fail("heartbeats stopped");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(harness.system().restarts("heartbeat"), 0);
    assert_eq!(harness.system().restarts("timesync"), 0);
}
