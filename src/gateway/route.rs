//! A route as served: its config-derived rules, and the live state that
//! survives a reload (queue, limiters, pause, rate override).
//!
//! On reload a route that keeps its name and upstream keeps its [`RouteState`]:
//! queued requests keep their places, in-flight accounting is untouched, and a
//! new rate applies to the requests already queued. A rate override from the
//! admin API lasts until it expires, across reloads. A `rate_per_target`
//! route follows its upstream's healthy target count the same way: each
//! change of the count pushes the new rate to the shaper, queued requests
//! included.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::Telemetry;
use super::classify::Classifier;
use super::relay::BodyReads;
use crate::config::{
    Discipline, Fairness, KeyLimitConfig, LimitBackend, OnRedisError, RedisConfig, RejectConfig,
    RouteConfig,
};
use crate::metrics::{DryRunLimit, RouteMetrics};
use crate::shaper::{Fallback, KeyedLimiter, Limiter, Limits, Shaper, SharedRate, TokenStore};
use crate::store::{RedisLink, RedisRouteMetrics, RedisStore};
use crate::upstream::Upstream;

/// A route in one config generation.
pub struct Route {
    pub name: String,
    pub upstream: Arc<Upstream>,
    /// The upstream's `read_timeout`, as a relay of this route applies it.
    pub(crate) reads: BodyReads,
    pub reject: RejectConfig,
    pub metrics: RouteMetrics,
    /// The protocols a client may switch to (`upgrades`), lower case.
    pub upgrades: Vec<String>,
    /// An async route's journal, book and delivery task (kept across
    /// reloads while the route keeps its name).
    pub deferred: Option<Arc<super::deferred::Deferred>>,
    /// The route has `[routes.async]` (its journal may have failed to open).
    pub asynchronous: bool,
    /// The Redis metrics of a global route.
    redis_metrics: Option<RedisRouteMetrics>,
    pub state: Arc<RouteState>,
}

/// The `[redis]` section of a config generation and its link, kept by the
/// next generation while the section is unchanged (one connection).
#[derive(Debug, Clone)]
pub struct RedisShared {
    pub config: RedisConfig,
    pub link: Arc<RedisLink>,
}

/// What a route keeps across reloads.
pub struct RouteState {
    classifier: ArcSwap<Classifier>,
    pub shaper: Shaper,
    /// Each key's own limit as configured (with its dry-run flag), and its limiter.
    key_limit: Sometimes<(KeyLimitConfig, KeyedLimiter)>,
    /// The route's rate in dry-run mode: consulted and counted, never applied.
    dry_limit: Sometimes<Limiter>,
    /// The limits from the config file, before any override.
    configured: Mutex<Limits>,
    rate_override: Mutex<Option<RateOverride>>,
    upstream_name: String,
    /// A global route's store: kept across reloads while the link and key
    /// stay the same, so the shaper keeps its leased tokens.
    store: Mutex<Option<Arc<RedisStore>>>,
    /// With `rate_per_target`: the upstream's healthy targets, as last told.
    healthy_targets: Mutex<Option<usize>>,
    /// The task following the upstream's healthy count (`rate_per_target`).
    follower: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// `sluice_route_rate_limit`, set to the rate in force by a route whose
    /// rate follows its upstream.
    rate_gauge: Mutex<Option<prometheus::Gauge>>,
}

/// A temporary rate set through the admin API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateOverride {
    pub rate: f64,
    pub burst: NonZeroU32,
    pub expires_at: Instant,
}

