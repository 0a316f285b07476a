//! The listeners: the proxy (HTTP/1.1 with keep-alive and HTTP/2 with prior
//! knowledge on one port; with `[server.tls]`, TLS first and then either one,
//! as ALPN chose) and the admin port (metrics, health, admin API).
//!
//! [`start`] binds both and serves the current config generation, which
//! [`Running::reload`] swaps atomically: a request keeps the generation it
//! started with, and a connection the TLS certificate it was accepted with. [`Running::shutdown`] turns readiness false first, keeps
//! serving for `shutdown_delay` so a load balancer can stop sending, then stops
//! accepting, answers still-queued requests 503 and gives in-flight ones up to
//! `drain_timeout`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use http::Request;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::activity::{Activity, Expiry, Tracked};
use crate::admin::Admin;
use crate::config::{Config, ConfigError, ServerConfig};
use crate::door::{Door, Slot};
use crate::http::WaitingSince;
use crate::listener::{self, Backlog, Listener, ListenerProbe};
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::tls::{self, Secure, TlsError};
// Kept at its old path for the h1 pool until it reads crate::worker (issue 16).
pub use crate::worker::{worker_count, worker_index};

/// Back-off after a failed accept (e.g. out of file descriptors), so the
/// loop does not spin while the connections already open keep being served.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// `[server.tls]` names a certificate or key that cannot be used.
    #[error("{config}: server.tls: {source}")]
    Tls {
        config: PathBuf,
        #[source]
        source: Box<TlsError>,
    },
    /// An upstream's `[tls]` names a CA file that cannot be used.
    #[error("{config}: upstream tls: {source}")]
    UpstreamTls {
        config: PathBuf,
        #[source]
        source: Box<TlsError>,
    },
    /// The metrics could not be declared (a bug: names are fixed).
    #[error("cannot declare the metrics: {source}")]
    Metrics {
        #[source]
        source: prometheus::Error,
    },
    /// The worker threads could not be started.
    #[error("cannot start the worker threads: {source}")]
    Workers {
        #[source]
        source: std::io::Error,
    },
}

/// A reload that was refused; the running config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read or is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An upstream's `[tls]` names a CA file that cannot be used.
    #[error("{config}: upstream tls: {source}")]
    UpstreamTls {
        config: PathBuf,
        #[source]
        source: Box<TlsError>,
    },
    /// `[server.tls]` names a certificate or key that cannot be used.
    #[error("{config}: server.tls: {source}")]
    Tls {
        config: PathBuf,
        #[source]
        source: Box<TlsError>,
    },
}

/// What the listeners share: the current config generation and readiness.
pub(crate) struct Live {
    pub gateway: ArcSwap<Gateway>,
    pub config: ArcSwap<Config>,
    /// The TLS acceptor of the current generation's `[server.tls]`, if any.
    pub tls: ArcSwapOption<TlsAcceptor>,
    pub ready: AtomicBool,
    pub metrics: Metrics,
}

/// A started sluice.
pub struct Running {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    live: Arc<Live>,
    stop: watch::Sender<bool>,
    proxy: JoinHandle<()>,
    admin: JoinHandle<()>,
    /// Kept until the listeners have drained; dropping them stops the threads.
    workers: Arc<Workers>,
}

