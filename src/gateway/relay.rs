//! Relaying a backend's response to the client, and letting go of the
//! backend when the client will not take it.
//!
//! A response holds its in-flight slot and its upstream connection until the
//! backend's body has been read to its end. A client that stops reading
//! must not hold them for as long as it likes, so, as NGINX's proxy buffers
//! and `send_timeout` do:
//!
//! - a body of at most [`SMALL_RESPONSE_BYTES`] (known from its length) is
//!   read in full first; the slot and the connection (back to the pool) are
//!   free before the client has read a byte, and no task is spawned;
//! - a larger or unknown-length body is pumped by a task through a
//!   one-piece channel, in pieces of at most 16 KiB: the client must make
//!   room for each within `send_timeout`.
//!   When one is not, the response is abandoned: the upstream connection is
//!   closed (never pooled mid-body), the slot freed, the client's response
//!   ends with an error (hyper closes its connection or resets its stream),
//!   and the access log says 499. The slot is freed as soon as the
//!   backend's body ends, whatever the client still has to read.
//!
//! The backend, for its part, must not hold them by stalling mid-body
//! either: each wait for its next piece of body, on either path, is bounded
//! by the upstream's `read_timeout` (NGINX's `proxy_read_timeout`: between
//! two successive reads, so a slow but steady body is never cut). Past it
//! the response is abandoned as if the backend had broken off there (the
//! connection closed, the slot freed, the client's response ending with an
//! error) and the backend is blamed: an upstream and target timeout error,
//! and a warning.
//!
//! The request's outcome (forwarded) was counted when the head arrived; the
//! access log line is written when the body ends, with 499 if the client
//! left or stalled first.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use tokio::sync::{OwnedSemaphorePermit, mpsc};

use super::record::AccessLine;
use crate::http::{Body, BoxError, STATUS_CLIENT_CLOSED};
use crate::shaper::Grant;
use crate::upstream::{TargetGuard, Upstream, UpstreamBody};

/// Responses up to this size are read whole before relaying. hyper's write
/// buffer (at least 8 KiB) and the kernel's send buffer (16 KiB by default)
/// take all of it at once, so even a client that reads nothing cannot stall
/// such a response while it holds a slot; typical API answers fit.
pub const SMALL_RESPONSE_BYTES: u64 = 16 * 1024;

/// What a relayed response holds until its body is done.
pub(crate) struct Relay {
    pub grant: Grant,
    pub target: TargetGuard,
    /// The access log line, if the access log is on.
    pub line: Option<AccessLine>,
    /// `server.send_timeout`.
    pub send_timeout: Duration,
    /// How long the backend may pause mid-body.
    pub reads: BodyReads,
}

/// The backend's side of a relay: how long it may pause between two reads
/// of its body (its upstream's `read_timeout`), and the route a warning
/// names when it pauses longer. Made once per route and config generation
/// (the name shared, not copied per request).
#[derive(Debug, Clone)]
pub(crate) struct BodyReads {
    pub timeout: Duration,
    pub route: Arc<str>,
}

/// Why a response broke off on the backend's side: it sent no more of its
/// body within `read_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no more of its response body within read_timeout ({0:?})")]
pub struct ReadTimedOut(Duration);

impl BodyReads {
    /// For a route named `route` on `upstream`.
    pub(crate) fn new(route: &str, upstream: &Upstream) -> BodyReads {
        BodyReads {
            timeout: upstream.config().read_timeout,
            route: Arc::from(route),
        }
    }

    /// The backend's next body frame, waited for at most `timeout`. A longer
    /// pause is the backend's failure: counted as a timeout against the
    /// upstream and the target, logged, and the body ends with an error.
    async fn next(
        &self,
        body: &mut UpstreamBody,
        target: &TargetGuard,
    ) -> Option<Result<Frame<Bytes>, BoxError>> {
        // A frame already read needs no timer (a small body often came
        // with its head).
        let ready = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *body).poll_frame(cx)));
        if let Poll::Ready(frame) = ready.await {
            return frame;
        }
        match tokio::time::timeout(self.timeout, body.frame()).await {
            Ok(frame) => frame,
            Err(_) => {
                target.body_timed_out();
                tracing::warn!(
                    route = %self.route,
                    upstream = %target.upstream_name(),
                    target = %target.addr(),
                    read_timeout = ?self.timeout,
                    "upstream stalled mid-body for read_timeout; response cut off, upstream connection closed (HTTP/2: stream reset)"
                );
                Some(Err(Box::new(ReadTimedOut(self.timeout))))
            }
        }
    }
}

