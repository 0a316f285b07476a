//! The Redis families, declared and registered here, by the store they
//! describe: calls for each route's global rate limit, their duration, the
//! tokens granted, and whether the route runs on its fallback; and the
//! handles resolved once per global route when a generation is built.
//!
//! Invariant: a route's series appear (at zero) as soon as the route is set
//! up, before its first call, so dashboards and alerts see them at once.

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry,
};

use crate::metrics::{counter_vec, histogram_vec, int_gauge_vec};

/// Buckets for calls to Redis: 100 µs (a call on the same host) to 1 s
/// (beyond any sane `[redis] timeout`).
const REDIS_CALL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The Redis families, labelled by route.
#[derive(Clone)]
pub struct RedisFamilies {
    redis_calls: IntCounterVec,
    redis_call_seconds: HistogramVec,
    redis_tokens: IntCounterVec,
    redis_fallback: IntGaugeVec,
}

impl RedisFamilies {
    /// Declares and registers the families in `r`; fails only if a name
    /// or label set is invalid or already taken, which the tests would show.
    pub fn register(r: &Registry) -> Result<RedisFamilies, prometheus::Error> {
        let route = &["route"];
        Ok(RedisFamilies {
            redis_calls: counter_vec(
                r,
                "sluice_redis_calls_total",
                "Calls to Redis for the route's global rate limit, by result (ok, error, timeout); \
                 errors and timeouts mean the route runs on its fallback until Redis answers again.",
                &["route", "result"],
            )?,
            redis_call_seconds: histogram_vec(
                r,
                "sluice_redis_call_seconds",
                "Duration of calls to Redis for the route's global rate limit, whatever their \
                 result; tokens wait this long to be leased.",
                REDIS_CALL_BUCKETS,
                route,
            )?,
            redis_tokens: counter_vec(
                r,
                "sluice_redis_tokens_total",
                "Tokens of the route's global rate limit that Redis granted to this instance; \
                 summed over the fleet, its rate stays within the route's configured rate.",
                route,
            )?,
            redis_fallback: int_gauge_vec(
                r,
                "sluice_redis_fallback",
                "1 while the route runs on its configured fallback because Redis is unreachable, \
                 0 while its global rate limit is held in Redis.",
                route,
            )?,
        })
    }
}

/// One route's handles for its global (Redis-held) rate limit.
#[derive(Clone)]
pub struct RedisRouteMetrics {
    calls_ok: IntCounter,
    calls_error: IntCounter,
    calls_timeout: IntCounter,
    call_seconds: Histogram,
    tokens: IntCounter,
    fallback: IntGauge,
}

/// How a call to Redis ended, as counted in `sluice_redis_calls_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedisCallResult {
    /// Redis answered.
    Ok,
    /// Refused, reset, or an error reply: Redis or the link to it is broken.
    Error,
    /// No answer within `[redis] timeout`: Redis is slow or unreachable.
    Timeout,
}

impl RedisRouteMetrics {
    /// Handles for one route's global rate limit in Redis; its series appear
    /// (at zero) as soon as the route is set up, before the first call.
    pub fn new(families: &RedisFamilies, route: &str) -> RedisRouteMetrics {
        let fallback = families.redis_fallback.with_label_values(&[route]);
        fallback.set(0);
        let calls = |result: &str| families.redis_calls.with_label_values(&[route, result]);
        RedisRouteMetrics {
            calls_ok: calls("ok"),
            calls_error: calls("error"),
            calls_timeout: calls("timeout"),
            call_seconds: families.redis_call_seconds.with_label_values(&[route]),
            tokens: families.redis_tokens.with_label_values(&[route]),
            fallback,
        }
    }

    /// Counts one call to Redis and how long it took.
    pub fn call(&self, result: RedisCallResult, seconds: f64) {
        match result {
            RedisCallResult::Ok => self.calls_ok.inc(),
            RedisCallResult::Error => self.calls_error.inc(),
            RedisCallResult::Timeout => self.calls_timeout.inc(),
        }
        self.call_seconds.observe(seconds);
    }

    /// Counts tokens Redis granted.
    pub fn tokens(&self, granted: u32) {
        self.tokens.inc_by(u64::from(granted));
    }

    /// Whether the route runs on its fallback (Redis unreachable) now.
    pub fn set_fallback(&self, on: bool) {
        self.fallback.set(i64::from(on));
    }
}
