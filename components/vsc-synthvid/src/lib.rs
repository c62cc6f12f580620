//! `video`: the synthetic video driver (synthvid VSC) and the
//! `framebuffer` service for its clients.
//!
//! - [`session`]: the protocol as a plain state machine (the start:
//!   version, resolutions, VRAM location, situation; then dirt and the
//!   pointer; the host's feature changes), unit tested without IPC;
//! - [`component`]: the session wired to its channel, its VRAM region
//!   (held by address only: its GPA goes to the host) and its clients,
//!   who draw into VRAM through their own map and tell the driver what
//!   changed (`vmbus_ipc::framebuffer`).
//!
//! Trusts nothing from the host (see [`session`]). Writes its own rings
//! and the console; never VRAM.
#![no_std]
#![forbid(unsafe_code)]
#[cfg(test)]
extern crate std;

pub mod component;
pub mod session;
#[cfg(test)]
mod tests;

pub use component::Video;
