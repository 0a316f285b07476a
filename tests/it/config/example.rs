//! The shipped example, `config/sluice.toml`, loads as it is and with its
//! commented-out tables uncommented: the example shows what loads.

use std::path::PathBuf;
use std::time::Duration;

use sluice::config::{
    ActiveHealth, AdaptiveConfig, AsyncConfig, AsyncStore, Balance, ClassMatch, Config, Discipline,
    Fairness, KeyPart, LimitBackend, OnRedisError, PassiveHealth, RedisConfig, RedisLimitConfig,
    ServerTls, UpstreamTls,
};

use super::*;

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
        Some(ServerTls::new(
            "/etc/sluice/cert.pem".into(),
            "/etc/sluice/key.pem".into()
        ))
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

/// The example file's commented-out async route and `[storage]`,
/// uncommented, make a valid config (the block sits before the global
/// route's, which its own test uncomments to the end of the file).
#[test]
fn example_async_route_loads_when_uncommented() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml");
    let src = std::fs::read_to_string(&path).expect("example readable");
    let start = src.find("# An async route").expect("the async example");
    let end = src.find("# A global limit").expect("the global example");
    assert!(start < end, "the async example comes before the global one");
    let is_toml = |line: &str| {
        line.starts_with('[')
            || line.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
            })
    };
    let block: Vec<&str> = src[start..end]
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest) if is_toml(rest) => rest,
            _ => line,
        })
        .collect();
    let uncommented = format!("{}{}\n{}", &src[..start], block.join("\n"), &src[end..]);
    let cfg = Config::parse(&uncommented, &path).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    let orders = cfg
        .routes
        .iter()
        .find(|r| r.name == "orders")
        .expect("the async route");
    assert_eq!(orders.path_prefix, "/orders");
    let limit = orders.limit.expect("orders is rate limited");
    assert_eq!((limit.rate, limit.burst.get()), (100.0, 10));
    assert_eq!(
        orders.deferred,
        Some(AsyncConfig {
            store: AsyncStore::Local,
            deliver_within: Duration::from_secs(600),
            max_attempts: 5.try_into().expect("not zero"),
            capacity: 1_000_000.try_into().expect("not zero"),
            keep_response_bytes: 0,
        })
    );
    assert_eq!(cfg.storage.dir, Some(PathBuf::from("/var/lib/sluice")));
    assert_eq!(cfg.storage.segment_bytes, 64 << 20);
    // Only what was shown commented out was added.
    let original = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(cfg.routes.len(), original.routes.len() + 1);
    assert_eq!(original.storage.dir, None);
}
