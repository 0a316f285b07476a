//! What a simulation found, per route: as text, as JSON (`--json`), and the
//! numbers the chart (`--svg`) is drawn from.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use crate::config::Config;
use crate::outcome::Outcome;
use crate::shaper::RejectReason;

use crate::config::AsyncConfig;

use super::engine::{BackendModel, DeferredStats, RouteStats, Stats, reason_index};
use super::trace::{Trace, TraceFormat};

/// The whole result.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub trace: TraceSummary,
    pub backend: BackendSummary,
    /// Virtual time from the first arrival until the last request finished.
    pub virtual_seconds: f64,
    /// Wall time the replay took (trace reading not included).
    pub wall_seconds: f64,
    /// Trace requests replayed per second of wall time.
    pub requests_per_second: f64,
    /// One per configured route, in file order; then `-` (no route matched)
    /// if any request matched none.
    pub routes: Vec<RouteReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    pub source: String,
    pub format: TraceFormat,
    pub requests: u64,
    /// Malformed lines skipped with `--skip-bad`.
    pub skipped_lines: u64,
    /// First to last arrival.
    pub duration_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendSummary {
    /// `10ms`, or `exp:10ms` for sampled exponential.
    pub service_time: String,
    /// `null`: unlimited.
    pub concurrency: Option<usize>,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RouteReport {
    pub route: String,
    /// Requests that arrived for the route.
    pub offered: u64,
    /// Requests sent to the backend (= `outcomes.forwarded`; on an async
    /// route, `async.delivered`).
    pub released: u64,
    pub outcomes: Outcomes,
    /// Why the `rejected_queue_full` and `dropped_timeout` requests were refused.
    pub refusals: Refusals,
    /// Time spent queued by admitted requests (0 on the fast path), as the
    /// `sluice_queue_wait_seconds` histogram counts it.
    pub queue_wait: QueueWait,
    pub peak_queue_depth: usize,
    /// `null` for `-`.
    pub queue_capacity: Option<usize>,
    pub notes: Notes,
    /// What an async route's delivery did; `null` for a synchronous route.
    #[serde(rename = "async")]
    pub deferred: Option<AsyncReport>,
    pub series: Series,
}

/// An async route (`[routes.async]`): what was accepted, delivered and
/// expired, and the backlog's course. Times are virtual seconds from the
/// trace's first arrival.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct AsyncReport {
    /// `capacity`: requests held at most (queued or in flight).
    pub capacity: usize,
    pub deliver_within_seconds: f64,
    /// Answered `202` (= `outcomes.accepted`).
    pub accepted: u64,
    /// Refused for capacity: `503` (in `outcomes.rejected_queue_full`).
    pub refused: u64,
    /// Sent to the backend (the backend model never fails: no retries, no
    /// dead letters).
    pub delivered: u64,
    /// Not delivered within `deliver_within`: dropped, never sent.
    pub expired: u64,
    /// The most requests held at once (queued or in flight), and when.
    pub peak_backlog: usize,
    pub peak_at_seconds: f64,
    /// When the backlog was first empty again after its peak, and how long
    /// after the peak that was.
    pub drained_at_seconds: f64,
    pub drain_seconds: f64,
    /// From `202` to being sent, of the delivered requests.
    pub delivery_delay: QueueWait,
}
/// Requests by outcome, named as in `sluice_requests_total`. `cancelled`
/// and `upstream_error` cannot happen in a simulation (no clients leave, the
/// backend model never fails), so they are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    pub forwarded: u64,
    /// Async routes: made durable and answered `202`.
    pub accepted: u64,
    pub rejected_queue_full: u64,
    pub rejected_rate_limited: u64,
    pub dropped_timeout: u64,
    pub no_route: u64,
}

impl Outcomes {
    /// The count for an outcome label (`"forwarded"`, ...); 0 for one that cannot occur.
    pub fn get(&self, outcome: &str) -> u64 {
        match outcome {
            "forwarded" => self.forwarded,
            "accepted" => self.accepted,
            "rejected_queue_full" => self.rejected_queue_full,
            "rejected_rate_limited" => self.rejected_rate_limited,
            "dropped_timeout" => self.dropped_timeout,
            "no_route" => self.no_route,
            _ => 0,
        }
    }

    /// (label, count) for every outcome a simulation can produce.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        [
            ("forwarded", self.forwarded),
            ("accepted", self.accepted),
            ("rejected_queue_full", self.rejected_queue_full),
            ("rejected_rate_limited", self.rejected_rate_limited),
            ("dropped_timeout", self.dropped_timeout),
            ("no_route", self.no_route),
        ]
        .into_iter()
    }

    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }
}

