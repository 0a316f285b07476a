//! A route rate whose GCRA state lives outside this process, in a store that
//! a fleet of sluice instances shares (Redis: [`crate::redis_store`]).
//!
//! The shaper never waits on the store on a request's path: `admit` only
//! spends tokens already held. While requests wait, one call per route at a
//! time asks the store for a token per waiter that could go; the store
//! grants those that conform now and reserves those that conform within the
//! queue timeout, each at its own time, so a fleet's instances follow one
//! schedule instead of racing for every token. A `lease` above 1 keeps that
//! many tokens at hand for requests arriving one by one. When the store
//! fails, the route falls back as configured (a local limiter at
//! `rate / instances`, everything allowed, or nothing), and asks again after
//! a back-off (100 ms doubling to 5 s, jittered ±25%) until the store answers.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::limiter::{Limiter, lateness_tolerance};

/// The GCRA parameters a request to the store carries (the store holds only
/// the theoretical arrival time, so a changed rate applies at once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcraParams {
    /// Emission interval: one token per `interval` (1 / rate).
    pub interval: Duration,
    /// Burst tolerance: `(burst - 1) x interval`, plus the lateness tolerance.
    pub tolerance: Duration,
    /// How far ahead tokens may be reserved: a token that conforms within
    /// this long is granted too, for the time it conforms. Zero: only
    /// tokens that conform now.
    pub horizon: Duration,
}

/// What the store granted: `ready` tokens usable now, then `granted -
/// ready` reserved ones, the first usable `later_in` from now and each next
/// one `interval` after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Tokens granted, `0..=want`.
    pub granted: u32,
    /// How long, after this grant, until the next token is free (zero if one
    /// is free now), as the store's clock sees it.
    pub next_in: Duration,
    /// Of the granted, those that conform now.
    pub ready: u32,
    /// When the first reserved token conforms (zero when none is reserved).
    pub later_in: Duration,
}

/// The store could not answer (connection refused or lost, timeout, script error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

pub type StoreFuture = Pin<Box<dyn Future<Output = Result<Taken, StoreError>> + Send>>;

/// A shared GCRA state for one route (one key in the store).
pub trait TokenStore: Send + Sync + fmt::Debug {
    /// Takes up to `want` (>= 1) tokens at the store's own time: as many as
    /// conform now or within `params.horizon`, atomically with every other
    /// instance's request (a reserved token is no other instance's).
    /// The future must finish in bounded time (the store applies its timeout).
    fn take(&self, want: NonZeroU32, params: GcraParams) -> StoreFuture;
}

/// What a shared route rate does while its store cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// A local limiter at `rate / instances` (burst likewise, at least 1).
    Local,
    /// No rate limit: only the in-flight cap shapes.
    Allow,
    /// Nothing is released; new requests are refused at once, queued ones
    /// wait out their deadline (the store may come back in time).
    Deny,
}

/// A route rate kept in a shared store (part of [`super::Limits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedRate {
    /// Tokens asked for per round trip to the store.
    pub lease: NonZeroU32,
    pub fallback: Fallback,
    /// Instances expected to share the limit (the local fallback's divisor).
    pub instances: NonZeroU32,
}

/// Why no token is at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NoToken {
    /// The next one is free after this long.
    For(Duration),
    /// The store has been asked; its answer wakes the releaser.
    Asked,
}

/// The first back-off after the store fails, doubled per failure up to
/// [`MAX_BACKOFF`]; each wait is jittered by up to a quarter either way, so
/// a fleet that lost its store together does not come back in lockstep.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Leased tokens not spent within their share of the schedule (`granted x
/// interval`) lapse: holding them longer would let an instance release a
/// burst the fleet-wide schedule never allowed. At least this long, so a
/// fast route's lease outlives the round trip that fetched it.
const MIN_LEASE_LIFE: Duration = Duration::from_millis(10);

/// Most tokens one call asks for. Tokens for requests already waiting are
/// spent at once, so asking for all of them costs no accuracy (unlike a
/// lease, which is spent on requests still to come), and it keeps a route's
/// release rate from being bounded by one round trip per request.
const MAX_ASK: usize = 1000;

/// How long "deny" says the next token is away: longer than any queue
/// timeout, so every new request is refused at once.
const DENIED: Duration = Duration::from_secs(24 * 3600);

/// An answer from the store, kept until the limiter next looks.
type Mailbox = Arc<Mutex<Option<(Instant, Result<Taken, StoreError>)>>>;

