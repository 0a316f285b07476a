//! The fleet task of an async route on the "redis" store: keeps this
//! instance's book filled from the route's stream (at most
//! [`WINDOW`] requests ready or in flight), takes over what another
//! instance has held for `claim_idle` without a word (`XAUTOCLAIM`), tells
//! Redis every quarter of `claim_idle` that what this instance holds is
//! still in hand (so nobody takes it over), lets go of what another
//! instance took over meanwhile, and samples the route's depth.
//!
//! The pacers of [`super::delivery`] deliver what the book holds, as with
//! the local store.
//!
//! Invariant: an entry ID is in the book at most once; only entries this
//! instance's consumer holds in Redis are touched; an entry in flight is
//! never dropped from the book under its sender.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::book::{At, State};
use super::record::summary;
use super::stream::{Fetched, Stream, WINDOW, id_ms};
use super::{Deferred, Store};
use crate::config::AsyncStore;

/// How often the book looks for new requests when nothing wakes it
/// (requests accepted by other instances wake nobody here).
const POLL: Duration = Duration::from_millis(100);
/// The route's depth is sampled this often.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// Runs while the route's [`Deferred`] exists.
pub(super) async fn run(deferred: Weak<Deferred>, wanted: Arc<Notify>) {
    let mut last_claim: Option<Instant> = None;
    let mut last_touch = Instant::now();
    let mut last_sample: Option<Instant> = None;
    let mut failing = false;
    loop {
        let notified = wanted.notified();
        let full = {
            let Some(d) = deferred.upgrade() else { return };
            let Store::Redis(stream) = &d.store else {
                return;
            };
            let claim_idle = d.claim_idle();
            let every = (claim_idle / 4).max(Duration::from_millis(250));
            let now = Instant::now();
            let mut errors = Vec::new();
            if d.room() > 0 && last_claim.is_none_or(|at| now - at >= every) {
                last_claim = Some(now);
                match stream.fetch(d.room(), Some(claim_idle)).await {
                    Ok(got) => {
                        let taken = d.hold(stream, got);
                        if taken > 0 {
                            d.metrics.claimed(taken);
                            tracing::warn!(route = %d.name, taken, "async route: took over requests another instance held past claim_idle");
                        }
                    }
                    Err(err) => errors.push(err),
                }
            }
            let room = d.room();
            let mut full = false;
            if room > 0 {
                match stream.fetch(room, None).await {
                    Ok(got) => {
                        full = got.len() == room;
                        d.hold(stream, got);
                    }
                    Err(err) => errors.push(err),
                }
            }
            if now - last_touch >= every {
                last_touch = now;
                if let Err(err) = d.touch(stream).await {
                    errors.push(err);
                }
            }
            if last_sample.is_none_or(|at| now - at >= SAMPLE_EVERY) {
                last_sample = Some(now);
                if let Err(err) = stream.sample().await {
                    errors.push(err);
                }
            }
            match (errors.first(), failing) {
                (Some(err), false) => {
                    failing = true;
                    tracing::error!(route = %d.name, error = %err, "async route: redis unreachable; delivery waits for it");
                }
                (None, true) => {
                    failing = false;
                    tracing::info!(route = %d.name, "async route: redis reachable again");
                }
                _ => {}
            }
            full
        };
        if full {
            continue;
        }
        tokio::select! {
            () = notified => {}
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

impl Deferred {
    pub(super) fn claim_idle(&self) -> Duration {
        match self.wiring.load().config.store {
            AsyncStore::Redis { claim_idle } => claim_idle,
            AsyncStore::Local => Duration::from_secs(30),
        }
    }

    /// Room in the book: [`WINDOW`] less what is ready or in flight.
    fn room(&self) -> usize {
        let book = self.book.lock();
        WINDOW.saturating_sub(book.len() - book.waiting())
    }

    /// A pacer took an entry: the fleet task fetches more once the book
    /// is half empty.
    pub(super) fn took_one(&self) {
        if let Store::Redis(stream) = &self.store
            && self.room() >= WINDOW / 2
        {
            stream.wanted.notify_one();
        }
    }

    /// Fetched entries into the book (each ID once); how many went in.
    fn hold(&self, stream: &Stream, got: Vec<Fetched>) -> usize {
        if got.is_empty() {
            return 0;
        }
        let now = Instant::now();
        let mut book = self.book.lock();
        let mut held = stream.held.lock();
        let mut added = 0;
        for f in got {
            if held.contains_key(&f.id) {
                continue;
            }
            // A record this version cannot read still gets a summary (from
            // the stream), so its attempts fail and it is parked, not lost.
            let mut s = summary(&f.record).unwrap_or(super::record::Summary {
                ticket: f.ticket,
                accepted_at_ms: id_ms(&f.id).unwrap_or_else(super::unix_ms),
                idempotency_key: None,
            });
            if let Some(since) = f.since_ms {
                s.accepted_at_ms = since;
            }
            let seq = stream.next_seq();
            let at = At::Stream {
                id: f.id.clone(),
                record: f.record,
            };
            book.add(seq, &s, at, now);
            if f.attempts > 0 {
                book.note(
                    seq,
                    super::record::Note::Failed {
                        attempts: f.attempts,
                    },
                    now,
                );
            }
            held.insert(f.id, seq);
            added += 1;
        }
        drop((book, held));
        if added > 0 {
            self.wake();
        }
        added
    }

    /// Tells Redis what this instance holds is still in hand; lets go of
    /// what another instance took over (unless in flight here).
    async fn touch(&self, stream: &Stream) -> Result<(), String> {
        let ids: Vec<Arc<str>> = stream.held.lock().keys().cloned().collect();
        if ids.is_empty() {
            return Ok(());
        }
        let mine: HashSet<Arc<str>> = stream.touch(ids.clone()).await?.into_iter().collect();
        let mut book = self.book.lock();
        let mut held = stream.held.lock();
        let mut lost = 0;
        for id in ids.iter().filter(|id| !mine.contains(*id)) {
            let Some(&seq) = held.get(id) else { continue };
            match book.get(seq).map(|e| e.state) {
                Some(State::InFlight) => {}
                Some(_) => {
                    book.forget(seq);
                    held.remove(id);
                    lost += 1;
                }
                None => {
                    held.remove(id);
                }
            }
        }
        if lost > 0 {
            tracing::warn!(route = %self.name, lost, "async route: requests this instance held were taken over by another");
        }
        Ok(())
    }
}
