//! Every value the config loader accepts is one sluice can run with, and
//! every body the admin API is sent gets an answer.
//!
//! The config sweep writes each numeric and duration key with extreme values
//! (0, 1, each bound and one past it, the integer limits, tiny and huge
//! floats, NaN and infinities, zero and enormous durations): a value that is
//! refused must be refused with the file, line, key and allowed range; a
//! value that is accepted must start sluice, which then answers a request,
//! keeps answering its admin listener and takes the same config again on
//! reload. A seeded generator then combines extreme values of several keys
//! at once, the same way.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use sluice::Config;

const FILE: &str = "bounds.toml";

/// A section of the config: its label (what the cases name), its TOML
/// header and its keys.
type Section = (&'static str, String, Vec<(String, String)>);

/// The config's sections. A case overrides or adds one key of one section.
fn sections(backend: SocketAddr, dead: SocketAddr) -> Vec<Section> {
    let kv = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    vec![
        (
            "server",
            "[server]".into(),
            kv(&[("listen", "\"127.0.0.1:0\""), ("workers", "1")]),
        ),
        (
            "admin",
            "[admin]".into(),
            kv(&[("listen", "\"127.0.0.1:0\"")]),
        ),
        (
            "log",
            "[log]".into(),
            kv(&[("level", "\"off\""), ("access_log", "false")]),
        ),
        (
            "redis",
            "[redis]".into(),
            vec![
                ("url".into(), format!("\"redis://{dead}\"")),
                ("timeout".into(), "\"20ms\"".into()),
            ],
        ),
        (
            "upstream",
            "[upstreams.api]".into(),
            vec![("targets".into(), format!("[\"{backend}\"]"))],
        ),
        (
            "upstream.passive_health",
            "[upstreams.api.passive_health]".into(),
            vec![],
        ),
        (
            "upstream.active_health",
            "[upstreams.api.active_health]".into(),
            vec![],
        ),
        (
            "upstream.adaptive",
            "[upstreams.api.adaptive]".into(),
            vec![],
        ),
        (
            "route",
            "[[routes]]".into(),
            kv(&[("name", "\"main\""), ("upstream", "\"api\"")]),
        ),
        (
            "route.limit",
            "[routes.limit]".into(),
            kv(&[("rate", "100")]),
        ),
        (
            "route.key_limit",
            "[routes.key_limit]".into(),
            kv(&[("rate", "100")]),
        ),
        ("route.queue", "[routes.queue]".into(), vec![]),
        ("route.reject", "[routes.reject]".into(), vec![]),
        (
            "global",
            "[[routes]]".into(),
            kv(&[
                ("name", "\"global\""),
                ("path_prefix", "\"/global\""),
                ("upstream", "\"api\""),
            ]),
        ),
        (
            "global.limit",
            "[routes.limit]".into(),
            kv(&[
                ("rate", "100"),
                ("backend", "\"redis\""),
                ("on_redis_error", "\"local\""),
            ]),
        ),
    ]
}

/// The config text with `edits` (section label, key, value) applied.
fn config_text(backend: SocketAddr, dead: SocketAddr, edits: &[(&str, &str, String)]) -> String {
    let mut text = String::new();
    for (label, header, mut keys) in sections(backend, dead) {
        for (section, key, value) in edits {
            if *section != label {
                continue;
            }
            match keys.iter_mut().find(|(k, _)| k == key) {
                Some(kv) => kv.1 = value.clone(),
                None => keys.push((key.to_string(), value.clone())),
            }
        }
        text.push_str(&header);
        text.push('\n');
        for (k, v) in keys {
            text.push_str(&format!("{k} = {v}\n"));
        }
        text.push('\n');
    }
    text
}

const INTEGERS: &[&str] = &[
    "-9223372036854775808",
    "-1",
    "0",
    "1",
    "1000",
    "1001",
    "10000",
    "10001",
    "1000000",
    "1000001",
    "1048576",
    "1048577",
    "10000000",
    "10000001",
    "4294967295",
    "4294967296",
    "9223372036854775807",
];

const FLOATS: &[&str] = &[
    "-inf",
    "-1.0",
    "-0.0",
    "0.0",
    "1e-300",
    "1e-14",
    "0.000999",
    "0.001",
    "0.5",
    "1.0",
    "100.0",
    "1000000.0",
    "1000000.5",
    "1e300",
    "inf",
    "nan",
];

const DURATIONS: &[&str] = &[
    "\"0s\"",
    "\"1ns\"",
    "\"1ms\"",
    "\"1s\"",
    "\"24h\"",
    "\"86401s\"",
    "\"18446744073709551615s\"",
    "\"584942417355y\"",
    "\"100000000000000000000s\"",
];

/// Every numeric and duration key: (section label, key, values to try).
fn keys() -> Vec<(&'static str, &'static str, &'static [&'static str])> {
    vec![
        ("server", "header_timeout", DURATIONS),
        ("server", "max_header_bytes", INTEGERS),
        ("server", "max_headers", INTEGERS),
        ("server", "max_body_bytes", INTEGERS),
        ("server", "max_connections", INTEGERS),
        ("server", "backlog", INTEGERS),
        ("server", "idle_timeout", DURATIONS),
        ("server", "request_buffer_bytes", INTEGERS),
        ("server", "client_body_timeout", DURATIONS),
        ("server", "send_timeout", DURATIONS),
        ("server", "workers", &["0", "1", "2", "1024", "1025", "-1"]),
        ("server", "drain_timeout", DURATIONS),
        ("server", "shutdown_delay", DURATIONS),
        ("upstream", "retries", INTEGERS),
        ("upstream", "max_inflight", INTEGERS),
        ("upstream", "connect_timeout", DURATIONS),
        ("upstream", "timeout", DURATIONS),
        ("upstream", "read_timeout", DURATIONS),
        ("upstream", "pool_idle_timeout", DURATIONS),
        ("upstream", "pool_max_idle_per_target", INTEGERS),
        ("upstream.passive_health", "consecutive_failures", INTEGERS),
        ("upstream.passive_health", "base_ejection", DURATIONS),
        ("upstream.passive_health", "max_ejection", DURATIONS),
        ("upstream.active_health", "interval", DURATIONS),
        ("upstream.active_health", "timeout", DURATIONS),
        ("upstream.active_health", "healthy_threshold", INTEGERS),
        ("upstream.active_health", "unhealthy_threshold", INTEGERS),
        ("upstream.adaptive", "min_limit", INTEGERS),
        ("upstream.adaptive", "max_limit", INTEGERS),
        ("upstream.adaptive", "initial_limit", INTEGERS),
        ("upstream.adaptive", "tolerance", FLOATS),
        ("upstream.adaptive", "smoothing", FLOATS),
        ("route.limit", "rate", FLOATS),
        ("route.limit", "burst", INTEGERS),
        ("route.key_limit", "rate", FLOATS),
        ("route.key_limit", "burst", INTEGERS),
        ("route.key_limit", "max_keys", INTEGERS),
        ("route.queue", "capacity", INTEGERS),
        ("route.queue", "timeout", DURATIONS),
        ("route.queue", "aging", DURATIONS),
        (
            "route.reject",
            "status",
            &["0", "399", "400", "599", "600", "65536"],
        ),
        (
            "route.reject",
            "rate_limited_status",
            &["0", "400", "599", "600"],
        ),
        ("redis", "timeout", DURATIONS),
        ("global.limit", "rate", FLOATS),
        ("global.limit", "burst", INTEGERS),
        ("global.limit", "lease", INTEGERS),
        ("global.limit", "expected_instances", INTEGERS),
    ]
}

