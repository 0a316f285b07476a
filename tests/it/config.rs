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

/// The rejected configs in `tests/config/invalid/`, sorted by name.
fn invalid_fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
        .collect();
    files.sort();
    files
}

/// The error a fixture expects: its first line, `# LINE:COLUMN: key `KEY`:
/// MESSAGE`, is the error as shown after the file's path.
fn expected_error(path: &Path) -> String {
    let src = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let first = src.lines().next().unwrap_or_default();
    let expected = first.strip_prefix("# ").unwrap_or_else(|| {
        panic!(
            "{}: first line must be `# LINE:COLUMN: key ...`",
            path.display()
        )
    });
    format!("{}:{expected}", path.display())
}

/// Every config in `tests/config/invalid/` is rejected by the loader with
/// exactly the file:line:column, key and message on its first line.
#[test]
fn invalid_fixtures_are_rejected_as_their_first_line_says() {
    let files = invalid_fixtures();
    assert!(files.len() >= 280, "only {} fixtures", files.len());
    let mut wrong = Vec::new();
    for path in &files {
        let expected = expected_error(path);
        let got = match Config::load(path) {
            Err(err @ ConfigError::Invalid { .. }) => err.to_string(),
            other => format!("{other:?}"),
        };
        if got != expected {
            wrong.push(format!(
                "{}\n  expected {expected}\n  got      {got}",
                path.display()
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {}:\n{}",
        wrong.len(),
        files.len(),
        wrong.join("\n")
    );
}

/// A sample of the fixtures through `sluice check`, as a user meets them:
/// the same line on stderr and exit status 1.
#[test]
fn invalid_fixtures_fail_sluice_check() {
    for path in invalid_fixtures().iter().step_by(23) {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["check", "--config"])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("run sluice check: {e}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{}: {stderr}",
            path.display()
        );
        assert!(
            stderr.contains(&expected_error(path)),
            "{}: {stderr}",
            path.display()
        );
        assert!(output.stdout.is_empty(), "{}", path.display());
    }
}

#[test]
fn base_config_is_valid() {
    let cfg = Config::parse(BASE, Path::new(FILE)).expect("BASE parses");
    assert_eq!(cfg.routes.len(), 2);
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
    // The refused lists are in tests/config/invalid/routes-upgrades--*.
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
    // `workers = 0`: tests/config/invalid/server-workers--must-be-from-1-to-1024.toml
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
