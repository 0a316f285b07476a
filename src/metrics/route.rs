//! The route families: requests by outcome (per route and per priority
//! class), the queue, the configured limits, the per-key table and dry runs.
//!
//! Invariant: every request is counted exactly once in
//! `sluice_requests_total` and once in `sluice_class_requests_total`, through
//! a [`RouteMetrics`] resolved when the route is built.

use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry,
};

use super::{Metrics, counter_vec, gauge_value, gauge_vec, histogram_vec, int_gauge_vec};
use crate::config::RouteConfig;
use crate::outcome::Outcome;

/// Class label of requests that match no configured class.
pub const DEFAULT_CLASS: &str = "default";

/// Route label used for requests that matched no route.
pub const NO_ROUTE_LABEL: &str = "-";

/// Buckets for queue wait: 1 ms to 30 s.
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// The route families, labelled by route (and class, outcome, limit).
#[derive(Clone)]
pub(super) struct RouteFamilies {
    requests: IntCounterVec,
    queue_depth: IntGaugeVec,
    queue_oldest_wait: GaugeVec,
    queue_wait: HistogramVec,
    limits: LimitFamilies,
    class_requests: IntCounterVec,
    class_depth: IntGaugeVec,
    keys_tracked: IntGaugeVec,
    key_evictions: IntCounterVec,
    dry_run: IntCounterVec,
}

impl RouteFamilies {
    pub(super) fn register(r: &Registry) -> Result<RouteFamilies, prometheus::Error> {
        let route = &["route"];
        Ok(RouteFamilies {
            requests: counter_vec(
                r,
                "sluice_requests_total",
                "Requests by route and outcome; every request is counted exactly once.",
                &["route", "outcome"],
            )?,
            queue_depth: int_gauge_vec(
                r,
                "sluice_queue_depth",
                "Requests waiting in the route's queue.",
                route,
            )?,
            queue_oldest_wait: gauge_vec(
                r,
                "sluice_queue_oldest_wait_seconds",
                "How long the oldest queued request of the route has waited.",
                route,
            )?,
            queue_wait: histogram_vec(
                r,
                "sluice_queue_wait_seconds",
                "Time requests spent in the queue, observed when they leave it (released or dropped).",
                WAIT_BUCKETS,
                route,
            )?,
            limits: LimitFamilies::register(r)?,
            class_requests: counter_vec(
                r,
                "sluice_class_requests_total",
                "Requests by route, priority class and outcome.",
                &["route", "class", "outcome"],
            )?,
            class_depth: int_gauge_vec(
                r,
                "sluice_class_queue_depth",
                "Requests waiting in the route's queue, by priority class.",
                &["route", "class"],
            )?,
            keys_tracked: int_gauge_vec(
                r,
                "sluice_keys_tracked",
                "Client keys the route's per-key limiter tracks now (at most max_keys).",
                route,
            )?,
            key_evictions: counter_vec(
                r,
                "sluice_key_evictions_total",
                "Idle client keys evicted from the route's per-key limiter to stay within max_keys.",
                route,
            )?,
            dry_run: counter_vec(
                r,
                "sluice_dry_run_limited_total",
                "Requests a limit in dry-run mode would have limited (route: queued or rejected; key: 429).",
                &["route", "limit"],
            )?,
        })
    }
}

/// The configured limits of each route, published when the route is built.
#[derive(Clone)]
struct LimitFamilies {
    rate: GaugeVec,
    burst: IntGaugeVec,
    capacity: IntGaugeVec,
    timeout: GaugeVec,
    max_keys: IntGaugeVec,
}

impl LimitFamilies {
    fn register(r: &Registry) -> Result<LimitFamilies, prometheus::Error> {
        let route = &["route"];
        Ok(LimitFamilies {
            rate: gauge_vec(
                r,
                "sluice_route_rate_limit",
                "Release rate of the route in force from its config, requests per second (0: no rate limit); with rate_per_target, the figure times the upstream's healthy targets.",
                route,
            )?,
            burst: int_gauge_vec(
                r,
                "sluice_route_burst",
                "Configured burst of the route.",
                route,
            )?,
            capacity: int_gauge_vec(
                r,
                "sluice_route_queue_capacity",
                "Configured queue capacity of the route.",
                route,
            )?,
            timeout: gauge_vec(
                r,
                "sluice_route_queue_timeout_seconds",
                "Configured maximum queue wait of the route.",
                route,
            )?,
            max_keys: int_gauge_vec(
                r,
                "sluice_route_max_keys",
                "Configured max_keys of the route's per-key limit (0: no per-key limit).",
                route,
            )?,
        })
    }

