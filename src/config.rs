//! Configuration: the TOML file parsed once, validated at the edge, and turned
//! into plain typed structs. Nothing past this module sees a raw string.
//!
//! Every error names the file, the line and the dotted key it is about.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use http::uri::Authority;
use ipnet::IpNet;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::secret::{REDACTED, Secret, SecretSource};

/// The whole validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Where the file came from (for messages).
    pub source: PathBuf,
    pub server: ServerConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Upstreams by name.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Routes in file order.
    pub routes: Vec<RouteConfig>,
    /// `[redis]`, optional: where routes with `backend = "redis"` keep their
    /// shared limiter state. Required when any route's limit uses it.
    pub redis: Option<RedisConfig>,
}

/// `[redis]`, optional; required when any route's limit has backend = "redis".
/// `Debug` shows the URL without its password.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// `url`, required: "redis://[user[:password]@]host[:port][/db]" or "redis+unix:///path" / "unix:///path".
    pub url: String,
    /// `password_file` (a file holding the password, trailing newline
    /// trimmed) or `password_env` (an environment variable), optional: the
    /// password sent to Redis, read at load and on every reload. At most one
    /// of a password in `url`, `password_file` and `password_env`.
    pub password: Option<Secret>,
    /// `key_prefix`, default "sluice": each global route's key is "{key_prefix}:route:{route name}".
    /// Non-empty, no whitespace or control characters, at most 128 bytes.
    pub key_prefix: String,
    /// `timeout`, default "50ms", > 0 and <= 10s: the longest a call to Redis (connecting included) may take before it counts as a failure.
    pub timeout: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &crate::redis_store::redact_url(&self.url))
            .field("password", &self.password)
            .field("key_prefix", &self.key_prefix)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `listen`, default "127.0.0.1:8080".
    pub listen: SocketAddr,
    /// `header_timeout`, default "10s": time a client may take to send a
    /// request head, counted from accept for a connection's first request
    /// (whatever the protocol: TLS handshake, HTTP/2 preface and first
    /// HEADERS included) and from the previous response for the next
    /// HTTP/1.1 keep-alive request. Applies to the admin listener too.
    pub header_timeout: Duration,
    /// `idle_timeout`, default "75s" (NGINX's `keepalive_timeout`): a
    /// connection with no request in progress for this long is closed
    /// (HTTP/2 with GOAWAY). Applies to the admin listener too.
    pub idle_timeout: Duration,
    /// `backlog`, default 65535, 1..=65535: the listen backlog of the proxy
    /// and admin listeners (connections the kernel holds before sluice
    /// accepts them). Linux caps it at `net.core.somaxconn`; the value in
    /// force is logged at start. Changes on restart.
    pub backlog: u32,
    /// `max_header_bytes`, default 32768, minimum 8192: larger heads get 431.
    pub max_header_bytes: usize,
    /// `max_headers`, default 100.
    pub max_headers: usize,
    /// `max_connections`, default 10000: client connections served at once.
    /// Beyond it sluice still accepts, up to a reserve of 1/16 of the cap
    /// (at least 16) more, and answers each at once with a canned `503` +
    /// `Retry-After` + `Connection: close` (a TLS connection is closed);
    /// nothing waits unseen in the kernel's backlog. Changes on restart.
    pub max_connections: usize,
    /// `max_body_bytes`, default 1048576 (1 MiB, NGINX's
    /// `client_max_body_size`): a larger request body is answered 413.
    pub max_body_bytes: u64,
    /// `request_buffer_bytes`, default 16384 (16 KiB), from 0 to 16 MiB: a
    /// request body up to this size is read in full before the request is
    /// admitted, so a slow sender never holds an in-flight slot; a larger
    /// one streams. 0 streams every body.
    pub request_buffer_bytes: usize,
    /// `client_body_timeout`, default "10s", 100ms to 1 day: the longest a client may
    /// leave sluice waiting for the next piece of its request body (each
    /// read, not the whole body, as NGINX's); then `408`.
    pub client_body_timeout: Duration,
    /// `send_timeout`, default "30s", 100ms to 1 day: the longest a client may leave a
    /// response unread (no piece of it taken) before sluice abandons it,
    /// closes the upstream connection and frees the in-flight slot.
    pub send_timeout: Duration,
    /// `workers`, default one per CPU: threads serving the proxy listener,
    /// each with its own event loop and its own listening socket
    /// (SO_REUSEPORT), as NGINX's `worker_processes`. Changes on restart.
    pub workers: Option<usize>,
    /// `drain_timeout`, default "30s": on SIGTERM, how long in-flight requests may finish.
    pub drain_timeout: Duration,
    /// `[server.tls]`, optional: terminate TLS (HTTP/1.1 and HTTP/2 by ALPN)
    /// on `listen`; the files are read again on every config reload.
    pub tls: Option<ServerTls>,
    /// `shutdown_delay`, default "0s": after SIGTERM, how long /readyz answers
    /// 503 while requests are still served, so a load balancer stops sending
    /// before accepting stops.
    pub shutdown_delay: Duration,
    /// `trusted_proxies`, default []: CIDRs ("10.0.0.0/8", "127.0.0.1/32") whose
    /// X-Forwarded-For / Forwarded headers are believed when deriving the client IP.
    pub trusted_proxies: Vec<ipnet::IpNet>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// `listen`, default "127.0.0.1:9090". Serves /metrics, /healthz, /readyz
    /// and the admin API under /admin/.
    pub listen: SocketAddr,
    /// `token`, `token_file` or `token_env`, at most one: when set, /admin/
    /// requests need `Authorization: Bearer <token>`. Visible ASCII, no
    /// spaces, 1 to 256 bytes. A file's trailing newline is trimmed; the file
    /// or variable is read at load and on every reload.
    pub token: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    /// `format`, "text" (default) or "json".
    pub format: LogFormat,
    /// `level`, default "info" (a tracing EnvFilter directive; RUST_LOG overrides).
    pub level: String,
    /// `access_log`, default true: one line per request at target "sluice::access".
    pub access_log: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// The table's key in `[upstreams.NAME]`.
    pub name: String,
    /// `targets`: one or more, each "host:port" optionally followed by
    /// HAProxy-style options: "10.0.0.1:80 weight=3 max_inflight=50".
    pub targets: Vec<TargetConfig>,
    /// `balance`, default "round_robin": or "least_inflight", "p2c_ewma".
    pub balance: Balance,
    /// `retries`, default 1: retries of an idempotent request (GET, HEAD,
    /// OPTIONS, PUT, DELETE, TRACE) that could not connect, on another target.
    pub retries: u32,
    /// `http2`, default false: speak HTTP/2 to the targets (prior knowledge
    /// over plain TCP, ALPN over TLS).
    pub http2: bool,
    /// `[upstreams.NAME.passive_health]`, optional: defaults below.
    pub passive_health: PassiveHealth,
    /// `[upstreams.NAME.active_health]`, optional: off when absent.
    pub active_health: Option<ActiveHealth>,
    /// `[upstreams.NAME.adaptive]`, optional: when present the in-flight cap
    /// follows measured latency between its bounds (`max_inflight` stays the hard cap).
    pub adaptive: Option<AdaptiveConfig>,
    /// `[upstreams.NAME.tls]`, optional: when present, TLS to the targets.
    pub tls: Option<UpstreamTls>,
    /// `max_inflight`, default 256: cap on requests in flight to this pool.
    pub max_inflight: NonZeroUsize,
    /// `connect_timeout`, default "1s" -> 502 when exceeded.
    pub connect_timeout: Duration,
    /// `timeout`, default "30s": time to the response head -> 504 when exceeded.
    pub timeout: Duration,
    /// `pool_idle_timeout`, default "90s".
    pub pool_idle_timeout: Duration,
    /// `pool_max_idle_per_target`, default 128.
    pub pool_max_idle_per_target: usize,
}

/// One backend target.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetConfig {
    pub addr: Authority,
    /// `weight=N`, default 1: share of requests relative to the other targets.
    pub weight: NonZeroU32,
    /// `max_inflight=N`, optional: cap on requests in flight to this target.
    pub max_inflight: Option<NonZeroUsize>,
}

impl std::fmt::Display for TargetConfig {
    /// As written in `targets`, options at their defaults left out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.addr)?;
        if self.weight.get() != 1 {
            write!(f, " weight={}", self.weight)?;
        }
        if let Some(max) = self.max_inflight {
            write!(f, " max_inflight={max}")?;
        }
        Ok(())
    }
}

impl TargetConfig {
    /// Weight 1, no cap of its own.
    pub fn new(addr: Authority) -> TargetConfig {
        TargetConfig {
            addr,
            weight: NonZeroU32::MIN,
            max_inflight: None,
        }
    }
}

/// How a request picks its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// "round_robin": in turn, by weight.
    RoundRobin,
    /// "least_inflight": the target with the fewest requests in flight per weight.
    LeastInflight,
    /// "p2c_ewma": of two random targets, the one with the lower
    /// latency-weighted load (EWMA of response time x (in flight + 1)).
    P2cEwma,
}

/// Ejecting a target that keeps failing, from what real requests see.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassiveHealth {
    /// `consecutive_failures`, default 5 (0 disables): connect failures or
    /// 5xx answers in a row that eject a target.
    pub consecutive_failures: u32,
    /// `base_ejection`, default "5s": the first ejection's length; each further
    /// one in a row doubles it.
    pub base_ejection: Duration,
    /// `max_ejection`, default "60s": the longest ejection.
    pub max_ejection: Duration,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        PassiveHealth {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(5),
            max_ejection: Duration::from_secs(60),
        }
    }
}

/// Probing each target in the background.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveHealth {
    /// `path`, default "/healthz": GET this; 2xx is healthy.
    pub path: String,
    /// `interval`, default "5s", > 0.
    pub interval: Duration,
    /// `timeout`, default "1s", > 0.
    pub timeout: Duration,
    /// `healthy_threshold`, default 2: successes in a row to mark healthy.
    pub healthy_threshold: NonZeroU32,
    /// `unhealthy_threshold`, default 3: failures in a row to mark unhealthy.
    pub unhealthy_threshold: NonZeroU32,
}

/// Adaptive concurrency: a gradient controller over measured latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveConfig {
    /// `min_limit`, default 1.
    pub min_limit: NonZeroUsize,
    /// `max_limit`, default the upstream's `max_inflight`; at most that.
    pub max_limit: NonZeroUsize,
    /// `initial_limit`, default min(20, max_limit), within the bounds.
    pub initial_limit: NonZeroUsize,
    /// `tolerance`, default 1.5, >= 1: how much slower than its no-load
    /// latency the backend may get before the limit shrinks.
    pub tolerance: f64,
    /// `smoothing`, default 0.2, in (0, 1]: weight of each new estimate.
    pub smoothing: f64,
}

/// TLS from sluice to the targets.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// `ca`, optional: a PEM file of CA certificates to trust (in addition to
    /// none: without it the platform's web PKI roots are used).
    pub ca: Option<PathBuf>,
    /// `server_name`, optional: the name to verify and send as SNI (default:
    /// each target's host).
    pub server_name: Option<String>,
}

/// TLS termination on the proxy listener.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerTls {
    /// `cert`: PEM certificate chain file.
    pub cert: PathBuf,
    /// `key`: PEM private key file (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// `name`, required, unique; used as the `route` metric label.
    pub name: String,
    /// `host`, optional: exact host ("api.example.com") or a leading wildcard
    /// ("*.example.com"); lower-cased, no port. None matches any host.
    pub host: Option<String>,
    /// `path_prefix`, default "/"; must start with '/' and be a normal path
    /// (no `//`, `.` or `..` segment, no encoded unreserved character):
    /// requests are matched on their normalised path, which never has them.
    pub path_prefix: String,
    /// `methods`, optional list ("GET", "POST", ...); empty matches any method.
    pub methods: Vec<http::Method>,
    /// `upstream`, required: must name a key of `[upstreams]`.
    pub upstream: String,
    /// `[routes.limit]`, optional: absent means no rate limit (only the in-flight cap shapes).
    pub limit: Option<LimitConfig>,
    /// `[routes.queue]`, optional: defaults below.
    pub queue: QueueConfig,
    /// `[routes.reject]`, optional.
    pub reject: RejectConfig,
    /// `key`, default ["client_ip"]: what identifies a client for the per-key
    /// limit and for fair queueing. A string or a list of parts, each
    /// "client_ip", "path" or "header:NAME"; a list combines them.
    pub key: Vec<KeyPart>,
    /// `[routes.key_limit]`, optional: each key's own rate and burst.
    pub key_limit: Option<KeyLimitConfig>,
    /// `[[routes.classes]]`, optional: priority classes, highest first. A
    /// request takes the first class it matches; one matching none is in the
    /// implicit lowest class "default". At most 8.
    pub classes: Vec<ClassConfig>,
    /// `upgrades`, default ["websocket"]: the protocols a client may switch
    /// to on this route (lower-cased `Upgrade` tokens, without version);
    /// [] refuses every upgrade. "h2c" is never allowed.
    pub upgrades: Vec<String>,
}

/// One part of a client key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPart {
    /// "client_ip": the client address (see `server.trusted_proxies`).
    ClientIp,
    /// "path": the request path (without the query).
    Path,
    /// "header:NAME": the value of a request header (absent = empty).
    Header(http::HeaderName),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KeyLimitConfig {
    /// `rate`: requests per second per key, finite and > 0.
    pub rate: f64,
    /// `burst`, default 1.
    pub burst: NonZeroU32,
    /// `max_keys`, default 100000: keys tracked at most; the longest idle are evicted first.
    pub max_keys: NonZeroUsize,
    /// `dry_run`, default false: count and log what would get 429, but let it through.
    pub dry_run: bool,
}

/// A priority class and what puts a request in it.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassConfig {
    /// `name`, required, unique within the route, not "default"; a metric label.
    pub name: String,
    /// Exactly one of `header` (+ `values`), `path_prefix`, `methods`.
    pub matcher: ClassMatch,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ClassMatch {
    /// `header = "x-tier"`, `values = ["gold", "vip"]`: the header equals one of the values.
    Header {
        name: http::HeaderName,
        values: Vec<String>,
    },
    /// `path_prefix = "/checkout"`.
    PathPrefix(String),
    /// `methods = ["POST"]`.
    Methods(Vec<http::Method>),
}

/// The order in which queued requests are released.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Discipline {
    /// "fifo" (default): oldest first.
    Fifo,
    /// "adaptive_lifo": newest first while the oldest waiter has waited longer
    /// than `lifo_threshold` (default: half the queue timeout), else oldest first.
    AdaptiveLifo { threshold: Duration },
}

/// How release slots and queue room are shared between keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fairness {
    /// "none" (default): one queue per class.
    None,
    /// "per_key": round robin between keys, and when the queue is full the key
    /// holding the most places gives one up to a key holding fewer.
    PerKey,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    /// `rate`: requests per second released, finite and > 0 (integer or float).
    pub rate: f64,
    /// `burst`, default 1: requests that may go at once above the steady rate.
    pub burst: NonZeroU32,
    /// `dry_run`, default false: do not shape; count and log what would have
    /// been queued or rejected. Only with the "local" backend.
    pub dry_run: bool,
    /// `backend`, default "local".
    pub backend: LimitBackend,
}

/// Where a route's GCRA state lives.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitBackend {
    /// "local": this instance's own GCRA state (the rate holds per instance).
    Local,
    /// "redis": the GCRA state lives in Redis, shared by every instance using the same key prefix and route name; the rate holds for the fleet.
    Redis(RedisLimitConfig),
}

/// The limit keys that only go with `backend = "redis"`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RedisLimitConfig {
    /// `lease`, default 1, 1..=1000: tokens taken from Redis per round trip; above 1, requests can go without waiting on Redis, at the cost of accuracy.
    pub lease: NonZeroU32,
    /// `on_redis_error`, default "local".
    pub on_error: OnRedisError,
    /// `expected_instances`, default 1, 1..=10000: how many instances share the limit; the "local" fallback runs at rate / expected_instances (burst likewise, at least 1).
    pub expected_instances: NonZeroU32,
}

impl Default for RedisLimitConfig {
    fn default() -> Self {
        RedisLimitConfig {
            lease: NonZeroU32::MIN,
            on_error: OnRedisError::Local,
            expected_instances: NonZeroU32::MIN,
        }
    }
}

/// What a route with `backend = "redis"` does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedisError {
    /// "local": fall back to a local limiter at rate / expected_instances.
    Local,
    /// "allow": no rate limit while Redis is unreachable (only the in-flight cap shapes).
    Allow,
    /// "deny": nothing is released while Redis is unreachable; new requests are answered at once (503), queued ones wait until their deadline.
    Deny,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueConfig {
    /// `capacity`, default 1000 (0 = no queue: what cannot go at once is rejected).
    pub capacity: usize,
    /// `timeout`, default "1s", > 0: maximum time a request waits in the queue.
    pub timeout: Duration,
    /// `discipline`, default "fifo"; `lifo_threshold` goes with "adaptive_lifo".
    pub discipline: Discipline,
    /// `fairness`, default "none".
    pub fairness: Fairness,
    /// `aging`, default "1s", > 0: a waiter counts one class higher for each
    /// `aging` it has waited, so lower classes are never starved.
    pub aging: Duration,
}

