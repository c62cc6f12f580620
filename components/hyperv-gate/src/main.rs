//! The `hyperv` PD: on seL4 the gate component ([`component`]); hosted
//! there is no kernel path (the hosted transport serves synic instead), so
//! the binary only says so.
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

#[cfg(target_os = "none")]
mod component;
#[cfg(target_os = "none")]
sel4_runtime::component_main!(component::HypervGate);

#[cfg(not(target_os = "none"))]
fn main() {
    eprintln!(
        "hyperv-gate runs only in the seL4 image (system-hyperv.toml); hosted, synic's hypervisor channel is the hosted transport"
    );
    std::process::exit(2);
}
