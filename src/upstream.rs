//! Upstreams: a pool of backend targets behind one keep-alive HTTP client.
//!
//! Targets are taken in round-robin order. The in-flight cap is a semaphore
//! shared by every route that names the upstream; the shaper hands out its
//! permits, and a permit is held until the response body has been relayed.
//! Failures are classified once here: connect failures and resets are 502,
//! no response head within `timeout` is 504.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::config::UpstreamConfig;
use crate::metrics::{UpstreamErrorKind, UpstreamMetrics};

/// One upstream pool.
pub struct Upstream {
    config: UpstreamConfig,
    name: String,
    targets: Vec<Authority>,
    next: AtomicUsize,
    client: Client<HttpConnector, Incoming>,
    timeout: Duration,
    max_inflight: usize,
    inflight: Arc<Semaphore>,
    metrics: UpstreamMetrics,
}

/// Why a request could not be relayed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {target}: {source}")]
    Connect {
        target: Authority,
        #[source]
        source: hyper_util::client::legacy::Error,
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
        source: hyper_util::client::legacy::Error,
    },
}

impl UpstreamError {
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::Connect { .. } => UpstreamErrorKind::Connect,
            UpstreamError::Timeout { .. } => UpstreamErrorKind::Timeout,
            UpstreamError::Other { .. } => UpstreamErrorKind::Other,
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

impl Upstream {
    /// A pool for `config`. Given the `previous` generation of the same
    /// upstream, its in-flight accounting carries over (resized to the new cap).
    pub fn new(
        config: &UpstreamConfig,
        metrics: UpstreamMetrics,
        previous: Option<&Upstream>,
    ) -> Upstream {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_target)
            .build(connector);
        let max_inflight = config.max_inflight.get();
        let inflight = match previous {
            Some(old) => {
                resize(&old.inflight, old.max_inflight, max_inflight);
                old.inflight.clone()
            }
            None => Arc::new(Semaphore::new(max_inflight)),
        };
        Upstream {
            config: config.clone(),
            name: config.name.clone(),
            targets: config.targets.iter().map(|t| t.addr.clone()).collect(),
            next: AtomicUsize::new(0),
            client,
            timeout: config.timeout,
            max_inflight,
            inflight,
            metrics,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The config this pool was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// The configured cap on requests in flight.
    pub fn max_inflight(&self) -> usize {
        self.max_inflight
    }

    /// The in-flight cap, for the shapers of the routes using this upstream.
    pub fn inflight_cap(&self) -> Arc<Semaphore> {
        self.inflight.clone()
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.max_inflight
            .saturating_sub(self.inflight.available_permits())
    }

    pub fn metrics(&self) -> &UpstreamMetrics {
        &self.metrics
    }

    /// The next target, in round-robin order.
    fn pick(&self) -> &Authority {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.targets[i % self.targets.len()]
    }

    /// Sends `req` (whose URI holds only path and query) to the next target
    /// and waits for the response head, at most `timeout`.
    pub async fn send(
        &self,
        mut req: Request<Incoming>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let target = self.pick().clone();
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTP);
        parts.authority = Some(target.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).expect("scheme, authority and path are set");
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.client.request(req)).await;
        let result = match result {
            Err(_elapsed) => Err(UpstreamError::Timeout {
                target,
                timeout: self.timeout,
            }),
            Ok(Err(source)) if source.is_connect() => {
                Err(UpstreamError::Connect { target, source })
            }
            Ok(Err(source)) => Err(UpstreamError::Other { target, source }),
            Ok(Ok(response)) => {
                self.metrics.latency(started.elapsed().as_secs_f64());
                Ok(response)
            }
        };
        if let Err(err) = &result {
            self.metrics.error(err.kind());
        }
        result
    }
}

/// Changes a semaphore's size from `old` to `new` permits. Growing is
/// immediate; shrinking takes permits out of circulation as in-flight
/// requests return them.
fn resize(semaphore: &Arc<Semaphore>, old: usize, new: usize) {
    if new > old {
        semaphore.add_permits(new - old);
    } else if new < old {
        let excess = u32::try_from(old - new).unwrap_or(u32::MAX);
        let semaphore = semaphore.clone();
        tokio::spawn(async move {
            if let Ok(permits) = semaphore.acquire_many_owned(excess).await {
                permits.forget();
            }
        });
    }
}