impl Relay {
    /// The backend's response as the client will get it. Hop-by-hop headers
    /// must already be gone.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice (rustc #62958)"
    )]
    pub(crate) fn response(
        self,
        response: Response<UpstreamBody>,
    ) -> impl Future<Output = Response<Body>> {
        async move {
            let (parts, body) = response.into_parts();
            let mut log = LogOnEnd(self.line);
            let mut target = self.target;
            if body.is_end_stream() {
                target.finish();
                log.done();
                let body = Empty::new().map_err(|never| match never {}).boxed();
                return Response::from_parts(parts, body);
            }
            if body
                .size_hint()
                .exact()
                .is_some_and(|len| len <= SMALL_RESPONSE_BYTES)
            {
                let body = match read_whole(body, &self.reads, &target).await {
                    Ok((data, trailers)) => {
                        target.finish();
                        Whole {
                            data: Some(data),
                            trailers,
                            log,
                        }
                        .boxed()
                    }
                    // The backend broke off mid-body: the client's response
                    // breaks off too (not a complete message, whatever it says).
                    Err(err) => {
                        log.done();
                        Broken {
                            error: Some(err),
                            head_sent: false,
                        }
                        .boxed()
                    }
                };
                // Slot and connection go now (dropping them here), before the
                // client has read anything.
                drop(target);
                drop(self.grant);
                return Response::from_parts(parts, body);
            }
            let hint = body.size_hint();
            let (tx, rx) = mpsc::channel(1);
            tokio::spawn(pump(
                body,
                tx,
                Held {
                    _permit: self.grant.into_permit(),
                    target,
                },
                log,
                (self.send_timeout, self.reads),
            ));
            Response::from_parts(
                parts,
                Relayed {
                    rx,
                    hint,
                    done: false,
                }
                .boxed(),
            )
        }
    }
}

/// The slot and the target, held while the backend's body is being read.
struct Held {
    _permit: OwnedSemaphorePermit,
    target: TargetGuard,
}

/// The access log line of one response, written once: by [`LogOnEnd::done`]
/// with the backend's status, or when dropped first with 499 (the client
/// left or stopped reading).
struct LogOnEnd(Option<AccessLine>);

impl LogOnEnd {
    fn done(&mut self) {
        if let Some(line) = self.0.take() {
            line.write(None);
        }
    }
}

impl Drop for LogOnEnd {
    fn drop(&mut self) {
        if let Some(line) = self.0.take() {
            line.write(Some(STATUS_CLIENT_CLOSED));
        }
    }
}

/// Reads a small body to its end, each wait for the backend within
/// `reads.timeout`.
async fn read_whole(
    mut body: UpstreamBody,
    reads: &BodyReads,
    target: &TargetGuard,
) -> Result<(Bytes, Option<HeaderMap>), BoxError> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut trailers = None;
    while let Some(frame) = reads.next(&mut body, target).await {
        match frame?.into_data() {
            Ok(data) => match (&first, &mut joined) {
                (None, _) => first = Some(data),
                (Some(head), None) => {
                    let mut all = BytesMut::with_capacity(head.len() + data.len());
                    all.extend_from_slice(head);
                    all.extend_from_slice(&data);
                    joined = Some(all);
                }
                (Some(_), Some(all)) => all.extend_from_slice(&data),
            },
            Err(frame) => trailers = frame.into_trailers().ok(),
        }
        if body.is_end_stream() {
            break;
        }
    }
    let data = joined.map(BytesMut::freeze).or(first).unwrap_or_default();
    Ok((data, trailers))
}

/// One piece of a relayed body.
enum Piece {
    Frame(Frame<Bytes>),
    /// The backend's last frame: the body ends with it. (A server that knows
    /// the length stops polling after it, so this must say so.)
    Last(Frame<Bytes>),
    /// The backend's body ended after the last frame handed over.
    End,
    /// The backend's body broke off.
    Failed(BoxError),
}

