//! The shaper: one route's admission control, free of HTTP and of the wall clock.
//!
//! A request asks [`Shaper::admit`] for leave to go. If nothing is queued and both
//! the GCRA limiter (a token) and the upstream's in-flight cap (a permit) allow it,
//! it goes at once — the fast path, no task hop. Otherwise it takes a place in a
//! bounded FIFO queue, unless the queue is full or the wait it can expect
//! (`queued ahead / rate`) already exceeds the route's timeout: such requests are
//! rejected at once instead of being held only to be dropped later.
//!
//! One release task per route hands out places in order: it waits for a live
//! waiter, then for an in-flight permit, then for a token, and gives both to the
//! waiter at the head. Invariants, all kept under the queue lock:
//! - a token is taken from the limiter only for a waiter that is still waiting,
//!   so a waiter that timed out or whose client left never spends one;
//! - a waiter leaves the queue exactly once: granted, timed out, cancelled or
//!   closed; a grant is never handed out after the waiter's deadline;
//! - memory is bounded by `capacity`: tombstones of waiters that left from the
//!   middle are compacted away once they outnumber the live waiters.
//!
//! Time comes from `tokio::time::Instant`, so tests run under a paused clock.

use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

/// The limits one route is shaped by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests per second and burst; `None` leaves only the in-flight cap.
    pub rate: Option<(f64, NonZeroU32)>,
    /// Waiters the queue holds at most (0: no queue).
    pub capacity: usize,
    /// The longest a request may wait in the queue.
    pub timeout: Duration,
}

/// What [`Shaper::admit`] decided.
#[derive(Debug)]
pub enum Admission {
    /// Go now (the fast path).
    Go(Grant),
    /// Wait in the queue; [`Ticket::wait`] says how it ends.
    Queued(Ticket),
    /// Answer at once.
    Rejected(Rejection),
}

/// Leave to forward one request: holds one of the upstream's in-flight slots
/// until dropped.
#[derive(Debug)]
pub struct Grant {
    permit: OwnedSemaphorePermit,
    waited: Duration,
}

impl Grant {
    /// How long the request waited in the queue (zero on the fast path).
    pub fn waited(&self) -> Duration {
        self.waited
    }

    /// The in-flight slot, to be held for as long as the request is in flight.
    pub fn into_permit(self) -> OwnedSemaphorePermit {
        self.permit
    }
}

/// Why a request was turned away without being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The queue had no room.
    QueueFull,
    /// The queue had room, but the expected wait exceeded the timeout.
    WaitTooLong,
    /// The request waited until its deadline.
    Timeout,
    /// The shaper was closed (shutdown) while the request waited.
    Closed,
}

/// A refusal, with an honest estimate of when trying again makes sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub retry_after: Duration,
}

/// A place in the queue. Dropping it before it resolves (the client left)
/// removes it from the queue without spending a token.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    enqueued_at: Instant,
    deadline: Instant,
    rx: oneshot::Receiver<Grant>,
    shared: Arc<Shared>,
    done: bool,
}

/// One route's shaper. Dropping it stops its release task.
#[derive(Debug)]
pub struct Shaper {
    shared: Arc<Shared>,
    releaser: tokio::task::JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    limits: Limits,
    limiter: Option<Limiter>,
    /// The upstream's in-flight cap, shared with every route using it.
    inflight: Arc<Semaphore>,
    queue: Mutex<Queue>,
    /// Signalled when a waiter joins the queue.
    joined: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    /// Waiters in arrival order; ids strictly increase front to back.
    /// An entry whose `tx` is `None` is a tombstone.
    entries: VecDeque<Entry>,
    live: usize,
    next_id: u64,
    /// When the limiter will next have a token, as last seen by the releaser.
    next_token_at: Option<Instant>,
    closed: bool,
}

#[derive(Debug)]
struct Entry {
    id: u64,
    enqueued_at: Instant,
    tx: Option<oneshot::Sender<Grant>>,
}

/// Entries beyond `live` that are tolerated before the queue is compacted.
const TOMBSTONE_SLACK: usize = 64;