/// A route rate whose state is in a [`TokenStore`]: leased tokens spent
/// locally, one call to the store out at a time, and the fallback while the
/// store fails. Lives under the shaper's state lock; store calls run as
/// tasks on the shaper's runtime and post their answer to a mailbox.
#[derive(Debug)]
pub(super) struct SharedLimiter {
    store: Option<Arc<dyn TokenStore>>,
    spec: SharedRate,
    params: GcraParams,
    /// Granted tokens not spent yet, in the order they become usable.
    tokens: VecDeque<Block>,
    /// When the store may be asked next: now, after the wait it named, or
    /// after the back-off that follows a failure.
    ask_at: Instant,
    /// A call is out, for this many tokens.
    asking: bool,
    asked: NonZeroU32,
    /// Set while the store fails.
    degraded: Option<Degraded>,
    /// The local fallback's rate and burst.
    local: (f64, NonZeroU32),
    mailbox: Mailbox,
    /// Woken when an answer arrives (the shaper's `changed`).
    wake: Arc<Notify>,
    runtime: Handle,
}

/// A store as logged: the store itself, or "none".
struct StoreName<'a>(&'a Option<Arc<dyn TokenStore>>);

impl fmt::Debug for StoreName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(store) => store.fmt(f),
            None => f.write_str("none"),
        }
    }
}

/// `d` x a random factor in [0.75, 1.25).
fn jitter(d: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    // A fresh RandomState is seeded from the OS once per thread and
    // incremented per instance: enough spread for retry times.
    let random = RandomState::new().hash_one(d);
    let factor = 0.75 + (random % 1024) as f64 / 2048.0;
    d.mul_f64(factor)
}

/// Granted tokens: `left` of them, the next usable at `next_at`, each
/// further one `interval` later (`spaced`) or at once; gone at `lapse_at`.
#[derive(Debug)]
struct Block {
    next_at: Instant,
    left: u32,
    spaced: bool,
    lapse_at: Instant,
}

#[derive(Debug)]
struct Degraded {
    backoff: Duration,
    /// The "local" fallback's limiter; fresh each time the store fails.
    limiter: Option<Limiter>,
}

impl SharedLimiter {
    pub(super) fn new(
        rate: f64,
        burst: NonZeroU32,
        spec: SharedRate,
        store: Option<Arc<dyn TokenStore>>,
        horizon: Duration,
        wake: Arc<Notify>,
        runtime: Handle,
    ) -> SharedLimiter {
        let interval = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
        let tolerance = interval.saturating_mul(burst.get() - 1) + lateness_tolerance(rate);
        let instances = spec.instances.get();
        let now = Instant::now();
        let mut limiter = SharedLimiter {
            store,
            spec,
            params: GcraParams {
                interval,
                tolerance,
                horizon,
            },
            tokens: VecDeque::new(),
            ask_at: now,
            asking: false,
            asked: spec.lease,
            degraded: None,
            local: (
                rate / f64::from(instances),
                NonZeroU32::new(burst.get() / instances).unwrap_or(NonZeroU32::MIN),
            ),
            mailbox: Arc::new(Mutex::new(None)),
            wake,
            runtime,
        };
        if limiter.store.is_none() {
            // No store (why was logged where it failed to be made, or a
            // reload is about to set one): on the fallback, quietly.
            limiter.degraded = Some(limiter.fallback());
        }
        limiter
    }

    /// Takes a token at `now`: a leased one, else (while the store fails)
    /// the fallback's. Asks the store for more when that is due: `lease`
    /// tokens, or one per request in `demand` (requests that could go now
    /// but for a token) if more, up to [`MAX_ASK`].
    pub(super) fn take(&mut self, now: Instant, demand: usize) -> Result<(), NoToken> {
        self.poll(now);
        // Tokens are asked for when requests need them — tokens fetched
        // ahead of demand are spent from the fleet's rate and, at low
        // traffic, lapse unused — and then in batches: while tokens held
        // cover at least half the demand, the next call waits. The one
        // exception is the stock a `lease` above 1 asks for: it is topped
        // up once half of it is spent, so requests arriving one by one do
        // not stall on a round trip every `lease` requests.
        let held = self.held(now);
        let demand = demand.max(1);
        let lease = self.spec.lease.get() as usize;
        let short = held < demand && held * 2 <= demand;
        let lease_low = lease > 1 && held * 2 < lease;
        if self.degraded.is_none() && (short || lease_low) {
            let want = demand.max(lease).saturating_sub(held).clamp(1, MAX_ASK);
            self.ask(now, u32::try_from(want).unwrap_or(1));
        }
        if let Some(block) = self.tokens.front_mut() {
            if block.next_at > now {
                // A reserved token: this instance's, at its time.
                return Err(NoToken::For(block.next_at - now));
            }
            block.left -= 1;
            if block.spaced {
                block.next_at += self.params.interval;
            }
            if block.left == 0 {
                self.tokens.pop_front();
            }
            return Ok(());
        }
        match &self.degraded {
            None if self.asking => Err(NoToken::Asked),
            None => Err(NoToken::For(self.ask_at.saturating_duration_since(now))),
            Some(degraded) => match self.spec.fallback {
                Fallback::Allow => Ok(()),
                Fallback::Deny => Err(NoToken::For(DENIED)),
                Fallback::Local => match &degraded.limiter {
                    Some(limiter) => limiter.check(now).map_err(NoToken::For),
                    None => Err(NoToken::For(DENIED)),
                },
            },
        }
    }

