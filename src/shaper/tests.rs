//! The shaper's admission and release, in virtual time.

use super::*;

fn limits(rate: f64, burst: u32, capacity: usize, timeout_ms: u64) -> Limits {
    Limits::fifo(
        Some((rate, NonZeroU32::new(burst).unwrap())),
        capacity,
        Duration::from_millis(timeout_ms),
    )
}

fn shaper(limits: Limits, inflight: usize) -> Shaper {
    Shaper::new(
        limits,
        Arc::new(Semaphore::new(inflight)),
        Arc::new(Gate::new(true)),
    )
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
        match shaper.admit(Arrival::default()) {
            Admission::Go(grant) => fast.push(grant),
            Admission::Queued(ticket) => waiters.push(spawn_waiter(ticket, start, Duration::ZERO)),
            Admission::Rejected(r) => panic!("rejected {r:?}"),
        }
    }
    assert_eq!(fast.len(), 2, "burst of 2 goes on the fast path");
    let mut times = Vec::new();
    for waiter in waiters {
        times.push(waiter.await.unwrap().unwrap());
    }
    // The first spaced release uses the limiter's lateness tolerance
    // (one release interval, at most 20 ms).
    assert_eq!(times, vec![80, 180, 280, 380, 480, 580]);
}

#[tokio::test(start_paused = true)]
async fn queue_full_rejects_at_once_with_honest_retry_after() {
    let shaper = shaper(limits(1.0, 1, 3, 10_000), 10);
    let _first = match shaper.admit(Arrival::default()) {
        Admission::Go(g) => g,
        other => panic!("{other:?}"),
    };
    let _tickets: Vec<Ticket> = (0..3)
        .map(|_| queued(shaper.admit(Arrival::default())))
        .collect();
    match shaper.admit(Arrival::default()) {
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
    let _go = shaper.admit(Arrival::default());
    let tickets: Vec<Ticket> = (0..3)
        .map(|_| queued(shaper.admit(Arrival::default())))
        .collect();
    match shaper.admit(Arrival::default()) {
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
    assert_eq!(times, vec![80, 180, 280]);
}

#[tokio::test(start_paused = true)]
async fn a_wait_that_began_before_admission_counts_against_the_timeout() {
    // The in-flight cap (1) is held, so nobody can be released.
    let shaper = shaper(limits(1000.0, 10, 100, 250), 1);
    let held = match shaper.admit(Arrival::default()) {
        Admission::Go(g) => g,
        other => panic!("{other:?}"),
    };
    let accepted = Instant::now();
    tokio::time::advance(Duration::from_millis(100)).await;
    // Waiting since 100 ms ago: 150 ms left.
    let ticket = queued(shaper.admit_since(Arrival::default(), accepted));
    let result = ticket.wait().await;
    assert_eq!(result.unwrap_err().reason, RejectReason::Timeout);
    assert_eq!(ms_since(accepted), 250);
    // Already past its deadline when admitted: timed out at once, even
    // though the fast path is open again.
    drop(held);
    let late = Instant::now() - Duration::from_millis(300);
    match shaper.admit_since(Arrival::default(), late) {
        Admission::Rejected(r) => assert_eq!(r.reason, RejectReason::Timeout),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_grant_that_reaches_its_waiter_after_the_deadline_is_given_back() {
    let shaper = shaper(limits(1000.0, 10, 100, 250), 1);
    let held = match shaper.admit(Arrival::default()) {
        Admission::Go(g) => g,
        other => panic!("{other:?}"),
    };
    let ticket = queued(shaper.admit(Arrival::default()));
    // The slot frees in time and the waiter is granted, but its task is not
    // polled (a busy worker) until after the deadline.
    drop(held);
    tokio::time::advance(Duration::from_millis(10)).await;
    tokio::task::yield_now().await;
    tokio::time::advance(Duration::from_millis(300)).await;
    let result = ticket.wait().await;
    let rejection = result.expect_err("a late grant is not used");
    assert_eq!(rejection.reason, RejectReason::Timeout);
    assert!(rejection.retry_after >= Duration::from_secs(1));
    // The slot it held was given back.
    assert!(matches!(shaper.admit(Arrival::default()), Admission::Go(_)));
}

#[tokio::test(start_paused = true)]
async fn waiter_is_dropped_exactly_at_its_deadline_and_never_granted() {
    // The in-flight cap (1) is held, so nobody can be released.
    let shaper = shaper(limits(1000.0, 10, 100, 250), 1);
    let held = match shaper.admit(Arrival::default()) {
        Admission::Go(g) => g,
        other => panic!("{other:?}"),
    };
    let start = Instant::now();
    let ticket = queued(shaper.admit(Arrival::default()));
    let result = ticket.wait().await;
    assert_eq!(result.unwrap_err().reason, RejectReason::Timeout);
    assert_eq!(ms_since(start), 250);
    assert_eq!(shaper.depth(), 0);
    drop(held);
    tokio::task::yield_now().await;
    // The slot freed after the deadline goes to nobody: the next request takes the fast path.
    assert!(matches!(shaper.admit(Arrival::default()), Admission::Go(_)));
}

#[tokio::test(start_paused = true)]
async fn cancelled_waiter_is_skipped_and_spends_no_token() {
    let shaper = shaper(limits(10.0, 1, 100, 10_000), 100);
    let _go = shaper.admit(Arrival::default());
    let start = Instant::now();
    let a = queued(shaper.admit(Arrival::default()));
    let b = queued(shaper.admit(Arrival::default()));
    let c = queued(shaper.admit(Arrival::default()));
    drop(b); // the client left
    assert_eq!(shaper.depth(), 2);
    let a = spawn_waiter(a, start, Duration::ZERO);
    let c = spawn_waiter(c, start, Duration::ZERO);
    assert_eq!(a.await.unwrap(), Ok(80));
    // c takes the token b would have had.
    assert_eq!(c.await.unwrap(), Ok(180));
}

#[tokio::test(start_paused = true)]
async fn releases_honour_the_inflight_cap() {
    // Rate is generous; the cap of 2 and a 100 ms service time set the pace.
    let shaper = shaper(limits(1000.0, 1000, 100, 10_000), 2);
    let start = Instant::now();
    let mut waiters = Vec::new();
    let mut fast = 0;
    for _ in 0..6 {
        match shaper.admit(Arrival::default()) {
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
        Limits::fifo(None, 10, Duration::from_secs(1)),
        Arc::new(Semaphore::new(1)),
        Arc::new(Gate::new(true)),
    );
    let first = match shaper.admit(Arrival::default()) {
        Admission::Go(g) => g,
        other => panic!("{other:?}"),
    };
    let start = Instant::now();
    let waiter = spawn_waiter(
        queued(shaper.admit(Arrival::default())),
        start,
        Duration::ZERO,
    );
    tokio::time::sleep(Duration::from_millis(30)).await;
    drop(first);
    assert_eq!(waiter.await.unwrap(), Ok(30));
}

#[tokio::test(start_paused = true)]
async fn close_answers_every_waiter_and_refuses_new_ones() {
    let shaper = shaper(limits(1.0, 1, 10, 5_000), 10);
    let _go = shaper.admit(Arrival::default());
    let start = Instant::now();
    let waiter = spawn_waiter(
        queued(shaper.admit(Arrival::default())),
        start,
        Duration::ZERO,
    );
    tokio::task::yield_now().await;
    shaper.close();
    assert_eq!(waiter.await.unwrap(), Err(RejectReason::Closed));
    match shaper.admit(Arrival::default()) {
        Admission::Rejected(r) => assert_eq!(r.reason, RejectReason::Closed),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn cancellations_in_the_middle_do_not_grow_memory() {
    let shaper = shaper(limits(1.0, 1, 1_000, 60_000), 1);
    let _go = shaper.admit(Arrival::default());
    let _head = queued(shaper.admit(Arrival::default())); // the head never leaves
    for _ in 0..100_000 {
        drop(queued(shaper.admit(Arrival::default())));
    }
    // The slab holds exactly the live waiters.
    assert_eq!(shaper.depth(), 1);
    assert!(shaper.shared.state.lock().queue.len() == 1);
}

#[tokio::test(start_paused = true)]
async fn zero_capacity_rejects_whatever_cannot_go_at_once() {
    let shaper = shaper(limits(1.0, 1, 0, 1_000), 10);
    assert!(matches!(shaper.admit(Arrival::default()), Admission::Go(_)));
    match shaper.admit(Arrival::default()) {
        Admission::Rejected(r) => assert_eq!(r.reason, RejectReason::QueueFull),
        other => panic!("{other:?}"),
    }
}

fn tiered(rate: f64, capacity: usize, timeout_ms: u64, classes: usize) -> Limits {
    Limits {
        classes,
        aging: Duration::from_millis(300),
        ..limits(rate, 1, capacity, timeout_ms)
    }
}

#[tokio::test(start_paused = true)]
async fn higher_classes_are_released_first() {
    let shaper = shaper(tiered(10.0, 100, 10_000, 2), 100);
    let _go = shaper.admit(Arrival::default());
    let start = Instant::now();
    let low = queued(shaper.admit(Arrival { class: 1, key: 0 }));
    let high = queued(shaper.admit(Arrival { class: 0, key: 0 }));
    let low = spawn_waiter(low, start, Duration::ZERO);
    let high = spawn_waiter(high, start, Duration::ZERO);
    assert_eq!(high.await.unwrap(), Ok(80));
    assert_eq!(low.await.unwrap(), Ok(180));
}

#[tokio::test(start_paused = true)]
async fn aging_keeps_a_low_class_from_starving() {
    // A steady stream of high-class requests at exactly the release rate
    // would hold a low-class waiter back for ever without aging.
    let limits = Limits {
        aging: Duration::from_millis(250),
        ..tiered(10.0, 100, 10_000, 2)
    };
    let shaper = Arc::new(shaper(limits, 100));
    let _go = shaper.admit(Arrival::default());
    let start = Instant::now();
    let low = spawn_waiter(
        queued(shaper.admit(Arrival { class: 1, key: 0 })),
        start,
        Duration::ZERO,
    );
    let feeder = {
        let shaper = shaper.clone();
        tokio::spawn(async move {
            let mut highs = Vec::new();
            for _ in 0..20 {
                if let Admission::Queued(t) = shaper.admit(Arrival { class: 0, key: 0 }) {
                    highs.push(spawn_waiter(t, start, Duration::ZERO));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            highs
        })
    };
    // Aged by 250 ms the low waiter ranks with the high class and, being
    // older, goes at the first release after that (80, 180, 280, ...).
    assert_eq!(low.await.unwrap(), Ok(280));
    for high in feeder.await.unwrap() {
        assert!(high.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn keys_are_released_in_turn() {
    let shaper = shaper(
        Limits {
            per_key: true,
            ..limits(10.0, 1, 100, 10_000)
        },
        100,
    );
    let _go = shaper.admit(Arrival::default());
    let start = Instant::now();
    let heavy: Vec<_> = (0..4)
        .map(|_| {
            spawn_waiter(
                queued(shaper.admit(Arrival { class: 0, key: 1 })),
                start,
                Duration::ZERO,
            )
        })
        .collect();
    let light = spawn_waiter(
        queued(shaper.admit(Arrival { class: 0, key: 2 })),
        start,
        Duration::ZERO,
    );
    assert_eq!(light.await.unwrap(), Ok(180), "second turn, not fifth");
    let mut times = Vec::new();
    for h in heavy {
        times.push(h.await.unwrap().unwrap());
    }
    assert_eq!(times, vec![80, 280, 380, 480]);
}

#[tokio::test(start_paused = true)]
async fn adaptive_lifo_serves_the_newest_once_the_oldest_waited_too_long() {
    let shaper = shaper(
        Limits {
            lifo_after: Some(Duration::from_millis(150)),
            ..limits(10.0, 1, 100, 10_000)
        },
        100,
    );
    let _go = shaper.admit(Arrival::default());
    let start = Instant::now();
    let old: Vec<_> = (0..3)
        .map(|_| {
            spawn_waiter(
                queued(shaper.admit(Arrival::default())),
                start,
                Duration::ZERO,
            )
        })
        .collect();
    // First release at 100 ms: the oldest has waited 100 ms, FIFO still.
    tokio::time::sleep(Duration::from_millis(120)).await;
    let new = spawn_waiter(
        queued(shaper.admit(Arrival::default())),
        start,
        Duration::ZERO,
    );
    // At 200 ms the oldest has waited 200 ms > 150 ms: newest first.
    assert_eq!(new.await.unwrap(), Ok(180));
    let mut times = Vec::new();
    for o in old {
        times.push(o.await.unwrap().unwrap());
    }
    assert_eq!(times, vec![80, 380, 280]);
}

#[tokio::test(start_paused = true)]
async fn a_displaced_waiter_is_answered_at_once() {
    let shaper = shaper(tiered(1.0, 2, 10_000, 2), 100);
    let _go = shaper.admit(Arrival::default());
    let start = Instant::now();
    let low_a = spawn_waiter(
        queued(shaper.admit(Arrival { class: 1, key: 0 })),
        start,
        Duration::ZERO,
    );
    let low_b = spawn_waiter(
        queued(shaper.admit(Arrival { class: 1, key: 0 })),
        start,
        Duration::ZERO,
    );
    let high = queued(shaper.admit(Arrival { class: 0, key: 0 }));
    assert_eq!(low_b.await.unwrap(), Err(RejectReason::Displaced));
    assert_eq!(ms_since(start), 0);
    assert_eq!(
        spawn_waiter(high, start, Duration::ZERO).await.unwrap(),
        Ok(980)
    );
    assert_eq!(low_a.await.unwrap(), Ok(1980));
    // A full queue of equals rejects the newcomer instead.
    let _c = queued(shaper.admit(Arrival { class: 1, key: 0 }));
    let _d = queued(shaper.admit(Arrival { class: 1, key: 0 }));
    match shaper.admit(Arrival { class: 1, key: 0 }) {
        Admission::Rejected(r) => assert_eq!(r.reason, RejectReason::QueueFull),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn a_new_rate_applies_to_requests_already_queued() {
    let shaper = shaper(limits(1.0, 1, 100, 60_000), 100);
    let _go = shaper.admit(Arrival::default());
    let start = Instant::now();
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            spawn_waiter(
                queued(shaper.admit(Arrival::default())),
                start,
                Duration::ZERO,
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // From 1/s to 10/s: the releaser, asleep until t = 1 s, wakes now.
    shaper.update(limits(10.0, 1, 100, 60_000));
    let mut times = Vec::new();
    for w in waiters {
        times.push(w.await.unwrap().unwrap());
    }
    assert_eq!(times, vec![10, 90, 190, 290]);
}

#[tokio::test(start_paused = true)]
async fn a_paused_route_queues_times_out_and_resumes_at_its_rate() {
    let shaper = shaper(limits(10.0, 1, 100, 1_000), 100);
    shaper.set_paused(true);
    let start = Instant::now();
    // Paused: even the first request queues.
    let early = spawn_waiter(
        queued(shaper.admit(Arrival::default())),
        start,
        Duration::ZERO,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let late: Vec<_> = (0..3)
        .map(|_| {
            spawn_waiter(
                queued(shaper.admit(Arrival::default())),
                start,
                Duration::ZERO,
            )
        })
        .collect();
    // The early one's deadline passes while paused.
    assert_eq!(early.await.unwrap(), Err(RejectReason::Timeout));
    assert_eq!(ms_since(start), 1_000);
    shaper.set_paused(false);
    let mut times = Vec::new();
    for w in late {
        times.push(w.await.unwrap().unwrap());
    }
    assert_eq!(times, vec![1_000, 1_080, 1_180]);
}

#[tokio::test(start_paused = true)]
async fn a_shut_gate_holds_requests_until_it_opens_or_they_expire() {
    let gate = Arc::new(Gate::new(false));
    let shaper = Shaper::new(
        limits(100.0, 10, 100, 500),
        Arc::new(Semaphore::new(10)),
        gate.clone(),
    );
    let start = Instant::now();
    // Shut: even the first request queues.
    let first = spawn_waiter(
        queued(shaper.admit(Arrival::default())),
        start,
        Duration::ZERO,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.set(true);
    assert_eq!(first.await.unwrap(), Ok(100));
    gate.set(false);
    let second = spawn_waiter(
        queued(shaper.admit(Arrival::default())),
        start,
        Duration::ZERO,
    );
    assert_eq!(second.await.unwrap(), Err(RejectReason::Timeout));
    assert_eq!(ms_since(start), 600);
}
