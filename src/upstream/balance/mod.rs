//! Choosing a target: the upstream's `balance` among the targets that are
//! healthy and under their own in-flight cap.
//!
//! Each algorithm keeps its own state in its own file: `round_robin`
//! (NGINX's smooth weighted order), `least_inflight` (fewest in flight per
//! weight) and `p2c_ewma` (the better of two random picks on
//! latency-weighted load). A retry avoids the targets already tried while
//! another one is eligible.
//!
//! Invariant: a pick takes its slot on the target atomically; a pick that
//! lost the race for a target's last slot gives it back and looks again, so
//! no target ever holds more than its `max_inflight`.

mod least_inflight;
mod p2c_ewma;
mod round_robin;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::time::Instant;

use self::least_inflight::LeastInflight;
use self::p2c_ewma::P2cEwma;
use self::round_robin::RoundRobin;
use super::Upstream;
use super::target::Target;
use crate::config::Balance;

/// The balance algorithm of one upstream, with its state.
pub(super) enum Balancer {
    RoundRobin(RoundRobin),
    LeastInflight(LeastInflight),
    P2cEwma(P2cEwma),
}

impl Balancer {
    pub(super) fn new(balance: Balance, targets: &[Arc<Target>]) -> Balancer {
        match balance {
            Balance::RoundRobin => Balancer::RoundRobin(RoundRobin::new(targets)),
            Balance::LeastInflight => Balancer::LeastInflight(LeastInflight::new()),
            Balance::P2cEwma => Balancer::P2cEwma(P2cEwma::new()),
        }
    }

    /// The algorithm's choice among the targets for which `eligible` holds.
    fn choose(&self, targets: &[Arc<Target>], eligible: impl Fn(usize) -> bool) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.choose(eligible),
            Balancer::LeastInflight(least) => least.choose(targets, eligible),
            Balancer::P2cEwma(p2c) => p2c.choose(targets, eligible),
        }
    }
}

impl Upstream {
    /// Chooses a target of the current set by the balance policy and takes
    /// a slot on it.
    pub(super) fn pick(&self, tried: &[Arc<Target>]) -> Option<Arc<Target>> {
        let now = Instant::now();
        let members = self.members.load();
        let targets = &members.targets;
        for avoid_tried in [true, false] {
            let eligible = |i: usize| {
                (!avoid_tried || !tried.iter().any(|t| Arc::ptr_eq(t, &targets[i])))
                    && targets[i].has_room(now)
            };
            if let Some(index) = members.balancer.choose(targets, eligible) {
                if !targets[index].take_slot() {
                    // Lost a race for the last slot; look again.
                    return self.pick(tried);
                }
                return Some(targets[index].clone());
            }
            if tried.is_empty() {
                break;
            }
        }
        None
    }
}

/// A target's load for balancing: in flight per weight, times its
/// latency when `by_latency`.
fn load(target: &Target, by_latency: bool) -> f64 {
    let queue = (target.inflight.load(Ordering::Relaxed) + 1) as f64 / f64::from(target.weight);
    if by_latency {
        queue * (target.ewma_nanos.load(Ordering::Relaxed) as f64 + 1.0)
    } else {
        queue
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, AtomicUsize};

    use parking_lot::Mutex;

    use super::*;
    use crate::metrics::Metrics;
    use crate::upstream::health::Health;
    use crate::upstream::metrics::{TargetMetrics, UpstreamFamilies};

    /// Targets with these weights, in-flight counts and latency EWMAs.
    fn targets(spec: &[(u32, usize, u64)]) -> Vec<Arc<Target>> {
        let metrics = Metrics::new().unwrap();
        let families = UpstreamFamilies::register(metrics.registry()).unwrap();
        spec.iter()
            .enumerate()
            .map(|(i, &(weight, inflight, ewma))| Target {
                addr: format!("127.0.0.1:{}", 9000 + i).parse().unwrap(),
                origin: crate::upstream::target::Origin::Static,
                h1: None,
                weight,
                max_inflight: None,
                inflight: AtomicUsize::new(inflight),
                ewma_nanos: AtomicU64::new(ewma),
                health: Mutex::new(Health::default()),
                metrics: TargetMetrics::new(&families, "api", &format!("t{i}")),
            })
            .map(Arc::new)
            .collect()
    }

    fn picks(
        balancer: &Balancer,
        targets: &[Arc<Target>],
        eligible: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        (0..6)
            .map(|_| balancer.choose(targets, &eligible).unwrap())
            .collect()
    }

    #[test]
    fn round_robin_walks_the_weighted_cycle_past_ineligible_targets() {
        let targets = targets(&[(2, 0, 0), (1, 0, 0)]);
        let rr = Balancer::new(Balance::RoundRobin, &targets);
        assert_eq!(picks(&rr, &targets, |_| true), [0, 1, 0, 0, 1, 0]);
        assert_eq!(picks(&rr, &targets, |i| i == 1), [1; 6]);
        assert_eq!(rr.choose(&targets, |_| false), None);
    }

    #[test]
    fn least_inflight_takes_the_emptiest_per_weight_and_shares_ties() {
        // Per weight: 2/1, 1/1 and 1/2 in flight (plus the one to come).
        let uneven = targets(&[(1, 2, 0), (1, 1, 0), (2, 1, 0)]);
        let least = Balancer::new(Balance::LeastInflight, &uneven);
        assert_eq!(picks(&least, &uneven, |_| true), [2; 6]);
        let tied = targets(&[(1, 3, 0), (1, 0, 0), (1, 0, 0)]);
        let least = Balancer::new(Balance::LeastInflight, &tied);
        let chosen = picks(&least, &tied, |_| true);
        assert!(chosen.contains(&1) && chosen.contains(&2), "{chosen:?}");
        assert!(!chosen.contains(&0), "{chosen:?}");
    }

    #[test]
    fn p2c_ewma_takes_the_faster_of_two_distinct_targets() {
        // Same load, but the second answers a thousand times slower.
        let targets = targets(&[(1, 0, 1_000), (1, 0, 1_000_000)]);
        let p2c = Balancer::new(Balance::P2cEwma, &targets);
        assert_eq!(picks(&p2c, &targets, |_| true), [0; 6]);
        assert_eq!(picks(&p2c, &targets, |i| i == 1), [1; 6]);
        assert_eq!(p2c.choose(&targets, |_| false), None);
    }
}
