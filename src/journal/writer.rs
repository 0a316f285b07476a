//! The journal's writer thread: group commit, capacity, reclaiming.
//!
//! It takes every command waiting in its channel as one batch, encodes the
//! batch into one buffer, writes it with one `write` and syncs it with one
//! `fdatasync`, then answers each command. While it syncs, the next batch
//! gathers: under load, many appends share a sync; alone, an append waits
//! for one sync only.
//!
//! Invariant: a command is answered `Ok` only after its bytes are synced; on
//! a write or sync error the segment is cut back to its length before the
//! batch and every command of the batch fails.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::Receiver;
use std::time::Instant;

use tokio::sync::oneshot;

use super::frame::{self, Kind};
use super::segment;
use super::{Appended, CutTail, Gauges, JournalError, Location, Options, Replayed};

/// Most commands taken into one batch.
const MAX_BATCH: usize = 4096;

/// What the writer is asked to do.
pub(crate) enum Command {
    Append {
        body: Vec<u8>,
        reply: oneshot::Sender<Result<Appended, JournalError>>,
    },
    Mark {
        kind: Kind,
        seq: u64,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<(), JournalError>>,
    },
}

/// One segment as the writer sees it.
#[derive(Debug)]
struct Segment {
    number: u64,
    /// Entries in it not yet done.
    live: usize,
    bytes: u64,
}

pub(crate) struct Writer {
    dir: PathBuf,
    options: Options,
    file: File,
    /// Oldest first; the last is the one appended to.
    segments: VecDeque<Segment>,
    /// Each live entry's segment.
    live: HashMap<u64, u64>,
    next_seq: u64,
    gauges: Arc<Gauges>,
    /// A failed write could not be cut back: the next batch starts a new
    /// segment rather than append after unknown bytes.
    must_roll: bool,
}

/// An answer to give once the batch is synced.
enum Reply {
    Appended(oneshot::Sender<Result<Appended, JournalError>>, Appended),
    Marked(oneshot::Sender<Result<(), JournalError>>),
}

impl Writer {
    /// Reads every segment back (calling `visit`), cuts bad tails, drops
    /// segments with nothing live, and starts a fresh segment to append to.
    pub(crate) fn open(
        dir: &Path,
        options: Options,
        mut visit: impl FnMut(Replayed<'_>),
    ) -> Result<(Writer, Vec<CutTail>), JournalError> {
        let numbers = segment::list(dir)?;
        let (live, next_seq, cut) = replay(dir, &numbers, &mut visit)?;
        let mut segments: VecDeque<Segment> = numbers
            .iter()
            .map(|&number| Segment {
                number,
                live: 0,
                bytes: std::fs::metadata(segment::path(dir, number)).map_or(0, |m| m.len()),
            })
            .collect();
        for seg in live.values() {
            if let Some(s) = segments.iter_mut().find(|s| s.number == *seg) {
                s.live += 1;
            }
        }
        let number = numbers.last().map_or(1, |n| n + 1);
        let file = segment::create(dir, number)?;
        segments.push_back(Segment {
            number,
            live: 0,
            bytes: segment::MAGIC.len() as u64,
        });
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            options,
            file,
            segments,
            live,
            next_seq,
            gauges: Arc::new(Gauges::default()),
            must_roll: false,
        };
        writer
            .gauges
            .capacity
            .store(writer.options.capacity, Ordering::Relaxed);
        writer.reclaim();
        writer.publish();
        Ok((writer, cut))
    }

    pub(crate) fn gauges(&self) -> Arc<Gauges> {
        self.gauges.clone()
    }

