//! The replay: a trace through the real shapers, in virtual time.
//!
//! One current-thread tokio runtime with a paused clock. The main task walks
//! the trace in order and moves the clock to each arrival; the route's real
//! [`Shaper`] (with its real release task, limiter and queue) decides, the
//! upstream's real in-flight semaphore caps, and the outcome is recorded as
//! the proxy records it. Nothing sleeps in wall time: when every task waits,
//! the paused runtime jumps the clock to the next timer.
//!
//! Cost per request is kept low by not giving every request a task:
//! - a request that goes at once (the fast path) is served inline: its
//!   backend completion goes on a min-heap the main task drains in time order;
//! - only a queued request gets a task (it must await its ticket), and so
//!   does one the backend model cannot start at once (`--concurrency`).
//!
//! Time. tokio's timer wheel counts whole milliseconds: a sleep ends at the
//! first millisecond tick at or after its deadline, as in the running proxy.
//! Arrivals and inline completions, though, happen at their exact
//! nanosecond: the main task sleeps to the millisecond tick (so every timer
//! up to it fires on its tick), then moves the clock the rest of the way
//! itself ([`VirtualClock::jump`]), and back onto the next tick before it
//! lets the runtime advance again. After an event that wakes another task
//! (a request queued, a slot freed for a waiter) it yields, so that task
//! runs at the same virtual instant.
//!
//! An async route (`[routes.async]`) takes its arrivals into a backlog
//! instead of the shaper, and its delivery draws on the same shaper: see
//! `deferred`.
//!
//! Here the replay loop; the backend model in `backend`, what is counted in
//! `stats`, the clock the main task moves in `clock`, async routes in
//! `deferred`.

mod backend;
mod clock;
mod deferred;
mod stats;

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use http::Method;
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{AsyncConfig, ClassMatch, Config};
use crate::gateway::route::limits_of;
use crate::gateway::router::Router;
use crate::shaper::{
    Admission, Arrival, Gate, Grant, KeyedLimiter, Limiter, Limits, Shaper, Ticket,
};

use super::trace::{Record, Trace};

pub use backend::{BackendModel, Rng, ServiceTime};
pub(crate) use stats::{Bucket, DeferredStats, RouteStats, Stats, reason_index};

use clock::{MS, VirtualClock};
use deferred::Deferred;
use stats::Recorder;

/// A request in service inline, freeing its slots at `at`.
struct Completion {
    at: u64,
    seq: u64,
    upstream: usize,
    permit: OwnedSemaphorePermit,
    backend: Option<OwnedSemaphorePermit>,
}

