//! Hostile and broken clients on the forward path: what they do is their own
//! outcome, never the backend's. Bodies that are malformed, cut off, too
//! large or too slow never count against a target; slow senders and clients
//! that never read hold no in-flight slot; an HTTP/2 stream reset before its
//! request reached a backend is cancelled, not forwarded.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upstream errors of any kind, and target errors, for upstream `api`.
fn blamed(text: &str) -> f64 {
    sum_of(text, "sluice_upstream_errors_total", &["upstream=\"api\""])
        + sum_of(text, "sluice_target_errors_total", &["upstream=\"api\""])
}

fn healthy(text: &str) -> f64 {
    sum_of(text, "sluice_target_healthy", &["upstream=\"api\""])
}

fn total(outcomes: &std::collections::BTreeMap<String, u64>) -> u64 {
    outcomes.values().sum()
}

/// Waits until route `main` has counted `n` outcomes; returns them.
async fn outcomes_at(
    client: &TestClient,
    admin: SocketAddr,
    n: u64,
) -> std::collections::BTreeMap<String, u64> {
    let mut seen = outcomes(client, admin, "main").await;
    for _ in 0..500 {
        if total(&seen) >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        seen = outcomes(client, admin, "main").await;
    }
    seen
}

/// A POST whose chunked body has a chunk size line that is not hex.
const BAD_CHUNK: &[u8] =
    b"POST /bad HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n";

/// Defect 1: five of each broken body, on a default route (passive health
/// ejects after five failures), with bodies read before admission and with
/// every body streamed. None may touch the target's health or error counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_are_the_clients_outcome_and_never_eject_the_target() {
    for buffer in [16 * 1024, 0] {
        let backend = Backend::start(Duration::ZERO).await;
        let mut config = config(&[backend.addr]);
        config.server.max_body_bytes = 1000;
        config.server.request_buffer_bytes = buffer;
        let sluice = TestSluice::start(&config).await;
        let addr = sluice.proxy_addr();
        let client = client();

        for _ in 0..5 {
            // A chunk size line that is not hex: 400.
            assert_eq!(
                raw_request(addr, BAD_CHUNK).await,
                Some(400),
                "buffer {buffer}"
            );

            // Content-Length 100, 10 bytes, then the client is gone.
            let mut socket = TcpStream::connect(addr).await.unwrap();
            socket
                .write_all(
                    b"POST /cut HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789",
                )
                .await
                .unwrap();
            drop(socket);

            // A chunked body growing past max_body_bytes (1000): 413.
            let chunk = format!("400\r\n{}\r\n", "a".repeat(0x400));
            let mut req =
                b"POST /big HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            req.extend_from_slice(chunk.as_bytes());
            req.extend_from_slice(chunk.as_bytes());
            assert_eq!(raw_request(addr, &req).await, Some(413), "buffer {buffer}");
        }

        let seen = outcomes_at(&client, sluice.admin_addr(), 15).await;
        assert_eq!(
            seen.get("rejected_invalid"),
            Some(&10),
            "buffer {buffer}: {seen:?}"
        );
        assert_eq!(
            seen.get("upstream_error"),
            None,
            "buffer {buffer}: {seen:?}"
        );
        assert_eq!(total(&seen), 15, "buffer {buffer}: {seen:?}");
        let text = scrape(&client, sluice.admin_addr()).await;
        assert_eq!(blamed(&text), 0.0, "buffer {buffer}: the target was blamed");
        assert_eq!(
            healthy(&text),
            1.0,
            "buffer {buffer}: the target was ejected"
        );
        let seen = get(&client, &format!("http://{addr}/after")).await;
        assert_eq!(seen.status, StatusCode::OK, "buffer {buffer}");
    }
}

