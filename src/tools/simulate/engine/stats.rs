//! What the replay counts, per route: outcomes, refusal reasons, waits and
//! a time series of buckets, recorded in event order.

use std::time::Duration;

use crate::outcome::Outcome;
use crate::shaper::RejectReason;

/// What the replay measured, per route (the last entry: requests no route matched).
pub(crate) struct Stats {
    pub routes: Vec<RouteStats>,
    pub bucket: Duration,
    /// Virtual time from the first arrival until the last request finished.
    pub virtual_time: Duration,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Bucket {
    pub offered: u32,
    /// Async routes: accepted (`202`).
    pub accepted: u32,
    /// Sent to the backend (an async route's deliveries).
    pub released: u32,
    pub rejected: u32,
    pub rate_limited: u32,
    /// Dropped at the queue timeout; on an async route, expired.
    pub dropped: u32,
    /// The most requests queued at once during the bucket (an async
    /// route's: held, queued or in flight).
    pub depth: u32,
}

#[derive(Debug, Default)]
pub(crate) struct RouteStats {
    pub offered: u64,
    pub outcomes: [u64; Outcome::ALL.len()],
    /// By [`reason_index`].
    pub reasons: [u64; 5],
    /// Admitted on the fast path: waited zero.
    pub zero_waits: u64,
    /// Waits of requests that left the queue (released, dropped or displaced), ns.
    pub waits: Vec<u64>,
    pub peak_depth: usize,
    pub dry_run_route: u64,
    pub dry_run_key: u64,
    /// Requests without a key on a route with a per-key limit (not limited).
    pub keyless: u64,
    /// Requests naming a class the route does not have (put in `default`).
    pub unknown_class: u64,
    pub series: Vec<Bucket>,
    /// What an async route's delivery did.
    pub deferred: DeferredStats,
    depth: u32,
}

/// An async route's delivery: counts, delays and its backlog's course.
#[derive(Debug, Default)]
pub(crate) struct DeferredStats {
    pub delivered: u64,
    pub expired: u64,
    /// From acceptance to sending, of each delivered request, ns.
    pub delays: Vec<u64>,
    /// The most requests held at once, and when that was first reached (ns).
    pub peak_held: usize,
    pub peak_at: u64,
    /// When the backlog was first empty again after its peak (ns).
    pub drained_at: Option<u64>,
}

pub(crate) fn reason_index(reason: RejectReason) -> usize {
    match reason {
        RejectReason::QueueFull => 0,
        RejectReason::WaitTooLong => 1,
        RejectReason::Displaced => 2,
        RejectReason::Timeout => 3,
        RejectReason::Closed => 4,
    }
}

/// The outcome the proxy records for a refusal.
pub(super) fn refusal_outcome(reason: RejectReason) -> Outcome {
    match reason {
        RejectReason::QueueFull | RejectReason::WaitTooLong | RejectReason::Displaced => {
            Outcome::RejectedQueueFull
        }
        RejectReason::Timeout | RejectReason::Closed => Outcome::DroppedTimeout,
    }
}

/// Counts, waits and the time series, written in event order by the main
/// task and the queued requests' tasks.
pub(super) struct Recorder {
    pub(super) bucket_ns: u64,
    pub(super) routes: Vec<RouteStats>,
}

impl RouteStats {
    fn bucket(&mut self, bucket_ns: u64, at: u64) -> &mut Bucket {
        let index = (at / bucket_ns) as usize;
        if index >= self.series.len() {
            // Buckets without events held the depth as it was.
            let depth = self.depth;
            self.series.resize(
                index + 1,
                Bucket {
                    depth,
                    ..Bucket::default()
                },
            );
        }
        &mut self.series[index]
    }

    fn outcome(&mut self, outcome: Outcome) {
        self.outcomes[outcome as usize] += 1;
    }

