//! `sluice check`: the effective configuration as TOML in the file's own
//! shape, every default filled in, secrets redacted.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::config::backlog::Backlog;
use crate::config::model::{
    Balance, ClassConfig, ClassMatch, Config, Discipline, DnsConfig, Fairness, LimitBackend,
    LimitConfig, LogFormat, OnRedisError, QueueConfig, RouteConfig, UpstreamConfig,
};
use crate::config::secret::{REDACTED, SecretSource};
use crate::config::values::{human, key_part_str};

impl Config {
    /// The effective configuration as TOML, every default filled in.
    pub fn to_toml(&self) -> String {
        // Every value here is a string, integer, float, bool, array or table, all of
        // which TOML can represent, so serialization cannot fail; the fallback only
        // exists so that this function has no panic path.
        let rendered = toml::to_string(&RenderedConfig::from(self))
            .unwrap_or_else(|err| format!("# sluice: cannot render the configuration: {err}\n"));
        annotate_backlog(rendered, Backlog::probe(self.server.backlog))
    }
}

/// Adds the backlog the kernel really gives to the rendered `backlog` line,
/// as a TOML comment (the file stays loadable): `net.core.somaxconn` caps it.
pub(crate) fn annotate_backlog(rendered: String, backlog: Backlog) -> String {
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

#[derive(Serialize)]
pub(crate) struct RenderedConfig<'a> {
    server: RenderedServer,
    admin: RenderedAdmin,
    log: RenderedLog<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redis: Option<RenderedRedis<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dns: Option<RenderedDns>,
    upstreams: BTreeMap<&'a str, RenderedUpstream>,
    routes: Vec<RenderedRoute<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    storage: Option<RenderedStorage>,
}

#[derive(Serialize)]
pub(crate) struct RenderedStorage {
    #[serde(skip_serializing_if = "Option::is_none")]
    dir: Option<String>,
    segment_bytes: u64,
}

#[derive(Serialize)]
pub(crate) struct RenderedAsync {
    store: &'static str,
    deliver_within: String,
    max_attempts: u32,
    capacity: usize,
    keep_response_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    claim_idle: Option<String>,
}

/// `[dns]`, rendered only when it differs from the defaults.
#[derive(Serialize)]
pub(crate) struct RenderedDns {
    nameservers: Vec<String>,
    timeout: String,
}

#[derive(Serialize)]
pub(crate) struct RenderedServer {
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
pub(crate) struct RenderedServerTls {
    cert: String,
    key: String,
    handshake_timeout: String,
    session_tickets: bool,
    session_cache: usize,
}

#[derive(Serialize)]
pub(crate) struct RenderedAdmin {
    listen: String,
    #[serde(flatten)]
    token: Option<RenderedSecret>,
}

/// A secret as `sluice check` prints it: the file or variable it is read
/// from, or the placeholder when it is written inline.
#[derive(Serialize)]
pub(crate) enum RenderedSecret {
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
pub(crate) struct RenderedLog<'a> {
    format: &'static str,
    level: &'a str,
    access_log: bool,
}

#[derive(Serialize)]
pub(crate) struct RenderedRedis<'a> {
    url: String,
    #[serde(flatten)]
    password: Option<RenderedSecret>,
    key_prefix: &'a str,
    timeout: String,
}

#[derive(Serialize)]
pub(crate) struct RenderedUpstream {
    targets: Vec<String>,
    balance: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    discovery: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolve_interval: Option<String>,
    retries: u32,
    http2: bool,
    max_inflight: usize,
    connect_timeout: String,
    timeout: String,
    read_timeout: String,
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
pub(crate) struct RenderedPassiveHealth {
    consecutive_failures: u32,
    base_ejection: String,
    max_ejection: String,
}

#[derive(Serialize)]
pub(crate) struct RenderedActiveHealth {
    path: String,
    interval: String,
    timeout: String,
    healthy_threshold: u32,
    unhealthy_threshold: u32,
}

#[derive(Serialize)]
pub(crate) struct RenderedAdaptive {
    min_limit: usize,
    max_limit: usize,
    initial_limit: usize,
    tolerance: f64,
    smoothing: f64,
}

/// Rendered even when empty: the table alone turns TLS on.
#[derive(Serialize)]
pub(crate) struct RenderedUpstreamTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    server_name: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct RenderedRoute<'a> {
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
    #[serde(rename = "async", skip_serializing_if = "Option::is_none")]
    deferred: Option<RenderedAsync>,
}

