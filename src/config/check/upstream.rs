//! `[upstreams.NAME]`: targets, balancing, health checks, adaptive
//! concurrency and TLS to the targets.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use toml::Spanned;

use crate::config::bounds::{
    MAX_HEALTH_COUNT, MAX_INFLIGHT, MAX_POOL_IDLE_PER_TARGET, MAX_TOTAL_WEIGHT, MIN_READ_TIMEOUT,
};
use crate::config::defaults::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_HEALTH_INTERVAL, DEFAULT_HEALTH_PATH, DEFAULT_HEALTH_TIMEOUT,
    DEFAULT_HEALTHY_THRESHOLD, DEFAULT_INITIAL_LIMIT, DEFAULT_MAX_INFLIGHT,
    DEFAULT_POOL_IDLE_TIMEOUT, DEFAULT_POOL_MAX_IDLE_PER_TARGET, DEFAULT_READ_TIMEOUT,
    DEFAULT_RETRIES, DEFAULT_SMOOTHING, DEFAULT_TOLERANCE, DEFAULT_UNHEALTHY_THRESHOLD,
    DEFAULT_UPSTREAM_TIMEOUT, MAX_RETRIES,
};
use crate::config::load::{Checked, Ctx};
use crate::config::model::{
    ActiveHealth, AdaptiveConfig, Balance, PassiveHealth, TargetConfig, UpstreamConfig, UpstreamTls,
};
use crate::config::raw::{
    RawActiveHealth, RawAdaptive, RawPassiveHealth, RawUpstream, RawUpstreamTls,
};
use crate::config::values::{human, parse_server_name, parse_target_spec};

