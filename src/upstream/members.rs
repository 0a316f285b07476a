//! The targets an upstream sends to now, and how that set changes.
//!
//! The set is an immutable snapshot ([`Members`]) swapped whole, so a pick
//! reads one set. It is built from the upstream's entries — the targets
//! written as addresses, and for each name discovered by DNS its last known
//! addresses — when a generation is built and whenever a resolution changes
//! them. A target that stays (same address, origin and options) is the same
//! object: it keeps its health, idle connections and in-flight count. One
//! that leaves is only dropped from the snapshot; the requests in flight to
//! it hold it until they are done (it drains), and nothing new picks it.
//!
//! Invariant: an address appears at most once in a set (the first entry
//! naming it wins).

use std::net::IpAddr;
use std::sync::Arc;

use http::uri::Authority;
use tokio::time::Instant;

use super::Upstream;
use super::balance::Balancer;
use super::metrics::UpstreamFamilies;
use super::target::{Origin, Target};
use crate::config::{Balance, TargetConfig, UpstreamConfig};

/// The targets in force, with the balancer's state for them.
pub(super) struct Members {
    pub(super) targets: Vec<Arc<Target>>,
    pub(super) balancer: Balancer,
}

impl Members {
    pub(super) fn new(balance: Balance, targets: Vec<Arc<Target>>) -> Members {
        Members {
            balancer: Balancer::new(balance, &targets),
            targets,
        }
    }
}

/// One entry of `targets` as written: an address, or a name to discover.
pub(super) enum Entry {
    Static(TargetConfig),
    Named(Named),
}

/// A name discovered by DNS, and what was last learnt of it.
pub(super) struct Named {
    pub(super) spec: TargetConfig,
    pub(super) host: Arc<str>,
    pub(super) port: u16,
    /// The addresses of the last resolution that gave any, sorted.
    pub(super) addrs: Vec<IpAddr>,
    /// Resolutions failed in a row, and when that was last logged.
    pub(super) failures: u32,
    pub(super) logged_at: Option<Instant>,
}

/// The entries of `config`: with discovery, a target whose host is a name
/// is discovered, taking over the addresses `previous` knew for it.
pub(super) fn entries(config: &UpstreamConfig, previous: Option<&Upstream>) -> Vec<Entry> {
    config
        .targets
        .iter()
        .map(|spec| {
            let host = spec.addr.host();
            let literal = host.trim_start_matches('[').trim_end_matches(']');
            match spec.addr.port_u16() {
                Some(port) if config.discovery.is_some() && literal.parse::<IpAddr>().is_err() => {
                    let addrs = previous
                        .map(|old| old.known_addrs(host, port))
                        .unwrap_or_default();
                    Entry::Named(Named {
                        spec: spec.clone(),
                        host: Arc::from(host),
                        port,
                        addrs,
                        failures: 0,
                        logged_at: None,
                    })
                }
                _ => Entry::Static(spec.clone()),
            }
        })
        .collect()
}

/// The targets `entries` stand for, reusing those of `reuse` that match.
pub(super) fn targets(
    config: &UpstreamConfig,
    families: &UpstreamFamilies,
    entries: &[Entry],
    reuse: &[Arc<Target>],
) -> Vec<Arc<Target>> {
    let mut out: Vec<Arc<Target>> = Vec::new();
    let mut add = |spec: &TargetConfig, addr: Authority, origin: Origin| {
        if out.iter().any(|t| t.addr == addr) {
            return;
        }
        let kept = reuse.iter().find(|t| t.is(spec, &addr, &origin)).cloned();
        out.push(
            kept.unwrap_or_else(|| Arc::new(Target::new(config, families, spec, addr, origin))),
        );
    };
    for entry in entries {
        match entry {
            Entry::Static(spec) => add(spec, spec.addr.clone(), Origin::Static),
            Entry::Named(named) => {
                for ip in &named.addrs {
                    if let Some(addr) = authority(*ip, named.port) {
                        add(&named.spec, addr, Origin::Dns(named.host.clone()));
                    }
                }
            }
        }
    }
    out
}

/// "IP:port", brackets around an IPv6 address.
fn authority(ip: IpAddr, port: u16) -> Option<Authority> {
    let text = match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    };
    text.parse().ok()
}

/// Whether targets of an upstream built from `old` can serve one built from
/// `new` as they are (their connection pools were made the same way).
pub(super) fn pools_alike(old: &UpstreamConfig, new: &UpstreamConfig) -> bool {
    old.tls == new.tls
        && old.http2 == new.http2
        && old.pool_max_idle_per_target == new.pool_max_idle_per_target
        && old.pool_idle_timeout == new.pool_idle_timeout
        && old.connect_timeout == new.connect_timeout
}

impl Upstream {
    /// The targets in the set now.
    pub(super) fn target_count(&self) -> usize {
        self.members.load().targets.len()
    }

    /// The addresses last known for `host:port` (none if never resolved).
    fn known_addrs(&self, host: &str, port: u16) -> Vec<IpAddr> {
        self.entries
            .lock()
            .iter()
            .find_map(|entry| match entry {
                Entry::Named(n) if &*n.host == host && n.port == port => Some(n.addrs.clone()),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Builds the set again from the entries: new addresses join, removed
    /// ones leave and drain, the rest stay as they are. Then the healthy
    /// count is taken again.
    pub(super) fn rebuild_members(&self) {
        let old = self.members.load_full();
        let targets = {
            let entries = self.entries.lock();
            targets(&self.config, &self.families, &entries, &old.targets)
        };
        for gone in old
            .targets
            .iter()
            .filter(|t| !targets.iter().any(|n| n.addr == t.addr))
        {
            tracing::info!(upstream = %self.name, target = %gone.addr, inflight = gone.inflight.load(std::sync::atomic::Ordering::Relaxed), "target left the set; draining");
            self.families.forget_target(&self.name, gone.addr.as_str());
        }
        for joined in targets
            .iter()
            .filter(|t| !old.targets.iter().any(|o| o.addr == t.addr))
        {
            tracing::info!(upstream = %self.name, target = %joined.addr, "target joined the set");
        }
        self.publish_origins(&targets);
        self.members
            .store(Arc::new(Members::new(self.config.balance, targets)));
        self.refresh_health();
    }

    /// `sluice_upstream_targets`: how many targets each origin gives now.
    pub(super) fn publish_origins(&self, targets: &[Arc<Target>]) {
        let statics = targets
            .iter()
            .filter(|t| t.origin == Origin::Static)
            .count();
        self.families.targets(&self.name, None, statics);
        for entry in self.entries.lock().iter() {
            if let Entry::Named(named) = entry {
                let count = targets
                    .iter()
                    .filter(|t| matches!(&t.origin, Origin::Dns(h) if *h == named.host))
                    .count();
                self.families.targets(&self.name, Some(&named.host), count);
            }
        }
    }
}
