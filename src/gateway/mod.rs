//! The gateway: one config generation's routing table, shapers and
//! upstreams, and the life of a request through them.
//!
//! - [`handle`]: [`Gateway::handle_owned`], the request's named phases (screen,
//!   route, classify, read the body, admit, forward, relay).
//! - `accept`: an async route's accept phase (202 and a ticket) and ticket lookups.
//! - [`build`]: building a generation, keeping live state across reloads.
//! - [`record`]: the outcome and access log line of each request.
//! - [`refusal`]: error to outcome and status, in one place.
//! - [`forward`]: the request's normal path and its rewrite for the backend.
//! - [`upgrade`]: HTTP/1.1 Upgrade and the tunnel after a 101.
//! - [`relay`]: relaying the response body, holding the request's grant.
//! - [`route`]: a route's live state (shaper, limiters, overrides).
//! - [`router`]: host / path / method to a route.
//! - [`classify`]: client address, key and priority class.
//! - [`telemetry`]: the metric families each component registered.
//! - [`deferred`]: async routes — accept now (202 and a ticket), deliver later.
//!
//! Invariant: every request ends with exactly one [`Outcome`]; none is
//! forwarded after its deadline, none whose client left, none twice.
//!
//! [`Outcome`]: crate::outcome::Outcome

mod accept;
#[cfg(test)]
mod alloc_tests;
mod build;
pub mod classify;
pub mod deferred;
mod forward;
mod handle;
#[cfg(test)]
mod per_target_tests;
mod record;
mod refusal;
pub mod relay;
pub mod route;
pub mod router;
mod telemetry;
mod upgrade;

use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

use self::route::{RedisShared, Route};
use self::router::Router;
pub use self::telemetry::Telemetry;
use crate::config::Config;
use crate::http::request_body::BodyLimits;
use crate::metrics::RouteMetrics;
use crate::tls::TlsError;
use crate::upstream::Upstream;

/// Everything needed to serve requests: the routing table, each route's
/// shaper and upstream, and the metrics.
pub struct Gateway {
    router: Router,
    routes: Vec<Route>,
    upstreams: Vec<Arc<Upstream>>,
    unrouted: RouteMetrics,
    trusted_proxies: Vec<IpNet>,
    max_body_bytes: u64,
    /// How request bodies are read (buffer size, idle timeout, maximum).
    body_limits: BodyLimits,
    /// `server.send_timeout`: how long a client may leave a response unread.
    send_timeout: Duration,
    access_log: bool,
    telemetry: Telemetry,
    /// The `[redis]` link global routes share.
    redis: Option<RedisShared>,
}

impl Gateway {
    /// Builds the gateway; must run inside a tokio runtime (shapers spawn tasks).
    pub fn new(config: &Config, telemetry: Telemetry) -> Result<Gateway, TlsError> {
        Gateway::build(config, telemetry, None)
    }

    /// The gateway for a new config generation. Routes that keep their name
    /// and upstream keep their live state (queue, limiters, pause, override);
    /// upstreams keep their in-flight accounting. Removed routes drain in the
    /// old generation, which lives as long as requests still hold it.
    pub fn reload(&self, config: &Config) -> Result<Gateway, TlsError> {
        Gateway::build(config, self.telemetry.clone(), Some(self))
    }

    /// Waits for the first DNS resolution of every discovered name and
    /// returns those ("upstream: host:port") that gave no address.
    pub async fn first_resolution(&self) -> Vec<String> {
        let mut missing = Vec::new();
        for upstream in &self.upstreams {
            for name in upstream.first_resolution().await {
                missing.push(format!("{}: {name}", upstream.name()));
            }
        }
        missing
    }

    /// The routes of this generation.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Refuses new requests and answers everything still queued (shutdown).
    pub fn close(&self) {
        for route in &self.routes {
            route.state.shaper.close();
        }
    }

    /// The async route holding `ticket`, and the ticket's state as JSON.
    pub async fn ticket_status(
        &self,
        ticket: deferred::record::TicketId,
    ) -> Option<serde_json::Value> {
        // A route whose store cannot be asked (Redis down) answers
        // "unknown" only if no other route knows the ticket.
        let mut unknown = None;
        for deferred in self.routes.iter().filter_map(|r| r.deferred.as_ref()) {
            match deferred.status_json(ticket).await {
                Some(status) if status["state"] == "unknown" => unknown = Some(status),
                Some(status) => return Some(status),
                None => {}
            }
        }
        unknown
    }

    /// Updates the sampled gauges and renders the metrics text.
    pub fn render_metrics(&self) -> String {
        self.sample_metrics();
        self.telemetry.metrics.render()
    }

    /// Sets the gauges that are read rather than counted (queue depths,
    /// in-flight requests, target health) on every route and upstream of
    /// this generation, including upstreams no route names.
    pub fn sample_metrics(&self) {
        for route in &self.routes {
            route.sample_metrics();
            if let Some(deferred) = &route.deferred {
                deferred.sample_metrics();
            }
        }
        for upstream in &self.upstreams {
            upstream.sample_metrics();
        }
    }
}
