//! The accept loops: the proxy's, which deals connections to the workers
//! in batches and drains on shutdown, and the one loop both listeners use,
//! which empties the kernel's accept queue each time it is readable.
//!
//! Invariant: every accepted connection either enters through the door
//! (and holds its slot until it closes) or is refused there; a failed
//! accept backs off without stopping the connections already open.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::connection::{ProxyConnection, http1_settings, http2_settings};
use super::door::{Door, Slot};
use super::h1::Start;
use super::listen::{self, Listener};
use super::live::Live;
use super::workers::Workers;
use crate::tls::Terminator;

/// Back-off after a failed accept (e.g. out of file descriptors), so the
/// loop does not spin while the connections already open keep being served.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// At most this many connections are accepted before they are dealt to the
/// workers, so the workers start on a crowd while it is still being accepted.
const DEAL_BATCH: usize = 64;

/// At most this many connections are accepted in a row before the accept
/// loop yields to the rest of its runtime (the shapers' release tasks).
const ACCEPT_BURST: usize = 1024;

/// One accepted connection on its way to a worker.
struct Accepted {
    stream: std::net::TcpStream,
    peer: SocketAddr,
    slot: Slot,
    at: Instant,
}

/// Accepts proxy connections until shutdown, deals them to the workers in
/// batches, then drains.
pub(super) async fn serve_proxy(
    listener: Arc<Listener>,
    door: Arc<Door>,
    live: Arc<Live>,
    workers: Arc<Workers>,
    stopped: watch::Receiver<bool>,
) {
    let mut batches: Vec<Vec<Accepted>> = (0..workers.len()).map(|_| Vec::new()).collect();
    let mut turn = 0usize;
    let mut at_cap = false;
    let deal = |conns: &mut Vec<(std::net::TcpStream, SocketAddr)>| {
        let tls = live.tls.load_full();
        let at = Instant::now();
        for (stream, peer) in conns.drain(..) {
            let Some(slot) = door.enter() else {
                if !at_cap {
                    tracing::warn!(
                        max_connections = door_max(&live),
                        "connection limit reached; answering new connections 503 until one closes"
                    );
                }
                at_cap = true;
                door.refuse(stream, tls.is_some());
                continue;
            };
            at_cap = false;
            let worker = turn % batches.len();
            batches[worker].push(Accepted {
                stream,
                peer,
                slot,
                at,
            });
            turn = turn.wrapping_add(1);
        }
        for (index, batch) in batches.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            let batch = std::mem::take(batch);
            workers.handles[index].spawn(serve_batch(
                batch,
                live.clone(),
                tls.clone(),
                stopped.clone(),
            ));
        }
    };
    accept_until_stopped(&listener, stopped.clone(), deal).await;
    // Drain: no new connections, queued requests answered now, in-flight
    // ones given the drain timeout.
    live.ready.store(false, Ordering::SeqCst);
    drop(listener);
    live.gateway.load().close();
    let drain_timeout = live.config.load().server.drain_timeout;
    tracing::info!(?drain_timeout, "draining");
    if tokio::time::timeout(drain_timeout, door.drained())
        .await
        .is_err()
    {
        tracing::warn!(
            open = door.open(),
            "drain timeout passed with requests still in flight; closing them"
        );
    }
}

fn door_max(live: &Live) -> usize {
    live.config.load().server.max_connections
}

/// Starts serving a batch of connections on the worker this runs on.
async fn serve_batch(
    batch: Vec<Accepted>,
    live: Arc<Live>,
    tls: Option<Arc<Terminator>>,
    stopped: watch::Receiver<bool>,
) {
    let server = &live.config.load().server;
    let http2 = http2_settings(server);
    let http1 = http1_settings(server);
    for accepted in batch {
        let conn = ProxyConnection {
            live: live.clone(),
            http2,
            http1,
            stopped: stopped.clone(),
        };
        tokio::spawn(serve_accepted(conn, accepted, tls.clone()));
    }
}

/// The task of one accepted connection. A block over its captured
/// arguments, read in place (an `async fn`, or moving them into locals,
/// would hold a second copy for the connection's life).
#[expect(
    clippy::manual_async_fn,
    reason = "an `async fn` holds its arguments twice (rustc #62958)"
)]
fn serve_accepted(
    conn: ProxyConnection,
    accepted: Accepted,
    tls: Option<Arc<Terminator>>,
) -> impl Future<Output = ()> {
    async move {
        let stream = match TcpStream::from_std(accepted.stream) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::warn!(peer = %accepted.peer, %err, "cannot serve the connection");
                return;
            }
        };
        let (peer, at) = (accepted.peer, accepted.at);
        match tls {
            None => {
                let served = conn.serve_plain(stream, peer, at).await;
                if let Start::Http2(stream, read) = served {
                    conn.serve_preface(stream, read, accepted.peer, accepted.at)
                        .await;
                }
            }
            // Boxed: a TLS session is large, and a plain connection's
            // task should not reserve room for one.
            Some(terminator) => Box::pin(conn.serve_tls(terminator, stream, peer, at)).await,
        }
        // The connection's place under `max_connections` is given back
        // when it ends.
        drop(accepted.slot);
    }
}

/// Accepts until shutdown is asked for. Each time the listener is readable
/// it is drained until the kernel's accept queue is empty — every waiting
/// connection taken at once, so none waits unseen — handing connections to
/// `deal` [`DEAL_BATCH`] at a time and yielding to the runtime every
/// [`ACCEPT_BURST`]. A failed accept for want of descriptors or memory is
/// logged (at most once a second) and retried after a pause, while the
/// connections already open are served.
pub(super) async fn accept_until_stopped(
    listener: &Listener,
    mut stopped: watch::Receiver<bool>,
    mut deal: impl FnMut(&mut Vec<(std::net::TcpStream, SocketAddr)>),
) {
    let mut conns = Vec::with_capacity(DEAL_BATCH);
    let mut failed: u64 = 0;
    let mut logged: Option<Instant> = None;
    loop {
        let mut ready = tokio::select! {
            ready = listener.readable() => match ready {
                Ok(ready) => ready,
                Err(err) => {
                    tracing::error!(%err, "the listener cannot be polled; no longer accepting");
                    return;
                }
            },
            () = until_stopped(&mut stopped) => return,
        };
        let mut pause = false;
        for _ in 0..ACCEPT_BURST {
            match listen::accept_one(listener) {
                Ok(conn) => {
                    conns.push(conn);
                    if conns.len() == DEAL_BATCH {
                        deal(&mut conns);
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                    ready.clear_ready();
                    break;
                }
                Err(err) if listen::is_per_connection(&err) => {}
                Err(err) => {
                    failed += 1;
                    if logged.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        let addr = listen::local_addr(listener);
                        tracing::warn!(%err, ?addr, failures = failed, "accept failed; backing off");
                        logged = Some(Instant::now());
                    }
                    pause = true;
                    break;
                }
            }
        }
        if !conns.is_empty() {
            deal(&mut conns);
        }
        drop(ready);
        if pause {
            tokio::select! {
                () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                () = until_stopped(&mut stopped) => return,
            }
        } else {
            tokio::task::yield_now().await;
        }
    }
}

/// Resolves once shutdown has been asked for.
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    // An error means the sender is gone, which also means stop.
    let _stop = stopped.wait_for(|stop| *stop).await.is_ok();
}

/// [`until_stopped`], or never without a receiver.
pub(super) async fn until_stopped_opt(stopped: Option<&mut watch::Receiver<bool>>) {
    match stopped {
        Some(stopped) => until_stopped(stopped).await,
        None => std::future::pending().await,
    }
}
