//! `vmbus-ring`: VMBus ring buffers for both ends of a channel (our guest
//! components and the simulated host), generic over the shared memory
//! ([`RingMemory`]: component regions, single- or double-mapped, or
//! in-process memory with the `std` feature).
//!
//! Trusts nothing in the shared memory: the peer's index is validated on
//! every load (below the data size, a multiple of 8) and the validated value
//! is kept until it runs out (see `ring`); our own index lives in
//! private memory and is only stored; packets are copied into the caller's
//! private buffer and validated there (`vmbus_protocol::packet::parse_packet`).
//! Writes only the ring it is given: packets and our own index, the
//! interrupt mask (reader), pending_send_sz and feature_bits (writer).
//!
//! Signalling follows the protocol: the writer signals only on empty ->
//! non-empty with the reader's interrupt mask clear (once per publication:
//! a batch of packets is published at once with `begin_batch`/`publish`); the reader signals only
//! when a batch makes free space cross the writer's pending_send_sz.

#![no_std]
// `unsafe` lives only in the memory layer.
#![deny(unsafe_code)]
#[cfg(any(feature = "std", loom))]
extern crate std;

#[allow(unsafe_code)]
pub mod memory;
pub mod ring;
pub mod sync;
pub mod transactions;

#[cfg(loom)]
pub use memory::LoomRingMemory;
#[cfg(not(loom))]
pub use memory::RegionRingMemory;
#[cfg(all(feature = "std", not(loom)))]
pub use memory::{DoubleMappedRingMemory, HeapRingMemory};
pub use memory::{MemoryError, RingMemory};
pub use ring::{reset_control, GpaRange, RingError, RingReader, RingWriter, Signal};
pub use transactions::{TransactionError, TransactionTable};

#[cfg(all(test, not(loom)))]
mod tests;
