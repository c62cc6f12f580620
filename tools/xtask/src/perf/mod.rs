//! `cargo xtask bench [--smoke] [--long] [--only GROUP[,GROUP]] [--openvmm
//! DIR] [--out DIR]`: every benchmark of the project in one run, then
//! `docs/performance.md` and its plots (`docs/performance/*.svg`).
//!
//! Each benchmark is a step of [`STEPS`] (name, group, command). The run
//! points `VMBUS_BENCH_JSON` at a fresh results file
//! (`target/bench/results.jsonl`); every benchmark appends one JSON record
//! per measured cell (`bench_record::Record`); at the end the run's own
//! line (machine, date, commit, command line, steps and how they ended) is
//! appended and the report is rendered from the file alone, so
//! `cargo xtask bench --render-only FILE [--out DIR]` renders it again.
//!
//! - default: a few minutes; `--long`: more rounds of everything;
//! - `--smoke`: a few iterations of every benchmark, the report written to
//!   `target/bench/smoke/` (never to docs/); `cargo xtask test` runs it and
//!   checks that the report has a table for each group that produced
//!   records;
//! - `--only ring,storage`: the steps of these groups (the others read "not
//!   measured in this run");
//! - `--openvmm DIR`: the ring benchmark with OpenVMM's ring as one more
//!   series (`cargo xtask ring-compare`, which builds it from DIR outside
//!   the repository); it then replaces the plain ring step, whose series it
//!   measures in the same interleaved rounds.
//!
//! A step whose benchmark is not in this tree (a required file is
//! missing) or that needs a flag not given is reported as not measured; a
//! step that fails, or exits successfully without writing a record, is
//! reported as FAILED and makes the command fail after the report is
//! written.

mod plots;
mod report;
mod stats;

use crate::util::{workspace_root, Result};
use bench_record::{Record, RESULTS_ENV};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// How long the benchmarks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Smoke,
    Default,
    Long,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Smoke => "smoke",
            Mode::Default => "default",
            Mode::Long => "long",
        }
    }
}

/// What runs a step.
#[derive(Clone, Copy)]
enum Program {
    /// `cargo ARGS... MODE-ARGS...` (this cargo).
    Cargo,
    /// `xtask ARGS... MODE-ARGS...` (this xtask, another subcommand).
    Xtask,
    /// `xtask ARGS... --openvmm DIR MODE-ARGS...`: only with `--openvmm`.
    XtaskWithOpenVmm,
}

/// One benchmark of the run.
struct Step {
    name: &'static str,
    /// The report section its records mostly go to (`--only` selects by it).
    group: &'static str,
    /// Other groups it writes records to (`--only` selects by these too).
    also: &'static [&'static str],
    /// With `--openvmm` another step measures this one's series too (in
    /// the same interleaved rounds): this one does not run.
    superseded_by_openvmm: bool,
    /// Files (relative to the workspace root) without which the benchmark
    /// is not in this tree.
    requires: &'static [&'static str],
    program: Program,
    args: &'static [&'static str],
    smoke: &'static [&'static str],
    default: &'static [&'static str],
    long: &'static [&'static str],
}

impl Step {
    fn mode_args(&self, mode: Mode) -> &'static [&'static str] {
        match mode {
            Mode::Smoke => self.smoke,
            Mode::Default => self.default,
            Mode::Long => self.long,
        }
    }

    fn command_line(&self, mode: Mode) -> String {
        let program = match self.program {
            Program::Cargo => "cargo",
            Program::Xtask => "cargo xtask",
            Program::XtaskWithOpenVmm => "cargo xtask",
        };
        let mut words = vec![program];
        words.extend(self.args);
        if matches!(self.program, Program::XtaskWithOpenVmm) {
            words.extend(["--openvmm", "DIR"]);
        }
        words.extend(self.mode_args(mode));
        words.join(" ")
    }
}

