//! A durable journal: a segmented, append-only log on disk, for requests
//! accepted now and delivered later (async routes). It knows nothing of
//! HTTP: an entry is bytes, and a later `Done` record retires it.
//!
//! - [`frame`]: one record on disk, with its length and CRC32;
//! - [`segment`]: segment files, and reading one back (cutting a torn or
//!   corrupt tail);
//! - [`writer`]: the writer thread — group commit, capacity, reclaiming.
//!
//! Invariants:
//! - [`Journal::append`] resolves only once its record is written *and*
//!   fsynced (many appends share one fsync: group commit); a write or sync
//!   error fails every append of that batch, none is acknowledged;
//! - on [`Journal::open`], every entry not retired by a `Done` record is
//!   handed back, in order; a torn or corrupt tail is cut back to the last
//!   whole record and logged, never a panic;
//! - a segment is deleted once every entry in it and in every older
//!   segment is done (deleting only from the oldest end, so no `Done`
//!   record is lost while the entry it retires still exists);
//! - at most `capacity` entries are live: beyond, appends fail with
//!   [`JournalError::Full`] and nothing is written.
//!
//! File I/O never runs on the async workers: writes and syncs on the
//! journal's own thread, reads on tokio's blocking pool.

pub(crate) mod frame;
pub(crate) mod segment;
#[cfg(test)]
mod tests;
mod writer;

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

pub use self::frame::Kind;
use self::writer::{Command, Writer};

/// How a journal is kept.
#[derive(Clone)]
pub struct Options {
    /// Live entries at most (appended, not yet done).
    pub capacity: usize,
    /// A segment past this size is closed and a new one started.
    pub segment_bytes: u64,
    /// Called after each fsync with its duration (for the latency histogram).
    pub on_sync: Option<Arc<dyn Fn(Duration) + Send + Sync>>,
    /// While set, every write fails as a full disk would (tests).
    pub(crate) fail_writes: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl Options {
    /// `capacity` entries, 64 MiB segments, no sync observer.
    pub fn new(capacity: usize) -> Options {
        Options {
            capacity,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            on_sync: None,
            fail_writes: None,
        }
    }
}

/// The default segment size: small enough that a drained backlog gives its
/// disk back soon, large enough that segments are few.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;

/// Where an entry's body is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
}

/// An entry made durable: its sequence number and where it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: u64,
    pub at: Location,
}

/// A record read back on open, in the order written.
#[derive(Debug)]
pub enum Replayed<'a> {
    /// An entry; it is live unless a `Done` for it follows.
    Entry {
        seq: u64,
        at: Location,
        body: &'a [u8],
    },
    /// The entry `seq` was done (its entry may be gone with its segment).
    Done { seq: u64, body: &'a [u8] },
    /// A note on the entry `seq`.
    Note { seq: u64, body: &'a [u8] },
}

/// A segment's tail that was cut on open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CutTail {
    pub segment: PathBuf,
    /// The segment's length after the cut.
    pub at: u64,
    /// Bytes cut off.
    pub bytes: u64,
    pub why: &'static str,
}

/// Why the journal could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// `capacity` entries are live.
    #[error("journal full: {0} entries live")]
    Full(usize),
    /// Writing, syncing or reading failed (disk full, I/O error).
    #[error("journal I/O: {0}")]
    Io(Arc<io::Error>),
    /// The writer thread has stopped.
    #[error("journal closed")]
    Closed,
    /// A record read back does not check out.
    #[error("journal record at segment {segment} offset {offset} is corrupt")]
    Corrupt { segment: u64, offset: u64 },
}

impl From<io::Error> for JournalError {
    fn from(err: io::Error) -> Self {
        JournalError::Io(Arc::new(err))
    }
}

/// Figures the writer keeps up to date, read without asking it.
#[derive(Debug, Default)]
pub(crate) struct Gauges {
    /// The most live entries (changeable while open).
    capacity: AtomicUsize,
    live: AtomicUsize,
    bytes: AtomicU64,
    segments: AtomicUsize,
}

