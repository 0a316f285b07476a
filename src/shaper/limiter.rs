//! GCRA limiters (governor) on the tokio clock: one for a route, and a keyed
//! one with a bounded key table.
//!
//! The keyed table is a dashmap from a 64-bit key hash to the key's GCRA
//! state (its theoretical arrival time) and when it was last seen. It never
//! holds more than `max_keys`: before a new key is admitted to a full table,
//! the longest-idle tenth is evicted. An evicted key starts fresh, which for
//! an idle key is what its state would have said anyway.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::time::Instant;

fn quota(rate: f64, burst: NonZeroU32) -> Quota {
    let period = Duration::from_secs_f64(1.0 / rate).max(Duration::from_nanos(1));
    Quota::with_period(period)
        .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
        .allow_burst(burst)
}

/// Cells per request in the route limiter: a request spends this many, so the
/// limiter's tolerance can be finer than one request.
const CELLS_PER_REQUEST: u32 = 1024;

/// How late a release may come (timer granularity, scheduling, a busy CPU)
/// without the time being lost: GCRA forgets lateness beyond its tolerance,
/// which with burst 1 and a millisecond timer cost ~10% of the rate at 100/s,
/// and far more when the releaser is descheduled. The tolerance is one
/// release interval, bounded to [2 ms, 20 ms]: a late release is made up at
/// once, and no 100 ms window sees more than one request above
/// `rate x 0.1 + burst` (two at most above 500/s).
fn lateness_tolerance(rate: f64) -> Duration {
    Duration::from_secs_f64(1.0 / rate).clamp(Duration::from_millis(2), Duration::from_millis(20))
}

/// A GCRA limiter for a whole route. The steady rate and burst are exact;
/// on top, the limiter tolerates a release coming late by up to
/// [`lateness_tolerance`] — at most one extra request at once (two above 500/s).
#[derive(Debug)]
pub struct Limiter {
    gcra: RateLimiter<NotKeyed, InMemoryState, TokioClock, NoOpMiddleware<Nanos>>,
    clock: TokioClock,
    cells: NonZeroU32,
}

impl Limiter {
    pub fn new(rate: f64, burst: NonZeroU32) -> Limiter {
        let clock = TokioClock::new();
        let cells_per_second = rate * f64::from(CELLS_PER_REQUEST);
        let slack = (lateness_tolerance(rate).as_secs_f64() * cells_per_second).ceil() as u32;
        let capacity = burst
            .get()
            .saturating_mul(CELLS_PER_REQUEST)
            .saturating_add(slack);
        let cells = NonZeroU32::new(CELLS_PER_REQUEST).expect("non-zero constant");
        Limiter {
            gcra: RateLimiter::direct_with_clock(
                quota(cells_per_second, NonZeroU32::new(capacity).unwrap_or(cells)),
                clock.clone(),
            ),
            clock,
            cells,
        }
    }

    /// Takes a token at `now`, or says how long until one is free.
    pub fn check(&self, now: Instant) -> Result<(), Duration> {
        match self.gcra.check_n(self.cells) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(not_until.wait_time_from(self.clock.at(now))),
            // Cannot happen: the capacity is at least one request's cells.
            Err(_insufficient) => Err(Duration::from_secs(1)),
        }
    }
}

/// A GCRA limiter per key, with at most `max_keys` keys tracked.
#[derive(Debug)]
pub struct KeyedLimiter {
    gcra: RateLimiter<u64, SharedTable, TokioClock, NoOpMiddleware<Nanos>>,
    table: Arc<KeyTable>,
    clock: TokioClock,
}

impl KeyedLimiter {
    pub fn new(rate: f64, burst: NonZeroU32, max_keys: NonZeroUsize) -> KeyedLimiter {
        let clock = TokioClock::new();
        let table = Arc::new(KeyTable {
            map: DashMap::new(),
            len: AtomicUsize::new(0),
            max_keys: max_keys.get(),
            evictions: AtomicU64::new(0),
            sweeping: Mutex::new(()),
            clock: clock.clone(),
        });
        KeyedLimiter {
            gcra: RateLimiter::new(
                quota(rate, burst),
                SharedTable(table.clone()),
                clock.clone(),
            ),
            table,
            clock,
        }
    }

    /// Takes a token for `key` at `now`, or says how long until it has one.
    pub fn check(&self, key: u64, now: Instant) -> Result<(), Duration> {
        self.gcra
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(self.clock.at(now)))
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.table().len.load(Ordering::Relaxed)
    }

    /// Keys evicted so far.
    pub fn evictions(&self) -> u64 {
        self.table().evictions.load(Ordering::Relaxed)
    }

    fn table(&self) -> &KeyTable {
        &self.table
    }
}

