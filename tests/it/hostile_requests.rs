//! What a hostile client can send, through real sockets: paths spelled to
//! slip past a route's limit, upgrades to protocols the route does not
//! allow, forged forwarding headers and request ids, and HTTP/2 requests
//! whose authority disagrees with their Host.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice::config::{KeyLimitConfig, KeyPart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A GET of `target` on a connection that closes after the answer.
fn get_raw(target: &str, headers: &[&str]) -> Vec<u8> {
    let mut head = format!("GET {target} HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n");
    for line in headers {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The status code of a raw answer ("HTTP/1.1 200 OK..." → 200).
fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {answer:?}"))
}

// --- paths -------------------------------------------------------------------

/// Routes `api` on "/api/" (each path its own key, one request per key) and
/// `main` on "/".
fn api_and_main(backend: SocketAddr) -> sluice::Config {
    let mut config = config(&[backend]);
    let mut api = route("api", "/api/", None, 100, Duration::from_secs(5));
    api.key = vec![KeyPart::Path];
    api.key_limit = Some(KeyLimitConfig {
        rate: 0.001,
        burst: NonZeroU32::new(1).unwrap(),
        max_keys: NonZeroUsize::new(100).unwrap(),
        dry_run: false,
    });
    config.routes.push(api);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_spellings_are_routed_keyed_and_forwarded_in_normal_form() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&api_and_main(backend.addr)).await;
    let first = raw_exchange(sluice.proxy_addr(), &get_raw("/api/x?q=1", &[])).await;
    assert_eq!(status_of(&first), 200, "{first}");
    // Each is /api/x written another way: the same route, the same key (so
    // the key's one request is spent: 429), never a way round the limit.
    for spelling in [
        "//api/x",
        "/api//x",
        "/./api/x",
        "/%61pi/x",
        "/x/../api/x",
        "/api/./x",
        "/%2e/api/%78",
    ] {
        let answer = raw_exchange(sluice.proxy_addr(), &get_raw(spelling, &[])).await;
        assert_eq!(status_of(&answer), 429, "{spelling}: {answer}");
    }
    // What was routed is what the backend is asked for; the query is kept.
    let seen = raw_exchange(sluice.proxy_addr(), &get_raw("/api/y/../z//w?a=%2e", &[])).await;
    assert_eq!(status_of(&seen), 200, "{seen}");
    // Paths are case-sensitive, and an encoded slash is not a separator:
    // neither of these is under "/api/", so `main` serves them as sent.
    for other in ["/API/x", "/api%2Fx", "/apix"] {
        let answer = raw_exchange(sluice.proxy_addr(), &get_raw(other, &[])).await;
        assert_eq!(status_of(&answer), 200, "{other}: {answer}");
    }
    let paths: Vec<String> = backend.arrivals().into_iter().map(|a| a.path).collect();
    assert_eq!(paths, ["/api/x", "/api/z/w", "/API/x", "/api%2Fx", "/apix"]);
    let client = client();
    let api = outcomes(&client, sluice.admin_addr(), "api").await;
    assert_eq!(
        api,
        BTreeMap::from([
            ("forwarded".to_string(), 2),
            ("rejected_rate_limited".to_string(), 7)
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_that_climb_above_the_root_or_misuse_percent_get_400() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&api_and_main(backend.addr)).await;
    for bad in [
        "/../api/x",
        "/api/../../x",
        "/%2e%2e/api/x",
        "/api/%zz",
        "/api/x%4",
    ] {
        let answer = raw_exchange(sluice.proxy_addr(), &get_raw(bad, &[])).await;
        assert_eq!(status_of(&answer), 400, "{bad}: {answer}");
    }
    assert_eq!(backend.count(), 0);
    let client = client();
    let unrouted = outcomes(&client, sluice.admin_addr(), "-").await;
    assert_eq!(
        unrouted.get("rejected_invalid"),
        Some(&5),
        "counted once each: {unrouted:?}"
    );
}

// --- upgrades ----------------------------------------------------------------

/// A backend that agrees to any upgrade: it answers a request with an
/// `Upgrade` header `101` (naming `reply`, or the requested protocol if
/// `reply` is None) and then echoes bytes; other requests get 200 "plain".
/// Returns its address and the request heads it read.
async fn switching_backend(reply: Option<&'static str>) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end + 4);
                    seen.lock().unwrap().push(head.clone());
                    let asked = head
                        .lines()
                        .find_map(|l| l.strip_prefix("upgrade:"))
                        .map(|p| p.trim().to_string());
                    let Some(asked) = asked else {
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain";
                        if stream.write_all(ok).await.is_err() {
                            return;
                        }
                        continue;
                    };
                    let protocol = reply.map_or(asked, str::to_string);
                    let switch = format!(
                        "HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n\r\n"
                    );
                    if stream.write_all(switch.as_bytes()).await.is_err() {
                        return;
                    }
                    if !buf.is_empty() && stream.write_all(&buf).await.is_err() {
                        return;
                    }
                    let (mut read, mut write) = stream.split();
                    let _ = tokio::io::copy(&mut read, &mut write).await;
                    return;
                }
            });
        }
    });
    (addr, heads)
}

