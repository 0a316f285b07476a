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
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::admin::Admin;
use crate::config::{Config, ConfigError, ServerConfig};
use crate::metrics::Metrics;
use crate::proxy::Gateway;
use crate::tls::{self, Secure, TlsError};

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
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let proxy_listener = bind(config.server.listen).await?;
    let admin_listener = bind(config.admin.listen).await?;
    let local_addr = |l: &TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    let proxy_addr = local_addr(&proxy_listener, config.server.listen);
    let admin_addr = local_addr(&admin_listener, config.admin.listen);

    // Before the gateway: its upstream pools keep one stack per worker.
    let workers = Arc::new(
        Workers::start(config.server.workers.unwrap_or_else(default_workers))
            .map_err(|source| StartError::Workers { source })?,
    );
    let metrics = Metrics::new().map_err(|source| StartError::Metrics { source })?;
    metrics.config_started();
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
        live.clone(),
        workers.clone(),
        stopped.clone(),
    ));
    let admin = tokio::spawn(serve_admin(admin_listener, live.clone(), stopped));
    tracing::info!(%proxy_addr, %admin_addr, routes = config.routes.len(), "sluice is serving");
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

thread_local! {
    /// The index of the worker thread this is, if it is one.
    static WORKER_INDEX: std::cell::Cell<Option<usize>> = const { std::cell::Cell::new(None) };
}

/// Worker threads started in this process (the most of any `start`).
static WORKER_COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// The index of the calling worker thread; `None` off the workers.
pub fn worker_index() -> Option<usize> {
    WORKER_INDEX.with(std::cell::Cell::get)
}

/// How many worker threads serve connections (0 before any start).
pub fn worker_count() -> usize {
    WORKER_COUNT.load(Ordering::Relaxed)
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
    next: std::sync::atomic::AtomicUsize,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    fn start(count: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        WORKER_COUNT.fetch_max(count, Ordering::Relaxed);
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
                    WORKER_INDEX.with(|i| i.set(Some(index)));
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Workers {
            handles,
            next: std::sync::atomic::AtomicUsize::new(0),
            _stop: stops,
        })
    }

    /// The runtime of the next worker in turn.
    fn next(&self) -> &tokio::runtime::Handle {
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[turn % self.handles.len()]
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

/// The connection builder with the configured limits on request heads.
fn connection_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let mut http1 = builder.http1();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_timeout)
        .max_buf_size(server.max_header_bytes)
        .keep_alive(true);
    // hyper's own limit is 100 headers, parsed into a fixed array; an
    // explicit limit makes it fill a fresh vector of that size per request.
    if server.max_headers != HYPER_MAX_HEADERS {
        http1.max_headers(server.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

async fn serve_proxy(
    listener: TcpListener,
    live: Arc<Live>,
    workers: Arc<Workers>,
    mut stopped: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let max = live.config.load().server.max_connections;
    let slots = Arc::new(Semaphore::new(max));
    live.metrics.connections(0, max);
    let mut at_cap = false;
    loop {
        // A free connection slot first: at the cap, new connections wait in
        // the listen backlog instead of being accepted and starved.
        let full = slots.available_permits() == 0;
        if full && !at_cap {
            tracing::warn!(
                max_connections = max,
                "connection limit reached; not accepting until one closes"
            );
        }
        at_cap = full;
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(permit) => ConnectionSlot { permit, max, live: live.clone() },
                Err(_) => break,
            },
            () = until_stopped(&mut stopped) => break,
        };
        let Some((stream, peer)) = accept(&listener, &mut stopped).await else {
            break;
        };
        slot.report(0);
        let _ = stream.set_nodelay(true);
        // Handed to a worker's event loop: out of this one first.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(%peer, %err, "cannot hand the connection to a worker");
                continue;
            }
        };
        // Taken now, so a shutdown waits for a connection still in its handshake.
        let watcher = graceful.watcher();
        let live = live.clone();
        // The acceptor of the generation in force when the connection arrived.
        let tls = live.tls.load_full();
        workers.next().spawn(async move {
            let _slot = slot;
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(err) => {
                    tracing::warn!(%peer, %err, "cannot serve the connection");
                    return;
                }
            };
            match tls {
                None => serve_connection(stream, peer, live, false, watcher).await,
                // Boxed: a TLS session is large, and a plain connection's
                // task should not reserve room for one.
                Some(acceptor) => Box::pin(serve_tls(acceptor, stream, peer, live, watcher)).await,
            }
        });
    }
    // Drain: no new connections, queued requests answered now, in-flight
    // ones given the drain timeout.
    live.ready.store(false, Ordering::SeqCst);
    drop(listener);
    live.gateway.load().close();
    let drain_timeout = live.config.load().server.drain_timeout;
    tracing::info!(?drain_timeout, "draining");
    if tokio::time::timeout(drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout passed with requests still in flight; closing them");
    }
}