impl PartialEq for Completion {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Completion {}

impl PartialOrd for Completion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Completion {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

struct SimUpstream {
    inflight: Arc<Semaphore>,
    /// The backend model's concurrency, if limited.
    backend: Option<Arc<Semaphore>>,
}

struct SimRoute {
    shaper: Arc<Shaper>,
    upstream: usize,
    /// An async route's accept side and delivery.
    deferred: Option<Arc<Deferred>>,
    /// Per-key limit: (dry run, limiter).
    key_limit: Option<(bool, KeyedLimiter)>,
    /// The route's rate in dry-run mode, counted only.
    dry_limit: Option<Limiter>,
    /// Trace class index to the route's class (`None`: the route has no such class).
    trace_classes: Vec<Option<usize>>,
    /// For requests without a class: the route's path and method rules
    /// (a header rule never matches: traces carry no headers).
    class_rules: Vec<ClassMatch>,
    default_class: usize,
}

/// Tasks still running; the replay ends when none are left.
struct Live {
    count: AtomicUsize,
    idle: Notify,
}

struct LiveGuard(Arc<Live>);

impl Live {
    fn enter(self: &Arc<Self>) -> LiveGuard {
        self.count.fetch_add(1, AtomicOrdering::Relaxed);
        LiveGuard(self.clone())
    }

    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            if self.count.load(AtomicOrdering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, AtomicOrdering::AcqRel) == 1 {
            self.0.idle.notify_one();
        }
    }
}

/// Holds the backend slot (if the model limits concurrency) for the service time.
async fn serve(backend: Option<Arc<Semaphore>>, service: u64) {
    let _slot = match backend {
        // (Never closed: an error would mean no slot to hold.)
        Some(backend) => backend.acquire_owned().await.ok(),
        None => None,
    };
    tokio::time::sleep(Duration::from_nanos(service)).await;
}

/// Drops a permit; true if that handed it to a waiter (who must now run).
fn release(semaphore: &Semaphore, permit: OwnedSemaphorePermit) -> bool {
    let before = semaphore.available_permits();
    drop(permit);
    semaphore.available_permits() == before
}

/// A time-series bucket of about a thousandth of the run: 1, 2 or 5 x 10^k ms.
fn bucket_width(span: Duration) -> Duration {
    let target = span.as_nanos() as u64 / 1000;
    let mut unit = MS;
    loop {
        for m in [1, 2, 5] {
            if unit * m >= target {
                return Duration::from_nanos(unit * m);
            }
        }
        unit *= 10;
    }
}

/// Replays `trace` through `config`'s routes with `model` as the backend.
pub(crate) async fn replay(
    config: &Config,
    trace: &Trace,
    model: &BackendModel,
) -> anyhow::Result<Stats> {
    let origin = Instant::now();
    let upstreams = sim_upstreams(config, model);
    let bucket = bucket_of(config, trace);
    let recorder = Arc::new(Mutex::new(Recorder {
        bucket_ns: bucket.as_nanos() as u64,
        routes: (0..=config.routes.len())
            .map(|_| RouteStats::default())
            .collect(),
    }));
    let routes = sim_routes(config, trace, &upstreams, (origin, &recorder))?;
    let live = Arc::new(Live {
        count: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    let mut replay = Replay {
        trace,
        model: *model,
        router: Router::new(&config.routes),
        routes,
        upstreams,
        recorder: recorder.clone(),
        live: live.clone(),
        clock: VirtualClock {
            origin,
            now: 0,
            checked: false,
        },
        heap: BinaryHeap::new(),
        rng: Rng(model.seed),
        seq: 0,
    };
    replay.run().await;
    live.wait_idle().await;
    let virtual_time = origin.elapsed();
    drop(replay);
    let mut recorder = recorder.lock();
    Ok(Stats {
        routes: std::mem::take(&mut recorder.routes),
        bucket,
        virtual_time,
    })
}

/// Each upstream's in-flight cap, and the backend model's own (if any).
fn sim_upstreams(config: &Config, model: &BackendModel) -> Vec<SimUpstream> {
    config
        .upstreams
        .values()
        .map(|u| SimUpstream {
            inflight: Arc::new(Semaphore::new(u.max_inflight.get())),
            backend: model.concurrency.map(|c| Arc::new(Semaphore::new(c.get()))),
        })
        .collect()
}

/// Each route's real shaper (on its upstream's in-flight cap) and limiters,
/// and how the trace's classes map onto the route's.
fn sim_routes(
    config: &Config,
    trace: &Trace,
    upstreams: &[SimUpstream],
    (origin, recorder): (Instant, &Arc<Mutex<Recorder>>),
) -> anyhow::Result<Vec<SimRoute>> {
    let upstream_names: Vec<&String> = config.upstreams.keys().collect();
    let gate = Arc::new(Gate::new(true));
    let mut routes = Vec::with_capacity(config.routes.len());
    for r in &config.routes {
        let upstream = upstream_names
            .iter()
            .position(|name| **name == r.upstream)
            .ok_or_else(|| {
                anyhow::anyhow!("route `{}` names unknown upstream `{}`", r.name, r.upstream)
            })?;
        let classes = r.classes.len() + 1;
        let trace_classes = trace
            .classes
            .iter()
            .map(|name| match name.as_str() {
                "default" => Some(classes - 1),
                name => r.classes.iter().position(|c| c.name == name),
            })
            .collect();
        let shaper = Arc::new(Shaper::new(
            // A global (Redis) rate is simulated as this one shaper
            // holding the whole rate: the trace is the fleet's traffic.
            Limits {
                shared: None,
                ..limits_of(r, classes)
            },
            upstreams[upstream].inflight.clone(),
            gate.clone(),
        ));
        let deferred = r.deferred.as_ref().map(|a| {
            let wiring = deferred::Wiring {
                shaper: shaper.clone(),
                backend: upstreams[upstream].backend.clone(),
            };
            Deferred::start(routes.len(), a, wiring, origin, recorder.clone())
        });
        routes.push(SimRoute {
            shaper,
            upstream,
            deferred,
            key_limit: r
                .key_limit
                .map(|k| (k.dry_run, KeyedLimiter::new(k.rate, k.burst, k.max_keys))),
            dry_limit: r
                .limit
                .filter(|l| l.dry_run)
                .map(|l| Limiter::new(l.rate, l.burst)),
            trace_classes,
            class_rules: r.classes.iter().map(|c| c.matcher.clone()).collect(),
            default_class: classes - 1,
        });
    }
    Ok(routes)
}

/// The time-series bucket: the trace's span plus the longest queue timeout
/// (the last waiter's outcome) or async backlog (see [`backlog_horizon`])
/// and a second's margin, over about a thousand.
fn bucket_of(config: &Config, trace: &Trace) -> Duration {
    let longest_timeout = config
        .routes
        .iter()
        .map(|r| {
            r.deferred
                .map_or(r.queue.timeout, |a| backlog_horizon(r, &a))
        })
        .max()
        .unwrap_or_default();
    bucket_width(trace.duration() + longest_timeout + Duration::from_secs(1))
}

/// How long after the last arrival an async route's backlog can last: at
/// most `deliver_within` (then it expires), and, at its rate, no longer than
/// a full backlog (`capacity`) takes to deliver.
fn backlog_horizon(route: &crate::config::RouteConfig, deferred: &AsyncConfig) -> Duration {
    let full = route
        .limit
        .map(|l| Duration::from_secs_f64(deferred.capacity.get() as f64 / l.rate));
    full.map_or(deferred.deliver_within, |full| {
        full.min(deferred.deliver_within)
    })
}

impl SimRoute {
    /// The request's class: the trace's, mapped onto the route's (a class
    /// the route lacks counts and goes to the default), else the route's
    /// path and method rules.
    fn class_of(
        &self,
        record: &Record,
        path: &str,
        method: &Method,
        stats: &mut RouteStats,
    ) -> usize {
        if record.class != 0 {
            return self.trace_classes[usize::from(record.class)].unwrap_or_else(|| {
                stats.unknown_class += 1;
                self.default_class
            });
        }
        self.class_rules
            .iter()
            .position(|rule| match rule {
                ClassMatch::PathPrefix(prefix) => path.starts_with(prefix.as_str()),
                ClassMatch::Methods(methods) => methods.contains(method),
                ClassMatch::Header { .. } => false,
            })
            .unwrap_or(self.default_class)
    }

    /// The per-key limit, then the route's dry-run rate (counted only).
    /// False if the key's limit turns the request away.
    fn within_limits(&self, record: &Record, now: Instant, stats: &mut RouteStats) -> bool {
        if let Some((dry_run, limiter)) = &self.key_limit {
            if !record.has_key {
                stats.keyless += 1;
            } else if limiter.check(record.key, now).is_err() {
                if !*dry_run {
                    return false;
                }
                stats.dry_run_key += 1;
            }
        }
        if let Some(limiter) = &self.dry_limit
            && limiter.check(now).is_err()
        {
            stats.dry_run_route += 1;
        }
        true
    }
}

struct Replay<'t> {
    trace: &'t Trace,
    model: BackendModel,
    router: Router,
    routes: Vec<SimRoute>,
    upstreams: Vec<SimUpstream>,
    recorder: Arc<Mutex<Recorder>>,
    live: Arc<Live>,
    clock: VirtualClock,
    heap: BinaryHeap<Reverse<Completion>>,
    rng: Rng,
    seq: u64,
}

/// A request the shaper let through or queued: its route, arrival and
/// sampled service time.
struct Admitted {
    route: usize,
    at: u64,
    service: u64,
}

/// How an arrival went up to the shaper.
enum Admit {
    /// It ended (no route, 429, refused), or an async route took it; `woke`:
    /// another task may now run.
    Done { woke: bool },
    /// The shaper let it through, queued it or turned it away.
    Shaped(Admitted, Admission),
}

impl Replay<'_> {
    /// The trace in order: inline completions due, the clock to the
    /// arrival, the arrival; then the completions left.
    async fn run(&mut self) {
        // Let the release tasks start waiting before the first arrival.
        tokio::task::yield_now().await;
        for record in self.trace.records() {
            self.complete_until(record.at).await;
            self.clock.goto(record.at).await;
            if self.arrive(record) {
                tokio::task::yield_now().await;
            }
        }
        self.complete_until(u64::MAX).await;
        self.clock.align();
    }

    /// Finishes, in time order, the inline requests due by `until`.
    async fn complete_until(&mut self, until: u64) {
        while let Some(Reverse(next)) = self.heap.peek() {
            let at = next.at;
            if at > until {
                return;
            }
            self.clock.goto(at).await;
            let mut woke = false;
            while self.heap.peek().is_some_and(|Reverse(c)| c.at <= at) {
                let Some(Reverse(done)) = self.heap.pop() else {
                    break;
                };
                let upstream = &self.upstreams[done.upstream];
                if let (Some(slot), Some(backend)) = (done.backend, &upstream.backend) {
                    woke |= release(backend, slot);
                }
                woke |= release(&upstream.inflight, done.permit);
            }
            if woke {
                tokio::task::yield_now().await;
            }
        }
    }

    /// One arrival, now. True if it woke or started another task.
    fn arrive(&mut self, record: &Record) -> bool {
        let (admitted, admission) = match self.admit(record) {
            Admit::Done { woke } => return woke,
            Admit::Shaped(admitted, admission) => (admitted, admission),
        };
        let upstream = self.routes[admitted.route].upstream;
        match admission {
            Admission::Go(grant) => {
                self.serve_inline(upstream, grant, admitted.at, admitted.service)
            }
            Admission::Queued(ticket) => {
                self.wait_in_queue(&admitted, upstream, ticket);
                true
            }
            // Recorded by `admit`.
            Admission::Rejected(_) => false,
        }
    }

    /// The request's phases up to the shaper's answer, as the proxy runs
    /// them: route, classify, per-key and dry-run limits, admit (or, on an
    /// async route, accept); each outcome recorded.
    fn admit(&mut self, record: &Record) -> Admit {
        let trace = self.trace;
        let path = trace.path(record);
        let method = &trace.methods[usize::from(record.method)];
        let host = (record.host != 0).then(|| trace.hosts[usize::from(record.host)].as_str());
        let at = self.clock.now;
        let mut recorder = self.recorder.lock();
        let Some(index) = self.router.route(host, path, method) else {
            recorder.no_route(self.routes.len(), at);
            return Admit::Done { woke: false };
        };
        let route = &self.routes[index];
        recorder.offered(index, at);
        let class = route.class_of(record, path, method, &mut recorder.routes[index]);
        if !route.within_limits(record, self.clock.instant(), &mut recorder.routes[index]) {
            recorder.rate_limited(index, at);
            return Admit::Done { woke: false };
        }
        if let Some(deferred) = &route.deferred {
            drop(recorder);
            let service = self.rng.service(self.model.service_time);
            let woke = deferred.accept(at, service, self.live.enter());
            return Admit::Done { woke };
        }
        let arrival = Arrival {
            class,
            key: if record.has_key { record.key } else { 0 },
        };
        let service = self.rng.service(self.model.service_time);
        let admission = route.shaper.admit(arrival);
        match &admission {
            Admission::Go(_) => recorder.fast(index, at),
            Admission::Queued(_) => recorder.queued(index, at, route.shaper.depth()),
            Admission::Rejected(rejection) => {
                recorder.refused(index, at, rejection.reason);
                return Admit::Done { woke: false };
            }
        }
        let admitted = Admitted {
            route: index,
            at,
            service,
        };
        Admit::Shaped(admitted, admission)
    }

    /// Let through at once: served inline (its completion on the heap), or
    /// in a task if the backend model is busy. True if a task was started.
    fn serve_inline(&mut self, upstream: usize, grant: Grant, at: u64, service: u64) -> bool {
        let permit = grant.into_permit();
        let slot = match &self.upstreams[upstream].backend {
            None => None,
            Some(backend) => match backend.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    // The backend is busy: wait for it, in order, in a task.
                    let backend = Some(backend.clone());
                    let live = self.live.enter();
                    tokio::spawn(async move {
                        let _live = live;
                        serve(backend, service).await;
                        drop(permit);
                    });
                    return true;
                }
            },
        };
        self.seq += 1;
        self.heap.push(Reverse(Completion {
            at: at + service,
            seq: self.seq,
            upstream,
            permit,
            backend: slot,
        }));
        false
    }

    /// Queued: a task awaits the ticket, records how the wait ended and,
    /// if let through, holds the in-flight slot for the service time.
    fn wait_in_queue(&self, admitted: &Admitted, upstream: usize, ticket: Ticket) {
        let recorder = self.recorder.clone();
        let backend = self.upstreams[upstream].backend.clone();
        let origin = self.clock.origin;
        let live = self.live.enter();
        let (index, at, service) = (admitted.route, admitted.at, admitted.service);
        tokio::spawn(async move {
            let _live = live;
            let result = ticket.wait().await;
            let left = (Instant::now() - origin).as_nanos() as u64;
            let waited = left - at;
            match result {
                Ok(grant) => {
                    recorder.lock().left_queue(index, left, waited, Ok(()));
                    let permit = grant.into_permit();
                    serve(backend, service).await;
                    drop(permit);
                }
                Err(rejection) => {
                    let reason = rejection.reason;
                    recorder.lock().left_queue(index, left, waited, Err(reason));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_round() {
        assert_eq!(
            bucket_width(Duration::from_millis(500)),
            Duration::from_millis(1)
        );
        assert_eq!(
            bucket_width(Duration::from_secs(5)),
            Duration::from_millis(5)
        );
        assert_eq!(
            bucket_width(Duration::from_secs(200)),
            Duration::from_millis(200)
        );
    }
}
