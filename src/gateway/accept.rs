//! The accept phase of an async route, and ticket lookups.
//!
//! After the usual checks (route, method, key limit), the request's body is
//! read whole (up to `max_body_bytes`), the request is made durable in the
//! route's journal, and only then answered `202 Accepted` with a ticket:
//! `Location: /_sluice/tickets/ID` and `{"ticket": ..., "status_url": ...}`.
//! A request that cannot be made durable is answered `503` + `Retry-After`.
//! `GET` on a ticket URL answers its state (`404` for an unknown ticket).
//!
//! Invariant: `202` is never sent for a request the journal has not synced.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};

use super::Gateway;
use super::classify::{canonical_ip, peer_is_trusted};
use super::deferred::record::{Accepted, Origin, TicketId};
use super::deferred::{Refused, TICKET_PATH};
use super::record::Record;
use super::refusal::refusal;
use super::route::Route;
use crate::http::h1::Fields;
use crate::http::headers::{request_id, strip_hop_by_hop};
use crate::http::request_body::{BodyLimits, ClientBodyError, RequestBody};
use crate::http::{Body, ClientBody, local_json};
use crate::http::{ClientConn, ClientFields};
use crate::outcome::Outcome;

/// The header a client repeats a submission with to get its first ticket.
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
/// The longest idempotency key kept.
const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;
/// Retry-After when the journal cannot write (disk full, I/O error).
const STORE_RETRY_AFTER: Duration = Duration::from_secs(5);

impl Gateway {
    /// Whether `path` is a ticket URL and some route is async.
    pub(super) fn is_ticket_lookup(&self, path: &str) -> bool {
        path.starts_with(TICKET_PATH) && self.routes.iter().any(|r| r.asynchronous)
    }

    /// Answers a ticket's state.
    pub(super) async fn ticket(
        &self,
        req: &Request<ClientBody>,
        record: &mut Record<'_>,
    ) -> Response<Body> {
        if !matches!(*req.method(), Method::GET | Method::HEAD) {
            let mut response = json(
                StatusCode::METHOD_NOT_ALLOWED,
                &serde_json::json!({"error": "GET only"}),
            );
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return record.finish(Outcome::TicketStatus, response);
        }
        let id = &req.uri().path()[TICKET_PATH.len()..];
        let status = match TicketId::parse(id) {
            Some(ticket) => self.ticket_status(ticket).await,
            None => None,
        };
        let response = match status {
            Some(status) => json(StatusCode::OK, &status),
            None => json(
                StatusCode::NOT_FOUND,
                &serde_json::json!({"error": "unknown ticket"}),
            ),
        };
        record.finish(Outcome::TicketStatus, response)
    }

    /// Accept: the request made durable, then `202` and its ticket.
    pub(super) async fn accept(
        &self,
        (req, fields): (Request<ClientBody>, Option<Fields>),
        route: &Route,
        (conn, host): (ClientConn, Option<HeaderValue>),
        record: &mut Record<'_>,
    ) -> Response<Body> {
        let client = conn.peer;
        let Some(deferred) = &route.deferred else {
            return record.finish(Outcome::RejectedQueueFull, store_failed());
        };
        let (mut parts, incoming) = req.into_parts();
        // The whole body is kept: read it all, up to `max_body_bytes`.
        let limits = BodyLimits {
            buffer: usize::try_from(self.max_body_bytes).unwrap_or(usize::MAX),
            ..self.body_limits
        };
        let body = match RequestBody::read(incoming, limits).await {
            Ok(RequestBody::Empty) => Bytes::new(),
            Ok(RequestBody::Buffered { data, .. }) => data.unwrap_or_default(),
            Ok(RequestBody::Streaming(_)) => return record.body_failed(ClientBodyError::TooLarge),
            Err(fault) => return record.body_failed(fault),
        };
        let idempotency_key = ClientFields::new(fields.as_ref(), &parts.headers)
            .named(&IDEMPOTENCY_KEY)
            .next()
            .map(<[u8]>::to_vec);
        if idempotency_key
            .as_ref()
            .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_BYTES)
        {
            let response = crate::http::local(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key must be 1 to 256 bytes\n",
            );
            return record.finish(Outcome::RejectedInvalid, response);
        }
        let request_id = record
            .request_id()
            .cloned()
            .unwrap_or_else(|| request_id(ClientFields::new(fields.as_ref(), &parts.headers)));
        if let Some(fields) = fields {
            // The record keeps a map: an HTTP/1 client's fields go into one.
            parts.headers = fields.kept_map();
        }
        strip_hop_by_hop(&mut parts.headers);
        let Some(ticket) = TicketId::new() else {
            let response = refusal(
                StatusCode::SERVICE_UNAVAILABLE,
                "no randomness for a ticket\n",
                Some(STORE_RETRY_AFTER),
            );
            return record.finish(Outcome::RejectedQueueFull, response);
        };
        let accepted = Accepted {
            ticket,
            accepted_at_ms: super::deferred::unix_ms(),
            target: parts
                .uri
                .path_and_query()
                .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
            method: parts.method,
            host,
            request_id,
            origin: Origin {
                ip: canonical_ip(client.ip()),
                https: conn.secure,
                trusted: peer_is_trusted(client.ip(), &self.trusted_proxies),
            },
            idempotency_key,
            headers: parts.headers,
            body,
        };
        let accepted = deferred.accept(accepted).await;
        answer(accepted, route, record)
    }
}

/// The answer to an accept: `202` and the ticket, or `503` + Retry-After.
fn answer(
    accepted: Result<TicketId, Refused>,
    route: &Route,
    record: &mut Record<'_>,
) -> Response<Body> {
    let (outcome, response) = match accepted {
        Ok(ticket) => (Outcome::Accepted, accepted_response(ticket)),
        Err(Refused::Full(wait)) => (
            Outcome::RejectedQueueFull,
            refusal(
                route.reject.status,
                "async queue full, retry later\n",
                route.reject.retry_after.then_some(wait),
            ),
        ),
        Err(Refused::Store(_)) => (Outcome::RejectedQueueFull, store_failed()),
    };
    record.finish(outcome, response)
}

/// 503: the request could not be made durable.
fn store_failed() -> Response<Body> {
    refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        "cannot store the request, retry later\n",
        Some(STORE_RETRY_AFTER),
    )
}

/// `202 Accepted`, the ticket URL in `Location` and in the JSON body.
fn accepted_response(ticket: TicketId) -> Response<Body> {
    let url = format!("{TICKET_PATH}{ticket}");
    let mut response = json(
        StatusCode::ACCEPTED,
        &serde_json::json!({ "ticket": ticket.to_string(), "status_url": url }),
    );
    if let Ok(location) = HeaderValue::from_str(&url) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

/// A JSON answer about a ticket, never cached (its state changes).
fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut response = local_json(status, value);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
