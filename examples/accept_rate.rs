//! How fast sluice takes a crowd off the kernel's accept queue: starts a
//! sluice in-process (one accepting thread, `workers` worker threads, as
//! `sluice run` does), issues N non-blocking connects as fast as one thread
//! can, and times until sluice reports all N open (`sluice_connections_open`
//! on /metrics). Also reports the listener's own kernel drop count and the
//! network namespace's listen overflow count before and after. The
//! connections send nothing, so this is the front door alone: accept, deal
//! to a worker, register there.
//!
//! `cargo run --release --example accept_rate -- [N=8000] [workers=1]`
//! (N is capped by the descriptor limit: both ends live in this process.)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let wanted: usize = args.next().map_or(Ok(8000), |a| a.parse())?;
    let workers: usize = args.next().map_or(Ok(1), |a| a.parse())?;
    let limit = raise_nofile()?;
    let n = wanted.min(usize::try_from(limit / 2)?.saturating_sub(100));
    let config = sluice::Config::parse(
        &format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nworkers = {workers}\nmax_connections = {}\n\
             header_timeout = \"60s\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n\
             [upstreams.api]\ntargets = [\"127.0.0.1:9\"]\n[[routes]]\nname = \"all\"\nupstream = \"api\"\n",
            n + 10
        ),
        Path::new("accept_rate.toml"),
    )?;
    // sluice on its own thread and runtime, as `sluice run` has it.
    let (addrs_tx, addrs_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let running = sluice::start(&config).await?;
            addrs_tx.send((running.proxy_addr(), running.admin_addr()))?;
            std::future::pending::<()>().await;
            anyhow::Ok(())
        })
    });
    let (proxy, admin) = addrs_rx.recv_timeout(Duration::from_secs(10))?;
    let before = scrape(admin)?;
    let netns_before = sluice::runtime::listen::ListenDrops::read();

    let target = SockAddr::from(proxy);
    let started = Instant::now();
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&target) {
            Err(err) if err.raw_os_error() != Some(libc::EINPROGRESS) => return Err(err.into()),
            _ => sockets.push(socket),
        }
    }
    let issued = started.elapsed();
    // Bounded: 30 s is far beyond any sane accept rate for N connections.
    let accepted = loop {
        let open = value(&scrape(admin)?, "sluice_connections_open");
        if open >= n as f64 {
            break started.elapsed();
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "only {open} of {n} accepted after 30 s"
        );
        std::thread::sleep(Duration::from_micros(500));
    };
    let after = scrape(admin)?;
    let netns_after = sluice::runtime::listen::ListenDrops::read();
    let dropped = |text: &str| value(text, "sluice_listen_dropped_total{listener=\"proxy\"}");
    println!(
        "{n} connections, {workers} worker(s): connects issued in {:.1} ms, all accepted after {:.1} ms \
         ({:.0} connections/s); listener drops {}; namespace listen overflows {}",
        issued.as_secs_f64() * 1e3,
        accepted.as_secs_f64() * 1e3,
        n as f64 / accepted.as_secs_f64(),
        dropped(&after) - dropped(&before),
        match (netns_before, netns_after) {
            (Some(b), Some(a)) => (a.overflows - b.overflows).to_string(),
            _ => "unknown".into(),
        }
    );
    drop(sockets);
    Ok(())
}

/// Raises the soft descriptor limit to the hard one; returns it.
fn raise_nofile() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit that the calls read and write.
    let ok = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    anyhow::ensure!(ok, "cannot raise RLIMIT_NOFILE");
    Ok(limit.rlim_cur)
}

/// GET /metrics over a fresh connection.
fn scrape(admin: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(admin)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text)
}

/// The value of the sample `series` (name with its labels, as exposed).
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}