    /// An async route now holds `held`: the depth, its peak, and when it drained.
    fn held(&mut self, bucket_ns: u64, at: u64, held: usize) {
        let d = &mut self.deferred;
        if held > d.peak_held {
            d.peak_held = held;
            d.peak_at = at;
            d.drained_at = None;
        }
        if held == 0 && d.drained_at.is_none() {
            d.drained_at = Some(at);
        }
        self.peak_depth = self.peak_depth.max(held);
        self.set_depth(bucket_ns, at, u32::try_from(held).unwrap_or(u32::MAX));
    }

    fn set_depth(&mut self, bucket_ns: u64, at: u64, depth: u32) {
        self.depth = depth;
        let bucket = self.bucket(bucket_ns, at);
        bucket.depth = bucket.depth.max(depth);
    }
}

impl Recorder {
    pub(super) fn offered(&mut self, route: usize, at: u64) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.offered += 1;
        r.bucket(bucket_ns, at).offered += 1;
    }

    pub(super) fn no_route(&mut self, route: usize, at: u64) {
        self.offered(route, at);
        self.routes[route].outcome(Outcome::NoRoute);
    }

    pub(super) fn rate_limited(&mut self, route: usize, at: u64) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.outcome(Outcome::RejectedRateLimited);
        r.bucket(bucket_ns, at).rate_limited += 1;
    }

    pub(super) fn released(&mut self, route: usize, at: u64) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.outcome(Outcome::Forwarded);
        r.bucket(bucket_ns, at).released += 1;
    }

    pub(super) fn refused(&mut self, route: usize, at: u64, reason: RejectReason) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        let outcome = refusal_outcome(reason);
        r.outcome(outcome);
        r.reasons[reason_index(reason)] += 1;
        let bucket = r.bucket(bucket_ns, at);
        if outcome == Outcome::DroppedTimeout {
            bucket.dropped += 1;
        } else {
            bucket.rejected += 1;
        }
    }

    pub(super) fn fast(&mut self, route: usize, at: u64) {
        self.routes[route].zero_waits += 1;
        self.released(route, at);
    }

    pub(super) fn queued(&mut self, route: usize, at: u64, shaper_depth: usize) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.peak_depth = r.peak_depth.max(shaper_depth);
        let depth = r.depth + 1;
        r.set_depth(bucket_ns, at, depth);
    }

    /// An async route accepted a request; `held` now.
    pub(super) fn accepted(&mut self, route: usize, at: u64, held: usize) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.outcome(Outcome::Accepted);
        r.bucket(bucket_ns, at).accepted += 1;
        r.held(bucket_ns, at, held);
    }

    /// An async route sent a request accepted `delay` ago.
    pub(super) fn delivered(&mut self, route: usize, at: u64, delay: u64) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.deferred.delivered += 1;
        r.deferred.delays.push(delay);
        r.bucket(bucket_ns, at).released += 1;
    }

    /// An async route's delivery ended (the backend answered); `held` now.
    pub(super) fn delivery_ended(&mut self, route: usize, at: u64, held: usize) {
        let bucket_ns = self.bucket_ns;
        self.routes[route].held(bucket_ns, at, held);
    }

    /// `count` requests of an async route expired; `held` now.
    pub(super) fn expired(&mut self, route: usize, at: u64, count: u64, held: usize) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.deferred.expired += count;
        let bucket = r.bucket(bucket_ns, at);
        bucket.dropped = bucket.dropped.saturating_add(count as u32);
        r.held(bucket_ns, at, held);
    }

    pub(super) fn left_queue(
        &mut self,
        route: usize,
        at: u64,
        waited: u64,
        result: Result<(), RejectReason>,
    ) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.waits.push(waited);
        let depth = r.depth.saturating_sub(1);
        r.set_depth(bucket_ns, at, depth);
        match result {
            Ok(()) => self.released(route, at),
            Err(reason) => self.refused(route, at, reason),
        }
    }
}
