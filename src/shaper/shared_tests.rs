//! The shaper with a shared rate, against an in-memory store on the paused
//! tokio clock: the same GCRA as `src/gcra.lua`, a set latency, and a switch
//! that makes it fail.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;

#[derive(Debug, Default)]
struct Inner {
    tat: Mutex<Option<Instant>>,
    latency: Duration,
    down: AtomicBool,
    calls: AtomicUsize,
    max_want: AtomicUsize,
}

#[derive(Debug, Clone, Default)]
struct FakeStore(Arc<Inner>);

impl FakeStore {
    fn new(latency: Duration) -> FakeStore {
        FakeStore(Arc::new(Inner {
            latency,
            ..Inner::default()
        }))
    }

    fn set_down(&self, down: bool) {
        self.0.down.store(down, Ordering::SeqCst);
    }

    fn calls(&self) -> usize {
        self.0.calls.load(Ordering::SeqCst)
    }

    fn max_want(&self) -> usize {
        self.0.max_want.load(Ordering::SeqCst)
    }
}

impl TokenStore for FakeStore {
    fn take(&self, want: NonZeroU32, p: GcraParams) -> StoreFuture {
        let inner = self.0.clone();
        inner.calls.fetch_add(1, Ordering::SeqCst);
        inner
            .max_want
            .fetch_max(want.get() as usize, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(inner.latency).await;
            if inner.down.load(Ordering::SeqCst) {
                return Err(StoreError("connection refused".into()));
            }
            let now = Instant::now();
            let mut stored = inner.tat.lock();
            let tat = stored.unwrap_or(now).max(now);
            // Tokens that conform by `now + slack`: the k-th (k >= 1) at
            // `tat + (k - 1) x interval - tolerance`.
            let count = |slack: Duration| {
                if now + p.tolerance + slack >= tat {
                    ((now + p.tolerance + slack - tat).as_nanos() / p.interval.as_nanos()) as u32
                        + 1
                } else {
                    0
                }
            };
            let granted = want.get().min(count(p.horizon));
            let ready = granted.min(count(Duration::ZERO));
            let later_in = if ready < granted {
                (tat + p.interval * ready).saturating_duration_since(now + p.tolerance)
            } else {
                Duration::ZERO
            };
            let tat = tat + p.interval * granted;
            *stored = Some(tat);
            Ok(Taken {
                granted,
                next_in: tat.saturating_duration_since(now + p.tolerance),
                ready,
                later_in,
            })
        })
    }
}

fn shared_limits(rate: f64, burst: u32, spec: SharedRate, timeout_ms: u64) -> Limits {
    Limits {
        shared: Some(spec),
        ..Limits::fifo(
            Some((rate, NonZeroU32::new(burst).unwrap())),
            10_000,
            Duration::from_millis(timeout_ms),
        )
    }
}

fn spec(lease: u32, fallback: Fallback, instances: u32) -> SharedRate {
    SharedRate {
        lease: NonZeroU32::new(lease).unwrap(),
        fallback,
        instances: NonZeroU32::new(instances).unwrap(),
    }
}

fn instance(limits: Limits, store: &FakeStore) -> Shaper {
    Shaper::with_store(
        limits,
        Arc::new(Semaphore::new(10_000)),
        Arc::new(Gate::new(true)),
        Some(Arc::new(store.clone())),
    )
}

/// Admits `n` requests now; returns a task per request that yields the
/// grant time in ms after `start` (or the reason it was refused).
fn offer(
    shaper: &Shaper,
    n: usize,
    start: Instant,
) -> Vec<tokio::task::JoinHandle<Result<u64, RejectReason>>> {
    (0..n)
        .map(|_| match shaper.admit(Arrival::default()) {
            Admission::Go(_) => tokio::spawn(async move { Ok(ms_since(start)) }),
            Admission::Queued(ticket) => tokio::spawn(async move {
                match ticket.wait().await {
                    Ok(_) => Ok(ms_since(start)),
                    Err(r) => Err(r.reason),
                }
            }),
            Admission::Rejected(r) => tokio::spawn(async move { Err(r.reason) }),
        })
        .collect()
}

