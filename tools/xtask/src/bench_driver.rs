//! `cargo xtask bench-net --driver [--smoke] [--rounds N] [--frames N]`:
//! the NIC driver alone (vsc-netvsc's initiator with real rings against
//! hvsim's NIC host in one process; components/vsc-netvsc/benches/driver.rs),
//! frames per second at 64 bytes and throughput at 1500 bytes both ways,
//! against a memcpy of the same bytes interleaved in the same run.
//! docs/network.md has a run's numbers.

use crate::util::{workspace_root, Result};
use std::process::Command;

pub fn run(args: &[String]) -> Result {
    let status = Command::new(env!("CARGO"))
        .current_dir(workspace_root())
        .args(["bench", "-p", "vsc-netvsc", "--bench", "driver", "--"])
        .args(args)
        .status()
        .map_err(|e| format!("cannot run cargo bench: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("the driver benchmark failed: {status}"))
    }
}
