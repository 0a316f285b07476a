//! The Redis-backed [`TokenStore`](crate::shaper::TokenStore): global route limits.
//!
//! A [`RedisLink`] is one `[redis]` section: a URL, a timeout and at most one
//! multiplexed connection, shared by every route. A [`RedisStore`] is one
//! route's GCRA state in it (one key), updated atomically by `gcra.lua` on
//! Redis's own clock, so the fleet's instances share one rate however their
//! clocks drift.
//!
//! Invariant: every call, connecting included, ends within the link's
//! timeout, and a call that fails on the link (refused, reset, timed out)
//! drops the cached connection so the next call starts afresh. Retrying and
//! backing off are the caller's (the shaper's) business, not this module's.
//!
//! Contents: `link` (the connection and its timeouts), `script` (the
//! GCRA script, its arguments and reply), `metrics` (the Redis families,
//! registered here).

mod link;
pub mod metrics;
mod script;

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Instant;

pub use self::link::RedisLink;
pub use self::metrics::{RedisCallResult, RedisFamilies, RedisRouteMetrics};
pub use self::script::GCRA_LUA;
pub use crate::config::{redact_url, url_password, validate_url};
use crate::shaper::{GcraParams, StoreError, StoreFuture, TokenStore};

/// One route's global rate: its GCRA state is the key
/// `{key_prefix}:route:{route}` in the link's Redis.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    link: Arc<RedisLink>,
    key: String,
    metrics: RedisRouteMetrics,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("key", &self.inner.key)
            .field("link", &self.inner.link)
            .finish()
    }
}

impl RedisStore {
    pub fn new(
        link: Arc<RedisLink>,
        key_prefix: &str,
        route: &str,
        metrics: RedisRouteMetrics,
    ) -> RedisStore {
        RedisStore {
            inner: Arc::new(StoreInner {
                link,
                key: route_key(key_prefix, route),
                metrics,
            }),
        }
    }

    /// The Redis key holding the route's TAT.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    /// Whether this store is the one `link`, `key_prefix` and `route` make.
    pub fn uses(&self, link: &Arc<RedisLink>, key_prefix: &str, route: &str) -> bool {
        Arc::ptr_eq(&self.inner.link, link) && self.inner.key == route_key(key_prefix, route)
    }
}

fn route_key(key_prefix: &str, route: &str) -> String {
    format!("{key_prefix}:route:{route}")
}

impl TokenStore for RedisStore {
    fn take(&self, want: NonZeroU32, params: GcraParams) -> StoreFuture {
        let inner = self.inner.clone();
        Box::pin(async move {
            let started = Instant::now();
            let outcome = inner.link.take(&inner.key, want, params).await;
            let seconds = started.elapsed().as_secs_f64();
            match outcome {
                Ok(taken) => {
                    inner.metrics.call(RedisCallResult::Ok, seconds);
                    inner.metrics.tokens(taken.granted);
                    Ok(taken)
                }
                Err(err) => {
                    inner.metrics.call(err.result, seconds);
                    tracing::debug!(key = %inner.key, error = %err.message, "redis call failed");
                    Err(StoreError(err.message))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_names_prefix_and_route() {
        assert_eq!(route_key("sluice", "seckill"), "sluice:route:seckill");
    }
}
