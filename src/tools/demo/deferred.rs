//! `sluice demo --async`: the demo route made asynchronous
//! (`config/demo-async.toml`). Every request is written to a journal and
//! answered `202` at once; the backlog is delivered at the route's rate.
//!
//! Here what only the async run needs: the journal's temporary directory
//! (removed when the demo ends, unless the process is killed) and the
//! report's extra figures. The wait for the backlog to drain after the load
//! is part of the demo's drive loop.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

/// A fresh directory under the system's temporary directory for the
/// route's journal; removed with everything in it when dropped.
pub(super) struct JournalDir(PathBuf);

impl JournalDir {
    pub(super) fn create() -> anyhow::Result<JournalDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path =
            std::env::temp_dir().join(format!("sluice-demo-{}-{nanos:09}", std::process::id()));
        // `create_dir`, not `create_dir_all`: never reuse what is there.
        std::fs::create_dir(&path)
            .with_context(|| format!("cannot create the journal directory {}", path.display()))?;
        Ok(JournalDir(path))
    }

    pub(super) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for JournalDir {
    fn drop(&mut self) {
        if let Err(err) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(%err, dir = %self.0.display(), "cannot remove the demo's journal directory");
        }
    }
}

/// What an async run adds to the report.
#[derive(Debug, Clone, PartialEq)]
pub struct AsyncFigures {
    /// The route's `capacity` and `deliver_within` (config/demo-async.toml).
    pub capacity: usize,
    pub deliver_within: Duration,
    /// The most requests answered `202` in any 1 s window.
    pub accepted_peak: u64,
    /// sluice's `sluice_async_requests_total{route="demo"}` by event.
    pub delivered: u64,
    pub expired: u64,
    /// How long after the last request was sent the backlog was empty
    /// (`None`: not within `deliver_within`).
    pub drained_after: Option<Duration>,
}

/// A `202`'s latency, often under a millisecond: to a tenth of one.
fn fine_millis(d: Option<Duration>) -> String {
    d.map_or_else(
        || "-".to_string(),
        |d| format!("{:.1} ms", d.as_secs_f64() * 1e3),
    )
}

impl AsyncFigures {
    /// The report's lines for an async run.
    pub(super) fn write(&self, f: &mut fmt::Formatter<'_>, report: &super::Report) -> fmt::Result {
        writeln!(
            f,
            "accepted: {} answered 202 at once (busiest 1 s: {} req/s; p50 {}, p99 {}), {} refused 503 (capacity {})",
            report.ok,
            self.accepted_peak,
            fine_millis(report.wait_p50),
            fine_millis(report.wait_p99),
            report.shed,
            self.capacity
        )?;
        writeln!(
            f,
            "backlog peak: {} held (queued or in flight); {}",
            report.queue_peak,
            match self.drained_after {
                Some(after) => format!("empty {:.1} s after the load ended", after.as_secs_f64()),
                None => format!(
                    "not empty {} after the load ended",
                    humantime::format_duration(self.deliver_within)
                ),
            }
        )?;
        writeln!(
            f,
            "delivered: {} (sluice counted; expired {}: not delivered within {})",
            self.delivered,
            self.expired,
            humantime::format_duration(self.deliver_within)
        )
    }
}
