//! The process families: config reloads and when the running config was
//! loaded, client connections against their cap, and the build.
//!
//! Invariant: the series a dashboard alerts on (reload results, refused
//! connections per listener) exist at zero from the start, so an absent
//! series never hides a failure.

use prometheus::{Gauge, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::{Metrics, counter_vec, gauge_value, int_gauge_vec, registered};

/// The process families.
#[derive(Clone)]
pub(super) struct ProcessFamilies {
    reloads: IntCounterVec,
    last_reload: Gauge,
    connections_open: IntGauge,
    connections_max: IntGauge,
    connections_refused: IntCounterVec,
}

impl ProcessFamilies {
    pub(super) fn register(r: &Registry) -> Result<ProcessFamilies, prometheus::Error> {
        let reloads = counter_vec(
            r,
            "sluice_config_reloads_total",
            "Config reloads by result (success, failure).",
            &["result"],
        )?;
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        let connections_refused = counter_vec(
            r,
            "sluice_connections_refused_total",
            "Connections accepted and closed at once because the listener was at its cap \
             (answered 503 + Retry-After, or closed unanswered on TLS), by listener and reason.",
            &["listener", "reason"],
        )?;
        for listener in ["proxy", "admin"] {
            connections_refused.with_label_values(&[listener, "max_connections"]);
        }
        let build_info = int_gauge_vec(
            r,
            "sluice_build_info",
            "Build information; always 1.",
            &["version"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Ok(ProcessFamilies {
            reloads,
            last_reload: registered(
                r,
                Gauge::with_opts(Opts::new(
                    "sluice_config_last_reload_success_timestamp_seconds",
                    "When the running config was loaded (Unix time): at start, then at each successful reload.",
                ))?,
            )?,
            connections_open: registered(
                r,
                IntGauge::with_opts(Opts::new(
                    "sluice_connections_open",
                    "Client connections open now (accepted and not yet closed).",
                ))?,
            )?,
            connections_max: registered(
                r,
                IntGauge::with_opts(Opts::new(
                    "sluice_connections_max",
                    "server.max_connections: beyond it, new connections are answered 503 and closed.",
                ))?,
            )?,
            connections_refused,
        })
    }
}

impl Metrics {
    /// Counts a config (re)load; a success also stamps the time.
    pub fn config_loaded(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.process.reloads.with_label_values(&[result]).inc();
        if success {
            self.process.last_reload.set(unix_now());
        }
    }

    /// Stamps the time the first config was loaded (not counted as a reload).
    pub fn config_started(&self) {
        self.process.last_reload.set(unix_now());
    }

    /// Publishes the cap on client connections.
    pub fn connections_max(&self, max: usize) {
        self.process.connections_max.set(gauge_value(max));
    }

    /// The open-connections gauge itself: raised when a connection is
    /// admitted under the cap and lowered when it closes, so it counts
    /// connections and nothing else.
    pub fn connections_open(&self) -> IntGauge {
        self.process.connections_open.clone()
    }

    /// The counter of connections `listener` refused at its cap.
    pub fn connections_refused(&self, listener: &str) -> IntCounter {
        self.process
            .connections_refused
            .with_label_values(&[listener, "max_connections"])
    }
}

/// Now, as Unix time in seconds (0 if the clock is before 1970).
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
