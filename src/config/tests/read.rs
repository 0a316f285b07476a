//! Configs that load: every key read as written, defaults filled in.

use super::*;

#[test]
fn minimal_config_gets_every_default() {
    let cfg = parse(MINIMAL).expect("minimal config parses");
    assert_eq!(cfg.source, Path::new("test.toml"));
    assert_eq!(cfg.server.listen, "127.0.0.1:8080".parse().expect("addr"));
    assert_eq!(cfg.server.header_timeout, Duration::from_secs(10));
    assert_eq!(cfg.server.max_header_bytes, 32768);
    assert_eq!(cfg.server.max_headers, 100);
    assert_eq!(cfg.server.drain_timeout, Duration::from_secs(30));
    assert_eq!(cfg.server.request_buffer_bytes, 16 * 1024);
    assert_eq!(cfg.server.client_body_timeout, Duration::from_secs(10));
    assert_eq!(cfg.server.send_timeout, Duration::from_secs(30));
    assert_eq!(cfg.admin.listen, "127.0.0.1:9090".parse().expect("addr"));
    assert_eq!(cfg.log.format, LogFormat::Text);
    assert_eq!(cfg.log.level, "info");
    assert!(cfg.log.access_log);
    let api = &cfg.upstreams["api"];
    assert_eq!(api.name, "api");
    assert_eq!(
        api.targets,
        vec![TargetConfig::new(Authority::from_static("127.0.0.1:9000"))]
    );
    assert_eq!(api.max_inflight.get(), 256);
    assert_eq!(api.connect_timeout, Duration::from_secs(1));
    assert_eq!(api.timeout, Duration::from_secs(30));
    assert_eq!(api.read_timeout, Duration::from_secs(60));
    assert_eq!(api.pool_idle_timeout, Duration::from_secs(90));
    assert_eq!(api.pool_max_idle_per_target, 128);
    // Balancing, health, adaptive concurrency and TLS.
    assert_eq!(cfg.server.tls, None);
    assert_eq!(api.balance, Balance::RoundRobin);
    assert_eq!(api.retries, 1);
    assert!(!api.http2);
    assert_eq!(api.passive_health, PassiveHealth::default());
    assert_eq!(api.passive_health.consecutive_failures, 5);
    assert_eq!(api.passive_health.base_ejection, Duration::from_secs(5));
    assert_eq!(api.passive_health.max_ejection, Duration::from_secs(60));
    assert_eq!(api.active_health, None);
    assert_eq!(api.adaptive, None);
    assert_eq!(api.tls, None);
    let route = &cfg.routes[0];
    assert_eq!(route.name, "default");
    assert_eq!(route.host, None);
    assert_eq!(route.path_prefix, "/");
    assert!(route.methods.is_empty());
    assert_eq!(route.upstream, "api");
    assert_eq!(route.limit, None);
    assert_eq!(cfg.redis, None);
    assert_eq!(route.queue.capacity, 1000);
    assert_eq!(route.queue.timeout, Duration::from_secs(1));
    assert_eq!(route.reject.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(route.reject.retry_after);
    // The keys for keyed limits, fairness and classes.
    assert!(cfg.server.trusted_proxies.is_empty());
    assert_eq!(route.key, vec![KeyPart::ClientIp]);
    assert_eq!(route.key_limit, None);
    assert!(route.classes.is_empty());
    assert_eq!(route.queue.discipline, Discipline::Fifo);
    assert_eq!(route.queue.fairness, Fairness::None);
    assert_eq!(route.queue.aging, Duration::from_secs(1));
    assert_eq!(route.queue, QueueConfig::new(1000, Duration::from_secs(1)));
    assert_eq!(
        route.reject.rate_limited_status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(route.reject, RejectConfig::default());
    let limited = parse(&with_route_extra(
        "limit = { rate = 1 }
key_limit = { rate = 2 }",
    ))
    .expect("limits parse");
    let route = &limited.routes[0];
    assert!(!route.limit.expect("limit").dry_run);
    assert_eq!(route.limit.expect("limit").backend, LimitBackend::Local);
    assert_eq!(
        route.key_limit,
        Some(KeyLimitConfig {
            rate: 2.0,
            burst: NonZeroU32::MIN,
            max_keys: NonZeroUsize::new(100_000).expect("not zero"),
            dry_run: false,
        })
    );
}

#[test]
fn full_config_is_read_as_written() {
    let cfg = parse(FULL).expect("full config parses");
    assert_eq!(cfg.server.header_timeout, Duration::from_millis(2500));
    assert_eq!(cfg.log.format, LogFormat::Json);
    assert_eq!(cfg.upstreams["api"].targets.len(), 2);
    assert_eq!(
        cfg.upstreams["api"].targets[1]
            .max_inflight
            .map(|n| n.get()),
        Some(7)
    );
    assert_eq!(cfg.upstreams["slow pool"].name, "slow pool");
    let seckill = &cfg.routes[0];
    assert_eq!(seckill.host.as_deref(), Some("*.shop.example.com"));
    assert_eq!(
        seckill.methods,
        vec![
            http::Method::GET,
            http::Method::POST,
            http::Method::from_bytes(b"PURGE").expect("token")
        ]
    );
    let limit = seckill.limit.expect("limit");
    assert_eq!((limit.rate, limit.burst.get()), (0.1, 20));
    assert_eq!(seckill.queue.capacity, 0);
    assert_eq!(seckill.reject.status, StatusCode::TOO_MANY_REQUESTS);
    let slow = &cfg.routes[1];
    assert_eq!(slow.limit.map(|l| l.burst.get()), Some(1));
}

#[test]
fn full_config_reads_keys_limits_queue_and_classes() {
    let cfg = parse(FULL).expect("full config parses");
    let nets: Vec<String> = cfg
        .server
        .trusted_proxies
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(nets, ["10.0.0.0/8", "192.0.2.7/32", "fd00::/8", "::1/128"]);
    let seckill = &cfg.routes[0];
    assert_eq!(
        seckill.key,
        vec![
            KeyPart::ClientIp,
            KeyPart::Header(http::HeaderName::from_static("x-api-key")),
            KeyPart::Path,
        ]
    );
    assert!(seckill.limit.expect("limit").dry_run);
    let key_limit = seckill.key_limit.expect("key_limit");
    assert_eq!(
        (
            key_limit.rate,
            key_limit.burst.get(),
            key_limit.max_keys.get(),
            key_limit.dry_run
        ),
        (5.0, 10, 1, true)
    );
    assert_eq!(
        seckill.queue.discipline,
        Discipline::AdaptiveLifo {
            threshold: Duration::from_secs(3600)
        }
    );
    assert_eq!(seckill.queue.fairness, Fairness::PerKey);
    assert_eq!(seckill.queue.aging, Duration::from_millis(250));
    assert_eq!(
        seckill.reject.rate_limited_status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let names: Vec<&str> = seckill.classes.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["vip", "checkout", "writes"]);
    assert_eq!(
        seckill.classes[0].matcher,
        ClassMatch::Header {
            name: http::HeaderName::from_static("x-tier"),
            values: vec!["gold".into(), "vip".into(), String::new()],
        }
    );
    assert_eq!(
        seckill.classes[1].matcher,
        ClassMatch::PathPrefix("/seckill/checkout".into())
    );
    assert_eq!(
        seckill.classes[2].matcher,
        ClassMatch::Methods(vec![http::Method::POST, http::Method::PUT])
    );
    let slow = &cfg.routes[1];
    assert_eq!(slow.key, vec![KeyPart::Header(http::header::AUTHORIZATION)]);
    assert_eq!(
        slow.classes,
        vec![ClassConfig {
            name: "reads".into(),
            matcher: ClassMatch::Methods(vec![http::Method::GET]),
        }]
    );
    let key_limit = slow.key_limit.expect("key_limit");
    assert_eq!(
        (
            key_limit.burst.get(),
            key_limit.max_keys.get(),
            key_limit.dry_run
        ),
        (1, 100_000, false)
    );
    // The threshold defaults to half the queue timeout.
    assert_eq!(
        slow.queue.discipline,
        Discipline::AdaptiveLifo {
            threshold: Duration::from_millis(1500)
        }
    );
}

#[test]
fn full_config_reads_balancing_health_adaptive_and_tls() {
    let cfg = parse(FULL).expect("full config parses");
    let cwd = std::env::current_dir().expect("working directory");
    assert_eq!(
        cfg.server.tls,
        Some(ServerTls::new(
            // Relative to the config file "test.toml", i.e. the working directory.
            cwd.join("certs/server.pem"),
            PathBuf::from("/etc/sluice/server.key")
        ))
    );
    let api = &cfg.upstreams["api"];
    assert_eq!(
        api.targets,
        vec![
            TargetConfig {
                addr: Authority::from_static("127.0.0.1:9000"),
                weight: NonZeroU32::new(3).expect("not zero"),
                max_inflight: NonZeroUsize::new(50),
            },
            TargetConfig {
                addr: Authority::from_static("backend.internal:9001"),
                weight: NonZeroU32::MIN,
                max_inflight: NonZeroUsize::new(7),
            },
        ]
    );
    assert_eq!(api.balance, Balance::LeastInflight);
    assert_eq!(api.retries, 0);
    assert!(api.http2);
    assert_eq!(
        api.passive_health,
        PassiveHealth {
            consecutive_failures: 0,
            base_ejection: Duration::from_millis(250),
            max_ejection: Duration::from_millis(250),
        }
    );
    assert_eq!(
        api.active_health,
        Some(ActiveHealth {
            path: "/status?probe=1".into(),
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(2),
            healthy_threshold: NonZeroU32::MIN,
            unhealthy_threshold: NonZeroU32::new(10).expect("not zero"),
        })
    );
    assert_eq!(
        api.adaptive,
        Some(AdaptiveConfig {
            min_limit: NonZeroUsize::new(4).expect("not zero"),
            max_limit: NonZeroUsize::new(32).expect("not zero"),
            initial_limit: NonZeroUsize::new(8).expect("not zero"),
            tolerance: 1.0,
            smoothing: 1.0,
        })
    );
    assert_eq!(
        api.tls,
        Some(UpstreamTls {
            ca: Some(PathBuf::from("/etc/sluice/upstream-ca.pem")),
            server_name: Some("api.internal".into()),
        })
    );
    let slow = &cfg.upstreams["slow pool"];
    assert_eq!(slow.targets[0].weight.get(), 2);
    assert_eq!(slow.targets[0].max_inflight, None);
    assert_eq!(slow.balance, Balance::P2cEwma);
    assert_eq!(slow.retries, 5);
    assert!(!slow.http2);
    assert_eq!(
        slow.passive_health,
        PassiveHealth {
            max_ejection: Duration::from_secs(600),
            ..PassiveHealth::default()
        }
    );
    assert_eq!(slow.active_health, None);
    // max_limit defaults to max_inflight (256), initial_limit to 20.
    assert_eq!(
        slow.adaptive,
        Some(AdaptiveConfig {
            min_limit: NonZeroUsize::MIN,
            max_limit: NonZeroUsize::new(256).expect("not zero"),
            initial_limit: NonZeroUsize::new(20).expect("not zero"),
            tolerance: 2.5,
            smoothing: 0.05,
        })
    );
    // The empty table alone turns TLS on.
    assert_eq!(
        slow.tls,
        Some(UpstreamTls {
            ca: None,
            server_name: None,
        })
    );
}

#[test]
fn tls_paths_are_taken_from_the_config_directory() {
    let src = format!(
        "[server.tls]\ncert = \"c.pem\"\nkey = \"../keys/k.pem\"\n{MINIMAL}\n\
             [upstreams.api.tls]\nca = \"/abs/ca.pem\"\n\
             [upstreams.b]\ntargets = [\"b:1\"]\ntls = {{ ca = \"./ca/b.pem\" }}\n"
    );
    let cfg = Config::parse(&src, Path::new("/etc/sluice/s.toml")).expect("parses");
    let tls = cfg.server.tls.as_ref().expect("server tls");
    assert_eq!(tls.cert, Path::new("/etc/sluice/c.pem"));
    assert_eq!(tls.key, Path::new("/etc/sluice/../keys/k.pem"));
    let ca = |name: &str| cfg.upstreams[name].tls.as_ref().and_then(|t| t.ca.clone());
    assert_eq!(ca("api"), Some(PathBuf::from("/abs/ca.pem")));
    assert_eq!(ca("b"), Some(PathBuf::from("/etc/sluice/ca/b.pem")));
    // A relative config path is made absolute too, so the rendered paths
    // read back the same from anywhere.
    let cwd = std::env::current_dir().expect("working directory");
    let cfg = Config::parse(&src, Path::new("conf/s.toml")).expect("parses");
    let tls = cfg.server.tls.as_ref().expect("server tls");
    assert_eq!(tls.cert, cwd.join("conf/c.pem"));
    let again = Config::parse(&cfg.to_toml(), Path::new("elsewhere/x.toml")).expect("parses");
    assert_eq!(again.server.tls, cfg.server.tls);
    assert_eq!(again.upstreams, cfg.upstreams);
}

#[test]
fn adaptive_defaults_stay_within_the_bounds() {
    let adaptive = |upstream: &str| {
        let src = format!("[upstreams.b]\ntargets = [\"b:1\"]\n{upstream}\n{MINIMAL}");
        let cfg = parse(&src).unwrap_or_else(|e| panic!("{e}"));
        let a = cfg.upstreams["b"].adaptive.expect("adaptive");
        (a.min_limit.get(), a.max_limit.get(), a.initial_limit.get())
    };
    assert_eq!(adaptive("adaptive = {}"), (1, 256, 20));
    // max_limit follows max_inflight; initial_limit is at most max_limit...
    assert_eq!(adaptive("max_inflight = 8\nadaptive = {}"), (1, 8, 8));
    assert_eq!(adaptive("adaptive = { max_limit = 12 }"), (1, 12, 12));
    // ... and at least min_limit.
    assert_eq!(adaptive("adaptive = { min_limit = 30 }"), (30, 256, 30));
    assert_eq!(
        adaptive("max_inflight = 40\nadaptive = { min_limit = 40 }"),
        (40, 40, 40)
    );
    assert_eq!(
        adaptive("adaptive = { min_limit = 2, max_limit = 2, initial_limit = 2 }"),
        (2, 2, 2)
    );
}

#[test]
fn class_names_are_per_route() {
    let src = with_route_extra(
        "[[routes.classes]]\nname = \"vip\"\nmethods = [\"GET\"]\n\
             [[routes]]\nname = \"b\"\nupstream = \"api\"\n\
             [[routes.classes]]\nname = \"vip\"\nmethods = [\"GET\"]",
    );
    let cfg = parse(&src).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.routes[1].classes[0].name, "vip");
    // Errors in a later route's classes are indexed from 0 again.
    let (line, _, key, _) = fail(&format!("{src}\n[[routes.classes]]\nname = \"x\""));
    assert_eq!((line, key.as_str()), (18, "routes[1].classes[1]"));
}

#[test]
fn full_config_reads_redis_and_global_limits() {
    let cfg = parse(FULL).expect("full config parses");
    assert_eq!(
        cfg.redis,
        Some(RedisConfig {
            url: "redis://sluice:s3cret@redis.internal:6380/2".into(),
            password: None,
            key_prefix: "shop-eu".into(),
            timeout: Duration::from_millis(250),
        })
    );
    let limit = |name: &str| {
        cfg.routes
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.limit)
            .expect("route with a limit")
    };
    assert_eq!(limit("seckill").backend, LimitBackend::Local);
    assert_eq!(
        limit("global"),
        LimitConfig {
            rate: 500.0,
            per_target: false,
            burst: NonZeroU32::new(50).expect("not zero"),
            dry_run: false,
            backend: LimitBackend::Redis(RedisLimitConfig {
                lease: NonZeroU32::new(5).expect("not zero"),
                on_error: OnRedisError::Deny,
                expected_instances: NonZeroU32::new(3).expect("not zero"),
            }),
        }
    );
    // The sub-table form, every redis-only key at its default.
    assert_eq!(
        limit("global defaults").backend,
        LimitBackend::Redis(RedisLimitConfig {
            lease: NonZeroU32::MIN,
            on_error: OnRedisError::Local,
            expected_instances: NonZeroU32::MIN,
        })
    );
}

