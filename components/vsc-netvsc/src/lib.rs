//! `network`: the synthetic NIC driver (netvsc) and the net service for
//! the client the description grants it (`[[net]]`).
//!
//! - [`initiator`]: NVSP and RNDIS as a plain state machine (start,
//!   receive, send, status, keepalive, reset, halt), unit tested without
//!   IPC against a scripted host.
#![no_std]
#![forbid(unsafe_code)]
#[cfg(test)]
extern crate std;

pub mod initiator;

/// The component: the initiator wired to its channels, buffers and client.
pub mod component;
pub use component::Network;
