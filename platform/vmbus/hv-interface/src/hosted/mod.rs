//! The hosted transport (Linux, std): guest physical memory is one shared
//! file mapped by both processes ([`MappedGuestMemory`]), and MSR accesses,
//! hypercalls and interrupts travel as [`crate::wire`] records over a Unix
//! stream socket ([`RecordStream`]). [`HostedHypervisor`] is the guest end.

mod client;
mod memory;
mod stream;

pub use client::{ConnectError, HostedHypervisor};
pub use memory::MappedGuestMemory;
pub use stream::{Record, RecordStream, RecvError};
