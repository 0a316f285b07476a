//! The global route limit's store against a real Redis: the GCRA script's
//! arithmetic (burst, rate, partial grants, rate change), one state shared
//! by several instances, Redis's clock, key expiry, the NOSCRIPT fallback,
//! and the link's failures (refused, black hole, restart) within its timeout.
//!
//! Deterministic: each assertion follows from the script's arithmetic, with
//! intervals of 100 ms to 1 s against call round trips of well under a
//! millisecond; where time passes between calls, it is measured (on Redis's
//! clock where that is the one that counts) and enters the expected value.
//!
//! Needs `redis-server` (Debian package `redis-server`); `.ci/test` installs
//! it and starts the shared server (`SLUICE_TEST_REDIS_URL`).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::redis::{RedisServer, shared_url, unique_prefix};
use crate::common::samples;
use sluice::metrics::Metrics;
use sluice::shaper::{GcraParams, StoreError, Taken, TokenStore};
use sluice::store::{RedisFamilies, RedisLink, RedisRouteMetrics, RedisStore, validate_url};

/// Timeout of the links that should answer: far above any local round trip.
const TIMEOUT: Duration = Duration::from_secs(2);

/// What the script adds to a key's life past the point its TAT falls behind
/// the clock (`EXPIRY_MARGIN_MS` in src/gcra.lua).
const EXPIRY_MARGIN_MS: i64 = 1000;

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// GCRA parameters for `rate` per second and `burst`, no lateness slack.
fn params(rate: f64, burst: u32) -> GcraParams {
    let interval = Duration::from_secs_f64(1.0 / rate);
    GcraParams {
        interval,
        tolerance: interval * (burst - 1),
        horizon: Duration::ZERO,
    }
}

/// A link to `url` and one route's store on it, with the route's metrics.
struct Route {
    store: RedisStore,
    metrics: Metrics,
    name: String,
}

impl Route {
    fn on(link: Arc<RedisLink>, prefix: &str) -> Route {
        let metrics = Metrics::new().unwrap();
        let name = "api".to_string();
        let families = RedisFamilies::register(metrics.registry()).unwrap();
        let handles = RedisRouteMetrics::new(&families, &name);
        Route {
            store: RedisStore::new(link, prefix, &name, handles),
            metrics,
            name,
        }
    }

    fn new(url: &str, test: &str) -> Route {
        let link = Arc::new(RedisLink::new(url, TIMEOUT).unwrap());
        Route::on(link, &unique_prefix(test))
    }

    async fn take(&self, want: u32, params: GcraParams) -> Result<Taken, StoreError> {
        self.store.take(nz(want), params).await
    }

    /// `sluice_redis_calls_total` for this route and `result`.
    fn calls(&self, result: &str) -> f64 {
        self.sample("sluice_redis_calls_total", Some(result))
    }

    fn tokens(&self) -> f64 {
        self.sample("sluice_redis_tokens_total", None)
    }

    fn sample(&self, name: &str, result: Option<&str>) -> f64 {
        let route = format!("route=\"{}\"", self.name);
        let result = result.map(|r| format!("result=\"{r}\""));
        samples(&self.metrics.render(), name)
            .into_iter()
            .find(|(labels, _)| {
                let labels: Vec<&str> = labels.split(',').collect();
                labels.contains(&route.as_str())
                    && result.as_ref().is_none_or(|r| labels.contains(&r.as_str()))
            })
            .map_or(0.0, |(_, value)| value)
    }
}

