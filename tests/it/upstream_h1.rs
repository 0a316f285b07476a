//! Plain HTTP/1.1 upstreams on sluice's own codec, through sluice: each
//! way a backend may frame (or fail to frame) a response is relayed as
//! the client should see it, and a connection is reused exactly when that
//! is safe.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::scripted::{Reply, ScriptedBackend};
use crate::common::*;

/// Sends `req` through `client`; the status, body and trailers, or the
/// error the body broke off with.
async fn fetch(
    client: &TestClient,
    req: Request<Full<Bytes>>,
) -> (StatusCode, Result<(Bytes, Option<http::HeaderMap>), String>) {
    let response = tokio::time::timeout(Duration::from_secs(5), client.request(req))
        .await
        .expect("an answer in time")
        .expect("sluice answers");
    let status = response.status();
    let body = match tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .expect("the body in time")
    {
        Ok(collected) => {
            let trailers = collected.trailers().cloned();
            Ok((collected.to_bytes(), trailers))
        }
        Err(err) => Err(err.to_string()),
    };
    (status, body)
}

/// A config whose one worker serves every request: connections to the
/// backend come from one idle stack, so their count is exact.
fn one_worker(backend: &ScriptedBackend) -> sluice::config::Config {
    let mut config = config(&[backend.addr]);
    config.server.workers = Some(1);
    config
}

