//! The board: what the sampler keeps between ticks. Once a second it reads
//! each route's outcome counters and queue, each upstream's and target's
//! in-flight, health, errors and latency histogram, and the process
//! figures; it turns counters into per-second rates and pushes one sample
//! per route and upstream into a bounded [`Ring`].
//!
//! Invariant: memory is bounded by the config (routes, upstreams, targets)
//! times [`HISTORY`]; a route or upstream that leaves the config leaves the
//! board at the next tick. The first tick after one appears only takes a
//! baseline: a rate is never computed from a counter's whole life.

use std::time::Duration;

use tokio::time::Instant;

use super::quantile::{Buckets, quantile};
use super::readings::Readings;
use super::ring::Ring;
use crate::config::{Config, UpstreamConfig};
use crate::gateway::Gateway;
use crate::gateway::route::Route;
use crate::outcome::Outcome;

/// Samples kept per route and upstream: five minutes at one a second.
pub(crate) const HISTORY: usize = 300;
/// Latency quantiles are over this many of the last samples (seconds).
pub(crate) const LATENCY_WINDOW: usize = 10;

/// The outcomes a route's request can end with (`no_route` is nobody's).
pub(super) const ROUTE_OUTCOMES: [Outcome; 7] = [
    Outcome::Forwarded,
    Outcome::RejectedQueueFull,
    Outcome::RejectedRateLimited,
    Outcome::DroppedTimeout,
    Outcome::Cancelled,
    Outcome::UpstreamError,
    Outcome::RejectedInvalid,
];

/// One second of a route.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct RouteSecond {
    /// Requests that arrived: every outcome counted, plus the queue's growth.
    pub offered: f64,
    /// Requests sent to the backend (forwarded or failed there).
    pub released: f64,
    /// The rate in force (configured or overridden); `None` if unlimited.
    pub rate: Option<f64>,
    pub depth: usize,
    pub oldest_wait: f64,
    /// Per second, in the order of [`ROUTE_OUTCOMES`].
    pub outcomes: [f64; ROUTE_OUTCOMES.len()],
}

impl RouteSecond {
    /// Answered 503 or 429 by sluice itself (queue full, timed out, over a key's limit).
    pub(super) fn refused(&self) -> f64 {
        self.outcomes[1] + self.outcomes[2] + self.outcomes[3]
    }
}

pub(super) struct RouteTrack {
    pub name: String,
    /// Outcome counters and queue depth at the last tick.
    baseline: Option<([u64; ROUTE_OUTCOMES.len()], usize)>,
    pub history: Ring<RouteSecond>,
}

/// One second of an upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct UpstreamSecond {
    pub inflight: usize,
    /// The cap in force: the adaptive limit, or `max_inflight`.
    pub limit: usize,
    pub requests: f64,
    pub errors: f64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// A target now.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct TargetNow {
    pub name: String,
    pub max_inflight: Option<usize>,
    pub inflight: usize,
    pub healthy: bool,
    pub requests: f64,
    pub errors: f64,
    pub errors_total: u64,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// Counters of one histogrammed series between ticks.
struct Series {
    requests: Option<u64>,
    errors: Option<u64>,
    latency: Ring<Buckets>,
}

impl Series {
    fn new() -> Series {
        Series {
            requests: None,
            errors: None,
            latency: Ring::new(LATENCY_WINDOW + 1),
        }
    }

    /// Per-second rates of requests and errors since the last tick
    /// (none at the first), and the latency quantiles over the window.
    fn tick(
        &mut self,
        requests: u64,
        errors: u64,
        latency: Option<Buckets>,
        seconds: Option<f64>,
    ) -> (f64, f64, Option<f64>, Option<f64>) {
        let rate = |then: Option<u64>, now: u64| match (then, seconds) {
            (Some(then), Some(s)) => now.saturating_sub(then) as f64 / s,
            _ => 0.0,
        };
        let rates = (rate(self.requests, requests), rate(self.errors, errors));
        (self.requests, self.errors) = (Some(requests), Some(errors));
        if let Some(latency) = latency {
            self.latency.push(latency);
        }
        let q = |q| quantile(self.latency.oldest()?, self.latency.newest()?, q);
        (rates.0, rates.1, q(0.5), q(0.99))
    }
}

pub(super) struct UpstreamTrack {
    pub name: String,
    pub max_inflight: usize,
    pub adaptive: bool,
    /// Failures by kind since start: connect, timeout, other.
    pub errors_total: [u64; 3],
    series: Series,
    targets: Vec<(Series, TargetNow)>,
    pub history: Ring<UpstreamSecond>,
}