    /// Publishes `route`'s configured limits.
    fn publish(&self, route: &RouteConfig) {
        let name = route.name.as_str();
        let (rate, burst) = route.limit.map_or((0.0, 0), |l| (l.rate, l.burst.get()));
        self.rate.with_label_values(&[name]).set(rate);
        self.burst.with_label_values(&[name]).set(i64::from(burst));
        self.capacity
            .with_label_values(&[name])
            .set(gauge_value(route.queue.capacity));
        self.timeout
            .with_label_values(&[name])
            .set(route.queue.timeout.as_secs_f64());
        self.max_keys
            .with_label_values(&[name])
            .set(route.key_limit.map_or(0, |k| gauge_value(k.max_keys.get())));
    }
}

/// One route's handles.
#[derive(Clone)]
pub struct RouteMetrics {
    outcomes: [IntCounter; Outcome::ALL.len()],
    /// Per class (index as in the shaper), the same outcomes.
    class_outcomes: Vec<[IntCounter; Outcome::ALL.len()]>,
    class_depth: Vec<IntGauge>,
    queue_wait: Histogram,
    depth: IntGauge,
    oldest_wait: Gauge,
    keys_tracked: IntGauge,
    key_evictions: IntCounter,
    dry_run_route: IntCounter,
    dry_run_key: IntCounter,
}

/// Which limit a dry run would have applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRunLimit {
    /// The route's rate: the request would have been queued or rejected.
    Route,
    /// The key's own rate: the request would have got 429.
    Key,
}

impl Metrics {
    /// The `sluice_route_rate_limit` series of `route`, for a rate that
    /// moves while the route runs (`rate_per_target`).
    pub fn route_rate_limit(&self, route: &str) -> Gauge {
        self.route.limits.rate.with_label_values(&[route])
    }

    /// Handles for one route, with its configured limits published.
    pub fn route(&self, route: &RouteConfig) -> RouteMetrics {
        self.route.limits.publish(route);
        let name = route.name.as_str();
        let classes: Vec<&str> = route
            .classes
            .iter()
            .map(|c| c.name.as_str())
            .chain([DEFAULT_CLASS])
            .collect();
        self.route_with_classes(name, &classes)
    }

    /// Outcome counters for a route label without published limits (the no-route label).
    pub fn unrouted_for(&self, name: &str) -> RouteMetrics {
        self.route_with_classes(name, &[DEFAULT_CLASS])
    }

    fn route_with_classes(&self, name: &str, classes: &[&str]) -> RouteMetrics {
        let families = &self.route;
        let counters = |class: Option<&str>| {
            Outcome::ALL.map(|o| match class {
                None => families.requests.with_label_values(&[name, o.as_str()]),
                Some(class) => {
                    families
                        .class_requests
                        .with_label_values(&[name, class, o.as_str()])
                }
            })
        };
        RouteMetrics {
            outcomes: counters(None),
            class_outcomes: classes.iter().map(|c| counters(Some(c))).collect(),
            class_depth: classes
                .iter()
                .map(|class| families.class_depth.with_label_values(&[name, class]))
                .collect(),
            queue_wait: families.queue_wait.with_label_values(&[name]),
            depth: families.queue_depth.with_label_values(&[name]),
            oldest_wait: families.queue_oldest_wait.with_label_values(&[name]),
            keys_tracked: families.keys_tracked.with_label_values(&[name]),
            key_evictions: families.key_evictions.with_label_values(&[name]),
            dry_run_route: families.dry_run.with_label_values(&[name, "route"]),
            dry_run_key: families.dry_run.with_label_values(&[name, "key"]),
        }
    }
}

impl RouteMetrics {
    /// Counts a request's outcome, for the route and for its class.
    pub fn outcome(&self, class: usize, outcome: Outcome) {
        self.outcomes[outcome as usize].inc();
        if let Some(by_class) = self.class_outcomes.get(class) {
            by_class[outcome as usize].inc();
        }
    }

    pub fn dry_run(&self, limit: DryRunLimit) {
        match limit {
            DryRunLimit::Route => self.dry_run_route.inc(),
            DryRunLimit::Key => self.dry_run_key.inc(),
        }
    }

    /// Sets the sampled per-class depths (called at scrape time).
    pub fn sample_class_depth(&self, class: usize, depth: usize) {
        if let Some(gauge) = self.class_depth.get(class) {
            gauge.set(gauge_value(depth));
        }
    }

    /// Sets the sampled key-table figures (called at scrape time).
    pub fn sample_keys(&self, tracked: usize, evictions_total: u64) {
        self.keys_tracked.set(gauge_value(tracked));
        let counted = self.key_evictions.get();
        if evictions_total > counted {
            self.key_evictions.inc_by(evictions_total - counted);
        }
    }

    pub fn queue_wait(&self, seconds: f64) {
        self.queue_wait.observe(seconds);
    }

    /// Sets the sampled queue gauges (called at scrape time).
    pub fn sample_queue(&self, depth: usize, oldest_wait_secs: f64) {
        self.depth.set(gauge_value(depth));
        self.oldest_wait.set(oldest_wait_secs);
    }
}
