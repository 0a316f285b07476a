//! Keep-alive HTTP/1.1 connections to one plain-HTTP target.
//!
//! The general client (hyper-util's) serves TLS and HTTP/2 upstreams and the
//! health probes; the common case — plain HTTP/1.1 to a backend on the
//! network next door — takes this shorter path, as NGINX's `upstream
//! keepalive` does: a stack of idle connections per target, most recently
//! used first (warm in the backend's caches, and the cold ones age out), no
//! per-request task or URI rewriting.
//!
//! A connection goes back on the stack only once its response body has been
//! read to the end ([`Lease::finish`]); a response dropped half-read closes
//! its connection. At most `max_idle` wait; one idle longer than
//! `idle_timeout`, or closed by the backend, is dropped when met. A request
//! that a reused connection could not even send (the backend closed it while
//! it was idle) is sent again once on a new connection, which is safe for any
//! method: not a byte of it reached the backend.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use http::{Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::ProxyBody;
use crate::http::BoxError;

/// Why a request could not be relayed on this path.
#[derive(Debug)]
pub enum H1Error {
    /// No connection could be made.
    Connect(BoxError),
    /// The connection failed while sending or before the response head.
    Request(hyper::Error),
}

/// Idle connections to one target.
pub struct H1Pool {
    /// `host:port`, as `TcpStream::connect` resolves it.
    addr: String,
    host: header::HeaderValue,
    /// One stack per worker thread (see `server`): a connection's task runs
    /// on the thread that opened it, so a request takes a connection of its
    /// own thread and the two never wake each other across threads.
    idle: Vec<Mutex<Vec<Idle>>>,
    /// Per stack.
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

struct Idle {
    sender: SendRequest<ProxyBody>,
    since: Instant,
}

/// A connection lent to one request, back on the stack after
/// [`Lease::finish`] (the response body read to its end), closed otherwise.
pub struct Lease {
    pool: Arc<H1Pool>,
    sender: Option<SendRequest<ProxyBody>>,
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
        if let Some(sender) = self.sender.take()
            && self.finished
        {
            self.pool.put(sender);
        }
    }
}

impl H1Pool {
    /// A pool for `authority` (a port of 80 if none). Must be called inside
    /// a tokio runtime: a task closes connections idle for too long.
    pub fn new(
        authority: &http::uri::Authority,
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Arc<H1Pool> {
        let port = authority.port_u16().unwrap_or(80);
        let stacks = crate::worker::worker_count().max(1);
        let pool = Arc::new(H1Pool {
            addr: format!("{}:{port}", authority.host()),
            host: header::HeaderValue::from_str(authority.as_str())
                .unwrap_or_else(|_| header::HeaderValue::from_static("localhost")),
            idle: (0..stacks).map(|_| Mutex::new(Vec::new())).collect(),
            max_idle: max_idle.div_ceil(stacks),
            idle_timeout,
            connect_timeout,
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
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
        reached: &AtomicBool,
    ) -> Result<(Response<Incoming>, Lease), H1Error> {
        if !req.headers().contains_key(header::HOST) {
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        // Origin form only: an absolute-form target from the client
        // (`GET http://elsewhere/ HTTP/1.1`) must not reach the backend as one.
        if req.uri().scheme().is_some() || req.uri().authority().is_some() {
            *req.uri_mut() = match req.uri().path_and_query() {
                Some(pq) => Uri::from(pq.clone()),
                None => Uri::from_static("/"),
            };
        } else if req.uri().path_and_query().is_none() {
            *req.uri_mut() = Uri::from_static("/");
        }
        let (mut sender, reused) = match self.checkout() {
            Some(sender) => (sender, true),
            None => (self.connect().await?, false),
        };
        reached.store(true, Ordering::Release);
        let response = match sender.try_send_request(req).await {
            Ok(response) => response,
            Err(mut err) => match err.take_message() {
                // Never sent: the idle connection was closed under us.
                Some(req) if reused => {
                    reached.store(false, Ordering::Release);
                    sender = self.connect().await?;
                    reached.store(true, Ordering::Release);
                    sender.send_request(req).await.map_err(H1Error::Request)?
                }
                _ => return Err(H1Error::Request(err.into_error())),
            },
        };
        // A switched protocol owns the connection from now on.
        let keep = response.status() != http::StatusCode::SWITCHING_PROTOCOLS;
        let lease = Lease {
            pool: self.clone(),
            sender: keep.then_some(sender),
            finished: false,
        };
        Ok((response, lease))
    }

    /// The most recently used live connection, if any.
    fn checkout(&self) -> Option<SendRequest<ProxyBody>> {
        let mut idle = self.stack().lock();
        while let Some(Idle { sender, since }) = idle.pop() {
            if sender.is_ready() && since.elapsed() < self.idle_timeout {
                return Some(sender);
            }
        }
        None
    }

    fn put(self: &Arc<Self>, mut sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        if sender.is_ready() {
            self.push(sender);
            return;
        }
        // The connection task has not yet taken in the end of the response;
        // it is ready in a moment (or closed).
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                pool.push(sender);
            }
        });
    }

    fn push(&self, sender: SendRequest<ProxyBody>) {
        let mut idle = self.stack().lock();
        if idle.len() < self.max_idle {
            idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    async fn connect(&self) -> Result<SendRequest<ProxyBody>, H1Error> {
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            TcpStream::connect(&self.addr),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(H1Error::Connect(Box::new(err))),
            Err(_) => {
                return Err(H1Error::Connect(
                    format!("connect timed out after {:?}", self.connect_timeout).into(),
                ));
            }
        };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|err| H1Error::Connect(Box::new(err)))?;
        spawn_connection(conn.with_upgrades());
        Ok(sender)
    }
}

fn spawn_connection<F>(conn: F)
where
    F: Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(%err, "upstream connection ended with an error");
        }
    });
}

/// Closes connections idle for longer than the pool's `idle_timeout`, until
/// the pool is gone.
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
                .retain(|i| i.since.elapsed() < timeout && !i.sender.is_closed());
        }
    }
}
