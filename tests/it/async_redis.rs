//! Async routes on the "redis" store (`[routes.async] store = "redis"`),
//! against a real redis-server: accept and delivery with tickets, status
//! and idempotency keys; Redis down answered 503, never 202; dead letters,
//! re-drive and discard; and with the real binary, a fleet of two sharing
//! one Redis: one killed by SIGKILL mid-delivery, the other takes over
//! what it held; the fleet's delivery pace against the route's rate.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{Method, StatusCode};

use crate::async_route::{
    Inbox, Process, accept_load, admin, expire_on_resume, fill_while_paused, get_json, post,
    temp_dir, until_state,
};
use crate::common::redis::{RedisServer, shared_url, unique_prefix};
use crate::common::{TestSluice, client, parse_config, scrape, sum_of};

/// A config with one async route `orders` on the redis store at `url`.
fn config_text(backend: SocketAddr, url: &str, prefix: &str, limit: &str, extra: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_timeout = "1s"

[admin]
listen = "127.0.0.1:0"

[log]
level = "warn"
access_log = false

[redis]
url = {url:?}
key_prefix = {prefix:?}
# A loaded CI machine: calls get room, a dead server still fails fast.
timeout = "1s"

[upstreams.api]
targets = ["{backend}"]
max_inflight = 4
timeout = "2s"

[[routes]]
name = "orders"
path_prefix = "/orders"
upstream = "api"
limit = {{ {limit} }}

[routes.async]
store = "redis"
{extra}
"#
    )
}

async fn start(inbox: &Inbox, url: &str, limit: &str, extra: &str) -> TestSluice {
    let prefix = unique_prefix("async");
    TestSluice::start(&parse_config(&config_text(
        inbox.addr, url, &prefix, limit, extra,
    )))
    .await
}

fn event(metrics: &str, e: &str) -> f64 {
    sum_of(
        metrics,
        "sluice_async_requests_total",
        &[&format!("event=\"{e}\"")],
    )
}

