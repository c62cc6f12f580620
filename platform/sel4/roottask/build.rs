//! Embed the system image's inputs into the root task.
//!
//! `cargo xtask build` sets `ROOTTASK_IMAGE_DIR` to a folder holding
//! `layout.bin` (the postcard-encoded `SystemLayout`) and one ELF per
//! component package, named after the package. Without it (a plain
//! workspace build) nothing is embedded and the root task reports that.
//! Reads only that folder, `ROOTTASK_AUDIT_TEST_GRANT` (the capability
//! audit's negative test) and `ROOTTASK_FAULT_INJECTION` (tests that crash
//! a PD on the simulated host's request); writes `$OUT_DIR/embedded.rs`.

use std::fmt::Write as _;
use std::path::PathBuf;

/// The capability audit's negative test: `ROOTTASK_AUDIT_TEST_GRANT` set to
/// one of these makes the root task grant one extra cap, frame or IO port,
/// point a notify cap at the wrong object, badge a monitor cap as another
/// PD, give a fault cap the read right, bind a vector IRQ to the wrong
/// notification or map RAM in place of a device region's first page
/// (`system.rs`), which the audit must refuse.
const AUDIT_TEST_GRANTS: &[&str] = &[
    "extra-cap",
    "extra-frame",
    "wider-ioport",
    "wrong-notify",
    "wrong-badge",
    "readable-monitor",
    "wrong-irq-end",
    "device-in-ram",
];

fn main() {
    println!("cargo:rerun-if-env-changed=ROOTTASK_AUDIT_TEST_GRANT");
    println!(
        "cargo:rustc-check-cfg=cfg(roottask_audit_test, values(\"{}\"))",
        AUDIT_TEST_GRANTS.join("\", \"")
    );
    match std::env::var("ROOTTASK_AUDIT_TEST_GRANT").as_deref() {
        Ok("") | Err(_) => {}
        Ok(grant) if AUDIT_TEST_GRANTS.contains(&grant) => {
            println!("cargo:rustc-cfg=roottask_audit_test=\"{grant}\"");
        }
        Ok(other) => panic!("ROOTTASK_AUDIT_TEST_GRANT={other}: not one of {AUDIT_TEST_GRANTS:?}"),
    }
    // Fault injection for tests (`MonitorRequest::InjectFault`): set by
    // `cargo xtask` for a host scenario with `crash_after_heartbeats`.
    println!("cargo:rerun-if-env-changed=ROOTTASK_FAULT_INJECTION");
    println!("cargo:rustc-check-cfg=cfg(roottask_fault_injection)");
    if std::env::var("ROOTTASK_FAULT_INJECTION").as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=roottask_fault_injection");
    }
    println!("cargo:rerun-if-env-changed=ROOTTASK_IMAGE_DIR");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("embedded.rs");
    let mut code = String::new();
    match std::env::var_os("ROOTTASK_IMAGE_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            // The folder's listing (packages added or removed) counts too.
            println!("cargo:rerun-if-changed={}", dir.display());
            let layout = dir.join("layout.bin");
            println!("cargo:rerun-if-changed={}", layout.display());
            writeln!(
                code,
                "pub static LAYOUT: &[u8] = include_bytes!({:?});",
                layout.display().to_string()
            )
            .unwrap();
            writeln!(code, "pub static ELFS: &[(&str, &[u8])] = &[").unwrap();
            let mut entries: Vec<_> = std::fs::read_dir(&dir)
                .expect("ROOTTASK_IMAGE_DIR is not readable")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "elf"))
                .collect();
            entries.sort();
            for path in entries {
                println!("cargo:rerun-if-changed={}", path.display());
                let package = path.file_stem().unwrap().to_string_lossy().to_string();
                writeln!(
                    code,
                    "    ({package:?}, include_bytes!({:?})),",
                    path.display().to_string()
                )
                .unwrap();
            }
            writeln!(code, "];").unwrap();
        }
        None => {
            code.push_str(
                "pub static LAYOUT: &[u8] = &[];\npub static ELFS: &[(&str, &[u8])] = &[];\n",
            );
        }
    }
    std::fs::write(out, code).unwrap();
}