/// A plain connection, to look at Redis as an operator would.
async fn plain(url: &str) -> ::redis::aio::MultiplexedConnection {
    ::redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Redis's clock (`TIME`), in microseconds.
async fn server_time_us(conn: &mut ::redis::aio::MultiplexedConnection) -> i64 {
    let (secs, micros): (i64, i64) = ::redis::cmd("TIME").query_async(conn).await.unwrap();
    secs * 1_000_000 + micros
}

/// The TAT stored for the route, in microseconds of Redis time.
async fn stored_tat(conn: &mut ::redis::aio::MultiplexedConnection, key: &str) -> f64 {
    let tat: String = ::redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap();
    tat.parse().unwrap()
}

async fn set_tat(conn: &mut ::redis::aio::MultiplexedConnection, key: &str, tat: i64) {
    let () = ::redis::cmd("SET")
        .arg(key)
        .arg(tat)
        .query_async(conn)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_idle_route_grants_its_burst_then_one_token_per_interval() {
    let route = Route::new(&shared_url(), "burst");
    // 1/s, burst 5: five at once, and the sixth is due one interval later,
    // measured at the same instant in the same script: exactly 1 s.
    let taken = route.take(10, params(1.0, 5)).await.unwrap();
    assert_eq!(
        taken,
        Taken {
            granted: 5,
            next_in: Duration::from_secs(1),
            ready: 5,
            later_in: Duration::ZERO,
        }
    );
    assert_eq!(route.calls("ok"), 1.0);
    assert_eq!(route.tokens(), 5.0);
}

#[tokio::test]
async fn a_spent_burst_grants_nothing_until_the_next_token_is_due() {
    let route = Route::new(&shared_url(), "rate");
    // Redis's time between the two scripts is within the local time from
    // sending the first call to the second's reply.
    let sent = Instant::now();
    let first = route.take(5, params(1.0, 5)).await.unwrap();
    let second = route.take(1, params(1.0, 5)).await.unwrap();
    let elapsed = sent.elapsed();
    assert_eq!(first.granted, 5);
    assert_eq!(second.granted, 0);
    // Due 1 s after the first call's instant; the second saw a later one,
    // by less than the time between the two replies.
    assert!(second.next_in <= Duration::from_secs(1), "{second:?}");
    assert!(
        second.next_in + elapsed + Duration::from_micros(1) >= Duration::from_secs(1),
        "{second:?} after {elapsed:?}"
    );
    assert_eq!(route.tokens(), 5.0);
    assert_eq!(route.calls("ok"), 2.0);
}

#[tokio::test]
async fn a_request_for_more_than_conforms_gets_what_conforms() {
    let route = Route::new(&shared_url(), "partial");
    // 10/s, burst 3: two of three, then one more conforms at once...
    let rate = params(10.0, 3);
    let first = route.take(2, rate).await.unwrap();
    assert_eq!(
        first,
        Taken {
            granted: 2,
            next_in: Duration::ZERO,
            ready: 2,
            later_in: Duration::ZERO,
        }
    );
    // ...so asking five gets one, and the next is about 100 ms away.
    let second = route.take(5, rate).await.unwrap();
    assert_eq!(second.granted, 1);
    assert!(second.next_in <= Duration::from_millis(100), "{second:?}");
    assert!(second.next_in >= Duration::from_millis(50), "{second:?}");

    // From a TAT set 2.5 s ahead of Redis's clock, at 1/s with burst 5
    // (tolerance 4 s): the room is 1.5 s, so two tokens conform (any call
    // delay under half a second leaves that count alone).
    let mut conn = plain(&shared_url()).await;
    let now = server_time_us(&mut conn).await;
    set_tat(&mut conn, route.store.key(), now + 2_500_000).await;
    let third = route.take(10, params(1.0, 5)).await.unwrap();
    assert_eq!(third.granted, 2);
    // TAT now + 4.5 s: the next is due 0.5 s after `now`, less the delay.
    assert!(third.next_in <= Duration::from_millis(500), "{third:?}");
    assert!(third.next_in >= Duration::from_millis(400), "{third:?}");
}

#[tokio::test]
async fn two_instances_share_one_state_and_never_exceed_the_rate_together() {
    let url = shared_url();
    let prefix = unique_prefix("fleet");
    // Two instances: each its own link (connection) and metrics.
    let a = Route::on(Arc::new(RedisLink::new(&url, TIMEOUT).unwrap()), &prefix);
    let b = Route::on(Arc::new(RedisLink::new(&url, TIMEOUT).unwrap()), &prefix);
    assert_eq!(a.store.key(), b.store.key());

    // One state: what A spends, B cannot have.
    let rate = params(20.0, 5);
    assert_eq!(a.take(5, rate).await.unwrap().granted, 5);
    let refused = b.take(1, rate).await.unwrap();
    assert_eq!(refused.granted, 0);
    assert!(refused.next_in > Duration::ZERO);

    // Both take as fast as they are allowed, for 600 ms of Redis time, the
    // way the shaper does: ask, and when refused, wait what Redis says.
    let mut conn = plain(&url).await;
    let started = server_time_us(&mut conn).await;
    let tat_before = stored_tat(&mut conn, a.store.key()).await;
    let run = |route: Route| async move {
        let mut granted = 0u64;
        let until = Instant::now() + Duration::from_millis(600);
        while Instant::now() < until {
            let taken = route.take(2, rate).await.unwrap();
            granted += u64::from(taken.granted);
            if taken.granted == 0 {
                tokio::time::sleep(taken.next_in).await;
            }
        }
        granted
    };
    let (from_a, from_b) = tokio::join!(tokio::spawn(run(a)), tokio::spawn(run(b)));
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    let ended = server_time_us(&mut conn).await;

    // GCRA's bound: from a TAT of `tat_before`, n more tokens need
    // tat_before + (n - 1) * interval - tolerance <= the last call's now.
    let interval_us = 50_000.0;
    let tolerance_us = 4.0 * interval_us;
    // (Plus the script's 1 us of slack; a TAT behind the clock restarts
    // from the clock, which only lowers the count.)
    let slack_us = 1.0;
    let allowed = ((ended as f64 + slack_us + tolerance_us - tat_before.max(started as f64))
        / interval_us)
        .floor()
        + 1.0;
    let total = (from_a + from_b) as f64;
    assert!(
        total <= allowed,
        "A {from_a} + B {from_b} > {allowed} allowed in {} us",
        ended - started
    );
    // And the rate is really given out: 600 ms at 20/s is about 12 tokens
    // (the burst was spent before); a quarter of that shows refill works.
    assert!(total >= 3.0, "A {from_a} + B {from_b}");
    // The single TAT moved on by exactly what both were granted.
    let tat_after = stored_tat(&mut conn, &format!("{prefix}:route:api")).await;
    assert!(tat_after >= tat_before + total * interval_us - 1.0);
}

#[tokio::test]
async fn the_tat_is_kept_on_redis_time_not_the_callers() {
    let url = shared_url();
    let route = Route::new(&url, "clock");
    let mut conn = plain(&url).await;
    let before = server_time_us(&mut conn).await;
    // 1/s, burst 1 (tolerance 0): the TAT becomes the script's `now` + 1 s.
    let taken = route.take(1, params(1.0, 1)).await.unwrap();
    let after = server_time_us(&mut conn).await;
    assert_eq!(taken.granted, 1);
    let tat = stored_tat(&mut conn, route.store.key()).await;
    let script_now = tat - 1_000_000.0;
    assert!(
        script_now >= before as f64 && script_now <= after as f64,
        "the script's now {script_now} is outside Redis's [{before}, {after}]"
    );
    // Nothing of the caller's clock went in: the call's arguments are
    // durations only, so a TAT written by an instance whose clock is an hour
    // off means the same. A TAT 2 s ahead of Redis's clock, whoever set it:
    set_tat(&mut conn, route.store.key(), after + 2_000_000).await;
    let blocked = route.take(1, params(1.0, 1)).await.unwrap();
    assert_eq!(blocked.granted, 0);
    assert!(blocked.next_in <= Duration::from_secs(2), "{blocked:?}");
    assert!(
        blocked.next_in >= Duration::from_millis(1900),
        "{blocked:?}"
    );
}

#[tokio::test]
async fn a_key_lives_just_past_its_tat() {
    let url = shared_url();
    let route = Route::new(&url, "expiry");
    let mut conn = plain(&url).await;
    // 1/s, burst 5, all five: the TAT is 5 s ahead, so the key means
    // something for 5 s and lives for 5 s plus the margin.
    let started = Instant::now();
    route.take(5, params(1.0, 5)).await.unwrap();
    let pttl: i64 = ::redis::cmd("PTTL")
        .arg(route.store.key())
        .query_async(&mut conn)
        .await
        .unwrap();
    let horizon = 5_000 + EXPIRY_MARGIN_MS;
    let since = i64::try_from(started.elapsed().as_millis()).unwrap();
    assert!(pttl <= horizon, "PTTL {pttl} ms > {horizon} ms");
    assert!(
        pttl >= horizon - since - 1,
        "PTTL {pttl} ms after {since} ms"
    );

    // A refused call writes nothing: the expiry stays where it was.
    let refused = route.take(1, params(1.0, 5)).await.unwrap();
    assert_eq!(refused.granted, 0);
    let pttl_after: i64 = ::redis::cmd("PTTL")
        .arg(route.store.key())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl_after <= pttl);
}

#[tokio::test]
async fn the_script_is_sent_again_after_script_flush() {
    let url = shared_url();
    let route = Route::new(&url, "noscript");
    let mut conn = plain(&url).await;
    let sha = ::redis::Script::new(include_str!("../../src/gcra.lua"))
        .get_hash()
        .to_string();
    assert_eq!(route.take(1, params(10.0, 5)).await.unwrap().granted, 1);
    // Another test may flush too; the point is only that a flushed cache
    // costs one NOSCRIPT and an EVAL, never a failed call.
    let () = ::redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    let taken = route.take(1, params(10.0, 5)).await.unwrap();
    assert_eq!(taken.granted, 1);
    let exists: Vec<i64> = ::redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, vec![1]);
    assert_eq!(route.calls("ok"), 2.0);
    assert_eq!(route.calls("error"), 0.0);
}