#[test]
fn redis_section_gets_defaults_and_may_go_unused() {
    let cfg = parse(&with_redis("", "url = \"redis://127.0.0.1\"")).expect("parses");
    assert_eq!(
        cfg.redis,
        Some(RedisConfig {
            url: "redis://127.0.0.1".into(),
            password: None,
            key_prefix: "sluice".into(),
            timeout: Duration::from_millis(50),
        })
    );
    assert_eq!(cfg.routes[0].limit, None);
    let cfg = parse(&with_redis(
        "limit = { rate = 5, backend = \"local\" }",
        "url = \"redis://127.0.0.1\"",
    ))
    .expect("parses");
    assert_eq!(
        cfg.routes[0].limit.map(|l| l.backend),
        Some(LimitBackend::Local)
    );
    // The bounds themselves are allowed.
    let cfg = parse(&with_redis(
            "limit = { rate = 5, backend = \"redis\", lease = 1000, expected_instances = 10000, on_redis_error = \"allow\" }",
            &format!(
                "url = \"redis://127.0.0.1\"\nkey_prefix = \"{}\"\ntimeout = \"10s\"",
                "p".repeat(128)
            ),
        ))
        .expect("parses");
    assert_eq!(
        cfg.routes[0].limit.map(|l| l.backend),
        Some(LimitBackend::Redis(RedisLimitConfig {
            lease: NonZeroU32::new(1000).expect("not zero"),
            on_error: OnRedisError::Allow,
            expected_instances: NonZeroU32::new(10_000).expect("not zero"),
        }))
    );
    assert_eq!(cfg.redis.map(|r| r.timeout), Some(Duration::from_secs(10)));
}

