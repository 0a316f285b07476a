//! GCRA limiters on the tokio clock: one for a route (governor), and one per
//! key over a bounded key table ([`KeyTable`]).
//!
//! The keyed limiter does its GCRA arithmetic itself (the same as governor's)
//! rather than through governor's keyed state store: its table keeps each
//! key's state inline in the cache line the key is found in, so a decision on
//! a table of a million keys waits for one line from memory, not two in turn.

use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

use super::key_table::KeyTable;

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
pub(super) fn lateness_tolerance(rate: f64) -> Duration {
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
        let cells = NonZeroU32::MIN.saturating_add(CELLS_PER_REQUEST - 1);
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

/// A GCRA limiter per key, with at most `max_keys` keys tracked
/// ([`KeyTable`]). It decides at the `now` it is given, so a caller that has
/// read the clock for the request does not pay for a second reading.
#[derive(Debug)]
pub struct KeyedLimiter {
    gcra: Gcra,
    table: KeyTable,
    origin: Instant,
}

impl KeyedLimiter {
    pub fn new(rate: f64, burst: NonZeroU32, max_keys: NonZeroUsize) -> KeyedLimiter {
        KeyedLimiter {
            gcra: Gcra::new(rate, burst),
            table: KeyTable::new(max_keys.get()),
            origin: Instant::now(),
        }
    }

    /// Takes a token for `key` at `now`, or says how long until it has one.
    pub fn check(&self, key: u64, now: Instant) -> Result<(), Duration> {
        let t0 = nanos(now.saturating_duration_since(self.origin));
        self.table.update(key, t0, |tat| self.gcra.test(tat, t0))
    }

    /// Keys tracked now.
    pub fn keys(&self) -> usize {
        self.table.len()
    }

    /// Keys evicted so far.
    pub fn evictions(&self) -> u64 {
        self.table.evictions()
    }
}

/// GCRA on nanoseconds, as governor does it (`governor::gcra`): a request
/// at `t0` conforms unless `t0` is earlier than the key's theoretical arrival
/// time (TAT) minus the burst tolerance `tau`; a conforming request moves the
/// TAT to `max(TAT, t0) + t`. A key not yet seen has TAT = `t0`.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    /// Emission interval: one request per `t` ns.
    t: u64,
    /// Burst tolerance: `(burst - 1) * t`.
    tau: u64,
}

impl Gcra {
    fn new(rate: f64, burst: NonZeroU32) -> Gcra {
        let t = nanos(Duration::from_secs_f64(1.0 / rate)).max(1);
        Gcra {
            t,
            tau: t.saturating_mul(u64::from(burst.get() - 1)),
        }
    }

    /// The new TAT if a request at `t0` conforms, else how long until it would.
    fn test(&self, tat: Option<u64>, t0: u64) -> Result<u64, Duration> {
        let tat = tat.unwrap_or(t0);
        let earliest = tat.saturating_sub(self.tau);
        if t0 < earliest {
            Err(Duration::from_nanos(earliest - t0))
        } else {
            Ok(tat.max(t0).saturating_add(self.t))
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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
    async fn keyed_decisions_are_governors() {
        use governor::clock::FakeRelativeClock;
        let mut seed = 7u64;
        let mut random = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for (rate, burst) in [(10.0, 1), (10.0, 5), (1000.0, 20), (0.5, 3), (3e6, 2)] {
            let clock = FakeRelativeClock::default();
            let governor = RateLimiter::direct_with_clock(quota(rate, nz(burst)), clock.clone());
            let keyed = KeyedLimiter::new(rate, nz(burst), NonZeroUsize::new(10).unwrap());
            let origin = Instant::now();
            let period = Duration::from_secs_f64(1.0 / rate).as_nanos() as u64;
            let mut elapsed = Duration::ZERO;
            let mut refused = 0;
            for _ in 0..2_000 {
                // Gaps from none to 1.6 periods: a little over the rate on
                // average, so both answers come up.
                let gap = Duration::from_nanos(random(period * 8 / 5 + 1));
                clock.advance(gap);
                elapsed += gap;
                let expected = governor
                    .check()
                    .map_err(|not_until| not_until.wait_time_from(clock.now()));
                assert_eq!(
                    keyed.check(9, origin + elapsed),
                    expected,
                    "{rate}/s burst {burst}"
                );
                refused += usize::from(expected.is_err());
            }
            assert!(
                (50..1_950).contains(&refused),
                "{rate}/s burst {burst}: {refused} refused"
            );
        }
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
