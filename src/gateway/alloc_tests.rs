//! Heap allocations on sluice's own request path, counted (issue 17).
//!
//! A counting global allocator (this test binary only) counts the
//! allocations the current thread makes while a flag is set; other tests
//! running on other threads are not counted. The test drives a pass-through
//! request through the gateway's phases as [`Gateway::handle_owned`] runs them —
//! path normalisation, record open, screen, route, classify, admit, the
//! rewrite for the backend (request id, hop-by-hop headers left out,
//! X-Forwarded-*, Forwarded, Host: the head written as the HTTP/1.1 pool
//! writes it, into a warm buffer), the response's hop-by-hop strip and the
//! record's finish — and counts each phase. The request is built the way
//! an HTTP/1 parser builds it: its URI and header values are slices of one
//! shared buffer, so cloning them is a reference count, not a copy; its
//! header map has room for exactly the client's headers (sluice adds none
//! to it on the HTTP/1.1 path).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};

use super::classify::{client_ip, peer_is_trusted};
use super::forward::{normalise_target, prepare_upstream_request};
use super::record::Record;
use super::upgrade::requested_upgrade;
use super::{Gateway, Telemetry};
use crate::config::Config;
use crate::http::h1::Fields;
use crate::http::headers::{check_host, request_host, strip_hop_by_hop};
use crate::http::{ClientConn, ClientFields};
use crate::metrics::Metrics;
use crate::shaper::Admission;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // Both are const-initialised and need no destructor, so they can be
    // read even while the thread exits, and reading them does not allocate.
    if COUNTING.with(Cell::get) {
        COUNT.with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The allocations `f` makes on this thread, and its result.
fn counted<T>(f: impl FnOnce() -> T) -> (usize, T) {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (COUNT.with(Cell::get), out)
}

/// Allocations per phase of one request.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Phases {
    normalise: usize,
    record_open: usize,
    screen: usize,
    route: usize,
    classify: usize,
    admit: usize,
    rewrite: usize,
    response_strip: usize,
    finish: usize,
}

impl Phases {
    fn total(&self) -> usize {
        self.normalise
            + self.record_open
            + self.screen
            + self.route
            + self.classify
            + self.admit
            + self.rewrite
            + self.response_strip
            + self.finish
    }
}

/// A request as an HTTP/1 parser hands it on: URI and header values are
/// slices of one shared buffer.
fn parsed_request(target: &str, headers: &[(&str, &str)]) -> Request<()> {
    let mut text = BytesMut::new();
    text.extend_from_slice(target.as_bytes());
    for (_, value) in headers {
        text.extend_from_slice(value.as_bytes());
    }
    // A split buffer is a shared one: its slices are reference counts.
    let buffer: Bytes = text.split().freeze();
    let mut at = target.len();
    let mut map = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        let slice = buffer.slice(at..at + value.len());
        at += value.len();
        map.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_maybe_shared(slice).unwrap(),
        );
    }
    let uri = Uri::from_maybe_shared(buffer.slice(..target.len())).unwrap();
    let mut req = Request::new(());
    *req.method_mut() = Method::GET;
    *req.uri_mut() = uri;
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = map;
    req
}

/// A backend's response head, as the client connection hands it on.
/// How a request came: as a header map (HTTP/2, hyper's), or as an
/// HTTP/1 head's fields (sluice's codec).
#[derive(Debug, Clone, Copy)]
enum Came {
    Map,
    H1,
}

/// A request with `headers`, as it came.
fn request(came: Came, target: &str, headers: &[(&str, &str)]) -> (Request<()>, Option<Fields>) {
    match came {
        Came::Map => (parsed_request(target, headers), None),
        Came::H1 => h1_request(target, headers),
    }
}

