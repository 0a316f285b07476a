//! Serving one HTTP/1 client connection: read a request head, hand the
//! request to the gateway, feed its body from the socket as it is read,
//! write the response, and again while the connection stays open.
//!
//! The phases of one exchange, in order:
//! 1. wait: for the next head, within `header_timeout` of accept (first
//!    request) or of the previous response; no buffer is held until bytes
//!    arrive, and a head refused by the codec is answered 400/431 and the
//!    connection closed. When the time runs out, a connection that sent
//!    part of a head is answered 408 and closed (as HAProxy does), one that
//!    sent nothing of one (idle, or silent since accept) or part of an
//!    HTTP/2 preface is closed without a word;
//! 2. serve: the gateway's future runs (boxed: the connection's own future
//!    stays small while idle) while the connection feeds the request body
//!    on demand (`100 Continue` on the first ask), and, once the body is
//!    read, watches the socket: a client that leaves drops the request
//!    (the gateway counts it cancelled); bytes it sends meanwhile are kept
//!    for the next (pipelined) request;
//! 3. answer: the response head and body, each write bounded by
//!    `send_timeout`; after a 101 the socket goes to the tunnel.
//!
//! Invariant: requests on a connection are served one at a time, in order;
//! a connection that cannot frame the next request (body not read to its
//! end, ambiguous framing, shutdown asked for) says `Connection: close` and
//! closes after its response.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{Request, Response, StatusCode, Version};
use http_body::Body as HttpBody;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::buffers;
use super::response::{Asked, CONTINUE, Framing, encode_head, encode_refusal, is_head};
use super::stream::ClientStream;
use crate::http::h1::Fields;
use crate::http::h1::body::{Decoded, Decoder};
use crate::http::h1::incoming::{self, BodySender, Want};
use crate::http::h1::request::{self, Framing as BodyFraming, Head, HeadError, HeadLimits};
use crate::http::request_body::ClientBodyError;
use crate::http::upgrade::{self, UpgradeSender, Upgraded};
use crate::http::{Body, ClientBody, ClientConn, Reply};
use crate::recycle::Recycled;
use crate::runtime::live::Live;

/// The HTTP/2 connection preface a prior-knowledge client starts with.
pub(crate) const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A response body frame larger than this is written straight from its
/// own bytes rather than copied into the write buffer.
const COPY_BELOW: usize = 8 * 1024;

/// The per-listener settings of HTTP/1 connections.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Settings {
    pub limits: HeadLimits,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub send_timeout: Duration,
}

/// How a connection's first read ended.
pub(crate) enum Start<S> {
    /// The HTTP/2 preface: serve HTTP/2 over the stream, the bytes already
    /// read put back in front.
    Http2(S, Bytes),
    /// Served as HTTP/1 to its end.
    Done,
}

/// A connection's wait for shutdown: one wait for the connection's life (a
/// fresh wait on the shared channel per request would contend between
/// workers), polled again only when it may have changed. The connection's
/// task is woken for its sockets several times per request, and polling the
/// channel's wait each time cost ~500 instructions per request.
struct Stop {
    /// The channel, to see without waiting whether it has changed.
    asked: watch::Receiver<bool>,
    wait: Pin<Box<dyn Future<Output = ()> + Send>>,
    /// The waker the wait was last polled with (it wakes that one).
    armed: Option<Waker>,
}

impl Stop {
    fn new(stopped: watch::Receiver<bool>) -> Stop {
        Stop {
            asked: stopped.clone(),
            wait: Box::pin(async move {
                let mut stopped = stopped;
                // An error means the sender is gone, which also means stop.
                let _stop = stopped.wait_for(|stop| *stop).await.is_ok();
            }),
            armed: None,
        }
    }

    fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        // Unchanged (or changed and gone: `Err`), and the wait already holds
        // a waker for this task: nothing to look at.
        let changed = self.asked.has_changed().unwrap_or(true);
        if !changed && self.armed.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let polled = self.wait.as_mut().poll(cx);
        if polled.is_pending() {
            self.armed = Some(cx.waker().clone());
        }
        polled
    }
}

