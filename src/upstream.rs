//! Upstreams: a pool of backend targets behind one keep-alive HTTP client.
//!
//! A request picks a target by the pool's `balance` (weighted round robin,
//! least in flight, or power of two choices on latency-weighted load) among
//! the targets that are healthy and under their own in-flight cap. Health is
//! passive (a target failing `consecutive_failures` times in a row is ejected,
//! for longer each time it fails again after coming back) and optionally
//! active (a background probe). While no target is healthy the pool's
//! [`Gate`] is shut, so the shaper holds requests in the queue rather than
//! failing each at once.
//!
//! The pool's in-flight cap is a semaphore shared by every route naming the
//! upstream; the shaper hands out its permits. With `[adaptive]` the cap
//! follows measured latency (see `adaptive`). Failures are classified once
//! here: connect failures and resets are 502, no response head within
//! `timeout` is 504. An idempotent request without a body that could not
//! connect is retried on another target, up to `retries` times, never past
//! its deadline. A failure the client caused (its body malformed, too large,
//! too slow or cut off) is told apart here too, and never counts against the
//! target: not in passive health, error metrics or the adaptive limit.

use std::future::Future as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, Uri};
use http_body::Body as _;
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::adaptive::GradientLimit;
use crate::config::{ActiveHealth, Balance, PassiveHealth, UpstreamConfig};
use crate::h1pool::{H1Error, H1Pool, Lease};
use crate::metrics::{Metrics, TargetMetrics, UpstreamErrorKind, UpstreamMetrics};
use crate::proxy::BoxError;
use crate::request_body::{ClientBodyError, RequestBody, client_fault};
use crate::shaper::Gate;

/// The request body sent upstream: the client's (held to `max_body_bytes`
/// and `client_body_timeout`), or empty on a retry.
pub type ProxyBody = RequestBody;

type Connector = HttpsConnector<HttpConnector>;

/// One upstream pool.
pub struct Upstream {
    config: UpstreamConfig,
    name: String,
    targets: Vec<Target>,
    /// Smooth weighted round-robin order of target indices.
    schedule: Vec<usize>,
    cursor: AtomicUsize,
    rng: AtomicU64,
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
}

struct Capacity {
    limit: usize,
    owed: usize,
}

struct Target {
    addr: Authority,
    /// Idle connections, for a plain HTTP/1.1 upstream.
    h1: Option<Arc<H1Pool>>,
    weight: u32,
    max_inflight: Option<usize>,
    inflight: AtomicUsize,
    /// EWMA of response-head latency, nanoseconds (0: no sample yet).
    ewma_nanos: AtomicU64,
    health: Mutex<Health>,
    metrics: TargetMetrics,
}

#[derive(Debug, Default)]
struct Health {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections since the last success: each doubles the next one.
    ejections: u32,
    /// Active probe verdict (true until probes say otherwise).
    probe_down: bool,
    probe_successes: u32,
    probe_failures: u32,
}

impl Health {
    fn available(&self, now: Instant) -> bool {
        !self.probe_down && self.ejected_until.is_none_or(|until| until <= now)
    }
}

/// Why a request could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: Authority,
        #[source]
        source: BoxError,
    },
    #[error("no response from {target} within {timeout:?}")]
    Timeout {
        target: Authority,
        timeout: Duration,
    },
    #[error("request to {target} failed: {source}")]
    Other {
        target: Authority,
        #[source]
        source: BoxError,
    },
    #[error("no healthy target with room in upstream {upstream}")]
    NoTarget { upstream: String },
    /// The client's doing, not the target's: its request body failed (or
    /// was still being sent when the timeout passed).
    #[error("client request body: {0}")]
    ClientBody(#[from] ClientBodyError),
}

