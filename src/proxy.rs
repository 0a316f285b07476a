//! The life of one request, phase by phase: route, admit, forward, record.
//!
//! [`Gateway::handle`] reads top to bottom in that order. Every request ends
//! with exactly one [`Outcome`]: a [`Record`] is opened when the request
//! arrives and is finished once; if the request future is dropped first (the
//! client left, or reset its HTTP/2 stream), it ends as cancelled if the
//! request never reached a backend connection, else as forwarded with 499.
//!
//! Failures are mapped to an outcome and status in one place
//! ([`failure`]): a failure of the client's request body (malformed, too
//! large, too slow, cut off) is the client's outcome, never the target's. A
//! relayed response's access log line is written when its body ends, so a
//! client that leaves mid-response, or stops reading it for
//! `server.send_timeout`, is logged 499.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as HttpBody;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use ipnet::IpNet;

use crate::classify::{canonical_ip, client_ip, peer_is_trusted};
use crate::config::Config;
use crate::http::request_body::{BodyLimits, ClientBodyError, RequestBody};
use crate::http::{WaitingSince, error_chain};
use crate::metrics::{Metrics, NO_ROUTE_LABEL, RouteMetrics};
use crate::outcome::Outcome;
use crate::path::PathError;
use crate::redis_store::RedisLink;
use crate::relay::Relay;
// Re-exported at their old paths for modules not yet moved (issue 16).
pub use crate::http::{Body, BoxError, local, text_body};
pub(crate) use crate::http::{STATUS_CLIENT_CLOSED, causes};
use crate::route::{RedisShared, Route};
use crate::router::Router;
use crate::shaper::{Admission, RejectReason, Rejection};
use crate::tls::TlsError;
use crate::upstream::{Upstream, UpstreamError};

/// Everything needed to serve requests: the routing table, each route's
/// shaper and upstream, and the metrics.
pub struct Gateway {
    router: Router,
    routes: Vec<Route>,
    upstreams: Vec<Arc<Upstream>>,
    unrouted: RouteMetrics,
    trusted_proxies: Vec<IpNet>,
    max_body_bytes: u64,
    /// How request bodies are read (buffer size, idle timeout, maximum).
    body_limits: BodyLimits,
    /// `server.send_timeout`: how long a client may leave a response unread.
    send_timeout: Duration,
    access_log: bool,
    metrics: Metrics,
    /// The `[redis]` link global routes share.
    redis: Option<RedisShared>,
}

impl Gateway {
    /// Builds the gateway; must run inside a tokio runtime (shapers spawn tasks).
    pub fn new(config: &Config, metrics: Metrics) -> Result<Gateway, TlsError> {
        Gateway::build(config, metrics, None)
    }

    /// The gateway for a new config generation. Routes that keep their name
    /// and upstream keep their live state (queue, limiters, pause, override);
    /// upstreams keep their in-flight accounting. Removed routes drain in the
    /// old generation, which lives as long as requests still hold it.
    pub fn reload(&self, config: &Config) -> Result<Gateway, TlsError> {
        Gateway::build(config, self.metrics.clone(), Some(self))
    }

    fn build(
        config: &Config,
        metrics: Metrics,
        previous: Option<&Gateway>,
    ) -> Result<Gateway, TlsError> {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstreams
            .values()
            .map(|u| {
                let old = previous.and_then(|g| g.upstreams.iter().find(|o| o.name() == u.name));
                match old {
                    Some(old) if old.config() == u => Ok(old.clone()),
                    _ => Upstream::new(u, &metrics, old.map(|o| o.as_ref())),
                }
            })
            .collect::<Result<_, _>>()?;
        // Config validation makes every route name a known upstream; were
        // one not to, the route is left out (of the router too, which
        // indexes the same list).
        let kept: Vec<crate::config::RouteConfig> = config
            .routes
            .iter()
            .filter(|r| {
                let known = upstreams.iter().any(|u| u.name() == r.upstream);
                if !known {
                    tracing::error!(route = %r.name, upstream = %r.upstream, "route names an unknown upstream; route left out");
                }
                known
            })
            .cloned()
            .collect();
        let redis = config.redis.as_ref().and_then(|c| {
            let kept = previous
                .and_then(|g| g.redis.as_ref())
                .filter(|r| r.config == *c);
            match kept {
                Some(kept) => Some(kept.clone()),
                // The loader checked the URL; should the client still refuse
                // it, global routes run on their fallback.
                None => match RedisLink::with_password(&c.url, c.password.as_ref(), c.timeout) {
                    Ok(link) => Some(RedisShared {
                        config: c.clone(),
                        link: Arc::new(link),
                    }),
                    Err(error) => {
                        tracing::error!(%error, "[redis] unusable; global routes run on their on_redis_error fallback");
                        None
                    }
                },
            }
        });
        let routes = kept
            .iter()
            .filter_map(|r| {
                let upstream = upstreams.iter().find(|u| u.name() == r.upstream).cloned()?;
                let previous_state = previous
                    .and_then(|g| g.routes.iter().find(|old| old.name == r.name))
                    .map(|old| &old.state);
                Some(Route::new(
                    r,
                    upstream,
                    &metrics,
                    previous_state,
                    redis.as_ref(),
                ))
            })
            .collect();
        Ok(Gateway {
            router: Router::new(&kept),
            routes,
            upstreams,
            unrouted: metrics.unrouted_for(NO_ROUTE_LABEL),
            trusted_proxies: config.server.trusted_proxies.clone(),
            max_body_bytes: config.server.max_body_bytes,
            body_limits: BodyLimits {
                buffer: config.server.request_buffer_bytes,
                max: config.server.max_body_bytes,
                idle: config.server.client_body_timeout,
            },
            send_timeout: config.server.send_timeout,
            access_log: config.log.access_log,
            metrics,
            redis,
        })
    }

