//! Adaptive concurrency: an upstream's in-flight cap that follows its latency.
//!
//! A gradient controller in the manner of Netflix's Gradient2 (with a nod to
//! Envoy's adaptive concurrency filter). Per finished request it keeps a short
//! RTT (a fast moving average of recent latencies) and a long RTT (its estimate
//! of the latency without load) and moves the limit by
//!
//! ```text
//! gradient  = clamp(tolerance * long / short, 0.5, 1.0)
//! target    = limit * gradient + sqrt(limit)        // sqrt(limit): room to probe upward
//! limit     = limit * (1 - smoothing) + target * smoothing, clamped to [min, max]
//! ```
//!
//! so the limit grows while latency stays within `tolerance` of the no-load
//! latency and shrinks when queueing pushes it above. A failed or timed-out
//! request multiplies the limit by 0.9.
//!
//! The long RTT follows any lower latency, so the limit can grow back once the
//! backend is fast again. It rises only on evidence that a slowdown is not our
//! own queueing: a sample taken at low utilisation, or latency that stayed put
//! although the load was halved. (A long RTT that simply averaged all samples
//! would absorb the queueing it is meant to detect, and the limit would creep
//! up for as long as the backend is saturated.)
//!
//! Invariants: the limit is always within `[min_limit, max_limit]`; a sample
//! taken at low utilisation (in flight < limit / 2) never moves the limit — it
//! says little about saturation; all arithmetic stays finite whatever the
//! inputs (zero or huge RTTs, zero in flight).

use std::time::Duration;

use crate::config::AdaptiveConfig;

/// Factor applied to the limit on a failed or timed-out request.
const DROP_BACKOFF: f64 = 0.9;
/// Gradient floor: one window at most halves the target.
const MIN_GRADIENT: f64 = 0.5;
/// Fewest samples in a window.
const MIN_WINDOW: usize = 10;
/// Weight of a window in the long RTT.
const LONG_WEIGHT: f64 = 0.2;
/// Weight of a low-utilisation sample in the long RTT.
const LONG_IDLE_WEIGHT: f64 = 0.05;
/// Latency counts as "stayed put" when it kept this share of its peak.
const STUCK_RATIO: f64 = 0.7;

/// A gradient concurrency limiter's state.
#[derive(Debug, Clone)]
pub struct GradientLimit {
    min: f64,
    max: f64,
    tolerance: f64,
    smoothing: f64,
    /// The limit, fractional; `limit()` rounds it.
    estimate: f64,
    /// Estimated no-load latency, nanoseconds (0 before the first sample).
    long_rtt: f64,
    /// The window being filled: samples, sum of RTTs (ns), sum of in-flight.
    window_count: usize,
    window_rtt: f64,
    window_rtt_sq: f64,
    window_inflight: f64,
    /// Mean RTT of the last closed window, nanoseconds.
    short_rtt: f64,
    /// Peak short RTT of the current episode of back-off, and the mean
    /// in-flight count of the window that set it.
    peak_rtt: f64,
    peak_inflight: f64,
}

impl GradientLimit {
    pub fn new(config: &AdaptiveConfig) -> GradientLimit {
        let min = config.min_limit.get() as f64;
        let max = (config.max_limit.get() as f64).max(min);
        // The config is validated; still keep the arithmetic sane if it was not.
        let tolerance = if config.tolerance.is_finite() {
            config.tolerance.max(1.0)
        } else {
            1.5
        };
        let smoothing = if config.smoothing > 0.0 && config.smoothing <= 1.0 {
            config.smoothing
        } else {
            0.2
        };
        GradientLimit {
            min,
            max,
            tolerance,
            smoothing,
            estimate: (config.initial_limit.get() as f64).clamp(min, max),
            long_rtt: 0.0,
            window_count: 0,
            window_rtt: 0.0,
            window_rtt_sq: 0.0,
            window_inflight: 0.0,
            short_rtt: 0.0,
            peak_rtt: 0.0,
            peak_inflight: 0.0,
        }
    }

    /// The current limit (always within [min_limit, max_limit]).
    pub fn limit(&self) -> usize {
        // `estimate` is kept within [min, max], both exact integers.
        self.estimate.round() as usize
    }

