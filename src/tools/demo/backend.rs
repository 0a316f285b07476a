//! The demo's backend: an HTTP/1.1 server on 127.0.0.1 with a fixed capacity.
//!
//! It has [`WORKERS`] workers and each request occupies one for [`SERVICE`]:
//! at most `WORKERS / SERVICE` requests a second (200/s). A request that
//! arrives while every worker is busy waits for the first one free, so an
//! overloaded backend answers later and later instead of failing — what a
//! real one does until its clients time out. Each worker's schedule is kept
//! in absolute time (the next request starts when the previous one was due
//! to end, not when the timer happened to fire), so timer granularity does
//! not lower the capacity below its nominal value.
//!
//! Every arrival is counted in the recorder's `released` series: what sluice
//! let through.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use hyper_util::server::graceful::GracefulShutdown;
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::Recorder;

/// Requests served at once.
pub const WORKERS: usize = 2;
/// Time one request occupies a worker.
pub const SERVICE: Duration = Duration::from_millis(10);

/// How long stopping waits for connections to close.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// The backend's capacity in requests per second.
pub fn capacity() -> f64 {
    WORKERS as f64 / SERVICE.as_secs_f64()
}

/// A running backend.
pub struct Backend {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    state: Arc<State>,
}

struct State {
    /// Where arrivals are counted, once the run has a timeline.
    recorder: OnceLock<Arc<Recorder>>,
    /// When each worker is next free.
    free_at: Mutex<[Instant; WORKERS]>,
    /// Requests arrived and not yet answered.
    backlog: AtomicU64,
    /// The most requests arrived and not yet answered at any moment.
    peak_backlog: AtomicU64,
}

impl Backend {
    /// Binds 127.0.0.1 on a free port and starts serving.
    pub async fn start() -> std::io::Result<Backend> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let now = Instant::now();
        let state = Arc::new(State {
            recorder: OnceLock::new(),
            free_at: Mutex::new([now; WORKERS]),
            backlog: AtomicU64::new(0),
            peak_backlog: AtomicU64::new(0),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(serve(listener, state.clone(), stopped));
        Ok(Backend {
            addr,
            stop,
            task,
            state,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Counts arrivals from now on in `recorder`.
    pub fn record_into(&self, recorder: Arc<Recorder>) {
        let _first = self.state.recorder.set(recorder).is_ok();
    }

    /// The most requests that were at the backend at once (served or waiting
    /// for a worker).
    pub fn peak_backlog(&self) -> u64 {
        self.state.peak_backlog.load(Ordering::Relaxed)
    }

    /// Stops accepting, lets open connections finish (closing idle ones), and
    /// returns when the server is gone.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        if let Err(err) = self.task.await {
            tracing::warn!(%err, "demo backend task failed");
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>, mut stopped: watch::Receiver<bool>) {
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(%err, "demo backend: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = until_stopped(&mut stopped) => break,
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(state.handle(req).await) }
        });
        let conn = http1::Builder::new()
            .keep_alive(true)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(err) = conn.await {
                tracing::debug!(%err, "demo backend: connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(STOP_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("demo backend: connections still open after {STOP_GRACE:?}; closing them");
    }
}

/// Resolves once stopping has been asked for (or the sender is gone).
async fn until_stopped(stopped: &mut watch::Receiver<bool>) {
    let _stop = stopped.wait_for(|stop| *stop).await.is_ok();
}

impl State {
    async fn handle(&self, _req: Request<Incoming>) -> Response<Full<Bytes>> {
        let now = Instant::now();
        if let Some(recorder) = self.recorder.get() {
            recorder.released.add(recorder.index(now));
            recorder.released_total.fetch_add(1, Ordering::Relaxed);
        }
        let backlog = self.backlog.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_backlog.fetch_max(backlog, Ordering::Relaxed);
        // Leaves the backlog even if the request is abandoned mid-way.
        let _leave = Leave(&self.backlog);
        // Take the worker that is free first; it starts on this request when
        // it is free (or now), and is busy for SERVICE from then.
        let done = {
            let mut free_at = self.free_at.lock();
            match free_at.iter_mut().min() {
                Some(worker) => {
                    *worker = (*worker).max(now) + SERVICE;
                    *worker
                }
                // (WORKERS is a non-zero constant.)
                None => now + SERVICE,
            }
        };
        tokio::time::sleep_until(done).await;
        Response::new(Full::new(Bytes::from_static(b"ok\n")))
    }
}

/// Takes one request off the backlog when dropped.
struct Leave<'a>(&'a AtomicU64);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
