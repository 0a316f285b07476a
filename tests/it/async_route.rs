//! Async routes (`[routes.async]`): accepted now (202 and a ticket once the
//! request is durable), delivered later at the route's rate; retries, dead
//! letters and re-drive, expiry, a full store, idempotency keys; and against
//! the real binary: SIGKILL mid-delivery, a corrupt journal tail, a full disk.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::common::{
    TestClient, TestSluice, client, parse_config, scrape, serve_http1, spawn_serving, sum_of,
};

/// What the backend saw of one delivery.
#[derive(Debug, Clone)]
pub(super) struct Delivery {
    pub(super) ticket: String,
    pub(super) request_id: String,
    pub(super) path: String,
    pub(super) body: Bytes,
    pub(super) at: Instant,
}

/// A backend that records deliveries and answers `status` (changeable).
#[derive(Clone)]
pub(super) struct Inbox {
    pub(super) addr: SocketAddr,
    seen: Arc<Mutex<Vec<Delivery>>>,
    pub(super) status: Arc<AtomicU16>,
}

impl Inbox {
    pub(super) async fn start() -> Inbox {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let inbox = Inbox {
            addr: listener.local_addr().unwrap(),
            seen: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
        };
        let serving = inbox.clone();
        serve_http1(listener, move |req| {
            let inbox = serving.clone();
            async move { inbox.serve(req).await }
        });
        inbox
    }

