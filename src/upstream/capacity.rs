//! The upstream's in-flight cap: a semaphore shared by every route naming
//! the upstream (the shaper hands out its permits), sized to the adaptive
//! limit or `max_inflight`.
//!
//! Invariant: the permits in circulation (free or held) less those owed
//! equal the cap in force. A cap grows at once; it shrinks by taking permits out now, or,
//! for those held by requests in flight, as they come back — never by
//! failing a request already admitted. A reload carries the semaphore over
//! to the new generation, resized.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::Upstream;

/// The cap in force, and permits still owed to a lowered cap.
pub(super) struct Capacity {
    pub(super) limit: usize,
    pub(super) owed: usize,
}

impl Capacity {
    /// The semaphore and capacity for a cap of `limit`: a new semaphore, or
    /// the `previous` generation's resized to `limit`.
    pub(super) fn carry_over(
        previous: Option<&Upstream>,
        limit: usize,
    ) -> (Arc<Semaphore>, Capacity) {
        let (inflight, owed) = match previous {
            Some(old) => {
                let old_limit = old.capacity.lock().limit;
                let owed = resize(&old.inflight, old_limit, limit);
                (old.inflight.clone(), owed)
            }
            None => (Arc::new(Semaphore::new(limit)), 0),
        };
        (inflight, Capacity { limit, owed })
    }
}

impl Upstream {
    /// Moves the cap to `limit`: grows at once; shrinks by taking permits
    /// out of circulation now or as in-flight requests return them.
    pub(super) fn set_limit(&self, limit: usize) {
        let mut capacity = self.capacity.lock();
        if limit == capacity.limit {
            return;
        }
        if limit > capacity.limit {
            let mut grow = limit - capacity.limit;
            let repaid = grow.min(capacity.owed);
            capacity.owed -= repaid;
            grow -= repaid;
            self.inflight.add_permits(grow);
        } else {
            let shrink = capacity.limit - limit;
            let taken = self.inflight.forget_permits(shrink);
            capacity.owed += shrink - taken;
        }
        capacity.limit = limit;
        self.metrics.adaptive_limit(limit);
    }

    /// Takes returned permits out of circulation while a lowered cap is owed some.
    pub(super) fn pay_owed_permits(&self) {
        let mut capacity = self.capacity.lock();
        if capacity.owed > 0 {
            let taken = self.inflight.forget_permits(capacity.owed);
            capacity.owed -= taken;
        }
    }
}

/// Changes a semaphore's size from `old` to `new` permits; returns the
/// permits still owed (taken out later as requests return them).
fn resize(semaphore: &Semaphore, old: usize, new: usize) -> usize {
    if new >= old {
        semaphore.add_permits(new - old);
        0
    } else {
        let shrink = old - new;
        shrink - semaphore.forget_permits(shrink)
    }
}
