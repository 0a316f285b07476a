//! Global route limits through a real Redis: a fleet of sluice instances
//! holds one rate between them, and a Redis outage is met as
//! `on_redis_error` says, with the global limit back once Redis is.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::redis::{RedisServer, shared_url, unique_prefix};
use crate::common::*;
use sluice::Config;
use sluice::config::LimitBackend;

/// One route `global` on "/" at `rate`/`burst` kept in Redis at `url`
/// (`on_redis_error` as `on_error` says: "local", "allow" or "deny"), and an
/// unshaped route `warm` for opening pooled connections before measuring.
fn global_config(
    backend: std::net::SocketAddr,
    url: &str,
    prefix: &str,
    (rate, burst): (f64, u32),
    on_error: &str,
    instances: u32,
) -> Config {
    let mut config = config(&[backend]);
    let shared = parse_config(&format!(
        r#"
[redis]
url = {url:?}
key_prefix = {prefix:?}

[upstreams.api]
targets = ["127.0.0.1:1"]

[[routes]]
name = "warm"
path_prefix = "/warm"
upstream = "api"
queue = {{ capacity = 100, timeout = "10s" }}

[[routes]]
name = "global"
upstream = "api"
limit = {{ rate = {rate}, burst = {burst}, backend = "redis", on_redis_error = {on_error:?}, expected_instances = {instances} }}
queue = {{ capacity = 1000, timeout = "30s" }}
"#
    ));
    config.routes = shared.routes;
    config.redis = shared.redis;
    config
}

/// Arrival times (µs) at the backend of requests on `path`, from `since` on, sorted.
fn arrivals(backend: &Backend, path: &str, since: u64) -> Vec<u64> {
    let mut at: Vec<u64> = backend
        .arrivals()
        .iter()
        .filter(|a| a.path == path && a.at >= since)
        .map(|a| a.at)
        .collect();
    at.sort_unstable();
    at
}

/// The steady rate of `arrivals` after the first `skip` (the burst).
fn drain_rate(arrivals: &[u64], skip: usize) -> f64 {
    let drain = &arrivals[skip..];
    let span = (drain[drain.len() - 1] - drain[0]) as f64 / 1e6;
    (drain.len() - 1) as f64 / span
}

/// `sluice_redis_fallback` of route `global` on one instance.
async fn fallback(client: &TestClient, sluice: &TestSluice) -> f64 {
    let text = scrape(client, sluice.admin_addr()).await;
    samples(&text, "sluice_redis_fallback")
        .into_iter()
        .find(|(labels, _)| labels.contains("route=\"global\""))
        .map_or(-1.0, |(_, v)| v)
}

