//! bench/crowd.rs: a flash crowd for `bench/run` scenario 5 (issue 14).
//!
//! ```sh
//! cargo build --release --example crowd
//! target/release/examples/crowd --addr 127.0.0.1:18081 --path /crowd/x/ -n 2000 --out crowd.tsv
//! ```
//!
//! Opens N connections in the same instant and sends one `GET` on each as
//! soon as it is connected, then waits for the answer. Every socket is made
//! (and bound to its own source address, 127.<net>.<i / 250>.<i % 250 + 1>,
//! so a crowd of any size fits the ephemeral port range and no run meets the
//! TIME_WAIT of an earlier one) before the first `connect`; then one thread
//! issues the N non-blocking `connect`s back to back, before it looks at any
//! answer. Each request is `GET <path><i>` with `Connection: close` and
//! `X-Sent-At: <unix time in microseconds>` (read just before the request is
//! written), so a backend can tell how long after the client sent it the
//! request reached it.
//!
//! Measured from the client's side, per connection: connect start, connect
//! done, request written, answer in (the whole response: its Content-Length
//! read, or the server closed). A SYN that an overflowing accept queue drops
//! shows up as a connect time of ~1 s (~3 s, ~7 s for the next
//! retransmissions). Everything is bounded by `--timeout` (30 s) from the
//! first connect.
//!
//! Prints one JSON object: counts by status and by error, the answer time
//! (from connect start) p50/p99/max of the 200s and of the 503s, connect time
//! p50/p99/max, how many connects took longer than 900 ms, the span over
//! which the connects were issued, and the change in the kernel's
//! `TcpExtListenOverflows` / `TcpExtListenDrops` (/proc/net/netstat, the
//! whole network namespace) from just before the first connect to the end.
//! `--out FILE` also writes one TSV line per connection: `i start_us
//! connected_us sent_us answered_us status error` (unix microseconds, `-`
//! for a stage not reached; status 0 = no answer).
//!
//! `--tls` (bench/https/run, issue 21): a crowd of TLS clients. Each one,
//! once connected, makes a full TLS handshake (`bench/tls_client.rs`: no
//! resumption, TLS 1.3, or 1.2 with `--tls12`), then sends its request over
//! it; the JSON then has the handshake time (connect done to handshake
//! done) too, and a failed handshake is the error `handshake_*`.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use rustls::pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout_at;
use tokio_rustls::TlsConnector;

#[path = "tls_client.rs"]
mod tls_client;

#[derive(Parser, Debug)]
#[command(about = "A flash crowd: N connections at once, one GET each (bench/run scenario 5)")]
struct Args {
    /// The server to crowd.
    #[arg(long)]
    addr: SocketAddr,
    /// Request path prefix; connection i asks for `<path><i>`.
    #[arg(long, default_value = "/crowd/")]
    path: String,
    /// Connections, all opened at once.
    #[arg(short, long, default_value_t = 2000)]
    n: usize,
    /// Seconds from the first connect after which every connection still
    /// open is given up (counted as an error of its stage).
    #[arg(long, default_value_t = 30.0)]
    timeout: f64,
    /// Second octet of the source addresses (127.<net>.x.y), 1..=255; 0
    /// binds nothing (the kernel picks 127.0.0.1 and an ephemeral port).
    #[arg(long, default_value_t = 0)]
    net: u8,
    /// Write one TSV line per connection here.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
    /// Speak HTTPS: a full TLS handshake (SNI localhost) before the request.
    #[arg(long)]
    tls: bool,
    /// With `--tls`: TLS 1.2 only (else TLS 1.3 only).
    #[arg(long, requires = "tls")]
    tls12: bool,
}

/// What one connection went through, in microseconds since the Unix epoch.
#[derive(Default, Clone)]
struct Record {
    start: Option<u64>,
    connected: Option<u64>,
    handshaken: Option<u64>,
    sent: Option<u64>,
    answered: Option<u64>,
    status: u16,
    error: Option<String>,
}

/// Instants on the Unix clock: the wall time once at the start, then the
/// monotonic clock, so that a step of the wall clock mid-run moves nothing.
#[derive(Clone, Copy)]
struct Clock {
    origin: Instant,
    origin_us: u64,
}

impl Clock {
    fn new() -> Clock {
        let origin_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Clock {
            origin: Instant::now(),
            origin_us,
        }
    }

    fn now_us(&self) -> u64 {
        let since = u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.origin_us.saturating_add(since)
    }
}

/// The error's name for the report: its stage and kind.
fn error_name(stage: &str, err: &std::io::Error) -> String {
    let kind = match err.kind() {
        ErrorKind::ConnectionRefused => "refused".to_string(),
        ErrorKind::ConnectionReset => "reset".to_string(),
        ErrorKind::ConnectionAborted => "aborted".to_string(),
        ErrorKind::BrokenPipe => "broken_pipe".to_string(),
        ErrorKind::TimedOut => "timed_out".to_string(),
        ErrorKind::AddrNotAvailable => "addr_not_available".to_string(),
        other => format!("{other:?}").to_lowercase(),
    };
    format!("{stage}_{kind}")
}

