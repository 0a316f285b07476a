//! Serving one accepted connection: the optional TLS handshake, then the
//! protocol: HTTP/1 with sluice's own codec ([`super::h1`]), or HTTP/2 with
//! hyper (the prior-knowledge preface on a plain connection, ALPN `h2` with
//! TLS). An HTTP/2 connection is driven under the watch that closes one
//! that starts no request within `header_timeout` of accept and shuts one
//! down gracefully when idle for `idle_timeout` or when shutdown is asked
//! for; an HTTP/1 connection keeps the same rules itself. An HTTP/2
//! connection's streams (each request's handling and response) are polled
//! by the connection's own task ([`StreamTasks`], [`WithStreams`]), not
//! spawned as a task each. The admin listener's hyper builder is made here
//! too.
//!
//! Invariant: every connection is driven under its watch, so none stays
//! open doing nothing; an HTTP/2 connection's task ends only when its
//! streams have too; every request goes to the gateway with its
//! [`ClientConn`]: the peer, whether the connection is TLS, and on a
//! connection's first request its accept (when its client began waiting).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use http::Request;
use hyper::body::Incoming;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::accept::until_stopped_opt;
use super::activity::{Activity, Expiry, Tracked};
use super::coalesce::{Coalesced, Outbox};
use super::h1::{self, Start};
use super::live::Live;
use crate::config::ServerConfig;
use crate::http::h1::Fields;
use crate::http::h1::request::HeadLimits;
use crate::http::upgrade::Rewind;
use crate::http::{ClientBody, ClientConn};
use crate::tls::{self, Terminator, TlsError, TlsFamilies};

/// The TLS terminator for `[server.tls]` (reading its files now), or `None`
/// when the listener speaks plain HTTP. `previous`, the terminator in force,
/// hands over its session-resumption state.
pub(super) fn terminator(
    server: &ServerConfig,
    families: &TlsFamilies,
    previous: Option<&Terminator>,
) -> Result<Option<Arc<Terminator>>, TlsError> {
    let Some(tls) = &server.tls else {
        return Ok(None);
    };
    Terminator::new(tls, families, previous).map(|t| Some(Arc::new(t)))
}

/// hyper's default header count limit for HTTP/1.
pub(super) const HYPER_MAX_HEADERS: usize = 100;

/// The HTTP/2 settings of the proxy's connections: the configured limit on
/// request heads.
#[derive(Debug, Clone, Copy)]
pub(super) struct Http2Settings {
    max_header_list_size: u32,
}

/// The HTTP/2 settings of the proxy's connections under `server`.
pub(super) fn http2_settings(server: &ServerConfig) -> Http2Settings {
    Http2Settings {
        max_header_list_size: u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX),
    }
}

/// The HTTP/2 connection builder of one proxy connection, whose streams
/// `streams` runs.
fn http2_builder(settings: Http2Settings, streams: StreamTasks) -> http2::Builder<StreamTasks> {
    let mut builder = http2::Builder::new(streams);
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(settings.max_header_list_size);
    builder
}

/// A stream's future, as hyper hands it over.
type StreamFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The executor of one HTTP/2 connection's streams: hyper hands it each
/// stream's future (the request's handling and its response), and the
/// connection's own task polls them ([`WithStreams`]) rather than tokio
/// spawning a task per stream: no task to allocate, schedule and free per
/// request, and a response is written by the same poll that made it
/// (bench/README.md, HTTPS).
#[derive(Clone, Default)]
pub(super) struct StreamTasks(Arc<Mutex<Vec<StreamFuture>>>);

impl<F> hyper::rt::Executor<F> for StreamTasks
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.lock().push(Box::pin(fut));
    }
}

pin_project_lite::pin_project! {
    /// An HTTP/2 connection and the streams it has started, driven by one
    /// task. It is done when the connection is and every stream has
    /// finished (a stream outlives its connection as a spawned task would:
    /// its request still ends in exactly one outcome).
    pub(super) struct WithStreams<C> {
        #[pin]
        conn: C,
        ended: Option<hyper::Result<()>>,
        inbox: StreamTasks,
        streams: FuturesUnordered<StreamFuture>,
        outbox: Option<Arc<dyn Outbox>>,
    }

    impl<C> PinnedDrop for WithStreams<C> {
        fn drop(this: Pin<&mut Self>) {
            // The futures not yet taken hold the inbox: drop them here, not
            // in a cycle that never ends.
            this.project().inbox.0.lock().clear();
        }
    }
}

