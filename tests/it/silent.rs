//! Connections that say nothing, or stop talking, are closed: within
//! `header_timeout` of accept when no request ever starts (HTTP/1, a partial
//! or a complete HTTP/2 preface, on the proxy and the admin listener), after
//! `idle_timeout` when a connection has no request in progress. And the
//! connection caps: past `max_connections` a new connection is answered 503
//! at once instead of waiting in the kernel's backlog.

use std::time::Duration;

use crate::common::sockets::{GET, H2_PREFACE, closed_within, exchange, read_to_close, silent};
use crate::common::*;
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Short timeouts keep the tests short; "closed" is the property, so the
/// bound on when is generous (a loaded CI box), but far below "never".
const HEADER_TIMEOUT: Duration = Duration::from_millis(200);
const CLOSED_BOUND: Duration = Duration::from_secs(5);

fn short_timeouts(backend: &Backend) -> sluice::Config {
    let mut config = config(&[backend.addr]);
    config.server.header_timeout = HEADER_TIMEOUT;
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_are_closed_after_header_timeout_and_free_their_slots() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = short_timeouts(&backend);
    config.server.max_connections = 50;
    let sluice = TestSluice::start(&config).await;
    let mut sockets = silent(sluice.proxy_addr(), 50).await;
    for socket in &mut sockets {
        let closed = closed_within(socket, CLOSED_BOUND).await;
        let after = closed.expect("a silent connection is closed");
        assert!(after <= CLOSED_BOUND);
    }
    let seen = get(&client(), &format!("http://{}/", sluice.proxy_addr())).await;
    assert_eq!(seen.status, 200, "the slots are free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_http2_preface_is_closed_after_header_timeout() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&short_timeouts(&backend)).await;
    let mut socket = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    socket.write_all(&H2_PREFACE[..10]).await.unwrap();
    let said = read_to_close(&mut socket, CLOSED_BOUND).await;
    assert_eq!(said.as_deref(), Some(&b""[..]), "closed without a word");
}

/// Part of a request head and then nothing: `408` + `Connection: close`
/// and closed, as HAProxy answers; nothing at all (silent since accept, or
/// idle between requests): closed without a word. The same with the head
/// cut short on a keep-alive connection after a first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_cut_short_gets_408_and_a_silent_connection_nothing() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&short_timeouts(&backend)).await;
    let mut partial = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    partial
        .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let mut quiet = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    let mut kept = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    let head = exchange(&mut kept, GET, CLOSED_BOUND).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    kept.write_all(b"GET /next HTTP/1.1\r\nHo").await.unwrap();

    for socket in [&mut partial, &mut kept] {
        let said = read_to_close(socket, CLOSED_BOUND).await;
        let said = String::from_utf8(said.expect("closed after the 408")).unwrap();
        assert!(
            said.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{said}"
        );
        let lower = said.to_ascii_lowercase();
        assert!(lower.contains("\r\nconnection: close\r\n"), "{said}");
        assert!(lower.contains("\r\ncontent-length: 0\r\n"), "{said}");
        assert!(said.ends_with("\r\n\r\n"), "one head, no body: {said}");
    }
    let said = read_to_close(&mut quiet, CLOSED_BOUND).await;
    assert_eq!(said.as_deref(), Some(&b""[..]), "closed without a word");
    assert_eq!(
        backend.count(),
        1,
        "only the complete request was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_that_sends_no_request_is_closed_after_header_timeout() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&short_timeouts(&backend)).await;
    let mut socket = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    socket.write_all(H2_PREFACE).await.unwrap();
    // sluice answers with its SETTINGS; then, with no request, it closes.
    assert!(closed_within(&mut socket, CLOSED_BOUND).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_idle_timeout() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = short_timeouts(&backend);
    config.server.idle_timeout = Duration::from_millis(300);
    let sluice = TestSluice::start(&config).await;
    let tcp = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let request = http::Request::get(format!("http://{}/", sluice.proxy_addr()))
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);
    drop(response);
    // Idle from here: sluice sends GOAWAY and closes; the client's
    // connection task ends.
    let ended = tokio::time::timeout(CLOSED_BOUND, conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection is closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&short_timeouts(&backend)).await;
    let mut socket = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    let head = exchange(&mut socket, GET, CLOSED_BOUND).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        closed_within(&mut socket, CLOSED_BOUND).await.is_some(),
        "an idle keep-alive connection is closed (header_timeout for the next head)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_connections_are_timed_and_capped() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&short_timeouts(&backend)).await;
    let cap = sluice::runtime::ADMIN_MAX_CONNECTIONS;
    let mut sockets = silent(sluice.admin_addr(), cap).await;
    // The cap is full of silent sockets: one more is answered 503 at once.
    let mut extra = TcpStream::connect(sluice.admin_addr()).await.unwrap();
    let head = exchange(
        &mut extra,
        b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n",
        CLOSED_BOUND,
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    for socket in &mut sockets {
        assert!(
            closed_within(socket, CLOSED_BOUND).await.is_some(),
            "a silent admin connection is closed"
        );
    }
    let text = scrape(&client(), sluice.admin_addr()).await;
    assert_eq!(
        samples(&text, "sluice_connections_refused_total")["listener=\"admin\",reason=\"max_connections\""],
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_new_connection_gets_503_at_once() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.max_connections = 2;
    let sluice = TestSluice::start(&config).await;
    let mut first = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    let mut second = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    for socket in [&mut first, &mut second] {
        let head = exchange(socket, GET, CLOSED_BOUND).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    // Both slots are held by keep-alive connections: a third is answered
    // at once (not left in the kernel's backlog), and closed.
    let started = std::time::Instant::now();
    let mut third = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    let head = exchange(&mut third, GET, CLOSED_BOUND).await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered at once"
    );
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    let head = head.to_ascii_lowercase();
    assert!(head.contains("retry-after: 1"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(closed_within(&mut third, CLOSED_BOUND).await.is_some());
    assert_eq!(
        backend.count(),
        2,
        "the refused request never reaches the backend"
    );
    let text = scrape(&client(), sluice.admin_addr()).await;
    assert_eq!(samples(&text, "sluice_connections_open")[""], 2.0);
    assert_eq!(samples(&text, "sluice_connections_max")[""], 2.0);
    assert_eq!(
        samples(&text, "sluice_connections_refused_total")["listener=\"proxy\",reason=\"max_connections\""],
        1.0
    );
    // A slot freed is a slot for the next connection.
    drop(first);
    let mut fourth = None;
    for _ in 0..50 {
        let mut socket = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
        let head = exchange(&mut socket, GET, CLOSED_BOUND).await;
        if head.starts_with("HTTP/1.1 200") {
            fourth = Some(socket);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(fourth.is_some(), "served once a slot is free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_open_counts_only_open_connections() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&config(&[backend.addr])).await;
    let admin = client();
    let open = |text: String| samples(&text, "sluice_connections_open")[""];
    assert_eq!(open(scrape(&admin, sluice.admin_addr()).await), 0.0);
    let mut socket = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    let head = exchange(&mut socket, GET, CLOSED_BOUND).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(open(scrape(&admin, sluice.admin_addr()).await), 1.0);
    drop(socket);
    // The server side notices the close on its next read: poll, bounded.
    let mut now = f64::NAN;
    for _ in 0..100 {
        now = open(scrape(&admin, sluice.admin_addr()).await);
        if now == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(now, 0.0, "no connection open reads 0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_a_tls_connection_is_closed_at_once() {
    let pki = crate::common::pki::Pki::generate("front-door");
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.tls = Some(pki.server_tls());
    config.server.max_connections = 1;
    let sluice = TestSluice::start(&config).await;
    let admin = client();
    // One silent connection holds the only slot (header_timeout is 10 s).
    let _holder = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    let mut open = 0.0;
    for _ in 0..100 {
        open = samples(
            &scrape(&admin, sluice.admin_addr()).await,
            "sluice_connections_open",
        )[""];
        if open == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(open, 1.0);
    // No answer can be written before a handshake: the next is closed.
    let mut extra = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    let closed = closed_within(&mut extra, CLOSED_BOUND).await;
    assert!(
        closed.is_some_and(|after| after < Duration::from_secs(1)),
        "{closed:?}"
    );
    let text = scrape(&admin, sluice.admin_addr()).await;
    assert_eq!(
        samples(&text, "sluice_connections_refused_total")["listener=\"proxy\",reason=\"max_connections\""],
        1.0
    );
}
