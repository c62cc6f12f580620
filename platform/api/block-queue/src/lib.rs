//! The block interface between a storage driver and its clients, in the
//! shape of sDDF's block queues (`include/sddf/blk/queue.h`,
//! `storage_info.h`).
//!
//! Per client the description (`[[block]]`, see docs/block-interface.md)
//! grants four regions and a notification each way:
//!
//! - a request queue (client -> driver) of [`Request`]s,
//! - a response queue (driver -> client) of [`Response`]s,
//! - a device-information page the driver writes and the client reads
//!   ([`DeviceInfo`]),
//! - a data region the client reads and writes; requests name byte offsets
//!   into it. It is host visible and the driver holds it by address only:
//!   it names the client's pages to the host and never touches the bytes.
//!
//! Both queues are [`spsc_queue`] queues (fixed-size messages here), so
//! signal suppression is that crate's double check.
//!
//! The client half ([`client::BlockClient`]) keeps every request until its
//! response arrives and reissues what is outstanding when the info page's
//! generation changes (the driver restarted); the server half
//! ([`server::BlockServer`]) validates every request against the client's
//! grant before the driver sees it, translates blocks to the disk's blocks
//! and keeps barriers. [`mbr`] parses a partition table so the driver can
//! resolve `partition = N`.
#![no_std]
#![forbid(unsafe_code)]

pub mod client;
pub mod info;
pub mod mbr;
pub mod server;

pub use client::{BlockClient, ClientError, Completion, Operation, RequestId};
pub use info::DeviceInfo;
pub use server::{BlockServer, Grant, ServerError, ServerRequest};

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Bytes of one request message on the queue.
pub const REQUEST_BYTES: usize = core::mem::size_of::<Request>();
/// Bytes of one response message on the queue.
pub const RESPONSE_BYTES: usize = core::mem::size_of::<Response>();
/// The page size regions are made of.
pub const PAGE: usize = 4096;
/// The info page is one page.
pub const INFO_BYTES: usize = PAGE;

/// The slot size both halves give [`spsc_queue`] for requests.
pub(crate) const REQUEST_SLOT: usize = slot_bytes(REQUEST_BYTES);
/// The slot size both halves give [`spsc_queue`] for responses.
pub(crate) const RESPONSE_SLOT: usize = slot_bytes(RESPONSE_BYTES);

/// The spsc-queue header before the first slot, and each slot's length
/// field: how big a queue region must be for `entries` messages.
const QUEUE_HEADER: usize = 256;
const SLOT_LENGTH_FIELD: usize = 4;

const fn slot_bytes(message: usize) -> usize {
    (message + SLOT_LENGTH_FIELD + 7) & !7
}

const fn round_to_page(bytes: usize) -> usize {
    bytes.div_ceil(PAGE) * PAGE
}

/// Bytes of a request-queue region that holds at least `entries` requests
/// (whole pages). `sysdesc` sizes the regions with this.
pub const fn request_region_bytes(entries: usize) -> usize {
    round_to_page(QUEUE_HEADER + entries * slot_bytes(REQUEST_BYTES))
}

/// Bytes of a response-queue region that holds at least `entries`
/// responses (whole pages).
pub const fn response_region_bytes(entries: usize) -> usize {
    round_to_page(QUEUE_HEADER + entries * slot_bytes(RESPONSE_BYTES))
}

/// What a request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    /// Read `count` blocks from `block` into the data region at `offset`.
    Read = 1,
    /// Write `count` blocks at `block` from the data region at `offset`.
    Write = 2,
    /// Answered only when everything completed before it is on stable
    /// storage (the host completed SYNCHRONIZE CACHE).
    Flush = 3,
    /// Everything queued before it completes before anything after it is
    /// issued to the disk.
    Barrier = 4,
    /// The disk may forget `count` blocks at `block` (SCSI UNMAP): they
    /// read back as zeros or as what they held, so a client discards only
    /// what it no longer needs. No data moves (`offset` is unused).
    /// Answered NOT_SUPPORTED when the info page says the disk cannot.
    Discard = 5,
}

impl Code {
    pub fn from_wire(value: u32) -> Option<Code> {
        Some(match value {
            1 => Code::Read,
            2 => Code::Write,
            3 => Code::Flush,
            4 => Code::Barrier,
            5 => Code::Discard,
            _ => return None,
        })
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Status {
    Ok = 0,
    /// The disk (or the host) failed the transfer.
    IoError = 1,
    /// The block range is outside the grant.
    SeekError = 2,
    /// No disk behind the grant right now (not yet found, removed).
    NotReady = 3,
    /// A write on a read-only grant or disk.
    ReadOnly = 4,
    /// The request is malformed (unknown code, zero or oversized count,
    /// data range outside or misaligned in the data region).
    Invalid = 5,
    /// The disk cannot do what was asked (a DISCARD to a disk without
    /// UNMAP). A client that knows only statuses 0-5 takes it as an
    /// IO_ERROR (and counts it malformed).
    NotSupported = 6,
}

impl Status {
    pub fn from_wire(value: u32) -> Option<Status> {
        Some(match value {
            0 => Status::Ok,
            1 => Status::IoError,
            2 => Status::SeekError,
            3 => Status::NotReady,
            4 => Status::ReadOnly,
            5 => Status::Invalid,
            6 => Status::NotSupported,
            _ => return None,
        })
    }
}

/// A request as it lies in the request queue (native byte order: both
/// ends run on the same machine).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Request {
    /// A [`Code`].
    pub code: u32,
    /// Chosen by the client; the response carries it back.
    pub id: u32,
    /// First block, relative to the grant (block 0 is the partition's
    /// first block for a partition grant).
    pub block: u64,
    /// Blocks to transfer (READ and WRITE) or to discard (DISCARD).
    pub count: u32,
    pub reserved: u32,
    /// Byte offset into the data region (READ and WRITE).
    pub offset: u64,
}

/// A response as it lies in the response queue.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct Response {
    pub id: u32,
    /// A [`Status`].
    pub status: u32,
    /// Blocks transferred.
    pub count: u32,
    pub reserved: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_sizes_and_region_sizes() {
        assert_eq!(REQUEST_BYTES, 32);
        assert_eq!(RESPONSE_BYTES, 16);
        assert_eq!(slot_bytes(REQUEST_BYTES), 40);
        assert_eq!(slot_bytes(RESPONSE_BYTES), 24);
        assert_eq!(request_region_bytes(32), 4096);
        assert_eq!(request_region_bytes(100), 8192);
        assert_eq!(response_region_bytes(160), 4096);
        assert_eq!(response_region_bytes(161), 8192);
        for entries in [1, 2, 31, 32, 33, 101, 1000] {
            let requests = request_region_bytes(entries);
            let responses = response_region_bytes(entries);
            assert_eq!(requests, round_to_page(requests));
            assert!((requests - QUEUE_HEADER) / slot_bytes(REQUEST_BYTES) >= entries);
            assert!((responses - QUEUE_HEADER) / slot_bytes(RESPONSE_BYTES) >= entries);
        }
    }

    #[test]
    fn codes_and_statuses_round_trip_and_unknown_values_are_refused() {
        for code in [
            Code::Read,
            Code::Write,
            Code::Flush,
            Code::Barrier,
            Code::Discard,
        ] {
            assert_eq!(Code::from_wire(code as u32), Some(code));
        }
        assert_eq!(Code::from_wire(0), None);
        assert_eq!(Code::from_wire(6), None);
        for status in 0..7 {
            assert_eq!(Status::from_wire(status).map(|s| s as u32), Some(status));
        }
        assert_eq!(Status::from_wire(7), None);
    }
}
