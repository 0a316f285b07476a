//! The upstream's `read_timeout` (NGINX's `proxy_read_timeout`): a backend
//! that stalls in the middle of its response body is cut off after that long
//! without a byte, on the small-response path (read whole) and on the
//! streaming path alike — the client's response ends with an error, the
//! upstream connection is closed, the in-flight slot is free again and the
//! upstream and target count a timeout — while a backend that sends its body
//! slowly but steadily is relayed whole, however long the whole body takes.
//! Both the own HTTP/1 codec's bodies and hyper's (an HTTP/2 upstream).
//!
//! The sluice under test runs on its own runtime and real sockets, so the
//! clock is the wall clock: a stall is cut no earlier than `read_timeout`
//! (exact), and within a generous bound (a loaded box).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::common::scripted::{Reply, ScriptedBackend};
use crate::common::*;

/// A stall is cut after this.
const READ_TIMEOUT: Duration = Duration::from_millis(200);
/// Far above `READ_TIMEOUT`, far below "never".
const BOUND: Duration = Duration::from_secs(5);

/// One worker, one upstream slot (`max_inflight = 1`), and `read_timeout`.
fn config_for(backend: SocketAddr, read_timeout: Duration) -> sluice::Config {
    let mut config = config(&[backend]);
    config.server.workers = Some(1);
    let api = config.upstreams.get_mut("api").unwrap();
    api.max_inflight = NonZeroUsize::new(1).unwrap();
    api.read_timeout = read_timeout;
    config
}

