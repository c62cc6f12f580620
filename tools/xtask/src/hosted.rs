//! `cargo xtask hosted [path/to/system.toml] [--release]`: run a system as
//! Linux processes on the hosted runtime (`platform/hosted-runtime`).
//!
//! Validates the description (errors with file:line:col), builds each
//! component's host binary with that description's identifiers, starts
//! every component as its own process with its output prefixed by its
//! name (a `simulated_host` component runs as the host process on the
//! hypervisor transport, bridged to its channels), reports faults to
//! supervisors, and exits with the code a component powers the system off
//! with (1 if nothing is left running).

use crate::util::{workspace_root, Result};
use hosted_runtime::{build_components, LaunchOptions, System};
use std::path::PathBuf;

pub fn run(args: &[String]) -> Result {
    let root = workspace_root();
    let mut release = false;
    let mut description: Option<PathBuf> = None;
    for arg in args {
        match arg.as_str() {
            "--release" => release = true,
            flag if flag.starts_with('-') => {
                return Err(format!(
                    "unknown option {flag}; usage: cargo xtask hosted [path/to/system.toml] [--release]"
                ))
            }
            path => description = Some(PathBuf::from(path)),
        }
    }
    let description = match description {
        Some(path) if path.is_absolute() => path,
        Some(path) => std::env::current_dir()
            .map_err(|e| format!("no current folder: {e}"))?
            .join(path),
        None => root.join("system.toml"),
    };
    let layout = sysdesc::compile_file(&description).map_err(|d| d.to_string())?;
    // Every component's package, and the simulated host's (it runs as its
    // own process on the hypervisor transport, bridged to its channels).
    let packages: Vec<String> = layout
        .components
        .iter()
        .map(|c| c.package.clone())
        .collect();
    let host = layout.components.iter().find(|c| c.simulated_host);
    println!(
        "[xtask] building {} component(s) for the host",
        packages.len()
    );
    let binaries = build_components(&root, &description, &packages, release)
        .map_err(|e| format!("build failed: {e}"))?;
    let mut options = LaunchOptions::new(&binaries);
    options.simulated_host = host.map(|c| binaries.join(&c.package));
    println!("[xtask] starting {}", description.display());
    let system =
        System::launch(layout, options).map_err(|e| format!("cannot start the system: {e}"))?;
    let code = system.wait();
    drop(system);
    println!("[xtask] the system ended with code {code}");
    if code == 0 {
        Ok(())
    } else {
        std::process::exit(i32::from(code))
    }
}