impl QueueConfig {
    /// The defaults, with the given capacity and timeout.
    pub fn new(capacity: usize, timeout: Duration) -> QueueConfig {
        QueueConfig {
            capacity,
            timeout,
            discipline: Discipline::Fifo,
            fairness: Fairness::None,
            aging: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RejectConfig {
    /// `status`, default 503: answer for queue-full and queue-timeout rejections (4xx or 5xx).
    pub status: StatusCode,
    /// `retry_after`, default true: send a Retry-After header estimated from the queue.
    pub retry_after: bool,
    /// `rate_limited_status`, default 429: answer for a key over its own limit.
    pub rate_limited_status: StatusCode,
}

impl Default for RejectConfig {
    fn default() -> Self {
        RejectConfig {
            status: StatusCode::SERVICE_UNAVAILABLE,
            retry_after: true,
            rate_limited_status: StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// A config that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `path:line:column: key `dotted.key`: message`
    #[error("{path}:{line}:{column}: key `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&src, path)
    }

    /// Validates config text. `path` names the file in messages, and relative
    /// file paths in it (TLS certificates, keys and CAs, secret files) are
    /// taken from its directory. TLS files are not opened here; secrets
    /// (`admin.token_file` / `token_env`, `[redis] password_file` /
    /// `password_env`) are read here, so a reload reads them again.
    pub fn parse(src: &str, path: &Path) -> Result<Config, ConfigError> {
        let ctx = Ctx { src, path };
        let raw: RawConfig = toml::from_str(src).map_err(|err| ctx.toml_error(&err))?;
        ctx.config(raw)
    }

    /// The effective configuration as TOML, every default filled in.
    pub fn to_toml(&self) -> String {
        // Every value here is a string, integer, float, bool, array or table, all of
        // which TOML can represent, so serialization cannot fail; the fallback only
        // exists so that this function has no panic path.
        let rendered = toml::to_string(&RenderedConfig::from(self))
            .unwrap_or_else(|err| format!("# sluice: cannot render the configuration: {err}\n"));
        annotate_backlog(
            rendered,
            crate::listener::Backlog::probe(self.server.backlog),
        )
    }
}

/// Adds the backlog the kernel really gives to the rendered `backlog` line,
/// as a TOML comment (the file stays loadable): `net.core.somaxconn` caps it.
fn annotate_backlog(rendered: String, backlog: crate::listener::Backlog) -> String {
    let line = format!("\nbacklog = {}\n", backlog.asked);
    let note = match backlog.somaxconn {
        Some(cap) if backlog.capped() => format!(
            "\nbacklog = {} # in force: {} (capped by net.core.somaxconn = {cap})\n",
            backlog.asked,
            backlog.in_force()
        ),
        Some(cap) => format!(
            "\nbacklog = {} # in force: {} (net.core.somaxconn = {cap})\n",
            backlog.asked,
            backlog.in_force()
        ),
        None => return rendered,
    };
    rendered.replacen(&line, &note, 1)
}

// ---------------------------------------------------------------------------
// Defaults. Kept in one place so the docs, the example file and `to_toml` agree.

const DEFAULT_SERVER_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// The default and largest `server.backlog`: the kernel caps what `listen`
/// is given at `net.core.somaxconn` anyway, so asking for more than this
/// (the largest somaxconn of older kernels) buys nothing.
const MAX_BACKLOG: usize = 65_535;
const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// hyper refuses (panics on) a read buffer smaller than this.
const MIN_MAX_HEADER_BYTES: usize = 8192;
const DEFAULT_MAX_HEADERS: usize = 100;
const MAX_WORKERS: usize = 1024;
const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Typical API bodies (JSON, forms) fit; at the default `max_connections`
/// the worst case is 160 MiB of bodies being read.
const DEFAULT_REQUEST_BUFFER_BYTES: usize = 16 * 1024;
const MAX_REQUEST_BUFFER_BYTES: usize = 16 << 20;
const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
const DEFAULT_LOG_LEVEL: &str = "info";
const DEFAULT_MAX_INFLIGHT: NonZeroUsize = NonZeroUsize::new(256).expect("256 is not zero");
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
const DEFAULT_POOL_MAX_IDLE_PER_TARGET: usize = 128;
const DEFAULT_PATH_PREFIX: &str = "/";
/// The one upgrade a route allows unless told otherwise.
pub const DEFAULT_UPGRADE: &str = "websocket";
const DEFAULT_BURST: NonZeroU32 = NonZeroU32::MIN;
const DEFAULT_QUEUE_CAPACITY: usize = 1000;
const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_MAX_KEYS: NonZeroUsize = NonZeroUsize::new(100_000).expect("100000 is not zero");
const DEFAULT_RETRIES: u32 = 1;
/// Retries of one request at most.
const MAX_RETRIES: u32 = 5;
const DEFAULT_HEALTH_PATH: &str = "/healthz";
const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_HEALTHY_THRESHOLD: NonZeroU32 = NonZeroU32::new(2).expect("2 is not zero");
const DEFAULT_UNHEALTHY_THRESHOLD: NonZeroU32 = NonZeroU32::new(3).expect("3 is not zero");
/// The adaptive limit starts here unless `max_limit` is lower (or `min_limit` higher).
const DEFAULT_INITIAL_LIMIT: NonZeroUsize = NonZeroUsize::new(20).expect("20 is not zero");
const DEFAULT_TOLERANCE: f64 = 1.5;
const DEFAULT_SMOOTHING: f64 = 0.2;
/// Classes a route may define, besides the implicit "default".
const MAX_CLASSES: usize = 8;
/// The name of the implicit lowest class, which no `[[routes.classes]]` may take.
const DEFAULT_CLASS: &str = "default";
const DEFAULT_KEY_PREFIX: &str = "sluice";
/// Long enough for a round trip inside a data centre, short enough that a
/// dead Redis is noticed before queued requests time out.
const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_KEY_PREFIX_BYTES: usize = 128;
const MAX_LEASE: u32 = 1000;
const MAX_EXPECTED_INSTANCES: u32 = 10_000;

// ---------------------------------------------------------------------------
// Bounds: every number a config may hold is one the code can honour without
// overflowing, panicking or allocating without limit. docs/configuration.md
// ("Bounds") lists them.

/// The longest duration any key takes: timers and deadlines are `Instant +
/// Duration`, and a day is longer than any wait a proxy should hold.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The least a client-facing timeout (`header_timeout`, `idle_timeout`,
/// `client_body_timeout`, `send_timeout`) may be: below it no client, however prompt, could send a request before the
/// connection is closed, so every request would fail.
pub const MIN_CLIENT_TIMEOUT: Duration = Duration::from_millis(100);
/// The slowest rate (requests per second) of a route or key limit, and of an
/// admin override: one request per 1000 s. With `MAX_BURST` the GCRA
/// tolerance (burst / rate) stays within 10^9 s, far inside the nanosecond
/// arithmetic of the limiters (u64, 584 years), the "local" fallback of a
/// shared rate (rate / expected_instances) included.
pub const MIN_RATE: f64 = 0.001;
/// The fastest rate. The route limiter counts in 1/1024 of a request on a
/// nanosecond clock, so near this it releases at most ~976,000 per second.
pub const MAX_RATE: f64 = 1_000_000.0;
/// The largest burst (route, key or admin override).
pub const MAX_BURST: u32 = 1_000_000;
/// hyper's read buffer for a request head is allocated up to this per connection.
const MAX_MAX_HEADER_BYTES: usize = 1 << 20;
/// hyper reserves room for `max_headers` headers on every request, so a huge
/// value costs memory and time per request (HAProxy and Apache default to ~100).
const MAX_MAX_HEADERS: usize = 1000;
/// Linux's default `fs.nr_open`: a process cannot hold more descriptors.
const MAX_CONNECTIONS: usize = 1 << 20;
/// In-flight caps (upstream and target) are semaphores; tokio's allows
/// `usize::MAX >> 3` permits, and no backend takes a million requests at once.
const MAX_INFLIGHT: usize = 1 << 20;
/// Idle connections kept per target.
const MAX_POOL_IDLE_PER_TARGET: usize = 1 << 20;
/// Smooth weighted round robin unrolls one cycle of `sum(weights)` entries,
/// built in `targets x sum` steps: a target's weight, and the sum of an
/// upstream's weights, are at most this.
const MAX_TOTAL_WEIGHT: u32 = 10_000;
/// Failures or successes in a row that a health check counts to.
const MAX_HEALTH_COUNT: u32 = 10_000;
/// Keys a per-key limit tracks; each costs about 35 bytes in its table (bench/README.md).
const MAX_KEYS: usize = 10_000_000;
/// Requests a route's queue holds.
const MAX_QUEUE_CAPACITY: usize = 1_000_000;
/// Bearer tokens are compared in constant time over this many bytes.
pub const MAX_TOKEN_BYTES: usize = 256;
/// A secret file is read up to this size (a token or a password, not a dump).
const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// Why a secret equal to the placeholder `sluice check` prints is refused.
const PLACEHOLDER_REFUSED: &str = "is the placeholder `sluice check` prints in place of a secret; put the real value back (or use the _file / _env key)";

/// Checks a rate in requests per second: the one check for the config file
/// and the admin API. NaN and infinities fail.
pub fn check_rate(rate: f64) -> Result<f64, String> {
    if rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "must be a number of requests per second from {MIN_RATE} to {MAX_RATE}, got {rate}"
        ))
    }
}

/// Checks a burst: the one check for the config file and the admin API.
pub fn check_burst(burst: i64) -> Result<NonZeroU32, String> {
    u32::try_from(burst)
        .ok()
        .filter(|b| *b <= MAX_BURST)
        .and_then(NonZeroU32::new)
        .ok_or_else(|| format!("must be from 1 to {MAX_BURST}, got {burst}"))
}

// ---------------------------------------------------------------------------
// The file as written. Values that need checking beyond their TOML type are
// `Spanned` so a failed check can point at them; optional keys are `Option` so
// defaults are applied in exactly one place (the conversion below).

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    server: RawServer,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    log: RawLog,
    redis: Option<RawRedis>,
    upstreams: Option<Spanned<BTreeMap<String, RawUpstream>>>,
    routes: Option<Spanned<Vec<RawRoute>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: Spanned<String>,
    password_file: Option<Spanned<String>>,
    password_env: Option<Spanned<String>>,
    key_prefix: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: Option<Spanned<String>>,
    header_timeout: Option<Spanned<String>>,
    idle_timeout: Option<Spanned<String>>,
    backlog: Option<Spanned<i64>>,
    max_header_bytes: Option<Spanned<i64>>,
    max_headers: Option<Spanned<i64>>,
    max_body_bytes: Option<Spanned<i64>>,
    request_buffer_bytes: Option<Spanned<i64>>,
    client_body_timeout: Option<Spanned<String>>,
    send_timeout: Option<Spanned<String>>,
    max_connections: Option<Spanned<i64>>,
    workers: Option<Spanned<i64>>,
    drain_timeout: Option<Spanned<String>>,
    shutdown_delay: Option<Spanned<String>>,
    trusted_proxies: Option<Vec<Spanned<String>>>,
    tls: Option<RawServerTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServerTls {
    cert: Spanned<String>,
    key: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<Spanned<String>>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<String>>,
    token_env: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<Spanned<String>>,
    level: Option<Spanned<String>>,
    access_log: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    targets: Spanned<Vec<Spanned<String>>>,
    balance: Option<Spanned<String>>,
    retries: Option<Spanned<i64>>,
    http2: Option<bool>,
    max_inflight: Option<Spanned<i64>>,
    connect_timeout: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    pool_idle_timeout: Option<Spanned<String>>,
    pool_max_idle_per_target: Option<Spanned<i64>>,
    passive_health: Option<RawPassiveHealth>,
    active_health: Option<RawActiveHealth>,
    adaptive: Option<RawAdaptive>,
    tls: Option<RawUpstreamTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPassiveHealth {
    consecutive_failures: Option<Spanned<i64>>,
    base_ejection: Option<Spanned<String>>,
    max_ejection: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawActiveHealth {
    path: Option<Spanned<String>>,
    interval: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
    healthy_threshold: Option<Spanned<i64>>,
    unhealthy_threshold: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdaptive {
    min_limit: Option<Spanned<i64>>,
    max_limit: Option<Spanned<i64>>,
    initial_limit: Option<Spanned<i64>>,
    tolerance: Option<Spanned<f64>>,
    smoothing: Option<Spanned<f64>>,
}

/// May be empty: `[upstreams.NAME.tls]` alone turns TLS on.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstreamTls {
    ca: Option<Spanned<String>>,
    server_name: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Spanned<String>,
    host: Option<Spanned<String>>,
    path_prefix: Option<Spanned<String>>,
    methods: Option<Vec<Spanned<String>>>,
    upstream: Spanned<String>,
    limit: Option<RawLimit>,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    reject: RawReject,
    key: Option<Spanned<RawKey>>,
    key_limit: Option<RawKeyLimit>,
    classes: Option<Spanned<Vec<Spanned<RawClass>>>>,
    upgrades: Option<Vec<Spanned<String>>>,
}

/// `key = "client_ip"` or `key = ["client_ip", "header:x-api-key"]`. Written by
/// hand rather than as an untagged enum, which would lose the element spans.
enum RawKey {
    One(String),
    Many(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for RawKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = RawKey;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(
                    "a key part (\"client_ip\", \"path\", \"header:NAME\") or an array of them",
                )
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawKey, E> {
                Ok(RawKey::One(v.to_string()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawKey, A::Error> {
                let mut parts = Vec::new();
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(RawKey::Many(parts))
            }
        }

        deserializer.deserialize_any(KeyVisitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimit {
    rate: Spanned<f64>,
    burst: Option<Spanned<i64>>,
    dry_run: Option<Spanned<bool>>,
    backend: Option<Spanned<String>>,
    lease: Option<Spanned<i64>>,
    on_redis_error: Option<Spanned<String>>,
    expected_instances: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyLimit {
    rate: Spanned<f64>,
    burst: Option<Spanned<i64>>,
    max_keys: Option<Spanned<i64>>,
    dry_run: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    capacity: Option<Spanned<i64>>,
    timeout: Option<Spanned<String>>,
    discipline: Option<Spanned<String>>,
    lifo_threshold: Option<Spanned<String>>,
    fairness: Option<Spanned<String>>,
    aging: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawReject {
    status: Option<Spanned<i64>>,
    retry_after: Option<bool>,
    rate_limited_status: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClass {
    name: Spanned<String>,
    header: Option<Spanned<String>>,
    values: Option<Spanned<Vec<Spanned<String>>>>,
    path_prefix: Option<Spanned<String>>,
    methods: Option<Spanned<Vec<Spanned<String>>>>,
}

// ---------------------------------------------------------------------------
// Checking and converting the raw file into the typed config.

type Checked<T> = Result<T, ConfigError>;

/// What every error needs: the text (to turn byte offsets into lines) and the path.
struct Ctx<'a> {
    src: &'a str,
    path: &'a Path,
}

impl Ctx<'_> {
    fn invalid(&self, span: Range<usize>, key: &str, message: impl Into<String>) -> ConfigError {
        let (line, column) = line_column(self.src, span.start);
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            line,
            column,
            key: key.to_string(),
            message: message.into(),
        }
    }

    /// A syntax, type, unknown-key or missing-key error from the TOML layer. It only
    /// knows a byte span, so the key is recovered from the text at that span.
    fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let message = err.message();
        let offset = err.span().map_or(0, |span| span.start);
        let mut key = key_path_at(self.src, offset);
        // For a missing key toml points at the table that lacks it, so the key is
        // appended; for an unknown key it points at the key itself, which the path
        // then already ends with (unless the span was less precise than usual).
        if let Some(field) = quoted_field(message, "missing field ") {
            key.push(key_segment(field));
        } else if let Some(field) = quoted_field(message, "unknown field ") {
            let field = key_segment(field);
            if key.last() != Some(&field) {
                key.push(field);
            }
        }
        self.invalid(offset..offset, &display_key(&key), message)
    }

    fn config(&self, raw: RawConfig) -> Checked<Config> {
        let server_span = raw.server.listen.as_ref().map(Spanned::span);
        let admin_span = raw.admin.listen.as_ref().map(Spanned::span);
        let server = self.server(raw.server)?;
        let admin = self.admin(raw.admin)?;
        self.distinct_listeners(&server, &admin, server_span, admin_span)?;
        let log = self.log(raw.log)?;
        let redis = raw.redis.map(|v| self.redis("redis", &v)).transpose()?;
        let upstreams = self.upstreams(raw.upstreams)?;
        let routes = self.routes(raw.routes, &upstreams, redis.is_some())?;
        Ok(Config {
            source: self.path.to_path_buf(),
            server,
            admin,
            log,
            upstreams,
            routes,
            redis,
        })
    }

    fn server(&self, raw: RawServer) -> Checked<ServerConfig> {
        Ok(ServerConfig {
            listen: raw.listen.map_or(Ok(DEFAULT_SERVER_LISTEN), |v| {
                self.socket_addr("server.listen", &v)
            })?,
            header_timeout: raw.header_timeout.map_or(Ok(DEFAULT_HEADER_TIMEOUT), |v| {
                self.duration_at_least("server.header_timeout", &v, MIN_CLIENT_TIMEOUT)
            })?,
            idle_timeout: raw.idle_timeout.map_or(Ok(DEFAULT_IDLE_TIMEOUT), |v| {
                self.duration_at_least("server.idle_timeout", &v, MIN_CLIENT_TIMEOUT)
            })?,
            backlog: raw.backlog.map_or(Ok(MAX_BACKLOG), |v| {
                self.between("server.backlog", &v, 1, MAX_BACKLOG)
            })? as u32,
            max_header_bytes: raw
                .max_header_bytes
                .map_or(Ok(DEFAULT_MAX_HEADER_BYTES), |v| {
                    self.between(
                        "server.max_header_bytes",
                        &v,
                        MIN_MAX_HEADER_BYTES,
                        MAX_MAX_HEADER_BYTES,
                    )
                })?,
            max_headers: raw.max_headers.map_or(Ok(DEFAULT_MAX_HEADERS), |v| {
                self.between("server.max_headers", &v, 1, MAX_MAX_HEADERS)
            })?,
            max_connections: raw
                .max_connections
                .map_or(Ok(DEFAULT_MAX_CONNECTIONS), |v| {
                    self.between("server.max_connections", &v, 1, MAX_CONNECTIONS)
                })?,
            max_body_bytes: raw.max_body_bytes.map_or(Ok(DEFAULT_MAX_BODY_BYTES), |v| {
                self.at_least("server.max_body_bytes", &v, 0)
            })? as u64,
            request_buffer_bytes: raw.request_buffer_bytes.map_or(
                Ok(DEFAULT_REQUEST_BUFFER_BYTES),
                |v| {
                    self.between(
                        "server.request_buffer_bytes",
                        &v,
                        0,
                        MAX_REQUEST_BUFFER_BYTES,
                    )
                },
            )?,
            client_body_timeout: raw
                .client_body_timeout
                .map_or(Ok(DEFAULT_CLIENT_BODY_TIMEOUT), |v| {
                    self.duration_at_least("server.client_body_timeout", &v, MIN_CLIENT_TIMEOUT)
                })?,
            send_timeout: raw.send_timeout.map_or(Ok(DEFAULT_SEND_TIMEOUT), |v| {
                self.duration_at_least("server.send_timeout", &v, MIN_CLIENT_TIMEOUT)
            })?,
            workers: raw
                .workers
                .map(|v| self.between("server.workers", &v, 1, MAX_WORKERS))
                .transpose()?,
            drain_timeout: raw.drain_timeout.map_or(Ok(DEFAULT_DRAIN_TIMEOUT), |v| {
                self.duration("server.drain_timeout", &v)
            })?,
            tls: raw
                .tls
                .map(|v| self.server_tls("server.tls", &v))
                .transpose()?,
            shutdown_delay: raw.shutdown_delay.map_or(Ok(Duration::ZERO), |v| {
                self.duration("server.shutdown_delay", &v)
            })?,
            trusted_proxies: raw.trusted_proxies.map_or(Ok(Vec::new()), |v| {
                self.trusted_proxies("server.trusted_proxies", &v)
            })?,
        })
    }

    fn admin(&self, raw: RawAdmin) -> Checked<AdminConfig> {
        Ok(AdminConfig {
            listen: raw.listen.as_ref().map_or(Ok(DEFAULT_ADMIN_LISTEN), |v| {
                self.socket_addr("admin.listen", v)
            })?,
            token: self.admin_token(&raw)?,
        })
    }

    /// The two listeners cannot bind the same address. Port 0 means "any free
    /// port", so two port-0 listeners do not clash.
    fn distinct_listeners(
        &self,
        server: &ServerConfig,
        admin: &AdminConfig,
        server_span: Option<Range<usize>>,
        admin_span: Option<Range<usize>>,
    ) -> Checked<()> {
        if server.listen != admin.listen || server.listen.port() == 0 {
            return Ok(());
        }
        // Blame the one that was written; both cannot be defaults, they differ.
        let (key, other, span) = match (admin_span, server_span) {
            (Some(span), _) => ("admin.listen", "server.listen", span),
            (None, Some(span)) => ("server.listen", "admin.listen", span),
            (None, None) => ("admin.listen", "server.listen", 0..0),
        };
        Err(self.invalid(
            span,
            key,
            format!("{} is also {other}; the two must differ", admin.listen),
        ))
    }

    fn log(&self, raw: RawLog) -> Checked<LogConfig> {
        Ok(LogConfig {
            format: raw
                .format
                .map_or(Ok(LogFormat::Text), |v| self.log_format("log.format", &v))?,
            level: raw.level.map_or(Ok(DEFAULT_LOG_LEVEL.to_string()), |v| {
                self.log_level("log.level", &v)
            })?,
            access_log: raw.access_log.unwrap_or(true),
        })
    }

    fn upstreams(
        &self,
        raw: Option<Spanned<BTreeMap<String, RawUpstream>>>,
    ) -> Checked<BTreeMap<String, UpstreamConfig>> {
        let Some(raw) = raw else {
            return Err(self.invalid(
                0..0,
                "upstreams",
                "at least one upstream is required: add an [upstreams.NAME] table",
            ));
        };
        if raw.get_ref().is_empty() {
            return Err(self.invalid(
                raw.span(),
                "upstreams",
                "at least one upstream is required: add an [upstreams.NAME] table",
            ));
        }
        raw.into_inner()
            .into_iter()
            .map(|(name, up)| Ok((name.clone(), self.upstream(name, up)?)))
            .collect()
    }

    fn upstream(&self, name: String, raw: RawUpstream) -> Checked<UpstreamConfig> {
        let key = |field: &str| format!("upstreams.{}.{field}", key_segment(&name));
        let targets = self.targets(&key("targets"), &raw.targets)?;
        let balance = raw.balance.map_or(Ok(Balance::RoundRobin), |v| {
            self.balance(&key("balance"), &v)
        })?;
        let retries = raw.retries.map_or(Ok(DEFAULT_RETRIES), |v| {
            self.u32_in(&key("retries"), &v, 0, MAX_RETRIES)
        })?;
        let max_inflight = raw.max_inflight.map_or(Ok(DEFAULT_MAX_INFLIGHT), |v| {
            self.usize_from_1(&key("max_inflight"), &v, MAX_INFLIGHT)
        })?;
        Ok(UpstreamConfig {
            targets,
            balance,
            retries,
            http2: raw.http2.unwrap_or(false),
            passive_health: raw
                .passive_health
                .map_or(Ok(PassiveHealth::default()), |v| {
                    self.passive_health(&key("passive_health"), &v)
                })?,
            active_health: raw
                .active_health
                .map(|v| self.active_health(&key("active_health"), &v))
                .transpose()?,
            adaptive: raw
                .adaptive
                .map(|v| self.adaptive(&key("adaptive"), &v, max_inflight))
                .transpose()?,
            tls: raw
                .tls
                .map(|v| self.upstream_tls(&key("tls"), &v))
                .transpose()?,
            max_inflight,
            connect_timeout: raw
                .connect_timeout
                .map_or(Ok(DEFAULT_CONNECT_TIMEOUT), |v| {
                    self.positive_duration(&key("connect_timeout"), &v)
                })?,
            timeout: raw.timeout.map_or(Ok(DEFAULT_UPSTREAM_TIMEOUT), |v| {
                self.positive_duration(&key("timeout"), &v)
            })?,
            pool_idle_timeout: raw
                .pool_idle_timeout
                .map_or(Ok(DEFAULT_POOL_IDLE_TIMEOUT), |v| {
                    self.duration(&key("pool_idle_timeout"), &v)
                })?,
            pool_max_idle_per_target: raw.pool_max_idle_per_target.map_or(
                Ok(DEFAULT_POOL_MAX_IDLE_PER_TARGET),
                |v| {
                    self.between(
                        &key("pool_max_idle_per_target"),
                        &v,
                        0,
                        MAX_POOL_IDLE_PER_TARGET,
                    )
                },
            )?,
            name,
        })
    }

    fn targets(
        &self,
        key: &str,
        raw: &Spanned<Vec<Spanned<String>>>,
    ) -> Checked<Vec<TargetConfig>> {
        if raw.get_ref().is_empty() {
            return Err(self.invalid(
                raw.span(),
                key,
                "at least one target (\"host:port\") is required",
            ));
        }
        let mut targets = Vec::with_capacity(raw.get_ref().len());
        let mut total_weight: u64 = 0;
        for (i, v) in raw.get_ref().iter().enumerate() {
            let target_key = format!("{key}[{i}]");
            let target = self.target(&target_key, v)?;
            total_weight += u64::from(target.weight.get());
            if total_weight > u64::from(MAX_TOTAL_WEIGHT) {
                return Err(self.invalid(
                    v.span(),
                    &target_key,
                    format!(
                        "the weights of an upstream's targets may add up to at most {MAX_TOTAL_WEIGHT} (each target counts 1 unless it has weight=N); this one brings them to {total_weight}"
                    ),
                ));
            }
            targets.push(target);
        }
        Ok(targets)
    }

    fn balance(&self, key: &str, v: &Spanned<String>) -> Checked<Balance> {
        match v.get_ref().as_str() {
            "round_robin" => Ok(Balance::RoundRobin),
            "least_inflight" => Ok(Balance::LeastInflight),
            "p2c_ewma" => Ok(Balance::P2cEwma),
            other => Err(self.invalid(
                v.span(),
                key,
                format!(
                    "unknown balance {other:?}: expected \"round_robin\", \"least_inflight\" or \"p2c_ewma\""
                ),
            )),
        }
    }

    /// `[upstreams.NAME.passive_health]`: keys left out keep their defaults.
    /// When `base_ejection` and `max_ejection` disagree, the one written is
    /// blamed (the later one if both are).
    fn passive_health(&self, key: &str, raw: &RawPassiveHealth) -> Checked<PassiveHealth> {
        let mut health = PassiveHealth::default();
        if let Some(v) = &raw.consecutive_failures {
            health.consecutive_failures = self.u32_in(
                &format!("{key}.consecutive_failures"),
                v,
                0,
                MAX_HEALTH_COUNT,
            )?;
        }
        if let Some(v) = &raw.base_ejection {
            health.base_ejection = self.positive_duration(&format!("{key}.base_ejection"), v)?;
        }
        if let Some(v) = &raw.max_ejection {
            health.max_ejection = self.duration(&format!("{key}.max_ejection"), v)?;
        }
        if health.max_ejection < health.base_ejection {
            let (base, max) = (human(health.base_ejection), human(health.max_ejection));
            return Err(match (&raw.base_ejection, &raw.max_ejection) {
                (Some(b), Some(m)) if b.span().start > m.span().start => self.invalid(
                    b.span(),
                    &format!("{key}.base_ejection"),
                    format!("must be at most max_ejection ({max}), got {base}"),
                ),
                (_, Some(m)) => self.invalid(
                    m.span(),
                    &format!("{key}.max_ejection"),
                    format!("must be at least base_ejection ({base}), got {max}"),
                ),
                (Some(b), None) => self.invalid(
                    b.span(),
                    &format!("{key}.base_ejection"),
                    format!(
                        "must be at most max_ejection ({max}, its default), got {base}; raise max_ejection too"
                    ),
                ),
                // The defaults agree with each other.
                (None, None) => self.invalid(0..0, key, "base_ejection exceeds max_ejection"),
            });
        }
        Ok(health)
    }

    /// `[upstreams.NAME.active_health]`. A timeout longer than the interval
    /// is blamed on whichever of the two was written (the later one if both).
    fn active_health(&self, key: &str, raw: &RawActiveHealth) -> Checked<ActiveHealth> {
        let k = |field: &str| format!("{key}.{field}");
        let path = raw
            .path
            .as_ref()
            .map_or(Ok(DEFAULT_HEALTH_PATH.to_string()), |v| {
                self.health_path(&k("path"), v)
            })?;
        let interval = raw
            .interval
            .as_ref()
            .map_or(Ok(DEFAULT_HEALTH_INTERVAL), |v| {
                self.positive_duration(&k("interval"), v)
            })?;
        let timeout = raw
            .timeout
            .as_ref()
            .map_or(Ok(DEFAULT_HEALTH_TIMEOUT), |v| {
                self.positive_duration(&k("timeout"), v)
            })?;
        if timeout > interval {
            let (t, i) = (human(timeout), human(interval));
            return Err(match (&raw.interval, &raw.timeout) {
                (Some(iv), Some(tv)) if iv.span().start > tv.span().start => self.invalid(
                    iv.span(),
                    &k("interval"),
                    format!("must be at least the probe timeout ({t}), got {i}"),
                ),
                (_, Some(tv)) => self.invalid(
                    tv.span(),
                    &k("timeout"),
                    format!("must be at most the probe interval ({i}), got {t}"),
                ),
                (Some(iv), None) => self.invalid(
                    iv.span(),
                    &k("interval"),
                    format!(
                        "must be at least the probe timeout ({t}, its default), got {i}; lower timeout too"
                    ),
                ),
                (None, None) => self.invalid(0..0, key, "timeout exceeds interval"),
            });
        }
        Ok(ActiveHealth {
            path,
            interval,
            timeout,
            healthy_threshold: raw
                .healthy_threshold
                .as_ref()
                .map_or(Ok(DEFAULT_HEALTHY_THRESHOLD), |v| {
                    self.u32_from_1(&k("healthy_threshold"), v, MAX_HEALTH_COUNT)
                })?,
            unhealthy_threshold: raw
                .unhealthy_threshold
                .as_ref()
                .map_or(Ok(DEFAULT_UNHEALTHY_THRESHOLD), |v| {
                    self.u32_from_1(&k("unhealthy_threshold"), v, MAX_HEALTH_COUNT)
                })?,
        })
    }

    /// The path (and optional query) probed with GET.
    fn health_path(&self, key: &str, v: &Spanned<String>) -> Checked<String> {
        let path = v.get_ref();
        if !path.starts_with('/') {
            return Err(self.invalid(v.span(), key, format!("must start with '/', got {path:?}")));
        }
        // `PathAndQuery` would silently drop a fragment, so '#' is refused first.
        let valid = !path.contains('#')
            && path
                .parse::<http::uri::PathAndQuery>()
                .is_ok_and(|p| p.as_str() == path);
        if !valid {
            return Err(self.invalid(
                v.span(),
                key,
                format!(
                    "{path:?} is not a request path (no spaces, control characters or '#'; percent-encode the rest)"
                ),
            ));
        }
        Ok(path.clone())
    }

    /// `[upstreams.NAME.adaptive]`: `min_limit <= initial_limit <= max_limit
    /// <= max_inflight`, where `max_limit` defaults to `max_inflight` and
    /// `initial_limit` to 20 brought within the bounds.
    fn adaptive(
        &self,
        key: &str,
        raw: &RawAdaptive,
        max_inflight: NonZeroUsize,
    ) -> Checked<AdaptiveConfig> {
        let k = |field: &str| format!("{key}.{field}");
        let min_limit = raw.min_limit.as_ref().map_or(Ok(NonZeroUsize::MIN), |v| {
            self.positive_usize(&k("min_limit"), v)
        })?;
        let max_limit = match &raw.max_limit {
            Some(v) => {
                let max = self.positive_usize(&k("max_limit"), v)?;
                if max > max_inflight {
                    return Err(self.invalid(
                        v.span(),
                        &k("max_limit"),
                        format!(
                            "must be at most the upstream's max_inflight ({max_inflight}), got {max}"
                        ),
                    ));
                }
                if max < min_limit {
                    return Err(self.invalid(
                        v.span(),
                        &k("max_limit"),
                        format!("must be at least min_limit ({min_limit}), got {max}"),
                    ));
                }
                max
            }
            None => {
                if min_limit > max_inflight {
                    let span = raw.min_limit.as_ref().map_or(0..0, Spanned::span);
                    return Err(self.invalid(
                        span,
                        &k("min_limit"),
                        format!(
                            "must be at most max_limit, which defaults to the upstream's max_inflight ({max_inflight}), got {min_limit}"
                        ),
                    ));
                }
                max_inflight
            }
        };
        let initial_limit = match &raw.initial_limit {
            Some(v) => {
                let initial = self.positive_usize(&k("initial_limit"), v)?;
                if !(min_limit..=max_limit).contains(&initial) {
                    return Err(self.invalid(
                        v.span(),
                        &k("initial_limit"),
                        format!(
                            "must be from min_limit ({min_limit}) to max_limit ({max_limit}), got {initial}"
                        ),
                    ));
                }
                initial
            }
            None => DEFAULT_INITIAL_LIMIT.min(max_limit).max(min_limit),
        };
        let tolerance = match &raw.tolerance {
            Some(v) => {
                let t = *v.get_ref();
                if !(t.is_finite() && t >= 1.0) {
                    return Err(self.invalid(
                        v.span(),
                        &k("tolerance"),
                        format!("must be a finite number of at least 1.0, got {t}"),
                    ));
                }
                t
            }
            None => DEFAULT_TOLERANCE,
        };
        let smoothing = match &raw.smoothing {
            Some(v) => {
                let s = *v.get_ref();
                if !(s > 0.0 && s <= 1.0) {
                    return Err(self.invalid(
                        v.span(),
                        &k("smoothing"),
                        format!("must be above 0 and at most 1, got {s}"),
                    ));
                }
                s
            }
            None => DEFAULT_SMOOTHING,
        };
        Ok(AdaptiveConfig {
            min_limit,
            max_limit,
            initial_limit,
            tolerance,
            smoothing,
        })
    }

    fn upstream_tls(&self, key: &str, raw: &RawUpstreamTls) -> Checked<UpstreamTls> {
        Ok(UpstreamTls {
            ca: raw
                .ca
                .as_ref()
                .map(|v| self.file_path(&format!("{key}.ca"), v))
                .transpose()?,
            server_name: raw
                .server_name
                .as_ref()
                .map(|v| {
                    parse_server_name(v.get_ref()).map_err(|why| {
                        self.invalid(
                            v.span(),
                            &format!("{key}.server_name"),
                            format!("invalid server name {:?}: {why}", v.get_ref()),
                        )
                    })
                })
                .transpose()?,
        })
    }

    fn server_tls(&self, key: &str, raw: &RawServerTls) -> Checked<ServerTls> {
        Ok(ServerTls {
            cert: self.file_path(&format!("{key}.cert"), &raw.cert)?,
            key: self.file_path(&format!("{key}.key"), &raw.key)?,
        })
    }

    fn routes(
        &self,
        raw: Option<Spanned<Vec<RawRoute>>>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        redis: bool,
    ) -> Checked<Vec<RouteConfig>> {
        const NONE: &str = "at least one route is required: add a [[routes]] table";
        let Some(raw) = raw else {
            return Err(self.invalid(0..0, "routes", NONE));
        };
        if raw.get_ref().is_empty() {
            return Err(self.invalid(raw.span(), "routes", NONE));
        }
        // Route names are metric labels, so two routes must never share one.
        let mut seen: HashMap<String, (usize, Range<usize>)> = HashMap::new();
        let mut routes = Vec::with_capacity(raw.get_ref().len());
        for (i, route) in raw.into_inner().into_iter().enumerate() {
            let name = route.name.get_ref();
            if let Some((first, span)) = seen.get(name) {
                let (line, _) = line_column(self.src, span.start);
                return Err(self.invalid(
                    route.name.span(),
                    &format!("routes[{i}].name"),
                    format!("duplicate route name {name:?}: already used by routes[{first}] (line {line})"),
                ));
            }
            seen.insert(name.clone(), (i, route.name.span()));
            routes.push(self.route(i, route, upstreams, redis)?);
        }
        Ok(routes)
    }

    fn route(
        &self,
        i: usize,
        raw: RawRoute,
        upstreams: &BTreeMap<String, UpstreamConfig>,
        redis: bool,
    ) -> Checked<RouteConfig> {
        let key = |field: &str| format!("routes[{i}].{field}");
        Ok(RouteConfig {
            name: self.route_name(&key("name"), &raw.name)?,
            host: raw.host.map(|v| self.host(&key("host"), &v)).transpose()?,
            path_prefix: raw
                .path_prefix
                .map_or(Ok(DEFAULT_PATH_PREFIX.to_string()), |v| {
                    self.path_prefix(&key("path_prefix"), &v)
                })?,
            methods: raw
                .methods
                .map_or(Ok(Vec::new()), |v| self.methods(&key("methods"), &v))?,
            upstream: self.upstream_ref(&key("upstream"), &raw.upstream, upstreams)?,
            limit: raw
                .limit
                .map(|v| self.limit(&key("limit"), &v, redis))
                .transpose()?,
            queue: self.queue(&key("queue"), &raw.queue)?,
            reject: self.reject(&key("reject"), &raw.reject)?,
            key: raw
                .key
                .map_or(Ok(vec![KeyPart::ClientIp]), |v| self.key(&key("key"), &v))?,
            key_limit: raw
                .key_limit
                .map(|v| self.key_limit(&key("key_limit"), &v))
                .transpose()?,
            classes: raw
                .classes
                .map_or(Ok(Vec::new()), |v| self.classes(&key("classes"), &v))?,
            upgrades: raw.upgrades.map_or_else(
                || Ok(vec![DEFAULT_UPGRADE.to_string()]),
                |v| self.upgrades(&key("upgrades"), &v),
            )?,
        })
    }

    /// `redis` says whether the file has a `[redis]` section, which a
    /// `backend = "redis"` needs.
    fn limit(&self, key: &str, raw: &RawLimit, redis: bool) -> Checked<LimitConfig> {
        let rate = self.rate(&format!("{key}.rate"), &raw.rate)?;
        let burst = self.burst(&format!("{key}.burst"), raw.burst.as_ref())?;
        let backend = self.limit_backend(key, raw, redis)?;
        let dry_run = raw.dry_run.as_ref().is_some_and(|v| *v.get_ref());
        if let (true, LimitBackend::Redis(_), Some(v)) = (dry_run, backend, &raw.dry_run) {
            // Dry run only observes this instance's own limiter; a shared state
            // that is never spent would mean nothing to the fleet.
            return Err(self.invalid(
                v.span(),
                &format!("{key}.dry_run"),
                "dry run is local-only: not allowed with backend = \"redis\" (try the rate with backend = \"local\" first)",
            ));
        }
        Ok(LimitConfig {
            rate,
            burst,
            dry_run,
            backend,
        })
    }

    /// `backend`, and the keys that only go with "redis": `lease`,
    /// `on_redis_error` and `expected_instances`.
    fn limit_backend(&self, key: &str, raw: &RawLimit, redis: bool) -> Checked<LimitBackend> {
        let k = |field: &str| format!("{key}.{field}");
        let backend = match &raw.backend {
            None => None,
            Some(v) => match v.get_ref().as_str() {
                "local" => None,
                "redis" => Some(v),
                other => {
                    return Err(self.invalid(
                        v.span(),
                        &k("backend"),
                        format!("unknown backend {other:?}: expected \"local\" or \"redis\""),
                    ));
                }
            },
        };
        let Some(backend) = backend else {
            // Blame the first of the redis-only keys written.
            let stray = [
                ("lease", raw.lease.as_ref().map(Spanned::span)),
                (
                    "on_redis_error",
                    raw.on_redis_error.as_ref().map(Spanned::span),
                ),
                (
                    "expected_instances",
                    raw.expected_instances.as_ref().map(Spanned::span),
                ),
            ]
            .into_iter()
            .filter_map(|(field, span)| Some((field, span?)))
            .min_by_key(|(_, span)| span.start);
            if let Some((field, span)) = stray {
                return Err(self.invalid(
                    span,
                    &k(field),
                    "only allowed with backend = \"redis\" (the default backend is \"local\")",
                ));
            }
            return Ok(LimitBackend::Local);
        };
        if !redis {
            return Err(self.invalid(
                backend.span(),
                &k("backend"),
                "backend = \"redis\" needs a [redis] section with `url`, e.g. [redis] url = \"redis://127.0.0.1:6379\"",
            ));
        }
        let mut limit = RedisLimitConfig::default();
        if let Some(v) = &raw.lease {
            limit.lease = self.u32_from_1(&k("lease"), v, MAX_LEASE)?;
        }
        if let Some(v) = &raw.on_redis_error {
            limit.on_error = self.on_redis_error(&k("on_redis_error"), v)?;
        }
        if let Some(v) = &raw.expected_instances {
            limit.expected_instances =
                self.u32_from_1(&k("expected_instances"), v, MAX_EXPECTED_INSTANCES)?;
        }
        Ok(LimitBackend::Redis(limit))
    }

    fn on_redis_error(&self, key: &str, v: &Spanned<String>) -> Checked<OnRedisError> {
        match v.get_ref().as_str() {
            "local" => Ok(OnRedisError::Local),
            "allow" => Ok(OnRedisError::Allow),
            "deny" => Ok(OnRedisError::Deny),
            other => Err(self.invalid(
                v.span(),
                key,
                format!(
                    "unknown on_redis_error {other:?}: expected \"local\", \"allow\" or \"deny\""
                ),
            )),
        }
    }

    /// `[redis]`: the URL is checked by the Redis client itself (no
    /// connection is made), so what loads here is what it can dial.
    fn redis(&self, key: &str, raw: &RawRedis) -> Checked<RedisConfig> {
        let k = |field: &str| format!("{key}.{field}");
        let url = self.redis_url(&k("url"), &raw.url)?;
        let password = self.secret_from(
            key,
            "password",
            raw.password_file.as_ref(),
            raw.password_env.as_ref(),
        )?;
        let password = match password {
            None => None,
            Some((_, key, span)) if crate::redis_store::url_password(&url).is_some() => {
                return Err(self.invalid(
                    span,
                    &key,
                    "the url already holds a password; give the password one way only",
                ));
            }
            Some((password, key, span)) => {
                if password.expose() == REDACTED {
                    return Err(self.invalid(span, &key, PLACEHOLDER_REFUSED));
                }
                Some(password)
            }
        };
        Ok(RedisConfig {
            url,
            password,
            key_prefix: raw
                .key_prefix
                .as_ref()
                .map_or(Ok(DEFAULT_KEY_PREFIX.to_string()), |v| {
                    self.key_prefix(&k("key_prefix"), v)
                })?,
            timeout: raw
                .timeout
                .as_ref()
                .map_or(Ok(DEFAULT_REDIS_TIMEOUT), |v| {
                    self.redis_timeout(&k("timeout"), v)
                })?,
        })
    }

    /// The messages leave the URL out: it may hold a password, and the error
    /// is logged.
    fn redis_url(&self, key: &str, v: &Spanned<String>) -> Checked<String> {
        // The same parsing the link does at start-up, so what loads here is
        // what it can dial.
        crate::redis_store::validate_url(v.get_ref())
            .map_err(|why| self.invalid(v.span(), key, why))?;
        if crate::redis_store::url_password(v.get_ref()).as_deref() == Some(REDACTED) {
            return Err(self.invalid(v.span(), key, PLACEHOLDER_REFUSED));
        }
        Ok(v.get_ref().clone())
    }

    /// Part of every Redis key sluice writes, so it must read back unchanged
    /// in logs and `redis-cli`.
    fn key_prefix(&self, key: &str, v: &Spanned<String>) -> Checked<String> {
        let prefix = v.get_ref();
        if prefix.is_empty() {
            return Err(self.invalid(v.span(), key, "must not be empty"));
        }
        if prefix.len() > MAX_KEY_PREFIX_BYTES {
            return Err(self.invalid(
                v.span(),
                key,
                format!(
                    "must be at most {MAX_KEY_PREFIX_BYTES} bytes, got {}",
                    prefix.len()
                ),
            ));
        }
        if let Some(c) = prefix.chars().find(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.invalid(
                v.span(),
                key,
                format!("must not contain whitespace or control characters, got {c:?}"),
            ));
        }
        Ok(prefix.clone())
    }

    fn redis_timeout(&self, key: &str, v: &Spanned<String>) -> Checked<Duration> {
        let timeout = self.positive_duration(key, v)?;
        if timeout > MAX_REDIS_TIMEOUT {
            return Err(self.invalid(
                v.span(),
                key,
                format!(
                    "must be at most {}, got {}",
                    human(MAX_REDIS_TIMEOUT),
                    human(timeout)
                ),
            ));
        }
        Ok(timeout)
    }

    fn key_limit(&self, key: &str, raw: &RawKeyLimit) -> Checked<KeyLimitConfig> {
        Ok(KeyLimitConfig {
            rate: self.rate(&format!("{key}.rate"), &raw.rate)?,
            burst: self.burst(&format!("{key}.burst"), raw.burst.as_ref())?,
            max_keys: raw.max_keys.as_ref().map_or(Ok(DEFAULT_MAX_KEYS), |v| {
                self.usize_from_1(&format!("{key}.max_keys"), v, MAX_KEYS)
            })?,
            dry_run: raw.dry_run.unwrap_or(false),
        })
    }

    /// Requests per second, within [`check_rate`]'s bounds (NaN fails too).
    fn rate(&self, key: &str, v: &Spanned<f64>) -> Checked<f64> {
        check_rate(*v.get_ref()).map_err(|why| self.invalid(v.span(), key, why))
    }

    fn burst(&self, key: &str, v: Option<&Spanned<i64>>) -> Checked<NonZeroU32> {
        v.map_or(Ok(DEFAULT_BURST), |v| {
            check_burst(*v.get_ref()).map_err(|why| self.invalid(v.span(), key, why))
        })
    }

    fn queue(&self, key: &str, raw: &RawQueue) -> Checked<QueueConfig> {
        let capacity = raw
            .capacity
            .as_ref()
            .map_or(Ok(DEFAULT_QUEUE_CAPACITY), |v| {
                self.between(&format!("{key}.capacity"), v, 0, MAX_QUEUE_CAPACITY)
            })?;
        let timeout = raw
            .timeout
            .as_ref()
            .map_or(Ok(DEFAULT_QUEUE_TIMEOUT), |v| {
                self.positive_duration(&format!("{key}.timeout"), v)
            })?;
        // The defaults of the other keys live in `QueueConfig::new`.
        let mut queue = QueueConfig::new(capacity, timeout);
        queue.discipline = self.discipline(key, raw, timeout)?;
        if let Some(v) = &raw.fairness {
            queue.fairness = self.fairness(&format!("{key}.fairness"), v)?;
        }
        if let Some(v) = &raw.aging {
            queue.aging = self.positive_duration(&format!("{key}.aging"), v)?;
        }
        Ok(queue)
    }

    /// `discipline` and the `lifo_threshold` that only goes with "adaptive_lifo".
    fn discipline(&self, key: &str, raw: &RawQueue, timeout: Duration) -> Checked<Discipline> {
        let threshold_key = format!("{key}.lifo_threshold");
        let adaptive = match &raw.discipline {
            None => false,
            Some(v) => match v.get_ref().as_str() {
                "fifo" => false,
                "adaptive_lifo" => true,
                other => {
                    return Err(self.invalid(
                        v.span(),
                        &format!("{key}.discipline"),
                        format!(
                            "unknown queue discipline {other:?}: expected \"fifo\" or \"adaptive_lifo\""
                        ),
                    ));
                }
            },
        };
        let threshold = match (&raw.lifo_threshold, adaptive) {
            (None, false) => return Ok(Discipline::Fifo),
            (Some(v), false) => {
                return Err(self.invalid(
                    v.span(),
                    &threshold_key,
                    "only allowed with discipline = \"adaptive_lifo\" (the default discipline is \"fifo\")",
                ));
            }
            (Some(v), true) => {
                let threshold = self.positive_duration(&threshold_key, v)?;
                if threshold >= timeout {
                    return Err(self.invalid(
                        v.span(),
                        &threshold_key,
                        format!(
                            "must be less than the queue timeout ({}), got {}",
                            human(timeout),
                            human(threshold)
                        ),
                    ));
                }
                threshold
            }
            (None, true) => {
                let threshold = timeout / 2;
                // Only a timeout of 1ns has no room for a threshold between 0 and it.
                if threshold.is_zero() {
                    let span = raw.discipline.as_ref().map_or(0..0, Spanned::span);
                    return Err(self.invalid(
                        span,
                        &format!("{key}.discipline"),
                        format!(
                            "\"adaptive_lifo\" needs a queue timeout above 1ns, got {}",
                            human(timeout)
                        ),
                    ));
                }
                threshold
            }
        };
        Ok(Discipline::AdaptiveLifo { threshold })
    }

    fn fairness(&self, key: &str, v: &Spanned<String>) -> Checked<Fairness> {
        match v.get_ref().as_str() {
            "none" => Ok(Fairness::None),
            "per_key" => Ok(Fairness::PerKey),
            other => Err(self.invalid(
                v.span(),
                key,
                format!("unknown fairness {other:?}: expected \"none\" or \"per_key\""),
            )),
        }
    }

    fn reject(&self, key: &str, raw: &RawReject) -> Checked<RejectConfig> {
        let mut reject = RejectConfig::default();
        if let Some(v) = &raw.status {
            reject.status = self.reject_status(&format!("{key}.status"), v)?;
        }
        if let Some(retry_after) = raw.retry_after {
            reject.retry_after = retry_after;
        }
        if let Some(v) = &raw.rate_limited_status {
            reject.rate_limited_status =
                self.reject_status(&format!("{key}.rate_limited_status"), v)?;
        }
        Ok(reject)
    }

    /// `key`: one part, or a non-empty list of distinct parts.
    fn key(&self, key: &str, raw: &Spanned<RawKey>) -> Checked<Vec<KeyPart>> {
        match raw.get_ref() {
            RawKey::One(part) => Ok(vec![self.key_part(key, part, raw.span())?]),
            RawKey::Many(list) => {
                if list.is_empty() {
                    return Err(self.invalid(
                        raw.span(),
                        key,
                        "must name at least one key part (\"client_ip\", \"path\" or \"header:NAME\")",
                    ));
                }
                let mut parts: Vec<KeyPart> = Vec::with_capacity(list.len());
                for (i, v) in list.iter().enumerate() {
                    let part_key = format!("{key}[{i}]");
                    let part = self.key_part(&part_key, v.get_ref(), v.span())?;
                    if let Some(first) = parts.iter().position(|p| *p == part) {
                        return Err(self.invalid(
                            v.span(),
                            &part_key,
                            format!(
                                "duplicate key part {:?}: already given as {key}[{first}]",
                                key_part_str(&part)
                            ),
                        ));
                    }
                    parts.push(part);
                }
                Ok(parts)
            }
        }
    }

    fn key_part(&self, key: &str, part: &str, span: Range<usize>) -> Checked<KeyPart> {
        match part {
            "client_ip" => Ok(KeyPart::ClientIp),
            "path" => Ok(KeyPart::Path),
            _ => match part.strip_prefix("header:") {
                Some(name) => parse_header_name(name)
                    .map(KeyPart::Header)
                    .map_err(|why| self.invalid(span, key, format!("in key part {part:?}: {why}"))),
                None => Err(self.invalid(
                    span,
                    key,
                    format!(
                        "unknown key part {part:?}: expected \"client_ip\", \"path\" or \"header:NAME\""
                    ),
                )),
            },
        }
    }

    /// `[[routes.classes]]`: at most `MAX_CLASSES`, names unique and not "default".
    fn classes(
        &self,
        key: &str,
        raw: &Spanned<Vec<Spanned<RawClass>>>,
    ) -> Checked<Vec<ClassConfig>> {
        let list = raw.get_ref();
        if let Some(extra) = list.get(MAX_CLASSES) {
            return Err(self.invalid(
                extra.span(),
                &format!("{key}[{MAX_CLASSES}]"),
                format!(
                    "a route may have at most {MAX_CLASSES} classes (besides the implicit {DEFAULT_CLASS:?}), got {}",
                    list.len()
                ),
            ));
        }
        let mut seen: HashMap<&str, (usize, Range<usize>)> = HashMap::new();
        let mut classes = Vec::with_capacity(list.len());
        for (i, class) in list.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let name = &class.get_ref().name;
            if let Some((first, span)) = seen.get(name.get_ref().as_str()) {
                let (line, _) = line_column(self.src, span.start);
                return Err(self.invalid(
                    name.span(),
                    &format!("{key}.name"),
                    format!(
                        "duplicate class name {:?}: already used by classes[{first}] (line {line})",
                        name.get_ref()
                    ),
                ));
            }
            seen.insert(name.get_ref(), (i, name.span()));
            classes.push(self.class(&key, class)?);
        }
        Ok(classes)
    }

    fn class(&self, key: &str, raw: &Spanned<RawClass>) -> Checked<ClassConfig> {
        let class = raw.get_ref();
        let name_key = format!("{key}.name");
        let name = self.route_name(&name_key, &class.name)?;
        if name == DEFAULT_CLASS {
            return Err(self.invalid(
                class.name.span(),
                &name_key,
                format!(
                    "{DEFAULT_CLASS:?} is the implicit class of requests that match no other class; choose another name"
                ),
            ));
        }
        if let (Some(values), None) = (&class.values, &class.header) {
            return Err(self.invalid(
                values.span(),
                &format!("{key}.values"),
                "only allowed together with `header` (the header whose value is compared)",
            ));
        }
        let matcher = match (&class.header, &class.path_prefix, &class.methods) {
            (Some(header), None, None) => {
                let values_key = format!("{key}.values");
                let Some(values) = &class.values else {
                    return Err(self.invalid(
                        header.span(),
                        &values_key,
                        "required with `header`: the header values that put a request in this class",
                    ));
                };
                ClassMatch::Header {
                    name: parse_header_name(header.get_ref()).map_err(|why| {
                        self.invalid(header.span(), &format!("{key}.header"), why)
                    })?,
                    values: self.header_values(&values_key, values)?,
                }
            }
            (None, Some(prefix), None) => {
                ClassMatch::PathPrefix(self.path_prefix(&format!("{key}.path_prefix"), prefix)?)
            }
            (None, None, Some(methods)) => {
                let methods_key = format!("{key}.methods");
                if methods.get_ref().is_empty() {
                    return Err(self.invalid(
                        methods.span(),
                        &methods_key,
                        "must list at least one method (an empty list would match no request)",
                    ));
                }
                ClassMatch::Methods(self.methods(&methods_key, methods.get_ref())?)
            }
            (None, None, None) => {
                return Err(self.invalid(
                    raw.span(),
                    key,
                    "a class needs exactly one of `header` (with `values`), `path_prefix` or `methods`",
                ));
            }
            (header, prefix, methods) => {
                // Two or more: blame the one written later.
                let mut given: Vec<(&str, Range<usize>)> = [
                    ("header", header.as_ref().map(Spanned::span)),
                    ("path_prefix", prefix.as_ref().map(Spanned::span)),
                    ("methods", methods.as_ref().map(Spanned::span)),
                ]
                .into_iter()
                .filter_map(|(field, span)| Some((field, span?)))
                .collect();
                given.sort_by_key(|(_, span)| span.start);
                let (first, first_span) = given.first().cloned().unwrap_or(("header", 0..0));
                let (second, second_span) = given.get(1).cloned().unwrap_or((first, 0..0));
                let (line, _) = line_column(self.src, first_span.start);
                return Err(self.invalid(
                    second_span,
                    &format!("{key}.{second}"),
                    format!(
                        "a class matches on exactly one of `header`, `path_prefix` or `methods`, and this one already has `{first}` (line {line})"
                    ),
                ));
            }
        };
        Ok(ClassConfig { name, matcher })
    }

    fn header_values(
        &self,
        key: &str,
        raw: &Spanned<Vec<Spanned<String>>>,
    ) -> Checked<Vec<String>> {
        if raw.get_ref().is_empty() {
            return Err(self.invalid(
                raw.span(),
                key,
                "must list at least one header value (an empty list would match no request)",
            ));
        }
        raw.get_ref()
            .iter()
            .enumerate()
            .map(|(i, v)| {
                http::HeaderValue::from_str(v.get_ref())
                    .map(|_| v.get_ref().clone())
                    .map_err(|_| {
                        self.invalid(
                            v.span(),
                            &format!("{key}[{i}]"),
                            format!(
                                "{:?} can never be a header value (control characters are not allowed)",
                                v.get_ref()
                            ),
                        )
                    })
            })
            .collect()
    }

    fn trusted_proxies(&self, key: &str, raw: &[Spanned<String>]) -> Checked<Vec<IpNet>> {
        raw.iter()
            .enumerate()
            .map(|(i, v)| {
                parse_net(v.get_ref()).map_err(|why| {
                    self.invalid(
                        v.span(),
                        &format!("{key}[{i}]"),
                        format!("invalid proxy address {:?}: {why}", v.get_ref()),
                    )
                })
            })
            .collect()
    }

    // --- single values ------------------------------------------------------

    /// A duration from 0 to [`MAX_DURATION`].
    fn duration(&self, key: &str, v: &Spanned<String>) -> Checked<Duration> {
        let d = humantime::parse_duration(v.get_ref()).map_err(|err| {
            self.invalid(
                v.span(),
                key,
                format!(
                    "invalid duration {:?}: {err} (write e.g. \"250ms\", \"2s\", \"1m\")",
                    v.get_ref()
                ),
            )
        })?;
        if d > MAX_DURATION {
            return Err(self.invalid(
                v.span(),
                key,
                format!("must be at most {}, got {}", human(MAX_DURATION), human(d)),
            ));
        }
        Ok(d)
    }

    /// A duration where zero would make every request fail: above 0, at most
    /// [`MAX_DURATION`].
    fn positive_duration(&self, key: &str, v: &Spanned<String>) -> Checked<Duration> {
        let d = self.duration(key, v)?;
        if d.is_zero() {
            return Err(self.invalid(
                v.span(),
                key,
                format!(
                    "must be greater than 0 (and at most {})",
                    human(MAX_DURATION)
                ),
            ));
        }
        Ok(d)
    }

    /// A duration from `min` to [`MAX_DURATION`].
    fn duration_at_least(
        &self,
        key: &str,
        v: &Spanned<String>,
        min: Duration,
    ) -> Checked<Duration> {
        let d = self.duration(key, v)?;
        if d < min {
            return Err(self.invalid(
                v.span(),
                key,
                format!(
                    "must be from {} to {}, got {}",
                    human(min),
                    human(MAX_DURATION),
                    human(d)
                ),
            ));
        }
        Ok(d)
    }

    fn u32_in(&self, key: &str, v: &Spanned<i64>, min: u32, max: u32) -> Checked<u32> {
        let n = *v.get_ref();
        match u32::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.invalid(
                v.span(),
                key,
                format!("must be from {min} to {max}, got {n}"),
            )),
        }
    }

    /// A count from 1 to `max`.
    fn u32_from_1(&self, key: &str, v: &Spanned<i64>, max: u32) -> Checked<NonZeroU32> {
        let n = self.u32_in(key, v, 1, max)?;
        NonZeroU32::new(n)
            .ok_or_else(|| self.invalid(v.span(), key, format!("must be from 1 to {max}, got 0")))
    }

    fn positive_usize(&self, key: &str, v: &Spanned<i64>) -> Checked<NonZeroUsize> {
        let n = self.at_least(key, v, 1)?;
        NonZeroUsize::new(n).ok_or_else(|| self.invalid(v.span(), key, "must be at least 1, got 0"))
    }

    /// A count from 1 to `max`.
    fn usize_from_1(&self, key: &str, v: &Spanned<i64>, max: usize) -> Checked<NonZeroUsize> {
        let n = self.between(key, v, 1, max)?;
        NonZeroUsize::new(n)
            .ok_or_else(|| self.invalid(v.span(), key, format!("must be from 1 to {max}, got 0")))
    }

    /// A file path, as written when absolute, else taken from the config
    /// file's directory. Whether the file exists is found out when it is read.
    fn file_path(&self, key: &str, v: &Spanned<String>) -> Checked<PathBuf> {
        let path = v.get_ref();
        if path.trim().is_empty() {
            return Err(self.invalid(
                v.span(),
                key,
                "must not be empty: give the path of a PEM file",
            ));
        }
        if path.contains('\0') {
            return Err(self.invalid(v.span(), key, "must not contain a NUL character"));
        }
        Ok(resolve_path(self.path, Path::new(path)))
    }

    fn between(&self, key: &str, v: &Spanned<i64>, min: usize, max: usize) -> Checked<usize> {
        let n = *v.get_ref();
        match usize::try_from(n) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(self.invalid(
                v.span(),
                key,
                format!("must be from {min} to {max}, got {n}"),
            )),
        }
    }

    fn at_least(&self, key: &str, v: &Spanned<i64>, min: usize) -> Checked<usize> {
        let n = *v.get_ref();
        match usize::try_from(n) {
            Ok(n) if n >= min => Ok(n),
            _ => Err(self.invalid(v.span(), key, format!("must be at least {min}, got {n}"))),
        }
    }

    fn socket_addr(&self, key: &str, v: &Spanned<String>) -> Checked<SocketAddr> {
        v.get_ref().parse().map_err(|_| {
            self.invalid(
                v.span(),
                key,
                format!(
                    "invalid address {:?}: expected IP:port, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\"",
                    v.get_ref()
                ),
            )
        })
    }

    fn target(&self, key: &str, v: &Spanned<String>) -> Checked<TargetConfig> {
        parse_target_spec(v.get_ref()).map_err(|why| {
            self.invalid(
                v.span(),
                key,
                format!("invalid target {:?}: {why}", v.get_ref()),
            )
        })
    }

    fn log_format(&self, key: &str, v: &Spanned<String>) -> Checked<LogFormat> {
        match v.get_ref().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(self.invalid(
                v.span(),
                key,
                format!("unknown log format {other:?}: expected \"text\" or \"json\""),
            )),
        }
    }

    /// Parsed here so a typo fails at startup instead of silently logging nothing.
    fn log_level(&self, key: &str, v: &Spanned<String>) -> Checked<String> {
        let level = v.get_ref();
        if level.trim().is_empty() {
            return Err(self.invalid(v.span(), key, "must not be empty (e.g. \"info\")"));
        }
        tracing_subscriber::EnvFilter::builder()
            .parse(level)
            .map_err(|err| {
                self.invalid(
                    v.span(),
                    key,
                    format!("invalid filter directive {level:?}: {err}"),
                )
            })?;
        Ok(level.clone())
    }

    /// `admin.token`, `admin.token_file` or `admin.token_env`, at most one.
    fn admin_token(&self, raw: &RawAdmin) -> Checked<Option<Secret>> {
        let read = self.secret_from(
            "admin",
            "token",
            raw.token_file.as_ref(),
            raw.token_env.as_ref(),
        )?;
        let (token, key, span) = match (&raw.token, read) {
            (None, None) => return Ok(None),
            (Some(v), None) => (
                Secret::new(v.get_ref().clone(), SecretSource::Inline),
                "admin.token".to_string(),
                v.span(),
            ),
            (None, Some(read)) => read,
            (Some(inline), Some((_, key, span))) => {
                let (line, _) = line_column(self.src, inline.span().start);
                return Err(self.invalid(
                    span,
                    &key,
                    format!(
                        "admin.token is already set (line {line}); give the token one way only"
                    ),
                ));
            }
        };
        self.token(&key, span, token.expose())?;
        Ok(Some(token))
    }

    /// A bearer token: visible ASCII without spaces (RFC 6750 b64token,
    /// loosely), 1 to `MAX_TOKEN_BYTES` bytes. The messages never show it.
    fn token(&self, key: &str, span: Range<usize>, token: &str) -> Checked<()> {
        if token.is_empty()
            || token.len() > MAX_TOKEN_BYTES
            || !token.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(self.invalid(
                span,
                key,
                format!("must be 1 to {MAX_TOKEN_BYTES} bytes of visible ASCII without spaces"),
            ));
        }
        if token == REDACTED {
            return Err(self.invalid(span, key, PLACEHOLDER_REFUSED));
        }
        Ok(())
    }

