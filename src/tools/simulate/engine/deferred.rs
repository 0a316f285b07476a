//! An async route (`[routes.async]`) in the replay: accept now, deliver later.
//!
//! An arrival that passes the route's checks is accepted (the proxy's `202`)
//! while fewer than `capacity` requests are held (queued or in flight), else
//! refused (`503`, outcome `rejected_queue_full`). Accepted requests wait in
//! a backlog, oldest first. As in the proxy's delivery, [`PACERS`] pacer
//! tasks each ask the route's real [`Shaper`] for leave (a token of the
//! route's rate and one of the upstream's in-flight slots), then send the
//! oldest request, which holds its grant for its service time. A request
//! still queued `deliver_within` after it was accepted expires: dropped and
//! counted, never sent — checked right before each send and by a timer at
//! the oldest request's deadline.
//!
//! The backend model never fails, so there are no retries or dead letters
//! here. Invariant: a request is sent only with a grant and never after its
//! deadline; each accepted request ends exactly once (delivered or expired).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::config::AsyncConfig;
use crate::shaper::Shaper;

use super::stats::Recorder;
use super::{LiveGuard, serve};

/// Pacer tasks per route, each waiting on the route's shaper for its next
/// grant (as many as the proxy's delivery runs).
pub(super) const PACERS: usize = 4;

/// One accepted request, held until it is delivered or expires.
struct Held {
    /// Nanoseconds after the origin.
    accepted_at: u64,
    service: u64,
    /// Keeps the replay running until the request has ended.
    _live: LiveGuard,
}

/// What an async route holds: its backlog and how many are in flight.
struct Backlog {
    queued: VecDeque<Held>,
    in_flight: usize,
}

impl Backlog {
    fn held(&self) -> usize {
        self.queued.len() + self.in_flight
    }
}

/// An async route's accept side and its delivery's shared state.
pub(super) struct Deferred {
    index: usize,
    capacity: usize,
    deliver_within: u64,
    backlog: Mutex<Backlog>,
    /// One permit per queued request a pacer has not claimed yet.
    ready: Semaphore,
    /// Wakes the expiry timer when the backlog stops being empty.
    filled: Notify,
    origin: Instant,
    recorder: Arc<Mutex<Recorder>>,
}

/// The pieces a delivery needs from the route and its upstream.
pub(super) struct Wiring {
    pub shaper: Arc<Shaper>,
    /// The backend model's concurrency, if limited.
    pub backend: Option<Arc<Semaphore>>,
}

impl Deferred {
    /// Route `index`'s async side; starts its pacers and expiry timer.
    pub(super) fn start(
        index: usize,
        config: &AsyncConfig,
        wiring: Wiring,
        origin: Instant,
        recorder: Arc<Mutex<Recorder>>,
    ) -> Arc<Deferred> {
        let deferred = Arc::new(Deferred {
            index,
            capacity: config.capacity.get(),
            deliver_within: config.deliver_within.as_nanos() as u64,
            backlog: Mutex::new(Backlog {
                queued: VecDeque::new(),
                in_flight: 0,
            }),
            ready: Semaphore::new(0),
            filled: Notify::new(),
            origin,
            recorder,
        });
        let wiring = Arc::new(wiring);
        for _ in 0..PACERS {
            tokio::spawn(pacer(deferred.clone(), wiring.clone()));
        }
        tokio::spawn(expiry(deferred.clone()));
        deferred
    }

    /// An arrival at `at` that passed the route's checks: accepted (true)
    /// or refused for capacity (false); recorded either way.
    pub(super) fn accept(&self, at: u64, service: u64, live: LiveGuard) -> bool {
        let mut backlog = self.backlog.lock();
        let mut recorder = self.recorder.lock();
        if backlog.held() >= self.capacity {
            recorder.refused(self.index, at, crate::shaper::RejectReason::QueueFull);
            return false;
        }
        let was_empty = backlog.queued.is_empty();
        backlog.queued.push_back(Held {
            accepted_at: at,
            service,
            _live: live,
        });
        recorder.accepted(self.index, at, backlog.held());
        drop(recorder);
        drop(backlog);
        self.ready.add_permits(1);
        if was_empty {
            self.filled.notify_one();
        }
        true
    }