/// Waits (up to 15 s: the back-off tops out at 5 s) until the route's
/// fallback gauge reads `want`.
async fn await_fallback(client: &TestClient, sluice: &TestSluice, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = fallback(client, sluice).await;
        if now == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "sluice_redis_fallback stayed {now}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends a burst of `n` to `path` on each instance at once; returns what the clients saw.
async fn fleet_burst(client: &TestClient, fleet: &[TestSluice], path: &str, n: usize) -> Vec<Seen> {
    let bursts: Vec<_> = fleet
        .iter()
        .map(|s| {
            let (client, url) = (client.clone(), format!("http://{}{path}", s.proxy_addr()));
            tokio::spawn(async move { burst(&client, &url, n).await })
        })
        .collect();
    let mut seen = Vec::new();
    for b in bursts {
        seen.extend(b.await.unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_hold_one_global_rate() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let config = global_config(
        backend.addr,
        &shared_url(),
        &unique_prefix("global"),
        (100.0, 10),
        "local",
        3,
    );
    let mut fleet = Vec::new();
    for _ in 0..3 {
        fleet.push(TestSluice::start(&config).await);
    }
    let client = client();
    fleet_burst(&client, &fleet, "/warm", 10).await;

    // 100 at once on each instance: 300 against one limit of 100/s, burst 10.
    let seen = fleet_burst(&client, &fleet, "/buy", 100).await;
    assert_eq!(by_status(&seen), BTreeMap::from([(200, 300)]));
    let at = arrivals(&backend, "/buy", 0);
    assert_eq!(at.len(), 300);
    let rate = drain_rate(&at, 10);
    assert!(
        (rate - 100.0).abs() <= 5.0,
        "fleet rate {rate:.1}/s, limit 100/s"
    );
    // Each instance forwarded its own 100, counted once.
    for sluice in &fleet {
        let counted = outcomes(&client, sluice.admin_addr(), "global").await;
        assert_eq!(counted, BTreeMap::from([("forwarded".to_string(), 100)]));
        assert_eq!(fallback(&client, sluice).await, 0.0);
    }
}

/// An outage under `on_error` on one instance that expects a fleet of 2:
/// returns (the instance, its backend, the client, the Redis server) with
/// Redis stopped and the fallback engaged.
async fn outage(
    on_error: &str,
    rate: (f64, u32),
) -> (TestSluice, Backend, TestClient, RedisServer) {
    let mut redis = RedisServer::start();
    let backend = Backend::start(Duration::ZERO).await;
    let config = global_config(
        backend.addr,
        &redis.url(),
        &unique_prefix("global"),
        rate,
        on_error,
        2,
    );
    let sluice = TestSluice::start(&config).await;
    let client = client();
    burst(&client, &format!("http://{}/warm", sluice.proxy_addr()), 10).await;
    // Healthy: the route is on Redis.
    let seen = burst(&client, &format!("http://{}/a", sluice.proxy_addr()), 1).await;
    assert_eq!(by_status(&seen), BTreeMap::from([(200, 1)]));
    assert_eq!(fallback(&client, &sluice).await, 0.0);
    redis.stop();
    // The next request that needs a token finds Redis gone. (Under "deny"
    // it waits for Redis or its deadline, so it is not awaited.)
    let (c, url) = (client.clone(), format!("http://{}/b", sluice.proxy_addr()));
    tokio::spawn(async move { get(&c, &url).await });
    await_fallback(&client, &sluice, 1.0).await;
    (sluice, backend, client, redis)
}

/// Redis back: the gauge clears and a burst drains at the global rate again.
async fn recovers(
    sluice: &TestSluice,
    backend: &Backend,
    client: &TestClient,
    redis: &mut RedisServer,
    rate: f64,
) {
    redis.restart();
    await_fallback(client, sluice, 0.0).await;
    let since = micros_now();
    let seen = burst(client, &format!("http://{}/after", sluice.proxy_addr()), 60).await;
    assert_eq!(by_status(&seen), BTreeMap::from([(200, 60)]));
    let at = arrivals(backend, "/after", since);
    let measured = drain_rate(&at, 10);
    assert!(
        (measured - rate).abs() <= rate * 0.05,
        "after recovery {measured:.1}/s, limit {rate}/s"
    );
    let text = scrape(client, sluice.admin_addr()).await;
    let errors: f64 = samples(&text, "sluice_redis_calls_total")
        .iter()
        .filter(|(l, _)| l.contains("route=\"global\"") && !l.contains("result=\"ok\""))
        .map(|(_, v)| v)
        .sum();
    assert!(errors >= 1.0, "no failed Redis call counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_local_falls_back_to_a_share_and_recovers() {
    let _serial = serial().await;
    let (sluice, backend, client, mut redis) = outage("local", (100.0, 10)).await;
    // A fleet of 2 expected: 50/s, burst 5, while Redis is away.
    let since = micros_now();
    let seen = burst(&client, &format!("http://{}/down", sluice.proxy_addr()), 60).await;
    assert_eq!(by_status(&seen), BTreeMap::from([(200, 60)]));
    let measured = drain_rate(&arrivals(&backend, "/down", since), 5);
    assert!(
        (measured - 50.0).abs() <= 2.5,
        "fallback rate {measured:.1}/s, want 50/s"
    );
    recovers(&sluice, &backend, &client, &mut redis, 100.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_allow_lets_traffic_through_and_recovers() {
    let _serial = serial().await;
    let (sluice, backend, client, mut redis) = outage("allow", (50.0, 5)).await;
    // No limit while Redis is away: 100 requests at a 50/s limit all go at once.
    let since = micros_now();
    let seen = burst(
        &client,
        &format!("http://{}/down", sluice.proxy_addr()),
        100,
    )
    .await;
    assert_eq!(by_status(&seen), BTreeMap::from([(200, 100)]));
    let at = arrivals(&backend, "/down", since);
    let span_ms = (at[at.len() - 1] - at[0]) / 1000;
    assert!(
        span_ms < 1_000,
        "100 requests took {span_ms} ms: still limited"
    );
    recovers(&sluice, &backend, &client, &mut redis, 50.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_deny_refuses_and_recovers() {
    let _serial = serial().await;
    let (sluice, backend, client, mut redis) = outage("deny", (50.0, 5)).await;
    let forwarded_before = backend.count();
    let seen = burst(&client, &format!("http://{}/down", sluice.proxy_addr()), 20).await;
    // Refused at once with 503 and a Retry-After; none reaches the backend.
    assert_eq!(by_status(&seen), BTreeMap::from([(503, 20)]));
    assert!(
        seen.iter()
            .all(|s| s.latency < Duration::from_secs(1) && s.retry_after.is_some())
    );
    assert_eq!(backend.count(), forwarded_before);
    recovers(&sluice, &backend, &client, &mut redis, 50.0).await;
}

/// `sluice_redis_calls_total{result="ok"}` of route `global` on one instance.
async fn ok_calls(client: &TestClient, sluice: &TestSluice) -> f64 {
    let text = scrape(client, sluice.admin_addr()).await;
    samples(&text, "sluice_redis_calls_total")
        .into_iter()
        .filter(|(l, _)| l.contains("route=\"global\"") && l.contains("result=\"ok\""))
        .map(|(_, v)| v)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_a_route_between_local_and_redis_and_between_servers() {
    let _serial = serial().await;
    let mut first = RedisServer::start();
    let second = RedisServer::start();
    let backend = Backend::start(Duration::ZERO).await;
    let prefix = unique_prefix("global");
    let on = |url: &str| global_config(backend.addr, url, &prefix, (1000.0, 100), "deny", 1);
    let mut local = on(&first.url());
    local.routes[1].limit.as_mut().unwrap().backend = LimitBackend::Local;
    local.redis = None;

    let sluice = TestSluice::start(&local).await;
    let client = client();
    let url = format!("http://{}/x", sluice.proxy_addr());
    assert_eq!(
        by_status(&burst(&client, &url, 5).await),
        BTreeMap::from([(200, 5)])
    );
    assert_eq!(
        fallback(&client, &sluice).await,
        -1.0,
        "a local route has no Redis metrics"
    );

    // Local -> Redis: the route's tokens now come from the first server.
    sluice.reload(&on(&first.url()));
    assert_eq!(
        by_status(&burst(&client, &url, 5).await),
        BTreeMap::from([(200, 5)])
    );
    assert!(ok_calls(&client, &sluice).await >= 1.0);

    // To the second server; the first goes away and is not missed ("deny"
    // would refuse everything if the route still used it).
    sluice.reload(&on(&second.url()));
    first.stop();
    let seen = burst(&client, &url, 5).await;
    assert_eq!(by_status(&seen), BTreeMap::from([(200, 5)]));
    assert_eq!(fallback(&client, &sluice).await, 0.0);
    let routes = get(
        &client,
        &format!("http://{}/admin/routes", sluice.admin_addr()),
    )
    .await;
    let routes: serde_json::Value = serde_json::from_slice(&routes.body).unwrap();
    let global = routes
        .as_array()
        .or_else(|| routes["routes"].as_array())
        .unwrap()
        .iter()
        .find(|r| r["name"] == "global")
        .unwrap()
        .clone();
    assert_eq!(
        global["global_limit"],
        serde_json::json!({"store": "redis", "on_fallback": false})
    );

    // Back to local: no Redis needed at all.
    drop(second);
    sluice.reload(&local);
    assert_eq!(
        by_status(&burst(&client, &url, 5).await),
        BTreeMap::from([(200, 5)])
    );
}
