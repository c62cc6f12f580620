//! `vmbus-channel`: a data driver's side of an open VMBus channel (storvsc,
//! netvsc), on top of `vmbus-ring`.
//!
//! - Sends in the three shapes Hyper-V's data devices use: in-band,
//!   GPA-direct with a page buffer (one range per page: offset and length
//!   in that page) and GPA-direct with multi-page ranges. Guest memory is
//!   named only through [`BufferSlice`]s cut from a [`SharedBuffer`] (a
//!   host-visible region the driver made a GPADL over), so a packet never
//!   describes a byte the driver did not share.
//! - Requests that ask for a completion get their transaction ID from a
//!   [`vmbus_ring::TransactionTable`] (a counter, never a guest address);
//!   a completion for an ID never issued, or one no longer outstanding
//!   (repeated, or from before a reset), is refused and counted.
//! - Transfer-page packets (data the host put in the driver's receive
//!   buffer) are validated against the [`ReceiveBuffer`] the driver shared:
//!   a range outside it refuses the whole packet, and none of it is read.
//!
//! Everything from the host is copied into private memory by the ring and
//! validated there; nothing here panics on host input.

#![no_std]
#![forbid(unsafe_code)]
#[cfg(test)]
extern crate std;

pub mod buffer;
pub mod channel;

pub use buffer::{
    BufferError, BufferSlice, ReceiveBuffer, ReceivedRange, ReceivedRanges, SharedBuffer,
    TransferError,
};
pub use channel::{
    ChannelError, ChannelStats, DataChannel, Received, Refusal, RoundEnd, SendError, Sent,
    MAX_MULTI_PAGE_PFNS, MAX_MULTI_PAGE_RANGES, MAX_PAGE_BUFFER_ENTRIES,
};

#[cfg(test)]
mod tests;