#[test]
fn redis_urls_the_client_can_dial_are_accepted() {
    for url in [
        "redis://127.0.0.1",
        "redis://redis.internal:6380",
        "redis://[::1]:6379/0",
        "redis://:pass@10.0.0.5/3",
        "redis://user:p%40ss@10.0.0.5:6379/15",
        "redis+unix:///run/redis/redis.sock",
        "unix:///tmp/redis.sock",
        "unix:///tmp/redis.sock?db=2",
    ] {
        let cfg = parse(&with_redis("", &format!("url = {url:?}")))
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(cfg.redis.map(|r| r.url).as_deref(), Some(url));
    }
}

#[test]
fn listeners_on_port_0_do_not_clash() {
    // Port 0 binds any free port, so both may ask for it.
    let both_zero = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    assert!(parse(&format!("{both_zero}{MINIMAL}")).is_ok());
}

#[test]
fn a_route_may_have_eight_classes() {
    let classes: String = (0..8)
        .map(|i| format!("[[routes.classes]]\nname = \"c{i}\"\npath_prefix = \"/{i}\"\n"))
        .collect();
    let cfg = parse(&with_route_extra(&classes)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.routes[0].classes.len(), 8);
}

#[test]
fn dry_run_goes_with_a_local_backend_written_out() {
    const REDIS: &str = "url = \"redis://127.0.0.1\"";
    parse(&with_redis(
        "limit = { rate = 1, backend = \"local\", dry_run = true }",
        REDIS,
    ))
    .expect("local dry run parses");
    parse(&with_redis(
        "limit = { rate = 1, backend = \"redis\", dry_run = false }",
        REDIS,
    ))
    .expect("dry_run = false goes with redis");
}
