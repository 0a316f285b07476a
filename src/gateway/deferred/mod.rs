//! Async routes: accept now, deliver later.
//!
//! A request on a route with `[routes.async]` is appended to the route's
//! journal ([`crate::journal`]) and answered `202 Accepted` with a ticket
//! only once the journal has synced it; a delivery task then sends the
//! queue to the backend oldest first, paced by the route's own shaper (its
//! GCRA rate, the upstream's in-flight cap and adaptive limit, pause and
//! rate overrides), retrying failures with jittered exponential back-off,
//! expiring what is older than `deliver_within`, parking what keeps failing
//! as a dead letter.
//!
//! - `record`: the bytes of an accepted request and of what happens to it;
//! - `book`: the journal's contents indexed in memory (queue, retries,
//!   tickets, idempotency keys);
//! - `delivery`: the delivery task and one delivery;
//! - [`metrics`]: the async families, registered here.
//!
//! Invariants: `202` only after the record is durable; a request that
//! cannot be made durable gets `503` + `Retry-After`; delivery is at least
//! once (a duplicate only after a crash between the backend's answer and
//! its record); nothing is delivered after its deadline.

mod book;
mod delivery;
pub mod metrics;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

pub(crate) use self::book::unix_ms;
use self::book::{Book, Status};
pub use self::metrics::{AsyncFamilies, AsyncMetrics, Event};
use self::record::{Accepted, Ended, Note, TicketId, summary};
use super::route::RouteState;
use crate::config::{AsyncConfig, StorageConfig};
use crate::journal::{Journal, JournalError, Options, Replayed};
use crate::upstream::Upstream;

/// Where tickets are looked up, on the proxy listener.
pub const TICKET_PATH: &str = "/_sluice/tickets/";

/// What the delivery task works with; replaced on reload.
pub(crate) struct Wiring {
    pub(crate) upstream: Arc<Upstream>,
    pub(crate) state: Arc<RouteState>,
    pub(crate) config: AsyncConfig,
}

/// One async route's journal, book and delivery task; kept across reloads
/// while the route keeps its name.
pub struct Deferred {
    name: String,
    dir: PathBuf,
    journal: Journal,
    book: Mutex<Book>,
    wiring: ArcSwap<Wiring>,
    /// Woken when there is something new to deliver, a retry is due sooner,
    /// or the route is resumed.
    changed: Arc<Notify>,
    metrics: AsyncMetrics,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

/// Why a request was not accepted.
#[derive(Debug)]
pub enum Refused {
    /// `capacity` requests are held: try again in about this long.
    Full(Duration),
    /// The journal could not make it durable (disk full, I/O error).
    Store(JournalError),
}

impl Deferred {
    /// Opens the route's journal under `storage.dir` (replaying what it
    /// holds) and starts its delivery task. Blocking: it reads the journal.
    pub(crate) fn open(
        name: &str,
        storage: &StorageConfig,
        wiring: Wiring,
        metrics: AsyncMetrics,
    ) -> Result<Arc<Deferred>, JournalError> {
        let dir = journal_dir(storage, name)?;
        let config = wiring.config;
        let mut options = Options::new(config.capacity.get());
        options.segment_bytes = storage.segment_bytes;
        let fsync = metrics.fsync.clone();
        options.on_sync = Some(Arc::new(move |took: Duration| {
            fsync.observe(took.as_secs_f64());
        }));
        let mut book = Book::new(config.deliver_within, config.capacity.get());
        let now = Instant::now();
        let journal = Journal::open(&dir, options, |r| replay(&mut book, r, now))?;
        tracing::info!(
            route = name,
            dir = %dir.display(),
            live = journal.live(),
            "async route: journal opened"
        );
        metrics.configured(config.capacity.get(), config.deliver_within.as_secs());
        let deferred = Arc::new(Deferred {
            name: name.to_string(),
            dir,
            journal,
            book: Mutex::new(book),
            wiring: ArcSwap::from_pointee(wiring),
            changed: Arc::new(Notify::new()),
            metrics,
            tasks: Mutex::new(Vec::new()),
        });
        // Several pacers wait on the shaper at once, so its release task
        // hands out grants on the rate's schedule whatever one pacer's
        // latency (as many synchronous requests would wait in its queue).
        let tasks = (0..delivery::PACERS)
            .map(|_| {
                tokio::spawn(delivery::run(
                    Arc::downgrade(&deferred),
                    deferred.changed.clone(),
                ))
            })
            .collect();
        *deferred.tasks.lock() = tasks;
        Ok(deferred)
    }

