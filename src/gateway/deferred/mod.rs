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
//! - `delivery`: the delivery task and one delivery, whatever the store;
//! - `stream`: the "redis" store (a stream a fleet shares) and `fleet`, the
//!   task that fills this instance's book from it and takes over what a dead
//!   instance held;
//! - [`metrics`]: the async families, registered here.
//!
//! Invariants: `202` only after the record is durable; a request that
//! cannot be made durable gets `503` + `Retry-After`; delivery is at least
//! once (a duplicate only after a crash between the backend's answer and
//! its record); nothing is delivered after its deadline.

mod book;
mod delivery;
mod fleet;
pub mod metrics;
pub mod record;
mod stream;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

pub(crate) use self::book::unix_ms;
use self::book::{At, Book, Entry, Status};
pub use self::metrics::{AsyncFamilies, AsyncMetrics, Event};
use self::record::{Accepted, Ended, Note, TicketId, summary};
use self::stream::{Added, Stored, Stream};
use super::route::{RedisShared, RouteState};
use crate::config::{AsyncConfig, AsyncStore, StorageConfig};
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

/// Where a route's requests are kept.
enum Store {
    /// "local": the journal under `[storage] dir`.
    Local { dir: PathBuf, journal: Journal },
    /// "redis": the route's stream, shared by the fleet; the book holds
    /// what this instance has taken from it.
    Redis(Box<Stream>),
}

