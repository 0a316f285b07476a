//! A listener's door: how many connections it serves at once, and what
//! happens to the ones that arrive beyond that.
//!
//! A connection past the cap is still accepted — left in the kernel's
//! backlog it would wait unseen, past any route's timeout — and answered at
//! once with a canned `503` + `Retry-After` + `Connection: close`, written
//! without reading the request (a TLS connection is closed unanswered: no
//! response can be written before a handshake). After the answer sluice
//! stops writing and reads what the client still sends for up to
//! [`LINGER`] before closing, so the client is not reset before it reads
//! the 503; at most a reserve of such lingering connections (1/16 of the
//! cap, at least 16) is held, beyond which the connection is closed right
//! after the answer. Invariant: connections served ≤ the cap; descriptors
//! held ≤ cap + reserve.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use prometheus::{IntCounter, IntGauge};
use tokio::io::AsyncReadExt;
use tokio::sync::Notify;

/// How long a refused connection is read from (and discarded) after its 503,
/// before it is closed.
pub(crate) const LINGER: Duration = Duration::from_secs(1);

/// The most bytes read from a refused connection before closing it.
const LINGER_BYTES: usize = 64 * 1024;

/// The answer to a connection beyond the cap.
const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 36\r\n\
\r\n\
sluice: too many connections; retry\n";

/// The smallest reserve of refused connections held while they linger.
const MIN_RESERVE: usize = 16;

/// A listener's connection cap and its open connections.
pub(crate) struct Door {
    open: AtomicUsize,
    lingering: AtomicUsize,
    max: usize,
    reserve: usize,
    /// The open-connections gauge, if this listener publishes one.
    gauge: Option<IntGauge>,
    refused: IntCounter,
    /// Notified when the last open connection closes.
    empty: Notify,
}

/// A connection's place under the cap; given back when dropped.
pub(crate) struct Slot {
    door: Arc<Door>,
}

impl Door {
    pub(crate) fn new(max: usize, gauge: Option<IntGauge>, refused: IntCounter) -> Arc<Door> {
        Arc::new(Door {
            open: AtomicUsize::new(0),
            lingering: AtomicUsize::new(0),
            max,
            reserve: (max / 16).max(MIN_RESERVE),
            gauge,
            refused,
            empty: Notify::new(),
        })
    }

    /// A place for one more connection, or `None` at the cap.
    pub(crate) fn enter(self: &Arc<Self>) -> Option<Slot> {
        let admitted = self
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < self.max).then_some(open + 1)
            })
            .is_ok();
        if !admitted {
            return None;
        }
        if let Some(gauge) = &self.gauge {
            gauge.inc();
        }
        Some(Slot { door: self.clone() })
    }

    /// Connections open now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Answers a connection beyond the cap (see the module doc) and counts
    /// it. Must be called inside a tokio runtime, which holds the lingering
    /// connection.
    pub(crate) fn refuse(self: &Arc<Self>, mut stream: TcpStream, tls: bool) {
        self.refused.inc();
        if tls {
            return;
        }
        // A fresh socket's send buffer takes these few bytes whole; if it
        // does not, the client is gone or broken and is simply closed.
        if stream.write_all(REFUSAL).is_err() || stream.shutdown(std::net::Shutdown::Write).is_err()
        {
            return;
        }
        let lingering = self
            .lingering
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.reserve).then_some(n + 1)
            })
            .is_ok();
        if !lingering {
            return;
        }
        let door = self.clone();
        tokio::spawn(async move {
            if let Ok(mut stream) = tokio::net::TcpStream::from_std(stream) {
                let mut sink = [0u8; 4096];
                let mut read = 0;
                let drain = async {
                    while read < LINGER_BYTES {
                        match stream.read(&mut sink).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => read += n,
                        }
                    }
                };
                // Either way the connection closes now.
                let _elapsed = tokio::time::timeout(LINGER, drain).await;
            }
            door.lingering.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Resolves once no connection is open.
    pub(crate) async fn drained(&self) {
        loop {
            let notified = self.empty.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let door = &self.door;
        if let Some(gauge) = &door.gauge {
            gauge.dec();
        }
        if door.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            door.empty.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_declares_its_body_length() {
        let text = std::str::from_utf8(REFUSAL).expect("ascii");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("content-length: {}", body.len())));
    }

    #[test]
    fn slots_count_open_connections_up_to_the_cap() {
        let gauge = IntGauge::new("open", "open").expect("gauge");
        let refused = IntCounter::new("refused", "refused").expect("counter");
        let door = Door::new(2, Some(gauge.clone()), refused);
        let a = door.enter().expect("first");
        let b = door.enter().expect("second");
        assert!(door.enter().is_none(), "a third is over the cap");
        assert_eq!((door.open(), gauge.get()), (2, 2));
        drop(a);
        drop(b);
        assert_eq!((door.open(), gauge.get()), (0, 0));
        assert!(door.enter().is_some());
    }
}
