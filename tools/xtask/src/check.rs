//! `cargo xtask check [FILE]`: validate a system description (default
//! `system.toml`) and print what it declares, or every error with its
//! `file:line:column`.

use crate::util::{workspace_root, Result};
use std::path::PathBuf;

pub fn run(args: &[String]) -> Result {
    let path = args
        .first()
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("system.toml"));
    let layout = sysdesc::compile_file(&path).map_err(|diagnostics| {
        eprint!("{diagnostics}");
        format!("{} has {} error(s)", path.display(), diagnostics.0.len())
    })?;
    println!(
        "{}: {} components, {} regions",
        path.display(),
        layout.components.len(),
        layout.regions.len()
    );
    for component in &layout.components {
        let supervisor = component
            .supervisor
            .map(|s| format!(", supervised by {}", layout.components[s as usize].name))
            .unwrap_or_default();
        println!(
            "  {:<12} priority {:>3}, {} channel ends, {} maps, {} IRQs, {} IO-port ranges{supervisor}",
            component.name,
            component.priority,
            component.channels.len(),
            component.maps.len(),
            component.irqs.len(),
            component.ioports.len()
        );
    }
    Ok(())
}