/// A request as sluice's HTTP/1 codec hands it to the gateway: its fields
/// beside it, its header map empty.
fn h1_request(target: &str, headers: &[(&str, &str)]) -> (Request<()>, Option<Fields>) {
    let mut raw = format!("GET {target} HTTP/1.1\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    let head = crate::http::h1::request::complete(&raw);
    (Request::from_parts(head.parts, ()), Some(head.fields))
}

/// The fields of `req`, whichever way it came.
fn view<'a>(fields: &'a Option<Fields>, req: &'a Request<()>) -> ClientFields<'a> {
    ClientFields::new(fields.as_ref(), req.headers())
}

fn response_headers() -> HeaderMap {
    let mut map = HeaderMap::with_capacity(8);
    for (name, value) in [
        ("server", "nginx"),
        ("date", "Sun, 06 Dec 2026 05:00:00 GMT"),
        ("content-type", "text/plain"),
        ("content-length", "2"),
        ("connection", "keep-alive"),
    ] {
        map.append(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
    map
}

/// Runs one request through the phases of [`Gateway::handle_owned`] up to the
/// backend, then the response's strip and the record's finish, counting
/// each phase's allocations. `head` is the upstream connection's write
/// buffer; the head written into it is checked.
fn one_request(
    gateway: &Gateway,
    (mut req, fields): (Request<()>, Option<Fields>),
    client: SocketAddr,
    head: &mut BytesMut,
) -> Phases {
    let mut phases = Phases::default();
    let (n, target) = counted(|| normalise_target(&mut req));
    phases.normalise = n;
    assert!(target.is_ok());
    let (n, mut record) = counted(|| Record::open(gateway, (&req, view(&fields, &req)), client));
    phases.record_open = n;
    let (n, screened) = counted(|| {
        req.method() != Method::CONNECT && check_host(&req, view(&fields, &req)).is_ok()
    });
    phases.screen = n;
    assert!(screened);
    let (n, (host, index)) = counted(|| {
        let host = request_host(&req, view(&fields, &req));
        let index = gateway.router.route(
            host.as_ref().and_then(|h| h.to_str().ok()),
            req.uri().path(),
            req.method(),
        );
        (host, index)
    });
    phases.route = n;
    let route = &gateway.routes[index.expect("the request has a route")];
    record.route = index;
    let (n, arrival) = counted(|| {
        let ip = client_ip(client, view(&fields, &req), &gateway.trusted_proxies);
        record.client_ip = ip;
        let arrival = route
            .state
            .classifier()
            .arrival(&req, view(&fields, &req), ip);
        record.class = arrival.class;
        let now = tokio::time::Instant::now();
        assert!(route.check_key(arrival.key, now).is_ok());
        route.check_dry_route_limit(now);
        (arrival, now)
    });
    phases.classify = n;
    let (n, grant) = counted(
        || match route.state.shaper.admit_since(arrival.0, arrival.1) {
            Admission::Go(grant) => {
                route.metrics.queue_wait(0.0);
                grant
            }
            _ => panic!("a route with no limit admits at once"),
        },
    );
    phases.admit = n;
    let default_host = HeaderValue::from_static("127.0.0.1:9");
    head.clear();
    let (n, upstream_req) = counted(|| {
        assert!(requested_upgrade(&req, view(&fields, &req), &route.upgrades).is_none());
        let trusted = peer_is_trusted(client.ip(), &gateway.trusted_proxies);
        let id = record.request_id().cloned();
        let (req, forwarding) = prepare_upstream_request(
            (req, fields),
            ClientConn::plain(client),
            (host, id, None),
            trusted,
        );
        forwarding.write_fields(forwarding.client_fields(req.headers()), &default_host, head);
        req
    });
    phases.rewrite = n;
    let mut response = response_headers();
    let (n, ()) = counted(|| strip_hop_by_hop(&mut response));
    phases.response_strip = n;
    let (n, line) = counted(|| record.finish_relayed(StatusCode::OK));
    phases.finish = n;
    assert!(line.is_none(), "the access log is off");
    // What the backend would see.
    let text = std::str::from_utf8(head).unwrap();
    for field in [
        "\r\nx-forwarded-proto: http",
        "\r\nx-forwarded-for: ",
        "\r\nforwarded: for=",
        "\r\nx-request-id: ",
    ] {
        assert!(text.contains(field), "{field:?} in {text}");
    }
    assert!(text.starts_with("host: "), "{text}");
    assert!(!text.contains("connection:"), "{text}");
    assert_eq!(text.matches("x-request-id:").count(), 1, "{text}");
    drop((grant, record, upstream_req));
    phases
}

const CONFIG: &str = "[log]\naccess_log = false\n\n[upstreams.api]\ntargets = [\"127.0.0.1:9\"]\n\n\
                      [[routes]]\nname = \"site\"\nhost = \"shop.example.com\"\nupstream = \"api\"\n\n\
                      [[routes]]\nname = \"api\"\npath_prefix = \"/api\"\nupstream = \"api\"\n";

/// The headers `wrk` and a browser-ish client send.
const CLIENT_HEADERS: [(&str, &str); 4] = [
    ("host", "Example.COM:8080"),
    ("user-agent", "wrk/4.2"),
    ("accept", "*/*"),
    ("connection", "keep-alive"),
];

fn gateway(config: &str) -> (tokio::runtime::Runtime, Gateway) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let config = Config::parse(config, Path::new("alloc.toml")).unwrap();
    let gateway = {
        let _inside = runtime.enter();
        Gateway::new(&config, Telemetry::new(Metrics::new().unwrap()).unwrap()).unwrap()
    };
    (runtime, gateway)
}

/// Runs `requests` made by `make` and returns each one's phases, after a
/// warm-up (per-thread buffers, lazily built statics).
fn run(
    gateway: &Gateway,
    runtime: &tokio::runtime::Runtime,
    make: impl Fn() -> (Request<()>, Option<Fields>),
    client: SocketAddr,
) -> Vec<Phases> {
    let _inside = runtime.enter();
    let mut head = BytesMut::with_capacity(1024);
    for _ in 0..10 {
        one_request(gateway, make(), client, &mut head);
    }
    (0..1000)
        .map(|_| one_request(gateway, make(), client, &mut head))
        .collect()
}

fn client() -> SocketAddr {
    "127.0.0.1:40000".parse().unwrap()
}

#[test]
fn a_pass_through_request_allocates_nothing_on_sluices_own_path() {
    let (runtime, gateway) = gateway(CONFIG);
    for came in [Came::Map, Came::H1] {
        let make = || request(came, "/api/items?page=2", &CLIENT_HEADERS);
        let phases = run(&gateway, &runtime, make, client());
        let worst = phases.iter().max_by_key(|p| p.total()).unwrap();
        assert_eq!(*worst, Phases::default(), "allocations per phase, {came:?}");
    }
}

#[test]
fn a_client_request_id_and_a_wildcard_free_host_route_allocate_nothing() {
    let (runtime, gateway) = gateway(CONFIG);
    let headers = [
        ("host", "shop.example.com"),
        ("x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("accept", "*/*"),
    ];
    for came in [Came::Map, Came::H1] {
        let make = || request(came, "/index.html", &headers);
        let phases = run(&gateway, &runtime, make, client());
        let worst = phases.iter().max_by_key(|p| p.total()).unwrap();
        assert_eq!(*worst, Phases::default(), "allocations per phase, {came:?}");
    }
}

#[test]
fn behind_a_trusted_proxy_the_chain_is_walked_and_extended_without_allocating() {
    let config = format!("{CONFIG}\n[server]\ntrusted_proxies = [\"127.0.0.0/8\"]\n");
    let (runtime, gateway) = gateway(&config);
    let headers = [
        ("host", "example.com"),
        ("x-forwarded-for", "203.0.113.9, 127.0.0.2"),
        ("forwarded", "for=203.0.113.9;proto=https"),
        ("x-forwarded-proto", "https"),
    ];
    for came in [Came::Map, Came::H1] {
        let make = || request(came, "/api/x", &headers);
        let phases = run(&gateway, &runtime, make, client());
        let worst = phases.iter().max_by_key(|p| p.total()).unwrap();
        assert_eq!(*worst, Phases::default(), "allocations per phase, {came:?}");
    }
}

/// The access log on: the id is made when the request arrives, and the
/// backend is sent the same one; still nothing allocates but the id's
/// share of its slab (none, with no request in flight).
#[test]
fn with_the_access_log_on_the_logged_id_is_the_one_sent() {
    let config = CONFIG.replace("access_log = false", "access_log = true");
    let (runtime, gateway) = gateway(&config);
    let _inside = runtime.enter();
    let req = parsed_request("/api/items", &CLIENT_HEADERS);
    let record = Record::open(&gateway, (&req, ClientFields::Map(req.headers())), client());
    let id = record.request_id().cloned().expect("logged");
    let (req, forwarding) = prepare_upstream_request(
        (req, None),
        ClientConn::plain(client()),
        (None, Some(id.clone()), None),
        false,
    );
    let mut head = BytesMut::new();
    forwarding.write_fields(
        forwarding.client_fields(req.headers()),
        &HeaderValue::from_static("t:1"),
        &mut head,
    );
    let text = std::str::from_utf8(&head).unwrap();
    assert!(
        text.contains(&format!("x-request-id: {}\r\n", id.to_str().unwrap())),
        "{text}"
    );
}

/// With requests in flight (their header values held), a slab runs low
/// while still in use and a new one is taken: amortised over the requests,
/// a small fraction of an allocation each. A value held while later ones
/// are cut (from the same slab, or from it again once reclaimed) keeps its
/// text.
#[test]
fn with_requests_in_flight_a_new_slab_is_taken_every_few_requests() {
    const REQUESTS: usize = 1000;
    const IN_FLIGHT: usize = 64;
    let mut held = std::collections::VecDeque::with_capacity(IN_FLIGHT + 1);
    let mut ids = Vec::with_capacity(REQUESTS);
    let mut headers = HeaderMap::with_capacity(8);
    let peer = crate::http::headers::Peer {
        ip: "192.0.2.44".parse().unwrap(),
        proto: "http",
        trusted: false,
    };
    let host = HeaderValue::from_static("example.com");
    let (n, ()) = counted(|| {
        for i in 0..REQUESTS {
            headers.clear();
            let id = crate::http::headers::request_id(ClientFields::Map(&headers));
            crate::http::headers::write_forwarding_headers(&mut headers, &peer, Some(&host));
            let mut text = [0u8; 32];
            text.copy_from_slice(id.as_bytes());
            ids.push(text);
            held.push_back((i, id, headers.get("forwarded").cloned()));
            if held.len() > IN_FLIGHT {
                let (i, id, forwarded) = held.pop_front().unwrap();
                assert_eq!(id.as_bytes(), &ids[i], "request {i}'s id changed");
                assert_eq!(
                    forwarded.unwrap(),
                    "for=192.0.2.44;proto=http;host=example.com"
                );
            }
        }
    });
    // Two allocations (the buffer, its shared header) per slab taken: one
    // 512-byte id slab per 16 requests (~125), one 4 KiB slab of
    // forwarding text per ~78 requests (~26).
    assert!(n <= 200, "{n} allocations for {REQUESTS} requests");
    assert!(n > 0, "values in flight do pin their slab");
}
