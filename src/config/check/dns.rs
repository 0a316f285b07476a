//! `[dns]` (where discovery asks) and an upstream's `discovery` and
//! `resolve_interval`.

use crate::config::defaults::{
    DEFAULT_RESOLVE_INTERVAL, MAX_DNS_TIMEOUT, MAX_RESOLVE_INTERVAL, MIN_DNS_TIMEOUT,
    MIN_RESOLVE_INTERVAL,
};
use crate::config::load::{Checked, Ctx};
use crate::config::model::{DiscoveryConfig, DnsConfig, UpstreamTls};
use crate::config::raw::{RawDns, RawUpstream};

/// Nameservers listed at most (a resolver asks them in turn).
const MAX_NAMESERVERS: usize = 16;

impl Ctx<'_> {
    /// `[dns]`: `nameservers` as "IP:port", `timeout` within bounds.
    pub(crate) fn dns(&self, raw: Option<&RawDns>) -> Checked<DnsConfig> {
        let mut dns = DnsConfig::default();
        let Some(raw) = raw else {
            return Ok(dns);
        };
        if let Some(servers) = &raw.nameservers {
            for v in servers {
                if dns.nameservers.len() == MAX_NAMESERVERS {
                    return Err(
                        self.invalid(v.span(), format!("at most {MAX_NAMESERVERS} nameservers"))
                    );
                }
                dns.nameservers.push(self.socket_addr(v)?);
            }
        }
        if let Some(v) = &raw.timeout {
            dns.timeout = self.duration_within(v, MIN_DNS_TIMEOUT, MAX_DNS_TIMEOUT)?;
        }
        Ok(dns)
    }

    /// `discovery` ("none" or "dns") and `resolve_interval`, which goes
    /// only with "dns". Discovered targets are addresses, so TLS to them
    /// needs the name to verify given as `server_name`.
    pub(crate) fn discovery(
        &self,
        raw: &RawUpstream,
        tls: Option<&UpstreamTls>,
    ) -> Checked<Option<DiscoveryConfig>> {
        let dns = match &raw.discovery {
            None => None,
            Some(v) => match v.get_ref().as_str() {
                "none" => None,
                "dns" => Some(v),
                other => {
                    return Err(self.invalid(
                        v.span(),
                        format!("unknown discovery {other:?}: expected \"none\" or \"dns\""),
                    ));
                }
            },
        };
        let Some(dns) = dns else {
            if let Some(v) = &raw.resolve_interval {
                return Err(self.invalid(
                    v.span(),
                    "only allowed with discovery = \"dns\" (the default discovery is \"none\")",
                ));
            }
            return Ok(None);
        };
        if tls.is_some_and(|t| t.server_name.is_none()) {
            return Err(self.invalid(
                dns.span(),
                "discovered targets are addresses: with [tls], set its server_name (the name their certificates carry)",
            ));
        }
        let interval = raw
            .resolve_interval
            .as_ref()
            .map_or(Ok(DEFAULT_RESOLVE_INTERVAL), |v| {
                self.duration_within(v, MIN_RESOLVE_INTERVAL, MAX_RESOLVE_INTERVAL)
            })?;
        Ok(Some(DiscoveryConfig { interval }))
    }
}
