//! The status page's document, `GET /status.json` on the admin listener
//! (docs/status.md): its token rules, its figures against a real sluice in
//! front of real backends under load, that every field it has is
//! documented, and that it holds no client data. `status::browser` drives
//! the page itself in a headless Chromium.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

mod browser;
mod cdp;

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::Value;

const TOKEN: &str = "st4tus-token";

/// Two routes on two upstreams: `checkout` (20/s, a short queue: overload
/// turns into 503s) on `shop`, and `search` (200/s) on `catalog`.
fn status_config(shop: SocketAddr, catalog: SocketAddr, token: Option<&str>) -> sluice::Config {
    let token = token.map_or(String::new(), |t| format!("token = {t:?}\n"));
    parse_config(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
drain_timeout = "2s"

[admin]
listen = "127.0.0.1:0"
{token}
[log]
level = "warn"
access_log = false

[upstreams.shop]
targets = ["{shop}"]
max_inflight = 64

[upstreams.catalog]
targets = ["{catalog}"]
max_inflight = 32

[[routes]]
name = "checkout"
path_prefix = "/checkout"
upstream = "shop"
limit = {{ rate = 20, burst = 2 }}
queue = {{ capacity = 20, timeout = "1s" }}

[[routes]]
name = "search"
path_prefix = "/search"
upstream = "catalog"
limit = {{ rate = 200, burst = 20 }}
queue = {{ capacity = 100, timeout = "2s" }}
"#
    ))
}

/// `GET /status.json`, with the token if given: the status and the document.
pub(crate) async fn status_json(
    client: &TestClient,
    admin: SocketAddr,
    token: Option<&str>,
) -> (StatusCode, Value) {
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://{admin}/status.json"));
    if let Some(token) = token {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let seen = send(client, req.body(Full::new(Bytes::new())).unwrap()).await;
    let json = serde_json::from_slice(&seen.body).unwrap_or(Value::Null);
    (seen.status, json)
}

/// Polls the document (every 100 ms, at most `within`) until `done` holds.
pub(crate) async fn until_status(
    client: &TestClient,
    admin: SocketAddr,
    token: Option<&str>,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, doc) = status_json(client, admin, token).await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        if done(&doc) {
            return doc;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the status document never got there within {within:?}: {doc:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) fn route<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["routes"]
        .as_array()
        .and_then(|routes| routes.iter().find(|r| r["name"] == name))
        .unwrap_or_else(|| panic!("no route {name} in {doc:#}"))
}

pub(crate) fn upstream<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["upstreams"]
        .as_array()
        .and_then(|ups| ups.iter().find(|u| u["name"] == name))
        .unwrap_or_else(|| panic!("no upstream {name} in {doc:#}"))
}

