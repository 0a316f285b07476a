//! Checking the raw file and turning it into the typed [`Config`]: one
//! file per section, and here the entry point and the scalar checks they
//! share (durations, integers in a range, paths, addresses).
//!
//! Checkers take the spanned value and report `self.invalid(span, message)`;
//! the dotted key is found from the span in the parsed document, so no
//! checker spells or threads a key. Only a key that is not written (it has no
//! span) is named explicitly, with `invalid_key`.

mod deferred;
mod dns;
mod limit;
mod queue;
mod redis;
mod route;
mod server;
mod upstream;

use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::config::bounds::MAX_DURATION;
use crate::config::load::{Checked, Ctx};
use crate::config::model::Config;
use crate::config::raw::RawConfig;
use crate::config::values::{human, resolve_path};

impl Ctx<'_> {
    pub(crate) fn config(&self, raw: RawConfig) -> Checked<Config> {
        let server_span = raw.server.listen.as_ref().map(Spanned::span);
        let admin_span = raw.admin.listen.as_ref().map(Spanned::span);
        let server = self.server(raw.server)?;
        let admin = self.admin(raw.admin)?;
        self.distinct_listeners(&server, &admin, server_span, admin_span)?;
        let log = self.log(raw.log)?;
        let redis = raw.redis.map(|v| self.redis(&v)).transpose()?;
        let dns = self.dns(raw.dns.as_ref())?;
        let upstreams = self.upstreams(raw.upstreams)?;
        let storage = self.storage(raw.storage.as_ref())?;
        let routes = self.routes(
            raw.routes,
            &upstreams,
            (redis.is_some(), storage.dir.is_some()),
        )?;
        Ok(Config {
            source: self.path.to_path_buf(),
            server,
            admin,
            log,
            upstreams,
            routes,
            redis,
            dns,
            storage,
        })
    }

    /// A duration from 0 to [`MAX_DURATION`].
    pub(crate) fn duration(&self, v: &Spanned<String>) -> Checked<Duration> {
        let d = self.parse_duration(v)?;
        if d > MAX_DURATION {
            return Err(self.invalid(
                v.span(),
                format!("must be at most {}, got {}", human(MAX_DURATION), human(d)),
            ));
        }
        Ok(d)
    }

    /// A duration as written, unbounded.
    fn parse_duration(&self, v: &Spanned<String>) -> Checked<Duration> {
        humantime::parse_duration(v.get_ref()).map_err(|err| {
            self.invalid(
                v.span(),
                format!(
                    "invalid duration {:?}: {err} (write e.g. \"250ms\", \"2s\", \"1m\")",
                    v.get_ref()
                ),
            )
        })
    }

    /// A duration where zero would make every request fail: above 0, at most
    /// [`MAX_DURATION`].
    pub(crate) fn positive_duration(&self, v: &Spanned<String>) -> Checked<Duration> {
        let d = self.duration(v)?;
        if d.is_zero() {
            return Err(self.invalid(
                v.span(),
                format!(
                    "must be greater than 0 (and at most {})",
                    human(MAX_DURATION)
                ),
            ));
        }
        Ok(d)
    }

    /// A duration from `min` to [`MAX_DURATION`].
    pub(crate) fn duration_at_least(
        &self,
        v: &Spanned<String>,
        min: Duration,
    ) -> Checked<Duration> {
        self.duration_within(v, min, MAX_DURATION)
    }

    /// A duration from `min` to `max` (`max` may pass [`MAX_DURATION`]).
    pub(crate) fn duration_within(
        &self,
        v: &Spanned<String>,
        min: Duration,
        max: Duration,
    ) -> Checked<Duration> {
        let d = self.parse_duration(v)?;
        if !(min..=max).contains(&d) {
            return Err(self.invalid(
                v.span(),
                format!(
                    "must be from {} to {}, got {}",
                    human(min),
                    human(max),
                    human(d)
                ),
            ));
        }
        Ok(d)
    }

    pub(crate) fn u32_in(&self, v: &Spanned<i64>, min: u32, max: u32) -> Checked<u32> {
        let n = *v.get_ref();
        match u32::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.invalid(v.span(), format!("must be from {min} to {max}, got {n}"))),
        }
    }

    /// A count from 1 to `max`.
    pub(crate) fn u32_from_1(&self, v: &Spanned<i64>, max: u32) -> Checked<NonZeroU32> {
        let n = self.u32_in(v, 1, max)?;
        NonZeroU32::new(n)
            .ok_or_else(|| self.invalid(v.span(), format!("must be from 1 to {max}, got 0")))
    }

    pub(crate) fn positive_usize(&self, v: &Spanned<i64>) -> Checked<NonZeroUsize> {
        let n = self.at_least(v, 1)?;
        NonZeroUsize::new(n).ok_or_else(|| self.invalid(v.span(), "must be at least 1, got 0"))
    }

    /// A count from 1 to `max`.
    pub(crate) fn usize_from_1(&self, v: &Spanned<i64>, max: usize) -> Checked<NonZeroUsize> {
        let n = self.between(v, 1, max)?;
        NonZeroUsize::new(n)
            .ok_or_else(|| self.invalid(v.span(), format!("must be from 1 to {max}, got 0")))
    }

    /// A file path, as written when absolute, else taken from the config
    /// file's directory. Whether the file exists is found out when it is read.
    pub(crate) fn file_path(&self, v: &Spanned<String>) -> Checked<PathBuf> {
        let path = v.get_ref();
        if path.trim().is_empty() {
            return Err(self.invalid(v.span(), "must not be empty: give the path of a PEM file"));
        }
        if path.contains('\0') {
            return Err(self.invalid(v.span(), "must not contain a NUL character"));
        }
        Ok(resolve_path(self.path, Path::new(path)))
    }

    pub(crate) fn between(&self, v: &Spanned<i64>, min: usize, max: usize) -> Checked<usize> {
        let n = *v.get_ref();
        match usize::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.invalid(v.span(), format!("must be from {min} to {max}, got {n}"))),
        }
    }

    pub(crate) fn at_least(&self, v: &Spanned<i64>, min: usize) -> Checked<usize> {
        let n = *v.get_ref();
        match usize::try_from(n) {
            Ok(n) if n >= min => Ok(n),
            _ => Err(self.invalid(v.span(), format!("must be at least {min}, got {n}"))),
        }
    }

    pub(crate) fn socket_addr(&self, v: &Spanned<String>) -> Checked<SocketAddr> {
        v.get_ref().parse().map_err(|_| {
            self.invalid(
                v.span(),
                format!(
                    "invalid address {:?}: expected IP:port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                    v.get_ref()
                ),
            )
        })
    }
}