impl Shaper {
    /// Builds a route's shaper drawing in-flight permits from `inflight`.
    /// Must be called inside a tokio runtime (it spawns the release task).
    pub fn new(limits: Limits, inflight: Arc<Semaphore>) -> Shaper {
        let shared = Arc::new(Shared {
            limits,
            limiter: limits.rate.map(|(rate, burst)| Limiter::new(rate, burst)),
            inflight,
            queue: Mutex::new(Queue::default()),
            joined: Notify::new(),
        });
        let releaser = tokio::spawn(release(shared.clone()));
        Shaper { shared, releaser }
    }

    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    /// Decides at once what happens to a request arriving now.
    pub fn admit(&self) -> Admission {
        let shared = &self.shared;
        let now = Instant::now();
        let mut queue = shared.queue.lock();
        if queue.closed {
            return Admission::Rejected(Rejection {
                reason: RejectReason::Closed,
                retry_after: Duration::from_secs(1),
            });
        }
        let mut first_wait = Duration::ZERO;
        if queue.live == 0 {
            if let Ok(permit) = shared.inflight.clone().try_acquire_owned() {
                match shared.take_token(now) {
                    Ok(()) => {
                        return Admission::Go(Grant {
                            permit,
                            waited: Duration::ZERO,
                        });
                    }
                    Err(wait) => {
                        first_wait = wait;
                        queue.next_token_at = Some(now + wait);
                    }
                }
            }
        } else if let Some(at) = queue.next_token_at {
            first_wait = at.saturating_duration_since(now);
        }
        if queue.live >= shared.limits.capacity {
            return Admission::Rejected(Rejection {
                reason: RejectReason::QueueFull,
                retry_after: shared.drain_estimate(queue.live),
            });
        }
        let expected = first_wait + shared.drain_estimate_exact(queue.live);
        if expected > shared.limits.timeout {
            return Admission::Rejected(Rejection {
                reason: RejectReason::WaitTooLong,
                retry_after: shared.drain_estimate(queue.live),
            });
        }
        let (tx, rx) = oneshot::channel();
        let id = queue.next_id;
        queue.next_id += 1;
        queue.entries.push_back(Entry {
            id,
            enqueued_at: now,
            tx: Some(tx),
        });
        queue.live += 1;
        drop(queue);
        shared.joined.notify_one();
        Admission::Queued(Ticket {
            id,
            enqueued_at: now,
            deadline: now + shared.limits.timeout,
            rx,
            shared: shared.clone(),
            done: false,
        })
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.shared.queue.lock().live
    }

    /// How long the oldest waiter has waited.
    pub fn oldest_wait(&self) -> Duration {
        let queue = self.shared.queue.lock();
        queue
            .entries
            .iter()
            .find(|e| e.tx.is_some())
            .map_or(Duration::ZERO, |e| e.enqueued_at.elapsed())
    }

    /// Refuses new requests and answers every waiter with `Closed`.
    pub fn close(&self) {
        let mut queue = self.shared.queue.lock();
        queue.closed = true;
        queue.entries.clear();
        queue.live = 0;
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.close();
        self.releaser.abort();
    }
}

impl Ticket {
    /// Waits for a grant, or until the deadline.
    pub async fn wait(mut self) -> Result<Grant, Rejection> {
        let deadline = tokio::time::sleep_until(self.deadline);
        tokio::select! {
            biased;
            granted = &mut self.rx => {
                self.done = true;
                granted.map_err(|_| self.shared.gone())
            }
            () = deadline => {
                self.done = true;
                if self.shared.leave(self.id) {
                    Err(self.shared.gone())
                } else {
                    // Granted in the same instant the deadline fired: the grant
                    // was made in time, so it stands.
                    self.rx.try_recv().map_err(|_| self.shared.gone())
                }
            }
        }
    }

    /// When this waiter joined the queue.
    pub fn enqueued_at(&self) -> Instant {
        self.enqueued_at
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            // The client left while queued.
            self.shared.leave(self.id);
        }
    }
}

impl Shared {
    /// Removes waiter `id` if it is still queued; false if it was already granted.
    fn leave(&self, id: u64) -> bool {
        let mut queue = self.queue.lock();
        let Ok(index) = queue.entries.binary_search_by_key(&id, |e| e.id) else {
            return false;
        };
        if queue.entries[index].tx.take().is_none() {
            return false;
        }
        queue.live -= 1;
        queue.trim();
        true
    }

