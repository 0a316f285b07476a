//! Classify: who is asking (client address and key) and how important it is
//! (priority class), computed once per request before it meets the shaper.
//!
//! The client address comes from X-Forwarded-For or Forwarded only when the
//! connection's peer is a trusted proxy: then the client is the right-most
//! address that is not itself a trusted proxy, so a client cannot choose its
//! own key by sending a forged header. Keys are hashed with a per-process
//! random seed; the key value itself is never stored or exported.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, SocketAddr};

use http::Request;
use ipnet::IpNet;

use crate::config::{ClassConfig, ClassMatch, Fairness, KeyPart, RouteConfig};
use crate::http::ClientFields;
use crate::http::client_fields::{Kind, text};
use crate::shaper::Arrival;

/// The client address: the peer itself unless the peer is a trusted proxy.
/// The hops are walked from the nearest outwards, in place: no list of
/// them is built.
pub fn client_ip(peer: SocketAddr, fields: ClientFields<'_>, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = canonical_ip(peer.ip());
    if !is_trusted(peer_ip, trusted) {
        return peer_ip;
    }
    if fields.has(Kind::ForwardedFor) {
        let hops = elements(fields.values(Kind::ForwardedFor)).map(|hop| parse_hop(hop.trim()));
        nearest_untrusted(peer_ip, hops, trusted)
    } else {
        let hops = elements(fields.values(Kind::Forwarded))
            .filter_map(forwarded_for)
            .map(parse_hop);
        nearest_untrusted(peer_ip, hops, trusted)
    }
}

/// Every element of a list header, the last line first and each line's
/// elements last first; a line that is not text reads as one unparsable
/// element.
fn elements<'h>(lines: impl DoubleEndedIterator<Item = &'h [u8]>) -> impl Iterator<Item = &'h str> {
    lines.rev().flat_map(|v| text(v).unwrap_or("").rsplit(','))
}

/// Walks `hops` (nearest first) from the trusted peer outwards and stops at
/// the first hop that is not a trusted proxy (the client) or that cannot
/// be read (believe no further).
fn nearest_untrusted(
    peer_ip: IpAddr,
    hops: impl Iterator<Item = Option<IpAddr>>,
    trusted: &[IpNet],
) -> IpAddr {
    let mut client = peer_ip;
    for hop in hops {
        let Some(ip) = hop else {
            break;
        };
        client = ip;
        if !is_trusted(ip, trusted) {
            break;
        }
    }
    client
}

fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    trusted.iter().any(|net| net.contains(&ip))
}

/// Whether the connection's peer is a trusted proxy (`server.trusted_proxies`),
/// whose forwarding headers are believed and extended rather than replaced.
pub fn peer_is_trusted(peer: IpAddr, trusted: &[IpNet]) -> bool {
    !trusted.is_empty() && is_trusted(canonical_ip(peer), trusted)
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One hop of X-Forwarded-For or a Forwarded `for=` node: an address,
/// possibly with a port, IPv6 possibly in brackets.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical_ip(ip));
    }
    if let Ok(addr) = hop.parse::<SocketAddr>() {
        return Some(canonical_ip(addr.ip()));
    }
    hop.strip_prefix('[')
        .and_then(|rest| rest.split_once(']'))
        .and_then(|(ip, _)| ip.parse().ok())
        .map(canonical_ip)
}

/// The `for=` parameter of one Forwarded element.
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim())
    })
}

/// A route's rules for keys and classes.
#[derive(Debug)]
pub struct Classifier {
    key: Vec<KeyPart>,
    /// Whether anything reads the key (a per-key limit or per-key fairness);
    /// when nothing does, requests are not hashed.
    key_used: bool,
    classes: Vec<ClassMatch>,
    seed: RandomState,
}

impl Classifier {
    pub fn new(route: &RouteConfig) -> Classifier {
        Classifier::with_seed(route, RandomState::new())
    }

    /// The rules of a new config generation, hashing keys as before.
    pub fn reconfigured(&self, route: &RouteConfig) -> Classifier {
        Classifier::with_seed(route, self.seed.clone())
    }

