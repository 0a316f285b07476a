//! Prometheus metrics, declared in one place with their help text.
//!
//! The request path increments pre-resolved handles ([`RouteMetrics`],
//! [`UpstreamMetrics`]); no label string is built or looked up per request.
//! Label values are only route and upstream names from the config and fixed
//! outcome names, so cardinality is bounded by the config.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

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

/// Buckets for upstream latency: 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets for calls to Redis: 100 µs (a call on the same host) to 1 s
/// (beyond any sane `[redis] timeout`).
const REDIS_CALL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// Every metric sluice exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    queue_depth: IntGaugeVec,
    queue_oldest_wait: GaugeVec,
    queue_wait: HistogramVec,
    route_rate: GaugeVec,
    route_burst: IntGaugeVec,
    route_capacity: IntGaugeVec,
    route_timeout: GaugeVec,
    route_max_keys: IntGaugeVec,
    upstream_latency: HistogramVec,
    upstream_errors: IntCounterVec,
    upstream_inflight: IntGaugeVec,
    upstream_max_inflight: IntGaugeVec,
    class_requests: IntCounterVec,
    class_depth: IntGaugeVec,
    keys_tracked: IntGaugeVec,
    key_evictions: IntCounterVec,
    dry_run: IntCounterVec,
    reloads: IntCounterVec,
    last_reload: Gauge,
    connections_open: IntGauge,
    connections_max: IntGauge,
    connections_refused: IntCounterVec,
    target_requests: IntCounterVec,
    target_errors: IntCounterVec,
    target_latency: HistogramVec,
    target_healthy: IntGaugeVec,
    target_inflight: IntGaugeVec,
    upstream_retries: IntCounterVec,
    upstream_limit: IntGaugeVec,
    redis_calls: IntCounterVec,
    redis_call_seconds: HistogramVec,
    redis_tokens: IntCounterVec,
    redis_fallback: IntGaugeVec,
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

/// One route's handles for its global (Redis-held) rate limit.
#[derive(Clone)]
pub struct RedisRouteMetrics {
    calls_ok: IntCounter,
    calls_error: IntCounter,
    calls_timeout: IntCounter,
    call_seconds: Histogram,
    tokens: IntCounter,
    fallback: IntGauge,
}

/// How a call to Redis ended, as counted in `sluice_redis_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisCallResult {
    /// Redis answered.
    Ok,
    /// Refused, reset, or an error reply: Redis or the link to it is broken.
    Error,
    /// No answer within `[redis] timeout`: Redis is slow or unreachable.
    Timeout,
}

/// Which limit a dry run would have applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DryRunLimit {
    /// The route's rate: the request would have been queued or rejected.
    Route,
    /// The key's own rate: the request would have got 429.
    Key,
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

impl TargetMetrics {
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
        self.inflight
            .set(i64::try_from(inflight).unwrap_or(i64::MAX));
    }
}

/// Kinds of upstream failure, as counted in `sluice_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Other,
}

