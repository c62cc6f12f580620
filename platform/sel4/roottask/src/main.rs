//! The seL4 root task.
//!
//! It receives all authority from the kernel at boot, prints what CPUID
//! says about the hypervisor (and refuses a Hyper-V image on a machine
//! without Hyper-V: `detect`) and, from the
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

extern crate alloc;

#[cfg_attr(not(target_os = "none"), allow(dead_code))] // the host build only tests it
mod audit;
#[cfg(target_os = "none")]
mod audit_probe;
#[cfg_attr(not(target_os = "none"), allow(dead_code))] // the host build only tests it
mod elf;

#[cfg(target_os = "none")]
mod boot;
#[cfg_attr(not(target_os = "none"), allow(dead_code))] // the host build only tests it
mod detect;
#[cfg_attr(not(target_os = "none"), allow(dead_code))] // the host build only tests it
mod device;
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

#[cfg(test)]
mod tests {
    /// The root task's sources, by file name.
    const SOURCES: &[(&str, &str)] = &[
        ("audit.rs", include_str!("audit.rs")),
        ("audit_probe.rs", include_str!("audit_probe.rs")),
        ("boot.rs", include_str!("boot.rs")),
        ("detect.rs", include_str!("detect.rs")),
        ("device.rs", include_str!("device.rs")),
        ("elf.rs", include_str!("elf.rs")),
        ("fault.rs", include_str!("fault.rs")),
        ("main.rs", include_str!("main.rs")),
        ("monitor.rs", include_str!("monitor.rs")),
        ("objects.rs", include_str!("objects.rs")),
        ("system.rs", include_str!("system.rs")),
    ];

    fn count(file: &str, needle: &str) -> usize {
        let (_, text) = SOURCES.iter().find(|(name, _)| *name == file).unwrap();
        text.matches(needle).count()
    }

    /// The frame audit trusts `System::map_into_pd`'s record to hold every
    /// mapping into a PD. That holds only while the kernel's page map is
    /// called in one place (`Allocator::map_page_with_attributes`, which
    /// `Allocator::map_page` calls) and those are called only from
    /// `map_into_pd` and for the root task's own scratch page.
    #[test]
    fn every_page_mapping_goes_through_the_choke_point() {
        let page_map = concat!("sys::", "page_map");
        let map_page = concat!(".", "map_page");
        for (file, _) in SOURCES {
            let expected_page_map = usize::from(*file == "objects.rs");
            assert_eq!(
                count(file, page_map),
                expected_page_map,
                "{page_map} in {file}"
            );
            // objects.rs: `map_page` delegating to `map_page_with_attributes`.
            let expected_map_page = match *file {
                "system.rs" => 2,
                "objects.rs" => 1,
                _ => 0,
            };
            assert_eq!(
                count(file, map_page),
                expected_map_page,
                "{map_page} in {file}"
            );
        }
        let (_, system) = SOURCES
            .iter()
            .find(|(name, _)| *name == "system.rs")
            .unwrap();
        let scratch = concat!(
            "map_page(\n            frame,\n            initial_cap::",
            "INIT_THREAD_VSPACE"
        );
        let recorded = concat!(
            "map_page_with_attributes(frame, vspace, vaddr, rights, attributes)?;\n        let paddr = ",
            "sys::page_get_address"
        );
        assert!(system.contains(scratch), "the scratch mapping moved");
        assert!(system.contains(recorded), "map_into_pd no longer records");
    }
}
