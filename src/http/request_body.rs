//! The client's request body on its way to a backend, and how it can fail.
//!
//! A body up to `server.request_buffer_bytes` is read in full before the
//! request is admitted ([`RequestBody::read`]), as NGINX's
//! `proxy_request_buffering` and HAProxy's `http-buffer-request` do: a
//! client sending slowly then holds only its own connection, never one of
//! the backend's in-flight slots. A larger body streams. Either way every
//! wait for the client's next bytes is bounded by `client_body_timeout`, and
//! the whole body by `max_body_bytes`.
//!
//! Invariant: every failure that is the client's (too large, malformed, too
//! slow, gone) comes out as a [`ClientBodyError`] — as the body's error, and
//! in the [`BodyWatch`] a streaming body shares with the sender — so the
//! upstream can tell it from a failure of the target and never blames the
//! target for it.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::time::{Instant, Sleep};

use super::client_body::ClientBody;

/// How a client's request body failed. Each is the client's outcome, never
/// the target's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientBodyError {
    /// Over `max_body_bytes`: 413.
    #[error("request body larger than max_body_bytes")]
    TooLarge,
    /// Not valid framing (e.g. a bad chunk size line): 400.
    #[error("malformed request body")]
    Malformed,
    /// No body bytes for `client_body_timeout`, or still not all sent when
    /// the upstream's timeout passed: 408.
    #[error("request body not received in time")]
    Timeout,
    /// The client closed or reset the connection mid-body.
    #[error("client closed the connection mid-body")]
    Gone,
}

/// The limits a request body is read under.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Read in full before admission up to this size.
    pub buffer: usize,
    /// `max_body_bytes`.
    pub max: u64,
    /// `client_body_timeout`: the longest wait for the next bytes.
    pub idle: Duration,
}

/// A request body ready to send: nothing, read in full, or streaming.
pub enum RequestBody {
    Empty,
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
    Streaming(Box<Streaming>),
}

/// A body that streams from the client as the backend takes it.
pub struct Streaming {
    /// What was read while trying to buffer the body, sent first.
    prefix: Option<Bytes>,
    incoming: ClientBody,
    /// Bytes taken from the client so far (prefix included).
    read: u64,
    limits: BodyLimits,
    /// Armed while waiting for the client; `None` between reads, so time the
    /// backend takes to accept what was sent never counts against the client.
    idle: Option<Pin<Box<Sleep>>>,
    watch: BodyWatch,
}

/// Shared between a streaming body and whoever sends it: whose turn it is
/// (the client's to send more, or the backend's to take what was sent),
/// whether the client has sent it all, or how it failed.
#[derive(Clone, Debug, Default)]
pub struct BodyWatch(Arc<AtomicU8>);

/// All sent so far has been handed on; the sender has not asked for more.
const BACKEND_TURN: u8 = 0;
/// The sender asked for more and the client has not sent it yet.
const CLIENT_TURN: u8 = 6;
const ENDED: u8 = 1;

impl BodyWatch {
    /// The client's failure, if its body failed.
    pub fn failure(&self) -> Option<ClientBodyError> {
        match self.0.load(Ordering::Acquire) {
            2 => Some(ClientBodyError::TooLarge),
            3 => Some(ClientBodyError::Malformed),
            4 => Some(ClientBodyError::Timeout),
            5 => Some(ClientBodyError::Gone),
            _ => None,
        }
    }

    /// Whether the body is waiting for the client to send more: a timeout
    /// now is the client's delay, not the backend's.
    pub fn waiting_for_client(&self) -> bool {
        self.0.load(Ordering::Acquire) == CLIENT_TURN
    }

    /// Moves on from a streaming state; the first end or failure stands.
    fn set(&self, state: u8) {
        let mut current = self.0.load(Ordering::Acquire);
        while current == BACKEND_TURN || current == CLIENT_TURN {
            match self
                .0
                .compare_exchange(current, state, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(now) => current = now,
            }
        }
    }

    fn fail(&self, err: ClientBodyError) -> ClientBodyError {
        self.set(match err {
            ClientBodyError::TooLarge => 2,
            ClientBodyError::Malformed => 3,
            ClientBodyError::Timeout => 4,
            ClientBodyError::Gone => 5,
        });
        err
    }
}