/// A backend whose `/stall` answers are `stall` (after which it sends
/// nothing more, the connection open); anything else gets `ok`.
async fn stalling_backend(stall: &'static [u8]) -> ScriptedBackend {
    ScriptedBackend::start(move |_, head| {
        if head.starts_with("GET /stall") {
            Reply::keep(stall)
        } else {
            Reply::keep(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        }
    })
    .await
}

fn get_path(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    get_request(&format!("http://{addr}{path}"), &[])
}

/// The body's data frames until its end or error: the bytes, and whether it
/// ended cleanly. Panics if it takes longer than [`BOUND`].
async fn read_body(body: Incoming) -> (Vec<u8>, bool) {
    let mut body = body;
    let mut data = Vec::new();
    let reading = async {
        loop {
            match body.frame().await {
                None => return true,
                Some(Err(_)) => return false,
                Some(Ok(frame)) => {
                    if let Ok(bytes) = frame.into_data() {
                        data.extend_from_slice(&bytes);
                    }
                }
            }
        }
    };
    let clean = tokio::time::timeout(BOUND, reading)
        .await
        .expect("the body ends (cleanly or not) within the bound");
    (data, clean)
}

/// Checks what a stalled response leaves behind: the slot is free (the next
/// request, with one slot, is served at once), the stalled connection was
/// closed, not reused, and one timeout is counted against the upstream and
/// its target.
async fn after_a_stall(sluice: &TestSluice, backend: &ScriptedBackend) {
    let client = client();
    let next = tokio::time::timeout(BOUND, send(&client, get_path(sluice.proxy_addr(), "/next")))
        .await
        .expect("the slot is free again");
    assert_eq!(next.status, StatusCode::OK);
    assert_eq!(next.body, "ok");
    backend.closed(1).await;
    assert_eq!(
        backend.connections(),
        2,
        "the stalled connection is not reused"
    );
    let text = scrape(&client, sluice.admin_addr()).await;
    let errors = samples(&text, "sluice_upstream_errors_total");
    assert_eq!(
        errors["kind=\"timeout\",upstream=\"api\""], 1.0,
        "{errors:?}"
    );
    assert_eq!(errors["kind=\"other\",upstream=\"api\""], 0.0, "{errors:?}");
    let target = format!("target=\"{}\",upstream=\"api\"", backend.addr);
    assert_eq!(samples(&text, "sluice_target_errors_total")[&target], 1.0);
    assert_eq!(
        outcomes(&client, sluice.admin_addr(), "main").await,
        std::collections::BTreeMap::from([("forwarded".to_string(), 2)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_that_stalls_is_cut_off_after_read_timeout() {
    let backend =
        stalling_backend(b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789").await;
    let mut config = config_for(backend.addr, READ_TIMEOUT);
    config.log.access_log = true;
    let log = log_capture();
    let sluice = TestSluice::start(&config).await;
    cut_off_get(&sluice, "/stall-small").await;
    after_a_stall(&sluice, &backend).await;
    // The access log says what it says for any body that broke off: the
    // backend's status, forwarded. The warning names route and upstream.
    let lines = log.wait_for("/stall-small", 1).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 200);
    assert_eq!(lines[0]["outcome"], "forwarded");
    let warned = log.containing("stalled mid-body");
    assert!(
        warned
            .iter()
            .any(|l| l.contains("\"route\":\"main\"") && l.contains("\"upstream\":\"api\"")),
        "{warned:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_body_that_stalls_is_cut_off_after_read_timeout() {
    let backend =
        stalling_backend(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n")
            .await;
    let sluice = TestSluice::start(&config_for(backend.addr, READ_TIMEOUT)).await;
    let data = cut_off_get(&sluice, "/stall-chunked").await;
    assert_eq!(data, b"hello", "what came before the stall is relayed");
    after_a_stall(&sluice, &backend).await;
}

/// A GET of `path`, whose head comes at once (200) and whose body the
/// backend stalls: the client sees the body cut off, not ended cleanly, no
/// sooner than `READ_TIMEOUT`. Returns what came before the cut.
async fn cut_off_get(sluice: &TestSluice, path: &str) -> Vec<u8> {
    let started = Instant::now();
    let response =
        tokio::time::timeout(BOUND, client().request(get_path(sluice.proxy_addr(), path)))
            .await
            .expect("the head within the bound")
            .expect("sluice answers");
    assert_eq!(response.status(), StatusCode::OK);
    let (data, clean) = read_body(response.into_body()).await;
    let took = started.elapsed();
    assert!(!clean, "the client sees the cut, not a clean end");
    assert!(took >= READ_TIMEOUT, "cut after {took:?}");
    data
}

/// A backend that answers each request with `pieces`, the first at once
/// (the head), each next one `gap` after the one before.
async fn paced_backend(pieces: Vec<Vec<u8>>, gap: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let pieces = pieces.clone();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = [0u8; 1024];
                loop {
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    got.clear();
                    for (i, piece) in pieces.iter().enumerate() {
                        if i > 0 {
                            tokio::time::sleep(gap).await;
                        }
                        if stream.write_all(piece).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_body_is_relayed_whole() {
    // Timing-sensitive: a pause of the backend's task longer than the
    // read_timeout would be a (false) stall.
    let _serial = serial().await;
    const PIECES: usize = 12;
    const GAP: Duration = Duration::from_millis(100);
    // The whole body takes 1.2 s, three times the read_timeout; no pause
    // between two pieces comes near it.
    const STEADY_TIMEOUT: Duration = Duration::from_millis(400);
    let small = std::iter::once(format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {PIECES}\r\n\r\n"
    ))
    .chain((0..PIECES).map(|_| "x".to_string()));
    let chunked = std::iter::once("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".into())
        .chain((0..PIECES).map(|_| "1\r\nx\r\n".to_string()))
        .chain(std::iter::once("0\r\n\r\n".to_string()));
    for (name, pieces) in [
        ("small", small.collect::<Vec<_>>()),
        ("chunked", chunked.collect()),
    ] {
        let pieces = pieces.into_iter().map(String::into_bytes).collect();
        let backend = paced_backend(pieces, GAP).await;
        let sluice = TestSluice::start(&config_for(backend, STEADY_TIMEOUT)).await;
        let client = client();
        let started = Instant::now();
        let response = tokio::time::timeout(
            BOUND,
            client.request(get_path(sluice.proxy_addr(), "/steady")),
        )
        .await
        .expect("the head within the bound")
        .expect("sluice answers");
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        let (data, clean) = read_body(response.into_body()).await;
        assert!(clean, "{name}: relayed to its end");
        assert_eq!(data, vec![b'x'; PIECES], "{name}");
        assert!(started.elapsed() >= GAP * PIECES as u32, "{name}");
        let text = scrape(&client, sluice.admin_addr()).await;
        assert_eq!(
            sum_of(&text, "sluice_upstream_errors_total", &["upstream=\"api\""]),
            0.0,
            "{name}"
        );
    }
}

/// A body that sends `hello` and then nothing, for ever.
struct Stalling {
    sent: bool,
}

impl http_body::Body for Stalling {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if std::mem::replace(&mut self.sent, true) {
            return Poll::Pending;
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"hello")))))
    }
}

/// An HTTP/2 (h2c) backend: `/stall-small` says `content-length: 1000` and
/// `/stall` no length, both then send `hello` and stall; anything else gets
/// `ok`.
async fn h2_stalling_backend() -> SocketAddr {
    h2c_backend(|req: Request<Incoming>| async move {
        let path = req.uri().path().to_string();
        let mut response = Response::builder();
        if path == "/stall-small" {
            response = response.header("content-length", "1000");
        }
        let body = if path.starts_with("/stall") {
            Stalling { sent: false }.boxed()
        } else {
            Full::new(Bytes::from_static(b"ok"))
                .map_err(|never| match never {})
                .boxed()
        };
        response.body(body).unwrap()
    })
    .await
}

/// The same through hyper's client (an HTTP/2 upstream), on both paths: the
/// stalled stream is given up (reset), the slot freed, a timeout counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_on_an_http2_upstream_is_cut_off_after_read_timeout() {
    let backend = h2_stalling_backend().await;
    let mut config = config_for(backend, READ_TIMEOUT);
    config.upstreams.get_mut("api").unwrap().http2 = true;
    let sluice = TestSluice::start(&config).await;
    let client = client();
    for (i, path) in ["/stall-small", "/stall"].into_iter().enumerate() {
        let started = Instant::now();
        let response =
            tokio::time::timeout(BOUND, client.request(get_path(sluice.proxy_addr(), path)))
                .await
                .expect("the head within the bound")
                .expect("sluice answers");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let (_, clean) = read_body(response.into_body()).await;
        assert!(!clean, "{path}: the client sees the cut, not a clean end");
        assert!(started.elapsed() >= READ_TIMEOUT, "{path}");
        let next =
            tokio::time::timeout(BOUND, send(&client, get_path(sluice.proxy_addr(), "/next")))
                .await
                .expect("the slot is free again");
        assert_eq!(next.body, "ok", "{path}");
        let text = scrape(&client, sluice.admin_addr()).await;
        let errors = samples(&text, "sluice_upstream_errors_total");
        assert_eq!(
            errors["kind=\"timeout\",upstream=\"api\""],
            (i + 1) as f64,
            "{path}: {errors:?}"
        );
    }
}
