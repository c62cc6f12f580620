//! Version fallback, hosted: against a host that offers only VMBus 4.0,
//! and one that offers only 2.4, the bus manager walks down from 5.3 (an
//! unknown connection 4 means an older host), settles on the host's
//! version, and every driver opens and works on it.
#![forbid(unsafe_code)]

mod vmbus_common;

use vmbus_common::*;
use vmbus_ipc::bus::ChannelState;

fn falls_back_to(version: &str, packed: u32) {
    let harness = start(
        &["--min-version", version, "--max-version", version],
        &["client"],
    );
    let mut client = harness.double("client");
    // 5.3 .. 5.0 go to connection 4, which an old host does not have.
    harness.expect_output("[vmbus] VMBus 5.3: connection 4 unknown to the host", 0);
    let next = harness.expect_output(&format!("[vmbus] VMBus {version} negotiated"), 0);
    harness.expect_output(&format!("hvsim event: version {version} at"), 0);
    assert!(
        harness
            .system()
            .output()
            .iter()
            .all(|line| !line.contains("negotiated;") || line.contains(version)),
        "only {version} may be negotiated"
    );
    wait_all_open(&harness, 4);
    // The four ICs and the keyboard, mouse, storage, network and video
    // drivers (no keyboard, mouse, disk controller, NIC or video offered).
    harness.expect_output(&format!("[vmbus] VMBus {version}, 9 devices"), next);
    for kind in ["Heartbeat", "Shutdown", "TimeSync", "Kvp"] {
        wait_host_negotiated(&harness, kind, 0);
    }
    wait_negotiated(&harness, &DRIVERS, 0);
    let rows = device_rows(&mut client);
    assert_eq!(rows.len(), 9, "{rows:?}");
    for row in &rows[..4] {
        assert_eq!(row.state, ChannelState::Open, "{row:?}");
        assert_eq!(row.vmbus_version, packed, "{row:?}");
    }
    for (row, driver) in rows[4..]
        .iter()
        .zip(["keyboard", "mouse", "storage", "network", "video"])
    {
        assert_eq!(row.driver.as_str(), driver);
        assert_eq!(row.state, ChannelState::NotOffered);
    }
    // The drivers work on the old bus: heartbeats are answered, KVP too.
    let from = harness.system().output().len();
    harness.expect_output("hvsim event: heartbeat sequence ", from);
    assert_eq!(host_kvp_set(&harness, 0, "OldHost", version), 0);
}

#[test]
fn a_host_that_offers_only_4_0_gets_4_0() {
    falls_back_to("4.0", 4 << 16);
}

#[test]
fn a_host_that_offers_only_2_4_gets_2_4() {
    falls_back_to("2.4", 2 << 16 | 4);
}
