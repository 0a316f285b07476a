//! Prometheus metrics: one registry, families declared with their help text
//! by the part of the flow they describe, and small typed handles resolved
//! once per config generation.
//!
//! The request path increments pre-resolved handles ([`RouteMetrics`], and
//! the upstream's and store's own); no label string is built or looked up
//! per request. Label values are only route and upstream names from the
//! config and fixed outcome names, so cardinality is bounded by the config.
//!
//! Contents: `route` (requests, queues, classes, keys, dry runs),
//! `process` (reloads, connections, build info), and the helpers with which
//! the other components declare and register their own families in the
//! same [`Registry`] (`crate::upstream::metrics`: upstreams and targets;
//! `crate::store::metrics`: global limits held in Redis). Nothing here
//! imports them: they import this.

mod process;
mod route;

use prometheus::core::Collector;
use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use self::process::ProcessFamilies;
use self::route::RouteFamilies;
pub use self::route::{DEFAULT_CLASS, DryRunLimit, NO_ROUTE_LABEL, RouteMetrics};

/// Every metric sluice exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    route: RouteFamilies,
    process: ProcessFamilies,
}

impl Metrics {
    /// Declares and registers the route and process families; fails only
    /// if a name or label set is invalid, which the tests would show at
    /// once. Other components register theirs in [`Metrics::registry`].
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        Ok(Metrics {
            route: RouteFamilies::register(&registry)?,
            process: ProcessFamilies::register(&registry)?,
            registry,
        })
    }

    /// The registry every family is registered in, for the components
    /// that declare their own.
    pub fn registry(&self) -> &Registry {
        &self.registry
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
pub fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec, prometheus::Error> {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// A registered integer gauge family.
pub fn int_gauge_vec(
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
pub fn histogram_vec(
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
pub fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}