/// Refusal reasons behind the outcomes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Refusals {
    /// No room in the queue.
    pub queue_full: u64,
    /// Room, but the expected wait exceeded the queue timeout.
    pub wait_too_long: u64,
    /// Displaced from the queue by a request of higher standing.
    pub displaced: u64,
    /// Waited until the deadline.
    pub timeout: u64,
}

/// Seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct QueueWait {
    /// Requests counted: those that went at once or entered the queue.
    pub admitted: u64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

/// Things worth knowing about how the trace met the config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Notes {
    /// Requests a dry-run route limit would have queued or rejected.
    pub dry_run_route_limited: u64,
    /// Requests a dry-run per-key limit would have answered 429.
    pub dry_run_key_limited: u64,
    /// Requests without a key on a route with a per-key limit: not limited.
    pub without_key: u64,
    /// Requests naming a class the route does not have: put in `default`.
    pub unknown_class: u64,
}

/// Counts per time bucket, for charts.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Series {
    pub bucket_seconds: f64,
    pub offered: Vec<u32>,
    /// Async routes: answered `202`.
    pub accepted: Vec<u32>,
    /// Sent to the backend (an async route's deliveries).
    pub released: Vec<u32>,
    /// `rejected_queue_full` by when it was answered.
    pub rejected: Vec<u32>,
    pub rate_limited: Vec<u32>,
    /// `dropped_timeout`; on an async route, expired.
    pub dropped: Vec<u32>,
    /// The most requests queued at once during the bucket; on an async
    /// route, held (its backlog: queued or in flight).
    pub queue_depth: Vec<u32>,
}

pub(crate) fn build(
    config: &Config,
    trace: &Trace,
    model: &BackendModel,
    stats: Stats,
    wall: Duration,
) -> Report {
    let bucket_seconds = stats.bucket.as_secs_f64();
    let mut routes = Vec::with_capacity(stats.routes.len());
    let names = config.routes.iter().map(|r| r.name.as_str()).chain(["-"]);
    let capacities = config
        .routes
        .iter()
        .map(|r| Some((r.queue.capacity, r.deferred)))
        .chain([None]);
    for ((name, shape), mut stats) in names.zip(capacities).zip(stats.routes) {
        let Some((capacity, deferred)) = shape else {
            if stats.offered > 0 {
                routes.push(route_report(name, None, stats, bucket_seconds));
            }
            continue; // else every request matched a route
        };
        let delivery = std::mem::take(&mut stats.deferred);
        let mut report = route_report(name, Some(capacity), stats, bucket_seconds);
        report.deferred = deferred.map(|a| async_report(&a, &report, delivery));
        if let Some(a) = &report.deferred {
            report.released = a.delivered;
        }
        routes.push(report);
    }
    let wall_seconds = wall.as_secs_f64();
    Report {
        trace: TraceSummary {
            source: trace.source().to_string(),
            format: trace.format(),
            requests: trace.len() as u64,
            skipped_lines: trace.skipped(),
            duration_seconds: trace.duration().as_secs_f64(),
        },
        backend: BackendSummary {
            service_time: model.service_time.to_string(),
            concurrency: model.concurrency.map(|c| c.get()),
            seed: model.seed,
        },
        virtual_seconds: stats.virtual_time.as_secs_f64(),
        wall_seconds,
        requests_per_second: trace.len() as f64 / wall_seconds.max(1e-9),
        routes,
    }
}

fn route_report(
    name: &str,
    capacity: Option<usize>,
    mut stats: RouteStats,
    bucket_seconds: f64,
) -> RouteReport {
    let count = |o: Outcome| stats.outcomes[o as usize];
    let outcomes = Outcomes {
        forwarded: count(Outcome::Forwarded),
        accepted: count(Outcome::Accepted),
        rejected_queue_full: count(Outcome::RejectedQueueFull),
        rejected_rate_limited: count(Outcome::RejectedRateLimited),
        dropped_timeout: count(Outcome::DroppedTimeout),
        no_route: count(Outcome::NoRoute),
    };
    let reason = |r: RejectReason| stats.reasons[reason_index(r)];
    let refusals = Refusals {
        queue_full: reason(RejectReason::QueueFull),
        wait_too_long: reason(RejectReason::WaitTooLong),
        displaced: reason(RejectReason::Displaced),
        timeout: reason(RejectReason::Timeout) + reason(RejectReason::Closed),
    };
    let waits = std::mem::take(&mut stats.waits);
    let queue_wait = quantiles(stats.zero_waits, waits);
    let series = &stats.series;
    let column = |f: fn(&super::engine::Bucket) -> u32| series.iter().map(f).collect::<Vec<_>>();
    RouteReport {
        route: name.to_string(),
        offered: stats.offered,
        released: outcomes.forwarded,
        outcomes,
        refusals,
        queue_wait,
        peak_queue_depth: stats.peak_depth,
        queue_capacity: capacity,
        notes: Notes {
            dry_run_route_limited: stats.dry_run_route,
            dry_run_key_limited: stats.dry_run_key,
            without_key: stats.keyless,
            unknown_class: stats.unknown_class,
        },
        deferred: None,
        series: Series {
            bucket_seconds,
            offered: column(|b| b.offered),
            accepted: column(|b| b.accepted),
            released: column(|b| b.released),
            rejected: column(|b| b.rejected),
            rate_limited: column(|b| b.rate_limited),
            dropped: column(|b| b.dropped),
            queue_depth: column(|b| b.depth),
        },
    }
}

