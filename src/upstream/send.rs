//! Sending one request upstream: a loop of attempts, each on one target,
//! until one gets a response head or no retry is allowed.
//!
//! An idempotent request without a body that could not connect is retried
//! on another target, up to `retries` times, never past its deadline. Each
//! attempt teaches the upstream something (latency, passive health, the
//! adaptive limit), except when the client caused the failure (its body
//! malformed, too large, too slow or cut off): that never counts against
//! the target, and is never retried.
//!
//! Invariant: the request's body is sent at most once; a retry, which
//! happens only for a bodiless request, sends the same head and an empty
//! body. The head is lent to each attempt, never moved or copied on the
//! HTTP/1.1 path (it is written from where it lies).

use std::future::Future as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::request::Parts;
use http::uri::{Authority, PathAndQuery};
use http::{Method, Request, Response, Uri};
use http_body::Body as _;
use hyper_util::client::legacy::connect::capture_connection;
use tokio::time::Instant;
use tokio::time::error::Elapsed;

use super::error::is_local_shortage;
use super::h1pool::{H1Error, Lease};
use super::target::{Target, TargetGuard};
use super::{ProxyBody, Upstream, UpstreamBody, UpstreamError};
use crate::http::BoxError;
use crate::http::headers::Forwarding;
use crate::http::request_body::{BodyWatch, ClientBodyError, RequestBody, client_fault};

/// What one try on a target gave: a response head (and, on the HTTP/1.1
/// path, its connection), or an error and whether it was a failure to
/// connect; `Err(Elapsed)` if no head came within the timeout.
type Tried = Result<Result<(Response<UpstreamBody>, Option<Lease>), (BoxError, bool)>, Elapsed>;