/// Every benchmark of the project. The default arguments are chosen so the
/// whole run takes a few minutes on a 2-core machine; `--long` takes
/// several times more rounds.
const STEPS: &[Step] = &[
    Step {
        name: "ring (vmbus-ring, in-process and two processes)",
        group: "ring",
        also: &["ring-hosted"],
        superseded_by_openvmm: true,
        requires: &["tools/ring-bench/Cargo.toml"],
        program: Program::Cargo,
        args: &["run", "--release", "-p", "ring-bench", "--"],
        smoke: &["--smoke"],
        default: &[],
        long: &["--long"],
    },
    Step {
        name: "ring against OpenVMM's (every ring series, one interleaved run)",
        group: "ring",
        also: &["ring-hosted"],
        superseded_by_openvmm: false,
        requires: &["tools/xtask/src/ring_compare.rs"],
        program: Program::XtaskWithOpenVmm,
        args: &["ring-compare"],
        smoke: &["--smoke"],
        default: &[],
        long: &["--long"],
    },
    Step {
        name: "channel send shapes (vmbus-channel)",
        group: "channel",
        also: &[],
        superseded_by_openvmm: false,
        requires: &["platform/vmbus/vmbus-channel/benches/send_shapes.rs"],
        program: Program::Cargo,
        args: &[
            "bench",
            "-p",
            "vmbus-channel",
            "--bench",
            "send_shapes",
            "--",
        ],
        smoke: &["--smoke"],
        default: &["--reps", "3", "--mib", "16"],
        long: &["--reps", "9", "--mib", "64"],
    },
    Step {
        name: "hosted IPC (notifications, calls, SPSC queue)",
        group: "ipc",
        also: &[],
        superseded_by_openvmm: false,
        requires: &["tests/harness/benches/hosted_ipc.rs"],
        program: Program::Cargo,
        args: &["bench", "-p", "ipc-harness", "--bench", "hosted_ipc", "--"],
        smoke: &["--smoke"],
        default: &["--rounds", "9"],
        long: &["--rounds", "31"],
    },
    Step {
        name: "block interface (block-queue round trips)",
        group: "storage",
        also: &[],
        superseded_by_openvmm: false,
        requires: &["platform/api/block-queue/benches/round_trip.rs"],
        program: Program::Cargo,
        args: &["bench", "-p", "block-queue", "--bench", "round_trip", "--"],
        smoke: &["--smoke"],
        // Two spinning threads on a busy 2-core machine can fall to 0.1 M
        // requests/s: 500 000 requests keep a round near 10 s.
        default: &["--rounds", "5", "--requests", "500000"],
        long: &["--rounds", "15", "--requests", "2000000"],
    },
    Step {
        name: "storage stack against pread/pwrite (hosted)",
        group: "storage",
        also: &[],
        superseded_by_openvmm: false,
        requires: &["tests/harness/benches/storage.rs"],
        program: Program::Cargo,
        args: &["bench", "-p", "ipc-harness", "--bench", "storage", "--"],
        smoke: &["--smoke"],
        default: &["--rounds", "5", "--scale", "1", "--kills", "3"],
        long: &["--rounds", "11", "--scale", "2", "--kills", "10"],
    },
    Step {
        name: "NIC driver alone (vsc-netvsc against hvsim's NIC)",
        group: "net",
        also: &[],
        superseded_by_openvmm: false,
        requires: &["components/vsc-netvsc/benches/driver.rs"],
        program: Program::Cargo,
        args: &["bench", "-p", "vsc-netvsc", "--bench", "driver", "--"],
        smoke: &["--smoke"],
        default: &["--rounds", "5", "--frames", "50000"],
        long: &["--rounds", "15", "--frames", "200000"],
    },
    Step {
        name: "network end to end against Linux loopback (hosted)",
        group: "net",
        also: &[],
        superseded_by_openvmm: false,
        requires: &["tests/harness/benches/net.rs"],
        program: Program::Cargo,
        args: &["bench", "-p", "ipc-harness", "--bench", "net", "--"],
        smoke: &["--smoke"],
        default: &["--rounds", "5", "--mib", "16", "--round-trips", "1000"],
        long: &["--rounds", "11", "--mib", "64", "--round-trips", "5000"],
    },
    Step {
        name: "terminal rendering (full redraw, one-line change, keystroke)",
        group: "console",
        also: &[],
        superseded_by_openvmm: false,
        requires: &["components/terminal/benches/render.rs"],
        program: Program::Cargo,
        args: &["bench", "-p", "terminal", "--bench", "render", "--"],
        smoke: &["--smoke"],
        default: &["--rounds", "7", "--scale", "10"],
        long: &["--rounds", "15", "--scale", "20"],
    },
    Step {
        name: "console end to end: keystroke to screen, updates per second (hosted)",
        group: "console-hosted",
        also: &[],
        superseded_by_openvmm: false,
        requires: &["tests/harness/benches/console.rs"],
        program: Program::Cargo,
        args: &["bench", "-p", "ipc-harness", "--bench", "console", "--"],
        smoke: &["--smoke"],
        default: &["--rounds", "5"],
        long: &["--rounds", "11", "--keys", "200"],
    },
    // Invocations from the other branches of issue 14 (their ready notes):
    // each reads "not in this tree" until its file is merged.
    Step {
        name: "isolated against monolithic (hosted: IC, storage, net)",
        group: "isolation",
        also: &[],
        superseded_by_openvmm: false,
        requires: &["tools/xtask/src/bench_isolation.rs"],
        program: Program::Xtask,
        args: &["bench-isolation"],
        smoke: &["--smoke"],
        default: &[],
        long: &["--rounds", "15"],
    },
    Step {
        name: "restart of a crashed driver (hosted), signals per packet",
        group: "restart",
        also: &["signals"],
        superseded_by_openvmm: false,
        requires: &[
            "tools/xtask/src/bench_restart.rs",
            "tests/harness/benches/restart.rs",
        ],
        program: Program::Xtask,
        args: &["bench-restart"],
        smoke: &["--smoke"],
        default: &[],
        long: &["--restarts", "300"],
    },
    Step {
        name: "restart of a crashed driver (seL4 in QEMU)",
        group: "restart",
        also: &[],
        superseded_by_openvmm: false,
        requires: &[
            "tools/xtask/src/bench_restart.rs",
            "tests/systems/restart-bench.toml",
        ],
        program: Program::Xtask,
        args: &["bench-restart", "--qemu"],
        smoke: &["--smoke"],
        default: &[],
        long: &[],
    },
    Step {
        name: "boot to all channels open (seL4 in QEMU)",
        group: "boot",
        also: &[],
        superseded_by_openvmm: false,
        requires: &["tools/xtask/src/bench_restart.rs"],
        program: Program::Xtask,
        args: &["bench-boot"],
        smoke: &["--smoke"],
        default: &[],
        long: &["--boots", "30"],
    },
];

