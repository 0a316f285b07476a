//! The upstream families, declared and registered here, by the part of the
//! flow they describe: latency, errors, retries and in-flight requests of
//! each upstream, and the same per target; and the handles resolved once
//! per upstream and target when a generation is built.
//!
//! Invariant: label values are upstream and target names from the config
//! and the three error kinds, so the series are bounded by the config.

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use crate::metrics::{counter_vec, gauge_value, histogram_vec, int_gauge_vec};

/// Buckets for upstream latency: 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// The upstream and target families.
#[derive(Clone)]
pub struct UpstreamFamilies {
    upstream_latency: HistogramVec,
    upstream_errors: IntCounterVec,
    upstream_inflight: IntGaugeVec,
    upstream_max_inflight: IntGaugeVec,
    upstream_retries: IntCounterVec,
    upstream_limit: IntGaugeVec,
    target_requests: IntCounterVec,
    target_errors: IntCounterVec,
    target_latency: HistogramVec,
    target_healthy: IntGaugeVec,
    target_inflight: IntGaugeVec,
    targets: TargetSetFamilies,
}

/// The families of the target set: targets by origin, healthy targets and
/// DNS resolutions.
#[derive(Clone)]
struct TargetSetFamilies {
    by_origin: IntGaugeVec,
    healthy: IntGaugeVec,
    resolutions: IntCounterVec,
}

impl TargetSetFamilies {
    fn register(r: &Registry) -> Result<TargetSetFamilies, prometheus::Error> {
        Ok(TargetSetFamilies {
            by_origin: int_gauge_vec(
                r,
                "sluice_upstream_targets",
                "Targets in the upstream's set by origin: \"static\" (written as an address) or \"dns\" (the addresses of `name`).",
                &["upstream", "origin", "name"],
            )?,
            healthy: int_gauge_vec(
                r,
                "sluice_upstream_healthy_targets",
                "Targets of the upstream taking traffic now (not ejected, not failing the active check).",
                &["upstream"],
            )?,
            resolutions: counter_vec(
                r,
                "sluice_dns_resolutions_total",
                "DNS resolutions of each discovered name by result (ok, empty, error); empty and error keep the last known addresses.",
                &["upstream", "name", "result"],
            )?,
        })
    }
}

/// How a DNS resolution of a discovered name ended, as counted in
/// `sluice_dns_resolutions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    /// Addresses were found (the set takes them).
    Ok,
    /// The name has no A or AAAA record (NXDOMAIN or no data): the last
    /// known addresses are kept.
    Empty,
    /// No answer (timeout, refused, server failure): the last known
    /// addresses are kept.
    Error,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Ok => "ok",
            Resolution::Empty => "empty",
            Resolution::Error => "error",
        }
    }
}

impl UpstreamFamilies {
    /// Declares and registers the families in `r`; fails only if a name
    /// or label set is invalid or already taken, which the tests would show.
    pub fn register(r: &Registry) -> Result<UpstreamFamilies, prometheus::Error> {
        let upstream = &["upstream"];
        let target = &["upstream", "target"];
        Ok(UpstreamFamilies {
            upstream_latency: histogram_vec(
                r,
                "sluice_upstream_response_seconds",
                "Time from sending a request upstream to receiving its response head.",
                LATENCY_BUCKETS,
                upstream,
            )?,
            upstream_errors: counter_vec(
                r,
                "sluice_upstream_errors_total",
                "Failed upstream requests by kind (connect, timeout, other).",
                &["upstream", "kind"],
            )?,
            upstream_inflight: int_gauge_vec(
                r,
                "sluice_upstream_inflight",
                "Requests in flight to the upstream.",
                upstream,
            )?,
            upstream_max_inflight: int_gauge_vec(
                r,
                "sluice_upstream_max_inflight",
                "Configured cap on requests in flight to the upstream.",
                upstream,
            )?,
            upstream_retries: counter_vec(
                r,
                "sluice_upstream_retries_total",
                "Idempotent requests retried on another target after a connect failure.",
                upstream,
            )?,
            upstream_limit: int_gauge_vec(
                r,
                "sluice_upstream_concurrency_limit",
                "The in-flight cap in force: the adaptive limit, or max_inflight.",
                upstream,
            )?,
            target_requests: counter_vec(
                r,
                "sluice_target_requests_total",
                "Requests sent to each target (attempts, retries included).",
                target,
            )?,
            target_errors: counter_vec(
                r,
                "sluice_target_errors_total",
                "Attempts to each target that failed (connect, timeout, reset).",
                target,
            )?,
            target_latency: histogram_vec(
                r,
                "sluice_target_response_seconds",
                "Time from sending to a target to its response head.",
                LATENCY_BUCKETS,
                target,
            )?,
            target_healthy: int_gauge_vec(
                r,
                "sluice_target_healthy",
                "1 while the target takes traffic, 0 while ejected or failing its active check.",
                target,
            )?,
            target_inflight: int_gauge_vec(
                r,
                "sluice_target_inflight",
                "Requests in flight to the target.",
                target,
            )?,
            targets: TargetSetFamilies::register(r)?,
        })
    }