/// Resolves when shutdown is asked for (at once if it already was); never
/// resolves twice.
async fn until_stopped(stop: &mut Option<Stop>) {
    let Some(waiting) = stop.as_mut() else {
        return;
    };
    std::future::poll_fn(|cx| waiting.poll_stopped(cx)).await;
    *stop = None;
}

/// One HTTP/1 client connection.
pub(crate) struct Connection<S> {
    io: S,
    /// Bytes read and not yet used; `None` (no buffer held) when there are
    /// none.
    buf: Option<BytesMut>,
    live: Arc<Live>,
    peer: SocketAddr,
    accepted: Instant,
    secure: bool,
    settings: Settings,
    /// Resolves once shutdown is asked for: one future for the connection's
    /// life (registering a fresh wait on the shared channel per request
    /// would contend between workers); `None` once it has.
    stop: Option<Stop>,
    stopping: bool,
}

/// The next thing the connection read.
enum Next {
    Head(Box<Head>),
    Http2,
    /// A head the codec refused: answer 400 or 431 and close.
    Refused(HeadError),
    /// Part of a head came, and not the rest within `header_timeout`:
    /// answer 408 and close.
    TimedOut,
    End,
}

/// A request in the gateway, and what the connection does for it meanwhile.
struct Exchange {
    response: Pin<Box<dyn Future<Output = Reply> + Send>>,
    feed: Option<Feed>,
    /// The body was read to its end: the next request can be framed.
    body_done: bool,
    /// Watch the socket for the client leaving.
    watch: bool,
}

/// Feeding a request body from the socket to its reader.
struct Feed {
    sender: BodySender,
    decoder: Decoder,
    /// `100 Continue` still to send (bytes written so far), if asked for.
    continue_at: Option<usize>,
}

/// What a connection does after a response.
enum After {
    /// Reads the next request.
    Next,
    Close,
    /// Hands the stream to the tunnel (after a 101).
    Switch(UpgradeSender),
}

/// How serving a request in the gateway ended.
enum Served {
    Response(Reply),
    ClientGone,
}

impl<S: ClientStream> Connection<S> {
    pub(crate) fn new(
        io: S,
        live: Arc<Live>,
        (peer, accepted, secure): (SocketAddr, Instant, bool),
        settings: Settings,
        stopped: watch::Receiver<bool>,
    ) -> Connection<S> {
        Connection {
            io,
            buf: None,
            live,
            peer,
            accepted,
            secure,
            settings,
            stop: Some(Stop::new(stopped)),
            stopping: false,
        }
    }

