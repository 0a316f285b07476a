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
//! Here the replay loop; the backend model in `backend`, what is counted in
//! `stats`, and the clock the main task moves in `clock`.

mod backend;
mod clock;
mod stats;

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::{ClassMatch, Config};
use crate::gateway::route::limits_of;
use crate::gateway::router::Router;
use crate::shaper::{Admission, Arrival, Gate, KeyedLimiter, Limiter, Limits, Shaper};

use super::trace::{Record, Trace};

pub use backend::{BackendModel, Rng, ServiceTime};
pub(crate) use stats::{Bucket, RouteStats, Stats, reason_index};

use clock::{MS, VirtualClock};
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
