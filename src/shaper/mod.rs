//! The shaper: one route's admission control, free of HTTP and of the wall clock.
//!
//! A request asks [`Shaper::admit`] for leave to go. If nothing is queued and both
//! the GCRA limiter (a token) and the upstream's in-flight cap (a permit) allow it,
//! it goes at once — the fast path, no task hop. Otherwise it takes a place in the
//! bounded queue ([`queue`]), unless the queue is full and nobody of lower
//! standing can be displaced, or the wait it can expect (`waiters ahead / rate`)
//! already exceeds the route's timeout: such requests are rejected at once
//! instead of being held only to be dropped later.
//!
//! One release task per route hands out places: it waits for a waiter, then for
//! an in-flight permit, then for a token, and gives both to the waiter the queue
//! names next (priority class with aging, key turns, FIFO or adaptive LIFO).
//! Invariants, all kept under the queue lock:
//! - a token is taken from the limiter only for a waiter that is still waiting,
//!   so a waiter that timed out or whose client left never spends one;
//! - a waiter leaves the queue exactly once: granted, timed out, cancelled,
//!   displaced or closed; a grant is never handed out after its deadline;
//! - memory is bounded by `capacity`: the queue holds exactly the live waiters.
//!
//! Time comes from `tokio::time::Instant`, so tests run under a paused clock.

mod key_table;
mod limiter;
mod queue;
mod shared;
#[cfg(test)]
mod shared_tests;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;

use shared::{NoToken, SharedLimiter};

pub use limiter::{KeyedLimiter, Limiter};
/// The queue on its own, public only so `bench/micro.rs` can time it; not
/// part of sluice's interface.
#[doc(hidden)]
pub use queue::{Queue, Slot, Waiter};
pub use shared::{Fallback, GcraParams, SharedRate, StoreError, StoreFuture, Taken, TokenStore};

/// The limits one route is shaped by.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Requests per second and burst; `None` leaves only the in-flight cap.
    pub rate: Option<(f64, NonZeroU32)>,
    /// Waiters the queue holds at most (0: no queue).
    pub capacity: usize,
    /// The longest a request may wait in the queue.
    pub timeout: Duration,
    /// Priority classes (index 0 highest); at least 1.
    pub classes: usize,
    /// Release keys in turn, and take room from the key holding most when full.
    pub per_key: bool,
    /// Waiting this long counts as one class higher.
    pub aging: Duration,
    /// Newest first once the oldest waiter has waited longer than this.
    pub lifo_after: Option<Duration>,
    /// The rate's state is in a store shared by a fleet (see
    /// [`Shaper::set_store`]); `None` keeps it in this process.
    pub shared: Option<SharedRate>,
}

impl Limits {
    /// One class, FIFO, no per-key fairness.
    pub fn fifo(rate: Option<(f64, NonZeroU32)>, capacity: usize, timeout: Duration) -> Limits {
        Limits {
            rate,
            capacity,
            timeout,
            classes: 1,
            per_key: false,
            aging: Duration::from_secs(1),
            lifo_after: None,
            shared: None,
        }
    }
}

/// Whether the upstream can take anything at all (some target is healthy).
/// While it is shut, nothing is released: requests wait in the queue until
/// their deadline instead of each failing at once.
#[derive(Debug)]
pub struct Gate {
    open: std::sync::atomic::AtomicBool,
    changed: Notify,
}