impl Upstream {
    /// Sends the request of `head` (whose URI holds only path and query)
    /// and `body` to a target and waits for the response head, at most
    /// `timeout`. Retries idempotent, bodiless requests that could not
    /// connect, on other targets, until `deadline`. `reached` turns true
    /// once the request has been handed to a connection to a target (from
    /// then on the backend may have it).
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice (rustc #62958)"
    )]
    pub(crate) fn send(
        self: &Arc<Self>,
        (head, body): (&Parts, RequestBody),
        forwarding: &Forwarding,
        deadline: Instant,
        reached: &AtomicBool,
    ) -> impl Future<Output = Result<(Response<UpstreamBody>, TargetGuard), UpstreamError>> {
        async move {
            let watch = body.watch();
            // (Whether another target is left is asked only after a failure.)
            let retryable =
                is_idempotent(&head.method) && body.is_end_stream() && self.config.retries > 0;
            let mut body = Some(body);
            // The targets already tried: filled only when a retry comes (most
            // requests get their answer from the first, and allocate nothing).
            let mut tried: Vec<Arc<Target>> = Vec::new();
            let mut attempt = 0;
            loop {
                let guard = self.claim_target(&tried).await?;
                // Kept for a retry's `tried` only when a retry may come.
                let target = retryable.then(|| guard.target.clone());
                // Only the first attempt has a body (a retry comes only for a
                // bodiless request).
                let body = body.take().unwrap_or(RequestBody::Empty);
                let error = match self
                    .attempt(guard, (head, forwarding), body, watch.as_ref(), reached)
                    .await
                {
                    Ok(sent) => return Ok(sent),
                    Err(error) => error,
                };
                attempt += 1;
                if matches!(error, UpstreamError::Connect { .. })
                    && let Some(target) = target
                    && attempt <= self.config.retries
                    && tried.len() + 1 < self.target_count()
                    && Instant::now() < deadline
                {
                    tried.push(target);
                    self.metrics.retry();
                    tracing::debug!(upstream = %self.name, error = %error, attempt, "retrying on another target");
                    continue;
                }
                return Err(error);
            }
        }
    }

    /// One attempt on the claimed target, and what the upstream learns from
    /// it.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice (rustc #62958)"
    )]
    fn attempt(
        self: &Arc<Self>,
        mut guard: TargetGuard,
        (head, forwarding): (&Parts, &Forwarding),
        body: RequestBody,
        watch: Option<&BodyWatch>,
        reached: &AtomicBool,
    ) -> impl Future<Output = Result<(Response<UpstreamBody>, TargetGuard), UpstreamError>> {
        async move {
            let target = guard.target.clone();
            let target = target.as_ref();
            // The adaptive limit's sample: the requests in flight when this one
            // went (a sum over the targets, so only when there is a limit to
            // teach).
            let concurrency = if self.adaptive.is_some() {
                self.inflight()
            } else {
                0
            };
            let started = Instant::now();
            target.metrics.request();
            let request = self.request(target, (head, body), forwarding, reached);
            let result = tokio::time::timeout(self.timeout, request).await;
            let elapsed = started.elapsed();
            // The client's failure is its own outcome: the target is not
            // blamed (no health, error metric or adaptive sample), and the
            // request is not retried.
            if let Some(fault) = client_failure(&result, watch) {
                tracing::debug!(upstream = %self.name, target = %target.addr, %fault, "request body failed on the client's side");
                return Err(UpstreamError::ClientBody(fault));
            }
            let error = match result {
                Ok(Ok((response, lease))) => {
                    let failed = response.status().is_server_error();
                    self.observe(target, Some(elapsed), failed, concurrency);
                    self.metrics.latency(elapsed.as_secs_f64());
                    target.metrics.latency(elapsed.as_secs_f64());
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
                self.observe(target, None, true, concurrency);
            }
            target.metrics.error();
            self.metrics.error(error.kind());
            Err(error)
        }
    }

    /// The head as the general client gets it (a request of its own):
    /// rewritten (see [`Forwarding::apply`]), with the target's URI (and,
    /// over HTTP/2, no Host). On the HTTP/1.1 pool's path the head is
    /// rewritten as it is written, from where it lies.
    fn for_general_client(
        &self,
        target: &Target,
        head: &Parts,
        forwarding: &Forwarding,
    ) -> Request<()> {
        let mut req = Request::new(());
        *req.method_mut() = head.method.clone();
        *req.version_mut() = head.version;
        *req.headers_mut() = match &forwarding.fields {
            // hyper's client writes a map: an HTTP/1 client's fields go
            // into one (the dropped ones left out).
            Some(fields) => fields.kept_map(),
            None => head.headers.clone(),
        };
        forwarding.apply(req.headers_mut());
        *req.uri_mut() = self.target_uri(&head.uri, &target.addr);
        // Over HTTP/2 the URI's authority (the target) is sent as
        // `:authority`, and a Host naming another host would make the
        // request malformed (RFC 9113 §8.3.1). With `http2` the target's
        // authority is the host on either protocol (hyper writes it as Host
        // on HTTP/1.1); the client's host travels in X-Forwarded-Host and
        // Forwarded.
        if self.config.http2 {
            req.headers_mut().remove(http::header::HOST);
        }
        req
    }

    /// One attempt on `target`: by its HTTP/1.1 pool, or by the general
    /// client. An error says whether it was a failure to connect.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice (rustc #62958)"
    )]
    fn request(
        &self,
        target: &Target,
        (head, body): (&Parts, RequestBody),
        forwarding: &Forwarding,
        reached: &AtomicBool,
    ) -> impl Future<Output = Result<(Response<UpstreamBody>, Option<Lease>), (BoxError, bool)>>
    {
        async move {
            match &target.h1 {
                Some(pool) => {
                    let sent = pool.send_forwarded((head, body), Some(forwarding), reached);
                    match sent.await {
                        Ok((response, lease)) => Ok((response.map(UpstreamBody::H1), Some(lease))),
                        Err(H1Error::Connect(err)) => Err((err, true)),
                        Err(H1Error::Request(err)) => Err((BoxError::from(err), false)),
                    }
                }
                None => {
                    let req = self
                        .for_general_client(target, head, forwarding)
                        .map(|()| body);
                    // Boxed: rare on the hot path, and hyper's future would
                    // enlarge every request's.
                    Box::pin(self.general_request(req, reached)).await
                }
            }
        }
    }

    /// One attempt through the general client (TLS, HTTP/2 upstreams).
    async fn general_request(
        &self,
        mut req: Request<ProxyBody>,
        reached: &AtomicBool,
    ) -> Result<(Response<UpstreamBody>, Option<Lease>), (BoxError, bool)> {
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
        match sent {
            Ok(response) => Ok((response.map(UpstreamBody::Hyper), None)),
            Err(err) => {
                let connect = err.is_connect();
                Err((Box::new(err), connect))
            }
        }
    }

    /// The target URI: the pool's scheme, the target's authority, the
    /// request's path and query.
    pub(super) fn target_uri(&self, uri: &Uri, target: &Authority) -> Uri {
        let mut parts = uri.clone().into_parts();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(target.clone());
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        Uri::from_parts(parts).unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Learns from one attempt: latency, passive health, adaptive limit.
    fn observe(
        self: &Arc<Self>,
        target: &Target,
        latency: Option<Duration>,
        failed: bool,
        concurrency: usize,
    ) {
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
        self.passive(target, failed);
    }
}

/// The client's body failure behind an attempt's failure, if it was the
/// client's doing.
fn client_failure(result: &Tried, watch: Option<&BodyWatch>) -> Option<ClientBodyError> {
    match result {
        Ok(Err((source, _))) => client_fault(source.as_ref(), watch),
        // Waiting for more of the client's body when the time ran out: the
        // client was too slow. (A backend that stopped taking the body is
        // the backend's timeout.)
        Err(_) => watch.and_then(|w| {
            w.failure()
                .or(w.waiting_for_client().then_some(ClientBodyError::Timeout))
        }),
        Ok(Ok(_)) => None,
    }
}

/// Whether a request may be sent again after a failure to connect.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_methods_are_retried() {
        assert!(is_idempotent(&Method::GET));
        assert!(is_idempotent(&Method::PUT));
        assert!(!is_idempotent(&Method::POST));
        assert!(!is_idempotent(&Method::PATCH));
    }
}