/// A cargo step's arguments in `mode`: a smoke run builds with the dev
/// profile (`--release` and `cargo bench`'s optimised profile would build
/// every crate a second time; the tests already built them unoptimised).
fn cargo_args(args: &[&str], mode: Mode) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (index, arg) in args.iter().enumerate() {
        if mode == Mode::Smoke && *arg == "--release" {
            out.extend(["--profile".into(), "dev".into()]);
            continue;
        }
        out.push(arg.to_string());
        if mode == Mode::Smoke && index == 0 && *arg == "bench" {
            out.extend(["--profile".into(), "dev".into()]);
        }
    }
    out
}

/// In a smoke run the benchmarks build the systems they start unoptimised
/// too (bench_record::UNOPTIMISED_ENV).
fn unoptimised_in_smoke(command: &mut Command, mode: Mode) {
    if mode == Mode::Smoke {
        command.env(bench_record::UNOPTIMISED_ENV, "1");
    }
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum StepStatus {
    Measured,
    Failed(String),
    /// Not in this tree, or needs a flag that was not given.
    NotRun(String),
    NotSelected,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepOutcome {
    pub name: String,
    pub group: String,
    pub command: String,
    pub status: StepStatus,
    pub seconds: f64,
}

impl StepOutcome {
    pub fn new(name: &str, group: &str, command: &str, status: StepStatus, seconds: f64) -> Self {
        StepOutcome {
            name: name.into(),
            group: group.into(),
            command: command.into(),
            status,
            seconds,
        }
    }
}

/// The run: what the report heads with. Stored as the results file's
/// last line (`{"run": {...}}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    pub cpu_model: String,
    pub physical_cores: usize,
    pub logical_cpus: usize,
    pub kernel: String,
    pub rustc: String,
    pub date: String,
    pub commit: String,
    pub command: String,
    pub seconds: f64,
    pub mode: String,
    pub steps: Vec<StepOutcome>,
}

#[derive(Serialize, Deserialize)]
struct RunLine {
    run: RunInfo,
}

struct Options {
    mode: Mode,
    only: Option<Vec<String>>,
    openvmm: Option<PathBuf>,
    out: Option<PathBuf>,
    render_only: Option<PathBuf>,
}

const USAGE: &str = "usage: cargo xtask bench [--smoke | --long] [--only GROUP[,GROUP]] [--openvmm DIR] [--out DIR]\n       cargo xtask bench --render-only RESULTS.jsonl [--out DIR]";

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        mode: Mode::Default,
        only: None,
        openvmm: None,
        out: None,
        render_only: None,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .cloned()
                .ok_or_else(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--smoke" if options.mode != Mode::Long => options.mode = Mode::Smoke,
            "--long" if options.mode != Mode::Smoke => options.mode = Mode::Long,
            "--only" => {
                options.only = Some(value()?.split(',').map(|g| g.trim().to_string()).collect())
            }
            "--openvmm" => options.openvmm = Some(PathBuf::from(value()?)),
            "--out" => options.out = Some(PathBuf::from(value()?)),
            "--render-only" => options.render_only = Some(PathBuf::from(value()?)),
            other => return Err(format!("unknown or conflicting argument {other}\n{USAGE}")),
        }
    }
    if let Some(only) = &options.only {
        let known: Vec<&str> = STEPS
            .iter()
            .flat_map(|s| std::iter::once(s.group).chain(s.also.iter().copied()))
            .collect();
        if let Some(unknown) = only.iter().find(|g| !known.contains(&g.as_str())) {
            return Err(format!(
                "no benchmark in group {unknown} (groups: {})",
                dedup(&known).join(", ")
            ));
        }
    }
    Ok(options)
}

