//! Adaptive concurrency: an upstream's in-flight cap follows its latency, in
//! the manner of Netflix's Gradient2, with Envoy's idea of re-measuring the
//! no-load latency at reduced load.
//!
//! Samples are taken in windows of about a round trip (`limit` of them, at
//! least 10). The short RTT is a window's mean; the long RTT estimates the
//! latency without load. Per window:
//!
//! ```text
//! gradient = clamp(tolerance * long / short, 0.5, 1.0)
//! target   = limit * gradient + sqrt(limit)          // sqrt: room to grow
//! limit    = clamp(limit * (1 - smoothing) + target * smoothing, min, max)
//! ```
//!
//! so the limit settles where latency is about `tolerance` times the no-load
//! latency (plus the sqrt(limit) headroom). A failure or timeout multiplies
//! the limit by 0.9, once per window.
//!
//! The long RTT follows faster windows, a marked improvement at once, so the
//! limit grows back when the backend recovers (and one window at half the
//! limit then checks whether that faster window still queued). It never
//! averages in saturated windows: a long RTT that tracks them, as Gradient2's
//! does, lets the limit creep up for as long as the backend stays saturated.
//! It rises only part way with low-utilisation samples, and outright when
//! halving the load left latency where it was: that latency is the backend's
//! own, not our queue.
//!
//! Invariants: `limit()` is always within `[min_limit, max_limit]`; a sample
//! taken at low utilisation (in flight < limit / 2) never moves the limit, as
//! it says little about saturation; the arithmetic stays finite whatever the
//! inputs (zero or huge RTTs, zero in flight).

use std::time::Duration;

use crate::config::AdaptiveConfig;

/// Factor applied to the limit on a failed or timed-out request.
const DROP_BACKOFF: f64 = 0.9;
/// Gradient floor: one window at most halves the target.
const MIN_GRADIENT: f64 = 0.5;
/// Fewest samples in a window.
const MIN_WINDOW: usize = 10;
/// Weight of a window that moves the long RTT part way.
const LONG_WEIGHT: f64 = 0.2;
/// With the load halved, latency that kept this share of its peak is the
/// backend's own rather than our queue.
const STUCK_RATIO: f64 = 0.7;
/// Windows between two probes.
const PROBE_COOLDOWN: u32 = 20;

/// A gradient concurrency limiter's state.
#[derive(Debug, Clone)]
pub struct GradientLimit {
    min: f64,
    max: f64,
    tolerance: f64,
    smoothing: f64,
    /// The limit, fractional, within `[min, max]`; `limit()` rounds it.
    estimate: f64,
    /// Estimated no-load latency, ns (0 until the first sample).
    long_rtt: f64,
    /// Samples at full load, and at low utilisation.
    window: Window,
    idle: Window,
    /// Mean RTT of the last window, ns.
    short_rtt: f64,
    /// Peak short RTT of the current episode of back-off, and the mean load
    /// of the window that set it.
    peak_rtt: f64,
    peak_load: f64,
    /// The long RTT was last set from a window that may carry queueing.
    suspect: bool,
    /// Windows until a probe may start.
    cooldown: u32,
    /// While probing: the limit to restore, and samples skipped so far.
    probe: Option<(f64, usize)>,
}

/// Samples of the current window.
#[derive(Debug, Clone, Default)]
struct Window {
    /// All samples counted, failures included.
    samples: usize,
    /// Successful samples: count, sums of RTT (ns), RTT squared and in flight.
    ok: usize,
    rtt: f64,
    rtt_sq: f64,
    inflight: f64,
    /// The limit was backed off for a failure in this window.
    backed_off: bool,
}

impl Window {
    fn add(&mut self, rtt: f64, inflight: f64) {
        self.samples += 1;
        self.ok += 1;
        self.rtt += rtt;
        self.rtt_sq += rtt * rtt;
        self.inflight += inflight;
    }

