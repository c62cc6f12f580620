//! The ring benchmark with OpenVMM's ring as one more contender:
//! `cargo xtask bench --openvmm DIR` (and, on its own, `cargo xtask
//! ring-compare --openvmm DIR [ring-bench args]`).
//!
//! OpenVMM's code is never part of this repository (public code of any
//! licence is reference only here). The user names a checkout's
//! `vm/devices/vmbus/vmbus_ring` as DIR; this writes a small crate under
//! `target/ring-compare/` that is a workspace of its own (so it is not one
//! of ours), depending on our `tools/ring-bench` and on DIR (with
//! `default-features = false`: no guestmem), with the adapter
//! `tools/ring-bench/openvmm/adapter.rs` (ours) as a module. It builds it
//! in release, in its own target folder, and runs it with the benchmark's
//! arguments: every ring-bench series, plus `openvmm`, interleaved in one
//! run.

use crate::kernel::target_dir;
use crate::util::{run_checked, workspace_root, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The generated crate's folder under the target folder.
const CRATE_DIR: &str = "ring-compare";

/// Build and run the comparison. `bench_args` go to the benchmark binary
/// (`--smoke`, `--rounds N`, `--only ring`, `--sizes ...`);
/// `VMBUS_BENCH_JSON` passes through, so the `openvmm` records land with
/// the others.
pub fn run(openvmm_dir: &Path, bench_args: &[String]) -> Result {
    let openvmm_dir = check_openvmm_dir(openvmm_dir)?;
    let root = workspace_root();
    let crate_dir = target_dir().join(CRATE_DIR);
    write_crate(&root, &crate_dir, &openvmm_dir)?;
    let build_target = crate_dir.join("target");
    run_checked(
        Command::new(env!("CARGO"))
            .current_dir(&crate_dir)
            .env("CARGO_TARGET_DIR", &build_target)
            .args(["build", "--release", "--manifest-path"])
            .arg(crate_dir.join("Cargo.toml")),
    )?;
    let binary = build_target.join("release").join("ring-compare");
    println!(
        "ring-compare: our ring against OpenVMM's vmbus_ring from {} ({})",
        openvmm_dir.display(),
        checkout_commit(&openvmm_dir)
    );
    run_checked(Command::new(&binary).args(bench_args))
}

/// `cargo xtask ring-compare --openvmm DIR [ring-bench args]`.
pub fn command(args: &[String]) -> Result {
    let (dir, rest) = split_openvmm_arg(args)?;
    match dir {
        Some(dir) => run(&dir, &rest),
        None => Err(
            "usage: cargo xtask ring-compare --openvmm OPENVMM/vm/devices/vmbus/vmbus_ring [--smoke] [--rounds N] [--only ring|ring-hosted] [--sizes 64,256,...]"
                .into(),
        ),
    }
}

/// Take `--openvmm DIR` (or `--openvmm=DIR`) out of `args`.
pub fn split_openvmm_arg(args: &[String]) -> Result<(Option<PathBuf>, Vec<String>)> {
    let mut dir = None;
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        if arg == "--openvmm" {
            let value = args
                .next()
                .ok_or("--openvmm needs a folder: a clone's vm/devices/vmbus/vmbus_ring")?;
            dir = Some(PathBuf::from(value));
        } else if let Some(value) = arg.strip_prefix("--openvmm=") {
            dir = Some(PathBuf::from(value));
        } else {
            rest.push(arg.clone());
        }
    }
    Ok((dir, rest))
}

/// The commit DIR is checked out at, for the record.
fn checkout_commit(dir: &Path) -> String {
    Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map_or("not a git checkout".into(), |commit| {
            format!("commit {}", commit.trim())
        })
}

/// DIR must be OpenVMM's `vmbus_ring` crate; returns it absolute.
fn check_openvmm_dir(dir: &Path) -> Result<PathBuf> {
    let dir = dir.canonicalize().map_err(|e| {
        format!(
            "--openvmm {}: {e} (expected a clone's vm/devices/vmbus/vmbus_ring)",
            dir.display()
        )
    })?;
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("--openvmm: cannot read {}: {e}", manifest.display()))?;
    let names_vmbus_ring = text
        .lines()
        .any(|line| line.replace(' ', "") == "name=\"vmbus_ring\"");
    if !names_vmbus_ring {
        return Err(format!(
            "--openvmm: {} is not OpenVMM's vmbus_ring crate (expected a clone's vm/devices/vmbus/vmbus_ring)",
            manifest.display()
        ));
    }
    Ok(dir)
}