fn dedup<'a>(names: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for name in names {
        if !out.contains(name) {
            out.push(name);
        }
    }
    out
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .unwrap_or_else(|_| workspace_root())
            .join(path)
    }
}

fn bench_dir(mode: Mode) -> PathBuf {
    let dir = crate::kernel::target_dir().join("bench");
    if mode == Mode::Smoke {
        dir.join("smoke")
    } else {
        dir
    }
}

pub fn run(args: &[String]) -> Result {
    let options = parse(args)?;
    if let Some(results) = &options.render_only {
        return render_only(results, options.out.as_deref());
    }
    let out = match &options.out {
        Some(out) => absolute(out),
        None if options.mode == Mode::Smoke => bench_dir(Mode::Smoke),
        None => workspace_root().join("docs"),
    };
    let docs = workspace_root().join("docs");
    if options.mode == Mode::Smoke && out.starts_with(&docs) {
        return Err("a smoke run's numbers mean nothing: it never writes to docs/".into());
    }
    let dir = bench_dir(options.mode);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    let results = dir.join("results.jsonl");
    std::fs::write(&results, "").map_err(|e| format!("cannot start {}: {e}", results.display()))?;
    let run = measure(&options, &results, args, STEPS);
    append_run(&results, &run)?;
    let (_, records, bad) = load(&results)?;
    let report = write_report(&out, &run, &records)?;
    println!("results: {}", results.display());
    println!("report:  {}", report.display());
    let mut problems: Vec<String> = run
        .steps
        .iter()
        .filter_map(|s| match &s.status {
            StepStatus::Failed(why) => Some(format!("{} ({why})", s.name)),
            _ => None,
        })
        .collect();
    if !bad.is_empty() {
        problems.push(format!(
            "{} line(s) of {} are not records",
            bad.len(),
            results.display()
        ));
    }
    match check_report_file(&report, &records) {
        Ok(groups) => println!(
            "report: a table for each of the {} group(s) with records ({})",
            groups.len(),
            groups.join(", ")
        ),
        Err(error) => problems.push(error),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("failed: {}", problems.join("; ")))
    }
}

/// The smoke run `cargo xtask test` makes: every benchmark a few
/// iterations; fails if a step failed or the report lacks a table for a
/// group that produced records (`run` checks both).
pub fn smoke_and_check() -> Result {
    run(&["--smoke".to_string()])
}

