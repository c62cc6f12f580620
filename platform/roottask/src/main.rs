//! The seL4 root task.
//!
//! It receives all authority from the kernel at boot and, from the
//! compiled system description embedded at build time (`layout.bin`, a
//! postcard `SystemLayout`, and one ELF per component package), builds one
//! protection domain per component: its own VSpace (PML4 + ASID), CNode,
//! TCB at the declared priority, IPC buffer, stack and read-only info page;
//! the regions mapped with the declared rights (shared frames, double maps);
//! badged notifications and endpoints for the channels; narrowed IO-port
//! caps and IOAPIC IRQ handlers delivered on the declared channel; a fault
//! endpoint per PD. It then starts them and stays on as the monitor: it
//! receives faults, tells the supervisor, and serves restart (memory reset
//! to the image), stop and power-off requests. See `docs/sel4.md`.
//!
//! Trusts: the kernel, and the embedded description and images (built by
//! our tools; still checked before use so a bad image stops the boot with
//! a message instead of corrupting memory). Requests from PDs are checked
//! against the description (only a supervisor restarts its children; only
//! a PD allowed to power off may). Writes: COM1 (its own log lines), the
//! QEMU isa-debug-exit port, and kernel objects it creates.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
extern crate alloc;

#[cfg_attr(not(target_os = "none"), allow(dead_code))] // the host build only tests it
mod elf;

#[cfg(target_os = "none")]
mod boot;
#[cfg_attr(not(target_os = "none"), allow(dead_code))] // the host build only tests it
mod fault;
#[cfg(target_os = "none")]
mod monitor;
#[cfg(target_os = "none")]
mod objects;
#[cfg(target_os = "none")]
mod system;

#[allow(dead_code)] // consumed only by the seL4 build
mod embedded {
    include!(concat!(env!("OUT_DIR"), "/embedded.rs"));
}

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "roottask runs only on seL4 (it is built for x86_64-unknown-none by `cargo xtask build`); \
         embedded description: {} bytes, {} component images",
        embedded::LAYOUT.len(),
        embedded::ELFS.len()
    );
    std::process::exit(1);
}