/// Values of `targets`: weights and per-target caps at and past their bounds.
fn target_values(backend: SocketAddr) -> Vec<String> {
    let mut values: Vec<String> = [
        "weight=1",
        "weight=10000",
        "weight=10001",
        "weight=4294967295",
        "weight=4294967296",
        "max_inflight=1",
        "max_inflight=1048576",
        "max_inflight=1048577",
        "max_inflight=9223372036854775807",
        "max_inflight=18446744073709551616",
    ]
    .iter()
    .map(|option| format!("[\"{backend} {option}\"]"))
    .collect();
    // Weights that add up past the bound only together.
    values.push(format!(
        "[\"{backend} weight=5000\", \"{backend} weight=5000\"]"
    ));
    values.push(format!(
        "[\"{backend} weight=5000\", \"{backend} weight=5001\"]"
    ));
    values
}

/// What happened to one config.
enum Verdict {
    Refused,
    Served,
}

/// Parses `text`; a refusal must name the file, a line, the key and (for a
/// value out of range) its bounds. An accepted config must start, answer a
/// request through the proxy and on the admin listener, and reload.
async fn try_config(client: &TestClient, text: &str, case: &str, key: &str) -> Verdict {
    let config = match Config::parse(text, Path::new(FILE)) {
        Ok(config) => config,
        Err(err) => {
            let shown = err.to_string();
            assert!(
                shown.starts_with(&format!("{FILE}:")) && shown.contains(&format!("`{key}")),
                "{case}: the error names neither the file nor the key: {shown}"
            );
            return Verdict::Refused;
        }
    };
    let sluice = TestSluice::start(&config).await;
    let path = if key.starts_with("routes[1]") {
        "/global/x"
    } else {
        "/x"
    };
    let url = format!("http://{}{path}", sluice.proxy_addr());
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(get_request(&url, &[])),
    )
    .await
    .unwrap_or_else(|_| panic!("{case}: no answer within 10 s"));
    match answer {
        Ok(response) => {
            let status = response.status();
            let body = response.into_body().collect().await;
            assert!(body.is_ok(), "{case}: the body broke off ({status})");
        }
        Err(err) => panic!("{case}: the proxy dropped the request: {err:?}"),
    }
    for probe in ["/healthz", "/readyz"] {
        let seen = get(client, &format!("http://{}{probe}", sluice.admin_addr())).await;
        assert_eq!(seen.status, StatusCode::OK, "{case}: {probe}");
    }
    sluice
        .try_reload(&config)
        .unwrap_or_else(|err| panic!("{case}: the same config does not reload: {err}"));
    let seen = get(client, &format!("http://{}/healthz", sluice.admin_addr())).await;
    assert_eq!(seen.status, StatusCode::OK, "{case}: after the reload");
    Verdict::Served
}

