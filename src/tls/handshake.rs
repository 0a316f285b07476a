//! The TLS handshake of one accepted connection: bounded in time from
//! accept (a client that opens TCP and never finishes its handshake is
//! closed), counted by result, timed, and logged only at `debug` (a client
//! can fail a handshake on every connection; the count is the signal).
//!
//! Invariant: every handshake ends in exactly one of ok, failed or
//! timed_out, and is counted once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::files::TlsError;
use super::metrics::{HandshakeMetrics, TlsFamilies};
use super::server::{Resumption, server_config};
use crate::config::ServerTls;

/// TLS termination for one config generation: its rustls config, its
/// handshake timeout and its metric handles.
pub struct Terminator {
    acceptor: TlsAcceptor,
    timeout: Duration,
    resumption: Resumption,
    metrics: HandshakeMetrics,
}

impl Terminator {
    /// Reads `tls`'s files and builds the terminator, keeping `previous`'s
    /// session-resumption state when its settings did not change (so a
    /// reload does not make every returning client pay a full handshake).
    pub fn new(
        tls: &ServerTls,
        families: &TlsFamilies,
        previous: Option<&Terminator>,
    ) -> Result<Terminator, TlsError> {
        let resumption = Resumption::carried_over(tls, previous.map(|p| &p.resumption))?;
        let config = server_config(tls, &resumption)?;
        Ok(Terminator {
            acceptor: TlsAcceptor::from(config),
            timeout: tls.handshake_timeout,
            resumption,
            metrics: families.handshake(),
        })
    }

    /// How long after accept a handshake may take (`handshake_timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The rustls config in force.
    pub fn config(&self) -> &Arc<rustls::ServerConfig> {
        self.acceptor.config()
    }

    /// Completes the handshake of a connection accepted at `accepted` by
    /// `deadline`; `None` (counted, logged at debug) if it failed or ran
    /// out of time, and the connection is to be closed.
    pub async fn handshake<S>(
        &self,
        stream: S,
        peer: SocketAddr,
        accepted: Instant,
        deadline: Instant,
    ) -> Option<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout_at(deadline, self.acceptor.accept(stream)).await {
            Ok(Ok(stream)) => {
                self.metrics
                    .established(stream.get_ref().1, accepted.elapsed());
                Some(stream)
            }
            Ok(Err(err)) => {
                self.metrics.failed.inc();
                tracing::debug!(%peer, %err, "TLS handshake failed");
                None
            }
            Err(_) => {
                self.metrics.timed_out.inc();
                tracing::debug!(%peer, "TLS handshake timed out");
                None
            }
        }
    }
}
