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

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script};

use crate::metrics::{RedisCallResult, RedisRouteMetrics};
use crate::secret::{REDACTED, Secret};
use crate::shaper::{GcraParams, StoreError, StoreFuture, Taken, TokenStore};

/// The GCRA script; its SHA1 is what `EVALSHA` names, and the full text is
/// sent again (`EVAL`) whenever Redis answers NOSCRIPT (restart, `SCRIPT FLUSH`).
const GCRA_LUA: &str = include_str!("gcra.lua");

/// What a URL for `[redis]` looks like, for error messages.
const URL_SHAPE: &str =
    "redis://[user[:password]@]host[:port][/db], redis+unix:///path or unix:///path";

/// Checks a `[redis] url` as [`RedisLink::new`] will, without any I/O, so
/// the config loader can refuse a bad one at load time. The message never
/// repeats the URL, which may hold a password.
pub fn validate_url(url: &str) -> Result<(), String> {
    parse_url(url).map(|_| ())
}

/// The password a `[redis] url` holds, percent-decoded as the client sends it.
pub fn url_password(url: &str) -> Option<String> {
    let client = Client::open(url).ok()?;
    client
        .get_connection_info()
        .redis_settings()
        .password()
        .map(str::to_string)
}

/// The URL with its password (if any) replaced by [`REDACTED`], for
/// `sluice check` and `Debug`. A URL the client cannot read is shown only
/// by its scheme.
pub fn redact_url(url: &str) -> String {
    match redis::parse_redis_url(url) {
        Some(mut parsed) => {
            if parsed.password().is_some() && parsed.set_password(Some(REDACTED)).is_err() {
                return format!("{}://{REDACTED}", parsed.scheme());
            }
            parsed.to_string()
        }
        // Unparsable text may hold anything.
        None if url.contains('@') => REDACTED.to_string(),
        None => url.to_string(),
    }
}

fn parse_url(url: &str) -> Result<Client, String> {
    if let Some(parsed) = redis::parse_redis_url(url)
        && matches!(parsed.scheme(), "rediss" | "valkeys")
    {
        return Err("TLS to Redis is not supported; use a local TLS tunnel or redis://".into());
    }
    Client::open(url).map_err(|err| {
        // The crate's text ("Invalid database number - InvalidClientConfig")
        // names the fault but never the URL; the kind adds nothing here.
        let why = err.to_string();
        let why = why.strip_suffix(" - InvalidClientConfig").unwrap_or(&why);
        format!("invalid Redis URL: {why}; expected {URL_SHAPE}")
    })
}

/// One Redis (a `[redis]` section), shared by all the routes whose limits it
/// holds: one lazily opened multiplexed connection, every call bounded by
/// `timeout`.
pub struct RedisLink {
    client: Client,
    /// Every call (connect, then the script) ends within this.
    timeout: Duration,
    /// `host:port` (or socket path) for messages: the URL without its password.
    target: String,
    script: Script,
    /// The connection calls share, tagged with its generation so that a call
    /// failing on an old connection does not drop a newer one.
    cached: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Connections opened so far; numbers the cached one.
    opened: AtomicU64,
    /// One connect at a time: callers arriving while the link is down wait
    /// for that attempt (within their own timeout) rather than each opening
    /// a socket.
    connecting: tokio::sync::Mutex<()>,
}

impl fmt::Debug for RedisLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLink")
            .field("target", &self.target)
            .field("timeout", &self.timeout)
            .field("connected", &self.cached.lock().is_some())
            .finish()
    }
}

/// Why a call failed, and whether the link is to blame.
#[derive(Debug)]
struct CallError {
    result: RedisCallResult,
    message: String,
    /// The connection is suspect (I/O error, timeout): the next call reconnects.
    broken: bool,
}

impl RedisLink {
    /// Parses `url` (see [`validate_url`]); connects only on the first call,
    /// so sluice starts, on its fallbacks, while Redis is down.
    pub fn new(url: &str, timeout: Duration) -> Result<RedisLink, StoreError> {
        RedisLink::with_password(url, None, timeout)
    }

    /// As [`RedisLink::new`], sending `password` (from `[redis]
    /// password_file` or `password_env`) in place of any in the URL (the
    /// config allows only one of them).
    pub fn with_password(
        url: &str,
        password: Option<&Secret>,
        timeout: Duration,
    ) -> Result<RedisLink, StoreError> {
        let mut client = parse_url(url).map_err(StoreError)?;
        if let Some(password) = password {
            let info = client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_password(password.expose());
            client = Client::open(info.set_redis_settings(settings))
                .map_err(|err| StoreError(format!("invalid Redis settings: {err}")))?;
        }
        let target = client.get_connection_info().addr().to_string();
        Ok(RedisLink {
            client,
            timeout,
            target,
            script: Script::new(GCRA_LUA),
            cached: Mutex::new(None),
            opened: AtomicU64::new(0),
            connecting: tokio::sync::Mutex::new(()),
        })
    }

