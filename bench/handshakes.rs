//! bench/handshakes.rs: new TLS connections per second with every handshake
//! a full one (bench/https/run, issue 21).
//!
//! ```sh
//! cargo build --release --example handshakes
//! target/release/examples/handshakes --addr 127.0.0.1:18181 -c 64 --seconds 5 [--tls12]
//! ```
//!
//! `-c` connections at a time, on one thread, each in a loop until
//! `--seconds` have passed: TCP connect, a TLS handshake that resumes
//! nothing (`bench/tls_client.rs`: no tickets, no session ids, X25519, the
//! certificate not verified), one `GET /` with `Connection: close`, the
//! whole answer read. wrk, by contrast, resumes its TLS sessions when it
//! reconnects, so its "new connections" are mostly resumed ones.
//!
//! Prints one JSON object: connections completed with a 200, per second;
//! the time of one (connect to answer) p50/p99/max; errors by stage; the
//! TLS version negotiated.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout_at};
use tokio_rustls::TlsConnector;

#[path = "tls_client.rs"]
mod tls_client;

#[derive(Parser, Debug)]
#[command(about = "New TLS connections/s, every handshake a full one (bench/https/run)")]
struct Args {
    /// The HTTPS server.
    #[arg(long)]
    addr: SocketAddr,
    /// Connections at a time.
    #[arg(short, long, default_value_t = 64)]
    c: usize,
    /// How long to run.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// TLS 1.2 only (else TLS 1.3 only).
    #[arg(long)]
    tls12: bool,
    /// The name sent as SNI.
    #[arg(long, default_value = "localhost")]
    sni: String,
}

/// What one connection came to: its time, or the stage it failed at.
type Outcome = Result<Duration, &'static str>;

/// One connection: connect, full handshake, one request, the answer.
async fn one(
    addr: SocketAddr,
    connector: &TlsConnector,
    name: &ServerName<'static>,
    deadline: Instant,
) -> Outcome {
    let start = Instant::now();
    let tcp = match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(_)) => return Err("connect"),
        Err(_) => return Err("deadline"),
    };
    let _ = tcp.set_nodelay(true);
    let mut tls = match timeout_at(deadline, connector.connect(name.clone(), tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| eprintln!("handshakes: first failed handshake: {err}"));
            return Err("handshake");
        }
        Err(_) => return Err("deadline"),
    };
    let request = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    match timeout_at(deadline, tls.write_all(request)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Err("write"),
        Err(_) => return Err("deadline"),
    }
    let mut answer = Vec::with_capacity(512);
    // The servers close after the answer (`Connection: close`); a peer that
    // closes without close_notify still gave its answer.
    let read = timeout_at(deadline, tls.read_to_end(&mut answer)).await;
    if read.is_err() {
        return Err("deadline");
    }
    if answer.starts_with(b"HTTP/1.1 200") {
        Ok(start.elapsed())
    } else {
        Err("status")
    }
}

/// Connections in a loop until `deadline`; their outcomes and the version.
async fn worker(
    addr: SocketAddr,
    connector: Arc<TlsConnector>,
    name: ServerName<'static>,
    deadline: Instant,
) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    while Instant::now() < deadline {
        let outcome = one(addr, &connector, &name, deadline).await;
        if outcome == Err("deadline") {
            break;
        }
        if outcome.is_err() {
            // A refusing server is not spun on.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        outcomes.push(outcome);
    }
    outcomes
}

fn pct(sorted: &[Duration], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1].as_secs_f64() * 1000.0)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.c >= 1 && args.c <= 10_000, "-c must be in 1..=10000");
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= 600.0,
        "--seconds must be in (0, 600]"
    );
    let config = tls_client::full_handshakes(args.tls12, b"http/1.1")?;
    let connector = Arc::new(TlsConnector::from(config));
    let name = ServerName::try_from(args.sni.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (outcomes, elapsed) = runtime.block_on(async {
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(args.seconds);
        let tasks: Vec<_> = (0..args.c)
            .map(|_| tokio::spawn(worker(args.addr, connector.clone(), name.clone(), deadline)))
            .collect();
        let mut outcomes = Vec::new();
        for task in tasks {
            outcomes.extend(task.await.unwrap_or_else(|_| vec![Err("task")]));
        }
        (outcomes, start.elapsed())
    });
    let mut times: Vec<Duration> = outcomes.iter().filter_map(|o| o.ok()).collect();
    times.sort_unstable();
    let mut errors: BTreeMap<&str, usize> = BTreeMap::new();
    for err in outcomes.iter().filter_map(|o| o.err()) {
        *errors.entry(err).or_default() += 1;
    }
    let summary = json!({
        "addr": args.addr.to_string(),
        "tls": if args.tls12 { "1.2" } else { "1.3" },
        "concurrency": args.c,
        "seconds": elapsed.as_secs_f64(),
        "ok": times.len(),
        "per_sec": times.len() as f64 / elapsed.as_secs_f64(),
        "p50_ms": pct(&times, 0.50),
        "p99_ms": pct(&times, 0.99),
        "max_ms": times.last().map(|t| t.as_secs_f64() * 1000.0),
        "errors": errors,
    });
    println!("{summary}");
    Ok(())
}
