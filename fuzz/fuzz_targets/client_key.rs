//! Client address and key extraction (`sluice::gateway::classify`).
//!
//! `client_ip` gets an arbitrary peer, trusted-proxy list and X-Forwarded-For /
//! Forwarded lines (some built from well-formed hops, some raw bytes). It must
//! never panic; an untrusted peer is always the answer for itself; the answer
//! is canonical (no IPv4-mapped IPv6). When every header line was built from
//! well-formed parts, the answer must equal a small reference model of the
//! documented rule: the right-most hop that is not a trusted proxy, walking in
//! from the peer and stopping at the first unparsable hop.
//!
//! `Classifier` (built from an arbitrary route) must give a class below
//! `class_count()` equal to the first matching class rule, key 0 when nothing
//! reads the key, and the same key for the same request, also after
//! `reconfigured` with the same rules.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use arbitrary::Arbitrary;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use sluice::config::{
    ClassConfig, ClassMatch, Fairness, KeyLimitConfig, KeyPart, QueueConfig, RejectConfig,
    RouteConfig,
};
use sluice::gateway::classify::{Classifier, client_ip};
use sluice::http::ClientFields;

#[derive(Debug, Arbitrary)]
struct Input {
    peer: Addr,
    port: u16,
    trusted: Vec<Net>,
    lines: Vec<Line>,
    route: Route,
    method: u8,
    path: PathSpec,
}

/// Addresses from a few small pools, so that peers, hops and trusted networks meet.
#[derive(Debug, Clone, Copy, Arbitrary)]
enum Addr {
    V4([u8; 4]),
    /// 10.0.0.x: a pool the trusted networks often cover.
    Near(u8),
    V6([u16; 8]),
    /// 2001:db8::x
    Near6(u8),
    /// ::ffff:a.b.c.d, which must compare as IPv4.
    Mapped([u8; 4]),
    /// ::ffff:10.0.0.x
    NearMapped(u8),
}

impl Addr {
    fn ip(self) -> IpAddr {
        match self {
            Addr::V4(o) => IpAddr::V4(Ipv4Addr::from(o)),
            Addr::Near(x) => IpAddr::V4(Ipv4Addr::new(10, 0, 0, x)),
            Addr::V6(s) => IpAddr::V6(Ipv6Addr::from(s)),
            Addr::Near6(x) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(x))),
            Addr::Mapped(o) => IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped()),
            Addr::NearMapped(x) => IpAddr::V6(Ipv4Addr::new(10, 0, 0, x).to_ipv6_mapped()),
        }
    }
}

#[derive(Debug, Arbitrary)]
struct Net {
    addr: Addr,
    prefix: u8,
}

impl Net {
    fn net(&self) -> IpNet {
        let ip = self.addr.ip();
        let max = if ip.is_ipv4() { 32 } else { 128 };
        IpNet::new(ip, self.prefix % (max + 1)).expect("prefix in range")
    }
}

