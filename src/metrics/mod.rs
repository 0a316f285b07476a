//! Prometheus metrics: one registry, families declared with their help text
//! by the part of the flow they describe, and small typed handles resolved
//! once per config generation.
//!
//! The request path increments pre-resolved handles ([`RouteMetrics`],
//! [`UpstreamMetrics`]); no label string is built or looked up per request.
//! Label values are only route and upstream names from the config and fixed
//! outcome names, so cardinality is bounded by the config.
//!
//! Contents: `route` (requests, queues, classes, keys, dry runs),
//! `upstream` (upstreams and their targets), `redis` (global limits held in
//! Redis), `process` (reloads, connections, build info).

mod process;
mod redis;
mod route;
mod upstream;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use self::process::ProcessFamilies;
use self::redis::RedisFamilies;
pub use self::redis::{RedisCallResult, RedisRouteMetrics};
use self::route::RouteFamilies;
pub use self::route::{DEFAULT_CLASS, DryRunLimit, NO_ROUTE_LABEL, RouteMetrics};
use self::upstream::UpstreamFamilies;
pub use self::upstream::{TargetMetrics, UpstreamErrorKind, UpstreamMetrics};

/// Every metric sluice exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    route: RouteFamilies,
    upstream: UpstreamFamilies,
    redis: RedisFamilies,
    process: ProcessFamilies,
}

impl Metrics {
    /// Declares and registers every metric; fails only if a name or label
    /// set is invalid, which the tests would show at once.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        Ok(Metrics {
            route: RouteFamilies::register(&registry)?,
            upstream: UpstreamFamilies::register(&registry)?,
            redis: RedisFamilies::register(&registry)?,
            process: ProcessFamilies::register(&registry)?,
            registry,
        })
    }

    /// Adds a collector sampled at scrape time (the listeners' probe).
    pub fn register(&self, collector: Box<dyn Collector>) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::error!(%err, "cannot encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Registers `collector` and hands it back, for the families' `register`.
fn registered<C: Collector + Clone + 'static>(
    registry: &Registry,
    collector: C,
) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// A registered counter family.
fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// A registered integer gauge family.
fn int_gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

/// A registered float gauge family.
fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    registered(registry, GaugeVec::new(Opts::new(name, help), labels)?)
}

/// A registered histogram family with the given buckets.
fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec, prometheus::Error> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(registry, HistogramVec::new(opts, labels)?)
}

/// A count as a gauge value, saturating (a count never reaches `i64::MAX`).
fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    /// Every family sluice exports, by name; dashboards and alert rules
    /// (tests/dashboards.rs) depend on these.
    const FAMILIES: [&str; 35] = [
        "sluice_build_info",
        "sluice_class_queue_depth",
        "sluice_class_requests_total",
        "sluice_config_last_reload_success_timestamp_seconds",
        "sluice_config_reloads_total",
        "sluice_connections_max",
        "sluice_connections_open",
        "sluice_connections_refused_total",
        "sluice_dry_run_limited_total",
        "sluice_key_evictions_total",
        "sluice_keys_tracked",
        "sluice_queue_depth",
        "sluice_queue_oldest_wait_seconds",
        "sluice_queue_wait_seconds",
        "sluice_redis_call_seconds",
        "sluice_redis_calls_total",
        "sluice_redis_fallback",
        "sluice_redis_tokens_total",
        "sluice_requests_total",
        "sluice_route_burst",
        "sluice_route_max_keys",
        "sluice_route_queue_capacity",
        "sluice_route_queue_timeout_seconds",
        "sluice_route_rate_limit",
        "sluice_target_healthy",
        "sluice_target_inflight",
        "sluice_target_requests_total",
        "sluice_target_response_seconds",
        "sluice_target_errors_total",
        "sluice_upstream_concurrency_limit",
        "sluice_upstream_errors_total",
        "sluice_upstream_inflight",
        "sluice_upstream_max_inflight",
        "sluice_upstream_response_seconds",
        "sluice_upstream_retries_total",
    ];

    #[test]
    fn every_family_is_registered_once_and_rendered_with_its_help() {
        let src = "[upstreams.api]\ntargets = [\"127.0.0.1:9000\"]\n\n\
                   [[routes]]\nname = \"default\"\nupstream = \"api\"\n";
        let config = Config::parse(src, Path::new("test.toml")).unwrap();
        let metrics = Metrics::new().unwrap();
        // Families show once they have a series: resolve one of each.
        let route = metrics.route(&config.routes[0]);
        route.queue_wait(0.1);
        metrics.unrouted_for(NO_ROUTE_LABEL);
        let upstream = metrics.upstream("api", 10);
        upstream.latency(0.1);
        metrics.target("api", "127.0.0.1:9000").latency(0.1);
        metrics
            .redis_route("default")
            .call(RedisCallResult::Ok, 0.001);
        metrics.connections_max(1024);
        let rendered = metrics.render();
        let helped: Vec<&str> = rendered
            .lines()
            .filter_map(|line| line.strip_prefix("# HELP "))
            .filter_map(|line| line.split_once(' ').map(|(name, _)| name))
            .collect();
        let unique: BTreeSet<&str> = helped.iter().copied().collect();
        assert_eq!(unique.len(), helped.len(), "a family rendered twice");
        assert_eq!(unique, BTreeSet::from(FAMILIES));
    }
}
