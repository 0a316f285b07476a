//! The config contract seen from outside: every rejected file names the file,
//! the exact line and the dotted key; the shipped example loads; defaults fill in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice::config::{
    ActiveHealth, AdaptiveConfig, Balance, ClassConfig, ClassMatch, Config, ConfigError,
    Discipline, Fairness, KeyLimitConfig, KeyPart, LimitBackend, LogFormat, OnRedisError,
    PassiveHealth, RedisConfig, RedisLimitConfig, ServerTls, TargetConfig, UpstreamTls,
};

const FILE: &str = "conf/flash-sale.toml";

/// A valid config. Tests edit single lines of it and assert line numbers, so
/// keep in mind: 2 `listen`, 4 `[upstreams.api]`, 5 `targets`, 7 first
/// `[[routes]]`, 8 its `name`, 10 its `upstream`, 12 `[routes.limit]`, 13 `rate`,
/// 14 `burst`, 16 `[routes.queue]`, 18 queue `timeout`, 20 second `[[routes]]`,
/// 21 its `name`, 22 its `upstream`.
const BASE: &str = r#"[server]
listen = "127.0.0.1:8080"

[upstreams.api]
targets = ["127.0.0.1:9000"]

[[routes]]
name = "seckill"
path_prefix = "/seckill"
upstream = "api"

[routes.limit]
rate = 200
burst = 20

[routes.queue]
capacity = 10000
timeout = "2s"

[[routes]]
name = "default"
upstream = "api"
"#;

/// A valid config using every key of per-key limits, fair queueing and
/// priority classes, each set away from its default. Line numbers that tests
/// rely on: 2 `trusted_proxies`, 10 `key`, 15 limit `dry_run`, 17
/// `[routes.key_limit]`, 18 its `rate`, 19 `burst`, 20 `max_keys`, 21 `dry_run`,
/// 25 queue `timeout`, 26 `discipline`, 27 `lifo_threshold`, 28 `fairness`,
/// 29 `aging`, 34 `rate_limited_status`, 36/41/45 the three `[[routes.classes]]`
/// (37/42/46 their names), 38 `header`, 39 `values`, 43 `path_prefix`,
/// 47 `methods`, 49 second `[[routes]]`.
const FAIR: &str = r#"[server]
trusted_proxies = ["10.0.0.0/8", "127.0.0.1", "::1/128"]

[upstreams.api]
targets = ["127.0.0.1:9000"]

[[routes]]
name = "seckill"
upstream = "api"
key = ["client_ip", "header:X-Api-Key"]

[routes.limit]
rate = 200
burst = 20
dry_run = true

[routes.key_limit]
rate = 5
burst = 10
max_keys = 5000
dry_run = true

[routes.queue]
capacity = 10000
timeout = "2s"
discipline = "adaptive_lifo"
lifo_threshold = "750ms"
fairness = "per_key"
aging = "500ms"

[routes.reject]
status = 503
retry_after = true
rate_limited_status = 420

[[routes.classes]]
name = "vip"
header = "X-Tier"
values = ["gold", "vip"]

[[routes.classes]]
name = "checkout"
path_prefix = "/seckill/checkout"

[[routes.classes]]
name = "writes"
methods = ["POST", "PUT"]

[[routes]]
name = "default"
upstream = "api"
key = "path"
"#;

/// A valid config using every key of target options, balancing, health
/// checks, adaptive concurrency and TLS, each set away from its default. Line
/// numbers that tests rely on: 4 `[server.tls]`, 5 `cert`, 6 `key`, 9 `targets`,
/// 10 `balance`, 11 `retries`, 12 `http2`, 13 `max_inflight`, 15
/// `[upstreams.api.passive_health]`, 16-18 its keys, 20
/// `[upstreams.api.active_health]`, 21-25 its keys, 27
/// `[upstreams.api.adaptive]`, 28-32 its keys, 34 `[upstreams.api.tls]`, 35
/// `ca`, 36 `server_name`, 42 the empty `[upstreams.legacy.tls]`.
const POOL: &str = r#"[server]
listen = "127.0.0.1:8080"

[server.tls]
cert = "certs/proxy.pem"
key = "/etc/sluice/proxy.key"

[upstreams.api]
targets = ["127.0.0.1:9000 weight=3 max_inflight=50", "127.0.0.1:9001"]
balance = "p2c_ewma"
retries = 2
http2 = true
max_inflight = 100

[upstreams.api.passive_health]
consecutive_failures = 3
base_ejection = "2s"
max_ejection = "30s"

[upstreams.api.active_health]
path = "/ready"
interval = "10s"
timeout = "500ms"
healthy_threshold = 1
unhealthy_threshold = 4

[upstreams.api.adaptive]
min_limit = 5
max_limit = 80
initial_limit = 10
tolerance = 2.0
smoothing = 0.5

[upstreams.api.tls]
ca = "ca/upstream.pem"
server_name = "api.internal"

[upstreams.legacy]
targets = ["10.0.0.7:8080"]
balance = "least_inflight"

[upstreams.legacy.tls]

[[routes]]
name = "default"
upstream = "api"
"#;

/// `base` with one exact piece replaced (which must occur exactly once).
fn edit_in(base: &str, piece: &str, replacement: &str) -> String {
    assert_eq!(
        base.matches(piece).count(),
        1,
        "{piece:?} must occur once in the base config"
    );
    base.replacen(piece, replacement, 1)
}

/// BASE with one exact line replaced (which must exist exactly once).
fn edit(line: &str, replacement: &str) -> String {
    edit_in(BASE, line, replacement)
}

/// FAIR with one exact piece replaced.
fn fair(piece: &str, replacement: &str) -> String {
    edit_in(FAIR, piece, replacement)
}

/// POOL with one exact piece replaced.
fn pool(piece: &str, replacement: &str) -> String {
    edit_in(POOL, piece, replacement)
}

/// Parses `src`, expects an `Invalid` error and checks the line, the key and
/// that the rendered message leads with the file name and line.
#[track_caller]
fn assert_error(src: &str, line: usize, key: &str) -> String {
    let err = Config::parse(src, Path::new(FILE)).expect_err("config should be rejected");
    let shown = err.to_string();
    match &err {
        ConfigError::Invalid {
            path,
            line: l,
            key: k,
            ..
        } => {
            assert_eq!(path, Path::new(FILE));
            assert_eq!((*l, k.as_str()), (line, key), "{shown}");
        }
        other => panic!("expected ConfigError::Invalid, got {other:?}"),
    }
    assert!(shown.contains("flash-sale.toml"), "{shown}");
    let prefix = format!("{FILE}:{line}:");
    assert!(shown.starts_with(&prefix), "{shown}");
    assert!(shown.contains(&format!("key `{key}`: ")), "{shown}");
    shown
}

#[test]
fn base_config_is_valid() {
    let cfg = Config::parse(BASE, Path::new(FILE)).expect("BASE parses");
    assert_eq!(cfg.routes.len(), 2);
}

#[test]
fn syntax_error() {
    let src = edit("[routes.limit]", "[routes.limit");
    assert_error(&src, 12, "routes[0].limit");
    let src = edit("rate = 200", "rate = ");
    assert_error(&src, 13, "routes[0].limit.rate");
}

#[test]
fn unknown_key_top_level() {
    let src = format!("listen = \"127.0.0.1:8080\"\n{BASE}");
    let shown = assert_error(&src, 1, "listen");
    assert!(shown.contains("unknown field"), "{shown}");
}

#[test]
fn unknown_key_in_route_limit() {
    let src = edit("burst = 20", "burts = 20");
    let shown = assert_error(&src, 14, "routes[0].limit.burts");
    assert!(shown.contains("unknown field `burts`"), "{shown}");
}

