//! The listeners: the proxy (HTTP/1.1 with keep-alive and HTTP/2 with prior
//! knowledge on one port) and the admin port (/metrics, /healthz, /readyz).
//!
//! [`start`] binds both and serves until [`Running::shutdown`]: then readiness
//! goes false, accepting stops, still-queued requests are answered 503, and
//! in-flight requests get up to `drain_timeout` to finish.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, ServerConfig};
use crate::metrics::Metrics;
use crate::proxy::{Body, Gateway, local};

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
}

/// A started sluice.
pub struct Running {
    proxy_addr: SocketAddr,
    admin_addr: SocketAddr,
    stop: watch::Sender<bool>,
    proxy: JoinHandle<()>,
    admin: JoinHandle<()>,
}

impl Running {
    /// The address the proxy listens on (useful with port 0).
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// Starts a graceful shutdown; returns at once.
    pub fn shutdown(&self) {
        self.stop.send_replace(true);
    }

    /// Waits until both listeners have finished (after [`Running::shutdown`]).
    pub async fn wait(self) {
        for task in [self.proxy, self.admin] {
            if let Err(err) = task.await {
                tracing::error!(%err, "listener task failed");
            }
        }
    }
}

/// Binds the proxy and admin listeners and starts serving.
pub async fn start(config: &Config) -> Result<Running, StartError> {
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

    let metrics = Metrics::new();
    metrics.config_started();
    let gateway = Arc::new(Gateway::new(config, metrics));
    let ready = Arc::new(AtomicBool::new(true));
    let (stop, stopped) = watch::channel(false);
    let proxy = tokio::spawn(serve_proxy(
        proxy_listener,
        gateway.clone(),
        config.server.clone(),
        ready.clone(),
        stopped.clone(),
    ));
    let admin = tokio::spawn(serve_admin(admin_listener, gateway, ready, stopped));
    tracing::info!(%proxy_addr, %admin_addr, routes = config.routes.len(), "sluice is serving");
    Ok(Running {
        proxy_addr,
        admin_addr,
        stop,
        proxy,
        admin,
    })
}

/// The connection builder with the configured limits on request heads.
fn connection_builder(server: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(server.header_timeout)
        .max_buf_size(server.max_header_bytes)
        .max_headers(server.max_headers)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_bytes).unwrap_or(u32::MAX));
    builder
}

async fn serve_proxy(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    server: ServerConfig,
    ready: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let builder = connection_builder(&server);
    let graceful = GracefulShutdown::new();
    while let Some((stream, peer)) = accept(&listener, &mut stopped).await {
        let _ = stream.set_nodelay(true);
        let gateway = gateway.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let gateway = gateway.clone();
            async move { Ok::<_, Infallible>(gateway.handle(req, peer).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%peer, %err, "connection ended with an error");
            }
        });
    }
    // Drain: not ready, no new connections, queued requests answered now,
    // in-flight ones given the drain timeout.
    ready.store(false, Ordering::SeqCst);
    drop(listener);
    gateway.close();
    tracing::info!(drain_timeout = ?server.drain_timeout, "draining");
    if tokio::time::timeout(server.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timeout passed with requests still in flight; closing them");
    }
}

async fn serve_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    ready: Arc<AtomicBool>,
    mut stopped: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    while let Some((stream, _)) = accept(&listener, &mut stopped).await {
        let gateway = gateway.clone();
        let ready = ready.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let response = admin_response(&req, &gateway, &ready);
            async move { Ok::<_, Infallible>(response) }
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

fn admin_response(
    req: &Request<Incoming>,
    gateway: &Gateway,
    ready: &AtomicBool,
) -> Response<Body> {
    match req.uri().path() {
        "/metrics" => {
            let mut response = Response::new(crate::proxy::text_body(gateway.render_metrics()));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            response
        }
        "/healthz" => local(StatusCode::OK, "ok\n"),
        "/readyz" if ready.load(Ordering::SeqCst) => local(StatusCode::OK, "ready\n"),
        "/readyz" => local(StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        _ => local(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// The next connection, or `None` once shutdown has been asked for. A failed
/// accept (e.g. out of file descriptors) is logged and retried after a pause.
async fn accept(
    listener: &TcpListener,
    stopped: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => return Some(conn),
                Err(err) => {
                    let addr = listener.local_addr().ok();
                    tracing::warn!(%err, ?addr, "accept failed; backing off");
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