/// Defect 2a: four clients sending a 30-byte body a byte at a time hold no
/// in-flight slot while they send: with `max_inflight = 4`, a fifth is
/// served at once (before, it waited past its 1 s queue timeout for one of
/// the four slots and got 503). The slow ones are served once their bodies
/// are in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_senders_hold_no_inflight_slot() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.upstreams.get_mut("api").unwrap().max_inflight = NonZeroUsize::new(4).unwrap();
    config.routes = vec![route("main", "/", None, 100, Duration::from_secs(1))];
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();
    let client = client();

    let slow: Vec<_> = (0..4)
        .map(|_| {
            tokio::spawn(async move {
                let mut socket = TcpStream::connect(addr).await.unwrap();
                socket
                    .write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n")
                    .await
                    .unwrap();
                for _ in 0..30 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    socket.write_all(b"x").await.unwrap();
                }
                read_status(&mut socket).await
            })
        })
        .collect();
    // All four are connected and sending.
    until_metrics(&client, sluice.admin_addr(), |text| {
        sum_of(text, "sluice_connections_open", &[]) >= 4.0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let req = Request::post(format!("http://{addr}/fast"))
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let seen = send(&client, req).await;
    assert_eq!(
        seen.status,
        StatusCode::OK,
        "a slot was free for the fast client"
    );
    assert!(
        slow.iter().all(|task| !task.is_finished()),
        "the slow clients were still sending"
    );
    for task in slow {
        assert_eq!(task.await.unwrap(), Some(200));
    }
    let text = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(blamed(&text), 0.0);
}

/// Defect 2a: a client that stops sending its body gets 408 after
/// `client_body_timeout` — a small body before admission, a large one while
/// it streams to the backend — and it is never the target's failure (before,
/// the large one waited out the upstream timeout and counted as a backend
/// timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_408_and_the_target_is_not_blamed() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.server.client_body_timeout = Duration::from_millis(200);
    config.upstreams.get_mut("api").unwrap().timeout = Duration::from_secs(2);
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();
    let client = client();

    let stalled = |head: String, sent: usize| async move {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket.write_all(head.as_bytes()).await.unwrap();
        socket.write_all(&vec![b'x'; sent]).await.unwrap();
        // The socket stays open: the client is slow, not gone.
        read_status(&mut socket).await
    };
    for _ in 0..5 {
        let small = "POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n".to_string();
        assert_eq!(stalled(small, 10).await, Some(408));
        let large = "POST /large HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".to_string();
        assert_eq!(stalled(large, 20_000).await, Some(408));
    }
    let seen = outcomes_at(&client, sluice.admin_addr(), 10).await;
    assert_eq!(seen.get("rejected_invalid"), Some(&10), "{seen:?}");
    let text = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(blamed(&text), 0.0, "the target was blamed");
    assert_eq!(healthy(&text), 1.0);
    assert_eq!(
        get(&client, &format!("http://{addr}/after")).await.status,
        StatusCode::OK
    );
}