/// The track `is` picks out, made by `new` when there is none yet (a route
/// or upstream that appeared with a reload).
fn track<T>(tracks: &mut Vec<T>, is: impl Fn(&T) -> bool, new: impl FnOnce() -> T) -> &mut T {
    let index = match tracks.iter().position(is) {
        Some(index) => index,
        None => {
            tracks.push(new());
            tracks.len() - 1
        }
    };
    &mut tracks[index]
}

impl UpstreamTrack {
    pub(super) fn targets(&self) -> impl Iterator<Item = &TargetNow> {
        self.targets.iter().map(|(_, now)| now)
    }
}

/// The process figures at the last tick.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct ProcessNow {
    pub connections_open: u64,
    pub max_connections: u64,
    /// 1 at start, one more at each successful reload.
    pub generation: u64,
    pub reload_failures: u64,
    /// Unix time the running config was loaded.
    pub loaded_at: f64,
}

/// Everything the status page shows that is not read live.
#[derive(Default)]
pub(crate) struct Board {
    pub(super) routes: Vec<RouteTrack>,
    pub(super) upstreams: Vec<UpstreamTrack>,
    pub(super) process: ProcessNow,
    last: Option<Instant>,
}

/// Upstream error kinds, as labelled in `sluice_upstream_errors_total`.
const ERROR_KINDS: [&str; 3] = ["connect", "timeout", "other"];

impl Board {
    /// One tick at `now`: the routes and upstreams of `gateway` and
    /// `config`, their counters read from `readings`.
    pub(super) fn sample(
        &mut self,
        now: Instant,
        gateway: &Gateway,
        config: &Config,
        readings: &Readings,
    ) {
        let seconds = self
            .last
            .map(|last| now.saturating_duration_since(last))
            .filter(|d| *d >= Duration::from_millis(1))
            .map(|d| d.as_secs_f64());
        self.last = Some(now);
        self.sample_routes(gateway.routes(), readings, seconds);
        self.sample_upstreams(config, readings, seconds);
        self.process = process(readings);
    }

    fn sample_routes(&mut self, routes: &[Route], readings: &Readings, seconds: Option<f64>) {
        self.routes
            .retain(|t| routes.iter().any(|r| r.name == t.name));
        for route in routes {
            let track = track(
                &mut self.routes,
                |t| t.name == route.name,
                || RouteTrack {
                    name: route.name.clone(),
                    baseline: None,
                    history: Ring::new(HISTORY),
                },
            );
            let counts = ROUTE_OUTCOMES.map(|o| {
                readings
                    .counter(
                        "sluice_requests_total",
                        &[("route", &route.name), ("outcome", o.as_str())],
                    )
                    .unwrap_or(0)
            });
            let shaper = &route.state.shaper;
            let depth = shaper.depth();
            if let (Some((then, then_depth)), Some(seconds)) = (track.baseline, seconds) {
                let mut outcomes = [0.0; ROUTE_OUTCOMES.len()];
                for (i, rate) in outcomes.iter_mut().enumerate() {
                    *rate = counts[i].saturating_sub(then[i]) as f64 / seconds;
                }
                let ended: f64 = outcomes.iter().sum();
                let grown = depth as f64 - then_depth as f64;
                track.history.push(RouteSecond {
                    offered: (ended + grown / seconds).max(0.0),
                    released: ROUTE_OUTCOMES
                        .iter()
                        .zip(&outcomes)
                        .filter(|(o, _)| matches!(o, Outcome::Forwarded | Outcome::UpstreamError))
                        .map(|(_, rate)| rate)
                        .sum(),
                    rate: shaper.limits().rate.map(|(rate, _)| rate),
                    depth,
                    oldest_wait: shaper.oldest_wait().as_secs_f64(),
                    outcomes,
                });
            }
            track.baseline = Some((counts, depth));
        }
    }

    fn sample_upstreams(&mut self, config: &Config, readings: &Readings, seconds: Option<f64>) {
        let configured: Vec<&UpstreamConfig> = config.upstreams.values().collect();
        self.upstreams
            .retain(|t| configured.iter().any(|u| u.name == t.name));
        for upstream in configured {
            track(
                &mut self.upstreams,
                |t| t.name == upstream.name,
                || UpstreamTrack {
                    name: upstream.name.clone(),
                    max_inflight: 0,
                    adaptive: false,
                    errors_total: [0; 3],
                    series: Series::new(),
                    targets: Vec::new(),
                    history: Ring::new(HISTORY),
                },
            )
            .tick(upstream, readings, seconds);
        }
    }
}