impl Ctx<'_> {
    pub(crate) fn upstreams(
        &self,
        raw: Option<Spanned<BTreeMap<String, RawUpstream>>>,
    ) -> Checked<BTreeMap<String, UpstreamConfig>> {
        let Some(raw) = raw else {
            // A missing key has no span to find it by.
            return Err(self.invalid_key(
                0..0,
                "upstreams",
                "at least one upstream is required: add an [upstreams.NAME] table",
            ));
        };
        if raw.get_ref().is_empty() {
            return Err(self.invalid(
                raw.span(),
                "at least one upstream is required: add an [upstreams.NAME] table",
            ));
        }
        raw.into_inner()
            .into_iter()
            .map(|(name, up)| Ok((name.clone(), self.upstream(name, up)?)))
            .collect()
    }

    pub(crate) fn upstream(&self, name: String, raw: RawUpstream) -> Checked<UpstreamConfig> {
        let targets = self.targets(&raw.targets)?;
        let tls = raw.tls.as_ref().map(|v| self.upstream_tls(v)).transpose()?;
        let discovery = self.discovery(&raw, tls.as_ref())?;
        let balance = raw
            .balance
            .map_or(Ok(Balance::RoundRobin), |v| self.balance(&v))?;
        let retries = raw
            .retries
            .map_or(Ok(DEFAULT_RETRIES), |v| self.u32_in(&v, 0, MAX_RETRIES))?;
        let max_inflight = raw.max_inflight.map_or(Ok(DEFAULT_MAX_INFLIGHT), |v| {
            self.usize_from_1(&v, MAX_INFLIGHT)
        })?;
        Ok(UpstreamConfig {
            targets,
            balance,
            discovery,
            retries,
            http2: raw.http2.unwrap_or(false),
            passive_health: raw
                .passive_health
                .map_or(Ok(PassiveHealth::default()), |v| self.passive_health(&v))?,
            active_health: raw
                .active_health
                .map(|v| self.active_health(&v))
                .transpose()?,
            adaptive: raw
                .adaptive
                .map(|v| self.adaptive(&v, max_inflight))
                .transpose()?,
            tls,
            max_inflight,
            connect_timeout: raw
                .connect_timeout
                .map_or(Ok(DEFAULT_CONNECT_TIMEOUT), |v| self.positive_duration(&v))?,
            timeout: raw
                .timeout
                .map_or(Ok(DEFAULT_UPSTREAM_TIMEOUT), |v| self.positive_duration(&v))?,
            read_timeout: raw.read_timeout.map_or(Ok(DEFAULT_READ_TIMEOUT), |v| {
                self.duration_at_least(&v, MIN_READ_TIMEOUT)
            })?,
            pool_idle_timeout: raw
                .pool_idle_timeout
                .map_or(Ok(DEFAULT_POOL_IDLE_TIMEOUT), |v| self.duration(&v))?,
            pool_max_idle_per_target: raw
                .pool_max_idle_per_target
                .map_or(Ok(DEFAULT_POOL_MAX_IDLE_PER_TARGET), |v| {
                    self.between(&v, 0, MAX_POOL_IDLE_PER_TARGET)
                })?,
            name,
        })
    }

    pub(crate) fn targets(
        &self,
        raw: &Spanned<Vec<Spanned<String>>>,
    ) -> Checked<Vec<TargetConfig>> {
        if raw.get_ref().is_empty() {
            return Err(self.invalid(
                raw.span(),
                "at least one target (\"host:port\") is required",
            ));
        }
        let mut targets = Vec::with_capacity(raw.get_ref().len());
        let mut total_weight: u64 = 0;
        for v in raw.get_ref() {
            let target = self.target(v)?;
            total_weight += u64::from(target.weight.get());
            if total_weight > u64::from(MAX_TOTAL_WEIGHT) {
                return Err(self.invalid(
                    v.span(),
                    format!(
                        "the weights of an upstream's targets may add up to at most {MAX_TOTAL_WEIGHT} (each target counts 1 unless it has weight=N); this one brings them to {total_weight}"
                    ),
                ));
            }
            targets.push(target);
        }
        Ok(targets)
    }

    pub(crate) fn target(&self, v: &Spanned<String>) -> Checked<TargetConfig> {
        parse_target_spec(v.get_ref()).map_err(|why| {
            self.invalid(v.span(), format!("invalid target {:?}: {why}", v.get_ref()))
        })
    }

    pub(crate) fn balance(&self, v: &Spanned<String>) -> Checked<Balance> {
        match v.get_ref().as_str() {
            "round_robin" => Ok(Balance::RoundRobin),
            "least_inflight" => Ok(Balance::LeastInflight),
            "p2c_ewma" => Ok(Balance::P2cEwma),
            other => Err(self.invalid(
                v.span(),
                format!(
                    "unknown balance {other:?}: expected \"round_robin\", \"least_inflight\" or \"p2c_ewma\""
                ))),
        }
    }

    /// `[upstreams.NAME.passive_health]`: keys left out keep their defaults.
    /// When `base_ejection` and `max_ejection` disagree, the one written is
    /// blamed (the later one if both are).
    pub(crate) fn passive_health(
        &self,
        table: &Spanned<RawPassiveHealth>,
    ) -> Checked<PassiveHealth> {
        let raw = table.get_ref();
        let mut health = PassiveHealth::default();
        if let Some(v) = &raw.consecutive_failures {
            health.consecutive_failures = self.u32_in(v, 0, MAX_HEALTH_COUNT)?;
        }
        if let Some(v) = &raw.base_ejection {
            health.base_ejection = self.positive_duration(v)?;
        }
        if let Some(v) = &raw.max_ejection {
            health.max_ejection = self.duration(v)?;
        }
        if health.max_ejection < health.base_ejection {
            let (base, max) = (human(health.base_ejection), human(health.max_ejection));
            return Err(match (&raw.base_ejection, &raw.max_ejection) {
                (Some(b), Some(m)) if b.span().start > m.span().start => self.invalid(
                    b.span(),
                    format!("must be at most max_ejection ({max}), got {base}")),
                (_, Some(m)) => self.invalid(
                    m.span(),
                    format!("must be at least base_ejection ({base}), got {max}")),
                (Some(b), None) => self.invalid(
                    b.span(),
                    format!(
                        "must be at most max_ejection ({max}, its default), got {base}; raise max_ejection too"
                    )),
                // The defaults agree with each other.
                (None, None) => self.invalid(table.span(), "base_ejection exceeds max_ejection"),
            });
        }
        Ok(health)
    }

    /// `[upstreams.NAME.active_health]`. A timeout longer than the interval
    /// is blamed on whichever of the two was written (the later one if both).
    pub(crate) fn active_health(&self, table: &Spanned<RawActiveHealth>) -> Checked<ActiveHealth> {
        let raw = table.get_ref();
        let path = raw
            .path
            .as_ref()
            .map_or(Ok(DEFAULT_HEALTH_PATH.to_string()), |v| self.health_path(v))?;
        let interval = raw
            .interval
            .as_ref()
            .map_or(Ok(DEFAULT_HEALTH_INTERVAL), |v| self.positive_duration(v))?;
        let timeout = raw
            .timeout
            .as_ref()
            .map_or(Ok(DEFAULT_HEALTH_TIMEOUT), |v| self.positive_duration(v))?;
        if timeout > interval {
            let (t, i) = (human(timeout), human(interval));
            return Err(match (&raw.interval, &raw.timeout) {
                (Some(iv), Some(tv)) if iv.span().start > tv.span().start => self.invalid(
                    iv.span(),
                    format!("must be at least the probe timeout ({t}), got {i}")),
                (_, Some(tv)) => self.invalid(
                    tv.span(),
                    format!("must be at most the probe interval ({i}), got {t}")),
                (Some(iv), None) => self.invalid(
                    iv.span(),
                    format!(
                        "must be at least the probe timeout ({t}, its default), got {i}; lower timeout too"
                    )),
                (None, None) => self.invalid(table.span(), "timeout exceeds interval"),
            });
        }
        Ok(ActiveHealth {
            path,
            interval,
            timeout,
            healthy_threshold: raw
                .healthy_threshold
                .as_ref()
                .map_or(Ok(DEFAULT_HEALTHY_THRESHOLD), |v| {
                    self.u32_from_1(v, MAX_HEALTH_COUNT)
                })?,
            unhealthy_threshold: raw
                .unhealthy_threshold
                .as_ref()
                .map_or(Ok(DEFAULT_UNHEALTHY_THRESHOLD), |v| {
                    self.u32_from_1(v, MAX_HEALTH_COUNT)
                })?,
        })
    }

    /// The path (and optional query) probed with GET.
    pub(crate) fn health_path(&self, v: &Spanned<String>) -> Checked<String> {
        let path = v.get_ref();
        if !path.starts_with('/') {
            return Err(self.invalid(v.span(), format!("must start with '/', got {path:?}")));
        }
        // `PathAndQuery` would silently drop a fragment, so '#' is refused first.
        let valid = !path.contains('#')
            && path
                .parse::<http::uri::PathAndQuery>()
                .is_ok_and(|p| p.as_str() == path);
        if !valid {
            return Err(self.invalid(
                v.span(),
                format!(
                    "{path:?} is not a request path (no spaces, control characters or '#'; percent-encode the rest)"
                ),
            ));
        }
        Ok(path.clone())
    }

    /// `[upstreams.NAME.adaptive]`: `min_limit <= initial_limit <= max_limit
    /// <= max_inflight`, where `max_limit` defaults to `max_inflight` and
    /// `initial_limit` to 20 brought within the bounds.
    pub(crate) fn adaptive(
        &self,
        raw: &RawAdaptive,
        max_inflight: NonZeroUsize,
    ) -> Checked<AdaptiveConfig> {
        let min_limit = raw
            .min_limit
            .as_ref()
            .map_or(Ok(NonZeroUsize::MIN), |v| self.positive_usize(v))?;
        let max_limit = match &raw.max_limit {
            Some(v) => {
                let max = self.positive_usize(v)?;
                if max > max_inflight {
                    return Err(self.invalid(
                        v.span(),
                        format!(
                            "must be at most the upstream's max_inflight ({max_inflight}), got {max}"
                        ),
                    ));
                }
                if max < min_limit {
                    return Err(self.invalid(
                        v.span(),
                        format!("must be at least min_limit ({min_limit}), got {max}"),
                    ));
                }
                max
            }
            None => {
                if min_limit > max_inflight {
                    let span = raw.min_limit.as_ref().map_or(0..0, Spanned::span);
                    return Err(self.invalid(
                        span,
                        format!(
                            "must be at most max_limit, which defaults to the upstream's max_inflight ({max_inflight}), got {min_limit}"
                        ),
                    ));
                }
                max_inflight
            }
        };
        let initial_limit = self.initial_limit(raw, min_limit, max_limit)?;
        let (tolerance, smoothing) = self.adaptive_gains(raw)?;
        Ok(AdaptiveConfig {
            min_limit,
            max_limit,
            initial_limit,
            tolerance,
            smoothing,
        })
    }

    /// `initial_limit`: within [min_limit, max_limit], default 20 clamped
    /// into that range.
    fn initial_limit(
        &self,
        raw: &RawAdaptive,
        min_limit: NonZeroUsize,
        max_limit: NonZeroUsize,
    ) -> Checked<NonZeroUsize> {
        Ok(match &raw.initial_limit {
            Some(v) => {
                let initial = self.positive_usize(v)?;
                if !(min_limit..=max_limit).contains(&initial) {
                    return Err(self.invalid(
                        v.span(),
                        format!(
                            "must be from min_limit ({min_limit}) to max_limit ({max_limit}), got {initial}"
                        ),
                    ));
                }
                initial
            }
            None => DEFAULT_INITIAL_LIMIT.min(max_limit).max(min_limit),
        })
    }

    /// `tolerance` (at least 1.0) and `smoothing` (above 0, at most 1).
    fn adaptive_gains(&self, raw: &RawAdaptive) -> Checked<(f64, f64)> {
        let tolerance = match &raw.tolerance {
            Some(v) => {
                let t = *v.get_ref();
                if !(t.is_finite() && t >= 1.0) {
                    return Err(self.invalid(
                        v.span(),
                        format!("must be a finite number of at least 1.0, got {t}"),
                    ));
                }
                t
            }
            None => DEFAULT_TOLERANCE,
        };
        let smoothing = match &raw.smoothing {
            Some(v) => {
                let s = *v.get_ref();
                if !(s > 0.0 && s <= 1.0) {
                    return Err(
                        self.invalid(v.span(), format!("must be above 0 and at most 1, got {s}"))
                    );
                }
                s
            }
            None => DEFAULT_SMOOTHING,
        };
        Ok((tolerance, smoothing))
    }

    pub(crate) fn upstream_tls(&self, raw: &RawUpstreamTls) -> Checked<UpstreamTls> {
        Ok(UpstreamTls {
            ca: raw.ca.as_ref().map(|v| self.file_path(v)).transpose()?,
            server_name: raw
                .server_name
                .as_ref()
                .map(|v| {
                    parse_server_name(v.get_ref()).map_err(|why| {
                        self.invalid(
                            v.span(),
                            format!("invalid server name {:?}: {why}", v.get_ref()),
                        )
                    })
                })
                .transpose()?,
        })
    }
}