/// The dotted key a section's key has in error messages.
fn full_key(section: &str, key: &str) -> String {
    let prefix = match section {
        "upstream" => "upstreams.api".to_string(),
        s if s.starts_with("upstream.") => format!("upstreams.api.{}", &s["upstream.".len()..]),
        "route" => "routes[0]".into(),
        s if s.starts_with("route.") => format!("routes[0].{}", &s["route.".len()..]),
        s if s.starts_with("global.") => format!("routes[1].{}", &s["global.".len()..]),
        s => s.to_string(),
    };
    format!("{prefix}.{key}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_extreme_value_starts_and_serves() {
    let backend = Backend::start(Duration::ZERO).await;
    let dead = dead_addr().await;
    let client = client();
    let (mut served, mut refused) = (0, 0);
    let mut cases: Vec<(&str, &str, String)> = Vec::new();
    for (section, key, values) in keys() {
        for value in values {
            cases.push((section, key, value.to_string()));
        }
    }
    for value in target_values(backend.addr) {
        cases.push(("upstream", "targets", value));
    }
    for (section, key, value) in cases {
        let case = format!("{section} {key} = {value}");
        let text = config_text(backend.addr, dead, &[(section, key, value.clone())]);
        let key = full_key(section, key);
        match try_config(&client, &text, &case, &key).await {
            Verdict::Served => served += 1,
            Verdict::Refused => refused += 1,
        }
    }
    // Both sides of the bounds were reached.
    eprintln!("extreme values: {served} configs served, {refused} refused");
    assert!(
        served > 100 && refused > 100,
        "served {served}, refused {refused}"
    );
}

/// A small deterministic generator (xorshift64*), so a failure names a seed
/// that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[(self.next() % items.len() as u64) as usize]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_combinations_of_extreme_values_start_and_serve_when_accepted() {
    let backend = Backend::start(Duration::ZERO).await;
    let dead = dead_addr().await;
    let client = client();
    // The values each key accepts on its own; the combinations find what
    // only goes wrong together.
    let accepted: Vec<(&str, &str, Vec<&str>)> = keys()
        .into_iter()
        .map(|(section, key, values)| {
            let alone = values
                .iter()
                .copied()
                .filter(|v| {
                    let text = config_text(backend.addr, dead, &[(section, key, v.to_string())]);
                    Config::parse(&text, Path::new(FILE)).is_ok()
                })
                .collect();
            (section, key, alone)
        })
        .collect();
    let mut served = 0;
    for seed in 1..=128u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let edits: Vec<(&str, &str, String)> = (0..3 + rng.next() % 4)
            .map(|_| {
                let (section, key, values) = rng.pick(&accepted);
                (*section, *key, rng.pick(values).to_string())
            })
            .collect();
        let case = format!("seed {seed}: {edits:?}");
        let text = config_text(backend.addr, dead, &edits);
        // The key of an error may be any of the edited ones (or one they
        // clash with); that it names the file and a key is checked above.
        let config = Config::parse(&text, Path::new(FILE));
        if let Err(err) = &config {
            let shown = err.to_string();
            assert!(shown.starts_with(&format!("{FILE}:")), "{case}: {shown}");
            continue;
        }
        let key = if edits.iter().all(|(s, _, _)| s.starts_with("global")) {
            "routes[1]"
        } else {
            "routes[0]"
        };
        if let Verdict::Served = try_config(&client, &text, &case, key).await {
            served += 1;
        }
    }
    eprintln!("random combinations: {served} of 128 configs served");
    assert!(served >= 32, "only {served} random configs were accepted");
}