/// The status code of a response head, if `buf` starts with one.
fn status_of(buf: &[u8]) -> Option<u16> {
    let line = buf.get(..12)?;
    if !line.starts_with(b"HTTP/1.") || line[8] != b' ' {
        return None;
    }
    std::str::from_utf8(&line[9..12]).ok()?.parse().ok()
}

/// Whether `buf` holds a whole response: its head, and as much body as its
/// Content-Length says (a response without one ends when the server closes).
fn complete(buf: &[u8]) -> bool {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&buf[..end]);
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("content-length") {
            return match value.trim().parse::<usize>() {
                Ok(len) => buf.len() >= end + 4 + len,
                Err(_) => false,
            };
        }
    }
    false
}

/// One client of the crowd: connect, (with `tls`) shake hands, send, read
/// the answer.
async fn client(
    socket: TcpSocket,
    addr: SocketAddr,
    path: String,
    clock: Clock,
    deadline: tokio::time::Instant,
    tls: Option<TlsConnector>,
) -> Record {
    let mut rec = Record {
        start: Some(clock.now_us()),
        ..Record::default()
    };
    let stream: TcpStream = match timeout_at(deadline, socket.connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            rec.error = Some(error_name("connect", &err));
            return rec;
        }
        Err(_) => {
            rec.error = Some("connect_timeout".to_string());
            return rec;
        }
    };
    rec.connected = Some(clock.now_us());
    let Some(tls) = tls else {
        return exchange(stream, rec, path, clock, deadline).await;
    };
    let Ok(name) = ServerName::try_from("localhost") else {
        rec.error = Some("handshake_bad_name".to_string());
        return rec;
    };
    match timeout_at(deadline, tls.connect(name, stream)).await {
        Ok(Ok(stream)) => {
            rec.handshaken = Some(clock.now_us());
            exchange(stream, rec, path, clock, deadline).await
        }
        Ok(Err(err)) => {
            rec.error = Some(error_name("handshake", &err));
            rec
        }
        Err(_) => {
            rec.error = Some("handshake_timeout".to_string());
            rec
        }
    }
}

/// The request and its answer on a connected (and maybe TLS) stream.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    mut rec: Record,
    path: String,
    clock: Clock,
    deadline: tokio::time::Instant,
) -> Record {
    let sent_at = clock.now_us();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: bench\r\nX-Sent-At: {sent_at}\r\nConnection: close\r\n\r\n"
    );
    match timeout_at(deadline, stream.write_all(request.as_bytes())).await {
        Ok(Ok(())) => rec.sent = Some(sent_at),
        Ok(Err(err)) => {
            rec.error = Some(error_name("write", &err));
            return rec;
        }
        Err(_) => {
            rec.error = Some("write_timeout".to_string());
            return rec;
        }
    }
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    loop {
        match timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(0)) => {
                match status_of(&buf) {
                    Some(status) => {
                        rec.status = status;
                        rec.answered = Some(clock.now_us());
                    }
                    None => rec.error = Some("read_closed_without_answer".to_string()),
                }
                return rec;
            }
            Ok(Ok(n)) => {
                buf.extend_from_slice(&chunk[..n]);
                if complete(&buf) {
                    rec.answered = Some(clock.now_us());
                    match status_of(&buf) {
                        Some(status) => rec.status = status,
                        None => rec.error = Some("read_bad_response".to_string()),
                    }
                    return rec;
                }
                if buf.len() > 1 << 20 {
                    rec.error = Some("read_response_too_large".to_string());
                    return rec;
                }
            }
            // A TLS server that closes without close_notify after its
            // whole answer (no Content-Length): the answer still counts.
            Ok(Err(err)) if err.kind() == ErrorKind::UnexpectedEof && status_of(&buf).is_some() => {
                rec.status = status_of(&buf).unwrap_or(0);
                rec.answered = Some(clock.now_us());
                return rec;
            }
            Ok(Err(err)) => {
                rec.error = Some(error_name("read", &err));
                return rec;
            }
            Err(_) => {
                rec.error = Some("read_timeout".to_string());
                return rec;
            }
        }
    }
}

/// `TcpExtListenOverflows` and `TcpExtListenDrops` from /proc/net/netstat.
fn listen_counters() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let values = lines.next()?;
        if !names.starts_with("TcpExt:") {
            continue;
        }
        let mut overflows = None;
        let mut drops = None;
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            match name {
                "ListenOverflows" => overflows = value.parse().ok(),
                "ListenDrops" => drops = value.parse().ok(),
                _ => {}
            }
        }
        return Some((overflows?, drops?));
    }
    None
}

/// Nearest-rank percentile of sorted values, in milliseconds.
fn pct(sorted_us: &[u64], p: f64) -> Option<f64> {
    if sorted_us.is_empty() {
        return None;
    }
    let rank = (p * sorted_us.len() as f64).ceil() as usize;
    Some(sorted_us[rank.clamp(1, sorted_us.len()) - 1] as f64 / 1000.0)
}

