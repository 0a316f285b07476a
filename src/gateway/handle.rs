//! The life of one request, phase by phase: screen, route, classify, read
//! the body, admit, forward, relay.
//!
//! [`Gateway::handle_owned`] reads top to bottom in that order. Each phase either
//! hands the request on or finishes its [`Record`] with the answer (as the
//! `Err` of its result), so every request ends with exactly one outcome.
//! Nothing is forwarded after its deadline or after its client left.

use std::net::SocketAddr;
use std::ops::ControlFlow::{self, Break, Continue};
use std::ops::Deref;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body::Body as HttpBody;
use tokio::time::Instant;

use super::Gateway;
use super::classify::{client_ip, peer_is_trusted};
use super::forward::{normalise_target, prepare_upstream_request};
use super::record::Record;
use super::refusal::failure;
use super::relay::Relay;
use super::route::Route;
use super::upgrade::{requested_upgrade, switch_is_allowed, tunnel};
use crate::http::h1::Fields;
use crate::http::headers::{check_host, request_host, strip_hop_by_hop};
use crate::http::path::PathError;
use crate::http::request_body::RequestBody;
use crate::http::upgrade::ClientUpgrade;
use crate::http::{Body, ClientBody, ClientConn, ClientFields, Reply, error_chain, local};
use crate::outcome::Outcome;
use crate::recycle::Recycled;
use crate::shaper::{Admission, Arrival, Grant};
use crate::upstream::{TargetGuard, UpstreamBody, UpstreamError};

/// A phase's result: the request goes on (`Continue`), or here is its
/// answer, already recorded (`Break`).
type Phase<T> = ControlFlow<Response<Body>, T>;

/// The Upgrade a request asked for and the route allows: the value sent on,
/// and the client's side of the connection once it switches.
type Upgrade = Option<(HeaderValue, ClientUpgrade)>;

