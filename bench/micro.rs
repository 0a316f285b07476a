//! Micro-benchmarks of the shaper's hot path, in nanoseconds per operation.
//!
//! `cargo bench --bench micro` (about 90 seconds) measures with criterion:
//!
//! - `keyed_limiter/{1,2}_threads/{1000,1000000}_keys`: one
//!   [`KeyedLimiter::check`] (the per-key limit, `[routes.key_limit]`) with
//!   the table already holding that many keys. Keys are 64-bit hashes, as
//!   the proxy makes them, picked uniformly at random from the key set
//!   (SplitMix64, seeded, precomputed so the generator is not timed).
//! - `route_limiter/{1,2}_threads/{admit,refuse}`: one [`Limiter::check`]
//!   (the route's rate), on a limiter that has tokens to give, and on one
//!   that is over its rate and answers with the wait.
//! - `queue/{fifo,per_key}/{1000,100000}_waiting`: one `Queue::push`, then
//!   `next` and `release` of the waiter it names, with the depth held steady.
//! - `shaper/{1,2}_threads/admit_go`: [`Shaper::admit`] taking the fast path
//!   (nothing queued, a token and an in-flight permit free), then dropping
//!   the grant — the whole cost of shaping a request that is not held back.
//! - `shaper/1_thread/admit_queue_release`: a request that cannot go at once
//!   (the in-flight cap is held): `admit` queues it, the previous grant is
//!   dropped, and the route's release task hands the permit to its ticket.
//!   Includes the two task wake-ups, the ticket's timer and the oneshot, on
//!   a current-thread tokio runtime. One thread only: one release task per
//!   route hands out every place, so a second thread adds nothing to measure.
//! - `clock/tokio_instant_now`: what the caller pays for the `now` it passes.
//! - `path/normalise/{normal,messy}`: [`sluice::http::path::normalise`] on a
//!   typical path already in normal form (checked in one pass, borrowed) and
//!   on one that needs every rewrite (decoding, dot segments, slashes).
//!
//! With two threads, both call the same limiter (or shaper) at once and each
//! makes the given number of calls; the time reported is the wall time per
//! call on one thread (so the pair makes two decisions in that time).
//! No benchmark sleeps or waits on the wall clock.

// A measuring tool, not the proxy: a failed setup step should stop it
// loudly, so it may unwrap, expect and panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant as StdInstant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use sluice::shaper::{Admission, Arrival, Gate, KeyedLimiter, Limiter, Limits, Queue, Shaper};
use tokio::sync::Semaphore;
use tokio::time::Instant;

/// Length of a precomputed key sequence (a power of two: indexed by a mask).
const SEQUENCE: usize = 1 << 20;

/// Decisions between two readings of the clock in a timed loop: time moves
/// on as it would for the proxy, at a negligible cost per decision.
const NOW_EVERY: u64 = 1024;

/// SplitMix64: cheap, seeded, and a bijection, so distinct states give
/// distinct keys.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below 2^-40 here).
    fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next()) * n as u128) >> 64) as usize
    }
}

/// `count` distinct key hashes and a uniformly random sequence over them.
fn keys(count: usize, seed: u64) -> (Vec<u64>, Vec<u64>) {
    let mut rng = SplitMix64(seed);
    let set: Vec<u64> = (0..count).map(|_| rng.next()).collect();
    let sequence = (0..SEQUENCE).map(|_| set[rng.below(count)]).collect();
    (set, sequence)
}

/// Runs `run(thread, iters)` on two threads at once, released together;
/// returns the longer of the two timed spans.
fn on_two_threads<F>(iters: u64, run: F) -> Duration
where
    F: Fn(usize, u64) -> Duration + Sync,
{
    let start = Barrier::new(2);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|thread| {
                let (start, run) = (&start, &run);
                scope.spawn(move || {
                    start.wait();
                    run(thread, iters)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("benchmark thread"))
            .max()
            .unwrap_or_default()
    })
}