    /// Mean RTT, its noise (twice the standard error of the mean) and mean
    /// load of the successful samples; `None` without any.
    fn stats(&self) -> Option<(f64, f64, f64)> {
        if self.ok == 0 {
            return None;
        }
        let n = self.ok as f64;
        let mean = self.rtt / n;
        let noise = 2.0 * ((self.rtt_sq / n - mean * mean).max(0.0) / n).sqrt();
        Some((mean, noise, self.inflight / n))
    }
}

impl GradientLimit {
    pub fn new(config: &AdaptiveConfig) -> GradientLimit {
        let min = config.min_limit.get() as f64;
        let max = (config.max_limit.get() as f64).max(min);
        // The config is validated; keep the arithmetic sane even if it was not.
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
            window: Window::default(),
            idle: Window::default(),
            short_rtt: 0.0,
            peak_rtt: 0.0,
            peak_load: 0.0,
            suspect: false,
            cooldown: 0,
            probe: None,
        }
    }

    /// The current limit (always within [min_limit, max_limit]).
    pub fn limit(&self) -> usize {
        // `estimate` stays within [min, max], whose ends are integers.
        self.estimate.round() as usize
    }

    /// Records one finished request: its latency `rtt` (send to response head)
    /// and how many requests were in flight when it was sent. `dropped` marks a
    /// failure or timeout (treat as a strong signal to back off, e.g. multiply
    /// the limit by 0.9). Returns the new limit.
    pub fn on_sample(&mut self, rtt: Duration, inflight: usize, dropped: bool) -> usize {
        let rtt = (rtt.as_nanos() as f64).max(1.0); // >= 1 ns: ratios stay finite
        let inflight = inflight as f64;
        let low_utilisation = inflight * 2.0 < self.estimate;
        if let Some((restore, skipped)) = &mut self.probe
            && (low_utilisation || inflight > self.estimate.round())
        {
            // Not at the probe's load: sent before the probe lowered the
            // limit, or too little traffic. Give up if the probe's load does
            // not come within a few round trips.
            *skipped += 1;
            if *skipped as f64 > 4.0 * *restore {
                self.end_probe();
            }
            if !low_utilisation {
                return self.limit();
            }
        }
        if low_utilisation {
            // No evidence about saturation, so the limit stays; but a look at
            // the latency with little load.
            if !dropped {
                self.idle.add(rtt, inflight);
                if self.idle.ok >= MIN_WINDOW {
                    self.flush_idle();
                }
            }
            return self.limit();
        }
        if dropped {
            if self.probe.is_some() {
                self.end_probe();
            }
            if !self.window.backed_off {
                // Back off, and open a window (about a round trip) in which
                // further failures, of requests sent before, are no news.
                self.window = Window {
                    backed_off: true,
                    ..Window::default()
                };
                self.set_estimate(self.estimate * DROP_BACKOFF);
            }
            self.window.samples += 1;
        } else {
            self.window.add(rtt, inflight);
        }
        if self.window.samples >= MIN_WINDOW.max(self.limit()) {
            let window = std::mem::take(&mut self.window);
            self.close_window(window);
        }
        self.limit()
    }

    fn close_window(&mut self, w: Window) {
        self.cooldown = self.cooldown.saturating_sub(1);
        self.flush_idle();
        let Some((short, noise, load)) = w.stats() else {
            return;
        };
        if w.backed_off {
            // The failure has had its say for this window.
            return;
        }
        self.short_rtt = short;

        if self.probe.is_some() {
            // The probe's window, at half the load: if latency is lower here
            // the long RTT had queueing in it. Look again later if it fell
            // by more than noise, since half the load may still queue.
            self.suspect = short < self.long_rtt - noise;
            if self.suspect {
                self.long_rtt = short;
            }
            self.end_probe();
            return;
        }

        self.learn_window(short, noise, false);
        let mut gradient = self.gradient();
        if gradient >= 1.0 || short >= self.peak_rtt {
            // Not backing off, or latency still climbing: the episode peaks here.
            self.peak_rtt = short;
            self.peak_load = load;
        } else if load * 2.0 <= self.peak_load && short >= self.peak_rtt * STUCK_RATIO {
            // The load was halved and latency stayed: it is the backend's own
            // latency, not our queue. Take it as the no-load latency.
            self.long_rtt = short;
            self.suspect = false;
            self.peak_rtt = short;
            self.peak_load = load;
            gradient = self.gradient();
        }

        let target = self.estimate * gradient + self.estimate.sqrt();
        self.set_estimate(self.estimate * (1.0 - self.smoothing) + target * self.smoothing);

        if self.suspect && self.cooldown == 0 {
            self.suspect = false;
            let half = (self.estimate / 2.0).max(self.min);
            if half.round() < self.estimate.round() {
                self.probe = Some((self.estimate, 0));
                self.estimate = half;
            }
        }
    }

    /// Updates the long RTT from a window's mean.
    ///
    /// A window faster by more than its noise sets it outright and asks for a
    /// probe (one window at half the limit), since it may itself include
    /// queueing; a window faster within its noise moves it part way. A slower
    /// window is queueing, or a slowdown that `close_window` recognises when
    /// halving the load does not cure it; only a low-utilisation (`idle`)
    /// window, slower within its noise, moves it up part way. That band is
    /// also kept well under the queueing an equilibrium carries (short / long
    /// is at least sqrt(limit) / (sqrt(limit) - 1) there).
    fn learn_window(&mut self, short: f64, noise: f64, idle: bool) {
        if self.long_rtt == 0.0 || short < self.long_rtt - noise {
            self.long_rtt = short;
            self.suspect = true;
        } else if short < self.long_rtt {
            self.long_rtt += (short - self.long_rtt) * LONG_WEIGHT;
        } else if idle {
            let equilibrium = self.long_rtt * 0.25 / (self.estimate.sqrt() - 1.0).max(1.0);
            if short <= self.long_rtt + noise.min(equilibrium) {
                self.long_rtt += (short - self.long_rtt) * LONG_WEIGHT;
            }
        }
    }

    /// Learns from the low-utilisation samples gathered so far. (Half the
    /// limit may still be more than the backend takes without queueing, so
    /// they too are checked by a probe.)
    fn flush_idle(&mut self) {
        let idle = std::mem::take(&mut self.idle);
        if let Some((short, noise, _)) = idle.stats() {
            self.learn_window(short, noise, true);
        }
    }

    fn gradient(&self) -> f64 {
        (self.tolerance * self.long_rtt / self.short_rtt).clamp(MIN_GRADIENT, 1.0)
    }

    /// Restores the limit saved by a probe, if one is running.
    fn end_probe(&mut self) {
        if let Some((restore, _)) = self.probe.take() {
            self.estimate = restore;
            self.cooldown = PROBE_COOLDOWN;
            self.window = Window::default();
        }
    }

    fn set_estimate(&mut self, estimate: f64) {
        // `max` then `min` rather than `clamp`: even a NaN would land in bounds.
        self.estimate = estimate.max(self.min).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::num::NonZeroUsize;

    const MS: u64 = 1_000_000;

    fn config(min: usize, max: usize, initial: usize, tolerance: f64) -> AdaptiveConfig {
        AdaptiveConfig {
            min_limit: NonZeroUsize::new(min).unwrap(),
            max_limit: NonZeroUsize::new(max).unwrap(),
            initial_limit: NonZeroUsize::new(initial).unwrap(),
            tolerance,
            smoothing: 0.2,
        }
    }

    /// A backend whose latency climbs once it has more than `knee` requests
    /// in flight: `base` up to the knee, `base * inflight / knee` above it
    /// (queueing), times a deterministic jitter in `1 ± jitter`.
    struct Backend {
        base: u64,
        knee: usize,
        jitter: f64,
        rng: u64,
    }

    impl Backend {
        fn new(base: u64, knee: usize) -> Backend {
            Backend {
                base,
                knee,
                jitter: 0.0,
                rng: 0x9E37_79B9_7F4A_7C15,
            }
        }

        fn latency(&mut self, inflight: usize) -> u64 {
            let queued = self.base as f64 * (inflight as f64 / self.knee as f64).max(1.0);
            self.rng = self
                .rng
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let unit = (self.rng >> 11) as f64 / (1u64 << 53) as f64; // [0, 1)
            (queued * (1.0 - self.jitter + 2.0 * self.jitter * unit)) as u64
        }
    }

    /// A closed loop of `clients` that always keep min(clients, limit)
    /// requests in flight, as a discrete-event simulation in virtual time.
    struct Sim {
        limiter: GradientLimit,
        backend: Backend,
        clients: usize,
        /// (completion time, sequence, rtt, in flight when sent), in ns.
        pending: BinaryHeap<Reverse<(u64, u64, u64, usize)>>,
        now: u64,
        seq: u64,
    }

    impl Sim {
        fn new(limiter: GradientLimit, backend: Backend, clients: usize) -> Sim {
            let mut sim = Sim {
                limiter,
                backend,
                clients,
                pending: BinaryHeap::new(),
                now: 0,
                seq: 0,
            };
            sim.fill();
            sim
        }

        fn fill(&mut self) {
            let cap = self.clients.min(self.limiter.limit());
            while self.pending.len() < cap {
                let inflight = self.pending.len() + 1;
                let rtt = self.backend.latency(inflight);
                self.seq += 1;
                self.pending
                    .push(Reverse((self.now + rtt, self.seq, rtt, inflight)));
            }
        }

        /// Completes `samples` requests; the limit after each.
        fn run(&mut self, samples: usize) -> Vec<usize> {
            (0..samples)
                .map(|_| {
                    let Reverse((done, _, rtt, inflight)) = self.pending.pop().unwrap();
                    self.now = done;
                    let limit = self
                        .limiter
                        .on_sample(Duration::from_nanos(rtt), inflight, false);
                    assert_eq!(limit, self.limiter.limit());
                    self.fill();
                    limit
                })
                .collect()
        }
    }

    /// Mean, min and max of the last `n` limits.
    fn tail(trace: &[usize], n: usize) -> (f64, usize, usize) {
        let tail = &trace[trace.len() - n..];
        let mean = tail.iter().sum::<usize>() as f64 / n as f64;
        (
            mean,
            *tail.iter().min().unwrap(),
            *tail.iter().max().unwrap(),
        )
    }

    fn assert_near(trace: &[usize], knee: usize, what: &str) {
        let (mean, lo, hi) = tail(trace, 1000);
        println!("{what}: K = {knee}: final 1000 samples: mean {mean:.1}, range {lo}..={hi}");
        let (low, high) = (0.7 * knee as f64, 1.3 * knee as f64);
        assert!(
            low <= mean && mean <= high,
            "{what}: mean {mean} not within 30% of {knee}"
        );
        assert!(
            low <= lo as f64 && hi as f64 <= high,
            "{what}: range {lo}..={hi} not within 30% of {knee}"
        );
    }

    fn settle(knee: usize, tolerance: f64, jitter: f64) -> Vec<usize> {
        let mut backend = Backend::new(10 * MS, knee);
        backend.jitter = jitter;
        let mut sim = Sim::new(
            GradientLimit::new(&config(1, 256, 20, tolerance)),
            backend,
            200,
        );
        sim.run(20_000)
    }

    #[test]
    fn settles_near_the_knee() {
        for knee in [20, 50] {
            assert_near(&settle(knee, 1.0, 0.0), knee, "tolerance 1.0");
        }
    }

    #[test]
    fn settles_near_the_knee_despite_jitter() {
        for knee in [20, 50] {
            assert_near(&settle(knee, 1.0, 0.2), knee, "tolerance 1.0, jitter ±20%");
        }
    }

    #[test]
    fn tolerance_admits_proportionally_more_queueing() {
        // Latency may reach `tolerance` times the no-load latency before the
        // limit shrinks, so it settles near tolerance * K plus the sqrt(limit)
        // headroom (1.5 * 20 + 6 and 1.5 * 50 + 9).
        for knee in [20, 50] {
            let (mean, lo, hi) = tail(&settle(knee, 1.5, 0.0), 1000);
            println!(
                "tolerance 1.5: K = {knee}: final 1000 samples: mean {mean:.1}, range {lo}..={hi}"
            );
            let expected = 1.5 * knee as f64;
            assert!(
                expected <= lo as f64 && hi as f64 <= expected + 2.0 * expected.sqrt(),
                "{lo}..={hi}"
            );
            assert!(hi - lo <= 2, "{lo}..={hi}");
        }
    }

    #[test]
    fn grows_back_after_latency_returns_to_base() {
        let mut sim = Sim::new(
            GradientLimit::new(&config(1, 256, 20, 1.0)),
            Backend::new(10 * MS, 20),
            200,
        );
        assert_near(&sim.run(5000), 20, "before");
        // The backend turns five times slower for a while.
        sim.backend.base = 50 * MS;
        let slow = sim.run(300);
        assert!(
            *slow.iter().min().unwrap() <= 14,
            "did not back off: {slow:?}"
        );
        sim.backend.base = 10 * MS;
        assert_near(&sim.run(5000), 20, "after a slowdown");
    }

    #[test]
    fn capacity_changes_are_followed() {
        let mut sim = Sim::new(
            GradientLimit::new(&config(1, 256, 20, 1.0)),
            Backend::new(10 * MS, 50),
            200,
        );
        assert_near(&sim.run(10_000), 50, "start");
        sim.backend.knee = 25;
        assert_near(&sim.run(10_000), 25, "K 50 -> 25");
        sim.backend.knee = 50;
        assert_near(&sim.run(10_000), 50, "K 25 -> 50");
    }

    #[test]
    fn a_backend_slower_at_any_load_is_relearned() {
        // A slowdown that halving the load does not cure is not our queue:
        // the limit first backs off, then returns near the knee.
        let mut sim = Sim::new(
            GradientLimit::new(&config(1, 256, 20, 1.0)),
            Backend::new(10 * MS, 20),
            200,
        );
        sim.run(5000);
        sim.backend.base = 20 * MS;
        let trace = sim.run(5000);
        assert!(*trace.iter().min().unwrap() <= 14);
        assert_near(&trace, 20, "base latency doubled");
        // And back while saturated: the first faster windows still carry
        // queueing; a probe at half the limit finds the real no-load latency.
        sim.backend.base = 10 * MS;
        assert_near(&sim.run(5000), 20, "base latency back");
    }

    #[test]
    fn stays_put_over_a_long_run_with_noisy_latency() {
        // Latencies spread ±50%: the long RTT must neither absorb saturated
        // windows (the limit would creep up) nor ratchet down with the
        // luckiest ones (it would sink).
        for knee in [20, 50] {
            let mut backend = Backend::new(10 * MS, knee);
            backend.jitter = 0.5;
            let mut sim = Sim::new(GradientLimit::new(&config(1, 256, 20, 1.0)), backend, 200);
            sim.run(20_000);
            let (early, _, _) = tail(&sim.run(50_000), 50_000);
            sim.run(200_000);
            let late = sim.run(50_000);
            let (mean, _, _) = tail(&late, 50_000);
            println!(
                "K = {knee}, jitter ±50%: mean {early:.1} early, {mean:.1} 250000 samples later"
            );
            assert!((mean - early).abs() <= 0.05 * early, "{early} -> {mean}");
            assert_near(&late, knee, "jitter ±50%, late");
        }
    }

    /// A limiter that settled at the knee of a K = 40 backend.
    fn settled() -> GradientLimit {
        let mut sim = Sim::new(
            GradientLimit::new(&config(2, 256, 20, 1.0)),
            Backend::new(10 * MS, 40),
            200,
        );
        sim.run(10_000);
        sim.limiter
    }

    #[test]
    fn failures_back_off_once_per_window() {
        let mut limiter = settled();
        let before = limiter.limit();
        let after = limiter.on_sample(Duration::from_secs(30), before, true);
        assert_eq!(
            after,
            (before as f64 * 0.9).round() as usize,
            "from {before}"
        );
        // More failures of the same window do not back off again...
        for _ in 0..after - 2 {
            assert_eq!(
                limiter.on_sample(Duration::from_secs(30), after, true),
                after
            );
        }
        // ...but each further window of them does (about `limit` samples).
        let mut limit = after;
        for _ in 0..1000 {
            let next = limiter.on_sample(Duration::from_secs(30), limit, true);
            assert!(next <= limit);
            limit = next;
        }
        assert_eq!(limit, 2, "failures down to min_limit");
        // Once requests succeed again the limit grows back.
        let mut sim = Sim::new(limiter, Backend::new(10 * MS, 40), 200);
        assert_near(&sim.run(10_000), 40, "after failures");
    }

    #[test]
    fn low_utilisation_samples_do_not_move_the_limit() {
        let mut limiter = settled();
        let limit = limiter.limit();
        for i in 0..10_000 {
            let rtt = [
                Duration::from_secs(60),
                Duration::ZERO,
                Duration::from_millis(10),
            ][i % 3];
            let inflight = i % limit.div_ceil(2);
            assert_eq!(limiter.on_sample(rtt, inflight, i % 7 == 0), limit);
        }
    }

    #[test]
    fn bounds_hold_with_extreme_inputs() {
        let rtts = [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(10),
            Duration::from_secs(3600),
            Duration::from_nanos(u64::MAX),
            Duration::MAX,
        ];
        let inflights = [0, 1, 3, 20, 40, 1000, usize::MAX];
        let configs = [
            config(3, 40, 40, 1.5),
            config(3, 40, 3, 1.0),
            config(7, 7, 7, 2.0),
            config(1, 1, 1, 1.0),
            config(1, 100_000, 50_000, 10.0),
            AdaptiveConfig {
                tolerance: f64::NAN,
                smoothing: f64::NAN,
                ..config(2, 50, 10, 1.5)
            },
            AdaptiveConfig {
                tolerance: f64::INFINITY,
                smoothing: 0.0,
                ..config(2, 50, 10, 1.5)
            },
            AdaptiveConfig {
                tolerance: -1.0,
                smoothing: 5.0,
                ..config(2, 50, 10, 1.5)
            },
        ];
        for config in &configs {
            let (min, max) = (config.min_limit.get(), config.max_limit.get());
            let mut limiter = GradientLimit::new(config);
            let mut state = 1u64;
            for _ in 0..50_000 {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let pick = (state >> 33) as usize;
                let rtt = rtts[pick % rtts.len()];
                let inflight = inflights[(pick / 7) % inflights.len()];
                let limit = limiter.on_sample(rtt, inflight, pick.is_multiple_of(11));
                assert!(
                    min <= limit && limit <= max,
                    "{limit} outside {min}..={max}"
                );
                assert_eq!(limit, limiter.limit());
                for value in [
                    limiter.estimate,
                    limiter.long_rtt,
                    limiter.short_rtt,
                    limiter.peak_rtt,
                    limiter.peak_load,
                ] {
                    assert!(value.is_finite(), "{limiter:?}");
                }
            }
        }
    }
}