impl Running {
    /// The address the proxy listens on (useful with port 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Swaps in a new config. Routes that still exist keep their queues and
    /// in-flight accounting; a removed route drains in the old generation.
    /// Listen addresses cannot move without a restart: a change is logged and
    /// ignored. The `[server.tls]` files are read again first: if they cannot
    /// be used, nothing changes and the reload is logged and counted as
    /// failed. Connections already open keep their certificate. Must be
    /// called inside the runtime sluice runs on.
    pub fn reload(&self, config: &Config) -> Result<(), ReloadError> {
        let failed = |err: ReloadError| {
            self.live.metrics.config_loaded(false);
            tracing::error!(error = %err, "config reload failed; keeping the running config");
            err
        };
        let acceptor = acceptor(&config.server).map_err(|source| {
            failed(ReloadError::Tls {
                config: config.source.clone(),
                source: Box::new(source),
            })
        })?;
        let old = self.live.config.load();
        for (what, before, after) in [
            ("server.listen", old.server.listen, config.server.listen),
            ("admin.listen", old.admin.listen, config.admin.listen),
        ] {
            if before != after {
                tracing::warn!(key = what, %before, %after, "a listen address changes only on restart; keeping the old one");
            }
        }
        if old.server.workers != config.server.workers {
            tracing::warn!(
                key = "server.workers",
                "the number of workers changes only on restart"
            );
        }
        for (key, changed) in [
            (
                "server.backlog",
                old.server.backlog != config.server.backlog,
            ),
            (
                "server.max_connections",
                old.server.max_connections != config.server.max_connections,
            ),
        ] {
            if changed {
                tracing::warn!(key, "changes only on restart; keeping the old value");
            }
        }
        let gateway = self.live.gateway.load().reload(config).map_err(|source| {
            failed(ReloadError::UpstreamTls {
                config: config.source.clone(),
                source: Box::new(source),
            })
        })?;
        self.live.gateway.store(Arc::new(gateway));
        self.live.config.store(Arc::new(config.clone()));
        self.live.tls.store(acceptor);
        self.live.metrics.config_loaded(true);
        tracing::info!(file = %config.source.display(), routes = config.routes.len(), "config reloaded");
        Ok(())
    }

    /// Reads `path` and swaps it in; a bad file keeps the running config,
    /// is logged with its file, line and key, and counted as a failed reload.
    pub fn reload_file(&self, path: &Path) -> Result<(), ReloadError> {
        match Config::load(path) {
            Ok(config) => self.reload(&config),
            Err(err) => {
                self.live.metrics.config_loaded(false);
                tracing::error!(error = %err, "config reload failed; keeping the running config");
                Err(err.into())
            }
        }
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.live.config.load_full()
    }

    /// Starts a graceful shutdown and returns at once: readiness goes false
    /// now, accepting stops after `shutdown_delay`.
    pub fn shutdown(&self) {
        self.live.ready.store(false, Ordering::SeqCst);
        let delay = self.live.config.load().server.shutdown_delay;
        let stop = self.stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            stop.send_replace(true);
        });
    }

    /// Waits until both listeners have finished (after [`Running::shutdown`]).
    pub async fn wait(self) {
        for task in [self.proxy, self.admin] {
            if let Err(err) = task.await {
                tracing::error!(%err, "listener task failed");
            }
        }
        drop(self.workers);
    }
}

