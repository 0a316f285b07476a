//! `[routes.async]` and `[storage]`: accept now, deliver later — the
//! delivery's bounds, where the journal lives, and the route keys that make
//! no sense on a route whose requests are answered before they are sent.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use crate::config::defaults::DEFAULT_UPGRADE;
use crate::config::load::{Checked, Ctx};
use crate::config::model::{AsyncConfig, AsyncStore, StorageConfig};
use crate::config::raw::{RawAsync, RawRoute, RawStorage};
use crate::config::values::resolve_path;

/// `deliver_within` at most: a week of backlog.
const MAX_DELIVER_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);
const MIN_DELIVER_WITHIN: Duration = Duration::from_secs(1);
const DEFAULT_DELIVER_WITHIN: Duration = Duration::from_secs(600);
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const MAX_ATTEMPTS: u32 = 100;
const DEFAULT_ASYNC_CAPACITY: usize = 100_000;
const MAX_ASYNC_CAPACITY: usize = 100_000_000;
/// `claim_idle`: how long a request may sit with an instance that stopped
/// touching it before another takes it over. Held requests are touched
/// every quarter of it, so 1s is the shortest that is not a hair trigger.
const DEFAULT_CLAIM_IDLE: Duration = Duration::from_secs(30);
const MIN_CLAIM_IDLE: Duration = Duration::from_secs(1);
const MAX_CLAIM_IDLE: Duration = Duration::from_secs(3600);
const MAX_KEEP_RESPONSE_BYTES: usize = 64 * 1024;
pub(crate) const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const MIN_SEGMENT_BYTES: usize = 64 * 1024;
const MAX_SEGMENT_BYTES: usize = 1024 * 1024 * 1024;

