//! The typed configuration every other module reads: plain structs,
//! validated, with nothing left to parse.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::PathBuf;
use std::time::Duration;

use http::StatusCode;
use http::uri::Authority;

use crate::config::defaults::{DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_SESSION_CACHE};
use crate::config::secret::Secret;

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
    /// `[dns]`, optional: the resolver upstreams with `discovery = "dns"` use.
    pub dns: DnsConfig,
    /// `[storage]`, optional: where async routes keep their journals.
    pub storage: StorageConfig,
}

/// `[dns]`: where DNS discovery asks. Read at start; a change needs a restart
/// only for upstreams whose discovery it serves (a reload rebuilds them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// `nameservers`, default [] (the system's, from /etc/resolv.conf):
    /// "IP:port" of the servers asked, over UDP (TCP when truncated).
    pub nameservers: Vec<SocketAddr>,
    /// `timeout`, default "2s", 100ms to 1 minute: the longest one query may
    /// take before it counts as a failed resolution.
    pub timeout: Duration,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout: crate::config::defaults::DEFAULT_DNS_TIMEOUT,
        }
    }
}

/// `discovery = "dns"` on an upstream: each target given by host name
/// stands for every address (A and AAAA) the name resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// `resolve_interval`, default "5s", 100ms to 1 hour: how often each
    /// name is resolved again (sooner when the records' TTL is shorter).
    pub interval: Duration,
}

/// `[storage]`: the disk async routes with `store = "local"` write to.
#[derive(Debug, Clone, PartialEq)]
pub struct StorageConfig {
    /// `dir`, required when a route has `[routes.async]` with `store =
    /// "local"`: each such route keeps its journal in `dir/async/ROUTE/`.
    /// Relative paths are taken from the config file's directory.
    pub dir: Option<PathBuf>,
    /// `segment_bytes`, default 67108864 (64 MiB), 65536 to 1 GiB: a
    /// journal segment past this size is closed and a new one begun; a
    /// segment's disk is given back once every request in it (and before
    /// it) is delivered, expired or discarded.
    pub segment_bytes: u64,
}

/// `[routes.async]`: the request is made durable, answered `202 Accepted`
/// with a ticket, and delivered later at the route's rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AsyncConfig {
    /// `store`, default "local": the journal on disk under `[storage] dir`;
    /// "redis": a Redis stream in `[redis]`, shared by the fleet.
    pub store: AsyncStore,
    /// `deliver_within`, default "10m", 1s to 7 days: a request not
    /// delivered by then (counted from its acceptance) expires: dropped and
    /// counted, never sent.
    pub deliver_within: Duration,
    /// `max_attempts`, default 5, 1 to 100: attempts (5xx, connect failure,
    /// timeout) before the request goes to the dead letters.
    pub max_attempts: NonZeroU32,
    /// `capacity`, default 100000, 1 to 100000000: requests held at most
    /// (queued, in flight and dead letters); beyond, 503 + Retry-After.
    pub capacity: NonZeroUsize,
    /// `keep_response_bytes`, default 0, at most 65536: the start of the
    /// backend's response body kept for the ticket's status.
    pub keep_response_bytes: usize,
}

/// Where an async route's requests are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsyncStore {
    /// "local": a journal on this machine's disk.
    Local,
    /// "redis": a stream in the `[redis]` Redis, shared by a fleet: each
    /// instance a consumer of the route's group.
    Redis {
        /// `claim_idle`, default "30s", 1s to 1 hour: a request held this
        /// long by an instance that stopped answering for it (crashed,
        /// partitioned) is taken over by another instance.
        claim_idle: Duration,
    },
}

/// `[redis]`, optional; required when any route's limit has backend = "redis".
/// `Debug` shows the URL without its password.
#[derive(Clone, PartialEq)]
pub struct RedisConfig {
    /// `url`, required: `redis://[user[:password]@]host[:port][/db]` or `redis+unix:///path` / `unix:///path`.
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
            .field("url", &crate::config::redis_url::redact_url(&self.url))
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
    /// HTTP/1.1 keep-alive request (there for the shorter of this and
    /// `idle_timeout`). Applies to the admin listener too.
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
    /// `max_header_bytes`, default 32768, minimum 8192: larger heads get 431
    /// (HTTP/1: request line and headers, by sluice's codec; HTTP/2: the
    /// header list size advertised to and enforced by hyper). Not the admin
    /// listener's, whose limits are fixed.
    pub max_header_bytes: usize,
    /// `max_headers`, default 100: more header fields in an HTTP/1 request
    /// get 431 (HTTP/2 does not count them).
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
    /// `workers`, default one per CPU: threads serving proxy connections,
    /// each with its own single-threaded event loop, as NGINX's
    /// `worker_processes`. One listening socket, one accept loop that deals
    /// the accepted connections to them. Changes on restart.
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
    /// `discovery`, default "none": with "dns" (and `resolve_interval`),
    /// targets given by host name are discovered by DNS.
    pub discovery: Option<DiscoveryConfig>,
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
    /// `read_timeout`, default "60s", 100ms to 1 day: the longest the backend
    /// may pause between two reads of its response body (NGINX's
    /// `proxy_read_timeout`); past it the response is abandoned.
    pub read_timeout: Duration,
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
    /// `handshake_timeout`, default 10s, from 100ms to 1day: a connection whose
    /// TLS handshake is not done this long after accept is closed.
    pub handshake_timeout: Duration,
    /// `session_tickets`, default true: TLS 1.3 and TLS 1.2 session tickets,
    /// encrypted with keys shared by the workers and rotated every 6 hours.
    pub session_tickets: bool,
    /// `session_cache`, default 10000, 0 turns it off: how many sessions
    /// the server remembers for clients that resume by session id (TLS 1.2
    /// without tickets; TLS 1.3 when tickets are off).
    pub session_cache: usize,
}

impl ServerTls {
    /// TLS with `cert` and `key` and every other key at its default.
    pub fn new(cert: PathBuf, key: PathBuf) -> ServerTls {
        ServerTls {
            cert,
            key,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            session_tickets: true,
            session_cache: DEFAULT_SESSION_CACHE,
        }
    }
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
    /// `[routes.async]`, optional: accept now (202 and a ticket), deliver
    /// later at the route's rate.
    pub deferred: Option<AsyncConfig>,
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
    /// `rate`: requests per second released, finite and > 0 (integer or float);
    /// or, written `rate_per_target` (exactly one of the two), requests per
    /// second per healthy target of the route's upstream.
    pub rate: f64,
    /// True when written as `rate_per_target`: the rate in force is `rate`
    /// times the upstream's healthy targets (at least one); `burst` stays
    /// the route's, whatever the count.
    pub per_target: bool,
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
