//! What a config file says is what is read: every key set away from its
//! default, the defaults of what is left out, and the rendering reads back.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice::config::{
    ActiveHealth, AdaptiveConfig, Balance, ClassConfig, ClassMatch, Config, ConfigError,
    Discipline, Fairness, KeyLimitConfig, KeyPart, LimitBackend, LogFormat, OnRedisError,
    PassiveHealth, RedisConfig, RedisLimitConfig, ServerTls, TargetConfig, UpstreamTls,
};

use super::*;

#[test]
fn base_config_is_valid() {
    let cfg = Config::parse(BASE, Path::new(FILE)).expect("BASE parses");
    assert_eq!(cfg.routes.len(), 2);
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
    assert_eq!(api.read_timeout, Duration::from_secs(60));
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

#[test]
fn pool_config_reads_every_new_key() {
    let cfg = Config::parse(POOL, Path::new(FILE)).unwrap_or_else(|e| panic!("{e}"));
    // Relative paths are taken from the config file's directory ("conf/").
    let conf = std::env::current_dir().expect("cwd").join("conf");
    assert_eq!(
        cfg.server.tls,
        Some(ServerTls::new(
            conf.join("certs/proxy.pem"),
            PathBuf::from("/etc/sluice/proxy.key")
        ))
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