    /// Serves requests until the connection ends. With `detect_h2`, the
    /// HTTP/2 preface as the first bytes hands the stream back for HTTP/2.
    ///
    /// Written as a block over its captured arguments rather than an `async
    /// fn`, which would keep a second copy of `self` in its future (the
    /// arguments as captured and as moved into the body; rustc #62958):
    /// this future is most of what an idle connection holds.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice (rustc #62958)"
    )]
    pub(crate) fn run(mut self, detect_h2: bool) -> impl Future<Output = Start<S>> {
        async move {
            let mut first = true;
            loop {
                let head = match self.next_head(first, detect_h2 && first).await {
                    Next::Head(head) => head,
                    Next::Http2 => {
                        let read = self.buf.take().map_or_else(Bytes::new, BytesMut::freeze);
                        return Start::Http2(self.io, read);
                    }
                    Next::Refused(err) => {
                        tracing::debug!(peer = %self.peer, %err, "request head refused");
                        self.refuse(err.status()).await;
                        break;
                    }
                    Next::TimedOut => {
                        tracing::debug!(peer = %self.peer, "request head not complete within header_timeout; 408");
                        self.refuse(StatusCode::REQUEST_TIMEOUT).await;
                        break;
                    }
                    Next::End => break,
                };
                // Boxed (in a block this worker reuses, see `recycle`): the
                // connection's own future, all an idle connection holds, is
                // not sized by serving a request.
                let keep_open = match Recycled::new(self.serve(head, first)).await {
                    Ok(After::Next) => true,
                    Ok(After::Close) => false,
                    Ok(After::Switch(upgrade)) => {
                        // After a 101: the socket, and what was read past the
                        // request, go to the tunnel waiting for them.
                        let Connection { io, buf, peer, .. } = self;
                        let read = buf.map_or_else(Bytes::new, BytesMut::freeze);
                        if upgrade.send(Upgraded::new(Box::new(io), read)).is_err() {
                            tracing::debug!(%peer, "no tunnel took the switched connection");
                        }
                        return Start::Done;
                    }
                    Err(err) => {
                        tracing::debug!(peer = %self.peer, %err, "connection ended with an error");
                        false
                    }
                };
                first = false;
                buffers::give_if_empty(&mut self.buf);
                if !keep_open || self.stopping || self.poll_stop_now() {
                    break;
                }
            }
            self.close().await;
            Start::Done
        }
    }

    /// Whether shutdown has been asked for, without waiting.
    fn poll_stop_now(&mut self) -> bool {
        let Some(stop) = self.stop.as_mut() else {
            return true;
        };
        if matches!(stop.asked.has_changed(), Ok(false)) {
            return false;
        }
        // A look with no waker: the wait must be polled with the task's
        // again before it can be left alone.
        stop.armed = None;
        let ready = stop
            .wait
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
            .is_ready();
        if ready {
            self.stop = None;
        }
        ready
    }

    /// Phase 1: the next request head, within `header_timeout`.
    async fn next_head(&mut self, first: bool, detect_h2: bool) -> Next {
        let deadline = if first {
            self.accepted + self.settings.header_timeout
        } else {
            Instant::now() + self.settings.header_timeout.min(self.settings.idle_timeout)
        };
        loop {
            if let Some(buf) = self.buf.as_ref().filter(|b| !b.is_empty()) {
                let n = buf.len().min(H2_PREFACE.len());
                let preface = detect_h2 && buf[..n] == H2_PREFACE[..n];
                if preface && n == H2_PREFACE.len() {
                    return Next::Http2;
                }
                if !preface {
                    match request::parse(buf, self.settings.limits) {
                        Ok(Some(head)) => {
                            if let Some(buf) = self.buf.as_mut() {
                                let _head = buf.split_to(head.len);
                            }
                            buffers::give_if_empty(&mut self.buf);
                            return Next::Head(Box::new(head));
                        }
                        Ok(None) => {}
                        Err(err) => return Next::Refused(err),
                    }
                }
            }
            let reading = tokio::time::timeout_at(deadline, read_more(&mut self.io, &mut self.buf));
            tokio::select! {
                read = reading => match read {
                    Ok(Ok(0) | Err(_)) => return Next::End,
                    Ok(Ok(_)) => {}
                    Err(_) if self.started_a_head(detect_h2) => return Next::TimedOut,
                    Err(_) => {
                        tracing::debug!(peer = %self.peer, "no request head within header_timeout; closing");
                        return Next::End;
                    }
                },
                () = until_stopped(&mut self.stop) => return Next::End,
            }
        }
    }

    /// Whether the bytes waiting are part of a request head: not nothing,
    /// not only the empty lines a client may send between requests (RFC
    /// 9112 §2.2), not the start of an HTTP/2 preface (`detect_h2`).
    fn started_a_head(&self, detect_h2: bool) -> bool {
        let Some(buf) = self.buf.as_ref() else {
            return false;
        };
        let n = buf.len().min(H2_PREFACE.len());
        let preface = detect_h2 && buf[..n] == H2_PREFACE[..n];
        !preface && buf.iter().any(|b| !matches!(b, b'\r' | b'\n'))
    }

    /// A head refused (400, 431) or not sent in time (408): the answer,
    /// then close. The write is bounded by `send_timeout`.
    async fn refuse(&mut self, status: StatusCode) {
        let mut out = buffers::take();
        encode_refusal(status, &mut out);
        let _sent = self.write_all(&out).await.is_ok();
        buffers::give(out);
    }

    /// Phase 2 and 3 for one request.
    async fn serve(&mut self, head: Box<Head>, first: bool) -> std::io::Result<After> {
        let asked = Asked {
            head: is_head(&head.parts.method),
            version: head.parts.version,
            keep_alive: head.keep_alive,
        };
        // The head's box is freed here, not held while the request waits.
        // The fields as they arrived go beside the request (not in its
        // extensions, whose first insert allocates three times): the
        // gateway reads them through `ClientFields`, the upstream's writer
        // copies them. (Taken out of the box: a borrowed local would be
        // held across the waits below.)
        let (head, fields): (Head, _) = {
            let mut boxed = head;
            let fields = std::mem::take(&mut boxed.fields);
            (*boxed, fields)
        };
        let (req, feed, upgrade) = self.request(head);
        let conn = ClientConn {
            peer: self.peer,
            secure: self.secure,
            waiting_since: first.then_some(self.accepted),
        };
        let gateway = self.live.gateway.load_full();
        let mut exchange = Exchange {
            response: Box::pin(gateway.handle_owned(req, Some(fields), conn)),
            body_done: feed.is_none(),
            watch: feed.is_none(),
            feed,
        };
        let response = match self.exchange(&mut exchange).await {
            Served::Response(response) => response,
            Served::ClientGone => {
                tracing::debug!(peer = %self.peer, "client left while its request was served");
                return Ok(After::Close);
            }
        };
        // A body not read to its end leaves the connection unframed.
        let body_done = exchange.body_done;
        drop(exchange);
        let keep_alive = asked.keep_alive && body_done && !self.stopping;
        let switching = response.0.status() == StatusCode::SWITCHING_PROTOCOLS;
        let asked = Asked {
            keep_alive,
            ..asked
        };
        // Boxed (in a block this worker reuses): a request waiting in the
        // gateway holds no room for writing its answer.
        let close = Recycled::new(self.answer(response, asked)).await?;
        if switching && let Some(upgrade) = upgrade.filter(UpgradeSender::is_awaited) {
            return Ok(After::Switch(upgrade));
        }
        Ok(if close || switching {
            After::Close
        } else {
            After::Next
        })
    }

    /// The request the gateway gets: the parsed head, its body (whole if it
    /// came with the head, else fed as it is read), and for an upgrade the
    /// client's side of the switch in its extensions.
    fn request(
        &mut self,
        head: Head,
    ) -> (Request<ClientBody>, Option<Feed>, Option<UpgradeSender>) {
        let continue_at = head.expects_continue.then_some(0);
        let (body, feed) = match head.framing {
            BodyFraming::Empty => (ClientBody::Empty, None),
            BodyFraming::Length(n)
                if self.buf.as_ref().is_some_and(|buf| buf.len() as u64 >= n) =>
            {
                let buf = self.buf.as_mut().map(|buf| {
                    // Copied out, so the read buffer can go back to the pool.
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    let body = Bytes::copy_from_slice(&buf[..n]);
                    let _consumed = buf.split_to(n);
                    body
                });
                buffers::give_if_empty(&mut self.buf);
                (ClientBody::Whole(buf), None)
            }
            BodyFraming::Length(n) => {
                let (sender, body) = incoming::channel(Some(n));
                let feed = Feed {
                    sender,
                    decoder: Decoder::length(n),
                    continue_at,
                };
                (ClientBody::H1(body), Some(feed))
            }
            BodyFraming::Chunked => {
                let (sender, body) = incoming::channel(None);
                let feed = Feed {
                    sender,
                    decoder: Decoder::chunked(),
                    continue_at,
                };
                (ClientBody::H1(body), Some(feed))
            }
        };
        let mut req = Request::from_parts(head.parts, body);
        let upgrade = (head.upgrade && req.version() == Version::HTTP_11).then(|| {
            let (client_side, sender) = upgrade::pending();
            req.extensions_mut().insert(client_side);
            sender
        });
        (req, feed, upgrade)
    }

    /// Phase 2: runs the gateway's future to its response while feeding the
    /// body and watching the client; a shutdown asked for meanwhile closes
    /// the connection after the response.
    async fn exchange(&mut self, exchange: &mut Exchange) -> Served {
        loop {
            let stopping = self.stopping;

            let (io, buf, settings) = (&mut self.io, &mut self.buf, self.settings);
            let serving = std::future::poll_fn(|cx| poll_exchange(io, buf, settings, exchange, cx));
            tokio::select! {
                biased;
                served = serving => return served,
                () = until_stopped(&mut self.stop), if !stopping => {
                    self.stopping = true;
                }
            }
        }
    }

    /// Phase 3: writes the response. Returns whether the connection closes
    /// after it.
    async fn answer(
        &mut self,
        (response, fields): (Response<Body>, Option<Fields>),
        asked: Asked,
    ) -> std::io::Result<bool> {
        let (parts, body) = response.into_parts();
        let mut out = buffers::take();
        let head = (&parts, fields.as_ref());
        let (framing, close) = encode_head(head, &body.size_hint(), asked, &mut out);
        drop(fields);
        let result = match framing {
            Framing::None => {
                drop(body);
                self.write_all(&out).await
            }
            Framing::Body(encoder) => self.write_body(body, encoder, &mut out).await,
        };
        buffers::give(out);
        result.map(|()| close)
    }

    /// Writes the body after the head already in `out`: small frames are
    /// gathered in `out`, which is flushed whenever the body has nothing
    /// ready.
    async fn write_body(
        &mut self,
        body: Body,
        mut encoder: crate::http::h1::body::Encoder,
        out: &mut BytesMut,
    ) -> std::io::Result<()> {
        let mut body = std::pin::pin!(body);
        let mut trailers = None;
        loop {
            let ready = std::future::poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await;
            let frame = match ready {
                Poll::Ready(frame) => frame,
                Poll::Pending => {
                    self.write_all(out).await?;
                    out.clear();
                    std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await
                }
            };
            match frame {
                None => break,
                Some(Err(err)) => {
                    // The response broke off: the client sees it end short.
                    self.write_all(out).await?;
                    return Err(std::io::Error::other(err));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if data.len() < COPY_BELOW => {
                        encoder
                            .encode_into(&data, out)
                            .map_err(std::io::Error::other)?;
                    }
                    Ok(data) => {
                        let piece = encoder.frame(data.len()).map_err(std::io::Error::other)?;
                        out.extend_from_slice(piece.head());
                        self.write_all(out).await?;
                        out.clear();
                        self.write_all(&data).await?;
                        out.extend_from_slice(piece.tail);
                    }
                    Err(frame) => {
                        if let Ok(t) = frame.into_trailers() {
                            trailers = Some(t);
                        }
                    }
                },
            }
            if out.len() >= buffers::BUFFER_BYTES {
                self.write_all(out).await?;
                out.clear();
            }
        }
        encoder
            .finish(trailers.as_ref(), out)
            .map_err(std::io::Error::other)?;
        self.write_all(out).await?;
        out.clear();
        Ok(())
    }

    /// Writes and flushes `data`, each step within `send_timeout`.
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let send_timeout = self.settings.send_timeout;
        let io = &mut self.io;
        let writing = async move {
            io.write_all(data).await?;
            io.flush().await
        };
        match tokio::time::timeout(send_timeout, writing).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "client did not take the response within send_timeout",
            )),
        }
    }

    /// Closes the connection: flushes and shuts down the writing side.
    async fn close(&mut self) {
        let send_timeout = self.settings.send_timeout;
        let _closed = tokio::time::timeout(send_timeout, self.io.shutdown()).await;
    }
}

