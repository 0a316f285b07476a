//! Route matching: host, path prefix and method to a route index.
//!
//! A route matches when its host matches (exact, `*.suffix` wildcard, or any),
//! the path starts with its `path_prefix` (a plain, case-sensitive string
//! prefix, as NGINX prefix locations are: `/api` also matches `/apix`, and
//! `/api/` does not match `/api`) and its method list is empty or names the
//! method. Among matches the longest prefix wins; then the more specific host
//! (exact, then wildcard, then any); then the earlier route in the file.
//!
//! The path given is already in normal form ([`crate::http::path`]), as are the
//! configured prefixes, so no spelling of a path can reach another route.

use http::Method;

use crate::config::RouteConfig;

/// The compiled routing table.
#[derive(Debug, Clone)]
pub struct Router {
    rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
struct Rule {
    host: HostMatch,
    prefix: String,
    methods: Vec<Method>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    /// `*.example.com`, stored as `.example.com`.
    Suffix(String),
    Exact(String),
}

impl HostMatch {
    /// `host` is normalised but for case; the rule's own text is lower case.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Any => true,
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.as_bytes()[host.len() - suffix.len()..]
                        .eq_ignore_ascii_case(suffix.as_bytes())
            }
            HostMatch::Exact(exact) => host.eq_ignore_ascii_case(exact),
        }
    }

    fn specificity(&self) -> u8 {
        match self {
            HostMatch::Any => 0,
            HostMatch::Suffix(_) => 1,
            HostMatch::Exact(_) => 2,
        }
    }
}

impl Router {
    pub fn new(routes: &[RouteConfig]) -> Router {
        let rules = routes
            .iter()
            .map(|r| Rule {
                host: match r.host.as_deref() {
                    None => HostMatch::Any,
                    Some(h) => match h.strip_prefix('*') {
                        Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                        None => HostMatch::Exact(h.to_string()),
                    },
                },
                prefix: r.path_prefix.clone(),
                methods: r.methods.clone(),
            })
            .collect();
        Router { rules }
    }

    /// The index of the route serving this request, if any. `host` may carry a
    /// port and any case; it is normalised here.
    pub fn route(&self, host: Option<&str>, path: &str, method: &Method) -> Option<usize> {
        let host = host.map_or("", normalise_host);
        let mut best: Option<(usize, (usize, u8))> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if !rule.host.matches(host)
                || !path.starts_with(rule.prefix.as_str())
                || !(rule.methods.is_empty() || rule.methods.contains(method))
            {
                continue;
            }
            let rank = (rule.prefix.len(), rule.host.specificity());
            if best.is_none_or(|(_, best_rank)| rank > best_rank) {
                best = Some((index, rank));
            }
        }
        best.map(|(index, _)| index)
    }
}

/// A Host value without its port and trailing dot (IPv6 literals keep their
/// brackets). Case is left alone: matching ignores it.
fn normalise_host(host: &str) -> &str {
    let without_port = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    without_port.trim_end_matches('.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, host: Option<&str>, prefix: &str, methods: &[&str]) -> RouteConfig {
        RouteConfig {
            name: name.into(),
            host: host.map(str::to_string),
            path_prefix: prefix.into(),
            methods: methods.iter().map(|m| m.parse().unwrap()).collect(),
            upstream: "api".into(),
            limit: None,
            queue: crate::config::QueueConfig::new(10, std::time::Duration::from_secs(1)),
            reject: crate::config::RejectConfig::default(),
            key: vec![crate::config::KeyPart::ClientIp],
            key_limit: None,
            classes: vec![],
            upgrades: vec![crate::config::DEFAULT_UPGRADE.into()],
            deferred: None,
        }
    }

    #[test]
    fn longest_prefix_then_most_specific_host_then_file_order() {
        let router = Router::new(&[
            route("root", None, "/", &[]),
            route("api", None, "/api", &[]),
            route("api-v1", None, "/api/v1", &[]),
            route("shop-api", Some("shop.example.com"), "/api", &[]),
            route("any-shop", Some("*.example.com"), "/api", &[]),
            route("root-again", None, "/", &[]),
        ]);
        let get = Method::GET;
        assert_eq!(router.route(None, "/", &get), Some(0));
        assert_eq!(router.route(None, "/api/x", &get), Some(1));
        assert_eq!(router.route(None, "/api/v1/x", &get), Some(2));
        assert_eq!(
            router.route(Some("Shop.Example.com:8080"), "/api/x", &get),
            Some(3)
        );
        assert_eq!(router.route(Some("m.example.com"), "/api/x", &get), Some(4));
        assert_eq!(router.route(Some("example.com"), "/api/x", &get), Some(1));
    }

    #[test]
    fn prefixes_are_plain_case_sensitive_string_prefixes() {
        let router = Router::new(&[
            route("root", None, "/", &[]),
            route("api", None, "/api", &[]),
            route("v1", None, "/v1/", &[]),
        ]);
        let get = Method::GET;
        assert_eq!(router.route(None, "/apix", &get), Some(1));
        assert_eq!(router.route(None, "/API/x", &get), Some(0));
        assert_eq!(router.route(None, "/v1", &get), Some(0));
        assert_eq!(router.route(None, "/v1/x", &get), Some(2));
        assert_eq!(router.route(None, "/v1%2Fx", &get), Some(0));
    }

    #[test]
    fn methods_and_misses() {
        let router = Router::new(&[route("buy", None, "/buy", &["POST"])]);
        assert_eq!(router.route(None, "/buy", &Method::POST), Some(0));
        assert_eq!(router.route(None, "/buy", &Method::GET), None);
        assert_eq!(router.route(None, "/other", &Method::POST), None);
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(normalise_host("EXAMPLE.com:80"), "EXAMPLE.com");
        assert_eq!(normalise_host("example.com."), "example.com");
        assert_eq!(normalise_host("example.com.:8080"), "example.com");
        assert_eq!(normalise_host("[::1]:8080"), "[::1]");
        assert_eq!(normalise_host("[::1]"), "[::1]");
        let router = Router::new(&[
            route("exact", Some("Shop.Example.com"), "/", &[]),
            route("wild", Some("*.example.com"), "/", &[]),
        ]);
        assert_eq!(
            router.route(Some("SHOP.example.COM:443"), "/", &Method::GET),
            Some(0)
        );
        assert_eq!(
            router.route(Some("api.EXAMPLE.com"), "/", &Method::GET),
            Some(1)
        );
        assert_eq!(router.route(Some("example.com"), "/", &Method::GET), None);
    }
}
