//! The observability files in `dashboards/`, proven against a real Prometheus
//! scraping a real sluice under load: every Grafana panel query runs and
//! returns data, and every alerting rule loads, evaluates and is healthy.
//!
//! Needs the `prometheus` and `promtool` binaries (Debian's `prometheus`
//! package); without them the test fails, saying how to get them.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use bytes::Bytes;
use http::{HeaderName, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use sluice::config::{
    ClassConfig, ClassMatch, Config, KeyLimitConfig, KeyPart, LimitBackend, RedisConfig,
    RedisLimitConfig,
};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// What Grafana's built-in interval variables stand for in the test: scrapes
/// are 1 s apart, so a 10 s window holds about ten samples.
const GRAFANA_BUILTINS: &[(&str, &str)] = &[
    ("${__rate_interval}", "10s"),
    ("$__rate_interval", "10s"),
    ("${__interval}", "5s"),
    ("$__interval", "5s"),
    ("${__range}", "1m"),
    ("$__range", "1m"),
];

/// Metrics that carry a `route` label: queries on them must honour `$route`.
const ROUTE_METRICS: &[&str] = &[
    "sluice_requests_total",
    "sluice_queue_",
    "sluice_route_",
    "sluice_class_",
    "sluice_keys_tracked",
    "sluice_key_evictions_total",
    "sluice_dry_run_limited_total",
    "sluice_async_",
];

/// Load is offered for at most this long, in at most `LOAD_ROUNDS` rounds.
const LOAD_FOR: Duration = Duration::from_secs(15);
const LOAD_ROUNDS: usize = 150;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_panels_and_alert_rules_work_against_a_real_prometheus() {
    let started = Instant::now();
    let prometheus_bin = find_binary("prometheus");
    let promtool_bin = find_binary("promtool");
    let (Some(prometheus_bin), Some(promtool_bin)) = (prometheus_bin, promtool_bin) else {
        panic!(
            "`prometheus` and `promtool` are needed (looked in /usr/bin and on PATH): \
             tests/dashboards.rs checks dashboards/ against a real Prometheus. \
             Run the tests with the README's test command, `.ci/test`, which installs them \
             (Debian package `prometheus`: `apt-get install -y prometheus`)."
        );
    };
    let _serial = serial().await;
    let dashboards = Path::new(MANIFEST_DIR).join("dashboards");
    let alerts_path = dashboards.join("alerts.yml");

    // The files pass Prometheus' own checker.
    promtool(&promtool_bin, &["check", "rules"], &alerts_path).await;
    promtool(
        &promtool_bin,
        &["check", "config"],
        &dashboards.join("prometheus.yml"),
    )
    .await;

    // The dashboard, read and checked for shape before anything starts.
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(dashboards.join("sluice.json")).expect("dashboards/sluice.json"),
    )
    .expect("dashboards/sluice.json is JSON");
    let variables = check_dashboard_shape(&dashboard);
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 20, "only {} panel queries", queries.len());

    // sluice under a mixed load, and Prometheus scraping it every second.
    let backend = Backend::start(Duration::from_millis(20)).await;
    let dead = dead_addr().await;
    let sluice = TestSluice::start(&shaped_config(backend.addr, dead)).await;
    let exported = exported_families(&scrape(&client(), sluice.admin_addr()).await);
    let prometheus = Prometheus::start(&prometheus_bin, sluice.admin_addr(), &alerts_path).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(offer_load(sluice.proxy_addr(), stop.clone()));

    let api = client();
    prometheus.wait_ready(&api).await;
    // Enough scrapes that every rate() has data and every outcome the load
    // produces has been seen.
    let wanted = [
        "count_over_time(up{job=\"sluice\"}[1m]) >= 5".to_string(),
        "sum(rate(sluice_upstream_response_seconds_count[10s])) > 0".to_string(),
        "sum(rate(sluice_key_evictions_total[10s])) > 0".to_string(),
        "sum by (limit) (rate(sluice_dry_run_limited_total[10s])) > 0".to_string(),
        "sum(rate(sluice_redis_calls_total{result=\"ok\"}[10s])) > 0".to_string(),
        "sum(rate(sluice_class_requests_total{class=\"gold\"}[10s])) > 0".to_string(),
        "sum(rate(sluice_async_fsync_seconds_count[10s])) > 0".to_string(),
    ]
    .into_iter()
    .chain(
        [
            "forwarded",
            "rejected_queue_full",
            "rejected_rate_limited",
            "upstream_error",
            "no_route",
        ]
        .map(|o| format!("sum(rate(sluice_requests_total{{outcome=\"{o}\"}}[10s])) > 0")),
    )
    .collect::<Vec<_>>();
    for expr in &wanted {
        prometheus
            .wait_for_data(&api, expr, Duration::from_secs(20))
            .await;
    }

    // Every panel query: valid, on exported metrics only, and returning data.
    let mut failures = Vec::new();
    for (title, expr) in &queries {
        let concrete = substitute(expr, &variables);
        for metric in metric_names(&concrete) {
            if !exported.contains(&family_of(&metric, &exported)) {
                failures.push(format!(
                    "panel {title:?}: `{metric}` is not exported by sluice\n    {expr}"
                ));
            }
        }
        let answer = prometheus.query(&api, &concrete).await;
        if answer["status"] != "success" {
            failures.push(format!(
                "panel {title:?}: query failed: {}\n    {concrete}",
                answer["error"]
            ));
        } else {
            let result = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if result.is_empty() {
                failures.push(format!("panel {title:?}: no data\n    {concrete}"));
            }
            let first = result.first().map(|s| s["value"][1].clone());
            println!(
                "{:>3} series (first {}) {title}: {concrete}",
                result.len(),
                first.unwrap_or_default()
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} panel queries failed:\n{}",
        failures.len(),
        queries.len(),
        failures.join("\n")
    );

    // Every alerting rule: loaded, well labelled, evaluated without error.
    let alert_count = std::fs::read_to_string(&alerts_path)
        .expect("alerts.yml")
        .lines()
        .filter(|l| l.trim_start().starts_with("- alert:"))
        .count();
    let rules = prometheus.evaluated_rules(&api, alert_count).await;
    let mut failures = Vec::new();
    for rule in &rules {
        let name = rule["name"].as_str().unwrap_or("?");
        let expr = rule["query"].as_str().unwrap_or("");
        if rule["type"] != "alerting" {
            failures.push(format!("rule {name}: not an alerting rule"));
        }
        if rule["health"] != "ok" {
            failures.push(format!(
                "rule {name}: health {} ({})\n    {expr}",
                rule["health"], rule["lastError"]
            ));
        }
        if rule["duration"].as_f64().is_none_or(|d| d <= 0.0) {
            failures.push(format!("rule {name}: no `for:`"));
        }
        if !["critical", "warning", "info"]
            .contains(&rule["labels"]["severity"].as_str().unwrap_or(""))
        {
            failures.push(format!(
                "rule {name}: severity {}",
                rule["labels"]["severity"]
            ));
        }
        for annotation in ["summary", "description"] {
            if rule["annotations"][annotation]
                .as_str()
                .is_none_or(|s| s.trim().is_empty())
            {
                failures.push(format!("rule {name}: no {annotation} annotation"));
            }
        }
        let answer = prometheus.query(&api, expr).await;
        if answer["status"] != "success" {
            failures.push(format!(
                "rule {name}: query failed: {}\n    {expr}",
                answer["error"]
            ));
        }
    }
    assert!(failures.is_empty(), "alert rules:\n{}", failures.join("\n"));

    stop.store(true, Ordering::SeqCst);
    let sent = load.await.unwrap();
    drop(prometheus);
    println!(
        "{} panel queries and {} alert rules checked; {sent} requests offered; {:.1?} in all",
        queries.len(),
        rules.len(),
        started.elapsed()
    );
}

