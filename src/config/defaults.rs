//! Defaults. Kept in one place so the docs, the example file and `to_toml` agree.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

pub(crate) const DEFAULT_SERVER_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080);
pub(crate) const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions remembered for resumption by session id: a few hundred bytes
/// each, so a few MiB at most.
pub(crate) const DEFAULT_SESSION_CACHE: usize = 10_000;
pub(crate) const MAX_SESSION_CACHE: usize = 1_000_000;
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// The default and largest `server.backlog`: the kernel caps what `listen`
/// is given at `net.core.somaxconn` anyway, so asking for more than this
/// (the largest somaxconn of older kernels) buys nothing.
pub(crate) const MAX_BACKLOG: usize = 65_535;
pub(crate) const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// The least `max_header_bytes`: room for the heads clients routinely send
/// (cookies, tokens). It dates from when hyper served HTTP/1 (hyper panics on
/// a read buffer smaller than this); sluice's own codec and HTTP/2 would take
/// less, but the accepted range is kept as it was.
pub(crate) const MIN_MAX_HEADER_BYTES: usize = 8192;
pub(crate) const DEFAULT_MAX_HEADERS: usize = 100;
pub(crate) const MAX_WORKERS: usize = 1024;
pub(crate) const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Typical API bodies (JSON, forms) fit; at the default `max_connections`
/// the worst case is 160 MiB of bodies being read.
pub(crate) const DEFAULT_REQUEST_BUFFER_BYTES: usize = 16 * 1024;
pub(crate) const MAX_REQUEST_BUFFER_BYTES: usize = 16 << 20;
pub(crate) const DEFAULT_CLIENT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9090);
pub(crate) const DEFAULT_LOG_LEVEL: &str = "info";
pub(crate) const DEFAULT_MAX_INFLIGHT: NonZeroUsize =
    NonZeroUsize::new(256).expect("256 is not zero");
pub(crate) const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);
/// NGINX's `proxy_read_timeout` default.
pub(crate) const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);
pub(crate) const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
pub(crate) const DEFAULT_POOL_MAX_IDLE_PER_TARGET: usize = 128;
pub(crate) const DEFAULT_PATH_PREFIX: &str = "/";
/// The one upgrade a route allows unless told otherwise.
pub const DEFAULT_UPGRADE: &str = "websocket";
pub(crate) const DEFAULT_BURST: NonZeroU32 = NonZeroU32::MIN;
pub(crate) const DEFAULT_QUEUE_CAPACITY: usize = 1000;
pub(crate) const DEFAULT_QUEUE_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_MAX_KEYS: NonZeroUsize =
    NonZeroUsize::new(100_000).expect("100000 is not zero");
pub(crate) const DEFAULT_RETRIES: u32 = 1;
/// Retries of one request at most.
pub(crate) const MAX_RETRIES: u32 = 5;
pub(crate) const DEFAULT_HEALTH_PATH: &str = "/healthz";
pub(crate) const DEFAULT_HEALTH_INTERVAL: Duration = Duration::from_secs(5);
pub(crate) const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_HEALTHY_THRESHOLD: NonZeroU32 = NonZeroU32::new(2).expect("2 is not zero");
pub(crate) const DEFAULT_UNHEALTHY_THRESHOLD: NonZeroU32 =
    NonZeroU32::new(3).expect("3 is not zero");
/// The adaptive limit starts here unless `max_limit` is lower (or `min_limit` higher).
pub(crate) const DEFAULT_INITIAL_LIMIT: NonZeroUsize =
    NonZeroUsize::new(20).expect("20 is not zero");
pub(crate) const DEFAULT_TOLERANCE: f64 = 1.5;
pub(crate) const DEFAULT_SMOOTHING: f64 = 0.2;
/// Classes a route may define, besides the implicit "default".
pub(crate) const MAX_CLASSES: usize = 8;
/// The name of the implicit lowest class, which no `[[routes.classes]]` may take.
pub(crate) const DEFAULT_CLASS: &str = "default";
pub(crate) const DEFAULT_KEY_PREFIX: &str = "sluice";
/// Long enough for a round trip inside a data centre, short enough that a
/// dead Redis is noticed before queued requests time out.
pub(crate) const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(50);
pub(crate) const MAX_REDIS_TIMEOUT: Duration = Duration::from_secs(10);
pub(crate) const MAX_KEY_PREFIX_BYTES: usize = 128;
pub(crate) const MAX_LEASE: u32 = 1000;
pub(crate) const MAX_EXPECTED_INSTANCES: u32 = 10_000;

/// `[dns] timeout`: one DNS query's longest wait.
pub(crate) const DEFAULT_DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// `[dns] timeout` bounds.
pub(crate) const MIN_DNS_TIMEOUT: Duration = Duration::from_millis(100);
pub(crate) const MAX_DNS_TIMEOUT: Duration = Duration::from_secs(60);
/// `resolve_interval`: how often a discovered name is resolved again.
pub(crate) const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(5);
/// `resolve_interval` bounds.
pub(crate) const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);
pub(crate) const MAX_RESOLVE_INTERVAL: Duration = Duration::from_secs(3600);
