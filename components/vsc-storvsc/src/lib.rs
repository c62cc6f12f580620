//! `storage`: the synthetic SCSI driver (storvsc) and the block service
//! for the clients the description grants a disk or a partition.
//!
//! - [`initiator`]: the protocol as a plain state machine (initialization,
//!   discovery, I/O, errors, timeouts), unit tested without IPC;
//! - [`wire`]: its commands and the host's packets as vstor packets
//!   (`vmbus_protocol::storage`), sized by the negotiated version;
//! - [`scsi`]: CDBs, sense and the discovery replies.
#![no_std]
#![forbid(unsafe_code)]
#[cfg(test)]
extern crate std;

pub mod initiator;
pub mod scsi;
pub mod wire;

/// The component: the initiator wired to its channels and block clients.
pub mod component;
pub use component::Storage;