    /// The routes of this generation.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Serves one request from `client`.
    pub async fn handle(&self, mut req: Request<Incoming>, client: SocketAddr) -> Response<Body> {
        // One spelling of the path before anything reads it: routing, the
        // key, the access log and the backend all see the same path.
        let target = normalise_target(&mut req);
        let request_id = ensure_request_id(req.headers_mut());
        let mut record = Record::open(self, &req, client, request_id);

        // No tunnels to anywhere: sluice is not a forward proxy.
        if req.method() == Method::CONNECT {
            let mut response = local(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n");
            response.headers_mut().insert(
                header::ALLOW,
                HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
            );
            return record.finish(Outcome::RejectedInvalid, response);
        }

        if let Err(why) = target {
            return record.finish(
                Outcome::RejectedInvalid,
                local(StatusCode::BAD_REQUEST, why.body()),
            );
        }

        if let Err(why) = check_host(&req) {
            return record.finish(
                Outcome::RejectedInvalid,
                local(StatusCode::BAD_REQUEST, why),
            );
        }

        // Route.
        let host = request_host(&req);
        let Some(index) = self.router.route(
            host.as_ref().and_then(|h| h.to_str().ok()),
            req.uri().path(),
            req.method(),
        ) else {
            return record.finish(Outcome::NoRoute, local(StatusCode::NOT_FOUND, "no route\n"));
        };
        let route = &self.routes[index];
        record.route = Some(index);

        // A body known to be too large is refused before it takes a place in
        // the queue; one of unknown length is cut off where it goes over.
        if req.body().size_hint().lower() > self.max_body_bytes {
            return record.finish(
                Outcome::RejectedInvalid,
                local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
            );
        }

        // Classify: who is asking, and how important it is.
        let client_ip = client_ip(client, req.headers(), &self.trusted_proxies);
        record.client_ip = client_ip;
        let arrival = route.state.classifier().arrival(&req, client_ip);
        record.class = arrival.class;
        let now = Instant::now();
        if let Err(wait) = route.check_key(arrival.key, now) {
            return record.rate_limited(route, wait);
        }
        route.check_dry_route_limit(now);

        // Read a small body in full before taking a place or a slot: a slow
        // sender then holds its own connection, not the backend's capacity.
        let (parts, incoming) = req.into_parts();
        let reading = Instant::now();
        let body = match RequestBody::read(incoming, self.body_limits).await {
            Ok(body) => body,
            Err(err) => return record.body_failed(err),
        };
        let sending = reading.elapsed();
        let req = Request::from_parts(parts, body);

        // Admit: go now, wait in the queue, or be turned away.
        // A connection's first request has waited since its accept; the time
        // its client took to send the body is the client's, not a wait.
        let since = req
            .extensions()
            .get::<WaitingSince>()
            .map_or(now, |since| since.0)
            + sending;
        let grant = match route.state.shaper.admit_since(arrival, since) {
            Admission::Go(grant) => {
                route.metrics.queue_wait(0.0);
                grant
            }
            Admission::Queued(ticket) => {
                let waited = ticket.wait().await;
                let waited_for = record.started.elapsed();
                route.metrics.queue_wait(waited_for.as_secs_f64());
                record.queue_wait = waited_for;
                match waited {
                    // A grant can reach a busy worker late: one past the
                    // deadline is dropped, never forwarded.
                    Ok(grant) if Instant::now() < since + route.state.shaper.limits().timeout => {
                        grant
                    }
                    Ok(_late) => {
                        let rejection = Rejection {
                            reason: RejectReason::Timeout,
                            retry_after: Duration::from_secs(1),
                        };
                        return record.reject(route, rejection);
                    }
                    Err(rejection) => return record.reject(route, rejection),
                }
            }
            Admission::Rejected(rejection) => return record.reject(route, rejection),
        };

        // Forward. An Upgrade to a protocol the route allows (WebSocket by
        // default) keeps its Upgrade header and becomes a tunnel if the
        // backend agrees (101); any other goes on as a plain request.
        let mut req = req;
        let upgrade = requested_upgrade(&req, &route.upgrades)
            .map(|protocol| (protocol, hyper::upgrade::on(&mut req)));
        let peer_trusted = peer_is_trusted(client.ip(), &self.trusted_proxies);
        let mut upstream_req = prepare_upstream_request(req, client, host, peer_trusted);
        if let Some((protocol, _)) = &upgrade {
            let headers = upstream_req.headers_mut();
            headers.insert(header::UPGRADE, protocol.clone());
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let sent = Instant::now();
        let deadline = record.started + route.state.shaper.limits().timeout;
        let result = route
            .upstream
            .send(upstream_req, deadline, &record.reached)
            .await;
        record.upstream_time = Some(sent.elapsed());
        match result {
            Ok((mut response, target)) => {
                let status = response.status();
                let tunnel = if status == StatusCode::SWITCHING_PROTOCOLS {
                    // Only to a protocol the route allows and the client asked for.
                    let agreed = response
                        .headers()
                        .get(header::UPGRADE)
                        .filter(|p| {
                            upgrade.as_ref().is_some_and(|(offered, _)| {
                                switch_is_allowed(p, offered, &route.upgrades)
                            })
                        })
                        .cloned();
                    let (Some(protocol), Some((_, client_side))) = (agreed, upgrade) else {
                        tracing::warn!(
                            route = %route.name,
                            upstream = %route.upstream.name(),
                            "backend switched to a protocol the client did not ask for or the route does not allow; 502"
                        );
                        return record.finish(
                            Outcome::UpstreamError,
                            local(StatusCode::BAD_GATEWAY, "upstream error\n"),
                        );
                    };
                    let upstream_side = hyper::upgrade::on(&mut response);
                    tokio::spawn(tunnel(client_side, upstream_side, route.name.clone()));
                    Some(protocol)
                } else {
                    None
                };
                strip_hop_by_hop(response.headers_mut());
                let line = record.finish_relayed(status);
                let relay = Relay {
                    grant,
                    target,
                    line,
                    send_timeout: self.send_timeout,
                };
                let mut response = relay.response(response).await;
                if let Some(protocol) = tunnel {
                    let headers = response.headers_mut();
                    headers.insert(header::UPGRADE, protocol);
                    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                }
                response
            }
            Err(err) => {
                if !matches!(err, UpstreamError::ClientBody(_)) {
                    tracing::warn!(
                        route = %route.name,
                        upstream = %route.upstream.name(),
                        error = %error_chain(&err),
                        "upstream request failed"
                    );
                }
                let (outcome, response) = failure(&err, record.reached());
                record.finish(outcome, response)
            }
        }
    }

    /// Refuses new requests and answers everything still queued (shutdown).
    pub fn close(&self) {
        for route in &self.routes {
            route.state.shaper.close();
        }
    }

    /// Updates the sampled gauges and renders the metrics text.
    pub fn render_metrics(&self) -> String {
        for route in &self.routes {
            route.sample_metrics();
        }
        for upstream in &self.upstreams {
            upstream.sample_metrics();
        }
        self.metrics.render()
    }
}

/// The one place a failed request gets its outcome and answer. A failure of
/// the client's body is the client's: `400` malformed, `413` too large,
/// `408` too slow, and a client gone mid-body is cancelled (or forwarded, if
/// the backend may have seen part of it) with 499 in the log. Anything else
/// is the backend's: `upstream_error`, `502` or `504`.
fn failure(err: &UpstreamError, reached: bool) -> (Outcome, Response<Body>) {
    match err {
        UpstreamError::ClientBody(fault) => body_failure(*fault, reached),
        _ => (
            Outcome::UpstreamError,
            local(err.status(), "upstream error\n"),
        ),
    }
}

/// The outcome and answer for a request whose body failed on the client's
/// side; `reached`: the request had been handed to a backend connection.
fn body_failure(fault: ClientBodyError, reached: bool) -> (Outcome, Response<Body>) {
    let (outcome, status, text) = match fault {
        ClientBodyError::TooLarge => (
            Outcome::RejectedInvalid,
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large\n",
        ),
        ClientBodyError::Malformed => (
            Outcome::RejectedInvalid,
            StatusCode::BAD_REQUEST,
            "malformed request body\n",
        ),
        ClientBodyError::Timeout => (
            Outcome::RejectedInvalid,
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time\n",
        ),
        // Nobody is left to read an answer; the status is for the log.
        ClientBodyError::Gone => (
            if reached {
                Outcome::Forwarded
            } else {
                Outcome::Cancelled
            },
            STATUS_CLIENT_CLOSED,
            "request body incomplete\n",
        ),
    };
    let mut response = local(status, text);
    // The rest of the body is not worth reading: the connection ends.
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    (outcome, response)
}

/// One request's accounting: exactly one outcome, written once.
struct Record<'g> {
    gateway: &'g Gateway,
    route: Option<usize>,
    class: usize,
    client_ip: std::net::IpAddr,
    method: http::Method,
    /// X-Request-Id: the client's, or one made here.
    request_id: HeaderValue,
    /// The request URI (a cheap clone: its parts are shared bytes).
    uri: http::Uri,
    started: Instant,
    queue_wait: Duration,
    upstream_time: Option<Duration>,
    /// The request has been handed to a backend connection: if the request
    /// future is dropped before `finish` (the client left), it was forwarded
    /// (499); before that, cancelled.
    reached: AtomicBool,
    finished: bool,
}

impl<'g> Record<'g> {
    fn open(
        gateway: &'g Gateway,
        req: &Request<Incoming>,
        client: SocketAddr,
        request_id: HeaderValue,
    ) -> Record<'g> {
        Record {
            gateway,
            request_id,
            route: None,
            class: 0,
            client_ip: client.ip(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            started: Instant::now(),
            queue_wait: Duration::ZERO,
            upstream_time: None,
            reached: AtomicBool::new(false),
            finished: false,
        }
    }