    /// A secret from `{table}.{name}_file` or `{table}.{name}_env` (at most
    /// one): its value, the key it came from and that key's span.
    fn secret_from(
        &self,
        table: &str,
        name: &str,
        file: Option<&Spanned<String>>,
        env: Option<&Spanned<String>>,
    ) -> Checked<Option<(Secret, String, Range<usize>)>> {
        let file_key = format!("{table}.{name}_file");
        let env_key = format!("{table}.{name}_env");
        match (file, env) {
            (None, None) => Ok(None),
            (Some(f), Some(e)) => {
                let ((first, first_span), (second, second_span)) =
                    if f.span().start < e.span().start {
                        ((&file_key, f.span()), (&env_key, e.span()))
                    } else {
                        ((&env_key, e.span()), (&file_key, f.span()))
                    };
                let (line, _) = line_column(self.src, first_span.start);
                Err(self.invalid(
                    second_span,
                    second,
                    format!("{first} is already set (line {line}); give the {name} one way only"),
                ))
            }
            (Some(v), None) => {
                let path = resolve_path(self.path, Path::new(v.get_ref()));
                if v.get_ref().trim().is_empty() || v.get_ref().contains('\0') {
                    return Err(self.invalid(v.span(), &file_key, "must be the path of a file"));
                }
                let value = read_secret_file(&path)
                    .map_err(|why| self.invalid(v.span(), &file_key, why))?;
                Ok(Some((
                    Secret::new(value, SecretSource::File(path)),
                    file_key,
                    v.span(),
                )))
            }
            (None, Some(v)) => {
                let var = v.get_ref();
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(self.invalid(
                        v.span(),
                        &env_key,
                        "must be the name of an environment variable",
                    ));
                }
                let value = match std::env::var(var) {
                    Ok(value) if !value.is_empty() => value,
                    Ok(_) => {
                        return Err(self.invalid(v.span(), &env_key, format!("${var} is empty")));
                    }
                    Err(std::env::VarError::NotPresent) => {
                        return Err(self.invalid(v.span(), &env_key, format!("${var} is not set")));
                    }
                    Err(std::env::VarError::NotUnicode(_)) => {
                        return Err(self.invalid(
                            v.span(),
                            &env_key,
                            format!("${var} is not valid UTF-8"),
                        ));
                    }
                };
                Ok(Some((
                    Secret::new(value, SecretSource::Env(var.clone())),
                    env_key,
                    v.span(),
                )))
            }
        }
    }

    fn route_name(&self, key: &str, v: &Spanned<String>) -> Checked<String> {
        if v.get_ref().trim().is_empty() {
            return Err(self.invalid(v.span(), key, "must not be empty"));
        }
        Ok(v.get_ref().clone())
    }

    fn host(&self, key: &str, v: &Spanned<String>) -> Checked<String> {
        parse_host(v.get_ref()).map_err(|why| {
            self.invalid(
                v.span(),
                key,
                format!("invalid host {:?}: {why}", v.get_ref()),
            )
        })
    }

    fn path_prefix(&self, key: &str, v: &Spanned<String>) -> Checked<String> {
        let prefix = v.get_ref();
        if !prefix.starts_with('/') {
            return Err(self.invalid(
                v.span(),
                key,
                format!("must start with '/', got {prefix:?}"),
            ));
        }
        // A request path never contains these, so such a route could never match.
        if let Some(c) = prefix
            .chars()
            .find(|c| matches!(c, '?' | '#') || c.is_whitespace())
        {
            return Err(self.invalid(
                v.span(),
                key,
                format!("must be a plain path, but {prefix:?} contains {c:?}"),
            ));
        }
        // Requests are matched on their normalised path; a prefix spelled
        // otherwise would never match.
        match crate::path::normalise(prefix) {
            Ok(normal) if normal == prefix.as_str() => Ok(prefix.clone()),
            Ok(normal) => Err(self.invalid(
                v.span(),
                key,
                format!(
                    "{prefix:?} is not a normal path (requests are matched after normalisation); write {normal:?}"
                ),
            )),
            Err(why) => Err(self.invalid(v.span(), key, format!("{prefix:?}: {why}"))),
        }
    }

    /// `upgrades`: protocol names (RFC 9110 tokens), case-insensitive, each
    /// once; never "h2c", which would take the connection out of sluice's
    /// hands as HTTP/2 inside a tunnel.
    fn upgrades(&self, key: &str, raw: &[Spanned<String>]) -> Checked<Vec<String>> {
        let mut upgrades: Vec<String> = Vec::with_capacity(raw.len());
        for (i, v) in raw.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let name = v.get_ref().to_ascii_lowercase();
            let token = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !token {
                return Err(self.invalid(
                    v.span(),
                    &key,
                    format!(
                        "{:?} is not a protocol name (a token such as \"websocket\", without a version)",
                        v.get_ref()
                    ),
                ));
            }
            if name == "h2c" {
                return Err(self.invalid(
                    v.span(),
                    &key,
                    "h2c is never tunnelled: HTTP/2 inside a tunnel would bypass shaping; clients can speak h2c to sluice directly (prior knowledge)",
                ));
            }
            if upgrades.contains(&name) {
                return Err(self.invalid(v.span(), &key, format!("duplicate protocol {name:?}")));
            }
            upgrades.push(name);
        }
        Ok(upgrades)
    }

    fn methods(&self, key: &str, raw: &[Spanned<String>]) -> Checked<Vec<http::Method>> {
        let mut methods: Vec<http::Method> = Vec::with_capacity(raw.len());
        for (i, v) in raw.iter().enumerate() {
            let key = format!("{key}[{i}]");
            let method =
                parse_method(v.get_ref()).map_err(|why| self.invalid(v.span(), &key, why))?;
            if methods.contains(&method) {
                return Err(self.invalid(v.span(), &key, format!("duplicate method {method}")));
            }
            methods.push(method);
        }
        Ok(methods)
    }

    fn upstream_ref(
        &self,
        key: &str,
        v: &Spanned<String>,
        upstreams: &BTreeMap<String, UpstreamConfig>,
    ) -> Checked<String> {
        let name = v.get_ref();
        if upstreams.contains_key(name) {
            return Ok(name.clone());
        }
        let known: Vec<String> = upstreams.keys().map(|k| format!("{k:?}")).collect();
        Err(self.invalid(
            v.span(),
            key,
            format!(
                "unknown upstream {name:?}; defined upstreams: {}",
                known.join(", ")
            ),
        ))
    }

    fn reject_status(&self, key: &str, v: &Spanned<i64>) -> Checked<StatusCode> {
        let n = *v.get_ref();
        u16::try_from(n)
            .ok()
            .filter(|n| (400..=599).contains(n))
            .and_then(|n| StatusCode::from_u16(n).ok())
            .ok_or_else(|| {
                self.invalid(
                    v.span(),
                    key,
                    format!("must be an HTTP error status from 400 to 599, got {n}"),
                )
            })
    }
}

