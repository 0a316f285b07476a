//! Keep-alive HTTP/1.1 connections to one plain-HTTP target.
//!
//! The general client (hyper-util's) serves TLS and HTTP/2 upstreams and the
//! health probes; the common case — plain HTTP/1.1 to a backend on the
//! network next door — takes this shorter path on sluice's own codec, as
//! NGINX's `upstream keepalive` does: a stack of idle connections per
//! target, most recently used first (warm in the backend's caches, and the
//! cold ones age out), no per-request task, no channel, no URI rewriting.
//! The request is written by the task that sends it, and the response body
//! ([`H1Body`]) reads from the connection as the relay asks for it.
//!
//! A connection goes back on the stack only once its response body has been
//! read to its end and the [`Lease`] is dropped after [`Lease::finish`]; a
//! response dropped half-read closes its connection, and so does one that
//! said `Connection: close`, ran to the close, or was followed by bytes
//! nobody asked for. At most `max_idle` wait; one idle longer than
//! `idle_timeout`, or closed by the backend, is dropped when met. A request
//! that a reused connection could not even send (the backend closed it while
//! it was idle) is sent again once on a new connection, which is safe for any
//! method: not a byte of it reached the backend.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::request::Parts;
use http::{Method, Request, Response, header};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::ProxyBody;
use super::h1body::H1Body;
use super::h1conn::{Connection, ExchangeError};
use crate::http::BoxError;
use crate::http::h1::HeadLimits;
use crate::http::headers::Forwarding;

/// Why a request could not be relayed on this path.
#[derive(Debug)]
pub enum H1Error {
    /// No connection could be made.
    Connect(BoxError),
    /// The connection failed while sending or before the response head.
    Request(ExchangeError),
}

/// Idle connections to one target.
pub struct H1Pool {
    /// `host:port`, as `TcpStream::connect` resolves it.
    addr: String,
    host: header::HeaderValue,
    /// One stack per worker thread (see `server`): a request takes a
    /// connection of its own thread, so the workers never contend for one
    /// stack.
    idle: Vec<Mutex<Vec<Idle>>>,
    /// Per stack.
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    limits: HeadLimits,
}

struct Idle {
    conn: Connection,
    handoff: Arc<Handoff>,
    since: Instant,
}

/// Where a connection waits between the end of its response body and the
/// drop of its lease, whichever comes first; one per connection, reused
/// from request to request.
#[derive(Default)]
pub(super) struct Handoff(Mutex<Slot>);

#[derive(Default)]
enum Slot {
    /// Body and lease both still out.
    #[default]
    Out,
    /// The body ended first; the connection waits for the lease.
    Parked(Connection),
    /// The lease went first (`finished` or not); the body decides.
    LeaseGone { finished: bool },
}

/// A connection lent to one request, back on the stack once the response
/// body was read to its end and [`Lease::finish`] was called, closed
/// otherwise.
pub struct Lease {
    pool: Arc<H1Pool>,
    /// `None` after a switch of protocols: the connection is the tunnel's.
    handoff: Option<Arc<Handoff>>,
    finished: bool,
}

impl Lease {
    /// The response body has been read to its end: the connection may serve
    /// another request.
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(handoff) = self.handoff.take() {
            self.pool.lease_dropped(handoff, self.finished);
        }
    }
}