impl Metrics {
    /// Declares and registers every metric; fails only if a name or label
    /// set here is invalid, which the tests would show at once.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "sluice_requests_total",
                "Requests by route and outcome; every request is counted exactly once.",
            ),
            &["route", "outcome"],
        )?;
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "sluice_queue_depth",
                "Requests waiting in the route's queue.",
            ),
            &["route"],
        )?;
        let queue_oldest_wait = GaugeVec::new(
            Opts::new(
                "sluice_queue_oldest_wait_seconds",
                "How long the oldest queued request of the route has waited.",
            ),
            &["route"],
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "sluice_queue_wait_seconds",
                "Time requests spent in the queue, observed when they leave it (released or dropped).",
            )
            .buckets(WAIT_BUCKETS.to_vec()),
            &["route"],
        )
        ?;
        let route_rate = GaugeVec::new(
            Opts::new(
                "sluice_route_rate_limit",
                "Configured release rate of the route, requests per second (0: no rate limit).",
            ),
            &["route"],
        )?;
        let route_burst = IntGaugeVec::new(
            Opts::new("sluice_route_burst", "Configured burst of the route."),
            &["route"],
        )?;
        let route_capacity = IntGaugeVec::new(
            Opts::new(
                "sluice_route_queue_capacity",
                "Configured queue capacity of the route.",
            ),
            &["route"],
        )?;
        let route_timeout = GaugeVec::new(
            Opts::new(
                "sluice_route_queue_timeout_seconds",
                "Configured maximum queue wait of the route.",
            ),
            &["route"],
        )?;
        let route_max_keys = IntGaugeVec::new(
            Opts::new(
                "sluice_route_max_keys",
                "Configured max_keys of the route's per-key limit (0: no per-key limit).",
            ),
            &["route"],
        )?;
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "sluice_upstream_response_seconds",
                "Time from sending a request upstream to receiving its response head.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream"],
        )?;
        let upstream_errors = IntCounterVec::new(
            Opts::new(
                "sluice_upstream_errors_total",
                "Failed upstream requests by kind (connect, timeout, other).",
            ),
            &["upstream", "kind"],
        )?;
        let upstream_inflight = IntGaugeVec::new(
            Opts::new(
                "sluice_upstream_inflight",
                "Requests in flight to the upstream.",
            ),
            &["upstream"],
        )?;
        let upstream_max_inflight = IntGaugeVec::new(
            Opts::new(
                "sluice_upstream_max_inflight",
                "Configured cap on requests in flight to the upstream.",
            ),
            &["upstream"],
        )?;
        let class_requests = IntCounterVec::new(
            Opts::new(
                "sluice_class_requests_total",
                "Requests by route, priority class and outcome.",
            ),
            &["route", "class", "outcome"],
        )?;
        let class_depth = IntGaugeVec::new(
            Opts::new(
                "sluice_class_queue_depth",
                "Requests waiting in the route's queue, by priority class.",
            ),
            &["route", "class"],
        )?;
        let keys_tracked = IntGaugeVec::new(
            Opts::new(
                "sluice_keys_tracked",
                "Client keys the route's per-key limiter tracks now (at most max_keys).",
            ),
            &["route"],
        )?;
        let key_evictions = IntCounterVec::new(
            Opts::new(
                "sluice_key_evictions_total",
                "Idle client keys evicted from the route's per-key limiter to stay within max_keys.",
            ),
            &["route"],
        )?;
        let dry_run = IntCounterVec::new(
            Opts::new(
                "sluice_dry_run_limited_total",
                "Requests a limit in dry-run mode would have limited (route: queued or rejected; key: 429).",
            ),
            &["route", "limit"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "sluice_config_reloads_total",
                "Config reloads by result (success, failure).",
            ),
            &["result"],
        )?;
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let connections_open = IntGauge::with_opts(Opts::new(
            "sluice_connections_open",
            "Client connections open now (accepted and not yet closed).",
        ))?;
        let connections_max = IntGauge::with_opts(Opts::new(
            "sluice_connections_max",
            "server.max_connections: beyond it, new connections are answered 503 and closed.",
        ))?;
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "sluice_connections_refused_total",
                "Connections accepted and closed at once because the listener was at its cap \
                 (answered 503 + Retry-After, or closed unanswered on TLS), by listener and reason.",
            ),
            &["listener", "reason"],
        )?;
        for listener in ["proxy", "admin"] {
            connections_refused.with_label_values(&[listener, "max_connections"]);
        }
        let last_reload = Gauge::with_opts(Opts::new(
            "sluice_config_last_reload_success_timestamp_seconds",
            "When the running config was loaded (Unix time): at start, then at each successful reload.",
        ))?;
        let target_requests = IntCounterVec::new(
            Opts::new(
                "sluice_target_requests_total",
                "Requests sent to each target (attempts, retries included).",
            ),
            &["upstream", "target"],
        )?;
        let target_errors = IntCounterVec::new(
            Opts::new(
                "sluice_target_errors_total",
                "Attempts to each target that failed (connect, timeout, reset).",
            ),
            &["upstream", "target"],
        )?;
        let target_latency = HistogramVec::new(
            HistogramOpts::new(
                "sluice_target_response_seconds",
                "Time from sending to a target to its response head.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["upstream", "target"],
        )?;
        let target_healthy = IntGaugeVec::new(
            Opts::new(
                "sluice_target_healthy",
                "1 while the target takes traffic, 0 while ejected or failing its active check.",
            ),
            &["upstream", "target"],
        )?;
        let target_inflight = IntGaugeVec::new(
            Opts::new(
                "sluice_target_inflight",
                "Requests in flight to the target.",
            ),
            &["upstream", "target"],
        )?;
        let upstream_retries = IntCounterVec::new(
            Opts::new(
                "sluice_upstream_retries_total",
                "Idempotent requests retried on another target after a connect failure.",
            ),
            &["upstream"],
        )?;
        let upstream_limit = IntGaugeVec::new(
            Opts::new(
                "sluice_upstream_concurrency_limit",
                "The in-flight cap in force: the adaptive limit, or max_inflight.",
            ),
            &["upstream"],
        )?;
        let redis_calls = IntCounterVec::new(
            Opts::new(
                "sluice_redis_calls_total",
                "Calls to Redis for the route's global rate limit, by result (ok, error, timeout); \
                 errors and timeouts mean the route runs on its fallback until Redis answers again.",
            ),
            &["route", "result"],
        )?;
        let redis_call_seconds = HistogramVec::new(
            HistogramOpts::new(
                "sluice_redis_call_seconds",
                "Duration of calls to Redis for the route's global rate limit, whatever their \
                 result; tokens wait this long to be leased.",
            )
            .buckets(REDIS_CALL_BUCKETS.to_vec()),
            &["route"],
        )?;
        let redis_tokens = IntCounterVec::new(
            Opts::new(
                "sluice_redis_tokens_total",
                "Tokens of the route's global rate limit that Redis granted to this instance; \
                 summed over the fleet, its rate stays within the route's configured rate.",
            ),
            &["route"],
        )?;
        let redis_fallback = IntGaugeVec::new(
            Opts::new(
                "sluice_redis_fallback",
                "1 while the route runs on its configured fallback because Redis is unreachable, \
                 0 while its global rate limit is held in Redis.",
            ),
            &["route"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new("sluice_build_info", "Build information; always 1."),
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        for collector in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(queue_depth.clone()),
            Box::new(queue_oldest_wait.clone()),
            Box::new(queue_wait.clone()),
            Box::new(route_rate.clone()),
            Box::new(route_burst.clone()),
            Box::new(route_capacity.clone()),
            Box::new(route_timeout.clone()),
            Box::new(route_max_keys.clone()),
            Box::new(upstream_latency.clone()),
            Box::new(upstream_errors.clone()),
            Box::new(upstream_inflight.clone()),
            Box::new(upstream_max_inflight.clone()),
            Box::new(class_requests.clone()),
            Box::new(class_depth.clone()),
            Box::new(keys_tracked.clone()),
            Box::new(key_evictions.clone()),
            Box::new(dry_run.clone()),
            Box::new(reloads.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_max.clone()),
            Box::new(connections_refused.clone()),
            Box::new(target_requests.clone()),
            Box::new(target_errors.clone()),
            Box::new(target_latency.clone()),
            Box::new(target_healthy.clone()),
            Box::new(target_inflight.clone()),
            Box::new(upstream_retries.clone()),
            Box::new(upstream_limit.clone()),
            Box::new(last_reload.clone()),
            Box::new(redis_calls.clone()),
            Box::new(redis_call_seconds.clone()),
            Box::new(redis_tokens.clone()),
            Box::new(redis_fallback.clone()),
            Box::new(build_info),
        ] {
            registry.register(collector)?;
        }
        Ok(Metrics {
            registry,
            requests,
            queue_depth,
            queue_oldest_wait,
            queue_wait,
            route_rate,
            route_burst,
            route_capacity,
            route_timeout,
            route_max_keys,
            upstream_latency,
            upstream_errors,
            upstream_inflight,
            upstream_max_inflight,
            class_requests,
            class_depth,
            keys_tracked,
            key_evictions,
            dry_run,
            reloads,
            last_reload,
            connections_open,
            connections_max,
            connections_refused,
            target_requests,
            target_errors,
            target_latency,
            target_healthy,
            target_inflight,
            upstream_retries,
            upstream_limit,
            redis_calls,
            redis_call_seconds,
            redis_tokens,
            redis_fallback,
        })
    }

    /// Handles for one target of an upstream.
    pub fn target(&self, upstream: &str, target: &str) -> TargetMetrics {
        let labels = [upstream, target];
        TargetMetrics {
            requests: self.target_requests.with_label_values(&labels),
            errors: self.target_errors.with_label_values(&labels),
            latency: self.target_latency.with_label_values(&labels),
            healthy: self.target_healthy.with_label_values(&labels),
            inflight: self.target_inflight.with_label_values(&labels),
        }
    }

    /// Counts a config (re)load; a success also stamps the time.
    pub fn config_loaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.reloads.with_label_values(&[result]).inc();
        if success {
            self.last_reload.set(unix_now());
        }
    }

    /// Publishes the cap on client connections.
    pub fn connections_max(&self, max: usize) {
        self.connections_max
            .set(i64::try_from(max).unwrap_or(i64::MAX));
    }

    /// The open-connections gauge itself: raised when a connection is
    /// admitted under the cap and lowered when it closes, so it counts
    /// connections and nothing else.
    pub fn connections_open(&self) -> IntGauge {
        self.connections_open.clone()
    }

    /// The counter of connections `listener` refused at its cap.
    pub fn connections_refused(&self, listener: &str) -> IntCounter {
        self.connections_refused
            .with_label_values(&[listener, "max_connections"])
    }

    /// Adds a collector sampled at scrape time (the listeners' probe).
    pub fn register(
        &self,
        collector: Box<dyn prometheus::core::Collector>,
    ) -> Result<(), prometheus::Error> {
        self.registry.register(collector)
    }

    /// Stamps the time the first config was loaded (not counted as a reload).
    pub fn config_started(&self) {
        self.last_reload.set(unix_now());
    }

    /// Handles for one route, with its configured limits published.
    pub fn route(&self, route: &RouteConfig) -> RouteMetrics {
        let name = route.name.as_str();
        let (rate, burst) = route.limit.map_or((0.0, 0), |l| (l.rate, l.burst.get()));
        self.route_rate.with_label_values(&[name]).set(rate);
        self.route_burst
            .with_label_values(&[name])
            .set(i64::from(burst));
        self.route_capacity
            .with_label_values(&[name])
            .set(i64::try_from(route.queue.capacity).unwrap_or(i64::MAX));
        self.route_timeout
            .with_label_values(&[name])
            .set(route.queue.timeout.as_secs_f64());
        self.route_max_keys.with_label_values(&[name]).set(
            route
                .key_limit
                .map_or(0, |k| i64::try_from(k.max_keys.get()).unwrap_or(i64::MAX)),
        );
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
        let counters = |class: Option<&str>| {
            Outcome::ALL.map(|o| match class {
                None => self.requests.with_label_values(&[name, o.as_str()]),
                Some(class) => self
                    .class_requests
                    .with_label_values(&[name, class, o.as_str()]),
            })
        };
        RouteMetrics {
            outcomes: counters(None),
            class_outcomes: classes.iter().map(|c| counters(Some(c))).collect(),
            class_depth: classes
                .iter()
                .map(|class| self.class_depth.with_label_values(&[name, class]))
                .collect(),
            queue_wait: self.queue_wait.with_label_values(&[name]),
            depth: self.queue_depth.with_label_values(&[name]),
            oldest_wait: self.queue_oldest_wait.with_label_values(&[name]),
            keys_tracked: self.keys_tracked.with_label_values(&[name]),
            key_evictions: self.key_evictions.with_label_values(&[name]),
            dry_run_route: self.dry_run.with_label_values(&[name, "route"]),
            dry_run_key: self.dry_run.with_label_values(&[name, "key"]),
        }
    }

    /// Handles for one upstream.
    pub fn upstream(&self, name: &str, max_inflight: usize) -> UpstreamMetrics {
        self.upstream_max_inflight
            .with_label_values(&[name])
            .set(i64::try_from(max_inflight).unwrap_or(i64::MAX));
        UpstreamMetrics {
            retries: self.upstream_retries.with_label_values(&[name]),
            adaptive_limit: self.upstream_limit.with_label_values(&[name]),
            latency: self.upstream_latency.with_label_values(&[name]),
            errors_connect: self.upstream_errors.with_label_values(&[name, "connect"]),
            errors_timeout: self.upstream_errors.with_label_values(&[name, "timeout"]),
            errors_other: self.upstream_errors.with_label_values(&[name, "other"]),
            inflight: self.upstream_inflight.with_label_values(&[name]),
        }
    }

    /// Handles for one route's global rate limit in Redis; its series appear
    /// (at zero) as soon as the route is set up, before the first call.
    pub fn redis_route(&self, route: &str) -> RedisRouteMetrics {
        let fallback = self.redis_fallback.with_label_values(&[route]);
        fallback.set(0);
        RedisRouteMetrics {
            calls_ok: self.redis_calls.with_label_values(&[route, "ok"]),
            calls_error: self.redis_calls.with_label_values(&[route, "error"]),
            calls_timeout: self.redis_calls.with_label_values(&[route, "timeout"]),
            call_seconds: self.redis_call_seconds.with_label_values(&[route]),
            tokens: self.redis_tokens.with_label_values(&[route]),
            fallback,
        }
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
            gauge.set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
    }

    /// Sets the sampled key-table figures (called at scrape time).
    pub fn sample_keys(&self, tracked: usize, evictions_total: u64) {
        self.keys_tracked
            .set(i64::try_from(tracked).unwrap_or(i64::MAX));
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
        self.depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
        self.oldest_wait.set(oldest_wait_secs);
    }
}

impl UpstreamMetrics {
    pub fn retry(&self) {
        self.retries.inc();
    }

    /// The in-flight cap now in force.
    pub fn adaptive_limit(&self, limit: usize) {
        self.adaptive_limit
            .set(i64::try_from(limit).unwrap_or(i64::MAX));
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
        self.inflight
            .set(i64::try_from(inflight).unwrap_or(i64::MAX));
    }
}

impl RedisRouteMetrics {
    /// Counts one call to Redis and how long it took.
    pub fn call(&self, result: RedisCallResult, seconds: f64) {
        match result {
            RedisCallResult::Ok => self.calls_ok.inc(),
            RedisCallResult::Error => self.calls_error.inc(),
            RedisCallResult::Timeout => self.calls_timeout.inc(),
        }
        self.call_seconds.observe(seconds);
    }

    /// Counts tokens Redis granted.
    pub fn tokens(&self, granted: u32) {
        self.tokens.inc_by(u64::from(granted));
    }

    /// Whether the route runs on its fallback (Redis unreachable) now.
    pub fn set_fallback(&self, on: bool) {
        self.fallback.set(i64::from(on));
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