    fn reject(&mut self, route: &Route, rejection: Rejection) -> Response<Body> {
        let outcome = match rejection.reason {
            RejectReason::QueueFull | RejectReason::WaitTooLong | RejectReason::Displaced => {
                Outcome::RejectedQueueFull
            }
            RejectReason::Timeout | RejectReason::Closed => Outcome::DroppedTimeout,
        };
        let response = refusal(
            route.reject.status,
            "overloaded, retry later\n",
            route.reject.retry_after.then_some(rejection.retry_after),
        );
        self.finish(outcome, response)
    }

    /// 429: the key is over its own limit; `wait` until it has a token again.
    fn rate_limited(&mut self, route: &Route, wait: Duration) -> Response<Body> {
        let response = refusal(
            route.reject.rate_limited_status,
            "too many requests, retry later\n",
            route.reject.retry_after.then_some(wait),
        );
        self.finish(Outcome::RejectedRateLimited, response)
    }

    /// The request's body failed on the client's side before it was sent.
    fn body_failed(&mut self, fault: ClientBodyError) -> Response<Body> {
        let (outcome, response) = body_failure(fault, false);
        self.finish(outcome, response)
    }

    fn finish(&mut self, outcome: Outcome, response: Response<Body>) -> Response<Body> {
        self.finished = true;
        self.count(outcome);
        if self.gateway.access_log {
            self.line(outcome, response.status()).write(None);
        }
        response
    }

