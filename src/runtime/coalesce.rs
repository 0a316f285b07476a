//! Write coalescing for an HTTP/2 connection. h2 buffers small frames, but
//! a DATA frame of 256 bytes or more goes to the stream as a write of its
//! own, and h2 flushes before it takes the next frame: with TLS every such
//! response was a record and a `writev` of its own (bench/README.md,
//! HTTPS). The stream is wrapped in [`Coalesced`], which keeps what h2
//! writes and flushes during one poll of the connection's task; the task
//! ([`super::connection::WithStreams`]) sends it once, at the end of that
//! poll ([`Outbox::poll_send`]), so the frames of every response the poll
//! finished go out as one record and one system call.
//!
//! Invariant: at most [`LIMIT`] bytes wait (a write that would pass it
//! first sends what waits; one that alone passes it goes straight
//! through); nothing waits past the end of the task's poll; the buffer is
//! freed once sent while the connection has no stream in progress, so an
//! idle connection holds none.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The most bytes kept back: one TLS record's worth of plaintext.
pub(super) const LIMIT: usize = 16 * 1024;

/// The end of a connection's task's poll: what waits is sent.
pub(super) trait Outbox: Send + Sync {
    /// Sends what waits and flushes the stream, if h2 wrote or flushed
    /// anything since the last time. `idle`: no stream is in progress,
    /// so the buffer is freed once sent. A failure is kept for h2's next
    /// read or write, which ends the connection.
    fn poll_send(&self, cx: &mut Context<'_>, idle: bool) -> Poll<()>;
}

/// A stream whose writes wait for the end of the task's poll.
pub(super) struct Coalesced<S>(Arc<Mutex<Pending<S>>>);

pub(super) struct Pending<S> {
    io: S,
    /// Written by h2, not yet sent.
    waiting: Vec<u8>,
    /// h2 flushed since the stream was last flushed.
    flush: bool,
    /// Sending at the end of a poll failed: h2 learns it from its next
    /// call.
    failed: Option<io::ErrorKind>,
}

impl<S> Coalesced<S> {
    /// `io` wrapped, and the handle that sends what waits in it.
    pub(super) fn new(io: S) -> (Coalesced<S>, Arc<Mutex<Pending<S>>>) {
        let pending = Arc::new(Mutex::new(Pending {
            io,
            waiting: Vec::new(),
            flush: false,
            failed: None,
        }));
        (Coalesced(pending.clone()), pending)
    }
}

impl<S> Pending<S> {
    /// The failure of an earlier send, for h2.
    fn check(&self) -> io::Result<()> {
        match self.failed {
            Some(kind) => Err(kind.into()),
            None => Ok(()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Pending<S> {
    /// Writes out what waits (without flushing).
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut sent = 0;
        let result = loop {
            if sent == self.waiting.len() {
                break Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.io).poll_write(cx, &self.waiting[sent..]) {
                Poll::Ready(Ok(0)) => break Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => sent += n,
                Poll::Ready(Err(err)) => break Poll::Ready(Err(err)),
                Poll::Pending => break Poll::Pending,
            }
        };
        self.waiting.drain(..sent);
        result
    }
}

impl<S: AsyncWrite + Unpin + Send> Outbox for Mutex<Pending<S>> {
    fn poll_send(&self, cx: &mut Context<'_>, idle: bool) -> Poll<()> {
        let mut pending = self.lock();
        if pending.failed.is_none() && (pending.flush || !pending.waiting.is_empty()) {
            let sent = match pending.poll_drain(cx) {
                Poll::Ready(Ok(())) => Pin::new(&mut pending.io).poll_flush(cx),
                other => other,
            };
            match sent {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(())) => pending.flush = false,
                Poll::Ready(Err(err)) => {
                    pending.failed = Some(err.kind());
                    // h2 is told by its next call: make sure there is one.
                    cx.waker().wake_by_ref();
                }
            }
        }
        if idle && pending.waiting.is_empty() {
            pending.waiting = Vec::new();
        }
        Poll::Ready(())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Coalesced<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let mut pending = self.0.lock();
        pending.check()?;
        Pin::new(&mut pending.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Coalesced<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut pending = self.0.lock();
        pending.check()?;
        let len = bufs.iter().map(|b| b.len()).sum::<usize>();
        if pending.waiting.len() + len > LIMIT {
            ready!(pending.poll_drain(cx))?;
            if len > LIMIT {
                return Pin::new(&mut pending.io).poll_write_vectored(cx, bufs);
            }
        }
        if pending.waiting.capacity() == 0 {
            pending.waiting.reserve_exact(LIMIT);
        }
        for buf in bufs {
            pending.waiting.extend_from_slice(buf);
        }
        Poll::Ready(Ok(len))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    /// Sent at the end of the task's poll ([`Outbox::poll_send`]).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pending = self.0.lock();
        pending.check()?;
        pending.flush = true;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut pending = self.0.lock();
        pending.check()?;
        ready!(pending.poll_drain(cx))?;
        pending.waiting = Vec::new();
        ready!(Pin::new(&mut pending.io).poll_flush(cx))?;
        Pin::new(&mut pending.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::task::Waker;

    use tokio::io::AsyncWriteExt;

    /// A stream that records each write it is given, and can refuse.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<Vec<u8>>,
        flushes: usize,
        full: bool,
        /// Bytes it takes before it is full (`None`: no end).
        room: Option<usize>,
        broken: bool,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if self.broken {
                return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
            }
            let n = self.room.map_or(buf.len(), |room| room.min(buf.len()));
            if self.full || n == 0 {
                return Poll::Pending;
            }
            if let Some(room) = self.room.as_mut() {
                *room -= n;
            }
            self.writes.push(buf[..n].to_vec());
            Poll::Ready(Ok(n))
        }

        fn poll_flush(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn cx() -> Context<'static> {
        Context::from_waker(Waker::noop())
    }

    /// Frames written and flushed one at a time reach the stream as one
    /// write and one flush, at the end of the poll.
    #[tokio::test]
    async fn writes_and_flushes_of_one_poll_are_sent_once() {
        let (mut io, outbox) = Coalesced::new(Recorder::default());
        for frame in [&b"headers"[..], b"data", b"headers", b"data"] {
            io.write_all(frame).await.expect("kept");
            io.flush().await.expect("kept");
        }
        assert!(outbox.lock().io.writes.is_empty(), "nothing sent yet");
        assert_eq!(outbox.poll_send(&mut cx(), false), Poll::Ready(()));
        let pending = outbox.lock();
        assert_eq!(pending.io.writes, vec![b"headersdataheadersdata".to_vec()]);
        assert_eq!(pending.io.flushes, 1);
        assert_eq!(pending.waiting.capacity(), LIMIT, "kept while busy");
    }

    /// At most LIMIT bytes wait; a write larger than that goes through
    /// after what waited, in order; the buffer is freed when idle.
    #[tokio::test]
    async fn what_waits_is_bounded_and_kept_in_order() {
        let (mut io, outbox) = Coalesced::new(Recorder::default());
        io.write_all(&[1; 100]).await.expect("kept");
        io.write_all(&[2; LIMIT]).await.expect("sent");
        io.write_all(&[3; LIMIT - 1]).await.expect("kept");
        io.write_all(&[4; 2]).await.expect("kept");
        {
            let pending = outbox.lock();
            assert!(pending.waiting.len() <= LIMIT);
            assert_eq!(pending.io.writes.len(), 3);
        }
        assert_eq!(outbox.poll_send(&mut cx(), true), Poll::Ready(()));
        let pending = outbox.lock();
        let sent: Vec<u8> = pending.io.writes.concat();
        let expected = [vec![1; 100], vec![2; LIMIT], vec![3; LIMIT - 1], vec![4; 2]].concat();
        assert_eq!(sent, expected);
        assert_eq!(pending.waiting.capacity(), 0, "freed when idle");
    }

    /// A stream that cannot take more keeps the rest waiting, and h2's
    /// writes past LIMIT wait too (backpressure, no growth).
    #[tokio::test]
    async fn a_full_stream_holds_back_h2() {
        let (io, outbox) = Coalesced::new(Recorder {
            full: true,
            ..Recorder::default()
        });
        let mut io = std::pin::pin!(io);
        let written = io.as_mut().poll_write(&mut cx(), &[0; LIMIT]);
        assert!(matches!(written, Poll::Ready(Ok(LIMIT))));
        assert_eq!(
            io.as_mut().poll_write(&mut cx(), &[0; 1]).map_err(|_| ()),
            Poll::Pending
        );
        assert_eq!(outbox.poll_send(&mut cx(), false), Poll::Pending);
        assert_eq!(outbox.lock().waiting.len(), LIMIT);
    }

    /// A stream that takes part of what waits sends the rest later, in
    /// order, and flushes once it has all.
    #[tokio::test]
    async fn a_partial_send_resumes_where_it_stopped() {
        let (mut io, outbox) = Coalesced::new(Recorder {
            room: Some(10),
            ..Recorder::default()
        });
        let data: Vec<u8> = (0..100).collect();
        io.write_all(&data).await.expect("kept");
        io.flush().await.expect("kept");
        assert_eq!(outbox.poll_send(&mut cx(), false), Poll::Pending);
        assert_eq!(outbox.lock().waiting, data[10..]);
        assert_eq!(outbox.lock().io.flushes, 0);
        outbox.lock().io.room = None;
        assert_eq!(outbox.poll_send(&mut cx(), true), Poll::Ready(()));
        let pending = outbox.lock();
        assert_eq!(pending.io.writes.concat(), data);
        assert_eq!(pending.io.flushes, 1);
    }

    /// A failed send is h2's next call's error, so the connection ends.
    #[tokio::test]
    async fn a_failed_send_is_reported_to_h2() {
        let (mut io, outbox) = Coalesced::new(Recorder {
            broken: true,
            ..Recorder::default()
        });
        io.write_all(b"frames").await.expect("kept");
        assert_eq!(outbox.poll_send(&mut cx(), false), Poll::Ready(()));
        let err = io.write_all(b"more").await.expect_err("reported");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(io.flush().await.is_err());
    }
}