#[tokio::test]
async fn a_new_rate_applies_to_the_stored_tat_at_once() {
    let route = Route::new(&shared_url(), "rate-change");
    // 1/s, burst 1: one token, TAT = t + 1 s, nothing more for a second.
    let sent = Instant::now();
    let slow = route.take(1, params(1.0, 1)).await.unwrap();
    assert_eq!(
        slow,
        Taken {
            granted: 1,
            next_in: Duration::from_secs(1),
            ready: 1,
            later_in: Duration::ZERO,
        }
    );
    // Reloaded at 10/s, burst 20 (tolerance 1.9 s): from the same TAT the
    // room is 0.9 s plus the delay d, so 10 tokens conform now (d < 100 ms)...
    let fast = route.take(50, params(10.0, 20)).await.unwrap();
    let d = sent.elapsed();
    assert_eq!(fast.granted, 10);
    // ...and the TAT, now t + 2 s, makes the next due 100 ms - d after.
    assert!(fast.next_in <= Duration::from_millis(100), "{fast:?}");
    assert!(
        fast.next_in + d + Duration::from_micros(1) >= Duration::from_millis(100),
        "{fast:?} after {d:?}"
    );
}

#[tokio::test]
async fn a_refused_connection_is_an_error_at_once() {
    let dead = crate::common::dead_addr().await;
    let timeout = Duration::from_millis(500);
    let link = Arc::new(RedisLink::new(&format!("redis://{dead}"), timeout).unwrap());
    let route = Route::on(link, &unique_prefix("refused"));
    for _ in 0..2 {
        let started = Instant::now();
        let err = route.take(1, params(10.0, 5)).await.unwrap_err();
        let took = started.elapsed();
        assert!(took < timeout, "refused after {took:?}");
        assert!(err.0.contains(&dead.to_string()), "{err}");
    }
    assert_eq!(route.calls("error"), 2.0);
    assert_eq!(route.calls("timeout"), 0.0);
    assert_eq!(route.calls("ok"), 0.0);
}

