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

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::num::NonZeroUsize;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::task::{Context, Waker};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{ClassMatch, Config};
use crate::gateway::route::limits_of;
use crate::gateway::router::Router;
use crate::outcome::Outcome;
use crate::shaper::{
    Admission, Arrival, Gate, KeyedLimiter, Limiter, Limits, RejectReason, Shaper,
};

use super::trace::{Record, Trace};

const MS: u64 = 1_000_000;

/// How long the backend takes to answer one request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ServiceTime {
    /// Every request takes exactly this long.
    Fixed(Duration),
    /// Exponentially distributed with this mean (seeded, repeatable).
    Exponential(Duration),
}

impl std::str::FromStr for ServiceTime {
    type Err = String;

    /// A duration as humantime reads it (`10ms`, `1s 500ms`), or `exp:MEAN`
    /// (`exp:10ms`) for a sampled exponential.
    fn from_str(text: &str) -> Result<ServiceTime, String> {
        let (exp, duration) = match text.strip_prefix("exp:") {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let duration = humantime::parse_duration(duration.trim())
            .map_err(|err| format!("`{text}`: {err} (expected e.g. `10ms` or `exp:10ms`)"))?;
        Ok(if exp {
            ServiceTime::Exponential(duration)
        } else {
            ServiceTime::Fixed(duration)
        })
    }
}

impl std::fmt::Display for ServiceTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceTime::Fixed(d) => write!(f, "{}", humantime::format_duration(*d)),
            ServiceTime::Exponential(d) => write!(f, "exp:{}", humantime::format_duration(*d)),
        }
    }
}

/// The backend behind every upstream (each upstream gets its own instance).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendModel {
    pub service_time: ServiceTime,
    /// Requests the backend serves at once; more wait at the backend, in
    /// order, still holding sluice's in-flight slot. `None`: no limit.
    pub concurrency: Option<NonZeroUsize>,
    /// Seed of the service-time sampler.
    pub seed: u64,
}

impl BackendModel {
    /// A backend answering every request after `service_time`, with no concurrency limit.
    pub fn fixed(service_time: Duration) -> BackendModel {
        BackendModel {
            service_time: ServiceTime::Fixed(service_time),
            concurrency: None,
            seed: 1,
        }
    }
}

/// SplitMix64: small, fast and seeded; enough for service-time samples (and
/// for generating benchmark traces).
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Exponentially distributed with the given mean (e.g. the gap between
    /// arrivals of a Poisson process: mean = 1 / rate).
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -(1.0 - self.unit()).ln() * mean
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    fn service(&mut self, model: ServiceTime) -> u64 {
        match model {
            ServiceTime::Fixed(d) => d.as_nanos() as u64,
            ServiceTime::Exponential(mean) => {
                let sample = self.exponential(mean.as_nanos() as f64);
                sample.round() as u64
            }
        }
    }
}

/// What the replay measured, per route (the last entry: requests no route matched).
pub(crate) struct Stats {
    pub routes: Vec<RouteStats>,
    pub bucket: Duration,
    /// Virtual time from the first arrival until the last request finished.
    pub virtual_time: Duration,
}

#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Bucket {
    pub offered: u32,
    pub released: u32,
    pub rejected: u32,
    pub rate_limited: u32,
    pub dropped: u32,
    /// The most requests queued at once during the bucket.
    pub depth: u32,
}

#[derive(Debug, Default)]
pub(crate) struct RouteStats {
    pub offered: u64,
    pub outcomes: [u64; Outcome::ALL.len()],
    /// By [`reason_index`].
    pub reasons: [u64; 5],
    /// Admitted on the fast path: waited zero.
    pub zero_waits: u64,
    /// Waits of requests that left the queue (released, dropped or displaced), ns.
    pub waits: Vec<u64>,
    pub peak_depth: usize,
    pub dry_run_route: u64,
    pub dry_run_key: u64,
    /// Requests without a key on a route with a per-key limit (not limited).
    pub keyless: u64,
    /// Requests naming a class the route does not have (put in `default`).
    pub unknown_class: u64,
    pub series: Vec<Bucket>,
    depth: u32,
}