/// Waits for bytes (holding no buffer meanwhile), then reads them into
/// the buffer. `Ok(0)`: the client closed.
async fn read_more<S: ClientStream>(
    io: &mut S,
    buf: &mut Option<BytesMut>,
) -> std::io::Result<usize> {
    let had = buf.as_ref().map_or(0, BytesMut::len);
    if had == 0 {
        std::future::poll_fn(|cx| io.poll_wait_readable(cx, buf)).await?;
        if let Some(b) = buf.as_ref().filter(|b| b.len() > had) {
            return Ok(b.len() - had);
        }
    }
    let b = buf.get_or_insert_with(buffers::take);
    std::future::poll_fn(|cx| poll_read_buf(io, cx, b)).await
}

/// What one step of an exchange's poll came to.
enum Step {
    /// Progress was made: poll again.
    Again,
    /// Waiting on the socket or the body's reader (a waker is set).
    Wait,
    /// The client left.
    Gone,
}

/// One poll of an exchange: the gateway's future first, then the body
/// feed, then the watch for the client leaving.
fn poll_exchange<S: ClientStream>(
    io: &mut S,
    buf: &mut Option<BytesMut>,
    settings: Settings,
    exchange: &mut Exchange,
    cx: &mut Context<'_>,
) -> Poll<Served> {
    if let Poll::Ready(response) = exchange.response.as_mut().poll(cx) {
        return Poll::Ready(Served::Response(response));
    }
    loop {
        let step = if exchange.feed.is_some() {
            poll_feed(io, buf, exchange, cx)
        } else if exchange.watch {
            poll_watch(io, buf, settings, cx)
        } else {
            Step::Wait
        };
        match step {
            Step::Again => {}
            Step::Wait => return Poll::Pending,
            Step::Gone => return Poll::Ready(Served::ClientGone),
        }
    }
}

