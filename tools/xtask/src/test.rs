//! `cargo xtask test`: every test the project has, in one command.
//!
//! 1. `cargo xtask setup` (installs what is missing),
//! 2. `cargo test --workspace --no-fail-fast` (the failed tests are named
//!    again at the end): unit tests, the description-error golden
//!    tests, the protocol-library property tests and the hosted
//!    component-level IPC tests (they start real component processes),
//! 3. `cargo fmt --check` and `cargo clippy --workspace --all-targets -D
//!    warnings` (the code standards), and clippy once more for the seL4
//!    build (`x86_64-unknown-none`: every component with an seL4 entry
//!    point, then the root task, as `cargo xtask build` builds them), whose
//!    `cfg(target_os = "none")` code the host run never sees,
//! 4. the model check of the ring's publish-and-signal protocol
//!    (`vmbus-ring`'s tests/loom_ring.rs built with `--cfg loom`, in its own
//!    target directory `target/loom` so the normal build stays valid),
//! 5. every fuzz target for a few seconds (`cargo xtask fuzz --seconds
//!    FUZZ_SMOKE_SECONDS`, at least FUZZ_SMOKE_MIN_RUNS inputs each), so a
//!    parser crash fails CI,
//! 6. the benchmarks' smoke run (`cargo xtask bench --smoke`: a few
//!    iterations of every benchmark, so they keep compiling and running;
//!    the numbers of a smoke run mean nothing), which must render its
//!    report (target/bench/smoke/performance.md) with a table for each
//!    group that produced records; and the storage benchmark's guest
//!    table in QEMU (`cargo xtask bench-storage --qemu`, about 20 s of
//!    QEMU),
//! 7. the QEMU boot tests of the seL4 images (`cargo xtask boot-test`).
//!
//! Every suite runs even if an earlier one failed; the last line counts them.

use crate::util::{workspace_root, Result};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// Seconds each fuzz target runs in `cargo xtask test`.
const FUZZ_SMOKE_SECONDS: u64 = 4;
/// Fewer inputs than this in the smoke run means the target hardly ran.
const FUZZ_SMOKE_MIN_RUNS: u64 = 1_000;

pub fn run(args: &[String]) -> Result {
    crate::setup::run_setup()?;
    let root = workspace_root();
    let mut results: Vec<(&str, bool)> = Vec::new();

    let mut cargo_test = Command::new(env!("CARGO"));
    cargo_test
        .current_dir(&root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(args);
    let (tests_ok, failed_tests) = run_cargo_test(&mut cargo_test);
    results.push(("cargo test --workspace", tests_ok));

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
    results.push((
        "cargo clippy -D warnings (x86_64-unknown-none)",
        clippy_sel4(&root),
    ));

    let started = Instant::now();
    let loom_target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("loom");
    let mut loom = Command::new(env!("CARGO"));
    loom.current_dir(&root)
        .args([
            "test",
            "-p",
            "vmbus-ring",
            "--test",
            "loom_ring",
            "--release",
            "--",
            "--nocapture",
        ])
        .env("RUSTFLAGS", "--cfg loom")
        .env("CARGO_TARGET_DIR", &loom_target_dir);
    results.push(("loom model check (vmbus-ring)", status_ok(&mut loom)));
    println!(
        "loom model check: {:.1} s with its build",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let fuzz = crate::fuzz::run(&[
        "--seconds".into(),
        FUZZ_SMOKE_SECONDS.to_string(),
        "--min-runs".into(),
        FUZZ_SMOKE_MIN_RUNS.to_string(),
    ]);
    if let Err(error) = &fuzz {
        eprintln!("xtask: {error}");
    }
    results.push(("fuzz smoke", fuzz.is_ok()));
    println!(
        "fuzz smoke: {:.1} s with its build",
        started.elapsed().as_secs_f64()
    );

    let started = Instant::now();
    let bench = crate::perf::smoke_and_check();
    if let Err(error) = &bench {
        eprintln!("xtask: {error}");
    }
    results.push((
        "benchmark smoke run (cargo xtask bench --smoke)",
        bench.is_ok(),
    ));
    println!(
        "benchmark smoke run: {:.1} s with its builds",
        started.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let guest_bench = crate::bench::storage(&["--qemu".into()]);
    if let Err(error) = &guest_bench {
        eprintln!("xtask: {error}");
    }
    results.push(("storage benchmark in QEMU", guest_bench.is_ok()));
    println!(
        "storage benchmark in QEMU: {:.1} s with its build",
        started.elapsed().as_secs_f64()
    );

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
    // CI shows only the end of the log: name the failed tests there too.
    for test in &failed_tests {
        println!("failed test: {test}");
    }
    println!("suites: {passed} passed, {} failed", failed.len());
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", failed.join(", ")))
    }
}

/// Runs `cargo test`, passing its output through, and returns whether it
/// passed and the tests it reported as failed (`test NAME ... FAILED`).
fn run_cargo_test(command: &mut Command) -> (bool, Vec<String>) {
    use std::io::{BufRead, BufReader, Write};
    println!("==> {command:?}");
    let mut child = match command.stdout(std::process::Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(error) => {
            eprintln!("cannot start {command:?}: {error}");
            return (false, Vec::new());
        }
    };
    let mut failed = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        let mut out = std::io::stdout();
        for line in BufReader::new(stdout).lines().map_while(|line| line.ok()) {
            let _ = writeln!(out, "{line}");
            if let Some(name) = line
                .strip_prefix("test ")
                .and_then(|rest| rest.strip_suffix(" ... FAILED"))
            {
                failed.push(name.to_string());
            }
        }
    }
    let ok = child.wait().map(|status| status.success()).unwrap_or(false);
    (ok, failed)
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

/// Clippy for the seL4 target, in the two cargo runs `cargo xtask build`
/// makes (components together, then the root task alone: their features
/// must not unify, or every component would need an allocator).
fn clippy_sel4(root: &std::path::Path) -> bool {
    let components = match sel4_components(root) {
        Ok(components) => components,
        Err(error) => {
            eprintln!("xtask: {error}");
            return false;
        }
    };
    let mut together = Command::new(env!("CARGO"));
    together
        .current_dir(root)
        .args(["clippy", "--release", "--target", crate::image::SEL4_TARGET]);
    for package in components.iter().map(String::as_str).chain(["sel4-heap"]) {
        together.args(["--package", package]);
    }
    together.args(["--", "-D", "warnings"]);
    let mut roottask = Command::new(env!("CARGO"));
    roottask.current_dir(root).args([
        "clippy",
        "--release",
        "--target",
        crate::image::SEL4_TARGET,
        "--package",
        "roottask",
        "--",
        "-D",
        "warnings",
    ]);
    // Both run, so one report shows every finding.
    let components_ok = status_ok(&mut together);
    status_ok(&mut roottask) && components_ok
}

/// Every component package with an seL4 entry point (`components/*` whose
/// `src/main.rs` invokes `sel4_runtime::component_main!`).
fn sel4_components(root: &std::path::Path) -> Result<Vec<String>> {
    let folder = root.join("components");
    let entries =
        std::fs::read_dir(&folder).map_err(|e| format!("cannot list {}: {e}", folder.display()))?;
    let mut packages = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let main = std::fs::read_to_string(path.join("src/main.rs")).unwrap_or_default();
        if main.contains("sel4_runtime::component_main!") {
            if let Some(name) = path.file_name() {
                packages.push(name.to_string_lossy().into_owned());
            }
        }
    }
    packages.sort();
    if packages.is_empty() {
        return Err(format!("no seL4 component under {}", folder.display()));
    }
    Ok(packages)
}