    fn with_seed(route: &RouteConfig, seed: RandomState) -> Classifier {
        Classifier {
            key: route.key.clone(),
            key_used: route.key_limit.is_some() || route.queue.fairness == Fairness::PerKey,
            classes: route
                .classes
                .iter()
                .map(|c: &ClassConfig| c.matcher.clone())
                .collect(),
            seed,
        }
    }

    /// Number of classes, the implicit "default" class included.
    pub fn class_count(&self) -> usize {
        self.classes.len() + 1
    }

    /// The request's class and key hash.
    pub fn arrival<B>(
        &self,
        req: &Request<B>,
        fields: ClientFields<'_>,
        client: IpAddr,
    ) -> Arrival {
        Arrival {
            class: self.class(req, fields),
            key: self.key(req, fields, client),
        }
    }

    /// The first class the request matches; the last (default) if none.
    fn class<B>(&self, req: &Request<B>, fields: ClientFields<'_>) -> usize {
        if self.classes.is_empty() {
            return 0;
        }
        self.classes
            .iter()
            .position(|m| match m {
                ClassMatch::Header { name, values } => fields
                    .named(name)
                    .any(|v| values.iter().any(|want| v == want.as_bytes())),
                ClassMatch::PathPrefix(prefix) => req.uri().path().starts_with(prefix.as_str()),
                ClassMatch::Methods(methods) => methods.contains(req.method()),
            })
            .unwrap_or(self.classes.len())
    }

    fn key<B>(&self, req: &Request<B>, fields: ClientFields<'_>, client: IpAddr) -> u64 {
        if !self.key_used {
            return 0;
        }
        let mut hasher = self.seed.build_hasher();
        for part in &self.key {
            match part {
                KeyPart::ClientIp => client.hash(&mut hasher),
                KeyPart::Path => req.uri().path().hash(&mut hasher),
                KeyPart::Header(name) => {
                    for value in fields.named(name) {
                        value.hash(&mut hasher);
                    }
                    0xffu8.hash(&mut hasher); // separates parts
                }
            }
        }
        hasher.finish()
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    #[test]
    fn forwarded_headers_from_an_untrusted_peer_are_ignored() {
        let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
        assert_eq!(
            client_ip(peer("203.0.113.7"), ClientFields::Map(&h), &[]),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        let trusted = nets(&["10.0.0.0/8"]);
        assert_eq!(
            client_ip(peer("203.0.113.7"), ClientFields::Map(&h), &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn from_a_trusted_peer_the_rightmost_untrusted_hop_is_the_client() {
        let trusted = nets(&["10.0.0.0/8"]);
        // The client forged "6.6.6.6"; 198.51.100.1 is who reached our balancer 10.0.0.2.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.1, 10.0.0.2")]);
        assert_eq!(
            client_ip(peer("10.0.0.1"), ClientFields::Map(&h), &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
        // Several header lines read as one list.
        let h = headers(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-for", "198.51.100.1"),
        ]);
        assert_eq!(
            client_ip(peer("10.0.0.1"), ClientFields::Map(&h), &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn forwarded_is_used_when_x_forwarded_for_is_absent() {
        let trusted = nets(&["127.0.0.1/32"]);
        let h = headers(&[(
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8::1]:4711\"",
        )]);
        assert_eq!(
            client_ip(peer("127.0.0.1"), ClientFields::Map(&h), &trusted),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_believable_hop() {
        let trusted = nets(&["10.0.0.0/8"]);
        let h = headers(&[("x-forwarded-for", "1.1.1.1, nonsense, 10.0.0.9")]);
        assert_eq!(
            client_ip(peer("10.0.0.1"), ClientFields::Map(&h), &trusted),
            "10.0.0.9".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("x-forwarded-for", "198.51.100.4:5555")]);
        assert_eq!(
            client_ip(peer("10.0.0.1"), ClientFields::Map(&h), &trusted),
            "198.51.100.4".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn ipv4_mapped_peers_match_ipv4_networks() {
        let trusted = nets(&["127.0.0.1/32"]);
        let h = headers(&[("x-forwarded-for", "198.51.100.1")]);
        assert_eq!(
            client_ip(peer("::ffff:127.0.0.1"), ClientFields::Map(&h), &trusted),
            "198.51.100.1".parse::<IpAddr>().unwrap()
        );
    }
}
