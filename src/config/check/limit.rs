//! A route's `limit` (rate, burst, backend) and `key_limit`.

use std::num::NonZeroU32;

use toml::Spanned;

use crate::config::bounds::{MAX_KEYS, check_burst, check_rate};
use crate::config::defaults::{DEFAULT_BURST, DEFAULT_MAX_KEYS, MAX_EXPECTED_INSTANCES, MAX_LEASE};
use crate::config::load::{Checked, Ctx};
use crate::config::model::{
    KeyLimitConfig, LimitBackend, LimitConfig, OnRedisError, RedisLimitConfig,
};
use crate::config::raw::{RawKeyLimit, RawLimit};

impl Ctx<'_> {
    /// `redis` says whether the file has a `[redis]` section, which a
    /// `backend = "redis"` needs.
    pub(crate) fn limit(&self, table: &Spanned<RawLimit>, redis: bool) -> Checked<LimitConfig> {
        let raw = table.get_ref();
        let (rate, per_target) = self.limit_rate(table)?;
        let burst = self.burst(raw.burst.as_ref())?;
        let backend = self.limit_backend(raw, redis)?;
        let dry_run = raw.dry_run.as_ref().is_some_and(|v| *v.get_ref());
        if let (true, LimitBackend::Redis(_), Some(v)) = (dry_run, backend, &raw.dry_run) {
            // Dry run only observes this instance's own limiter; a shared state
            // that is never spent would mean nothing to the fleet.
            return Err(self.invalid(
                v.span(),
                "dry run is local-only: not allowed with backend = \"redis\" (try the rate with backend = \"local\" first)",
            ));
        }
        if let (true, Some(v)) = (per_target, &raw.dry_run)
            && *v.get_ref()
        {
            // The dry-run limiter is built once from the file; it would not
            // follow the target count.
            return Err(self.invalid(
                v.span(),
                "dry run needs a fixed `rate`: not allowed with rate_per_target",
            ));
        }
        Ok(LimitConfig {
            rate,
            per_target,
            burst,
            dry_run,
            backend,
        })
    }

    /// Exactly one of `rate` and `rate_per_target`: the figure, and whether
    /// it is per healthy target.
    fn limit_rate(&self, table: &Spanned<RawLimit>) -> Checked<(f64, bool)> {
        let raw = table.get_ref();
        match (&raw.rate, &raw.rate_per_target) {
            (Some(rate), None) => Ok((self.rate(rate)?, false)),
            (None, Some(per_target)) => Ok((self.rate(per_target)?, true)),
            (Some(a), Some(b)) => {
                // Blame the later of the two.
                let later = if a.span().start > b.span().start { a } else { b };
                Err(self.invalid(
                    later.span(),
                    "give either `rate` (the route's) or `rate_per_target` (per healthy target of its upstream), not both",
                ))
            }
            (None, None) => Err(self.invalid(
                table.span(),
                "needs `rate` (requests per second) or `rate_per_target` (per healthy target of the upstream)",
            )),
        }
    }

    /// `backend`, and the keys that only go with "redis": `lease`,
    /// `on_redis_error` and `expected_instances`.
    pub(crate) fn limit_backend(&self, raw: &RawLimit, redis: bool) -> Checked<LimitBackend> {
        let backend = match &raw.backend {
            None => None,
            Some(v) => match v.get_ref().as_str() {
                "local" => None,
                "redis" => Some(v),
                other => {
                    return Err(self.invalid(
                        v.span(),
                        format!("unknown backend {other:?}: expected \"local\" or \"redis\""),
                    ));
                }
            },
        };
        let Some(backend) = backend else {
            // Blame the first of the redis-only keys written.
            let stray = [
                ("lease", raw.lease.as_ref().map(Spanned::span)),
                (
                    "on_redis_error",
                    raw.on_redis_error.as_ref().map(Spanned::span),
                ),
                (
                    "expected_instances",
                    raw.expected_instances.as_ref().map(Spanned::span),
                ),
            ]
            .into_iter()
            .filter_map(|(field, span)| Some((field, span?)))
            .min_by_key(|(_, span)| span.start);
            if let Some((_, span)) = stray {
                return Err(self.invalid(
                    span,
                    "only allowed with backend = \"redis\" (the default backend is \"local\")",
                ));
            }
            return Ok(LimitBackend::Local);
        };
        if !redis {
            return Err(self.invalid(
                backend.span(),
                "backend = \"redis\" needs a [redis] section with `url`, e.g. [redis] url = \"redis://127.0.0.1:6379\"",
            ));
        }
        let mut limit = RedisLimitConfig::default();
        if let Some(v) = &raw.lease {
            limit.lease = self.u32_from_1(v, MAX_LEASE)?;
        }
        if let Some(v) = &raw.on_redis_error {
            limit.on_error = self.on_redis_error(v)?;
        }
        if let Some(v) = &raw.expected_instances {
            limit.expected_instances = self.u32_from_1(v, MAX_EXPECTED_INSTANCES)?;
        }
        Ok(LimitBackend::Redis(limit))
    }

    pub(crate) fn on_redis_error(&self, v: &Spanned<String>) -> Checked<OnRedisError> {
        match v.get_ref().as_str() {
            "local" => Ok(OnRedisError::Local),
            "allow" => Ok(OnRedisError::Allow),
            "deny" => Ok(OnRedisError::Deny),
            other => Err(self.invalid(
                v.span(),
                format!(
                    "unknown on_redis_error {other:?}: expected \"local\", \"allow\" or \"deny\""
                ),
            )),
        }
    }

    pub(crate) fn key_limit(&self, raw: &RawKeyLimit) -> Checked<KeyLimitConfig> {
        Ok(KeyLimitConfig {
            rate: self.rate(&raw.rate)?,
            burst: self.burst(raw.burst.as_ref())?,
            max_keys: raw
                .max_keys
                .as_ref()
                .map_or(Ok(DEFAULT_MAX_KEYS), |v| self.usize_from_1(v, MAX_KEYS))?,
            dry_run: raw.dry_run.unwrap_or(false),
        })
    }

    /// Requests per second, within [`check_rate`]'s bounds (NaN fails too).
    pub(crate) fn rate(&self, v: &Spanned<f64>) -> Checked<f64> {
        check_rate(*v.get_ref()).map_err(|why| self.invalid(v.span(), why))
    }

    pub(crate) fn burst(&self, v: Option<&Spanned<i64>>) -> Checked<NonZeroU32> {
        v.map_or(Ok(DEFAULT_BURST), |v| {
            check_burst(*v.get_ref()).map_err(|why| self.invalid(v.span(), why))
        })
    }
}
