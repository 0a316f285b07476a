//! Configuration: the TOML file parsed once, validated at the edge, and turned
//! into plain typed structs. Nothing past this module sees a raw string.
//!
//! Every error names the file, the line and the dotted key it is about.
//!
//! The way through, in order:
//! - `load`: read the file, parse the TOML, report errors (`file:line:col: key`);
//! - `raw`: the file as serde reads it, every value spanned;
//! - `check`: one file per section turning the raw tree into the `model`,
//!   with the `defaults` applied and the `bounds` enforced, and the leaf
//!   parsers in `values`, `redis_url` and [`secret`];
//! - `locate`: a byte offset (or a value's span) to a line, a column and
//!   the dotted key;
//! - `render`: the typed config back into TOML (`sluice check`), with the
//!   kernel's cap on the listen `backlog`.

mod backlog;
mod bounds;
mod check;
mod defaults;
mod load;
mod locate;
mod model;
mod raw;
pub(crate) mod redis_url;
mod render;
pub mod secret;
mod values;

#[cfg(test)]
mod tests;

pub use backlog::Backlog;
pub use bounds::{
    MAX_BURST, MAX_DURATION, MAX_RATE, MAX_TOKEN_BYTES, MIN_CLIENT_TIMEOUT, MIN_RATE, check_burst,
    check_rate,
};
pub use defaults::DEFAULT_UPGRADE;
pub use load::ConfigError;
pub use model::{
    ActiveHealth, AdaptiveConfig, AdminConfig, AsyncConfig, AsyncStore, Balance, ClassConfig,
    ClassMatch, Config, Discipline, DiscoveryConfig, DnsConfig, Fairness, KeyLimitConfig, KeyPart,
    LimitBackend, LimitConfig, LogConfig, LogFormat, OnRedisError, PassiveHealth, QueueConfig,
    RedisConfig, RedisLimitConfig, RejectConfig, RouteConfig, ServerConfig, ServerTls,
    StorageConfig, TargetConfig, UpstreamConfig, UpstreamTls,
};
pub use redis_url::{redact_url, url_password, validate_url};
pub use secret::{REDACTED, Secret, SecretSource};
