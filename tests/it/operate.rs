//! Operating sluice while traffic flows: hot reload, the admin API (pause,
//! resume, rate override, auth) and a readiness-first shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

const TOKEN: &str = "s3cret-token";

/// Calls the admin API; returns the status and the JSON body.
async fn admin(
    client: &TestClient,
    sluice: &TestSluice,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", sluice.admin_addr()));
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap();
    let seen = send(client, req).await;
    let json = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
    (seen.status, json)
}

/// Arrivals per second at the backend between `from` and `to` (µs since EPOCH).
fn arrival_rate(backend: &Backend, from: u64, to: u64) -> f64 {
    let n = backend
        .arrivals()
        .iter()
        .filter(|a| a.at >= from && a.at < to)
        .count();
    n as f64 / ((to - from) as f64 / 1e6)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_under_load_changes_the_rate_and_fails_nobody() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = vec![route(
        "main",
        "/",
        Some((50.0, 1)),
        2000,
        Duration::from_secs(10),
    )];
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());

    // 120/s offered for 4 s, so the queue never empties and the backend sees
    // exactly the configured rate; it goes from 50/s to 100/s after 2 s.
    let start = micros_now();
    let load = tokio::spawn({
        let client = client.clone();
        async move { paced(&client, || get_request(&url, &[]), 120.0, 480).await }
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let reloaded_at = micros_now();
    let mut faster = config.clone();
    faster.routes[0].limit.as_mut().unwrap().rate = 100.0;
    sluice.reload(&faster);
    let seen = load.await.unwrap();

    assert_eq!(
        by_status(&seen),
        BTreeMap::from([(200, 480)]),
        "the reload failed requests"
    );
    let before = arrival_rate(&backend, start + 500_000, reloaded_at);
    let after = arrival_rate(&backend, reloaded_at + 300_000, reloaded_at + 1_800_000);
    assert!(
        (45.0..=55.0).contains(&before),
        "before the reload: {before:.1}/s"
    );
    assert!(
        (90.0..=110.0).contains(&after),
        "after the reload: {after:.1}/s"
    );

    // A bad file is refused; the running limits stay.
    let bad = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("bad-reload.toml");
    std::fs::write(
        &bad,
        "[[routes]]\nname = \"main\"\nupstream = \"nowhere\"\n",
    )
    .unwrap();
    let err = sluice.reload_file(&bad).unwrap_err().to_string();
    assert!(err.contains("bad-reload.toml:"), "{err}");
    let text = scrape(&client, sluice.admin_addr()).await;
    let reloads = samples(&text, "sluice_config_reloads_total");
    assert_eq!(reloads["result=\"success\""], 1.0);
    assert_eq!(reloads["result=\"failure\""], 1.0);
    assert_eq!(
        samples(&text, "sluice_route_rate_limit")["route=\"main\""],
        100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_survive_a_reload_and_a_removed_route_drains() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = vec![
        route(
            "kept",
            "/kept",
            Some((10.0, 1)),
            100,
            Duration::from_secs(5),
        ),
        route(
            "gone",
            "/gone",
            Some((10.0, 1)),
            100,
            Duration::from_secs(5),
        ),
    ];
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let base = format!("http://{}", sluice.proxy_addr());
    let kept = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/kept"));
        async move { burst(&client, &url, 10).await }
    });
    let gone = tokio::spawn({
        let (client, url) = (client.clone(), format!("{base}/gone"));
        async move { burst(&client, &url, 10).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut next = config.clone();
    next.routes.retain(|r| r.name == "kept");
    sluice.reload(&next);
    // Everything queued before the reload is still served, on both routes.
    assert_eq!(by_status(&kept.await.unwrap()), BTreeMap::from([(200, 10)]));
    assert_eq!(by_status(&gone.await.unwrap()), BTreeMap::from([(200, 10)]));
    // New requests to the removed route find no route.
    assert_eq!(
        get(&client, &format!("{base}/gone")).await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_the_token_when_one_is_set() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.admin.token = Some(TOKEN.into());
    let sluice = TestSluice::start(&config).await;
    let client = client();

    let (status, _) = admin(&client, &sluice, Method::GET, "/admin/routes", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = admin(
        &client,
        &sluice,
        Method::GET,
        "/admin/routes",
        Some("wrong"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, json) = admin(
        &client,
        &sluice,
        Method::GET,
        "/admin/routes",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let route = &json["routes"][0];
    assert_eq!(route["name"], "main");
    assert_eq!(route["configured_rate"], 100.0);
    assert_eq!(route["effective_rate"], 100.0);
    assert_eq!(route["paused"], false);
    assert_eq!(route["queue_depth"], 0);
    // Metrics and health stay open for scrapers and probes.
    assert_eq!(
        get(&client, &format!("http://{}/metrics", sluice.admin_addr()))
            .await
            .status,
        StatusCode::OK
    );
    let (status, _) = admin(
        &client,
        &sluice,
        Method::GET,
        "/admin/routes/nope",
        Some(TOKEN),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_route_queues_then_drains_at_its_rate_and_timeouts_still_apply() {
    let _serial = serial().await;
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = vec![route(
        "main",
        "/",
        Some((20.0, 1)),
        100,
        Duration::from_secs(1),
    )];
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());

    let (status, json) = admin(
        &client,
        &sluice,
        Method::POST,
        "/admin/routes/main/pause",
        None,
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["paused"], true);
    let queued = tokio::spawn({
        let (client, url) = (client.clone(), url.clone());
        async move { burst(&client, &url, 5).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(backend.count(), 0, "a paused route released a request");
    let (_, json) = admin(
        &client,
        &sluice,
        Method::GET,
        "/admin/routes/main",
        None,
        None,
    )
    .await;
    assert_eq!(json["queue_depth"], 5);
    admin(
        &client,
        &sluice,
        Method::POST,
        "/admin/routes/main/resume",
        None,
        None,
    )
    .await;
    assert_eq!(
        by_status(&queued.await.unwrap()),
        BTreeMap::from([(200, 5)])
    );
    let times: Vec<u64> = backend.arrivals().iter().map(|a| a.at).collect();
    // Four intervals of 50 ms. The backend sees each request a little
    // after its release, the first (a fresh upstream connection) the
    // latest, so the span can read short by tens of ms under a busy test
    // suite; a burst (0 s) or twice the rate (0.1 s) cannot pass.
    let span = (times[4] - times[0]) as f64 / 1e6;
    assert!(
        (0.15..=0.26).contains(&span),
        "five released at 20/s over {span:.3} s"
    );

    // Paused past the timeout: 503 at the deadline, never forwarded.
    admin(
        &client,
        &sluice,
        Method::POST,
        "/admin/routes/main/pause",
        None,
        None,
    )
    .await;
    let expired = burst(&client, &url, 3).await;
    assert_eq!(by_status(&expired), BTreeMap::from([(503, 3)]));
    for s in &expired {
        assert!(s.latency >= Duration::from_millis(950), "{:?}", s.latency);
    }
    assert_eq!(backend.count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_override_applies_until_it_expires() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = vec![route(
        "main",
        "/",
        Some((10.0, 2)),
        100,
        Duration::from_secs(1),
    )];
    let sluice = TestSluice::start(&config).await;
    let client = client();

    let body = r#"{"rate": 250, "ttl": "400ms"}"#;
    let (status, json) = admin(
        &client,
        &sluice,
        Method::PUT,
        "/admin/routes/main/rate",
        None,
        Some(body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    assert_eq!(json["effective_rate"], 250.0);
    assert_eq!(json["effective_burst"], 2, "the configured burst is kept");
    assert_eq!(json["configured_rate"], 10.0);
    assert!(
        json["rate_override"]["expires_in_seconds"]
            .as_f64()
            .unwrap()
            > 0.3
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, json) = admin(
        &client,
        &sluice,
        Method::GET,
        "/admin/routes/main",
        None,
        None,
    )
    .await;
    assert_eq!(json["effective_rate"], 10.0, "{json}");
    assert_eq!(json["rate_override"], Value::Null);

    // Bad bodies are 400 with a reason; DELETE ends an override at once.
    for bad in [
        r#"{"rate": 0, "ttl": "1m"}"#,
        r#"{"rate": 5, "ttl": "soon"}"#,
        "not json",
        r#"{"rate": 5}"#,
    ] {
        let (status, json) = admin(
            &client,
            &sluice,
            Method::PUT,
            "/admin/routes/main/rate",
            None,
            Some(bad),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {json}");
        assert!(json["error"].is_string());
    }
    admin(
        &client,
        &sluice,
        Method::PUT,
        "/admin/routes/main/rate",
        None,
        Some(r#"{"rate": 99, "ttl": "1h"}"#),
    )
    .await;
    let (_, json) = admin(
        &client,
        &sluice,
        Method::DELETE,
        "/admin/routes/main/rate",
        None,
        None,
    )
    .await;
    assert_eq!(json["effective_rate"], 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_goes_false_before_accepting_stops() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.shutdown_delay = Duration::from_millis(600);
    let mut sluice = TestSluice::start(&config).await;
    let client = client();
    let readyz = format!("http://{}/readyz", sluice.admin_addr());
    assert_eq!(get(&client, &readyz).await.status, StatusCode::OK);

    sluice.begin_shutdown();
    assert_eq!(
        get(&client, &readyz).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    // Still serving during the delay, on a new connection too.
    let fresh = self::client();
    assert_eq!(
        get(&fresh, &format!("http://{}/", sluice.proxy_addr()))
            .await
            .status,
        StatusCode::OK
    );
    sluice.wait_stopped().await;
    assert!(
        tokio::net::TcpStream::connect(sluice.proxy_addr())
            .await
            .is_err()
    );
}