#[test]
fn out_of_range_values_name_file_line_key_and_range() {
    let backend: SocketAddr = "127.0.0.1:9000".parse().unwrap();
    let dead: SocketAddr = "127.0.0.1:1".parse().unwrap();
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "route.limit",
            "rate",
            "1e-14",
            "from 0.001 to 1000000, got 0.00000000000001",
        ),
        ("route.key_limit", "rate", "1e-300", "from 0.001 to 1000000"),
        (
            "route.limit",
            "rate",
            "nan",
            "from 0.001 to 1000000, got NaN",
        ),
        (
            "route.limit",
            "burst",
            "4294967295",
            "must be from 1 to 1000000, got 4294967295",
        ),
        (
            "server",
            "max_connections",
            "9223372036854775807",
            "must be from 1 to 1048576",
        ),
        (
            "server",
            "max_headers",
            "1000000",
            "must be from 1 to 1000, got 1000000",
        ),
        (
            "server",
            "max_header_bytes",
            "1048577",
            "must be from 8192 to 1048576",
        ),
        (
            "upstream",
            "max_inflight",
            "9223372036854775807",
            "must be from 1 to 1048576",
        ),
        (
            "upstream",
            "pool_max_idle_per_target",
            "1048577",
            "must be from 0 to 1048576",
        ),
        (
            "route.queue",
            "timeout",
            "\"18446744073709551615s\"",
            "must be at most 1day",
        ),
        (
            "route.queue",
            "capacity",
            "1000001",
            "must be from 0 to 1000000",
        ),
        (
            "route.key_limit",
            "max_keys",
            "10000001",
            "must be from 1 to 10000000",
        ),
        (
            "upstream.passive_health",
            "consecutive_failures",
            "10001",
            "must be from 0 to 10000",
        ),
        (
            "upstream.active_health",
            "healthy_threshold",
            "4294967295",
            "must be from 1 to 10000",
        ),
        (
            "server",
            "drain_timeout",
            "\"86401s\"",
            "must be at most 1day, got 1day 1s",
        ),
        (
            "upstream",
            "connect_timeout",
            "\"0s\"",
            "must be greater than 0 (and at most 1day)",
        ),
        (
            "upstream",
            "targets",
            "[\"127.0.0.1:9000 weight=4294967295\"]",
            "weight must be from 1 to 10000",
        ),
        (
            "upstream",
            "targets",
            "[\"127.0.0.1:9000 weight=9000\", \"127.0.0.1:9001 weight=1001\"]",
            "add up to at most 10000",
        ),
    ];
    for (section, key, value, message) in cases {
        let text = config_text(backend, dead, &[(section, key, value.to_string())]);
        let err = Config::parse(&text, Path::new(FILE)).expect_err(value);
        let shown = err.to_string();
        let line = text
            .lines()
            .position(|l| l.starts_with(&format!("{key} = {value}")))
            .unwrap()
            + 1;
        let key = if *key == "targets" && value.contains("9001") {
            "upstreams.api.targets[1]".to_string()
        } else if *key == "targets" {
            "upstreams.api.targets[0]".to_string()
        } else {
            full_key(section, key)
        };
        assert!(
            shown.starts_with(&format!("{FILE}:{line}:")),
            "{section}.{key} = {value}: {shown}"
        );
        assert!(shown.contains(&format!("key `{key}`")), "{shown}");
        assert!(shown.contains(message), "{shown}");
    }
}