/// governor's keyed state in a dashmap, bounded by `max_keys`.
#[derive(Debug)]
struct KeyTable {
    map: DashMap<u64, KeyState>,
    /// Entries in `map` (dashmap's own `len` walks every shard).
    len: AtomicUsize,
    max_keys: usize,
    evictions: AtomicU64,
    sweeping: Mutex<()>,
    clock: TokioClock,
}

#[derive(Debug, Clone, Copy)]
struct KeyState {
    /// GCRA theoretical arrival time.
    tat: Nanos,
    /// Last time the key asked, for eviction order.
    seen: Nanos,
}

impl KeyTable {
    /// Makes room for one more key: evicts the longest-idle tenth of the table.
    fn make_room(&self) {
        let _sweep = self.sweeping.lock();
        if self.len.load(Ordering::Relaxed) < self.max_keys {
            return; // another sweep made room meanwhile
        }
        let mut idle: Vec<(Nanos, u64)> = self.map.iter().map(|e| (e.seen, *e.key())).collect();
        let evict = (self.max_keys / 10)
            .max(1)
            .max(idle.len().saturating_sub(self.max_keys - 1));
        let evict = evict.min(idle.len());
        if evict == 0 {
            return;
        }
        idle.select_nth_unstable(evict - 1);
        for (_, key) in &idle[..evict] {
            if self.map.remove(key).is_some() {
                self.len.fetch_sub(1, Ordering::Relaxed);
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The table as governor's state store (governor owns its store; we keep a
/// second handle for counting and eviction).
#[derive(Debug)]
struct SharedTable(Arc<KeyTable>);

impl StateStore for SharedTable {
    type Key = u64;

    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl KeyTable {
    fn measure_and_replace<T, F, E>(&self, key: &u64, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let seen = self.clock.now();
        if let Some(mut state) = self.map.get_mut(key) {
            state.seen = seen;
            let (value, tat) = f(Some(state.tat))?;
            state.tat = tat;
            return Ok(value);
        }
        // A new key: decide first, so a refused request does not evict anyone.
        let (value, tat) = f(None)?;
        if self.len.load(Ordering::Relaxed) >= self.max_keys {
            self.make_room();
        }
        if self.map.insert(*key, KeyState { tat, seen }).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
        Ok(value)
    }
}

/// governor's clock over `tokio::time::Instant`, so a paused runtime drives it.
#[derive(Debug, Clone)]
pub(crate) struct TokioClock {
    origin: Instant,
}

impl TokioClock {
    fn new() -> TokioClock {
        TokioClock {
            origin: Instant::now(),
        }
    }

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

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn each_key_has_its_own_rate_and_burst() {
        let limiter = KeyedLimiter::new(10.0, nz(2), NonZeroUsize::new(100).unwrap());
        let now = Instant::now();
        assert!(limiter.check(1, now).is_ok());
        assert!(limiter.check(1, now).is_ok());
        assert_eq!(limiter.check(1, now), Err(Duration::from_millis(100)));
        // Another key is untouched.
        assert!(limiter.check(2, now).is_ok());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(limiter.check(1, Instant::now()).is_ok());
        assert_eq!(limiter.keys(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_table_never_exceeds_max_keys_and_evicts_the_longest_idle() {
        let limiter = KeyedLimiter::new(1.0, nz(1), NonZeroUsize::new(100).unwrap());
        // Key 0 is busy (and limited); keys 1.. arrive one per millisecond.
        assert!(limiter.check(0, Instant::now()).is_ok());
        for key in 1..1_000u64 {
            tokio::time::advance(Duration::from_millis(1)).await;
            let _ = limiter.check(0, Instant::now());
            assert!(
                limiter.check(key, Instant::now()).is_ok(),
                "a new key starts fresh"
            );
            assert!(limiter.keys() <= 100, "{} keys", limiter.keys());
        }
        assert!(limiter.evictions() >= 900);
        // The busy key was never idle long enough to be evicted: still limited.
        assert!(limiter.check(0, Instant::now()).is_err());
        // An evicted key starts fresh.
        assert!(limiter.check(1, Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn many_more_keys_than_the_cap_stay_within_it() {
        let limiter = KeyedLimiter::new(1.0, nz(1), NonZeroUsize::new(10_000).unwrap());
        let now = Instant::now();
        for key in 0..200_000u64 {
            let _ = limiter.check(key, now);
        }
        assert!(limiter.keys() <= 10_000);
        assert_eq!(limiter.keys() as u64 + limiter.evictions(), 200_000);
    }
}