/// One step of feeding the request body from the socket to its reader:
/// `100 Continue` first if asked for, then what the buffer holds, then a
/// read. Ends the feed (and says how) when the body ends or breaks off.
fn poll_feed<S: ClientStream>(
    io: &mut S,
    buf: &mut Option<BytesMut>,
    exchange: &mut Exchange,
    cx: &mut Context<'_>,
) -> Step {
    let Some(feed) = exchange.feed.as_mut() else {
        return Step::Again;
    };
    match feed.sender.poll_want(cx) {
        Poll::Pending => return Step::Wait,
        Poll::Ready(Want::Gone) => {
            // Nobody will read the rest: the connection cannot be framed
            // past it and closes after the response.
            exchange.feed = None;
            return Step::Wait;
        }
        Poll::Ready(Want::More) => {}
    }
    if let Some(at) = feed.continue_at.as_mut() {
        match poll_write_all(io, cx, CONTINUE, at) {
            Poll::Ready(Ok(())) => feed.continue_at = None,
            Poll::Ready(Err(_)) => {
                feed.sender.finish(Err(ClientBodyError::Gone));
                exchange.feed = None;
                return Step::Again;
            }
            Poll::Pending => return Step::Wait,
        }
    }
    let decoded = match buf.as_mut() {
        Some(b) if !b.is_empty() => feed.decoder.decode(b),
        _ => Ok(Decoded::NeedMore),
    };
    match decoded {
        Ok(Decoded::Data(data)) => feed.sender.send_data(data),
        Ok(Decoded::Trailers(trailers)) => feed.sender.send_trailers(trailers),
        Ok(Decoded::End) => {
            feed.sender.finish(Ok(()));
            exchange.feed = None;
            exchange.body_done = true;
            exchange.watch = true;
            buffers::give_if_empty(buf);
        }
        Ok(Decoded::NeedMore) => return poll_feed_read(io, buf, exchange, cx),
        Err(err) => {
            tracing::debug!(%err, "malformed request body");
            feed.sender.finish(Err(ClientBodyError::Malformed));
            exchange.feed = None;
        }
    }
    Step::Again
}