impl Gateway {
    /// Serves one request from the client of `conn`; the future holds the
    /// gateway (by `Arc`) alive. `fields`: an HTTP/1 client's fields as
    /// they arrived, beside the request (its map then empty); a backend's
    /// come back beside the response the same way (see [`Reply`]).
    pub fn handle_owned(
        self: Arc<Self>,
        req: Request<ClientBody>,
        fields: Option<Fields>,
        conn: ClientConn,
    ) -> impl Future<Output = Reply> + Send + 'static {
        handling(self, (req, fields), conn)
    }

    /// Route: the route for the request's host, path and method; a request
    /// whose body is known to be too large is refused here, before it takes
    /// a place in the queue (one of unknown length is cut off where it goes
    /// over).
    fn route(
        &self,
        req: &Request<ClientBody>,
        host: Option<&HeaderValue>,
        record: &mut Record<'_>,
    ) -> Phase<&Route> {
        let Some(index) = self.router.route(
            host.and_then(|h| h.to_str().ok()),
            req.uri().path(),
            req.method(),
        ) else {
            return Break(
                record.finish(Outcome::NoRoute, local(StatusCode::NOT_FOUND, "no route\n")),
            );
        };
        record.route = Some(index);
        if req.body().size_hint().lower() > self.max_body_bytes {
            return Break(record.finish(
                Outcome::RejectedInvalid,
                local(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
            ));
        }
        Continue(&self.routes[index])
    }

    /// Classify: who is asking, and how important it is; a key over its own
    /// limit is refused 429. Returns the arrival and the time it was made.
    fn classify(
        &self,
        (req, fields): (&Request<ClientBody>, ClientFields<'_>),
        client: SocketAddr,
        route: &Route,
        record: &mut Record<'_>,
    ) -> Phase<(Arrival, Instant)> {
        let client_ip = client_ip(client, fields, &self.trusted_proxies);
        record.client_ip = client_ip;
        let arrival = route.state.classifier().arrival(req, fields, client_ip);
        record.class = arrival.class;
        let now = Instant::now();
        if let Err(wait) = route.check_key(arrival.key, now) {
            return Break(record.rate_limited(route, wait));
        }
        route.check_dry_route_limit(now);
        Continue((arrival, now))
    }

    /// Read a small body in full before taking a place or a slot: a slow
    /// sender then holds its own connection, not the backend's capacity.
    /// Returns the request and how long its client took to send the body.
    async fn read_body(
        &self,
        incoming: ClientBody,
        record: &mut Record<'_>,
    ) -> Phase<(RequestBody, Duration)> {
        let reading = Instant::now();
        match RequestBody::read(incoming, self.body_limits).await {
            Ok(body) => Continue((body, reading.elapsed())),
            Err(err) => Break(record.body_failed(err)),
        }
    }

    /// Forward. An Upgrade to a protocol the route allows (WebSocket by
    /// default) keeps its Upgrade header and becomes a tunnel if the
    /// backend agrees (101); any other goes on as a plain request.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice (rustc #62958)"
    )]
    fn forward(
        &self,
        (mut req, fields): (Request<RequestBody>, Option<Fields>),
        route: &Route,
        grant: Grant,
        (conn, host): (ClientConn, Option<HeaderValue>),
        record: &mut Record<'_>,
    ) -> impl Future<Output = Reply> {
        async move {
            // The client's side of the switch is taken out of the request (an
            // HTTP/2 request has none: it cannot upgrade).
            let client_side = req.extensions_mut().remove::<ClientUpgrade>();
            let view = ClientFields::new(fields.as_ref(), req.headers());
            let upgrade = requested_upgrade(&req, view, &route.upgrades)
                .and_then(|protocol| Some((protocol, client_side?)));
            let peer_trusted = peer_is_trusted(conn.peer.ip(), &self.trusted_proxies);
            let protocol = upgrade.as_ref().map(|(protocol, _)| protocol.clone());
            let request_id = record.request_id().cloned();
            let (upstream_req, forwarding) = prepare_upstream_request(
                (req, fields),
                conn,
                (host, request_id, protocol),
                peer_trusted,
            );
            let (head, body) = upstream_req.into_parts();
            let sent = Instant::now();
            let deadline = record.started + route.state.shaper.limits().timeout;
            let result = route
                .upstream
                .send((&head, body), &forwarding, deadline, &record.reached)
                .await;
            record.upstream_time = Some(sent.elapsed());
            match result {
                Ok((response, target)) => {
                    self.relay(response, (grant, target), route, upgrade, record)
                        .await
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
                    (record.finish(outcome, response), None)
                }
            }
        }
    }

    /// Relay the backend's response (and, after a 101 the route allows, open
    /// the tunnel). The grant and the target are held until the response
    /// body ends.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice (rustc #62958)"
    )]
    fn relay(
        &self,
        mut response: Response<UpstreamBody>,
        (grant, target): (Grant, TargetGuard),
        route: &Route,
        upgrade: Upgrade,
        record: &mut Record<'_>,
    ) -> impl Future<Output = Reply> {
        async move {
            let status = response.status();
            let mut fields = response.body_mut().take_fields();
            let tunnel = if status == StatusCode::SWITCHING_PROTOCOLS {
                // The switch reads the backend's fields: as a map.
                if let Some(fields) = fields.take() {
                    *response.headers_mut() = fields.to_header_map();
                }
                match switch(&mut response, route, upgrade) {
                    Some(protocol) => Some(protocol),
                    None => {
                        let refused = local(StatusCode::BAD_GATEWAY, "upstream error\n");
                        return (record.finish(Outcome::UpstreamError, refused), None);
                    }
                }
            } else {
                None
            };
            // `Trailer` names the fields the body ends with: end to end (RFC
            // 9110 §6.6.2), and hyper's server sends only the trailers it names.
            // (Fields that came as they arrived from an HTTP/1 backend were
            // classified as they were parsed, Trailer kept: see `Fields`. The
            // map then holds nothing yet.)
            let trailer = response.headers_mut().remove(header::TRAILER);
            strip_hop_by_hop(response.headers_mut());
            if let Some(trailer) = trailer {
                response.headers_mut().insert(header::TRAILER, trailer);
            }
            let line = record.finish_relayed(status);
            let relay = Relay {
                grant,
                target,
                line,
                send_timeout: self.send_timeout,
                reads: route.reads.clone(),
            };
            let mut response = relay.response(response).await;
            if let Some(protocol) = tunnel {
                let headers = response.headers_mut();
                headers.insert(header::UPGRADE, protocol);
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            }
            (response, fields)
        }
    }
}

