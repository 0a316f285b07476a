//! The plain HTTP/1.1 upstream pool: connections are reused, a connection
//! whose response was not read to the end is never reused, a connection the
//! backend closed while idle costs the client nothing, and the idle stack is
//! bounded in count and age.
//!
//! Every pool here keeps one idle stack, whatever the worker count of the
//! sluices that other tests start in this process, so the idle bound it
//! measures is the one it asked for.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::BodyExt;
use sluice::http::request_body::RequestBody;
use sluice::upstream::h1pool::H1Pool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the raw backend answers each request on a connection.
#[derive(Clone, Copy)]
enum Manner {
    /// `200 ok`, keep-alive.
    KeepAlive,
    /// `200 ok`, then closes the connection without saying so.
    CloseSilently,
    /// A chunked body whose first chunk comes at once and the rest never.
    Stall,
    /// `200` with the request line as the body.
    EchoLine,
}

/// A backend on a raw socket, counting the connections it accepted.
struct RawBackend {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    async fn start(manner: Manner) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(stream, manner));
            }
        });
        RawBackend {
            addr,
            accepted,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, manner: Manner) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        // One request head (these tests send no bodies).
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head: Vec<u8> = buf.drain(..end).collect();
        match manner {
            Manner::KeepAlive | Manner::CloseSilently => {
                let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
                if matches!(manner, Manner::CloseSilently) {
                    return;
                }
            }
            Manner::EchoLine => {
                let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
                let mut answer =
                    format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", line.len())
                        .into_bytes();
                answer.extend_from_slice(line);
                if stream.write_all(&answer).await.is_err() {
                    return;
                }
            }
            Manner::Stall => {
                let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";
                let _ = stream.write_all(head).await;
                // Hold the connection open, never finishing the body.
                let _ = stream.read(&mut chunk).await;
                return;
            }
        }
    }
}

fn pool(backend: &RawBackend, max_idle: usize, idle_timeout: Duration) -> Arc<H1Pool> {
    let authority = backend.addr.to_string().parse().unwrap();
    H1Pool::new(
        &authority,
        NonZeroUsize::MIN,
        max_idle,
        idle_timeout,
        Duration::from_secs(1),
    )
}

fn get() -> Request<sluice::upstream::ProxyBody> {
    Request::get("/x").body(RequestBody::Empty).unwrap()
}

/// Sends one GET and reads its body to the end, as the proxy does.
async fn fetch(pool: &Arc<H1Pool>) -> Bytes {
    let (response, mut lease) = pool
        .send(get(), &AtomicBool::new(false))
        .await
        .expect("response");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    lease.finish();
    body
}

#[tokio::test]
async fn sequential_requests_share_one_connection() {
    let backend = RawBackend::start(Manner::KeepAlive).await;
    let pool = pool(&backend, 8, Duration::from_secs(60));
    for _ in 0..20 {
        assert_eq!(fetch(&pool).await, "ok");
        // The connection goes back once its task has taken in the response.
        for _ in 0..100 {
            if pool.idle() == 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(backend.accepted(), 1);
}

#[tokio::test]
async fn a_connection_closed_while_idle_costs_the_client_nothing() {
    let backend = RawBackend::start(Manner::CloseSilently).await;
    let pool = pool(&backend, 8, Duration::from_secs(60));
    for _ in 0..10 {
        assert_eq!(fetch(&pool).await, "ok");
    }
    assert_eq!(backend.accepted(), 10);
}

#[tokio::test]
async fn a_half_read_response_never_lends_its_connection_again() {
    let backend = RawBackend::start(Manner::Stall).await;
    let pool = pool(&backend, 8, Duration::from_secs(60));
    for expected in 1..=3 {
        let (response, lease) = pool
            .send(get(), &AtomicBool::new(false))
            .await
            .expect("response head");
        let mut body = response.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ok");
        // The client leaves with the body unfinished.
        drop((body, lease));
        assert_eq!(pool.idle(), 0);
        assert_eq!(backend.accepted(), expected);
    }
}

#[tokio::test]
async fn the_idle_stack_is_bounded_in_count_and_age() {
    let backend = RawBackend::start(Manner::KeepAlive).await;
    let pool = pool(&backend, 2, Duration::from_millis(200));
    // Five at once: five connections, of which two may wait idle.
    let mut leases = Vec::new();
    for _ in 0..5 {
        let (response, mut lease) = pool.send(get(), &AtomicBool::new(false)).await.unwrap();
        response.into_body().collect().await.unwrap();
        lease.finish();
        leases.push(lease);
    }
    assert_eq!(backend.accepted(), 5);
    drop(leases);
    for _ in 0..100 {
        if pool.idle() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(pool.idle(), 2);
    // Older than the idle timeout: not lent again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fetch(&pool).await, "ok");
    assert_eq!(backend.accepted(), 6);
}

#[tokio::test]
async fn an_unreachable_target_is_a_connect_error() {
    let addr = crate::common::dead_addr().await;
    let pool = H1Pool::new(
        &addr.to_string().parse().unwrap(),
        NonZeroUsize::MIN,
        8,
        Duration::from_secs(60),
        Duration::from_secs(1),
    );
    match pool.send(get(), &AtomicBool::new(false)).await {
        Err(sluice::upstream::h1pool::H1Error::Connect(_)) => {}
        Err(other) => panic!("expected a connect error, got {other:?}"),
        Ok(_) => panic!("expected a connect error, got a response"),
    }
}

#[tokio::test]
async fn the_backend_sees_origin_form_whatever_the_client_sent() {
    let backend = RawBackend::start(Manner::EchoLine).await;
    let pool = pool(&backend, 8, Duration::from_secs(60));
    for (uri, line) in [
        ("http://elsewhere.example/x?y=1", "GET /x?y=1 HTTP/1.1"),
        ("http://elsewhere.example", "GET / HTTP/1.1"),
        ("/plain", "GET /plain HTTP/1.1"),
    ] {
        let req = Request::get(uri).body(RequestBody::Empty).unwrap();
        let (response, mut lease) = pool.send(req, &AtomicBool::new(false)).await.unwrap();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        lease.finish();
        assert_eq!(body, line, "{uri}");
    }
}