    /// Tokens held (usable now or reserved), after dropping lapsed ones.
    fn held(&mut self, now: Instant) -> usize {
        self.tokens.retain(|b| b.lapse_at > now);
        self.tokens.iter().map(|b| b.left as usize).sum()
    }

    /// Sets how far ahead tokens may be reserved (the queue timeout: no
    /// waiter can use a token later than that).
    pub(super) fn set_horizon(&mut self, horizon: Duration) {
        self.params.horizon = horizon;
    }

    /// Takes in the store's answer if one came, and while the store fails,
    /// tries it again when the back-off has passed.
    pub(super) fn poll(&mut self, now: Instant) {
        let answer = self.mailbox.lock().take();
        if let Some((at, answer)) = answer {
            self.asking = false;
            match answer {
                Ok(taken) => self.granted(at, taken),
                Err(error) => self.fail(at, &error),
            }
        }
        if self.degraded.is_some() {
            self.ask(now, 1);
        }
    }

    /// Whether the route runs on its fallback (the store failed last).
    pub(super) fn degraded(&self) -> bool {
        self.degraded.is_some()
    }

    /// When the releaser should look again even with no waiter: the next
    /// attempt to reach a failing store (so recovery is seen while idle).
    pub(super) fn retry_at(&self) -> Option<Instant> {
        let waiting = self.degraded.is_some() && !self.asking && self.store.is_some();
        waiting.then_some(self.ask_at)
    }

    /// Asks the store for `want` tokens, at least `lease`, unless a call is
    /// out or the store said to wait.
    fn ask(&mut self, now: Instant, want: u32) {
        if self.asking || now < self.ask_at {
            return;
        }
        let Some(store) = &self.store else {
            return;
        };
        self.asking = true;
        self.asked = self
            .spec
            .lease
            .max(NonZeroU32::new(want).unwrap_or(NonZeroU32::MIN));
        let call = store.take(self.asked, self.params);
        let mailbox = Arc::downgrade(&self.mailbox);
        let wake = self.wake.clone();
        self.runtime.spawn(async move {
            let answer = call.await;
            // A limiter rebuilt meanwhile (new rate, reload) dropped its mailbox.
            if let Some(mailbox) = mailbox.upgrade() {
                *mailbox.lock() = Some((Instant::now(), answer));
                wake.notify_one();
            }
        });
    }

    fn granted(&mut self, at: Instant, taken: Taken) {
        if self.degraded.take().is_some() {
            tracing::info!(store = ?StoreName(&self.store), "shared rate store answers again; the global limit applies");
        }
        let interval = self.params.interval;
        // Tokens usable now lapse unless spent within their share of the
        // schedule; reserved ones, one interval (at least 10 ms) after the
        // last becomes usable.
        if taken.ready > 0 {
            self.tokens.push_back(Block {
                next_at: at,
                left: taken.ready,
                spaced: false,
                lapse_at: at + interval.saturating_mul(taken.ready).max(MIN_LEASE_LIFE),
            });
        }
        let reserved = taken.granted.saturating_sub(taken.ready);
        if reserved > 0 {
            let first = at + taken.later_in;
            self.tokens.push_back(Block {
                next_at: first,
                left: reserved,
                spaced: true,
                lapse_at: first + interval.saturating_mul(reserved).max(MIN_LEASE_LIFE),
            });
        }
        // Fewer than asked for: nothing more until the next token comes
        // within the horizon.
        self.ask_at = if taken.granted < self.asked.get() {
            at + taken.next_in.saturating_sub(self.params.horizon)
        } else {
            at
        };
    }

    /// The state of a route on its fallback, as it starts.
    fn fallback(&self) -> Degraded {
        let (rate, burst) = self.local;
        Degraded {
            backoff: FIRST_BACKOFF,
            limiter: (self.spec.fallback == Fallback::Local).then(|| Limiter::new(rate, burst)),
        }
    }

    fn fail(&mut self, at: Instant, error: &StoreError) {
        // Tokens already granted stay usable: the shared schedule counts
        // them as this instance's.
        let backoff = match &mut self.degraded {
            Some(degraded) => {
                degraded.backoff = degraded.backoff.saturating_mul(2).min(MAX_BACKOFF);
                tracing::debug!(store = ?StoreName(&self.store), %error, "shared rate store still failing");
                degraded.backoff
            }
            None => {
                tracing::warn!(
                    store = ?StoreName(&self.store),
                    %error,
                    fallback = ?self.spec.fallback,
                    "shared rate store failed; the route runs on its fallback until it answers"
                );
                self.degraded = Some(self.fallback());
                FIRST_BACKOFF
            }
        };
        self.ask_at = at + jitter(backoff);
    }
}