/// Reads the backend's body, each wait within `reads.timeout`, and hands it
/// over in pieces of at most [`PIECE_BYTES`], each within `send_timeout`;
/// gives up (closing the upstream connection, freeing the slot) when the
/// client does not make room for one in time, or has gone. A backend that
/// stalls is handed over as a body that broke off.
async fn pump(
    mut body: UpstreamBody,
    tx: mpsc::Sender<Piece>,
    held: Held,
    mut log: LogOnEnd,
    (send_timeout, reads): (Duration, BodyReads),
) {
    let mut held = Some(held);
    loop {
        // (Held until the body's last frame, after which this returns.)
        let Some(current) = held.as_ref() else { return };
        let frame = tokio::select! {
            frame = reads.next(&mut body, &current.target) => frame,
            // The client left (its response body was dropped): the slot,
            // the connection and the log line (499) go with this task.
            () = tx.closed() => return,
        };
        let (mut frame, last) = match frame {
            Some(Ok(frame)) => {
                let last = body.is_end_stream();
                (Some(frame), last)
            }
            Some(Err(err)) => {
                if hand_over(&tx, Piece::Failed(err), send_timeout).await {
                    log.done();
                }
                return;
            }
            None => (None, true),
        };
        if last && let Some(mut held) = held.take() {
            // The backend is done: its connection goes back to the pool and
            // the slot is free, whatever the client has left to read.
            held.target.finish();
        }
        // A large frame goes in pieces: the client must make room for one
        // piece per `send_timeout`, so a slow reader that keeps reading is
        // not cut off.
        loop {
            let piece = match frame.take() {
                None => Piece::End,
                Some(mut whole) => {
                    let rest = match whole.data_mut() {
                        Some(data) if data.len() > PIECE_BYTES => {
                            Some(Frame::data(data.split_off(PIECE_BYTES)))
                        }
                        _ => None,
                    };
                    match rest {
                        Some(rest) => {
                            frame = Some(rest);
                            Piece::Frame(whole)
                        }
                        None if last => Piece::Last(whole),
                        None => Piece::Frame(whole),
                    }
                }
            };
            let more = matches!(piece, Piece::Frame(_));
            if !hand_over(&tx, piece, send_timeout).await {
                return;
            }
            if !more || frame.is_none() {
                break;
            }
        }
        if last {
            log.done();
            return;
        }
    }
}

/// Hands one piece to the client's side within `send_timeout`; false if the
/// client left or did not make room for it in time (the response is then
/// abandoned).
async fn hand_over(tx: &mpsc::Sender<Piece>, piece: Piece, send_timeout: Duration) -> bool {
    match tokio::time::timeout(send_timeout, tx.send(piece)).await {
        Ok(Ok(())) => true,
        // The client left.
        Ok(Err(_)) => false,
        Err(_) => {
            tracing::debug!(
                ?send_timeout,
                "client did not read the response; abandoned, upstream connection closed"
            );
            false
        }
    }
}

/// The most handed to the client at once by the pump.
const PIECE_BYTES: usize = 16 * 1024;

/// The client's side of a pumped body.
struct Relayed {
    rx: mpsc::Receiver<Piece>,
    hint: SizeHint,
    done: bool,
}

/// Why a relayed response ended early on the client's side.
#[derive(Debug, thiserror::Error)]
#[error("response abandoned: the client did not read it within send_timeout")]
pub struct Abandoned;

impl HttpBody for Relayed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Piece::Frame(frame))) => Poll::Ready(Some(Ok(frame))),
            Poll::Ready(Some(Piece::Last(frame))) => {
                self.done = true;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Piece::End)) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Piece::Failed(err))) => {
                self.done = true;
                Poll::Ready(Some(Err(err)))
            }
            // The pump gave up without an end: never a clean (truncated) end.
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(Abandoned))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// A small body read whole; its log line is written once it is handed over.
struct Whole {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
    log: LogOnEnd,
}

impl HttpBody for Whole {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = match self.data.take() {
            Some(data) => Some(Frame::data(data)),
            None => self.trailers.take().map(Frame::trailers),
        };
        if self.data.is_none() && self.trailers.is_none() {
            self.log.done();
        }
        Poll::Ready(frame.map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

/// The body of a response the backend broke off: it fails, but only after
/// one pending poll, in which hyper writes out the head — the client sees
/// the backend's status and then the broken body, as when streaming.
struct Broken {
    error: Option<BoxError>,
    head_sent: bool,
}

impl HttpBody for Broken {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if !self.head_sent {
            self.head_sent = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        Poll::Ready(self.error.take().map(Err))
    }
}
