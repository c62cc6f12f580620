//! The demonstration system (`tests/systems/demo.toml`) run hosted, with the same
//! checks as its QEMU boot test: every step appears on the console, the
//! faulter's three faults are reported to the supervisor and it restarts
//! with its state reset each time, the stream arrives complete with the
//! same checksum at producer, consumer and server, and the supervisor
//! powers the system off with code 0.
#![forbid(unsafe_code)]

use component_api::Fault;
use ipc_harness::{Event, Harness};
use std::time::Duration;

/// Lines that must appear, each after the previous one of the same
/// component (components run concurrently, so only per-component order is
/// fixed).
const EXPECTED: &[&str] = &[
    "[console] ready",
    "[console] serial interrupt received and acknowledged",
    "[server] serving protected calls",
    "[supervisor] supervising 3 components",
    "[producer] double-mapped region aliases: yes",
    "[producer] streaming 2000 messages",
    "[consumer] protected call: 40 + 2 = 42",
    "[consumer] malformed call refused by the server",
    "[consumer] call of another protocol refused by the server",
    "[faulter] started: data word 7, bss word 0",
    "[faulter] writing to my read-only region",
    "[supervisor] faulter faulted: write at 0x",
    "[supervisor] restarted faulter",
    "[faulter] started: data word 7, bss word 0",
    "[faulter] reading memory no region was granted at",
    "[supervisor] faulter faulted: read at 0x",
    "[supervisor] restarted faulter",
    "[faulter] started: data word 7, bss word 0",
    "[faulter] panicking",
    "[supervisor] faulter faulted: Panic",
    "[supervisor] restarted faulter",
    "[faulter] started: data word 7, bss word 0",
    "[supervisor] faulter survived 3 faults with its state reset each time",
    "[supervisor] demonstration complete: all steps passed",
    "[consumer] received 2000 messages (0 wrong)",
    "[producer] sent 2000 messages",
    "[server] recorded 2000 messages",
    "[consumer] server recorded the tally",
];

/// Lines that must appear, at no fixed place (the stream and the faulter
/// script run concurrently, so the supervisor sees them end in any order).
const ANYWHERE: &[&str] = &["[supervisor] consumer reports the stream complete"];

fn component_of(line: &str) -> &str {
    line.strip_prefix('[')
        .and_then(|rest| rest.split(']').next())
        .unwrap_or("")
}

fn checksum_of(line: &str) -> Option<&str> {
    line.split("checksum ").nth(1).map(str::trim)
}

#[test]
fn the_demonstration_passes_hosted() {
    let harness = Harness::builder("tests/systems/demo.toml")
        .start()
        .expect("starts");
    // Bounded: the run takes well under a second once built.
    let code = harness.system().wait_for_power_off(Duration::from_secs(60));
    if code != Some(0) {
        harness.fail(&format!("the system did not power off with 0: {code:?}"));
    }
    let output = harness.system().output();

    // Each expected line, in order per component.
    let mut next_from: std::collections::HashMap<&str, usize> = Default::default();
    for expected in EXPECTED {
        let component = component_of(expected);
        let from = next_from.get(component).copied().unwrap_or(0);
        match output
            .iter()
            .enumerate()
            .skip(from)
            .find(|(_, l)| l.contains(expected))
        {
            Some((index, _)) => {
                next_from.insert(component, index + 1);
            }
            None => harness.fail(&format!("missing (in order): {expected}")),
        }
    }
    for expected in ANYWHERE {
        if !output.iter().any(|l| l.contains(expected)) {
            harness.fail(&format!("missing: {expected}"));
        }
    }
    if !output
        .iter()
        .rev()
        .find(|l| l.starts_with("[supervisor]"))
        .is_some_and(|l| l.contains("demonstration complete"))
    {
        harness.fail("the verdict is not the supervisor's last word");
    }
    for forbidden in [
        "did NOT fault",
        "aliases: NO",
        "queue error",
        "could not restart",
    ] {
        if let Some(line) = output.iter().find(|l| l.contains(forbidden)) {
            harness.fail(&format!("unexpected line: {line}"));
        }
    }

    // The same stream everywhere.
    let checksums: Vec<&str> = [
        "[producer] sent",
        "[consumer] received",
        "[server] recorded",
    ]
    .iter()
    .map(|start| {
        output
            .iter()
            .find(|l| l.starts_with(start))
            .and_then(|l| checksum_of(l))
            .unwrap_or_else(|| harness.fail(&format!("no checksum from {start}")))
    })
    .collect();
    assert!(checksums.windows(2).all(|w| w[0] == w[1]), "{checksums:?}");

    // The runtime saw exactly the three commanded faults, of the faulter.
    let faults = harness.system().faults();
    let kinds: Vec<(String, Fault)> = faults
        .iter()
        .map(|f| (f.component.clone(), f.fault))
        .collect();
    assert_eq!(kinds.len(), 3, "{kinds:?}");
    assert!(kinds.iter().all(|(c, _)| c == "faulter"));
    assert!(
        matches!(kinds[0].1, Fault::Memory { write: true, .. }),
        "{kinds:?}"
    );
    assert!(
        matches!(kinds[1].1, Fault::Memory { write: false, .. }),
        "{kinds:?}"
    );
    assert_eq!(kinds[2].1, Fault::Panic);
    assert!(faults.iter().all(|f| f.reported));
    assert_eq!(harness.system().restarts("faulter"), 3);
}

/// The test plays the console: every other component's output reaches it
/// as protected calls, from five processes at once, and the demonstration
/// still completes.
#[test]
fn the_test_can_play_the_console_for_the_whole_demonstration() {
    let harness = Harness::builder("tests/systems/demo.toml")
        .double("console")
        .start()
        .expect("starts");
    let mut console = harness.double("console");
    let deadline = std::time::Instant::now() + ipc_harness::WAIT;
    let mut text: std::collections::HashMap<String, String> = Default::default();
    while harness
        .system()
        .wait_for_power_off(Duration::ZERO)
        .is_none()
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            harness.fail(&format!("no power-off; the console got {text:?}"));
        }
        // Ends early when the launcher goes away at power-off.
        if let Some(Event::Call { channel, message }) = console.next_event(left) {
            let caller = console.channel_name(channel).unwrap_or("?").to_string();
            text.entry(caller)
                .or_default()
                .push_str(&String::from_utf8_lossy(&message));
            console.env().reply(channel, Ok(&[]));
        }
        if console.env().launcher_gone() {
            break;
        }
    }
    assert_eq!(harness.system().wait_for_power_off(Duration::ZERO), Some(0));
    let said = |who: &str| text.get(who).cloned().unwrap_or_default();
    assert!(
        said("supervisor").contains("demonstration complete: all steps passed"),
        "{text:?}"
    );
    assert!(
        said("faulter").contains("started: data word 7, bss word 0"),
        "{text:?}"
    );
    assert!(
        said("consumer").contains("received 2000 messages (0 wrong)"),
        "{text:?}"
    );
    assert!(
        said("server").contains("recorded 2000 messages"),
        "{text:?}"
    );
    assert!(said("producer").contains("sent 2000 messages"), "{text:?}");
}
