//! The built-in status page on the admin listener: `GET /` serves one
//! self-contained HTML page ([`PAGE`], embedded in the binary: no CDN, no
//! external font or script), which polls `GET /status.json` once a second
//! and calls the admin API for pause, resume and rate overrides.
//!
//! - `board`: what one task samples once a second, into bounded rings;
//! - `readings`: one gather of the metrics registry, looked up by labels;
//! - `quantile`: latency quantiles from histogram buckets over a window;
//! - `ring`: the bounded history;
//! - `json`: the document `/status.json` answers (docs/status.md).
//!
//! Invariant: nothing here runs on a request's path. The sampler reads
//! what the proxy already counts (the metrics registry, the shapers' own
//! state), so the page costs the proxy one gather a second, whatever the
//! load; its memory is bounded by the config times [`board::HISTORY`].

mod board;
mod json;
mod quantile;
mod readings;
mod ring;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};

use self::board::Board;
use self::readings::Readings;
use super::live::Live;

/// The page, as served at `GET /`.
pub(crate) const PAGE: &str = include_str!("page.html");

/// Time between two samples.
const INTERVAL: Duration = Duration::from_secs(1);

/// The sampled state the page shows, shared by the sampler and the admin
/// listener.
pub(crate) struct Status {
    board: Mutex<Board>,
    started: Instant,
}

impl Status {
    pub(crate) fn new() -> Status {
        Status {
            board: Mutex::new(Board::default()),
            started: Instant::now(),
        }
    }

    /// Takes one sample of `live`'s current generation.
    fn sample(&self, live: &Live) {
        let gateway = live.gateway.load_full();
        let config = live.config.load_full();
        // Target in-flight and health are gauges set when sampled.
        gateway.sample_metrics();
        let readings = Readings::new(live.metrics.registry().gather());
        self.board
            .lock()
            .sample(Instant::now(), &gateway, &config, &readings);
    }

    /// The `/status.json` document now.
    pub(crate) fn json(&self, live: &Live) -> Value {
        let gateway = live.gateway.load_full();
        let uptime = self.started.elapsed().as_secs_f64();
        json::render(&self.board.lock(), &gateway, uptime)
    }
}

/// Samples `live` every [`INTERVAL`] until `stopped` turns true.
pub(crate) async fn sample_until_stopped(
    status: Arc<Status>,
    live: Arc<Live>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticker = tokio::time::interval(INTERVAL);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => status.sample(&live),
            changed = stopped.changed() => {
                if changed.is_err() || *stopped.borrow() {
                    return;
                }
            }
        }
    }
}
