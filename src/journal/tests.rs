//! The journal against a real directory: replay, torn and corrupt tails,
//! reclaiming, capacity, a full disk, group commit.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;

fn dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "sluice-journal-{name}-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _fresh = std::fs::remove_dir_all(&dir);
    dir
}

/// Opens `dir`, returning the journal and the live entries read back
/// (seq, body), Done records applied.
fn open(dir: &Path, options: Options) -> (Journal, Vec<(u64, Vec<u8>)>) {
    let mut entries: Vec<(u64, Vec<u8>)> = Vec::new();
    let journal = Journal::open(dir, options, |r| match r {
        Replayed::Entry { seq, body, .. } => entries.push((seq, body.to_vec())),
        Replayed::Done { seq, .. } => entries.retain(|(s, _)| *s != seq),
        Replayed::Note { .. } => {}
    })
    .unwrap();
    (journal, entries)
}

fn last_segment(dir: &Path) -> PathBuf {
    let numbers = segment::list(dir).unwrap();
    // The newest segment is the fresh one made on open; the records are
    // in the one before it.
    segment::path(dir, numbers[numbers.len() - 1])
}

#[tokio::test]
async fn entries_not_done_come_back_in_order_with_their_bodies() {
    let dir = dir("replay");
    let (journal, none) = open(&dir, Options::new(100));
    assert!(none.is_empty());
    let mut seqs = Vec::new();
    for i in 0..10u8 {
        let a = journal.append(vec![i; 100 + i as usize]).await.unwrap();
        assert_eq!(journal.read(a.at).await.unwrap(), vec![i; 100 + i as usize]);
        seqs.push(a.seq);
    }
    journal.done(seqs[3], b"200".to_vec()).await.unwrap();
    journal.done(seqs[0], vec![]).await.unwrap();
    journal.note(seqs[5], b"attempts=2".to_vec()).await.unwrap();
    assert_eq!(journal.live(), 8);
    drop(journal);
    let (journal, back) = open(&dir, Options::new(100));
    let got: Vec<u64> = back.iter().map(|(s, _)| *s).collect();
    let want: Vec<u64> = seqs
        .iter()
        .copied()
        .filter(|s| *s != seqs[0] && *s != seqs[3])
        .collect();
    assert_eq!(got, want);
    assert_eq!(back[0].1, vec![1u8; 101]);
    assert_eq!(journal.live(), 8);
    // New entries carry on after the old ones.
    let next = journal.append(b"x".to_vec()).await.unwrap();
    assert!(next.seq > seqs[9]);
    assert!(journal.cut_on_open().is_empty());
}

#[tokio::test]
async fn a_torn_tail_is_cut_back_to_the_last_whole_record() {
    let dir = dir("torn");
    let (journal, _) = open(&dir, Options::new(100));
    for i in 0..5u8 {
        journal.append(vec![i; 50]).await.unwrap();
    }
    drop(journal);
    let seg = last_segment(&dir);
    let whole = std::fs::metadata(&seg).unwrap().len();
    // Half a frame: what a crash in the middle of a write leaves.
    let mut half = Vec::new();
    frame::encode(&mut half, Kind::Entry, 99, &[7u8; 50]);
    half.truncate(30);
    OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&half)
        .unwrap();
    let (journal, back) = open(&dir, Options::new(100));
    assert_eq!(back.len(), 5);
    assert_eq!(journal.cut_on_open().len(), 1);
    let cut = &journal.cut_on_open()[0];
    assert_eq!((cut.at, cut.bytes), (whole, 30));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole);
    // And nothing is cut the next time.
    drop(journal);
    let (journal, back) = open(&dir, Options::new(100));
    assert_eq!(back.len(), 5);
    assert!(journal.cut_on_open().is_empty());
}

#[tokio::test]
async fn a_corrupt_record_ends_the_segment_there() {
    let dir = dir("crc");
    let (journal, _) = open(&dir, Options::new(100));
    let mut at = Vec::new();
    for i in 0..5u8 {
        at.push(journal.append(vec![i; 50]).await.unwrap().at);
    }
    drop(journal);
    let seg = last_segment(&dir);
    // Flip a byte in the body of the fourth record.
    let mut bytes = std::fs::read(&seg).unwrap();
    bytes[at[3].offset as usize + 10] ^= 0xff;
    std::fs::write(&seg, &bytes).unwrap();
    let (journal, back) = open(&dir, Options::new(100));
    let bodies: Vec<u8> = back.iter().map(|(_, b)| b[0]).collect();
    assert_eq!(bodies, [0, 1, 2]);
    assert_eq!(journal.cut_on_open()[0].why, "checksum or header mismatch");
    assert_eq!(
        journal.cut_on_open()[0].at,
        at[3].offset - frame::HEADER_BYTES as u64
    );
}

