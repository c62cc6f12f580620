//! `cargo xtask check [FILE]`: validate a system description (default
//! `system.toml`) and print what every component holds (regions with
//! rights, channels with direction and protocol, IRQs, IO ports, whether it
//! can reach the hypervisor), or every error with its `file:line:column`.

use crate::util::{workspace_root, Result};
use std::path::PathBuf;

pub fn run(args: &[String]) -> Result {
    let path = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("system.toml"));
    let description = sysdesc::describe_file(&path).map_err(|diagnostics| {
        eprint!("{diagnostics}");
        format!("{} has {} error(s)", path.display(), diagnostics.0.len())
    })?;
    let layout = &description.layout;
    println!(
        "{}: {} components, {} regions, {} protocols, {} VMBus drivers",
        path.display(),
        layout.components.len(),
        layout.regions.len(),
        description.contracts.protocols.len(),
        description.contracts.drivers.len()
    );
    print!("{}", sysdesc::summary(&description));
    Ok(())
}
