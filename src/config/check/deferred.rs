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
use crate::config::values::{human, resolve_path};

/// `deliver_within` at most: a week of backlog.
const MAX_DELIVER_WITHIN: Duration = Duration::from_secs(7 * 24 * 3600);
const MIN_DELIVER_WITHIN: Duration = Duration::from_secs(1);
const DEFAULT_DELIVER_WITHIN: Duration = Duration::from_secs(600);
const DEFAULT_MAX_ATTEMPTS: u32 = 5;
const MAX_ATTEMPTS: u32 = 100;
const DEFAULT_ASYNC_CAPACITY: usize = 100_000;
const MAX_ASYNC_CAPACITY: usize = 100_000_000;
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
    /// against it. `storage`: whether `[storage] dir` is set.
    pub(crate) fn deferred(&self, route: &RawRoute, storage: bool) -> Checked<Option<AsyncConfig>> {
        let Some(raw) = &route.deferred else {
            return Ok(None);
        };
        let store = self.async_store(raw, storage)?;
        self.fits_async(route)?;
        let r: &RawAsync = raw.get_ref();
        let deliver_within = match &r.deliver_within {
            None => DEFAULT_DELIVER_WITHIN,
            Some(v) => {
                let d = humantime::parse_duration(v.get_ref()).map_err(|err| {
                    self.invalid(
                        v.span(),
                        format!("invalid duration {:?}: {err}", v.get_ref()),
                    )
                })?;
                if !(MIN_DELIVER_WITHIN..=MAX_DELIVER_WITHIN).contains(&d) {
                    return Err(self.invalid(
                        v.span(),
                        format!(
                            "must be from {} to {}, got {}",
                            human(MIN_DELIVER_WITHIN),
                            human(MAX_DELIVER_WITHIN),
                            human(d)
                        ),
                    ));
                }
                d
            }
        };
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

    fn async_store(&self, raw: &Spanned<RawAsync>, storage: bool) -> Checked<AsyncStore> {
        let store = match &raw.get_ref().store {
            None => AsyncStore::Local,
            Some(v) => match v.get_ref().as_str() {
                "local" => AsyncStore::Local,
                "redis" => {
                    return Err(self.invalid(
                        v.span(),
                        "store \"redis\" is not available yet; use \"local\" (a journal under [storage] dir)",
                    ));
                }
                other => {
                    return Err(self.invalid(
                        v.span(),
                        format!("unknown store {other:?}: expected \"local\" or \"redis\""),
                    ));
                }
            },
        };
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
