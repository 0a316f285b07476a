//! The delivery task of an async route, and one delivery.
//!
//! Each of a few pacer tasks takes the oldest ready request once the route's shaper grants
//! it leave (a token of the route's rate and one of the upstream's
//! in-flight slots — the same limits a synchronous request meets), and
//! sends it in a task of its own, holding the grant until the backend's
//! answer is read. Meanwhile it wakes retries whose time has come and
//! expires what is past `deliver_within`.
//!
//! Invariant: a request is sent only with a grant, never after its
//! deadline, and by one task at a time.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::book::Entry;
use super::record::{Accepted, Ended};
use super::{Deferred, Event};
use crate::http::headers::{Forwarding, Peer};
use crate::http::request_body::RequestBody;
use crate::shaper::Grant;

/// The header that tells the backend which ticket it is being sent.
pub(crate) const X_SLUICE_TICKET: HeaderName = HeaderName::from_static("x-sluice-ticket");

/// Delivery tasks per route, each waiting on the route's shaper for its
/// next grant.
pub(super) const PACERS: usize = 4;

/// The first retry's back-off; each further one doubles, up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// The delivery task: runs while the route's [`Deferred`] exists.
pub(super) async fn run(deferred: Weak<Deferred>, changed: Arc<Notify>) {
    loop {
        let notified = changed.notified();
        let wake = {
            let Some(d) = deferred.upgrade() else { return };
            d.expire_due().await;
            if d.book.lock().has_ready() {
                let state = d.wiring.load().state.clone();
                drop(d);
                let grant = state.shaper.pace().await;
                let Some(d) = deferred.upgrade() else { return };
                d.expire_due().await;
                let next = d.book.lock().take_next();
                d.took_one();
                if let Some((seq, entry)) = next {
                    tokio::spawn(deliver(d, seq, entry, grant));
                }
                continue;
            }
            d.book.lock().next_wakeup()
        };
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = notified => {}
            () = sleep => {}
        }
    }
}

/// How one attempt ended.
enum Attempt {
    /// The backend answered with a status that completes the ticket.
    Answered { status: StatusCode, kept: Bytes },
    /// A 5xx, connect failure or timeout: worth trying again.
    Failed(String),
    /// The record cannot be read back: parked, with why.
    Unreadable(String),
}

impl Deferred {
    /// Expires what is past its deadline (not in flight): dropped, counted.
    async fn expire_due(&self) {
        let expired: Vec<(u64, Entry, Ended)> = {
            let mut book = self.book.lock();
            let now = Instant::now();
            book.wake_due(now);
            book.forget_old_keys(now);
            // Out of the book in the same call: the route's other pacers
            // expire too, and must not count or end them again.
            book.expire(now)
                .into_iter()
                .map(|(seq, entry)| (seq, entry, Ended::Expired))
                .collect()
        };
        if expired.is_empty() {
            return;
        }
        for _ in &expired {
            self.metrics.count(Event::Expired);
        }
        tracing::info!(route = %self.name, expired = expired.len(), "async route: requests not delivered within deliver_within expired");
        self.record_ended(expired).await;
    }
}

/// Sends one request and records how it ended.
async fn deliver(d: Arc<Deferred>, seq: u64, entry: Entry, grant: Grant) {
    let attempt = attempt(&d, &entry).await;
    drop(grant);
    let now = Instant::now();
    match attempt {
        Attempt::Answered { status, kept } => {
            let ended = Ended::Delivered {
                status: status.as_u16(),
                body: kept,
            };
            d.metrics.count(Event::Delivered);
            d.ended(vec![(seq, entry, ended)]).await;
        }
        Attempt::Failed(why) | Attempt::Unreadable(why) => {
            let attempts = entry.attempts + 1;
            let max = d.wiring.load().config.max_attempts.get();
            let retry_at = if attempts >= max {
                tracing::warn!(route = %d.name, ticket = %entry.ticket, attempts, why, "async route: out of attempts; dead letter");
                d.metrics.count(Event::DeadLettered);
                None
            } else {
                tracing::debug!(route = %d.name, ticket = %entry.ticket, attempts, why, "async route: attempt failed; retrying");
                d.metrics.count(Event::Retried);
                Some(now + backoff(attempts))
            };
            d.failed(seq, &entry, attempts, retry_at).await;
        }
    }
}