#[test]
fn the_redis_store_loads_and_needs_a_redis_section() {
    let text = config_text(
        "127.0.0.1:1".parse().unwrap(),
        "redis://127.0.0.1:6379",
        "sluice",
        "rate = 10",
        "claim_idle = \"5s\"",
    );
    let config = parse_config(&text);
    let a = config.routes[0].deferred.expect("async");
    assert_eq!(
        a.store,
        sluice::config::AsyncStore::Redis {
            claim_idle: Duration::from_secs(5)
        }
    );
    // What `sluice check` prints loads back the same.
    assert_eq!(parse_config(&config.to_toml()).routes, config.routes);
    let default = parse_config(&text.replace("claim_idle = \"5s\"", ""));
    assert_eq!(
        default.routes[0].deferred.unwrap().store,
        sluice::config::AsyncStore::Redis {
            claim_idle: Duration::from_secs(30)
        }
    );
    let (head, rest) = text.split_once("[redis]").unwrap();
    let no_redis = format!("{head}{}", &rest[rest.find("[upstreams.api]").unwrap()..]);
    let err = sluice::config::Config::parse(&no_redis, std::path::Path::new("t.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("needs a [redis] section"), "{err}");
    let local_claim = text.replace("store = \"redis\"", "store = \"local\"");
    let err = sluice::config::Config::parse(&local_claim, std::path::Path::new("t.toml"))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("claim_idle applies to store"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_into_redis_then_delivered_with_its_ticket_status_and_idempotency() {
    let inbox = Inbox::start().await;
    let mut sluice = start(
        &inbox,
        &shared_url(),
        "rate = 100, burst = 10",
        "keep_response_bytes = 64",
    )
    .await;
    let client = client();
    let base = format!("http://{}", sluice.proxy_addr());
    let n = 8;
    let mut tickets = Vec::new();
    for i in 0..n {
        let id = format!("req-{i}");
        let key = format!("order-{i}");
        let (status, headers, json) = post(
            &client,
            &format!("{base}/orders/{i}"),
            &format!("{{\"order\":{i}}}"),
            &[("x-request-id", &id), ("idempotency-key", &key)],
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{json}");
        let ticket = json["ticket"].as_str().unwrap().to_string();
        assert_eq!(
            headers["location"],
            format!("/_sluice/tickets/{ticket}").as_str()
        );
        tickets.push(ticket);
    }
    // The same submission again: the first ticket, nothing new queued.
    let (status, _, again) = post(
        &client,
        &format!("{base}/orders/0"),
        "{\"order\":0}",
        &[("idempotency-key", "order-0")],
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(again["ticket"], tickets[0].as_str());

    let seen = inbox.wait_for(n, Duration::from_secs(10)).await;
    let delivered: BTreeSet<String> = seen.iter().map(|d| d.ticket.clone()).collect();
    assert_eq!(delivered, tickets.iter().cloned().collect());
    for d in &seen {
        let i = tickets.iter().position(|t| *t == d.ticket).unwrap();
        assert_eq!(d.request_id, format!("req-{i}"));
        assert_eq!(d.path, format!("/orders/{i}"));
        assert_eq!(d.body, format!("{{\"order\":{i}}}"));
    }
    let last = format!("{base}/_sluice/tickets/{}", tickets[n - 1]);
    let status = until_state(&client, &last, "delivered", Duration::from_secs(5)).await;
    assert_eq!(status["status"], 200, "{status}");
    assert_eq!(status["body"], "done:42");
    let (code, _) = get_json(
        &client,
        &format!("{base}/_sluice/tickets/{}", "0".repeat(32)),
    )
    .await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    // No duplicate came of the repeated key.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(inbox.seen().len(), n);

    let admin_base = format!("http://{}/admin/routes/orders", sluice.admin_addr());
    let summary = admin(&client, Method::GET, &format!("{admin_base}/async")).await;
    assert_eq!(summary["store"], "redis");
    let metrics = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(event(&metrics, "accepted"), n as f64);
    assert_eq!(event(&metrics, "delivered"), n as f64);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_answered_503_never_202() {
    let inbox = Inbox::start().await;
    let mut redis = RedisServer::start();
    let mut sluice = start(&inbox, &redis.url(), "rate = 100, burst = 10", "").await;
    let client = client();
    let url = format!("http://{}/orders", sluice.proxy_addr());
    let (status, _, _) = post(&client, &url, "up", &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    inbox.wait_for(1, Duration::from_secs(5)).await;

    redis.stop();
    for i in 0..5 {
        let (status, headers, _) = post(&client, &url, &format!("down-{i}"), &[]).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(headers.contains_key("retry-after"));
    }
    let metrics = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(event(&metrics, "refused"), 5.0);
    assert_eq!(event(&metrics, "accepted"), 1.0);

    // Back (empty): accepted and delivered again.
    redis.restart();
    let mut accepted = false;
    for _ in 0..50 {
        let (status, _, _) = post(&client, &url, "back", &[]).await;
        if status == StatusCode::ACCEPTED {
            accepted = true;
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "never accepted once redis was back");
    let seen = inbox.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].body, "back");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_live_in_redis_and_are_redriven_or_discarded() {
    let inbox = Inbox::start().await;
    inbox.status.store(500, Ordering::SeqCst);
    let mut sluice = start(
        &inbox,
        &shared_url(),
        "rate = 100, burst = 10",
        "max_attempts = 1",
    )
    .await;
    let client = client();
    let base = format!("http://{}", sluice.proxy_addr());
    let admin_base = format!("http://{}/admin/routes/orders", sluice.admin_addr());
    let mut tickets = Vec::new();
    for i in 0..2 {
        let (status, _, json) =
            post(&client, &format!("{base}/orders"), &format!("{i}"), &[]).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        tickets.push(json["ticket"].as_str().unwrap().to_string());
    }
    for t in &tickets {
        let url = format!("{base}/_sluice/tickets/{t}");
        let status = until_state(&client, &url, "failed", Duration::from_secs(5)).await;
        assert_eq!(status["state"], "failed", "{status}");
        assert_eq!(status["attempts"], 1);
    }
    let letters = admin(&client, Method::GET, &format!("{admin_base}/dead-letters")).await;
    let listed: BTreeSet<String> = letters["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ticket"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, tickets.iter().cloned().collect());

    inbox.status.store(200, Ordering::SeqCst);
    let redriven = admin(
        &client,
        Method::POST,
        &format!("{admin_base}/dead-letters/redrive"),
    )
    .await;
    assert_eq!(redriven["redriven"], 2, "{redriven}");
    let seen = inbox.wait_for(2, Duration::from_secs(5)).await;
    let delivered: BTreeSet<String> = seen.iter().map(|d| d.ticket.clone()).collect();
    assert_eq!(delivered, tickets.iter().cloned().collect());
    let url = format!("{base}/_sluice/tickets/{}", tickets[0]);
    assert_eq!(
        until_state(&client, &url, "delivered", Duration::from_secs(5)).await["state"],
        "delivered"
    );

    inbox.status.store(500, Ordering::SeqCst);
    let (_, _, json) = post(&client, &format!("{base}/orders"), "doomed", &[]).await;
    let url = format!(
        "{base}/_sluice/tickets/{}",
        json["ticket"].as_str().unwrap()
    );
    until_state(&client, &url, "failed", Duration::from_secs(5)).await;
    let discarded = admin(
        &client,
        Method::DELETE,
        &format!("{admin_base}/dead-letters"),
    )
    .await;
    assert_eq!(discarded["discarded"], 1);
    assert_eq!(get_json(&client, &url).await.1["state"], "discarded");
    let metrics = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(event(&metrics, "dead_lettered"), 3.0);
    sluice.shutdown().await;
}

/// `capacity` counts what Redis holds (503 beyond it, never 202), and what
/// waited past `deliver_within` expires: dropped, counted, never sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_is_the_streams_and_what_waits_too_long_expires() {
    let inbox = Inbox::start().await;
    let mut sluice = start(
        &inbox,
        &shared_url(),
        "rate = 50, burst = 5",
        "deliver_within = \"1s\"\ncapacity = 3",
    )
    .await;
    let client = client();
    let urls = fill_while_paused(&client, &sluice).await;
    expire_on_resume(&client, &sluice, &inbox, &urls).await;
    sluice.shutdown().await;
}

// -- a fleet of real binaries sharing one Redis

/// A config file for one instance of the fleet (JSON logs, one worker).
fn fleet_config(dir: &std::path::Path, name: &str, text: &str) -> PathBuf {
    let text = text
        .replace("level = \"warn\"", "level = \"info\"\nformat = \"json\"")
        .replace(
            "listen = \"127.0.0.1:0\"\ndrain",
            "listen = \"127.0.0.1:0\"\nworkers = 1\ndrain",
        );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Accepts `n` requests, alternating between the instances; the tickets.
async fn accept_across(fleet: &[&Process], n: usize) -> BTreeSet<String> {
    let client = client();
    let mut accepted = BTreeSet::new();
    for i in 0..n {
        let url = format!("http://{}/orders", fleet[i % fleet.len()].proxy);
        let (status, _, json) = post(&client, &url, &format!("{i}"), &[]).await;
        assert_eq!(status, StatusCode::ACCEPTED, "request {i}: {json}");
        accepted.insert(json["ticket"].as_str().unwrap().to_string());
    }
    accepted
}

/// Two instances share one Redis; one is killed (SIGKILL) mid-delivery.
/// The other takes over what it held once `claim_idle` has passed: every
/// ticket answered 202 is delivered, and duplicates are no more than what
/// the killed one had in flight (its upstream's max_inflight, 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_instances_requests_are_taken_over_by_the_other() {
    const N: usize = 200;
    const RATE: usize = 50;
    let inbox = Inbox::start().await;
    let dir = temp_dir("redis-fleet-crash");
    let text = config_text(
        inbox.addr,
        &shared_url(),
        &unique_prefix("async-crash"),
        &format!("rate = {RATE}, burst = 1, backend = \"redis\", expected_instances = 2"),
        "claim_idle = \"1s\"",
    );
    let mut a = Process::start(&fleet_config(&dir, "a", &text), "");
    let b = Process::start(&fleet_config(&dir, "b", &text), "");
    let accepted = accept_across(&[&a, &b], N).await;
    assert_eq!(accepted.len(), N);
    inbox.wait_for(N / 4, Duration::from_secs(10)).await;
    a.kill9();
    let at_kill = inbox.seen().len();
    assert!(at_kill < N, "the kill came too late");

    let seen = inbox
        .wait_for(N + 4, Duration::from_secs((N / RATE) as u64 + 8))
        .await;
    let tickets: BTreeSet<String> = seen.iter().map(|d| d.ticket.clone()).collect();
    assert_eq!(
        tickets, accepted,
        "every accepted ticket is delivered, no other"
    );
    let duplicates = seen.len() - tickets.len();
    assert!(
        duplicates <= 4,
        "{duplicates} duplicates; at most 4 were in flight"
    );
    let metrics = scrape(&client(), b.admin).await;
    let claimed = sum_of(&metrics, "sluice_async_claimed_total", &[]);
    assert!(claimed >= 1.0, "the survivor claimed nothing");
    assert!(b.logged("took over requests another instance held"));
    println!(
        "fleet crash: {N} accepted by two instances, SIGKILL of one after {at_kill} delivered; \
         {} unique delivered, {duplicates} duplicates, {claimed} taken over by the survivor",
        tickets.len()
    );
}

/// Two instances deliver one backlog at the route's fleet-wide rate (the
/// GCRA in Redis): arrivals at the backend over a window of `WINDOW`
/// seconds, counted, are the rate times the window within 5%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_delivers_at_the_routes_rate() {
    const RATE: usize = 60;
    const N: usize = 420;
    const SKIP: Duration = Duration::from_secs(1);
    const WINDOW: Duration = Duration::from_secs(4);
    let inbox = Inbox::start().await;
    let dir = temp_dir("redis-fleet-pace");
    let text = config_text(
        inbox.addr,
        &shared_url(),
        &unique_prefix("async-pace"),
        &format!("rate = {RATE}, burst = 1, backend = \"redis\", expected_instances = 2"),
        "",
    );
    let a = Process::start(&fleet_config(&dir, "a", &text), "");
    let b = Process::start(&fleet_config(&dir, "b", &text), "");
    let accepted = accept_across(&[&a, &b], N).await;
    assert_eq!(accepted.len(), N);
    let first = inbox.wait_for(1, Duration::from_secs(5)).await[0].at;
    // The backlog outlasts the window: N / RATE = 7 s > SKIP + WINDOW.
    let seen = inbox
        .wait_for(N, Duration::from_secs((N / RATE) as u64 + 5))
        .await;
    assert_eq!(seen.len(), N);
    let (from, to) = (first + SKIP, first + SKIP + WINDOW);
    let counted = seen.iter().filter(|d| d.at >= from && d.at < to).count();
    let want = RATE as f64 * WINDOW.as_secs_f64();
    let tolerance = want * 0.05;
    assert!(
        (counted as f64 - want).abs() <= tolerance,
        "{counted} deliveries in {WINDOW:?} at a fleet rate of {RATE}/s (want {want} +- {tolerance})"
    );
    let by_a = scrape(&client(), a.admin).await;
    let by_b = scrape(&client(), b.admin).await;
    let (da, db) = (event(&by_a, "delivered"), event(&by_b, "delivered"));
    assert!(
        da > 0.0 && db > 0.0,
        "both instances deliver: {da} and {db}"
    );
    println!(
        "fleet pace: {counted} deliveries in {WINDOW:?} against {want} at {RATE}/s ({:+.1}%); \
         by instance {da} and {db}",
        (counted as f64 / want - 1.0) * 100.0
    );
}

/// The figures of bench/ASYNC.md for the redis store (not a test: no
/// assertion on time): accepts per second and accept latency with 64
/// concurrent clients on one instance (each answered once Redis has the
/// request), then two instances delivering the backlog at the route's
/// fleet-wide rate, against the configured one. `bench/async/run` runs it
/// on a release build, with a redis-server of its own (no persistence).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/async/run"]
async fn bench_redis_accepts_and_fleet_delivery() {
    const N: usize = 10_000;
    const CLIENTS: usize = 64;
    const RATE: u32 = 1000;
    let inbox = Inbox::start().await;
    let redis = RedisServer::start();
    let dir = temp_dir("redis-bench");
    let text = config_text(
        inbox.addr,
        &redis.url(),
        &unique_prefix("async-bench"),
        &format!("rate = {RATE}, burst = 1, backend = \"redis\", expected_instances = 2"),
        "capacity = 1000000",
    )
    .replace("max_inflight = 4", "max_inflight = 64");
    let a = Process::start(&fleet_config(&dir, "a", &text), "");
    let b = Process::start(&fleet_config(&dir, "b", &text), "");
    let client = client();
    let admin_a = format!("http://{}/admin/routes/orders", a.admin);
    let admin_b = format!("http://{}/admin/routes/orders", b.admin);
    for base in [&admin_a, &admin_b] {
        admin(&client, Method::POST, &format!("{base}/pause")).await;
    }
    let url = format!("http://{}/orders", a.proxy);
    let (latencies, took) = accept_load(&client, &url, CLIENTS, N).await;
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "accept: {N} accepts into redis by {CLIENTS} clients in {took:.2?}: {:.0} /s; latency p50 {:.2?} p99 {:.2?} max {:.2?}",
        N as f64 / took.as_secs_f64(),
        q(0.5),
        q(0.99),
        latencies[latencies.len() - 1]
    );
    // Sampled each second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let summary = admin(&client, Method::GET, &format!("{admin_a}/async")).await;
    println!(
        "redis: {} bytes for {} records = {:.0} bytes per record (a 200-byte body and the client's headers)",
        summary["bytes_in_redis"],
        summary["held"],
        summary["bytes_in_redis"].as_f64().unwrap() / summary["held"].as_f64().unwrap()
    );
    for base in [&admin_a, &admin_b] {
        admin(&client, Method::POST, &format!("{base}/resume")).await;
    }
    let seen = inbox
        .wait_for(N, Duration::from_secs(N as u64 / u64::from(RATE) + 20))
        .await;
    let times: Vec<std::time::Instant> = seen.iter().map(|d| d.at).collect();
    let span = times[times.len() - 1] - times[0];
    let counted = |from: std::time::Instant, secs: u64| {
        times
            .iter()
            .filter(|t| **t >= from && **t < from + Duration::from_secs(secs))
            .count()
    };
    let window = counted(times[0] + Duration::from_secs(1), 8);
    let unique: BTreeSet<&str> = seen.iter().map(|d| d.ticket.as_str()).collect();
    println!(
        "delivery: {} delivered ({} unique) by two instances in {span:.2?} = {:.1} /s against a fleet rate of {RATE} /s ({:+.2}%); \
         8 s window from 1 s in: {window} against {} ({:+.2}%)",
        seen.len(),
        unique.len(),
        (seen.len() - 1) as f64 / span.as_secs_f64(),
        ((seen.len() - 1) as f64 / span.as_secs_f64() / f64::from(RATE) - 1.0) * 100.0,
        RATE * 8,
        (window as f64 / f64::from(RATE * 8) - 1.0) * 100.0
    );
    drop((a, b, redis));
}
