//! The metrics a generation's components report to: the [`Metrics`]
//! registry with its route and process families, and the families the
//! upstreams and the Redis store declare and register themselves.
//!
//! Registered once, when the process starts; every generation resolves its
//! handles (per route, upstream, target, global route) from these when it
//! is built, so the request path never looks a label up.

use super::deferred::AsyncFamilies;
use crate::metrics::Metrics;
use crate::store::RedisFamilies;
use crate::upstream::UpstreamFamilies;

/// Every family sluice exports, each registered by its owner.
#[derive(Clone)]
pub struct Telemetry {
    pub metrics: Metrics,
    pub(super) upstream: UpstreamFamilies,
    pub(super) redis: RedisFamilies,
    pub(super) deferred: AsyncFamilies,
}

impl Telemetry {
    /// Registers the upstream's and the store's families beside `metrics`'
    /// own; fails only if a name or label set is invalid or taken twice,
    /// which the tests would show at once.
    pub fn new(metrics: Metrics) -> Result<Telemetry, prometheus::Error> {
        Ok(Telemetry {
            upstream: UpstreamFamilies::register(metrics.registry())?,
            redis: RedisFamilies::register(metrics.registry())?,
            deferred: AsyncFamilies::register(metrics.registry())?,
            metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;
    use crate::config::Config;
    use crate::metrics::NO_ROUTE_LABEL;
    use crate::store::{RedisCallResult, RedisRouteMetrics};
    use crate::upstream::{Resolution, TargetMetrics, UpstreamMetrics};

    /// Every family sluice exports, by name; dashboards and alert rules
    /// (tests/it/dashboards.rs) depend on these.
    const FAMILIES: [&str; 47] = [
        "sluice_async_capacity",
        "sluice_async_dead_letters",
        "sluice_async_deliver_within_seconds",
        "sluice_async_depth",
        "sluice_async_depth_bytes",
        "sluice_async_fsync_seconds",
        "sluice_async_oldest_age_seconds",
        "sluice_async_requests_total",
        "sluice_async_claimed_total",
        "sluice_build_info",
        "sluice_class_queue_depth",
        "sluice_class_requests_total",
        "sluice_config_last_reload_success_timestamp_seconds",
        "sluice_config_reloads_total",
        "sluice_connections_max",
        "sluice_connections_open",
        "sluice_connections_refused_total",
        "sluice_dns_resolutions_total",
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
        "sluice_upstream_healthy_targets",
        "sluice_upstream_inflight",
        "sluice_upstream_max_inflight",
        "sluice_upstream_response_seconds",
        "sluice_upstream_retries_total",
        "sluice_upstream_targets",
    ];

    #[test]
    fn every_family_is_registered_once_and_rendered_with_its_help() {
        let src = "[upstreams.api]\ntargets = [\"127.0.0.1:9000\"]\n\n\
                   [[routes]]\nname = \"default\"\nupstream = \"api\"\n";
        let config = Config::parse(src, Path::new("test.toml")).unwrap();
        let telemetry = Telemetry::new(Metrics::new().unwrap()).unwrap();
        let metrics = &telemetry.metrics;
        // Families show once they have a series: resolve one of each.
        let route = metrics.route(&config.routes[0]);
        route.queue_wait(0.1);
        metrics.unrouted_for(NO_ROUTE_LABEL);
        let upstream = UpstreamMetrics::new(&telemetry.upstream, "api", 10);
        upstream.latency(0.1);
        TargetMetrics::new(&telemetry.upstream, "api", "127.0.0.1:9000").latency(0.1);
        telemetry.upstream.targets("api", Some("api.internal"), 2);
        telemetry
            .upstream
            .resolution("api", "api.internal", Resolution::Ok);
        RedisRouteMetrics::new(&telemetry.redis, "default").call(RedisCallResult::Ok, 0.001);
        metrics.connections_max(1024);
        let deferred = crate::gateway::deferred::AsyncMetrics::new(&telemetry.deferred, "default");
        deferred.count(crate::gateway::deferred::Event::Accepted);
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

    #[test]
    fn a_family_registered_twice_is_refused() {
        let metrics = Metrics::new().unwrap();
        let once = Telemetry::new(metrics.clone());
        assert!(once.is_ok());
        assert!(Telemetry::new(metrics).is_err());
    }
}