pub(crate) fn reason_index(reason: RejectReason) -> usize {
    match reason {
        RejectReason::QueueFull => 0,
        RejectReason::WaitTooLong => 1,
        RejectReason::Displaced => 2,
        RejectReason::Timeout => 3,
        RejectReason::Closed => 4,
    }
}

/// The outcome the proxy records for a refusal.
fn refusal_outcome(reason: RejectReason) -> Outcome {
    match reason {
        RejectReason::QueueFull | RejectReason::WaitTooLong | RejectReason::Displaced => {
            Outcome::RejectedQueueFull
        }
        RejectReason::Timeout | RejectReason::Closed => Outcome::DroppedTimeout,
    }
}

/// Counts, waits and the time series, written in event order by the main
/// task and the queued requests' tasks.
struct Recorder {
    bucket_ns: u64,
    routes: Vec<RouteStats>,
}

impl RouteStats {
    fn bucket(&mut self, bucket_ns: u64, at: u64) -> &mut Bucket {
        let index = (at / bucket_ns) as usize;
        if index >= self.series.len() {
            // Buckets without events held the depth as it was.
            let depth = self.depth;
            self.series.resize(
                index + 1,
                Bucket {
                    depth,
                    ..Bucket::default()
                },
            );
        }
        &mut self.series[index]
    }

    fn outcome(&mut self, outcome: Outcome) {
        self.outcomes[outcome as usize] += 1;
    }

    fn set_depth(&mut self, bucket_ns: u64, at: u64, depth: u32) {
        self.depth = depth;
        let bucket = self.bucket(bucket_ns, at);
        bucket.depth = bucket.depth.max(depth);
    }
}

impl Recorder {
    fn offered(&mut self, route: usize, at: u64) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.offered += 1;
        r.bucket(bucket_ns, at).offered += 1;
    }

    fn no_route(&mut self, route: usize, at: u64) {
        self.offered(route, at);
        self.routes[route].outcome(Outcome::NoRoute);
    }

    fn rate_limited(&mut self, route: usize, at: u64) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.outcome(Outcome::RejectedRateLimited);
        r.bucket(bucket_ns, at).rate_limited += 1;
    }

    fn released(&mut self, route: usize, at: u64) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.outcome(Outcome::Forwarded);
        r.bucket(bucket_ns, at).released += 1;
    }

    fn refused(&mut self, route: usize, at: u64, reason: RejectReason) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        let outcome = refusal_outcome(reason);
        r.outcome(outcome);
        r.reasons[reason_index(reason)] += 1;
        let bucket = r.bucket(bucket_ns, at);
        if outcome == Outcome::DroppedTimeout {
            bucket.dropped += 1;
        } else {
            bucket.rejected += 1;
        }
    }

    fn fast(&mut self, route: usize, at: u64) {
        self.routes[route].zero_waits += 1;
        self.released(route, at);
    }

    fn queued(&mut self, route: usize, at: u64, shaper_depth: usize) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.peak_depth = r.peak_depth.max(shaper_depth);
        let depth = r.depth + 1;
        r.set_depth(bucket_ns, at, depth);
    }

    fn left_queue(&mut self, route: usize, at: u64, waited: u64, result: Result<(), RejectReason>) {
        let bucket_ns = self.bucket_ns;
        let r = &mut self.routes[route];
        r.waits.push(waited);
        let depth = r.depth.saturating_sub(1);
        r.set_depth(bucket_ns, at, depth);
        match result {
            Ok(()) => self.released(route, at),
            Err(reason) => self.refused(route, at, reason),
        }
    }
}

/// The paused tokio clock, as the main task moves it.
struct VirtualClock {
    origin: Instant,
    /// Nanoseconds after `origin`; the clock reads exactly this.
    now: u64,
    /// The first jump was checked against the runtime's clock.
    checked: bool,
}