    /// Forwarded, and its response is being relayed: counted now, logged
    /// (if the access log is on) when the response body ends.
    fn finish_relayed(&mut self, status: StatusCode) -> Option<AccessLine> {
        self.finished = true;
        self.count(Outcome::Forwarded);
        self.gateway
            .access_log
            .then(|| self.line(Outcome::Forwarded, status))
    }

    fn reached(&self) -> bool {
        self.reached.load(Ordering::Acquire)
    }

    fn count(&self, outcome: Outcome) {
        match self.route {
            Some(i) => self.gateway.routes[i].metrics.outcome(self.class, outcome),
            None => self.gateway.unrouted.outcome(0, outcome),
        }
    }

    fn line(&self, outcome: Outcome, status: StatusCode) -> AccessLine {
        AccessLine {
            route: self
                .route
                .map_or(NO_ROUTE_LABEL, |i| self.gateway.routes[i].name.as_str())
                .to_owned(),
            method: self.method.clone(),
            uri: self.uri.clone(),
            request_id: self.request_id.clone(),
            client_ip: self.client_ip,
            class: self.class,
            outcome,
            status,
            queue_wait: self.queue_wait,
            upstream_time: self.upstream_time,
            started: self.started,
        }
    }
}

impl Drop for Record<'_> {
    fn drop(&mut self) {
        if !self.finished {
            let outcome = if self.reached() {
                Outcome::Forwarded
            } else {
                Outcome::Cancelled
            };
            self.count(outcome);
            if self.gateway.access_log {
                self.line(outcome, STATUS_CLIENT_CLOSED).write(None);
            }
        }
    }
}

/// One request's access log line, owned, so a relayed response can write it
/// when its body ends.
pub(crate) struct AccessLine {
    route: String,
    method: http::Method,
    uri: http::Uri,
    request_id: HeaderValue,
    client_ip: std::net::IpAddr,
    class: usize,
    outcome: Outcome,
    status: StatusCode,
    queue_wait: Duration,
    upstream_time: Option<Duration>,
    started: Instant,
}

