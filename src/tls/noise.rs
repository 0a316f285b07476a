//! Client-triggered warnings of the TLS and HTTP/2 libraries, kept from
//! flooding the log. rustls warns for things any client may do on every
//! connection (an IP address as SNI, as `wrk` and many health checkers
//! send; a warning alert; an unexpected message), and h2 for a client's
//! misbehaviour (too many resets, a stray PING ack). Under a crowd that is
//! a line per connection, costing CPU and disk exactly when both are scarce.
//!
//! [`ClientWarnings`] is a log filter: each such warning is counted in
//! `sluice_client_warnings_total{library}`, and at most one a minute per
//! library is written (the first of each minute, so the log still says what
//! is happening). With a log level of `debug` or `trace` every one is written.
//!
//! Invariant: the count covers every warning the log filter saw, written
//! or not; sluice's own events are never held back here.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, Opts};
use tracing::level_filters::LevelFilter;
use tracing::{Event, Level, Metadata};
use tracing_log::NormalizeEvent;
use tracing_subscriber::layer::{Context, Filter};

/// At most one warning per library is written in this interval.
pub const INTERVAL: Duration = Duration::from_secs(60);

/// The libraries whose warnings a client can cause, by log target prefix.
const LIBRARIES: [&str; 2] = ["rustls", "h2"];

/// `sluice_client_warnings_total`, process-wide: the log filter is
/// installed once per process, before any metrics registry exists. An
/// error (not expected: the name and label are fixed) is reported when the
/// family is registered.
pub(crate) fn warnings() -> Result<&'static IntCounterVec, prometheus::Error> {
    static WARNINGS: LazyLock<Result<IntCounterVec, prometheus::Error>> = LazyLock::new(|| {
        IntCounterVec::new(
            Opts::new(
                "sluice_client_warnings_total",
                "Warnings from the TLS and HTTP/2 libraries that a client can cause (rustls, h2); at most one a minute per library is logged.",
            ),
            &["library"],
        )
    });
    WARNINGS
        .as_ref()
        .map_err(|err| prometheus::Error::Msg(err.to_string()))
}

/// The log filter that counts and rate-limits the libraries' warnings
/// (see the module doc). Put it on the layer that writes the log.
pub struct ClientWarnings {
    start: Instant,
    interval: Duration,
    counters: Option<[IntCounter; LIBRARIES.len()]>,
    /// When each library's last warning was written, in milliseconds since
    /// `start` plus one (0: never).
    written: [AtomicU64; LIBRARIES.len()],
}

impl ClientWarnings {
    /// One warning per library per [`INTERVAL`].
    pub fn new() -> ClientWarnings {
        ClientWarnings::every(INTERVAL)
    }

    /// One warning per library per `interval`.
    pub fn every(interval: Duration) -> ClientWarnings {
        ClientWarnings {
            start: Instant::now(),
            interval,
            counters: warnings()
                .ok()
                .map(|family| LIBRARIES.map(|library| family.with_label_values(&[library]))),
            written: [const { AtomicU64::new(0) }; LIBRARIES.len()],
        }
    }

    /// Whether a warning of `library` seen now is written.
    fn admit(&self, library: usize) -> bool {
        let Some(written) = self.written.get(library) else {
            return true;
        };
        let now = u64::try_from(self.start.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let interval = u64::try_from(self.interval.as_millis()).unwrap_or(u64::MAX);
        let last = written.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < interval {
            return false;
        }
        // Of two threads racing here, one writes.
        written
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }
}

impl Default for ClientWarnings {
    fn default() -> ClientWarnings {
        ClientWarnings::new()
    }
}

/// The index of the library whose log target `target` is, if any.
fn library(target: &str) -> Option<usize> {
    LIBRARIES.iter().position(|library| {
        target
            .strip_prefix(library)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

impl<S> Filter<S> for ClientWarnings {
    fn enabled(&self, _meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        true
    }

    fn event_enabled(&self, event: &Event<'_>, _cx: &Context<'_, S>) -> bool {
        // rustls logs through `log`: the record's own target is in the
        // normalized metadata.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());
        if *meta.level() != Level::WARN {
            return true;
        }
        let Some(library) = library(meta.target()) else {
            return true;
        };
        if let Some(counter) = self.counters.as_ref().and_then(|c| c.get(library)) {
            counter.inc();
        }
        LevelFilter::current() >= LevelFilter::DEBUG || self.admit(library)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_matched_by_whole_path_segments() {
        assert_eq!(library("rustls::msgs::handshake"), Some(0));
        assert_eq!(library("rustls"), Some(0));
        assert_eq!(library("h2::proto::streams::recv"), Some(1));
        assert_eq!(library("h2o"), None);
        assert_eq!(library("rustls_pki_types"), None);
        assert_eq!(library("sluice::runtime"), None);
    }

    #[test]
    fn one_warning_per_library_per_interval_is_admitted() {
        let filter = ClientWarnings::every(Duration::from_secs(3600));
        assert!(filter.admit(0), "the first rustls warning is written");
        assert!(!filter.admit(0), "the next one within the interval is not");
        assert!(filter.admit(1), "h2 has its own interval");
        let short = ClientWarnings::every(Duration::ZERO);
        assert!(short.admit(0) && short.admit(0));
    }
}
