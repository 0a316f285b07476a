//! The runtime: listening, accepting and serving connections, and the
//! lifecycle around them (start, reload, shutdown). It hands each request
//! to the current generation's gateway and knows nothing of routes,
//! shaping or upstreams beyond that.
//!
//! - [`start`](mod@start): [`start()`](fn@start), [`Running`] (reload, shutdown, wait) and their errors.
//! - [`live`]: the state the listeners share: the current generation,
//!   TLS acceptor, readiness, metrics.
//! - [`workers`]: the worker threads that serve proxy connections.
//! - [`listen`]: binding a listener, accepting from it, its kernel accept
//!   queue and the listen backlog.
//! - [`accept`]: the accept loops (deal to workers, drain on shutdown).
//! - [`connection`]: serving one connection under its activity watch.
//! - [`coalesce`]: an HTTP/2 connection's writes sent once per poll.
//! - [`h1`]: serving HTTP/1 connections with sluice's own codec.
//! - [`door`]: the connection cap (`max_connections`) and its refusals.
//! - [`activity`]: a connection's activity (header and idle timeouts).
//! - [`admin`]: the admin listener (`/metrics`, health, the admin API).
//! - `status`: the status page and `/status.json`, sampled once a second.
//! - [`watch`]: watching the config file for changes.
//!
//! Invariant: every accepted connection passes the door, is driven under
//! its watch, and serves each request with the generation current when the
//! request began.

mod accept;
mod activity;
pub mod admin;
mod coalesce;
mod connection;
mod door;
mod h1;
pub mod listen;
mod live;
mod start;
mod status;
pub mod watch;
mod workers;

pub use admin::ADMIN_MAX_CONNECTIONS;
pub use listen::ListenDrops;
pub use start::{ReloadError, Running, StartError, start};