impl AccessLine {
    /// Writes the line; `status` overrides the one recorded (499 when the
    /// client left before the response's end).
    pub(crate) fn write(&self, status: Option<StatusCode>) {
        tracing::info!(
            target: "sluice::access",
            route = self.route.as_str(),
            method = %self.method,
            path = %self.uri.path(),
            request_id = self.request_id.to_str().unwrap_or("-"),
            client = %self.client_ip,
            class = self.class,
            outcome = self.outcome.as_str(),
            status = status.unwrap_or(self.status).as_u16(),
            queue_wait_ms = self.queue_wait.as_secs_f64() * 1e3,
            upstream_ms = self.upstream_time.map(|d| d.as_secs_f64() * 1e3),
            total_ms = self.started.elapsed().as_secs_f64() * 1e3,
        );
    }
}

/// The protocols an HTTP/1.1 request asks to switch to (`Connection:
/// upgrade` with an `Upgrade` header) that the route allows, as the
/// `Upgrade` value to send on; None when there are none (the request then
/// goes on as a plain one: the Upgrade header is hop-by-hop and dropped).
fn requested_upgrade<B>(req: &Request<B>, allowed: &[String]) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 || allowed.is_empty() {
        return None;
    }
    let wants = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    if !wants {
        return None;
    }
    let mut lines = req.headers().get_all(header::UPGRADE).iter();
    let first = lines.next()?;
    let offered = || {
        req.headers()
            .get_all(header::UPGRADE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|p| !p.is_empty())
    };
    // The common case (one line, every protocol allowed) reuses the value.
    if lines.next().is_none() && offered().all(|p| protocol_allowed(p, allowed)) {
        return Some(first.clone());
    }
    let kept: Vec<&str> = offered().filter(|p| protocol_allowed(p, allowed)).collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// The name of an Upgrade protocol, without its version: "websocket/13" is
/// "websocket".
fn protocol_name(protocol: &str) -> &str {
    let protocol = protocol.trim();
    protocol.split_once('/').map_or(protocol, |(name, _)| name)
}

/// Whether `protocol` (an Upgrade token) is in the route's list. h2c never
/// is: HTTP/2 inside a tunnel would carry any number of requests past the
/// shaper.
fn protocol_allowed(protocol: &str, allowed: &[String]) -> bool {
    let name = protocol_name(protocol);
    !name.eq_ignore_ascii_case("h2c") && allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

/// Whether a backend's 101 switches to a protocol the route allows and the
/// client offered (`offered`, the Upgrade value sent on).
fn switch_is_allowed(chosen: &HeaderValue, offered: &HeaderValue, allowed: &[String]) -> bool {
    let (Ok(chosen), Ok(offered)) = (chosen.to_str(), offered.to_str()) else {
        return false;
    };
    let name = protocol_name(chosen);
    protocol_allowed(chosen, allowed)
        && offered
            .split(',')
            .any(|p| protocol_name(p).eq_ignore_ascii_case(name))
}

/// Copies bytes both ways between the client and the backend until either
/// side closes. Tunnels hold no in-flight slot: they were admitted through
/// the shaper as a request and may then live for as long as they like.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    route: String,
) {
    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(both) => both,
        Err(err) => {
            tracing::debug!(%route, %err, "upgrade did not complete");
            return;
        }
    };
    let mut client = TokioIo::new(client);
    let mut upstream = TokioIo::new(upstream);
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((sent, received)) => tracing::debug!(%route, sent, received, "tunnel closed"),
        Err(err) => tracing::debug!(%route, %err, "tunnel ended with an error"),
    }
}

/// Makes sure the request carries one `X-Request-Id` and returns it, for the
/// access log and the backend. The client's is kept when it is one sane
/// token (see [`is_sane_request_id`]); otherwise one is made here and
/// replaces whatever was sent.
fn ensure_request_id(headers: &mut HeaderMap) -> HeaderValue {
    let mut sent = headers.get_all(X_REQUEST_ID).iter();
    if let (Some(id), None) = (sent.next(), sent.next())
        && is_sane_request_id(id.as_bytes())
    {
        return id.clone();
    }
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    static PROCESS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        nanos ^ (u64::from(std::process::id()) << 32)
    });
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // 32 lower-case hex digits: the process's 64-bit prefix, then the counter.
    let mut text = [0u8; 32];
    for (i, digit) in text.iter_mut().enumerate() {
        let word = if i < 16 { *PROCESS } else { n };
        let nibble = (word >> (60 - 4 * (i % 16))) & 0xf;
        *digit = b"0123456789abcdef"[nibble as usize];
    }
    let id = HeaderValue::from_bytes(&text).unwrap_or_else(|_| HeaderValue::from_static("-"));
    headers.insert(X_REQUEST_ID, id.clone());
    id
}

/// The longest client request id kept; a UUID is 36 bytes.
const MAX_REQUEST_ID_BYTES: usize = 128;