/// A secret file's content, its trailing newline (`\n` or `\r\n`) trimmed.
/// The messages name the file, never its content.
fn read_secret_file(path: &Path) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    let cannot = |err: std::io::Error| format!("cannot read {}: {err}", path.display());
    // A FIFO or a device (`/dev/stdin`) could block the load forever.
    if !std::fs::metadata(path).map_err(cannot)?.is_file() {
        return Err(format!("{} is not a regular file", path.display()));
    }
    std::fs::File::open(path)
        .and_then(|file| {
            file.take(MAX_SECRET_FILE_BYTES + 1)
                .read_to_string(&mut text)
        })
        .map_err(cannot)?;
    if text.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(format!(
            "{} is larger than {MAX_SECRET_FILE_BYTES} bytes; it should hold only the secret",
            path.display()
        ));
    }
    let value = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(value.to_string())
}

/// A relative `file` is taken from the directory of `config`, and made
/// absolute (against the working directory, without touching the file system)
/// so the path stays the same when the rendered config is read from elsewhere.
fn resolve_path(config: &Path, file: &Path) -> PathBuf {
    if file.is_absolute() {
        return file.to_path_buf();
    }
    let joined = config.parent().unwrap_or(Path::new("")).join(file);
    std::path::absolute(&joined).unwrap_or(joined)
}

