//! sluice: a traffic-shaping reverse proxy.
//!
//! Data flows one way, and so do the imports (`.ci/layers` checks it):
//!
//! - [`runtime`]: listeners, accept loops, workers, the live config
//!   generation, the admin listener, reloads;
//! - [`gateway`]: a request's named phases — screen, route, classify, read
//!   body, admit, forward, relay — and its one recorded outcome;
//! - [`shaper`]: GCRA limiters, the bounded queue, the in-flight cap; no HTTP,
//!   no wall clock (its clock is tokio's, so tests run in virtual time);
//! - [`upstream`]: pools, balancing, health, retries, adaptive limits;
//!   [`store`]: a rate shared by a fleet through Redis;
//! - leaves: [`http`] (bodies, errors, headers, paths), [`outcome`], [`tls`],
//!   [`worker`], [`recycle`] (blocks of the large per-request futures
//!   reused per thread), [`journal`] (the on-disk log of async routes);
//!   beside the flow: [`config`] (parsed and checked once at the edge) and
//!   [`metrics`]; on top: `tools` (`simulate`, `demo`).

// -- leaf types
pub mod http;
pub mod journal;
pub mod outcome;
pub mod recycle;
pub mod tls;
pub mod worker;

// -- config
pub mod config;

// -- runtime, gateway
pub mod gateway;
pub mod runtime;
pub use self::runtime::{Running, start};

// -- upstream, store, metrics
pub mod metrics;
pub mod store;
pub mod upstream;

// -- shaper
pub mod shaper;

// -- tools
#[cfg(feature = "tools")]
pub mod tools;
#[cfg(feature = "tools")]
pub use tools::{demo, simulate};

pub use config::Config;
