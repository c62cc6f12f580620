//! The synthetic keyboard and mouse end to end, hosted: the simulated host
//! process offers both devices, the real `keyboard` and `mouse` drivers
//! negotiate, and what the host's operator types and moves (and its
//! scenario steps) reaches their client (the test plays `client`). A host
//! that sends what the protocols forbid is refused and counted while the
//! drivers keep serving.
#![forbid(unsafe_code)]

mod vmbus_common;

use component_api::call;
use ipc_harness::{Double, Harness};
use std::time::{Duration, Instant};
use vmbus_common::*;
use vmbus_ipc::keyboard::{self, KeyStroke, Prefix};
use vmbus_ipc::mouse::{self, PointerEvent};

const DEVICES: &str = "heartbeat,shutdown,timesync,kvp,keyboard,mouse";

fn start_input(extra: &[&str]) -> (Harness, Double) {
    let mut args = vec!["--devices", DEVICES];
    args.extend_from_slice(extra);
    let harness = start(&args, &["terminal"]);
    let client = harness.double("terminal");
    wait_all_open(&harness, 6);
    wait_host_negotiated(&harness, "Keyboard", 0);
    wait_host_negotiated(&harness, "Mouse", 0);
    (harness, client)
}

/// Key events until `count` arrived (each notification drained).
fn keys(harness: &Harness, client: &mut Double, count: usize) -> Vec<KeyStroke> {
    let mut got = Vec::new();
    let deadline = Instant::now() + ipc_harness::WAIT;
    while got.len() < count {
        if Instant::now() > deadline {
            harness.fail(&format!("{} of {count} keys arrived: {got:?}", got.len()));
        }
        let channel = client.channel("keyboard");
        match call::<keyboard::Keyboard>(client.env(), channel, &keyboard::Request::Next) {
            Ok(keyboard::Reply::Keys { keys, dropped }) => {
                assert_eq!(dropped, 0);
                if keys.is_empty() {
                    client.wait_notified("keyboard_event", Duration::from_millis(200));
                }
                got.extend(keys);
            }
            Err(error) => harness.fail(&format!("keyboard Next: {error:?}")),
        }
    }
    got
}

fn pointer_events(harness: &Harness, client: &mut Double, count: usize) -> Vec<PointerEvent> {
    let mut got = Vec::new();
    let deadline = Instant::now() + ipc_harness::WAIT;
    while got.len() < count {
        if Instant::now() > deadline {
            harness.fail(&format!("{} of {count} pointer events: {got:?}", got.len()));
        }
        let channel = client.channel("mouse");
        match call::<mouse::Mouse>(client.env(), channel, &mouse::Request::Next) {
            Ok(mouse::Reply::Events { events, dropped }) => {
                assert_eq!(dropped, 0);
                if events.is_empty() {
                    client.wait_notified("mouse_event", Duration::from_millis(200));
                }
                got.extend(events);
            }
            Err(error) => harness.fail(&format!("mouse Next: {error:?}")),
        }
    }
    got
}

fn make(code: u16) -> KeyStroke {
    KeyStroke {
        code,
        prefix: Prefix::None,
        released: false,
        unicode: false,
    }
}

fn up(code: u16) -> KeyStroke {
    KeyStroke {
        released: true,
        ..make(code)
    }
}

#[test]
fn typed_keys_and_pointer_moves_reach_the_client() {
    let (harness, mut client) = start_input(&[]);
    harness.expect_output("[keyboard] protocol 1.0 accepted", 0);
    harness.expect_output(
        "[mouse] device 045e:0621: 6-byte reports, 5 buttons, X 0..=32767, Y 0..=32767, wheel",
        0,
    );
    assert_eq!(harness.host("type Hi"), "6 of 6 key transitions sent");
    assert_eq!(
        keys(&harness, &mut client, 6),
        [
            make(0x2a),
            make(0x23),
            up(0x23),
            up(0x2a),
            make(0x17),
            up(0x17)
        ]
    );
    assert_eq!(harness.host("key 0x48 e0 up"), "true");
    assert_eq!(
        keys(&harness, &mut client, 1),
        [KeyStroke {
            code: 0x48,
            prefix: Prefix::E0,
            released: true,
            unicode: false
        }]
    );
    assert_eq!(harness.host("mouse 16384 100 1"), "true");
    assert_eq!(harness.host("mouse 32767 0"), "true");
    assert_eq!(
        pointer_events(&harness, &mut client, 2),
        [
            PointerEvent {
                x: 16384,
                y: 100,
                buttons: 1,
                wheel: 0
            },
            PointerEvent {
                x: 32767,
                y: 0,
                buttons: 0,
                wheel: 0
            }
        ]
    );
    assert!(harness.host("input-report").contains("keys sent 7"));
}