    /// Records one finished request: its latency `rtt` (send to response head)
    /// and how many requests were in flight when it was sent. `dropped` marks a
    /// failure or timeout (treat as a strong signal to back off, e.g. multiply
    /// the limit by 0.9). Returns the new limit.
    pub fn on_sample(&mut self, rtt: Duration, inflight: usize, dropped: bool) -> usize {
        let inflight = inflight as f64;
        if inflight * 2.0 < self.estimate {
            // Low utilisation: not evidence about saturation, so the limit
            // stays; but it is a clean look at the no-load latency.
            if !dropped {
                let rtt = nanos(rtt);
                if self.long_rtt == 0.0 {
                    self.long_rtt = rtt;
                }
                self.long_rtt += (rtt - self.long_rtt) * LONG_IDLE_WEIGHT;
            }
            return self.limit();
        }
        if dropped {
            // Back off at once, and start a new window so that one burst of
            // failures backs off once per window rather than once per request.
            self.set_estimate(self.estimate * DROP_BACKOFF);
            self.reset_window();
            return self.limit();
        }

        let rtt = nanos(rtt);
        self.window_count += 1;
        self.window_rtt += rtt;
        self.window_rtt_sq += rtt * rtt;
        self.window_inflight += inflight;
        if self.window_count < MIN_WINDOW.max(self.limit()) {
            return self.limit();
        }
        let n = self.window_count as f64;
        let short = self.window_rtt / n;
        let load = self.window_inflight / n;
        // Standard error of the window's mean RTT.
        let noise = ((self.window_rtt_sq / n - short * short).max(0.0) / n).sqrt();
        self.reset_window();
        self.short_rtt = short;

        if self.long_rtt == 0.0 {
            self.long_rtt = short;
        } else {
            // A window no slower than the no-load latency (give or take its own
            // noise, capped well below the queueing the equilibrium carries)
            // refines it; a slower one is queueing, or a slowdown (below).
            let band =
                (2.0 * noise).min(self.long_rtt * 0.5 / (self.estimate.sqrt() - 1.0).max(1.0));
            if short <= self.long_rtt + band {
                self.long_rtt += (short - self.long_rtt) * LONG_WEIGHT;
            }
        }
        let mut gradient = self.gradient();
        if gradient >= 1.0 || short >= self.peak_rtt {
            // No back-off, or latency still climbing: the episode peaks here.
            self.peak_rtt = short;
            self.peak_inflight = load;
        } else if load * 2.0 <= self.peak_inflight && short >= self.peak_rtt * STUCK_RATIO {
            // The load was halved and latency stayed: it is the backend's own,
            // not our queue. Take it as the no-load latency.
            self.long_rtt = short;
            self.peak_rtt = short;
            self.peak_inflight = load;
            gradient = self.gradient();
        }

        let target = self.estimate * gradient + self.estimate.sqrt();
        self.set_estimate(self.estimate * (1.0 - self.smoothing) + target * self.smoothing);
        self.limit()
    }

    fn gradient(&self) -> f64 {
        (self.tolerance * self.long_rtt / self.short_rtt).clamp(MIN_GRADIENT, 1.0)
    }

    fn reset_window(&mut self) {
        self.window_count = 0;
        self.window_rtt = 0.0;
        self.window_rtt_sq = 0.0;
        self.window_inflight = 0.0;
    }

    fn set_estimate(&mut self, estimate: f64) {
        // `max`/`min` rather than `clamp`: a NaN (impossible, but) yields a bound.
        self.estimate = estimate.max(self.min).min(self.max);
    }
}