impl<C> WithStreams<C> {
    /// `outbox`: where the connection's writes wait until the end of each
    /// poll ([`Coalesced`]), if they do.
    fn new(conn: C, inbox: StreamTasks, outbox: Option<Arc<dyn Outbox>>) -> Self {
        WithStreams {
            conn,
            ended: None,
            inbox,
            streams: FuturesUnordered::new(),
            outbox,
        }
    }
}

impl<C> WithStreams<C> {
    /// The connection, to start its graceful shutdown (its streams finish).
    pub(super) fn conn(self: Pin<&mut Self>) -> Pin<&mut C> {
        self.project().conn
    }
}

impl<C: Future<Output = hyper::Result<()>>> Future for WithStreams<C> {
    type Output = hyper::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<hyper::Result<()>> {
        let mut this = self.project();
        loop {
            if this.ended.is_none()
                && let Poll::Ready(ended) = this.conn.as_mut().poll(cx)
            {
                *this.ended = Some(ended);
            }
            this.streams.extend(this.inbox.0.lock().drain(..));
            let mut finished = false;
            while let Poll::Ready(Some(())) = this.streams.poll_next_unpin(cx) {
                finished = true;
            }
            // A finished stream has queued its response's last frame: the
            // connection writes it now rather than in another poll. A
            // stream may also have started another (an upgrade).
            if (finished && this.ended.is_none()) || !this.inbox.0.lock().is_empty() {
                continue;
            }
            // What this poll wrote goes out now, together.
            if let Some(outbox) = this.outbox {
                let _sent_or_waiting = outbox.poll_send(cx, this.streams.is_empty());
            }
            if this.streams.is_empty()
                && let Some(ended) = this.ended.take()
            {
                return Poll::Ready(ended);
            }
            return Poll::Pending;
        }
    }
}

/// The settings of the proxy's HTTP/1 connections.
pub(super) fn http1_settings(server: &ServerConfig) -> h1::Settings {
    h1::Settings {
        limits: HeadLimits {
            max_bytes: server.max_header_bytes,
            max_headers: server.max_headers,
        },
        header_timeout: server.header_timeout,
        idle_timeout: server.idle_timeout,
        send_timeout: server.send_timeout,
    }
}

pub(super) fn builder_with_limits(
    header_timeout: Duration,
    max_header_bytes: usize,
    max_headers: usize,
) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(max_header_bytes)
        .keep_alive(true);
    // hyper's own limit is 100 headers, parsed into a fixed array; an
    // explicit limit makes it fill a fresh vector of that size per request.
    if max_headers != HYPER_MAX_HEADERS {
        http1.max_headers(max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    builder
}

/// Marks a response's `Date` for HPACK's "never indexed" form. h2's encoder
/// otherwise adds every new `Date` value (one a second) to the connection's
/// dynamic table, where entries are chained by name: a long-lived connection
/// fills its 4 KiB table with old dates, and every response then compares
/// its `Date` with each of them before finding the newest. Sent literally,
/// a `Date` costs a few bytes more per response and no lookup
/// (bench/README.md, HTTPS).
fn never_index_date<B>(response: &mut http::Response<B>) {
    if let Some(date) = response.headers_mut().get_mut(http::header::DATE) {
        date.set_sensitive(true);
    }
}

/// What to do with a connection, as its watch decides.
pub(super) enum Watched {
    /// It started no request within `header_timeout` of accept: close now.
    Close,
    /// Idle for `idle_timeout`, or shutdown asked for: shut down gracefully.
    ShutDown,
}

/// The watch over one connection: its activity and the shutdown signal.
/// After it has said [`Watched::ShutDown`] once it stays pending, while
/// the graceful shutdown runs its course.
pub(super) struct ConnectionWatch<'a> {
    pub(super) activity: &'a Activity,
    pub(super) stopped: Option<watch::Receiver<bool>>,
    pub(super) done: bool,
    pub(super) peer: SocketAddr,
}

impl ConnectionWatch<'_> {
    pub(super) async fn next(&mut self) -> Watched {
        if self.done {
            return std::future::pending().await;
        }
        let watched = tokio::select! {
            () = until_stopped_opt(self.stopped.as_mut()) => Watched::ShutDown,
            expiry = self.activity.expired() => match expiry {
                Expiry::NoRequest => {
                    tracing::debug!(peer = %self.peer, "no request within header_timeout of accept; closing");
                    Watched::Close
                }
                Expiry::Idle => {
                    tracing::debug!(peer = %self.peer, "idle for idle_timeout; closing");
                    Watched::ShutDown
                }
            },
        };
        self.done = true;
        watched
    }
}

