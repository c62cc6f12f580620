//! The reference TSC page (TLFS "Partition Reference TSC Mechanism"): a
//! guest page the hypervisor fills so that the guest computes the partition
//! reference time (100 ns units) from its own TSC without leaving to the
//! hypervisor:
//!
//! `reference time = ((tsc * tsc_scale) >> 64) + tsc_offset`
//!
//! (the product is 128 bits wide; the offset is signed). The page is
//! enabled by writing its GPA with bit 0 set to
//! [`crate::msr::REFERENCE_TSC`]. `tsc_sequence` 0 means the page is not
//! valid now and the guest must read [`crate::msr::TIME_REF_COUNT`]
//! instead; any other value names one (scale, offset) pair. The hypervisor
//! changes the pair by writing the sequence 0, then the new scale and
//! offset, then a new non-zero sequence; the guest reads sequence, scale,
//! offset, sequence again, and uses the pair only if both sequences are the
//! same and not 0.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The page's first 24 bytes (the rest of the 4096 is reserved, zero).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[repr(C)]
pub struct ReferenceTscPage {
    pub tsc_sequence: u32,
    pub reserved: u32,
    pub tsc_scale: u64,
    pub tsc_offset: i64,
}

/// Byte offsets in the page.
pub const SEQUENCE_OFFSET: usize = 0;
pub const SCALE_OFFSET: usize = 8;
pub const OFFSET_OFFSET: usize = 16;

/// The sequence value that says "not valid: use the MSR".
pub const SEQUENCE_INVALID: u32 = 0;

/// HV_X64_MSR_REFERENCE_TSC: enable bit 0, GPN in bits 63:12; bits 11:1
/// are RsvdP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReferenceTscMsr(pub u64);

impl ReferenceTscMsr {
    pub const ENABLE: u64 = 1 << 0;
    pub const GPN_MASK: u64 = !0xFFF;
    pub const fn enabled(self) -> bool {
        self.0 & Self::ENABLE != 0
    }
    pub const fn gpa(self) -> u64 {
        self.0 & Self::GPN_MASK
    }
    /// The value that enables the page at `gpa`, keeping `old`'s reserved
    /// bits.
    pub const fn enable_at(old: u64, gpa: u64) -> Self {
        ReferenceTscMsr((old & 0xFFE) | (gpa & Self::GPN_MASK) | Self::ENABLE)
    }
}

/// One (scale, offset) pair: reference time as a function of the TSC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TscClock {
    pub scale: u64,
    pub offset: i64,
}

/// Reference-time units per second (100 ns).
pub const REFERENCE_UNITS_PER_SECOND: u64 = 10_000_000;

impl TscClock {
    /// The reference time at `tsc` (wrapping, as the hardware formula).
    pub fn reference_time(self, tsc: u64) -> u64 {
        let scaled = ((tsc as u128 * self.scale as u128) >> 64) as u64;
        scaled.wrapping_add(self.offset as u64)
    }

    /// The pair for a TSC of `ticks_per_second` that reads `tsc` when the
    /// reference time is `reference_now`. `None` for a TSC slower than
    /// 10 MHz (the scale would not fit in 64 bits) or of rate 0.
    pub fn calibrated(ticks_per_second: u64, tsc: u64, reference_now: u64) -> Option<TscClock> {
        if ticks_per_second <= REFERENCE_UNITS_PER_SECOND {
            return None;
        }
        let scale = ((REFERENCE_UNITS_PER_SECOND as u128) << 64) / ticks_per_second as u128;
        let scale = u64::try_from(scale).ok()?;
        let unshifted = TscClock { scale, offset: 0 }.reference_time(tsc);
        Some(TscClock {
            scale,
            offset: reference_now.wrapping_sub(unshifted) as i64,
        })
    }
}

/// Why the page gave no time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageUnusable {
    /// Sequence 0: the hypervisor says use the reference counter MSR.
    Invalid,
    /// The sequence changed under every read (bounded retries).
    Unstable,
}

/// How many times a reader retries a read the hypervisor changed under it.
pub const READ_ATTEMPTS: u32 = 8;