/// That the report on disk has a table for each group with records;
/// returns those groups.
fn check_report_file(report: &Path, records: &[Record]) -> Result<Vec<String>> {
    let markdown = std::fs::read_to_string(report)
        .map_err(|e| format!("cannot read the report {}: {e}", report.display()))?;
    let mut groups: Vec<String> = Vec::new();
    for record in records {
        if !groups.contains(&record.group) {
            groups.push(record.group.clone());
        }
    }
    if groups.is_empty() {
        return Err("no benchmark wrote a record".into());
    }
    report::check(&markdown, &groups)?;
    Ok(groups)
}

fn measure(options: &Options, results: &Path, args: &[String], table: &[Step]) -> RunInfo {
    let started = Instant::now();
    let root = workspace_root();
    let mut steps = Vec::new();
    for step in table {
        let command = step.command_line(options.mode);
        let outcome =
            |status, seconds| StepOutcome::new(step.name, step.group, &command, status, seconds);
        if options.only.as_ref().is_some_and(|only| {
            !only
                .iter()
                .any(|g| g == step.group || step.also.contains(&g.as_str()))
        }) {
            steps.push(outcome(StepStatus::NotSelected, 0.0));
            continue;
        }
        let comparison_in_tree = STEPS.iter().any(|other| {
            matches!(other.program, Program::XtaskWithOpenVmm)
                && other.requires.iter().all(|p| root.join(p).exists())
        });
        if step.superseded_by_openvmm && options.openvmm.is_some() && comparison_in_tree {
            println!(
                "==> {}: measured by the OpenVMM comparison's rounds",
                step.name
            );
            steps.push(outcome(
                StepStatus::NotRun(
                    "its series are measured by the OpenVMM comparison (--openvmm), in the same interleaved rounds".into(),
                ),
                0.0,
            ));
            continue;
        }
        if let Some(missing) = step.requires.iter().find(|p| !root.join(p).exists()) {
            println!("==> {}: not in this tree ({missing} is missing)", step.name);
            steps.push(outcome(
                StepStatus::NotRun(format!("not in this tree ({missing} is missing)")),
                0.0,
            ));
            continue;
        }
        let mode_args: Vec<String> = step
            .mode_args(options.mode)
            .iter()
            .map(|a| a.to_string())
            .collect();
        println!("==> {}: {command}", step.name);
        let before = count_lines(results);
        let step_started = Instant::now();
        let result = match step.program {
            Program::Cargo => {
                let mut cargo = Command::new(env!("CARGO"));
                cargo
                    .current_dir(&root)
                    .args(cargo_args(step.args, options.mode))
                    .args(&mode_args)
                    .env(RESULTS_ENV, results);
                unoptimised_in_smoke(&mut cargo, options.mode);
                run_step(&mut cargo)
            }
            Program::Xtask => match std::env::current_exe() {
                Ok(xtask) => {
                    let mut command = Command::new(xtask);
                    command
                        .current_dir(&root)
                        .args(step.args)
                        .args(&mode_args)
                        .env(RESULTS_ENV, results);
                    unoptimised_in_smoke(&mut command, options.mode);
                    run_step(&mut command)
                }
                Err(error) => Err(format!("cannot find xtask itself: {error}")),
            },
            Program::XtaskWithOpenVmm => match (&options.openvmm, std::env::current_exe()) {
                (Some(dir), Ok(xtask)) => {
                    let mut command = Command::new(xtask);
                    command
                        .current_dir(&root)
                        .args(step.args)
                        .arg("--openvmm")
                        .arg(absolute(dir))
                        .args(&mode_args)
                        .env(RESULTS_ENV, results);
                    run_step(&mut command)
                }
                (Some(_), Err(error)) => Err(format!("cannot find xtask itself: {error}")),
                (None, _) => {
                    steps.push(outcome(
                        StepStatus::NotRun("needs --openvmm DIR".into()),
                        0.0,
                    ));
                    continue;
                }
            },
        };
        let seconds = step_started.elapsed().as_secs_f64();
        let status = match result {
            Err(error) => StepStatus::Failed(error),
            Ok(()) if count_lines(results) == before => {
                StepStatus::Failed("exited successfully but wrote no record".into())
            }
            Ok(()) => StepStatus::Measured,
        };
        if let StepStatus::Failed(why) = &status {
            eprintln!("xtask bench: step {} FAILED: {why}", step.name);
        }
        steps.push(outcome(status, seconds));
    }
    let (cpu_model, physical_cores, logical_cpus) = machine();
    RunInfo {
        cpu_model,
        physical_cores,
        logical_cpus,
        kernel: kernel(),
        rustc: output_of("rustc", &["--version"]).unwrap_or_else(|| "unknown".into()),
        date: output_of("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "unknown".into()),
        commit: commit(&root),
        command: std::iter::once("cargo xtask bench".to_string())
            .chain(args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" "),
        seconds: started.elapsed().as_secs_f64(),
        mode: options.mode.name().into(),
        steps,
    }
}

/// Runs a step's command; the error is short (the steps table shows it,
/// the command is in its own column).
fn run_step(command: &mut Command) -> Result {
    match command.status() {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(status.to_string()),
        Err(error) => Err(format!("cannot start: {error}")),
    }
}

fn count_lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|text| text.lines().filter(|l| !l.trim().is_empty()).count())
        .unwrap_or(0)
}