fn spread(mut us: Vec<u64>) -> serde_json::Value {
    us.sort_unstable();
    json!({
        "count": us.len(),
        "p50_ms": pct(&us, 0.50),
        "p99_ms": pct(&us, 0.99),
        "max_ms": us.last().map(|v| *v as f64 / 1000.0),
    })
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.n > 0, "-n must be at least 1");
    anyhow::ensure!(
        args.timeout > 0.0 && args.timeout <= 600.0,
        "--timeout must be in (0, 600] seconds"
    );
    anyhow::ensure!(
        args.net == 0 || args.n <= 250 * 256,
        "-n at most 64000 with --net (one source address each)"
    );
    // One thread: the connects are issued in one pass over the tasks, before
    // the event loop looks at any socket (event_interval), and the other
    // core is left to the server.
    let ticks = u32::try_from(args.n.saturating_add(64)).unwrap_or(u32::MAX);
    let tls = if args.tls {
        let config = tls_client::full_handshakes(args.tls12, b"http/1.1")?;
        Some(TlsConnector::from(config))
    } else {
        None
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .event_interval(ticks)
        .build()?;
    let (records, first_start, listen) = runtime.block_on(async {
        let mut sockets = Vec::with_capacity(args.n);
        for i in 0..args.n {
            let socket = TcpSocket::new_v4()?;
            if args.net != 0 {
                let (hi, lo) = (i / 250, i % 250 + 1);
                let ip = Ipv4Addr::new(127, args.net, u8::try_from(hi)?, u8::try_from(lo)?);
                socket.bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
            }
            sockets.push(socket);
        }
        let clock = Clock::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.timeout);
        let before = listen_counters();
        let first_start = clock.now_us();
        let tasks: Vec<_> = sockets
            .into_iter()
            .enumerate()
            .map(|(i, socket)| {
                let path = format!("{}{i}", args.path);
                tokio::spawn(client(
                    socket,
                    args.addr,
                    path,
                    clock,
                    deadline,
                    tls.clone(),
                ))
            })
            .collect();
        let mut records = Vec::with_capacity(tasks.len());
        for task in tasks {
            records.push(task.await.unwrap_or_else(|_| Record {
                error: Some("client_task_failed".to_string()),
                ..Record::default()
            }));
        }
        let after = listen_counters();
        let listen = before
            .zip(after)
            .map(|((o0, d0), (o1, d1))| (o1.saturating_sub(o0), d1.saturating_sub(d0)));
        anyhow::Ok((records, first_start, listen))
    })?;

    if let Some(path) = &args.out {
        let mut tsv = String::with_capacity(records.len() * 64);
        for (i, r) in records.iter().enumerate() {
            tsv.push_str(&format!(
                "{i}\t{}\t{}\t{}\t{}\t{}\t{}\n",
                opt(r.start),
                opt(r.connected),
                opt(r.sent),
                opt(r.answered),
                r.status,
                r.error.as_deref().unwrap_or("-")
            ));
        }
        std::fs::write(path, tsv)?;
    }

    let starts: Vec<u64> = records.iter().filter_map(|r| r.start).collect();
    let issue_span = starts
        .iter()
        .max()
        .zip(starts.iter().min())
        .map(|(a, b)| a - b);
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_error: BTreeMap<String, usize> = BTreeMap::new();
    let mut answer: BTreeMap<u16, Vec<u64>> = BTreeMap::new();
    let mut connect = Vec::new();
    let mut handshake = Vec::new();
    for r in &records {
        if let Some(e) = &r.error {
            *by_error.entry(e.clone()).or_default() += 1;
        }
        if r.status != 0 {
            *by_status.entry(r.status.to_string()).or_default() += 1;
        }
        if let (Some(s), Some(c)) = (r.start, r.connected) {
            connect.push(c.saturating_sub(s));
        }
        if let (Some(c), Some(h)) = (r.connected, r.handshaken) {
            handshake.push(h.saturating_sub(c));
        }
        if let (Some(s), Some(a)) = (r.start, r.answered) {
            answer
                .entry(r.status)
                .or_default()
                .push(a.saturating_sub(s));
        }
    }
    let slow_connects = connect.iter().filter(|us| **us > 900_000).count();
    let last_answer = records.iter().filter_map(|r| r.answered).max();
    let summary = json!({
        "n": args.n,
        "addr": args.addr.to_string(),
        "first_connect_unix_us": first_start,
        "connect_issue_span_ms": issue_span.map(|us| us as f64 / 1000.0),
        "status": by_status,
        "errors": by_error,
        "answer_from_connect_start": answer
            .iter()
            .map(|(status, us)| (status.to_string(), spread(us.clone())))
            .collect::<BTreeMap<_, _>>(),
        "connect": spread(connect),
        "tls": args.tls.then_some(if args.tls12 { "1.2" } else { "1.3" }),
        "handshake": args.tls.then(|| spread(handshake)),
        "connects_over_900ms": slow_connects,
        "last_answer_after_ms": last_answer.map(|a| a.saturating_sub(first_start) as f64 / 1000.0),
        "listen_overflows": listen.map(|l| l.0),
        "listen_drops": listen.map(|l| l.1),
    });
    println!("{summary}");
    Ok(())
}