    fn now(&self) -> u64 {
        (Instant::now() - self.origin).as_nanos() as u64
    }

    /// Expires the queued requests past their deadline at `now`.
    fn expire_due(&self, now: u64) {
        let mut backlog = self.backlog.lock();
        let mut expired = 0;
        while backlog
            .queued
            .front()
            .is_some_and(|h| h.accepted_at + self.deliver_within <= now)
        {
            backlog.queued.pop_front();
            expired += 1;
        }
        if expired == 0 {
            return;
        }
        let held = backlog.held();
        self.recorder.lock().expired(self.index, now, expired, held);
        drop(backlog);
        for _ in 0..expired {
            // A pacer already holding this one's permit finds nothing to send.
            if let Ok(permit) = self.ready.try_acquire() {
                permit.forget();
            }
        }
    }

    /// The oldest queued request, now in flight.
    fn take(&self) -> Option<Held> {
        let mut backlog = self.backlog.lock();
        let held = backlog.queued.pop_front()?;
        backlog.in_flight += 1;
        Some(held)
    }

    /// A delivery ended at `now`.
    fn finished(&self, now: u64) {
        let mut backlog = self.backlog.lock();
        backlog.in_flight -= 1;
        let held = backlog.held();
        self.recorder.lock().delivery_ended(self.index, now, held);
    }
}

/// One pacer: waits for a queued request, then for leave, then sends the
/// oldest request not expired (a grant with nothing left to send is
/// returned unused, as in the proxy).
async fn pacer(deferred: Arc<Deferred>, wiring: Arc<Wiring>) {
    loop {
        // (Never closed.)
        let Ok(permit) = deferred.ready.acquire().await else {
            return;
        };
        permit.forget();
        let grant = wiring.shaper.pace().await;
        let now = deferred.now();
        deferred.expire_due(now);
        let Some(held) = deferred.take() else {
            continue;
        };
        deferred
            .recorder
            .lock()
            .delivered(deferred.index, now, now - held.accepted_at);
        let (deferred, backend) = (deferred.clone(), wiring.backend.clone());
        tokio::spawn(async move {
            let permit = grant.into_permit();
            serve(backend, held.service).await;
            drop(permit);
            deferred.finished(deferred.now());
            drop(held);
        });
    }
}

