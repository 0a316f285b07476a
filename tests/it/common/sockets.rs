//! Raw-socket helpers for the front door's tests: connections that say
//! nothing, and how long until sluice closes them.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads (and discards) until the peer closes; the time that took, or
/// `None` if it was still open after `bound`. A reset counts as closed.
pub async fn closed_within(stream: &mut TcpStream, bound: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let until_closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(bound, until_closed)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// Reads until the peer closes: everything it sent, or `None` if it was
/// still open after `bound`. A reset counts as closed.
pub async fn read_to_close(stream: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let until_closed = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(bound, until_closed).await.ok()?;
    Some(got)
}

/// Connects `n` sockets that send nothing.
pub async fn silent(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        sockets.push(TcpStream::connect(addr).await.unwrap());
    }
    sockets
}

/// Sends `request` on `stream` and reads one response head (and whatever
/// came with it) within `bound`: the text, or "" on timeout or close.
pub async fn exchange(stream: &mut TcpStream, request: &[u8], bound: Duration) -> String {
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read_head = async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _timed_out = tokio::time::timeout(bound, read_head).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A GET of `/` on HTTP/1.1.
pub const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

/// The HTTP/2 client preface and an empty SETTINGS frame.
pub const H2_PREFACE: &[u8] =
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
