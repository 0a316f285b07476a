//! The state every listener shares: the current config generation (its
//! gateway and config), the TLS acceptor, readiness and the metrics.
//!
//! Invariant: each field is swapped whole, so a reader sees one generation
//! or the next, never a mix within a field; a request loads the gateway
//! once and keeps it.

use std::sync::atomic::AtomicBool;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::config::Config;
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::tls::{Terminator, TlsFamilies};

/// What the listeners share: the current config generation and readiness.
pub(crate) struct Live {
    pub gateway: ArcSwap<Gateway>,
    pub config: ArcSwap<Config>,
    /// The TLS terminator of the current generation's `[server.tls]`, if any.
    pub tls: ArcSwapOption<Terminator>,
    /// The TLS families, registered once for every generation's terminator.
    pub tls_families: TlsFamilies,
    pub ready: AtomicBool,
    pub metrics: Metrics,
}