/// Binds the proxy and admin listeners and starts serving: connections are
/// accepted here and served by `server.workers` threads (one per CPU by
/// default), each with its own single-threaded runtime, so a connection's
/// request and the upstream connection it borrows are driven by one thread
/// without cross-thread wake-ups. Routes, shapers and the admin listener run
/// on the runtime that calls this.
pub async fn start(config: &Config) -> Result<Running, StartError> {
    let tls = acceptor(&config.server).map_err(|source| StartError::Tls {
        config: config.source.clone(),
        source: Box::new(source),
    })?;
    let backlog = Backlog::probe(config.server.backlog);
    let bind = |addr: SocketAddr| {
        listener::bind(addr, backlog.in_force())
            .map(Arc::new)
            .map_err(|source| StartError::Bind { addr, source })
    };
    let proxy_listener = bind(config.server.listen)?;
    let admin_listener = bind(config.admin.listen)?;
    let proxy_addr = listener::local_addr(&proxy_listener).unwrap_or(config.server.listen);
    let admin_addr = listener::local_addr(&admin_listener).unwrap_or(config.admin.listen);

    // Before the gateway: its upstream pools keep one stack per worker.
    let workers = Arc::new(
        Workers::start(config.server.workers.unwrap_or_else(default_workers))
            .map_err(|source| StartError::Workers { source })?,
    );
    let metrics = Metrics::new().map_err(|source| StartError::Metrics { source })?;
    ListenerProbe::new(vec![
        ("proxy", Arc::downgrade(&proxy_listener)),
        ("admin", Arc::downgrade(&admin_listener)),
    ])
    .and_then(|probe| metrics.register(Box::new(probe)))
    .map_err(|source| StartError::Metrics { source })?;
    metrics.config_started();
    let max = config.server.max_connections;
    metrics.connections_max(max);
    let proxy_door = Door::new(
        max,
        Some(metrics.connections_open()),
        metrics.connections_refused("proxy"),
    );
    let admin_door = Door::new(
        ADMIN_MAX_CONNECTIONS,
        None,
        metrics.connections_refused("admin"),
    );
    let live = Arc::new(Live {
        gateway: ArcSwap::from_pointee(Gateway::new(config, metrics.clone()).map_err(
            |source| StartError::UpstreamTls {
                config: config.source.clone(),
                source: Box::new(source),
            },
        )?),
        config: ArcSwap::from_pointee(config.clone()),
        tls: ArcSwapOption::new(tls),
        ready: AtomicBool::new(true),
        metrics,
    });
    let (stop, stopped) = watch::channel(false);
    let proxy = tokio::spawn(serve_proxy(
        proxy_listener,
        proxy_door,
        live.clone(),
        workers.clone(),
        stopped.clone(),
    ));
    let admin = tokio::spawn(serve_admin(
        admin_listener,
        admin_door,
        live.clone(),
        stopped,
    ));
    backlog.log();
    tracing::info!(%proxy_addr, %admin_addr, backlog = backlog.in_force(), routes = config.routes.len(), "sluice is serving");
    Ok(Running {
        proxy_addr,
        admin_addr,
        live,
        stop,
        proxy,
        admin,
        workers,
    })
}

/// One worker per CPU.
fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The threads that serve proxy connections, each running a single-threaded
/// runtime; connections are dealt to them in turn. Dropping this stops them
/// (their remaining tasks are dropped).
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    fn start(count: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        crate::worker::starting(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("sluice-worker-{index}"))
                .spawn(move || {
                    crate::worker::set_index(index);
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Workers {
            handles,
            _stop: stops,
        })
    }

    /// How many workers there are (at least one).
    fn len(&self) -> usize {
        self.handles.len()
    }
}

/// The TLS acceptor for `[server.tls]` (reading its files now), or `None`
/// when the listener speaks plain HTTP.
fn acceptor(server: &ServerConfig) -> Result<Option<Arc<TlsAcceptor>>, TlsError> {
    let Some(tls) = &server.tls else {
        return Ok(None);
    };
    let config = tls::server_config(tls)?;
    Ok(Some(Arc::new(TlsAcceptor::from(config))))
}

/// hyper's default header count limit for HTTP/1.
const HYPER_MAX_HEADERS: usize = 100;

/// The most a request head to the admin listener may hold: its limits are
/// fixed, so a proxy tuned for tiny heads still answers a scraper.
const ADMIN_MAX_HEADER_BYTES: usize = 64 * 1024;

/// The connection builder for the proxy, with the configured limits on
/// request heads.
fn connection_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    builder_with_limits(
        server.header_timeout,
        server.max_header_bytes,
        server.max_headers,
    )
}

/// The connection builder for the admin listener: the proxy's header
/// timeout, hyper's own header limits.
fn admin_connection_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    builder_with_limits(
        server.header_timeout,
        ADMIN_MAX_HEADER_BYTES,
        HYPER_MAX_HEADERS,
    )
}

fn builder_with_limits(
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

/// The admin listener's connection cap: a scraper, a health checker and an
/// operator or two need far fewer; a flood of idle sockets gets 503s.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// At most this many connections are accepted before they are dealt to the
/// workers, so the workers start on a crowd while it is still being accepted.
const DEAL_BATCH: usize = 64;

/// At most this many connections are accepted in a row before the accept
/// loop yields to the rest of its runtime (the shapers' release tasks).
const ACCEPT_BURST: usize = 1024;

/// What to do with a connection, as its watch decides.
enum Watched {
    /// It started no request within `header_timeout` of accept: close now.
    Close,
    /// Idle for `idle_timeout`, or shutdown asked for: shut down gracefully.
    ShutDown,
}

/// The watch over one connection: its activity and the shutdown signal.
/// After it has said [`Watched::ShutDown`] once it stays pending, while
/// the graceful shutdown runs its course.
struct ConnectionWatch<'a> {
    activity: &'a Activity,
    stopped: Option<watch::Receiver<bool>>,
    done: bool,
    peer: SocketAddr,
}