/// Screen: no tunnels to anywhere (sluice is not a forward proxy), a path
/// that has one normal form, and a sane Host.
fn screen(
    (req, fields): (&Request<ClientBody>, ClientFields<'_>),
    target: Result<(), PathError>,
) -> ControlFlow<Response<Body>> {
    if req.method() == Method::CONNECT {
        let mut response = local(StatusCode::METHOD_NOT_ALLOWED, "CONNECT is not supported\n");
        response.headers_mut().insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
        return Break(response);
    }
    if let Err(why) = target {
        return Break(local(StatusCode::BAD_REQUEST, why.body()));
    }
    match check_host(req, fields) {
        Ok(()) => Continue(()),
        Err(why) => Break(local(StatusCode::BAD_REQUEST, why)),
    }
}

/// A request and a view of its fields (beside it from an HTTP/1 client,
/// else in its map), for the phases that read them.
fn viewed<'a>(
    req: &'a Request<ClientBody>,
    fields: &'a Option<Fields>,
) -> (&'a Request<ClientBody>, ClientFields<'a>) {
    (req, ClientFields::new(fields.as_ref(), req.headers()))
}

/// Admit: go now, wait in the queue, or be turned away. The queue timeout
/// runs from `since`.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` holds its arguments twice (rustc #62958)"
)]
fn admit<'a>(
    route: &'a Route,
    arrival: Arrival,
    since: Instant,
    record: &'a mut Record<'_>,
) -> impl Future<Output = Phase<Grant>> + 'a {
    // A block over the arguments, and the admission taken apart before the
    // wait, so that a waiting request holds the ticket's wait and nothing
    // twice.
    async move {
        let ticket = match route.state.shaper.admit_since(arrival, since) {
            Admission::Go(grant) => {
                route.metrics.queue_wait(0.0);
                return Continue(grant);
            }
            Admission::Rejected(rejection) => return Break(record.reject(route, rejection)),
            Admission::Queued(ticket) => ticket,
        };
        let waited = ticket.wait().await;
        let waited_for = record.started.elapsed();
        route.metrics.queue_wait(waited_for.as_secs_f64());
        record.queue_wait = waited_for;
        // A grant that reaches this (busy) worker after the deadline is
        // refused by the ticket: never forwarded late.
        match waited {
            Ok(grant) => Continue(grant),
            Err(rejection) => Break(record.reject(route, rejection)),
        }
    }
}

/// A backend's 101: the protocol to answer the client with, if it is one
/// the route allows and the client asked for (then the tunnel is spawned);
/// `None` means the switch is refused (502).
fn switch(
    response: &mut Response<UpstreamBody>,
    route: &Route,
    upgrade: Upgrade,
) -> Option<HeaderValue> {
    let agreed = response
        .headers()
        .get(header::UPGRADE)
        .filter(|p| {
            upgrade
                .as_ref()
                .is_some_and(|(offered, _)| switch_is_allowed(p, offered, &route.upgrades))
        })
        .cloned();
    let (Some(protocol), Some((_, client_side))) = (agreed, upgrade) else {
        tracing::warn!(
            route = %route.name,
            upstream = %route.upstream.name(),
            "backend switched to a protocol the client did not ask for or the route does not allow; 502"
        );
        return None;
    };
    let upstream_side = crate::upstream::upgrade(response);
    tokio::spawn(tunnel(
        client_side.upgraded(),
        upstream_side,
        route.name.clone(),
    ));
    Some(protocol)
}

