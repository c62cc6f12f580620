//! The descriptions that run the simulated host as an seL4 PD: the
//! isolation-test variant must stay the same system as `vmbus.toml` (only
//! hvsim's script differs, from its `.hvsim` file), and the host must map
//! exactly the host-visible regions besides its own maps.

use std::path::PathBuf;

fn compile(name: &str) -> sysdesc::SystemLayout {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/systems")
        .join(name);
    sysdesc::compile_file(&path).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_isolation_variant_is_the_same_system() {
    assert_eq!(compile("vmbus.toml"), compile("vmbus-kvp-fault.toml"));
}

#[test]
fn the_simulated_host_maps_every_host_visible_region_read_write() {
    let layout = compile("vmbus.toml");
    let host = layout
        .components
        .iter()
        .find(|c| c.simulated_host)
        .expect("a simulated host");
    let mut mapped: Vec<&str> = host
        .maps
        .iter()
        .inspect(|m| assert!(m.writable && !m.double))
        .map(|m| layout.regions[m.region as usize].name.as_str())
        .collect();
    let mut visible: Vec<&str> = layout
        .regions
        .iter()
        .filter(|r| r.host_visible)
        .map(|r| r.name.as_str())
        .collect();
    mapped.sort();
    visible.sort();
    assert_eq!(mapped, visible);
    assert_eq!(visible.len(), 7);
}
