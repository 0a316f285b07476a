//! `GET /status.json`: the board's rates and history, with each route's
//! live state (pause, override, queue) read at the moment of the request.
//! The fields are documented in docs/status.md.
//!
//! Invariant: only names from the config, counts, rates and durations:
//! no client address, key, header or path ever reaches this document.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::board::{
    Board, HISTORY, LATENCY_WINDOW, ROUTE_OUTCOMES, RouteSecond, UpstreamSecond, UpstreamTrack,
};
use crate::gateway::Gateway;
use crate::gateway::route::Route;

/// The whole document.
pub(super) fn render(board: &Board, gateway: &Gateway, uptime_seconds: f64) -> Value {
    let p = &board.process;
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_seconds": round(uptime_seconds),
        "interval_seconds": 1,
        "history_seconds": HISTORY,
        "latency_window_seconds": LATENCY_WINDOW,
        "process": {
            "connections_open": p.connections_open,
            "max_connections": p.max_connections,
            "config_generation": p.generation,
            "config_loaded_at": p.loaded_at.floor(),
            "config_reload_failures": p.reload_failures,
        },
        "routes": gateway.routes().iter().map(|route| {
            let history = board.routes.iter().find(|t| t.name == route.name).map(|t| &t.history);
            route_json(route, history.map(|h| h.iter()).into_iter().flatten().collect())
        }).collect::<Vec<_>>(),
        "upstreams": board.upstreams.iter().map(|u| upstream_json(u, gateway)).collect::<Vec<_>>(),
    })
}

/// A route: live state now, rates of the last second, its history.
fn route_json(route: &Route, history: Vec<&RouteSecond>) -> Value {
    let state = &route.state;
    let shaper = &state.shaper;
    let limits = shaper.limits();
    let configured = state.configured();
    let last = history.last().copied().copied().unwrap_or_default();
    let outcomes: serde_json::Map<String, Value> = ROUTE_OUTCOMES
        .iter()
        .zip(last.outcomes)
        .map(|(o, rate)| (o.as_str().to_string(), json!(round(rate))))
        .collect();
    let series =
        |f: &dyn Fn(&RouteSecond) -> Value| history.iter().map(|s| f(s)).collect::<Vec<_>>();
    json!({
        "name": route.name,
        "upstream": route.upstream.name(),
        "paused": shaper.is_paused(),
        "rate_override": state.rate_override().map(|o| json!({
            "rate": o.rate,
            "burst": o.burst.get(),
            "expires_in_seconds": round(o.expires_at.saturating_duration_since(Instant::now()).as_secs_f64()),
        })),
        "global_limit": shaper.shared_fallback().map(|on_fallback| json!({
            "store": "redis",
            "on_fallback": on_fallback,
        })),
        "configured_rate": configured.rate.map(|(rate, _)| rate),
        "rate_per_target": state.per_target().map(|(rate, _)| rate),
        "healthy_targets": state.per_target().map(|(_, healthy)| healthy),
        "configured_burst": configured.rate.map(|(_, burst)| burst.get()),
        "effective_rate": limits.rate.map(|(rate, _)| rate),
        "effective_burst": limits.rate.map(|(_, burst)| burst.get()),
        "queue_depth": shaper.depth(),
        "queue_capacity": limits.capacity,
        "oldest_wait_seconds": round(shaper.oldest_wait().as_secs_f64()),
        "queue_timeout_seconds": limits.timeout.as_secs_f64(),
        "offered_per_second": round(last.offered),
        "released_per_second": round(last.released),
        "outcomes_per_second": outcomes,
        "history": {
            "offered": series(&|s| json!(round(s.offered))),
            "released": series(&|s| json!(round(s.released))),
            "rate": series(&|s| json!(s.rate)),
            "refused": series(&|s| json!(round(s.refused()))),
            "queue_depth": series(&|s| json!(s.depth)),
            "oldest_wait_seconds": series(&|s| json!(round(s.oldest_wait))),
        },
    })
}

/// An upstream: the last second, its targets, its history.
fn upstream_json(track: &UpstreamTrack, gateway: &Gateway) -> Value {
    let last = track.history.newest().copied().unwrap_or_default();
    let [connect, timeout, other] = track.errors_total;
    let series =
        |f: &dyn Fn(&UpstreamSecond) -> Value| track.history.iter().map(f).collect::<Vec<_>>();
    let routes: Vec<&str> = gateway
        .routes()
        .iter()
        .filter(|r| r.upstream.name() == track.name)
        .map(|r| r.name.as_str())
        .collect();
    let targets: Vec<Value> = track
        .targets()
        .map(|t| {
            json!({
                "name": t.name,
                "healthy": t.healthy,
                "inflight": t.inflight,
                "max_inflight": t.max_inflight,
                "requests_per_second": round(t.requests),
                "errors_per_second": round(t.errors),
                "errors_total": t.errors_total,
                "latency_p50_seconds": t.p50.map(round_latency),
                "latency_p99_seconds": t.p99.map(round_latency),
            })
        })
        .collect();
    json!({
        "name": track.name,
        "routes": routes,
        "inflight": last.inflight,
        "limit": last.limit,
        "max_inflight": track.max_inflight,
        "adaptive": track.adaptive,
        "healthy_targets": track.targets().filter(|t| t.healthy).count(),
        "requests_per_second": round(last.requests),
        "errors_per_second": round(last.errors),
        "errors_total": { "connect": connect, "timeout": timeout, "other": other },
        "latency_p50_seconds": last.p50.map(round_latency),
        "latency_p99_seconds": last.p99.map(round_latency),
        "targets": targets,
        "history": {
            "inflight": series(&|s| json!(s.inflight)),
            "limit": series(&|s| json!(s.limit)),
            "requests": series(&|s| json!(round(s.requests))),
            "errors": series(&|s| json!(round(s.errors))),
            "latency_p50_seconds": series(&|s| json!(s.p50.map(round_latency))),
            "latency_p99_seconds": series(&|s| json!(s.p99.map(round_latency))),
        },
    })
}

/// Two decimals: rates and seconds as a person reads them, and a smaller document.
fn round(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Latencies to the microsecond.
fn round_latency(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}