fn output_of(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// CPU model, physical cores and logical CPUs from /proc/cpuinfo.
fn machine() -> (String, usize, usize) {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    parse_cpuinfo(&text)
}

fn parse_cpuinfo(text: &str) -> (String, usize, usize) {
    let field = |line: &str, name: &str| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then(|| value.trim().to_string())
    };
    let model = text
        .lines()
        .find_map(|l| field(l, "model name"))
        .unwrap_or_else(|| "unknown CPU".into());
    let logical = text
        .lines()
        .filter(|l| field(l, "processor").is_some())
        .count();
    // A core is a (physical id, core id) pair; without them each logical
    // CPU counts as a core.
    let mut cores: Vec<(String, String)> = Vec::new();
    let mut package = String::new();
    for line in text.lines() {
        if let Some(id) = field(line, "physical id") {
            package = id;
        } else if let Some(core) = field(line, "core id") {
            let pair = (package.clone(), core);
            if !cores.contains(&pair) {
                cores.push(pair);
            }
        }
    }
    let physical = if cores.is_empty() {
        logical
    } else {
        cores.len()
    };
    (model, physical, logical)
}

fn kernel() -> String {
    let read = |name: &str| {
        std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    format!("{} {}", read("ostype"), read("osrelease"))
        .trim()
        .to_string()
}

fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .current_dir(root)
            .args(args)
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{hash} (with uncommitted changes)")
            } else {
                hash
            }
        }
        None => "unknown".into(),
    }
}

fn append_run(results: &Path, run: &RunInfo) -> Result {
    use std::io::Write;
    let line = serde_json::to_string(&RunLine { run: run.clone() }).map_err(|e| e.to_string())?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(results)
        .and_then(|mut file| writeln!(file, "{line}"))
        .map_err(|e| format!("cannot append to {}: {e}", results.display()))
}

/// The results file: its run line (the last, if several), the records and
/// the lines that are neither (each with its number).
fn load(path: &Path) -> Result<(Option<RunInfo>, Vec<Record>, Vec<String>)> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(parse_results(&text))
}

fn parse_results(text: &str) -> (Option<RunInfo>, Vec<Record>, Vec<String>) {
    let (mut run, mut records, mut bad) = (None, Vec::new(), Vec::new());
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if let Ok(line) = serde_json::from_str::<RunLine>(line) {
            run = Some(line.run);
            continue;
        }
        match Record::from_line(line) {
            Ok(record) => records.push(record),
            Err(error) => {
                eprintln!("xtask bench: line {}: {error}", number + 1);
                bad.push(format!("line {}", number + 1));
            }
        }
    }
    (run, records, bad)
}