    /// Runs the GCRA script on `key`, connecting first if need be; ends
    /// within the timeout whatever Redis does.
    async fn take(
        &self,
        key: &str,
        want: NonZeroU32,
        params: GcraParams,
    ) -> Result<Taken, CallError> {
        let args = ScriptArgs::new(params).map_err(|message| CallError {
            result: RedisCallResult::Error,
            message,
            broken: false,
        })?;
        let mut generation = None;
        let call = async {
            let (current, mut connection) = self.connection().await?;
            generation = Some(current);
            let reply: (i64, i64, i64, i64) = self
                .script
                .key(key)
                .arg(&args.interval_us)
                .arg(&args.tolerance_us)
                .arg(want.get())
                .arg(&args.horizon_us)
                .invoke_async(&mut connection)
                .await
                .map_err(|err| self.redis_error("script", &err))?;
            parse_reply(reply, want).map_err(|message| CallError {
                result: RedisCallResult::Error,
                message: format!("redis {}: {message}", self.target),
                broken: false,
            })
        };
        let outcome = match tokio::time::timeout(self.timeout, call).await {
            Ok(outcome) => outcome,
            Err(_elapsed) => Err(CallError {
                result: RedisCallResult::Timeout,
                message: format!("redis {}: no answer within {:?}", self.target, self.timeout),
                broken: true,
            }),
        };
        if let Err(err) = &outcome
            && err.broken
        {
            self.drop_connection(generation, &err.message);
        }
        outcome
    }

    /// The cached connection, or a new one.
    async fn connection(&self) -> Result<(u64, MultiplexedConnection), CallError> {
        if let Some(cached) = self.cached.lock().clone() {
            return Ok(cached);
        }
        let _connecting = self.connecting.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(cached) = self.cached.lock().clone() {
            return Ok(cached);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout));
        let connection = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| self.redis_error("connect", &err))?;
        let generation = self.opened.fetch_add(1, Ordering::Relaxed) + 1;
        *self.cached.lock() = Some((generation, connection.clone()));
        tracing::info!(redis = %self.target, "connected to redis");
        Ok((generation, connection))
    }

    /// Forgets the connection a failed call used (if it is still the cached
    /// one), so the next call reconnects.
    fn drop_connection(&self, generation: Option<u64>, why: &str) {
        let mut cached = self.cached.lock();
        let is_current = match (&*cached, generation) {
            (Some((current, _)), Some(failed)) => *current == failed,
            // Timed out before a connection was in hand: nothing to drop.
            (Some(_), None) | (None, _) => false,
        };
        if is_current {
            *cached = None;
            tracing::warn!(redis = %self.target, error = why, "dropped the redis connection; the next call reconnects");
        }
    }

    fn redis_error(&self, doing: &str, err: &RedisError) -> CallError {
        let result = if err.is_timeout() {
            RedisCallResult::Timeout
        } else {
            RedisCallResult::Error
        };
        CallError {
            result,
            message: format!("redis {}: {doing}: {err}", self.target),
            broken: is_link_error(err),
        }
    }
}

/// Whether an error puts the connection in doubt. An error reply (a script
/// error, say) proves the link works, unless it asks for a new connection
/// (e.g. READONLY after a failover, when the name may now lead elsewhere).
fn is_link_error(err: &RedisError) -> bool {
    !matches!(err.kind(), ErrorKind::Server(_)) || err.is_unrecoverable_error()
}

/// The script's ARGV[1], ARGV[2] and ARGV[4] (ARGV[3], `want`, goes as an
/// integer).
#[derive(Debug, Clone, PartialEq)]
struct ScriptArgs {
    interval_us: String,
    tolerance_us: String,
    horizon_us: String,
}

impl ScriptArgs {
    /// Microseconds as decimal strings: `Display` of an `f64` is the shortest
    /// text that reads back to the same value, so nothing is lost on the way.
    fn new(params: GcraParams) -> Result<ScriptArgs, String> {
        if params.interval.is_zero() {
            return Err("the route's rate has a zero interval".to_string());
        }
        Ok(ScriptArgs {
            interval_us: micros(params.interval).to_string(),
            tolerance_us: micros(params.tolerance).to_string(),
            horizon_us: micros(params.horizon).to_string(),
        })
    }
}

/// A duration in (fractional) microseconds, exact to the nanosecond for any
/// duration under 104 days.
fn micros(duration: Duration) -> f64 {
    duration.as_nanos() as f64 / 1000.0
}

