//! `ic-channel`: the part every integration-component VSC (heartbeat,
//! shutdown, timesync, KVP) shares, written once.
//!
//! - Bring-up: on every `vmbus_event` notification (and at start) it asks
//!   the bus manager where the channel stands (`bus::Request::Query`),
//!   zeroes its rings (all of the region: it is the only component that
//!   maps them) and asks to open when the channel is offered (the bus
//!   manager presents it so only once no GPADL describes the rings, so the
//!   host holds nothing of them), attaches to
//!   them when it is open and polls the in ring once right away (data can
//!   precede the open notification), and drops them on a new `generation`,
//!   rescind, close or hold.
//! - Data path: each packet is copied out of the in ring and validated there
//!   (`vmbus-ring`), then its pipe and IC headers are checked
//!   ([`channel::check_frame`]). Negotiate messages are answered here with the
//!   newest common framework and message versions, which are reported to
//!   the bus manager (`bus::Request::ReportVersions`); messages of the
//!   service's type go to its [`IcService`]; answers go to the out ring and
//!   the host is signalled through synic (`SignalHost`) only when a ring
//!   operation says so. The in ring is drained in rounds (mask the host's
//!   interrupts, drain, publish, unmask, look again) so that no packet is
//!   left without an interrupt. Flow control both ways (pending_send_sz):
//!   an answer that finds the out ring full waits, and the in ring is not
//!   read meanwhile; a host that leaves it full for
//!   [`HOST_SPACE_TIMEOUT_NS`] is a host fault (counted, reported once,
//!   client calls that need the channel refused with [`CHANNEL_STALLED`]).
//!
//! - The component: [`IcDriver`] is the whole driver around a service (a
//!   [`DriverService`]): it routes `vmbus_event` and `synic` notifications
//!   to the channel loop and protected calls on `client` to the service.
//!
//! Trusts: nothing from the host. Malformed packets and messages are
//! rejected with a count and a (rate-limited) console line. The driver
//! gives up deliberately (a panic, which the bus manager sees as a fault:
//! it closes the channel, waits for the host to let go of the rings and
//! restarts the driver, which zeroes them before it opens again) only
//! when reading on could misread the ring: corrupt or out-of-range indices,
//! a packet longer than what was published or than any IC message
//! ([`PACKET_BUFFER`]), a descriptor that changes while being copied, or
//! more than [`MAX_BAD_IN_A_ROW`] malformed packets in a row.
//! Trusts the bus manager's and synic's replies as far as their types go.
//!
//! Writes: its own ring regions (all of them zeroed before each open request,
//! the out ring's packets and our indices), and nothing else.
#![cfg_attr(not(any(test, feature = "testing")), no_std)]
#![forbid(unsafe_code)]

pub mod channel;
pub mod driver;
#[cfg(test)]
mod flow_tests;
#[cfg(test)]
mod hvsim_tests;
pub mod memory;
#[cfg(test)]
mod test_service;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use channel::{
    body_mut, give_up, ChannelIds, IcChannel, IcService, Rejection, Stats, CHANNEL_STALLED,
    HOST_SPACE_TIMEOUT_NS, MAX_BAD_IN_A_ROW, PACKET_BUFFER,
};
pub use driver::{DriverService, IcDriver};
pub use memory::{ring_memory, rings, zero_rings, RingRegions};