/// Percentiles of `zeros` waits of zero and the (unsorted) `waits`, ns.
fn quantiles(zeros: u64, mut waits: Vec<u64>) -> QueueWait {
    waits.sort_unstable();
    let admitted = zeros + waits.len() as u64;
    let quantile = |q: f64| -> f64 {
        if admitted == 0 {
            return 0.0;
        }
        // Nearest rank: the smallest wait at or above a q share of the admitted.
        let rank = ((q * admitted as f64).ceil() as u64).clamp(1, admitted);
        if rank <= zeros {
            0.0
        } else {
            waits[(rank - zeros - 1) as usize] as f64 / 1e9
        }
    };
    QueueWait {
        admitted,
        p50: quantile(0.50),
        p95: quantile(0.95),
        p99: quantile(0.99),
        max: quantile(1.0),
    }
}

/// An async route's part of the report, beside its outcomes.
fn async_report(config: &AsyncConfig, route: &RouteReport, stats: DeferredStats) -> AsyncReport {
    let seconds = |ns: u64| ns as f64 / 1e9;
    let drained_at = stats.drained_at.map_or(0.0, seconds);
    AsyncReport {
        capacity: config.capacity.get(),
        deliver_within_seconds: config.deliver_within.as_secs_f64(),
        accepted: route.outcomes.accepted,
        refused: route.refusals.queue_full,
        delivered: stats.delivered,
        expired: stats.expired,
        peak_backlog: stats.peak_held,
        peak_at_seconds: seconds(stats.peak_at),
        drained_at_seconds: drained_at,
        drain_seconds: (drained_at - seconds(stats.peak_at)).max(0.0),
        delivery_delay: quantiles(0, stats.delays),
    }
}

/// A wait for people: microseconds to seconds.
fn wait(seconds: f64) -> String {
    if seconds == 0.0 {
        "0".to_string()
    } else if seconds < 0.001 {
        format!("{:.0}us", seconds * 1e6)
    } else if seconds < 1.0 {
        format!("{:.1}ms", seconds * 1e3)
    } else {
        format!("{seconds:.3}s")
    }
}

impl RouteReport {
    /// A configured route without `[routes.async]`.
    fn is_synchronous(&self) -> bool {
        self.queue_capacity.is_some() && self.deferred.is_none()
    }
}

impl Report {
    /// The route named `name` (`-` for requests no route matched).
    pub fn route(&self, name: &str) -> Option<&RouteReport> {
        self.routes.iter().find(|r| r.route == name)
    }

    /// The text report `sluice simulate` prints: what was replayed, the
    /// outcomes per route, the queue waits, then notes.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        self.write_summary(&mut out);
        let width = self
            .routes
            .iter()
            .map(|r| r.route.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let _ = writeln!(out);
        self.write_outcomes(&mut out, width);
        if self.routes.iter().any(RouteReport::is_synchronous) {
            let _ = writeln!(out);
            self.write_waits(&mut out, width);
        }
        if self.routes.iter().any(|r| r.deferred.is_some()) {
            let _ = writeln!(out);
            self.write_async(&mut out);
        }
        let notes = self.notes();
        if !notes.is_empty() {
            let _ = writeln!(out);
            for note in notes {
                let _ = writeln!(out, "{note}");
            }
        }
        out
    }

    /// The trace, the backend model, and the replay's own speed.
    fn write_summary(&self, out: &mut String) {
        let t = &self.trace;
        let _ = writeln!(
            out,
            "trace {} ({}): {} requests over {:.3} s{}",
            t.source,
            t.format,
            t.requests,
            t.duration_seconds,
            if t.skipped_lines > 0 {
                format!(", {} malformed lines skipped", t.skipped_lines)
            } else {
                String::new()
            }
        );
        let b = &self.backend;
        let _ = writeln!(
            out,
            "backend: service time {}, concurrency {} (per upstream)",
            b.service_time,
            b.concurrency
                .map_or("unlimited".to_string(), |c| c.to_string())
        );
        let _ = writeln!(
            out,
            "simulated {:.3} s of virtual time in {:.3} s ({:.0} requests/s)",
            self.virtual_seconds, self.wall_seconds, self.requests_per_second
        );
    }

