//! A client's HTTP/1 request body as the gateway reads it: a one-frame
//! handoff between the connection, which owns the socket and decodes the
//! body from it, and whoever reads the body (the gateway, or the upstream
//! connection sending it on, possibly in another task).
//!
//! The connection reads from the socket only when the reader asks for more
//! ([`BodySender::poll_want`]), so a body no one reads is never buffered,
//! and the first ask is when `100 Continue` is sent.
//!
//! Invariant: the reader sees the body's frames in order and then exactly
//! one end: the end of the body, or the client's failure.

use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use parking_lot::Mutex;

use crate::http::request_body::ClientBodyError;

/// The reader's end of a request body.
#[derive(Debug)]
pub struct IncomingBody {
    shared: Arc<Mutex<State>>,
    /// Bytes still to come, when the length was declared.
    remaining: Option<u64>,
    done: bool,
}

/// The connection's end of a request body.
#[derive(Debug)]
pub struct BodySender {
    shared: Arc<Mutex<State>>,
}

/// What the reader wants, as the connection sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// The reader asked for the next frame.
    More,
    /// The reader is gone: the rest of the body will never be read.
    Gone,
}

#[derive(Debug, Default)]
struct State {
    frame: Option<Frame<Bytes>>,
    end: Option<Result<(), ClientBodyError>>,
    wanted: bool,
    reader_gone: bool,
    reader: Option<Waker>,
    sender: Option<Waker>,
}

/// A body channel: `length` is the declared `Content-Length`, if any.
pub fn channel(length: Option<u64>) -> (BodySender, IncomingBody) {
    let shared = Arc::new(Mutex::new(State::default()));
    (
        BodySender {
            shared: shared.clone(),
        },
        IncomingBody {
            shared,
            remaining: length,
            done: false,
        },
    )
}

fn wake(waker: &mut Option<Waker>) {
    if let Some(waker) = waker.take() {
        waker.wake();
    }
}

impl BodySender {
    /// Ready when the reader asks for the next frame, or is gone.
    pub fn poll_want(&self, cx: &mut Context<'_>) -> Poll<Want> {
        let mut state = self.shared.lock();
        if state.reader_gone {
            return Poll::Ready(Want::Gone);
        }
        if state.wanted && state.frame.is_none() {
            return Poll::Ready(Want::More);
        }
        if !state
            .sender
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            state.sender = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Hands the reader its next piece of data.
    pub fn send_data(&self, data: Bytes) {
        self.send(Frame::data(data));
    }

    /// Hands the reader the body's trailers (then the body ends).
    pub fn send_trailers(&self, trailers: HeaderMap) {
        self.send(Frame::trailers(trailers));
    }

    fn send(&self, frame: Frame<Bytes>) {
        let mut state = self.shared.lock();
        state.frame = Some(frame);
        state.wanted = false;
        wake(&mut state.reader);
    }

    /// The body ended (`Ok`) or failed as the client's fault.
    pub fn finish(&self, end: Result<(), ClientBodyError>) {
        let mut state = self.shared.lock();
        if state.end.is_none() {
            state.end = Some(end);
        }
        wake(&mut state.reader);
    }
}

impl Drop for BodySender {
    /// A connection that goes away mid-body: the client is gone.
    fn drop(&mut self) {
        self.finish(Err(ClientBodyError::Gone));
    }
}

impl Drop for IncomingBody {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.reader_gone = true;
        wake(&mut state.sender);
    }
}

impl Body for IncomingBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        let mut state = self.shared.lock();
        if let Some(frame) = state.frame.take() {
            drop(state);
            if let (Some(data), Some(remaining)) = (frame.data_ref(), self.remaining.as_mut()) {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(frame)));
        }
        match state.end {
            Some(Ok(())) => {
                drop(state);
                self.done = true;
                Poll::Ready(None)
            }
            Some(Err(err)) => {
                drop(state);
                self.done = true;
                Poll::Ready(Some(Err(err)))
            }
            None => {
                state.wanted = true;
                if !state
                    .reader
                    .as_ref()
                    .is_some_and(|w| w.will_wake(cx.waker()))
                {
                    state.reader = Some(cx.waker().clone());
                }
                wake(&mut state.sender);
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.remaining == Some(0) && self.shared.lock().frame.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::pin;

    use http_body_util::BodyExt;

    use super::*;

    #[tokio::test]
    async fn frames_pass_one_at_a_time_when_asked_for_and_then_the_end() {
        let (tx, mut rx) = channel(Some(5));
        assert_eq!(rx.size_hint().exact(), Some(5));
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(tx.poll_want(&mut cx).is_pending(), "nobody asked yet");
        let reading = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(frame) = rx.frame().await {
                got.push(frame.unwrap().into_data().unwrap());
            }
            got
        });
        for piece in ["abc", "de"] {
            std::future::poll_fn(|cx| tx.poll_want(cx)).await;
            tx.send_data(Bytes::from_static(piece.as_bytes()));
        }
        std::future::poll_fn(|cx| tx.poll_want(cx)).await;
        tx.finish(Ok(()));
        assert_eq!(reading.await.unwrap(), ["abc", "de"]);
    }

    #[tokio::test]
    async fn a_vanished_connection_is_the_clients_failure_and_a_dropped_reader_is_seen() {
        let (tx, mut rx) = channel(None);
        drop(tx);
        assert_eq!(
            rx.frame().await.unwrap().unwrap_err(),
            ClientBodyError::Gone
        );
        let (tx, rx) = channel(None);
        drop(rx);
        let mut want = pin!(std::future::poll_fn(|cx| tx.poll_want(cx)));
        assert_eq!(want.as_mut().await, Want::Gone);
    }

    fn futures_waker() -> Waker {
        Waker::noop().clone()
    }
}
