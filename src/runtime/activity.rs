//! A connection's activity, watched so that no connection stays open doing
//! nothing: one that has not started a request within `header_timeout` of
//! being accepted is closed, whatever its protocol (a silent socket, a
//! partial HTTP/2 preface, a TLS or HTTP/2 connection that never sends a
//! request), and one with no request in progress for `idle_timeout` is shut
//! down gracefully (HTTP/2: GOAWAY; HTTP/1.1: closed between requests).
//!
//! hyper's own header timer only starts once it reads an HTTP/1 head, which
//! the automatic HTTP/1-vs-HTTP/2 detection does not do for the first bytes;
//! this watch starts at accept. A request counts from the moment its head is
//! complete (the service is called) until its response head is returned; a
//! long response body is never cut, since a graceful shutdown lets it finish.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::service::Service;
use tokio::time::Instant;

/// Why a connection's watch ran out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// No request started within `header_timeout` of accept: close now.
    NoRequest,
    /// No request in progress for `idle_timeout`: shut down gracefully.
    Idle,
}

/// One connection's requests in progress and when it last had none.
pub(crate) struct Activity {
    accepted: Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
    active: AtomicUsize,
    started: AtomicBool,
    /// Milliseconds after `accepted` when the last request ended.
    idle_since_ms: AtomicU64,
}

impl Activity {
    pub(crate) fn new(
        accepted: Instant,
        header_timeout: Duration,
        idle_timeout: Duration,
    ) -> Arc<Activity> {
        Arc::new(Activity {
            accepted,
            header_timeout,
            idle_timeout,
            active: AtomicUsize::new(0),
            started: AtomicBool::new(false),
            idle_since_ms: AtomicU64::new(0),
        })
    }

    /// When the watch runs out if nothing changes, and why (`None`: a
    /// request is in progress, look again then).
    fn deadline(&self, now: Instant) -> (Option<Expiry>, Instant) {
        if !self.started.load(Ordering::Acquire) {
            return (Some(Expiry::NoRequest), self.accepted + self.header_timeout);
        }
        if self.active.load(Ordering::Acquire) > 0 {
            return (None, now + self.idle_timeout);
        }
        let idle_since =
            self.accepted + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        (Some(Expiry::Idle), idle_since + self.idle_timeout)
    }

    /// Resolves when the connection has had no request for too long.
    pub(crate) async fn expired(&self) -> Expiry {
        loop {
            let now = Instant::now();
            match self.deadline(now) {
                (Some(expiry), at) if at <= now => return expiry,
                (_, at) => tokio::time::sleep_until(at).await,
            }
        }
    }

    /// Marks a request in progress until the returned guard drops.
    fn begin(self: &Arc<Self>) -> Busy {
        self.active.fetch_add(1, Ordering::AcqRel);
        self.started.store(true, Ordering::Release);
        Busy {
            activity: self.clone(),
        }
    }
}

/// A request in progress.
struct Busy {
    activity: Arc<Activity>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        let activity = &self.activity;
        let since = u64::try_from(activity.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        activity.idle_since_ms.fetch_max(since, Ordering::AcqRel);
        activity.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A service whose calls are recorded in an [`Activity`].
pub(crate) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>) -> Tracked<S> {
        Tracked { inner, activity }
    }
}

impl<S, R> Service<R> for Tracked<S>
where
    S: Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = TrackedFuture<S::Future>;

    fn call(&self, req: R) -> Self::Future {
        let busy = self.activity.begin();
        TrackedFuture {
            inner: self.inner.call(req),
            _busy: busy,
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's future, holding its place in the activity until done.
    pub(crate) struct TrackedFuture<F> {
        #[pin]
        inner: F,
        _busy: Busy,
    }
}

impl<F: Future> Future for TrackedFuture<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_a_request_expires_after_the_header_timeout() {
        let activity = Activity::new(
            Instant::now(),
            Duration::from_secs(3),
            Duration::from_secs(60),
        );
        let started = Instant::now();
        assert_eq!(activity.expired().await, Expiry::NoRequest);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_expires_after_its_last_request() {
        let accepted = Instant::now();
        let activity = Activity::new(accepted, Duration::from_secs(3), Duration::from_secs(60));
        let busy = activity.begin();
        tokio::time::advance(Duration::from_secs(100)).await;
        // In progress for longer than the idle timeout: not idle.
        let watch = tokio::time::timeout(Duration::from_secs(30), activity.expired()).await;
        assert!(watch.is_err(), "a request in progress is not idle");
        drop(busy);
        let ended = Instant::now();
        assert_eq!(activity.expired().await, Expiry::Idle);
        assert_eq!(ended.elapsed(), Duration::from_secs(60));
    }
}