/// A latency in nanoseconds, at least 1 so that ratios stay finite.
fn nanos(rtt: Duration) -> f64 {
    (rtt.as_nanos() as f64).max(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::num::NonZeroUsize;

    fn config(min: usize, max: usize, initial: usize, tolerance: f64) -> AdaptiveConfig {
        AdaptiveConfig {
            min_limit: NonZeroUsize::new(min).unwrap(),
            max_limit: NonZeroUsize::new(max).unwrap(),
            initial_limit: NonZeroUsize::new(initial).unwrap(),
            tolerance,
            smoothing: 0.2,
        }
    }

    /// A simulated backend and a closed loop of clients, in virtual time.
    struct Sim {
        limiter: GradientLimit,
        clients: usize,
        /// (completion time ns, sequence) -> (rtt ns, in flight at send)
        pending: BinaryHeap<Reverse<(u64, u64, u64, usize)>>,
        now: u64,
        seq: u64,
        /// Latency of a request sent with `n` in flight (itself included).
        latency: Box<dyn FnMut(usize) -> u64>,
    }

    impl Sim {
        fn new(
            limiter: GradientLimit,
            clients: usize,
            latency: Box<dyn FnMut(usize) -> u64>,
        ) -> Sim {
            let mut sim = Sim {
                limiter,
                clients,
                pending: BinaryHeap::new(),
                now: 0,
                seq: 0,
                latency,
            };
            sim.fill();
            sim
        }

        fn fill(&mut self) {
            let cap = self.clients.min(self.limiter.limit());
            while self.pending.len() < cap {
                let n = self.pending.len() + 1;
                let rtt = (self.latency)(n);
                self.seq += 1;
                self.pending
                    .push(Reverse((self.now + rtt, self.seq, rtt, n)));
            }
        }

        /// Completes the next request; returns the limit after its sample.
        fn step(&mut self) -> usize {
            let Reverse((done, _, rtt, n)) = self.pending.pop().unwrap();
            self.now = done;
            let limit = self.limiter.on_sample(Duration::from_nanos(rtt), n, false);
            self.fill();
            limit
        }
    }

    fn knee(base_ms: u64, k: usize) -> Box<dyn FnMut(usize) -> u64> {
        let base = base_ms * 1_000_000;
        Box::new(move |n| {
            if n <= k {
                base
            } else {
                base * n as u64 / k as u64
            }
        })
    }

    fn jitter(base_ms: u64, k: usize, spread: f64) -> Box<dyn FnMut(usize) -> u64> {
        let mut inner = knee(base_ms, k);
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        Box::new(move |n| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let u = (state >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
            (inner(n) as f64 * (1.0 - spread + 2.0 * spread * u)) as u64
        })
    }

    fn report(name: &str, trace: &[usize]) {
        let tail = &trace[trace.len() - 1000..];
        let mean = tail.iter().sum::<usize>() as f64 / tail.len() as f64;
        println!(
            "{name}: mean {mean:.1} range {}..{}",
            tail.iter().min().unwrap(),
            tail.iter().max().unwrap()
        );
    }

    #[test]
    fn trace() {
        for &(k, tol, spread) in &[
            (20usize, 1.0, 0.0),
            (50, 1.0, 0.0),
            (20, 1.0, 0.2),
            (50, 1.0, 0.2),
            (20, 1.0, 0.5),
            (50, 1.0, 0.5),
            (20, 1.5, 0.2),
            (50, 1.5, 0.2),
        ] {
            let mut sim = Sim::new(
                GradientLimit::new(&config(1, 1000, 20, tol)),
                200,
                jitter(10, k, spread),
            );
            let trace: Vec<usize> = (0..20_000).map(|_| sim.step()).collect();
            report(
                &format!(
                    "K={k} tol={tol} jitter={spread} long {:.2}",
                    sim.limiter.long_rtt / 1e6
                ),
                &trace,
            );
        }
        // base latency doubles under saturation, then returns
        let mut sim = Sim::new(
            GradientLimit::new(&config(1, 1000, 20, 1.0)),
            200,
            knee(10, 20),
        );
        let mut trace: Vec<usize> = (0..5000).map(|_| sim.step()).collect();
        report("before", &trace);
        for factor in [2u64, 5, 1] {
            sim.latency = Box::new(move |n| factor * knee(10, 20)(n));
            trace = (0..5000).map(|_| sim.step()).collect();
            report(
                &format!("base x{factor} long {:.2}", sim.limiter.long_rtt / 1e6),
                &trace,
            );
            println!(
                "  first 2000: {:?}",
                trace.iter().step_by(100).take(20).collect::<Vec<_>>()
            );
        }
        for k in [10usize, 40, 20] {
            sim.latency = knee(10, k);
            trace = (0..5000).map(|_| sim.step()).collect();
            report(
                &format!("K->{k} long {:.2}", sim.limiter.long_rtt / 1e6),
                &trace,
            );
            println!(
                "  first 2000: {:?}",
                trace.iter().step_by(100).take(20).collect::<Vec<_>>()
            );
        }
    }
}
