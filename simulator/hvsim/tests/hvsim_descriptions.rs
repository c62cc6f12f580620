//! The VMBus system runs the simulated host as an seL4 PD: the host must
//! map exactly the host-visible regions besides its device memory, and the
//! isolation test's script must parse.
#![forbid(unsafe_code)]

use std::path::PathBuf;

fn workspace_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(name)
}

fn compile(name: &str) -> sysdesc::SystemLayout {
    sysdesc::compile_file(&workspace_file(name)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn the_simulated_host_maps_every_host_visible_region_read_write() {
    let layout = compile("system.toml");
    let host = layout
        .components
        .iter()
        .find(|c| c.simulated_host)
        .expect("a simulated host");
    // Besides, its own device memory: QEMU's VGA framebuffer.
    let (device, host_memory): (Vec<_>, Vec<_>) = host
        .maps
        .iter()
        .inspect(|m| assert!(m.writable && !m.double))
        .map(|m| &layout.regions[m.region as usize])
        .partition(|r| r.physical.is_some());
    let device: Vec<&str> = device.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(device, ["vga_lfb"]);
    let mut mapped: Vec<&str> = host_memory.iter().map(|r| r.name.as_str()).collect();
    let mut visible: Vec<&str> = layout
        .regions
        .iter()
        .filter(|r| r.host_visible)
        .map(|r| r.name.as_str())
        .collect();
    mapped.sort();
    visible.sort();
    assert_eq!(mapped, visible);
    // Synic, hypercall and monitor pages, the reference TSC page; per driver channel (the four ICs,
    // the keyboard and the mouse, storage and its two sub-channels, network
    // and its two, video) its two rings
    // as a control region and a data region each; storage's private buffer; the
    // FAT client's data region (the host reads and writes it: GPA direct);
    // network's receive and send buffers; the web client's data region
    // (transmit buffers named to the host); the video driver's VRAM.
    assert_eq!(
        visible.len(),
        3 + 1 + (4 + 2 + 3 + 3 + 1) * 4 + 1 + 1 + 2 + 1 + 1
    );
}