/// Expires the oldest queued request at its deadline, even while no pacer
/// gets leave (a rate far below the arrivals, or a busy upstream).
async fn expiry(deferred: Arc<Deferred>) {
    loop {
        let front = deferred
            .backlog
            .lock()
            .queued
            .front()
            .map(|h| h.accepted_at + deferred.deliver_within);
        match front {
            None => deferred.filled.notified().await,
            Some(deadline) => {
                tokio::time::sleep_until(deferred.origin + Duration::from_nanos(deadline)).await;
                deferred.expire_due(deferred.now());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use crate::Config;
    use crate::tools::simulate::{AsyncReport, BackendModel, Report, Trace, TraceFormat, simulate};

    /// One upstream (`max_inflight` as given) and an async route `orders`
    /// at `rate`/s, burst 1, with the given capacity and `deliver_within`.
    fn config(max_inflight: usize, rate: u32, capacity: usize, deliver_within: &str) -> Config {
        let text = format!(
            "[storage]\ndir = \"/nonexistent\"\n\
             [upstreams.api]\ntargets = [\"127.0.0.1:9\"]\nmax_inflight = {max_inflight}\n\
             [[routes]]\nname = \"orders\"\npath_prefix = \"/\"\nupstream = \"api\"\n\
             limit = {{ rate = {rate}, burst = 1 }}\n\
             [routes.async]\ncapacity = {capacity}\ndeliver_within = \"{deliver_within}\"\n"
        );
        Config::parse(&text, Path::new("async-test.toml")).expect("valid config")
    }

    /// `n` requests at t = 0.
    fn burst(n: usize) -> Trace {
        let text: String = (0..n).map(|_| "0,/order\n").collect();
        Trace::parse(text.as_bytes(), "burst.csv", TraceFormat::Csv, false).expect("trace")
    }

    fn replay(config: &Config, trace: &Trace, service: Duration) -> (Report, AsyncReport) {
        let report = simulate(config, trace, &BackendModel::fixed(service)).expect("replays");
        let route = report.route("orders").expect("the route").clone();
        (report, route.deferred.expect("an async route"))
    }

    // At 10/s the route's limiter tolerates a release 20 ms late (see
    // `shaper::limiter::lateness_tolerance`), so after the first at 0 the
    // next goes at 80 ms, then one every 100 ms: the k-th (k >= 1) at
    // 0.08 + 0.1 (k - 1) s — as the proxy's delivery would send them.

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() < 1e-6
    }

    #[test]
    fn a_burst_is_accepted_up_to_capacity_then_drained_at_the_rate_and_the_rest_expires() {
        // 80 at once, room for 50: 50 accepted, 30 refused. At 10/s the
        // deliveries go at 0, 0.08, 0.18, ..., 2.88 s (30 of them); the 20
        // still queued at 2.95 s expire then.
        let config = config(64, 10, 50, "2950ms");
        let (report, a) = replay(&config, &burst(80), Duration::from_millis(1));
        let route = report.route("orders").unwrap();
        assert_eq!(route.offered, 80);
        assert_eq!(route.outcomes.accepted, 50);
        assert_eq!(route.outcomes.rejected_queue_full, 30);
        assert_eq!(route.outcomes.total(), 80);
        assert_eq!(route.released, 30);
        assert_eq!(
            (a.accepted, a.refused, a.delivered, a.expired),
            (50, 30, 30, 20)
        );
        assert_eq!(a.peak_backlog, 50);
        assert!(close(a.peak_at_seconds, 0.0), "{a:?}");
        assert!(close(a.drained_at_seconds, 2.95), "{a:?}");
        assert!(close(a.delivery_delay.max, 2.88), "{a:?}");
        // The series: 50 accepted in the first bucket, then 30 deliveries
        // and 20 expiries.
        let s = &route.series;
        assert_eq!(s.accepted.iter().sum::<u32>(), 50);
        assert_eq!(s.accepted[0], 50);
        assert_eq!(s.released.iter().sum::<u32>(), 30);
        assert_eq!(s.dropped.iter().sum::<u32>(), 20);
        assert_eq!(s.rejected.iter().sum::<u32>(), 30);
        assert_eq!(s.queue_depth.iter().copied().max(), Some(50));
        let text = report.to_text();
        assert!(
            text.contains("orders (async): 50 accepted (202), 30 refused (503, capacity 50), 30 delivered, 20 expired"),
            "{text}"
        );
    }

    #[test]
    fn a_backlog_within_deliver_within_is_all_delivered_oldest_first_at_the_rate() {
        // 20 at once at 10/s: sent at 0, 0.08, ..., 1.88 s, the last
        // answered 1 ms later; the delay's median is the 10th, 0.88 s.
        let config = config(64, 10, 100, "10m");
        let (report, a) = replay(&config, &burst(20), Duration::from_millis(1));
        assert_eq!(
            (a.accepted, a.refused, a.delivered, a.expired),
            (20, 0, 20, 0)
        );
        assert_eq!(a.peak_backlog, 20);
        assert!(close(a.drained_at_seconds, 1.881), "{a:?}");
        assert!(close(a.drain_seconds, 1.881), "{a:?}");
        assert!(close(a.delivery_delay.p50, 0.88), "{a:?}");
        assert!(close(a.delivery_delay.max, 1.88), "{a:?}");
        assert!(close(report.virtual_seconds, 1.881), "{report:?}");
    }

    #[test]
    fn delivery_stays_within_the_upstreams_inflight_cap() {
        // 10 at once at 100/s, but 2 in flight at most and 1 s each: two
        // at 0 s, two at 1 s, ..., two at 4 s; empty at 5 s.
        let config = config(2, 100, 100, "10m");
        let (_, a) = replay(&config, &burst(10), Duration::from_secs(1));
        assert_eq!((a.delivered, a.expired), (10, 0));
        assert!(close(a.drained_at_seconds, 5.0), "{a:?}");
        assert!(close(a.delivery_delay.max, 4.0), "{a:?}");
        assert!(close(a.delivery_delay.p50, 2.0), "{a:?}");
    }
}