    /// Why a waiter left the queue without a grant: it was closed, or it expired.
    fn gone(&self) -> Rejection {
        let queue = self.queue.lock();
        if queue.closed {
            Rejection {
                reason: RejectReason::Closed,
                retry_after: Duration::from_secs(1),
            }
        } else {
            Rejection {
                reason: RejectReason::Timeout,
                retry_after: self.drain_estimate(queue.live),
            }
        }
    }

    fn take_token(&self, now: Instant) -> Result<(), Duration> {
        match &self.limiter {
            None => Ok(()),
            Some(limiter) => limiter.check(now),
        }
    }

    /// Time for `depth` queued requests to leave at the configured rate.
    fn drain_estimate_exact(&self, depth: usize) -> Duration {
        match self.limits.rate {
            Some((rate, _)) => Duration::from_secs_f64(depth as f64 / rate),
            None => Duration::ZERO,
        }
    }

    /// Retry-After: the drain time of the queue, in whole seconds, at least one.
    fn drain_estimate(&self, depth: usize) -> Duration {
        let secs = self.drain_estimate_exact(depth + 1).as_secs_f64().ceil();
        Duration::from_secs((secs as u64).max(1))
    }
}

impl Queue {
    /// Tombstones waiters at the head that joined at or before `cutoff`: their
    /// deadline has passed even if their own timer has not fired yet, and a
    /// grant now would forward a request after its deadline.
    fn expire(&mut self, cutoff: Instant) {
        self.trim();
        while let Some(head) = self.entries.front_mut() {
            if head.enqueued_at > cutoff {
                break;
            }
            if head.tx.take().is_some() {
                self.live -= 1;
            }
            self.entries.pop_front();
        }
    }

    /// Drops tombstones at the front, and compacts when they pile up behind it.
    fn trim(&mut self) {
        while self.entries.front().is_some_and(|e| e.tx.is_none()) {
            self.entries.pop_front();
        }
        if self.entries.len() > 2 * self.live + TOMBSTONE_SLACK {
            self.entries.retain(|e| e.tx.is_some());
        }
    }
}