impl H1Pool {
    /// A pool for `authority` (a port of 80 if none), its idle connections
    /// kept in `stacks` stacks (one per worker thread; a worker takes the
    /// stack of its index, modulo the count) that share `max_idle` between
    /// them. Must be called inside a tokio runtime: a task closes
    /// connections idle for too long.
    pub fn new(
        authority: &http::uri::Authority,
        stacks: NonZeroUsize,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Arc<H1Pool> {
        let port = authority.port_u16().unwrap_or(80);
        let stacks = stacks.get();
        let pool = Arc::new(H1Pool {
            addr: format!("{}:{port}", authority.host()),
            host: header::HeaderValue::from_str(authority.as_str())
                .unwrap_or_else(|_| header::HeaderValue::from_static("localhost")),
            idle: (0..stacks).map(|_| Mutex::new(Vec::new())).collect(),
            max_idle: max_idle.div_ceil(stacks),
            idle_timeout,
            connect_timeout,
            limits: HeadLimits::default(),
        });
        tokio::spawn(reap(Arc::downgrade(&pool)));
        pool
    }

    /// Idle connections now.
    pub fn idle(&self) -> usize {
        self.idle.iter().map(|stack| stack.lock().len()).sum()
    }

    /// The stack of the calling thread.
    fn stack(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[crate::worker::worker_index().unwrap_or(0) % self.idle.len()]
    }

    /// Sends `req` (origin-form URI) and waits for the response head.
    /// `reached` turns true when the request is handed to a connection.
    /// Its headers go as they are (but for the body's framing), with a
    /// Host (the target's) if they have none.
    pub async fn send(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
        reached: &AtomicBool,
    ) -> Result<(Response<H1Body>, Lease), H1Error> {
        let (head, body) = req.into_parts();
        self.send_forwarded((&head, body), None, reached).await
    }

    /// [`H1Pool::send`] of a head lent by the caller, rewritten by
    /// `forwarding` as it is written. The request line carries the path
    /// and query only (origin form): an absolute-form target from the
    /// client (`GET http://elsewhere/ HTTP/1.1`) never reaches the backend
    /// as one.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice (rustc #62958)"
    )]
    pub(crate) fn send_forwarded(
        self: &Arc<Self>,
        (parts, body): (&Parts, ProxyBody),
        forwarding: Option<&Forwarding>,
        reached: &AtomicBool,
    ) -> impl Future<Output = Result<(Response<H1Body>, Lease), H1Error>> {
        async move {
            let (mut conn, mut handoff, reused) = match self.checkout() {
                Some((conn, handoff)) => (conn, handoff, true),
                None => (self.connect().await?, Arc::default(), false),
            };
            reached.store(true, Ordering::Release);
            let outgoing = conn.prepare(parts, (forwarding, &self.host), body);
            if let Err(err) = conn.send_head(&outgoing).await {
                // Never sent: the idle connection was closed under us.
                if !(reused && err.is_unsent()) {
                    return Err(H1Error::Request(err));
                }
                reached.store(false, Ordering::Release);
                let fresh = self.connect().await?;
                reached.store(true, Ordering::Release);
                conn = conn.replaced_by(fresh);
                handoff = Arc::default();
                conn.send_head(&outgoing).await.map_err(H1Error::Request)?;
            }
            let head_request = parts.method == Method::HEAD;
            let (head, sent_whole) = conn
                .exchange(outgoing, head_request, &self.limits)
                .await
                .map_err(H1Error::Request)?;
            let switching = head.status == http::StatusCode::SWITCHING_PROTOCOLS;
            // The fields go as they came, with the body: no header map on
            // the way through.
            let body = H1Body::new(
                conn,
                head.framing.decoder(),
                head.keep_alive && sent_whole,
                (self.clone(), handoff.clone()),
                head.fields,
            );
            let mut response = Response::new(body);
            *response.status_mut() = head.status;
            *response.version_mut() = head.version;
            // A switched protocol owns the connection from now on.
            let lease = Lease {
                pool: self.clone(),
                handoff: (!switching).then_some(handoff),
                finished: false,
            };
            Ok((response, lease))
        }
    }

    /// The most recently used live connection, if any, with its handoff
    /// (a fresh one if the last request's body still holds the old).
    fn checkout(&self) -> Option<(Connection, Arc<Handoff>)> {
        loop {
            let Idle {
                conn,
                handoff,
                since,
            } = self.stack().lock().pop()?;
            if since.elapsed() < self.idle_timeout && conn.is_reusable() {
                let handoff = if Arc::strong_count(&handoff) == 1 {
                    handoff
                } else {
                    Arc::default()
                };
                return Some((conn, handoff));
            }
        }
    }

    /// The response body has ended on a connection that may be reused: it
    /// goes home now if its lease is gone finished, or waits for the lease.
    pub(super) fn body_ended(&self, handoff: Arc<Handoff>, conn: Connection) {
        let mut slot = handoff.0.lock();
        match std::mem::take(&mut *slot) {
            Slot::Out => *slot = Slot::Parked(conn),
            Slot::LeaseGone { finished: true } => {
                drop(slot);
                self.push(conn, handoff);
            }
            Slot::LeaseGone { finished: false } | Slot::Parked(_) => {}
        }
    }

    /// The lease is gone: a connection parked by its finished body goes
    /// home; otherwise the body decides when it ends.
    fn lease_dropped(&self, handoff: Arc<Handoff>, finished: bool) {
        let mut slot = handoff.0.lock();
        match std::mem::take(&mut *slot) {
            Slot::Parked(conn) => {
                drop(slot);
                if finished {
                    self.push(conn, handoff);
                }
            }
            Slot::Out => *slot = Slot::LeaseGone { finished },
            Slot::LeaseGone { .. } => {}
        }
    }

    fn push(&self, conn: Connection, handoff: Arc<Handoff>) {
        let mut idle = self.stack().lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                conn,
                handoff,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<Connection, H1Error> {
        // Boxed: connecting is rare on a warm pool, and its state would
        // otherwise enlarge every request's future.
        Box::pin(Connection::connect(&self.addr, self.connect_timeout))
            .await
            .map_err(H1Error::Connect)
    }
}

