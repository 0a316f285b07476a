//! Latency quantiles from a Prometheus histogram, over a recent window:
//! the difference of two cumulative bucket snapshots, interpolated linearly
//! within the bucket the quantile falls in (as PromQL's
//! `histogram_quantile` does).
//!
//! Invariant: no observation in the window gives no quantile (`None`),
//! never a made-up zero; a quantile past the last finite bucket is that
//! bucket's bound.

/// Cumulative bucket counts at one instant, with the count of every
/// observation (the `+Inf` bucket).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Buckets {
    /// (upper bound, observations at or below it), bounds ascending.
    pub(super) cumulative: Vec<(f64, u64)>,
    pub(super) count: u64,
}

/// The `q` quantile (0..=1) of the observations made between `earlier`
/// and `later` (two snapshots of the same histogram).
pub(super) fn quantile(earlier: &Buckets, later: &Buckets, q: f64) -> Option<f64> {
    let total = later.count.checked_sub(earlier.count)?;
    if total == 0 || earlier.cumulative.len() != later.cumulative.len() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let (mut lower_bound, mut below) = (0.0, 0u64);
    for (&(bound, then), &(_, now)) in earlier.cumulative.iter().zip(&later.cumulative) {
        let upto = now.saturating_sub(then);
        if upto as f64 >= rank {
            let inside = upto.saturating_sub(below);
            if inside == 0 {
                return Some(bound);
            }
            let fraction = (rank - below as f64) / inside as f64;
            return Some(lower_bound + (bound - lower_bound) * fraction);
        }
        (lower_bound, below) = (bound, upto);
    }
    // In the +Inf bucket: the highest finite bound is all that is known.
    later.cumulative.last().map(|&(bound, _)| bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buckets(counts: &[u64], count: u64) -> Buckets {
        let bounds = [0.01, 0.1, 1.0];
        Buckets {
            cumulative: bounds.iter().copied().zip(counts.iter().copied()).collect(),
            count,
        }
    }

    #[test]
    fn interpolates_within_the_bucket_of_the_quantile() {
        let zero = buckets(&[0, 0, 0], 0);
        // 100 observations: 50 up to 10 ms, 40 more up to 100 ms, 10 up to 1 s.
        let later = buckets(&[50, 90, 100], 100);
        assert_eq!(quantile(&zero, &later, 0.5), Some(0.01));
        let p75 = quantile(&zero, &later, 0.75).unwrap();
        assert!((p75 - (0.01 + 0.09 * 25.0 / 40.0)).abs() < 1e-12, "{p75}");
        let p99 = quantile(&zero, &later, 0.99).unwrap();
        assert!((p99 - (0.1 + 0.9 * 9.0 / 10.0)).abs() < 1e-12, "{p99}");
    }

    #[test]
    fn only_the_window_counts() {
        // Before the window: 1000 fast responses; in it: 10 slow ones.
        let earlier = buckets(&[1000, 1000, 1000], 1000);
        let later = buckets(&[1000, 1000, 1010], 1010);
        let p50 = quantile(&earlier, &later, 0.5).unwrap();
        assert!((0.1..=1.0).contains(&p50), "{p50}");
    }

    #[test]
    fn no_observation_is_no_quantile_and_past_the_buckets_is_the_last_bound() {
        let same = buckets(&[5, 5, 5], 5);
        assert_eq!(quantile(&same, &same, 0.5), None);
        let zero = buckets(&[0, 0, 0], 0);
        let slow = buckets(&[0, 0, 0], 4);
        assert_eq!(quantile(&zero, &slow, 0.99), Some(1.0));
        // A counter that went backwards (cannot happen) is no quantile.
        assert_eq!(quantile(&slow, &zero, 0.5), None);
    }
}
