//! The config contract seen from outside: every rejected file names the file,
//! the exact line, column and dotted key (the cases are files in
//! `tests/config/invalid/`, see `invalid`); the shipped example loads
//! (`example`); what is written is read, defaults fill in, and the rendering
//! reads back (`read`); secrets come from files and the environment and never
//! show (`secrets`).

mod example;
mod invalid;
mod read;
mod secrets;

use std::net::SocketAddr;

const FILE: &str = "conf/flash-sale.toml";

/// A valid config, which tests edit a piece of.
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

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
}