/// A `targets` entry: "host:port", then space-separated options, each at most
/// once: `weight=N` and `max_inflight=N`, both at least 1.
fn parse_target_spec(s: &str) -> Result<TargetConfig, String> {
    let mut words = s.split_ascii_whitespace();
    let mut target = TargetConfig::new(parse_target(words.next().unwrap_or_default())?);
    let mut seen: Vec<&str> = Vec::new();
    for word in words {
        let Some((name, value)) = word.split_once('=') else {
            return Err(format!(
                "option {word:?} is not NAME=VALUE; expected weight=N or max_inflight=N"
            ));
        };
        if seen.contains(&name) {
            return Err(format!(
                "duplicate option {name:?}: each option may be given once"
            ));
        }
        match name {
            "weight" => {
                target.weight = target_option(name, value, u64::from(MAX_TOTAL_WEIGHT))?;
            }
            "max_inflight" => {
                target.max_inflight = Some(target_option(name, value, MAX_INFLIGHT as u64)?);
            }
            _ => {
                return Err(format!(
                    "unknown option {name:?}: expected weight=N or max_inflight=N"
                ));
            }
        }
        seen.push(name);
    }
    Ok(target)
}

/// The N of a target's `name=N`: a plain decimal number from 1 to `max`.
fn target_option<T: TryFrom<std::num::NonZeroU64>>(
    name: &str,
    value: &str,
    max: u64,
) -> Result<T, String> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "{name}={value}: expected a whole number from 1 to {max}"
        ));
    }
    value
        .parse::<u64>()
        .ok()
        .filter(|n| *n <= max)
        .and_then(std::num::NonZeroU64::new)
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("{name} must be from 1 to {max}, got {value}"))
}

/// What TLS verifies the targets' certificate against and sends as SNI: a
/// DNS name (lower-cased) or an IP address (IPv6 without brackets).
fn parse_server_name(s: &str) -> Result<String, String> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    if s.starts_with('[') {
        return Err("write an IPv6 address without brackets, e.g. \"::1\"".into());
    }
    if s.contains(':') {
        return Err("must not include a port".into());
    }
    let name = s.to_ascii_lowercase();
    if name.is_empty() || name.len() > 253 {
        return Err("a DNS name has 1 to 253 characters".into());
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(
                "each dot-separated label must be 1 to 63 characters (no trailing dot)".into(),
            );
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(format!(
                "invalid character {c:?} (use ASCII/punycode letters, digits, '-'; no wildcards)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("a label must not start or end with '-'".into());
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|last| last.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("not an IP address, and a DNS name cannot end in a numeric label".into());
    }
    Ok(name)
}

/// "host:port" with an explicit, non-zero port and nothing else.
fn parse_target(s: &str) -> Result<Authority, String> {
    let authority: Authority = s
        .parse()
        .map_err(|err| format!("{err}; expected \"host:port\", e.g. \"127.0.0.1:9000\""))?;
    if authority.as_str().contains('@') {
        return Err("must not contain user info ('@')".into());
    }
    if authority.host().is_empty() {
        return Err("missing host; expected \"host:port\"".into());
    }
    match authority.port_u16() {
        None => Err("missing port; expected \"host:port\", e.g. \"127.0.0.1:9000\"".into()),
        Some(0) => Err("port must not be 0".into()),
        Some(_) => Ok(authority),
    }
}

/// An exact host or a leading `*.` wildcard, lower-cased, without a port.
fn parse_host(s: &str) -> Result<String, String> {
    let host = s.to_ascii_lowercase();
    let bare = host.strip_prefix("*.").unwrap_or(&host);
    if bare.is_empty() {
        return Err("empty host".into());
    }
    if bare.starts_with('[') {
        // An IPv6 literal, as it appears in a Host header.
        let ok = bare
            .strip_prefix('[')
            .and_then(|b| b.strip_suffix(']'))
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok());
        return match ok && bare.len() == host.len() {
            true => Ok(host),
            false => Err("expected an IPv6 literal like \"[::1]\" (no wildcard, no port)".into()),
        };
    }
    if bare.contains('*') {
        return Err("a wildcard is only allowed as a leading \"*.\"".into());
    }
    if bare.contains(':') {
        return Err("must not include a port (routes match any port)".into());
    }
    for label in bare.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err("each dot-separated label must be 1 to 63 characters".into());
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
        {
            return Err(format!(
                "invalid character {c:?} (use ASCII/punycode letters, digits, '-')"
            ));
        }
    }
    Ok(host)
}

/// A header name, lower-cased as HTTP/2 and `http::HeaderName` want it.
fn parse_header_name(s: &str) -> Result<http::HeaderName, String> {
    http::HeaderName::from_bytes(s.as_bytes()).map_err(|_| {
        format!("invalid header name {s:?} (a token such as \"x-api-key\": letters, digits, '-', no spaces)")
    })
}

/// A CIDR ("10.0.0.0/8") or a bare address (one host: /32 or /128).
fn parse_net(s: &str) -> Result<IpNet, String> {
    let net = match s.parse::<IpNet>() {
        Ok(net) => net,
        Err(_) => s.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
            "expected an address or a CIDR, e.g. \"10.0.0.0/8\", \"192.0.2.7\" or \"fd00::/8\""
                .to_string()
        })?,
    };
    if net.trunc() != net {
        return Err(format!(
            "host bits are set after the /{len}; write the network \"{}\" or the single address \"{}/{}\"",
            net.trunc(),
            net.addr(),
            net.max_prefix_len(),
            len = net.prefix_len(),
        ));
    }
    // Peers and forwarded hops are compared in their IPv4 form, so an
    // IPv4-mapped network would never match anything.
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
    {
        return Err(format!(
            "an IPv4-mapped IPv6 network never matches; write it as IPv4: \"{v4}/{}\"",
            v6.prefix_len() - 96
        ));
    }
    Ok(net)
}

/// A key part as it is written in the file.
fn key_part_str(part: &KeyPart) -> String {
    match part {
        KeyPart::ClientIp => "client_ip".to_string(),
        KeyPart::Path => "path".to_string(),
        KeyPart::Header(name) => format!("header:{name}"),
    }
}

/// An HTTP method token, which is case-sensitive: "get" is not GET.
fn parse_method(s: &str) -> Result<http::Method, String> {
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(format!(
            "method {s:?} must be upper case (e.g. {:?})",
            s.to_ascii_uppercase()
        ));
    }
    http::Method::from_bytes(s.as_bytes()).map_err(|_| format!("invalid HTTP method {s:?}"))
}

// ---------------------------------------------------------------------------
// Rendering: the typed config back into the file's shape.

#[derive(Serialize)]
struct RenderedConfig<'a> {
    server: RenderedServer,
    admin: RenderedAdmin,
    log: RenderedLog<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<RenderedRedis<'a>>,
    upstreams: BTreeMap<&'a str, RenderedUpstream>,
    routes: Vec<RenderedRoute<'a>>,
}

#[derive(Serialize)]
struct RenderedServer {
    listen: String,
    header_timeout: String,
    idle_timeout: String,
    backlog: u32,
    max_header_bytes: usize,
    max_headers: usize,
    max_body_bytes: u64,
    request_buffer_bytes: usize,
    client_body_timeout: String,
    send_timeout: String,
    max_connections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<usize>,
    drain_timeout: String,
    shutdown_delay: String,
    trusted_proxies: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<RenderedServerTls>,
}

#[derive(Serialize)]
struct RenderedServerTls {
    cert: String,
    key: String,
}

#[derive(Serialize)]
struct RenderedAdmin {
    listen: String,
    #[serde(flatten)]
    token: Option<RenderedSecret>,
}

/// A secret as `sluice check` prints it: the file or variable it is read
/// from, or the placeholder when it is written inline.
#[derive(Serialize)]
enum RenderedSecret {
    #[serde(rename = "token")]
    Token(&'static str),
    #[serde(rename = "token_file")]
    TokenFile(String),
    #[serde(rename = "token_env")]
    TokenEnv(String),
    #[serde(rename = "password_file")]
    PasswordFile(String),
    #[serde(rename = "password_env")]
    PasswordEnv(String),
}

#[derive(Serialize)]
struct RenderedLog<'a> {
    format: &'static str,
    level: &'a str,
    access_log: bool,
}

#[derive(Serialize)]
struct RenderedRedis<'a> {
    url: String,
    #[serde(flatten)]
    password: Option<RenderedSecret>,
    key_prefix: &'a str,
    timeout: String,
}

#[derive(Serialize)]
struct RenderedUpstream {
    targets: Vec<String>,
    balance: &'static str,
    retries: u32,
    http2: bool,
    max_inflight: usize,
    connect_timeout: String,
    timeout: String,
    pool_idle_timeout: String,
    pool_max_idle_per_target: usize,
    passive_health: RenderedPassiveHealth,
    #[serde(skip_serializing_if = "Option::is_none")]
    active_health: Option<RenderedActiveHealth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    adaptive: Option<RenderedAdaptive>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<RenderedUpstreamTls>,
}

#[derive(Serialize)]
struct RenderedPassiveHealth {
    consecutive_failures: u32,
    base_ejection: String,
    max_ejection: String,
}

#[derive(Serialize)]
struct RenderedActiveHealth {
    path: String,
    interval: String,
    timeout: String,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

#[derive(Serialize)]
struct RenderedAdaptive {
    min_limit: usize,
    max_limit: usize,
    initial_limit: usize,
    tolerance: f64,
    smoothing: f64,
}

/// Rendered even when empty: the table alone turns TLS on.
#[derive(Serialize)]
struct RenderedUpstreamTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_name: Option<String>,
}

#[derive(Serialize)]
struct RenderedRoute<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    host: Option<&'a str>,
    path_prefix: &'a str,
    methods: Vec<&'a str>,
    upstream: &'a str,
    key: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<RenderedLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key_limit: Option<RenderedKeyLimit>,
    queue: RenderedQueue,
    reject: RenderedReject,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    classes: Vec<RenderedClass<'a>>,
    upgrades: &'a [String],
}

#[derive(Serialize)]
struct RenderedLimit {
    rate: f64,
    burst: u32,
    dry_run: bool,
    backend: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lease: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    on_redis_error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expected_instances: Option<u32>,
}

#[derive(Serialize)]
struct RenderedKeyLimit {
    rate: f64,
    burst: u32,
    max_keys: usize,
    dry_run: bool,
}

#[derive(Serialize)]
struct RenderedQueue {
    capacity: usize,
    timeout: String,
    discipline: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lifo_threshold: Option<String>,
    fairness: &'static str,
    aging: String,
}

#[derive(Serialize)]
struct RenderedReject {
    status: u16,
    retry_after: bool,
    rate_limited_status: u16,
}

#[derive(Serialize)]
struct RenderedClass<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    values: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_prefix: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    methods: Option<Vec<&'a str>>,
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Paths come from TOML strings (joined to the config file's directory), so
/// they are UTF-8 unless that directory's name is not.
fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn balance_str(balance: Balance) -> &'static str {
    match balance {
        Balance::RoundRobin => "round_robin",
        Balance::LeastInflight => "least_inflight",
        Balance::P2cEwma => "p2c_ewma",
    }
}

impl<'a> From<&'a Config> for RenderedConfig<'a> {
    fn from(c: &'a Config) -> Self {
        RenderedConfig {
            server: RenderedServer {
                listen: c.server.listen.to_string(),
                header_timeout: human(c.server.header_timeout),
                idle_timeout: human(c.server.idle_timeout),
                backlog: c.server.backlog,
                max_header_bytes: c.server.max_header_bytes,
                max_headers: c.server.max_headers,
                max_body_bytes: c.server.max_body_bytes,
                request_buffer_bytes: c.server.request_buffer_bytes,
                client_body_timeout: human(c.server.client_body_timeout),
                send_timeout: human(c.server.send_timeout),
                max_connections: c.server.max_connections,
                workers: c.server.workers,
                drain_timeout: human(c.server.drain_timeout),
                shutdown_delay: human(c.server.shutdown_delay),
                trusted_proxies: c
                    .server
                    .trusted_proxies
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                tls: c.server.tls.as_ref().map(|tls| RenderedServerTls {
                    cert: path_str(&tls.cert),
                    key: path_str(&tls.key),
                }),
            },
            admin: RenderedAdmin {
                listen: c.admin.listen.to_string(),
                token: c.admin.token.as_ref().map(|t| match t.source() {
                    SecretSource::Inline => RenderedSecret::Token(REDACTED),
                    SecretSource::File(path) => RenderedSecret::TokenFile(path_str(path)),
                    SecretSource::Env(var) => RenderedSecret::TokenEnv(var.clone()),
                }),
            },
            log: RenderedLog {
                format: match c.log.format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                },
                level: &c.log.level,
                access_log: c.log.access_log,
            },
            redis: c.redis.as_ref().map(|r| RenderedRedis {
                url: crate::redis_store::redact_url(&r.url),
                password: r.password.as_ref().and_then(|p| match p.source() {
                    // Only a password from a file or a variable is kept
                    // outside the URL.
                    SecretSource::Inline => None,
                    SecretSource::File(path) => Some(RenderedSecret::PasswordFile(path_str(path))),
                    SecretSource::Env(var) => Some(RenderedSecret::PasswordEnv(var.clone())),
                }),
                key_prefix: &r.key_prefix,
                timeout: human(r.timeout),
            }),
            upstreams: c
                .upstreams
                .iter()
                .map(|(name, up)| (name.as_str(), RenderedUpstream::from(up)))
                .collect(),
            routes: c.routes.iter().map(RenderedRoute::from).collect(),
        }
    }
}

impl From<&UpstreamConfig> for RenderedUpstream {
    fn from(u: &UpstreamConfig) -> Self {
        RenderedUpstream {
            targets: u.targets.iter().map(ToString::to_string).collect(),
            balance: balance_str(u.balance),
            retries: u.retries,
            http2: u.http2,
            max_inflight: u.max_inflight.get(),
            connect_timeout: human(u.connect_timeout),
            timeout: human(u.timeout),
            pool_idle_timeout: human(u.pool_idle_timeout),
            pool_max_idle_per_target: u.pool_max_idle_per_target,
            passive_health: RenderedPassiveHealth {
                consecutive_failures: u.passive_health.consecutive_failures,
                base_ejection: human(u.passive_health.base_ejection),
                max_ejection: human(u.passive_health.max_ejection),
            },
            active_health: u.active_health.as_ref().map(|h| RenderedActiveHealth {
                path: h.path.clone(),
                interval: human(h.interval),
                timeout: human(h.timeout),
                healthy_threshold: h.healthy_threshold.get(),
                unhealthy_threshold: h.unhealthy_threshold.get(),
            }),
            adaptive: u.adaptive.map(|a| RenderedAdaptive {
                min_limit: a.min_limit.get(),
                max_limit: a.max_limit.get(),
                initial_limit: a.initial_limit.get(),
                tolerance: a.tolerance,
                smoothing: a.smoothing,
            }),
            tls: u.tls.as_ref().map(|tls| RenderedUpstreamTls {
                ca: tls.ca.as_deref().map(path_str),
                server_name: tls.server_name.clone(),
            }),
        }
    }
}

impl<'a> From<&'a RouteConfig> for RenderedRoute<'a> {
    fn from(r: &'a RouteConfig) -> Self {
        RenderedRoute {
            name: &r.name,
            host: r.host.as_deref(),
            path_prefix: &r.path_prefix,
            methods: r.methods.iter().map(http::Method::as_str).collect(),
            upstream: &r.upstream,
            key: r.key.iter().map(key_part_str).collect(),
            limit: r.limit.map(RenderedLimit::from),
            key_limit: r.key_limit.map(|l| RenderedKeyLimit {
                rate: l.rate,
                burst: l.burst.get(),
                max_keys: l.max_keys.get(),
                dry_run: l.dry_run,
            }),
            queue: RenderedQueue::from(&r.queue),
            reject: RenderedReject {
                status: r.reject.status.as_u16(),
                retry_after: r.reject.retry_after,
                rate_limited_status: r.reject.rate_limited_status.as_u16(),
            },
            classes: r.classes.iter().map(RenderedClass::from).collect(),
            upgrades: &r.upgrades,
        }
    }
}

impl From<LimitConfig> for RenderedLimit {
    /// The redis-only keys are left out with the "local" backend, where they
    /// would be errors.
    fn from(l: LimitConfig) -> Self {
        let mut limit = RenderedLimit {
            rate: l.rate,
            burst: l.burst.get(),
            dry_run: l.dry_run,
            backend: "local",
            lease: None,
            on_redis_error: None,
            expected_instances: None,
        };
        if let LimitBackend::Redis(redis) = l.backend {
            limit.backend = "redis";
            limit.lease = Some(redis.lease.get());
            limit.on_redis_error = Some(match redis.on_error {
                OnRedisError::Local => "local",
                OnRedisError::Allow => "allow",
                OnRedisError::Deny => "deny",
            });
            limit.expected_instances = Some(redis.expected_instances.get());
        }
        limit
    }
}

impl From<&QueueConfig> for RenderedQueue {
    fn from(q: &QueueConfig) -> Self {
        let (discipline, lifo_threshold) = match q.discipline {
            Discipline::Fifo => ("fifo", None),
            Discipline::AdaptiveLifo { threshold } => ("adaptive_lifo", Some(human(threshold))),
        };
        RenderedQueue {
            capacity: q.capacity,
            timeout: human(q.timeout),
            discipline,
            lifo_threshold,
            fairness: match q.fairness {
                Fairness::None => "none",
                Fairness::PerKey => "per_key",
            },
            aging: human(q.aging),
        }
    }
}

impl<'a> From<&'a ClassConfig> for RenderedClass<'a> {
    fn from(c: &'a ClassConfig) -> Self {
        let mut class = RenderedClass {
            name: &c.name,
            header: None,
            values: None,
            path_prefix: None,
            methods: None,
        };
        match &c.matcher {
            ClassMatch::Header { name, values } => {
                class.header = Some(name.as_str());
                class.values = Some(values);
            }
            ClassMatch::PathPrefix(prefix) => class.path_prefix = Some(prefix),
            ClassMatch::Methods(methods) => {
                class.methods = Some(methods.iter().map(http::Method::as_str).collect());
            }
        }
        class
    }
}

// ---------------------------------------------------------------------------
// Locating errors: byte offset -> line, column and dotted key.