/// A connection's place under `server.max_connections`, given back (and
/// the gauge updated) when the connection ends.
struct ConnectionSlot {
    permit: tokio::sync::OwnedSemaphorePermit,
    max: usize,
    live: Arc<Live>,
}

impl ConnectionSlot {
    /// Sets the open-connections gauge, `leaving` of them about to close.
    fn report(&self, leaving: usize) {
        let free = self.permit.semaphore().available_permits() + leaving;
        self.live
            .metrics
            .connections(self.max.saturating_sub(free), self.max);
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        // The permit is released after this body: count it as gone already.
        self.report(1);
    }
}

/// Completes the TLS handshake (within `header_timeout`), then serves.
async fn serve_tls(
    acceptor: Arc<TlsAcceptor>,
    stream: TcpStream,
    peer: SocketAddr,
    live: Arc<Live>,
    watcher: Watcher,
) {
    let timeout = live.config.load().server.header_timeout;
    match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => serve_connection(stream, peer, live, true, watcher).await,
        Ok(Err(err)) => tracing::debug!(%peer, %err, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, ?timeout, "TLS handshake timed out"),
    }
}

/// Serves one accepted (and, with TLS, handshaken) connection until it closes
/// or the graceful shutdown closes it. `secure` marks its requests with
/// [`Secure`].
async fn serve_connection<S>(
    stream: S,
    peer: SocketAddr,
    live: Arc<Live>,
    secure: bool,
    watcher: Watcher,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let builder = connection_builder(&live.config.load().server);
    let service = service_fn(move |mut req: Request<Incoming>| {
        if secure {
            req.extensions_mut().insert(Secure);
        }
        // The request keeps the generation it started with.
        let gateway = live.gateway.load_full();
        async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
    });
    // With upgrades: WebSocket and other Upgrade requests are tunneled.
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(stream), service)
        .into_owned();
    if let Err(err) = watcher.watch(conn).await {
        tracing::debug!(%peer, %err, "connection ended with an error");
    }
}

async fn serve_admin(listener: TcpListener, live: Arc<Live>, mut stopped: watch::Receiver<bool>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let admin = Arc::new(Admin::new(live));
    while let Some((stream, _)) = accept(&listener, &mut stopped).await {
        let admin = admin.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let admin = admin.clone();
            async move { Ok::<_, Infallible>(admin.handle(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%err, "admin connection ended with an error");
            }
        });
    }
}

/// The next connection, or `None` once shutdown has been asked for. A failed
/// accept (e.g. out of file descriptors) is logged and retried after a pause.
async fn accept(
    listener: &TcpListener,
    stopped: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    // Failures in a row (e.g. out of file descriptors for as long as the
    // connections already open last) are logged once a second, not each time.
    let mut failed: u64 = 0;
    let mut logged: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => return Some(conn),
                Err(err) => {
                    failed += 1;
                    if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        let addr = listener.local_addr().ok();
                        tracing::warn!(%err, ?addr, failures = failed, "accept failed; backing off");
                        logged = Some(tokio::time::Instant::now());
                    }
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            () = until_stopped(stopped) => return None,
        }
    }
}

/// Resolves once shutdown has been asked for.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _stop = stopped.wait_for(|stop| *stop).await.is_ok();
}