/// The release task: hands places out in order as permits and tokens allow.
async fn release(shared: Arc<Shared>) {
    loop {
        // A permit is only worth holding once somebody waits for it.
        loop {
            let joined = shared.joined.notified();
            if shared.queue.lock().live > 0 {
                break;
            }
            joined.await;
        }
        let Ok(permit) = shared.inflight.clone().acquire_owned().await else {
            return;
        };
        let mut permit = Some(permit);
        while let Some(held) = permit.take() {
            let wait = {
                let mut queue = shared.queue.lock();
                let now = Instant::now();
                queue.expire(now - shared.limits.timeout);
                if queue.live == 0 {
                    break; // everyone left while we waited; `held` goes back
                }
                match shared.take_token(now) {
                    Ok(()) => {
                        queue.next_token_at = None;
                        let head = queue.entries.pop_front();
                        queue.live -= 1;
                        queue.trim();
                        if let Some(Entry {
                            enqueued_at,
                            tx: Some(tx),
                            ..
                        }) = head
                        {
                            let grant = Grant {
                                permit: held,
                                waited: now - enqueued_at,
                            };
                            // The receiver outlives the entry (a ticket tombstones
                            // its entry under this lock before it is dropped).
                            let _unreachable = tx.send(grant);
                        }
                        break;
                    }
                    Err(wait) => {
                        queue.next_token_at = Some(now + wait);
                        permit = Some(held);
                        wait
                    }
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// A GCRA limiter (governor) reading the tokio clock.
#[derive(Debug)]
struct Limiter {
    gcra: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
    clock: TokioClock,
}

impl Limiter {
    fn new(rate: f64, burst: NonZeroU32) -> Limiter {
        let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        let clock = TokioClock {
            origin: Instant::now(),
        };
        Limiter {
            gcra: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
        }
    }

    /// Takes a token at `now`, or says how long until one is free.
    fn check(&self, now: Instant) -> Result<(), Duration> {
        self.gcra
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.at(now)))
    }
}

/// governor's clock over `tokio::time::Instant`, so a paused runtime drives it.
#[derive(Debug, Clone)]
struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    fn at(&self, instant: Instant) -> Nanos {
        Nanos::from(instant.saturating_duration_since(self.origin))
    }
}

impl GovernorClock for TokioClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        self.at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(rate: f64, burst: u32, capacity: usize, timeout_ms: u64) -> Limits {
        Limits {
            rate: Some((rate, NonZeroU32::new(burst).unwrap())),
            capacity,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    fn shaper(limits: Limits, inflight: usize) -> Shaper {
        Shaper::new(limits, Arc::new(Semaphore::new(inflight)))
    }

    fn ms_since(start: Instant) -> u64 {
        start.elapsed().as_millis() as u64
    }

    /// Spawns a waiter that records when (ms after `start`) it was granted,
    /// holding its in-flight slot for `hold`.
    fn spawn_waiter(
        ticket: Ticket,
        start: Instant,
        hold: Duration,
    ) -> tokio::task::JoinHandle<Result<u64, RejectReason>> {
        tokio::spawn(async move {
            match ticket.wait().await {
                Ok(grant) => {
                    let at = ms_since(start);
                    tokio::time::sleep(hold).await;
                    drop(grant);
                    Ok(at)
                }
                Err(rejection) => {
                    assert!(rejection.retry_after >= Duration::from_secs(1));
                    Err(rejection.reason)
                }
            }
        })
    }

    fn queued(admission: Admission) -> Ticket {
        match admission {
            Admission::Queued(ticket) => ticket,
            other => panic!("expected Queued, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn burst_goes_at_once_then_releases_at_exact_rate() {
        let shaper = shaper(limits(10.0, 2, 100, 10_000), 100);
        let start = Instant::now();
        let mut fast = Vec::new();
        let mut waiters = Vec::new();
        for _ in 0..8 {
            match shaper.admit() {
                Admission::Go(grant) => fast.push(grant),
                Admission::Queued(ticket) => {
                    waiters.push(spawn_waiter(ticket, start, Duration::ZERO))
                }
                Admission::Rejected(r) => panic!("rejected {r:?}"),
            }
        }
        assert_eq!(fast.len(), 2, "burst of 2 goes on the fast path");
        let mut times = Vec::new();
        for waiter in waiters {
            times.push(waiter.await.unwrap().unwrap());
        }
        assert_eq!(times, vec![100, 200, 300, 400, 500, 600]);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_full_rejects_at_once_with_honest_retry_after() {
        let shaper = shaper(limits(1.0, 1, 3, 10_000), 10);
        let _first = match shaper.admit() {
            Admission::Go(g) => g,
            other => panic!("{other:?}"),
        };
        let _tickets: Vec<Ticket> = (0..3).map(|_| queued(shaper.admit())).collect();
        match shaper.admit() {
            Admission::Rejected(r) => {
                assert_eq!(r.reason, RejectReason::QueueFull);
                // Three ahead at one per second: about four seconds.
                assert_eq!(r.retry_after, Duration::from_secs(4));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expected_wait_beyond_timeout_is_rejected_at_once() {
        // 10/s, timeout 350 ms: after the fast one, three can be served in time.
        let shaper = shaper(limits(10.0, 1, 100, 350), 100);
        let _go = shaper.admit();
        let tickets: Vec<Ticket> = (0..3).map(|_| queued(shaper.admit())).collect();
        match shaper.admit() {
            Admission::Rejected(r) => assert_eq!(r.reason, RejectReason::WaitTooLong),
            other => panic!("{other:?}"),
        }
        let start = Instant::now();
        let mut times = Vec::new();
        for t in tickets {
            times.push(
                spawn_waiter(t, start, Duration::ZERO)
                    .await
                    .unwrap()
                    .unwrap(),
            );
        }
        assert_eq!(times, vec![100, 200, 300]);
    }

    #[tokio::test(start_paused = true)]
    async fn waiter_is_dropped_exactly_at_its_deadline_and_never_granted() {
        // The in-flight cap (1) is held, so nobody can be released.
        let shaper = shaper(limits(1000.0, 10, 100, 250), 1);
        let held = match shaper.admit() {
            Admission::Go(g) => g,
            other => panic!("{other:?}"),
        };
        let start = Instant::now();
        let ticket = queued(shaper.admit());
        let result = ticket.wait().await;
        assert_eq!(result.unwrap_err().reason, RejectReason::Timeout);
        assert_eq!(ms_since(start), 250);
        assert_eq!(shaper.depth(), 0);
        drop(held);
        tokio::task::yield_now().await;
        // The slot freed after the deadline goes to nobody: the next request takes the fast path.
        assert!(matches!(shaper.admit(), Admission::Go(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiter_is_skipped_and_spends_no_token() {
        let shaper = shaper(limits(10.0, 1, 100, 10_000), 100);
        let _go = shaper.admit();
        let start = Instant::now();
        let a = queued(shaper.admit());
        let b = queued(shaper.admit());
        let c = queued(shaper.admit());
        drop(b); // the client left
        assert_eq!(shaper.depth(), 2);
        let a = spawn_waiter(a, start, Duration::ZERO);
        let c = spawn_waiter(c, start, Duration::ZERO);
        assert_eq!(a.await.unwrap(), Ok(100));
        // c takes the token b would have had.
        assert_eq!(c.await.unwrap(), Ok(200));
    }

    #[tokio::test(start_paused = true)]
    async fn releases_honour_the_inflight_cap() {
        // Rate is generous; the cap of 2 and a 100 ms service time set the pace.
        let shaper = shaper(limits(1000.0, 1000, 100, 10_000), 2);
        let start = Instant::now();
        let mut waiters = Vec::new();
        let mut fast = 0;
        for _ in 0..6 {
            match shaper.admit() {
                Admission::Go(grant) => {
                    fast += 1;
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        drop(grant);
                    });
                }
                Admission::Queued(t) => {
                    waiters.push(spawn_waiter(t, start, Duration::from_millis(100)))
                }
                Admission::Rejected(r) => panic!("{r:?}"),
            }
        }
        assert_eq!(fast, 2);
        let mut times = Vec::new();
        for w in waiters {
            times.push(w.await.unwrap().unwrap());
        }
        assert_eq!(times, vec![100, 100, 200, 200]);
    }

    #[tokio::test(start_paused = true)]
    async fn no_rate_limit_means_only_the_cap_shapes() {
        let shaper = Shaper::new(
            Limits {
                rate: None,
                capacity: 10,
                timeout: Duration::from_secs(1),
            },
            Arc::new(Semaphore::new(1)),
        );
        let first = match shaper.admit() {
            Admission::Go(g) => g,
            other => panic!("{other:?}"),
        };
        let start = Instant::now();
        let waiter = spawn_waiter(queued(shaper.admit()), start, Duration::ZERO);
        tokio::time::sleep(Duration::from_millis(30)).await;
        drop(first);
        assert_eq!(waiter.await.unwrap(), Ok(30));
    }

    #[tokio::test(start_paused = true)]
    async fn close_answers_every_waiter_and_refuses_new_ones() {
        let shaper = shaper(limits(1.0, 1, 10, 5_000), 10);
        let _go = shaper.admit();
        let start = Instant::now();
        let waiter = spawn_waiter(queued(shaper.admit()), start, Duration::ZERO);
        tokio::task::yield_now().await;
        shaper.close();
        assert_eq!(waiter.await.unwrap(), Err(RejectReason::Closed));
        match shaper.admit() {
            Admission::Rejected(r) => assert_eq!(r.reason, RejectReason::Closed),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancellations_in_the_middle_do_not_grow_memory() {
        let shaper = shaper(limits(1.0, 1, 1_000, 60_000), 1);
        let _go = shaper.admit();
        let _head = queued(shaper.admit()); // the head never leaves
        for _ in 0..100_000 {
            drop(queued(shaper.admit()));
        }
        let physical = shaper.shared.queue.lock().entries.len();
        assert!(
            physical <= 2 + TOMBSTONE_SLACK,
            "physical length {physical}"
        );
        assert_eq!(shaper.depth(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_capacity_rejects_whatever_cannot_go_at_once() {
        let shaper = shaper(limits(1.0, 1, 0, 1_000), 10);
        assert!(matches!(shaper.admit(), Admission::Go(_)));
        match shaper.admit() {
            Admission::Rejected(r) => assert_eq!(r.reason, RejectReason::QueueFull),
            other => panic!("{other:?}"),
        }
    }
}