#[derive(Debug, Arbitrary)]
enum Line {
    /// X-Forwarded-For from well-formed (or deliberately unparsable) hops.
    Xff(Vec<Hop>),
    /// Forwarded from elements of `name=value` pairs.
    Forwarded(Vec<Vec<Pair>>),
    /// Anything at all, under either name or another.
    Raw { name: RawName, value: Vec<u8> },
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum RawName {
    Xff,
    Forwarded,
    Other,
}

#[derive(Debug, Arbitrary)]
enum Hop {
    Ip {
        addr: Addr,
        port: Option<u16>,
        brackets: bool,
        quotes: bool,
        pad: bool,
    },
    /// "unknown", "_hidden", "" and the like: not an address.
    Junk(u8),
}

#[derive(Debug, Arbitrary)]
enum Pair {
    For(Hop),
    Other { name: u8, value: u8 },
}

const JUNK: [&str; 5] = ["unknown", "_hidden", "", "1.2.3", "[::1"];
const PAIR_NAMES: [&str; 4] = ["proto", "by", "host", "For"];

impl Hop {
    /// The hop as text, and the address it must parse as (None: unparsable).
    fn render(&self) -> (String, Option<IpAddr>) {
        match *self {
            Hop::Junk(j) => (JUNK[usize::from(j) % JUNK.len()].to_string(), None),
            Hop::Ip {
                addr,
                port,
                brackets,
                quotes,
                pad,
            } => {
                let ip = addr.ip();
                let bare = ip.to_string();
                let mut text = match (ip, port, brackets) {
                    (_, None, false) => bare,
                    (_, None, true) => format!("[{bare}]"),
                    (IpAddr::V4(_), Some(p), false) => format!("{bare}:{p}"),
                    // An IPv6 address with a port needs brackets.
                    (_, Some(p), _) => format!("[{bare}]:{p}"),
                };
                if quotes {
                    text = format!("\"{text}\"");
                }
                if pad {
                    text = format!(" {text}\t");
                }
                (text, Some(canonical(ip)))
            }
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[derive(Debug, Arbitrary)]
struct Route {
    key: Vec<Part>,
    key_limit: bool,
    per_key: bool,
    classes: Vec<Rule>,
}

#[derive(Debug, Arbitrary)]
enum Part {
    ClientIp,
    Path,
    Header(u8),
}

#[derive(Debug, Arbitrary)]
enum Rule {
    Header { name: u8, values: Vec<u8> },
    PathPrefix(u8),
    Methods(Vec<u8>),
}

const NAMES: [&str; 4] = ["x-tier", "x-api-key", "x-forwarded-for", "forwarded"];
const VALUES: [&str; 4] = ["gold", "vip", "", "10.0.0.1"];
const PREFIXES: [&str; 4] = ["/", "/api", "/api/v1", "/checkout"];
const METHODS: [&str; 4] = ["GET", "POST", "PUT", "PURGE"];

#[derive(Debug, Arbitrary)]
enum PathSpec {
    Known(u8),
    Raw(String),
}

fn pick<T: Copy>(list: &[T], i: u8) -> T {
    list[usize::from(i) % list.len()]
}

fn route_config(r: &Route) -> RouteConfig {
    RouteConfig {
        name: "fuzz".into(),
        host: None,
        path_prefix: "/".into(),
        methods: Vec::new(),
        upstream: "up".into(),
        limit: None,
        queue: QueueConfig {
            fairness: if r.per_key {
                Fairness::PerKey
            } else {
                Fairness::None
            },
            ..QueueConfig::new(10, Duration::from_secs(1))
        },
        reject: RejectConfig::default(),
        key: r
            .key
            .iter()
            .map(|p| match *p {
                Part::ClientIp => KeyPart::ClientIp,
                Part::Path => KeyPart::Path,
                Part::Header(n) => KeyPart::Header(HeaderName::from_static(pick(&NAMES, n))),
            })
            .collect(),
        key_limit: r.key_limit.then(|| KeyLimitConfig {
            rate: 1.0,
            burst: std::num::NonZeroU32::MIN,
            max_keys: std::num::NonZeroUsize::MIN,
            dry_run: false,
        }),
        classes: r
            .classes
            .iter()
            .take(8)
            .enumerate()
            .map(|(i, rule)| ClassConfig {
                name: format!("c{i}"),
                matcher: match rule {
                    Rule::Header { name, values } => ClassMatch::Header {
                        name: HeaderName::from_static(pick(&NAMES, *name)),
                        values: values
                            .iter()
                            .map(|v| pick(&VALUES, *v).to_string())
                            .collect(),
                    },
                    Rule::PathPrefix(p) => ClassMatch::PathPrefix(pick(&PREFIXES, *p).into()),
                    Rule::Methods(ms) => ClassMatch::Methods(
                        ms.iter()
                            .map(|m| Method::from_bytes(pick(&METHODS, *m).as_bytes()).unwrap())
                            .collect(),
                    ),
                },
            })
            .collect(),
        upgrades: vec![sluice::config::DEFAULT_UPGRADE.into()],
        deferred: None,
    }
}

fuzz_target!(|input: Input| {
    let peer = SocketAddr::new(input.peer.ip(), input.port);
    let trusted: Vec<IpNet> = input.trusted.iter().take(16).map(Net::net).collect();
    let is_trusted = |ip: IpAddr| trusted.iter().any(|n| n.contains(&ip));

    let mut headers = HeaderMap::new();
    // Hops per header name, in line order; None when a raw line makes the model unsure.
    let mut xff: Option<Vec<Option<IpAddr>>> = Some(Vec::new());
    let mut fwd: Option<Vec<Option<IpAddr>>> = Some(Vec::new());
    let (mut any_xff, mut any_fwd_line) = (false, false);
    for line in input.lines.iter().take(16) {
        match line {
            Line::Xff(hops) => {
                let rendered: Vec<_> = hops.iter().take(16).map(Hop::render).collect();
                let text = rendered
                    .iter()
                    .map(|(t, _)| t.as_str())
                    .collect::<Vec<_>>()
                    .join(",");
                headers.append("x-forwarded-for", HeaderValue::from_str(&text).unwrap());
                any_xff = true;
                // An empty line still reads as one (unparsable) hop.
                let parsed: Vec<_> = if rendered.is_empty() {
                    vec![None]
                } else {
                    rendered.into_iter().map(|(_, ip)| ip).collect()
                };
                if let Some(list) = xff.as_mut() {
                    list.extend(parsed);
                }
            }
            Line::Forwarded(elements) => {
                let mut texts = Vec::new();
                let mut expect = Vec::new();
                for element in elements.iter().take(8) {
                    let mut pairs = Vec::new();
                    let mut first_for = None;
                    for pair in element.iter().take(4) {
                        match pair {
                            Pair::For(hop) => {
                                let (t, ip) = hop.render();
                                // A quoted or padded junk value stays junk; "for=" with an
                                // empty value is an unparsable hop too.
                                pairs.push(format!("for={t}"));
                                if first_for.is_none() {
                                    first_for = Some(ip);
                                }
                            }
                            Pair::Other { name, value } => {
                                let name = pick(&PAIR_NAMES, *name);
                                let t = format!("{name}=v{value}");
                                if name.eq_ignore_ascii_case("for") && first_for.is_none() {
                                    first_for = Some(None);
                                }
                                pairs.push(t);
                            }
                        }
                    }
                    texts.push(pairs.join(";"));
                    if let Some(ip) = first_for {
                        expect.push(ip);
                    }
                }
                headers.append(
                    http::header::FORWARDED,
                    HeaderValue::from_str(&texts.join(",")).unwrap(),
                );
                any_fwd_line = true;
                if let Some(list) = fwd.as_mut() {
                    list.extend(expect);
                }
            }
            Line::Raw { name, value } => {
                let Ok(value) = HeaderValue::from_bytes(value) else {
                    continue;
                };
                match name {
                    RawName::Xff => {
                        headers.append("x-forwarded-for", value);
                        any_xff = true;
                        xff = None;
                    }
                    RawName::Forwarded => {
                        headers.append(http::header::FORWARDED, value);
                        any_fwd_line = true;
                        fwd = None;
                    }
                    RawName::Other => {
                        headers.append("x-other", value);
                    }
                }
            }
        }
    }
    let _ = any_fwd_line;

    let got = client_ip(peer, ClientFields::Map(&headers), &trusted);
    let peer_ip = canonical(peer.ip());

    // Never IPv4-mapped: keys and trust checks compare it as IPv4.
    assert_eq!(got, canonical(got), "not canonical");
    if !is_trusted(peer_ip) {
        assert_eq!(got, peer_ip, "an untrusted peer's headers were believed");
    }
    if got != peer_ip {
        assert!(is_trusted(peer_ip));
    }
    // The reference model, when every line was well-formed.
    let hops = if any_xff { xff } else { fwd };
    if let Some(hops) = hops {
        let mut want = peer_ip;
        if is_trusted(peer_ip) {
            for hop in hops.iter().rev() {
                let Some(ip) = hop else { break };
                want = *ip;
                if !is_trusted(*ip) {
                    break;
                }
            }
        }
        assert_eq!(got, want, "headers {headers:?}, trusted {trusted:?}");
    }

    // Key and class.
    let route = route_config(&input.route);
    let classifier = Classifier::new(&route);
    let again = classifier.reconfigured(&route);
    let method = Method::from_bytes(pick(&METHODS, input.method).as_bytes()).unwrap();
    let path = match &input.path {
        PathSpec::Known(p) => pick(&PREFIXES, *p).to_string() + "/x",
        PathSpec::Raw(s) => s.clone(),
    };
    let Ok(mut req) = Request::builder()
        .method(method.clone())
        .uri(path.as_str())
        .body(())
    else {
        return;
    };
    *req.headers_mut() = headers;
    let arrival = classifier.arrival(&req, ClientFields::Map(req.headers()), got);
    assert!(arrival.class < classifier.class_count());
    assert_eq!(classifier.class_count(), route.classes.len() + 1);
    let want_class = route
        .classes
        .iter()
        .position(|c| match &c.matcher {
            ClassMatch::Header { name, values } => req
                .headers()
                .get_all(name)
                .iter()
                .any(|v| values.iter().any(|w| v.as_bytes() == w.as_bytes())),
            ClassMatch::PathPrefix(p) => req.uri().path().starts_with(p.as_str()),
            ClassMatch::Methods(ms) => ms.contains(&method),
        })
        .unwrap_or(route.classes.len());
    assert_eq!(arrival.class, want_class);
    let key_used = route.key_limit.is_some() || route.queue.fairness == Fairness::PerKey;
    if !key_used {
        assert_eq!(arrival.key, 0, "a key hashed that nothing reads");
    }
    let fields = ClientFields::Map(req.headers());
    assert_eq!(
        classifier.arrival(&req, fields, got).key,
        arrival.key,
        "key not deterministic"
    );
    assert_eq!(
        again.arrival(&req, fields, got).key,
        arrival.key,
        "reconfigured changed the key"
    );
});
