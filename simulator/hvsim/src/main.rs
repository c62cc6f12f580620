//! The `hvsim` binary. Hosted (Linux) it is the host end of the hypervisor
//! transport ([`transport_host`]); on seL4 it is the simulated host as a
//! protection domain ([`component`]).
#![cfg_attr(target_os = "none", no_std, no_main)]
#![forbid(unsafe_code)]

#[cfg(not(target_os = "none"))]
mod transport_host;
#[cfg(not(target_os = "none"))]
fn main() {
    transport_host::main()
}

#[cfg(target_os = "none")]
extern crate alloc;
#[cfg(target_os = "none")]
mod component;
#[cfg(target_os = "none")]
mod ide;
#[cfg(target_os = "none")]
mod nic;
#[cfg(target_os = "none")]
mod qemu_console;
#[cfg(target_os = "none")]
sel4_runtime::component_main!(component::SimulatedHost);
