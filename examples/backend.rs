//! A stand-in backend for trying sluice by hand: answers every request with
//! 200 "ok" and prints, once a second, how many requests arrived in that
//! second — so a burst shaped by sluice shows up as a flat line.
//!
//! `cargo run --release --example backend -- 127.0.0.1:9000`

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9000".to_string());
    let listener = TcpListener::bind(&addr).await?;
    println!("backend listening on {addr}");
    let arrivals = Arc::new(AtomicU64::new(0));
    tokio::spawn(report(arrivals.clone()));
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(conn) => conn,
            Err(err) => {
                eprintln!("accept failed: {err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req: Request<Incoming>| {
                arrivals.fetch_add(1, Ordering::Relaxed);
                async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok\n")))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Prints the arrivals of each second that had any.
async fn report(arrivals: Arc<AtomicU64>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut second = 0u64;
    loop {
        tick.tick().await;
        let n = arrivals.swap(0, Ordering::Relaxed);
        if n > 0 {
            println!(
                "t={second:>3}s  arrivals={n:>5}  {}",
                "#".repeat((n / 10) as usize)
            );
        }
        second += 1;
    }
}
