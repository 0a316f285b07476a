//! Configuration: the TOML file parsed once, validated at the edge, and turned
//! into plain typed structs. Nothing past this module sees a raw string.
//!
//! Every error names the file, the line and the dotted key it is about.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use http::uri::Authority;

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
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// `listen`, default "127.0.0.1:8080".
    pub listen: SocketAddr,
    /// `header_timeout`, default "10s": time a client may take to send a request head.
    pub header_timeout: Duration,
    /// `max_header_bytes`, default 32768, minimum 8192: larger heads get 431.
    pub max_header_bytes: usize,
    /// `max_headers`, default 100.
    pub max_headers: usize,
    /// `drain_timeout`, default "30s": on SIGTERM, how long in-flight requests may finish.
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct AdminConfig {
    /// `listen`, default "127.0.0.1:9090". Serves /metrics, /healthz, /readyz.
    pub listen: SocketAddr,
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
    /// `targets`: one or more "host:port"; at least one.
    pub targets: Vec<Authority>,
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

#[derive(Debug, Clone, PartialEq)]
pub struct RouteConfig {
    /// `name`, required, unique; used as the `route` metric label.
    pub name: String,
    /// `host`, optional: exact host ("api.example.com") or a leading wildcard
    /// ("*.example.com"); lower-cased, no port. None matches any host.
    pub host: Option<String>,
    /// `path_prefix`, default "/"; must start with '/'.
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
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimitConfig {
    /// `rate`: requests per second released, finite and > 0 (integer or float).
    pub rate: f64,
    /// `burst`, default 1: requests that may go at once above the steady rate.
    pub burst: NonZeroU32,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QueueConfig {
    /// `capacity`, default 1000 (0 = no queue: what cannot go at once is rejected).
    pub capacity: usize,
    /// `timeout`, default "1s", > 0: maximum time a request waits in the queue.
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RejectConfig {
    /// `status`, default 503: answer for queue-full and queue-timeout rejections (4xx or 5xx).
    pub status: StatusCode,
    /// `retry_after`, default true: send a Retry-After header estimated from the queue.
    pub retry_after: bool,
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

    /// Validates config text; `path` is only used in messages.
    pub fn parse(_src: &str, _path: &Path) -> Result<Config, ConfigError> {
        todo!("config parsing")
    }

    /// The effective configuration as TOML, every default filled in.
    pub fn to_toml(&self) -> String {
        todo!("config rendering")
    }
}