#[tokio::test]
async fn a_black_hole_times_out_within_the_timeout() {
    // Accepts connections and never says a word.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hole.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = hole.accept().await {
            sockets.push(socket);
        }
    });
    let timeout = Duration::from_millis(300);
    let link = Arc::new(RedisLink::new(&format!("redis://{addr}"), timeout).unwrap());
    let route = Route::on(link, &unique_prefix("black-hole"));
    for _ in 0..2 {
        let started = Instant::now();
        let err = route.take(1, params(10.0, 5)).await.unwrap_err();
        let took = started.elapsed();
        assert!(took >= timeout, "gave up after {took:?}");
        assert!(took < timeout + Duration::from_millis(250), "took {took:?}");
        assert!(err.0.contains(&addr.to_string()), "{err}");
    }
    assert_eq!(route.calls("timeout"), 2.0);
    assert_eq!(route.calls("error"), 0.0);
    held.abort();
}

#[tokio::test]
async fn the_link_reconnects_after_redis_comes_back() {
    let mut server = RedisServer::start();
    let route = Route::new(&server.url(), "restart");
    let rate = params(10.0, 5);
    assert_eq!(route.take(1, rate).await.unwrap().granted, 1);

    server.stop();
    // The cached connection is gone with the server; then nothing listens.
    for _ in 0..2 {
        let started = Instant::now();
        let err = route.take(1, rate).await.unwrap_err();
        assert!(started.elapsed() < TIMEOUT, "{err}");
    }
    assert_eq!(route.calls("error"), 2.0);

    server.restart();
    // The same link connects afresh; the restarted Redis has no state.
    let taken = route.take(1, rate).await.unwrap();
    assert_eq!(
        taken,
        Taken {
            granted: 1,
            next_in: Duration::ZERO,
            ready: 1,
            later_in: Duration::ZERO,
        }
    );
    assert_eq!(route.calls("ok"), 2.0);
    assert_eq!(route.tokens(), 2.0);
}

#[tokio::test]
async fn a_black_holed_call_leaves_the_link_usable_for_the_next() {
    // A call that times out drops its connection; a healthy Redis serves the
    // next one on a new connection. (A paused server stands in for a
    // black hole that then recovers.)
    let server = RedisServer::start();
    let route = Route::on(
        Arc::new(RedisLink::new(&server.url(), Duration::from_millis(300)).unwrap()),
        &unique_prefix("recover"),
    );
    let rate = params(10.0, 5);
    assert_eq!(route.take(1, rate).await.unwrap().granted, 1);
    let mut conn = plain(&server.url()).await;
    // CLIENT PAUSE holds every write command (the script is one) for 600 ms.
    let () = ::redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(600)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
    let started = Instant::now();
    route.take(1, rate).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(550));
    assert_eq!(route.calls("timeout"), 1.0);
    let () = ::redis::cmd("CLIENT")
        .arg("UNPAUSE")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(route.take(1, rate).await.unwrap().granted, 1);
    assert_eq!(route.calls("ok"), 2.0);
}

