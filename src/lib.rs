// No panics from input: outside tests, `unwrap`, `expect`, `panic!`,
// `todo!` and `unimplemented!` do not compile. See README ("Panics").
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::todo,
        clippy::unimplemented
    )
)]
//! sluice: a traffic-shaping reverse proxy.
//!
//! A request flows one way through these modules:
//! `server` (accept, HTTP/1.1 + h2c) → `proxy` (the request's phases) →
//! `path` (one spelling per path) → `router` (host / path / method to a route) → `classify` (client address,
//! key and priority class) → `shaper` (GCRA limiters,
//! bounded queue, in-flight cap; no HTTP, no wall clock) → `upstream`
//! (pooled client, timeouts; `h1pool` for plain HTTP/1.1 targets). `config` is parsed and validated once at the
//! edge; `metrics` and `outcome` sit beside the flow.

pub(crate) mod activity;
pub mod adaptive;
pub mod admin;
pub mod classify;
pub mod config;
pub mod demo;
pub(crate) mod door;
pub mod h1pool;
pub mod listener;
pub mod metrics;
pub mod outcome;
pub mod path;
pub mod proxy;
pub mod redis_store;
pub mod relay;
pub mod reload;
pub mod request_body;
pub mod route;
pub mod router;
pub mod secret;
pub mod server;
pub mod shaper;
pub mod simulate;
pub mod tls;
pub mod upstream;

pub use config::Config;
pub use server::{Running, start};
