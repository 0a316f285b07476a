//! Building a config generation's gateway, in named steps: the upstreams
//! (kept when unchanged), the routes that name a known upstream, the
//! `[redis]` link, and each route with its live state.
//!
//! Invariant: on reload, routes that keep their name and upstream keep
//! their live state (queue, limiters, pause, override); upstreams whose
//! config is unchanged are the same objects, with their in-flight
//! accounting; a `[redis]` link whose config is unchanged is kept.

use std::sync::Arc;

use super::deferred::{AsyncMetrics, Deferred, Place, Wiring};
use super::route::{RedisShared, Route};
use super::router::Router;
use super::{Gateway, Telemetry};
use crate::config::{AsyncStore, Config, RedisConfig, RouteConfig, StorageConfig};
use crate::http::request_body::BodyLimits;
use crate::metrics::NO_ROUTE_LABEL;
use crate::store::RedisLink;
use crate::tls::TlsError;
use crate::upstream::Upstream;

impl Gateway {
    /// The gateway for `config`, keeping what it can of `previous`.
    pub(super) fn build(
        config: &Config,
        telemetry: Telemetry,
        previous: Option<&Gateway>,
    ) -> Result<Gateway, TlsError> {
        let upstreams = upstreams(config, &telemetry, previous)?;
        let kept = known_routes(config, &upstreams);
        let redis = config.redis.as_ref().and_then(|c| redis_link(c, previous));
        let mut routes = routes(&kept, &upstreams, &telemetry, previous, redis.as_ref());
        for (route, r) in routes.iter_mut().zip(kept.iter()) {
            route.deferred = deferred(
                r,
                route,
                (&config.storage, redis.as_ref()),
                &telemetry,
                previous,
            );
        }
        Ok(Gateway {
            router: Router::new(&kept),
            routes,
            upstreams,
            unrouted: telemetry.metrics.unrouted_for(NO_ROUTE_LABEL),
            trusted_proxies: config.server.trusted_proxies.clone(),
            max_body_bytes: config.server.max_body_bytes,
            body_limits: BodyLimits {
                buffer: config.server.request_buffer_bytes,
                max: config.server.max_body_bytes,
                idle: config.server.client_body_timeout,
            },
            send_timeout: config.server.send_timeout,
            access_log: config.log.access_log,
            telemetry,
            redis,
        })
    }
}

/// Each configured upstream: the previous generation's when its config is
/// unchanged, else a new one (taking over the old one's accounting).
fn upstreams(
    config: &Config,
    telemetry: &Telemetry,
    previous: Option<&Gateway>,
) -> Result<Vec<Arc<Upstream>>, TlsError> {
    config
        .upstreams
        .values()
        .map(|u| {
            let old = previous.and_then(|g| g.upstreams.iter().find(|o| o.name() == u.name));
            match old {
                Some(old) if old.serves(u, &config.dns) => Ok(old.clone()),
                _ => Upstream::new(u, &config.dns, &telemetry.upstream, old.map(|o| o.as_ref())),
            }
        })
        .collect()
}

/// The routes whose upstream exists. Config validation makes every route
/// name a known upstream; were one not to, the route is left out (of the
/// router too, which indexes the same list).
fn known_routes(config: &Config, upstreams: &[Arc<Upstream>]) -> Vec<RouteConfig> {
    config
        .routes
        .iter()
        .filter(|r| {
            let known = upstreams.iter().any(|u| u.name() == r.upstream);
            if !known {
                tracing::error!(route = %r.name, upstream = %r.upstream, "route names an unknown upstream; route left out");
            }
            known
        })
        .cloned()
        .collect()
}

/// The `[redis]` link global routes share: the previous one when its config
/// is unchanged, else a new one.
fn redis_link(config: &RedisConfig, previous: Option<&Gateway>) -> Option<RedisShared> {
    let kept = previous
        .and_then(|g| g.redis.as_ref())
        .filter(|r| r.config == *config);
    match kept {
        Some(kept) => Some(kept.clone()),
        // The loader checked the URL; should the client still refuse
        // it, global routes run on their fallback.
        None => {
            match RedisLink::with_password(&config.url, config.password.as_ref(), config.timeout) {
                Ok(link) => Some(RedisShared {
                    config: config.clone(),
                    link: Arc::new(link),
                }),
                Err(error) => {
                    tracing::error!(%error, "[redis] unusable; global routes run on their on_redis_error fallback");
                    None
                }
            }
        }
    }
}

/// Each route with its upstream, taking over the live state of the
/// previous generation's route of the same name.
fn routes(
    kept: &[RouteConfig],
    upstreams: &[Arc<Upstream>],
    telemetry: &Telemetry,
    previous: Option<&Gateway>,
    redis: Option<&RedisShared>,
) -> Vec<Route> {
    kept.iter()
        .filter_map(|r| {
            let upstream = upstreams.iter().find(|u| u.name() == r.upstream).cloned()?;
            let previous_state = previous
                .and_then(|g| g.routes.iter().find(|old| old.name == r.name))
                .map(|old| &old.state);
            Some(Route::new(r, upstream, telemetry, previous_state, redis))
        })
        .collect()
}

/// An async route's store and delivery: the previous generation's when
/// the route keeps its name and store (rewired to this generation's
/// upstream and limits), else opened (and replayed) now. A store that
/// cannot be opened is logged, and the route answers every request `503`.
fn deferred(
    r: &RouteConfig,
    route: &Route,
    (storage, redis): (&StorageConfig, Option<&RedisShared>),
    telemetry: &Telemetry,
    previous: Option<&Gateway>,
) -> Option<Arc<Deferred>> {
    let config = r.deferred?;
    let place = match config.store {
        AsyncStore::Local => Place::Local(storage),
        AsyncStore::Redis { .. } => match redis {
            Some(redis) => Place::Redis(redis),
            None => {
                tracing::error!(route = %r.name, "async route: [redis] unusable; every request is answered 503");
                return None;
            }
        },
    };
    let wiring = Wiring {
        upstream: route.upstream.clone(),
        state: route.state.clone(),
        config,
    };
    let kept = previous
        .and_then(|g| g.routes.iter().find(|old| old.name == r.name))
        .and_then(|old| old.deferred.clone())
        .filter(|d| d.uses(&place));
    if let Some(kept) = kept {
        kept.rewire(wiring);
        return Some(kept);
    }
    let metrics = AsyncMetrics::new(&telemetry.deferred, &r.name);
    match Deferred::open(&r.name, place, wiring, metrics) {
        Ok(deferred) => Some(deferred),
        Err(error) => {
            tracing::error!(route = %r.name, %error, "async route: cannot open its journal; every request is answered 503");
            None
        }
    }
}