fn render_only(results: &Path, out: Option<&Path>) -> Result {
    let (run, records, bad) = load(results)?;
    let run = run.unwrap_or_else(|| RunInfo {
        command: format!("(unknown: {} has no run line)", results.display()),
        mode: "default".into(),
        ..RunInfo::default()
    });
    let out = match out {
        Some(out) => absolute(out),
        None if run.mode == "smoke" => bench_dir(Mode::Smoke),
        None => workspace_root().join("docs"),
    };
    let report = write_report(&out, &run, &records)?;
    println!("report: {}", report.display());
    check_report_file(&report, &records)?;
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} line(s) of {} are not records",
            bad.len(),
            results.display()
        ))
    }
}

/// `OUT/performance.md` and `OUT/performance/*.svg` (stale SVGs removed).
fn write_report(out: &Path, run: &RunInfo, records: &[Record]) -> Result<PathBuf> {
    let plots = plots::all(records)?;
    let dir = out.join("performance");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "svg") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    let mut refs = Vec::new();
    for plot in &plots {
        let path = dir.join(&plot.file);
        std::fs::write(&path, &plot.svg)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        refs.push(report::PlotRef {
            group: plot.group.clone(),
            link: format!("performance/{}", plot.file),
            title: plot.title.clone(),
        });
    }
    let markdown = report::render(run, records, &refs);
    let path = out.join("performance.md");
    std::fs::write(&path, markdown).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    #[test]
    fn smoke_builds_with_the_dev_profile() {
        let run = ["run", "--release", "-p", "ring-bench", "--"];
        assert_eq!(
            cargo_args(&run, Mode::Smoke),
            ["run", "--profile", "dev", "-p", "ring-bench", "--"]
        );
        assert_eq!(cargo_args(&run, Mode::Default), run);
        let bench = ["bench", "-p", "block-queue", "--bench", "round_trip", "--"];
        assert_eq!(
            cargo_args(&bench, Mode::Smoke),
            [
                "bench",
                "--profile",
                "dev",
                "-p",
                "block-queue",
                "--bench",
                "round_trip",
                "--"
            ]
        );
        assert_eq!(cargo_args(&bench, Mode::Long), bench);
    }

    use super::*;

    #[test]
    fn every_step_has_arguments_for_each_mode_and_smoke_is_a_flag() {
        for step in STEPS {
            assert!(
                step.smoke.contains(&"--smoke"),
                "{}: a smoke run must pass --smoke",
                step.name
            );
        }
    }

    #[test]
    fn cpuinfo_gives_model_cores_and_logical_cpus() {
        let text = "processor\t: 0\nmodel name\t: Test CPU @ 2GHz\nphysical id\t: 0\ncore id\t\t: 0\n\n\
                    processor\t: 1\nmodel name\t: Test CPU @ 2GHz\nphysical id\t: 0\ncore id\t\t: 0\n\n\
                    processor\t: 2\nmodel name\t: Test CPU @ 2GHz\nphysical id\t: 0\ncore id\t\t: 1\n";
        assert_eq!(parse_cpuinfo(text), ("Test CPU @ 2GHz".into(), 2, 3));
        // No topology lines (some VMs): each logical CPU is a core.
        assert_eq!(
            parse_cpuinfo("processor : 0\nprocessor : 1\n"),
            ("unknown CPU".into(), 2, 2)
        );
    }

    #[test]
    fn the_results_file_holds_records_and_the_run_line() {
        let record = Record::new("ipc", "call", "round trip", "us", false).samples(&[1.0]);
        let run = RunInfo {
            command: "cargo xtask bench".into(),
            ..RunInfo::default()
        };
        let text = format!(
            "{}\nnot json\n{}\n",
            record.to_line(),
            serde_json::to_string(&RunLine { run: run.clone() }).unwrap()
        );
        let (parsed_run, records, bad) = parse_results(&text);
        assert_eq!(parsed_run, Some(run));
        assert_eq!(records, vec![record]);
        assert_eq!(bad, vec!["line 2".to_string()]);
    }

    #[test]
    fn a_report_and_its_plots_render_from_a_results_file() {
        let dir = std::env::temp_dir().join(format!("xtask-perf-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut records = Vec::new();
        for (series, base) in [("ours", Some("memcpy")), ("memcpy", None)] {
            for size in [64.0, 1024.0, 4096.0] {
                let mut r = Record::new("ring", series, "throughput", "GB/s", true)
                    .x(size, "packet size (B)")
                    .samples(&[size / 100.0, size / 90.0]);
                r.baseline = base.map(String::from);
                records.push(r);
            }
        }
        records.push(
            Record::new("restart", "hosted", "restart latency", "ms", false)
                .distribution(&[3.0, 4.0, 5.0, 30.0]),
        );
        let run = RunInfo {
            mode: "smoke".into(),
            steps: vec![StepOutcome::new(
                "ring",
                "ring",
                "cargo run",
                StepStatus::Measured,
                1.0,
            )],
            ..RunInfo::default()
        };
        let mut text: String = records.iter().map(|r| r.to_line() + "\n").collect();
        text.push_str(&serde_json::to_string(&RunLine { run }).unwrap());
        std::fs::create_dir_all(&dir).unwrap();
        let results = dir.join("results.jsonl");
        std::fs::write(&results, text).unwrap();
        // A stale plot from an earlier run goes.
        std::fs::create_dir_all(dir.join("performance")).unwrap();
        std::fs::write(dir.join("performance/old.svg"), "<svg/>").unwrap();

        render_only(&results, Some(&dir)).unwrap();

        let markdown = std::fs::read_to_string(dir.join("performance.md")).unwrap();
        report::check(&markdown, &["ring".into(), "restart".into()]).unwrap();
        assert!(
            markdown.contains(
                "![ring: throughput against packet size (B)](performance/ring-throughput.svg)"
            ),
            "{markdown}"
        );
        assert!(markdown.contains("performance/restart-restart-latency-cdf.svg"));
        let svg = std::fs::read_to_string(dir.join("performance/ring-throughput.svg")).unwrap();
        assert!(svg.contains("ours") && svg.contains("memcpy"));
        assert!(!dir.join("performance/old.svg").exists());
        // The check reads the report back: a section without its table fails.
        let report = dir.join("performance.md");
        assert_eq!(
            check_report_file(&report, &records).unwrap(),
            ["ring", "restart"]
        );
        std::fs::write(&report, markdown.replace("| series |", "| gone |")).unwrap();
        assert!(check_report_file(&report, &records).is_err());
        assert!(check_report_file(&report, &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn steps_that_are_missing_fail_or_write_nothing_are_reported_so() {
        let step = |name, requires, args| Step {
            name,
            group: "ipc",
            also: &[],
            superseded_by_openvmm: false,
            requires,
            program: Program::Cargo,
            args,
            smoke: &["--smoke"],
            default: &[],
            long: &[],
        };
        let table = [
            step("absent", &["no/such/file.rs"], &["--version"]),
            step("fails", &[], &["no-such-cargo-subcommand"]),
            step("silent", &[], &["--version"]),
        ];
        let options = Options {
            mode: Mode::Default,
            only: None,
            openvmm: None,
            out: None,
            render_only: None,
        };
        let results =
            std::env::temp_dir().join(format!("xtask-perf-steps-{}.jsonl", std::process::id()));
        std::fs::write(&results, "").unwrap();
        let run = measure(&options, &results, &[], &table);
        std::fs::remove_file(&results).unwrap();
        let status: Vec<&StepStatus> = run.steps.iter().map(|s| &s.status).collect();
        assert!(
            matches!(status[0], StepStatus::NotRun(why) if why.contains("no/such/file.rs")),
            "{status:?}"
        );
        assert!(matches!(status[1], StepStatus::Failed(_)), "{status:?}");
        assert_eq!(
            status[2],
            &StepStatus::Failed("exited successfully but wrote no record".into())
        );
        assert_eq!(run.command, "cargo xtask bench");
        assert!(run.logical_cpus >= 1 && !run.rustc.is_empty());
    }

    #[test]
    fn arguments_parse_and_unknown_groups_are_refused() {
        let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let options = parse(&args(&["--smoke", "--only", "ipc,storage"])).unwrap();
        assert_eq!(options.mode, Mode::Smoke);
        assert_eq!(
            options.only,
            Some(vec!["ipc".to_string(), "storage".to_string()])
        );
        assert!(parse(&args(&["--only", "nonsense"])).is_err());
        assert!(parse(&args(&["--smoke", "--long"])).is_err());
        assert!(parse(&args(&["--out"])).is_err());
    }
}