/// A large body still being sent (steadily, but slowly) when the upstream
/// timeout passes is the client's delay: 408, not a backend timeout (504).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_timeout_during_a_slow_upload_is_the_clients() {
    let backend = Backend::start(Duration::ZERO).await;
    let mut config = config(&[backend.addr]);
    config.upstreams.get_mut("api").unwrap().timeout = Duration::from_millis(300);
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();
    let client = client();

    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket
        .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let (mut read, mut write) = socket.into_split();
    let writer = tokio::spawn(async move {
        // 1000 bytes every 50 ms: 5 s for the whole body, if let.
        for _ in 0..100 {
            if write.write_all(&[b'x'; 1000]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    writer.abort();
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 408"), "{head}");
    let text = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(blamed(&text), 0.0, "the target was blamed");
}

/// A backend that answers `/big...` with `size` bytes and anything else with
/// "ok"; counts the requests for `/big...` it has started answering.
async fn big_backend(size: usize) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let big = Bytes::from(vec![b'z'; size]);
    let started = Arc::new(AtomicUsize::new(0));
    let counted = started.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (big, counted) = (big.clone(), counted.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    let body = if req.uri().path().starts_with("/big") {
                        counted.fetch_add(1, Ordering::SeqCst);
                        big.clone()
                    } else {
                        Bytes::from_static(b"ok")
                    };
                    async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, started)
}

/// Defect 2b: clients that ask for 16 MiB and never read it hold their
/// slots for `send_timeout`, not for as long as they like: with
/// `max_inflight = 2` and two such clients, a third request is served
/// (before, it waited out its 3 s queue timeout: 503). A client that does
/// read gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_release_their_slots() {
    const SIZE: usize = 16 << 20;
    let (backend, big_started) = big_backend(SIZE).await;
    let mut config = config(&[backend]);
    config.server.send_timeout = Duration::from_millis(200);
    config.log.access_log = true;
    let log = log_capture();
    config.upstreams.get_mut("api").unwrap().max_inflight = NonZeroUsize::new(2).unwrap();
    config.routes = vec![route("main", "/", None, 100, Duration::from_secs(3))];
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();
    let client = client();

    // A reader gets the whole body through the relay.
    let seen = get(&client, &format!("http://{addr}/big")).await;
    assert_eq!(seen.status, StatusCode::OK);
    assert_eq!(seen.body.len(), SIZE);

    let mut idle = Vec::new();
    for _ in 0..2 {
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(b"GET /big-unread HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        idle.push(socket); // never read
    }
    for _ in 0..500 {
        if big_started.load(Ordering::SeqCst) >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(big_started.load(Ordering::SeqCst), 3);

    let seen = get(&client, &format!("http://{addr}/small")).await;
    assert_eq!(seen.status, StatusCode::OK, "a slot was freed");
    let text = until_metrics(&client, sluice.admin_addr(), |text| {
        sum_of(text, "sluice_upstream_inflight", &["upstream=\"api\""]) == 0.0
    })
    .await;
    assert_eq!(
        sum_of(&text, "sluice_upstream_inflight", &["upstream=\"api\""]),
        0.0
    );
    assert_eq!(blamed(&text), 0.0);
    let seen = outcomes(&client, sluice.admin_addr(), "main").await;
    assert_eq!(seen.get("forwarded"), Some(&4), "{seen:?}");
    // Forwarded, and logged as the client's: 499.
    let lines = log.wait_for("/big-unread", 2).await;
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        assert_eq!(line["outcome"], "forwarded", "{line}");
        assert_eq!(line["status"], 499, "{line}");
    }
    assert_eq!(log.for_path("/big")[0]["status"], 200);
    drop(idle);
}

/// An HTTP/2 connection to sluice (prior knowledge).
async fn h2_client(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

fn h2_get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap()
}

/// Metric defect: an HTTP/2 stream reset after admission but before its
/// request reached a backend connection (here: waiting for the target's own
/// `max_inflight = 1`) is cancelled — it was never forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_reset_before_reaching_the_backend_is_cancelled() {
    let backend = Backend::start(Duration::from_millis(1500)).await;
    let mut config = config(&[backend.addr]);
    config.upstreams.get_mut("api").unwrap().targets[0].max_inflight = NonZeroUsize::new(1);
    config.log.access_log = true;
    let log = log_capture();
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();
    let client = client();

    // The target's one slot is taken.
    let first = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, &format!("http://{addr}/first")).await })
    };
    for _ in 0..500 {
        if backend.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(backend.count(), 1, "the first holds the target");
    // The second is admitted (its queue wait observed) and waits for the target.
    // The connection stays open (this handle outlives the request): only
    // the stream is reset. (Were the last handle dropped, the client would
    // close the connection gracefully, waiting for the response.)
    let h2 = h2_client(addr).await;
    let mut sender = h2.clone();
    let second = tokio::spawn(async move {
        let response = sender.send_request(h2_get(addr, "/h2-reset-early")).await;
        response.map(|r| r.status())
    });
    until_metrics(&client, sluice.admin_addr(), |text| {
        sum_of(text, "sluice_queue_wait_seconds_count", &["route=\"main\""]) >= 2.0
    })
    .await;
    assert_eq!(backend.count(), 1, "the second has not reached the backend");
    second.abort(); // drops the response future: the stream is reset

    let seen = outcomes_at(&client, sluice.admin_addr(), 1).await;
    assert_eq!(seen.get("cancelled"), Some(&1), "{seen:?}");
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    let seen = outcomes_at(&client, sluice.admin_addr(), 2).await;
    assert_eq!(seen.get("forwarded"), Some(&1), "{seen:?}");
    assert_eq!(total(&seen), 2, "{seen:?}");
    assert_eq!(backend.count(), 1, "the reset request was never sent");
    let lines = log.wait_for("/h2-reset-early", 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "cancelled");
    assert_eq!(lines[0]["status"], 499);
    drop(h2);
}

/// The other side of it: reset once the backend has the request, it was
/// forwarded (the access log says 499), and only once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_stream_reset_after_reaching_the_backend_is_forwarded() {
    let backend = Backend::start(Duration::from_millis(1500)).await;
    let mut config = config(&[backend.addr]);
    config.log.access_log = true;
    let log = log_capture();
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();
    let client = client();

    // The connection stays open (this handle outlives the request): only
    // the stream is reset. (Were the last handle dropped, the client would
    // close the connection gracefully, waiting for the response.)
    let h2 = h2_client(addr).await;
    let mut sender = h2.clone();
    let request = tokio::spawn(async move {
        let response = sender.send_request(h2_get(addr, "/h2-reset-late")).await;
        response.map(|r| r.status())
    });
    for _ in 0..500 {
        if backend.count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(backend.count(), 1);
    request.abort();
    let seen = outcomes_at(&client, sluice.admin_addr(), 1).await;
    assert_eq!(seen.get("forwarded"), Some(&1), "{seen:?}");
    assert_eq!(total(&seen), 1, "{seen:?}");
    let text = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(blamed(&text), 0.0);
    let lines = log.wait_for("/h2-reset-late", 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["outcome"], "forwarded");
    assert_eq!(lines[0]["status"], 499);
    drop(h2);
}

/// An HTTP/2 (h2c) backend that reads each request's body and answers "ok".
async fn h2_backend() -> SocketAddr {
    h2c_backend(|req: Request<Incoming>| async move {
        let _body = http_body_util::BodyExt::collect(req.into_body()).await;
        Response::new(Full::new(Bytes::from_static(b"ok")))
    })
    .await
}

