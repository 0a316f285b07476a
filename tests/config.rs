//! The config contract seen from outside: every rejected file names the file,
//! the exact line and the dotted key; the shipped example loads; defaults fill in.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice::config::{Config, ConfigError, LogFormat};

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

/// BASE with one exact line replaced (which must exist exactly once).
fn edit(line: &str, replacement: &str) -> String {
    assert_eq!(
        BASE.matches(line).count(),
        1,
        "{line:?} must occur once in BASE"
    );
    BASE.replacen(line, replacement, 1)
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
    assert_eq!(api.targets[0].as_str(), "127.0.0.1:9000");

    let names: Vec<&str> = cfg.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["seckill", "default"]);
    let seckill = &cfg.routes[0];
    assert_eq!(seckill.path_prefix, "/seckill");
    let limit = seckill.limit.expect("seckill is rate limited");
    assert_eq!((limit.rate, limit.burst.get()), (200.0, 20));
    assert_eq!(seckill.queue.capacity, 10000);
    assert_eq!(seckill.queue.timeout, Duration::from_secs(2));
    let default = &cfg.routes[1];
    assert_eq!(default.path_prefix, "/");
    let limit = default.limit.expect("default is rate limited");
    assert_eq!((limit.rate, limit.burst.get()), (1000.0, 100));

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

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}