/// Sends `request` and reads the answer (its head, and its body as long as
/// Content-Length says); then writes `then` and reads until `until` has come
/// back or the connection closes (the echo, if the connection became a
/// tunnel). Every read is bounded in time.
async fn exchange_then(
    addr: SocketAddr,
    request: &[u8],
    then: &[u8],
    until: &str,
) -> (String, String) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut buf = Vec::new();
    let answered = |buf: &[u8]| {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return false;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |n| n.trim().parse().unwrap());
        buf.len() >= end + 4 + length
    };
    read_while(&mut socket, &mut buf, |b| !answered(b)).await;
    let first = String::from_utf8_lossy(&buf).into_owned();
    let mut rest = Vec::new();
    if socket.write_all(then).await.is_ok() {
        read_while(&mut socket, &mut rest, |b| {
            !String::from_utf8_lossy(b).contains(until)
        })
        .await;
    }
    (first, String::from_utf8_lossy(&rest).into_owned())
}

/// Reads into `buf` while `more` says so, until the peer closes or 5 s pass.
async fn read_while(socket: &mut TcpStream, buf: &mut Vec<u8>, more: impl Fn(&[u8]) -> bool) {
    let mut chunk = [0u8; 4096];
    let reading = async {
        while more(buf) {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), reading)
        .await
        .expect("an answer in time");
}

fn upgrade_request(protocol: &str) -> Vec<u8> {
    format!(
        "GET /chat HTTP/1.1\r\nhost: shop.example\r\nconnection: Upgrade\r\nupgrade: {protocol}\r\n\r\n"
    )
    .into_bytes()
}