    /// Whether this route's journal is the one `storage` would open.
    pub(crate) fn uses(&self, storage: &StorageConfig) -> bool {
        journal_dir(storage, &self.name).is_ok_and(|dir| dir == self.dir)
    }

    /// A new generation's upstream, route state and limits.
    pub(crate) fn rewire(&self, wiring: Wiring) {
        let config = wiring.config;
        self.book
            .lock()
            .set_limits(config.deliver_within, config.capacity.get());
        self.journal.set_capacity(config.capacity.get());
        self.metrics
            .configured(config.capacity.get(), config.deliver_within.as_secs());
        self.wiring.store(Arc::new(wiring));
        self.wake();
    }

    /// Makes `accepted` durable; its ticket once it is. A request carrying
    /// an idempotency key already seen within `deliver_within` gets that
    /// key's ticket, and nothing is written.
    pub async fn accept(self: &Arc<Self>, accepted: Accepted) -> Result<TicketId, Refused> {
        let now = Instant::now();
        if let Some(key) = &accepted.idempotency_key
            && let Some(ticket) = self.book.lock().ticket_for_key(key, now)
        {
            return Ok(ticket);
        }
        let bytes = accepted.encode();
        let Some(summary) = summary(&bytes) else {
            return Err(Refused::Store(JournalError::Closed));
        };
        // In a task of its own: should the client leave while the record
        // is written, it still enters the book once durable.
        let this = self.clone();
        let appending = tokio::spawn(async move {
            let appended = this.journal.append(bytes).await?;
            this.book
                .lock()
                .add(appended.seq, &summary, appended.at, Instant::now());
            this.metrics.count(Event::Accepted);
            this.wake();
            Ok(())
        });
        let appended = appending.await.unwrap_or(Err(JournalError::Closed));
        match appended {
            Ok(()) => Ok(accepted.ticket),
            Err(err) => {
                self.metrics.count(Event::Refused);
                Err(match err {
                    JournalError::Full(_) => Refused::Full(self.one_delivery()),
                    other => {
                        tracing::error!(route = %self.name, error = %other, "async route: cannot make a request durable; 503");
                        Refused::Store(other)
                    }
                })
            }
        }
    }

    /// Wakes every pacer (and the next to wait, should none be waiting).
    fn wake(&self) {
        self.changed.notify_waiters();
        self.changed.notify_one();
    }

    /// About how long until a delivery frees a place: one release interval
    /// at the route's rate.
    fn one_delivery(&self) -> Duration {
        let rate = self.wiring.load().state.shaper.limits().rate;
        rate.map_or(Duration::from_secs(1), |(rate, _)| {
            Duration::from_secs_f64(1.0 / rate)
        })
    }

    /// The ticket's state as JSON, if this route knows the ticket.
    pub fn status_json(&self, ticket: TicketId) -> Option<Value> {
        let status = self.book.lock().status(ticket)?;
        let rate = self
            .wiring
            .load()
            .state
            .shaper
            .limits()
            .rate
            .map(|(r, _)| r);
        let mut value = json!({ "ticket": ticket.to_string(), "route": self.name });
        let extra = match status {
            Status::Queued {
                ahead,
                attempts,
                retry_at,
            } => json!({
                "state": "queued",
                "position": ahead + 1,
                "attempts": attempts,
                "expected_delivery_seconds": rate.map(|r| (ahead + 1) as f64 / r),
                "retry_in_seconds": retry_at.map(|at| at.saturating_duration_since(Instant::now()).as_secs_f64()),
            }),
            Status::InFlight { attempts } => json!({ "state": "in_flight", "attempts": attempts }),
            Status::DeadLetter { attempts } => json!({ "state": "failed", "attempts": attempts }),
            Status::Ended(Ended::Delivered { status, body }) => json!({
                "state": "delivered",
                "status": status,
                "body": (!body.is_empty()).then(|| String::from_utf8_lossy(&body).into_owned()),
            }),
            Status::Ended(Ended::Expired) => json!({ "state": "expired" }),
            Status::Ended(Ended::Discarded) => json!({ "state": "discarded" }),
        };
        if let (Value::Object(v), Value::Object(e)) = (&mut value, extra) {
            v.extend(e);
        }
        Some(value)
    }