impl UpstreamError {
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Connect { .. } | UpstreamError::NoTarget { .. } => {
                UpstreamErrorKind::Connect
            }
            UpstreamError::Timeout { .. } => UpstreamErrorKind::Timeout,
            UpstreamError::Other { .. } | UpstreamError::ClientBody(_) => UpstreamErrorKind::Other,
        }
    }

    /// 504 for a timeout, 502 for everything else.
    pub fn status(&self) -> http::StatusCode {
        match self {
            UpstreamError::Timeout { .. } => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// A request in flight to one target; dropping it ends the count. On the
/// plain HTTP/1.1 path it also holds the connection, which goes back to the
/// pool if [`TargetGuard::finish`] was called (the response body was read
/// to its end).
pub struct TargetGuard {
    upstream: Arc<Upstream>,
    target: usize,
    lease: Option<Lease>,
}

impl TargetGuard {
    /// The response body has been read to its end.
    pub fn finish(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.finish();
        }
    }
}

impl Drop for TargetGuard {
    fn drop(&mut self) {
        let target = &self.upstream.targets[self.target];
        target.inflight.fetch_sub(1, Ordering::AcqRel);
        self.upstream.pay_owed_permits();
        self.upstream.target_freed.notify_one();
    }
}

impl Upstream {
    /// A pool for `config`. Given the `previous` generation of the same
    /// upstream, its in-flight accounting carries over (resized to the new cap).
    pub fn new(
        config: &UpstreamConfig,
        metrics: &Metrics,
        previous: Option<&Upstream>,
    ) -> Result<Arc<Upstream>, crate::tls::TlsError> {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(config.connect_timeout));
        http.set_nodelay(true);
        http.enforce_http(false);
        let (connector, scheme) = match &config.tls {
            Some(tls) => {
                let mut tls_config = crate::tls::client_config(tls, config.http2)?;
                // The connector offers ALPN itself from the enabled protocols.
                tls_config.alpn_protocols.clear();
                let builder = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls_config)
                    .https_only();
                let builder = match &tls.server_name {
                    Some(name) => {
                        // Validated as a DNS name or IP address by the config.
                        let name = rustls_pki_types::ServerName::try_from(name.clone()).map_err(
                            |err| {
                                crate::tls::TlsError::Setup(rustls::Error::General(err.to_string()))
                            },
                        )?;
                        builder.with_server_name_resolver(
                            hyper_rustls::FixedServerNameResolver::new(name),
                        )
                    }
                    None => builder,
                };
                let connector = if config.http2 {
                    builder.enable_http1().enable_http2().wrap_connector(http)
                } else {
                    builder.enable_http1().wrap_connector(http)
                };
                (connector, Scheme::HTTPS)
            }
            None => {
                let plain = crate::config::UpstreamTls {
                    ca: None,
                    server_name: None,
                };
                let mut tls_config = crate::tls::client_config(&plain, false)?;
                tls_config.alpn_protocols.clear();
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(tls_config)
                    .https_or_http()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(http);
                (connector, Scheme::HTTP)
            }
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_target)
            .http2_only(config.http2 && config.tls.is_none())
            .build(connector);
        let max_inflight = config.max_inflight.get();
        let adaptive = config.adaptive.map(|a| GradientLimit::new(&a));
        let limit = adaptive
            .as_ref()
            .map_or(max_inflight, |a| a.limit().min(max_inflight));
        let upstream_metrics = metrics.upstream(&config.name, max_inflight);
        upstream_metrics.adaptive_limit(limit);
        let (inflight, owed) = match previous {
            Some(old) => {
                let old_limit = old.capacity.lock().limit;
                let owed = resize(&old.inflight, old_limit, limit);
                (old.inflight.clone(), owed)
            }
            None => (Arc::new(Semaphore::new(limit)), 0),
        };
        let targets: Vec<Target> = config
            .targets
            .iter()
            .map(|t| Target {
                h1: (config.tls.is_none() && !config.http2).then(|| {
                    H1Pool::new(
                        &t.addr,
                        config.pool_max_idle_per_target,
                        config.pool_idle_timeout,
                        config.connect_timeout,
                    )
                }),
                addr: t.addr.clone(),
                weight: t.weight.get(),
                max_inflight: t.max_inflight.map(|m| m.get()),
                inflight: AtomicUsize::new(0),
                ewma_nanos: AtomicU64::new(0),
                health: Mutex::new(Health::default()),
                metrics: metrics.target(&config.name, t.addr.as_str()),
            })
            .collect();
        for target in &targets {
            target.metrics.healthy(true);
        }
        let upstream = Arc::new(Upstream {
            config: config.clone(),
            name: config.name.clone(),
            schedule: smooth_weighted_order(&targets.iter().map(|t| t.weight).collect::<Vec<_>>()),
            targets,
            cursor: AtomicUsize::new(0),
            rng: AtomicU64::new(seed()),
            client,
            scheme,
            timeout: config.timeout,
            max_inflight,
            inflight,
            capacity: Mutex::new(Capacity { limit, owed }),
            adaptive: adaptive.map(Mutex::new),
            gate: previous.map_or_else(|| Arc::new(Gate::new(true)), |old| old.gate.clone()),
            target_freed: Notify::new(),
            metrics: upstream_metrics,
            checker: Mutex::new(None),
        });
        upstream.update_gate();
        if let Some(active) = &config.active_health {
            let task = tokio::spawn(probe(Arc::downgrade(&upstream), active.clone()));
            *upstream.checker.lock() = Some(task);
        }
        Ok(upstream)
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

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.targets
            .iter()
            .map(|t| t.inflight.load(Ordering::Relaxed))
            .sum()
    }

    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// Updates the sampled per-target gauges (called at scrape time).
    pub fn sample_metrics(&self) {
        self.metrics.sample_inflight(self.inflight());
        let now = Instant::now();
        for target in &self.targets {
            target
                .metrics
                .sample_inflight(target.inflight.load(Ordering::Relaxed));
            target.metrics.healthy(target.health.lock().available(now));
        }
    }

    /// Sends `req` (whose URI holds only path and query) to a target and
    /// waits for the response head, at most `timeout`. Retries idempotent,
    /// bodiless requests that could not connect, on other targets, until
    /// `deadline`. `reached` turns true once the request has been handed to
    /// a connection to a target (from then on the backend may have it).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        deadline: Instant,
        reached: &AtomicBool,
    ) -> Result<(Response<Incoming>, TargetGuard), UpstreamError> {
        let (parts, body) = req.into_parts();
        let watch = body.watch();
        // A copy of the head is kept only when a retry could use it: the
        // first attempt consumes the original.
        let retryable = is_idempotent(&parts.method)
            && body.is_end_stream()
            && self.config.retries > 0
            && self.targets.len() > 1;
        let spare = retryable.then(|| parts.clone());
        let mut first = Some(parts);
        let mut body = Some(body);
        let mut tried: Vec<usize> = Vec::new();
        let mut attempt = 0;
        loop {
            let guard = self.claim_target(&tried).await?;
            let target = &self.targets[guard.target];
            tried.push(guard.target);
            // (A retry happens only when `retryable`, so a spare head exists.)
            let Some(parts) = first.take().or_else(|| spare.clone()) else {
                return Err(UpstreamError::NoTarget {
                    upstream: self.name.clone(),
                });
            };
            let mut req = Request::from_parts(parts, ());
            if target.h1.is_none() {
                *req.uri_mut() = self.target_uri(req.uri(), &target.addr);
                // Over HTTP/2 the URI's authority (the target) is sent as
                // `:authority`, and a Host naming another host would make the
                // request malformed (RFC 9113 §8.3.1). With `http2` the
                // target's authority is the host on either protocol (hyper
                // writes it as Host on HTTP/1.1); the client's host travels
                // in X-Forwarded-Host and Forwarded.
                if self.config.http2 {
                    req.headers_mut().remove(http::header::HOST);
                }
            }
            let req = req.map(|()| body.take().unwrap_or(RequestBody::Empty));
            let concurrency = self.inflight();
            let started = Instant::now();
            target.metrics.request();
            let result =
                tokio::time::timeout(self.timeout, self.request(target, req, reached)).await;
            let elapsed = started.elapsed();
            // The client's failure is its own outcome: the target is not
            // blamed (no health, error metric or adaptive sample), and the
            // request is not retried.
            let fault = match &result {
                Ok(Err((source, _))) => client_fault(source.as_ref(), watch.as_ref()),
                // Waiting for more of the client's body when the time ran
                // out: the client was too slow. (A backend that stopped
                // taking the body is the backend's timeout.)
                Err(_) => watch.as_ref().and_then(|w| {
                    w.failure()
                        .or(w.waiting_for_client().then_some(ClientBodyError::Timeout))
                }),
                Ok(Ok(_)) => None,
            };
            if let Some(fault) = fault {
                tracing::debug!(upstream = %self.name, target = %target.addr, %fault, "request body failed on the client's side");
                return Err(UpstreamError::ClientBody(fault));
            }
            let error = match result {
                Ok(Ok((response, lease))) => {
                    let failed = response.status().is_server_error();
                    self.observe(guard.target, Some(elapsed), failed, concurrency);
                    self.metrics.latency(elapsed.as_secs_f64());
                    target.metrics.latency(elapsed.as_secs_f64());
                    let mut guard = guard;
                    guard.lease = lease;
                    return Ok((response, guard));
                }
                Ok(Err((source, true))) => UpstreamError::Connect {
                    target: target.addr.clone(),
                    source,
                },
                Ok(Err((source, false))) => UpstreamError::Other {
                    target: target.addr.clone(),
                    source,
                },
                Err(_elapsed) => UpstreamError::Timeout {
                    target: target.addr.clone(),
                    timeout: self.timeout,
                },
            };
            // Out of descriptors or memory here says nothing about the
            // target: it must not be ejected for sluice's own shortage.
            if !is_local_shortage(&error) {
                self.observe(guard.target, None, true, concurrency);
            }
            target.metrics.error();
            self.metrics.error(error.kind());
            let connect_failed = matches!(error, UpstreamError::Connect { .. });
            attempt += 1;
            if connect_failed
                && retryable
                && attempt <= self.config.retries
                && tried.len() < self.targets.len()
                && Instant::now() < deadline
            {
                self.metrics.retry();
                tracing::debug!(upstream = %self.name, error = %error, attempt, "retrying on another target");
                continue;
            }
            return Err(error);
        }
    }

    /// One attempt on `target`: by its HTTP/1.1 pool, or by the general
    /// client. An error says whether it was a failure to connect.
    async fn request(
        &self,
        target: &Target,
        mut req: Request<ProxyBody>,
        reached: &AtomicBool,
    ) -> Result<(Response<Incoming>, Option<Lease>), (BoxError, bool)> {
        let Some(pool) = &target.h1 else {
            // The client says which connection it chose once it has one.
            let chosen = capture_connection(&mut req);
            let mut sending = std::pin::pin!(self.client.request(req));
            let sent = std::future::poll_fn(|cx| {
                let polled = sending.as_mut().poll(cx);
                if chosen.connection_metadata().is_some() {
                    reached.store(true, Ordering::Release);
                }
                polled
            })
            .await;
            return match sent {
                Ok(response) => Ok((response, None)),
                Err(err) => {
                    let connect = err.is_connect();
                    Err((Box::new(err), connect))
                }
            };
        };
        match pool.send(req, reached).await {
            Ok((response, lease)) => Ok((response, Some(lease))),
            Err(H1Error::Connect(err)) => Err((err, true)),
            Err(H1Error::Request(err)) => Err((Box::new(err), false)),
        }
    }

    /// The target URI: the pool's scheme, the target's authority, the
    /// request's path and query.
    fn target_uri(&self, uri: &Uri, target: &Authority) -> Uri {
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(target.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Picks a target with room and counts the request on it, waiting for a
    /// slot if every healthy target is at its own cap (at most `timeout`).
    async fn claim_target(self: &Arc<Self>, tried: &[usize]) -> Result<TargetGuard, UpstreamError> {
        let give_up = Instant::now() + self.timeout;
        loop {
            let freed = self.target_freed.notified();
            if let Some(index) = self.pick(tried) {
                return Ok(TargetGuard {
                    upstream: self.clone(),
                    target: index,
                    lease: None,
                });
            }
            let healthy = self.any_available(Instant::now());
            if !healthy || tokio::time::timeout_at(give_up, freed).await.is_err() {
                return Err(UpstreamError::NoTarget {
                    upstream: self.name.clone(),
                });
            }
        }
    }

    /// Chooses a target by the balance policy and takes a slot on it.
    fn pick(&self, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let eligible = |i: usize, avoid_tried: bool| {
            let t = &self.targets[i];
            (!avoid_tried || !tried.contains(&i))
                && t.health.lock().available(now)
                && t.max_inflight
                    .is_none_or(|max| t.inflight.load(Ordering::Acquire) < max)
        };
        for avoid_tried in [true, false] {
            let choice = match self.config.balance {
                Balance::RoundRobin => {
                    let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                    (0..self.schedule.len())
                        .map(|k| self.schedule[(start + k) % self.schedule.len()])
                        .find(|&i| eligible(i, avoid_tried))
                }
                Balance::LeastInflight => {
                    let start = self.cursor.fetch_add(1, Ordering::Relaxed);
                    let n = self.targets.len();
                    (0..n)
                        .map(|k| (start + k) % n)
                        .filter(|&i| eligible(i, avoid_tried))
                        .min_by(|&a, &b| self.load(a, false).total_cmp(&self.load(b, false)))
                }
                Balance::P2cEwma => {
                    let candidates: Vec<usize> = (0..self.targets.len())
                        .filter(|&i| eligible(i, avoid_tried))
                        .collect();
                    match candidates.len() {
                        0 => None,
                        1 => Some(candidates[0]),
                        n => {
                            let r = self.random();
                            let a = candidates[(r % n as u64) as usize];
                            let b = candidates[((r >> 32) % (n as u64 - 1)) as usize];
                            let b = if b == a { candidates[n - 1] } else { b };
                            Some(if self.load(a, true) <= self.load(b, true) {
                                a
                            } else {
                                b
                            })
                        }
                    }
                }
            };
            if let Some(index) = choice {
                let target = &self.targets[index];
                let now_inflight = target.inflight.fetch_add(1, Ordering::AcqRel) + 1;
                if target.max_inflight.is_some_and(|max| now_inflight > max) {
                    // Lost a race for the last slot; give it back and look again.
                    target.inflight.fetch_sub(1, Ordering::AcqRel);
                    return self.pick(tried);
                }
                return Some(index);
            }
            if tried.is_empty() {
                break;
            }
        }
        None
    }

    /// A target's load for balancing: in flight per weight, times its
    /// latency when `by_latency`.
    fn load(&self, index: usize, by_latency: bool) -> f64 {
        let t = &self.targets[index];
        let queue = (t.inflight.load(Ordering::Relaxed) + 1) as f64 / f64::from(t.weight);
        if by_latency {
            queue * (t.ewma_nanos.load(Ordering::Relaxed) as f64 + 1.0)
        } else {
            queue
        }
    }

    fn random(&self) -> u64 {
        // xorshift64*: good enough to pick two targets.
        let mut x = self.rng.load(Ordering::Relaxed);
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.store(x, Ordering::Relaxed);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Learns from one attempt: latency, passive health, adaptive limit.
    fn observe(
        self: &Arc<Self>,
        index: usize,
        latency: Option<Duration>,
        failed: bool,
        concurrency: usize,
    ) {
        let target = &self.targets[index];
        if let Some(latency) = latency {
            let sample = latency.as_nanos().min(u128::from(u64::MAX)) as u64;
            let old = target.ewma_nanos.load(Ordering::Relaxed);
            let new = if old == 0 {
                sample
            } else {
                (old * 4 + sample) / 5
            };
            target.ewma_nanos.store(new, Ordering::Relaxed);
        }
        if let Some(adaptive) = &self.adaptive {
            let rtt = latency.unwrap_or(self.timeout);
            let limit = adaptive.lock().on_sample(rtt, concurrency, failed);
            self.set_limit(limit.min(self.max_inflight));
        }
        let passive: PassiveHealth = self.config.passive_health;
        let mut health = target.health.lock();
        if !failed {
            if health.ejections > 0 && health.consecutive_failures == 0 {
                tracing::info!(upstream = %self.name, target = %target.addr, "target recovered");
            }
            health.consecutive_failures = 0;
            health.ejections = 0;
            return;
        }
        health.consecutive_failures += 1;
        if passive.consecutive_failures == 0
            || health.consecutive_failures < passive.consecutive_failures
        {
            return;
        }
        let factor = 2u32.saturating_pow(health.ejections.min(16));
        let ejection = passive
            .base_ejection
            .saturating_mul(factor)
            .min(passive.max_ejection);
        let until = Instant::now() + ejection;
        health.ejected_until = Some(until);
        health.ejections += 1;
        health.consecutive_failures = 0;
        drop(health);
        tracing::warn!(upstream = %self.name, target = %target.addr, ?ejection, "target ejected after consecutive failures");
        target.metrics.healthy(false);
        self.update_gate();
        // Re-open the gate when the ejection ends, if it closed it.
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(upstream) = weak.upgrade() {
                upstream.update_gate();
            }
        });
    }

    fn any_available(&self, now: Instant) -> bool {
        self.targets.iter().any(|t| t.health.lock().available(now))
    }

    /// Opens the gate while some target is available, shuts it otherwise.
    fn update_gate(&self) {
        self.gate.set(self.any_available(Instant::now()));
    }

    /// Moves the cap to `limit`: grows at once; shrinks by taking permits
    /// out of circulation now or as in-flight requests return them.
    fn set_limit(&self, limit: usize) {
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
    fn pay_owed_permits(&self) {
        let mut capacity = self.capacity.lock();
        if capacity.owed > 0 {
            let taken = self.inflight.forget_permits(capacity.owed);
            capacity.owed -= taken;
        }
    }

    /// Records an active probe's verdict on one target.
    fn probed(&self, index: usize, ok: bool, active: &ActiveHealth) {
        let target = &self.targets[index];
        let mut health = target.health.lock();
        if ok {
            health.probe_failures = 0;
            health.probe_successes += 1;
            if health.probe_down && health.probe_successes >= active.healthy_threshold.get() {
                health.probe_down = false;
                health.ejected_until = None;
                health.ejections = 0;
                tracing::info!(upstream = %self.name, target = %target.addr, "active check: target healthy");
            }
        } else {
            health.probe_successes = 0;
            health.probe_failures += 1;
            if !health.probe_down && health.probe_failures >= active.unhealthy_threshold.get() {
                health.probe_down = true;
                tracing::warn!(upstream = %self.name, target = %target.addr, "active check: target unhealthy");
            }
        }
        drop(health);
        self.update_gate();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(task) = self.checker.lock().take() {
            task.abort();
        }
    }
}

/// The active health check loop of one upstream.
async fn probe(upstream: std::sync::Weak<Upstream>, active: ActiveHealth) {
    let mut tick = tokio::time::interval(active.interval);
    loop {
        tick.tick().await;
        let Some(pool) = upstream.upgrade() else {
            return;
        };
        for index in 0..pool.targets.len() {
            let target = pool.targets[index].addr.clone();
            let uri = pool.target_uri(
                &Uri::from_maybe_shared(active.path.clone())
                    .unwrap_or_else(|_| Uri::from_static("/")),
                &target,
            );
            let mut req = Request::new(RequestBody::Empty);
            *req.uri_mut() = uri;
            let ok = matches!(
                tokio::time::timeout(active.timeout, pool.client.request(req)).await,
                Ok(Ok(response)) if response.status().is_success()
            );
            pool.probed(index, ok, &active);
        }
    }
}

/// Whether a connect failed for want of a resource on this machine (file
/// descriptors: EMFILE, ENFILE; buffers: ENOBUFS; memory: ENOMEM).
fn is_local_shortage(error: &UpstreamError) -> bool {
    const SHORTAGES: [i32; 4] = [24, 23, 105, 12];
    let UpstreamError::Connect { source, .. } = error else {
        return false;
    };
    crate::proxy::causes(source.as_ref()).any(|err| {
        err.downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error)
            .is_some_and(|code| SHORTAGES.contains(&code))
    })
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

fn seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9E37_79B9, |d| d.as_nanos() as u64);
    nanos | 1
}

/// NGINX's smooth weighted round robin, unrolled into one cycle: weights
/// [5, 1, 1] give a, a, b, a, c, a, a — heavy targets spread out, not bunched.
fn smooth_weighted_order(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|&(i, c)| (*c, std::cmp::Reverse(i)))
        else {
            break; // no targets (config validation requires one)
        };
        current[best] -= total;
        order.push(best);
    }
    order
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smooth_weighted_order_spreads_heavy_targets() {
        assert_eq!(smooth_weighted_order(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_order(&[1, 1]), vec![0, 1]);
        assert_eq!(smooth_weighted_order(&[2, 1]), vec![0, 1, 0]);
    }

    #[test]
    fn only_idempotent_methods_are_retried() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