#[tokio::test]
async fn a_segment_is_deleted_once_everything_in_it_and_before_it_is_done() {
    let dir = dir("reclaim");
    let mut options = Options::new(10_000);
    options.segment_bytes = 4096;
    let (journal, _) = open(&dir, options.clone());
    let mut seqs = Vec::new();
    for _ in 0..200 {
        seqs.push(journal.append(vec![1u8; 200]).await.unwrap().seq);
    }
    let full = journal.segments();
    assert!(full > 5, "{full} segments");
    // Done in reverse order: nothing can go until the oldest is done.
    for &seq in seqs[1..].iter().rev() {
        journal.done(seq, vec![]).await.unwrap();
    }
    // (The Done records may have started new segments; none went.)
    assert!(journal.segments() >= full);
    journal.done(seqs[0], vec![]).await.unwrap();
    assert_eq!(journal.segments(), 1);
    assert_eq!(segment::list(&dir).unwrap().len(), 1);
    assert!(journal.bytes() < 4096 + 100);
    drop(journal);
    let (_journal, back) = open(&dir, options);
    assert!(back.is_empty());
}

#[tokio::test]
async fn beyond_capacity_nothing_is_written_until_an_entry_is_done() {
    let dir = dir("capacity");
    let (journal, _) = open(&dir, Options::new(3));
    let mut seqs = Vec::new();
    for _ in 0..3 {
        seqs.push(journal.append(b"a".to_vec()).await.unwrap().seq);
    }
    let bytes = journal.bytes();
    assert!(matches!(
        journal.append(b"b".to_vec()).await,
        Err(JournalError::Full(3))
    ));
    assert_eq!(journal.bytes(), bytes);
    journal.done(seqs[0], vec![]).await.unwrap();
    journal.append(b"c".to_vec()).await.unwrap();
    // A raised capacity takes effect at once.
    journal.set_capacity(4);
    journal.append(b"e".to_vec()).await.unwrap();
    journal.set_capacity(3);
    // Capacity counts what replays too.
    drop(journal);
    let (journal, back) = open(&dir, Options::new(3));
    assert_eq!(back.len(), 4);
    assert!(journal.append(b"d".to_vec()).await.is_err());
}

#[tokio::test]
async fn a_full_disk_fails_the_append_and_acknowledges_nothing() {
    let dir = dir("full");
    let fail = Arc::new(AtomicBool::new(false));
    let mut options = Options::new(100);
    options.fail_writes = Some(fail.clone());
    let (journal, _) = open(&dir, options);
    journal.append(b"kept".to_vec()).await.unwrap();
    fail.store(true, Ordering::Relaxed);
    let err = journal.append(b"lost".to_vec()).await.unwrap_err();
    assert!(matches!(err, JournalError::Io(_)), "{err}");
    assert_eq!(journal.live(), 1);
    fail.store(false, Ordering::Relaxed);
    let later = journal.append(b"later".to_vec()).await.unwrap();
    assert_eq!(journal.read(later.at).await.unwrap(), b"later");
    drop(journal);
    let (_journal, back) = open(&dir, Options::new(100));
    let bodies: Vec<&[u8]> = back.iter().map(|(_, b)| b.as_slice()).collect();
    assert_eq!(bodies, [&b"kept"[..], &b"later"[..]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_syncs() {
    let dir = dir("group");
    let syncs = Arc::new(AtomicUsize::new(0));
    let counted = syncs.clone();
    let mut options = Options::new(10_000);
    options.on_sync = Some(Arc::new(move |_| {
        counted.fetch_add(1, Ordering::Relaxed);
    }));
    let (journal, _) = open(&dir, options);
    let journal = Arc::new(journal);
    let tasks: Vec<_> = (0..500)
        .map(|i| {
            let journal = journal.clone();
            tokio::spawn(async move { journal.append(vec![i as u8; 64]).await.unwrap().seq })
        })
        .collect();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 500);
    let syncs = syncs.load(Ordering::Relaxed);
    assert!(syncs < 500, "{syncs} syncs for 500 appends");
}
