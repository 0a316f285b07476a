//! Fairness between clients through real sockets: per-key limits and the
//! client address they key on, fair queueing, priority classes, adaptive LIFO,
//! bounded key tables and dry runs.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use sluice::config::RouteConfig;

fn get_with(url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    get_request(url, headers)
}

/// The routes written in `toml` (on the upstream `api`), through the real
/// loader: what a test sets reads as it would in a config file.
fn routes(toml: &str) -> Vec<RouteConfig> {
    parse_config(&format!(
        "[upstreams.api]\ntargets = [\"127.0.0.1:1\"]\n{toml}"
    ))
    .routes
}

/// Sends `count` GETs with `headers` at `per_second`, open loop.
async fn paced_with(
    client: &TestClient,
    url: &str,
    headers: Vec<(String, String)>,
    per_second: f64,
    count: usize,
) -> Vec<Seen> {
    let pairs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    paced(client, || get_request(url, &pairs), per_second, count).await
}

fn ok_ratio(seen: &[Seen]) -> f64 {
    seen.iter().filter(|s| s.status == StatusCode::OK).count() as f64 / seen.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_counts_only_from_trusted_proxies() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut untrusted = config(&[backend.addr]);
    untrusted.routes = routes(
        r#"
[[routes]]
name = "main"
upstream = "api"
limit = { rate = 100, burst = 10 }
key_limit = { rate = 0.1, burst = 1, max_keys = 1000 }
queue = { capacity = 1000, timeout = "10s" }
"#,
    );
    let sluice = TestSluice::start(&untrusted).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());

    // From an untrusted peer, forged addresses do not make new keys.
    let first = send(&client, get_with(&url, &[("x-forwarded-for", "1.1.1.1")])).await;
    let forged = send(&client, get_with(&url, &[("x-forwarded-for", "2.2.2.2")])).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(forged.status, StatusCode::TOO_MANY_REQUESTS);
    assert!(
        forged.retry_after.is_some_and(|s| (9..=10).contains(&s)),
        "{forged:?}"
    );

    // Behind a trusted proxy, the right-most untrusted hop is the client.
    let mut trusted = untrusted.clone();
    trusted.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let sluice = TestSluice::start(&trusted).await;
    let url = format!("http://{}/", sluice.proxy_addr());
    let a = send(
        &client,
        get_with(&url, &[("x-forwarded-for", "6.6.6.6, 1.1.1.1")]),
    )
    .await;
    let b = send(&client, get_with(&url, &[("x-forwarded-for", "2.2.2.2")])).await;
    // Same real client behind a different forged prefix: same key, limited.
    let a_again = send(
        &client,
        get_with(&url, &[("x-forwarded-for", "7.7.7.7, 1.1.1.1")]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(a_again.status, StatusCode::TOO_MANY_REQUESTS);
    let counted = outcomes(&client, sluice.admin_addr(), "main").await;
    assert_eq!(counted["forwarded"], 2);
    assert_eq!(counted["rejected_rate_limited"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_client_does_not_crowd_out_light_ones() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = routes(
        r#"
[[routes]]
name = "main"
upstream = "api"
key = "header:x-client"
limit = { rate = 60, burst = 5 }
queue = { capacity = 30, timeout = "500ms", fairness = "per_key" }
"#,
    );
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());

    // Nine light clients at 4/s each (36/s) and one heavy at 80/s (20x),
    // together 116/s against a rate of 60/s, for 2.5 s.
    let mut runs = Vec::new();
    for i in 0..10 {
        let (rate, count) = if i == 0 { (80.0, 200) } else { (4.0, 10) };
        let client = client.clone();
        let url = url.clone();
        let headers = vec![("x-client".to_string(), format!("c{i}"))];
        runs.push(tokio::spawn(async move {
            paced_with(&client, &url, headers, rate, count).await
        }));
    }
    let mut results = Vec::new();
    for run in runs {
        results.push(run.await.unwrap());
    }

    let heavy = ok_ratio(&results[0]);
    let light: Vec<Seen> = results[1..].iter().flatten().cloned().collect();
    assert!(
        ok_ratio(&light) > 0.9,
        "light clients served {:.2}",
        ok_ratio(&light)
    );
    assert!(heavy < 0.8, "the heavy client was not limited: {heavy:.2}");
    // The backend's own records agree.
    let arrivals = backend.arrivals();
    let from = |c: &str| {
        arrivals
            .iter()
            .filter(|a| a.headers["x-client"] == c)
            .count()
    };
    assert_eq!(
        from("c0"),
        results[0]
            .iter()
            .filter(|s| s.status == StatusCode::OK)
            .count()
    );
    let light_arrivals: usize = (1..10).map(|i| from(&format!("c{i}"))).sum();
    assert!(
        light_arrivals as f64 >= 0.9 * 90.0,
        "{light_arrivals} of 90 light requests arrived"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_full_queue_high_class_requests_displace_low_class_ones() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = routes(
        r#"
[[routes]]
name = "main"
upstream = "api"
limit = { rate = 20, burst = 1 }
queue = { capacity = 10, timeout = "5s" }
classes = [{ name = "gold", header = "x-tier", values = ["gold"] }]
"#,
    );
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());

    // One takes the token; ten low-class requests fill the queue.
    let low: Vec<_> = (0..11)
        .map(|i| {
            let client = client.clone();
            let url = url.clone();
            tokio::spawn(async move {
                send(&client, get_with(&url, &[("x-n", &format!("low{i}"))])).await
            })
        })
        .collect();
    let filled = async {
        while samples(
            &scrape(&client, sluice.admin_addr()).await,
            "sluice_queue_depth",
        )["route=\"main\""]
            < 10.0
        {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(2), filled)
        .await
        .expect("queue fills");
    // Five gold requests arrive at a full queue.
    let gold = burst_with(&client, &url, &[("x-tier", "gold")], 5).await;
    assert!(
        gold.iter().all(|s| s.status == StatusCode::OK),
        "{:?}",
        by_status(&gold)
    );
    let mut low_seen = Vec::new();
    for task in low {
        low_seen.push(task.await.unwrap());
    }
    assert_eq!(by_status(&low_seen), BTreeMap::from([(200, 6), (503, 5)]));
    // Gold went out before the low-class requests still queued.
    let arrivals = backend.arrivals();
    let last_gold = arrivals
        .iter()
        .rposition(|a| a.headers.get("x-tier").is_some())
        .unwrap();
    let low_after = arrivals[last_gold..]
        .iter()
        .filter(|a| a.headers.get("x-n").is_some())
        .count();
    assert_eq!(
        low_after, 5,
        "the five remaining low-class requests go after gold"
    );
    let text = scrape(&client, sluice.admin_addr()).await;
    let by_class = samples(&text, "sluice_class_requests_total");
    assert_eq!(
        by_class["class=\"gold\",outcome=\"forwarded\",route=\"main\""],
        5.0
    );
    assert_eq!(
        by_class["class=\"default\",outcome=\"rejected_queue_full\",route=\"main\""],
        5.0
    );
    assert_eq!(
        by_class["class=\"default\",outcome=\"forwarded\",route=\"main\""],
        6.0
    );
}

/// Sends `n` requests with `headers` at once.
async fn burst_with(
    client: &TestClient,
    url: &str,
    headers: &[(&str, &str)],
    n: usize,
) -> Vec<Seen> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let client = client.clone();
            let req = get_with(url, headers);
            tokio::spawn(async move { send(&client, req).await })
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await.unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_lifo_answers_most_clients_fast_under_sustained_overload() {
    let _serial = serial().await;
    let timeout = Duration::from_secs(2);
    let mut medians = Vec::new();
    for discipline in [
        r#"discipline = "fifo""#,
        r#"discipline = "adaptive_lifo", lifo_threshold = "100ms""#,
    ] {
        let backend = Backend::start(Duration::ZERO).await;
        let mut config = config(&[backend.addr]);
        let timeout = humantime::format_duration(timeout);
        config.routes = routes(&format!(
            r#"
[[routes]]
name = "main"
upstream = "api"
limit = {{ rate = 40, burst = 1 }}
queue = {{ capacity = 1000, timeout = "{timeout}", {discipline} }}
"#
        ));
        let sluice = TestSluice::start(&config).await;
        let client = client();
        // 3x overload for 4 s.
        let seen = paced_with(
            &client,
            &format!("http://{}/", sluice.proxy_addr()),
            vec![],
            120.0,
            480,
        )
        .await;
        let mut ok: Vec<Duration> = seen
            .iter()
            .filter(|s| s.status == StatusCode::OK)
            .map(|s| s.latency)
            .collect();
        ok.sort();
        assert!(ok.len() >= 140, "{} served", ok.len());
        medians.push(ok[ok.len() / 2]);
    }
    let (fifo, lifo) = (medians[0], medians[1]);
    assert!(fifo > timeout / 2, "FIFO median {fifo:?}");
    assert!(lifo < timeout / 8, "adaptive LIFO median {lifo:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_table_stays_within_max_keys_and_evicted_keys_start_fresh() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = routes(
        r#"
[[routes]]
name = "main"
upstream = "api"
key = "header:x-key"
key_limit = { rate = 0.01, burst = 1, max_keys = 20 }
queue = { capacity = 1000, timeout = "10s" }
"#,
    );
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());

    let first = send(&client, get_with(&url, &[("x-key", "k0")])).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(
        send(&client, get_with(&url, &[("x-key", "k0")]))
            .await
            .status,
        StatusCode::TOO_MANY_REQUESTS
    );
    for i in 1..200 {
        let key = format!("k{i}");
        assert_eq!(
            send(&client, get_with(&url, &[("x-key", &key)]))
                .await
                .status,
            StatusCode::OK
        );
        let text = scrape(&client, sluice.admin_addr()).await;
        let tracked = samples(&text, "sluice_keys_tracked")["route=\"main\""];
        assert!(tracked <= 20.0, "{tracked} keys tracked");
    }
    // k0 was idle longest and has been evicted: it starts fresh.
    assert_eq!(
        send(&client, get_with(&url, &[("x-key", "k0")]))
            .await
            .status,
        StatusCode::OK
    );
    let text = scrape(&client, sluice.admin_addr()).await;
    assert!(samples(&text, "sluice_key_evictions_total")["route=\"main\""] >= 180.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_counts_what_would_be_limited_and_limits_nothing() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = routes(
        r#"
[[routes]]
name = "main"
upstream = "api"
limit = { rate = 1, burst = 1, dry_run = true }
key_limit = { rate = 1, burst = 1, max_keys = 100, dry_run = true }
queue = { capacity = 1000, timeout = "10s" }
"#,
    );
    let sluice = TestSluice::start(&config).await;
    let client = client();

    let seen = burst(&client, &format!("http://{}/", sluice.proxy_addr()), 20).await;
    assert_eq!(by_status(&seen), BTreeMap::from([(200, 20)]));
    assert!(
        seen.iter().all(|s| s.latency < Duration::from_millis(500)),
        "nothing was shaped"
    );
    let text = scrape(&client, sluice.admin_addr()).await;
    let dry = samples(&text, "sluice_dry_run_limited_total");
    assert_eq!(dry["limit=\"route\",route=\"main\""], 19.0);
    assert_eq!(dry["limit=\"key\",route=\"main\""], 19.0);
}
