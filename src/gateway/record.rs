//! One request's accounting: its outcome (counted in the metrics) and its
//! access log line (target `sluice::access`).
//!
//! Invariant: every request ends with exactly one [`Outcome`]. A [`Record`]
//! is opened when the request arrives and finished once; if the request
//! future is dropped first (the client left, or reset its HTTP/2 stream),
//! it ends as cancelled if the request never reached a backend connection,
//! else as forwarded with 499. A relayed response's line is written when its
//! body ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::header::HeaderValue;
use http::{Request, Response, StatusCode};
use tokio::time::Instant;

use super::Gateway;
use super::refusal::{body_failure, refusal};
use super::route::Route;
use crate::http::ClientFields;
use crate::http::headers::request_id;
use crate::http::request_body::ClientBodyError;
use crate::http::{Body, STATUS_CLIENT_CLOSED};
use crate::metrics::NO_ROUTE_LABEL;
use crate::outcome::Outcome;
use crate::shaper::{RejectReason, Rejection};

/// The parts of the request the access log line shows.
struct Logged {
    method: http::Method,
    /// X-Request-Id: the client's, or one made here.
    request_id: HeaderValue,
    /// The request URI (a cheap clone: its parts are shared bytes).
    uri: http::Uri,
}

/// One request's accounting: exactly one outcome, written once.
pub(super) struct Record<'g> {
    gateway: &'g Gateway,
    pub(super) route: Option<usize>,
    pub(super) class: usize,
    pub(super) client_ip: std::net::IpAddr,
    /// What only the access log needs, kept only while it is on (boxed: a
    /// waiting request holds its record, and with the log off this is a
    /// word, not ~150 bytes).
    logged: Option<Box<Logged>>,
    pub(super) started: Instant,
    pub(super) queue_wait: Duration,
    pub(super) upstream_time: Option<Duration>,
    /// The request has been handed to a backend connection: if the request
    /// future is dropped before `finish` (the client left), it was forwarded
    /// (499); before that, cancelled.
    pub(super) reached: AtomicBool,
    finished: bool,
}

impl<'g> Record<'g> {
    pub(super) fn open<B>(
        gateway: &'g Gateway,
        (req, fields): (&Request<B>, ClientFields<'_>),
        client: SocketAddr,
    ) -> Record<'g> {
        Record {
            gateway,
            logged: gateway.access_log.then(|| {
                Box::new(Logged {
                    method: req.method().clone(),
                    request_id: request_id(fields),
                    uri: req.uri().clone(),
                })
            }),
            route: None,
            class: 0,
            client_ip: client.ip(),
            started: Instant::now(),
            queue_wait: Duration::ZERO,
            upstream_time: None,
            reached: AtomicBool::new(false),
            finished: false,
        }
    }

    pub(super) fn reject(&mut self, route: &Route, rejection: Rejection) -> Response<Body> {
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
    pub(super) fn rate_limited(&mut self, route: &Route, wait: Duration) -> Response<Body> {
        let response = refusal(
            route.reject.rate_limited_status,
            "too many requests, retry later\n",
            route.reject.retry_after.then_some(wait),
        );
        self.finish(Outcome::RejectedRateLimited, response)
    }

    /// The request's body failed on the client's side before it was sent.
    pub(super) fn body_failed(&mut self, fault: ClientBodyError) -> Response<Body> {
        let (outcome, response) = body_failure(fault, false);
        self.finish(outcome, response)
    }

    pub(super) fn finish(&mut self, outcome: Outcome, response: Response<Body>) -> Response<Body> {
        self.finished = true;
        self.count(outcome);
        if let Some(line) = self.line(outcome, response.status()) {
            line.write(None);
        }
        response
    }

    /// Forwarded, and its response is being relayed: counted now, logged
    /// (if the access log is on) when the response body ends.
    pub(super) fn finish_relayed(&mut self, status: StatusCode) -> Option<AccessLine> {
        self.finished = true;
        self.count(Outcome::Forwarded);
        self.line(Outcome::Forwarded, status)
    }

    /// The request id the access log shows, if it is on (the backend must
    /// be sent the same).
    pub(super) fn request_id(&self) -> Option<&HeaderValue> {
        self.logged.as_ref().map(|logged| &logged.request_id)
    }

    pub(super) fn reached(&self) -> bool {
        self.reached.load(Ordering::Acquire)
    }

    fn count(&self, outcome: Outcome) {
        match self.route {
            Some(i) => self.gateway.routes[i].metrics.outcome(self.class, outcome),
            None => self.gateway.unrouted.outcome(0, outcome),
        }
    }

    /// The access log line, if the access log is on.
    fn line(&self, outcome: Outcome, status: StatusCode) -> Option<AccessLine> {
        let logged = self.logged.as_ref()?;
        Some(AccessLine {
            route: self
                .route
                .map_or(NO_ROUTE_LABEL, |i| self.gateway.routes[i].name.as_str())
                .to_owned(),
            method: logged.method.clone(),
            uri: logged.uri.clone(),
            request_id: logged.request_id.clone(),
            client_ip: self.client_ip,
            class: self.class,
            outcome,
            status,
            queue_wait: self.queue_wait,
            upstream_time: self.upstream_time,
            started: self.started,
        })
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
            if let Some(line) = self.line(outcome, STATUS_CLIENT_CLOSED) {
                line.write(None);
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
