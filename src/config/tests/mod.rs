//! Unit tests of the loader as a whole: configs that load, errors and
//! where they point, and `to_toml`. The shared configs and helpers are here.

use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use http::uri::Authority;

use crate::config::load::ConfigError;
use crate::config::locate::{key_path_at, line_column};
use crate::config::model::{
    ActiveHealth, AdaptiveConfig, Balance, ClassConfig, ClassMatch, Config, Discipline, Fairness,
    KeyLimitConfig, KeyPart, LimitBackend, LimitConfig, LogFormat, OnRedisError, PassiveHealth,
    QueueConfig, RedisConfig, RedisLimitConfig, RejectConfig, ServerTls, TargetConfig, UpstreamTls,
};
use crate::config::values::parse_server_name;

const MINIMAL: &str = r#"
[upstreams.api]
targets = ["127.0.0.1:9000"]

[[routes]]
name = "default"
upstream = "api"
"#;

/// Every key set to something other than its default.
const FULL: &str = r#"
[server]
listen = "[::1]:8443"
header_timeout = "2s 500ms"
max_header_bytes = 8192
max_headers = 7
drain_timeout = "0s"
trusted_proxies = ["10.0.0.0/8", "192.0.2.7", "fd00::/8", "::1"]

[server.tls]
cert = "certs/server.pem"
key = "/etc/sluice/server.key"

[admin]
listen = "0.0.0.0:9191"

[log]
format = "json"
level = "info,sluice::shaper=debug"
access_log = false

[redis]
url = "redis://sluice:s3cret@redis.internal:6380/2"
key_prefix = "shop-eu"
timeout = "250ms"

[upstreams.api]
targets = ["127.0.0.1:9000 weight=3 max_inflight=50", "backend.internal:9001  max_inflight=7"]
balance = "least_inflight"
retries = 0
http2 = true
max_inflight = 64
connect_timeout = "250ms"
timeout = "1m"
pool_idle_timeout = "0s"
pool_max_idle_per_target = 0

[upstreams.api.passive_health]
consecutive_failures = 0
base_ejection = "250ms"
max_ejection = "250ms"

[upstreams.api.active_health]
path = "/status?probe=1"
interval = "2s"
timeout = "2s"
healthy_threshold = 1
unhealthy_threshold = 10

[upstreams.api.adaptive]
min_limit = 4
max_limit = 32
initial_limit = 8
tolerance = 1
smoothing = 1

[upstreams.api.tls]
ca = "/etc/sluice/upstream-ca.pem"
server_name = "API.Internal"

[upstreams."slow pool"]
targets = ["[::1]:7000 weight=2"]
balance = "p2c_ewma"
retries = 5
passive_health = { max_ejection = "10m" }
adaptive = { tolerance = 2.5, smoothing = 0.05 }

[upstreams."slow pool".tls]

[[routes]]
name = "seckill"
host = "*.Shop.Example.com"
path_prefix = "/seckill"
methods = ["GET", "POST", "PURGE"]
upstream = "api"
key = ["client_ip", "header:X-Api-Key", "path"]
limit = { rate = 0.1, burst = 20, dry_run = true }
key_limit = { rate = 5, burst = 10, max_keys = 1, dry_run = true }
queue = { capacity = 0, timeout = "1h 2m 3s 4ms 5us 6ns", discipline = "adaptive_lifo", lifo_threshold = "1h", fairness = "per_key", aging = "250ms" }
reject = { status = 429, retry_after = false, rate_limited_status = 503 }

[[routes.classes]]
name = "vip"
header = "X-Tier"
values = ["gold", "vip", ""]

[[routes.classes]]
name = "checkout"
path_prefix = "/seckill/checkout"

[[routes.classes]]
name = "writes"
methods = ["POST", "PUT"]

[[routes]]
name = "slow"
host = "[::1]"
upstream = "slow pool"
key = "header:authorization"
classes = [{ name = "reads", methods = ["GET"] }]
[routes.limit]
rate = 123456.789
[routes.key_limit]
rate = 0.5
[routes.queue]
discipline = "adaptive_lifo"
timeout = "3s"

[[routes]]
name = "global"
path_prefix = "/global"
upstream = "api"
limit = { rate = 500, burst = 50, backend = "redis", lease = 5, on_redis_error = "deny", expected_instances = 3 }

[[routes]]
name = "global defaults"
path_prefix = "/global-defaults"
upstream = "api"
[routes.limit]
rate = 0.25
backend = "redis"
"#;

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::parse(src, Path::new("test.toml"))
}

/// (line, column, key, message) of a failed parse.
fn fail(src: &str) -> (usize, usize, String, String) {
    match parse(src) {
        Err(ConfigError::Invalid {
            line,
            column,
            key,
            message,
            ..
        }) => (line, column, key, message),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

fn with_route_extra(extra: &str) -> String {
    format!("{MINIMAL}{extra}\n")
}

/// MINIMAL with `extra` in its route, then a `[redis]` section holding `redis`.
fn with_redis(extra: &str, redis: &str) -> String {
    format!("{MINIMAL}{extra}\n\n[redis]\n{redis}\n")
}

mod errors;
mod read;
mod render;