/// Closes connections idle for longer than the pool's `idle_timeout`, or
/// closed by their backend, until the pool is gone.
async fn reap(pool: Weak<H1Pool>) {
    let period = match pool.upgrade() {
        Some(pool) => (pool.idle_timeout / 2).max(Duration::from_millis(500)),
        None => return,
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(pool) = pool.upgrade() else {
            return;
        };
        let timeout = pool.idle_timeout;
        for stack in &pool.idle {
            stack
                .lock()
                .retain(|i| i.since.elapsed() < timeout && i.conn.is_reusable());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Shutdown;
    use std::sync::atomic::AtomicUsize;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::http::request_body::RequestBody;

    /// A backend that holds its first `silent` connections without reading
    /// them, and on the others answers `answers` requests each with a
    /// keep-alive `ok`, then reads one more request and closes without an
    /// answer. Counts connections and requests read.
    async fn backend(
        silent: usize,
        answers: usize,
    ) -> (String, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let (count, seen) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                if count.fetch_add(1, Ordering::SeqCst) < silent {
                    held.push(stream);
                    continue;
                }
                tokio::spawn(serve(stream, answers, seen.clone()));
            }
        });
        (addr, connections, requests)
    }

    async fn serve(mut stream: TcpStream, answers: usize, seen: Arc<AtomicUsize>) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        for answered in 0..=answers {
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            buf.clear();
            seen.fetch_add(1, Ordering::SeqCst);
            if answered == answers {
                return;
            }
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            if stream.write_all(ok).await.is_err() {
                return;
            }
        }
    }

    fn pool(addr: &str) -> Arc<H1Pool> {
        H1Pool::new(
            &addr.parse().unwrap(),
            NonZeroUsize::MIN,
            8,
            Duration::from_secs(60),
            Duration::from_secs(1),
        )
    }

    fn post() -> Request<ProxyBody> {
        Request::post("/x")
            .body(RequestBody::Buffered {
                data: Some(bytes::Bytes::from_static(b"body")),
                trailers: None,
            })
            .unwrap()
    }

    #[tokio::test]
    async fn a_request_a_pooled_connection_could_not_send_goes_once_on_a_new_one() {
        let (addr, connections, requests) = backend(2, 10).await;
        let pool = pool(&addr);
        // Two idle connections that look alive (nothing to read, no close)
        // and cannot take a byte.
        for _ in 0..2 {
            let conn = Connection::connect(&addr, Duration::from_secs(1))
                .await
                .unwrap();
            socket2::SockRef::from(&conn.io)
                .shutdown(Shutdown::Write)
                .unwrap();
            pool.push(conn, Arc::default());
        }
        let reached = AtomicBool::new(false);
        let (response, mut lease) = pool.send(post(), &reached).await.expect("sent again");
        assert!(reached.load(Ordering::Acquire));
        let body = response.into_body().collect().await.unwrap().to_bytes();
        lease.finish();
        drop(lease);
        assert_eq!(body, "ok");
        // The retry took a new connection, not the other dead one.
        assert_eq!(connections.load(Ordering::SeqCst), 3);
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle(), 2);
    }

    #[tokio::test]
    async fn a_request_that_may_have_reached_the_backend_is_not_sent_again() {
        let (addr, connections, requests) = backend(0, 1).await;
        let pool = pool(&addr);
        let (response, mut lease) = pool.send(post(), &AtomicBool::new(false)).await.unwrap();
        response.into_body().collect().await.unwrap();
        lease.finish();
        drop(lease);
        assert_eq!(pool.idle(), 1);
        // The backend reads the second request and closes without a word.
        match pool.send(post(), &AtomicBool::new(false)).await {
            Err(H1Error::Request(ExchangeError::Closed)) => {}
            Err(other) => panic!("expected a close before the head, got {other:?}"),
            Ok(_) => panic!("expected a close before the head, got a response"),
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_connection_goes_home_when_body_and_lease_are_both_done_in_either_order() {
        let (addr, connections, _) = backend(0, 10).await;
        let pool = pool(&addr);
        // Lease first, then the body.
        let (response, mut lease) = pool.send(post(), &AtomicBool::new(false)).await.unwrap();
        lease.finish();
        drop(lease);
        assert_eq!(pool.idle(), 0);
        response.into_body().collect().await.unwrap();
        assert_eq!(pool.idle(), 1);
        // Body first, then the lease; an unfinished lease closes it.
        let (response, lease) = pool.send(post(), &AtomicBool::new(false)).await.unwrap();
        response.into_body().collect().await.unwrap();
        assert_eq!(pool.idle(), 0);
        drop(lease);
        assert_eq!(pool.idle(), 0);
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        let (response, mut lease) = pool.send(post(), &AtomicBool::new(false)).await.unwrap();
        response.into_body().collect().await.unwrap();
        lease.finish();
        drop(lease);
        assert_eq!(pool.idle(), 1);
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }
}
