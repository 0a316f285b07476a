//! sluice: a traffic-shaping reverse proxy.
//!
//! A request flows one way through these modules:
//! `server` (accept, HTTP/1.1 + h2c) → `proxy` (the request's phases) →
//! `path` (one spelling per path) → `router` (host / path / method to a route) → `classify` (client address,
//! key and priority class) → `shaper` (GCRA limiters,
//! bounded queue, in-flight cap; no HTTP, no wall clock) → `upstream`
//! (pooled client, timeouts; `h1pool` for plain HTTP/1.1 targets). `config` is parsed and validated once at the
//! edge; `metrics` and `outcome` sit beside the flow.

// The modules, one block per part of the layout (issue 16's restructure
// moves each block into its own folder; each block is edited only by the
// work on that part).

// -- leaf types
pub mod http;
pub mod outcome;
pub mod tls;
pub mod worker;

// -- config
pub mod config;
pub use config::secret;

// -- runtime, gateway, http
pub mod gateway;
pub mod runtime;
// Transition aliases (issue 16): the old paths keep resolving until every
// user switches to the new ones.
pub use self::gateway as proxy;
pub use self::gateway::{classify, relay, route, router};
pub use self::http::{path, request_body};
pub use self::runtime as server;
pub use self::runtime::admin;
pub use self::runtime::listen as listener;
pub use self::runtime::watch as reload;
pub use self::runtime::{Running, start};

// -- upstream, store, metrics
pub mod metrics;
pub mod store;
pub mod upstream;
pub use self::store as redis_store;
pub use self::upstream::h1pool;

// -- shaper
pub mod shaper;

// -- tools
#[cfg(feature = "tools")]
pub mod tools;
#[cfg(feature = "tools")]
pub use tools::{demo, simulate};

pub use config::Config;