impl RequestBody {
    /// Takes the client's body: read in full if it ends within
    /// `limits.buffer` bytes, else the start of it read and the rest left to
    /// stream. Fails as the client's failure (slow, gone, malformed, too large).
    pub async fn read(incoming: ClientBody, limits: BodyLimits) -> Result<Self, ClientBodyError> {
        if incoming.is_end_stream() {
            return Ok(RequestBody::Empty);
        }
        let declared = incoming.size_hint().exact();
        if declared.is_some_and(|len| len > limits.buffer as u64) || limits.buffer == 0 {
            return Ok(RequestBody::streaming(incoming, None, limits));
        }
        let mut incoming = incoming;
        let mut first: Option<Bytes> = None;
        let mut more: Option<BytesMut> = None;
        let mut read: u64 = 0;
        let mut trailers = None;
        loop {
            let frame = match tokio::time::timeout(limits.idle, incoming.frame()).await {
                Err(_) => return Err(ClientBodyError::Timeout),
                Ok(None) => break,
                Ok(Some(Err(err))) => return Err(err),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame.into_data() {
                Ok(data) => {
                    read += data.len() as u64;
                    if read > limits.max {
                        return Err(ClientBodyError::TooLarge);
                    }
                    // One piece (the common case) is kept as it came.
                    match (&mut first, &mut more) {
                        (None, _) => first = Some(data),
                        (Some(head), None) => {
                            let mut joined = BytesMut::with_capacity(head.len() + data.len());
                            joined.extend_from_slice(head);
                            joined.extend_from_slice(&data);
                            more = Some(joined);
                        }
                        (Some(_), Some(joined)) => joined.extend_from_slice(&data),
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        trailers = Some(t);
                    }
                }
            }
            if trailers.is_some() || incoming.is_end_stream() {
                break;
            }
            // Larger than is read before admission: the rest streams.
            if read > limits.buffer as u64 {
                let prefix = more.map(BytesMut::freeze).or(first);
                return Ok(RequestBody::streaming(incoming, prefix, limits));
            }
        }
        let data = more.map(BytesMut::freeze).or(first);
        Ok(RequestBody::Buffered { data, trailers })
    }

    fn streaming(incoming: ClientBody, prefix: Option<Bytes>, limits: BodyLimits) -> RequestBody {
        RequestBody::Streaming(Box::new(Streaming {
            read: prefix.as_ref().map_or(0, |p| p.len() as u64),
            prefix,
            incoming,
            limits,
            idle: None,
            watch: BodyWatch::default(),
        }))
    }

    /// The watch of a streaming body (a body already read needs none).
    pub fn watch(&self) -> Option<BodyWatch> {
        match self {
            RequestBody::Streaming(s) => Some(s.watch.clone()),
            _ => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Buffered { data, trailers } => {
                if let Some(data) = data.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))))
            }
            RequestBody::Streaming(s) => s.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
            RequestBody::Streaming(s) => s.prefix.is_none() && s.incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            RequestBody::Streaming(s) => {
                let prefix = s.prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = s.incoming.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(prefix));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(prefix));
                }
                hint
            }
        }
    }
}

impl Streaming {
    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match Pin::new(&mut self.incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                self.idle = None;
                self.watch.set(BACKEND_TURN);
                if let Some(data) = frame.data_ref() {
                    self.read += data.len() as u64;
                    if self.read > self.limits.max {
                        return Poll::Ready(Some(Err(self.watch.fail(ClientBodyError::TooLarge))));
                    }
                }
                if self.incoming.is_end_stream() {
                    self.watch.set(ENDED);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                self.idle = None;
                self.watch.set(ENDED);
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(failure))) => {
                self.idle = None;
                Poll::Ready(Some(Err(self.watch.fail(failure))))
            }
            Poll::Pending => {
                self.watch.set(CLIENT_TURN);
                let idle = self.limits.idle;
                let timer = self.idle.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + idle))
                });
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        self.idle = None;
                        Poll::Ready(Some(Err(self.watch.fail(ClientBodyError::Timeout))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// The client's body failure behind an error from sending upstream, if the
/// error was the client's: found in the error's causes (hyper reports a
/// failed request body as a user body error caused by it) or, failing that
/// (an HTTP/2 upstream reports only a reset), in the body's watch.
pub fn client_fault(
    err: &(dyn std::error::Error + 'static),
    watch: Option<&BodyWatch>,
) -> Option<ClientBodyError> {
    super::error::causes(err)
        .find_map(|e| e.downcast_ref::<ClientBodyError>().copied())
        .or_else(|| watch.and_then(BodyWatch::failure))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error wrapping another, as hyper's client wraps a body's error.
    #[derive(Debug, thiserror::Error)]
    #[error("user body failed")]
    struct Wrapped(#[source] ClientBodyError);

    #[test]
    fn a_client_failure_is_found_among_the_causes() {
        let wrapped = Wrapped(ClientBodyError::Malformed);
        assert_eq!(
            client_fault(&wrapped, None),
            Some(ClientBodyError::Malformed)
        );
        let unrelated = std::io::Error::other("connection reset by backend");
        assert_eq!(client_fault(&unrelated, None), None);
    }

    #[test]
    fn the_watch_says_whose_turn_it_is_and_the_first_verdict_stands() {
        let watch = BodyWatch::default();
        assert!(!watch.waiting_for_client());
        watch.set(CLIENT_TURN);
        assert!(watch.waiting_for_client());
        watch.set(BACKEND_TURN);
        assert!(!watch.waiting_for_client());
        let unrelated = std::io::Error::other("stream reset");
        watch.fail(ClientBodyError::Gone);
        // An HTTP/2 upstream reports only a reset: the watch tells.
        assert_eq!(
            client_fault(&unrelated, Some(&watch)),
            Some(ClientBodyError::Gone)
        );
        watch.fail(ClientBodyError::TooLarge);
        watch.set(CLIENT_TURN);
        assert_eq!(watch.failure(), Some(ClientBodyError::Gone));
        assert!(!watch.waiting_for_client());

        let ended = BodyWatch::default();
        ended.set(ENDED);
        ended.fail(ClientBodyError::Timeout);
        assert_eq!(ended.failure(), None);
    }
}