#[test]
fn unknown_key_in_second_route() {
    let src = edit("name = \"default\"", "name = \"default\"\nprefix = \"/\"");
    assert_error(&src, 22, "routes[1].prefix");
}

#[test]
fn bad_duration() {
    let src = edit("timeout = \"2s\"", "timeout = \"2 seconds later\"");
    let shown = assert_error(&src, 18, "routes[0].queue.timeout");
    assert!(shown.contains("2 seconds later"), "{shown}");
}

#[test]
fn bad_address() {
    let src = edit("listen = \"127.0.0.1:8080\"", "listen = \"localhost:8080\"");
    assert_error(&src, 2, "server.listen");
}

#[test]
fn route_names_missing_upstream() {
    let src = edit(
        "name = \"default\"\nupstream = \"api\"",
        "name = \"default\"\nupstream = \"apl\"",
    );
    let shown = assert_error(&src, 22, "routes[1].upstream");
    assert!(shown.contains("\"apl\""), "{shown}");
}

#[test]
fn zero_rate() {
    let src = edit("rate = 200", "rate = 0");
    assert_error(&src, 13, "routes[0].limit.rate");
}

#[test]
fn negative_rate() {
    let src = edit("rate = 200", "rate = -0.5");
    assert_error(&src, 13, "routes[0].limit.rate");
}

#[test]
fn zero_burst() {
    let src = edit("burst = 20", "burst = 0");
    assert_error(&src, 14, "routes[0].limit.burst");
}

#[test]
fn zero_queue_timeout() {
    let src = edit("timeout = \"2s\"", "timeout = \"0s\"");
    assert_error(&src, 18, "routes[0].queue.timeout");
}

#[test]
fn duplicate_route_name() {
    let src = edit("name = \"default\"", "name = \"seckill\"");
    let shown = assert_error(&src, 21, "routes[1].name");
    assert!(
        shown.contains("line 8"),
        "should point back at the first use: {shown}"
    );
}

#[test]
fn missing_required_key() {
    // The second route loses its upstream: the error points at its [[routes]] header.
    let src = edit(
        "name = \"default\"\nupstream = \"api\"\n",
        "name = \"default\"\n",
    );
    let shown = assert_error(&src, 20, "routes[1].upstream");
    assert!(shown.contains("missing field `upstream`"), "{shown}");
}

#[test]
fn empty_targets() {
    let src = edit("targets = [\"127.0.0.1:9000\"]", "targets = []");
    assert_error(&src, 5, "upstreams.api.targets");
}

#[test]
fn target_without_port() {
    let src = edit(
        "targets = [\"127.0.0.1:9000\"]",
        "targets = [\n  \"127.0.0.1:9000\",\n  \"127.0.0.1\",\n]",
    );
    assert_error(&src, 7, "upstreams.api.targets[1]");
}

#[test]
fn example_config_loads() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml");
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.source, path);
    assert_eq!(cfg.server.listen, addr("127.0.0.1:8080"));
    assert_eq!(cfg.admin.listen, addr("127.0.0.1:9090"));
    let api = &cfg.upstreams["api"];
    assert_eq!(api.targets[0].addr.as_str(), "127.0.0.1:9000");
    assert_eq!(api.balance, Balance::LeastInflight);
    assert_eq!(api.retries, 1);
    assert!(!api.http2);
    assert_eq!(api.passive_health, PassiveHealth::default());
    assert_eq!(
        api.active_health,
        Some(ActiveHealth {
            path: "/healthz".into(),
            interval: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            healthy_threshold: 2.try_into().expect("not zero"),
            unhealthy_threshold: 3.try_into().expect("not zero"),
        })
    );
    // Shown commented out only.
    assert_eq!(api.adaptive, None);
    assert_eq!(api.tls, None);
    assert_eq!(cfg.server.tls, None);

    let names: Vec<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["seckill", "default"]);
    let seckill = &cfg.routes[0];
    assert_eq!(seckill.path_prefix, "/seckill");
    let limit = seckill.limit.expect("seckill is rate limited");
    assert_eq!((limit.rate, limit.burst.get()), (200.0, 20));
    assert_eq!(seckill.queue.capacity, 10000);
    assert_eq!(seckill.queue.timeout, Duration::from_secs(2));
    assert!(cfg.server.trusted_proxies.is_empty());
    assert_eq!(seckill.key, [KeyPart::ClientIp]);
    assert!(!limit.dry_run);
    let key_limit = seckill.key_limit.expect("seckill has a per-key limit");
    assert_eq!(
        (
            key_limit.rate,
            key_limit.burst.get(),
            key_limit.max_keys.get(),
            key_limit.dry_run
        ),
        (5.0, 10, 100_000, false)
    );
    assert_eq!(seckill.queue.discipline, Discipline::Fifo);
    assert_eq!(seckill.queue.fairness, Fairness::PerKey);
    assert_eq!(seckill.queue.aging, Duration::from_secs(1));
    assert_eq!(seckill.reject.rate_limited_status.as_u16(), 429);
    let classes: Vec<(&str, &ClassMatch)> = seckill
        .classes
        .iter()
        .map(|c| (c.name.as_str(), &c.matcher))
        .collect();
    assert_eq!(
        classes,
        [
            (
                "vip",
                &ClassMatch::Header {
                    name: http::HeaderName::from_static("x-tier"),
                    values: vec!["gold".into()],
                }
            ),
            (
                "checkout",
                &ClassMatch::PathPrefix("/seckill/checkout".into())
            ),
        ]
    );
    let default = &cfg.routes[1];
    assert_eq!(default.path_prefix, "/");
    let limit = default.limit.expect("default is rate limited");
    assert_eq!((limit.rate, limit.burst.get()), (1000.0, 100));
    assert_eq!(default.key_limit, None);
    assert!(default.classes.is_empty());
    assert_eq!(default.queue.fairness, Fairness::None);

    // What the example documents is what the program renders back.
    let again = Config::parse(&cfg.to_toml(), &path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, cfg);
}

