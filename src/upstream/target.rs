//! The targets of an upstream, and the claim a request holds on one.
//!
//! A request is counted on its target from the moment it is picked until
//! its [`TargetGuard`] drops, so a target's own `max_inflight` holds however
//! long the response body takes. On the plain HTTP/1.1 path the guard also
//! holds the connection, which goes back to the pool only if the response
//! was read to its end.
//!
//! Invariant: a target's in-flight count is raised once per claim and
//! lowered once, on the guard's drop, which also wakes one request waiting
//! for room and repays permits a lowered cap is owed.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::uri::Authority;
use parking_lot::Mutex;
use tokio::time::Instant;

use super::h1pool::{H1Pool, Lease};
use super::health::Health;
use super::metrics::{TargetMetrics, UpstreamErrorKind, UpstreamFamilies};
use super::{Upstream, UpstreamError};
use crate::config::{TargetConfig, UpstreamConfig};

/// Where a target came from: written in `targets`, or one address of a
/// name discovered by DNS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Origin {
    Static,
    Dns(Arc<str>),
}

/// One backend of an upstream.
pub(super) struct Target {
    pub(super) addr: Authority,
    pub(super) origin: Origin,
    /// Idle connections, for a plain HTTP/1.1 upstream.
    pub(super) h1: Option<Arc<H1Pool>>,
    pub(super) weight: u32,
    pub(super) max_inflight: Option<usize>,
    pub(super) inflight: AtomicUsize,
    /// EWMA of response-head latency, nanoseconds (0: no sample yet).
    pub(super) ewma_nanos: AtomicU64,
    pub(super) health: Mutex<Health>,
    pub(super) metrics: TargetMetrics,
}

impl Target {
    /// A target at `addr` with `spec`'s options, healthy until shown
    /// otherwise.
    pub(super) fn new(
        config: &UpstreamConfig,
        metrics: &UpstreamFamilies,
        spec: &TargetConfig,
        addr: Authority,
        origin: Origin,
    ) -> Target {
        // Plain HTTP/1.1 targets get a pool of their own.
        let h1 = config.tls.is_none() && !config.http2;
        // One idle stack per worker thread (the workers are started first).
        let stacks = NonZeroUsize::new(crate::worker::worker_count()).unwrap_or(NonZeroUsize::MIN);
        let target = Target {
            h1: h1.then(|| {
                H1Pool::new(
                    &addr,
                    stacks,
                    config.pool_max_idle_per_target,
                    config.pool_idle_timeout,
                    config.connect_timeout,
                )
            }),
            metrics: TargetMetrics::new(metrics, &config.name, addr.as_str()),
            addr,
            origin,
            weight: spec.weight.get(),
            max_inflight: spec.max_inflight.map(|m| m.get()),
            inflight: AtomicUsize::new(0),
            ewma_nanos: AtomicU64::new(0),
            health: Mutex::new(Health::default()),
        };
        target.metrics.healthy(true);
        target
    }

    /// Whether this target can stand for `spec` at `addr` from `origin`
    /// (same options), so it keeps its health, pool and in-flight count.
    pub(super) fn is(&self, spec: &TargetConfig, addr: &Authority, origin: &Origin) -> bool {
        self.addr == *addr
            && self.origin == *origin
            && self.weight == spec.weight.get()
            && self.max_inflight == spec.max_inflight.map(|m| m.get())
    }

    /// Takes a slot on the target; false (and nothing taken) if it lost the
    /// race for its last one.
    pub(super) fn take_slot(&self) -> bool {
        let now_inflight = self.inflight.fetch_add(1, Ordering::AcqRel) + 1;
        if self.max_inflight.is_some_and(|max| now_inflight > max) {
            self.inflight.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Whether the target takes traffic now and has room under its own cap.
    pub(super) fn has_room(&self, now: Instant) -> bool {
        self.health.lock().available(now)
            && self
                .max_inflight
                .is_none_or(|max| self.inflight.load(Ordering::Acquire) < max)
    }
}

/// A request in flight to one target; dropping it ends the count. On the
/// plain HTTP/1.1 path it also holds the connection, which goes back to the
/// pool if [`TargetGuard::finish`] was called (the response body was read
/// to its end).
pub struct TargetGuard {
    pub(super) upstream: Arc<Upstream>,
    /// Held by the claim, so a target that left the set drains: it lives
    /// until its last request is done.
    pub(super) target: Arc<Target>,
    pub(super) lease: Option<Lease>,
}

impl TargetGuard {
    /// The response body has been read to its end.
    pub fn finish(&mut self) {
        if let Some(lease) = &mut self.lease {
            lease.finish();
        }
    }

    /// The backend stopped sending its response body for `read_timeout`: a
    /// timeout in the upstream's and the target's error counts. Passive
    /// health and the adaptive limit already took the response head as it
    /// came; as with NGINX, a failure after the head ejects no target.
    pub fn body_timed_out(&self) {
        self.upstream.metrics.error(UpstreamErrorKind::Timeout);
        self.target.metrics.error();
    }

    /// The name of the upstream the target belongs to.
    pub fn upstream_name(&self) -> &str {
        &self.upstream.name
    }

    /// The target's address.
    pub fn addr(&self) -> &Authority {
        &self.target.addr
    }
}

impl Drop for TargetGuard {
    fn drop(&mut self) {
        self.target.inflight.fetch_sub(1, Ordering::AcqRel);
        self.upstream.pay_owed_permits();
        self.upstream.target_freed.notify_one();
    }
}

impl Upstream {
    /// Picks a target with room and counts the request on it, waiting for a
    /// slot if every healthy target is at its own cap (at most `timeout`).
    pub(super) async fn claim_target(
        self: &Arc<Self>,
        tried: &[Arc<Target>],
    ) -> Result<TargetGuard, UpstreamError> {
        // The clock is read only when no target is free at once.
        let mut give_up = None;
        loop {
            let freed = self.target_freed.notified();
            if let Some(target) = self.pick(tried) {
                return Ok(TargetGuard {
                    upstream: self.clone(),
                    target,
                    lease: None,
                });
            }
            let healthy = self.any_available(Instant::now());
            let give_up = *give_up.get_or_insert_with(|| Instant::now() + self.timeout);
            if !healthy || tokio::time::timeout_at(give_up, freed).await.is_err() {
                return Err(UpstreamError::NoTarget {
                    upstream: self.name.clone(),
                });
            }
        }
    }
}
