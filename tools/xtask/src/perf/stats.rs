//! The report's statistics: medians with their spread over rounds, and
//! percentiles of distributions.

/// The values sorted ascending (NaN last; benchmarks do not write NaN, see
/// `bench_record::Record::to_line`).
fn sorted(values: &[f64]) -> Vec<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted
}

/// The median: the middle value, or the mean of the two middle values.
pub fn median(values: &[f64]) -> Option<f64> {
    let sorted = sorted(values);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

/// The `p`-th percentile (0 < p <= 100) by nearest rank: the smallest
/// observation with at least p% of the observations at or below it (so
/// p99 of 100 observations is the 99th smallest, never an interpolation
/// between observations).
pub fn percentile(values: &[f64], p: f64) -> Option<f64> {
    let sorted = sorted(values);
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// What a table row shows of one record's samples.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub count: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p99: f64,
}

pub fn summarize(values: &[f64]) -> Option<Summary> {
    let sorted = sorted(values);
    Some(Summary {
        count: sorted.len(),
        median: median(&sorted)?,
        min: *sorted.first()?,
        max: *sorted.last()?,
        p99: percentile(&sorted, 99.0)?,
    })
}

/// The ratio of two medians (a series against its baseline); None when
/// the baseline's median is zero.
pub fn ratio_of_medians(series: &[f64], baseline: &[f64]) -> Option<f64> {
    let (a, b) = (median(series)?, median(baseline)?);
    (b != 0.0).then(|| a / b)
}

/// The empirical CDF: each observation with the fraction of observations
/// at or below it.
pub fn cdf(values: &[f64]) -> Vec<(f64, f64)> {
    let sorted = sorted(values);
    let n = sorted.len() as f64;
    sorted
        .iter()
        .enumerate()
        .map(|(i, &v)| (v, (i + 1) as f64 / n))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_of_an_odd_count_is_the_middle_value() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&values, 99.0), Some(99.0));
        assert_eq!(percentile(&values, 50.0), Some(50.0));
        assert_eq!(percentile(&values, 100.0), Some(100.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        // 10 observations: p99 is the largest.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 99.0), Some(10.0));
        assert_eq!(percentile(&ten, 90.0), Some(9.0));
        // Nearest rank rounds the rank up: 91% of 10 needs the 10th.
        assert_eq!(percentile(&ten, 91.0), Some(10.0));
        assert_eq!(percentile(&[1.0, 2.0, 3.0], 40.0), Some(2.0));
    }

    #[test]
    fn a_summary_has_the_spread() {
        let summary = summarize(&[3.0, 9.0, 1.0, 4.0, 5.0]).unwrap();
        assert_eq!(
            (summary.count, summary.median, summary.min, summary.max),
            (5, 4.0, 1.0, 9.0)
        );
        assert!(summarize(&[]).is_none());
    }

    #[test]
    fn the_ratio_is_of_medians_not_of_means() {
        // Means would give 40/4 = 10; medians 2/4 = 0.5.
        let ratio = ratio_of_medians(&[1.0, 2.0, 117.0], &[3.0, 4.0, 5.0]).unwrap();
        assert!((ratio - 0.5).abs() < 1e-12, "{ratio}");
        assert_eq!(ratio_of_medians(&[1.0], &[0.0]), None);
    }

    #[test]
    fn the_cdf_climbs_to_one_over_the_sorted_values() {
        assert_eq!(
            cdf(&[2.0, 1.0, 4.0, 3.0]),
            vec![(1.0, 0.25), (2.0, 0.5), (3.0, 0.75), (4.0, 1.0)]
        );
    }
}