impl VirtualClock {
    fn instant(&self) -> Instant {
        self.origin + Duration::from_nanos(self.now)
    }

    /// Moves to `to`: timers up to its millisecond tick fire on their ticks
    /// (other tasks run there), then the clock steps to the exact instant.
    async fn goto(&mut self, to: u64) {
        if to <= self.now {
            return;
        }
        let tick = to / MS * MS;
        if tick > self.now {
            self.align();
            // The runtime advances tick by tick through the timers in between.
            tokio::time::sleep_until(self.origin + Duration::from_nanos(tick)).await;
            self.now = tick;
            debug_assert_eq!(Instant::now(), self.instant(), "virtual clock off its tick");
        }
        if to > self.now {
            self.jump(to);
        }
    }

    /// Onto the next millisecond tick if between ticks: the runtime's own
    /// advances (to the next timer) then land on ticks, as timers do.
    fn align(&mut self) {
        if !self.now.is_multiple_of(MS) {
            self.jump((self.now / MS + 1) * MS);
        }
    }

    /// Moves the paused clock forward to `to` without yielding. Only called
    /// between ticks, where no timer is due (timers fire on ticks), or onto
    /// a tick that the next `sleep_until` then processes.
    ///
    /// `tokio::time::advance` moves the clock on its first poll and then
    /// yields once; its first poll is all that is wanted here, so it is
    /// polled once and dropped (the yield's wake-up goes to a no-op waker).
    fn jump(&mut self, to: u64) {
        let step = Duration::from_nanos(to - self.now);
        let mut advance = pin!(tokio::time::advance(step));
        let _pending = advance
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()));
        self.now = to;
        if !self.checked {
            // Should tokio ever stop advancing on the first poll, fail loudly.
            assert_eq!(
                Instant::now(),
                self.instant(),
                "the paused clock did not move"
            );
            self.checked = true;
        }
        debug_assert_eq!(Instant::now(), self.instant(), "virtual clock jump");
    }
}

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
    shaper: Shaper,
    upstream: usize,
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
    let upstream_names: Vec<&String> = config.upstreams.keys().collect();
    let upstreams: Vec<SimUpstream> = config
        .upstreams
        .values()
        .map(|u| SimUpstream {
            inflight: Arc::new(Semaphore::new(u.max_inflight.get())),
            backend: model.concurrency.map(|c| Arc::new(Semaphore::new(c.get()))),
        })
        .collect();
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
        routes.push(SimRoute {
            shaper: Shaper::new(
                // A global (Redis) rate is simulated as this one shaper
                // holding the whole rate: the trace is the fleet's traffic.
                Limits {
                    shared: None,
                    ..limits_of(r, classes)
                },
                upstreams[upstream].inflight.clone(),
                gate.clone(),
            ),
            upstream,
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
    let router = Router::new(&config.routes);
    let longest_timeout = config
        .routes
        .iter()
        .map(|r| r.queue.timeout)
        .max()
        .unwrap_or_default();
    let bucket = bucket_width(trace.duration() + longest_timeout + Duration::from_secs(1));
    let recorder = Arc::new(Mutex::new(Recorder {
        bucket_ns: bucket.as_nanos() as u64,
        routes: (0..=routes.len()).map(|_| RouteStats::default()).collect(),
    }));
    let live = Arc::new(Live {
        count: AtomicUsize::new(0),
        idle: Notify::new(),
    });
    let mut replay = Replay {
        trace,
        model: *model,
        router,
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
    // Let the release tasks start waiting before the first arrival.
    tokio::task::yield_now().await;
    for record in trace.records() {
        replay.complete_until(record.at).await;
        replay.clock.goto(record.at).await;
        if replay.arrive(record) {
            tokio::task::yield_now().await;
        }
    }
    replay.complete_until(u64::MAX).await;
    replay.clock.align();
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

impl Replay<'_> {
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
        let Replay {
            trace,
            model,
            router,
            routes,
            upstreams,
            recorder: shared,
            live,
            clock,
            heap,
            rng,
            seq,
        } = self;
        let path = trace.path(record);
        let method = &trace.methods[usize::from(record.method)];
        let host = (record.host != 0).then(|| trace.hosts[usize::from(record.host)].as_str());
        let at = clock.now;
        let now = clock.instant();
        let Some(index) = router.route(host, path, method) else {
            shared.lock().no_route(routes.len(), at);
            return false;
        };
        let route = &routes[index];
        let mut recorder = shared.lock();
        recorder.offered(index, at);
        let class = if record.class != 0 {
            route.trace_classes[usize::from(record.class)].unwrap_or_else(|| {
                recorder.routes[index].unknown_class += 1;
                route.default_class
            })
        } else {
            route
                .class_rules
                .iter()
                .position(|rule| match rule {
                    ClassMatch::PathPrefix(prefix) => path.starts_with(prefix.as_str()),
                    ClassMatch::Methods(methods) => methods.contains(method),
                    ClassMatch::Header { .. } => false,
                })
                .unwrap_or(route.default_class)
        };
        if let Some((dry_run, limiter)) = &route.key_limit {
            if !record.has_key {
                recorder.routes[index].keyless += 1;
            } else if limiter.check(record.key, now).is_err() {
                if *dry_run {
                    recorder.routes[index].dry_run_key += 1;
                } else {
                    recorder.rate_limited(index, at);
                    return false;
                }
            }
        }
        if let Some(limiter) = &route.dry_limit
            && limiter.check(now).is_err()
        {
            recorder.routes[index].dry_run_route += 1;
        }
        let arrival = Arrival {
            class,
            key: if record.has_key { record.key } else { 0 },
        };
        let service = rng.service(model.service_time);
        let upstream = &upstreams[route.upstream];
        match route.shaper.admit(arrival) {
            Admission::Go(grant) => {
                recorder.fast(index, at);
                drop(recorder);
                let permit = grant.into_permit();
                let slot = match &upstream.backend {
                    None => None,
                    Some(backend) => match backend.clone().try_acquire_owned() {
                        Ok(slot) => Some(slot),
                        Err(_) => {
                            // The backend is busy: wait for it, in order, in a task.
                            let backend = Some(backend.clone());
                            let live = live.enter();
                            tokio::spawn(async move {
                                let _live = live;
                                serve(backend, service).await;
                                drop(permit);
                            });
                            return true;
                        }
                    },
                };
                *seq += 1;
                heap.push(Reverse(Completion {
                    at: at + service,
                    seq: *seq,
                    upstream: route.upstream,
                    permit,
                    backend: slot,
                }));
                false
            }
            Admission::Queued(ticket) => {
                recorder.queued(index, at, route.shaper.depth());
                drop(recorder);
                let recorder = shared.clone();
                let backend = upstream.backend.clone();
                let origin = clock.origin;
                let live = live.enter();
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
                true
            }
            Admission::Rejected(rejection) => {
                recorder.refused(index, at, rejection.reason);
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_time_parses() {
        assert_eq!(
            "10ms".parse::<ServiceTime>(),
            Ok(ServiceTime::Fixed(Duration::from_millis(10)))
        );
        assert_eq!(
            "exp:250us".parse::<ServiceTime>(),
            Ok(ServiceTime::Exponential(Duration::from_micros(250)))
        );
        assert!("fast".parse::<ServiceTime>().is_err());
        assert_eq!(
            ServiceTime::Exponential(Duration::from_millis(10)).to_string(),
            "exp:10ms"
        );
    }

    #[test]
    fn exponential_samples_have_the_mean() {
        let mut rng = Rng(7);
        let n = 200_000;
        let mean = Duration::from_millis(10);
        let sum: u64 = (0..n)
            .map(|_| rng.service(ServiceTime::Exponential(mean)))
            .sum();
        let got = sum as f64 / n as f64 / 1e6;
        assert!((got - 10.0).abs() < 0.1, "mean {got} ms");
    }

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
