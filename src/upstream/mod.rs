//! Upstreams: a pool of backend targets behind one keep-alive HTTP client.
//!
//! A request picks a target by the pool's `balance` among the targets that
//! are healthy and under their own in-flight cap. While no target is
//! healthy the pool's [`Gate`] is shut, so the shaper holds requests in the
//! queue rather than failing each at once. The pool's in-flight cap is a
//! semaphore shared by every route naming the upstream; the shaper hands
//! out its permits. With `[adaptive]` the cap follows measured latency.
//!
//! Invariant: a request is counted on exactly one target at a time, from
//! its pick until its [`TargetGuard`] drops, and a failure the client
//! caused never counts against the target.
//!
//! Contents:
//! - `send`: the attempt loop, one attempt, retries, what each teaches;
//! - `balance`: choosing a target (one file per algorithm);
//! - `target`: a target and the claim a request holds on it;
//! - `members`: the set of targets in force, rebuilt when it changes;
//! - `discovery`: targets discovered by DNS, resolved again periodically;
//! - `health`: passive ejection, the active probe, the gate;
//! - `capacity`: the in-flight cap and its resizing;
//! - [`adaptive`]: the latency-driven limit;
//! - `client`: the general client (TLS, HTTP/2, probes); [`h1pool`]: plain
//!   HTTP/1.1 connections on sluice's own codec (`h1conn`: one connection's
//!   exchange, [`h1body`]: a response body read from its connection);
//! - [`body`]: [`UpstreamBody`], the response body relayed whichever client
//!   fetched it, and the backend's side of a switched protocol;
//! - `error`: [`UpstreamError`], one status per failure;
//! - [`metrics`]: the upstream and target families, registered here.

pub mod adaptive;
mod balance;
pub mod body;
mod capacity;
mod client;
mod discovery;
mod error;
pub mod h1body;
mod h1conn;
pub mod h1pool;
mod health;
mod members;
pub mod metrics;
mod send;
mod target;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::uri::Scheme;
use hyper_util::client::legacy::Client;
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

use self::adaptive::GradientLimit;
pub use self::body::{UpstreamBody, UpstreamIo, upgrade};
use self::capacity::Capacity;
use self::client::Connector;
pub use self::error::UpstreamError;
use self::members::{Entry, Members};
pub use self::metrics::{
    Resolution, TargetMetrics, UpstreamErrorKind, UpstreamFamilies, UpstreamMetrics,
};
pub use self::target::TargetGuard;
use crate::config::{DnsConfig, UpstreamConfig};
use crate::http::request_body::RequestBody;
use crate::shaper::Gate;

/// The request body sent upstream: the client's (held to `max_body_bytes`
/// and `client_body_timeout`), or empty on a retry.
pub type ProxyBody = RequestBody;