/// Checks the script's `{granted, next_in_us, ready, later_in_us}` against
/// what was asked.
fn parse_reply(
    (granted, next_in_us, ready, later_in_us): (i64, i64, i64, i64),
    want: NonZeroU32,
) -> Result<Taken, String> {
    let granted = u32::try_from(granted)
        .ok()
        .filter(|g| *g <= want.get())
        .ok_or_else(|| format!("the script granted {granted} of {want} tokens"))?;
    let ready = u32::try_from(ready)
        .ok()
        .filter(|r| *r <= granted)
        .ok_or_else(|| format!("the script said {ready} of {granted} tokens are ready"))?;
    let micros = |us: i64, what: &str| {
        u64::try_from(us)
            .map(Duration::from_micros)
            .map_err(|_| format!("the script answered a negative {what} ({us} us)"))
    };
    Ok(Taken {
        granted,
        next_in: micros(next_in_us, "wait")?,
        ready,
        later_in: micros(later_in_us, "reservation time")?,
    })
}

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

    fn want(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[test]
    fn urls_for_plain_tcp_and_unix_sockets_pass() {
        for url in [
            "redis://127.0.0.1",
            "redis://127.0.0.1:6380/2",
            "redis://:secret@redis.internal:6379",
            "redis://user:secret@[::1]:6379",
            "unix:///run/redis/redis.sock",
        ] {
            assert_eq!(validate_url(url), Ok(()), "{url}");
        }
    }

    #[test]
    fn tls_urls_are_refused_saying_why() {
        for url in ["rediss://127.0.0.1:6379", "valkeys://cache:6379"] {
            let err = validate_url(url).unwrap_err();
            assert!(err.contains("TLS"), "{err}");
            assert!(err.contains("redis://"), "{err}");
        }
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_a_password() {
        for url in [
            "",
            "127.0.0.1:6379",
            "http://user:hunter2@127.0.0.1",
            "redis://user:hunter2@127.0.0.1/notadb",
            "redis://user:hunter2@0.0.0.0:6379",
            "redis://user:hunter2@127.0.0.1/?protocol=9",
        ] {
            let err = validate_url(url).unwrap_err();
            assert!(err.contains("redis://"), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{url}: {err}");
        }
    }

    #[test]
    fn the_link_names_its_target_without_the_password() {
        let link = RedisLink::new(
            "redis://user:hunter2@127.0.0.1:6390",
            Duration::from_secs(1),
        )
        .unwrap();
        let shown = format!("{link:?}");
        assert!(shown.contains("127.0.0.1:6390"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn a_password_from_a_file_or_variable_is_what_the_client_sends() {
        use crate::secret::SecretSource;
        let password = Secret::new("from-file", SecretSource::File("/run/secrets/r".into()));
        let link = RedisLink::with_password(
            "redis://sluice@127.0.0.1:6390/2",
            Some(&password),
            Duration::from_secs(1),
        )
        .unwrap();
        let settings = link.client.get_connection_info().redis_settings();
        assert_eq!(settings.password(), Some("from-file"));
        // The rest of the URL is kept.
        assert_eq!(settings.username(), Some("sluice"));
        assert_eq!(settings.db(), 2);
        assert!(!format!("{link:?}").contains("from-file"));
        let plain = RedisLink::new("redis://127.0.0.1:6390", Duration::from_secs(1)).unwrap();
        assert_eq!(
            plain
                .client
                .get_connection_info()
                .redis_settings()
                .password(),
            None
        );
    }

    #[test]
    fn urls_are_shown_without_their_password() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            (
                "redis://user:hunter2@cache:6379/1",
                "redis://user:%3Credacted%3E@cache:6379/1",
            ),
            ("redis://:hunter2@cache", "redis://:%3Credacted%3E@cache"),
            ("unix:///run/redis.sock", "unix:///run/redis.sock"),
            ("not a url hunter2@x", REDACTED),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
        assert_eq!(url_password("redis://u:p%40ss@h").as_deref(), Some("p@ss"));
        assert_eq!(url_password("redis://h"), None);
    }

    #[test]
    fn script_args_are_exact_microseconds() {
        let args = ScriptArgs::new(GcraParams {
            interval: Duration::from_nanos(333_333_333),
            tolerance: Duration::from_millis(1500),
            horizon: Duration::from_secs(2),
        })
        .unwrap();
        assert_eq!(args.interval_us, "333333.333");
        assert_eq!(args.tolerance_us, "1500000");
        assert_eq!(args.horizon_us, "2000000");
        let zero = GcraParams {
            interval: Duration::ZERO,
            tolerance: Duration::ZERO,
            horizon: Duration::ZERO,
        };
        assert!(ScriptArgs::new(zero).is_err());
    }

    #[test]
    fn replies_are_checked_against_the_request() {
        assert_eq!(
            parse_reply((3, 250_000, 1, 50_000), want(5)),
            Ok(Taken {
                granted: 3,
                next_in: Duration::from_millis(250),
                ready: 1,
                later_in: Duration::from_millis(50),
            })
        );
        assert_eq!(parse_reply((0, 0, 0, 0), want(1)).map(|t| t.granted), Ok(0));
        assert!(parse_reply((6, 0, 0, 0), want(5)).is_err());
        assert!(parse_reply((-1, 0, 0, 0), want(5)).is_err());
        assert!(parse_reply((1, -5, 1, 0), want(5)).is_err());
        assert!(
            parse_reply((2, 0, 3, 0), want(5)).is_err(),
            "more ready than granted"
        );
        assert!(parse_reply((2, 0, 1, -1), want(5)).is_err());
    }

    #[test]
    fn the_key_names_prefix_and_route() {
        assert_eq!(route_key("sluice", "seckill"), "sluice:route:seckill");
    }
}