#[tokio::test]
async fn tls_and_malformed_urls_are_refused_with_a_reason() {
    let tls = RedisLink::new("rediss://127.0.0.1:6379", TIMEOUT).unwrap_err();
    assert!(tls.0.contains("TLS"), "{tls}");
    assert_eq!(validate_url("rediss://127.0.0.1:6379"), Err(tls.0.clone()));

    for url in [
        "127.0.0.1:6379",
        "http://127.0.0.1:6379",
        "redis://127.0.0.1/x",
    ] {
        let err = RedisLink::new(url, TIMEOUT).unwrap_err();
        assert!(err.0.contains("redis://"), "{url}: {err}");
        assert_eq!(validate_url(url), Err(err.0));
    }
    assert_eq!(validate_url("redis://127.0.0.1:6379/0"), Ok(()));
    // Parsing only: no connection is tried, so a URL to nowhere is fine.
    let dead = crate::common::dead_addr().await;
    assert!(RedisLink::new(&format!("redis://{dead}"), TIMEOUT).is_ok());
}

#[tokio::test]
async fn the_script_refuses_bad_arguments() {
    let mut conn = plain(&shared_url()).await;
    let key = format!("{}:route:x", unique_prefix("args"));
    let script = ::redis::Script::new(include_str!("../../src/gcra.lua"));
    for (args, complaint) in [
        (["0", "0", "1"], "interval_us"),
        (["-5", "0", "1"], "interval_us"),
        (["abc", "0", "1"], "interval_us"),
        (["1000", "-1", "1"], "tolerance_us"),
        (["1000", "0", "0"], "want"),
        (["1000", "0", "1.5"], "want"),
    ] {
        let mut call = script.key(&key);
        for arg in args {
            call.arg(arg);
        }
        let err = call
            .invoke_async::<(i64, i64)>(&mut conn)
            .await
            .unwrap_err();
        assert!(err.to_string().contains(complaint), "{args:?}: {err}");
    }
    // Nothing was written by a refused call.
    let exists: i64 = ::redis::cmd("EXISTS")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test]
async fn tokens_within_the_horizon_are_reserved_at_their_times() {
    let route = Route::new(&shared_url(), "reserve");
    let mut conn = plain(&shared_url()).await;
    // 1/s, burst 1, TAT pinned to Redis's now: one token conforms now, the
    // next at +1 s, +2 s... A horizon of 2.5 s reserves those two as well.
    let now = server_time_us(&mut conn).await;
    set_tat(&mut conn, route.store.key(), now).await;
    let reserve = GcraParams {
        horizon: Duration::from_millis(2_500),
        ..params(1.0, 1)
    };
    let taken = route.take(10, reserve).await.unwrap();
    assert_eq!((taken.granted, taken.ready), (3, 1), "{taken:?}");
    // The first reserved one conforms 1 s after the TAT was pinned (less
    // the time the calls took, well under 0.5 s).
    assert!(taken.later_in <= Duration::from_secs(1), "{taken:?}");
    assert!(taken.later_in >= Duration::from_millis(500), "{taken:?}");
    // The next after them is 3 s away: nothing for a caller without horizon...
    assert!(taken.next_in > Duration::from_millis(2_500), "{taken:?}");
    let other = route.take(5, params(1.0, 1)).await.unwrap();
    assert_eq!(other.granted, 0, "{other:?}");
    // ...and a caller with one gets the slots after the reserved ones.
    let after = route.take(2, reserve).await.unwrap();
    assert_eq!((after.granted, after.ready), (0, 0), "{after:?}");
    let longer = GcraParams {
        horizon: Duration::from_secs(5),
        ..params(1.0, 1)
    };
    let after = route.take(2, longer).await.unwrap();
    assert_eq!((after.granted, after.ready), (2, 0), "{after:?}");
    assert!(after.later_in > Duration::from_millis(2_500), "{after:?}");
    // The TAT moved past every reserved token: five intervals from the
    // first call's time (the pinned TAT, or the call's clock, a little later).
    let tat = stored_tat(&mut conn, route.store.key()).await - now as f64;
    assert!(
        (5_000_000.0..5_500_000.0).contains(&tat),
        "TAT now + {tat} us"
    );
}