    /// Serves batches until every handle is gone.
    pub(crate) fn run(mut self, rx: Receiver<Command>) {
        while let Ok(first) = rx.recv() {
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(command) => batch.push(command),
                    Err(_) => break,
                }
            }
            self.commit(batch);
        }
    }

    /// Writes and syncs one batch, then answers it.
    fn commit(&mut self, batch: Vec<Command>) {
        self.roll_if_full();
        let number = self.current().number;
        let start_len = self.current().bytes;
        let start_seq = self.next_seq;
        let mut buf = Vec::new();
        let mut replies = Vec::with_capacity(batch.len());
        let mut added = 0usize;
        let mut retired = Vec::new();
        for command in batch {
            match command {
                Command::Append { body, reply } => {
                    let capacity = self.gauges.capacity.load(Ordering::Relaxed);
                    if self.live.len() + added >= capacity {
                        let _refused = reply.send(Err(JournalError::Full(self.live.len())));
                        continue;
                    }
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    added += 1;
                    let offset = start_len + (buf.len() + frame::HEADER_BYTES) as u64;
                    frame::encode(&mut buf, Kind::Entry, seq, &body);
                    let at = Location {
                        segment: number,
                        offset,
                        len: body.len() as u32,
                    };
                    replies.push(Reply::Appended(reply, Appended { seq, at }));
                }
                Command::Mark {
                    kind,
                    seq,
                    body,
                    reply,
                } => {
                    frame::encode(&mut buf, kind, seq, &body);
                    if kind == Kind::Done {
                        retired.push(seq);
                    }
                    replies.push(Reply::Marked(reply));
                }
            }
        }
        if replies.is_empty() {
            return;
        }
        if let Err(err) = self.write_and_sync(&buf, start_len) {
            self.next_seq = start_seq;
            let err = JournalError::from(err);
            tracing::error!(error = %err, "journal: write failed; nothing in the batch acknowledged");
            for reply in replies {
                match reply {
                    Reply::Appended(tx, _) => drop(tx.send(Err(err.clone()))),
                    Reply::Marked(tx) => drop(tx.send(Err(err.clone()))),
                }
            }
            return;
        }
        self.apply(&replies, &retired, buf.len() as u64);
        for reply in replies {
            match reply {
                Reply::Appended(tx, appended) => drop(tx.send(Ok(appended))),
                Reply::Marked(tx) => drop(tx.send(Ok(()))),
            }
        }
    }

    /// One write, one sync; on failure the segment is cut back to `start_len`.
    fn write_and_sync(&mut self, buf: &[u8], start_len: u64) -> io::Result<()> {
        if self
            .options
            .fail_writes
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(io::Error::from_raw_os_error(28)); // ENOSPC
        }
        let result = self.file.write_all(buf).and_then(|()| {
            let syncing = Instant::now();
            let synced = self.file.sync_data();
            if let Some(on_sync) = &self.options.on_sync {
                on_sync(syncing.elapsed());
            }
            synced
        });
        if result.is_err()
            && let Err(err) = self.file.set_len(start_len)
        {
            tracing::error!(error = %err, "journal: cannot cut a failed write back; starting a new segment");
            self.must_roll = true;
        }
        result
    }

    /// The batch is on disk: its entries are live, its `Done`s retire theirs.
    fn apply(&mut self, replies: &[Reply], retired: &[u64], written: u64) {
        let current = self.current().number;
        for reply in replies {
            if let Reply::Appended(_, appended) = reply {
                self.live.insert(appended.seq, current);
            }
        }
        let appended = replies
            .iter()
            .filter(|r| matches!(r, Reply::Appended(..)))
            .count();
        if let Some(last) = self.segments.back_mut() {
            last.live += appended;
            last.bytes += written;
        }
        for seq in retired {
            if let Some(number) = self.live.remove(seq)
                && let Some(seg) = self.segments.iter_mut().find(|s| s.number == number)
            {
                seg.live = seg.live.saturating_sub(1);
            }
        }
        self.reclaim();
        self.publish();
    }

    fn current(&self) -> &Segment {
        // There is always a current segment (made on open, replaced on roll).
        &self.segments[self.segments.len() - 1]
    }

    /// Starts a new segment once the current one is past `segment_bytes`;
    /// if it cannot be made, the current one grows on.
    fn roll_if_full(&mut self) {
        if self.current().bytes < self.options.segment_bytes && !self.must_roll {
            return;
        }
        let number = self.current().number + 1;
        match segment::create(&self.dir, number) {
            Ok(file) => {
                self.file = file;
                self.must_roll = false;
                self.segments.push_back(Segment {
                    number,
                    live: 0,
                    bytes: segment::MAGIC.len() as u64,
                });
            }
            Err(err) => {
                // Leave no half-made segment behind to be read on open.
                let _gone = std::fs::remove_file(segment::path(&self.dir, number));
                tracing::error!(error = %err, "journal: cannot start a new segment; appending to the current one");
            }
        }
    }

    /// Deletes segments from the oldest end while nothing in them is live.
    fn reclaim(&mut self) {
        let mut removed = false;
        while self.segments.len() > 1 && self.segments[0].live == 0 {
            let number = self.segments[0].number;
            if let Err(err) = std::fs::remove_file(segment::path(&self.dir, number))
                && err.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(error = %err, segment = number, "journal: cannot delete a finished segment");
                break;
            }
            self.segments.pop_front();
            removed = true;
        }
        if removed && let Err(err) = segment::sync_dir(&self.dir) {
            tracing::warn!(error = %err, "journal: cannot sync the directory after deleting segments");
        }
    }

    fn publish(&self) {
        self.gauges.live.store(self.live.len(), Ordering::Relaxed);
        self.gauges.bytes.store(
            self.segments.iter().map(|s| s.bytes).sum(),
            Ordering::Relaxed,
        );
        self.gauges
            .segments
            .store(self.segments.len(), Ordering::Relaxed);
    }
}

/// What replaying the segments found: each live entry's segment, the next
/// sequence number, the tails cut.
type Replay = (HashMap<u64, u64>, u64, Vec<CutTail>);

/// Reads segments `numbers` back, oldest first, calling `visit` with each
/// record; cuts and logs bad tails. The live entries (with their segment),
/// the next sequence number and the tails cut.
fn replay(
    dir: &Path,
    numbers: &[u64],
    visit: &mut impl FnMut(Replayed<'_>),
) -> Result<Replay, JournalError> {
    let mut live: HashMap<u64, u64> = HashMap::new();
    let mut next_seq = 1;
    let mut cut = Vec::new();
    for &number in numbers {
        let found = segment::scan(dir, number, |f, body_at| {
            let seq = f.seq;
            match f.kind {
                Kind::Entry => {
                    live.insert(seq, number);
                    next_seq = next_seq.max(seq + 1);
                    let at = Location {
                        segment: number,
                        offset: body_at,
                        len: f.body.len() as u32,
                    };
                    visit(Replayed::Entry {
                        seq,
                        at,
                        body: f.body,
                    });
                }
                Kind::Done => {
                    live.remove(&seq);
                    visit(Replayed::Done { seq, body: f.body });
                }
                Kind::Note => visit(Replayed::Note { seq, body: f.body }),
            }
        })?;
        if let Some(c) = found {
            let path = segment::path(dir, number);
            tracing::warn!(
                segment = %path.display(),
                at = c.at,
                bytes_cut = c.bytes,
                why = c.why,
                "journal: cut a torn or corrupt tail back to the last whole record"
            );
            cut.push(CutTail {
                segment: path,
                at: c.at,
                bytes: c.bytes,
                why: c.why,
            });
        }
    }
    Ok((live, next_seq, cut))
}