    /// Sets how many targets `name` (None: the static ones) gives.
    pub fn targets(&self, upstream: &str, name: Option<&str>, count: usize) {
        let (origin, name) = name.map_or(("static", ""), |n| ("dns", n));
        self.targets
            .by_origin
            .with_label_values(&[upstream, origin, name])
            .set(gauge_value(count));
    }

    /// Counts one resolution of `name`.
    pub fn resolution(&self, upstream: &str, name: &str, result: Resolution) {
        self.targets
            .resolutions
            .with_label_values(&[upstream, name, result.as_str()])
            .inc();
    }

    /// Drops the series of a discovered target that left the set, so
    /// addresses coming and going do not pile up series.
    pub(super) fn forget_target(&self, upstream: &str, target: &str) {
        let labels = [upstream, target];
        // A series not there (never touched) is not an error worth reporting.
        let _requests = self.target_requests.remove_label_values(&labels);
        let _errors = self.target_errors.remove_label_values(&labels);
        let _latency = self.target_latency.remove_label_values(&labels);
        let _healthy = self.target_healthy.remove_label_values(&labels);
        let _inflight = self.target_inflight.remove_label_values(&labels);
    }
}

/// One upstream's handles.
#[derive(Clone)]
pub struct UpstreamMetrics {
    retries: IntCounter,
    adaptive_limit: IntGauge,
    latency: Histogram,
    errors_connect: IntCounter,
    errors_timeout: IntCounter,
    errors_other: IntCounter,
    inflight: IntGauge,
    healthy_targets: IntGauge,
}

/// One target's handles.
#[derive(Clone)]
pub struct TargetMetrics {
    requests: IntCounter,
    errors: IntCounter,
    latency: Histogram,
    healthy: IntGauge,
    inflight: IntGauge,
}

/// Kinds of upstream failure, as counted in `sluice_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Other,
}

impl UpstreamMetrics {
    /// Handles for one upstream, with its configured cap published.
    pub fn new(families: &UpstreamFamilies, name: &str, max_inflight: usize) -> UpstreamMetrics {
        families
            .upstream_max_inflight
            .with_label_values(&[name])
            .set(gauge_value(max_inflight));
        let errors = |kind: &str| families.upstream_errors.with_label_values(&[name, kind]);
        UpstreamMetrics {
            retries: families.upstream_retries.with_label_values(&[name]),
            adaptive_limit: families.upstream_limit.with_label_values(&[name]),
            latency: families.upstream_latency.with_label_values(&[name]),
            errors_connect: errors("connect"),
            errors_timeout: errors("timeout"),
            errors_other: errors("other"),
            inflight: families.upstream_inflight.with_label_values(&[name]),
            healthy_targets: families.targets.healthy.with_label_values(&[name]),
        }
    }

    /// The targets taking traffic now.
    pub fn healthy_targets(&self, count: usize) {
        self.healthy_targets.set(gauge_value(count));
    }

    pub fn retry(&self) {
        self.retries.inc();
    }

    /// The in-flight cap now in force.
    pub fn adaptive_limit(&self, limit: usize) {
        self.adaptive_limit.set(gauge_value(limit));
    }

    pub fn latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    pub fn error(&self, kind: UpstreamErrorKind) {
        match kind {
            UpstreamErrorKind::Connect => self.errors_connect.inc(),
            UpstreamErrorKind::Timeout => self.errors_timeout.inc(),
            UpstreamErrorKind::Other => self.errors_other.inc(),
        }
    }

    /// Sets the sampled in-flight gauge (called at scrape time).
    pub fn sample_inflight(&self, inflight: usize) {
        self.inflight.set(gauge_value(inflight));
    }
}

impl TargetMetrics {
    /// Handles for one target of an upstream.
    pub fn new(families: &UpstreamFamilies, upstream: &str, target: &str) -> TargetMetrics {
        let labels = [upstream, target];
        TargetMetrics {
            requests: families.target_requests.with_label_values(&labels),
            errors: families.target_errors.with_label_values(&labels),
            latency: families.target_latency.with_label_values(&labels),
            healthy: families.target_healthy.with_label_values(&labels),
            inflight: families.target_inflight.with_label_values(&labels),
        }
    }

    pub fn request(&self) {
        self.requests.inc();
    }

    pub fn error(&self) {
        self.errors.inc();
    }

    pub fn latency(&self, seconds: f64) {
        self.latency.observe(seconds);
    }

    pub fn healthy(&self, healthy: bool) {
        self.healthy.set(i64::from(healthy));
    }

    pub fn sample_inflight(&self, inflight: usize) {
        self.inflight.set(gauge_value(inflight));
    }
}