/// What a client would pipeline inside a tunnel to get past the shaper.
const SMUGGLED: &[u8] =
    b"GET /smuggled HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_the_route_does_not_allow_is_forwarded_as_a_plain_request() {
    let (backend, heads) = switching_backend(None).await;
    let sluice = TestSluice::start(&config(&[backend])).await;
    for protocol in ["foo/1", "h2c", "websocket, foo"] {
        let (answer, after) = exchange_then(
            sluice.proxy_addr(),
            &upgrade_request(protocol),
            SMUGGLED,
            "/smuggled",
        )
        .await;
        if protocol.starts_with("websocket") {
            // The allowed part of the offer goes on; the rest is dropped.
            assert!(answer.starts_with("HTTP/1.1 101"), "{protocol}: {answer}");
            assert!(after.contains("/smuggled"), "the tunnel echoes: {after}");
        } else {
            assert!(answer.starts_with("HTTP/1.1 200"), "{protocol}: {answer}");
            // The bytes after it are a second request, shaped and forwarded
            // like any other: never a tunnel.
            assert!(after.starts_with("HTTP/1.1 200"), "{protocol}: {after}");
        }
    }
    let heads = heads.lock().unwrap().clone();
    let upgrades: Vec<Option<&str>> = heads
        .iter()
        .filter(|h| h.starts_with("get /chat"))
        .map(|h| {
            h.lines()
                .find_map(|l| l.strip_prefix("upgrade:"))
                .map(str::trim)
        })
        .collect();
    assert_eq!(upgrades, [None, None, Some("websocket")]);
    // h2c's settings header went with it; every request had its own head.
    assert!(heads.iter().all(|h| !h.contains("http2-settings")));
    assert_eq!(
        heads
            .iter()
            .filter(|h| h.starts_with("get /smuggled"))
            .count(),
        2
    );
    let client = client();
    let counted = outcomes(&client, sluice.admin_addr(), "main").await;
    assert_eq!(counted.get("forwarded"), Some(&5), "{counted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_are_per_route_and_a_backend_cannot_switch_to_another_protocol() {
    let (backend, heads) = switching_backend(None).await;
    let mut config = config(&[backend]);
    config.routes[0].upgrades = vec![];
    let mut custom = route("custom", "/custom/", None, 100, Duration::from_secs(5));
    custom.upgrades = vec!["foo".into()];
    config.routes.push(custom);
    let sluice = TestSluice::start(&config).await;
    // `upgrades = []`: even WebSocket is a plain request.
    let (answer, _) =
        exchange_then(sluice.proxy_addr(), &upgrade_request("websocket"), b"", "").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // A route that allows "foo" tunnels it, version and case aside.
    let custom =
        b"GET /custom/x HTTP/1.1\r\nhost: s\r\nconnection: upgrade\r\nupgrade: FOO/2\r\n\r\n";
    let (answer, after) = exchange_then(sluice.proxy_addr(), custom, b"ping", "ping").await;
    assert!(answer.starts_with("HTTP/1.1 101"), "{answer}");
    assert_eq!(after, "ping");
    assert_eq!(heads.lock().unwrap().len(), 2);

    // A backend that answers 101 with a protocol nobody allowed gets no tunnel.
    let (rogue, _) = switching_backend(Some("h2c")).await;
    let sluice = TestSluice::start(&crate::common::config(&[rogue])).await;
    let (answer, _) = exchange_then(
        sluice.proxy_addr(),
        &upgrade_request("websocket"),
        SMUGGLED,
        "",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502"), "{answer}");
}

// --- forwarding headers and request ids --------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_clients_forwarding_headers_are_replaced() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&config(&[backend.addr])).await;
    let forged = [
        "x-forwarded-for: 6.6.6.6",
        "x-forwarded-for: 7.7.7.7",
        "x-forwarded-proto: https",
        "x-forwarded-host: bank.example",
        "forwarded: for=6.6.6.6;host=bank.example",
    ];
    let answer = raw_exchange(sluice.proxy_addr(), &get_raw("/f", &forged)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let headers = &backend.arrivals()[0].headers;
    let all = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(all("x-forwarded-proto"), ["http"]);
    assert_eq!(all("x-forwarded-host"), ["shop.example"]);
    assert_eq!(
        all("forwarded"),
        ["for=127.0.0.1;proto=http;host=shop.example"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxys_forwarding_headers_are_extended_line_by_line() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let sluice = TestSluice::start(&config).await;
    let from_proxy = [
        "x-forwarded-for: 198.51.100.1",
        "x-forwarded-for: 10.0.0.2, 10.0.0.3",
        "x-forwarded-proto: https",
        "x-forwarded-host: shop.example",
        "forwarded: for=198.51.100.1;proto=https",
        "forwarded: for=10.0.0.2",
    ];
    let answer = raw_exchange(sluice.proxy_addr(), &get_raw("/t", &from_proxy)).await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    let headers = &backend.arrivals()[0].headers;
    let all = |name: &str| -> Vec<&str> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    };
    assert_eq!(
        all("x-forwarded-for"),
        ["198.51.100.1, 10.0.0.2, 10.0.0.3, 127.0.0.1"]
    );
    // The proxy in front knows the scheme the client used.
    assert_eq!(all("x-forwarded-proto"), ["https"]);
    assert_eq!(
        all("forwarded"),
        ["for=198.51.100.1;proto=https, for=10.0.0.2, for=127.0.0.1;proto=http;host=shop.example"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_kept_only_when_sane_and_connection_cannot_strip_it() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&config(&[backend.addr])).await;
    let long = format!("x-request-id: {}", "a".repeat(200));
    let cases: [&[&str]; 4] = [
        &[
            "x-request-id: abc-123",
            "connection: x-request-id, x-forwarded-for, forwarded, host",
        ],
        &["x-request-id: a b\"c"],
        &[long.as_str()],
        &["x-request-id: one", "x-request-id: two"],
    ];
    for headers in cases {
        let answer = raw_exchange(sluice.proxy_addr(), &get_raw("/id", headers)).await;
        assert_eq!(status_of(&answer), 200, "{answer}");
    }
    let ids: Vec<Vec<String>> = backend
        .arrivals()
        .iter()
        .map(|a| {
            a.headers
                .get_all("x-request-id")
                .iter()
                .map(|v| v.to_str().unwrap().to_string())
                .collect()
        })
        .collect();
    assert_eq!(ids[0], ["abc-123"]);
    // Connection cannot take away what sluice writes either.
    let first = &backend.arrivals()[0].headers;
    assert_eq!(first["x-forwarded-for"], "127.0.0.1");
    assert_eq!(first["host"], "shop.example");
    assert!(
        first["forwarded"]
            .to_str()
            .unwrap()
            .starts_with("for=127.0.0.1")
    );
    for replaced in &ids[1..] {
        assert_eq!(replaced.len(), 1, "{ids:?}");
        assert_eq!(replaced[0].len(), 32, "a fresh id: {ids:?}");
        assert!(
            replaced[0].bytes().all(|b| b.is_ascii_hexdigit()),
            "{ids:?}"
        );
    }
}

// --- HTTP/2 authority --------------------------------------------------------

/// Sends one HTTP/2 (prior knowledge) request to `addr` with `uri` and an
/// optional Host header; returns the status.
async fn h2_status(addr: SocketAddr, uri: &str, host: Option<&str>) -> StatusCode {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut req = Request::get(uri);
    if let Some(host) = host {
        req = req.header("host", host);
    }
    let response = tokio::time::timeout(
        Duration::from_secs(5),
        sender.send_request(req.body(Full::new(Bytes::new())).unwrap()),
    )
    .await
    .expect("an answer in time")
    .expect("an answer");
    assert_eq!(response.version(), http::Version::HTTP_2);
    response.status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_authority_with_user_info_or_a_disagreeing_host_gets_400() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    let mut shop = route("shop", "/", None, 100, Duration::from_secs(5));
    shop.host = Some("b.example".into());
    config.routes.push(shop);
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();
    assert_eq!(
        h2_status(addr, "http://u:p@evil.example/x", None).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        h2_status(addr, "http://a.example/x", Some("b.example")).await,
        StatusCode::BAD_REQUEST
    );
    // The same user info in an HTTP/1.1 absolute-form target: 400 too.
    let h1 = raw_exchange(
        addr,
        b"GET http://u:p@evil.example/x HTTP/1.1\r\nhost: evil.example\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status_of(&h1), 400, "{h1}");
    assert_eq!(backend.count(), 0);
    // Agreeing (case aside), or the authority alone: served, and the
    // backend's Host is the authority.
    assert_eq!(
        h2_status(addr, "http://b.example/x", Some("B.example")).await,
        StatusCode::OK
    );
    assert_eq!(
        h2_status(addr, "http://a.example/y", None).await,
        StatusCode::OK
    );
    let hosts: Vec<String> = backend
        .arrivals()
        .iter()
        .map(|a| a.headers["host"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(hosts, ["b.example", "a.example"]);
    let client = client();
    assert_eq!(
        outcomes(&client, sluice.admin_addr(), "shop").await,
        BTreeMap::from([("forwarded".to_string(), 1)])
    );
}
