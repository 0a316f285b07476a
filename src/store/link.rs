//! The link to one Redis (a `[redis]` section): one lazily opened
//! multiplexed connection shared by every route whose limit it holds.
//!
//! Invariant: every call, connecting included, ends within the link's
//! timeout, and a call that fails on the link (refused, reset, timed out)
//! drops the cached connection so the next call starts afresh.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ErrorKind, RedisError, Script};

use super::metrics::RedisCallResult;
use super::script::{GCRA_LUA, ScriptArgs, parse_reply};
use crate::config::redis_url::parse_url;
use crate::config::secret::Secret;
use crate::shaper::{GcraParams, StoreError, Taken};

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
pub(super) struct CallError {
    pub(super) result: RedisCallResult,
    pub(super) message: String,
    /// The connection is suspect (I/O error, timeout): the next call reconnects.
    broken: bool,
}

impl RedisLink {
    /// Parses `url` (see [`validate_url`](super::validate_url)); connects only on the first call,
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
    pub(super) async fn take(
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
        let reply: (i64, i64, i64, i64) = self
            .bounded("script", async |mut connection| {
                self.script
                    .key(key)
                    .arg(&args.interval_us)
                    .arg(&args.tolerance_us)
                    .arg(want.get())
                    .arg(&args.horizon_us)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        parse_reply(reply, want).map_err(|message| CallError {
            result: RedisCallResult::Error,
            message: format!("redis {}: {message}", self.target),
            broken: false,
        })
    }

    /// Runs `script` with `keys` and `args` (the async routes' stream
    /// scripts), connecting first if need be; ends within the timeout
    /// whatever Redis does. The error is a message naming the target.
    pub async fn eval(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<redis::Value, String> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key.as_str());
        }
        for arg in args {
            invocation.arg(arg.as_slice());
        }
        self.bounded("script", async |mut connection| {
            invocation.invoke_async(&mut connection).await
        })
        .await
        .map_err(|err| err.message)
    }

    /// Runs one command, as [`RedisLink::eval`].
    pub async fn query(&self, cmd: &redis::Cmd) -> Result<redis::Value, String> {
        self.bounded("command", async |mut connection| {
            cmd.query_async(&mut connection).await
        })
        .await
        .map_err(|err| err.message)
    }

    /// `call` on the connection, within the timeout; a failure on the link
    /// drops the connection (as [`RedisLink::take`]).
    async fn bounded<T>(
        &self,
        doing: &str,
        call: impl AsyncFnOnce(MultiplexedConnection) -> Result<T, RedisError>,
    ) -> Result<T, CallError> {
        let mut generation = None;
        let attempt = async {
            let (current, connection) = self.connection().await?;
            generation = Some(current);
            call(connection)
                .await
                .map_err(|err| self.redis_error(doing, &err))
        };
        let outcome = match tokio::time::timeout(self.timeout, attempt).await {
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

#[cfg(test)]
mod tests {
    use super::*;

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
        use crate::config::secret::SecretSource;
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
}