/// The shaper limits a route config asks for (`classes`: the classifier's
/// class count, the implicit default class included). Public for `simulate`.
pub fn limits_of(r: &RouteConfig, classes: usize) -> Limits {
    let dry_run = r.limit.is_some_and(|l| l.dry_run);
    Limits {
        rate: r.limit.filter(|_| !dry_run).map(|l| (l.rate, l.burst)),
        // An async route's queue holds only its delivery task, waiting for
        // its next token (up to `deliver_within`, e.g. while paused).
        capacity: match r.deferred {
            Some(_) => r.queue.capacity.max(1),
            None => r.queue.capacity,
        },
        timeout: match r.deferred {
            Some(a) => r.queue.timeout.max(a.deliver_within),
            None => r.queue.timeout,
        },
        classes,
        per_key: r.queue.fairness == Fairness::PerKey,
        aging: r.queue.aging,
        lifo_after: match r.queue.discipline {
            Discipline::Fifo => None,
            Discipline::AdaptiveLifo { threshold } => Some(threshold),
        },
        shared: match r.limit.map(|l| l.backend) {
            Some(LimitBackend::Redis(c)) => Some(SharedRate {
                lease: c.lease,
                fallback: match c.on_error {
                    OnRedisError::Local => Fallback::Local,
                    OnRedisError::Allow => Fallback::Allow,
                    OnRedisError::Deny => Fallback::Deny,
                },
                instances: c.expected_instances,
            }),
            _ => None,
        },
    }
}

/// `rate` per target times `targets` healthy ones (at least one), within
/// the largest rate a limiter takes.
pub fn scaled_rate(rate: f64, targets: usize) -> f64 {
    (rate * targets.max(1) as f64).min(crate::config::MAX_RATE)
}

fn dry_limit_of(r: &RouteConfig) -> Option<Arc<Limiter>> {
    r.limit
        .filter(|l| l.dry_run)
        .map(|l| Arc::new(Limiter::new(l.rate, l.burst)))
}

fn key_limit_of(r: &RouteConfig) -> Option<Arc<(KeyLimitConfig, KeyedLimiter)>> {
    r.key_limit
        .map(|k| Arc::new((k, KeyedLimiter::new(k.rate, k.burst, k.max_keys))))
}

impl Route {
    /// A route of a new config generation, reusing `previous` state when the
    /// route keeps its upstream.
    pub fn new(
        r: &RouteConfig,
        upstream: Arc<Upstream>,
        telemetry: &Telemetry,
        previous: Option<&Arc<RouteState>>,
        redis: Option<&RedisShared>,
    ) -> Route {
        let global = matches!(r.limit.map(|l| l.backend), Some(LimitBackend::Redis(_)));
        let redis_metrics = global.then(|| RedisRouteMetrics::new(&telemetry.redis, &r.name));
        // A global route without a link (an unusable `[redis]` section,
        // logged where the link was made) runs on its fallback.
        let store = redis
            .zip(redis_metrics.clone())
            .filter(|_| global)
            .map(|(redis, m)| {
                let kept = previous
                    .and_then(|s| s.store.lock().clone())
                    .filter(|s| s.uses(&redis.link, &redis.config.key_prefix, &r.name));
                kept.unwrap_or_else(|| {
                    Arc::new(RedisStore::new(
                        redis.link.clone(),
                        &redis.config.key_prefix,
                        &r.name,
                        m,
                    ))
                })
            });
        let dyn_store = store.clone().map(|s| s as Arc<dyn TokenStore>);
        // Published first: a rate that follows the upstream is set after.
        let metrics = telemetry.metrics.route(r);
        let state = match previous.filter(|s| s.upstream_name == r.upstream) {
            Some(state) => {
                *state.store.lock() = store;
                // The same store (same link and key) keeps the shaper's state.
                state.shaper.set_store(dyn_store);
                state.reconfigure(r);
                state.clone()
            }
            None => {
                let classifier = Classifier::new(r);
                let limits = limits_of(r, classifier.class_count());
                Arc::new(RouteState {
                    shaper: Shaper::with_store(
                        limits,
                        upstream.inflight_cap(),
                        upstream.gate(),
                        dyn_store,
                    ),
                    store: Mutex::new(store),
                    classifier: ArcSwap::from_pointee(classifier),
                    key_limit: Sometimes::new(key_limit_of(r)),
                    dry_limit: Sometimes::new(dry_limit_of(r)),
                    configured: Mutex::new(limits),
                    rate_override: Mutex::new(None),
                    upstream_name: r.upstream.clone(),
                    healthy_targets: Mutex::new(None),
                    follower: Mutex::new(None),
                    rate_gauge: Mutex::new(None),
                })
            }
        };
        let per_target = r.limit.is_some_and(|l| l.per_target && !l.dry_run);
        *state.rate_gauge.lock() = per_target.then(|| telemetry.metrics.route_rate_limit(&r.name));
        state.follow(&upstream, per_target);
        state.apply();
        Route {
            name: r.name.clone(),
            reads: BodyReads::new(&r.name, &upstream),
            upstream,
            reject: r.reject,
            metrics,
            upgrades: r.upgrades.clone(),
            deferred: None,
            asynchronous: r.deferred.is_some(),
            redis_metrics,
            state,
        }
    }