/// A request id worth keeping: 1 to 128 bytes of letters, digits and
/// `-_.:+/=@`, which covers UUIDs, ULIDs, hex and base64 ids and cannot
/// break a log line or smuggle anything to the backend.
fn is_sane_request_id(id: &[u8]) -> bool {
    (1..=MAX_REQUEST_ID_BYTES).contains(&id.len())
        && id
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(&b))
}

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host, and it must
/// be a host with an optional port (no user info, path or spaces). The URI's
/// authority (HTTP/2's `:authority`, or an absolute-form target) follows the
/// same rule, and in HTTP/2 a Host that names another entity makes the
/// request malformed (RFC 9113 §8.3.1).
fn check_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("more than one Host header\n");
    }
    let authority = req.uri().authority().map(|a| a.as_str().as_bytes());
    if let Some(authority) = authority {
        if !is_host_text(authority) {
            return Err("invalid authority\n");
        }
        if req.version() == Version::HTTP_2
            && first.is_some_and(|host| !host.as_bytes().eq_ignore_ascii_case(authority))
        {
            return Err("Host disagrees with :authority\n");
        }
    }
    match first {
        None if authority.is_none()
            && matches!(req.version(), Version::HTTP_11 | Version::HTTP_2) =>
        {
            Err("missing Host header\n")
        }
        None => Ok(()),
        Some(host) if is_host_text(host.as_bytes()) => Ok(()),
        Some(_) => Err("invalid Host header\n"),
    }
}

/// RFC 3986 host and port characters only: no user info (`@`), path,
/// query, spaces or controls. Checked in place: this runs per request.
fn is_host_text(host: &[u8]) -> bool {
    !host.is_empty()
        && host
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:[]%".contains(&b))
}

/// The host the client asked for: the URI's authority when it has one
/// (HTTP/2, or an absolute-form target, whose Host RFC 9112 §3.2.2 says to
/// ignore), else the Host header. A header value clone shares the request's
/// bytes.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    match req.uri().authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => req.headers().get(header::HOST).cloned(),
    }
}

/// Headers that describe one connection, never the message: RFC 9110 §7.6.1.
/// Every `Proxy-*` header is dropped too (credentials for this hop, and the
/// `Proxy` header of the "httpoxy" attack), as is Transfer-Encoding: framing
/// is each connection's own, and hyper re-frames the body.
static HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
    // RFC 9113 §3.2.1 (h2c's upgrade): settings for this connection only.
    HeaderName::from_static("http2-settings"),
];

/// Headers sluice writes (or checks) itself: a Connection header naming one
/// is not obeyed, so a client cannot strip them on the way to the backend.
static OWNED: [HeaderName; 6] = [
    header::HOST,
    header::FORWARDED,
    X_REQUEST_ID,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
];

fn is_proxy_header(name: &HeaderName) -> bool {
    let text = name.as_str();
    text == "proxy" || text.starts_with("proxy-")
}

/// Removes hop-by-hop headers, including those the Connection header names.
/// This runs twice per request, so the common case (a `Connection:
/// keep-alive` and nothing else) costs one pass over the names and no
/// allocation.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let mut present = [false; HOP_BY_HOP.len()];
    let mut proxy_headers = false;
    for name in headers.keys() {
        match HOP_BY_HOP.iter().position(|h| h == name) {
            Some(i) => present[i] = true,
            None => proxy_headers |= is_proxy_header(name),
        }
    }
    // Other headers named by Connection (rare): tokens that are not already
    // hop-by-hop, not the `close` option and not a header sluice owns.
    let mut named: Vec<HeaderName> = Vec::new();
    if present[0] {
        let tokens = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim);
        for token in tokens {
            let known = token.is_empty()
                || token.eq_ignore_ascii_case("close")
                || HOP_BY_HOP
                    .iter()
                    .chain(&OWNED)
                    .any(|h| h.as_str().eq_ignore_ascii_case(token));
            if !known && let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    if proxy_headers {
        named.extend(headers.keys().filter(|n| is_proxy_header(n)).cloned());
    }
    for (name, _) in HOP_BY_HOP.iter().zip(present).filter(|(_, p)| *p) {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

/// The client's address as text, for X-Forwarded-For and Forwarded, without
/// the formatting machinery (this runs once per request).
fn write_ip(out: &mut Vec<u8>, ip: std::net::IpAddr, forwarded: bool) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        // Forwarded quotes and brackets an IPv6 node (RFC 7239 §6).
        std::net::IpAddr::V6(v6) if forwarded => out.extend(format!("\"[{v6}]\"").as_bytes()),
        std::net::IpAddr::V6(v6) => out.extend(v6.to_string().as_bytes()),
    }
}