impl ConnectionWatch<'_> {
    async fn next(&mut self) -> Watched {
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

/// One accepted connection on its way to a worker.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: Slot,
    at: Instant,
}

/// Accepts proxy connections until shutdown, deals them to the workers in
/// batches, then drains.
async fn serve_proxy(
    listener: Arc<Listener>,
    door: Arc<Door>,
    live: Arc<Live>,
    workers: Arc<Workers>,
    stopped: watch::Receiver<bool>,
) {
    let mut batches: Vec<Vec<Accepted>> = (0..workers.len()).map(|_| Vec::new()).collect();
    let mut turn = 0usize;
    let mut at_cap = false;
    let deal = |conns: &mut Vec<(std::net::TcpStream, SocketAddr)>| {
        let tls = live.tls.load_full();
        let at = Instant::now();
        for (stream, peer) in conns.drain(..) {
            let Some(slot) = door.enter() else {
                if !at_cap {
                    tracing::warn!(
                        max_connections = door_max(&live),
                        "connection limit reached; answering new connections 503 until one closes"
                    );
                }
                at_cap = true;
                door.refuse(stream, tls.is_some());
                continue;
            };
            at_cap = false;
            let worker = turn % batches.len();
            batches[worker].push(Accepted {
                stream,
                peer,
                slot,
                at,
            });
            turn = turn.wrapping_add(1);
        }
        for (index, batch) in batches.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let batch = std::mem::take(batch);
            workers.handles[index].spawn(serve_batch(
                batch,
                live.clone(),
                tls.clone(),
                stopped.clone(),
            ));
        }
    };
    accept_until_stopped(&listener, stopped.clone(), deal).await;
    // Drain: no new connections, queued requests answered now, in-flight
    // ones given the drain timeout.
    live.ready.store(false, Ordering::SeqCst);
    drop(listener);
    live.gateway.load().close();
    let drain_timeout = live.config.load().server.drain_timeout;
    tracing::info!(?drain_timeout, "draining");
    if tokio::time::timeout(drain_timeout, door.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            open = door.open(),
            "drain timeout passed with requests still in flight; closing them"
        );
    }
}

fn door_max(live: &Live) -> usize {
    live.config.load().server.max_connections
}

/// Starts serving a batch of connections on the worker this runs on.
async fn serve_batch(
    batch: Vec<Accepted>,
    live: Arc<Live>,
    tls: Option<Arc<TlsAcceptor>>,
    stopped: watch::Receiver<bool>,
) {
    let server = &live.config.load().server;
    let builder = Arc::new(connection_builder(server));
    let timeouts = (server.header_timeout, server.idle_timeout);
    for accepted in batch {
        let conn = ProxyConnection {
            live: live.clone(),
            builder: builder.clone(),
            stopped: stopped.clone(),
            timeouts,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let Accepted {
                stream,
                peer,
                slot,
                at,
            } = accepted;
            let _slot = slot;
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::warn!(%peer, %err, "cannot serve the connection");
                    return;
                }
            };
            match tls {
                None => conn.serve(stream, peer, at, false).await,
                // Boxed: a TLS session is large, and a plain connection's
                // task should not reserve room for one.
                Some(acceptor) => Box::pin(conn.serve_tls(acceptor, stream, peer, at)).await,
            }
        });
    }
}

/// What serving one proxy connection needs.
struct ProxyConnection {
    live: Arc<Live>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    stopped: watch::Receiver<bool>,
    /// `header_timeout` and `idle_timeout`.
    timeouts: (Duration, Duration),
}

