//! Serving one accepted connection: the hyper connection builder with the
//! configured limits on request heads, the optional TLS handshake, and the
//! watch that closes a connection that starts no request within
//! `header_timeout` of accept and shuts one down gracefully when idle for
//! `idle_timeout` or when shutdown is asked for.
//!
//! Invariant: every connection is driven under its watch, so none stays
//! open doing nothing; the first request of a connection carries
//! [`WaitingSince`] (its accept), and with TLS every request carries
//! [`Secure`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::accept::until_stopped_opt;
use super::activity::{Activity, Expiry, Tracked};
use super::live::Live;
use crate::config::ServerConfig;
use crate::http::WaitingSince;
use crate::tls::{self, Secure, TlsError};

/// The TLS acceptor for `[server.tls]` (reading its files now), or `None`
/// when the listener speaks plain HTTP.
pub(super) fn acceptor(server: &ServerConfig) -> Result<Option<Arc<TlsAcceptor>>, TlsError> {
    let Some(tls) = &server.tls else {
        return Ok(None);
    };
    let config = tls::server_config(tls)?;
    Ok(Some(Arc::new(TlsAcceptor::from(config))))
}

/// hyper's default header count limit for HTTP/1.
pub(super) const HYPER_MAX_HEADERS: usize = 100;

/// The connection builder for the proxy, with the configured limits on
/// request heads.
pub(super) fn connection_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    builder_with_limits(
        server.header_timeout,
        server.max_header_bytes,
        server.max_headers,
    )
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
    ($conn:expr, $watch:expr) => {{
        let conn = $conn;
        let mut watch = $watch;
        tokio::pin!(conn);
        let result = loop {
            tokio::select! {
                result = conn.as_mut() => break Some(result),
                watched = watch.next() => match watched {
                    Watched::Close => break None,
                    Watched::ShutDown => conn.as_mut().graceful_shutdown(),
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
    pub(super) builder: Arc<auto::Builder<TokioExecutor>>,
    pub(super) stopped: watch::Receiver<bool>,
    /// `header_timeout` and `idle_timeout`.
    pub(super) timeouts: (Duration, Duration),
}

impl ProxyConnection {
    /// Completes the TLS handshake (within `header_timeout` of accept), then
    /// serves.
    pub(super) async fn serve_tls(
        self,
        acceptor: Arc<TlsAcceptor>,
        stream: TcpStream,
        peer: SocketAddr,
        accepted: Instant,
    ) {
        let deadline = accepted + self.timeouts.0;
        match tokio::time::timeout_at(deadline, acceptor.accept(stream)).await {
            Ok(Ok(stream)) => self.serve(stream, peer, accepted, true).await,
            Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// Serves one accepted (and, with TLS, handshaken) connection. `secure`
    /// marks its requests with [`Secure`].
    pub(super) async fn serve<S>(self, stream: S, peer: SocketAddr, accepted: Instant, secure: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let live = self.live;
        let first = AtomicBool::new(true);
        let service = service_fn(move |mut req: Request<Incoming>| {
            if secure {
                req.extensions_mut().insert(Secure);
            }
            if first.swap(false, Ordering::Relaxed) {
                req.extensions_mut().insert(WaitingSince(accepted));
            }
            // The request keeps the generation it started with.
            let gateway = live.gateway.load_full();
            async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
        });
        let (header_timeout, idle_timeout) = self.timeouts;
        let activity = Activity::new(accepted, header_timeout, idle_timeout);
        // With upgrades: WebSocket and other Upgrade requests are tunneled.
        let conn = self
            .builder
            .serve_connection_with_upgrades(
                TokioIo::new(stream),
                Tracked::new(service, activity.clone()),
            )
            .into_owned();
        drive_connection!(
            conn,
            ConnectionWatch {
                activity: &activity,
                stopped: Some(self.stopped),
                done: false,
                peer,
            }
        );
    }
}