/// Jittered exponential back-off before attempt `attempts + 1`: between
/// half and all of `FIRST_BACKOFF x 2^(attempts - 1)`, at most `MAX_BACKOFF`.
fn backoff(attempts: u32) -> Duration {
    let full = FIRST_BACKOFF
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    let mut random = [0u8; 4];
    let fraction = match getrandom::fill(&mut random) {
        Ok(()) => f64::from(u32::from_le_bytes(random)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    };
    full.mul_f64(0.5 + 0.5 * fraction)
}

/// One attempt: the record read back, sent upstream, the answer read.
async fn attempt(d: &Deferred, entry: &Entry) -> Attempt {
    let bytes = match d.read(entry).await {
        Ok(bytes) => bytes,
        Err(err) => return Attempt::Unreadable(err),
    };
    let Some(accepted) = Accepted::decode(&bytes) else {
        return Attempt::Unreadable("record of an unknown format".into());
    };
    let wiring = d.wiring.load_full();
    let (req, forwarding) = match request(accepted) {
        Ok(prepared) => prepared,
        Err(why) => return Attempt::Unreadable(why),
    };
    let reached = AtomicBool::new(false);
    let deadline = Instant::now() + wiring.upstream.config().timeout;
    let (head, body) = req.into_parts();
    match wiring
        .upstream
        .send((&head, body), &forwarding, deadline, &reached)
        .await
    {
        Ok((response, _target)) => {
            let status = response.status();
            if status.is_server_error() {
                return Attempt::Failed(format!("backend answered {status}"));
            }
            let limit = wiring.config.keep_response_bytes;
            let timeout = wiring.upstream.config().timeout;
            let kept = tokio::time::timeout(timeout, keep(response.into_body(), limit))
                .await
                .unwrap_or_default();
            Attempt::Answered { status, kept }
        }
        Err(err) => Attempt::Failed(crate::http::error_chain(&err)),
    }
}

/// The start of a response body, up to `limit` bytes; the rest is read
/// and dropped (so the connection can be reused), up to 1 MiB.
async fn keep<B>(mut body: B, limit: usize) -> Bytes
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    const DRAIN_AT_MOST: usize = 1 << 20;
    let mut kept = BytesMut::new();
    let mut read = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            read += data.len();
            let room = limit.saturating_sub(kept.len());
            kept.extend_from_slice(&data[..data.len().min(room)]);
            if read > DRAIN_AT_MOST {
                break;
            }
        }
    }
    kept.freeze()
}

/// The stored request as the upstream takes it, with the ticket header,
/// and the forwarding rewrite of its original connection.
fn request(accepted: Accepted) -> Result<(Request<RequestBody>, Forwarding), String> {
    let ticket = HeaderValue::from_str(&accepted.ticket.to_string()).map_err(|e| e.to_string())?;
    let mut req = Request::builder()
        .method(accepted.method)
        .uri(accepted.target.as_str())
        .body(if accepted.body.is_empty() {
            RequestBody::Empty
        } else {
            RequestBody::Buffered {
                data: Some(accepted.body),
                trailers: None,
            }
        })
        .map_err(|e| e.to_string())?;
    *req.headers_mut() = accepted.headers;
    // The body is whole: the writer frames it with its length.
    req.headers_mut().remove(header::CONTENT_LENGTH);
    req.headers_mut().remove(header::TRANSFER_ENCODING);
    req.headers_mut().insert(X_SLUICE_TICKET, ticket);
    let forwarding = Forwarding {
        peer: Peer {
            ip: accepted.origin.ip,
            proto: if accepted.origin.https {
                "https"
            } else {
                "http"
            },
            trusted: accepted.origin.trusted,
        },
        request_id: accepted.request_id,
        host: accepted.host,
        upgrade: None,
        fields: None,
    };
    Ok((req, forwarding))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_within_half_to_all_of_its_step_up_to_five_minutes() {
        for (attempts, full) in [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300), (40, 300)] {
            for _ in 0..50 {
                let wait = backoff(attempts);
                let full = Duration::from_secs(full);
                assert!(wait >= full / 2 && wait <= full, "{attempts}: {wait:?}");
            }
        }
    }
}
