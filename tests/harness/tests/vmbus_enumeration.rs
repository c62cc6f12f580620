//! Enumeration of the VMBus system, hosted: synic, vmbus and the four IC
//! drivers as processes, the simulated host (`hvsim`) as its own process on
//! the hypervisor transport. The bus negotiates 5.3, every offered device
//! with a driver opens, an unknown class is logged and left alone, and the
//! status view (the printed table and `bus::Request::Device` rows) shows
//! each device's class, instance, relid, versions, state and restarts.
#![forbid(unsafe_code)]

mod vmbus_common;

use vmbus_common::*;
use vmbus_ipc::bus::{self, ChannelState};
use vmbus_protocol::guid::class;

#[test]
fn the_bus_negotiates_5_3_and_every_offered_device_with_a_driver_opens() {
    // A fifth offer of a class nobody drives (VSS).
    let devices = format!("heartbeat,shutdown,timesync,kvp,{UNDRIVEN_CLASS}");
    let harness = start(&["--devices", &devices], &[]);
    let next = harness.expect_output("[vmbus] VMBus 5.3 negotiated", 0);
    harness.expect_output("hvsim event: version 5.3", 0);
    for (index, driver) in DRIVERS.iter().enumerate() {
        let relid = index + 1;
        harness.expect_output(
            &format!("[vmbus] offer relid {relid}: {driver} 48565349-4d00-0000-0000-00000000000{relid} -> {driver}"),
            next,
        );
    }
    let (_, unknown) = harness.expect_line("[vmbus] offer relid 5:", next);
    assert!(
        unknown.contains(UNDRIVEN_CLASS) && unknown.ends_with("left alone"),
        "{unknown}"
    );
    harness.expect_output(
        "[vmbus] all offers delivered: 4 with a driver, 1 left alone",
        next,
    );
    let (all_open, after) = line_time(&harness, "[vmbus] all 4 offered devices open", 0);
    for relid in 1..=4 {
        harness.expect_output(&format!("hvsim event: open relid {relid} "), 0);
        harness.expect_output(&format!("[vmbus] relid {relid} ("), 0);
    }
    for driver in DRIVERS {
        // The runtime maps each ring's data area twice, back to back.
        let (_, open) = harness.expect_line(&format!("[{driver}] channel open: relid "), 0);
        assert!(open.ends_with("rings mapped twice"), "{open}");
    }
    wait_negotiated(&harness, &DRIVERS, 0);
    // The printed view: a row per device with its class, instance, relid,
    // driver, state, versions and restarts (rows are printed again as the
    // drivers report their versions: wait for the complete ones).
    // Ten rows: the unknown device is listed too, offered and undriven,
    // and so are the keyboard, mouse, storage, network and video drivers,
    // which have no device here.
    harness.expect_output("[vmbus] VMBus 5.3, 10 devices", after);
    harness.expect_output(
        "[vmbus]  relid class      instance                              driver     state     framework msg  restarts",
        after,
    );
    let expected = [
        ("heartbeat", "3.0", "3.0"),
        ("shutdown", "3.0", "3.2"),
        ("timesync", "3.0", "4.0"),
        ("kvp", "3.0", "5.0"),
    ];
    for (index, (driver, framework, message)) in expected.into_iter().enumerate() {
        let relid = index + 1;
        let row = format!(
            "[vmbus] {relid:>6} {driver:<10} 48565349-4d00-0000-0000-00000000000{relid}  {driver:<10} {:<9} {framework:<9} {message:<4} 0",
            "open"
        );
        harness.expect_output(&row, after);
    }
    harness.expect_output(
        "[vmbus]      5 vss        48565349-4d00-0000-0000-000000000005  -          offered   -         -    0",
        after,
    );
    // The host opened exactly the four driven channels.
    assert!(host_events(&harness, "open relid 5").is_empty());
    assert_eq!(harness.host("relid kvp"), "Some(4)");
    let launch_to_open = all_open;
    eprintln!("launch to all channels open: {launch_to_open:?} (hosted, debug build)");
    assert!(
        harness.system().faults().is_empty(),
        "{:?}",
        harness.system().faults()
    );
}

#[test]
fn the_status_view_serves_one_row_per_device() {
    // The test plays `client` to ask vmbus for the rows.
    let harness = start(&[], &["client"]);
    let mut client = harness.double("client");
    wait_all_open(&harness, 4);
    wait_negotiated(&harness, &DRIVERS, 0);
    let rows = device_rows(&mut client);
    // The four ICs, then the keyboard, mouse, storage, network and video
    // drivers' rows: system.toml has them, and this host offers no
    // keyboard, mouse, disk controller, NIC or video device.
    assert_eq!(rows.len(), 9, "{rows:?}");
    for (row, driver) in rows[4..]
        .iter()
        .zip(["keyboard", "mouse", "storage", "network", "video"])
    {
        assert_eq!(row.driver.as_str(), driver);
        assert_eq!(row.state, ChannelState::NotOffered);
    }
    let classes = [
        class::HEARTBEAT,
        class::SHUTDOWN,
        class::TIMESYNC,
        class::KVP,
    ];
    let versions = [
        ((3, 0), (3, 0)),
        ((3, 0), (3, 2)),
        ((3, 0), (4, 0)),
        ((3, 0), (5, 0)),
    ];
    for (index, row) in rows[..4].iter().enumerate() {
        assert_eq!(row.driver.as_str(), DRIVERS[index]);
        assert_eq!(uuid::Uuid::from_bytes(row.class), classes[index]);
        assert_eq!(
            uuid::Uuid::from_bytes(row.instance),
            uuid::Uuid::from_u128(0x4856_5349_4d00_0000_0000_0000_0000_0000 | (index as u128 + 1))
        );
        assert_eq!(row.relid, index as u32 + 1);
        assert_eq!(row.state, ChannelState::Open);
        assert_eq!(row.vmbus_version, 5 << 16 | 3);
        assert_eq!(
            (row.framework_version, row.message_version),
            versions[index]
        );
        assert_eq!(row.restarts, 0);
    }
    assert_eq!(
        device_row(&mut client, 200).expect("vmbus answers"),
        bus::Reply::NoSuchDevice
    );
}
