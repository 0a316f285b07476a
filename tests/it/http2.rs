//! HTTP/2 responses through sluice's write coalescing: bodies of every size
//! arrive whole and in order on one connection, many streams at once, and
//! a graceful shutdown lets the streams in flight finish (GOAWAY).

use std::time::Duration;

use crate::common::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

/// One HTTP/2 (prior knowledge) connection to `sluice`.
async fn h2_connection(sluice: &TestSluice) -> http2::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(sluice.proxy_addr()).await.unwrap();
    let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// POSTs `size` bytes (the backend echoes them) and returns the status and
/// the body that came back.
async fn echo(
    send: &mut http2::SendRequest<Full<Bytes>>,
    sluice: &TestSluice,
    size: usize,
) -> (StatusCode, Bytes) {
    let payload = Bytes::from((0..size).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let req = Request::post(format!("http://{}/echo/{size}", sluice.proxy_addr()))
        .body(Full::new(payload))
        .unwrap();
    let response = send.send_request(req).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_of_every_size_arrive_whole_on_one_connection() {
    let backend = Backend::start(Duration::ZERO).await;
    let sluice = TestSluice::start(&config(&[backend.addr])).await;
    let send = h2_connection(&sluice).await;
    // Below and above h2's 256-byte chaining threshold, around the 16 KiB
    // of a frame and of the coalescing limit, and well past the stream's
    // initial 64 KiB flow-control window (the backend echoes a body; it
    // answers "ok" to an empty one).
    let sizes = [
        1,
        2,
        255,
        256,
        1024,
        16 * 1024 - 9,
        16 * 1024,
        16 * 1024 + 1,
        100_000,
        1 << 20,
    ];
    let answers = futures_util::future::join_all(sizes.iter().map(|&size| {
        let mut send = send.clone();
        let sluice = &sluice;
        async move { (size, echo(&mut send, sluice, size).await) }
    }))
    .await;
    for (size, (status, body)) in answers {
        assert_eq!(status, StatusCode::OK, "{size} bytes");
        let expected: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        assert!(body == expected, "{size} bytes: the body came back altered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_lets_http2_streams_in_flight_finish() {
    let backend = Backend::start(Duration::from_millis(300)).await;
    let mut sluice = TestSluice::start(&config(&[backend.addr])).await;
    let send = h2_connection(&sluice).await;
    let in_flight: Vec<_> = (0..4)
        .map(|_| {
            let mut send = send.clone();
            let url = format!("http://{}/slow", sluice.proxy_addr());
            tokio::spawn(async move {
                let req = Request::post(url)
                    .body(Full::new(Bytes::from(vec![b'x'; 4096])))
                    .unwrap();
                let response = send.send_request(req).await.unwrap();
                let status = response.status();
                (
                    status,
                    response
                        .into_body()
                        .collect()
                        .await
                        .unwrap()
                        .to_bytes()
                        .len(),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    sluice.shutdown().await;
    for stream in in_flight {
        assert_eq!(stream.await.unwrap(), (StatusCode::OK, 4096));
    }
    // The connection was told to go away: no new stream is taken.
    let mut send = send;
    let late = Request::get(format!("http://{}/late", sluice.proxy_addr()))
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert!(send.send_request(late).await.is_err());
}