/// To an HTTP/2 upstream a failed body surfaces only as a stream reset, not
/// as the body's own error: it is still told apart (by the body's watch),
/// and still the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_bodies_to_an_http2_upstream_are_still_the_clients() {
    let backend = h2_backend().await;
    let mut config = config(&[backend]);
    config.upstreams.get_mut("api").unwrap().http2 = true;
    config.server.request_buffer_bytes = 0;
    config.server.client_body_timeout = Duration::from_millis(200);
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();
    let client = client();
    assert_eq!(
        get(&client, &format!("http://{addr}/up")).await.status,
        StatusCode::OK
    );

    for _ in 0..5 {
        assert_eq!(raw_request(addr, BAD_CHUNK).await, Some(400));
        let mut socket = TcpStream::connect(addr).await.unwrap();
        socket
            .write_all(b"POST /stall HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        assert_eq!(read_status(&mut socket).await, Some(408));
    }
    let seen = outcomes_at(&client, sluice.admin_addr(), 11).await;
    assert_eq!(seen.get("rejected_invalid"), Some(&10), "{seen:?}");
    let text = scrape(&client, sluice.admin_addr()).await;
    assert_eq!(blamed(&text), 0.0, "the target was blamed");
    assert_eq!(healthy(&text), 1.0);
    assert_eq!(
        get(&client, &format!("http://{addr}/after")).await.status,
        StatusCode::OK
    );
}

/// A backend that accepts connections and never reads from them or answers.
async fn deaf_backend() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

/// The converse: a backend that stops taking a body the client sends
/// briskly is the backend's timeout (504, counted against it), not the
/// client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_stops_taking_the_body_is_the_backends_timeout() {
    let backend = deaf_backend().await;
    let mut config = config(&[backend]);
    config.upstreams.get_mut("api").unwrap().timeout = Duration::from_millis(300);
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();
    let client = client();

    let mut socket = TcpStream::connect(addr).await.unwrap();
    let size = 1_000_000;
    socket
        .write_all(
            format!("POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let (mut read, mut write) = socket.into_split();
    let writer = tokio::spawn(async move {
        let _ = write.write_all(&vec![b'x'; size]).await;
        write
    });
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), read.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => head.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    writer.abort();
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    let seen = outcomes_at(&client, sluice.admin_addr(), 1).await;
    assert_eq!(seen.get("upstream_error"), Some(&1), "{seen:?}");
}

/// A client that reads a large response slowly but steadily (here at most
/// 16 KiB every 10 ms through a small receive buffer) is not taken for one that
/// stopped reading: the response is handed over in pieces, each within
/// `send_timeout`, and it gets every byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_reader_gets_the_whole_response() {
    const SIZE: usize = 512 << 10;
    let (backend, _) = big_backend(SIZE).await;
    let mut config = config(&[backend]);
    config.server.send_timeout = Duration::from_millis(300);
    let sluice = TestSluice::start(&config).await;

    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut socket = socket.connect(sluice.proxy_addr()).await.unwrap();
    socket
        .write_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut received = Vec::with_capacity(SIZE + 1024);
    let mut buf = vec![0u8; 16 * 1024];
    for _ in 0..10_000 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        match tokio::time::timeout(Duration::from_secs(10), socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => received.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    let head_end = received
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head")
        + 4;
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert_eq!(received.len() - head_end, SIZE, "every byte arrived");
}

/// Whatever path a body takes — read whole before admission, streamed after
/// a prefix was read, or streamed from the start — the backend gets every
/// byte, in order (the test backend echoes the body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_reach_the_backend_intact() {
    let backend = Backend::start(Duration::ZERO).await;
    let config = config(&[backend.addr]);
    let sluice = TestSluice::start(&config).await;
    let addr = sluice.proxy_addr();
    let client = client();

    let pattern = |n: usize| -> Bytes { (0..n).map(|i| (i % 251) as u8).collect() };
    // By Content-Length: under, at and over the 16 KiB read before admission.
    for size in [10, 16 * 1024, 16 * 1024 + 1, 300_000] {
        let body = pattern(size);
        let req = Request::post(format!("http://{addr}/echo"))
            .body(Full::new(body.clone()))
            .unwrap();
        let seen = send(&client, req).await;
        assert_eq!(seen.status, StatusCode::OK, "{size}");
        assert!(seen.body == body, "{size} bytes came back changed");
    }
    // Chunked, growing past 16 KiB after the first pieces were read.
    let body = pattern(48 * 1024);
    let mut req =
        b"POST /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for piece in body.chunks(12 * 1024) {
        req.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        req.extend_from_slice(piece);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut socket = TcpStream::connect(addr).await.unwrap();
    socket.write_all(&req).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    assert!(response.starts_with(b"HTTP/1.1 200"));
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(response.len() - head_end, body.len());
    assert!(response[head_end..] == body[..]);
}