/// Drives a connection (`$conn`, a hyper-util connection) to its end under
/// its watch: closed when it starts no request within `header_timeout` of
/// accept, shut down gracefully when idle for `idle_timeout` or when
/// shutdown is asked for. A macro, not a generic function: the connection
/// types' trait bounds defeat the compiler's `Send` proof for a spawned
/// generic future.
macro_rules! drive_connection {
    // `$inner`: the method giving the hyper connection inside `$conn`.
    ($conn:expr, $watch:expr $(, $inner:ident)?) => {{
        let conn = $conn;
        let mut watch = $watch;
        tokio::pin!(conn);
        let result = loop {
            tokio::select! {
                result = conn.as_mut() => break Some(result),
                watched = watch.next() => match watched {
                    Watched::Close => break None,
                    Watched::ShutDown => conn.as_mut()$(.$inner())?.graceful_shutdown(),
                },
            }
        };
        if let Some(Err(err)) = result {
            tracing::debug!(peer = %watch.peer, %err, "connection ended with an error");
        }
    }};
}
pub(super) use drive_connection;

/// What serving one proxy connection needs.
pub(super) struct ProxyConnection {
    pub(super) live: Arc<Live>,
    pub(super) http2: Http2Settings,
    pub(super) http1: h1::Settings,
    pub(super) stopped: watch::Receiver<bool>,
}

impl ProxyConnection {
    /// The HTTP/1 side of a plain connection: served to its end, or handed
    /// back at an HTTP/2 preface (see [`ProxyConnection::serve_preface`]).
    /// The connection's future, made here rather than inside the caller's
    /// block, so that the task holds the stream, address and times once.
    pub(super) fn serve_plain(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        accepted: Instant,
    ) -> impl Future<Output = Start<TcpStream>> + use<> {
        h1::Connection::new(
            stream,
            self.live.clone(),
            (peer, accepted, false),
            self.http1,
            self.stopped.clone(),
        )
        .run(true)
    }

    /// Serves HTTP/2 on a plain connection that began with its preface
    /// (`read`: the bytes already read). Boxed: a plain HTTP/1 connection's
    /// task should not reserve room for an HTTP/2 connection.
    pub(super) async fn serve_preface(
        self,
        stream: TcpStream,
        read: Bytes,
        peer: SocketAddr,
        accepted: Instant,
    ) {
        let stream = Rewind::new(stream, read);
        Box::pin(self.serve_http2(stream, peer, accepted, false)).await;
    }

    /// Completes the TLS handshake (within `handshake_timeout` of accept,
    /// and within `header_timeout`, which also runs from accept), then
    /// serves HTTP/2 if ALPN chose it, else HTTP/1. The connection holds
    /// its place under `max_connections` from accept, handshake included.
    pub(super) async fn serve_tls(
        self,
        terminator: Arc<Terminator>,
        stream: TcpStream,
        peer: SocketAddr,
        accepted: Instant,
    ) {
        let deadline = accepted + terminator.timeout().min(self.http1.header_timeout);
        let Some(stream) = terminator.handshake(stream, peer, accepted, deadline).await else {
            return;
        };
        drop(terminator);
        if stream.get_ref().1.alpn_protocol() == Some(tls::ALPN_H2) {
            return self.serve_http2(stream, peer, accepted, true).await;
        }
        let conn = h1::Connection::new(
            stream,
            self.live.clone(),
            (peer, accepted, true),
            self.http1,
            self.stopped.clone(),
        );
        // ALPN did not choose HTTP/2: no preface is looked for.
        let _served = conn.run(false).await;
    }

