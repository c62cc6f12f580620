//! The data-path test device: a device class of our own, offered only by
//! the simulated host (`hvsim`, scenario device `datapath`) and driven only
//! by the test driver `tests/fixtures/datapath-test`. It is no Hyper-V
//! device: its class GUID is ours, and a real host never offers it.
//!
//! Every message starts with a [`TestHeader`] (in-band payload). Data bytes
//! follow one seeded, position-dependent pattern ([`pattern_byte`]) that
//! both sides compute, so every byte is checked where it lands.
//!
//! - Guest -> host, completion requested: [`op::IN_BAND`] (the header, then
//!   `len` pattern bytes in band), [`op::GPA_DIRECT`] (the header in band,
//!   the `len` pattern bytes in the packet's GPA ranges: page buffer or
//!   multi-page), [`op::START_HOST_STREAM`] (a [`StreamRequest`] follows:
//!   the host sends `count` in-band packets [`op::HOST_IN_BAND`] and
//!   `count` transfer-page packets into the receive buffer, each with its
//!   own seed `seed ^ transaction_id`), [`op::REPORT`] (the host prints its
//!   totals), [`op::CREATE_SUB_CHANNELS`] (the host offers `len`
//!   sub-channels of the device; each takes every message above, and
//!   GPA-direct ranges and receive buffers there may name the GPADLs the
//!   guest created on the primary). Each is completed with a [`Verdict`].
//! - Host -> guest, completion requested: the guest completes each with a
//!   [`Verdict`] of what it found.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// The test device's class (test only; random, not a Hyper-V class).
pub const CLASS: uuid::Uuid = uuid::uuid!("5e1f7e57-da7a-4a7c-9d3b-0c8a9e5f2d61");

pub mod op {
    pub const IN_BAND: u32 = 1;
    pub const GPA_DIRECT: u32 = 2;
    pub const START_HOST_STREAM: u32 = 3;
    pub const REPORT: u32 = 4;
    pub const HOST_IN_BAND: u32 = 5;
    /// Guest -> host on the primary channel: offer `len` more
    /// sub-channels (as storvsc and netvsc ask in their own protocols).
    /// The host completes it (errors 0 if it will offer them), then
    /// offers them; each sub-channel is served like the primary.
    pub const CREATE_SUB_CHANNELS: u32 = 6;
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct TestHeader {
    pub op: U32,
    /// Data bytes the message carries (in band after the header, or in
    /// its GPA ranges).
    pub len: U32,
    /// The pattern's seed.
    pub seed: U64,
}

/// After the header of [`op::START_HOST_STREAM`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout, Unaligned,
)]
#[repr(C)]
pub struct StreamRequest {
    /// Packets of each kind (in band, transfer pages).
    pub count: U32,
    /// The receive buffer's GPADL and the transfer page set id to name.
    pub receive_gpadl: U32,
    pub transfer_page_set_id: U32,
    /// Ranges per transfer-page packet (the packet's `len` bytes split).
    pub ranges: U32,
}

/// A completion's payload: what the receiver checked.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
    Unaligned,
)]
#[repr(C)]
pub struct Verdict {
    pub op: U32,
    /// Bytes compared with the pattern, and how many differed (or could
    /// not be read).
    pub bytes_checked: U32,
    pub errors: U32,
    pub reserved: U32,
}

/// Byte `index` of the pattern seeded with `seed`: a splitmix64 step of
/// the seed and the word index, so a byte moved, dropped or duplicated
/// anywhere in a stream shows.
pub fn pattern_byte(seed: u64, index: u64) -> u8 {
    let mut z = seed.wrapping_add(
        (index / 8)
            .wrapping_add(1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> ((index % 8) * 8)) as u8
}

/// Fill `out` with the pattern from byte `start`.
pub fn fill(seed: u64, start: u64, out: &mut [u8]) {
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = pattern_byte(seed, start + i as u64);
    }
}

/// Bytes of `data` that differ from the pattern from byte `start`.
pub fn mismatches(seed: u64, start: u64, data: &[u8]) -> u32 {
    data.iter()
        .enumerate()
        .filter(|&(i, &byte)| byte != pattern_byte(seed, start + i as u64))
        .count() as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_depends_on_seed_and_position() {
        let mut a = [0u8; 64];
        fill(7, 0, &mut a);
        assert_eq!(mismatches(7, 0, &a), 0);
        assert!(mismatches(8, 0, &a) > 50);
        assert!(mismatches(7, 1, &a) > 50);
        a[13] ^= 1;
        assert_eq!(mismatches(7, 0, &a), 1);
    }
}