/// Every object key and every string value in `doc`.
fn keys_and_strings(doc: &Value, keys: &mut BTreeSet<String>, strings: &mut BTreeSet<String>) {
    match doc {
        Value::Object(map) => {
            for (key, value) in map {
                keys.insert(key.clone());
                keys_and_strings(value, keys, strings);
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|v| keys_and_strings(v, keys, strings)),
        Value::String(s) => {
            strings.insert(s.clone());
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_document_shows_routes_upstreams_and_process_under_load() {
    let _serial = serial().await;
    let shop = Backend::start(Duration::from_millis(2)).await;
    let catalog = Backend::start(Duration::ZERO).await;
    let config = status_config(shop.addr, catalog.addr, Some(TOKEN));
    let sluice = TestSluice::start(&config).await;
    let admin = sluice.admin_addr();
    let client = client();

    // The same token rules as /admin/.
    for token in [None, Some("wrong")] {
        let (status, doc) = status_json(&client, admin, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{doc}");
    }
    // The page itself holds no secret: it is served to anyone.
    let page = get(&client, &format!("http://{admin}/")).await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(String::from_utf8_lossy(&page.body).contains("/status.json"));

    // Load with client data the document must never show: a path, a key,
    // the clients' addresses. `checkout` is offered twice its rate.
    let load = |prefix: &'static str, per_second: f64, count: usize| {
        let client = client.clone();
        let url = format!(
            "http://{}{prefix}/private-path-7f3a?card=4111",
            sluice.proxy_addr()
        );
        tokio::spawn(async move {
            let make = || get_request(&url, &[("x-api-key", "client-key-9c2e")]);
            paced(&client, make, per_second, count).await
        })
    };
    let checkout = load("/checkout", 40.0, 160);
    let search = load("/search", 50.0, 200);

    let doc = until_status(
        &client,
        admin,
        Some(TOKEN),
        Duration::from_secs(10),
        |doc| {
            let c = route(doc, "checkout");
            let history = c["history"]["released"].as_array().map_or(0, Vec::len);
            history >= 2
                && c["released_per_second"].as_f64() > Some(0.0)
                && c["offered_per_second"].as_f64() > c["released_per_second"].as_f64()
                && upstream(doc, "shop")["latency_p50_seconds"].is_number()
        },
    )
    .await;

    let c = route(&doc, "checkout");
    assert_eq!(c["upstream"], "shop");
    assert_eq!(c["configured_rate"], 20.0);
    assert_eq!(c["effective_rate"], 20.0);
    assert_eq!(c["queue_capacity"], 20);
    assert_eq!(c["queue_timeout_seconds"], 1.0);
    assert_eq!(c["paused"], false);
    assert!(c["rate_override"].is_null() && c["global_limit"].is_null());
    // Released no faster than the rate allows (GCRA: rate x 1 s + burst in
    // any second; the sampler's second may run a little long).
    let released = c["history"]["released"].as_array().unwrap();
    assert!(
        released
            .iter()
            .all(|r| r.as_f64().unwrap() <= 2.0 * 20.0 + 2.0),
        "{released:?}"
    );
    let history_len = released.len();
    for series in [
        "offered",
        "rate",
        "refused",
        "queue_depth",
        "oldest_wait_seconds",
    ] {
        assert_eq!(
            c["history"][series].as_array().unwrap().len(),
            history_len,
            "{series}"
        );
    }
    assert_eq!(c["history"]["rate"][0], 20.0);

    let s = upstream(&doc, "shop");
    assert_eq!(s["routes"], serde_json::json!(["checkout"]));
    assert_eq!(s["max_inflight"], 64);
    assert_eq!(s["limit"], 64);
    assert_eq!(s["adaptive"], false);
    assert_eq!(s["healthy_targets"], 1);
    let target = &s["targets"][0];
    assert_eq!(target["name"], shop.addr.to_string());
    assert_eq!(target["healthy"], true);
    // The backend answers after 2 ms, which lies in the 1 to 2.5 ms bucket:
    // interpolated within buckets, the median is at least that bucket's
    // lower bound, and well below a second.
    let p50 = s["latency_p50_seconds"].as_f64().unwrap();
    assert!((0.001..1.0).contains(&p50), "p50 {p50}");
    assert!(s["latency_p99_seconds"].as_f64().unwrap() >= p50);
    assert_eq!(
        upstream(&doc, "catalog")["routes"],
        serde_json::json!(["search"])
    );

    let p = &doc["process"];
    assert_eq!(p["config_generation"], 1);
    assert_eq!(p["max_connections"], config.server.max_connections);
    assert!(p["connections_open"].as_u64().unwrap() >= 1);
    assert!(p["config_loaded_at"].as_f64().unwrap() > 1.7e9);
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["uptime_seconds"].as_f64().unwrap() >= 1.0);

    // Overload shows as refusals by cause once the load is done.
    let checkout = checkout.await.unwrap();
    let refused = checkout.iter().filter(|s| s.status == 503).count();
    assert!(refused > 0, "{:?}", by_status(&checkout));
    search.await.unwrap();
    let doc = until_status(&client, admin, Some(TOKEN), Duration::from_secs(5), |doc| {
        let refused: f64 = route(doc, "checkout")["history"]["refused"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_f64)
            .sum();
        refused > 0.0
    })
    .await;

    // Only names from the config (and the version) as strings; every key
    // documented in docs/status.md.
    let (mut keys, mut strings) = (BTreeSet::new(), BTreeSet::new());
    keys_and_strings(&doc, &mut keys, &mut strings);
    let allowed: BTreeSet<String> = [
        "checkout",
        "search",
        "shop",
        "catalog",
        env!("CARGO_PKG_VERSION"),
        &shop.addr.to_string(),
        &catalog.addr.to_string(),
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert!(
        strings.is_subset(&allowed),
        "{:?}",
        strings.difference(&allowed)
    );
    let text = doc.to_string();
    for secret in ["private-path", "4111", "client-key", "x-api-key"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
    let docs = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/status.md"))
        .expect("docs/status.md");
    let undocumented: Vec<&String> = keys
        .iter()
        .filter(|k| !docs.contains(&format!("`{k}`")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in docs/status.md: {undocumented:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_override_and_reload_show_in_the_status_document() {
    let shop = Backend::start(Duration::ZERO).await;
    let catalog = Backend::start(Duration::ZERO).await;
    let config = status_config(shop.addr, catalog.addr, None);
    let sluice = TestSluice::start(&config).await;
    let admin = sluice.admin_addr();
    let client = client();
    let call = |method: Method, path: &str, body: &str| {
        let req = Request::builder()
            .method(method)
            .uri(format!("http://{admin}{path}"))
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap();
        send(&client, req)
    };

    assert_eq!(
        call(Method::POST, "/admin/routes/checkout/pause", "")
            .await
            .status,
        200
    );
    let body = r#"{"rate": 5, "burst": 1, "ttl": "10m"}"#;
    assert_eq!(
        call(Method::PUT, "/admin/routes/search/rate", body)
            .await
            .status,
        200
    );
    let (status, doc) = status_json(&client, admin, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(route(&doc, "checkout")["paused"], true);
    let search = route(&doc, "search");
    assert_eq!(search["effective_rate"], 5.0);
    assert_eq!(search["configured_rate"], 200.0);
    assert_eq!(search["rate_override"]["rate"], 5.0);
    assert!(
        search["rate_override"]["expires_in_seconds"]
            .as_f64()
            .unwrap()
            > 590.0
    );

    // A reload is a new generation; a removed route leaves the document.
    let mut smaller = config.clone();
    smaller.routes.retain(|r| r.name == "checkout");
    sluice.reload(&smaller);
    let doc = until_status(&client, admin, None, Duration::from_secs(5), |doc| {
        doc["process"]["config_generation"] == 2
    })
    .await;
    let names: Vec<&str> = doc["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, ["checkout"]);
    // The route kept its state across the reload.
    assert_eq!(route(&doc, "checkout")["paused"], true);
    // Other methods are refused.
    assert_eq!(call(Method::POST, "/status.json", "").await.status, 405);
}
