//! Every simulated-host scenario, hosted: the same scenario files
//! (`tests/systems/*.hvsim`) and the same expectation files (`*.expect`)
//! the QEMU boot tests use (`cargo xtask boot-test`), run against the
//! hosted system with the host process reading the scenario
//! (`hvsim --script FILE`). A scenario is written once and checked on both
//! backends. How expectation files are read: `ipc_harness::expect`.
#![forbid(unsafe_code)]

mod vmbus_common;

use ipc_harness::{expect, workspace_root};
use std::time::Duration;
use vmbus_common::*;

/// How long a scenario may take to power the system off once its last
/// expected line was seen.
const POWER_OFF_WAIT: Duration = Duration::from_secs(20);

/// The scenarios with a test below; `every_scenario_file_is_run_hosted`
/// keeps this list and the folder in step.
const SCENARIOS: &[&str] = &[
    "datapath",
    "datapath-hostile",
    "input",
    "kvp-fault",
    "kvp-get",
    "kvp-rescind",
    "monitored",
    // Run by network_driver.rs (hosted) and, with QEMU's NE2000, by
    // xtask's network boot tests (`net::BOOT_TESTS`): the -qemu ones
    // need QEMU's NIC.
    "network",
    "network-qemu",
    "network-restart-qemu",
    // Run by xtask's QEMU console boot test (`console::boot_test`): it
    // needs QEMU's std VGA and i8042, which only the seL4 image drives.
    "qemu-console",
    // Run by xtask's QEMU terminal boot test (`console::boot_test_terminal`):
    // QEMU's display is what makes the seL4 host offer the console devices.
    "qemu-terminal",
    "restart",
    // Run by `cargo xtask bench-restart --qemu` only: fault injection
    // needs the seL4 image's monitor (the hosted benchmark kills storvsc).
    "restart-bench",
    "restart-bench-smoke",
    "runtime-offers",
    // Run by storage.rs, storage_multi.rs and storage_reliability.rs:
    // they need disk images made for the run.
    "storage",
    "storage-faults",
    "storage-ide",
    "storage-multi",
    "storage-rescind",
    "storage-stress",
    "storage-timeout",
    "vmbus-2.4",
    "vmbus-4.0",
];

/// Run the system with the host reading `script` (a path relative to the
/// workspace, or absolute), check `expect`, and wait for the power-off.
fn run(script: &str, expect: &str) {
    run_system(SYSTEM, script, expect);
}

/// [`run`] for another system description.
fn run_system(description: &str, script: &str, expect: &str) {
    run_system_to(description, script, expect, 0);
}

/// [`run_system`], the system powering off with `power_off_code`.
fn run_system_to(description: &str, script: &str, expect: &str, power_off_code: u8) {
    let root = workspace_root();
    let expect_path = root.join(expect);
    let text = std::fs::read_to_string(&expect_path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", expect_path.display()));
    let expected = expect::parse(&text, expect::Backend::Hosted);
    assert!(!expected.is_empty(), "{expect} expects nothing");
    let script_path = root.join(script).display().to_string();
    let harness = ipc_harness::Harness::builder(description)
        .host_args(&["--events", "--script", &script_path])
        .start()
        .expect("the system starts");
    for group in expect::by_source(&expected) {
        let mut from = 0;
        for line in group {
            from = harness.expect_output(line, from);
        }
    }
    match harness.system().wait_for_power_off(POWER_OFF_WAIT) {
        Some(code) if code == power_off_code => {}
        other => harness.fail(&format!(
            "the system did not power off with {power_off_code}: {other:?}"
        )),
    }
}

fn run_scenario(name: &str) {
    run(
        &format!("tests/systems/{name}.hvsim"),
        &format!("tests/systems/{name}.expect"),
    );
}

#[test]
fn the_default_run() {
    // The image boots the bring-up run when no scenario file is named; an
    // empty scenario file is the same run (every key keeps its default).
    let empty = std::env::temp_dir().join(format!("default-{}.hvsim", std::process::id()));
    std::fs::write(&empty, "# the bring-up run\n").expect("write an empty scenario");
    run(&empty.display().to_string(), "system.expect");
    let _ = std::fs::remove_file(empty);
}

/// The data-path test driver (tests/systems/datapath.toml): every send
/// shape both ways, every byte checked, the exact packet and byte counts,
/// zero errors and zero host rule violations (datapath.expect), and the
/// power-off with 0 that the driver asks for only when all of it held.
#[test]
fn datapath() {
    run_system(
        "tests/systems/datapath.toml",
        "tests/systems/datapath.hvsim",
        "tests/systems/datapath.expect",
    );
}

/// The data-path test against a hostile host (a transfer-page range past
/// the receive buffer, a completion for an unknown id): the driver refuses
/// and counts both, checks every other packet, and fails the run (power-off
/// code 1). Hosted only: the QEMU boot test passes only on code 0.
#[test]
fn datapath_hostile() {
    run_system_to(
        "tests/systems/datapath.toml",
        "tests/systems/datapath-hostile.hvsim",
        "tests/systems/datapath-hostile.expect",
        1,
    );
}

#[test]
fn kvp_fault() {
    run_scenario("kvp-fault");
}

#[test]
fn kvp_get() {
    run_scenario("kvp-get");
}

#[test]
fn restart() {
    run_scenario("restart");
}

#[test]
fn kvp_rescind() {
    run_scenario("kvp-rescind");
}

#[test]
fn monitored() {
    run_scenario("monitored");
}

#[test]
fn input() {
    run_scenario("input");
}

#[test]
fn runtime_offers() {
    run_scenario("runtime-offers");
}

#[test]
fn vmbus_2_4() {
    run_scenario("vmbus-2.4");
}

#[test]
fn vmbus_4_0() {
    run_scenario("vmbus-4.0");
}

#[test]
fn every_scenario_file_is_run_hosted() {
    let folder = workspace_root().join("tests/systems");
    let mut found: Vec<String> = std::fs::read_dir(&folder)
        .expect("tests/systems")
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            name.strip_suffix(".hvsim").map(str::to_string)
        })
        .collect();
    found.sort();
    assert_eq!(
        found, SCENARIOS,
        "a scenario file without a hosted test, or the reverse"
    );
}