// --- the admin API ---------------------------------------------------------

const TOKEN: &str = "adm1n-t0ken";

/// Sends an admin request; `Err` when the connection broke off instead of
/// an answer.
async fn admin_call(
    client: &TestClient,
    admin: SocketAddr,
    method: Method,
    path: &str,
    body: Vec<u8>,
) -> Result<(StatusCode, Bytes), String> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{admin}{path}"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|err| format!("{err:?}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|err| format!("{err:?}"))?
        .to_bytes();
    Ok((status, body))
}

fn admin_config(backend: SocketAddr) -> Config {
    let mut config = config(&[backend]);
    config.admin.token = Some(TOKEN.into());
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_override_below_the_bound_is_refused_and_reloads_keep_working() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = admin_config(backend.addr);
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let admin = sluice.admin_addr();
    let put = |body: &str| {
        admin_call(
            &client,
            admin,
            Method::PUT,
            "/admin/routes/main/rate",
            body.as_bytes().to_vec(),
        )
    };
    for (body, bound) in [
        (r#"{"rate":1e-300,"ttl":"1m"}"#, "from 0.001 to 1000000"),
        (r#"{"rate":1e-14,"ttl":"1m"}"#, "from 0.001 to 1000000"),
        (r#"{"rate":1e7,"ttl":"1m"}"#, "from 0.001 to 1000000"),
        (
            r#"{"rate":5,"burst":4294967295,"ttl":"1m"}"#,
            "from 1 to 1000000",
        ),
        (r#"{"rate":5,"burst":0,"ttl":"1m"}"#, "from 1 to 1000000"),
    ] {
        let (status, text) = put(body).await.unwrap_or_else(|e| panic!("{body}: {e}"));
        let text = String::from_utf8_lossy(&text);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {text}");
        assert!(text.contains(bound), "{body}: {text}");
    }
    // The bounds themselves are accepted, and a reload with the override in
    // force builds the route again.
    let (status, _) = put(r#"{"rate":0.001,"burst":1000000,"ttl":"1m"}"#)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    sluice.try_reload(&config).expect("reload");
    let (status, text) = admin_call(&client, admin, Method::GET, "/admin/routes/main", vec![])
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let route: serde_json::Value = serde_json::from_slice(&text).unwrap();
    assert_eq!(route["effective_rate"], 0.001);
    // The override's burst lets requests through at once.
    let seen = get(&client, &format!("http://{}/x", sluice.proxy_addr())).await;
    assert_eq!(seen.status, StatusCode::OK);
}

/// JSON-ish bodies: the fields with extreme values, wrong types, broken
/// syntax and raw bytes.
fn admin_body(rng: &mut Rng) -> Vec<u8> {
    const RATES: &[&str] = &[
        "0",
        "-1",
        "1e-300",
        "1e-14",
        "0.000999",
        "0.001",
        "1",
        "1000000",
        "1000000.5",
        "1e300",
        "1e400",
        "\"nan\"",
        "\"inf\"",
        "null",
        "true",
        "[]",
        "{}",
        "\"5\"",
    ];
    const BURSTS: &[&str] = &[
        "0",
        "1",
        "-1",
        "1000000",
        "1000001",
        "4294967295",
        "4294967296",
        "18446744073709551616",
        "1.5",
        "null",
        "\"1\"",
    ];
    const TTLS: &[&str] = &[
        "\"0s\"",
        "\"1ns\"",
        "\"1m\"",
        "\"24h\"",
        "\"24h 1ns\"",
        "\"18446744073709551615s\"",
        "\"584942417355y\"",
        "\"\"",
        "\"-1s\"",
        "1",
        "null",
        "\"1 fortnight\"",
    ];
    match rng.next() % 6 {
        0 => (0..rng.next() % 64).map(|_| rng.next() as u8).collect(),
        1 => b"{\"rate\": ".repeat((rng.next() % 5000) as usize),
        _ => {
            let mut fields = Vec::new();
            if !rng.next().is_multiple_of(8) {
                fields.push(format!("\"rate\":{}", rng.pick(RATES)));
            }
            if rng.next().is_multiple_of(2) {
                fields.push(format!("\"burst\":{}", rng.pick(BURSTS)));
            }
            if !rng.next().is_multiple_of(8) {
                fields.push(format!("\"ttl\":{}", rng.pick(TTLS)));
            }
            if rng.next().is_multiple_of(10) {
                fields.push("\"extra\":1".into());
            }
            format!("{{{}}}", fields.join(",")).into_bytes()
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_admin_body_gets_an_answer_and_sluice_keeps_serving() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = admin_config(backend.addr);
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let admin = sluice.admin_addr();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    let endpoints = [
        (Method::PUT, "/admin/routes/main/rate"),
        (Method::PUT, "/admin/routes/main/rate"),
        (Method::PUT, "/admin/routes/main/rate"),
        (Method::POST, "/admin/routes/main/pause"),
        (Method::POST, "/admin/routes/main/resume"),
        (Method::DELETE, "/admin/routes/main/rate"),
        (Method::PUT, "/admin/routes/nope/rate"),
        (Method::PATCH, "/admin/routes/main"),
    ];
    for i in 0..256 {
        let (method, path) = rng.pick(&endpoints).clone();
        let body = admin_body(&mut rng);
        let shown = String::from_utf8_lossy(&body)
            .chars()
            .take(120)
            .collect::<String>();
        let (status, _) = admin_call(&client, admin, method.clone(), path, body)
            .await
            .unwrap_or_else(|err| panic!("#{i} {method} {path} {shown:?}: no answer: {err}"));
        assert!(
            status.is_success() || status.is_client_error(),
            "#{i} {method} {path} {shown:?}: {status}"
        );
        if i % 32 == 0 {
            sluice.try_reload(&config).expect("reload");
        }
    }
    // Back to the configured rate, unpaused: the proxy serves and reloads.
    for (method, path) in [
        (Method::DELETE, "/admin/routes/main/rate"),
        (Method::POST, "/admin/routes/main/resume"),
    ] {
        let (status, _) = admin_call(&client, admin, method, path, vec![])
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    sluice.try_reload(&config).expect("reload");
    let seen = get(&client, &format!("http://{}/x", sluice.proxy_addr())).await;
    assert_eq!(seen.status, StatusCode::OK);
}
