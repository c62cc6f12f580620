//! How the simulated host knows the relation between the guest's TSC and
//! reference time, for the reference TSC page (`synic.rs`).
//!
//! Reference time is the host's clock (`now_ns / 100`). On seL4 that clock
//! is the TSC divided by the rate the kernel measured at boot, so the pair
//! is exact and set once. Hosted, the guest is another Linux process that
//! reads the same TSC; the host measures the rate itself against its own
//! clock: first over at least [`MIN_SPAN_NS`] from the first reading, then
//! again over twice the span each time (up to every [`MAX_INTERVAL_NS`]),
//! each a new pair under a new sequence, so the error shrinks as the
//! session runs. A reading is the host clock between two TSC reads; one
//! whose two TSC reads lie further apart than 1/[`WINDOW_DIVISOR`] of the
//! span (the host thread was preempted between them) is not used.

use hyperv_defs::reference_tsc::TscClock;

/// The shortest span a measured rate is taken over.
pub const MIN_SPAN_NS: u64 = 20_000_000;
/// The longest wait between two measurements.
pub const MAX_INTERVAL_NS: u64 = 10_000_000_000;
/// A reading's TSC window may be at most this fraction of the span.
pub const WINDOW_DIVISOR: u64 = 4_000;

#[derive(Clone, Copy, Debug, Default)]
pub struct TscCalibration {
    /// The first reading: (ticks, now_ns).
    first: Option<(u64, u64)>,
    next_ns: u64,
    /// A rate the platform gave (exact): the pair was set from it.
    exact_set: bool,
    pub pairs: u64,
}

impl TscCalibration {
    /// One reading of the TSC (`ticks`, with the platform's
    /// `ticks_per_second`, 0 if it does not know it) taken at host time
    /// `now_ns`. Returns the pair to publish when there is a new one.
    pub fn observe(&mut self, ticks: u64, ticks_per_second: u64, now_ns: u64) -> Option<TscClock> {
        self.observe_within(ticks, ticks, ticks_per_second, now_ns)
    }

    /// [`TscCalibration::observe`] for a host clock read at `now_ns`
    /// between two TSC reads, `before` and `after`.
    pub fn observe_within(
        &mut self,
        before: u64,
        after: u64,
        ticks_per_second: u64,
        now_ns: u64,
    ) -> Option<TscClock> {
        let window = after.checked_sub(before)?;
        let ticks = before + window / 2;
        if ticks_per_second != 0 {
            if self.exact_set {
                return None;
            }
            let clock = TscClock::calibrated(ticks_per_second, ticks, now_ns / 100)?;
            self.exact_set = true;
            self.pairs += 1;
            return Some(clock);
        }
        let (first_ticks, first_ns) = *self.first.get_or_insert((ticks, now_ns));
        let span_ns = now_ns.saturating_sub(first_ns);
        if span_ns < MIN_SPAN_NS.max(self.next_ns.saturating_sub(first_ns)) {
            return None;
        }
        let span_ticks = ticks.checked_sub(first_ticks)?;
        if window > span_ticks / WINDOW_DIVISOR {
            return None;
        }
        let rate = (span_ticks as u128 * 1_000_000_000 / span_ns as u128) as u64;
        let clock = TscClock::calibrated(rate, ticks, now_ns / 100)?;
        self.next_ns = now_ns + span_ns.min(MAX_INTERVAL_NS);
        self.pairs += 1;
        Some(clock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exact_rate_sets_the_pair_once() {
        let mut calibration = TscCalibration::default();
        let clock = calibration
            .observe(3_000_000_000, 3_000_000_000, 1_000_000_000)
            .unwrap();
        assert_eq!(clock.reference_time(3_000_000_000), 10_000_000);
        assert_eq!(
            calibration.observe(6_000_000_000, 3_000_000_000, 2_000_000_000),
            None
        );
    }

    #[test]
    fn a_measured_rate_waits_for_a_span_and_refines() {
        // A 2 GHz TSC that read 5e9 when the host clock was 0.
        let tsc_at = |ns: u64| 5_000_000_000 + ns * 2;
        let mut calibration = TscCalibration::default();
        assert_eq!(calibration.observe(tsc_at(0), 0, 0), None);
        assert_eq!(calibration.observe(tsc_at(1_000_000), 0, 1_000_000), None);
        let at = MIN_SPAN_NS;
        let clock = calibration.observe(tsc_at(at), 0, at).unwrap();
        assert_eq!(clock.reference_time(tsc_at(at)), at / 100);
        let one_second = clock.reference_time(tsc_at(at + 1_000_000_000));
        assert!(
            (one_second as i64 - ((at + 1_000_000_000) / 100) as i64).abs() <= 1,
            "{one_second}"
        );
        // The next measurement waits until the span doubled.
        assert_eq!(calibration.observe(tsc_at(at + 1), 0, at + 1), None);
        assert!(calibration.observe(tsc_at(2 * at), 0, 2 * at).is_some());
        assert_eq!(calibration.pairs, 2);
        // A reading whose TSC window is too wide (preempted) is skipped.
        let late = 8 * at;
        assert_eq!(
            calibration.observe_within(tsc_at(late), tsc_at(late + 100_000), 0, late),
            None
        );
        assert!(calibration
            .observe_within(tsc_at(late), tsc_at(late) + 10, 0, late)
            .is_some());
        // A TSC that went backwards gives no pair.
        assert_eq!(calibration.observe(0, 0, 100 * at), None);
    }
}
