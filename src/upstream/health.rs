//! Target health: passive (a target failing `consecutive_failures` times in
//! a row is ejected, for longer each time it fails again after coming
//! back) and optionally active (a background probe of `path`).
//!
//! Invariant: the upstream's [`Gate`](crate::shaper::Gate) is open exactly
//! while some target is available, re-checked at every verdict and when an
//! ejection ends, so the shaper holds requests in the queue while none is,
//! rather than failing each at once.

use std::sync::{Arc, Weak};

use http::{Request, Uri};
use tokio::time::Instant;

use super::Upstream;
use super::target::Target;
use crate::config::{ActiveHealth, PassiveHealth};
use crate::http::request_body::RequestBody;

/// One target's health record.
#[derive(Debug, Default)]
pub(super) struct Health {
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections since the last success: each doubles the next one.
    ejections: u32,
    /// Active probe verdict (true until probes say otherwise).
    probe_down: bool,
    probe_successes: u32,
    probe_failures: u32,
}

impl Health {
    pub(super) fn available(&self, now: Instant) -> bool {
        !self.probe_down && self.ejected_until.is_none_or(|until| until <= now)
    }
}

impl Upstream {
    /// Passive health: counts one attempt's verdict on a target, and ejects
    /// it after `consecutive_failures` failures in a row.
    pub(super) fn passive(self: &Arc<Self>, target: &Target, failed: bool) {
        let passive: PassiveHealth = self.config.passive_health;
        let mut health = target.health.lock();
        if !failed {
            if health.ejections > 0 && health.consecutive_failures == 0 {
                tracing::info!(upstream = %self.name, target = %target.addr, "target recovered");
            }
            health.consecutive_failures = 0;
            health.ejections = 0;
            return;
        }
        health.consecutive_failures += 1;
        if passive.consecutive_failures == 0
            || health.consecutive_failures < passive.consecutive_failures
        {
            return;
        }
        let factor = 2u32.saturating_pow(health.ejections.min(16));
        let ejection = passive
            .base_ejection
            .saturating_mul(factor)
            .min(passive.max_ejection);
        let until = Instant::now() + ejection;
        health.ejected_until = Some(until);
        health.ejections += 1;
        health.consecutive_failures = 0;
        drop(health);
        tracing::warn!(upstream = %self.name, target = %target.addr, ?ejection, "target ejected after consecutive failures");
        target.metrics.healthy(false);
        self.refresh_health();
        self.refresh_at(until);
    }

    /// Counts the targets again (re-opening the gate if it closed) at
    /// `until`, when an ejection ends.
    fn refresh_at(self: &Arc<Self>, until: Instant) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(until).await;
            if let Some(upstream) = weak.upgrade() {
                upstream.refresh_health();
            }
        });
    }

    /// For targets taken over from the previous generation while ejected:
    /// this generation counts them again when their ejection ends.
    pub(super) fn refresh_after_ejections(self: &Arc<Self>) {
        let now = Instant::now();
        let ends: Vec<Instant> = self
            .members
            .load()
            .targets
            .iter()
            .filter_map(|t| t.health.lock().ejected_until.filter(|&until| until > now))
            .collect();
        for until in ends {
            self.refresh_at(until);
        }
    }

    /// Records an active probe's verdict on one target.
    fn probed(&self, target: &Target, ok: bool, active: &ActiveHealth) {
        let mut health = target.health.lock();
        if ok {
            health.probe_failures = 0;
            health.probe_successes += 1;
            if health.probe_down && health.probe_successes >= active.healthy_threshold.get() {
                health.probe_down = false;
                health.ejected_until = None;
                health.ejections = 0;
                tracing::info!(upstream = %self.name, target = %target.addr, "active check: target healthy");
            }
        } else {
            health.probe_successes = 0;
            health.probe_failures += 1;
            if !health.probe_down && health.probe_failures >= active.unhealthy_threshold.get() {
                health.probe_down = true;
                tracing::warn!(upstream = %self.name, target = %target.addr, "active check: target unhealthy");
            }
        }
        drop(health);
        self.refresh_health();
    }

    /// Targets of the current set that take traffic now.
    pub(super) fn available_count(&self, now: Instant) -> usize {
        self.members
            .load()
            .targets
            .iter()
            .filter(|t| t.health.lock().available(now))
            .count()
    }

    pub(super) fn any_available(&self, now: Instant) -> bool {
        self.available_count(now) > 0
    }

    /// Counts the healthy targets again: opens the gate while some target
    /// is available, shuts it otherwise, and tells the routes whose rate
    /// follows the count. Called on every verdict, when an ejection ends
    /// and when the set changes.
    pub(super) fn refresh_health(&self) {
        let healthy = self.available_count(Instant::now());
        self.gate.set(healthy > 0);
        self.metrics.healthy_targets(healthy);
        self.healthy.send_if_modified(|count| {
            let changed = *count != healthy;
            *count = healthy;
            changed
        });
    }
}

/// The active health check loop of one upstream; ends once the upstream
/// is gone.
pub(super) async fn probe(upstream: Weak<Upstream>, active: ActiveHealth) {
    let mut tick = tokio::time::interval(active.interval);
    loop {
        tick.tick().await;
        let Some(pool) = upstream.upgrade() else {
            return;
        };
        let members = pool.members.load_full();
        for target in &members.targets {
            let uri = pool.target_uri(
                &Uri::from_maybe_shared(active.path.clone())
                    .unwrap_or_else(|_| Uri::from_static("/")),
                &target.addr,
            );
            let mut req = Request::new(RequestBody::Empty);
            *req.uri_mut() = uri;
            let ok = matches!(
                tokio::time::timeout(active.timeout, pool.client.request(req)).await,
                Ok(Ok(response)) if response.status().is_success()
            );
            pool.probed(target, ok, &active);
        }
    }
}