impl Ctx<'_> {
    /// `[storage]`.
    pub(crate) fn storage(&self, raw: Option<&RawStorage>) -> Checked<StorageConfig> {
        let mut storage = StorageConfig {
            dir: None,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        };
        let Some(raw) = raw else {
            return Ok(storage);
        };
        if let Some(v) = &raw.dir {
            let dir = v.get_ref();
            if dir.trim().is_empty() || dir.contains('\0') {
                return Err(self.invalid(v.span(), "must be a directory path"));
            }
            storage.dir = Some(resolve_path(self.path, Path::new(dir)));
        }
        if let Some(v) = &raw.segment_bytes {
            storage.segment_bytes = self.between(v, MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES)? as u64;
        }
        Ok(storage)
    }

    /// `[routes.async]` of `route`, and the route's other keys checked
    /// against it. `redis`, `storage`: whether `[redis]` and `[storage] dir`
    /// are set.
    pub(crate) fn deferred(
        &self,
        route: &RawRoute,
        (redis, storage): (bool, bool),
    ) -> Checked<Option<AsyncConfig>> {
        let Some(raw) = &route.deferred else {
            return Ok(None);
        };
        let store = self.async_store(raw, (redis, storage))?;
        self.fits_async(route)?;
        let r: &RawAsync = raw.get_ref();
        let deliver_within = self.async_duration(
            r.deliver_within.as_ref(),
            DEFAULT_DELIVER_WITHIN,
            (MIN_DELIVER_WITHIN, MAX_DELIVER_WITHIN),
        )?;
        let max_attempts = r.max_attempts.as_ref().map_or(
            Ok(NonZeroU32::new(DEFAULT_MAX_ATTEMPTS).unwrap_or(NonZeroU32::MIN)),
            |v| self.u32_from_1(v, MAX_ATTEMPTS),
        )?;
        let capacity = r.capacity.as_ref().map_or(
            Ok(NonZeroUsize::new(DEFAULT_ASYNC_CAPACITY).unwrap_or(NonZeroUsize::MIN)),
            |v| self.usize_from_1(v, MAX_ASYNC_CAPACITY),
        )?;
        let keep_response_bytes = r
            .keep_response_bytes
            .as_ref()
            .map_or(Ok(0), |v| self.between(v, 0, MAX_KEEP_RESPONSE_BYTES))?;
        Ok(Some(AsyncConfig {
            store,
            deliver_within,
            max_attempts,
            capacity,
            keep_response_bytes,
        }))
    }

    /// A duration key: `default` when absent, else within `min..=max`.
    fn async_duration(
        &self,
        v: Option<&Spanned<String>>,
        default: Duration,
        (min, max): (Duration, Duration),
    ) -> Checked<Duration> {
        match v {
            Some(v) => self.duration_within(v, min, max),
            None => Ok(default),
        }
    }

    fn async_store(
        &self,
        raw: &Spanned<RawAsync>,
        (redis, storage): (bool, bool),
    ) -> Checked<AsyncStore> {
        let r = raw.get_ref();
        let store = match &r.store {
            None => AsyncStore::Local,
            Some(v) => match v.get_ref().as_str() {
                "local" => AsyncStore::Local,
                "redis" => {
                    if !redis {
                        return Err(self.invalid(
                            v.span(),
                            "store \"redis\" needs a [redis] section: add [redis] url = \"redis://127.0.0.1:6379\"",
                        ));
                    }
                    let claim_idle = self.async_duration(
                        r.claim_idle.as_ref(),
                        DEFAULT_CLAIM_IDLE,
                        (MIN_CLAIM_IDLE, MAX_CLAIM_IDLE),
                    )?;
                    return Ok(AsyncStore::Redis { claim_idle });
                }
                other => {
                    return Err(self.invalid(
                        v.span(),
                        format!("unknown store {other:?}: expected \"local\" or \"redis\""),
                    ));
                }
            },
        };
        if let Some(v) = &r.claim_idle {
            return Err(self.invalid(
                v.span(),
                "claim_idle applies to store = \"redis\" only (a fleet's instances taking over each other's requests)",
            ));
        }
        if !storage {
            let span = raw
                .get_ref()
                .store
                .as_ref()
                .map_or(raw.span(), Spanned::span);
            return Err(self.invalid(
                span,
                "store \"local\" needs a directory: add [storage] dir = \"/var/lib/sluice\"",
            ));
        }
        Ok(store)
    }

    /// What an async route cannot do: its requests are answered before they
    /// are sent, then delivered oldest first by one task.
    fn fits_async(&self, route: &RawRoute) -> Checked<()> {
        if let Some(v) = route.upgrades.as_ref().and_then(|u| u.first()) {
            return Err(self.invalid(
                v.span(),
                "an async route cannot tunnel a protocol switch (its requests are answered 202 before they reach the backend): write upgrades = []",
            ));
        }
        if let Some(v) = &route.classes {
            return Err(self.invalid(
                v.span(),
                "priority classes do not apply to an async route: its requests are delivered oldest first",
            ));
        }
        if let Some(v) = &route.queue.discipline
            && v.get_ref() != "fifo"
        {
            return Err(self.invalid(
                v.span(),
                "an async route is delivered oldest first: only \"fifo\"",
            ));
        }
        if let Some(v) = &route.queue.fairness
            && v.get_ref() != "none"
        {
            return Err(self.invalid(
                v.span(),
                "an async route is delivered oldest first: fairness between keys does not apply (a per-key limit does: [routes.key_limit])",
            ));
        }
        if let Some(v) = route
            .limit
            .as_ref()
            .and_then(|l| l.get_ref().dry_run.as_ref())
            && *v.get_ref()
        {
            return Err(self.invalid(
                v.span(),
                "an async route's limit paces its delivery; it cannot be a dry run",
            ));
        }
        Ok(())
    }
}

/// An async route tunnels nothing: its default `upgrades` is empty.
pub(crate) fn async_upgrades(upgrades: Vec<String>, deferred: bool) -> Vec<String> {
    if deferred && upgrades == [DEFAULT_UPGRADE] {
        Vec::new()
    } else {
        upgrades
    }
}
