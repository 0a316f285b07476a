//! Weighted round robin: NGINX's smooth weighted order, unrolled once into a
//! cycle of target indices that a shared cursor walks.
//!
//! Invariant: over one cycle each target is offered exactly `weight` times,
//! and heavy targets are spread out rather than bunched.

use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;

use super::super::target::Target;

/// The cycle and where the next pick starts in it.
pub(in crate::upstream) struct RoundRobin {
    /// Smooth weighted round-robin order of target indices.
    schedule: Vec<usize>,
    cursor: AtomicUsize,
}

impl RoundRobin {
    pub(super) fn new(targets: &[Arc<Target>]) -> RoundRobin {
        let weights: Vec<u32> = targets.iter().map(|t| t.weight).collect();
        RoundRobin {
            schedule: smooth_weighted_order(&weights),
            cursor: AtomicUsize::new(0),
        }
    }

    /// The next eligible target in the cycle.
    pub(super) fn choose(&self, eligible: impl Fn(usize) -> bool) -> Option<usize> {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        (0..self.schedule.len())
            .map(|k| self.schedule[(start + k) % self.schedule.len()])
            .find(|&i| eligible(i))
    }
}

/// NGINX's smooth weighted round robin, unrolled into one cycle: weights
/// [5, 1, 1] give a, a, b, a, c, a, a — heavy targets spread out, not bunched.
fn smooth_weighted_order(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
        else {
            break; // no targets (config validation requires one)
        };
        current[best] -= total;
        order.push(best);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_order_spreads_heavy_targets() {
        assert_eq!(smooth_weighted_order(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_order(&[1, 1]), vec![0, 1]);
        assert_eq!(smooth_weighted_order(&[2, 1]), vec![0, 1, 0]);
    }
}
