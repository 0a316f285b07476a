//! sluice's integration tests, in one binary: the shared helpers in `common`
//! compile once, and every test file is a module here. Run one file's tests
//! with `cargo test --test it <module>::` (e.g. `proxy::`).
//!
//! They share one process: tests that measure wall-clock time take
//! `common::serial()`, and log capture goes through one subscriber
//! (`common::log_capture()`).

// Test helpers (not `#[test]` functions, which clippy.toml already
// covers) unwrap, expect and panic too: a failure should fail the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

mod adaptive;
mod async_redis;
mod async_route;
mod bounds;
mod cli;
mod codec;
mod config;
mod crowd;
mod dashboards;
#[cfg(feature = "tools")]
mod demo;
mod discovery;
mod fairness;
mod global;
mod h1diff;
mod h1pool;
mod hostile_body;
mod hostile_requests;
mod http2;
mod operate;
mod pools;
mod proxy;
mod read_timeout;
mod redis_gcra;
mod secrets;
mod shaping;
mod silent;
#[cfg(feature = "tools")]
mod simulate;
mod status;
mod tls;
mod upstream_h1;
mod upstream_tls;
mod websocket;