/// Read the page with the sequence protocol: `load_u32`/`load_u64` read
/// the page's fields at byte offsets (atomically: the page is shared with
/// the hypervisor), `tsc` reads the TSC. Returns the reference time and the
/// sequence it was computed under.
pub fn read_reference_time(
    mut load_u32: impl FnMut(usize) -> u32,
    mut load_u64: impl FnMut(usize) -> u64,
    mut tsc: impl FnMut() -> u64,
) -> Result<(u64, u32), PageUnusable> {
    for _ in 0..READ_ATTEMPTS {
        let sequence = load_u32(SEQUENCE_OFFSET);
        if sequence == SEQUENCE_INVALID {
            return Err(PageUnusable::Invalid);
        }
        let clock = TscClock {
            scale: load_u64(SCALE_OFFSET),
            offset: load_u64(OFFSET_OFFSET) as i64,
        };
        let now = tsc();
        if load_u32(SEQUENCE_OFFSET) == sequence {
            return Ok((clock.reference_time(now), sequence));
        }
    }
    Err(PageUnusable::Unstable)
}

/// The next sequence after `sequence` (never [`SEQUENCE_INVALID`]).
pub const fn next_sequence(sequence: u32) -> u32 {
    match sequence.wrapping_add(1) {
        SEQUENCE_INVALID => 1,
        next => next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::cell::Cell;
    use core::mem::{offset_of, size_of};

    #[test]
    fn layout_is_the_tlfs_one() {
        assert_eq!(size_of::<ReferenceTscPage>(), 24);
        assert_eq!(offset_of!(ReferenceTscPage, tsc_sequence), SEQUENCE_OFFSET);
        assert_eq!(offset_of!(ReferenceTscPage, tsc_scale), SCALE_OFFSET);
        assert_eq!(offset_of!(ReferenceTscPage, tsc_offset), OFFSET_OFFSET);
    }

    #[test]
    fn scale_and_offset_give_reference_time() {
        // A 2.5 GHz TSC reading 5e9 (2 s) when the reference time is 7 s.
        let clock = TscClock::calibrated(2_500_000_000, 5_000_000_000, 70_000_000).unwrap();
        assert_eq!(clock.scale, ((10_000_000u128 << 64) / 2_500_000_000) as u64);
        // One second of TSC later: 8 s (within a unit of rounding).
        let later = clock.reference_time(7_500_000_000);
        assert!(
            (80_000_000 - 1..=80_000_000 + 1).contains(&later),
            "{later}"
        );
        // The offset is negative when the TSC ran longer than the
        // partition (a TSC that did not start at 0).
        let clock = TscClock::calibrated(1_000_000_000, 50_000_000_000, 10).unwrap();
        assert!(clock.offset < 0);
        assert_eq!(clock.reference_time(50_000_000_000), 10);
        assert_eq!(clock.reference_time(50_000_000_100), 11);
    }

    #[test]
    fn slow_or_zero_tsc_has_no_clock() {
        assert_eq!(TscClock::calibrated(0, 1, 1), None);
        assert_eq!(TscClock::calibrated(10_000_000, 1, 1), None);
        assert!(TscClock::calibrated(10_000_001, 1, 1).is_some());
    }

    #[test]
    fn msr_value_keeps_reserved_bits_and_sets_enable() {
        let value = ReferenceTscMsr::enable_at(0x0000_0000_0000_0AA0, 0x1234_5000);
        assert_eq!(value.0, 0x1234_5AA1);
        assert!(value.enabled());
        assert_eq!(value.gpa(), 0x1234_5000);
    }

    #[test]
    fn reader_uses_a_stable_sequence_and_refuses_zero() {
        let clock = TscClock {
            scale: 1 << 63, // half a unit per tick
            offset: 100,
        };
        let fields =
            |sequence: u32| move |at: usize| if at == SEQUENCE_OFFSET { sequence } else { 0 };
        let load_u64 = |at: usize| match at {
            SCALE_OFFSET => clock.scale,
            OFFSET_OFFSET => clock.offset as u64,
            _ => 0,
        };
        assert_eq!(
            read_reference_time(fields(3), load_u64, || 1000),
            Ok((600, 3))
        );
        assert_eq!(
            read_reference_time(fields(0), load_u64, || 1000),
            Err(PageUnusable::Invalid)
        );
        // A sequence that changes on every read: never used.
        let counter = Cell::new(1u32);
        let changing = |_: usize| {
            counter.set(counter.get() + 1);
            counter.get()
        };
        assert_eq!(
            read_reference_time(changing, load_u64, || 1000),
            Err(PageUnusable::Unstable)
        );
        // Changed once, then stable: the second read is used.
        let reads = Cell::new(0u32);
        let once = |_: usize| {
            reads.set(reads.get() + 1);
            if reads.get() == 1 {
                5
            } else {
                6
            }
        };
        assert_eq!(read_reference_time(once, load_u64, || 1000), Ok((600, 6)));
    }

    #[test]
    fn sequence_skips_invalid() {
        assert_eq!(next_sequence(1), 2);
        assert_eq!(next_sequence(u32::MAX), 1);
    }
}
