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
pub mod outcome;
pub mod tls;

// -- config
pub mod config;
pub mod secret;

// -- runtime, gateway, http
pub(crate) mod activity;
pub mod admin;
pub mod classify;
pub(crate) mod door;
pub mod listener;
pub mod path;
pub mod proxy;
pub mod relay;
pub mod reload;
pub mod request_body;
pub mod route;
pub mod router;
pub mod server;
pub use server::{Running, start};

// -- upstream, store, metrics
pub mod adaptive;
pub mod h1pool;
pub mod metrics;
pub mod redis_store;
pub mod upstream;

// -- shaper
pub mod shaper;

// -- tools
#[cfg(feature = "tools")]
pub mod tools;
#[cfg(feature = "tools")]
pub use tools::{demo, simulate};

pub use config::Config;
