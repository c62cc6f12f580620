//! The monolithic build (`hosted_runtime::monolith`): the components of
//! system.toml, unchanged, as threads of one process with in-process
//! channels, the simulated host still its own process on the hypervisor
//! transport. The default run must print what system.expect expects of a
//! hosted run and power off with 0, as the isolated build does
//! (vmbus_scenarios.rs, `the_default_run`).
#![forbid(unsafe_code)]

use ipc_harness::expect;
use ipc_harness::monolith::{monolith_command, LineProcess};
use ipc_harness::workspace_root;
use std::time::Duration;

#[test]
fn the_default_run_monolithic() {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("system.expect")).expect("system.expect");
    let expected = expect::parse(&text, expect::Backend::Hosted);
    assert!(!expected.is_empty());
    let empty = std::env::temp_dir().join(format!("mono-default-{}.hvsim", std::process::id()));
    std::fs::write(&empty, "# the bring-up run\n").expect("write an empty scenario");
    let script = empty.display().to_string();
    let command = monolith_command("system.toml", false, &["--events", "--script", &script])
        .expect("the monolith builds");
    let mut system = LineProcess::start(command).expect("the monolith starts");
    system.expect_output("[vmbus] VMBus 5.3 negotiated", 0);
    // One process: no component runs as a process of its own; only the
    // host is a child.
    let children = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        system.pid(),
        system.pid()
    ))
    .unwrap_or_default();
    let threads = std::fs::read_dir(format!("/proc/{}/task", system.pid()))
        .map(|d| d.count())
        .unwrap_or(0);
    for group in expect::by_source(&expected) {
        let mut from = 0;
        for line in group {
            from = system.expect_output(line, from);
        }
    }
    match system.wait_exit(Duration::from_secs(20)) {
        Some(0) => {}
        other => system.fail(&format!("the monolith did not power off with 0: {other:?}")),
    }
    let _ = std::fs::remove_file(empty);
    assert!(
        children.split_whitespace().count() <= 1,
        "more than the host process runs beside the monolith: {children}"
    );
    assert!(
        threads >= 8,
        "the components are not threads: {threads} threads"
    );
}

/// No isolation: the demonstration's `faulter` writes to its read-only
/// `control` region when its supervisor tells it to (tests/systems/demo.toml).
/// Isolated, its supervisor is told and restarts it (hosted_demo.rs);
/// monolithic, the read-only map still faults (the map's rights hold in
/// one process too), and the fault takes every component down with it.
#[test]
fn a_fault_takes_the_whole_monolith_down() {
    let command =
        monolith_command("tests/systems/demo.toml", false, &[]).expect("the monolith builds");
    let mut system = LineProcess::start(command).expect("the monolith starts");
    system.expect_output("[faulter] started: data word 7, bss word 0", 0);
    match system.wait_exit(Duration::from_secs(20)) {
        // Killed by the signal of the fault: no exit code.
        Some(-1) => {}
        other => system.fail(&format!("the monolith did not die of the fault: {other:?}")),
    }
    let lines = system.lines();
    // It died at the first fault, the write to the read-only map.
    let last = lines.iter().rev().find(|l| l.starts_with("[faulter]"));
    assert!(
        last.is_some_and(|l| l.contains("read-only")),
        "the last faulter line is not the read-only write: {last:?}"
    );
    assert!(
        !lines.iter().any(|l| l.contains("started: data word 8")),
        "nothing can restart a component of a dead process: {lines:?}"
    );
}

/// The host is the hypervisor, not part of the guest: losing it powers
/// the monolith off with 4, as it does the isolated system
/// (hosted_host.rs).
#[test]
fn losing_the_host_powers_the_monolith_off_with_4() {
    let command = monolith_command("system.toml", false, &["--time-interval-ms", "5000"])
        .expect("the monolith builds");
    let mut system = LineProcess::start(command).expect("the monolith starts");
    system.expect_output("[vmbus] VMBus 5.3 negotiated", 0);
    let children = std::fs::read_to_string(format!(
        "/proc/{}/task/{}/children",
        system.pid(),
        system.pid()
    ))
    .expect("the monolith's children");
    let host = children
        .split_whitespace()
        .next()
        .expect("the host process");
    let killed = std::process::Command::new("kill")
        .args(["-9", host])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    system.expect_output("[monolith] the hypervisor host (hvsim) is gone", 0);
    match system.wait_exit(Duration::from_secs(20)) {
        Some(4) => {}
        other => system.fail(&format!("the monolith did not power off with 4: {other:?}")),
    }
}
