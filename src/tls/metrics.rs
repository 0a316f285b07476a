//! The TLS families, declared and registered here: handshakes by result,
//! their duration from accept, the sessions established by protocol version,
//! ALPN protocol and whether they were resumed, and the client-triggered
//! library warnings counted by [`super::noise`]; and the handles a
//! [`super::Terminator`] resolves once.
//!
//! Invariant: every label value is one of a fixed few, so the series are
//! bounded; no label is looked up per handshake.

use std::time::Duration;

use prometheus::{Histogram, IntCounter, IntCounterVec, Registry};
use rustls::{HandshakeKind, ProtocolVersion, ServerConnection};

use super::ALPN_H2;
use crate::metrics::{counter_vec, histogram_vec};

/// Buckets for handshake duration: 0.5 ms to 10 s.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The label values of `version`, `alpn` and `resumed`, in index order.
const VERSIONS: [&str; 2] = ["TLSv1.3", "TLSv1.2"];
const ALPNS: [&str; 3] = ["h2", "http/1.1", "none"];
const RESUMED: [&str; 2] = ["false", "true"];
const SESSION_KINDS: usize = VERSIONS.len() * ALPNS.len() * RESUMED.len();

/// The TLS families.
#[derive(Clone)]
pub struct TlsFamilies {
    handshakes: IntCounterVec,
    seconds: Histogram,
    sessions: IntCounterVec,
}

impl TlsFamilies {
    /// Declares and registers the families in `r` (with the process-wide
    /// count of client-triggered warnings); fails only if a name or label
    /// set is invalid or already taken, which the tests would show.
    pub fn register(r: &Registry) -> Result<TlsFamilies, prometheus::Error> {
        r.register(Box::new(super::noise::warnings()?.clone()))?;
        Ok(TlsFamilies {
            handshakes: counter_vec(
                r,
                "sluice_tls_handshakes_total",
                "TLS handshakes on the proxy listener by result (ok, failed, timed_out).",
                &["result"],
            )?,
            seconds: histogram_vec(
                r,
                "sluice_tls_handshake_seconds",
                "Time from accepting a connection to the end of its successful TLS handshake.",
                HANDSHAKE_BUCKETS,
                &[],
            )?
            .get_metric_with_label_values::<&str>(&[])?,
            sessions: counter_vec(
                r,
                "sluice_tls_sessions_total",
                "TLS sessions established by protocol version, ALPN protocol (h2, http/1.1, none) and whether the client resumed an earlier session.",
                &["version", "alpn", "resumed"],
            )?,
        })
    }

    /// The handles of one terminator.
    pub(super) fn handshake(&self) -> HandshakeMetrics {
        let result = |r: &str| self.handshakes.with_label_values(&[r]);
        let sessions = std::array::from_fn(|i| {
            let (version, rest) = (
                i / (ALPNS.len() * RESUMED.len()),
                i % (ALPNS.len() * RESUMED.len()),
            );
            let (alpn, resumed) = (rest / RESUMED.len(), rest % RESUMED.len());
            self.sessions
                .with_label_values(&[VERSIONS[version], ALPNS[alpn], RESUMED[resumed]])
        });
        HandshakeMetrics {
            ok: result("ok"),
            failed: result("failed"),
            timed_out: result("timed_out"),
            seconds: self.seconds.clone(),
            sessions,
        }
    }
}

/// A terminator's handles, resolved once.
#[derive(Clone)]
pub(super) struct HandshakeMetrics {
    ok: IntCounter,
    pub(super) failed: IntCounter,
    pub(super) timed_out: IntCounter,
    seconds: Histogram,
    sessions: [IntCounter; SESSION_KINDS],
}

impl HandshakeMetrics {
    /// Counts a completed handshake that took `took` from accept.
    pub(super) fn established(&self, conn: &ServerConnection, took: Duration) {
        self.ok.inc();
        self.seconds.observe(took.as_secs_f64());
        let version = match conn.protocol_version() {
            Some(ProtocolVersion::TLSv1_2) => 1,
            _ => 0,
        };
        let alpn = match conn.alpn_protocol() {
            Some(ALPN_H2) => 0,
            Some(_) => 1,
            None => 2,
        };
        let resumed = usize::from(conn.handshake_kind() == Some(HandshakeKind::Resumed));
        let index = (version * ALPNS.len() + alpn) * RESUMED.len() + resumed;
        if let Some(counter) = self.sessions.get(index) {
            counter.inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_session_kind_has_its_own_series() {
        let registry = Registry::new();
        let families = TlsFamilies::register(&registry).expect("register");
        let handles = families.handshake();
        let mut labels = std::collections::BTreeSet::new();
        for counter in &handles.sessions {
            counter.inc();
        }
        for family in registry.gather() {
            if family.name() == "sluice_tls_sessions_total" {
                for metric in family.get_metric() {
                    assert_eq!(metric.get_counter().get_value(), 1.0);
                    let key: Vec<String> = metric
                        .get_label()
                        .iter()
                        .map(|l| format!("{}={}", l.name(), l.value()))
                        .collect();
                    labels.insert(key.join(","));
                }
            }
        }
        assert_eq!(labels.len(), SESSION_KINDS, "{labels:?}");
    }
}
