//! Rescind, re-offer and offers at runtime, hosted: the host rescinds an
//! open channel (the driver is told, vmbus tears the channel down and
//! releases the relid), offers the same device again (a new device to the
//! guest, opened and working), and offers devices while the guest runs
//! (a driven class opens, an unknown class is left alone). The other
//! channels keep running throughout. Unload on a client's request closes
//! every channel and powers off with the client's code.
#![forbid(unsafe_code)]

mod vmbus_common;

use vmbus_common::*;
use vmbus_ipc::bus::ChannelState;

#[test]
fn a_rescinded_kvp_channel_is_released_and_its_reoffer_opens_and_works() {
    let harness = start(&[], &["client"]);
    let mut client = harness.double("client");
    wait_all_open(&harness, 4);
    wait_host_negotiated(&harness, "Kvp", 0);
    let kvp = relid_of(&harness, "kvp").unwrap_or_else(|| harness.fail("kvp is not open"));
    let from = harness.system().output().len();
    assert_eq!(harness.host(&format!("rescind {kvp}")), "true");
    harness.expect_output(&format!("[vmbus] relid {kvp} (kvp) rescinded"), from);
    harness.expect_output(&format!("hvsim event: closed relid {kvp} "), from);
    harness.expect_output(&format!("[vmbus] relid {kvp} released"), from);
    // The status view no longer shows it open.
    let row = device_rows(&mut client)
        .into_iter()
        .find(|row| row.driver.as_str() == "kvp")
        .expect("a kvp row");
    assert_ne!(row.state, ChannelState::Open, "{row:?}");
    // Offer the same device (same instance) again.
    let from = harness.system().output().len();
    let answer = harness.host("add-device kvp 4");
    let relid: u32 = answer
        .strip_prefix("relid ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| harness.fail(&format!("add-device answered {answer:?}")));
    harness.expect_output(
        &format!("[vmbus] offer relid {relid}: kvp 48565349-4d00-0000-0000-000000000004 -> kvp"),
        from,
    );
    harness.expect_output(&format!("[vmbus] relid {relid} (kvp) open"), from);
    wait_host_negotiated(&harness, "Kvp", from);
    assert_eq!(host_kvp_set(&harness, 0, "AfterReoffer", "yes"), 0);
    let row = device_rows(&mut client)
        .into_iter()
        .find(|row| row.driver.as_str() == "kvp")
        .expect("a kvp row");
    assert_eq!(
        (row.relid, row.state),
        (relid, ChannelState::Open),
        "{row:?}"
    );
    // Nothing faulted; heartbeats went on.
    assert!(
        harness.system().faults().is_empty(),
        "{:?}",
        harness.system().faults()
    );
    harness.expect_output("hvsim event: heartbeat sequence ", from);
}

#[test]
fn offers_added_at_runtime_open_when_driven_and_are_left_alone_otherwise() {
    let harness = start(&["--devices", "heartbeat,shutdown,timesync"], &[]);
    wait_all_open(&harness, 3);
    harness.expect_output(
        "[vmbus] all offers delivered: 3 with a driver, 0 left alone",
        0,
    );
    let from = harness.system().output().len();
    let answer = harness.host("add-device kvp");
    let relid = answer
        .strip_prefix("relid ")
        .unwrap_or_else(|| harness.fail(&format!("add-device answered {answer:?}")));
    harness.expect_output(&format!("[vmbus] offer relid {relid}: kvp "), from);
    harness.expect_output(&format!("[vmbus] relid {relid} (kvp) open"), from);
    wait_host_negotiated(&harness, "Kvp", from);
    // The client set its pair when it started; the KVP service was down
    // then, so it restores it on its next tick. Check the service itself.
    assert_eq!(host_kvp_set(&harness, 0, "LateOffer", "served"), 0);
    let answer = harness.host(&format!("add-device {UNDRIVEN_CLASS}"));
    let unknown = answer
        .strip_prefix("relid ")
        .unwrap_or_else(|| harness.fail(&format!("add-device answered {answer:?}")));
    let (_, line) = harness.expect_line(&format!("[vmbus] offer relid {unknown}:"), from);
    assert!(line.ends_with("left alone"), "{line}");
    assert!(host_events(&harness, &format!("open relid {unknown} ")).is_empty());
    assert!(
        harness.system().faults().is_empty(),
        "{:?}",
        harness.system().faults()
    );
}

#[test]
fn unload_closes_every_channel_and_powers_off_with_the_clients_code() {
    let harness = start(&[], &["client"]);
    let mut client = harness.double("client");
    wait_all_open(&harness, 4);
    let from = harness.system().output().len();
    let channel = client.channel("vmbus");
    let reply = component_api::call::<vmbus_ipc::bus::Bus>(
        client.env(),
        channel,
        &vmbus_ipc::bus::Request::Unload {
            power_off_code: Some(7),
        },
    )
    .expect("vmbus answers Unload");
    assert_eq!(reply, vmbus_ipc::bus::Reply::Accepted);
    for relid in 1..=4 {
        harness.expect_output(&format!("hvsim event: closed relid {relid} "), from);
    }
    harness.expect_output("hvsim event: unloaded", from);
    harness.expect_output("[vmbus] VMBus unloaded; powering off with code 7", from);
    assert_eq!(
        harness.system().wait_for_power_off(ipc_harness::WAIT),
        Some(7)
    );
}