/// Rewrites the client's request for the upstream: HTTP/1.1, hop-by-hop
/// headers gone, Host set to the host routed on, and the forwarding headers
/// written (see [`write_forwarding_headers`]).
fn prepare_upstream_request<B>(
    mut req: Request<B>,
    client: SocketAddr,
    host: Option<HeaderValue>,
    peer_trusted: bool,
) -> Request<B> {
    let proto: &'static str = if req.extensions().get::<crate::tls::Secure>().is_some() {
        "https"
    } else {
        "http"
    };
    *req.version_mut() = Version::HTTP_11;
    let headers = req.headers_mut();
    // First, so that nothing the client's Connection names can touch what
    // sluice adds below.
    strip_hop_by_hop(headers);
    let peer = Peer {
        ip: canonical_ip(client.ip()),
        proto,
        trusted: peer_trusted,
    };
    write_forwarding_headers(headers, &peer, host.as_ref());
    if let Some(host) = host {
        headers.insert(header::HOST, host);
    }
    req
}

/// The connection a request came in on, as the forwarding headers tell it.
struct Peer {
    ip: std::net::IpAddr,
    proto: &'static str,
    /// Whether the peer is in `server.trusted_proxies`.
    trusted: bool,
}

/// X-Forwarded-For / -Proto / -Host and Forwarded. From a trusted proxy,
/// its chain is kept (every header line, in order) and this hop appended;
/// its -Proto and -Host, which describe the client's original request, are
/// kept. From anyone else, whatever they sent is replaced: the chain starts
/// here.
fn write_forwarding_headers(headers: &mut HeaderMap, peer: &Peer, host: Option<&HeaderValue>) {
    let mut text = Vec::with_capacity(64);
    if peer.trusted {
        append_lines(&mut text, headers, &X_FORWARDED_FOR);
    }
    write_ip(&mut text, peer.ip, false);
    insert_text(headers, X_FORWARDED_FOR, &text);
    if !(peer.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(peer.proto));
    }
    if !(peer.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        match host {
            Some(host) => headers.insert(X_FORWARDED_HOST, host.clone()),
            None => headers.remove(&X_FORWARDED_HOST),
        };
    }
    text.clear();
    if peer.trusted {
        append_lines(&mut text, headers, &header::FORWARDED);
    }
    text.extend_from_slice(b"for=");
    write_ip(&mut text, peer.ip, true);
    text.extend_from_slice(b";proto=");
    text.extend_from_slice(peer.proto.as_bytes());
    if let Some(host) = host
        && host
            .as_bytes()
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(b))
    {
        text.extend_from_slice(b";host=");
        text.extend_from_slice(host.as_bytes());
    }
    insert_text(headers, header::FORWARDED, &text);
}

/// Every line of a list header, in order, each followed by ", ".
fn append_lines(text: &mut Vec<u8>, headers: &HeaderMap, name: &HeaderName) {
    for line in headers.get_all(name) {
        let line = line.as_bytes().trim_ascii();
        if !line.is_empty() {
            text.extend_from_slice(line);
            text.extend_from_slice(b", ");
        }
    }
}

/// Replaces every line of `name` with `text`; should `text` not be a valid
/// value, the header is dropped rather than left as the client sent it.
fn insert_text(headers: &mut HeaderMap, name: HeaderName, text: &[u8]) {
    match HeaderValue::from_bytes(text) {
        Ok(value) => {
            headers.insert(name, value);
        }
        Err(_) => {
            headers.remove(name);
        }
    }
}

/// The request's path in normal form (see [`crate::path`]), the query left
/// as sent. The URI is rebuilt only when the path changes.
fn normalise_target<B>(req: &mut Request<B>) -> Result<(), PathError> {
    let uri = req.uri();
    let normal = match crate::path::normalise(uri.path())? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(normal) => normal,
    };
    let mut target = normal;
    if let Some(query) = uri.query() {
        target.push('?');
        target.push_str(query);
    }
    let mut parts = uri.clone().into_parts();
    parts.path_and_query =
        Some(http::uri::PathAndQuery::try_from(target).map_err(|_| PathError::Unrepresentable)?);
    *req.uri_mut() = http::Uri::from_parts(parts).map_err(|_| PathError::Unrepresentable)?;
    Ok(())
}