    /// The per-key limit: `Err(wait)` when the key is over it (and not in dry run).
    pub fn check_key(&self, key: u64, now: Instant) -> Result<(), Duration> {
        let Some(key_limit) = self.state.key_limit.load() else {
            return Ok(());
        };
        let Some((config, limiter)) = key_limit.as_deref() else {
            return Ok(());
        };
        match limiter.check(key, now) {
            Ok(()) => Ok(()),
            Err(_) if config.dry_run => {
                self.metrics.dry_run(DryRunLimit::Key);
                tracing::info!(route = %self.name, key, "dry run: per-key limit would answer 429");
                Ok(())
            }
            Err(wait) => Err(wait),
        }
    }

    /// The route's rate in dry-run mode: counts what it would have held back.
    pub fn check_dry_route_limit(&self, now: Instant) {
        let limited = self
            .state
            .dry_limit
            .load()
            .is_some_and(|limit| limit.as_deref().is_some_and(|l| l.check(now).is_err()));
        if limited {
            self.metrics.dry_run(DryRunLimit::Route);
            tracing::info!(route = %self.name, "dry run: route rate would queue or reject");
        }
    }

    /// Updates the sampled gauges of this route.
    pub fn sample_metrics(&self) {
        let state = &self.state;
        self.metrics.sample_queue(
            state.shaper.depth(),
            state.shaper.oldest_wait().as_secs_f64(),
        );
        for class in 0..state.classifier().class_count() {
            self.metrics
                .sample_class_depth(class, state.shaper.class_depth(class));
        }
        if let (Some(redis), Some(fallback)) = (&self.redis_metrics, state.shaper.shared_fallback())
        {
            redis.set_fallback(fallback);
        }
        if let Some(key_limit) = state.key_limit.load()
            && let Some((_, limiter)) = key_limit.as_deref()
        {
            self.metrics
                .sample_keys(limiter.keys(), limiter.evictions());
        }
    }
}

/// An optional, swappable value that is loaded only when it holds
/// something: most routes have no per-key or dry-run limit, and an
/// `ArcSwapOption` load (~130 instructions) per request found nothing.
struct Sometimes<T> {
    value: ArcSwapOption<T>,
    /// Whether `value` holds something (set after it, so a reader that sees
    /// `true` finds it; one that reads during a reload may miss a limit
    /// just configured, as any request then may).
    some: AtomicBool,
}

impl<T> Sometimes<T> {
    fn new(value: Option<Arc<T>>) -> Sometimes<T> {
        Sometimes {
            some: AtomicBool::new(value.is_some()),
            value: ArcSwapOption::new(value),
        }
    }

    fn store(&self, value: Option<Arc<T>>) {
        let some = value.is_some();
        self.value.store(value);
        self.some.store(some, Ordering::Release);
    }

    /// The value, if there may be one (`None` without a load when not).
    fn load(&self) -> Option<arc_swap::Guard<Option<Arc<T>>>> {
        self.some.load(Ordering::Acquire).then(|| self.value.load())
    }
}

impl RouteState {
    /// Applies a new config generation to live state.
    fn reconfigure(&self, r: &RouteConfig) {
        // The classifier keeps its seed, so key hashes (and with them key
        // turns and per-key state) carry over.
        let classifier = self.classifier.load().reconfigured(r);
        let classes = classifier.class_count();
        self.classifier.store(Arc::new(classifier));
        *self.configured.lock() = limits_of(r, classes);
        self.dry_limit.store(dry_limit_of(r));
        // An unchanged per-key limit keeps its keys; a changed one starts fresh.
        let unchanged = self
            .key_limit
            .load()
            .and_then(|limit| limit.as_deref().map(|(k, _)| *k))
            == r.key_limit;
        if !unchanged {
            self.key_limit.store(key_limit_of(r));
        }
        // `Route::new` applies the limits once the upstream's count is known.
    }