#[test]
fn a_hostile_host_is_refused_and_counted_and_the_drivers_keep_serving() {
    let (harness, mut client) = start_input(&[]);
    let from = harness.expect_output("[keyboard] protocol 1.0 accepted", 0);
    for (fault, line) in [
        ("unknown-flags", "UnknownFlags(16)"),
        ("short", "Short { len: 8 }"),
        ("oversized", "Oversized { len: 32 }"),
        ("unknown-type", "UnknownType(9)"),
    ] {
        assert_eq!(harness.host(&format!("keyboard-fault {fault}")), "true");
        harness.expect_output("[keyboard] refused host message ", from);
        harness.expect_output(line, from);
    }
    for (fault, line) in [
        ("descriptor-length", "BadDescriptorLength(250)"),
        ("report-length", "ReportLength { said: "),
        ("big-report", "input report of 7 bytes, descriptor says 6"),
        ("short", "Short { len: 24 }"),
        ("oversized", "Oversized { len: 40 }"),
        ("unknown-type", "UnknownType(9)"),
    ] {
        assert_eq!(harness.host(&format!("mouse-fault {fault}")), "true");
        harness.expect_output(line, from);
    }
    // Nothing reached the client, nothing faulted, and both still serve.
    assert_eq!(harness.host("type a"), "2 of 2 key transitions sent");
    assert_eq!(keys(&harness, &mut client, 2), [make(0x1e), up(0x1e)]);
    assert_eq!(harness.host("mouse 5 6"), "true");
    assert_eq!(
        pointer_events(&harness, &mut client, 1),
        [PointerEvent {
            x: 5,
            y: 6,
            buttons: 0,
            wheel: 0
        }]
    );
    assert!(
        harness.system().faults().is_empty(),
        "{:?}",
        harness.system().faults()
    );
}

#[test]
fn scenario_input_steps_reach_the_client() {
    let script = std::env::temp_dir().join(format!("console-input-{}.hvsim", std::process::id()));
    std::fs::write(
        &script,
        "devices = [\"heartbeat\", \"shutdown\", \"timesync\", \"kvp\", \"keyboard\", \"mouse\"]\n\
         input_steps = [[1, \"type ok\"], [1, \"key 0x1c\"], [1, \"mouse 300 400 2\"], \
         [1, \"keyboard-fault unknown-flags\"], [2, \"key 0x1c up\"]]\n",
    )
    .unwrap();
    let harness = start(&["--script", script.to_str().unwrap()], &["terminal"]);
    let mut client = harness.double("terminal");
    let _ = std::fs::remove_file(&script);
    wait_all_open(&harness, 6);
    assert_eq!(
        keys(&harness, &mut client, 6),
        [
            make(0x18),
            up(0x18),
            make(0x25),
            up(0x25),
            make(0x1c),
            up(0x1c)
        ]
    );
    assert_eq!(
        pointer_events(&harness, &mut client, 1),
        [PointerEvent {
            x: 300,
            y: 400,
            buttons: 2,
            wheel: 0
        }]
    );
    harness.expect_output("[keyboard] refused host message 1: UnknownFlags(16)", 0);
}

#[test]
fn killed_input_drivers_are_restarted_and_serve_again() {
    let (harness, mut client) = start_input(&[]);
    let from = harness.system().output().len();
    harness.kill("keyboard");
    harness.kill("mouse");
    harness.expect_fault("keyboard", 1);
    harness.expect_fault("mouse", 1);
    harness.expect_restarts("keyboard", 1);
    harness.expect_restarts("mouse", 1);
    // The host sees each device negotiate again on its reopened channel.
    wait_host_negotiated(&harness, "Keyboard", from);
    wait_host_negotiated(&harness, "Mouse", from);
    assert_eq!(harness.host("type z"), "2 of 2 key transitions sent");
    assert_eq!(keys(&harness, &mut client, 2), [make(0x2c), up(0x2c)]);
    assert_eq!(harness.host("mouse 1 2 4"), "true");
    assert_eq!(
        pointer_events(&harness, &mut client, 1),
        [PointerEvent {
            x: 1,
            y: 2,
            buttons: 4,
            wheel: 0
        }]
    );
}