/// Reads more of the request body; at the client's close, ends the feed
/// (whole if the body's framing allows it to end there).
fn poll_feed_read<S: ClientStream>(
    io: &mut S,
    buf: &mut Option<BytesMut>,
    exchange: &mut Exchange,
    cx: &mut Context<'_>,
) -> Step {
    let Some(feed) = exchange.feed.as_mut() else {
        return Step::Again;
    };
    let b = buf.get_or_insert_with(buffers::take);
    match poll_read_buf(io, cx, b) {
        Poll::Ready(Ok(0)) => {
            let failure = match feed.decoder.eof() {
                Ok(Decoded::End) => None,
                _ => Some(ClientBodyError::Gone),
            };
            feed.sender.finish(failure.map_or(Ok(()), Err));
            exchange.body_done = failure.is_none();
            exchange.feed = None;
        }
        Poll::Ready(Ok(_)) => {}
        Poll::Ready(Err(_)) => {
            feed.sender.finish(Err(ClientBodyError::Gone));
            exchange.feed = None;
        }
        Poll::Pending => return Step::Wait,
    }
    Step::Again
}

/// One step of watching for the client leaving while the request is in the
/// gateway and its body read, keeping what it sends meanwhile (pipelining)
/// up to a head's worth.
fn poll_watch<S: ClientStream>(
    io: &mut S,
    buf: &mut Option<BytesMut>,
    settings: Settings,
    cx: &mut Context<'_>,
) -> Step {
    if buf
        .as_ref()
        .is_some_and(|b| b.len() >= settings.limits.max_bytes)
    {
        return Step::Wait;
    }
    if buf.as_ref().is_none_or(BytesMut::is_empty) {
        match io.poll_wait_readable(cx, buf) {
            Poll::Pending => return Step::Wait,
            Poll::Ready(Err(_)) => return Step::Gone,
            Poll::Ready(Ok(())) => {}
        }
        if buf.as_ref().is_some_and(|b| !b.is_empty()) {
            return Step::Again;
        }
    }
    let b = buf.get_or_insert_with(buffers::take);
    match poll_read_buf(io, cx, b) {
        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Step::Gone,
        Poll::Ready(Ok(_)) => Step::Again,
        Poll::Pending => {
            buffers::give_if_empty(buf);
            Step::Wait
        }
    }
}