    /// With `per_target`, follows `upstream`'s healthy target count: each
    /// change applies the new rate. Replaces the previous follower (the
    /// route's upstream may be a new generation's).
    fn follow(self: &Arc<Self>, upstream: &Upstream, per_target: bool) {
        let mut follower = self.follower.lock();
        if let Some(task) = follower.take() {
            task.abort();
        }
        if !per_target {
            *self.healthy_targets.lock() = None;
            return;
        }
        let mut healthy = upstream.healthy_targets();
        *self.healthy_targets.lock() = Some(*healthy.borrow_and_update());
        let state = Arc::downgrade(self);
        *follower = Some(tokio::spawn(async move {
            // Ends when the upstream (the sender) is gone.
            while healthy.changed().await.is_ok() {
                let count = *healthy.borrow_and_update();
                let Some(state) = state.upgrade() else {
                    return;
                };
                *state.healthy_targets.lock() = Some(count);
                state.apply();
            }
        }));
    }

    /// With `rate_per_target`: the figure per target and the healthy
    /// targets it is multiplied by now.
    pub fn per_target(&self) -> Option<(f64, usize)> {
        let healthy = (*self.healthy_targets.lock())?;
        let (rate, _) = self.configured.lock().rate?;
        Some((rate, healthy))
    }

    /// The classifier of the current generation.
    pub fn classifier(&self) -> arc_swap::Guard<Arc<Classifier>> {
        self.classifier.load()
    }

    /// Pushes the effective limits (configured, or overridden) to the shaper.
    /// A rate per target is multiplied by the healthy targets (at least
    /// one: with none the gate holds everything anyway).
    fn apply(&self) {
        let mut limits = *self.configured.lock();
        if let Some(healthy) = *self.healthy_targets.lock() {
            limits.rate = limits
                .rate
                .map(|(rate, burst)| (scaled_rate(rate, healthy), burst));
            if let (Some(gauge), Some((rate, _))) = (&*self.rate_gauge.lock(), limits.rate) {
                gauge.set(rate);
            }
        }
        if let Some(o) = *self.rate_override.lock()
            && o.expires_at > Instant::now()
        {
            limits.rate = Some((o.rate, o.burst));
        }
        self.shaper.update(limits);
    }

    /// The limits from the config.
    pub fn configured(&self) -> Limits {
        *self.configured.lock()
    }

    /// The override in force, if any.
    pub fn rate_override(&self) -> Option<RateOverride> {
        self.rate_override
            .lock()
            .filter(|o| o.expires_at > Instant::now())
    }

    /// Sets a temporary rate until `ttl` passes; the configured rate returns then.
    pub fn set_rate_override(self: &Arc<Self>, rate: f64, burst: NonZeroU32, ttl: Duration) {
        let expires_at = Instant::now() + ttl;
        *self.rate_override.lock() = Some(RateOverride {
            rate,
            burst,
            expires_at,
        });
        self.apply();
        let state = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep_until(expires_at).await;
            if let Some(state) = state.upgrade() {
                state.expire_override(expires_at);
            }
        });
    }

    /// Drops the override now.
    pub fn clear_rate_override(&self) {
        *self.rate_override.lock() = None;
        self.apply();
    }

    /// Ends the override that was set to expire at `expires_at`, unless a
    /// newer one replaced it.
    fn expire_override(&self, expires_at: Instant) {
        let mut current = self.rate_override.lock();
        if current.is_some_and(|o| o.expires_at == expires_at) {
            *current = None;
            drop(current);
            self.apply();
        }
    }

    /// Tracked keys of the per-key limiter.
    pub fn tracked_keys(&self) -> usize {
        self.key_limit
            .load()
            .and_then(|limit| limit.as_deref().map(|(_, l)| l.keys()))
            .unwrap_or(0)
    }
}

impl Drop for RouteState {
    fn drop(&mut self) {
        if let Some(task) = self.follower.lock().take() {
            task.abort();
        }
    }
}