#[derive(Serialize)]
pub(crate) struct RenderedLimit {
    #[serde(skip_serializing_if = "Option::is_none")]
    rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_per_target: Option<f64>,
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
pub(crate) struct RenderedKeyLimit {
    rate: f64,
    burst: u32,
    max_keys: usize,
    dry_run: bool,
}

#[derive(Serialize)]
pub(crate) struct RenderedQueue {
    capacity: usize,
    timeout: String,
    discipline: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    lifo_threshold: Option<String>,
    fairness: &'static str,
    aging: String,
}

#[derive(Serialize)]
pub(crate) struct RenderedReject {
    status: u16,
    retry_after: bool,
    rate_limited_status: u16,
}

#[derive(Serialize)]
pub(crate) struct RenderedClass<'a> {
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

/// Paths come from TOML strings (joined to the config file's directory), so
/// they are UTF-8 unless that directory's name is not.
pub(crate) fn path_str(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

pub(crate) fn balance_str(balance: Balance) -> &'static str {
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
                    handshake_timeout: human(tls.handshake_timeout),
                    session_tickets: tls.session_tickets,
                    session_cache: tls.session_cache,
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
                url: crate::config::redis_url::redact_url(&r.url),
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
            dns: (c.dns != DnsConfig::default()).then(|| RenderedDns {
                nameservers: c.dns.nameservers.iter().map(ToString::to_string).collect(),
                timeout: human(c.dns.timeout),
            }),
            upstreams: c
                .upstreams
                .iter()
                .map(|(name, up)| (name.as_str(), RenderedUpstream::from(up)))
                .collect(),
            routes: c.routes.iter().map(RenderedRoute::from).collect(),
            storage: (c.storage.dir.is_some() || c.routes.iter().any(|r| r.deferred.is_some()))
                .then(|| RenderedStorage {
                    dir: c.storage.dir.as_deref().map(path_str),
                    segment_bytes: c.storage.segment_bytes,
                }),
        }
    }
}

impl From<&UpstreamConfig> for RenderedUpstream {
    fn from(u: &UpstreamConfig) -> Self {
        RenderedUpstream {
            targets: u.targets.iter().map(ToString::to_string).collect(),
            balance: balance_str(u.balance),
            discovery: u.discovery.map(|_| "dns"),
            resolve_interval: u.discovery.map(|d| human(d.interval)),
            retries: u.retries,
            http2: u.http2,
            max_inflight: u.max_inflight.get(),
            connect_timeout: human(u.connect_timeout),
            timeout: human(u.timeout),
            read_timeout: human(u.read_timeout),
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
            deferred: r.deferred.map(|a| RenderedAsync {
                store: match a.store {
                    crate::config::model::AsyncStore::Local => "local",
                    crate::config::model::AsyncStore::Redis { .. } => "redis",
                },
                claim_idle: match a.store {
                    crate::config::model::AsyncStore::Local => None,
                    crate::config::model::AsyncStore::Redis { claim_idle } => {
                        Some(human(claim_idle))
                    }
                },
                deliver_within: human(a.deliver_within),
                max_attempts: a.max_attempts.get(),
                capacity: a.capacity.get(),
                keep_response_bytes: a.keep_response_bytes,
            }),
        }
    }
}

impl From<LimitConfig> for RenderedLimit {
    /// The redis-only keys are left out with the "local" backend, where they
    /// would be errors.
    fn from(l: LimitConfig) -> Self {
        let mut limit = RenderedLimit {
            rate: (!l.per_target).then_some(l.rate),
            rate_per_target: l.per_target.then_some(l.rate),
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
