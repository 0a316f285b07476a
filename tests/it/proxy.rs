//! Proxying through real sockets: routing, failing backends, protocols,
//! header hygiene, limits on request heads, and graceful shutdown.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_longest_prefix_and_unmatched_requests_get_404() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.routes = vec![
        route("api", "/api", None, 10, Duration::from_secs(1)),
        route("api-v2", "/api/v2", None, 10, Duration::from_secs(1)),
    ];
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let base = format!("http://{}", sluice.proxy_addr());

    assert_eq!(
        get(&client, &format!("{base}/api/x")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        get(&client, &format!("{base}/api/v2/y")).await.status,
        StatusCode::OK
    );
    let missing = get(&client, &format!("{base}/other")).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    assert_eq!(backend.count(), 2);
    assert_eq!(
        outcomes(&client, sluice.admin_addr(), "api").await,
        BTreeMap::from([("forwarded".to_string(), 1)])
    );
    assert_eq!(
        outcomes(&client, sluice.admin_addr(), "api-v2").await,
        BTreeMap::from([("forwarded".to_string(), 1)])
    );
    assert_eq!(
        outcomes(&client, sluice.admin_addr(), "-").await,
        BTreeMap::from([("no_route".to_string(), 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_gives_502_and_sluice_keeps_serving() {
    let live = Backend::start(Duration::ZERO).await;
    let dead = dead_addr().await;
    let mut config = config(&[dead]);
    let mut live_upstream = config.upstreams["api"].clone();
    live_upstream.name = "live".into();
    live_upstream.targets = vec![sluice::config::TargetConfig::new(
        live.addr.to_string().parse().unwrap(),
    )];
    config.upstreams.insert("live".into(), live_upstream);
    let mut live_route = route("live", "/live", None, 10, Duration::from_secs(1));
    live_route.upstream = "live".into();
    config.routes = vec![
        route("main", "/", None, 10, Duration::from_secs(1)),
        live_route,
    ];
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let base = format!("http://{}", sluice.proxy_addr());

    for _ in 0..3 {
        assert_eq!(
            get(&client, &format!("{base}/x")).await.status,
            StatusCode::BAD_GATEWAY
        );
    }
    assert_eq!(
        get(&client, &format!("{base}/live")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        outcomes(&client, sluice.admin_addr(), "main").await,
        BTreeMap::from([("upstream_error".to_string(), 3)])
    );
    let text = scrape(&client, sluice.admin_addr()).await;
    let errors = samples(&text, "sluice_upstream_errors_total");
    assert_eq!(errors["kind=\"connect\",upstream=\"api\""], 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_gives_504_at_the_configured_timeout() {
    let slow = Backend::start(Duration::from_secs(5)).await;
    let mut config = config(&[slow.addr]);
    let timeout = Duration::from_millis(300);
    config.upstreams.get_mut("api").unwrap().timeout = timeout;
    config.routes = vec![route("main", "/", None, 10, Duration::from_secs(1))];
    let sluice = TestSluice::start(&config).await;
    let client = client();

    let seen = get(&client, &format!("http://{}/", sluice.proxy_addr())).await;
    assert_eq!(seen.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(seen.latency >= timeout, "{:?}", seen.latency);
    assert!(
        seen.latency < timeout + Duration::from_millis(200),
        "{:?}",
        seen.latency
    );
    // The in-flight slot came back: the next request is served the same way.
    let again = get(&client, &format!("http://{}/", sluice.proxy_addr())).await;
    assert_eq!(again.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        outcomes(&client, sluice.admin_addr(), "main").await,
        BTreeMap::from([("upstream_error".to_string(), 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_served_on_the_same_port() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = config(&[backend.addr]);
    let sluice = TestSluice::start(&config).await;
    let h2: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let h1 = client();

    let url = format!("http://{}/h2", sluice.proxy_addr());
    let response = h2
        .request(Request::get(&url).body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(get(&h1, &url).await.status, StatusCode::OK);
    let arrivals = backend.arrivals();
    assert_eq!(arrivals.len(), 2);
    // The HTTP/2 request's authority becomes the Host the backend sees.
    let host = arrivals[0].headers.get("host").unwrap().to_str().unwrap();
    assert_eq!(host, sluice.proxy_addr().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_stream_through() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = config(&[backend.addr]);
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let payload = Bytes::from(vec![b'x'; 1 << 20]);
    let req = Request::post(format!("http://{}/upload", sluice.proxy_addr()))
        .body(Full::new(payload.clone()))
        .unwrap();
    let seen = send(&client, req).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.body, payload, "the backend echoes the body");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = config(&[backend.addr]);
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let req = Request::get(format!("http://{}/h", sluice.proxy_addr()))
        .header("host", "shop.example.com")
        .header("connection", "x-private")
        .header("x-private", "secret")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("te", "trailers")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-kept", "yes")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client, req).await.status, StatusCode::OK);
    let headers = &backend.arrivals()[0].headers;
    for gone in ["x-private", "proxy-authorization", "te"] {
        assert!(!headers.contains_key(gone), "{gone} was forwarded");
    }
    assert_eq!(headers["x-kept"], "yes");
    // A request id is made when the client sent none, and kept when it did.
    assert_eq!(headers["x-request-id"].len(), 32);
    let req = Request::get(format!("http://{}/h", sluice.proxy_addr()))
        .header("x-request-id", "abc-123")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(send(&client, req).await.status, StatusCode::OK);
    assert_eq!(backend.arrivals()[1].headers["x-request-id"], "abc-123");
    assert_eq!(headers["host"], "shop.example.com");
    // The client is no trusted proxy: its X-Forwarded-For is replaced
    // (tests/hostile_requests.rs has the trusted case).
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "shop.example.com");
    assert_eq!(
        headers["forwarded"],
        "for=127.0.0.1;proto=http;host=shop.example.com"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_heads_get_431_and_never_reach_the_backend() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.max_header_bytes = 8192;
    let sluice = TestSluice::start(&config).await;
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    let status = raw_status(sluice.proxy_addr(), big.as_bytes()).await;
    assert!(status.starts_with("HTTP/1.1 431"), "{status}");
    let malformed = raw_status(sluice.proxy_addr(), b"GET / HTTP/1.1\r\nbad header\r\n\r\n").await;
    assert!(malformed.starts_with("HTTP/1.1 400"), "{malformed}");
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_slow_to_send_its_head_is_cut_off() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.header_timeout = Duration::from_millis(300);
    let sluice = TestSluice::start(&config).await;
    let mut socket = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    socket
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => continue, // the 408 comes first (silent.rs checks it)
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the connection was not closed");
    assert_eq!(backend.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_queued_requests_and_lets_in_flight_ones_finish() {
    let backend = Backend::start(Duration::from_millis(400)).await;
    let mut config = config(&[backend.addr]);
    config.upstreams.get_mut("api").unwrap().max_inflight = std::num::NonZeroUsize::new(1).unwrap();
    config.routes = vec![route("main", "/", None, 10, Duration::from_secs(10))];
    let mut sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/", sluice.proxy_addr());
    assert_eq!(
        get(&client, &format!("http://{}/readyz", sluice.admin_addr()))
            .await
            .status,
        StatusCode::OK
    );

    let in_flight = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move { get(&client, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let queued = tokio::spawn({
        let client = client.clone();
        let url = url.clone();
        async move { get(&client, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    sluice.shutdown().await;

    assert_eq!(in_flight.await.unwrap().status, StatusCode::OK);
    let queued = queued.await.unwrap();
    assert_eq!(queued.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(queued.retry_after.is_some());
    assert_eq!(backend.count(), 1);
    assert!(
        TcpStream::connect(sluice.proxy_addr()).await.is_err(),
        "still accepting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_expose_configured_limits_and_build_info() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = config(&[backend.addr]);
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let text = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(
        samples(&text, "sluice_route_rate_limit")["route=\"main\""],
        100.0
    );
    assert_eq!(samples(&text, "sluice_route_burst")["route=\"main\""], 10.0);
    assert_eq!(
        samples(&text, "sluice_route_queue_capacity")["route=\"main\""],
        1000.0
    );
    assert_eq!(
        samples(&text, "sluice_route_queue_timeout_seconds")["route=\"main\""],
        10.0
    );
    assert_eq!(
        samples(&text, "sluice_upstream_max_inflight")["upstream=\"api\""],
        1000.0
    );
    assert_eq!(samples(&text, "sluice_build_info").len(), 1);
    for name in [
        "sluice_queue_depth",
        "sluice_queue_oldest_wait_seconds",
        "sluice_upstream_inflight",
    ] {
        assert!(text.contains(name), "{name} missing");
    }
    assert_eq!(
        get(&client, &format!("http://{}/healthz", sluice.admin_addr()))
            .await
            .status,
        StatusCode::OK
    );
    // Wait-time and latency histograms appear once observed.
    get(&client, &format!("http://{}/", sluice.proxy_addr())).await;
    let text = scrape(&client, sluice.admin_addr()).await;
    assert!(text.contains("sluice_queue_wait_seconds_bucket"));
    assert!(text.contains("sluice_upstream_response_seconds_bucket"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_bytes_get_413_and_are_not_forwarded() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.max_body_bytes = 1000;
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/upload", sluice.proxy_addr());

    // Known length: refused before it takes a place in the queue.
    let big = Request::post(&url)
        .body(Full::new(Bytes::from(vec![b'x'; 1001])))
        .unwrap();
    assert_eq!(
        send(&client, big).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
    assert_eq!(backend.count(), 0);
    // At the limit: forwarded whole.
    let fits = Request::post(&url)
        .body(Full::new(Bytes::from(vec![b'x'; 1000])))
        .unwrap();
    let seen = send(&client, fits).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.body.len(), 1000);

    // Unknown length (chunked): cut off where it goes over, answered 413.
    let chunk = "y".repeat(600);
    let chunked = format!(
        "POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n\
         258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let answer = raw_exchange(sluice.proxy_addr(), chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    assert_eq!(
        outcomes(&client, sluice.admin_addr(), "main").await,
        BTreeMap::from([
            ("forwarded".to_string(), 1),
            ("rejected_invalid".to_string(), 2)
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_open_proxy_connect_is_refused_and_absolute_targets_stay_here() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = config(&[backend.addr]);
    let sluice = TestSluice::start(&config).await;

    let connect = raw_status(
        sluice.proxy_addr(),
        b"CONNECT evil.example:443 HTTP/1.1\r\nhost: evil.example:443\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    assert_eq!(backend.count(), 0);

    // An absolute-form target goes to this route's backend, in origin form.
    let absolute = raw_status(
        sluice.proxy_addr(),
        b"GET http://evil.example/steal?x=1 HTTP/1.1\r\nhost: evil.example\r\n\r\n",
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 200"), "{absolute}");
    let arrivals = backend.arrivals();
    assert_eq!(arrivals.len(), 1);
    assert_eq!(arrivals[0].path, "/steal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_smuggles_nothing() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = config(&[backend.addr]);
    let sluice = TestSluice::start(&config).await;
    // Transfer-Encoding wins (RFC 9112 §6.3): the body is the empty chunked
    // one, and the connection closes after the answer, so the bytes after it
    // are never read as a second request.
    let answer = raw_exchange(
        sluice.proxy_addr(),
        b"POST /first HTTP/1.1\r\nhost: x\r\ncontent-length: 44\r\ntransfer-encoding: chunked\r\n\r\n\
          0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
    let paths: Vec<String> = backend.arrivals().into_iter().map(|a| a.path).collect();
    assert_eq!(paths, ["/first"]);
    // Conflicting lengths, and Transfer-Encoding on HTTP/1.0 or not chunked: 400.
    for bad in [
        &b"POST /a HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nab"[..],
        b"POST /a HTTP/1.0\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST /a HTTP/1.1\r\nhost: x\r\ntransfer-encoding: gzip\r\n\r\n",
    ] {
        let status = raw_status(sluice.proxy_addr(), bad).await;
        assert!(status.starts_with("HTTP/1.1 400"), "{status}");
    }
    assert_eq!(backend.count(), 1);
}

/// A backend that misbehaves on every connection in one way.
async fn faulty_backend(fault: &'static str) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let _ = stream.read(&mut buf).await;
                match fault {
                    "garbage" => {
                        let _ = stream.write_all(b"THIS IS NOT HTTP\r\n\r\n").await;
                    }
                    "reset" => {
                        // Close with a RST rather than a FIN.
                        let _ = stream.set_zero_linger();
                    }
                    "truncated" => {
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly a part")
                            .await;
                    }
                    _ => {
                        // "hang": keep the connection, never answer.
                        tokio::time::sleep(Duration::from_secs(30)).await;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misbehaving_backend_gets_502_or_504_and_sluice_recovers() {
    let _serial = serial().await;
    for (fault, expected) in [
        ("garbage", StatusCode::BAD_GATEWAY),
        ("reset", StatusCode::BAD_GATEWAY),
        ("hang", StatusCode::GATEWAY_TIMEOUT),
    ] {
        let addr = faulty_backend(fault).await;
        let mut config = config(&[addr]);
        config.upstreams.get_mut("api").unwrap().timeout = Duration::from_millis(300);
        config.routes = vec![route("main", "/", None, 10, Duration::from_secs(1))];
        let sluice = TestSluice::start(&config).await;
        let client = client();
        let url = format!("http://{}/", sluice.proxy_addr());
        for _ in 0..3 {
            assert_eq!(get(&client, &url).await.status, expected, "{fault}");
        }
        assert_eq!(
            outcomes(&client, sluice.admin_addr(), "main").await,
            BTreeMap::from([("upstream_error".to_string(), 3)]),
            "{fault}"
        );
        // The backend is fixed (a good one takes over the route): served again.
        let good = Backend::start(Duration::ZERO).await;
        sluice.reload(&crate::common::config(&[good.addr]));
        assert_eq!(get(&client, &url).await.status, StatusCode::OK, "{fault}");
    }
    // A response cut short after its head: the client sees the status, then
    // an error in the body; it is counted once, as forwarded.
    let addr = faulty_backend("truncated").await;
    let sluice = TestSluice::start(&config(&[addr])).await;
    let client = client();
    let response = client
        .get(format!("http://{}/", sluice.proxy_addr()).parse().unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        http_body_util::BodyExt::collect(response.into_body())
            .await
            .is_err()
    );
    assert_eq!(
        outcomes(&client, sluice.admin_addr(), "main").await,
        BTreeMap::from([("forwarded".to_string(), 1)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_doubled_or_malformed_host_gets_400() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = config(&[backend.addr]);
    let sluice = TestSluice::start(&config).await;
    for bad in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: a.example\r\nhost: b.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: user@a.example\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: a.example/path\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: \r\n\r\n",
    ] {
        let status = raw_status(sluice.proxy_addr(), bad).await;
        assert!(
            status.starts_with("HTTP/1.1 400"),
            "{status} for {}",
            String::from_utf8_lossy(bad)
        );
    }
    // HTTP/1.0 may leave Host out; a port is fine.
    for good in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nhost: a.example:8080\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: [::1]:8080\r\n\r\n",
    ] {
        let status = raw_status(sluice.proxy_addr(), good).await;
        assert!(
            status.contains(" 200 "),
            "{status} for {}",
            String::from_utf8_lossy(good)
        );
    }
    assert_eq!(backend.count(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_request_lines_and_header_bytes_get_400_and_reach_nobody() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = config(&[backend.addr]);
    let sluice = TestSluice::start(&config).await;
    for bad in [
        &b"GET /\r\n\r\n"[..],
        b"GET / HTTP/1.1 extra\r\nhost: x\r\n\r\n",
        b"GET / HTTP/9.9\r\nhost: x\r\n\r\n",
        b"G\x01T / HTTP/1.1\r\nhost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nbad name: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\nx-ctl: a\x01b\r\n\r\n",
        b"GET / HTTP/1.1\r\nhost: x\r\ncontent-length: -1\r\n\r\n",
    ] {
        let answer = raw_exchange(sluice.proxy_addr(), bad).await;
        assert!(
            answer.starts_with("HTTP/1.1 400"),
            "{answer:?} for {:?}",
            String::from_utf8_lossy(bad)
        );
    }
    assert_eq!(backend.count(), 0);
    // sluice is unharmed.
    let client = client();
    let ok = get(&client, &format!("http://{}/", sluice.proxy_addr())).await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_header_timeout() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.header_timeout = Duration::from_millis(300);
    let sluice = TestSluice::start(&config).await;
    let mut socket = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    get_kept_alive(&mut socket).await;
    // Idle now: closed by sluice (end of stream), not held for ever.
    assert_closed_within(&mut socket, Duration::from_secs(5)).await;
}

/// One GET on a keep-alive connection, answered 200 (in one read: the
/// backend's answer is short).
async fn get_kept_alive(socket: &mut TcpStream) {
    socket
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0; 1024];
    let n = socket.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// The connection ends (end of stream, no byte more) within `bound`.
async fn assert_closed_within(socket: &mut TcpStream, bound: Duration) {
    let mut buf = vec![0; 64];
    let n = tokio::time::timeout(bound, socket.read(&mut buf))
        .await
        .expect("closed within the bound")
        .unwrap_or(0);
    assert_eq!(n, 0, "closed without another byte");
}

/// A keep-alive connection waiting for its next request is closed as soon
/// as shutdown is asked for: its wait for shutdown stays armed across the
/// requests it served (it is not polled on every wake-up), and still wakes
/// it. Not after `header_timeout` (here 60 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_at_once_on_shutdown() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.header_timeout = Duration::from_secs(60);
    let mut sluice = TestSluice::start(&config).await;
    let mut sockets = Vec::new();
    for _ in 0..4 {
        let mut socket = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
        for _ in 0..3 {
            get_kept_alive(&mut socket).await;
        }
        sockets.push(socket);
    }
    let asked = std::time::Instant::now();
    sluice.begin_shutdown();
    for mut socket in sockets {
        // On shutdown, not after header_timeout.
        assert_closed_within(&mut socket, Duration::from_secs(5)).await;
    }
    assert!(asked.elapsed() < Duration::from_secs(5));
    sluice.wait_stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_carry_no_client_data() {
    use sluice::config::{KeyLimitConfig, KeyPart};
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    config.routes[0].key = vec![KeyPart::Header("x-api-key".parse().unwrap())];
    config.routes[0].key_limit = Some(KeyLimitConfig {
        rate: 1.0,
        burst: std::num::NonZeroU32::new(1).unwrap(),
        max_keys: std::num::NonZeroUsize::new(100).unwrap(),
        dry_run: false,
    });
    let sluice = TestSluice::start(&config).await;
    let client = client();
    let url = format!("http://{}/private/path-7f3a", sluice.proxy_addr());
    for _ in 0..3 {
        let req = get_request(
            &url,
            &[
                ("x-api-key", "secret-key-9d2c"),
                ("x-forwarded-for", "203.0.113.77"),
                ("x-request-id", "req-id-5e1b"),
            ],
        );
        send(&client, req).await;
    }
    let text = scrape(&client, sluice.admin_addr()).await;
    assert!(text.contains("sluice_requests_total"), "metrics rendered");
    for private in [
        "secret-key-9d2c",
        "203.0.113.77",
        "path-7f3a",
        "req-id-5e1b",
    ] {
        assert!(!text.contains(private), "{private} leaked into /metrics");
    }
}