    /// Depth, oldest age, expected drain time and the rest, for the admin API.
    pub fn summary_json(&self) -> Value {
        let book = self.book.lock();
        let wiring = self.wiring.load();
        let rate = wiring.state.shaper.limits().rate.map(|(r, _)| r);
        let oldest = book
            .oldest_ms()
            .map(|ms| unix_ms().saturating_sub(ms) as f64 / 1e3);
        json!({
            "held": book.len(),
            "queued": book.queued(),
            "in_flight": book.in_flight(),
            "dead_letters": book.parked(),
            "capacity": wiring.config.capacity.get(),
            "bytes_on_disk": self.journal.bytes(),
            "oldest_age_seconds": oldest,
            "deliver_within_seconds": wiring.config.deliver_within.as_secs_f64(),
            "expected_drain_seconds": rate.map(|r| book.queued() as f64 / r),
            "delivery_paused": wiring.state.shaper.is_paused(),
        })
    }

    /// Dead letters, oldest first (at most `limit`).
    pub fn dead_letters_json(&self, limit: usize) -> Value {
        let letters = self.book.lock().dead_letters(limit);
        Value::Array(
            letters
                .into_iter()
                .map(|(_, e)| {
                    json!({
                        "ticket": e.ticket.to_string(),
                        "accepted_at_unix_ms": e.accepted_at_ms,
                        "attempts": e.attempts,
                    })
                })
                .collect(),
        )
    }

    /// Sends every dead letter back to the queue (attempts reset,
    /// `deliver_within` counted from now); how many went.
    pub async fn redrive(&self) -> Result<usize, JournalError> {
        let letters = self.book.lock().dead_letters(usize::MAX);
        let note = Note::Redriven { at_ms: unix_ms() };
        let notes = letters
            .iter()
            .map(|(seq, _)| (*seq, note.encode()))
            .collect();
        self.journal.note_many(notes).await?;
        let mut book = self.book.lock();
        for (seq, _) in &letters {
            book.note(*seq, note, Instant::now());
        }
        drop(book);
        self.wake();
        Ok(letters.len())
    }

    /// Drops every dead letter for good; how many went.
    pub async fn discard(&self) -> Result<usize, JournalError> {
        let letters = self.book.lock().dead_letters(usize::MAX);
        let done = letters
            .iter()
            .map(|(seq, _)| (*seq, Ended::Discarded.encode()))
            .collect();
        self.journal.done_many(done).await?;
        let mut book = self.book.lock();
        for (seq, _) in &letters {
            book.end(*seq, Ended::Discarded, Instant::now());
        }
        Ok(letters.len())
    }

    /// Updates the sampled gauges.
    pub fn sample_metrics(&self) {
        let book = self.book.lock();
        let oldest = book
            .oldest_ms()
            .map_or(0, |ms| unix_ms().saturating_sub(ms) / 1000);
        self.metrics
            .sample(book.len(), self.journal.bytes(), book.parked(), oldest);
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

/// `storage.dir/async/ROUTE`: the route's name made safe as a file name.
fn journal_dir(storage: &StorageConfig, route: &str) -> Result<PathBuf, JournalError> {
    let Some(dir) = &storage.dir else {
        return Err(JournalError::Io(Arc::new(std::io::Error::other(
            "[storage] dir is not set",
        ))));
    };
    let safe: String = route
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // Two names made the same by the mapping still get their own journal.
    let tag = crc32fast::hash(route.as_bytes());
    Ok(Path::new(dir)
        .join("async")
        .join(format!("{safe}-{tag:08x}")))
}

/// One record read back from the journal, into the book.
fn replay(book: &mut Book, record: Replayed<'_>, now: Instant) {
    match record {
        Replayed::Entry { seq, at, body } => match summary(body) {
            Some(summary) => book.add(seq, &summary, at, now),
            None => tracing::error!(
                seq,
                "async route: journal entry of an unknown format; skipped"
            ),
        },
        Replayed::Note { seq, body } => {
            if let Some(note) = Note::decode(body) {
                book.note(seq, note, now);
            }
        }
        Replayed::Done { seq, body } => {
            if let Some(ended) = Ended::decode(body) {
                book.end(seq, ended, now);
            }
        }
    }
}