/// 1-based line and column (in characters) of a byte offset; offsets past the
/// end or inside a character are clamped rather than trusted.
fn line_column(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.bytes().filter(|&b| b == b'\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// `(top level)` when nothing narrower is known.
fn display_key(path: &[String]) -> String {
    if path.is_empty() {
        "(top level)".to_string()
    } else {
        path.join(".")
    }
}

/// A key as it would be written in TOML: bare when possible, quoted otherwise.
fn key_segment(name: &str) -> String {
    if !name.is_empty() && name.bytes().all(is_bare_key_byte) {
        name.to_string()
    } else {
        format!("{name:?}")
    }
}

fn is_bare_key_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The name in "missing field `upstream`" / "unknown field `rat`, expected ...".
fn quoted_field<'m>(message: &'m str, prefix: &str) -> Option<&'m str> {
    message
        .strip_prefix(prefix)?
        .strip_prefix('`')?
        .split('`')
        .next()
}

/// The dotted key in force at `offset`, with array-of-tables and array indexes,
/// e.g. `["routes[1]", "limit", "rate"]`.
///
/// The TOML parser only reports byte spans, and for a syntax error there is no
/// document tree to ask, so this reads the text itself. It follows just enough
/// of the grammar (headers, dotted and quoted keys, strings of all four kinds,
/// comments, arrays and inline tables) to know which key each token belongs to,
/// and it is total: any input, however broken, yields some path.
fn key_path_at(src: &str, offset: usize) -> Vec<String> {
    let mut scanner = KeyScanner {
        src: src.as_bytes(),
        pos: 0,
        target: offset,
        table: Vec::new(),
        tables_in_arrays: HashMap::new(),
        found: Vec::new(),
        depth: 0,
    };
    scanner.run();
    scanner.found
}

struct KeyScanner<'a> {
    src: &'a [u8],
    pos: usize,
    /// The byte offset whose key we want.
    target: usize,
    /// The header in force, indexes resolved (`["routes[1]", "limit"]`).
    table: Vec<String>,
    /// How many `[[x]]` headers each resolved path has had so far.
    tables_in_arrays: HashMap<String, usize>,
    /// The path of the last token that starts at or before `target`.
    found: Vec<String>,
    /// Arrays and inline tables currently open, bounded so hostile nesting
    /// cannot overflow the stack.
    depth: usize,
}

/// Deeper than the TOML parser itself accepts, so every real error is reached.
const MAX_SCAN_DEPTH: usize = 128;

