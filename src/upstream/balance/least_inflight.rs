//! Least in flight: the eligible target with the fewest requests in flight
//! per unit of weight.
//!
//! Invariant: ties go to the first eligible target after a rotating start,
//! so equal targets share the traffic instead of the first taking it all.

use std::sync::atomic::{AtomicUsize, Ordering};

use std::sync::Arc;

use super::super::target::Target;
use super::load;

/// Where the next scan starts.
pub(in crate::upstream) struct LeastInflight {
    cursor: AtomicUsize,
}

impl LeastInflight {
    pub(super) fn new() -> LeastInflight {
        LeastInflight {
            cursor: AtomicUsize::new(0),
        }
    }

    pub(super) fn choose(
        &self,
        targets: &[Arc<Target>],
        eligible: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let n = targets.len();
        (0..n)
            .map(|k| (start + k) % n)
            .filter(|&i| eligible(i))
            .min_by(|&a, &b| load(&targets[a], false).total_cmp(&load(&targets[b], false)))
    }
}
