//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and a small JSON
//! API under `/admin/` for operating routes while traffic flows.
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /admin/routes` | every route's live state |
//! | `GET /admin/routes/{name}` | one route |
//! | `POST /admin/routes/{name}/pause` | stop releasing (requests still queue and time out) |
//! | `POST /admin/routes/{name}/resume` | release again at the route's rate |
//! | `PUT /admin/routes/{name}/rate` | `{"rate": 50, "burst": 5, "ttl": "10m"}`: a temporary rate |
//! | `DELETE /admin/routes/{name}/rate` | back to the configured rate now |
//! | `GET /admin/routes/{name}/async` | an async route: depth, oldest age, expected drain time |
//! | `GET /admin/routes/{name}/dead-letters` | its dead letters (at most 1000) |
//! | `POST /admin/routes/{name}/dead-letters/redrive` | every dead letter back to the queue |
//! | `DELETE /admin/routes/{name}/dead-letters` | discard them |
//! | `GET /status.json` | the status page's figures and history (docs/status.md) |
//! | `GET /` | the status page itself (no secret in it; it asks for the token) |
//!
//! When `admin.token` (or `token_file`, `token_env`) is set, `/admin/` and
//! `/status.json` need
//! `Authorization: Bearer <token>`: the scheme in any case (RFC 9110), the
//! token compared in constant time. A body is read (at most 64 KiB) before
//! any answer.
//!
//! The listener itself ([`serve_admin`]) runs on the main runtime, at most
//! [`ADMIN_MAX_CONNECTIONS`] connections at once, with the proxy's header
//! and idle timeouts and hyper's own header limits, so a proxy tuned for
//! tiny heads still answers a scraper. It reads the live generation, which
//! is why it lives in the runtime.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::accept::accept_until_stopped;
use super::activity::{Activity, Tracked};
use super::connection::{
    ConnectionWatch, HYPER_MAX_HEADERS, Watched, builder_with_limits, drive_connection,
};
use super::door::Door;
use super::listen::Listener;
use super::live::Live;
use super::status::{PAGE, Status, sample_until_stopped};
use crate::config::{MAX_DURATION, MAX_TOKEN_BYTES, ServerConfig, check_burst, check_rate};
use crate::gateway::route::Route;
use crate::http::{Body, local, local_json, text_body};

/// Largest admin request body accepted.
const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest rate override accepted (the longest duration a config takes);
/// an override is meant to be temporary.
const MAX_OVERRIDE_TTL: Duration = MAX_DURATION;

pub(crate) struct Admin {
    live: Arc<Live>,
    status: Arc<Status>,
}

/// A failed admin call: status and a message, answered as JSON.
struct Failure(StatusCode, String);

type Answer = Result<Response<Body>, Failure>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateRequest {
    rate: f64,
    burst: Option<i64>,
    /// A human duration, e.g. "10m".
    ttl: String,
}

impl Admin {
    pub fn new(live: Arc<Live>, status: Arc<Status>) -> Admin {
        Admin { live, status }
    }

    pub async fn handle(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/metrics") => metrics(self.live.gateway.load().render_metrics()),
            (&Method::GET, "/healthz") => local(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") if self.live.ready.load(Ordering::SeqCst) => {
                local(StatusCode::OK, "ready\n")
            }
            (&Method::GET, "/readyz") => local(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
            (&Method::GET, "/") => page(),
            (_, p) if p == "/admin" || p.starts_with("/admin/") || p == "/status.json" => {
                let (parts, body) = req.into_parts();
                // The body is read (bounded) before any answer, a refusal
                // included: answering and closing with request bytes still
                // unread makes the kernel reset the connection, and the
                // client loses the answer.
                let body = match read_body(body).await {
                    Ok(body) => body,
                    Err(failure) => return failure.into_response(),
                };
                if let Err(failure) = self.authorize(&parts.headers) {
                    return failure.into_response();
                }
                if path == "/status.json" {
                    return self.status_json(&parts.method);
                }
                if let Some(answer) = self.async_api(&parts.method, &path).await {
                    return answer.unwrap_or_else(Failure::into_response);
                }
                self.api(&parts.method, &path, &body)
                    .unwrap_or_else(Failure::into_response)
            }
            _ => local(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// `GET /status.json`: the status page's document, never cached.
    fn status_json(&self, method: &Method) -> Response<Body> {
        if method != Method::GET {
            return Failure(StatusCode::METHOD_NOT_ALLOWED, "GET only".into()).into_response();
        }
        let mut response = json_response(self.status.json(&self.live));
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        response
    }

    fn authorize(&self, headers: &http::HeaderMap) -> Result<(), Failure> {
        let config = self.live.config.load();
        let Some(token) = config.admin.token.as_ref() else {
            return Ok(());
        };
        let offered = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer_credentials(v.as_bytes()))
            .unwrap_or_default();
        if token_matches(offered, token.expose().as_bytes()) {
            Ok(())
        } else {
            Err(Failure(
                StatusCode::UNAUTHORIZED,
                "missing or wrong bearer token".into(),
            ))
        }
    }

    fn api(&self, method: &Method, path: &str, body: &[u8]) -> Answer {
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let gateway = self.live.gateway.load_full();
        let find = |name: &str| {
            gateway
                .routes()
                .iter()
                .find(|r| r.name == name)
                .ok_or_else(|| Failure(StatusCode::NOT_FOUND, format!("no route named {name:?}")))
        };
        match (method.clone(), parts.as_slice()) {
            (Method::GET, ["admin", "routes"]) => Ok(json_response(json!({
                "routes": gateway.routes().iter().map(route_json).collect::<Vec<_>>()
            }))),
            (Method::GET, ["admin", "routes", name]) => Ok(json_response(route_json(find(name)?))),
            (Method::POST, ["admin", "routes", name, action @ ("pause" | "resume")]) => {
                let route = find(name)?;
                let paused = *action == "pause";
                route.state.shaper.set_paused(paused);
                tracing::info!(route = %route.name, paused, "route paused or resumed through the admin API");
                Ok(json_response(route_json(route)))
            }
            (Method::PUT, ["admin", "routes", name, "rate"]) => {
                let route = find(name)?;
                let body = parse_json::<RateRequest>(body)?;
                let (rate, burst, ttl) = validate_override(route, &body)?;
                route.state.set_rate_override(rate, burst, ttl);
                tracing::info!(route = %route.name, rate, burst = burst.get(), ?ttl, "rate overridden through the admin API");
                Ok(json_response(route_json(route)))
            }
            (Method::DELETE, ["admin", "routes", name, "rate"]) => {
                let route = find(name)?;
                route.state.clear_rate_override();
                tracing::info!(route = %route.name, "rate override cleared through the admin API");
                Ok(json_response(route_json(route)))
            }
            (_, ["admin", "routes", ..]) => Err(Failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "see the admin API in README.md".into(),
            )),
            _ => Err(Failure(
                StatusCode::NOT_FOUND,
                format!("no such endpoint {path}"),
            )),
        }
    }
}

impl Admin {
    /// The async route calls: `GET .../async` (depth, oldest age, expected
    /// drain time), `GET .../dead-letters`, `POST .../dead-letters/redrive`,
    /// `DELETE .../dead-letters`. `None` for any other path.
    async fn async_api(&self, method: &Method, path: &str) -> Option<Answer> {
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        let (name, call) = match parts.as_slice() {
            ["admin", "routes", name, "async"] => (*name, "async"),
            ["admin", "routes", name, "dead-letters"] => (*name, "dead-letters"),
            ["admin", "routes", name, "dead-letters", "redrive"] => (*name, "redrive"),
            _ => return None,
        };
        let gateway = self.live.gateway.load_full();
        let Some(route) = gateway.routes().iter().find(|r| r.name == name) else {
            return Some(Err(Failure(
                StatusCode::NOT_FOUND,
                format!("no route named {name:?}"),
            )));
        };
        let Some(deferred) = route.deferred.clone() else {
            return Some(Err(Failure(
                StatusCode::NOT_FOUND,
                format!("route {name:?} is not async (or its journal could not be opened)"),
            )));
        };
        let store_failed = |err: crate::journal::JournalError| {
            Failure(StatusCode::SERVICE_UNAVAILABLE, err.to_string())
        };
        Some(match (method.clone(), call) {
            (Method::GET, "async") => Ok(json_response(deferred.summary_json())),
            (Method::GET, "dead-letters") => {
                match deferred.dead_letters_json(MAX_LISTED_DEAD_LETTERS).await {
                    Ok(letters) => Ok(json_response(json!({ "dead_letters": letters }))),
                    Err(err) => Err(store_failed(err)),
                }
            }
            (Method::POST, "redrive") => match deferred.redrive().await {
                Ok(n) => {
                    tracing::info!(route = %route.name, redriven = n, "dead letters re-driven through the admin API");
                    Ok(json_response(json!({ "redriven": n })))
                }
                Err(err) => Err(store_failed(err)),
            },
            (Method::DELETE, "dead-letters") => match deferred.discard().await {
                Ok(n) => {
                    tracing::info!(route = %route.name, discarded = n, "dead letters discarded through the admin API");
                    Ok(json_response(json!({ "discarded": n })))
                }
                Err(err) => Err(store_failed(err)),
            },
            _ => Err(Failure(
                StatusCode::METHOD_NOT_ALLOWED,
                "see the admin API in README.md".into(),
            )),
        })
    }
}

/// Dead letters listed at most by one call.
const MAX_LISTED_DEAD_LETTERS: usize = 1000;

fn validate_override(
    route: &Route,
    body: &RateRequest,
) -> Result<(f64, NonZeroU32, Duration), Failure> {
    let bad = |message: String| Failure(StatusCode::BAD_REQUEST, message);
    // The config file's own checks: an override is bounded as a configured
    // rate is, so whatever is accepted here the shaper can run.
    let rate = check_rate(body.rate).map_err(|why| bad(format!("rate {why}")))?;
    let burst = match body.burst {
        Some(b) => check_burst(b).map_err(|why| bad(format!("burst {why}")))?,
        None => route
            .state
            .configured()
            .rate
            .map_or(NonZeroU32::MIN, |(_, burst)| burst),
    };
    let ttl = humantime::parse_duration(&body.ttl)
        .map_err(|err| bad(format!("ttl {:?}: {err}", body.ttl)))?;
    if ttl.is_zero() || ttl > MAX_OVERRIDE_TTL {
        return Err(bad(format!(
            "ttl must be above 0 and at most {}",
            humantime::format_duration(MAX_OVERRIDE_TTL)
        )));
    }
    Ok((rate, burst, ttl))
}

/// A route's live state as JSON.
fn route_json(route: &Route) -> Value {
    let state = &route.state;
    let limits = state.shaper.limits();
    let configured = state.configured();
    let override_json = state.rate_override().map(|o| {
        json!({
            "rate": o.rate,
            "burst": o.burst.get(),
            "expires_in_seconds": o.expires_at.saturating_duration_since(Instant::now()).as_secs_f64(),
        })
    });
    json!({
        "name": route.name,
        "upstream": route.upstream.name(),
        "paused": state.shaper.is_paused(),
        "queue_depth": state.shaper.depth(),
        "queue_capacity": limits.capacity,
        "queue_timeout_seconds": limits.timeout.as_secs_f64(),
        "oldest_wait_seconds": state.shaper.oldest_wait().as_secs_f64(),
        "configured_rate": configured.rate.map(|(rate, _)| rate),
        "configured_burst": configured.rate.map(|(_, burst)| burst.get()),
        // `rate_per_target`: the figure (also `configured_rate`) and the
        // healthy targets of the upstream it is multiplied by now.
        "rate_per_target": state.per_target().map(|(rate, _)| rate),
        "healthy_targets": state.per_target().map(|(_, healthy)| healthy),
        "effective_rate": limits.rate.map(|(rate, _)| rate),
        "effective_burst": limits.rate.map(|(_, burst)| burst.get()),
        "rate_override": override_json,
        "inflight": route.upstream.inflight(),
        "max_inflight": route.upstream.max_inflight(),
        "tracked_keys": state.tracked_keys(),
        // A route whose rate is kept in Redis: whether it runs on its
        // `on_redis_error` fallback now. Null for a local rate.
        "global_limit": state.shaper.shared_fallback().map(|on_fallback| json!({
            "store": "redis",
            "on_fallback": on_fallback,
        })),
        // An async route: held, queued, dead letters, oldest age, drain time.
        "async": route.deferred.as_ref().map(|d| d.summary_json()),
    })
}

/// The request body, at most `MAX_BODY_BYTES` (else 413).
async fn read_body(body: Incoming) -> Result<Bytes, Failure> {
    match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(Failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {MAX_BODY_BYTES} bytes"),
        )),
        Err(err) => Err(Failure(
            StatusCode::BAD_REQUEST,
            format!("cannot read the body: {err}"),
        )),
    }
}

fn parse_json<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|err| Failure(StatusCode::BAD_REQUEST, format!("invalid JSON body: {err}")))
}

fn json_response(value: Value) -> Response<Body> {
    local_json(StatusCode::OK, &value)
}

/// The status page. Its content security policy lets it load nothing from
/// anywhere (no script, style, font or image but its own inline ones) and
/// fetch only from this listener.
fn page() -> Response<Body> {
    let mut response = Response::new(text_body(Bytes::from_static(PAGE.as_bytes())));
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

fn metrics(text: String) -> Response<Body> {
    let mut response = Response::new(text_body(text));
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

impl Failure {
    fn into_response(self) -> Response<Body> {
        let Failure(status, message) = self;
        let mut response = json_response(json!({ "error": message }));
        *response.status_mut() = status;
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"sluice admin\""),
            );
        }
        response
    }
}

/// The credentials of an `Authorization: Bearer <token>` header. The scheme
/// is case-insensitive (RFC 9110, 11.1) and followed by one or more spaces.
fn bearer_credentials(value: &[u8]) -> Option<&[u8]> {
    const SCHEME: &[u8] = b"bearer";
    let scheme = value.get(..SCHEME.len())?;
    let rest = value.get(SCHEME.len()..)?;
    if !scheme.eq_ignore_ascii_case(SCHEME) || rest.first() != Some(&b' ') {
        return None;
    }
    let start = rest.iter().position(|&b| b != b' ')?;
    rest.get(start..)
}

/// Whether `offered` is the configured `token`, in a time that depends on
/// neither's content nor on the token's length: both are copied into
/// zero-padded buffers of `MAX_TOKEN_BYTES` (the longest token the config
/// accepts), every byte of which is compared, and the lengths are compared
/// in the same fold. An offered token longer than any configured one can be
/// is refused at once: that tells the caller only about its own input.
fn token_matches(offered: &[u8], token: &[u8]) -> bool {
    let (mut a, mut b) = ([0u8; MAX_TOKEN_BYTES], [0u8; MAX_TOKEN_BYTES]);
    let (Some(a_part), Some(b_part)) = (a.get_mut(..offered.len()), b.get_mut(..token.len()))
    else {
        return false;
    };
    a_part.copy_from_slice(offered);
    b_part.copy_from_slice(token);
    let diff = a
        .iter()
        .zip(&b)
        .fold(offered.len() ^ token.len(), |acc, (x, y)| {
            acc | usize::from(x ^ y)
        });
    std::hint::black_box(diff) == 0
}

/// The admin listener's connection cap: a scraper, a health checker and an
/// operator or two need far fewer; a flood of idle sockets gets 503s.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The most a request head to the admin listener may hold: its limits are
/// fixed, so a proxy tuned for tiny heads still answers a scraper.
const ADMIN_MAX_HEADER_BYTES: usize = 64 * 1024;

/// The connection builder for the admin listener: the proxy's header
/// timeout, hyper's own header limits.
fn admin_connection_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    builder_with_limits(
        server.header_timeout,
        ADMIN_MAX_HEADER_BYTES,
        HYPER_MAX_HEADERS,
    )
}

/// Serves the admin listener on this runtime, under [`ADMIN_MAX_CONNECTIONS`]
/// and the same header and idle timeouts as the proxy.
pub(super) async fn serve_admin(
    listener: Arc<Listener>,
    door: Arc<Door>,
    live: Arc<Live>,
    stopped: watch::Receiver<bool>,
) {
    let status = Arc::new(Status::new());
    tokio::spawn(sample_until_stopped(
        status.clone(),
        live.clone(),
        stopped.clone(),
    ));
    let admin = Arc::new(Admin::new(live.clone(), status));
    let deal = |conns: &mut Vec<(std::net::TcpStream, SocketAddr)>| {
        let server = &live.config.load().server;
        let builder = Arc::new(admin_connection_builder(server));
        let at = Instant::now();
        for (stream, peer) in conns.drain(..) {
            let Some(slot) = door.enter() else {
                door.refuse(stream, false);
                continue;
            };
            let admin = admin.clone();
            let builder = builder.clone();
            let activity = Activity::new(at, server.header_timeout, server.idle_timeout);
            tokio::spawn(async move {
                let _slot = slot;
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(%peer, %err, "cannot serve the admin connection");
                        return;
                    }
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let conn = builder
                    .serve_connection(
                        TokioIo::new(stream),
                        Tracked::new(service, activity.clone()),
                    )
                    .into_owned();
                drive_connection!(
                    conn,
                    ConnectionWatch {
                        activity: &activity,
                        stopped: None,
                        done: false,
                        peer,
                    }
                );
            });
        }
    };
    accept_until_stopped(&listener, stopped, deal).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer t0k", "bearer t0k", "BEARER t0k", "bEaReR   t0k"] {
            assert_eq!(
                bearer_credentials(header.as_bytes()),
                Some(&b"t0k"[..]),
                "{header}"
            );
        }
        for header in [
            "Bearert0k",
            "Basic t0k",
            "Bearer",
            "Bearer ",
            "Bear t0k",
            "",
        ] {
            assert_eq!(bearer_credentials(header.as_bytes()), None, "{header}");
        }
    }

    #[test]
    fn tokens_match_only_when_equal_in_content_and_length() {
        let token = b"s3cret-token";
        assert!(token_matches(token, token));
        assert!(!token_matches(b"s3cret-toke", token));
        assert!(!token_matches(b"s3cret-token-", token));
        // Zero padding does not make a shorter token with trailing NULs match.
        assert!(!token_matches(b"s3cret-token\0", token));
        assert!(!token_matches(b"", token));
        assert!(!token_matches(
            &[b'a'; MAX_TOKEN_BYTES + 1],
            &[b'a'; MAX_TOKEN_BYTES]
        ));
        assert!(token_matches(
            &[b'a'; MAX_TOKEN_BYTES],
            &[b'a'; MAX_TOKEN_BYTES]
        ));
    }
}