/// One upstream pool.
pub struct Upstream {
    config: UpstreamConfig,
    /// `[dns]`, when some target is discovered.
    dns: Option<DnsConfig>,
    name: String,
    /// The targets in force (swapped whole when discovery changes them).
    members: ArcSwap<Members>,
    /// `targets` as written, with what discovery last learnt of each name.
    entries: Mutex<Vec<Entry>>,
    /// Targets that left the set while requests were in flight to them,
    /// counted in [`Upstream::inflight`] until they are gone.
    draining: Mutex<Vec<std::sync::Weak<target::Target>>>,
    /// Healthy targets now; routes with `rate_per_target` follow it.
    healthy: watch::Sender<usize>,
    /// Discovery rounds completed.
    rounds: watch::Sender<u64>,
    families: UpstreamFamilies,
    client: Client<Connector, ProxyBody>,
    scheme: Scheme,
    timeout: Duration,
    max_inflight: usize,
    inflight: Arc<Semaphore>,
    /// The cap in force (the adaptive limit, or `max_inflight`), and permits
    /// still owed to a lowered cap.
    capacity: Mutex<Capacity>,
    adaptive: Option<Mutex<GradientLimit>>,
    gate: Arc<Gate>,
    /// Signalled when a target's in-flight count drops.
    target_freed: Notify,
    metrics: UpstreamMetrics,
    checker: Mutex<Option<tokio::task::JoinHandle<()>>>,
    discoverer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Upstream {
    /// A pool for `config` (`dns`: where discovery asks). Given the
    /// `previous` generation of the same upstream, its in-flight accounting
    /// carries over (resized to the new cap), and so do its gate, the
    /// addresses it knew for each name, and each target that stays as it
    /// was (health, idle connections, in-flight count).
    pub fn new(
        config: &UpstreamConfig,
        dns: &DnsConfig,
        metrics: &UpstreamFamilies,
        previous: Option<&Upstream>,
    ) -> Result<Arc<Upstream>, crate::tls::TlsError> {
        let (client, scheme) = client::build(config)?;
        let max_inflight = config.max_inflight.get();
        let adaptive = config.adaptive.map(|a| GradientLimit::new(&a));
        let limit = adaptive
            .as_ref()
            .map_or(max_inflight, |a| a.limit().min(max_inflight));
        let upstream_metrics = UpstreamMetrics::new(metrics, &config.name, max_inflight);
        upstream_metrics.adaptive_limit(limit);
        let (inflight, capacity) = Capacity::carry_over(previous, limit);
        let entries = members::entries(config, previous);
        let reuse = previous
            .filter(|old| members::pools_alike(&old.config, config))
            .map(|old| old.members.load_full().targets.clone())
            .unwrap_or_default();
        let targets = members::targets(config, metrics, &entries, &reuse);
        let upstream = Arc::new(Upstream {
            config: config.clone(),
            dns: config.discovery.map(|_| dns.clone()),
            name: config.name.clone(),
            members: ArcSwap::from_pointee(Members::new(config.balance, targets)),
            entries: Mutex::new(entries),
            draining: Mutex::new(Vec::new()),
            healthy: watch::Sender::new(0),
            rounds: watch::Sender::new(0),
            families: metrics.clone(),
            client,
            scheme,
            timeout: config.timeout,
            max_inflight,
            inflight,
            capacity: Mutex::new(capacity),
            adaptive: adaptive.map(Mutex::new),
            gate: previous.map_or_else(|| Arc::new(Gate::new(true)), |old| old.gate.clone()),
            target_freed: Notify::new(),
            metrics: upstream_metrics,
            checker: Mutex::new(None),
            discoverer: Mutex::new(None),
        });
        upstream.publish_origins(&upstream.members.load().targets);
        upstream.refresh_health();
        upstream.refresh_after_ejections();
        upstream.start_tasks();
        Ok(upstream)
    }

    /// The active health check and the discovery, when configured.
    fn start_tasks(self: &Arc<Self>) {
        if let Some(active) = &self.config.active_health {
            let task = tokio::spawn(health::probe(Arc::downgrade(self), active.clone()));
            *self.checker.lock() = Some(task);
        }
        if let (Some(discovery), Some(dns), true) =
            (self.config.discovery, &self.dns, self.discovering())
        {
            let task = tokio::spawn(discovery::discover(
                Arc::downgrade(self),
                dns.clone(),
                discovery.interval,
            ));
            *self.discoverer.lock() = Some(task);
        }
    }

    /// Whether a pool built for `config` and `dns` would be this one.
    pub fn serves(&self, config: &UpstreamConfig, dns: &DnsConfig) -> bool {
        self.config == *config && self.dns.as_ref().is_none_or(|d| d == dns)
    }

    /// Healthy targets now, and each change of that count.
    pub fn healthy_targets(&self) -> watch::Receiver<usize> {
        self.healthy.subscribe()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The config this pool was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// The configured hard cap on requests in flight.
    pub fn max_inflight(&self) -> usize {
        self.max_inflight
    }

    /// The cap in force now (the adaptive limit when adaptive).
    pub fn current_limit(&self) -> usize {
        self.capacity.lock().limit
    }

    /// The in-flight cap, for the shapers of the routes using this upstream.
    pub fn inflight_cap(&self) -> Arc<Semaphore> {
        self.inflight.clone()
    }

    /// Open while some target is healthy.
    pub fn gate(&self) -> Arc<Gate> {
        self.gate.clone()
    }

    /// Requests in flight now, to targets of the set and to those draining.
    pub fn inflight(&self) -> usize {
        let draining: usize = self
            .draining
            .lock()
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|t| t.inflight.load(Ordering::Relaxed))
            .sum();
        let members: usize = self
            .members
            .load()
            .targets
            .iter()
            .map(|t| t.inflight.load(Ordering::Relaxed))
            .sum();
        members + draining
    }

    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// Updates the sampled per-target gauges (called at scrape time).
    pub fn sample_metrics(&self) {
        self.metrics.sample_inflight(self.inflight());
        let now = Instant::now();
        for target in &self.members.load().targets {
            target
                .metrics
                .sample_inflight(target.inflight.load(Ordering::Relaxed));
            target.metrics.healthy(target.health.lock().available(now));
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        for task in [&self.checker, &self.discoverer] {
            if let Some(task) = task.lock().take() {
                task.abort();
            }
        }
    }
}
