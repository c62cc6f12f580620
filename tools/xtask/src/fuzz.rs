//! `cargo xtask fuzz [--seconds N] [--target NAME] [--min-runs N]`: coverage-guided fuzzing
//! of the VMBus parsers (platform/vmbus/vmbus-protocol/fuzz) with libFuzzer.
//!
//! Stable Rust only: the fuzz crate links libFuzzer through `libfuzzer-sys`
//! (built from source with the system C++ compiler) and is compiled with
//! sanitizer-coverage instrumentation via `-Cpasses=sancov-module` and
//! `-Cllvm-args=-sanitizer-coverage-*`, which are stable codegen options.
//! No nightly, no RUSTC_BOOTSTRAP, no cargo-fuzz (which would need both for
//! its default address sanitizer). Without ASan, memory errors are caught by
//! Rust's bounds checks (panics abort and count as crashes) and by the
//! targets' own assertions.
//!
//! Each target runs for N seconds (default 60) on its corpus in
//! `<target dir>/vmbus-fuzz/corpus/<target>`; crashes land in
//! `.../artifacts/<target>/` and fail the command, as does a target that
//! ran fewer than `--min-runs` inputs (`cargo xtask test` runs every target
//! for a few seconds this way, so CI catches a crash).

use crate::util::{run_checked, workspace_root, Result};
use std::path::PathBuf;
use std::process::Command;

const TARGETS: [&str; 9] = [
    "gpa_direct",
    "transfer_pages",
    "completion",
    "channel_message_typed",
    "channel_message",
    "packet",
    "ic_message",
    "gpadl",
    "ring_reader",
];
const HOST_TRIPLE: &str = "x86_64-unknown-linux-gnu";
const COVERAGE_FLAGS: &str = "-Cpasses=sancov-module \
    -Cllvm-args=-sanitizer-coverage-level=4 \
    -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
    -Cllvm-args=-sanitizer-coverage-pc-table \
    -Cllvm-args=-sanitizer-coverage-trace-compares \
    --cfg fuzzing";

pub fn run(args: &[String]) -> Result {
    let mut seconds = 60u64;
    let mut only: Option<String> = None;
    let mut min_runs = 0u64;
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            "--seconds" => {
                seconds = iter
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--seconds needs a number")?
            }
            "--target" => only = Some(iter.next().ok_or("--target needs a name")?.clone()),
            "--min-runs" => {
                min_runs = iter
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--min-runs needs a number")?
            }
            other => {
                return Err(format!(
                    "unknown argument {other} (use --seconds N, --target NAME, --min-runs N)"
                ))
            }
        }
    }
    if let Some(name) = &only {
        if !TARGETS.contains(&name.as_str()) {
            return Err(format!(
                "no fuzz target {name}; targets: {}",
                TARGETS.join(", ")
            ));
        }
    }
    let fuzz_dir = workspace_root().join("platform/vmbus/vmbus-protocol/fuzz");
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("vmbus-fuzz");
    run_checked(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(&fuzz_dir)
            .args(["build", "--release", "--bins", "--target", HOST_TRIPLE])
            .env("CARGO_TARGET_DIR", &target_dir)
            // --target keeps these flags off build scripts and proc macros.
            .env("RUSTFLAGS", COVERAGE_FLAGS),
    )?;
    let mut total_runs = 0u64;
    for target in TARGETS
        .iter()
        .filter(|t| only.as_deref().is_none_or(|o| o == **t))
    {
        let corpus = target_dir.join("corpus").join(target);
        let artifacts = target_dir.join("artifacts").join(target);
        std::fs::create_dir_all(&corpus).map_err(|e| format!("{}: {e}", corpus.display()))?;
        std::fs::create_dir_all(&artifacts).map_err(|e| format!("{}: {e}", artifacts.display()))?;
        let binary = target_dir.join(HOST_TRIPLE).join("release").join(target);
        let output = Command::new(&binary)
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1")
            .arg(&corpus)
            .output()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let log = String::from_utf8_lossy(&output.stderr);
        let runs = log
            .lines()
            .find_map(|line| {
                line.strip_prefix("Done ")?
                    .split(' ')
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or(0);
        if !output.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "fuzz target {target} found a failure after {runs} runs (input in {}):\n{}",
                artifacts.display(),
                tail.join("\n")
            ));
        }
        if runs < min_runs {
            return Err(format!(
                "fuzz target {target} ran only {runs} inputs in {seconds} s (at least {min_runs} expected)"
            ));
        }
        println!(
            "fuzz {target:24} {runs:>12} executions in {seconds} s ({} per second), no finding",
            runs / seconds.max(1)
        );
        total_runs += runs;
    }
    println!("fuzz total: {total_runs} executions without a finding");
    Ok(())
}