/// Four routes on two upstreams, exercising every metric family: a route
/// with a per-key limit and a priority class, an overloaded plain route, a
/// route whose upstream refuses connections, and a dry-run route.
fn shaped_config(backend: SocketAddr, dead: SocketAddr) -> Config {
    let mut config = config(&[backend]);
    let api = config.upstreams["api"].clone();
    config.upstreams.get_mut("api").unwrap().max_inflight = NonZeroUsize::new(16).unwrap();
    let mut broken_upstream = api;
    broken_upstream.name = "broken".into();
    // Never ejected, so it keeps answering 502 for the upstream-error panels.
    broken_upstream.passive_health.consecutive_failures = 0;
    // Named, and discovered through the system's resolver (localhost from
    // /etc/hosts), for the DNS resolution panel; every address it resolves
    // to refuses connections.
    broken_upstream.targets = vec![sluice::config::TargetConfig::new(
        format!("localhost:{}", dead.port()).parse().unwrap(),
    )];
    broken_upstream.discovery = Some(sluice::config::DiscoveryConfig {
        interval: Duration::from_millis(500),
    });
    config
        .upstreams
        .insert("broken".to_string(), broken_upstream);

    let mut checkout = route(
        "checkout",
        "/checkout",
        Some((10.0, 2)),
        10,
        Duration::from_secs(1),
    );
    checkout.key = vec![KeyPart::Header(HeaderName::from_static("x-client"))];
    checkout.key_limit = Some(KeyLimitConfig {
        rate: 2.0,
        burst: NonZeroU32::new(3).unwrap(),
        max_keys: NonZeroUsize::new(8).unwrap(),
        dry_run: false,
    });
    checkout.classes = vec![ClassConfig {
        name: "gold".into(),
        matcher: ClassMatch::Header {
            name: HeaderName::from_static("x-tier"),
            values: vec!["gold".into()],
        },
    }];

    let search = route(
        "search",
        "/search",
        Some((50.0, 5)),
        20,
        Duration::from_millis(500),
    );

    let mut broken = route("broken", "/broken", None, 10, Duration::from_secs(1));
    broken.upstream = "broken".into();

    let mut shadow = route(
        "shadow",
        "/shadow",
        Some((5.0, 1)),
        100,
        Duration::from_secs(2),
    );
    shadow.limit.as_mut().unwrap().dry_run = true;
    shadow.key_limit = Some(KeyLimitConfig {
        rate: 1.0,
        burst: NonZeroU32::new(1).unwrap(),
        max_keys: NonZeroUsize::new(100).unwrap(),
        dry_run: true,
    });

    // Its rate kept in Redis (the test command's shared server).
    let mut global = route(
        "global",
        "/global",
        Some((20.0, 2)),
        20,
        Duration::from_millis(500),
    );
    global.limit.as_mut().unwrap().backend = LimitBackend::Redis(RedisLimitConfig::default());
    config.redis = Some(RedisConfig {
        url: crate::common::redis::shared_url(),
        password: None,
        key_prefix: crate::common::redis::unique_prefix("dashboards"),
        timeout: Duration::from_millis(100),
    });

    // Async: accepted (202), delivered later at 20/s.
    let mut orders = route(
        "orders",
        "/orders",
        Some((20.0, 2)),
        10,
        Duration::from_secs(1),
    );
    orders.upgrades = vec![];
    orders.deferred = Some(sluice::config::AsyncConfig {
        store: sluice::config::AsyncStore::Local,
        deliver_within: Duration::from_secs(60),
        max_attempts: NonZeroU32::new(3).unwrap(),
        capacity: NonZeroUsize::new(10_000).unwrap(),
        keep_response_bytes: 0,
    });
    let journal = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("dashboards-journal-{}", std::process::id()));
    let _fresh = std::fs::remove_dir_all(&journal);
    config.storage.dir = Some(journal);

    // No route on "/": anything else is `no_route`.
    config.routes = vec![checkout, search, broken, shadow, global, orders];
    config
}

