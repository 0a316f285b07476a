//! An async route's book: what its journal holds, indexed in memory — the
//! queue in acceptance order, retries waiting for their time, requests in
//! flight, dead letters, tickets and idempotency keys.
//!
//! Invariants: an entry is in exactly one state (ready, waiting to retry,
//! in flight, parked); only ready entries are handed out, oldest first; an
//! entry past its deadline is never handed out; the book holds what the
//! journal holds (entries not done), plus the endings of recent tickets,
//! at most `capacity` of them, each for `deliver_within`.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use tokio::time::Instant;

use super::record::{Ended, Note, Summary, TicketId};
use crate::journal::Location;

/// Where an entry is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Ready,
    /// Waiting to be tried again at this time.
    Waiting(Instant),
    InFlight,
    Parked,
}

/// Where an entry's request is kept.
#[derive(Debug, Clone)]
pub(super) enum At {
    /// In the local journal.
    Journal(Location),
    /// In the Redis stream, as this entry ID; the record read with it.
    Stream { id: Arc<str>, record: Bytes },
}

/// One live entry.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) ticket: TicketId,
    pub(super) at: At,
    pub(super) accepted_at_ms: u64,
    /// Past this it expires.
    pub(super) deadline: Instant,
    pub(super) attempts: u32,
    pub(super) state: State,
}

/// What a ticket's status says.
#[derive(Debug, Clone)]
pub(crate) enum Status {
    Queued {
        /// Requests to be delivered before it.
        ahead: usize,
        attempts: u32,
        /// Waiting for a retry until then.
        retry_at: Option<Instant>,
    },
    InFlight {
        attempts: u32,
    },
    DeadLetter {
        attempts: u32,
    },
    Ended(Ended),
}

pub(super) struct Book {
    deliver_within: Duration,
    capacity: usize,
    entries: BTreeMap<u64, Entry>,
    ready: BTreeSet<u64>,
    waiting: BTreeSet<(Instant, u64)>,
    deadlines: BTreeSet<(Instant, u64)>,
    in_flight: usize,
    parked: usize,
    tickets: HashMap<TicketId, u64>,
    ended: HashMap<TicketId, Ended>,
    /// Endings in the order they came, to forget the oldest.
    ended_order: VecDeque<(Instant, TicketId)>,
    keys: HashMap<u64, (TicketId, Instant)>,
    hasher: RandomState,
}