    async fn serve(&self, req: Request<Incoming>) -> hyper::Response<Full<Bytes>> {
        let header = |name: &str| {
            req.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        let (ticket, request_id) = (header("x-sluice-ticket"), header("x-request-id"));
        let path = req.uri().to_string();
        let body = req.into_body().collect().await.unwrap().to_bytes();
        let status = self.status.load(Ordering::SeqCst);
        if status < 500 {
            self.seen.lock().unwrap().push(Delivery {
                ticket,
                request_id,
                path,
                body,
                at: Instant::now(),
            });
        }
        let mut response = hyper::Response::new(Full::new(Bytes::from_static(b"done:42")));
        *response.status_mut() = StatusCode::from_u16(status).unwrap();
        response
    }

    pub(super) fn seen(&self) -> Vec<Delivery> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (at most `within`) until `n` deliveries were answered.
    pub(super) async fn wait_for(&self, n: usize, within: Duration) -> Vec<Delivery> {
        let until = Instant::now() + within;
        loop {
            let seen = self.seen();
            if seen.len() >= n || Instant::now() > until {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

pub(super) fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-async-{name}-{}", std::process::id()));
    let _fresh = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A sluice with the async route `orders` in front of `inbox`, its journal
/// in a fresh directory named after `name`.
async fn start_async(inbox: &Inbox, name: &str, limit: &str, deferred: &str) -> TestSluice {
    let dir = temp_dir(name);
    TestSluice::start(&parse_config(&config_text(
        inbox.addr, &dir, limit, deferred,
    )))
    .await
}

/// A config with one async route `orders` on `/orders` to `backend`.
fn config_text(backend: SocketAddr, dir: &Path, limit: &str, deferred: &str) -> String {
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
{deferred}

[storage]
dir = "{}"
"#,
        dir.display()
    )
}

/// POSTs `body` to `url`: status, headers and JSON body.
pub(super) async fn post(
    client: &TestClient,
    url: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let mut req = Request::builder().method(Method::POST).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let response = client
        .request(req.body(Full::new(Bytes::from(body.to_string()))).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

pub(super) async fn get_json(client: &TestClient, url: &str) -> (StatusCode, serde_json::Value) {
    let response = client.get(url.parse().unwrap()).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

pub(super) async fn admin(client: &TestClient, method: Method, url: &str) -> serde_json::Value {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(req).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// Waits until the ticket's state is `state` (at most `within`).
pub(super) async fn until_state(
    client: &TestClient,
    url: &str,
    state: &str,
    within: Duration,
) -> serde_json::Value {
    let until = Instant::now() + within;
    loop {
        let (_, json) = get_json(client, url).await;
        if json["state"] == state || Instant::now() > until {
            return json;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn async_table_loads_with_its_defaults() {
    let config = parse_config(&config_text(
        "127.0.0.1:1".parse().unwrap(),
        Path::new("/var/lib/sluice"),
        "rate = 100, burst = 10",
        "",
    ));
    let a = config.routes[0].deferred.expect("async");
    assert_eq!(a.deliver_within, Duration::from_secs(600));
    assert_eq!((a.max_attempts.get(), a.capacity.get()), (5, 100_000));
    assert_eq!(a.keep_response_bytes, 0);
    assert!(config.routes[0].upgrades.is_empty());
    assert_eq!(
        config.storage.dir.as_deref(),
        Some(Path::new("/var/lib/sluice"))
    );
    // What `sluice check` prints loads back the same.
    assert_eq!(parse_config(&config.to_toml()).routes, config.routes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_at_once_then_delivered_at_the_rate_with_ticket_and_request_id() {
    let inbox = Inbox::start().await;
    let mut sluice = start_async(
        &inbox,
        "deliver",
        "rate = 20, burst = 1",
        "keep_response_bytes = 64",
    )
    .await;
    let client = client();
    let base = format!("http://{}", sluice.proxy_addr());
    let n = 20;
    let mut tickets = Vec::new();
    let offered = Instant::now();
    for i in 0..n {
        let id = format!("req-{i}");
        let (status, headers, json) = post(
            &client,
            &format!("{base}/orders/{i}?q=1"),
            &format!("{{\"order\":{i}}}"),
            &[("x-request-id", &id)],
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED);
        let ticket = json["ticket"].as_str().unwrap().to_string();
        assert_eq!(ticket.len(), 32);
        let url = format!("/_sluice/tickets/{ticket}");
        assert_eq!(json["status_url"], url);
        assert_eq!(headers["location"], url.as_str());
        tickets.push(ticket);
    }
    // All were answered before the backend could have taken them.
    assert!(offered.elapsed() < Duration::from_millis(900));
    let last = format!("{base}/_sluice/tickets/{}", tickets[n - 1]);
    let (status, queued) = get_json(&client, &last).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        matches!(queued["state"].as_str(), Some("queued" | "in_flight")),
        "{queued}"
    );

    let seen = inbox.wait_for(n, Duration::from_secs(10)).await;
    assert_eq!(seen.len(), n);
    for (at, d) in seen.iter().enumerate() {
        let i = tickets
            .iter()
            .position(|t| *t == d.ticket)
            .expect("a ticket given out");
        // Sent oldest first: with up to max_inflight (4) in flight, a
        // neighbour may overtake on the way.
        assert!(i.abs_diff(at) < 4, "ticket {i} arrived {at}th");
        assert_eq!(d.request_id, format!("req-{i}"));
        assert_eq!(d.path, format!("/orders/{i}?q=1"));
        assert_eq!(d.body, format!("{{\"order\":{i}}}"));
    }
    let unique: BTreeSet<&str> = seen.iter().map(|d| d.ticket.as_str()).collect();
    assert_eq!(unique.len(), n);
    // Never faster than 20/s after the burst of 1: n deliveries span at
    // least (n - 1) / rate, less the GCRA's small tolerance for late wake-ups.
    let span = seen[n - 1].at - seen[0].at;
    assert!(span >= Duration::from_millis(900), "{span:?}");
    let delivered = until_state(&client, &last, "delivered", Duration::from_secs(2)).await;
    assert_eq!(delivered["status"], 200);
    assert_eq!(delivered["body"], "done:42");
    let (status, _) = get_json(
        &client,
        &format!("{base}/_sluice/tickets/{}", "0".repeat(32)),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let metrics = scrape(&client, sluice.admin_addr()).await;
    let event = |e: &str| {
        sum_of(
            &metrics,
            "sluice_async_requests_total",
            &[&format!("event=\"{e}\"")],
        )
    };
    assert_eq!(event("accepted"), n as f64);
    assert_eq!(event("delivered"), n as f64);
    assert_eq!(
        sum_of(&metrics, "sluice_requests_total", &["outcome=\"accepted\""]),
        n as f64
    );
    assert!(sum_of(&metrics, "sluice_async_fsync_seconds_count", &[]) >= 1.0);
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_then_dead_lettered_and_a_redrive_delivers_them() {
    let inbox = Inbox::start().await;
    inbox.status.store(503, Ordering::SeqCst);
    let mut sluice = start_async(&inbox, "dead", "rate = 50, burst = 5", "max_attempts = 2").await;
    let client = client();
    let base = format!("http://{}", sluice.proxy_addr());
    let admin_base = format!("http://{}/admin/routes/orders", sluice.admin_addr());
    let (status, _, json) = post(&client, &format!("{base}/orders"), "x", &[]).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let url = format!("{base}{}", json["status_url"].as_str().unwrap());
    // Attempt 1 fails, a back-off of 0.5-1 s, attempt 2 fails: dead letter.
    let failed = until_state(&client, &url, "failed", Duration::from_secs(5)).await;
    assert_eq!(failed["attempts"], 2);
    let letters = admin(&client, Method::GET, &format!("{admin_base}/dead-letters")).await;
    assert_eq!(letters["dead_letters"].as_array().unwrap().len(), 1);
    let summary = admin(&client, Method::GET, &format!("{admin_base}/async")).await;
    assert_eq!(summary["dead_letters"], 1);

    inbox.status.store(201, Ordering::SeqCst);
    let redriven = admin(
        &client,
        Method::POST,
        &format!("{admin_base}/dead-letters/redrive"),
    )
    .await;
    assert_eq!(redriven["redriven"], 1);
    let delivered = until_state(&client, &url, "delivered", Duration::from_secs(5)).await;
    assert_eq!(delivered["status"], 201);
    assert_eq!(inbox.seen().len(), 1);
    let metrics = scrape(&client, sluice.admin_addr()).await;
    let event = |e: &str| {
        sum_of(
            &metrics,
            "sluice_async_requests_total",
            &[&format!("event=\"{e}\"")],
        )
    };
    assert_eq!(
        (event("retried"), event("dead_lettered"), event("delivered")),
        (1.0, 1.0, 1.0)
    );
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_delivery_keeps_accepting_and_what_waits_too_long_expires() {
    let inbox = Inbox::start().await;
    let mut sluice = start_async(
        &inbox,
        "expire",
        "rate = 50, burst = 5",
        "deliver_within = \"1s\"\ncapacity = 3",
    )
    .await;
    let client = client();
    let urls = fill_while_paused(&client, &sluice).await;
    let admin_base = format!("http://{}/admin/routes/orders", sluice.admin_addr());
    let summary = admin(&client, Method::GET, &format!("{admin_base}/async")).await;
    assert_eq!(
        (
            summary["queued"].as_u64(),
            summary["delivery_paused"].as_bool()
        ),
        (Some(3), Some(true))
    );
    expire_on_resume(&client, &sluice, &inbox, &urls).await;
    sluice.shutdown().await;
}

/// With the route's delivery paused, fills its `capacity = 3`: three
/// `202`s, then `503` with a `Retry-After`, never a `202`. The three
/// tickets' status URLs. (The local and the redis store alike.)
pub(super) async fn fill_while_paused(client: &TestClient, sluice: &TestSluice) -> Vec<String> {
    let base = format!("http://{}", sluice.proxy_addr());
    let admin_base = format!("http://{}/admin/routes/orders", sluice.admin_addr());
    admin(client, Method::POST, &format!("{admin_base}/pause")).await;
    let mut urls = Vec::new();
    for _ in 0..3 {
        let (status, _, json) = post(client, &format!("{base}/orders"), "x", &[]).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        urls.push(format!("{base}{}", json["status_url"].as_str().unwrap()));
    }
    let (status, headers, _) = post(client, &format!("{base}/orders"), "x", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(headers.contains_key("retry-after"));
    urls
}

/// After [`fill_while_paused`] on a route with `deliver_within = "1s"`:
/// waits past it, resumes; every ticket expires, none is sent, three are
/// counted, and the route has room again (a new request is delivered).
pub(super) async fn expire_on_resume(
    client: &TestClient,
    sluice: &TestSluice,
    inbox: &Inbox,
    urls: &[String],
) {
    let base = format!("http://{}", sluice.proxy_addr());
    let admin_base = format!("http://{}/admin/routes/orders", sluice.admin_addr());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    admin(client, Method::POST, &format!("{admin_base}/resume")).await;
    for url in urls {
        let json = until_state(client, url, "expired", Duration::from_secs(3)).await;
        assert_eq!(json["state"], "expired", "{json}");
    }
    assert!(inbox.seen().is_empty(), "nothing expired is sent");
    let metrics = scrape(client, sluice.admin_addr()).await;
    assert_eq!(
        sum_of(
            &metrics,
            "sluice_async_requests_total",
            &["event=\"expired\""]
        ),
        3.0
    );
    // Room again, once the ends are recorded: a ticket reads `expired` as
    // soon as the book has it, a moment before the store (the journal's
    // next group commit, or Redis) frees its place, so a request sent in
    // that moment may still get a 503.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (status, _, _) = post(client, &format!("{base}/orders"), "x", &[]).await;
        if status == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            Instant::now() < deadline,
            "no room 3 s after the tickets expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    inbox.wait_for(1, Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_idempotency_key_gets_the_first_ticket() {
    let inbox = Inbox::start().await;
    let mut sluice = start_async(&inbox, "idem", "rate = 50, burst = 5", "").await;
    let client = client();
    let url = format!("http://{}/orders", sluice.proxy_addr());
    let key = [("idempotency-key", "order-7")];
    let (_, _, first) = post(&client, &url, "a", &key).await;
    let (_, _, again) = post(&client, &url, "a", &key).await;
    let (_, _, other) = post(&client, &url, "b", &[("idempotency-key", "order-8")]).await;
    assert_eq!(first["ticket"], again["ticket"]);
    assert_ne!(first["ticket"], other["ticket"]);
    let seen = inbox.wait_for(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(inbox.seen().len(), 2, "{seen:?}");
    sluice.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_queue_and_applies_the_new_rate() {
    let inbox = Inbox::start().await;
    let dir = temp_dir("reload");
    let text = config_text(inbox.addr, &dir, "rate = 5, burst = 1", "");
    let mut sluice = TestSluice::start(&parse_config(&text)).await;
    let client = client();
    let base = format!("http://{}", sluice.proxy_addr());
    let admin_base = format!("http://{}/admin/routes/orders", sluice.admin_addr());
    admin(&client, Method::POST, &format!("{admin_base}/pause")).await;
    let mut urls = Vec::new();
    for i in 0..10 {
        let (status, _, json) =
            post(&client, &format!("{base}/orders"), &format!("{i}"), &[]).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        urls.push(format!("{base}{}", json["status_url"].as_str().unwrap()));
    }
    sluice.reload(&parse_config(&text.replace("rate = 5,", "rate = 100,")));
    let summary = admin(&client, Method::GET, &format!("{admin_base}/async")).await;
    assert_eq!(summary["queued"], 10, "{summary}");
    let (_, queued) = get_json(&client, &urls[9]).await;
    assert_eq!(queued["position"], 10);
    assert_eq!(queued["expected_delivery_seconds"], 0.1);
    admin(&client, Method::POST, &format!("{admin_base}/resume")).await;
    let seen = inbox.wait_for(10, Duration::from_secs(5)).await;
    // Sent oldest first; several in flight at once may reach the backend
    // in another order.
    let bodies: BTreeSet<Bytes> = seen.iter().map(|d| d.body.clone()).collect();
    let want: BTreeSet<Bytes> = (0..10).map(|i| Bytes::from(i.to_string())).collect();
    assert_eq!(bodies, want);
    let route = admin(&client, Method::GET, &admin_base).await;
    assert_eq!(route["effective_rate"], 100.0);
    assert_eq!(route["async"]["held"], 0);
    sluice.shutdown().await;
}

// -- against the real binary

/// `sluice run` on `config` (JSON logs), through `sh -c` so a limit can be
/// set first; its stderr lines go to a channel.
pub(super) struct Process {
    child: std::process::Child,
    pub(super) proxy: SocketAddr,
    pub(super) admin: SocketAddr,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    pub(super) fn start(config: &Path, prelude: &str) -> Process {
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(format!("{prelude} exec \"$0\" run --config \"$1\""))
            .arg(env!("CARGO_BIN_EXE_sluice"))
            .arg(config);
        let serving = spawn_serving(command);
        let kept = Arc::new(Mutex::new(serving.before));
        let sink = kept.clone();
        let lines = serving.lines;
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Process {
            child: serving.child,
            proxy: serving.proxy,
            admin: serving.admin,
            lines: kept,
        }
    }

    pub(super) fn kill9(&mut self) {
        let _ = self.child.kill(); // SIGKILL
        let _ = self.child.wait();
    }

    pub(super) fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains(needle))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn binary_config(backend: SocketAddr, dir: &Path, rate: u32, extra: &str) -> PathBuf {
    let text = config_text(backend, dir, &format!("rate = {rate}, burst = 1"), extra)
        .replace("level = \"warn\"", "level = \"info\"\nformat = \"json\"")
        .replace(
            "listen = \"127.0.0.1:0\"\ndrain",
            "listen = \"127.0.0.1:0\"\nworkers = 1\ndrain",
        );
    let path = dir.join("sluice.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The newest journal segment holding records.
fn newest_records(dir: &Path) -> PathBuf {
    let journal = std::fs::read_dir(dir.join("async"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&journal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| std::fs::metadata(p).unwrap().len() > 8)
        .collect();
    segments.sort();
    segments.pop().unwrap()
}

/// N requests accepted at 10x the rate, SIGKILL mid-delivery, a restart on
/// the same directory: every ticket answered 202 is delivered, duplicates
/// are at most what was in flight, and no second sees more than the rate
/// (plus the burst a fresh process starts with).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_delivery_loses_no_accepted_request() {
    // 300 keeps the test near 10 s; bench/async/run sets 10,000 (the
    // issue's figure, ~3.5 minutes).
    let n: usize = std::env::var("SLUICE_ASYNC_CRASH_N")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(300);
    const RATE: u32 = 50;
    let inbox = Inbox::start().await;
    let dir = temp_dir("crash");
    let path = binary_config(inbox.addr, &dir, RATE, "");
    let mut first = Process::start(&path, "");
    let client = client();
    let url = format!("http://{}/orders", first.proxy);
    let mut accepted = BTreeSet::new();
    let pace = Duration::from_secs_f64(1.0 / f64::from(RATE * 10));
    let started = Instant::now();
    for i in 0..n {
        let (status, _, json) = post(&client, &url, &format!("{i}"), &[]).await;
        if status == StatusCode::ACCEPTED {
            accepted.insert(json["ticket"].as_str().unwrap().to_string());
        }
        let due = started + pace * (i as u32 + 1);
        tokio::time::sleep(due.saturating_duration_since(Instant::now())).await;
    }
    assert_eq!(accepted.len(), n);
    // Mid-delivery: some sent, most still queued.
    inbox
        .wait_for(n / 3, Duration::from_secs(10 + (n / RATE as usize) as u64))
        .await;
    first.kill9();
    let before_restart = inbox.seen().len();
    assert!(before_restart < n, "the kill came too late");

    let second = Process::start(&path, "");
    let seen = inbox
        .wait_for(
            n + 4,
            Duration::from_secs(2 + (n / RATE as usize) as u64 + 5),
        )
        .await;
    let tickets: BTreeSet<String> = seen.iter().map(|d| d.ticket.clone()).collect();
    assert_eq!(
        tickets, accepted,
        "every accepted ticket is delivered, no other"
    );
    let duplicates = seen.len() - tickets.len();
    assert!(
        duplicates <= 4,
        "{duplicates} duplicates; at most max_inflight (4) were in flight"
    );
    // Pace, as the backend saw it: in any one-second window at most the
    // rate plus the burst (1), the restart's fresh burst (1), the limiter's
    // make-up for one late release (1, see README) and one arrival pushed
    // into the window by network jitter.
    let times: Vec<Instant> = seen.iter().map(|d| d.at).collect();
    let mut busiest = 0;
    for (i, t) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_secs(1))
            .count();
        busiest = busiest.max(within);
    }
    assert!(
        busiest <= RATE as usize + 4,
        "{busiest} deliveries in one second"
    );
    assert!(second.logged("journal opened"));
    println!(
        "crash: {n} accepted (202) at {} /s, SIGKILL after {before_restart} delivered; \
         after the restart {} unique tickets delivered, {duplicates} duplicates; \
         busiest second {busiest} at a rate of {RATE} /s",
        RATE * 10,
        tickets.len()
    );
    drop(second);
}

/// The figures of bench/ASYNC.md (not a test: no assertion on time):
/// durable accepts per second and accept latency (fsync included) with 64
/// concurrent clients, bytes on disk per record, and the delivery rate
/// against the configured one. `bench/async/run` runs it on a release build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/async/run"]
async fn bench_durable_accepts_and_delivery_rate() {
    const N: usize = 10_000;
    const CLIENTS: usize = 64;
    const RATE: u32 = 1000;
    let inbox = Inbox::start().await;
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("async-bench-{}", std::process::id()));
    let _fresh = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = binary_config(inbox.addr, &dir, RATE, "capacity = 1000000").to_path_buf();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("workers = 1", "workers = 2")
        // Room in flight, so the rate (not the round trip) paces delivery.
        .replace("max_inflight = 4", "max_inflight = 64");
    std::fs::write(&path, text).unwrap();
    let process = Process::start(&path, "");
    let client = client();
    let admin_base = format!("http://{}/admin/routes/orders", process.admin);
    admin(&client, Method::POST, &format!("{admin_base}/pause")).await;
    let url = format!("http://{}/orders", process.proxy);
    let (latencies, took) = accept_load(&client, &url, CLIENTS, N).await;
    let q = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let summary = admin(&client, Method::GET, &format!("{admin_base}/async")).await;
    let bytes = summary["bytes_on_disk"].as_f64().unwrap();
    let held = summary["held"].as_f64().unwrap();
    let metrics = scrape(&client, process.admin).await;
    let syncs = sum_of(&metrics, "sluice_async_fsync_seconds_count", &[]);
    let sync_secs = sum_of(&metrics, "sluice_async_fsync_seconds_sum", &[]);
    println!(
        "accept: {N} durable accepts by {CLIENTS} clients in {took:.2?}: {:.0} /s; latency p50 {:.2?} p99 {:.2?} max {:.2?}",
        N as f64 / took.as_secs_f64(),
        q(0.5),
        q(0.99),
        latencies[latencies.len() - 1]
    );
    println!(
        "fsync: {syncs} syncs for {N} records ({:.1} records per sync), mean {:.2} ms",
        N as f64 / syncs,
        sync_secs / syncs * 1e3
    );
    println!(
        "disk: {bytes} bytes for {held} records = {:.0} bytes per record (a 200-byte body and the client's headers)",
        bytes / held,
    );
    admin(&client, Method::POST, &format!("{admin_base}/resume")).await;
    let seen = inbox
        .wait_for(N, Duration::from_secs(N as u64 / u64::from(RATE) + 20))
        .await;
    let times: Vec<Instant> = seen.iter().map(|d| d.at).collect();
    let span = times[times.len() - 1] - times[0];
    let mut busiest = 0;
    for (i, t) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|u| **u < *t + Duration::from_millis(100))
            .count();
        busiest = busiest.max(within);
    }
    println!(
        "delivery: {} delivered in {span:.2?} = {:.1} /s against a rate of {RATE} /s ({:+.2}%); busiest 100 ms window {busiest}",
        seen.len(),
        (seen.len() - 1) as f64 / span.as_secs_f64(),
        ((seen.len() - 1) as f64 / span.as_secs_f64() / f64::from(RATE) - 1.0) * 100.0
    );
    drop(process);
    let _gone = std::fs::remove_dir_all(&dir);
}

/// A journal whose tail was torn by a crash (half a record, then garbage)
/// is cut back to its last whole record on start, logged; what was whole is
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_journal_tail_is_cut_and_logged_and_the_rest_delivered() {
    let inbox = Inbox::start().await;
    let dir = temp_dir("corrupt");
    let path = binary_config(inbox.addr, &dir, 50, "max_attempts = 100");
    let mut first = Process::start(&path, "");
    let client = client();
    // Delivery paused (accepting goes on): nothing is attempted, so nothing
    // completes or waits out a back-off before the kill. The pause is not
    // kept across the restart.
    let admin_base = format!("http://{}/admin/routes/orders", first.admin);
    admin(&client, Method::POST, &format!("{admin_base}/pause")).await;
    let url = format!("http://{}/orders", first.proxy);
    for i in 0..5 {
        let (status, _, _) = post(&client, &url, &format!("{i}"), &[]).await;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    first.kill9();
    let segment = newest_records(&dir);
    let mut bytes = std::fs::read(&segment).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(&[0x5a; 40]);
    std::fs::write(&segment, &bytes).unwrap();

    let second = Process::start(&path, "");
    let seen = inbox.wait_for(5, Duration::from_secs(10)).await;
    let bodies: BTreeSet<Bytes> = seen.iter().map(|d| d.body.clone()).collect();
    assert_eq!(bodies.len(), 5);
    assert!(second.logged("cut a torn or corrupt tail"));
    // Cut back to its whole records, or, once those were delivered,
    // deleted altogether.
    if let Ok(meta) = std::fs::metadata(&segment) {
        assert_eq!(meta.len() as usize, whole);
    }
}

/// With the disk full (a file-size limit, SIGXFSZ ignored), a request that
/// cannot be written is answered 503 + Retry-After, never 202.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_answered_503_never_202() {
    let inbox = Inbox::start().await;
    let dir = temp_dir("diskfull");
    let path = binary_config(inbox.addr, &dir, 1, "");
    // 64 KiB files at most (ulimit -f counts 512-byte blocks in sh).
    let process = Process::start(&path, "trap '' XFSZ; ulimit -f 128;");
    let client = client();
    let url = format!("http://{}/orders", process.proxy);
    let body = "x".repeat(4000);
    let mut codes: BTreeMap<u16, usize> = BTreeMap::new();
    let mut accepted = 0;
    for _ in 0..40 {
        let (status, headers, _) = post(&client, &url, &body, &[]).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(headers.contains_key("retry-after"));
        }
        if status == StatusCode::ACCEPTED {
            accepted += 1;
        }
        *codes.entry(status.as_u16()).or_default() += 1;
    }
    assert!(codes.get(&503).copied().unwrap_or(0) > 0, "{codes:?}");
    assert_eq!(
        codes.keys().copied().collect::<Vec<_>>(),
        [202, 503],
        "{codes:?}"
    );
    let metrics = scrape(&client, process.admin).await;
    assert_eq!(
        sum_of(
            &metrics,
            "sluice_async_requests_total",
            &["event=\"accepted\""]
        ),
        f64::from(accepted)
    );
    assert!(process.logged("cannot make a request durable"));
}

/// `n` POSTs of a 200-byte body to `url` from `clients` concurrent
/// keep-alive clients, each answered `202`: every accept's latency,
/// sorted, and the time the whole load took (the async benchmarks).
pub(super) async fn accept_load(
    client: &TestClient,
    url: &str,
    clients: usize,
    n: usize,
) -> (Vec<Duration>, Duration) {
    let body = "x".repeat(200);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..clients {
        let (client, url, body, next) =
            (client.clone(), url.to_string(), body.clone(), next.clone());
        tasks.spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, Ordering::SeqCst) < n {
                let sent = Instant::now();
                let (status, _, _) = post(&client, &url, &body, &[]).await;
                assert_eq!(status, StatusCode::ACCEPTED);
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.extend(done.unwrap());
    }
    let took = started.elapsed();
    latencies.sort();
    (latencies, took)
}
