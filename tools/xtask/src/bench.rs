//! `cargo xtask bench-storage [--smoke] [--rounds N] [--scale X] [--kills N]`:
//! the storage benchmark (issue 11, "Numbers"), hosted: the whole isolated
//! stack (block client -> storvsc process -> hvsim process -> file)
//! against pread/pwrite on the same file, interleaved, medians with
//! min-max and the ratio; latency at queue depth 1; restart time; CPU per
//! request (tests/harness/benches/storage.rs). Not a timed test: it prints
//! numbers (docs/storage.md has a run's). `--smoke` is the
//! few-iteration run `cargo xtask test` does so the benchmark keeps
//! compiling and running.

use crate::util::{workspace_root, Result};
use std::process::Command;

pub fn storage(args: &[String]) -> Result {
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
