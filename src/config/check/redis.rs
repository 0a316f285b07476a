//! `[redis]`: the URL (and its password), key prefix and timeout.

use std::time::Duration;

use toml::Spanned;

use crate::config::bounds::PLACEHOLDER_REFUSED;
use crate::config::defaults::{
    DEFAULT_KEY_PREFIX, DEFAULT_REDIS_TIMEOUT, MAX_KEY_PREFIX_BYTES, MAX_REDIS_TIMEOUT,
};
use crate::config::load::{Checked, Ctx};
use crate::config::model::RedisConfig;
use crate::config::raw::RawRedis;
use crate::config::secret::REDACTED;
use crate::config::values::human;

impl Ctx<'_> {
    /// `[redis]`: the URL is checked by the Redis client itself (no
    /// connection is made), so what loads here is what it can dial.
    pub(crate) fn redis(&self, raw: &RawRedis) -> Checked<RedisConfig> {
        let url = self.redis_url(&raw.url)?;
        let password = self.secret_from(
            "password",
            raw.password_file.as_ref(),
            raw.password_env.as_ref(),
        )?;
        let password = match password {
            None => None,
            Some((_, span)) if crate::config::redis_url::url_password(&url).is_some() => {
                return Err(self.invalid(
                    span,
                    "the url already holds a password; give the password one way only",
                ));
            }
            Some((password, span)) => {
                if password.expose() == REDACTED {
                    return Err(self.invalid(span, PLACEHOLDER_REFUSED));
                }
                Some(password)
            }
        };
        Ok(RedisConfig {
            url,
            password,
            key_prefix: raw
                .key_prefix
                .as_ref()
                .map_or(Ok(DEFAULT_KEY_PREFIX.to_string()), |v| self.key_prefix(v))?,
            timeout: raw
                .timeout
                .as_ref()
                .map_or(Ok(DEFAULT_REDIS_TIMEOUT), |v| self.redis_timeout(v))?,
        })
    }

    /// The messages leave the URL out: it may hold a password, and the error
    /// is logged.
    pub(crate) fn redis_url(&self, v: &Spanned<String>) -> Checked<String> {
        // The same parsing the link does at start-up, so what loads here is
        // what it can dial.
        crate::config::redis_url::validate_url(v.get_ref())
            .map_err(|why| self.invalid(v.span(), why))?;
        if crate::config::redis_url::url_password(v.get_ref()).as_deref() == Some(REDACTED) {
            return Err(self.invalid(v.span(), PLACEHOLDER_REFUSED));
        }
        Ok(v.get_ref().clone())
    }

    /// Part of every Redis key sluice writes, so it must read back unchanged
    /// in logs and `redis-cli`.
    pub(crate) fn key_prefix(&self, v: &Spanned<String>) -> Checked<String> {
        let prefix = v.get_ref();
        if prefix.is_empty() {
            return Err(self.invalid(v.span(), "must not be empty"));
        }
        if prefix.len() > MAX_KEY_PREFIX_BYTES {
            return Err(self.invalid(
                v.span(),
                format!(
                    "must be at most {MAX_KEY_PREFIX_BYTES} bytes, got {}",
                    prefix.len()
                ),
            ));
        }
        if let Some(c) = prefix.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.invalid(
                v.span(),
                format!("must not contain whitespace or control characters, got {c:?}"),
            ));
        }
        Ok(prefix.clone())
    }

    pub(crate) fn redis_timeout(&self, v: &Spanned<String>) -> Checked<Duration> {
        let timeout = self.positive_duration(v)?;
        if timeout > MAX_REDIS_TIMEOUT {
            return Err(self.invalid(
                v.span(),
                format!(
                    "must be at most {}, got {}",
                    human(MAX_REDIS_TIMEOUT),
                    human(timeout)
                ),
            ));
        }
        Ok(timeout)
    }
}