impl ProxyConnection {
    /// Completes the TLS handshake (within `header_timeout` of accept), then
    /// serves.
    async fn serve_tls(
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
    async fn serve<S>(self, stream: S, peer: SocketAddr, accepted: Instant, secure: bool)
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

/// Serves the admin listener on this runtime, under [`ADMIN_MAX_CONNECTIONS`]
/// and the same header and idle timeouts as the proxy.
async fn serve_admin(
    listener: Arc<Listener>,
    door: Arc<Door>,
    live: Arc<Live>,
    stopped: watch::Receiver<bool>,
) {
    let admin = Arc::new(Admin::new(live.clone()));
    let deal = |conns: &mut Vec<(std::net::TcpStream, SocketAddr)>| {
        let server = &live.config.load().server;
        let builder = Arc::new(admin_connection_builder(server));
        let at = Instant::now();
        for (stream, peer) in conns.drain(..) {
            let Some(slot) = door.enter() else {
                door.refuse(stream, false);
                continue;
            };
            let admin = admin.clone();
            let builder = builder.clone();
            let activity = Activity::new(at, server.header_timeout, server.idle_timeout);
            tokio::spawn(async move {
                let _slot = slot;
                let stream = match TcpStream::from_std(stream) {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(%peer, %err, "cannot serve the admin connection");
                        return;
                    }
                };
                let service = service_fn(move |req: Request<Incoming>| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let conn = builder
                    .serve_connection(
                        TokioIo::new(stream),
                        Tracked::new(service, activity.clone()),
                    )
                    .into_owned();
                drive_connection!(
                    conn,
                    ConnectionWatch {
                        activity: &activity,
                        stopped: None,
                        done: false,
                        peer,
                    }
                );
            });
        }
    };
    accept_until_stopped(&listener, stopped, deal).await;
}

/// Accepts until shutdown is asked for. Each time the listener is readable
/// it is drained until the kernel's accept queue is empty — every waiting
/// connection taken at once, so none waits unseen — handing connections to
/// `deal` [`DEAL_BATCH`] at a time and yielding to the runtime every
/// [`ACCEPT_BURST`]. A failed accept for want of descriptors or memory is
/// logged (at most once a second) and retried after a pause, while the
/// connections already open are served.
async fn accept_until_stopped(
    listener: &Listener,
    mut stopped: watch::Receiver<bool>,
    mut deal: impl FnMut(&mut Vec<(std::net::TcpStream, SocketAddr)>),
) {
    let mut conns = Vec::with_capacity(DEAL_BATCH);
    let mut failed: u64 = 0;
    let mut logged: Option<Instant> = None;
    loop {
        let mut ready = tokio::select! {
            ready = listener.readable() => match ready {
                Ok(ready) => ready,
                Err(err) => {
                    tracing::error!(%err, "the listener cannot be polled; no longer accepting");
                    return;
                }
            },
            () = until_stopped(&mut stopped) => return,
        };
        let mut pause = false;
        for _ in 0..ACCEPT_BURST {
            match listener::accept_one(listener) {
                Ok(conn) => {
                    conns.push(conn);
                    if conns.len() == DEAL_BATCH {
                        deal(&mut conns);
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                Err(err) if listener::is_per_connection(&err) => {}
                Err(err) => {
                    failed += 1;
                    if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        let addr = listener::local_addr(listener);
                        tracing::warn!(%err, ?addr, failures = failed, "accept failed; backing off");
                        logged = Some(Instant::now());
                    }
                    pause = true;
                    break;
                }
            }
        }
        if !conns.is_empty() {
            deal(&mut conns);
        }
        drop(ready);
        if pause {
            tokio::select! {
                () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                () = until_stopped(&mut stopped) => return,
            }
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Resolves once shutdown has been asked for.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _stop = stopped.wait_for(|stop| *stop).await.is_ok();
}

/// [`until_stopped`], or never without a receiver.
async fn until_stopped_opt(stopped: Option<&mut watch::Receiver<bool>>) {
    match stopped {
        Some(stopped) => until_stopped(stopped).await,
        None => std::future::pending().await,
    }
}
