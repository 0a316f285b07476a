//! DNS discovery: each target of an upstream with `discovery = "dns"` whose
//! host is a name stands for every address (A and AAAA) the name resolves
//! to, each with the entry's options.
//!
//! One task per upstream resolves its names in rounds, `resolve_interval`
//! apart, sooner when the records' TTL asks (never below [`MIN_TTL_WAIT`]).
//! The resolver is hickory's, asynchronous, pointed at `[dns] nameservers`
//! or the system's resolv.conf, with its cache off so every round asks.
//! A resolution that gives addresses replaces the name's set (see
//! `members`); one that fails or gives none keeps the last known set, and
//! is counted and logged (the first of a run of failures, then at most
//! once per [`LOG_EVERY`]).
//!
//! Invariant: a name's addresses only change on a resolution that gave
//! some, so a DNS outage never empties an upstream that had targets.

use std::net::IpAddr;
use std::sync::Weak;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ProtocolConfig, ResolveHosts,
    ResolverConfig,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use tokio::time::Instant;

use super::Upstream;
use super::members::Entry;
use super::metrics::Resolution;
use crate::config::DnsConfig;

/// The shortest wait between rounds that a short TTL can ask for.
pub(super) const MIN_TTL_WAIT: Duration = Duration::from_secs(1);

/// A failing name is logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(60);

/// What one lookup gave.
pub(super) enum Answer {
    /// Addresses (sorted, no duplicates), and how long the records hold.
    Found(Vec<IpAddr>, Duration),
    Failed(Resolution, String),
}

/// The resolver `dns` describes.
fn resolver(dns: &DnsConfig) -> Result<TokioResolver, String> {
    let mut builder = if dns.nameservers.is_empty() {
        TokioResolver::builder_tokio().map_err(|e| format!("system resolver: {e}"))?
    } else {
        let servers = dns
            .nameservers
            .iter()
            .map(|addr| {
                let connection = |protocol| {
                    let mut c = ConnectionConfig::new(protocol);
                    c.port = addr.port();
                    c
                };
                NameServerConfig::new(
                    addr.ip(),
                    true,
                    vec![
                        connection(ProtocolConfig::Udp),
                        connection(ProtocolConfig::Tcp),
                    ],
                )
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.timeout = dns.timeout;
    options.attempts = 1;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    // Every round must ask: a cached answer would hide a change for its TTL.
    options.cache_size = 0;
    if !dns.nameservers.is_empty() {
        // Names are asked of the configured servers alone.
        options.use_hosts_file = ResolveHosts::Never;
    }
    builder.build().map_err(|e| format!("resolver: {e}"))
}

/// The discovery task of one upstream; ends once the upstream is gone.
pub(super) async fn discover(upstream: Weak<Upstream>, dns: DnsConfig, interval: Duration) {
    let resolver = resolver(&dns);
    if let Err(why) = &resolver {
        tracing::error!(error = %why, "DNS discovery cannot start; every round counts as an error");
    }
    loop {
        let Some(pool) = upstream.upgrade() else {
            return;
        };
        let wait = match &resolver {
            Ok(resolver) => pool.resolve_round(resolver, interval).await,
            Err(why) => {
                pool.learn_all_failed(why);
                interval
            }
        };
        pool.rounds.send_modify(|n| *n += 1);
        drop(pool);
        tokio::time::sleep(wait).await;
    }
}

/// Looks `host` up.
async fn lookup(resolver: &TokioResolver, host: &str) -> Answer {
    match resolver.lookup_ip(host).await {
        Ok(lookup) => {
            let mut addrs: Vec<IpAddr> = lookup.iter().collect();
            addrs.sort();
            addrs.dedup();
            if addrs.is_empty() {
                return Answer::Failed(Resolution::Empty, "no addresses".into());
            }
            let ttl = lookup
                .valid_until()
                .saturating_duration_since(std::time::Instant::now());
            Answer::Found(addrs, ttl)
        }
        Err(e) if e.is_no_records_found() => Answer::Failed(Resolution::Empty, e.to_string()),
        Err(e) => Answer::Failed(Resolution::Error, e.to_string()),
    }
}

impl Upstream {
    /// Resolves every name once; the set is rebuilt if any changed. Returns
    /// the wait until the next round: the interval, or less if a TTL is
    /// shorter.
    async fn resolve_round(&self, resolver: &TokioResolver, interval: Duration) -> Duration {
        let hosts: Vec<(usize, std::sync::Arc<str>)> = self
            .entries
            .lock()
            .iter()
            .enumerate()
            .filter_map(|(i, e)| match e {
                Entry::Named(n) => Some((i, n.host.clone())),
                Entry::Static(_) => None,
            })
            .collect();
        let mut wait = interval;
        let mut changed = false;
        for (index, host) in hosts {
            let answer = lookup(resolver, &host).await;
            if let Answer::Found(_, ttl) = &answer {
                wait = wait.min((*ttl).max(MIN_TTL_WAIT));
            }
            changed |= self.learn(index, answer);
        }
        if changed {
            self.rebuild_members();
        }
        wait
    }

    /// Takes in one name's answer; true if its addresses changed.
    pub(super) fn learn(&self, index: usize, answer: Answer) -> bool {
        let mut entries = self.entries.lock();
        let Some(Entry::Named(named)) = entries.get_mut(index) else {
            return false;
        };
        match answer {
            Answer::Found(addrs, _) => {
                self.families
                    .resolution(&self.name, &named.host, Resolution::Ok);
                if named.failures > 0 {
                    tracing::info!(upstream = %self.name, name = %named.host, failures = named.failures, "DNS resolution works again");
                }
                named.failures = 0;
                named.logged_at = None;
                let changed = named.addrs != addrs;
                named.addrs = addrs;
                changed
            }
            Answer::Failed(result, why) => {
                self.families.resolution(&self.name, &named.host, result);
                named.failures += 1;
                let now = Instant::now();
                if named.logged_at.is_none_or(|at| now >= at + LOG_EVERY) {
                    named.logged_at = Some(now);
                    tracing::warn!(upstream = %self.name, name = %named.host, error = %why, failures = named.failures, kept = named.addrs.len(), "DNS resolution failed; keeping the last known addresses");
                }
                false
            }
        }
    }

    /// A round without a resolver: every name fails.
    fn learn_all_failed(&self, why: &str) {
        let count = self.entries.lock().len();
        for index in 0..count {
            self.learn(index, Answer::Failed(Resolution::Error, why.to_string()));
        }
    }

    /// Waits for the first round of resolutions (at once without discovery)
    /// and returns the names that have no address, never having resolved.
    pub async fn first_resolution(&self) -> Vec<String> {
        let mut rounds = self.rounds.subscribe();
        if self.discovering() {
            // The sender lives as long as `self`.
            let _round = rounds.wait_for(|n| *n > 0).await;
        }
        self.entries
            .lock()
            .iter()
            .filter_map(|e| match e {
                Entry::Named(n) if n.addrs.is_empty() => Some(format!("{}:{}", n.host, n.port)),
                _ => None,
            })
            .collect()
    }

    /// Whether some target is discovered by name.
    pub(super) fn discovering(&self) -> bool {
        self.entries
            .lock()
            .iter()
            .any(|e| matches!(e, Entry::Named(_)))
    }
}