    /// Serves an HTTP/2 connection with hyper. `secure`: over TLS (each
    /// request's [`ClientConn`] says so).
    async fn serve_http2<S>(self, stream: S, peer: SocketAddr, accepted: Instant, secure: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let live = self.live;
        let first = AtomicBool::new(true);
        let service = service_fn(move |req: Request<Incoming>| {
            let req = req.map(ClientBody::H2);
            let conn = ClientConn {
                peer,
                secure,
                waiting_since: first.swap(false, Ordering::Relaxed).then_some(accepted),
            };
            // The request keeps the generation it started with. Boxed:
            // hyper's stream future, which holds this one, is moved whole
            // into its box and its place among the connection's streams; a
            // pointer moves cheaper than the gateway's kilobytes
            // (bench/README.md, HTTPS).
            let handling = Box::pin(live.gateway.load_full().handle_owned(req, None, conn));
            async move {
                let (mut response, fields) = handling.await;
                // hyper writes the header map: a backend's fields that came
                // as they arrived go into it.
                Fields::restore(&mut response, fields);
                never_index_date(&mut response);
                Ok::<_, Infallible>(response)
            }
        });
        let activity = Activity::new(accepted, self.http1.header_timeout, self.http1.idle_timeout);
        let streams = StreamTasks::default();
        let (stream, outbox) = Coalesced::new(stream);
        let conn = http2_builder(self.http2, streams.clone()).serve_connection(
            TokioIo::new(stream),
            Tracked::new(service, activity.clone()),
        );
        let conn = WithStreams::new(conn, streams, Some(outbox));
        drive_connection!(
            conn,
            ConnectionWatch {
                activity: &activity,
                stopped: Some(self.stopped),
                done: false,
                peer,
            },
            conn
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::Gateway;

    use hyper::rt::Executor;

    /// A connection's streams run to their end in its task, even after the
    /// connection itself has ended, and the connection's result comes last.
    #[tokio::test]
    async fn a_connections_streams_finish_before_it_is_done() {
        let streams = StreamTasks::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let answered = Arc::new(AtomicBool::new(false));
        let executor = streams.clone();
        let seen = answered.clone();
        // The "connection" starts one stream, then ends at once.
        let conn = async move {
            executor.execute(async move {
                let _ = rx.await;
                seen.store(true, Ordering::Relaxed);
            });
            Ok(())
        };
        let driven = tokio::spawn(WithStreams::new(conn, streams, None));
        tokio::task::yield_now().await;
        assert!(!driven.is_finished(), "done while its stream waits");
        tx.send(()).expect("the stream waits");
        let result = driven.await.expect("no panic");
        assert!(result.is_ok());
        assert!(
            answered.load(Ordering::Relaxed),
            "the stream ran to its end"
        );
    }

    /// Streams handed over but never polled are dropped with the
    /// connection (they hold its inbox: no cycle keeps them alive).
    #[test]
    fn streams_never_taken_are_dropped_with_the_connection() {
        let streams = StreamTasks::default();
        let held = Arc::new(());
        let in_stream = held.clone();
        streams.execute(async move {
            let _held = in_stream;
        });
        let inbox = streams.clone();
        drop(WithStreams::new(
            std::future::pending::<hyper::Result<()>>(),
            streams,
            None,
        ));
        assert_eq!(
            Arc::strong_count(&held),
            1,
            "the stream's future was dropped"
        );
        assert!(inbox.0.lock().is_empty());
    }

    #[test]
    fn a_responses_date_is_never_indexed() {
        let mut response = http::Response::new(());
        response.headers_mut().insert(
            http::header::DATE,
            http::HeaderValue::from_static("Sun, 06 Dec 2026 23:00:00 GMT"),
        );
        never_index_date(&mut response);
        assert!(response.headers()[http::header::DATE].is_sensitive());
        let mut without = http::Response::new(());
        never_index_date(&mut without);
        assert!(without.headers().is_empty());
    }

    /// The size of what `f` returns (a future), without making one.
    fn size_of_output<A, R>(_f: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// An idle keep-alive connection, or one whose request waits, is a
    /// task of this size plus the request's own (boxed) future: the
    /// connection's future is not sized by the whole request path.
    #[test]
    fn a_plain_connections_future_is_not_sized_by_the_request_path() {
        let serve = size_of_output(
            |(c, s, p, a): (&ProxyConnection, TcpStream, SocketAddr, Instant)| {
                c.serve_plain(s, p, a)
            },
        );
        let run = size_of_output(|c: h1::Connection<TcpStream>| c.run(true));
        let request = size_of_output(
            |(g, r, c): (Arc<Gateway>, Request<ClientBody>, ClientConn)| g.handle_owned(r, None, c),
        );
        eprintln!("serve_plain {serve} B, h1 run {run} B, a request in the gateway {request} B");
        assert!(serve <= 1024, "{serve}");
        assert!(run <= 640, "{run}");
    }
}
