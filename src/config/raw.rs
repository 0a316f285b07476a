//! The file as written. Values that need checking beyond their TOML type are
//! `Spanned` so a failed check can point at them; optional keys are `Option` so
//! defaults are applied in exactly one place (the checks in `check/`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default)]
    pub(crate) admin: RawAdmin,
    #[serde(default)]
    pub(crate) log: RawLog,
    pub(crate) redis: Option<RawRedis>,
    pub(crate) dns: Option<RawDns>,
    pub(crate) upstreams: Option<Spanned<BTreeMap<String, RawUpstream>>>,
    pub(crate) routes: Option<Spanned<Vec<RawRoute>>>,
    pub(crate) storage: Option<RawStorage>,
}

/// `[storage]`: where async routes keep their journals.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStorage {
    pub(crate) dir: Option<Spanned<String>>,
    pub(crate) segment_bytes: Option<Spanned<i64>>,
}

/// `[routes.async]`: accept now, deliver later.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAsync {
    pub(crate) store: Option<Spanned<String>>,
    pub(crate) deliver_within: Option<Spanned<String>>,
    pub(crate) max_attempts: Option<Spanned<i64>>,
    pub(crate) capacity: Option<Spanned<i64>>,
    pub(crate) keep_response_bytes: Option<Spanned<i64>>,
    pub(crate) claim_idle: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    pub(crate) url: Spanned<String>,
    pub(crate) password_file: Option<Spanned<String>>,
    pub(crate) password_env: Option<Spanned<String>>,
    pub(crate) key_prefix: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDns {
    pub(crate) nameservers: Option<Vec<Spanned<String>>>,
    pub(crate) timeout: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) header_timeout: Option<Spanned<String>>,
    pub(crate) idle_timeout: Option<Spanned<String>>,
    pub(crate) backlog: Option<Spanned<i64>>,
    pub(crate) max_header_bytes: Option<Spanned<i64>>,
    pub(crate) max_headers: Option<Spanned<i64>>,
    pub(crate) max_body_bytes: Option<Spanned<i64>>,
    pub(crate) request_buffer_bytes: Option<Spanned<i64>>,
    pub(crate) client_body_timeout: Option<Spanned<String>>,
    pub(crate) send_timeout: Option<Spanned<String>>,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) workers: Option<Spanned<i64>>,
    pub(crate) drain_timeout: Option<Spanned<String>>,
    pub(crate) shutdown_delay: Option<Spanned<String>>,
    pub(crate) trusted_proxies: Option<Vec<Spanned<String>>>,
    pub(crate) tls: Option<RawServerTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServerTls {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
    pub(crate) handshake_timeout: Option<Spanned<String>>,
    pub(crate) session_tickets: Option<bool>,
    pub(crate) session_cache: Option<Spanned<i64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) listen: Option<Spanned<String>>,
    pub(crate) token: Option<Spanned<String>>,
    pub(crate) token_file: Option<Spanned<String>>,
    pub(crate) token_env: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) format: Option<Spanned<String>>,
    pub(crate) level: Option<Spanned<String>>,
    pub(crate) access_log: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub(crate) targets: Spanned<Vec<Spanned<String>>>,
    pub(crate) balance: Option<Spanned<String>>,
    pub(crate) discovery: Option<Spanned<String>>,
    pub(crate) resolve_interval: Option<Spanned<String>>,
    pub(crate) retries: Option<Spanned<i64>>,
    pub(crate) http2: Option<bool>,
    pub(crate) max_inflight: Option<Spanned<i64>>,
    pub(crate) connect_timeout: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) read_timeout: Option<Spanned<String>>,
    pub(crate) pool_idle_timeout: Option<Spanned<String>>,
    pub(crate) pool_max_idle_per_target: Option<Spanned<i64>>,
    pub(crate) passive_health: Option<Spanned<RawPassiveHealth>>,
    pub(crate) active_health: Option<Spanned<RawActiveHealth>>,
    pub(crate) adaptive: Option<RawAdaptive>,
    pub(crate) tls: Option<RawUpstreamTls>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassiveHealth {
    pub(crate) consecutive_failures: Option<Spanned<i64>>,
    pub(crate) base_ejection: Option<Spanned<String>>,
    pub(crate) max_ejection: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawActiveHealth {
    pub(crate) path: Option<Spanned<String>>,
    pub(crate) interval: Option<Spanned<String>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) healthy_threshold: Option<Spanned<i64>>,
    pub(crate) unhealthy_threshold: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdaptive {
    pub(crate) min_limit: Option<Spanned<i64>>,
    pub(crate) max_limit: Option<Spanned<i64>>,
    pub(crate) initial_limit: Option<Spanned<i64>>,
    pub(crate) tolerance: Option<Spanned<f64>>,
    pub(crate) smoothing: Option<Spanned<f64>>,
}

/// May be empty: `[upstreams.NAME.tls]` alone turns TLS on.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) ca: Option<Spanned<String>>,
    pub(crate) server_name: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: Spanned<String>,
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
    pub(crate) methods: Option<Vec<Spanned<String>>>,
    pub(crate) upstream: Spanned<String>,
    pub(crate) limit: Option<Spanned<RawLimit>>,
    #[serde(default)]
    pub(crate) queue: RawQueue,
    #[serde(default)]
    pub(crate) reject: RawReject,
    pub(crate) key: Option<Spanned<RawKey>>,
    pub(crate) key_limit: Option<RawKeyLimit>,
    pub(crate) classes: Option<Spanned<Vec<Spanned<RawClass>>>>,
    pub(crate) upgrades: Option<Vec<Spanned<String>>>,
    #[serde(rename = "async")]
    pub(crate) deferred: Option<Spanned<RawAsync>>,
}

/// `key = "client_ip"` or `key = ["client_ip", "header:x-api-key"]`. Written by
/// hand rather than as an untagged enum, which would lose the element spans.
pub(crate) enum RawKey {
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
pub(crate) struct RawLimit {
    pub(crate) rate: Option<Spanned<f64>>,
    pub(crate) rate_per_target: Option<Spanned<f64>>,
    pub(crate) burst: Option<Spanned<i64>>,
    pub(crate) dry_run: Option<Spanned<bool>>,
    pub(crate) backend: Option<Spanned<String>>,
    pub(crate) lease: Option<Spanned<i64>>,
    pub(crate) on_redis_error: Option<Spanned<String>>,
    pub(crate) expected_instances: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeyLimit {
    pub(crate) rate: Spanned<f64>,
    pub(crate) burst: Option<Spanned<i64>>,
    pub(crate) max_keys: Option<Spanned<i64>>,
    pub(crate) dry_run: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawQueue {
    pub(crate) capacity: Option<Spanned<i64>>,
    pub(crate) timeout: Option<Spanned<String>>,
    pub(crate) discipline: Option<Spanned<String>>,
    pub(crate) lifo_threshold: Option<Spanned<String>>,
    pub(crate) fairness: Option<Spanned<String>>,
    pub(crate) aging: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReject {
    pub(crate) status: Option<Spanned<i64>>,
    pub(crate) retry_after: Option<bool>,
    pub(crate) rate_limited_status: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClass {
    pub(crate) name: Spanned<String>,
    pub(crate) header: Option<Spanned<String>>,
    pub(crate) values: Option<Spanned<Vec<Spanned<String>>>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
    pub(crate) methods: Option<Spanned<Vec<Spanned<String>>>>,
}