/// Where a route's store is to be opened.
pub(crate) enum Place<'a> {
    Local(&'a StorageConfig),
    Redis(&'a RedisShared),
}

/// One async route's store, book and delivery task; kept across reloads
/// while the route keeps its name and its store.
pub struct Deferred {
    name: String,
    store: Store,
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
    /// Opens the route's store: the journal under `storage.dir` (replaying
    /// what it holds; blocking), or the Redis stream (nothing read until
    /// the fleet task's first fetch); and starts its delivery tasks.
    pub(crate) fn open(
        name: &str,
        place: Place<'_>,
        wiring: Wiring,
        metrics: AsyncMetrics,
    ) -> Result<Arc<Deferred>, JournalError> {
        let storage = match place {
            Place::Local(storage) => storage,
            Place::Redis(redis) => return Ok(Deferred::open_redis(name, redis, wiring, metrics)),
        };
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
            store: Store::Local { dir, journal },
            book: Mutex::new(book),
            wiring: ArcSwap::from_pointee(wiring),
            changed: Arc::new(Notify::new()),
            metrics,
            tasks: Mutex::new(Vec::new()),
        });
        deferred.start_pacers();
        Ok(deferred)
    }

    /// The "redis" store: this instance a consumer of the route's stream.
    fn open_redis(
        name: &str,
        redis: &RedisShared,
        wiring: Wiring,
        metrics: AsyncMetrics,
    ) -> Arc<Deferred> {
        let config = wiring.config;
        let stream = Stream::new(redis.link.clone(), &redis.config.key_prefix, name);
        tracing::info!(
            route = name,
            consumer = stream.consumer(),
            "async route: redis stream store"
        );
        metrics.configured(config.capacity.get(), config.deliver_within.as_secs());
        let deferred = Arc::new(Deferred {
            name: name.to_string(),
            store: Store::Redis(Box::new(stream)),
            book: Mutex::new(Book::new(config.deliver_within, config.capacity.get())),
            wiring: ArcSwap::from_pointee(wiring),
            changed: Arc::new(Notify::new()),
            metrics,
            tasks: Mutex::new(Vec::new()),
        });
        deferred.start_pacers();
        if let Store::Redis(stream) = &deferred.store {
            let fleet = tokio::spawn(fleet::run(Arc::downgrade(&deferred), stream.wanted.clone()));
            deferred.tasks.lock().push(fleet);
        }
        deferred
    }

    fn start_pacers(self: &Arc<Self>) {
        let deferred = self;
        // Several pacers wait on the shaper at once, so its release task
        // hands out grants on the rate's schedule whatever one pacer's
        // latency (as many synchronous requests would wait in its queue).
        let tasks = (0..delivery::PACERS)
            .map(|_| {
                tokio::spawn(delivery::run(
                    Arc::downgrade(deferred),
                    deferred.changed.clone(),
                ))
            })
            .collect::<Vec<_>>();
        deferred.tasks.lock().extend(tasks);
    }

    /// Whether this route's store is the one `place` would open.
    pub(crate) fn uses(&self, place: &Place<'_>) -> bool {
        match (&self.store, place) {
            (Store::Local { dir, .. }, Place::Local(storage)) => {
                journal_dir(storage, &self.name).is_ok_and(|d| d == *dir)
            }
            (Store::Redis(stream), Place::Redis(redis)) => {
                stream.uses(&redis.link, &redis.config.key_prefix)
            }
            _ => false,
        }
    }

    /// A new generation's upstream, route state and limits.
    pub(crate) fn rewire(&self, wiring: Wiring) {
        let config = wiring.config;
        self.book
            .lock()
            .set_limits(config.deliver_within, config.capacity.get());
        if let Store::Local { journal, .. } = &self.store {
            journal.set_capacity(config.capacity.get());
        }
        self.metrics
            .configured(config.capacity.get(), config.deliver_within.as_secs());
        self.wiring.store(Arc::new(wiring));
        self.wake();
    }

    /// Makes `accepted` durable; its ticket once it is. A request carrying
    /// an idempotency key already seen within `deliver_within` gets that
    /// key's ticket, and nothing is written.
    pub async fn accept(self: &Arc<Self>, accepted: Accepted) -> Result<TicketId, Refused> {
        let journal = match &self.store {
            Store::Local { journal, .. } => journal,
            Store::Redis(stream) => return self.accept_redis(stream, accepted).await,
        };
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
            let Store::Local { journal, .. } = &this.store else {
                return Err(JournalError::Closed);
            };
            let appended = journal.append(bytes).await?;
            this.book.lock().add(
                appended.seq,
                &summary,
                At::Journal(appended.at),
                Instant::now(),
            );
            this.metrics.count(Event::Accepted);
            this.wake();
            Ok(())
        });
        let _ = journal;
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

    /// Accepts into the Redis stream: answered once Redis has the request
    /// (and its ticket and idempotency key), refused if it is down or slow.
    async fn accept_redis(&self, stream: &Stream, accepted: Accepted) -> Result<TicketId, Refused> {
        let config = self.wiring.load().config;
        let ticket = accepted.ticket;
        let key = accepted.idempotency_key.clone();
        let added = stream
            .add(
                accepted.encode(),
                ticket,
                key.as_deref(),
                config.capacity.get(),
                (ticket_ttl(&config), config.deliver_within),
            )
            .await;
        match added {
            Ok(Added::New) => {
                self.metrics.count(Event::Accepted);
                stream.wanted.notify_one();
                Ok(ticket)
            }
            Ok(Added::Existing(first)) => Ok(first),
            Ok(Added::Full) => {
                self.metrics.count(Event::Refused);
                Err(Refused::Full(self.one_delivery()))
            }
            Err(err) => {
                self.metrics.count(Event::Refused);
                tracing::error!(route = %self.name, error = %err, "async route: redis did not take the request; 503");
                Err(Refused::Store(redis_error(err)))
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
    pub async fn status_json(&self, ticket: TicketId) -> Option<Value> {
        let local = self.book.lock().status(ticket);
        let status = match (&self.store, local) {
            (Store::Local { .. }, local) => local?,
            // Held here: this instance knows best (in flight, retry time).
            (Store::Redis(_), Some(local @ (Status::InFlight { .. } | Status::Queued { .. }))) => {
                local
            }
            (Store::Redis(stream), _) => match stream.status(ticket).await {
                Ok(stored) => match stored? {
                    Stored::Queued { attempts, ahead } => Status::Queued {
                        ahead: ahead.map_or(0, |a| a as usize),
                        attempts,
                        retry_at: None,
                    },
                    Stored::DeadLetter { attempts } => Status::DeadLetter { attempts },
                    Stored::Ended(ended) => Status::Ended(ended),
                },
                Err(err) => {
                    tracing::warn!(route = %self.name, error = %err, "async route: cannot read a ticket from redis");
                    return Some(json!({
                        "ticket": ticket.to_string(),
                        "route": self.name,
                        "state": "unknown",
                        "error": "the store is unreachable",
                    }));
                }
            },
        };
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

    /// Depth, oldest age, expected drain time and the rest, for the admin
    /// API (the Redis store's as last sampled, at most a second old).
    pub fn summary_json(&self) -> Value {
        let wiring = self.wiring.load();
        let rate = wiring.state.shaper.limits().rate.map(|(r, _)| r);
        let age = |ms: Option<u64>| ms.map(|ms| unix_ms().saturating_sub(ms) as f64 / 1e3);
        let (held, queued, in_flight, dead, bytes, oldest) = match &self.store {
            Store::Local { journal, .. } => {
                let book = self.book.lock();
                (
                    book.len() as u64,
                    book.queued() as u64,
                    book.in_flight() as u64,
                    book.parked() as u64,
                    journal.bytes(),
                    book.oldest_ms(),
                )
            }
            Store::Redis(stream) => {
                let s = *stream.snapshot.lock();
                (
                    s.queue + s.dead,
                    s.queue.saturating_sub(s.pending),
                    s.pending,
                    s.dead,
                    s.bytes,
                    s.oldest_ms,
                )
            }
        };
        let mut value = json!({
            "held": held,
            "queued": queued,
            "in_flight": in_flight,
            "dead_letters": dead,
            "capacity": wiring.config.capacity.get(),
            "oldest_age_seconds": age(oldest),
            "deliver_within_seconds": wiring.config.deliver_within.as_secs_f64(),
            "expected_drain_seconds": rate.map(|r| queued as f64 / r),
            "delivery_paused": wiring.state.shaper.is_paused(),
        });
        if let Value::Object(v) = &mut value {
            match &self.store {
                Store::Local { .. } => {
                    v.insert("store".into(), json!("local"));
                    v.insert("bytes_on_disk".into(), json!(bytes));
                }
                Store::Redis(stream) => {
                    v.insert("store".into(), json!("redis"));
                    v.insert("bytes_in_redis".into(), json!(bytes));
                    v.insert("consumer".into(), json!(stream.consumer()));
                    v.insert("held_here".into(), json!(self.book.lock().len()));
                }
            }
        }
        value
    }

    /// Dead letters, oldest first (at most `limit`).
    pub async fn dead_letters_json(&self, limit: usize) -> Result<Value, JournalError> {
        let letters: Vec<(TicketId, u64, u32)> = match &self.store {
            Store::Local { .. } => self
                .book
                .lock()
                .dead_letters(limit)
                .into_iter()
                .map(|(_, e)| (e.ticket, e.accepted_at_ms, e.attempts))
                .collect(),
            Store::Redis(stream) => stream
                .dead_letters(limit)
                .await
                .map_err(redis_error)?
                .into_iter()
                .map(|l| {
                    let at = summary(&l.record).map_or(0, |s| s.accepted_at_ms);
                    (l.ticket, at, l.attempts)
                })
                .collect(),
        };
        Ok(Value::Array(
            letters
                .into_iter()
                .map(|(ticket, at, attempts)| {
                    json!({
                        "ticket": ticket.to_string(),
                        "accepted_at_unix_ms": at,
                        "attempts": attempts,
                    })
                })
                .collect(),
        ))
    }

    /// Sends every dead letter back to the queue (attempts reset,
    /// `deliver_within` counted from now); how many went.
    pub async fn redrive(&self) -> Result<usize, JournalError> {
        let journal = match &self.store {
            Store::Local { journal, .. } => journal,
            Store::Redis(stream) => {
                let ttl = ticket_ttl(&self.wiring.load().config);
                let n = stream.redrive(unix_ms(), ttl).await.map_err(redis_error)?;
                stream.wanted.notify_one();
                return Ok(n);
            }
        };
        let letters = self.book.lock().dead_letters(usize::MAX);
        let note = Note::Redriven { at_ms: unix_ms() };
        let notes = letters
            .iter()
            .map(|(seq, _)| (*seq, note.encode()))
            .collect();
        journal.note_many(notes).await?;
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
        let journal = match &self.store {
            Store::Local { journal, .. } => journal,
            Store::Redis(stream) => {
                let keep = self.wiring.load().config.deliver_within;
                return stream.discard(keep).await.map_err(redis_error);
            }
        };
        let letters = self.book.lock().dead_letters(usize::MAX);
        let done = letters
            .iter()
            .map(|(seq, _)| (*seq, Ended::Discarded.encode()))
            .collect();
        journal.done_many(done).await?;
        let mut book = self.book.lock();
        for (seq, _) in &letters {
            book.end(*seq, Ended::Discarded, Instant::now());
        }
        Ok(letters.len())
    }

    /// Updates the sampled gauges (the Redis store's from its last sample).
    pub fn sample_metrics(&self) {
        match &self.store {
            Store::Local { journal, .. } => {
                let book = self.book.lock();
                let oldest = book
                    .oldest_ms()
                    .map_or(0, |ms| unix_ms().saturating_sub(ms) / 1000);
                self.metrics
                    .sample(book.len(), journal.bytes(), book.parked(), oldest);
            }
            Store::Redis(stream) => {
                let s = *stream.snapshot.lock();
                let oldest = s
                    .oldest_ms
                    .map_or(0, |ms| unix_ms().saturating_sub(ms) / 1000);
                self.metrics.sample(
                    (s.queue + s.dead) as usize,
                    s.bytes,
                    s.dead as usize,
                    oldest,
                );
            }
        }
    }

    /// The request an entry holds, read back.
    async fn read(&self, entry: &Entry) -> Result<Bytes, String> {
        match (&entry.at, &self.store) {
            (At::Stream { record, .. }, _) => Ok(record.clone()),
            (At::Journal(at), Store::Local { journal, .. }) => journal
                .read(*at)
                .await
                .map(Bytes::from)
                .map_err(|e| e.to_string()),
            (At::Journal(_), Store::Redis(_)) => Err("a journal entry in a redis book".into()),
        }
    }

    /// Entries that ended (delivered, expired): out of the book, and the
    /// store told how.
    async fn ended(&self, ended: Vec<(u64, Entry, Ended)>) {
        if ended.is_empty() {
            return;
        }
        {
            let mut book = self.book.lock();
            let now = Instant::now();
            for (seq, _, how) in &ended {
                book.end(*seq, how.clone(), now);
            }
        }
        self.record_ended(ended).await;
    }

    /// Tells the store how entries already out of the book ended.
    async fn record_ended(&self, ended: Vec<(u64, Entry, Ended)>) {
        match &self.store {
            Store::Local { journal, .. } => {
                let done = ended
                    .into_iter()
                    .map(|(seq, _, how)| (seq, how.encode()))
                    .collect();
                if let Err(err) = journal.done_many(done).await {
                    tracing::error!(route = %self.name, error = %err, "async route: cannot record how requests ended; they may be sent again after a restart");
                }
            }
            Store::Redis(stream) => {
                let keep = self.wiring.load().config.deliver_within;
                for (_, entry, how) in ended {
                    let At::Stream { id, .. } = &entry.at else {
                        continue;
                    };
                    stream.held.lock().remove(id);
                    if let Err(err) = stream.end(id, entry.ticket, &how, keep).await {
                        tracing::error!(route = %self.name, error = %err, "async route: cannot record in redis how a request ended; another instance may send it again");
                    }
                }
                stream.wanted.notify_one();
            }
        }
    }

    /// An attempt failed: retried at `retry_at`, or (`None`) parked as a
    /// dead letter; the store told.
    async fn failed(&self, seq: u64, entry: &Entry, attempts: u32, retry_at: Option<Instant>) {
        let note = match retry_at {
            Some(at) => {
                self.book.lock().retry(seq, attempts, at);
                Note::Failed { attempts }
            }
            None => {
                let note = Note::Parked { attempts };
                match &self.store {
                    Store::Local { .. } => self.book.lock().note(seq, note, Instant::now()),
                    Store::Redis(_) => {
                        self.book.lock().forget(seq);
                    }
                }
                note
            }
        };
        self.wake();
        let stored = match (&self.store, &entry.at) {
            (Store::Local { journal, .. }, _) => journal
                .note(seq, note.encode())
                .await
                .map_err(|e| e.to_string()),
            (Store::Redis(stream), At::Stream { id, .. }) => match note {
                Note::Parked { .. } => {
                    stream.held.lock().remove(id);
                    stream.wanted.notify_one();
                    stream.park(id, entry.ticket, attempts).await
                }
                _ => stream.failed(entry.ticket, attempts).await,
            },
            (Store::Redis(_), At::Journal(_)) => Ok(()),
        };
        if let Err(err) = stored {
            tracing::error!(route = %self.name, error = %err, "async route: cannot record a failed attempt");
        }
    }
}

/// How long a queued ticket's key lives in Redis: past `deliver_within`
/// (by then it is delivered or expired, and says so for `deliver_within`
/// more), with room for a takeover.
fn ticket_ttl(config: &AsyncConfig) -> Duration {
    let claim_idle = match config.store {
        AsyncStore::Redis { claim_idle } => claim_idle,
        AsyncStore::Local => Duration::ZERO,
    };
    config.deliver_within + claim_idle + Duration::from_secs(60)
}

/// A Redis failure, as the admin API and the accept path report it.
fn redis_error(message: String) -> JournalError {
    JournalError::Io(Arc::new(std::io::Error::other(message)))
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
            Some(summary) => book.add(seq, &summary, At::Journal(at), now),
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