/// The phases of [`Gateway::handle_owned`], in order. A block over its captured
/// arguments, used in place: an `async fn` would keep its arguments twice
/// (as captured and as moved into its body; rustc #62958), and this future
/// is what a request waiting in the queue holds.
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` holds its arguments twice (rustc #62958)"
)]
fn handling<G>(
    gateway: G,
    (mut req, fields): (Request<ClientBody>, Option<Fields>),
    conn: ClientConn,
) -> impl Future<Output = Reply> + Send
where
    G: Deref<Target = Gateway> + Send + Sync,
{
    async move {
        let this: &Gateway = &gateway;
        // Answered here (refused, or an async route's or a ticket's answer):
        // no backend's fields come with it. Only the forward phase returns.
        let answered = 'answered: {
            // One spelling of the path before anything reads it: routing, the
            // key, the access log and the backend all see the same path.
            let target = normalise_target(&mut req);
            // (The fields' view is made where it is read, not kept in a local:
            // a waiting request's future holds no room for it.)
            let client = conn.peer;
            let mut record = Record::open(this, viewed(&req, &fields), client);
            if let Break(response) = screen(viewed(&req, &fields), target) {
                break 'answered record.finish(Outcome::RejectedInvalid, response);
            }
            if this.is_ticket_lookup(req.uri().path()) {
                // Boxed: a ticket lookup may wait on Redis; the waiting request
                // future stays small without it.
                break 'answered Box::pin(this.ticket(&req, &mut record)).await;
            }
            let host = request_host(&req, viewed(&req, &fields).1);
            let route = match this.route(&req, host.as_ref(), &mut record) {
                Continue(route) => route,
                Break(response) => break 'answered response,
            };
            let (arrival, now) =
                match this.classify(viewed(&req, &fields), client, route, &mut record) {
                    Continue(classified) => classified,
                    Break(response) => break 'answered response,
                };
            if route.asynchronous {
                let accepted = this.accept((req, fields), route, (conn, host), &mut record);
                break 'answered Box::pin(accepted).await;
            }
            // A request without a body (most) needs no body phase; the phase is
            // boxed for the others, so a request waiting in the queue holds no
            // room for reading a body. The head stays where it was captured
            // (a copy would be held for the whole wait); only the body moves.
            // (In a block of its own: the client's body is gone before the
            // wait, and so is its slot in this future.)
            let (body, sending) = {
                let incoming = std::mem::replace(req.body_mut(), ClientBody::Empty);
                if incoming.is_end_stream() {
                    drop(incoming);
                    (RequestBody::Empty, Duration::ZERO)
                } else {
                    match Box::pin(this.read_body(incoming, &mut record)).await {
                        Continue(read) => read,
                        Break(response) => break 'answered response,
                    }
                }
            };
            // A connection's first request has waited since its accept; the time
            // its client took to send the body is the client's, not a wait.
            let since = conn.waiting_since.unwrap_or(now) + sending;
            let grant = match admit(route, arrival, since, &mut record).await {
                Continue(grant) => grant,
                Break(response) => break 'answered response,
            };
            let req = req.map(|_| body);
            // Boxed: a request waiting in the queue holds only the phases so
            // far, not room for forwarding and relaying (the larger part); in
            // a block this worker reuses (it is over glibc's per-thread cache).
            let forward = this.forward((req, fields), route, grant, (conn, host), &mut record);
            return Recycled::new(forward).await;
        };
        (answered, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size_of_output<A, R>(_f: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// A request waiting in a queue holds this future (boxed by the
    /// connection); the body and forwarding phases are boxed apart, so it
    /// stays small (a few hundred bytes in a release build).
    #[test]
    fn a_waiting_request_is_not_sized_by_the_body_or_forwarding_phases() {
        let handle = size_of_output(
            |(g, r, c): (&'static Gateway, Request<ClientBody>, ClientConn)| {
                handling(g, (r, None), c)
            },
        );
        let read = size_of_output(
            |(g, b, rec): (&'static Gateway, ClientBody, &'static mut Record<'static>)| {
                g.read_body(b, rec)
            },
        );
        type Forwarded = (Request<RequestBody>, Option<Fields>);
        type Whom = (ClientConn, Option<HeaderValue>);
        let forward = size_of_output(
            |(g, r, route, grant, c, rec): (
                &'static Gateway,
                Forwarded,
                &'static Route,
                Grant,
                Whom,
                &'static mut Record<'static>,
            )| g.forward(r, route, grant, c, rec),
        );
        eprintln!("handle {handle} B, body phase {read} B, forward phase {forward} B (boxed)");
        // Boxed per request: at most 1,024 bytes keeps it in glibc's
        // per-thread cache (chunks up to 1,032 bytes), the fast path, and
        // is what each waiting client holds.
        assert!(handle <= 1024, "{handle}");
    }
}