/// Unix time now, in milliseconds.
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Book {
    pub(super) fn new(deliver_within: Duration, capacity: usize) -> Book {
        Book {
            deliver_within,
            capacity,
            entries: BTreeMap::new(),
            ready: BTreeSet::new(),
            waiting: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            in_flight: 0,
            parked: 0,
            tickets: HashMap::new(),
            ended: HashMap::new(),
            ended_order: VecDeque::new(),
            keys: HashMap::new(),
            hasher: RandomState::new(),
        }
    }

    pub(super) fn set_limits(&mut self, deliver_within: Duration, capacity: usize) {
        self.deliver_within = deliver_within;
        self.capacity = capacity;
    }

    /// The deadline of something accepted (or re-driven) at `since_ms`.
    fn deadline(&self, since_ms: u64, now: Instant) -> Instant {
        let age = Duration::from_millis(unix_ms().saturating_sub(since_ms));
        now + self.deliver_within.saturating_sub(age)
    }

    fn key_hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The live ticket given for `key` within `deliver_within`, if any.
    pub(super) fn ticket_for_key(&mut self, key: &[u8], now: Instant) -> Option<TicketId> {
        let hash = self.key_hash(key);
        match self.keys.get(&hash) {
            Some((ticket, until)) if *until > now => Some(*ticket),
            Some(_) => {
                self.keys.remove(&hash);
                None
            }
            None => None,
        }
    }

    /// A new entry, made durable as `seq` at `at`.
    pub(super) fn add(&mut self, seq: u64, summary: &Summary, at: At, now: Instant) {
        let deadline = self.deadline(summary.accepted_at_ms, now);
        let key = summary.idempotency_key.as_deref().map(|k| self.key_hash(k));
        if let Some(hash) = key {
            self.keys.insert(hash, (summary.ticket, deadline));
        }
        self.tickets.insert(summary.ticket, seq);
        self.ready.insert(seq);
        self.deadlines.insert((deadline, seq));
        self.entries.insert(
            seq,
            Entry {
                ticket: summary.ticket,
                at,
                accepted_at_ms: summary.accepted_at_ms,
                deadline,
                attempts: 0,
                state: State::Ready,
            },
        );
    }

    /// Moves `seq` to `state`, keeping the indexes in step.
    fn set_state(&mut self, seq: u64, state: State) {
        let Some(entry) = self.entries.get_mut(&seq) else {
            return;
        };
        match entry.state {
            State::Ready => {
                self.ready.remove(&seq);
            }
            State::Waiting(at) => {
                self.waiting.remove(&(at, seq));
            }
            State::InFlight => self.in_flight -= 1,
            State::Parked => self.parked -= 1,
        }
        match state {
            State::Ready => {
                self.ready.insert(seq);
            }
            State::Waiting(at) => {
                self.waiting.insert((at, seq));
            }
            State::InFlight => self.in_flight += 1,
            State::Parked => self.parked += 1,
        }
        entry.state = state;
    }

    /// Applies a note read back or just written.
    pub(super) fn note(&mut self, seq: u64, note: Note, now: Instant) {
        match note {
            Note::Failed { attempts } => {
                if let Some(entry) = self.entries.get_mut(&seq) {
                    entry.attempts = attempts;
                }
            }
            Note::Parked { attempts } => {
                if let Some(entry) = self.entries.get_mut(&seq) {
                    entry.attempts = attempts;
                    // A dead letter does not expire: out of the deadline
                    // index until re-driven.
                    self.deadlines.remove(&(entry.deadline, seq));
                }
                self.set_state(seq, State::Parked);
            }
            Note::Redriven { at_ms } => {
                let deadline = self.deadline(at_ms, now);
                if let Some(entry) = self.entries.get_mut(&seq) {
                    entry.attempts = 0;
                    let old = std::mem::replace(&mut entry.deadline, deadline);
                    self.deadlines.remove(&(old, seq));
                    self.deadlines.insert((deadline, seq));
                }
                self.set_state(seq, State::Ready);
            }
        }
    }

    /// A failed attempt: back to the queue at `retry_at`.
    pub(super) fn retry(&mut self, seq: u64, attempts: u32, retry_at: Instant) {
        if let Some(entry) = self.entries.get_mut(&seq) {
            entry.attempts = attempts;
        }
        self.set_state(seq, State::Waiting(retry_at));
    }

    /// The entry `seq` ended: it leaves the book, its ticket remembers how.
    pub(super) fn end(&mut self, seq: u64, ended: Ended, now: Instant) {
        let Some(entry) = self.entries.get(&seq).cloned() else {
            return;
        };
        self.set_state(seq, State::Ready);
        self.ready.remove(&seq);
        self.deadlines.remove(&(entry.deadline, seq));
        self.entries.remove(&seq);
        self.tickets.remove(&entry.ticket);
        self.remember(entry.ticket, ended, now);
    }

    /// The entry `seq` left this book without ending here (the Redis store:
    /// moved to the dead letters, or taken over by another instance).
    pub(super) fn forget(&mut self, seq: u64) -> Option<Entry> {
        let entry = self.entries.get(&seq).cloned()?;
        self.set_state(seq, State::Ready);
        self.ready.remove(&seq);
        self.deadlines.remove(&(entry.deadline, seq));
        self.entries.remove(&seq);
        self.tickets.remove(&entry.ticket);
        Some(entry)
    }

    /// The live entry `seq`.
    pub(super) fn get(&self, seq: u64) -> Option<&Entry> {
        self.entries.get(&seq)
    }

    /// Entries waiting for a retry's time.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Keeps a ticket's ending for `deliver_within`, at most `capacity`.
    pub(super) fn remember(&mut self, ticket: TicketId, ended: Ended, now: Instant) {
        self.ended.insert(ticket, ended);
        self.ended_order
            .push_back((now + self.deliver_within, ticket));
        while let Some(&(until, oldest)) = self.ended_order.front() {
            if until > now && self.ended_order.len() <= self.capacity {
                break;
            }
            self.ended_order.pop_front();
            self.ended.remove(&oldest);
        }
    }

    /// Retries whose time has come go back to the ready queue.
    pub(super) fn wake_due(&mut self, now: Instant) {
        while let Some(&(at, seq)) = self.waiting.first() {
            if at > now {
                break;
            }
            self.set_state(seq, State::Ready);
        }
    }

    /// Entries (not in flight, not parked) past their deadline.
    pub(super) fn expired(&self, now: Instant) -> Vec<u64> {
        self.deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .map(|(_, seq)| *seq)
            .filter(|seq| {
                self.entries
                    .get(seq)
                    .is_some_and(|e| matches!(e.state, State::Ready | State::Waiting(_)))
            })
            .collect()
    }

    /// Ends the entries [`Book::expired`] names (`Ended::Expired`) and
    /// returns them: each once, however many callers ask, since the
    /// entries leave the book in the same call.
    pub(super) fn expire(&mut self, now: Instant) -> Vec<(u64, Entry)> {
        let expired: Vec<(u64, Entry)> = self
            .expired(now)
            .into_iter()
            .filter_map(|seq| Some((seq, self.get(seq)?.clone())))
            .collect();
        for (seq, _) in &expired {
            self.end(*seq, Ended::Expired, now);
        }
        expired
    }

    /// The oldest ready entry, taken (in flight).
    pub(super) fn take_next(&mut self) -> Option<(u64, Entry)> {
        let seq = *self.ready.first()?;
        self.set_state(seq, State::InFlight);
        self.entries.get(&seq).cloned().map(|e| (seq, e))
    }

    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// When something next needs doing without being asked: a retry's
    /// time or a deadline.
    pub(super) fn next_wakeup(&self) -> Option<Instant> {
        let retry = self.waiting.first().map(|(at, _)| *at);
        let deadline = self
            .deadlines
            .iter()
            .find(|(_, seq)| {
                self.entries
                    .get(seq)
                    .is_some_and(|e| matches!(e.state, State::Ready | State::Waiting(_)))
            })
            .map(|(at, _)| *at);
        match (retry, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// A ticket's status, if the book knows it.
    pub(super) fn status(&self, ticket: TicketId) -> Option<Status> {
        if let Some(ended) = self.ended.get(&ticket) {
            return Some(Status::Ended(ended.clone()));
        }
        let seq = *self.tickets.get(&ticket)?;
        let entry = self.entries.get(&seq)?;
        Some(match entry.state {
            State::Ready | State::Waiting(_) => Status::Queued {
                ahead: self
                    .entries
                    .range(..seq)
                    .filter(|(_, e)| matches!(e.state, State::Ready | State::Waiting(_)))
                    .count(),
                attempts: entry.attempts,
                retry_at: match entry.state {
                    State::Waiting(at) => Some(at),
                    _ => None,
                },
            },
            State::InFlight => Status::InFlight {
                attempts: entry.attempts,
            },
            State::Parked => Status::DeadLetter {
                attempts: entry.attempts,
            },
        })
    }

    /// Dead letters, oldest first: (seq, entry).
    pub(super) fn dead_letters(&self, limit: usize) -> Vec<(u64, Entry)> {
        self.entries
            .iter()
            .filter(|(_, e)| e.state == State::Parked)
            .take(limit)
            .map(|(s, e)| (*s, e.clone()))
            .collect()
    }

    /// Entries held: queued, in flight and parked.
    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Entries waiting to be delivered (ready or waiting to retry).
    pub(super) fn queued(&self) -> usize {
        self.entries.len() - self.in_flight - self.parked
    }

    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    pub(super) fn parked(&self) -> usize {
        self.parked
    }

    /// When the oldest entry not parked was accepted (Unix ms).
    pub(super) fn oldest_ms(&self) -> Option<u64> {
        self.entries
            .values()
            .find(|e| e.state != State::Parked)
            .map(|e| e.accepted_at_ms)
    }

    /// Drops idempotency keys whose time is up (a repeated submission
    /// within `deliver_within` gets its ticket even once it is delivered),
    /// once there are many of them.
    pub(super) fn forget_old_keys(&mut self, now: Instant) {
        if self.keys.len() > 2 * self.capacity.max(1024) {
            self.keys.retain(|_, (_, until)| *until > now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(n: u128) -> Summary {
        Summary {
            ticket: TicketId(n),
            accepted_at_ms: unix_ms(),
            idempotency_key: None,
        }
    }

    const AT: Location = Location {
        segment: 1,
        offset: 8,
        len: 1,
    };

    /// A book (deliver within 60 s) holding tickets 1, 2 and 3, added now.
    fn book_of_three() -> (Book, Instant) {
        let mut book = Book::new(Duration::from_secs(60), 100);
        let now = Instant::now();
        for seq in 1..=3 {
            book.add(seq, &summary(seq as u128), At::Journal(AT), now);
        }
        (book, now)
    }

    #[tokio::test(start_paused = true)]
    async fn oldest_first_retries_wait_and_deadlines_expire() {
        let (mut book, now) = book_of_three();
        assert!(matches!(
            book.status(TicketId(3)),
            Some(Status::Queued { ahead: 2, .. })
        ));
        let (first, _) = book.take_next().unwrap();
        assert_eq!(first, 1);
        assert!(matches!(
            book.status(TicketId(1)),
            Some(Status::InFlight { .. })
        ));
        book.retry(1, 1, now + Duration::from_secs(5));
        assert_eq!(book.take_next().unwrap().0, 2);
        assert_eq!(book.take_next().unwrap().0, 3);
        assert!(book.take_next().is_none());
        assert_eq!(book.next_wakeup(), Some(now + Duration::from_secs(5)));
        book.wake_due(now + Duration::from_secs(5));
        assert_eq!(book.take_next().unwrap().0, 1);
        book.end(
            1,
            Ended::Delivered {
                status: 200,
                body: Default::default(),
            },
            now,
        );
        assert!(matches!(
            book.status(TicketId(1)),
            Some(Status::Ended(Ended::Delivered { status: 200, .. }))
        ));
        // In flight entries do not expire under the sender's feet.
        assert!(book.expired(now + Duration::from_secs(61)).is_empty());
        book.retry(2, 1, now + Duration::from_secs(1));
        assert_eq!(book.expired(now + Duration::from_secs(61)), vec![2]);
        assert_eq!(book.len(), 2);
        // A dead letter never expires; re-driven, it has deliver_within again.
        book.note(3, Note::Parked { attempts: 5 }, now);
        assert!(matches!(
            book.status(TicketId(3)),
            Some(Status::DeadLetter { attempts: 5 })
        ));
        assert!(!book.expired(now + Duration::from_secs(3600)).contains(&3));
        assert_eq!(book.parked(), 1);
        book.note(3, Note::Redriven { at_ms: unix_ms() }, now);
        assert_eq!((book.parked(), book.queued()), (0, 2));
        assert!(!book.expired(now + Duration::from_secs(59)).contains(&3));
        assert!(book.expired(now + Duration::from_secs(61)).contains(&3));
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_entry_is_handed_out_once() {
        let (mut book, now) = book_of_three();
        let later = now + Duration::from_secs(61);
        let first: Vec<u64> = book.expire(later).into_iter().map(|(s, _)| s).collect();
        assert_eq!(first, vec![1, 2, 3]);
        // A second pacer asking at once finds nothing left to expire.
        assert!(book.expire(later).is_empty());
        assert_eq!(book.len(), 0);
        assert!(matches!(
            book.status(TicketId(2)),
            Some(Status::Ended(Ended::Expired))
        ));
    }
}