/// Offers a mixed load every 100 ms until `stop`, for at most [`LOAD_FOR`]
/// and [`LOAD_ROUNDS`] rounds; returns how many requests it sent. Each round:
/// - checkout: 15 from three heavy keys (over their own limit: 429) and five
///   from fresh keys (evicting idle ones), two of them gold; together over
///   the route's rate, so its queue fills (503);
/// - search: 10, twice its rate (queued, then 503 when full);
/// - broken: 2 (502, connection refused);
/// - shadow: 5, over its dry-run limits (all forwarded, counted);
/// - global: 3, over its Redis-kept limit of 20/s (queued, some 503);
/// - orders: 2 POSTs to the async route (202, delivered later);
/// - one request no route matches (404).
async fn offer_load(proxy: SocketAddr, stop: Arc<AtomicBool>) -> usize {
    let client = client();
    let base = format!("http://{proxy}");
    let deadline = Instant::now() + LOAD_FOR;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut tasks = tokio::task::JoinSet::new();
    let mut sent = 0;
    for round in 0..LOAD_ROUNDS {
        tick.tick().await;
        if stop.load(Ordering::SeqCst) || Instant::now() >= deadline {
            break;
        }
        let mut requests: Vec<(String, Vec<(&str, String)>)> = Vec::new();
        for i in 0..15 {
            let key = format!("heavy-{}", i % 3);
            requests.push((format!("{base}/checkout/buy"), vec![("x-client", key)]));
        }
        for i in 0..5 {
            let mut headers = vec![("x-client", format!("fresh-{round}-{i}"))];
            if i < 2 {
                headers.push(("x-tier", "gold".to_string()));
            }
            requests.push((format!("{base}/checkout/buy"), headers));
        }
        for _ in 0..10 {
            requests.push((format!("{base}/search?q=x"), vec![]));
        }
        for _ in 0..2 {
            requests.push((format!("{base}/broken"), vec![]));
        }
        for _ in 0..5 {
            requests.push((format!("{base}/shadow"), vec![]));
        }
        for _ in 0..3 {
            requests.push((format!("{base}/global"), vec![]));
        }
        for _ in 0..2 {
            requests.push((format!("{base}/orders"), vec![("x-method", "POST".into())]));
        }
        requests.push((format!("{base}/nowhere"), vec![]));
        for (url, headers) in requests {
            let post = headers.iter().any(|(n, _)| *n == "x-method");
            let mut req = if post {
                Request::post(url)
            } else {
                Request::get(url)
            };
            for (name, value) in headers {
                req = req.header(name, value);
            }
            let req = req.body(Full::new(Bytes::new())).unwrap();
            let client = client.clone();
            sent += 1;
            tasks.spawn(async move {
                // Outcomes are read from /metrics; what the client sees does
                // not matter here, and errors must not end the load.
                if let Ok(Ok(response)) =
                    tokio::time::timeout(Duration::from_secs(5), client.request(req)).await
                {
                    let _ = response.into_body().collect().await;
                }
            });
        }
        // Reap finished requests so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    sent
}

/// A Prometheus child process, killed (by its PID) when dropped, even when
/// the test panics.
struct Prometheus {
    child: Child,
    base: String,
    log: PathBuf,
    data: PathBuf,
}

impl Prometheus {
    async fn start(binary: &Path, target: SocketAddr, rules: &Path) -> Prometheus {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("dashboards-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("prometheus data dir");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules:?}\n\
                 scrape_configs:\n  - job_name: sluice\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .expect("prometheus config");
        let port = free_port().await;
        let log = dir.join("prometheus.log");
        let log_file = std::fs::File::create(&log).expect("prometheus log");
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--storage.tsdb.retention.time=1h")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
            data: dir,
        }
    }

    /// The end of Prometheus' log, for failure messages.
    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until `/-/ready` answers 200 and sluice's target is up.
    async fn wait_ready(&self, api: &TestClient) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok((StatusCode::OK, _)) = http_get(api, &format!("{}/-/ready", self.base)).await
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus did not become ready; its log ends:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_for_data(api, "up{job=\"sluice\"} == 1", Duration::from_secs(10))
            .await;
    }

    /// Waits until `expr` returns a non-empty result.
    async fn wait_for_data(&self, api: &TestClient, expr: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let answer = self.query(api, expr).await;
            if answer["data"]["result"]
                .as_array()
                .is_some_and(|r| !r.is_empty())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no data for `{expr}` after {within:?}: {answer}\nPrometheus' log ends:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// An instant query through the HTTP API; the JSON answer, error or not.
    async fn query(&self, api: &TestClient, expr: &str) -> Value {
        let url = format!("{}/api/v1/query?query={}", self.base, percent_encode(expr));
        let (status, body) = http_get(api, &url)
            .await
            .unwrap_or_else(|err| panic!("Prometheus API unreachable: {err}"));
        serde_json::from_str(&body).unwrap_or_else(|err| {
            panic!("Prometheus answered {status} with non-JSON ({err}): {body}")
        })
    }

    /// Every rule loaded, once each has been evaluated at least once.
    async fn evaluated_rules(&self, api: &TestClient, expected: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = http_get(api, &format!("{}/api/v1/rules", self.base))
                .await
                .expect("Prometheus rules API");
            let answer: Value = serde_json::from_str(&body).expect("rules API answers JSON");
            let rules: Vec<Value> = answer["data"]["groups"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .collect();
            let evaluated = rules.iter().all(|r| {
                r["lastEvaluation"]
                    .as_str()
                    .is_some_and(|t| !t.starts_with("0001-"))
            });
            if rules.len() == expected && evaluated {
                return rules;
            }
            assert!(
                Instant::now() < deadline,
                "expected {expected} evaluated rules from alerts.yml, Prometheus has: {answer}\n\
                 Prometheus' log ends:\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// `name` in /usr/bin or on PATH.
fn find_binary(name: &str) -> Option<PathBuf> {
    let fixed = Path::new("/usr/bin").join(name);
    if fixed.is_file() {
        return Some(fixed);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs `promtool <args> <file>` and asserts it succeeds.
async fn promtool(binary: &Path, args: &[&str], file: &Path) {
    let output = tokio::process::Command::new(binary)
        .args(args)
        .arg(file)
        .output()
        .await
        .expect("promtool runs");
    assert!(
        output.status.success(),
        "promtool {} {} failed:\n{}{}",
        args.join(" "),
        file.display(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port on 127.0.0.1 that was free a moment ago (for Prometheus to
/// listen on).
async fn free_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

async fn http_get(client: &TestClient, url: &str) -> Result<(StatusCode, String), String> {
    let req = Request::get(url)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .map_err(|_| format!("{url}: no answer in 5 s"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Checks the dashboard's import-relevant shape; returns the names of its
/// query variables (datasource variables excluded).
fn check_dashboard_shape(dashboard: &Value) -> Vec<String> {
    let schema = dashboard["schemaVersion"].as_u64().unwrap_or(0);
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    let datasource = variables
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource template variable");
    assert_eq!(datasource["query"], "prometheus");
    let ds_ref = format!("${{{}}}", datasource["name"].as_str().unwrap());
    let route = variables
        .iter()
        .find(|v| v["name"] == "route")
        .expect("a `route` template variable");
    assert_eq!(
        route["query"].as_str().or(route["query"]["query"].as_str()),
        Some("label_values(sluice_requests_total, route)")
    );
    assert_eq!(route["multi"], true, "route: multi");
    assert_eq!(route["includeAll"], true, "route: include All");
    for v in variables.iter().filter(|v| v["type"] == "query") {
        assert_eq!(
            v["datasource"]["uid"],
            ds_ref.as_str(),
            "variable {}",
            v["name"]
        );
        if v["includeAll"] == true {
            assert_eq!(
                v["allValue"], ".*",
                "variable {}: All must be a regex",
                v["name"]
            );
        }
    }

    let mut ids = BTreeSet::new();
    for panel in all_panels(dashboard) {
        let title = panel["title"].as_str().unwrap_or("?");
        let id = panel["id"].as_u64().expect("panel id");
        assert!(ids.insert(id), "panel id {id} ({title}) is used twice");
        for key in ["h", "w", "x", "y"] {
            assert!(
                panel["gridPos"][key].is_u64(),
                "panel {title:?}: gridPos.{key}"
            );
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(
            panel["datasource"]["uid"],
            ds_ref.as_str(),
            "panel {title:?}"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for target in targets {
            assert_eq!(
                target["datasource"]["uid"],
                ds_ref.as_str(),
                "panel {title:?}"
            );
            let expr = target["expr"].as_str().expect("expr");
            // Every window is Grafana's rate interval.
            for (_, rest) in expr.match_indices('[').map(|(i, _)| expr.split_at(i)) {
                assert!(
                    rest.starts_with("[$__rate_interval]"),
                    "panel {title:?}: window other than $__rate_interval in {expr}"
                );
            }
            if ROUTE_METRICS.iter().any(|m| expr.contains(m)) {
                assert!(
                    expr.contains("route=~\"$route\""),
                    "panel {title:?}: does not filter on $route: {expr}"
                );
            }
        }
    }
    variables
        .iter()
        .filter(|v| v["type"] != "datasource")
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .collect()
}

/// Panels, including those nested in collapsed rows.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    panels
}

/// (panel title, expr) of every panel target.
fn panel_queries(dashboard: &Value) -> Vec<(String, String)> {
    all_panels(dashboard)
        .into_iter()
        .flat_map(|panel| {
            let title = panel["title"].as_str().unwrap_or("?").to_string();
            panel["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(move |t| Some((title.clone(), t["expr"].as_str()?.to_string())))
        })
        .collect()
}

/// `expr` with Grafana's variables replaced as Grafana would with "All"
/// selected: built-in intervals by durations, every template variable by
/// `.*` (hence the queries' `label=~"$var"`).
fn substitute(expr: &str, variables: &[String]) -> String {
    let mut expr = expr.to_string();
    for (variable, value) in GRAFANA_BUILTINS {
        expr = expr.replace(variable, value);
    }
    let mut names = variables.to_vec();
    // Longest first, so `$route` does not eat the start of `$routes`.
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    for name in &names {
        for form in [
            format!("${{{name}:regex}}"),
            format!("${{{name}}}"),
            format!("[[{name}]]"),
            format!("${name}"),
        ] {
            expr = expr.replace(&form, ".*");
        }
    }
    assert!(
        !expr.contains('$'),
        "unknown Grafana variable left in {expr}"
    );
    expr
}

/// Names of sluice metrics an expression reads.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sluice_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// The family a series name belongs to (`x_bucket` -> `x` for a histogram).
fn family_of(metric: &str, exported: &BTreeSet<String>) -> String {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = metric.strip_suffix(suffix)
            && exported.contains(base)
        {
            return base.to_string();
        }
    }
    metric.to_string()
}

/// Metric families in an exposition, from its `# TYPE` lines.
fn exported_families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}
