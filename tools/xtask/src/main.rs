//! `cargo xtask`: the project's one entry point.
//!
//! - `cargo xtask run`    : build the seL4 image and boot it in QEMU, console
//!   on the terminal (`--system FILE`, `--host-script FILE`, `--disk IMG`:
//!   a raw disk image for the simulated host's disk; default
//!   `target/disks/demo.img`; `--vnc`: QEMU's display on a VNC server on
//!   127.0.0.1)
//! - `cargo xtask test`   : every test: unit, description-error goldens,
//!   property tests, hosted component tests and the QEMU boot tests
//! - `cargo xtask build`  : build the bootable seL4 image from `system.toml`
//! - `cargo xtask boot-test`: the QEMU boot tests only
//! - `cargo xtask soak [--boots N]`: boot the VMBus system N times (200) and
//!   count kernel exceptions and failures; QEMU's CPU use while idle
//! - `cargo xtask hosted` : run the same system as Linux processes
//! - `cargo xtask disk IMG [--size-mib N] [FILE...]`: make a FAT test disk
//!   image (MBR, partition 1) for `--disk`
//! - `cargo xtask image --hyperv [--system FILE] [--out PATH] [--size-mib N]`:
//!   a fixed VHD (GRUB, seL4, the root task) that Hyper-V generation 1 VMs
//!   and Azure boot (`docs/hyperv-image.md`)
//! - `cargo xtask check [FILE]`: validate a system description
//! - `cargo xtask fuzz`   : fuzz the protocol parsers
//! - `cargo xtask bench [--smoke] [--long] [--only GROUP[,GROUP]] [--openvmm
//!   DIR] [--out DIR]`: every benchmark, then `docs/performance.md` with its
//!   tables and SVG plots (`--render-only RESULTS.jsonl`: the report again
//!   from a saved results file)
//! - `cargo xtask bench-storage [--smoke]`: the storage benchmark (hosted:
//!   the isolated stack against pread/pwrite on the same file)
//! - `cargo xtask bench-net [--smoke]`: the network benchmark (hosted: TCP
//!   through the guest's echo port against Linux loopback; round trips)
//! - `cargo xtask bench-restart [--smoke] [--restarts N] [--qemu]`: a
//!   crashed driver serving again, 100 restarts (hosted: storvsc killed
//!   under QD32 writes, and that stream's signals per packet; `--qemu`:
//!   kvp faulted by the monitor in the seL4 image)
//! - `cargo xtask bench-boot [--smoke] [--boots N]`: guest start to every
//!   offered channel open, in guest time, over N boots in QEMU
//! - `cargo xtask ring-compare --openvmm DIR [--smoke] [--rounds N] ...`:
//!   the ring benchmark with OpenVMM's ring (DIR: a clone's
//!   `vm/devices/vmbus/vmbus_ring`, never part of this repository) as one
//!   more series (`cargo xtask bench --openvmm DIR` runs the same)
//! - `cargo xtask bench-isolation [--smoke] [--rounds N] [--only ic|storage|net]`:
//!   isolated (a process per component) against monolithic (one process,
//!   components as threads), hosted, interleaved
//! - `cargo xtask setup`  : install what the build needs (QEMU, xmllint,
//!   the kernel build's Python packages, the Rust target); `run`, `test`,
//!   `build` and `boot-test` do this first
//!
//! Each subcommand lives in its own module.
#![forbid(unsafe_code)]

mod bench;
// `bench-net --driver`: the NIC driver alone (the rest of `bench-net` is
// the end-to-end benchmark).
mod bench_driver;
// `bench-restart`, `bench-boot`.
mod bench_isolation;
mod bench_restart;
mod boot_media;
mod check;
mod console;
mod disk;
mod fuzz;
mod hosted;
mod image;
mod kernel;
mod net;
// `cargo xtask bench`: every benchmark, then docs/performance.md.
mod perf;
mod qemu;
// `bench --openvmm DIR` (owned by the bench command) and `ring-compare`.
mod ring_compare;
mod setup;
mod test;
#[allow(dead_code)] // shared helpers; not every subcommand uses each
mod util;

use std::process::ExitCode;

fn usage() -> ExitCode {
    eprintln!(
        "usage: cargo xtask <run|test|build|image|boot-test|soak|hosted|disk|bench|bench-storage|bench-net|bench-restart|bench-boot|bench-isolation|ring-compare|check|fuzz|setup> [args]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(command) = args.first() else {
        return usage();
    };
    let rest = &args[1..];
    let result = match command.as_str() {
        "setup" => setup::run(rest),
        "bench-net" if rest.first().is_some_and(|a| a == "--driver") => {
            bench_driver::run(&rest[1..])
        }
        "check" => check::run(rest),
        "fuzz" => fuzz::run(rest),
        "test" => test::run(rest),
        // The image needs QEMU, xmllint, the kernel build's Python packages
        // and the Rust target: install what is missing first (quick when
        // everything is there).
        "build" => setup::run_setup().and_then(|()| image::run(rest)),
        "image" => setup::run_setup().and_then(|()| boot_media::run(rest)),
        "run" => setup::run_setup().and_then(|()| qemu::run(rest)),
        "boot-test" => setup::run_setup().and_then(|()| qemu::boot_test(rest)),
        "soak" => setup::run_setup().and_then(|()| qemu::soak(rest)),
        "hosted" => hosted::run(rest),
        "bench" => perf::run(rest),
        "bench-storage" => bench::storage(rest),
        "bench-net" => bench::net(rest),
        "bench-restart" => bench_restart::restart(rest),
        "bench-boot" => bench_restart::boot(rest),
        "bench-isolation" => bench_isolation::run(rest),
        "disk" => disk::run(rest),
        "ring-compare" => ring_compare::command(rest),
        _ => return usage(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("xtask {command}: error: {error}");
            ExitCode::FAILURE
        }
    }
}
