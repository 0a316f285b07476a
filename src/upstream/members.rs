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
        let mut draining = self.draining.lock();
        draining.retain(|t| t.strong_count() > 0);
        for gone in old
            .targets
            .iter()
            .filter(|t| !targets.iter().any(|n| n.addr == t.addr))
        {
            let inflight = gone.inflight.load(std::sync::atomic::Ordering::Relaxed);
            tracing::info!(upstream = %self.name, target = %gone.addr, inflight, "target left the set; draining");
            self.families.forget_target(&self.name, gone.addr.as_str());
            if inflight > 0 {
                draining.push(Arc::downgrade(gone));
            }
        }
        drop(draining);
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

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::config::{Config, DnsConfig};
    use crate::metrics::Metrics;
    use crate::upstream::discovery::Answer;
    use crate::upstream::target::TargetGuard;

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, n))
    }

    /// An upstream discovering `api.test:9000` beside the static
    /// 10.0.0.9:9000, ejecting at the first failure for 5 s; its discovery
    /// task stopped, so the test gives the answers.
    fn upstream() -> Arc<Upstream> {
        let src = "[upstreams.api]\ntargets = [\"api.test:9000\", \"10.0.0.9:9000\"]\n\
                   discovery = \"dns\"\n\
                   passive_health = { consecutive_failures = 1, base_ejection = \"5s\" }\n\
                   [[routes]]\nname = \"r\"\nupstream = \"api\"\n";
        let config = Config::parse(src, Path::new("t.toml")).unwrap();
        let metrics = Metrics::new().unwrap();
        let families = UpstreamFamilies::register(metrics.registry()).unwrap();
        let dns = DnsConfig {
            nameservers: vec!["127.0.0.1:9".parse().unwrap()],
            ..DnsConfig::default()
        };
        let up = Upstream::new(&config.upstreams["api"], &dns, &families, None).unwrap();
        if let Some(task) = up.discoverer.lock().take() {
            task.abort();
        }
        up
    }

    fn member(up: &Upstream, addr: &str) -> Option<Arc<Target>> {
        let members = up.members.load();
        members.targets.iter().find(|t| t.addr == addr).cloned()
    }

    fn answer(up: &Upstream, addrs: &[IpAddr]) {
        let found = Answer::Found(addrs.to_vec(), Duration::from_secs(300));
        if up.learn(0, found) {
            up.rebuild_members();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_address_set_keeps_what_stays_and_drains_what_leaves() {
        let up = upstream();
        let healthy = up.healthy_targets();
        // Nothing resolved yet: the static target alone.
        assert_eq!(up.target_count(), 1);
        assert_eq!(*healthy.borrow(), 1);

        answer(&up, &[ip(2), ip(3)]);
        assert_eq!(up.target_count(), 3);
        assert_eq!(*healthy.borrow(), 3);
        let two = member(&up, "10.0.0.2:9000").unwrap();
        let three = member(&up, "10.0.0.3:9000").unwrap();
        // A request in flight on .3; .2 ejected.
        assert!(three.take_slot());
        let in_flight = TargetGuard {
            upstream: up.clone(),
            target: three.clone(),
            lease: None,
        };
        up.passive(&two, true);
        assert_eq!(*healthy.borrow(), 2);

        // .3 leaves, .4 joins: .2 is the same target, still ejected; .3
        // takes nothing new but lives while its request does.
        answer(&up, &[ip(2), ip(4)]);
        assert!(Arc::ptr_eq(&member(&up, "10.0.0.2:9000").unwrap(), &two));
        assert!(member(&up, "10.0.0.3:9000").is_none());
        assert!(member(&up, "10.0.0.4:9000").is_some());
        assert_eq!(*healthy.borrow(), 2, ".4 and the static one");
        assert_eq!(three.inflight.load(Ordering::SeqCst), 1);
        assert_eq!(up.inflight(), 1, "the draining request still counts");
        for _ in 0..10 {
            let picked = up.pick(&[]).unwrap();
            assert!(!Arc::ptr_eq(&picked, &three));
            picked.inflight.fetch_sub(1, Ordering::SeqCst);
        }
        drop(in_flight);
        assert_eq!(three.inflight.load(Ordering::SeqCst), 0);
        assert_eq!(up.inflight(), 0);
        assert_eq!(Arc::strong_count(&three), 1, "only the test holds it now");

        // A failed lookup changes nothing.
        let failed = Answer::Failed(crate::upstream::Resolution::Error, "timeout".into());
        assert!(!up.learn(0, failed));
        assert_eq!(up.target_count(), 3);

        // The ejection ends: counted again.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(*healthy.borrow(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_generation_takes_over_the_addresses_and_targets() {
        let up = upstream();
        answer(&up, &[ip(2), ip(3)]);
        let two = member(&up, "10.0.0.2:9000").unwrap();
        up.passive(&two, true);
        let next = Upstream::new(
            up.config(),
            up.dns.as_ref().unwrap(),
            &up.families,
            Some(&up),
        )
        .unwrap();
        if let Some(task) = next.discoverer.lock().take() {
            task.abort();
        }
        assert_eq!(next.target_count(), 3);
        assert!(Arc::ptr_eq(&member(&next, "10.0.0.2:9000").unwrap(), &two));
        let healthy = next.healthy_targets();
        assert_eq!(*healthy.borrow(), 2, ".2 is still ejected");
        // The old generation gone, the new one counts .2 again when its
        // ejection ends.
        drop(up);
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(*healthy.borrow(), 3);
    }
}
