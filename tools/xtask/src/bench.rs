//! `cargo xtask bench-storage [--smoke] [--rounds N] [--scale X] [--kills N]`:
//! the storage benchmark (issue 11, "Numbers"), hosted: the whole isolated
//! stack (block client -> storvsc process -> hvsim process -> file)
//! against pread/pwrite on the same file, interleaved, medians with
//! min-max and the ratio; latency at queue depth 1; restart time; CPU per
//! request (tests/harness/benches/storage.rs). Not a timed test: it prints
//! numbers (docs/storage.md has a run's). `--smoke` is the
//! few-iteration run `cargo xtask test` does so the benchmark keeps
//! compiling and running.
//!
//! `cargo xtask bench-storage --qemu [--disk IMG]`: the second, slower
//! table, in the seL4 image: tests/systems/storage-stress.toml with the
//! guest benchmark component (tests/fixtures/blk-bench) as the block
//! client, LUN 0 being QEMU's IDE disk (IMG, or a blank 160 MiB image made
//! for the run; its contents are overwritten). Prints the component's
//! lines.

use crate::image::{build, ImageSpec};
use crate::qemu::{boot_until, Echo};
use crate::util::{workspace_root, Result};
use std::path::PathBuf;
use std::process::Command;

const QEMU_SYSTEM: &str = "tests/systems/storage-stress.toml";
const QEMU_SCENARIO: &str = "tests/systems/storage-stress.hvsim";
const QEMU_DONE: &str = "blk-bench: done";
/// blk-bench's 128 KiB tests cover 1024 requests' worth of the disk.
const QEMU_DISK_MIB: u64 = 160;

pub fn storage(args: &[String]) -> Result {
    if args.iter().any(|a| a == "--qemu") {
        return storage_qemu(args);
    }
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["bench", "-p", "ipc-harness", "--bench", "storage", "--"])
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo bench: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the storage benchmark failed: {status}"))
    }
}

/// `cargo xtask bench-net [--smoke] [--rounds N] [--mib M] [--round-trips
/// K]`: TCP through the guest's echo port against Linux loopback, and
/// round trips (tests/harness/benches/net.rs).
pub fn net(args: &[String]) -> Result {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["bench", "-p", "ipc-harness", "--bench", "net", "--"])
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo bench: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the network benchmark failed: {status}"))
    }
}

fn storage_qemu(args: &[String]) -> Result {
    crate::setup::run_setup()?;
    let given = args
        .iter()
        .position(|a| a == "--disk")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let disk = match given {
        Some(path) => path,
        None => {
            let path = crate::kernel::target_dir().join("disks").join("bench.img");
            std::fs::create_dir_all(path.parent().expect("in a folder"))
                .map_err(|e| format!("cannot make the disks folder: {e}"))?;
            let file = std::fs::File::create(&path)
                .map_err(|e| format!("cannot make {}: {e}", path.display()))?;
            file.set_len(QEMU_DISK_MIB << 20)
                .map_err(|e| format!("cannot size {}: {e}", path.display()))?;
            path
        }
    };
    let image = build(&ImageSpec::new(QEMU_SYSTEM, Some(QEMU_SCENARIO)))?;
    let until = [QEMU_DONE.to_string()];
    let boot = boot_until(&image, Some(&disk), Echo::Quiet, Some(&until))?;
    println!(
        "storage benchmark in QEMU (seL4 image, LUN 0 = IDE disk {}), {:.1} s:",
        disk.display(),
        boot.elapsed.as_secs_f64()
    );
    for line in boot
        .lines()
        .iter()
        .filter(|l| l.contains("blk-bench:") || l.contains("[storage] LUN") || l.contains("panic"))
    {
        println!("{line}");
    }
    if boot.until_met {
        Ok(())
    } else {
        Err(format!(
            "the guest benchmark did not finish (no `{QEMU_DONE}`)"
        ))
    }
}
