//! The async route families, declared and registered here by the part of
//! the gateway they describe, and each route's handles, resolved once when
//! the route's journal is opened.
//!
//! Invariant: a route's series exist (at zero) from its first generation,
//! so dashboards and alerts see them before the first request.

use prometheus::Registry;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec};

use crate::metrics::{counter_vec, histogram_vec, int_gauge_vec};

/// fsync takes tens of microseconds on a fast SSD, milliseconds on a
/// virtual disk, up to seconds on a saturated one.
const FSYNC_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The async route families, labelled by route.
#[derive(Clone)]
pub struct AsyncFamilies {
    depth: IntGaugeVec,
    bytes: IntGaugeVec,
    dead_letters: IntGaugeVec,
    oldest: IntGaugeVec,
    capacity: IntGaugeVec,
    deliver_within: IntGaugeVec,
    events: IntCounterVec,
    claimed: IntCounterVec,
    fsync: HistogramVec,
}

impl AsyncFamilies {
    /// Declares and registers the families in `r`.
    pub fn register(r: &Registry) -> Result<AsyncFamilies, prometheus::Error> {
        let route = &["route"];
        Ok(AsyncFamilies {
            depth: int_gauge_vec(
                r,
                "sluice_async_depth",
                "Requests an async route holds now: queued, in flight and dead letters (its capacity counts these).",
                route,
            )?,
            bytes: int_gauge_vec(
                r,
                "sluice_async_depth_bytes",
                "Bytes of the async route's journal on disk now.",
                route,
            )?,
            dead_letters: int_gauge_vec(
                r,
                "sluice_async_dead_letters",
                "Requests of an async route parked as dead letters (out of attempts) now.",
                route,
            )?,
            oldest: int_gauge_vec(
                r,
                "sluice_async_oldest_age_seconds",
                "Age of the oldest request an async route still has to deliver (dead letters left out); it expires at deliver_within.",
                route,
            )?,
            capacity: int_gauge_vec(
                r,
                "sluice_async_capacity",
                "Configured capacity of an async route, in requests; beyond it new requests get 503.",
                route,
            )?,
            deliver_within: int_gauge_vec(
                r,
                "sluice_async_deliver_within_seconds",
                "Configured deliver_within of an async route: a request not delivered by then expires.",
                route,
            )?,
            events: counter_vec(
                r,
                "sluice_async_requests_total",
                "Async route requests by event: accepted (durable, 202), delivered (2xx-4xx from the backend), retried (an attempt failed), expired (not delivered within deliver_within), dead_lettered (out of attempts), refused (503: store full or write error).",
                &["route", "event"],
            )?,
            claimed: counter_vec(
                r,
                "sluice_async_claimed_total",
                "Requests of an async route on the redis store that this instance took over from another instance that held them past claim_idle (crashed, stuck or cut off); they are delivered again, so the backend may see some twice.",
                route,
            )?,
            fsync: histogram_vec(
                r,
                "sluice_async_fsync_seconds",
                "Duration of each fsync of an async route's journal (one per group of appends).",
                FSYNC_BUCKETS,
                route,
            )?,
        })
    }
}

/// What happened to an async route's request, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Accepted,
    Delivered,
    Retried,
    Expired,
    DeadLettered,
    Refused,
}

impl Event {
    const ALL: [Event; 6] = [
        Event::Accepted,
        Event::Delivered,
        Event::Retried,
        Event::Expired,
        Event::DeadLettered,
        Event::Refused,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Event::Accepted => "accepted",
            Event::Delivered => "delivered",
            Event::Retried => "retried",
            Event::Expired => "expired",
            Event::DeadLettered => "dead_lettered",
            Event::Refused => "refused",
        }
    }
}

/// One async route's handles.
#[derive(Clone)]
pub struct AsyncMetrics {
    depth: IntGauge,
    bytes: IntGauge,
    dead_letters: IntGauge,
    oldest: IntGauge,
    capacity: IntGauge,
    deliver_within: IntGauge,
    events: [IntCounter; 6],
    claimed: IntCounter,
    pub(super) fsync: Histogram,
}

impl AsyncMetrics {
    pub fn new(f: &AsyncFamilies, route: &str) -> AsyncMetrics {
        AsyncMetrics {
            depth: f.depth.with_label_values(&[route]),
            bytes: f.bytes.with_label_values(&[route]),
            dead_letters: f.dead_letters.with_label_values(&[route]),
            oldest: f.oldest.with_label_values(&[route]),
            capacity: f.capacity.with_label_values(&[route]),
            deliver_within: f.deliver_within.with_label_values(&[route]),
            events: Event::ALL.map(|e| f.events.with_label_values(&[route, e.as_str()])),
            claimed: f.claimed.with_label_values(&[route]),
            fsync: f.fsync.with_label_values(&[route]),
        }
    }

    pub fn count(&self, event: Event) {
        self.events[event as usize].inc();
    }

    pub(super) fn claimed(&self, n: usize) {
        self.claimed.inc_by(n as u64);
    }

    pub(super) fn configured(&self, capacity: usize, deliver_within_secs: u64) {
        self.capacity.set(capacity as i64);
        self.deliver_within.set(deliver_within_secs as i64);
    }

    pub(super) fn sample(&self, depth: usize, bytes: u64, dead_letters: usize, oldest_secs: u64) {
        self.depth.set(depth as i64);
        self.bytes.set(bytes as i64);
        self.dead_letters.set(dead_letters as i64);
        self.oldest.set(oldest_secs as i64);
    }
}