#[test]
fn minimal_config_gets_defaults() {
    let src = "[upstreams.api]\ntargets = [\"10.0.0.1:80\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"api\"\n";
    let cfg = Config::parse(src, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(cfg.server.listen, addr("127.0.0.1:8080"));
    assert_eq!(cfg.server.header_timeout, Duration::from_secs(10));
    assert_eq!(cfg.server.max_header_bytes, 32768);
    assert_eq!(cfg.server.max_headers, 100);
    assert_eq!(cfg.server.workers, None);
    assert_eq!(cfg.server.drain_timeout, Duration::from_secs(30));
    assert_eq!(cfg.admin.listen, addr("127.0.0.1:9090"));
    assert_eq!(cfg.log.format, LogFormat::Text);
    assert_eq!(cfg.log.level, "info");
    assert!(cfg.log.access_log);

    let api = &cfg.upstreams["api"];
    assert_eq!(api.name, "api");
    assert_eq!(api.max_inflight.get(), 256);
    assert_eq!(api.connect_timeout, Duration::from_secs(1));
    assert_eq!(api.timeout, Duration::from_secs(30));
    assert_eq!(api.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(api.pool_max_idle_per_target, 128);

    let route = &cfg.routes[0];
    assert_eq!(route.host, None);
    assert_eq!(route.path_prefix, "/");
    assert!(route.methods.is_empty());
    assert_eq!(route.limit, None);
    assert_eq!(route.queue.capacity, 1000);
    assert_eq!(route.queue.timeout, Duration::from_secs(1));
    assert_eq!(route.reject.status, http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(route.reject.retry_after);

    // Defaults of an omitted [routes.limit] table member.
    let src = src.replace(
        "upstream = \"api\"",
        "upstream = \"api\"\nlimit = { rate = 2.5 }",
    );
    let cfg = Config::parse(&src, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    let limit = cfg.routes[0].limit.expect("limit");
    assert_eq!((limit.rate, limit.burst.get()), (2.5, 1));
}

#[test]
fn load_reports_unreadable_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/does-not-exist.toml");
    let err = Config::load(&path).expect_err("missing file");
    assert!(matches!(err, ConfigError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("does-not-exist.toml"), "{err}");
}

// --- per-key limits, fair queueing, priority classes ------------------------

#[test]
fn fair_config_reads_every_new_key() {
    let cfg = Config::parse(FAIR, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    let nets: Vec<String> = cfg
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]);

    let seckill = &cfg.routes[0];
    assert_eq!(
        seckill.key,
        [
            KeyPart::ClientIp,
            KeyPart::Header(http::HeaderName::from_static("x-api-key"))
        ]
    );
    assert!(seckill.limit.expect("limit").dry_run);
    assert_eq!(
        seckill.key_limit,
        Some(KeyLimitConfig {
            rate: 5.0,
            burst: 10.try_into().expect("not zero"),
            max_keys: 5000.try_into().expect("not zero"),
            dry_run: true,
        })
    );
    let queue = seckill.queue;
    assert_eq!(
        queue.discipline,
        Discipline::AdaptiveLifo {
            threshold: Duration::from_millis(750)
        }
    );
    assert_eq!(queue.fairness, Fairness::PerKey);
    assert_eq!(queue.aging, Duration::from_millis(500));
    assert_eq!(seckill.reject.rate_limited_status.as_u16(), 420);
    assert_eq!(
        seckill.classes,
        [
            ClassConfig {
                name: "vip".into(),
                // Header names are lower-cased.
                matcher: ClassMatch::Header {
                    name: http::HeaderName::from_static("x-tier"),
                    values: vec!["gold".into(), "vip".into()],
                },
            },
            ClassConfig {
                name: "checkout".into(),
                matcher: ClassMatch::PathPrefix("/seckill/checkout".into()),
            },
            ClassConfig {
                name: "writes".into(),
                matcher: ClassMatch::Methods(vec![http::Method::POST, http::Method::PUT]),
            },
        ]
    );
    assert_eq!(cfg.routes[1].key, [KeyPart::Path]);
    assert!(cfg.routes[1].classes.is_empty());
}

#[test]
fn fair_config_round_trips() {
    let cfg = Config::parse(FAIR, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    let rendered = cfg.to_toml();
    let again = Config::parse(&rendered, Path::new(FILE))
        .unwrap_or_else(|e| panic!("rendered config does not parse: {e}\n{rendered}"));
    assert_eq!(again, cfg, "{rendered}");
    assert_eq!(again.to_toml(), rendered);
    for expected in [
        "trusted_proxies = [\"10.0.0.0/8\", \"127.0.0.1/32\", \"::1/128\"]",
        "key = [\"client_ip\", \"header:x-api-key\"]",
        "key = [\"path\"]",
        "[routes.key_limit]",
        "discipline = \"adaptive_lifo\"\nlifo_threshold = \"750ms\"",
        "[[routes.classes]]\nname = \"vip\"\nheader = \"x-tier\"",
    ] {
        assert!(
            rendered.contains(expected),
            "{expected:?} not in\n{rendered}"
        );
    }

    // The default threshold (half the timeout) is rendered explicitly.
    let src = fair("lifo_threshold = \"750ms\"\n", "");
    let cfg = Config::parse(&src, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.routes[0].queue.discipline,
        Discipline::AdaptiveLifo {
            threshold: Duration::from_secs(1)
        }
    );
    let rendered = cfg.to_toml();
    assert!(rendered.contains("lifo_threshold = \"1s\""), "{rendered}");
    assert_eq!(Config::parse(&rendered, Path::new(FILE)).ok(), Some(cfg));
}

#[test]
fn bad_trusted_proxy() {
    let src = fair("\"::1/128\"", "\"::1/129\"");
    assert_error(&src, 2, "server.trusted_proxies[2]");
    let src = fair("\"10.0.0.0/8\"", "\"10.0.0.1/8\"");
    let shown = assert_error(&src, 2, "server.trusted_proxies[0]");
    assert!(shown.contains("\"10.0.0.0/8\""), "{shown}");
}

#[test]
fn unknown_key_part() {
    let src = fair("\"header:X-Api-Key\"", "\"cookie:session\"");
    let shown = assert_error(&src, 10, "routes[0].key[1]");
    assert!(
        shown.contains("\"client_ip\", \"path\" or \"header:NAME\""),
        "{shown}"
    );
    // The single-string form has no index.
    let src = fair("key = \"path\"", "key = \"ip\"");
    assert_error(&src, 52, "routes[1].key");
}

#[test]
fn invalid_header_name_in_key() {
    let src = fair("\"header:X-Api-Key\"", "\"header:X Api Key\"");
    assert_error(&src, 10, "routes[0].key[1]");
}

#[test]
fn empty_key_list() {
    let src = fair("key = [\"client_ip\", \"header:X-Api-Key\"]", "key = []");
    assert_error(&src, 10, "routes[0].key");
}

#[test]
fn duplicate_key_part() {
    // Header names compare lower-cased.
    let src = fair(
        "\"header:X-Api-Key\"]",
        "\"header:X-Api-Key\", \"header:x-api-key\"]",
    );
    let shown = assert_error(&src, 10, "routes[0].key[2]");
    assert!(shown.contains("routes[0].key[1]"), "{shown}");
}

#[test]
fn key_limit_rate_not_positive() {
    assert_error(
        &fair("rate = 5", "rate = 0"),
        18,
        "routes[0].key_limit.rate",
    );
    assert_error(
        &fair("rate = 5", "rate = nan"),
        18,
        "routes[0].key_limit.rate",
    );
}

#[test]
fn key_limit_zero_burst() {
    assert_error(
        &fair("burst = 10", "burst = 0"),
        19,
        "routes[0].key_limit.burst",
    );
}

#[test]
fn key_limit_zero_max_keys() {
    assert_error(
        &fair("max_keys = 5000", "max_keys = 0"),
        20,
        "routes[0].key_limit.max_keys",
    );
}

#[test]
fn lifo_threshold_without_adaptive_lifo() {
    let src = fair("discipline = \"adaptive_lifo\"", "discipline = \"fifo\"");
    let shown = assert_error(&src, 27, "routes[0].queue.lifo_threshold");
    assert!(shown.contains("adaptive_lifo"), "{shown}");
    // Without any discipline (the default is fifo) too.
    let src = fair("discipline = \"adaptive_lifo\"\n", "");
    assert_error(&src, 26, "routes[0].queue.lifo_threshold");
}

#[test]
fn lifo_threshold_not_below_timeout() {
    let src = fair("lifo_threshold = \"750ms\"", "lifo_threshold = \"2s\"");
    let shown = assert_error(&src, 27, "routes[0].queue.lifo_threshold");
    assert!(
        shown.contains("less than the queue timeout (2s)"),
        "{shown}"
    );
}

#[test]
fn zero_lifo_threshold() {
    let src = fair("lifo_threshold = \"750ms\"", "lifo_threshold = \"0ms\"");
    assert_error(&src, 27, "routes[0].queue.lifo_threshold");
}

#[test]
fn zero_aging() {
    assert_error(
        &fair("aging = \"500ms\"", "aging = \"0s\""),
        29,
        "routes[0].queue.aging",
    );
}

#[test]
fn unknown_discipline() {
    let src = fair("discipline = \"adaptive_lifo\"", "discipline = \"lifo\"");
    let shown = assert_error(&src, 26, "routes[0].queue.discipline");
    assert!(shown.contains("\"fifo\" or \"adaptive_lifo\""), "{shown}");
}

#[test]
fn unknown_fairness() {
    let src = fair("fairness = \"per_key\"", "fairness = \"fair\"");
    let shown = assert_error(&src, 28, "routes[0].queue.fairness");
    assert!(shown.contains("\"none\" or \"per_key\""), "{shown}");
}

#[test]
fn rate_limited_status_out_of_range() {
    let src = fair("rate_limited_status = 420", "rate_limited_status = 200");
    assert_error(&src, 34, "routes[0].reject.rate_limited_status");
    let src = fair("rate_limited_status = 420", "rate_limited_status = 600");
    assert_error(&src, 34, "routes[0].reject.rate_limited_status");
}

#[test]
fn class_missing_name() {
    // Like any missing key, the error points at the table header.
    let src = fair("name = \"checkout\"\n", "");
    let shown = assert_error(&src, 41, "routes[0].classes[1].name");
    assert!(shown.contains("missing field `name`"), "{shown}");
}

#[test]
fn duplicate_class_name() {
    let src = fair("name = \"checkout\"", "name = \"vip\"");
    let shown = assert_error(&src, 42, "routes[0].classes[1].name");
    assert!(shown.contains("line 37"), "{shown}");
}

#[test]
fn class_named_default() {
    let src = fair("name = \"checkout\"", "name = \"default\"");
    assert_error(&src, 42, "routes[0].classes[1].name");
}

#[test]
fn class_without_matcher() {
    let src = fair("path_prefix = \"/seckill/checkout\"\n", "");
    assert_error(&src, 41, "routes[0].classes[1]");
}

#[test]
fn class_with_two_matchers() {
    let src = fair(
        "path_prefix = \"/seckill/checkout\"",
        "path_prefix = \"/seckill/checkout\"\nmethods = [\"POST\"]",
    );
    let shown = assert_error(&src, 44, "routes[0].classes[1].methods");
    assert!(
        shown.contains("already has `path_prefix` (line 43)"),
        "{shown}"
    );
}

#[test]
fn class_values_without_header() {
    let src = fair(
        "path_prefix = \"/seckill/checkout\"",
        "path_prefix = \"/seckill/checkout\"\nvalues = [\"x\"]",
    );
    assert_error(&src, 44, "routes[0].classes[1].values");
}

#[test]
fn class_header_with_empty_or_missing_values() {
    let src = fair("values = [\"gold\", \"vip\"]", "values = []");
    assert_error(&src, 39, "routes[0].classes[0].values");
    let src = fair("values = [\"gold\", \"vip\"]\n", "");
    assert_error(&src, 38, "routes[0].classes[0].values");
}

#[test]
fn class_invalid_header_name() {
    let src = fair("header = \"X-Tier\"", "header = \"X Tier\"");
    assert_error(&src, 38, "routes[0].classes[0].header");
}

#[test]
fn too_many_classes() {
    let extra: String = (0..6)
        .map(|i| format!("[[routes.classes]]\nname = \"c{i}\"\npath_prefix = \"/c{i}\"\n\n"))
        .collect();
    let src = fair(
        "[[routes]]\nname = \"default\"",
        &format!("{extra}[[routes]]\nname = \"default\""),
    );
    // Classes 3..=7 are fine; the ninth (index 8) starts at line 49 + 5 * 4.
    let shown = assert_error(&src, 69, "routes[0].classes[8]");
    assert!(shown.contains("at most 8"), "{shown}");
}

#[test]
fn class_path_prefix_without_slash() {
    let src = fair(
        "path_prefix = \"/seckill/checkout\"",
        "path_prefix = \"checkout\"",
    );
    assert_error(&src, 43, "routes[0].classes[1].path_prefix");
}

#[test]
fn path_prefixes_must_be_normal_paths() {
    // Requests are matched after normalisation, so these could never match.
    for (prefix, normal) in [
        ("/seckill//x", "/seckill/x"),
        ("/./seckill", "/seckill"),
        ("/%73eckill", "/seckill"),
    ] {
        let src = edit(
            "path_prefix = \"/seckill\"",
            &format!("path_prefix = \"{prefix}\""),
        );
        let shown = assert_error(&src, 9, "routes[0].path_prefix");
        assert!(shown.contains(&format!("write {normal:?}")), "{shown}");
    }
    let src = edit("path_prefix = \"/seckill\"", "path_prefix = \"/../x\"");
    let shown = assert_error(&src, 9, "routes[0].path_prefix");
    assert!(shown.contains("above the root"), "{shown}");
    let src = fair(
        "path_prefix = \"/seckill/checkout\"",
        "path_prefix = \"/seckill//checkout\"",
    );
    assert_error(&src, 43, "routes[0].classes[1].path_prefix");
}

#[test]
fn upgrades_default_to_websocket_and_are_checked() {
    let cfg = Config::parse(BASE, Path::new(FILE)).unwrap();
    assert_eq!(cfg.routes[0].upgrades, ["websocket"]);
    let src = edit(
        "upstream = \"api\"\n\n[routes.limit]",
        "upstream = \"api\"\nupgrades = [\"WebSocket\", \"foo\"]\n\n[routes.limit]",
    );
    let cfg = Config::parse(&src, Path::new(FILE)).unwrap();
    assert_eq!(cfg.routes[0].upgrades, ["websocket", "foo"]);
    let src = edit(
        "upstream = \"api\"\n\n[routes.limit]",
        "upstream = \"api\"\nupgrades = []\n\n[routes.limit]",
    );
    let cfg = Config::parse(&src, Path::new(FILE)).unwrap();
    assert!(cfg.routes[0].upgrades.is_empty());
    for (list, index, why) in [
        ("[\"h2c\"]", 0, "never tunnelled"),
        ("[\"websocket\", \"H2C\"]", 1, "never tunnelled"),
        ("[\"websocket/13\"]", 0, "not a protocol name"),
        ("[\"\"]", 0, "not a protocol name"),
        ("[\"foo\", \"FOO\"]", 1, "duplicate"),
    ] {
        let src = edit(
            "upstream = \"api\"\n\n[routes.limit]",
            &format!("upstream = \"api\"\nupgrades = {list}\n\n[routes.limit]"),
        );
        let shown = assert_error(&src, 11, &format!("routes[0].upgrades[{index}]"));
        assert!(shown.contains(why), "{shown}");
    }
}

#[test]
fn class_bad_method() {
    let src = fair(
        "methods = [\"POST\", \"PUT\"]",
        "methods = [\"POST\", \"put\"]",
    );
    assert_error(&src, 47, "routes[0].classes[2].methods[1]");
}

#[test]
fn unknown_key_in_class() {
    let src = fair(
        "methods = [\"POST\", \"PUT\"]",
        "methods = [\"POST\", \"PUT\"]\nweight = 2",
    );
    let shown = assert_error(&src, 48, "routes[0].classes[2].weight");
    assert!(shown.contains("unknown field `weight`"), "{shown}");
}

#[test]
fn unknown_key_in_key_limit() {
    let src = fair("max_keys = 5000", "max_key = 5000");
    assert_error(&src, 20, "routes[0].key_limit.max_key");
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}

// --- target options, balancing, health, adaptive concurrency, TLS -----------

#[test]
fn pool_config_reads_every_new_key() {
    let cfg = Config::parse(POOL, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    // Relative paths are taken from the config file's directory ("conf/").
    let conf = std::env::current_dir().expect("cwd").join("conf");
    assert_eq!(
        cfg.server.tls,
        Some(ServerTls {
            cert: conf.join("certs/proxy.pem"),
            key: PathBuf::from("/etc/sluice/proxy.key"),
        })
    );
    let api = &cfg.upstreams["api"];
    assert_eq!(
        api.targets,
        [
            TargetConfig {
                addr: http::uri::Authority::from_static("127.0.0.1:9000"),
                weight: 3.try_into().expect("not zero"),
                max_inflight: Some(50.try_into().expect("not zero")),
            },
            TargetConfig::new(http::uri::Authority::from_static("127.0.0.1:9001")),
        ]
    );
    assert_eq!(api.balance, Balance::P2cEwma);
    assert_eq!(api.retries, 2);
    assert!(api.http2);
    assert_eq!(api.max_inflight.get(), 100);
    assert_eq!(
        api.passive_health,
        PassiveHealth {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(2),
            max_ejection: Duration::from_secs(30),
        }
    );
    assert_eq!(
        api.active_health,
        Some(ActiveHealth {
            path: "/ready".into(),
            interval: Duration::from_secs(10),
            timeout: Duration::from_millis(500),
            healthy_threshold: 1.try_into().expect("not zero"),
            unhealthy_threshold: 4.try_into().expect("not zero"),
        })
    );
    assert_eq!(
        api.adaptive,
        Some(AdaptiveConfig {
            min_limit: 5.try_into().expect("not zero"),
            max_limit: 80.try_into().expect("not zero"),
            initial_limit: 10.try_into().expect("not zero"),
            tolerance: 2.0,
            smoothing: 0.5,
        })
    );
    assert_eq!(
        api.tls,
        Some(UpstreamTls {
            ca: Some(conf.join("ca/upstream.pem")),
            server_name: Some("api.internal".into()),
        })
    );
    let legacy = &cfg.upstreams["legacy"];
    assert_eq!(legacy.balance, Balance::LeastInflight);
    assert_eq!(legacy.active_health, None);
    assert_eq!(legacy.adaptive, None);
    // `[upstreams.legacy.tls]` alone turns TLS on.
    assert_eq!(
        legacy.tls,
        Some(UpstreamTls {
            ca: None,
            server_name: None,
        })
    );
}

#[test]
fn pool_config_round_trips() {
    let cfg = Config::parse(POOL, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    let rendered = cfg.to_toml();
    let again = Config::parse(&rendered, Path::new(FILE))
        .unwrap_or_else(|e| panic!("rendered config does not parse: {e}\n{rendered}"));
    assert_eq!(again, cfg, "{rendered}");
    assert_eq!(again.to_toml(), rendered);
    // Resolved paths are absolute, so the rendering reads back the same from
    // another directory too.
    let elsewhere = Config::parse(&rendered, Path::new("/srv/other/sluice.toml"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(elsewhere.server, cfg.server);
    assert_eq!(elsewhere.upstreams, cfg.upstreams);
    for expected in [
        "targets = [\"127.0.0.1:9000 weight=3 max_inflight=50\", \"127.0.0.1:9001\"]\nbalance = \"p2c_ewma\"\nretries = 2\nhttp2 = true\n",
        "[upstreams.api.passive_health]\nconsecutive_failures = 3\nbase_ejection = \"2s\"\nmax_ejection = \"30s\"\n",
        "[upstreams.api.active_health]\npath = \"/ready\"\ninterval = \"10s\"\ntimeout = \"500ms\"\nhealthy_threshold = 1\nunhealthy_threshold = 4\n",
        "[upstreams.api.adaptive]\nmin_limit = 5\nmax_limit = 80\ninitial_limit = 10\ntolerance = 2.0\nsmoothing = 0.5\n",
        "server_name = \"api.internal\"",
        "[upstreams.legacy.tls]\n",
        // Defaults are rendered: passive health always.
        "[upstreams.legacy.passive_health]\nconsecutive_failures = 5\nbase_ejection = \"5s\"\nmax_ejection = \"1m\"\n",
        "key = \"/etc/sluice/proxy.key\"",
    ] {
        assert!(
            rendered.contains(expected),
            "{expected:?} not in\n{rendered}"
        );
    }
    assert!(!rendered.contains("[upstreams.legacy.active_health]"));
    assert!(!rendered.contains("[upstreams.legacy.adaptive]"));
}

#[test]
fn tls_paths_resolve_against_the_config_directory() {
    // As `Config::load("/etc/sluice/s.toml")` would read it.
    let src = pool("cert = \"certs/proxy.pem\"", "cert = \"c.pem\"");
    let cfg =
        Config::parse(&src, Path::new("/etc/sluice/s.toml")).unwrap_or_else(|e| panic!("{e}"));
    let tls = cfg.server.tls.expect("server tls");
    assert_eq!(tls.cert, Path::new("/etc/sluice/c.pem"));
    assert_eq!(tls.key, Path::new("/etc/sluice/proxy.key"));
    assert_eq!(
        cfg.upstreams["api"]
            .tls
            .as_ref()
            .and_then(|t| t.ca.as_deref()),
        Some(Path::new("/etc/sluice/ca/upstream.pem"))
    );

    // Through `load`, with files that do not exist: that is found out when
    // TLS is set up, not here.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-tls-paths");
    std::fs::create_dir_all(&dir).expect("create dir");
    let path = dir.join("sluice.toml");
    std::fs::write(&path, &src).expect("write config");
    let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    let tls = cfg.server.tls.expect("server tls");
    assert_eq!(tls.cert, dir.join("c.pem"));
    assert!(!tls.cert.exists());
}

#[test]
fn target_weight_zero() {
    let src = pool("weight=3", "weight=0");
    let shown = assert_error(&src, 9, "upstreams.api.targets[0]");
    assert!(
        shown.contains("weight must be from 1 to 10000, got 0"),
        "{shown}"
    );
}

#[test]
fn target_weight_not_a_number() {
    let src = pool("weight=3", "weight=x");
    let shown = assert_error(&src, 9, "upstreams.api.targets[0]");
    assert!(shown.contains("weight=x"), "{shown}");
}

#[test]
fn target_max_inflight_zero() {
    let src = pool("\"127.0.0.1:9001\"", "\"127.0.0.1:9001 max_inflight=0\"");
    let shown = assert_error(&src, 9, "upstreams.api.targets[1]");
    assert!(
        shown.contains("max_inflight must be from 1 to 1048576, got 0"),
        "{shown}"
    );
}

#[test]
fn target_unknown_option() {
    let src = pool("weight=3", "foo=1");
    let shown = assert_error(&src, 9, "upstreams.api.targets[0]");
    assert!(shown.contains("unknown option \"foo\""), "{shown}");
}

#[test]
fn target_duplicate_option() {
    let src = pool("weight=3", "weight=3 weight=4");
    let shown = assert_error(&src, 9, "upstreams.api.targets[0]");
    assert!(shown.contains("duplicate option \"weight\""), "{shown}");
}

#[test]
fn target_option_without_value() {
    let src = pool("weight=3", "weight");
    let shown = assert_error(&src, 9, "upstreams.api.targets[0]");
    assert!(shown.contains("NAME=VALUE"), "{shown}");
}

#[test]
fn unknown_balance() {
    let src = pool("balance = \"p2c_ewma\"", "balance = \"random\"");
    let shown = assert_error(&src, 10, "upstreams.api.balance");
    assert!(
        shown.contains("\"round_robin\", \"least_inflight\" or \"p2c_ewma\""),
        "{shown}"
    );
}

#[test]
fn retries_out_of_range() {
    let shown = assert_error(
        &pool("retries = 2", "retries = 6"),
        11,
        "upstreams.api.retries",
    );
    assert!(shown.contains("from 0 to 5"), "{shown}");
    assert_error(
        &pool("retries = 2", "retries = -1"),
        11,
        "upstreams.api.retries",
    );
}

#[test]
fn http2_not_a_boolean() {
    assert_error(
        &pool("http2 = true", "http2 = \"yes\""),
        12,
        "upstreams.api.http2",
    );
}

#[test]
fn negative_consecutive_failures() {
    assert_error(
        &pool("consecutive_failures = 3", "consecutive_failures = -1"),
        16,
        "upstreams.api.passive_health.consecutive_failures",
    );
}

#[test]
fn zero_base_ejection() {
    assert_error(
        &pool("base_ejection = \"2s\"", "base_ejection = \"0s\""),
        17,
        "upstreams.api.passive_health.base_ejection",
    );
}

#[test]
fn max_ejection_below_base_ejection() {
    let src = pool("max_ejection = \"30s\"", "max_ejection = \"1s\"");
    let shown = assert_error(&src, 18, "upstreams.api.passive_health.max_ejection");
    assert!(shown.contains("at least base_ejection (2s)"), "{shown}");
    // Against the default max_ejection (60s), the base is blamed.
    let src = pool(
        "base_ejection = \"2s\"\nmax_ejection = \"30s\"",
        "base_ejection = \"2m\"",
    );
    assert_error(&src, 17, "upstreams.api.passive_health.base_ejection");
}

#[test]
fn unknown_key_in_passive_health() {
    let src = pool("consecutive_failures = 3", "failures = 3");
    let shown = assert_error(&src, 16, "upstreams.api.passive_health.failures");
    assert!(shown.contains("unknown field `failures`"), "{shown}");
}

#[test]
fn health_path_without_slash() {
    let src = pool("path = \"/ready\"", "path = \"ready\"");
    let shown = assert_error(&src, 21, "upstreams.api.active_health.path");
    assert!(shown.contains("must start with '/'"), "{shown}");
}

#[test]
fn health_path_not_a_request_path() {
    let src = pool("path = \"/ready\"", "path = \"/ready now\"");
    assert_error(&src, 21, "upstreams.api.active_health.path");
}

#[test]
fn zero_health_interval() {
    assert_error(
        &pool("interval = \"10s\"", "interval = \"0s\""),
        22,
        "upstreams.api.active_health.interval",
    );
}

#[test]
fn zero_health_timeout() {
    assert_error(
        &pool("timeout = \"500ms\"", "timeout = \"0s\""),
        23,
        "upstreams.api.active_health.timeout",
    );
}

#[test]
fn health_timeout_above_interval() {
    let src = pool("timeout = \"500ms\"", "timeout = \"11s\"");
    let shown = assert_error(&src, 23, "upstreams.api.active_health.timeout");
    assert!(
        shown.contains("at most the probe interval (10s)"),
        "{shown}"
    );
    // Against the default timeout (1s), the interval is blamed.
    let src = pool(
        "interval = \"10s\"\ntimeout = \"500ms\"",
        "interval = \"900ms\"",
    );
    assert_error(&src, 22, "upstreams.api.active_health.interval");
}

#[test]
fn zero_health_thresholds() {
    assert_error(
        &pool("healthy_threshold = 1", "healthy_threshold = 0"),
        24,
        "upstreams.api.active_health.healthy_threshold",
    );
    assert_error(
        &pool("unhealthy_threshold = 4", "unhealthy_threshold = 0"),
        25,
        "upstreams.api.active_health.unhealthy_threshold",
    );
}

#[test]
fn unknown_key_in_active_health() {
    let src = pool("path = \"/ready\"", "uri = \"/ready\"");
    assert_error(&src, 21, "upstreams.api.active_health.uri");
}

#[test]
fn zero_adaptive_min_limit() {
    assert_error(
        &pool("min_limit = 5", "min_limit = 0"),
        28,
        "upstreams.api.adaptive.min_limit",
    );
}

#[test]
fn adaptive_max_limit_above_max_inflight() {
    let src = pool("max_limit = 80", "max_limit = 101");
    let shown = assert_error(&src, 29, "upstreams.api.adaptive.max_limit");
    assert!(
        shown.contains("at most the upstream's max_inflight (100)"),
        "{shown}"
    );
}

#[test]
fn adaptive_max_limit_below_min_limit() {
    let src = pool("max_limit = 80", "max_limit = 4");
    let shown = assert_error(&src, 29, "upstreams.api.adaptive.max_limit");
    assert!(shown.contains("at least min_limit (5)"), "{shown}");
}

#[test]
fn adaptive_min_limit_above_default_max_limit() {
    // Without max_limit, the bound is max_inflight (100).
    let src = pool(
        "min_limit = 5\nmax_limit = 80\ninitial_limit = 10\n",
        "min_limit = 101\n",
    );
    let shown = assert_error(&src, 28, "upstreams.api.adaptive.min_limit");
    assert!(shown.contains("max_inflight (100)"), "{shown}");
}

#[test]
fn adaptive_initial_limit_out_of_bounds() {
    let shown = assert_error(
        &pool("initial_limit = 10", "initial_limit = 81"),
        30,
        "upstreams.api.adaptive.initial_limit",
    );
    assert!(
        shown.contains("from min_limit (5) to max_limit (80)"),
        "{shown}"
    );
    assert_error(
        &pool("initial_limit = 10", "initial_limit = 4"),
        30,
        "upstreams.api.adaptive.initial_limit",
    );
}

#[test]
fn adaptive_tolerance_below_one() {
    assert_error(
        &pool("tolerance = 2.0", "tolerance = 0.9"),
        31,
        "upstreams.api.adaptive.tolerance",
    );
    assert_error(
        &pool("tolerance = 2.0", "tolerance = inf"),
        31,
        "upstreams.api.adaptive.tolerance",
    );
}

#[test]
fn adaptive_smoothing_out_of_range() {
    assert_error(
        &pool("smoothing = 0.5", "smoothing = 0"),
        32,
        "upstreams.api.adaptive.smoothing",
    );
    assert_error(
        &pool("smoothing = 0.5", "smoothing = 1.5"),
        32,
        "upstreams.api.adaptive.smoothing",
    );
}

#[test]
fn unknown_key_in_adaptive() {
    let src = pool("tolerance = 2.0", "tolerence = 2.0");
    let shown = assert_error(&src, 31, "upstreams.api.adaptive.tolerence");
    assert!(shown.contains("unknown field `tolerence`"), "{shown}");
}

#[test]
fn empty_upstream_ca() {
    assert_error(
        &pool("ca = \"ca/upstream.pem\"", "ca = \"\""),
        35,
        "upstreams.api.tls.ca",
    );
}

#[test]
fn invalid_upstream_server_name() {
    let src = pool(
        "server_name = \"api.internal\"",
        "server_name = \"*.internal\"",
    );
    let shown = assert_error(&src, 36, "upstreams.api.tls.server_name");
    assert!(shown.contains("\"*.internal\""), "{shown}");
    let src = pool(
        "server_name = \"api.internal\"",
        "server_name = \"api.internal:443\"",
    );
    assert_error(&src, 36, "upstreams.api.tls.server_name");
}

#[test]
fn unknown_key_in_upstream_tls() {
    let src = pool("server_name = \"api.internal\"", "sni = \"api.internal\"");
    assert_error(&src, 36, "upstreams.api.tls.sni");
}

#[test]
fn server_tls_missing_cert() {
    // Like any missing key, the error points at the table header.
    let src = pool("cert = \"certs/proxy.pem\"\n", "");
    let shown = assert_error(&src, 4, "server.tls.cert");
    assert!(shown.contains("missing field `cert`"), "{shown}");
}

#[test]
fn server_tls_missing_key() {
    let src = pool("key = \"/etc/sluice/proxy.key\"\n", "");
    assert_error(&src, 4, "server.tls.key");
}

#[test]
fn server_tls_empty_cert() {
    let src = pool("cert = \"certs/proxy.pem\"", "cert = \"\"");
    let shown = assert_error(&src, 5, "server.tls.cert");
    assert!(shown.contains("must not be empty"), "{shown}");
}

#[test]
fn unknown_key_in_server_tls() {
    let src = pool(
        "key = \"/etc/sluice/proxy.key\"",
        "keyfile = \"/etc/sluice/proxy.key\"",
    );
    assert_error(&src, 6, "server.tls.keyfile");
}

/// The example's commented-out `[server.tls]`, `[upstreams.api.adaptive]` and
/// `[upstreams.api.tls]` tables, and its target options, are valid as shown.
#[test]
fn example_commented_tables_load_when_uncommented() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml");
    let text = std::fs::read_to_string(&path).expect("example");
    let mut out = String::new();
    let mut in_table = false;
    for line in text.lines() {
        let content = line.strip_prefix("# ").unwrap_or(line);
        let header = matches!(
            content,
            "[server.tls]" | "[upstreams.api.adaptive]" | "[upstreams.api.tls]"
        );
        let key_value = content.split_once(" = ").is_some_and(|(k, _)| {
            !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
        });
        if header {
            in_table = true;
        } else if !line.starts_with('#') {
            in_table = false;
        }
        if let Some(targets) = content.strip_prefix("e.g. targets = ") {
            out.push_str(&format!("# {content}\n"));
            out.push_str(&format!("targets = {targets}\n"));
            continue;
        }
        if line.starts_with("targets = [\"127.0.0.1:9000\"]") {
            continue;
        }
        if in_table && (header || key_value) {
            out.push_str(content);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    let cfg = Config::parse(&out, &path).unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert_eq!(
        cfg.server.tls,
        Some(ServerTls {
            cert: "/etc/sluice/cert.pem".into(),
            key: "/etc/sluice/key.pem".into(),
        })
    );
    let api = &cfg.upstreams["api"];
    assert_eq!(
        api.targets
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        ["10.0.0.1:9000 weight=3 max_inflight=50", "10.0.0.2:9000"]
    );
    assert_eq!(
        api.adaptive,
        Some(AdaptiveConfig {
            min_limit: 1.try_into().expect("not zero"),
            max_limit: 256.try_into().expect("not zero"),
            initial_limit: 20.try_into().expect("not zero"),
            tolerance: 1.5,
            smoothing: 0.2,
        })
    );
    assert_eq!(
        api.tls,
        Some(UpstreamTls {
            ca: Some("/etc/sluice/upstream-ca.pem".into()),
            server_name: Some("api.internal".into()),
        })
    );
    // Only what was shown commented out changed.
    let original = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.routes, original.routes);
    assert_eq!(api.passive_health, original.upstreams["api"].passive_health);
}

#[test]
fn workers_is_a_thread_count() {
    let src = edit(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nworkers = 0",
    );
    let shown = assert_error(&src, 3, "server.workers");
    assert!(shown.contains("must be from 1 to 1024, got 0"), "{shown}");
    let src = edit(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nworkers = 3",
    );
    let cfg = Config::parse(&src, Path::new(FILE)).expect("workers = 3");
    assert_eq!(cfg.server.workers, Some(3));
    assert!(cfg.to_toml().contains("workers = 3"));
}

/// BASE with its seckill route made global and a `[redis]` section at the end.
/// Lines: 12 `[routes.limit]`, 15 `backend`, 16 `lease`, 17 `on_redis_error`,
/// 18 `expected_instances`, 28 `[redis]`, 29 `url`, 30 `key_prefix`, 31 `timeout`.
fn global() -> String {
    let src = edit(
        "burst = 20\n",
        "burst = 20\nbackend = \"redis\"\nlease = 4\non_redis_error = \"allow\"\nexpected_instances = 6\n",
    );
    format!(
        "{src}\n[redis]\nurl = \"redis://redis.internal:6379/1\"\nkey_prefix = \"flash\"\ntimeout = \"80ms\"\n"
    )
}

#[test]
fn global_limit_reads_and_round_trips() {
    let cfg = Config::parse(&global(), Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.redis,
        Some(RedisConfig {
            url: "redis://redis.internal:6379/1".into(),
            password: None,
            key_prefix: "flash".into(),
            timeout: Duration::from_millis(80),
        })
    );
    let limit = cfg.routes[0].limit.expect("seckill is rate limited");
    assert_eq!(
        (limit.rate, limit.burst.get(), limit.dry_run),
        (200.0, 20, false)
    );
    assert_eq!(
        limit.backend,
        LimitBackend::Redis(RedisLimitConfig {
            lease: 4.try_into().expect("not zero"),
            on_error: OnRedisError::Allow,
            expected_instances: 6.try_into().expect("not zero"),
        })
    );
    let rendered = cfg.to_toml();
    let again = Config::parse(&rendered, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again, cfg);
    assert_eq!(again.to_toml(), rendered);
}

#[test]
fn redis_backend_without_redis_section() {
    let src = edit("burst = 20\n", "burst = 20\nbackend = \"redis\"\n");
    let shown = assert_error(&src, 15, "routes[0].limit.backend");
    assert!(shown.contains("[redis] section with `url`"), "{shown}");
    assert!(shown.starts_with(&format!("{FILE}:15:11: ")), "{shown}");
}

#[test]
fn redis_only_key_with_local_backend() {
    let src = edit("burst = 20\n", "burst = 20\nlease = 10\n");
    let shown = assert_error(&src, 15, "routes[0].limit.lease");
    assert!(
        shown.contains("only allowed with backend = \"redis\""),
        "{shown}"
    );
}

#[test]
fn unknown_backend() {
    let src = global().replace("backend = \"redis\"", "backend = \"memcached\"");
    let shown = assert_error(&src, 15, "routes[0].limit.backend");
    assert!(shown.contains("expected \"local\" or \"redis\""), "{shown}");
}

#[test]
fn global_dry_run() {
    let src = global().replace("lease = 4\n", "dry_run = true\n");
    let shown = assert_error(&src, 16, "routes[0].limit.dry_run");
    assert!(shown.contains("local-only"), "{shown}");
}

#[test]
fn lease_and_instances_out_of_range() {
    assert_error(
        &global().replace("lease = 4", "lease = 5000"),
        16,
        "routes[0].limit.lease",
    );
    assert_error(
        &global().replace("expected_instances = 6", "expected_instances = -1"),
        18,
        "routes[0].limit.expected_instances",
    );
    assert_error(
        &global().replace(
            "on_redis_error = \"allow\"",
            "on_redis_error = \"fail_open\"",
        ),
        17,
        "routes[0].limit.on_redis_error",
    );
}

#[test]
fn redis_section_errors() {
    let shown = assert_error(
        &global().replace("redis://redis.internal", "rediss://redis.internal"),
        29,
        "redis.url",
    );
    assert!(shown.contains("TLS to Redis is not supported"), "{shown}");
    let shown = assert_error(
        &global().replace("redis://redis.internal:6379/1", "tcp://redis.internal"),
        29,
        "redis.url",
    );
    assert!(shown.contains("invalid Redis URL"), "{shown}");
    assert_error(
        &global().replace("url = \"redis://redis.internal:6379/1\"\n", ""),
        28,
        "redis.url",
    );
    assert_error(
        &global().replace("key_prefix = \"flash\"", "key_prefix = \"flash sale\""),
        30,
        "redis.key_prefix",
    );
    assert_error(
        &global().replace("timeout = \"80ms\"", "timeout = \"1m\""),
        31,
        "redis.timeout",
    );
    let shown = assert_error(
        &global().replace("timeout = \"80ms\"", "timeout = \"80ms\"\ndb = 2"),
        32,
        "redis.db",
    );
    assert!(shown.contains("unknown field `db`"), "{shown}");
}

#[test]
fn unused_redis_section_is_allowed() {
    let src = format!("{BASE}\n[redis]\nurl = \"redis+unix:///run/redis.sock\"\n");
    let cfg = Config::parse(&src, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.redis.map(|r| (r.key_prefix, r.timeout)),
        Some(("sluice".to_string(), Duration::from_millis(50)))
    );
    assert!(
        cfg.routes
            .iter()
            .all(|r| r.limit.is_none_or(|l| l.backend == LimitBackend::Local))
    );
}

/// The example file's commented-out global route and `[redis]`, uncommented,
/// make a valid config: the example shows what loads.
#[test]
fn example_global_route_loads_when_uncommented() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml");
    let src = std::fs::read_to_string(&path).expect("example readable");
    let start = src.find("# A global limit").expect("the global example");
    let is_toml = |line: &str| {
        line.starts_with('[')
            || line.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
    };
    let tail: Vec<&str> = src[start..]
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_toml(rest) => rest,
            _ => line,
        })
        .collect();
    let uncommented = format!("{}{}\n", &src[..start], tail.join("\n"));
    let cfg = Config::parse(&uncommented, &path).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let checkout = cfg.routes.last().expect("a route");
    assert_eq!(checkout.name, "checkout");
    let limit = checkout.limit.expect("checkout is rate limited");
    assert_eq!(
        limit.backend,
        LimitBackend::Redis(RedisLimitConfig {
            lease: 5.try_into().expect("not zero"),
            on_error: OnRedisError::Local,
            expected_instances: 3.try_into().expect("not zero"),
        })
    );
    assert_eq!(
        cfg.redis,
        Some(RedisConfig {
            url: "redis://127.0.0.1:6379/0".into(),
            password: None,
            key_prefix: "sluice".into(),
            timeout: Duration::from_millis(50),
        })
    );
}

// --- secrets: the admin token and the Redis password -------------------------

/// BASE with `admin` lines after `[admin]` (line 2 on) and a `[redis]`
/// section (after BASE) with `redis` lines.
fn with_secrets(admin: &str, redis: &str) -> String {
    format!("[admin]\n{admin}\n{BASE}\n[redis]\n{redis}\n")
}

fn secret_file(name: &str, content: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-secrets");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[test]
fn secrets_are_read_from_files_trimmed_and_never_shown() {
    let token = secret_file("token", "t0ken-from-file\r\n");
    let password = secret_file("password", "pass word\n");
    let src = with_secrets(
        &format!("token_file = \"{}\"", token.display()),
        &format!(
            "url = \"redis://127.0.0.1:6379\"\npassword_file = \"{}\"",
            password.display()
        ),
    );
    let cfg = Config::parse(&src, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cfg.admin.token.as_ref().unwrap().expose(),
        "t0ken-from-file"
    );
    let redis = cfg.redis.as_ref().unwrap();
    assert_eq!(redis.password.as_ref().unwrap().expose(), "pass word");
    let shown = format!("{cfg:?}\n{}", cfg.to_toml());
    assert!(!shown.contains("t0ken-from-file"), "{shown}");
    assert!(!shown.contains("pass word"), "{shown}");

    // Inline secrets are redacted in Debug too (the URL's password as well).
    let src = with_secrets(
        "token = \"inline-t0ken\"",
        "url = \"redis://u:inline-pw@127.0.0.1:6379\"",
    );
    let cfg = Config::parse(&src, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    let shown = format!("{cfg:?}\n{:#?}\n{}", cfg, cfg.to_toml());
    assert!(!shown.contains("inline-t0ken"), "{shown}");
    assert!(!shown.contains("inline-pw"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
}

#[test]
fn secret_errors_name_file_line_key_and_never_the_secret() {
    let token = secret_file("token-ok", "t0ken\n");
    let empty = secret_file("empty", "\n");
    let spaced = secret_file("spaced", "two words\n");
    let missing = Path::new(env!("CARGO_TARGET_TMPDIR")).join("config-secrets/missing");
    let url = "url = \"redis://127.0.0.1:6379\"";
    let long = "x".repeat(257);
    let cases: Vec<(String, String, usize, &str, String)> = vec![
        (
            format!("token = \"a\"\ntoken_file = \"{}\"", token.display()),
            url.into(),
            3,
            "admin.token_file",
            "admin.token is already set (line 2)".into(),
        ),
        (
            format!("token_env = \"HOME\"\ntoken_file = \"{}\"", token.display()),
            url.into(),
            3,
            "admin.token_file",
            "admin.token_env is already set (line 2)".into(),
        ),
        (
            format!("token_file = \"{}\"", missing.display()),
            url.into(),
            2,
            "admin.token_file",
            format!("cannot read {}", missing.display()),
        ),
        (
            "token_file = \"/dev/null\"".into(),
            url.into(),
            2,
            "admin.token_file",
            "/dev/null is not a regular file".into(),
        ),
        (
            format!("token_file = \"{}\"", empty.display()),
            url.into(),
            2,
            "admin.token_file",
            "is empty".into(),
        ),
        (
            format!("token_file = \"{}\"", spaced.display()),
            url.into(),
            2,
            "admin.token_file",
            "must be 1 to 256 bytes of visible ASCII without spaces".into(),
        ),
        (
            format!("token = \"{long}\""),
            url.into(),
            2,
            "admin.token",
            "must be 1 to 256 bytes".into(),
        ),
        (
            "token = \"<redacted>\"".into(),
            url.into(),
            2,
            "admin.token",
            "is the placeholder `sluice check` prints".into(),
        ),
        (
            "token_env = \"SLUICE_TEST_SURELY_UNSET_VARIABLE\"".into(),
            url.into(),
            2,
            "admin.token_env",
            "$SLUICE_TEST_SURELY_UNSET_VARIABLE is not set".into(),
        ),
        (
            "listen = \"127.0.0.1:9090\"".into(),
            format!(
                "url = \"redis://:in-url@127.0.0.1:6379\"\npassword_file = \"{}\"",
                token.display()
            ),
            28,
            "redis.password_file",
            "the url already holds a password".into(),
        ),
        (
            "listen = \"127.0.0.1:9090\"".into(),
            format!(
                "{url}\npassword_file = \"{}\"\npassword_env = \"HOME\"",
                token.display()
            ),
            29,
            "redis.password_env",
            "redis.password_file is already set (line 28)".into(),
        ),
        (
            "listen = \"127.0.0.1:9090\"".into(),
            "url = \"redis://:%3Credacted%3E@127.0.0.1:6379\"".into(),
            27,
            "redis.url",
            "is the placeholder".into(),
        ),
    ];
    for (admin, redis, line, key, message) in cases {
        let src = with_secrets(&admin, &redis);
        let shown = assert_error(&src, line, key);
        assert!(shown.contains(&message), "{shown}");
        for secret in ["t0ken", "two words", "in-url", &long] {
            assert!(!shown.contains(secret), "{shown}");
        }
    }
}
