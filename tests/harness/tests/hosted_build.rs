//! The hosted build: every description is built in one shared cargo
//! target folder and its binaries copied into the description's own
//! folder (`hosted_runtime::build_components`, docs/hosted.md). A
//! component shared by two systems is compiled with each system's
//! identifiers, and building one system must never change the programs
//! another system starts.
#![forbid(unsafe_code)]

use hosted_runtime::build_components;
use ipc_harness::workspace_root;
use std::path::{Path, PathBuf};

/// Build `package` for `description`: the binary's path and its bytes.
fn build(description: &str, package: &str) -> (PathBuf, Vec<u8>) {
    let root = workspace_root();
    let dir = build_components(&root, Path::new(description), &[package.to_string()], false)
        .unwrap_or_else(|e| panic!("building {package} for {description}: {e}"));
    let own = Path::new(Path::new(description).file_stem().unwrap()).join("debug");
    assert!(
        dir.ends_with(&own),
        "{description}'s binaries are in its own folder: {}",
        dir.display()
    );
    let binary = dir.join(package);
    let bytes = std::fs::read(&binary).expect("the binary was copied");
    (binary, bytes)
}

#[test]
fn a_shared_component_keeps_each_systems_identifiers_whatever_was_built_last() {
    // The console serves every component of its system: its channel
    // identifiers differ between the demonstration and the VMBus system.
    let (demo_binary, demo) = build("tests/systems/demo.toml", "console");
    let (system_binary, system) = build("system.toml", "console");
    assert_ne!(demo, system, "each system's own identifiers");
    // What the demonstration would start is unchanged by system.toml's
    // build, and the other way round.
    assert_eq!(std::fs::read(&demo_binary).unwrap(), demo);
    assert_eq!(build("tests/systems/demo.toml", "console").1, demo);
    assert_eq!(std::fs::read(&system_binary).unwrap(), system);
    assert_eq!(build("system.toml", "console").1, system);
    assert_eq!(std::fs::read(&demo_binary).unwrap(), demo);
}