impl KeyScanner<'_> {
    fn run(&mut self) {
        if self.src.starts_with("\u{feff}".as_bytes()) {
            self.pos = 3;
        }
        while self.pos < self.src.len() && self.pos <= self.target {
            self.line();
        }
    }

    /// Records that the token starting at `start` belongs to `path`.
    fn note(&mut self, start: usize, path: &[String]) {
        if start <= self.target {
            self.found = path.to_vec();
        }
    }

    fn peek(&self) -> Option<u8> {
        self.src.get(self.pos).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.pos + ahead).copied()
    }

    fn eat(&mut self, b: u8) -> bool {
        let hit = self.peek() == Some(b);
        if hit {
            self.pos += 1;
        }
        hit
    }

    fn skip_spaces(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.pos += 1;
        }
    }

    /// Spaces, newlines and comments: what may sit between array elements.
    fn skip_blank(&mut self) {
        loop {
            match self.peek() {
                Some(b' ' | b'\t' | b'\r' | b'\n') => self.pos += 1,
                Some(b'#') => self.skip_line(),
                _ => return,
            }
        }
    }

    fn skip_line(&mut self) {
        while let Some(b) = self.peek() {
            self.pos += 1;
            if b == b'\n' {
                return;
            }
        }
    }

    /// One line at statement level: blank, comment, header or key/value. Whatever
    /// is left on the line afterwards (a comment, trailing junk) keeps the path of
    /// the key before it, which is what an error there is about.
    fn line(&mut self) {
        let table = self.table.clone();
        self.note(self.pos, &table);
        self.skip_spaces();
        match self.peek() {
            Some(b'[') => self.header(),
            Some(b'#' | b'\r' | b'\n') | None => {}
            Some(_) => self.key_value(&table),
        }
        self.skip_line();
    }

    fn header(&mut self) {
        let start = self.pos;
        self.pos += 1;
        let is_array = self.eat(b'[');
        let segments = self.dotted_key();
        self.table = self.resolve_header(&segments, is_array);
        let table = self.table.clone();
        self.note(start, &table);
    }

    /// `[routes.limit]` after the second `[[routes]]` is `routes[1].limit`;
    /// `[[routes]]` itself opens the next index.
    fn resolve_header(&mut self, segments: &[String], is_array: bool) -> Vec<String> {
        let mut path: Vec<String> = Vec::with_capacity(segments.len());
        // The resolved path so far as one string: the key of `tables_in_arrays`.
        let mut id = String::new();
        for (i, segment) in segments.iter().enumerate() {
            let mut name = key_segment(segment);
            // Past any sane nesting, skip the lookups, which would make a hostile
            // header of thousands of segments quadratic.
            if i < MAX_SCAN_DEPTH {
                if !id.is_empty() {
                    id.push('.');
                }
                id.push_str(&name);
                let index = if is_array && i + 1 == segments.len() {
                    let count = self.tables_in_arrays.entry(id.clone()).or_insert(0);
                    *count += 1;
                    Some(*count - 1)
                } else {
                    self.tables_in_arrays
                        .get(&id)
                        .map(|count| count.saturating_sub(1))
                };
                if let Some(index) = index {
                    let suffix = format!("[{index}]");
                    id.push_str(&suffix);
                    name.push_str(&suffix);
                }
            }
            path.push(name);
        }
        path
    }

    fn key_value(&mut self, table: &[String]) {
        let start = self.pos;
        let segments = self.dotted_key();
        if segments.is_empty() {
            return;
        }
        let mut path = table.to_vec();
        path.extend(segments.iter().map(|s| key_segment(s)));
        self.note(start, &path);
        self.skip_spaces();
        if self.eat(b'=') {
            self.value(&path);
        }
    }

    /// `a . "b c" . 'd'` -> ["a", "b c", "d"]; empty if no key starts here.
    fn dotted_key(&mut self) -> Vec<String> {
        let mut segments = Vec::new();
        loop {
            self.skip_spaces();
            match self.simple_key() {
                Some(segment) => segments.push(segment),
                None => break,
            }
            self.skip_spaces();
            if !self.eat(b'.') {
                break;
            }
        }
        segments
    }

    fn simple_key(&mut self) -> Option<String> {
        let start = self.pos;
        match self.peek()? {
            q @ (b'"' | b'\'') => {
                self.single_line_string(q);
                // Escapes are left as written: the key is only shown, never looked up.
                let end = self.pos.saturating_sub(1).max(start + 1);
                let inner = self.src.get(start + 1..end).unwrap_or_default();
                Some(String::from_utf8_lossy(inner).into_owned())
            }
            b if is_bare_key_byte(b) => {
                while self.peek().is_some_and(is_bare_key_byte) {
                    self.pos += 1;
                }
                Some(String::from_utf8_lossy(&self.src[start..self.pos]).into_owned())
            }
            _ => None,
        }
    }

    fn value(&mut self, path: &[String]) {
        self.skip_spaces();
        self.note(self.pos, path);
        match self.peek() {
            Some(b'[' | b'{') if self.depth >= MAX_SCAN_DEPTH => self.pos += 1,
            Some(b'[') => self.nested(|s| s.array(path)),
            Some(b'{') => self.nested(|s| s.inline_table(path)),
            Some(q @ (b'"' | b'\'')) => self.string(q),
            Some(b'#' | b'\r' | b'\n') | None => {}
            Some(_) => self.scalar(),
        }
    }

    fn nested(&mut self, read: impl FnOnce(&mut Self)) {
        self.depth += 1;
        read(self);
        self.depth -= 1;
    }

    /// Numbers, booleans, dates: everything up to the next delimiter.
    fn scalar(&mut self) {
        while let Some(b) = self.peek() {
            if matches!(b, b',' | b']' | b'}' | b'#' | b' ' | b'\t' | b'\r' | b'\n') {
                return;
            }
            self.pos += 1;
        }
    }

    fn array(&mut self, path: &[String]) {
        self.pos += 1;
        let mut index = 0;
        loop {
            self.skip_blank();
            match self.peek() {
                None => return,
                Some(b']') => {
                    self.pos += 1;
                    return;
                }
                Some(b',') => {
                    self.note(self.pos, path);
                    self.pos += 1;
                    index += 1;
                }
                Some(_) => {
                    let mut element = path.to_vec();
                    if let Some(last) = element.last_mut() {
                        last.push_str(&format!("[{index}]"));
                    }
                    let before = self.pos;
                    self.value(&element);
                    // Something that is not a value: step over it so we always advance.
                    if self.pos == before {
                        self.pos += 1;
                    }
                }
            }
        }
    }

    fn inline_table(&mut self, path: &[String]) {
        self.pos += 1;
        loop {
            self.skip_blank();
            match self.peek() {
                None => return,
                Some(b'}') => {
                    self.pos += 1;
                    return;
                }
                Some(b',') => {
                    self.note(self.pos, path);
                    self.pos += 1;
                }
                Some(_) => {
                    let before = self.pos;
                    self.key_value(path);
                    if self.pos == before {
                        self.pos += 1;
                    }
                }
            }
        }
    }

    fn string(&mut self, quote: u8) {
        if self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote) {
            self.multi_line_string(quote);
        } else {
            self.single_line_string(quote);
        }
    }

    /// Stops after the closing quote, or before the newline if there is none.
    fn single_line_string(&mut self, quote: u8) {
        self.pos += 1;
        while let Some(b) = self.peek() {
            match b {
                b'\n' => return,
                b'\\' if quote == b'"' => self.pos += 2,
                _ if b == quote => {
                    self.pos += 1;
                    return;
                }
                _ => self.pos += 1,
            }
        }
    }

    fn multi_line_string(&mut self, quote: u8) {
        self.pos += 3;
        while let Some(b) = self.peek() {
            if b == b'\\' && quote == b'"' {
                self.pos += 2;
            } else if b == quote && self.peek_at(1) == Some(quote) && self.peek_at(2) == Some(quote)
            {
                self.pos += 3;
                // Up to two more quotes may end the content itself (`""""x"""""`).
                for _ in 0..2 {
                    self.eat(quote);
                }
                return;
            } else {
                self.pos += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Some(ServerTls {
                // Relative to the config file "test.toml", i.e. the working directory.
                cert: cwd.join("certs/server.pem"),
                key: PathBuf::from("/etc/sluice/server.key"),
            })
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
    fn to_toml_renders_upstream_tables_only_when_set() {
        let rendered = parse(FULL).expect("parses").to_toml();
        for expected in [
            "targets = [\"127.0.0.1:9000 weight=3 max_inflight=50\", \"backend.internal:9001 max_inflight=7\"]",
            "balance = \"least_inflight\"\nretries = 0\nhttp2 = true\n",
            "[upstreams.api.passive_health]\nconsecutive_failures = 0\nbase_ejection = \"250ms\"\nmax_ejection = \"250ms\"\n",
            "[upstreams.api.active_health]\npath = \"/status?probe=1\"\ninterval = \"2s\"\ntimeout = \"2s\"\nhealthy_threshold = 1\nunhealthy_threshold = 10\n",
            "[upstreams.api.adaptive]\nmin_limit = 4\nmax_limit = 32\ninitial_limit = 8\ntolerance = 1.0\nsmoothing = 1.0\n",
            "[upstreams.api.tls]\nca = \"/etc/sluice/upstream-ca.pem\"\nserver_name = \"api.internal\"\n",
            "targets = [\"[::1]:7000 weight=2\"]",
            "[upstreams.\"slow pool\".passive_health]\nconsecutive_failures = 5\nbase_ejection = \"5s\"\nmax_ejection = \"10m\"\n",
            "[upstreams.\"slow pool\".adaptive]\nmin_limit = 1\nmax_limit = 256\ninitial_limit = 20\ntolerance = 2.5\nsmoothing = 0.05\n",
            "[upstreams.\"slow pool\".tls]\n",
            "[server.tls]\ncert = \"/",
            "key = \"/etc/sluice/server.key\"",
        ] {
            assert!(
                rendered.contains(expected),
                "{expected:?} missing in:\n{rendered}"
            );
        }
        let minimal = parse(MINIMAL).expect("parses").to_toml();
        for absent in [
            "active_health",
            "adaptive",
            "tls",
            "cert",
            "weight",
            "max_inflight=",
        ] {
            assert!(!minimal.contains(absent), "{absent:?} in:\n{minimal}");
        }
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
    fn upstream_balancing_health_and_tls_errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("targets = [\"a:1 weight=0\"]", 2, "upstreams.b.targets[0]"),
            ("targets = [\"a:1 weight=x\"]", 2, "upstreams.b.targets[0]"),
            ("targets = [\"a:1 weight=-1\"]", 2, "upstreams.b.targets[0]"),
            ("targets = [\"a:1 weight=\"]", 2, "upstreams.b.targets[0]"),
            (
                "targets = [\"a:1 weight=4294967296\"]",
                2,
                "upstreams.b.targets[0]",
            ),
            (
                "targets = [\"a:1\", \"a:2 max_inflight=0\"]",
                2,
                "upstreams.b.targets[1]",
            ),
            ("targets = [\"a:1 foo=1\"]", 2, "upstreams.b.targets[0]"),
            ("targets = [\"a:1 weight\"]", 2, "upstreams.b.targets[0]"),
            (
                "targets = [\n  \"a:1\",\n  \"a:2 weight=2 weight=2\",\n]",
                4,
                "upstreams.b.targets[1]",
            ),
            ("targets = [\"weight=2 a:1\"]", 2, "upstreams.b.targets[0]"),
            (
                "targets = [\"a:1\"]\nbalance = \"random\"",
                3,
                "upstreams.b.balance",
            ),
            ("targets = [\"a:1\"]\nbalance = 1", 3, "upstreams.b.balance"),
            ("targets = [\"a:1\"]\nretries = 6", 3, "upstreams.b.retries"),
            (
                "targets = [\"a:1\"]\nretries = -1",
                3,
                "upstreams.b.retries",
            ),
            (
                "targets = [\"a:1\"]\nhttp2 = \"yes\"",
                3,
                "upstreams.b.http2",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nconsecutive_failures = -1",
                4,
                "upstreams.b.passive_health.consecutive_failures",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nbase_ejection = \"0s\"",
                4,
                "upstreams.b.passive_health.base_ejection",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nbase_ejection = \"2m\"",
                4,
                "upstreams.b.passive_health.base_ejection",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nmax_ejection = \"1s\"",
                4,
                "upstreams.b.passive_health.max_ejection",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nbase_ejection = \"10s\"\nmax_ejection = \"9s\"",
                5,
                "upstreams.b.passive_health.max_ejection",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nmax_ejection = \"9s\"\nbase_ejection = \"10s\"",
                5,
                "upstreams.b.passive_health.base_ejection",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.passive_health]\nfailures = 3",
                4,
                "upstreams.b.passive_health.failures",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\npath = \"healthz\"",
                4,
                "upstreams.b.active_health.path",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\npath = \"/a b\"",
                4,
                "upstreams.b.active_health.path",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\npath = \"/a#b\"",
                4,
                "upstreams.b.active_health.path",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\ninterval = \"0s\"",
                4,
                "upstreams.b.active_health.interval",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\ntimeout = \"0s\"",
                4,
                "upstreams.b.active_health.timeout",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\ntimeout = \"6s\"",
                4,
                "upstreams.b.active_health.timeout",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\ninterval = \"2s\"\ntimeout = \"3s\"",
                5,
                "upstreams.b.active_health.timeout",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\ntimeout = \"3s\"\ninterval = \"2s\"",
                5,
                "upstreams.b.active_health.interval",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\ninterval = \"500ms\"",
                4,
                "upstreams.b.active_health.interval",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\nhealthy_threshold = 0",
                4,
                "upstreams.b.active_health.healthy_threshold",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.active_health]\nunhealthy_threshold = -3",
                4,
                "upstreams.b.active_health.unhealthy_threshold",
            ),
            (
                "targets = [\"a:1\"]\nactive_health = { method = \"HEAD\" }",
                3,
                "upstreams.b.active_health.method",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmin_limit = 0",
                4,
                "upstreams.b.adaptive.min_limit",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmin_limit = 300",
                4,
                "upstreams.b.adaptive.min_limit",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmax_limit = 257",
                4,
                "upstreams.b.adaptive.max_limit",
            ),
            (
                "targets = [\"a:1\"]\nmax_inflight = 10\n[upstreams.b.adaptive]\nmax_limit = 11",
                5,
                "upstreams.b.adaptive.max_limit",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmin_limit = 5\nmax_limit = 4",
                5,
                "upstreams.b.adaptive.max_limit",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmax_limit = 0",
                4,
                "upstreams.b.adaptive.max_limit",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmin_limit = 5\ninitial_limit = 4",
                5,
                "upstreams.b.adaptive.initial_limit",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nmax_limit = 10\ninitial_limit = 11",
                5,
                "upstreams.b.adaptive.initial_limit",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\ntolerance = 0.99",
                4,
                "upstreams.b.adaptive.tolerance",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\ntolerance = inf",
                4,
                "upstreams.b.adaptive.tolerance",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\ntolerance = nan",
                4,
                "upstreams.b.adaptive.tolerance",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nsmoothing = 0",
                4,
                "upstreams.b.adaptive.smoothing",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nsmoothing = 1.01",
                4,
                "upstreams.b.adaptive.smoothing",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nsmoothing = nan",
                4,
                "upstreams.b.adaptive.smoothing",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.adaptive]\nlimit = 3",
                4,
                "upstreams.b.adaptive.limit",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.tls]\nca = \"\"",
                4,
                "upstreams.b.tls.ca",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.tls]\nserver_name = \"*.internal\"",
                4,
                "upstreams.b.tls.server_name",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.tls]\nserver_name = \"api.internal:443\"",
                4,
                "upstreams.b.tls.server_name",
            ),
            (
                "targets = [\"a:1\"]\n[upstreams.b.tls]\nsni = \"api\"",
                4,
                "upstreams.b.tls.sni",
            ),
            ("targets = [\"a:1\"]\ntls = true", 3, "upstreams.b.tls"),
        ];
        for (body, line, key) in cases {
            let (l, _, k, message) = fail(&format!("[upstreams.b]\n{body}\n{MINIMAL}"));
            assert_eq!((l, k.as_str()), (*line, *key), "{body}: {message}");
        }
        let message = |body: &str| fail(&format!("[upstreams.b]\n{body}\n{MINIMAL}")).3;
        for (body, expected) in [
            (
                "targets = [\"a:1 weight=0\"]",
                "weight must be from 1 to 10000, got 0",
            ),
            (
                "targets = [\"a:1 weight=x\"]",
                "weight=x: expected a whole number",
            ),
            ("targets = [\"a:1 foo=1\"]", "unknown option \"foo\""),
            (
                "targets = [\"a:1 max_inflight=2 max_inflight=2\"]",
                "duplicate option \"max_inflight\"",
            ),
            (
                "targets = [\"a:1\"]\nbalance = \"random\"",
                "\"round_robin\", \"least_inflight\" or \"p2c_ewma\"",
            ),
            (
                "targets = [\"a:1\"]\nmax_inflight = 10\nadaptive = { max_limit = 11 }",
                "at most the upstream's max_inflight (10)",
            ),
            (
                "targets = [\"a:1\"]\nactive_health = { timeout = \"6s\" }",
                "at most the probe interval (5s)",
            ),
        ] {
            let message = message(body);
            assert!(message.contains(expected), "{body}: {message}");
        }
    }

    #[test]
    fn server_tls_errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("[server.tls]\nkey = \"k.pem\"", 1, "server.tls.cert"),
            ("[server.tls]\ncert = \"c.pem\"", 1, "server.tls.key"),
            (
                "[server.tls]\ncert = \"\"\nkey = \"k.pem\"",
                2,
                "server.tls.cert",
            ),
            (
                "[server.tls]\ncert = \"c.pem\"\nkey = \" \"",
                3,
                "server.tls.key",
            ),
            (
                "[server.tls]\ncert = \"c.pem\"\nkey = \"k.pem\"\nca = \"ca.pem\"",
                4,
                "server.tls.ca",
            ),
            (
                "[server]\ntls = { cert = 1, key = \"k.pem\" }",
                2,
                "server.tls.cert",
            ),
        ];
        for (head, line, key) in cases {
            let (l, _, k, message) = fail(&format!("{head}\n{MINIMAL}"));
            assert_eq!((l, k.as_str()), (*line, *key), "{head}: {message}");
        }
    }

    #[test]
    fn target_specs() {
        let spec = |s: &str| parse_target_spec(s).map(|t| t.to_string());
        assert_eq!(spec("a:1").as_deref(), Ok("a:1"));
        assert_eq!(spec("a:1 weight=1").as_deref(), Ok("a:1"));
        assert_eq!(
            spec("a:1 max_inflight=5 weight=3").as_deref(),
            Ok("a:1 weight=3 max_inflight=5")
        );
        assert_eq!(spec(" a:1\tweight=07 ").as_deref(), Ok("a:1 weight=7"));
        let target = parse_target_spec("[::1]:80 weight=10000 max_inflight=1").expect("ok");
        assert_eq!(target.weight.get(), MAX_TOTAL_WEIGHT);
        assert_eq!(target.max_inflight, Some(NonZeroUsize::MIN));
        let target = parse_target_spec("a:1 max_inflight=1048576").expect("ok");
        assert_eq!(
            target.max_inflight.map(NonZeroUsize::get),
            Some(MAX_INFLIGHT)
        );
        for bad in [
            "",
            "weight=1",
            "a:1 weight=0",
            "a:1 weight=00",
            "a:1 weight=+1",
            "a:1 weight=1.5",
            "a:1 weight=4294967296",
            "a:1 max_inflight=0",
            "a:1 max_inflight=99999999999999999999999",
            "a:1 weight=1 weight=1",
            "a:1 Weight=1",
            "a:1 weight",
            "a:1 =1",
            "a:1 a:2",
            "a:0 weight=1",
        ] {
            assert!(parse_target_spec(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn server_names() {
        for (input, expected) in [
            ("api.internal", "api.internal"),
            ("API.Internal", "api.internal"),
            ("localhost", "localhost"),
            ("a-b.c_d.example", "a-b.c_d.example"),
            ("10.0.0.1", "10.0.0.1"),
            ("::1", "::1"),
            ("fd00:0::0001", "fd00::1"),
            ("3com.example", "3com.example"),
        ] {
            assert_eq!(parse_server_name(input).as_deref(), Ok(expected));
        }
        for bad in [
            "",
            "[::1]",
            "api:443",
            "*.example.com",
            "a..b",
            "example.com.",
            "-a.example",
            "a-.example",
            "exa mple",
            "ü.de",
            "10.0.0.256",
            "1.2.3",
            &"a".repeat(64),
            &["a"; 128].join("."),
        ] {
            assert!(parse_server_name(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn to_toml_renders_keys_queue_and_classes_in_file_shape() {
        let rendered = parse(FULL).expect("parses").to_toml();
        for expected in [
            "trusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7/32\", \"fd00::/8\", \"::1/128\"]",
            "key = [\"client_ip\", \"header:x-api-key\", \"path\"]",
            "key = [\"header:authorization\"]",
            "[routes.key_limit]",
            "max_keys = 1",
            "dry_run = true",
            "discipline = \"adaptive_lifo\"",
            "lifo_threshold = \"1h\"",
            "lifo_threshold = \"1s 500ms\"",
            "fairness = \"per_key\"",
            "aging = \"250ms\"",
            "rate_limited_status = 503",
            "[[routes.classes]]\nname = \"vip\"\nheader = \"x-tier\"\nvalues = [\"gold\", \"vip\", \"\"]",
            "[[routes.classes]]\nname = \"checkout\"\npath_prefix = \"/seckill/checkout\"",
            "[[routes.classes]]\nname = \"writes\"\nmethods = [\"POST\", \"PUT\"]",
            "[[routes.classes]]\nname = \"reads\"\nmethods = [\"GET\"]",
        ] {
            assert!(
                rendered.contains(expected),
                "{expected:?} missing in:\n{rendered}"
            );
        }
        let minimal = parse(MINIMAL).expect("parses").to_toml();
        for expected in [
            "trusted_proxies = []",
            "key = [\"client_ip\"]",
            "discipline = \"fifo\"",
            "fairness = \"none\"",
            "aging = \"1s\"",
            "rate_limited_status = 429",
        ] {
            assert!(
                minimal.contains(expected),
                "{expected:?} missing in:\n{minimal}"
            );
        }
        for absent in ["lifo_threshold", "key_limit", "classes", "dry_run"] {
            assert!(!minimal.contains(absent), "{absent:?} in:\n{minimal}");
        }
    }

    #[test]
    fn key_limit_queue_and_reject_errors() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "[routes.key_limit]\nrate = 0",
                9,
                "routes[0].key_limit.rate",
            ),
            (
                "[routes.key_limit]\nrate = -1",
                9,
                "routes[0].key_limit.rate",
            ),
            (
                "[routes.key_limit]\nrate = nan",
                9,
                "routes[0].key_limit.rate",
            ),
            (
                "[routes.key_limit]\nrate = inf",
                9,
                "routes[0].key_limit.rate",
            ),
            (
                "[routes.key_limit]\nrate = 1\nburst = 0",
                10,
                "routes[0].key_limit.burst",
            ),
            (
                "[routes.key_limit]\nrate = 1\nmax_keys = 0",
                10,
                "routes[0].key_limit.max_keys",
            ),
            (
                "[routes.key_limit]\nrate = 1\nmax_keys = -5",
                10,
                "routes[0].key_limit.max_keys",
            ),
            (
                "[routes.key_limit]\nburst = 2",
                8,
                "routes[0].key_limit.rate",
            ),
            (
                "[routes.key_limit]\nrate = 1\nmax_key = 2",
                10,
                "routes[0].key_limit.max_key",
            ),
            (
                "[routes.key_limit]\nrate = 1\ndry_run = \"yes\"",
                10,
                "routes[0].key_limit.dry_run",
            ),
            (
                "[routes.limit]\nrate = 1\ndry_run = 1",
                10,
                "routes[0].limit.dry_run",
            ),
            (
                "[routes.queue]\nlifo_threshold = \"1s\"",
                9,
                "routes[0].queue.lifo_threshold",
            ),
            (
                "[routes.queue]\ndiscipline = \"fifo\"\nlifo_threshold = \"100ms\"",
                10,
                "routes[0].queue.lifo_threshold",
            ),
            (
                "[routes.queue]\ndiscipline = \"adaptive_lifo\"\nlifo_threshold = \"1s\"",
                10,
                "routes[0].queue.lifo_threshold",
            ),
            (
                "[routes.queue]\ntimeout = \"2s\"\ndiscipline = \"adaptive_lifo\"\nlifo_threshold = \"3s\"",
                11,
                "routes[0].queue.lifo_threshold",
            ),
            (
                "[routes.queue]\ndiscipline = \"adaptive_lifo\"\nlifo_threshold = \"0s\"",
                10,
                "routes[0].queue.lifo_threshold",
            ),
            (
                "[routes.queue]\ndiscipline = \"adaptive_lifo\"\nlifo_threshold = \"soon\"",
                10,
                "routes[0].queue.lifo_threshold",
            ),
            (
                "[routes.queue]\ntimeout = \"1ns\"\ndiscipline = \"adaptive_lifo\"",
                10,
                "routes[0].queue.discipline",
            ),
            (
                "[routes.queue]\ndiscipline = \"lifo\"",
                9,
                "routes[0].queue.discipline",
            ),
            (
                "[routes.queue]\nfairness = \"per_ip\"",
                9,
                "routes[0].queue.fairness",
            ),
            ("[routes.queue]\naging = \"0s\"", 9, "routes[0].queue.aging"),
            ("[routes.queue]\naging = 1", 9, "routes[0].queue.aging"),
            (
                "[routes.reject]\nrate_limited_status = 399",
                9,
                "routes[0].reject.rate_limited_status",
            ),
            (
                "[routes.reject]\nrate_limited_status = 600",
                9,
                "routes[0].reject.rate_limited_status",
            ),
        ];
        for (extra, line, key) in cases {
            let (l, _, k, message) = fail(&with_route_extra(extra));
            assert_eq!((l, k.as_str()), (*line, *key), "{extra}: {message}");
        }
        let (.., message) = fail(&with_route_extra("[routes.queue]\ndiscipline = \"lifo\""));
        assert!(
            message.contains("\"fifo\" or \"adaptive_lifo\""),
            "{message}"
        );
        let (.., message) = fail(&with_route_extra("[routes.queue]\nfairness = \"x\""));
        assert!(message.contains("\"none\" or \"per_key\""), "{message}");
        let (.., message) = fail(&with_route_extra("[routes.queue]\nlifo_threshold = \"1s\""));
        assert!(message.contains("adaptive_lifo"), "{message}");
    }

    #[test]
    fn key_errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("key = \"ip\"", 8, "routes[0].key"),
            ("key = \"Client_IP\"", 8, "routes[0].key"),
            ("key = []", 8, "routes[0].key"),
            ("key = 3", 8, "routes[0].key"),
            ("key = [\"client_ip\", \"cookie:x\"]", 8, "routes[0].key[1]"),
            ("key = [\"client_ip\", \"header:\"]", 8, "routes[0].key[1]"),
            ("key = [\"header:x y\"]", 8, "routes[0].key[0]"),
            (
                "key = [\"header:x-a\", \"header:X-A\"]",
                8,
                "routes[0].key[1]",
            ),
            (
                "key = [\n  \"path\",\n  \"path\",\n]",
                10,
                "routes[0].key[1]",
            ),
            ("key = [\"path\", 2]", 8, "routes[0].key[1]"),
        ];
        for (extra, line, key) in cases {
            let (l, _, k, message) = fail(&with_route_extra(extra));
            assert_eq!((l, k.as_str()), (*line, *key), "{extra}: {message}");
        }
        let (.., message) = fail(&with_route_extra("key = \"ip\""));
        assert!(
            message.contains("\"client_ip\", \"path\" or \"header:NAME\""),
            "{message}"
        );
        let (.., message) = fail(&with_route_extra("key = [\"header:x-a\", \"header:X-A\"]"));
        assert!(
            message.contains("duplicate key part \"header:x-a\""),
            "{message}"
        );
    }

    #[test]
    fn trusted_proxy_errors() {
        let cases: &[(&str, usize, &str)] = &[
            (
                "trusted_proxies = [\"10.0.0.0/33\"]",
                2,
                "server.trusted_proxies[0]",
            ),
            (
                "trusted_proxies = [\"10.0.0.0/8\", \"localhost\"]",
                2,
                "server.trusted_proxies[1]",
            ),
            (
                "trusted_proxies = [\n  \"::1\",\n  \"10.0.0.1/8\",\n]",
                4,
                "server.trusted_proxies[1]",
            ),
            (
                "trusted_proxies = [\"::ffff:10.0.0.1\"]",
                2,
                "server.trusted_proxies[0]",
            ),
            ("trusted_proxies = [\"\"]", 2, "server.trusted_proxies[0]"),
            (
                "trusted_proxies = \"10.0.0.0/8\"",
                2,
                "server.trusted_proxies",
            ),
        ];
        for (body, line, key) in cases {
            let (l, _, k, message) = fail(&format!("[server]\n{body}\n{MINIMAL}"));
            assert_eq!((l, k.as_str()), (*line, *key), "{body}: {message}");
        }
    }

    #[test]
    fn class_errors() {
        const C: &str = "[[routes.classes]]";
        let cases: &[(String, usize, &str)] = &[
            (
                format!("{C}\nheader = \"x\"\nvalues = [\"a\"]"),
                8,
                "routes[0].classes[0].name",
            ),
            (
                format!("{C}\nname = \"\"\nmethods = [\"GET\"]"),
                9,
                "routes[0].classes[0].name",
            ),
            (
                format!("{C}\nname = \"default\"\nmethods = [\"GET\"]"),
                9,
                "routes[0].classes[0].name",
            ),
            (
                format!(
                    "{C}\nname = \"a\"\nmethods = [\"GET\"]\n{C}\nname = \"a\"\npath_prefix = \"/x\""
                ),
                12,
                "routes[0].classes[1].name",
            ),
            (format!("{C}\nname = \"a\""), 8, "routes[0].classes[0]"),
            (
                format!("{C}\nname = \"a\"\npath_prefix = \"/a\"\nmethods = [\"GET\"]"),
                11,
                "routes[0].classes[0].methods",
            ),
            (
                format!("{C}\nname = \"a\"\nmethods = [\"GET\"]\nheader = \"x\"\nvalues = [\"1\"]"),
                11,
                "routes[0].classes[0].header",
            ),
            (
                format!("{C}\nname = \"a\"\npath_prefix = \"/a\"\nvalues = [\"1\"]"),
                11,
                "routes[0].classes[0].values",
            ),
            (
                format!("{C}\nname = \"a\"\nvalues = [\"1\"]"),
                10,
                "routes[0].classes[0].values",
            ),
            (
                format!("{C}\nname = \"a\"\nheader = \"x\""),
                10,
                "routes[0].classes[0].values",
            ),
            (
                format!("{C}\nname = \"a\"\nheader = \"x\"\nvalues = []"),
                11,
                "routes[0].classes[0].values",
            ),
            (
                format!("{C}\nname = \"a\"\nheader = \"x\"\nvalues = [\"ok\", \"a\\nb\"]"),
                11,
                "routes[0].classes[0].values[1]",
            ),
            (
                format!("{C}\nname = \"a\"\nheader = \"x:y\"\nvalues = [\"1\"]"),
                10,
                "routes[0].classes[0].header",
            ),
            (
                format!("{C}\nname = \"a\"\npath_prefix = \"a\""),
                10,
                "routes[0].classes[0].path_prefix",
            ),
            (
                format!("{C}\nname = \"a\"\nmethods = []"),
                10,
                "routes[0].classes[0].methods",
            ),
            (
                format!("{C}\nname = \"a\"\nmethods = [\"GET\", \"post\"]"),
                10,
                "routes[0].classes[0].methods[1]",
            ),
            (
                format!("{C}\nname = \"a\"\nmethods = [\"GET\"]\npriority = 1"),
                11,
                "routes[0].classes[0].priority",
            ),
            (
                "classes = [{ name = \"a\", methods = [\"GET\"], weight = 2 }]".to_string(),
                8,
                "routes[0].classes[0].weight",
            ),
            (
                "classes = [{ name = \"a\", methods = [\"GET\"] }, { name = \"b\" }]".to_string(),
                8,
                "routes[0].classes[1]",
            ),
        ];
        for (extra, line, key) in cases {
            let (l, _, k, message) = fail(&with_route_extra(extra));
            assert_eq!((l, k.as_str()), (*line, *key), "{extra}: {message}");
        }
        let classes = |n: usize| -> String {
            (0..n)
                .map(|i| format!("{C}\nname = \"c{i}\"\npath_prefix = \"/{i}\"\n"))
                .collect()
        };
        let (line, _, key, message) = fail(&with_route_extra(&classes(9)));
        assert_eq!(
            (line, key.as_str()),
            (8 + 8 * 3, "routes[0].classes[8]"),
            "{message}"
        );
        assert!(message.contains("at most 8"), "{message}");
        assert!(parse(&with_route_extra(&classes(8))).is_ok());
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

    /// MINIMAL with `extra` in its route, then a `[redis]` section holding `redis`.
    fn with_redis(extra: &str, redis: &str) -> String {
        format!("{MINIMAL}{extra}\n\n[redis]\n{redis}\n")
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
    fn redis_section_errors() {
        // MINIMAL is 7 lines, then an empty route extra and a blank line: `[redis]` is line 10.
        let cases: &[(&str, usize, &str, &str)] = &[
            ("key_prefix = \"x\"", 10, "redis.url", "missing field `url`"),
            ("url = 6379", 11, "redis.url", "string"),
            (
                "url = \"rediss://redis.internal:6380\"",
                11,
                "redis.url",
                "TLS to Redis is not supported; use a local TLS tunnel or redis://",
            ),
            (
                "url = \"REDISS://redis.internal\"",
                11,
                "redis.url",
                "TLS to Redis is not supported",
            ),
            (
                "url = \"valkeys://redis.internal\"",
                11,
                "redis.url",
                "TLS to Redis is not supported",
            ),
            (
                "url = \"http://redis.internal\"",
                11,
                "redis.url",
                "invalid Redis URL: Redis URL did not parse",
            ),
            (
                "url = \"redis.internal:6379\"",
                11,
                "redis.url",
                "invalid Redis URL",
            ),
            ("url = \"\"", 11, "redis.url", "invalid Redis URL"),
            (
                "url = \"redis://0.0.0.0:6379\"",
                11,
                "redis.url",
                "wildcard address",
            ),
            (
                "url = \"redis://127.0.0.1/db1\"",
                11,
                "redis.url",
                "Invalid database number",
            ),
            (
                "url = \"redis://127.0.0.1\"\npassword = \"x\"",
                12,
                "redis.password",
                "unknown field `password`",
            ),
            (
                "url = \"redis://127.0.0.1\"\nkey_prefix = \"\"",
                12,
                "redis.key_prefix",
                "must not be empty",
            ),
            (
                "url = \"redis://127.0.0.1\"\nkey_prefix = \"shop eu\"",
                12,
                "redis.key_prefix",
                "whitespace or control characters, got ' '",
            ),
            (
                "url = \"redis://127.0.0.1\"\nkey_prefix = \"shop\\u0007\"",
                12,
                "redis.key_prefix",
                "whitespace or control characters",
            ),
            (
                "url = \"redis://127.0.0.1\"\ntimeout = \"0s\"",
                12,
                "redis.timeout",
                "must be greater than 0",
            ),
            (
                "url = \"redis://127.0.0.1\"\ntimeout = \"10s 1ms\"",
                12,
                "redis.timeout",
                "must be at most 10s, got 10s 1ms",
            ),
            (
                "url = \"redis://127.0.0.1\"\ntimeout = \"50\"",
                12,
                "redis.timeout",
                "invalid duration",
            ),
            (
                "url = \"redis://127.0.0.1\"\ntimeout = 50",
                12,
                "redis.timeout",
                "string",
            ),
        ];
        for (redis, line, key, expected) in cases {
            let (l, _, k, message) = fail(&with_redis("", redis));
            assert_eq!((l, k.as_str()), (*line, *key), "{redis}: {message}");
            assert!(message.contains(expected), "{redis}: {message}");
        }
        let long = format!(
            "url = \"redis://127.0.0.1\"\nkey_prefix = \"{}\"",
            "p".repeat(129)
        );
        let (l, _, k, message) = fail(&with_redis("", &long));
        assert_eq!((l, k.as_str()), (12, "redis.key_prefix"), "{message}");
        assert!(message.contains("at most 128 bytes, got 129"), "{message}");
    }

    #[test]
    fn redis_url_errors_do_not_show_the_password() {
        let (.., message) = fail(&with_redis(
            "",
            "url = \"redis://user:hunter2@0.0.0.0:6379\"",
        ));
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[test]
    fn limit_backend_errors() {
        const REDIS: &str = "url = \"redis://127.0.0.1\"";
        // (route extra, line, key, message part); every case has a [redis] section.
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "[routes.limit]\nrate = 1\nbackend = \"global\"",
                10,
                "routes[0].limit.backend",
                "unknown backend \"global\": expected \"local\" or \"redis\"",
            ),
            (
                "[routes.limit]\nrate = 1\nbackend = 1",
                10,
                "routes[0].limit.backend",
                "string",
            ),
            (
                "[routes.limit]\nrate = 1\nlease = 5",
                10,
                "routes[0].limit.lease",
                "only allowed with backend = \"redis\"",
            ),
            (
                "[routes.limit]\nrate = 1\nbackend = \"local\"\non_redis_error = \"deny\"",
                11,
                "routes[0].limit.on_redis_error",
                "only allowed with backend = \"redis\"",
            ),
            (
                "[routes.limit]\nrate = 1\nexpected_instances = 3",
                10,
                "routes[0].limit.expected_instances",
                "only allowed with backend = \"redis\"",
            ),
            (
                // The first redis-only key written is blamed.
                "[routes.limit]\nrate = 1\nexpected_instances = 3\nlease = 2",
                10,
                "routes[0].limit.expected_instances",
                "only allowed with backend = \"redis\"",
            ),
            (
                "limit = { rate = 1, lease = 2 }",
                8,
                "routes[0].limit.lease",
                "only allowed with backend = \"redis\"",
            ),
            (
                "[routes.limit]\nrate = 1\nbackend = \"redis\"\ndry_run = true",
                11,
                "routes[0].limit.dry_run",
                "dry run is local-only",
            ),
            (
                "[routes.limit]\nrate = 1\nbackend = \"redis\"\nlease = 0",
                11,
                "routes[0].limit.lease",
                "must be from 1 to 1000, got 0",
            ),
            (
                "[routes.limit]\nrate = 1\nbackend = \"redis\"\nlease = 1001",
                11,
                "routes[0].limit.lease",
                "must be from 1 to 1000, got 1001",
            ),
            (
                "[routes.limit]\nrate = 1\nbackend = \"redis\"\nlease = 1.5",
                11,
                "routes[0].limit.lease",
                "invalid type: floating point",
            ),
            (
                "[routes.limit]\nrate = 1\nbackend = \"redis\"\nexpected_instances = 0",
                11,
                "routes[0].limit.expected_instances",
                "must be from 1 to 10000, got 0",
            ),
            (
                "[routes.limit]\nrate = 1\nbackend = \"redis\"\nexpected_instances = 10001",
                11,
                "routes[0].limit.expected_instances",
                "must be from 1 to 10000, got 10001",
            ),
            (
                "[routes.limit]\nrate = 1\nbackend = \"redis\"\non_redis_error = \"retry\"",
                11,
                "routes[0].limit.on_redis_error",
                "unknown on_redis_error \"retry\": expected \"local\", \"allow\" or \"deny\"",
            ),
            (
                "[routes.limit]\nrate = 1\nbackend = \"redis\"\nleases = 2",
                11,
                "routes[0].limit.leases",
                "unknown field `leases`",
            ),
        ];
        for (extra, line, key, expected) in cases {
            let (l, _, k, message) = fail(&with_redis(extra, REDIS));
            assert_eq!((l, k.as_str()), (*line, *key), "{extra}: {message}");
            assert!(message.contains(expected), "{extra}: {message}");
        }
        // A dry run with the local backend, written out, is still fine.
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

    #[test]
    fn redis_backend_needs_a_redis_section() {
        for (extra, line) in [
            ("[routes.limit]\nrate = 1\nbackend = \"redis\"", 10),
            ("limit = { rate = 1, backend = \"redis\", lease = 4 }", 8),
        ] {
            let (l, column, k, message) = fail(&with_route_extra(extra));
            assert_eq!(
                (l, k.as_str()),
                (line, "routes[0].limit.backend"),
                "{message}"
            );
            assert!(message.contains("[redis] section with `url`"), "{message}");
            // At the value, where the other errors point too.
            let at = extra
                .lines()
                .last()
                .and_then(|l| l.find("\"redis\""))
                .expect("value");
            assert_eq!(column, at + 1, "{message}");
        }
        // The second route is the one blamed.
        let src = format!(
            "{MINIMAL}\n[[routes]]\nname = \"global\"\npath_prefix = \"/g\"\nupstream = \"api\"\nlimit = {{ rate = 1, backend = \"redis\" }}\n"
        );
        let (l, _, k, _) = fail(&src);
        assert_eq!((l, k.as_str()), (13, "routes[1].limit.backend"));
    }

    #[test]
    fn to_toml_renders_redis_and_backends_in_file_shape() {
        let rendered = parse(FULL).expect("parses").to_toml();
        for expected in [
            "[redis]\nurl = \"redis://sluice:%3Credacted%3E@redis.internal:6380/2\"\nkey_prefix = \"shop-eu\"\ntimeout = \"250ms\"\n",
            "rate = 500.0\nburst = 50\ndry_run = false\nbackend = \"redis\"\nlease = 5\non_redis_error = \"deny\"\nexpected_instances = 3\n",
            "rate = 0.25\nburst = 1\ndry_run = false\nbackend = \"redis\"\nlease = 1\non_redis_error = \"local\"\nexpected_instances = 1\n",
            "rate = 0.1\nburst = 20\ndry_run = true\nbackend = \"local\"\n\n",
        ] {
            assert!(
                rendered.contains(expected),
                "{expected:?} missing in:\n{rendered}"
            );
        }
        let rendered = parse(MINIMAL).expect("parses").to_toml();
        assert!(!rendered.contains("[redis]"), "{rendered}");
        let rendered = parse(&with_redis("", "url = \"unix:///tmp/r.sock\""))
            .expect("parses")
            .to_toml();
        assert!(
            rendered.contains("[redis]\nurl = \"unix:///tmp/r.sock\"\nkey_prefix = \"sluice\"\ntimeout = \"50ms\"\n"),
            "{rendered}"
        );
    }

    #[test]
    fn to_toml_round_trips() {
        for src in [MINIMAL, FULL, include_str!("../config/sluice.toml")] {
            let cfg = parse(src).expect("parses");
            // The password in FULL's Redis URL is printed redacted, and the
            // placeholder is refused; put the secret back to read it again.
            let rendered = cfg.to_toml().replace("%3Credacted%3E", "s3cret");
            let again = Config::parse(&rendered, Path::new("test.toml"))
                .unwrap_or_else(|e| panic!("rendered config does not parse: {e}\n{rendered}"));
            assert_eq!(again, cfg, "round trip changed the config:\n{rendered}");
            // Rendering is a fixed point: the output renders to itself.
            assert_eq!(again.to_toml(), cfg.to_toml());
        }
    }

    #[test]
    fn to_toml_fills_in_defaults_in_file_shape() {
        let rendered = parse(MINIMAL).expect("parses").to_toml();
        for expected in [
            "[server]",
            "header_timeout = \"10s\"",
            "[admin]",
            "[log]",
            "[upstreams.api]",
            "targets = [\"127.0.0.1:9000\"]\nbalance = \"round_robin\"\nretries = 1\nhttp2 = false\n",
            "[upstreams.api.passive_health]\nconsecutive_failures = 5\nbase_ejection = \"5s\"\nmax_ejection = \"1m\"\n",
            "pool_idle_timeout = \"1m 30s\"",
            "[[routes]]",
            "[routes.queue]",
            "capacity = 1000",
            "[routes.reject]",
            "status = 503",
        ] {
            assert!(
                rendered.contains(expected),
                "{expected:?} missing in:\n{rendered}"
            );
        }
    }

    #[test]
    fn error_display_names_file_line_column_and_key() {
        let err = parse(&with_route_extra("[routes.limit]\nrate = 0")).expect_err("rate 0");
        let shown = err.to_string();
        assert!(
            shown.starts_with("test.toml:9:8: key `routes[0].limit.rate`: "),
            "{shown}"
        );
    }

    #[test]
    fn semantic_errors_point_at_the_value() {
        let cases: &[(&str, usize, &str)] = &[
            ("[routes.limit]\nrate = -3", 9, "routes[0].limit.rate"),
            ("[routes.limit]\nrate = nan", 9, "routes[0].limit.rate"),
            ("[routes.limit]\nrate = inf", 9, "routes[0].limit.rate"),
            (
                "[routes.limit]\nrate = 1\nburst = 0",
                10,
                "routes[0].limit.burst",
            ),
            (
                "[routes.limit]\nrate = 1\nburst = 5000000000",
                10,
                "routes[0].limit.burst",
            ),
            (
                "[routes.queue]\ntimeout = \"0s\"",
                9,
                "routes[0].queue.timeout",
            ),
            (
                "[routes.queue]\ncapacity = -1",
                9,
                "routes[0].queue.capacity",
            ),
            (
                "[routes.reject]\nstatus = 302",
                9,
                "routes[0].reject.status",
            ),
            (
                "[routes.reject]\nstatus = 600",
                9,
                "routes[0].reject.status",
            ),
            ("path_prefix = \"api\"", 8, "routes[0].path_prefix"),
            ("path_prefix = \"/a?b\"", 8, "routes[0].path_prefix"),
            ("host = \"a.*.com\"", 8, "routes[0].host"),
            ("host = \"a.com:80\"", 8, "routes[0].host"),
            ("host = \"\"", 8, "routes[0].host"),
            ("methods = [\"GET\", \"get\"]", 8, "routes[0].methods[1]"),
            ("methods = [\"GET\", \"GET\"]", 8, "routes[0].methods[1]"),
            ("methods = [\"G T\"]", 8, "routes[0].methods[0]"),
        ];
        for (extra, line, key) in cases {
            let (l, _, k, message) = fail(&with_route_extra(extra));
            assert_eq!((l, k.as_str()), (*line, *key), "{extra}: {message}");
        }
    }

    #[test]
    fn server_admin_log_errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("[server]\nlisten = \"localhost:8080\"", 2, "server.listen"),
            (
                "[server]\nheader_timeout = \"10\"",
                2,
                "server.header_timeout",
            ),
            (
                "[server]\nheader_timeout = \"0ms\"",
                2,
                "server.header_timeout",
            ),
            ("[server]\nidle_timeout = \"0s\"", 2, "server.idle_timeout"),
            ("[server]\nbacklog = 0", 2, "server.backlog"),
            ("[server]\nbacklog = 65536", 2, "server.backlog"),
            (
                "[server]\nrequest_buffer_bytes = -1",
                2,
                "server.request_buffer_bytes",
            ),
            (
                "[server]\nrequest_buffer_bytes = 16777217",
                2,
                "server.request_buffer_bytes",
            ),
            (
                "[server]\nclient_body_timeout = \"0s\"",
                2,
                "server.client_body_timeout",
            ),
            (
                "[server]\nsend_timeout = \"soon\"",
                2,
                "server.send_timeout",
            ),
            (
                "[server]\nmax_header_bytes = 8191",
                2,
                "server.max_header_bytes",
            ),
            ("[server]\nmax_headers = 0", 2, "server.max_headers"),
            ("[server]\ndrain_timeout = 30", 2, "server.drain_timeout"),
            ("[admin]\nlisten = \"127.0.0.1:8080\"", 2, "admin.listen"),
            ("[log]\nformat = \"xml\"", 2, "log.format"),
            ("[log]\nlevel = \"\"", 2, "log.level"),
            ("[log]\nlevel = \"info,x=loud\"", 2, "log.level"),
            ("[log]\naccess_log = \"yes\"", 2, "log.access_log"),
        ];
        for (head, line, key) in cases {
            let (l, _, k, message) = fail(&format!("{head}\n{MINIMAL}"));
            assert_eq!((l, k.as_str()), (*line, *key), "{head}: {message}");
        }
    }

    #[test]
    fn server_listen_clashing_with_default_admin_is_blamed_on_server() {
        let (line, _, key, _) = fail(&format!("[server]\nlisten = \"127.0.0.1:9090\"\n{MINIMAL}"));
        assert_eq!((line, key.as_str()), (2, "server.listen"));
        // Port 0 binds any free port, so both may ask for it.
        let both_zero = "[server]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n";
        assert!(parse(&format!("{both_zero}{MINIMAL}")).is_ok());
    }

    #[test]
    fn upstream_errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("targets = []", 2, "upstreams.b.targets"),
            ("targets = [\"nohost\"]", 2, "upstreams.b.targets[0]"),
            (
                "targets = [\"a:1\",\n  \"b:0\"]",
                3,
                "upstreams.b.targets[1]",
            ),
            ("targets = [\"user@a:1\"]", 2, "upstreams.b.targets[0]"),
            ("targets = [\"http://a:1\"]", 2, "upstreams.b.targets[0]"),
            (
                "targets = [\"a:1\"]\nmax_inflight = 0",
                3,
                "upstreams.b.max_inflight",
            ),
            (
                "targets = [\"a:1\"]\ntimeout = \"0s\"",
                3,
                "upstreams.b.timeout",
            ),
            (
                "targets = [\"a:1\"]\nconnect_timeout = \"x\"",
                3,
                "upstreams.b.connect_timeout",
            ),
            (
                "targets = [\"a:1\"]\npool_max_idle_per_target = -1",
                3,
                "upstreams.b.pool_max_idle_per_target",
            ),
            ("max_inflight = 3", 1, "upstreams.b.targets"),
        ];
        for (body, line, key) in cases {
            let (l, _, k, message) = fail(&format!("[upstreams.b]\n{body}\n{MINIMAL}"));
            assert_eq!((l, k.as_str()), (*line, *key), "{body}: {message}");
        }
    }

    #[test]
    fn missing_sections_and_empty_lists() {
        let no_routes = "[upstreams.api]\ntargets = [\"a:1\"]\n";
        assert_eq!(fail(no_routes).2, "routes");
        assert_eq!(fail(&format!("{no_routes}routes = []\n")).0, 3);
        assert_eq!(
            fail("[[routes]]\nname = \"a\"\nupstream = \"a\"\n").2,
            "upstreams"
        );
        let (line, _, key, _) =
            fail("# nothing\n[upstreams]\n[[routes]]\nname = \"a\"\nupstream = \"a\"\n");
        assert_eq!((line, key.as_str()), (2, "upstreams"));
        assert_eq!(fail("").2, "upstreams");
    }

    #[test]
    fn route_reference_and_duplicate_errors() {
        let (line, column, key, message) = fail(&with_route_extra(
            "[[routes]]\nname = \"b\"\nupstream = \"nope\"",
        ));
        assert_eq!((line, column, key.as_str()), (10, 12, "routes[1].upstream"));
        assert!(message.contains("\"nope\""), "{message}");
        let (line, _, key, message) = fail(&with_route_extra(
            "[[routes]]\nname = \"default\"\nupstream = \"api\"",
        ));
        assert_eq!((line, key.as_str()), (9, "routes[1].name"));
        assert!(message.contains("line 6"), "{message}");
    }

    #[test]
    fn toml_layer_errors_get_the_full_key() {
        let cases: &[(String, usize, &str)] = &[
            (format!("bogus = 1\n{MINIMAL}"), 1, "bogus"),
            (
                format!("[server]\nlisten = \"127.0.0.1:1\"\nlistn = 2\n{MINIMAL}"),
                3,
                "server.listn",
            ),
            (
                with_route_extra("[routes.limit]\nrate = 1\nburts = 2"),
                10,
                "routes[0].limit.burts",
            ),
            (
                with_route_extra("limit = { rate = 1, burts = 2 }"),
                8,
                "routes[0].limit.burts",
            ),
            (
                with_route_extra("limit.burts = 2"),
                8,
                "routes[0].limit.burts",
            ),
            (
                with_route_extra("[routes.limit]\nburst = 2"),
                8,
                "routes[0].limit.rate",
            ),
            (with_route_extra("limit = {}"), 8, "routes[0].limit.rate"),
            (
                with_route_extra("[[routes]]\nname = \"b\""),
                8,
                "routes[1].upstream",
            ),
            (
                with_route_extra("[[routes]]\nupstream = \"api\""),
                8,
                "routes[1].name",
            ),
            (
                with_route_extra("[routes.queue]\ncapacity = \"big\""),
                9,
                "routes[0].queue.capacity",
            ),
            (
                with_route_extra("[routes.queue]\ncapacity = 1.5"),
                9,
                "routes[0].queue.capacity",
            ),
            (
                with_route_extra("[routes.limit]\nrate = \"fast\""),
                9,
                "routes[0].limit.rate",
            ),
            (
                format!("[upstreams.b]\ntargets = [\n  \"a:1\",\n  2,\n]\n{MINIMAL}"),
                4,
                "upstreams.b.targets[1]",
            ),
            (
                format!("[upstreams.b]\ntargets = [\"a:1\"]\nweight = 2\n{MINIMAL}"),
                3,
                "upstreams.b.weight",
            ),
            (
                "routes = 3\n[upstreams.a]\ntargets = [\"a:1\"]\n".to_string(),
                1,
                "routes",
            ),
            (
                "routes = [{ name = \"x\" }]\n[upstreams.a]\ntargets = [\"a:1\"]\n".to_string(),
                1,
                "routes[0].upstream",
            ),
            (
                "[upstreams.a]\ntargets = [\"a:1\"]\n[[routes]]\nname = \"x\"\nupstream = \"a\"\n[routes.limit.rate]\n".to_string(),
                6,
                "routes[0].limit.rate",
            ),
        ];
        for (src, line, key) in cases {
            let (l, _, k, message) = fail(src);
            assert_eq!((l, k.as_str()), (*line, *key), "{src}\n{message}");
        }
    }

    #[test]
    fn syntax_errors_are_located() {
        let cases: &[(String, usize, &str)] = &[
            (format!("[server\n{MINIMAL}"), 1, "server"),
            (
                with_route_extra("[routes.limit]\nrate = "),
                9,
                "routes[0].limit.rate",
            ),
            (
                with_route_extra("[routes.limit]\nrate = 1 2"),
                9,
                "routes[0].limit.rate",
            ),
            (
                with_route_extra("[routes.reject]\nstatus = \"5"),
                9,
                "routes[0].reject.status",
            ),
            (
                format!("{MINIMAL}[log]\nlevel = \"info\"\nlevel = \"debug\"\n"),
                10,
                "log.level",
            ),
            (format!("!!!\n{MINIMAL}"), 1, "(top level)"),
        ];
        for (src, line, key) in cases {
            let (l, _, k, message) = fail(src);
            assert_eq!((l, k.as_str()), (*line, *key), "{src}\n{message}");
        }
    }

    #[test]
    fn line_column_counts_characters_and_clamps() {
        let src = "ab\ncdé\r\nf";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 2), (1, 3));
        assert_eq!(line_column(src, 3), (2, 1));
        assert_eq!(line_column(src, 7), (2, 4)); // after "é", which is two bytes
        assert_eq!(line_column(src, 6), (2, 3)); // inside "é": clamped to its start
        assert_eq!(line_column(src, 9), (3, 1));
        assert_eq!(line_column(src, 1000), (3, 2));
        assert_eq!(line_column("", 5), (1, 1));
    }

    #[test]
    fn key_path_follows_headers_keys_and_indexes() {
        let src = "\u{feff}top = 1
[server]   # a comment with [brackets] and \"quotes\"
listen = \"[x]\" # trailing
[[routes]]
name = 'a'
[routes.limit]
rate = 1
[[routes]]
name = \"\"\"
[not.a.header]
\"\"\"
a.\"b c\" . 'd' = { e = [1, { f = 2 }], g = 3 }
arr = [
  \"x\",   # one
  [\"y\", 'z'],
]
[[routes]]
[routes.limit]
[\"quoted key\".x]
[[a.b]]
[[a.b]]
[a]
";
        let at = |needle: &str| {
            let offset = src
                .find(needle)
                .unwrap_or_else(|| panic!("{needle:?} not in source"));
            display_key(&key_path_at(src, offset))
        };
        assert_eq!(at("top"), "top");
        assert_eq!(at("1\n[server]"), "top");
        assert_eq!(at("[server]"), "server");
        assert_eq!(at("# a comment"), "server");
        assert_eq!(at("[x]"), "server.listen");
        assert_eq!(at("# trailing"), "server.listen");
        assert_eq!(at("[[routes]]\nname = 'a'"), "routes[0]");
        assert_eq!(at("'a'"), "routes[0].name");
        assert_eq!(at("[routes.limit]\nrate"), "routes[0].limit");
        assert_eq!(at("rate = 1"), "routes[0].limit.rate");
        assert_eq!(at("[[routes]]\nname = \"\"\""), "routes[1]");
        assert_eq!(at("[not.a.header]"), "routes[1].name");
        assert_eq!(at("a.\"b c\""), "routes[1].a.\"b c\".d");
        assert_eq!(at("'d'"), "routes[1].a.\"b c\".d");
        assert_eq!(at("e = [1"), "routes[1].a.\"b c\".d.e");
        assert_eq!(at("1, {"), "routes[1].a.\"b c\".d.e[0]");
        assert_eq!(at("f = 2"), "routes[1].a.\"b c\".d.e[1].f");
        assert_eq!(at("g = 3"), "routes[1].a.\"b c\".d.g");
        assert_eq!(at("\"x\""), "routes[1].arr[0]");
        assert_eq!(at("# one"), "routes[1].arr");
        assert_eq!(at("'z'"), "routes[1].arr[1][1]");
        assert_eq!(at("[[routes]]\n[routes.limit]"), "routes[2]");
        assert_eq!(at("[routes.limit]\n[\"quoted"), "routes[2].limit");
        assert_eq!(at("[\"quoted key\".x]"), "\"quoted key\".x");
        assert_eq!(at("[[a.b]]\n[[a.b]]\n[a]"), "a.b[0]");
        assert_eq!(at("[[a.b]]\n[a]"), "a.b[1]");
        assert_eq!(at("[a]\n"), "a");
        assert_eq!(display_key(&key_path_at(src, src.len() + 10)), "a");
        assert_eq!(display_key(&key_path_at("", 0)), "(top level)");
    }

    #[test]
    fn nested_arrays_of_tables_restart_their_index() {
        let src = "[[r]]\n[[r.x]]\n[[r.x]]\n[[r]]\n[[r.x]]\nk = 1\n";
        let offset = src.find("k = 1").expect("k");
        assert_eq!(display_key(&key_path_at(src, offset)), "r[1].x[0].k");
    }

    #[test]
    fn value_parsers() {
        assert!(parse_host("API.Example.com").is_ok_and(|h| h == "api.example.com"));
        assert!(parse_host("*.example.com").is_ok());
        assert!(parse_host("localhost").is_ok());
        assert!(parse_host("10.0.0.1").is_ok());
        assert!(parse_host("[::1]").is_ok());
        for bad in [
            "*", "*.", "**.a", "a*.b", "a..b", "a.", "exa mple", "ü.de", "[::1]:80", "*.[::1]",
            "[zz]",
        ] {
            assert!(parse_host(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_target("a:1").is_ok());
        assert!(parse_target("[::1]:80").is_ok());
        for bad in ["a", ":80", "a:0", "a:99999", "a:b", "u@a:1", "", "a:1/x"] {
            assert!(parse_target(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_net("10.1.0.0/16").is_ok_and(|n| n.to_string() == "10.1.0.0/16"));
        assert!(parse_net("10.1.2.3").is_ok_and(|n| n.to_string() == "10.1.2.3/32"));
        assert!(parse_net("::1").is_ok_and(|n| n.to_string() == "::1/128"));
        assert!(parse_net("0.0.0.0/0").is_ok());
        assert!(parse_net("::/0").is_ok());
        assert!(parse_net("::fffe:0:0/95").is_ok());
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "fd00::1/8",
            "10.0.0.0/8 ",
            "::ffff:10.0.0.0/104",
            "10/8",
            "example.com",
        ] {
            assert!(parse_net(bad).is_err(), "{bad:?} accepted");
        }
        let why = parse_net("10.0.0.1/8").expect_err("host bits");
        assert!(
            why.contains("10.0.0.0/8") && why.contains("10.0.0.1/32"),
            "{why}"
        );
        let why = parse_net("::ffff:10.0.0.0/104").expect_err("mapped");
        assert!(why.contains("10.0.0.0/8"), "{why}");
        assert!(parse_header_name("X-Api-Key").is_ok_and(|n| n.as_str() == "x-api-key"));
        for bad in ["", "a b", "a:b", "é", "a\n"] {
            assert!(parse_header_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_method("PATCH").is_ok());
        for bad in ["", "get", "Get", "GE T", "GET\n"] {
            assert!(parse_method(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn quoted_field_reads_serde_messages() {
        assert_eq!(
            quoted_field("missing field `upstream`", "missing field "),
            Some("upstream")
        );
        assert_eq!(
            quoted_field("unknown field `x`, expected `a`", "unknown field "),
            Some("x")
        );
        assert_eq!(quoted_field("invalid type", "unknown field "), None);
    }

    /// Truncations and byte edits of a real file must all give Ok or Invalid,
    /// never a panic, and always a line inside the file.
    #[test]
    fn broken_input_never_panics() {
        let example = include_str!("../config/sluice.toml");
        let check = |src: &str| match Config::parse(src, Path::new("x.toml")) {
            Ok(_) => {}
            Err(ConfigError::Invalid { line, column, .. }) => {
                assert!(
                    line >= 1 && line <= src.lines().count().max(1) + 1,
                    "line {line}"
                );
                assert!(column >= 1);
            }
            Err(other) => panic!("unexpected error {other}"),
        };
        let boundaries: Vec<usize> = (0..=example.len())
            .filter(|&i| example.is_char_boundary(i))
            .collect();
        for &end in boundaries.iter().step_by(13) {
            check(&example[..end]);
        }
        for &at in boundaries.iter().step_by(41) {
            for insert in [
                "[", "]", "\"", "'", "{", "=", "\n", "#", ",", "\"\"\"", "é", "\u{0}",
            ] {
                check(&format!("{}{insert}{}", &example[..at], &example[at..]));
            }
        }
        // The locator itself, at every offset, including ones inside a character.
        for offset in 0..=FULL.len() + 2 {
            key_path_at(FULL, offset);
            line_column("é\u{feff}x", offset % 8);
        }
    }
}