/// A refusal with an optional Retry-After (whole seconds, rounded up, at least 1).
fn refusal(
    status: StatusCode,
    text: &'static str,
    retry_after: Option<Duration>,
) -> Response<Body> {
    let mut response = local(status, text);
    if let Some(wait) = retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_UPGRADE;

    #[test]
    fn hop_by_hop_headers_and_those_named_by_connection_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-secret", HeaderValue::from_static("1"));
        headers.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert("x-kept", HeaderValue::from_static("1"));
        headers.insert("proxy", HeaderValue::from_static("http://evil:8080"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert("proxyish", HeaderValue::from_static("kept"));
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["proxyish", "x-kept"]);
    }

    #[test]
    fn connection_cannot_name_the_headers_sluice_owns() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("X-Request-Id, host, forwarded, x-forwarded-for, x-other"),
        );
        for name in [
            "x-request-id",
            "host",
            "forwarded",
            "x-forwarded-for",
            "x-other",
        ] {
            headers.insert(name, HeaderValue::from_static("1"));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<&str> = headers.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["forwarded", "host", "x-forwarded-for", "x-request-id"]
        );
    }

    fn upgrade_request(connection: &str, upgrades: &[&str]) -> Request<()> {
        let mut req = Request::get("/chat").header(header::CONNECTION, connection);
        for upgrade in upgrades {
            req = req.header(header::UPGRADE, *upgrade);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn only_the_upgrades_a_route_allows_are_offered_on() {
        let websocket = [DEFAULT_UPGRADE.to_string()];
        let offered = |connection, upgrades: &[&str], allowed: &[String]| {
            requested_upgrade(&upgrade_request(connection, upgrades), allowed)
                .map(|v| v.to_str().unwrap().to_string())
        };
        assert_eq!(
            offered("Upgrade", &["WebSocket"], &websocket).as_deref(),
            Some("WebSocket")
        );
        assert_eq!(
            offered(
                "keep-alive, upgrade",
                &["foo/2, websocket", "h2c"],
                &websocket
            )
            .as_deref(),
            Some("websocket")
        );
        assert_eq!(offered("upgrade", &["h2c"], &websocket), None);
        assert_eq!(offered("upgrade", &["websocket"], &[]), None);
        assert_eq!(offered("keep-alive", &["websocket"], &websocket), None);
        // h2c is refused even if a list were to name it.
        assert_eq!(offered("upgrade", &["h2c"], &["h2c".to_string()]), None);
        let chosen = |c: &'static str, o: &'static str| {
            switch_is_allowed(
                &HeaderValue::from_static(c),
                &HeaderValue::from_static(o),
                &websocket,
            )
        };
        assert!(chosen("websocket", "WebSocket"));
        assert!(!chosen("h2c", "websocket"));
        assert!(!chosen("websocket", "foo"));
    }

    #[test]
    fn a_request_id_is_kept_only_when_sane() {
        for sane in [
            "abc-123",
            "0f8fad5b-d9cb-469f-a165-70867728950e",
            "a:b.c_d+e/f=@",
        ] {
            assert!(is_sane_request_id(sane.as_bytes()), "{sane}");
        }
        let long = "a".repeat(MAX_REQUEST_ID_BYTES + 1);
        for insane in ["", "a b", "a\"b", "<script>", "a,b", long.as_str()] {
            assert!(!is_sane_request_id(insane.as_bytes()), "{insane}");
        }
        let mut headers = HeaderMap::new();
        headers.append(X_REQUEST_ID, HeaderValue::from_static("one"));
        headers.append(X_REQUEST_ID, HeaderValue::from_static("two"));
        let id = ensure_request_id(&mut headers);
        assert_eq!(id.len(), 32);
        assert_eq!(headers.get_all(X_REQUEST_ID).iter().count(), 1);
    }

    #[test]
    fn http2_authority_and_host_must_agree() {
        let h2 = |uri: &str, host: Option<&str>| {
            let mut req = Request::get(uri).version(Version::HTTP_2);
            if let Some(host) = host {
                req = req.header(header::HOST, host);
            }
            check_host(&req.body(()).unwrap())
        };
        assert!(h2("http://a.example/x", None).is_ok());
        assert!(h2("http://a.example/x", Some("A.EXAMPLE")).is_ok());
        assert!(h2("http://a.example/x", Some("b.example")).is_err());
        assert!(h2("http://a.example:8080/x", Some("a.example")).is_err());
        assert!(h2("http://u:p@a.example/x", None).is_err());
        assert!(h2("/x", None).is_err(), "neither :authority nor Host");
        assert!(h2("/x", Some("a.example")).is_ok());
    }

    #[test]
    fn a_plain_keep_alive_message_keeps_everything_else() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        headers.insert(header::DATE, HeaderValue::from_static("today"));
        strip_hop_by_hop(&mut headers);
        assert_eq!(headers.len(), 2);
        assert!(!headers.contains_key(header::CONNECTION));
    }

    #[test]
    fn forwarding_headers_are_added_without_formatting_surprises() {
        let mut text = Vec::new();
        write_ip(&mut text, "10.0.255.7".parse().unwrap(), true);
        assert_eq!(text, b"10.0.255.7");
        text.clear();
        write_ip(&mut text, "2001:db8::1".parse().unwrap(), true);
        assert_eq!(text, b"\"[2001:db8::1]\"");
        text.clear();
        write_ip(&mut text, "2001:db8::1".parse().unwrap(), false);
        assert_eq!(text, b"2001:db8::1");
        let mut ids = HeaderMap::new();
        let id = ensure_request_id(&mut ids);
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_eq!(ensure_request_id(&mut ids), id, "an id once made is kept");
    }
}