fn request(method: Method, url: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    req.body(Full::new(Bytes::new())).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_responses_and_their_trailers_are_relayed_and_the_connection_reused() {
    let backend = ScriptedBackend::start(|_, _| {
        Reply::keep(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\ncontent-length: 9\r\n\r\n",
        )
    })
    .await;
    let sluice = TestSluice::start(&one_worker(&backend)).await;
    let client = client();
    let url = format!("http://{}/t", sluice.proxy_addr());
    for _ in 0..3 {
        let (status, body) =
            fetch(&client, request(Method::GET, &url, &[("te", "trailers")])).await;
        assert_eq!(status, StatusCode::OK);
        let (data, trailers) = body.expect("a whole body");
        assert_eq!(data, "hello world");
        let trailers = trailers.expect("trailers relayed");
        assert_eq!(trailers.get("x-checksum").unwrap(), "42");
        // A framing field is never taken from a trailer.
        assert!(trailers.get("content-length").is_none());
    }
    assert_eq!(backend.connections(), 1, "one keep-alive connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_a_length_is_read_to_the_close_and_its_connection_not_reused() {
    let backend = ScriptedBackend::start(|n, _| {
        Reply::close(format!("HTTP/1.1 200 OK\r\nx-n: {n}\r\n\r\nall of answer {n}").as_bytes())
    })
    .await;
    let sluice = TestSluice::start(&one_worker(&backend)).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());
    for n in 0..3 {
        let (status, body) = fetch(&client, request(Method::GET, &url, &[])).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body.unwrap().0, format!("all of answer {n}"));
    }
    assert_eq!(backend.connections(), 3);
    assert_eq!(backend.requests().len(), 3, "each request sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_204_and_304_have_no_body_whatever_their_headers_say() {
    // Each answer claims a body it does not send; the connection must still
    // serve the next request (no bytes are waited for, none are left over).
    let backend = ScriptedBackend::start(|n, head| {
        let reply: &[u8] = if head.starts_with("HEAD") {
            b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n"
        } else if n % 3 == 1 {
            b"HTTP/1.1 204 No Content\r\ncontent-length: 50\r\n\r\n"
        } else {
            b"HTTP/1.1 304 Not Modified\r\ntransfer-encoding: chunked\r\n\r\n"
        };
        Reply::keep(reply)
    })
    .await;
    let sluice = TestSluice::start(&one_worker(&backend)).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());
    for round in 0..2 {
        let (status, body) = fetch(&client, request(Method::HEAD, &url, &[])).await;
        assert_eq!(status, StatusCode::OK, "round {round}");
        assert!(body.unwrap().0.is_empty());
        let (status, body) = fetch(&client, request(Method::GET, &url, &[])).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        assert!(body.unwrap().0.is_empty());
        let (status, body) = fetch(&client, request(Method::GET, &url, &[])).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert!(body.unwrap().0.is_empty());
    }
    assert_eq!(backend.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_responses_from_the_backend_are_passed_over() {
    let backend = ScriptedBackend::start(|_, _| {
        Reply::keep(
            b"HTTP/1.1 100 Continue\r\n\r\n\
              HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n\
              HTTP/1.1 201 Created\r\ncontent-length: 4\r\n\r\ndone",
        )
    })
    .await;
    let sluice = TestSluice::start(&one_worker(&backend)).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());
    for _ in 0..2 {
        let req = Request::post(&url)
            .header("expect", "100-continue")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let (status, body) = fetch(&client, req).await;
        assert_eq!(status, StatusCode::CREATED);
        assert_eq!(body.unwrap().0, "done");
    }
    assert_eq!(backend.connections(), 1);
    assert!(backend.requests()[0].ends_with("\r\n\r\npayload"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_backend_closed_is_not_used_and_nothing_is_sent_twice() {
    // Every answer is followed by a close the answer did not announce: the
    // connection looks reusable, and is dead by the next request.
    let backend = ScriptedBackend::start(|n, _| {
        Reply::close(format!("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n{}", n % 10).as_bytes())
    })
    .await;
    let sluice = TestSluice::start(&one_worker(&backend)).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());
    for n in 0..5 {
        // Not a retryable method: a request sent twice would show.
        let req = Request::post(&url)
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        let (status, body) = fetch(&client, req).await;
        assert_eq!(status, StatusCode::OK, "request {n}");
        assert_eq!(body.unwrap().0, format!("{n}"));
        // The close is out before the next request: its connection must
        // be found dead in the pool, not written to.
        backend.closed(n + 1).await;
    }
    assert_eq!(backend.requests().len(), 5);
    assert_eq!(backend.connections(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_dying_mid_body_cuts_the_client_off_and_its_connection_is_not_reused() {
    let backend = ScriptedBackend::start(|n, _| {
        if n == 0 {
            Reply::close(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nab",
            )
        } else {
            Reply::keep(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        }
    })
    .await;
    let sluice = TestSluice::start(&one_worker(&backend)).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());
    let (status, body) = fetch(&client, request(Method::GET, &url, &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_err(), "the client sees the cut, not a clean end");
    let (status, body) = fetch(&client, request(Method::GET, &url, &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.unwrap().0, "ok");
    assert_eq!(backend.connections(), 2);
    assert_eq!(
        outcomes(&client, sluice.admin_addr(), "main").await,
        BTreeMap::from([("forwarded".to_string(), 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_framing_from_the_backend_is_a_502_or_a_cut() {
    for (bad, head_ok) in [
        (
            &b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello"[..],
            false,
        ),
        (
            b"HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
            false,
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n",
            true,
        ),
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
            true,
        ),
    ] {
        let backend = ScriptedBackend::start(move |_, _| Reply::keep(bad)).await;
        let sluice = TestSluice::start(&one_worker(&backend)).await;
        let client = client();
        let url = format!("http://{}/", sluice.proxy_addr());
        let (status, body) = fetch(&client, request(Method::GET, &url, &[])).await;
        let text = String::from_utf8_lossy(bad);
        if head_ok {
            assert_eq!(status, StatusCode::OK, "{text}");
            assert!(body.is_err(), "{text}");
        } else {
            assert_eq!(status, StatusCode::BAD_GATEWAY, "{text}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_are_framed_by_sluice() {
    let backend = ScriptedBackend::start(|_, _| {
        Reply::keep(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
    })
    .await;
    let mut config = one_worker(&backend);
    // Bodies past 4 bytes stream.
    config.server.request_buffer_bytes = 4;
    let sluice = TestSluice::start(&config).await;
    let mut socket = tokio::net::TcpStream::connect(sluice.proxy_addr())
        .await
        .unwrap();
    let requests: [&[u8]; 3] = [
        // Buffered, chunked from the client: a length to the backend.
        b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        // Streaming with a length: the same length.
        b"POST /b HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n0123456789",
        // Streaming without one: chunked.
        b"POST /c HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n6\r\nabcdef\r\n4\r\nghij\r\n0\r\n\r\n",
    ];
    for req in requests {
        let answer =
            crate::common::sockets::exchange(&mut socket, req, Duration::from_secs(5)).await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        // The rest of the answer ("ok") may come in a later read.
        if !answer.ends_with("ok") {
            let mut rest = [0u8; 2];
            socket.read_exact(&mut rest).await.unwrap();
        }
    }
    let seen = backend.requests();
    assert!(seen[0].contains("content-length: 3\r\n"), "{}", seen[0]);
    assert!(seen[0].ends_with("\r\n\r\nabc"), "{}", seen[0]);
    assert!(!seen[0].contains("transfer-encoding"), "{}", seen[0]);
    assert!(seen[1].contains("content-length: 10\r\n"), "{}", seen[1]);
    assert!(seen[1].ends_with("0123456789"), "{}", seen[1]);
    assert!(
        seen[2].contains("transfer-encoding: chunked\r\n"),
        "{}",
        seen[2]
    );
    assert!(!seen[2].contains("content-length"), "{}", seen[2]);
    assert_eq!(backend.connections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_the_backend_sends_right_after_its_101_reach_the_client() {
    let backend = ScriptedBackend::start(|_, _| {
        Reply::echo(
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nGREETING",
        )
    })
    .await;
    let sluice = TestSluice::start(&one_worker(&backend)).await;
    let mut socket = tokio::net::TcpStream::connect(sluice.proxy_addr())
        .await
        .unwrap();
    socket
        .write_all(
            b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
        )
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !got.ends_with(b"GREETING") {
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("the 101 and the greeting");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    socket.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), socket.read_exact(&mut echoed))
        .await
        .expect("the echo in time")
        .unwrap();
    assert_eq!(&echoed, b"ping");
}

/// A backend's fields go to the client as they arrived (no header map is
/// made on the way: see `sluice::http::h1::Fields`), hop-by-hop ones and
/// those its Connection names dropped, its own Date kept; an HTTP/2 client
/// (hyper writes its map) gets the same fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_fields_are_relayed_as_they_came_to_http1_and_http2_clients() {
    let backend = ScriptedBackend::start(|_, _| {
        Reply::keep(
            b"HTTP/1.1 200 OK\r\nServer: scripted\r\nSet-Cookie: a=1\r\n\
              Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n\
              Proxy-Authenticate: Basic\r\nSet-Cookie: b=2\r\nUpgrade: h2c\r\n\
              Date: Sun, 06 Dec 2026 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok",
        )
    })
    .await;
    let sluice = TestSluice::start(&one_worker(&backend)).await;
    let url = format!("http://{}/f", sluice.proxy_addr());
    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    for version in [http::Version::HTTP_11, http::Version::HTTP_2] {
        let req = request(Method::GET, &url, &[]);
        let response = if version == http::Version::HTTP_2 {
            h2.request(req).await.unwrap()
        } else {
            client().request(req).await.unwrap()
        };
        assert_eq!(response.version(), version);
        let headers = response.headers().clone();
        assert_eq!(headers["server"], "scripted", "{version:?}");
        let cookies: Vec<_> = headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"], "{version:?}");
        assert_eq!(headers["date"], "Sun, 06 Dec 2026 00:00:00 GMT");
        assert_eq!(headers.get_all("date").iter().count(), 1);
        for hop in ["x-secret", "keep-alive", "proxy-authenticate", "upgrade"] {
            assert!(headers.get(hop).is_none(), "{hop} relayed to {version:?}");
        }
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "ok");
    }

    // On the wire to an HTTP/1.1 client: the backend's lines as it wrote
    // them, in its order, after sluice's status line.
    let mut stream = tokio::net::TcpStream::connect(sluice.proxy_addr())
        .await
        .unwrap();
    stream
        .write_all(b"GET /f HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the answer in time")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(
        answer.starts_with(
            "HTTP/1.1 200 OK\r\nServer: scripted\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\
             Date: Sun, 06 Dec 2026 00:00:00 GMT\r\nContent-Length: 2\r\nconnection: close\r\n\r\nok"
        ),
        "{answer}"
    );
}

/// The head's field lines after its request line, with the request id
/// (made by sluice, so unknown here) checked and replaced by `ID`.
fn backend_fields(head: &str) -> Vec<String> {
    let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
    assert_eq!(lines.next(), Some("GET /f?q=1 HTTP/1.1"), "{head}");
    lines
        .map(|line| match line.strip_prefix("x-request-id: ") {
            Some(id) => {
                assert!(
                    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                    "an insane id is replaced: {id}"
                );
                "x-request-id: ID".to_string()
            }
            None => line.to_string(),
        })
        .collect()
}

/// What a backend gets for a request with duplicate fields, odd casing,
/// hop-by-hop fields and fields its Connection names: from an HTTP/1.1
/// client, the client's lines as it wrote them, in its order, less the
/// hop-by-hop ones and those Connection names, then sluice's; from an
/// HTTP/2 client the same fields (hyper's map: lower case, a name's values
/// together).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_gets_the_clients_fields_as_sent_less_hop_by_hop_from_http1_and_http2() {
    let backend = ScriptedBackend::start(|_, _| {
        Reply::keep(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    })
    .await;
    let sluice = TestSluice::start(&one_worker(&backend)).await;
    let addr = sluice.proxy_addr();

    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /f?q=1 HTTP/1.1\r\nHost: Shop.Example\r\nX-Dup: 1\r\n\
              Connection: keep-alive, X-Named\r\nx-DUP: 2\r\nX-Named: secret\r\n\
              Keep-Alive: timeout=5\r\nProxy-Authorization: Basic x\r\nTE: trailers\r\n\
              X-Request-Id: not sane\r\nX-Forwarded-For: 6.6.6.6\r\nUpgrade: h2c\r\n\
              X-Forwarded-Proto: https\r\nProxy: evil\r\nACCEPT:  */*\r\nDate: d\r\n\
              Content-Length: 0\r\nx-dup: 3\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    while !answer.ends_with(b"ok") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("the answer in time")
            .unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&chunk[..n]);
    }
    let seen = backend.requests();
    assert_eq!(
        backend_fields(&seen[0]),
        [
            "host: Shop.Example",
            "X-Dup: 1",
            "x-DUP: 2",
            "ACCEPT: */*",
            "Date: d",
            "x-dup: 3",
            "x-request-id: ID",
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-proto: http",
            "x-forwarded-host: Shop.Example",
            "forwarded: for=127.0.0.1;proto=http;host=Shop.Example",
            "content-length: 0",
        ],
        "{}",
        seen[0]
    );

    let h2: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .http2_only(true)
            .build_http();
    let url = format!("http://{addr}/f?q=1");
    let req = request(
        Method::GET,
        &url,
        &[
            ("X-Dup", "1"),
            ("proxy-authorization", "Basic x"),
            ("x-request-id", "not sane"),
            ("x-dup", "2"),
            ("x-forwarded-for", "6.6.6.6"),
            ("accept", "*/*"),
        ],
    );
    let response = h2.request(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "ok"
    );
    let seen = backend.requests();
    let host = addr.to_string();
    let fields: Vec<String> = backend_fields(&seen[1])
        .into_iter()
        .filter(|line| line != "content-length: 0")
        .collect();
    assert_eq!(
        fields,
        [
            format!("host: {host}"),
            "x-dup: 1".into(),
            "x-dup: 2".into(),
            "accept: */*".into(),
            "x-request-id: ID".into(),
            "x-forwarded-for: 127.0.0.1".into(),
            "x-forwarded-proto: http".into(),
            format!("x-forwarded-host: {host}"),
            format!("forwarded: for=127.0.0.1;proto=http;host={host}"),
        ],
        "{}",
        seen[1]
    );
}