/// Runs `iters` keyed decisions starting at `offset` in `sequence`.
fn keyed_decisions(
    limiter: &KeyedLimiter,
    sequence: &[u64],
    offset: usize,
    iters: u64,
) -> Duration {
    let mask = sequence.len() - 1;
    let started = StdInstant::now();
    let mut i = offset;
    let mut refused = 0u64;
    let mut left = iters;
    while left > 0 {
        let now = Instant::now();
        for _ in 0..left.min(NOW_EVERY) {
            refused += u64::from(black_box(limiter.check(sequence[i & mask], now)).is_err());
            i = i.wrapping_add(1);
        }
        left = left.saturating_sub(NOW_EVERY);
    }
    let elapsed = started.elapsed();
    black_box(refused);
    elapsed
}

fn keyed_limiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("keyed_limiter");
    for count in [1_000usize, 1_000_000] {
        // As in bench/keys.rs: 10/s with a burst of 20 per key.
        let limiter = KeyedLimiter::new(
            10.0,
            NonZeroU32::new(20).expect("non-zero"),
            NonZeroUsize::new(count).expect("non-zero"),
        );
        let (set, sequence) = keys(count, 0x5EED_0000 + count as u64);
        let now = Instant::now();
        for &key in &set {
            assert!(limiter.check(key, now).is_ok(), "a new key has its burst");
        }
        assert_eq!(limiter.keys(), count, "every key tracked");
        drop(set);
        let keys = format!("{count}_keys");
        group.bench_function(BenchmarkId::new("1_thread", &keys), |b| {
            b.iter_custom(|iters| keyed_decisions(&limiter, &sequence, 0, iters));
        });
        group.bench_function(BenchmarkId::new("2_threads", &keys), |b| {
            b.iter_custom(|iters| {
                on_two_threads(iters, |thread, iters| {
                    keyed_decisions(&limiter, &sequence, thread * SEQUENCE / 2, iters)
                })
            });
        });
        // The table stayed the same size: every decision was for a known key.
        assert_eq!(limiter.keys(), count);
        assert_eq!(limiter.evictions(), 0);
    }
    group.finish();
}

/// Requests a fresh limiter (or shaper) can admit before its burst runs out;
/// a timed run longer than this is split, each part with a fresh one.
const FRESH_BURST: u32 = 1_000_000;

/// `iters` calls to `run(fresh, n)`, in parts of at most `FRESH_BURST / 2`
/// (two threads share one burst), each part on a fresh `make()`; only `run`
/// is timed.
fn in_fresh_parts<T, M, R>(iters: u64, make: M, run: R) -> Duration
where
    M: Fn() -> T,
    R: Fn(&T, u64) -> Duration,
{
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let part = left.min(u64::from(FRESH_BURST / 2));
        let fresh = make();
        total += run(&fresh, part);
        left -= part;
    }
    total
}

fn route_decisions(limiter: &Limiter, iters: u64) -> (Duration, u64) {
    let started = StdInstant::now();
    let mut refused = 0;
    let mut left = iters;
    while left > 0 {
        let now = Instant::now();
        for _ in 0..left.min(NOW_EVERY) {
            refused += u64::from(black_box(limiter.check(now)).is_err());
        }
        left = left.saturating_sub(NOW_EVERY);
    }
    (started.elapsed(), refused)
}

fn route_limiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_limiter");
    let burst = NonZeroU32::new(FRESH_BURST).expect("non-zero");
    let admitting = || Limiter::new(1e6, burst);
    let admit = |limiter: &Limiter, iters| {
        let (elapsed, refused) = route_decisions(limiter, iters);
        assert_eq!(refused, 0, "a fresh limiter has tokens for the whole part");
        elapsed
    };
    group.bench_function("1_thread/admit", |b| {
        b.iter_custom(|iters| in_fresh_parts(iters, admitting, admit));
    });
    group.bench_function("2_threads/admit", |b| {
        b.iter_custom(|iters| {
            in_fresh_parts(iters, admitting, |limiter, part| {
                on_two_threads(part, |_, part| admit(limiter, part))
            })
        });
    });
    // 100/s, burst 10: after the first ten, every call is refused with a wait.
    let over = Limiter::new(100.0, NonZeroU32::new(10).expect("non-zero"));
    group.bench_function("1_thread/refuse", |b| {
        b.iter_custom(|iters| route_decisions(&over, iters).0);
    });
    group.bench_function("2_threads/refuse", |b| {
        b.iter_custom(|iters| on_two_threads(iters, |_, iters| route_decisions(&over, iters).0));
    });
    group.finish();
}