impl Gate {
    pub fn new(open: bool) -> Gate {
        Gate {
            open: std::sync::atomic::AtomicBool::new(open),
            changed: Notify::new(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Opens or shuts the gate, waking every releaser on a change.
    pub fn set(&self, open: bool) {
        if self.open.swap(open, std::sync::atomic::Ordering::SeqCst) != open {
            self.changed.notify_waiters();
        }
    }

    /// Resolves once the gate is open.
    pub async fn opened(&self) {
        loop {
            let changed = self.changed.notified();
            if self.is_open() {
                return;
            }
            changed.await;
        }
    }
}

/// Who is asking: its priority class (0 highest) and its client key hash.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arrival {
    pub class: usize,
    pub key: u64,
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
    /// It waited, then gave up its place to a request of higher standing.
    Displaced,
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

type Answer = Result<Grant, Rejection>;

/// A place in the queue. Dropping it before it resolves (the client left)
/// removes it from the queue without spending a token.
#[derive(Debug)]
pub struct Ticket {
    slot: Slot,
    deadline: Instant,
    rx: oneshot::Receiver<Answer>,
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
    /// The upstream's in-flight cap, shared with every route using it.
    inflight: Arc<Semaphore>,
    /// Shut while the upstream has no healthy target.
    gate: Arc<Gate>,
    state: Mutex<State>,
    /// Signalled when a waiter joins the queue.
    joined: Notify,
    /// Signalled when the limits change, the route is paused or resumed, or
    /// a shared rate's store answers.
    changed: Arc<Notify>,
    /// Where a shared rate's store calls run (the shaper's runtime).
    runtime: Handle,
}

#[derive(Debug)]
struct State {
    limits: Limits,
    limiter: Option<RateLimiter>,
    /// The store a shared rate uses (kept across rate changes).
    store: Option<Arc<dyn TokenStore>>,
    queue: Queue<oneshot::Sender<Answer>>,
    /// When the limiter will next have a token, as last seen.
    next_token_at: Option<Instant>,
    /// Paused: nothing is released (queued requests still time out).
    paused: bool,
    closed: bool,
}

impl Shaper {
    /// Builds a route's shaper drawing in-flight permits from `inflight`.
    /// Must be called inside a tokio runtime (it spawns the release task).
    pub fn new(limits: Limits, inflight: Arc<Semaphore>, gate: Arc<Gate>) -> Shaper {
        Shaper::with_store(limits, inflight, gate, None)
    }

    /// [`Shaper::new`], with the store a shared rate keeps its state in.
    pub fn with_store(
        limits: Limits,
        inflight: Arc<Semaphore>,
        gate: Arc<Gate>,
        store: Option<Arc<dyn TokenStore>>,
    ) -> Shaper {
        let changed = Arc::new(Notify::new());
        let runtime = Handle::current();
        let shared = Arc::new(Shared {
            inflight,
            gate,
            state: Mutex::new(State {
                limits,
                limiter: RateLimiter::new(&limits, store.clone(), &changed, &runtime),
                store,
                queue: Queue::new(limits.classes, limits.per_key, limits.aging),
                next_token_at: None,
                paused: false,
                closed: false,
            }),
            joined: Notify::new(),
            changed,
            runtime,
        });
        let releaser = tokio::spawn(release(shared.clone()));
        Shaper { shared, releaser }
    }

    /// Leave for one request that has no client waiting on it (an async
    /// route's delivery, and the simulator's model of it): queues like any
    /// arrival and, when the queue is full or its wait times out, tries
    /// again after the answer's `Retry-After` (at most a second), so the
    /// caller is paced at the route's rate however long that takes.
    pub async fn pace(&self) -> Grant {
        loop {
            match self.admit(Arrival::default()) {
                Admission::Go(grant) => return grant,
                Admission::Queued(ticket) => {
                    if let Ok(grant) = ticket.wait().await {
                        return grant;
                    }
                }
                Admission::Rejected(rejection) => {
                    tokio::time::sleep(rejection.retry_after.min(Duration::from_secs(1))).await;
                }
            }
        }
    }

    pub fn limits(&self) -> Limits {
        self.shared.state.lock().limits
    }

    /// Applies new limits; requests already queued keep their places and are
    /// released at the new rate. A changed rate or burst starts a fresh GCRA
    /// state (a full burst); classes, fairness and aging re-thread the queue.
    pub fn update(&self, limits: Limits) {
        let mut state = self.shared.state.lock();
        let old = state.limits;
        if (old.rate, old.shared) != (limits.rate, limits.shared) {
            state.limiter = self.shared.rate_limiter(&limits, state.store.clone());
            state.next_token_at = None;
        } else if let Some(RateLimiter::Shared(limiter)) = &mut state.limiter {
            limiter.set_horizon(limits.timeout);
        }
        if (old.classes, old.per_key, old.aging) != (limits.classes, limits.per_key, limits.aging) {
            state
                .queue
                .reconfigure(limits.classes, limits.per_key, limits.aging);
        }
        state.limits = limits;
        drop(state);
        // Wake the releaser: it may be sleeping on the old rate.
        self.shared.changed.notify_one();
    }

    /// Sets the store a shared rate ([`Limits::shared`]) keeps its state in.
    /// A new store starts the rate afresh; without one, a shared rate runs
    /// on its fallback.
    pub fn set_store(&self, store: Option<Arc<dyn TokenStore>>) {
        let mut state = self.shared.state.lock();
        let same = match (&state.store, &store) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        state.store = store.clone();
        if state.limits.shared.is_some() {
            state.limiter = self.shared.rate_limiter(&state.limits, store);
            state.next_token_at = None;
        }
        drop(state);
        self.shared.changed.notify_one();
    }

    /// For a shared rate: whether it runs on its fallback now (its store
    /// failed last). `None` for a local rate or none.
    pub fn shared_fallback(&self) -> Option<bool> {
        let mut state = self.shared.state.lock();
        match &mut state.limiter {
            Some(RateLimiter::Shared(limiter)) => {
                limiter.poll(Instant::now());
                Some(limiter.degraded())
            }
            _ => None,
        }
    }

    /// Stops (true) or resumes (false) releasing. While paused, requests
    /// queue as usual and their timeouts still apply.
    pub fn set_paused(&self, paused: bool) {
        self.shared.state.lock().paused = paused;
        self.shared.changed.notify_one();
    }

    pub fn is_paused(&self) -> bool {
        self.shared.state.lock().paused
    }

    /// Decides at once what happens to a request arriving now.
    pub fn admit(&self, arrival: Arrival) -> Admission {
        self.admit_since(arrival, Instant::now())
    }

    /// Decides at once what happens to a request whose client has been
    /// waiting since `since` (a connection's accept, for its first request):
    /// its queue timeout runs from then, so time spent before admission —
    /// in the kernel's accept queue, or before sluice read the head — is
    /// counted. One already past it is answered as timed out, never forwarded.
    pub fn admit_since(&self, arrival: Arrival, since: Instant) -> Admission {
        let shared = &self.shared;
        let now = Instant::now();
        let since = since.min(now);
        let mut state = shared.state.lock();
        let limits = state.limits;
        let class = arrival.class.min(limits.classes.saturating_sub(1));
        if state.closed {
            return Admission::Rejected(shared.closed());
        }
        let deadline = since + limits.timeout;
        if deadline <= now {
            return Admission::Rejected(Rejection {
                reason: RejectReason::Timeout,
                retry_after: state.drain_estimate(state.queue.len()),
            });
        }
        let budget = deadline - now;
        let mut first_wait = Duration::ZERO;
        if state.queue.is_empty() && !state.paused && shared.gate.is_open() {
            if let Ok(permit) = shared.inflight.clone().try_acquire_owned() {
                match state.take_token(now, 1) {
                    Ok(()) => {
                        return Admission::Go(Grant {
                            permit,
                            waited: Duration::ZERO,
                        });
                    }
                    Err(NoToken::For(wait)) => {
                        first_wait = wait;
                        state.next_token_at = Some(now + wait);
                    }
                    // The store's answer is a round trip away.
                    Err(NoToken::Asked) => {}
                }
            }
        } else if let Some(at) = state.next_token_at {
            first_wait = at.saturating_duration_since(now);
        }
        let lifo = state.lifo_engaged(now);
        // Judge the wait before making room: nobody is displaced for a
        // request that would be turned away anyway.
        let ahead = state.queue.ahead(class, arrival.key, lifo);
        let expected = first_wait + state.drain_estimate_exact(ahead);
        if expected > budget && !state.paused {
            return Admission::Rejected(Rejection {
                reason: RejectReason::WaitTooLong,
                retry_after: state.drain_estimate(state.queue.len()),
            });
        }
        if state.queue.len() >= limits.capacity {
            let victim = state.queue.victim(class, arrival.key, lifo);
            let Some(waiter) = victim.and_then(|slot| state.queue.remove(slot)) else {
                return Admission::Rejected(Rejection {
                    reason: RejectReason::QueueFull,
                    retry_after: state.drain_estimate(state.queue.len()),
                });
            };
            let retry_after = state.drain_estimate(state.queue.len());
            // The displaced waiter is answered now; its ticket sees the answer.
            let _answered = waiter.payload.send(Err(Rejection {
                reason: RejectReason::Displaced,
                retry_after,
            }));
        }
        let (tx, rx) = oneshot::channel();
        // Its wait counts from `since`: the release loop drops it at
        // `since + timeout`, as its own timer does.
        let slot = state.queue.push(class, arrival.key, since, tx);
        drop(state);
        shared.joined.notify_one();
        Admission::Queued(Ticket {
            slot,
            deadline,
            rx,
            shared: shared.clone(),
            done: false,
        })
    }

    /// Requests waiting now.
    pub fn depth(&self) -> usize {
        self.shared.state.lock().queue.len()
    }

    /// Requests waiting now in `class`.
    pub fn class_depth(&self, class: usize) -> usize {
        self.shared.state.lock().queue.class_len(class)
    }

    /// How long the oldest waiter has waited.
    pub fn oldest_wait(&self) -> Duration {
        let oldest = self.shared.state.lock().queue.oldest();
        oldest.map_or(Duration::ZERO, |at| at.elapsed())
    }

    /// Refuses new requests and answers every waiter with `Closed`.
    pub fn close(&self) {
        let mut state = self.shared.state.lock();
        state.closed = true;
        // Dropping the senders answers the tickets.
        drop(state.queue.drain());
    }
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.close();
        self.releaser.abort();
    }
}

impl Ticket {
    /// Waits for a grant, or until the deadline. (A block over the ticket
    /// rather than an `async fn`, which would hold the ticket twice: rustc
    /// #62958; a waiting request holds this future.)
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice (rustc #62958)"
    )]
    pub fn wait(mut self) -> impl Future<Output = Result<Grant, Rejection>> {
        async move {
            let deadline = tokio::time::sleep_until(self.deadline);
            tokio::select! {
                biased;
                answer = &mut self.rx => {
                    self.done = true;
                    match answer {
                        // A grant made in time can still reach a busy waiter
                        // after its deadline: it is given back, never used.
                        Ok(Ok(_late)) if Instant::now() > self.deadline => Err(self.shared.gone()),
                        Ok(answer) => answer,
                        Err(_) => Err(self.shared.gone()),
                    }
                }
                () = deadline => {
                    self.done = true;
                    if self.shared.leave(self.slot) {
                        Err(self.shared.gone())
                    } else {
                        // Answered in the same instant the deadline fired (a grant
                        // made in time stands).
                        self.rx.try_recv().unwrap_or_else(|_| Err(self.shared.gone()))
                    }
                }
            }
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.done {
            // The client left while queued.
            self.shared.leave(self.slot);
        }
    }
}

impl Shared {
    /// Removes a waiter if it is still queued; false if it was already answered.
    fn leave(&self, slot: Slot) -> bool {
        self.state.lock().queue.remove(slot).is_some()
    }

    /// Why a waiter left the queue without an answer: closed, or expired.
    fn gone(&self) -> Rejection {
        let state = self.state.lock();
        if state.closed {
            self.closed()
        } else {
            Rejection {
                reason: RejectReason::Timeout,
                retry_after: state.drain_estimate(state.queue.len()),
            }
        }
    }

    fn closed(&self) -> Rejection {
        Rejection {
            reason: RejectReason::Closed,
            retry_after: Duration::from_secs(1),
        }
    }
}

impl State {
    fn lifo_engaged(&self, now: Instant) -> bool {
        match (self.limits.lifo_after, self.queue.oldest()) {
            (Some(threshold), Some(oldest)) => now.saturating_duration_since(oldest) > threshold,
            _ => false,
        }
    }

    /// Takes a token at `now`. `demand`: requests that could go now if
    /// they had a token (a shared rate asks its store for that many).
    fn take_token(&mut self, now: Instant, demand: usize) -> Result<(), NoToken> {
        match &mut self.limiter {
            None => Ok(()),
            Some(RateLimiter::Local(limiter)) => limiter.check(now).map_err(NoToken::For),
            Some(RateLimiter::Shared(limiter)) => limiter.take(now, demand),
        }
    }

    /// When the releaser must look again though nobody waits: a shared
    /// rate's next attempt to reach its failing store.
    fn retry_at(&self) -> Option<Instant> {
        match &self.limiter {
            Some(RateLimiter::Shared(limiter)) => limiter.retry_at(),
            _ => None,
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

/// The longest the releaser waits for a store's answer before looking again
/// (the store's own timeout ends a call well before).
const ANSWER_PATIENCE: Duration = Duration::from_secs(1);

/// A route's rate: this process's GCRA, or one shared through a store.
#[derive(Debug)]
enum RateLimiter {
    Local(Limiter),
    Shared(SharedLimiter),
}

impl RateLimiter {
    fn new(
        limits: &Limits,
        store: Option<Arc<dyn TokenStore>>,
        changed: &Arc<Notify>,
        runtime: &Handle,
    ) -> Option<RateLimiter> {
        let (rate, burst) = limits.rate?;
        Some(match limits.shared {
            None => RateLimiter::Local(Limiter::new(rate, burst)),
            Some(spec) => RateLimiter::Shared(SharedLimiter::new(
                rate,
                burst,
                spec,
                store,
                limits.timeout,
                changed.clone(),
                runtime.clone(),
            )),
        })
    }
}

impl Shared {
    fn rate_limiter(
        &self,
        limits: &Limits,
        store: Option<Arc<dyn TokenStore>>,
    ) -> Option<RateLimiter> {
        RateLimiter::new(limits, store, &self.changed, &self.runtime)
    }
}

/// The release task: hands places out as permits and tokens allow.
async fn release(shared: Arc<Shared>) {
    loop {
        until_waiting(&shared).await;
        // Nothing leaves while no target can take it.
        shared.gate.opened().await;
        let Ok(permit) = shared.inflight.clone().acquire_owned().await else {
            return;
        };
        hand_out(&shared, permit).await;
    }
}

/// Returns once somebody waits and the shaper is not paused: a permit is
/// only worth holding then. Meanwhile a shared rate's store is polled, and
/// tried again when it asks to be.
async fn until_waiting(shared: &Shared) {
    loop {
        let joined = shared.joined.notified();
        let changed = shared.changed.notified();
        let retry_at = {
            let mut state = shared.state.lock();
            if !state.queue.is_empty() && !state.paused {
                return;
            }
            if let Some(RateLimiter::Shared(limiter)) = &mut state.limiter {
                limiter.poll(Instant::now());
            }
            state.retry_at()
        };
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = joined => {}
            () = changed => {}
            () = retry => {}
        }
    }
}

/// Gives `held` to the next live waiter as soon as a token allows, or gives
/// it back (paused, or nobody left to take it).
async fn hand_out(shared: &Shared, mut held: OwnedSemaphorePermit) {
    while let Some((permit, wait)) = try_grant(shared, held) {
        held = permit;
        // A new rate or a pause may change the wait.
        let changed = shared.changed.notified();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = changed => {}
        }
    }
}

/// One attempt, under the state lock, to give `held` to the next live
/// waiter. `None` once it is given, or given back (dropped: the shaper is
/// paused, or everyone left while we waited for it); else the permit and
/// how long to wait before the next attempt (for a token, or for a shared
/// store's answer).
fn try_grant(
    shared: &Shared,
    held: OwnedSemaphorePermit,
) -> Option<(OwnedSemaphorePermit, Duration)> {
    let mut state = shared.state.lock();
    let now = Instant::now();
    if state.paused {
        return None; // `held` goes back; we wait for a resume
    }
    let next = next_live(&mut state, now)?;
    // Waiters that an in-flight slot would let go: the one holding `held`,
    // and as many more as slots are free.
    let demand = state
        .queue
        .len()
        .min(1 + shared.inflight.available_permits());
    match state.take_token(now, demand) {
        Ok(()) => {
            state.next_token_at = None;
            if let Some(waiter) = state.queue.release(next) {
                let grant = Grant {
                    permit: held,
                    waited: now - waiter.enqueued_at,
                };
                // The receiver outlives the entry (a ticket removes its entry
                // under this lock before it is dropped).
                let _granted = waiter.payload.send(Ok(grant));
            }
            None
        }
        Err(NoToken::For(wait)) => {
            state.next_token_at = Some(now + wait);
            // A failing store is tried again meanwhile.
            let wait = state
                .retry_at()
                .map_or(wait, |at| wait.min(at.saturating_duration_since(now)));
            Some((held, wait))
        }
        // The answer wakes us (`changed`); this only bounds the wait should
        // it never come.
        Err(NoToken::Asked) => Some((held, ANSWER_PATIENCE)),
    }
}

/// The waiter to release next, after dropping any whose deadline has passed
/// (their own timers may not have fired yet; a grant now would be too late).
fn next_live(state: &mut State, now: Instant) -> Option<Slot> {
    loop {
        let lifo = state.lifo_engaged(now);
        let next = state.queue.next(now, lifo)?;
        let waited = state.queue.get(next).map_or(Duration::ZERO, |w| {
            now.saturating_duration_since(w.enqueued_at)
        });
        if waited < state.limits.timeout {
            return Some(next);
        }
        // Dropping the sender answers the ticket with a timeout.
        drop(state.queue.remove(next));
    }
}

#[cfg(test)]
mod tests;
