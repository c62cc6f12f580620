//! `cargo xtask test`: every test the project has, in one command.
//!
//! 1. `cargo xtask setup` (installs what is missing),
//! 2. `cargo test --workspace`: unit tests, the description-error golden
//!    tests, the protocol-library property tests and the hosted
//!    component-level IPC tests (they start real component processes),
//! 3. `cargo fmt --check` and `cargo clippy --workspace --all-targets -D
//!    warnings` (the code standards),
//! 4. the QEMU boot tests of the seL4 images (`cargo xtask boot-test`).
//!
//! Every suite runs even if an earlier one failed; the last line counts them.

use crate::util::{workspace_root, Result};
use std::process::Command;

pub fn run(args: &[String]) -> Result {
    crate::setup::run_setup()?;
    let root = workspace_root();
    let mut results: Vec<(&str, bool)> = Vec::new();

    let mut cargo_test = Command::new(env!("CARGO"));
    cargo_test
        .current_dir(&root)
        .args(["test", "--workspace"])
        .args(args);
    results.push(("cargo test --workspace", status_ok(&mut cargo_test)));

    let mut format = Command::new(env!("CARGO"));
    format
        .current_dir(&root)
        .args(["fmt", "--all", "--", "--check"]);
    results.push(("cargo fmt --check", status_ok(&mut format)));

    let mut clippy = Command::new(env!("CARGO"));
    clippy.current_dir(&root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]);
    results.push(("cargo clippy -D warnings", status_ok(&mut clippy)));

    let xtask = std::env::current_exe().map_err(|e| format!("cannot find xtask itself: {e}"))?;
    let mut boot_test = Command::new(xtask);
    boot_test.current_dir(&root).arg("boot-test");
    results.push(("QEMU boot test", status_ok(&mut boot_test)));

    let failed: Vec<&str> = results
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(name, _)| *name)
        .collect();
    let passed = results.len() - failed.len();
    for (name, ok) in &results {
        println!("suite {name}: {}", if *ok { "passed" } else { "FAILED" });
    }
    println!("suites: {passed} passed, {} failed", failed.len());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}

fn status_ok(command: &mut Command) -> bool {
    println!("==> {command:?}");
    match command.status() {
        Ok(status) => status.success(),
        Err(error) => {
            eprintln!("cannot start {command:?}: {error}");
            false
        }
    }
}