/// Reads into the spare room of `buf` (making room for a read if full).
fn poll_read_buf<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<std::io::Result<usize>> {
    if buf.capacity() - buf.len() < 512 {
        buf.reserve(buffers::BUFFER_BYTES);
    }
    tokio_util::io::poll_read_buf(Pin::new(io), cx, buf)
}

/// Writes all of `data` from `*at` on, then flushes.
fn poll_write_all<S: AsyncWrite + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    data: &[u8],
    at: &mut usize,
) -> Poll<std::io::Result<()>> {
    while *at < data.len() {
        match Pin::new(&mut *io).poll_write(cx, &data[*at..]) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
            }
            Poll::Ready(Ok(n)) => *at += n,
            Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
            Poll::Pending => return Poll::Pending,
        }
    }
    Pin::new(io).poll_flush(cx)
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpStream;

    use super::*;

    fn size_of_output<A, R>(_f: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// What a waiting request costs the connection beyond the gateway's
    /// own future: the boxed `serve` future (head and response handling).
    #[test]
    fn serving_a_request_is_a_small_box() {
        let serve = size_of_output(
            |(c, h, f): (&'static mut Connection<TcpStream>, Box<Head>, bool)| c.serve(h, f),
        );
        eprintln!("serve {serve} B, head {} B", std::mem::size_of::<Head>());
        assert!(serve <= 1024, "{serve}");
    }
}