/// An open journal. Dropping the last handle stops its writer thread once
/// what was asked of it is written.
pub struct Journal {
    dir: PathBuf,
    tx: std::sync::mpsc::Sender<Command>,
    gauges: Arc<Gauges>,
    cut: Vec<CutTail>,
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, calling `visit` with every
    /// record read back, oldest first, and starts its writer thread.
    /// Blocking: call it at start or from a blocking task.
    pub fn open(
        dir: &Path,
        options: Options,
        visit: impl FnMut(Replayed<'_>),
    ) -> Result<Journal, JournalError> {
        std::fs::create_dir_all(dir)?;
        let (writer, cut) = Writer::open(dir, options, visit)?;
        let gauges = writer.gauges();
        let (tx, rx) = std::sync::mpsc::channel();
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("journal");
        std::thread::Builder::new()
            .name(format!("journal-{name}"))
            .spawn(move || writer.run(rx))?;
        Ok(Journal {
            dir: dir.to_path_buf(),
            tx,
            gauges,
            cut,
        })
    }

    /// Appends an entry; resolves once it is on disk and synced.
    pub async fn append(&self, body: Vec<u8>) -> Result<Appended, JournalError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Append { body, reply })?;
        rx.await.map_err(|_| JournalError::Closed)?
    }

    /// Retires the entry `seq` (with a small `body`, e.g. how it ended);
    /// resolves once synced.
    pub async fn done(&self, seq: u64, body: Vec<u8>) -> Result<(), JournalError> {
        self.mark(Kind::Done, seq, body).await
    }

    /// Writes a note on the live entry `seq`; resolves once synced.
    pub async fn note(&self, seq: u64, body: Vec<u8>) -> Result<(), JournalError> {
        self.mark(Kind::Note, seq, body).await
    }

    /// Retires many entries at once: they share syncs, rather than one
    /// sync each. Resolves once all are synced.
    pub async fn done_many(&self, done: Vec<(u64, Vec<u8>)>) -> Result<(), JournalError> {
        self.mark_many(Kind::Done, done).await
    }

    /// Writes many notes at once (see [`Journal::done_many`]).
    pub async fn note_many(&self, notes: Vec<(u64, Vec<u8>)>) -> Result<(), JournalError> {
        self.mark_many(Kind::Note, notes).await
    }

    async fn mark_many(&self, kind: Kind, marks: Vec<(u64, Vec<u8>)>) -> Result<(), JournalError> {
        let mut replies = Vec::with_capacity(marks.len());
        for (seq, body) in marks {
            let (reply, rx) = oneshot::channel();
            self.send(Command::Mark {
                kind,
                seq,
                body,
                reply,
            })?;
            replies.push(rx);
        }
        let mut result = Ok(());
        for rx in replies {
            if let Err(err) = rx.await.map_err(|_| JournalError::Closed).and_then(|r| r) {
                result = Err(err);
            }
        }
        result
    }

    async fn mark(&self, kind: Kind, seq: u64, body: Vec<u8>) -> Result<(), JournalError> {
        self.mark_many(kind, vec![(seq, body)]).await
    }

    fn send(&self, command: Command) -> Result<(), JournalError> {
        self.tx.send(command).map_err(|_| JournalError::Closed)
    }

    /// Reads an entry's body back (checking its CRC again), off the async
    /// workers.
    pub async fn read(&self, at: Location) -> Result<Vec<u8>, JournalError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || read_at(&dir, at))
            .await
            .map_err(|_| JournalError::Closed)?
    }

    /// Live entries now.
    pub fn live(&self) -> usize {
        self.gauges.live.load(Ordering::Relaxed)
    }

    /// The most entries that may be live.
    pub fn capacity(&self) -> usize {
        self.gauges.capacity.load(Ordering::Relaxed)
    }

    /// Changes the most live entries from now on (entries already live
    /// beyond a lowered capacity stay).
    pub fn set_capacity(&self, capacity: usize) {
        self.gauges.capacity.store(capacity, Ordering::Relaxed);
    }

    /// Bytes in the segment files now.
    pub fn bytes(&self) -> u64 {
        self.gauges.bytes.load(Ordering::Relaxed)
    }

    /// Segment files now.
    pub fn segments(&self) -> usize {
        self.gauges.segments.load(Ordering::Relaxed)
    }

    /// The tails cut when the journal was opened.
    pub fn cut_on_open(&self) -> &[CutTail] {
        &self.cut
    }
}

/// Reads the frame whose body is at `at`, checking it.
fn read_at(dir: &Path, at: Location) -> Result<Vec<u8>, JournalError> {
    use std::os::unix::fs::FileExt;
    let corrupt = JournalError::Corrupt {
        segment: at.segment,
        offset: at.offset,
    };
    let start = at
        .offset
        .checked_sub(frame::HEADER_BYTES as u64)
        .ok_or_else(|| corrupt.clone())?;
    let file = std::fs::File::open(segment::path(dir, at.segment))?;
    let mut buf = vec![0u8; frame::HEADER_BYTES + at.len as usize];
    file.read_exact_at(&mut buf, start)?;
    match frame::decode(&buf) {
        Ok(Some((f, used))) if used == buf.len() && f.kind == Kind::Entry => Ok(f.body.to_vec()),
        _ => Err(corrupt),
    }
}