    /// One line per route: offered, released and each refusal outcome
    /// (and `accepted`, if a route is async).
    fn write_outcomes(&self, out: &mut String, width: usize) {
        let any_async = self.routes.iter().any(|r| r.deferred.is_some());
        let accepted = |value: &dyn std::fmt::Display| {
            if any_async {
                format!("  {value:>9}")
            } else {
                String::new()
            }
        };
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}{}  {:>9}  {:>19}  {:>21}  {:>15}  {:>8}",
            "route",
            "offered",
            accepted(&"accepted"),
            "released",
            "rejected_queue_full",
            "rejected_rate_limited",
            "dropped_timeout",
            "no_route"
        );
        for r in &self.routes {
            let o = &r.outcomes;
            let _ = writeln!(
                out,
                "{:<width$}  {:>9}{}  {:>9}  {:>19}  {:>21}  {:>15}  {:>8}",
                r.route,
                r.offered,
                accepted(&o.accepted),
                r.released,
                o.rejected_queue_full,
                o.rejected_rate_limited,
                o.dropped_timeout,
                o.no_route
            );
        }
    }

    /// Two lines per async route: what its delivery did, and its backlog.
    fn write_async(&self, out: &mut String) {
        for r in &self.routes {
            let Some(a) = &r.deferred else { continue };
            let _ = writeln!(
                out,
                "{} (async): {} accepted (202), {} refused (503, capacity {}), {} delivered, {} expired (not delivered within {})",
                r.route,
                a.accepted,
                a.refused,
                a.capacity,
                a.delivered,
                a.expired,
                humantime::format_duration(Duration::from_secs_f64(a.deliver_within_seconds)),
            );
            let d = &a.delivery_delay;
            let _ = writeln!(
                out,
                "{} (async): backlog peak {} at {:.3} s, empty at {:.3} s ({:.3} s after the peak); delay to delivery p50 {}, p99 {}, max {}",
                r.route,
                a.peak_backlog,
                a.peak_at_seconds,
                a.drained_at_seconds,
                a.drain_seconds,
                wait(d.p50),
                wait(d.p99),
                wait(d.max),
            );
        }
    }

    /// One line per route with a queue: wait percentiles and peak depth.
    fn write_waits(&self, out: &mut String, width: usize) {
        let _ = writeln!(
            out,
            "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>16}",
            "route", "wait p50", "p95", "p99", "max", "peak queue depth"
        );
        for r in self.routes.iter().filter(|r| r.is_synchronous()) {
            let w = &r.queue_wait;
            let _ = writeln!(
                out,
                "{:<width$}  {:>9}  {:>9}  {:>9}  {:>9}  {:>16}",
                r.route,
                wait(w.p50),
                wait(w.p95),
                wait(w.p99),
                wait(w.max),
                format!(
                    "{} of {}",
                    r.peak_queue_depth,
                    r.queue_capacity.unwrap_or(0)
                ),
            );
        }
    }

    /// What the tables do not say: why the queue refused, requests without
    /// a key or with an unknown class, what a dry run would have limited.
    fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        for r in &self.routes {
            let f = &r.refusals;
            // (An async route's refusals are in its own lines.)
            if r.deferred.is_none() && f.queue_full + f.wait_too_long + f.displaced > 0 {
                notes.push(format!(
                    "{}: rejected_queue_full {}: no room in the queue {}, expected wait over the timeout {}, displaced by a higher class {}",
                    r.route,
                    r.outcomes.rejected_queue_full,
                    f.queue_full,
                    f.wait_too_long,
                    f.displaced
                ));
            }
            let n = &r.notes;
            if n.without_key > 0 {
                notes.push(format!(
                    "{}: {} requests had no key, so the per-key limit did not apply to them",
                    r.route, n.without_key
                ));
            }
            if n.unknown_class > 0 {
                notes.push(format!(
                    "{}: {} requests named a class the route does not have; counted as `default`",
                    r.route, n.unknown_class
                ));
            }
            if n.dry_run_route_limited > 0 || n.dry_run_key_limited > 0 {
                notes.push(format!(
                    "{}: dry run would have limited {} (route rate) and {} (per-key)",
                    r.route, n.dry_run_route_limited, n.dry_run_key_limited
                ));
            }
        }
        notes
    }
}
