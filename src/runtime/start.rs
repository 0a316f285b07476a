//! Starting and running sluice: [`start`] binds the proxy and admin
//! listeners, starts the workers and serves the first config generation;
//! [`Running`] is the handle that reloads, reports and shuts it down.
//!
//! Invariant: a reload swaps the whole generation atomically or changes
//! nothing — a request keeps the generation it started with, and a
//! connection the TLS certificate it was accepted with. [`Running::shutdown`]
//! turns readiness false first, keeps serving for `shutdown_delay` so a load
//! balancer can stop sending, then stops accepting, answers still-queued
//! requests 503 and gives in-flight ones up to `drain_timeout`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::accept::serve_proxy;
use super::admin::{ADMIN_MAX_CONNECTIONS, serve_admin};
use super::connection::terminator;
use super::door::Door;
use super::listen::{self, Listener, ListenerProbe};
use super::live::Live;
use super::workers::{Workers, default_workers};
use crate::config::Backlog;
use crate::config::{Config, ConfigError};
use crate::gateway::{Gateway, Telemetry};
use crate::metrics::Metrics;
use crate::tls::{Terminator, TlsError, TlsFamilies};

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
    /// A target name of an upstream with `discovery = "dns"` gave no
    /// address at start (and none was ever known).
    #[error("{config}: DNS discovery: no address for {}", names.join(", "))]
    Discovery { config: PathBuf, names: Vec<String> },
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
        let previous = self.live.tls.load();
        let terminator = terminator(&config.server, &self.live.tls_families, previous.as_deref())
            .map_err(|source| {
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
        self.live.tls.store(terminator);
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
    let backlog = Backlog::probe(config.server.backlog);
    let proxy_listener = bind(config.server.listen, &backlog)?;
    let admin_listener = bind(config.admin.listen, &backlog)?;
    let proxy_addr = listen::local_addr(&proxy_listener).unwrap_or(config.server.listen);
    let admin_addr = listen::local_addr(&admin_listener).unwrap_or(config.admin.listen);

    // Before the gateway: its upstream pools keep one stack per worker.
    let workers = Arc::new(
        Workers::start(config.server.workers.unwrap_or_else(default_workers))
            .map_err(|source| StartError::Workers { source })?,
    );
    let metrics = metrics(&proxy_listener, &admin_listener)?;
    let tls_families = TlsFamilies::register(metrics.registry())
        .map_err(|source| StartError::Metrics { source })?;
    let tls =
        terminator(&config.server, &tls_families, None).map_err(|source| StartError::Tls {
            config: config.source.clone(),
            source: Box::new(source),
        })?;
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
    let live = live(config, (tls, tls_families), metrics)?;
    // Every discovered name resolved once, before the first request.
    let missing = live.gateway.load().first_resolution().await;
    if !missing.is_empty() {
        return Err(StartError::Discovery {
            config: config.source.clone(),
            names: missing,
        });
    }
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

/// A listener on `addr` with the backlog in force.
fn bind(addr: SocketAddr, backlog: &Backlog) -> Result<Arc<Listener>, StartError> {
    listen::bind(addr, backlog.in_force())
        .map(Arc::new)
        .map_err(|source| StartError::Bind { addr, source })
}

/// The metrics, with the probe of both listeners' accept queues.
fn metrics(proxy: &Arc<Listener>, admin: &Arc<Listener>) -> Result<Metrics, StartError> {
    let metrics = Metrics::new().map_err(|source| StartError::Metrics { source })?;
    ListenerProbe::new(vec![
        ("proxy", Arc::downgrade(proxy)),
        ("admin", Arc::downgrade(admin)),
    ])
    .and_then(|probe| metrics.register(Box::new(probe)))
    .map_err(|source| StartError::Metrics { source })?;
    metrics.config_started();
    Ok(metrics)
}

/// The first generation, ready to serve.
fn live(
    config: &Config,
    (tls, tls_families): (Option<Arc<Terminator>>, TlsFamilies),
    metrics: Metrics,
) -> Result<Arc<Live>, StartError> {
    let telemetry =
        Telemetry::new(metrics.clone()).map_err(|source| StartError::Metrics { source })?;
    let gateway = Gateway::new(config, telemetry).map_err(|source| StartError::UpstreamTls {
        config: config.source.clone(),
        source: Box::new(source),
    })?;
    Ok(Arc::new(Live {
        gateway: ArcSwap::from_pointee(gateway),
        config: ArcSwap::from_pointee(config.clone()),
        tls: ArcSwapOption::new(tls),
        tls_families,
        ready: AtomicBool::new(true),
        metrics,
    }))
}