fn queue(c: &mut Criterion) {
    let mut group = c.benchmark_group("queue");
    for (name, per_key) in [("fifo", false), ("per_key", true)] {
        for depth in [1_000usize, 100_000] {
            // One class; with per-key fairness, arrivals from 1,000 keys.
            let mut queue: Queue<u64> = Queue::new(1, per_key, Duration::from_secs(1));
            let (_, sequence) = keys(1_000, 0x9_0000 + depth as u64);
            let now = Instant::now();
            for (i, &key) in sequence.iter().take(depth).enumerate() {
                queue.push(0, key, now, i as u64);
            }
            let mut i = depth;
            group.bench_function(BenchmarkId::new(name, format!("{depth}_waiting")), |b| {
                b.iter_custom(|iters| {
                    let started = StdInstant::now();
                    for _ in 0..iters {
                        let key = sequence[i & (SEQUENCE - 1)];
                        queue.push(0, key, now, i as u64);
                        let next = queue.next(now, false).expect("never empty");
                        black_box(queue.release(next));
                        i += 1;
                    }
                    started.elapsed()
                });
            });
            assert_eq!(queue.len(), depth, "the depth held steady");
        }
    }
    group.finish();
}

/// A route whose rate never holds anyone back in a part (1,000,000/s with a
/// burst as large), a queue of 1,000 and `inflight` in-flight permits.
fn fast_shaper(inflight: usize) -> Shaper {
    let rate = Some((1e6, NonZeroU32::new(FRESH_BURST).expect("non-zero")));
    Shaper::new(
        Limits::fifo(rate, 1_000, Duration::from_secs(60)),
        Arc::new(Semaphore::new(inflight)),
        Arc::new(Gate::new(true)),
    )
}

fn admissions(shaper: &Shaper, iters: u64) -> Duration {
    let started = StdInstant::now();
    for _ in 0..iters {
        match shaper.admit(Arrival::default()) {
            Admission::Go(grant) => drop(black_box(grant)),
            other => panic!("expected the fast path, got {other:?}"),
        }
    }
    started.elapsed()
}

fn shaper(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    // `Shaper::new` spawns the route's release task on this runtime.
    let _in_runtime = runtime.enter();
    let mut group = c.benchmark_group("shaper");
    group.bench_function("1_thread/admit_go", |b| {
        b.iter_custom(|iters| in_fresh_parts(iters, || fast_shaper(1_000), admissions));
    });
    group.bench_function("2_threads/admit_go", |b| {
        b.iter_custom(|iters| {
            in_fresh_parts(
                iters,
                || fast_shaper(1_000),
                |shaper, part| on_two_threads(part, |_, part| admissions(shaper, part)),
            )
        });
    });
    group.bench_function("1_thread/admit_queue_release", |b| {
        b.iter_custom(|iters| {
            in_fresh_parts(
                iters,
                || fast_shaper(1),
                |shaper, part| {
                    runtime.block_on(async {
                        let Admission::Go(mut held) = shaper.admit(Arrival::default()) else {
                            panic!("the first request goes at once");
                        };
                        let started = StdInstant::now();
                        for _ in 0..part {
                            let Admission::Queued(ticket) = shaper.admit(Arrival::default()) else {
                                panic!("the in-flight cap is held: the request queues");
                            };
                            drop(held);
                            held = ticket.wait().await.expect("released");
                        }
                        started.elapsed()
                    })
                },
            )
        });
    });
    group.finish();
}

fn clock(c: &mut Criterion) {
    c.bench_function("clock/tokio_instant_now", |b| b.iter(Instant::now));
}

fn path(c: &mut Criterion) {
    let mut group = c.benchmark_group("path/normalise");
    let normal = "/api/v1/orders/8f14e45fceea167a5a36dedd4bea2543/items";
    let messy = "//api/./v1/x/../orders/%38f14e45fceea167a5a36dedd4bea2543//items";
    for (name, path) in [("normal", normal), ("messy", messy)] {
        group.bench_function(name, |b| {
            b.iter(|| sluice::http::path::normalise(black_box(path)).map(|p| p.len()))
        });
    }
    group.finish();
}

criterion_group! {
    name = micro;
    // 18 benchmarks x (1 s warm-up + 4 s measuring + analysis), plus filling
    // the key tables: about 90 seconds.
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .sample_size(50);
    targets = keyed_limiter, route_limiter, queue, shaper, clock, path
}
criterion_main!(micro);