fn ms_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

async fn outcomes(
    tasks: Vec<tokio::task::JoinHandle<Result<u64, RejectReason>>>,
) -> (Vec<u64>, Vec<RejectReason>) {
    let mut granted = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Ok(at) => granted.push(at),
            Err(reason) => refused.push(reason),
        }
    }
    granted.sort_unstable();
    (granted, refused)
}

/// Most grants in any `window_ms` window.
fn busiest(times: &[u64], window_ms: u64) -> usize {
    times
        .iter()
        .map(|&t| {
            times
                .iter()
                .filter(|&&u| u >= t && u < t + window_ms)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn three_instances_share_one_rate() {
    let store = FakeStore::new(Duration::from_millis(1));
    let limits = shared_limits(100.0, 5, spec(1, Fallback::Local, 3), 10_000);
    let fleet: Vec<Shaper> = (0..3).map(|_| instance(limits, &store)).collect();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for shaper in &fleet {
        tasks.extend(offer(shaper, 100, start));
    }
    let (granted, refused) = outcomes(tasks).await;
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(granted.len(), 300);
    // The burst, then 100/s across the fleet: 295 more take 2.95 s.
    let last = *granted.last().unwrap();
    assert!((2_940..=2_980).contains(&last), "last grant at {last} ms");
    assert!(
        busiest(&granted, 1_000) <= 100 + 5 + 1,
        "{}",
        busiest(&granted, 1_000)
    );
    assert!(fleet.iter().all(|s| s.shared_fallback() == Some(false)));
    // Each instance reserves tokens for its waiters up to its queue
    // timeout ahead: a few calls, not one (or several) per request.
    assert!(
        store.calls() <= 12,
        "{} calls for 300 requests",
        store.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn a_lease_lets_requests_go_without_a_round_trip() {
    let store = FakeStore::new(Duration::from_millis(1));
    // 10,000/s, lease 20; requests arrive one by one, 4,000/s. (A lease
    // lapses after its share of the schedule, 20 x 100 us, at least 10 ms.)
    let shaper = instance(
        shared_limits(10_000.0, 100, spec(20, Fallback::Local, 1), 10_000),
        &store,
    );
    // The first waits for the first lease (one round trip)...
    let start = Instant::now();
    let (first, _) = outcomes(offer(&shaper, 1, start)).await;
    assert_eq!(first, vec![1]);
    assert_eq!(store.calls(), 1);
    // ...then none waits: the lease is topped up once half of it is spent,
    // and the round trip (1 ms: 4 arrivals) ends before it runs out.
    let mut waited = 0;
    for _ in 0..2_000 {
        tokio::time::advance(Duration::from_micros(250)).await;
        if !matches!(shaper.admit(Arrival::default()), Admission::Go(_)) {
            waited += 1;
        }
    }
    assert_eq!(waited, 0);
    // A round trip per 10 to 20 requests (half a lease to a whole one).
    assert!(
        (95..=250).contains(&store.calls()),
        "{} calls",
        store.calls()
    );
}

#[tokio::test(start_paused = true)]
async fn leased_tokens_lapse_when_not_spent_in_their_time() {
    let store = FakeStore::new(Duration::from_millis(1));
    // 10/s, lease 10: the lease covers 1 s of the schedule.
    let shaper = instance(
        shared_limits(10.0, 10, spec(10, Fallback::Local, 1), 10_000),
        &store,
    );
    let start = Instant::now();
    let _ = outcomes(offer(&shaper, 1, start)).await;
    assert!(matches!(shaper.admit(Arrival::default()), Admission::Go(_)));
    tokio::time::advance(Duration::from_millis(1_100)).await;
    // The eight left have lapsed: this one waits for a new lease.
    assert!(matches!(
        shaper.admit(Arrival::default()),
        Admission::Queued(_)
    ));
    assert_eq!(store.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_failing_store_falls_back_to_a_local_share_and_recovers() {
    let store = FakeStore::new(Duration::from_millis(1));
    store.set_down(true);
    // 100/s for a fleet of 4: 25/s each while the store is down.
    let shaper = instance(
        shared_limits(100.0, 4, spec(1, Fallback::Local, 4), 60_000),
        &store,
    );
    let start = Instant::now();
    let (granted, refused) = outcomes(offer(&shaper, 51, start)).await;
    assert!(refused.is_empty());
    assert_eq!(shaper.shared_fallback(), Some(true));
    // The first waits for the failed call, then 25/s: 50 more in 2 s.
    let last = *granted.last().unwrap();
    // (less the limiter's lateness tolerance, at most 20 ms)
    assert!((1_975..=2_030).contains(&last), "last at {last} ms");
    // Back-off while failing: 100 ms doubling to 5 s, not a call per request.
    assert!(store.calls() <= 6, "{} calls", store.calls());

    store.set_down(false);
    // Within the longest back-off (5 s, jittered up to 6.25 s), the store
    // is used again: 100/s.
    tokio::time::advance(Duration::from_millis(6_300)).await;
    let restart = Instant::now();
    let (granted, _) = outcomes(offer(&shaper, 200, restart)).await;
    assert_eq!(shaper.shared_fallback(), Some(false));
    let last = *granted.last().unwrap();
    assert!(
        (1_900..=2_100).contains(&last),
        "last at {last} ms: not 100/s"
    );
}

#[tokio::test(start_paused = true)]
async fn allow_lets_everything_go_while_the_store_fails() {
    let store = FakeStore::new(Duration::from_millis(1));
    store.set_down(true);
    let shaper = instance(
        shared_limits(10.0, 1, spec(1, Fallback::Allow, 1), 5_000),
        &store,
    );
    let start = Instant::now();
    // The first learns that the store is down; the rest go at once.
    let (granted, refused) = outcomes(offer(&shaper, 1, start)).await;
    assert!(refused.is_empty());
    assert_eq!(granted, vec![1]);
    for _ in 0..100 {
        assert!(matches!(shaper.admit(Arrival::default()), Admission::Go(_)));
    }
    // Recovered while idle: the releaser tries the store after its back-off.
    store.set_down(false);
    tokio::time::sleep(Duration::from_millis(6_300)).await;
    assert_eq!(shaper.shared_fallback(), Some(false));
}

#[tokio::test(start_paused = true)]
async fn deny_refuses_new_requests_and_queued_ones_keep_their_deadlines() {
    let store = FakeStore::new(Duration::from_millis(1));
    let shaper = instance(
        shared_limits(10.0, 1, spec(1, Fallback::Deny, 1), 2_000),
        &store,
    );
    let start = Instant::now();
    // Healthy: 1 at once, then 10/s; these 5 queue.
    let (granted, _) = outcomes(offer(&shaper, 1, start)).await;
    assert_eq!(granted.len(), 1);
    store.set_down(true);
    let queued = offer(&shaper, 5, start);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(shaper.shared_fallback(), Some(true));
    // New requests are refused at once.
    match shaper.admit(Arrival::default()) {
        Admission::Rejected(r) => assert_eq!(r.reason, RejectReason::WaitTooLong),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // The store returns at 1 s: the queued ones still in time are released
    // at 10/s; none is granted after its 2 s deadline.
    tokio::time::sleep_until(start + Duration::from_secs(1)).await;
    store.set_down(false);
    let (granted, refused) = outcomes(queued).await;
    assert!(granted.iter().all(|&t| t < 2_000), "{granted:?}");
    assert_eq!(granted.len() + refused.len(), 5);
    assert!(!granted.is_empty(), "nothing released after recovery");
    assert!(refused.iter().all(|r| *r == RejectReason::Timeout));
}

#[tokio::test(start_paused = true)]
async fn a_slow_store_never_lets_a_request_go_after_its_deadline() {
    // Each answer takes 800 ms; requests may wait 500 ms.
    let store = FakeStore::new(Duration::from_millis(800));
    let shaper = instance(
        shared_limits(100.0, 10, spec(5, Fallback::Local, 1), 500),
        &store,
    );
    let start = Instant::now();
    let (granted, refused) = outcomes(offer(&shaper, 20, start)).await;
    assert!(granted.is_empty(), "{granted:?}");
    assert_eq!(refused.len(), 20);
    assert!(refused.iter().all(|r| *r == RejectReason::Timeout));
    // The lease that came late (at 800 ms) is there for the next request.
    tokio::time::sleep_until(start + Duration::from_millis(801)).await;
    assert!(matches!(shaper.admit(Arrival::default()), Admission::Go(_)));
}

#[tokio::test(start_paused = true)]
async fn waiting_requests_are_asked_for_together_so_a_round_trip_does_not_bound_the_rate() {
    // 10,000/s with lease 1 and a 5 ms round trip: one token per call would
    // release 200/s at most.
    let store = FakeStore::new(Duration::from_millis(5));
    let shaper = instance(
        shared_limits(10_000.0, 100, spec(1, Fallback::Local, 1), 10_000),
        &store,
    );
    let start = Instant::now();
    let (granted, refused) = outcomes(offer(&shaper, 2_000, start)).await;
    assert!(refused.is_empty());
    // The burst of 100, then 1,900 at 10,000/s: 190 ms, plus round trips.
    let last = *granted.last().unwrap();
    assert!((185..=215).contains(&last), "last at {last} ms");
    assert!(store.calls() < 100, "{} calls", store.calls());
    // Never more than the requests waiting.
    assert!(store.max_want() <= 2_000);
}

#[tokio::test(start_paused = true)]
async fn requests_held_by_the_inflight_cap_are_not_asked_for() {
    let store = FakeStore::new(Duration::from_millis(1));
    let shaper = Shaper::with_store(
        shared_limits(1_000.0, 50, spec(2, Fallback::Local, 1), 10_000),
        Arc::new(Semaphore::new(4)),
        Arc::new(Gate::new(true)),
        Some(Arc::new(store.clone())),
    );
    let start = Instant::now();
    let tickets: Vec<Ticket> = (0..100)
        .map(|_| match shaper.admit(Arrival::default()) {
            Admission::Queued(t) => t,
            other => panic!("expected Queued, got {other:?}"),
        })
        .collect();
    // Each granted request holds its slot for 50 ms: 4 in flight at most.
    let tasks: Vec<_> = tickets
        .into_iter()
        .map(|t| {
            tokio::spawn(async move {
                let grant = t.wait().await.ok()?;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(grant);
                Some(ms_since(start))
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().is_some());
    }
    // 100 waiting, but only 4 could go at a time: never asked for more
    // than that (or the lease), so no tokens were taken from the fleet
    // only to lapse.
    assert!(store.max_want() <= 4, "asked for {}", store.max_want());
}

#[tokio::test(start_paused = true)]
async fn without_a_store_a_shared_rate_runs_on_its_fallback() {
    // As when `[redis]` could not be used: 100/s for 2 instances, local
    // fallback: 50/s here, and the route says it is on its fallback.
    let shaper = Shaper::with_store(
        shared_limits(100.0, 2, spec(1, Fallback::Local, 2), 10_000),
        Arc::new(Semaphore::new(100)),
        Arc::new(Gate::new(true)),
        None,
    );
    assert_eq!(shaper.shared_fallback(), Some(true));
    let start = Instant::now();
    let (granted, refused) = outcomes(offer(&shaper, 51, start)).await;
    assert!(refused.is_empty());
    // Burst 1 at once, then 50 at 50/s (less the lateness tolerance).
    let last = *granted.last().unwrap();
    assert!((975..=1_000).contains(&last), "last at {last} ms");
}