/// The targets of an upstream and their own caps: as written, or with DNS
/// discovery, as the target series show them (a discovered target's cap
/// is not shown).
fn targets_of(config: &UpstreamConfig, readings: &Readings) -> Vec<(String, Option<usize>)> {
    let written = config
        .targets
        .iter()
        .map(|t| (t.addr.to_string(), t.max_inflight.map(|m| m.get())));
    if config.discovery.is_none() {
        return written.collect();
    }
    let mut targets: Vec<(String, Option<usize>)> = written
        .filter(|(addr, _)| {
            readings
                .gauge(
                    "sluice_target_healthy",
                    &[("upstream", &config.name), ("target", addr)],
                )
                .is_some()
        })
        .collect();
    for addr in readings.label_values(
        "sluice_target_healthy",
        &[("upstream", &config.name)],
        "target",
    ) {
        if !targets.iter().any(|(a, _)| *a == addr) {
            targets.push((addr, None));
        }
    }
    targets
}

impl UpstreamTrack {
    fn tick(&mut self, config: &UpstreamConfig, readings: &Readings, seconds: Option<f64>) {
        let name = config.name.as_str();
        let up = [("upstream", name)];
        self.max_inflight = config.max_inflight.get();
        self.adaptive = config.adaptive.is_some();
        self.errors_total = ERROR_KINDS.map(|kind| {
            readings
                .counter(
                    "sluice_upstream_errors_total",
                    &[("upstream", name), ("kind", kind)],
                )
                .unwrap_or(0)
        });
        // Targets come and go with reloads and DNS discovery: keep the
        // series of those that stay.
        let mut old = std::mem::take(&mut self.targets);
        for (addr, max_inflight) in targets_of(config, readings) {
            let addr = addr.as_str();
            let labels = [("upstream", name), ("target", addr)];
            let mut series = match old.iter().position(|(_, now)| now.name == addr) {
                Some(i) => old.swap_remove(i).0,
                None => Series::new(),
            };
            let errors_total = readings
                .counter("sluice_target_errors_total", &labels)
                .unwrap_or(0);
            let (requests, errors, p50, p99) = series.tick(
                readings
                    .counter("sluice_target_requests_total", &labels)
                    .unwrap_or(0),
                errors_total,
                readings.histogram("sluice_target_response_seconds", &labels),
                seconds,
            );
            let gauge = |family| readings.gauge(family, &labels);
            let now = TargetNow {
                name: addr.to_string(),
                max_inflight,
                inflight: gauge("sluice_target_inflight").map_or(0, count),
                healthy: gauge("sluice_target_healthy").is_none_or(|h| h > 0.0),
                requests,
                errors,
                errors_total,
                p50,
                p99,
            };
            self.targets.push((series, now));
        }
        let requests = self
            .targets
            .iter()
            .map(|(s, _)| s.requests.unwrap_or(0))
            .sum();
        let (requests, errors, p50, p99) = self.series.tick(
            requests,
            self.errors_total.iter().sum(),
            readings.histogram("sluice_upstream_response_seconds", &up),
            seconds,
        );
        if seconds.is_some() {
            let gauge = |family| readings.gauge(family, &up).map_or(0, count);
            self.history.push(UpstreamSecond {
                inflight: gauge("sluice_upstream_inflight"),
                limit: match gauge("sluice_upstream_concurrency_limit") {
                    0 => self.max_inflight,
                    limit => limit,
                },
                requests,
                errors,
                p50,
                p99,
            });
        }
    }
}

/// A gauge's value as a count.
fn count(value: f64) -> usize {
    // Gauges hold counts here; the cast saturates and maps NaN to 0.
    value.max(0.0) as usize
}

fn process(readings: &Readings) -> ProcessNow {
    let gauge = |family| readings.gauge(family, &[]).unwrap_or(0.0);
    let reloads = |result| {
        readings
            .counter("sluice_config_reloads_total", &[("result", result)])
            .unwrap_or(0)
    };
    ProcessNow {
        connections_open: gauge("sluice_connections_open").max(0.0) as u64,
        max_connections: gauge("sluice_connections_max").max(0.0) as u64,
        generation: 1 + reloads("success"),
        reload_failures: reloads("failure"),
        loaded_at: gauge("sluice_config_last_reload_success_timestamp_seconds"),
    }
}