/// Write the generated crate. Our workspace's lock file seeds its own, so
/// the shared dependencies resolve to the versions our build uses (and
/// nothing needs the network); our release profile is copied so `ours`
/// is compiled as in the plain ring benchmark.
fn write_crate(root: &Path, crate_dir: &Path, openvmm_dir: &Path) -> Result {
    let src = crate_dir.join("src");
    std::fs::create_dir_all(&src).map_err(|e| format!("cannot make {}: {e}", src.display()))?;
    let root_manifest = std::fs::read_to_string(root.join("Cargo.toml"))
        .map_err(|e| format!("cannot read the workspace's Cargo.toml: {e}"))?;
    let manifest = generated_manifest(root, openvmm_dir, &release_profile(&root_manifest));
    let main = generated_main(&root.join("tools/ring-bench/openvmm/adapter.rs"));
    write(&crate_dir.join("Cargo.toml"), &manifest)?;
    write(&src.join("main.rs"), &main)?;
    std::fs::copy(root.join("Cargo.lock"), crate_dir.join("Cargo.lock"))
        .map_err(|e| format!("cannot seed the lock file: {e}"))?;
    Ok(())
}

fn write(path: &Path, text: &str) -> Result {
    std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A TOML basic string holding `path`.
fn toml_path(path: &Path) -> String {
    let text = path.display().to_string();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn generated_manifest(root: &Path, openvmm_dir: &Path, release_profile: &str) -> String {
    format!(
        r#"# Generated by cargo xtask (tools/xtask/src/ring_compare.rs); rewritten on
# every run. A workspace of its own: not part of the project's workspace.
[package]
name = "ring-compare"
version = "0.0.0"
edition = "2021"
publish = false

[workspace]

[dependencies]
ring-bench = {{ path = {ring_bench} }}
vmbus-ring = {{ path = {ours}, features = ["std"] }}
openvmm_ring = {{ package = "vmbus_ring", path = {openvmm}, default-features = false }}
zerocopy = "0.8"

{release_profile}"#,
        ring_bench = toml_path(&root.join("tools/ring-bench")),
        ours = toml_path(&root.join("platform/vmbus/vmbus-ring")),
        openvmm = toml_path(openvmm_dir),
    )
}

fn generated_main(adapter: &Path) -> String {
    format!(
        r#"// Generated by cargo xtask (tools/xtask/src/ring_compare.rs).
#[path = {adapter}]
mod adapter;

fn main() {{
    ring_bench::main_with(vec![Box::new(adapter::OpenVmmRing)]);
}}
"#,
        adapter = toml_path(adapter),
    )
}

/// The `[profile.release]` table of our workspace manifest, verbatim.
fn release_profile(manifest: &str) -> String {
    let mut table = String::new();
    let mut inside = false;
    for line in manifest.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') {
            inside = trimmed == "[profile.release]";
        }
        if inside {
            table.push_str(line);
            table.push('\n');
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_release_profile_is_copied_and_nothing_else() {
        let manifest = "[workspace]\nmembers = []\n\n[profile.release]\npanic = \"abort\"\nopt-level = \"s\"\n\n[profile.bench]\nopt-level = 3\n";
        assert_eq!(
            release_profile(manifest),
            "[profile.release]\npanic = \"abort\"\nopt-level = \"s\"\n\n"
        );
    }

    #[test]
    fn the_openvmm_folder_is_taken_out_of_the_arguments() {
        let args: Vec<String> = ["--smoke", "--openvmm", "/x/vmbus_ring", "--rounds", "3"]
            .map(String::from)
            .to_vec();
        let (dir, rest) = split_openvmm_arg(&args).unwrap();
        assert_eq!(dir, Some(PathBuf::from("/x/vmbus_ring")));
        assert_eq!(rest, ["--smoke", "--rounds", "3"]);
        let (dir, _) = split_openvmm_arg(&["--openvmm=/y".to_string()]).unwrap();
        assert_eq!(dir, Some(PathBuf::from("/y")));
        assert!(split_openvmm_arg(&["--openvmm".to_string()]).is_err());
    }

    #[test]
    fn a_folder_that_is_not_openvmms_vmbus_ring_is_refused() {
        // Our own ring crate is named vmbus-ring, not vmbus_ring.
        let ours = workspace_root().join("platform/vmbus/vmbus-ring");
        assert!(check_openvmm_dir(&ours).is_err());
        assert!(check_openvmm_dir(Path::new("/nonexistent/vmbus_ring")).is_err());
    }

    #[test]
    fn the_generated_crate_names_both_rings_and_the_adapter() {
        let root = Path::new("/repo");
        let manifest = generated_manifest(root, Path::new("/ovmm/vmbus_ring"), "");
        assert!(manifest.contains("\n[workspace]\n"));
        assert!(manifest.contains(
            "openvmm_ring = { package = \"vmbus_ring\", path = \"/ovmm/vmbus_ring\", default-features = false }"
        ));
        assert!(manifest.contains("ring-bench = { path = \"/repo/tools/ring-bench\" }"));
        let main = generated_main(&root.join("tools/ring-bench/openvmm/adapter.rs"));
        assert!(main.contains("#[path = \"/repo/tools/ring-bench/openvmm/adapter.rs\"]"));
        assert!(main.contains("main_with(vec![Box::new(adapter::OpenVmmRing)])"));
    }
}
