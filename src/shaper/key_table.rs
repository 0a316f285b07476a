//! The per-key limiter's table: each key's GCRA state, never more than
//! `max_keys` of them.
//!
//! Keys arrive as 64-bit hashes (seeded per process in `classify`), so one
//! multiply mixes them enough to pick a shard and a home bucket. A shard is a
//! mutex over an open-addressing table of 64-byte buckets, each holding three
//! keys with their theoretical arrival time (TAT) and when they were last
//! seen: a lookup reads one cache line, or the next one too when the home
//! bucket overflowed. Invariant: a key sits in its home bucket or in a later
//! one reached through a run of full buckets, so a lookup stops at the first
//! bucket that is not full. Nothing is ever taken out of a bucket in place —
//! eviction rebuilds each shard from the keys it keeps — so the runs stay
//! unbroken.
//!
//! Before a new key joins a full table, the longest-idle tenth of the table
//! is evicted. An evicted key starts fresh, which for an idle key is what its
//! state would have said anyway.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::{Mutex, MutexGuard};

/// Shards, each behind its own lock: enough that concurrent requests rarely
/// meet on one, few enough that the locks stay in cache.
const SHARD_BITS: u32 = 6;
const SHARDS: usize = 1 << SHARD_BITS;

/// Keys per bucket: three keys, three TATs and three last-seen times fill a
/// 64-byte cache line.
const SLOTS: usize = 3;
const FULL: u32 = (1 << SLOTS) - 1;

/// A shard doubles once more than 3/4 of its slots are used; below that, few
/// buckets are full and most lookups read a single line.
const MAX_LOAD: (usize, usize) = (3, 4);

/// Last-seen times are kept in units of 2^22 ns (about 4 ms) in 32 bits,
/// compared modulo 2^32: fine enough to order eviction, and a key seen more
/// than ~100 days ago only looks younger than it is — its GCRA state is
/// fresh by then anyway.
const SEEN_SHIFT: u32 = 22;

/// The table of one [`super::KeyedLimiter`].
pub(crate) struct KeyTable {
    shards: Box<[Padded<Mutex<Shard>>]>,
    /// Keys tracked (or with a place reserved), at most `max_keys`.
    len: AtomicUsize,
    max_keys: usize,
    evictions: AtomicU64,
    /// One eviction sweep at a time.
    sweeping: Mutex<()>,
}

/// Keeps each shard's lock on its own cache lines (adjacent-line prefetch
/// pairs lines, hence 128).
#[repr(align(128))]
struct Padded<T>(T);

#[derive(Default)]
struct Shard {
    /// A power of two of them, or none before the first key.
    buckets: Vec<Bucket>,
    len: usize,
}

#[repr(C, align(64))]
#[derive(Clone, Copy, Default)]
struct Bucket {
    keys: [u64; SLOTS],
    /// Theoretical arrival time, in nanoseconds from the limiter's origin.
    tats: [u64; SLOTS],
    /// Last seen, in units of 2^SEEN_SHIFT ns (modulo 2^32).
    seen: [u32; SLOTS],
    /// Bit `i` set: slot `i` holds a key.
    used: u32,
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

impl KeyTable {
    pub fn new(max_keys: usize) -> KeyTable {
        KeyTable {
            shards: (0..SHARDS)
                .map(|_| Padded(Mutex::new(Shard::default())))
                .collect(),
            len: AtomicUsize::new(0),
            max_keys,
            evictions: AtomicU64::new(0),
            sweeping: Mutex::new(()),
        }
    }

    /// Keys tracked now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Keys evicted so far.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    /// Decides for `key` at `now` (ns from the limiter's origin): `decide`
    /// gets the key's TAT (`None` for a key not tracked) and returns the new
    /// TAT, or a refusal that leaves it as it was. A new key is added only
    /// when it is not refused, so a refused request evicts nobody.
    pub fn update<E>(
        &self,
        key: u64,
        now: u64,
        mut decide: impl FnMut(Option<u64>) -> Result<u64, E>,
    ) -> Result<(), E> {
        let hash = mix(key);
        let seen = seen_at(now);
        let shard = self.shard(hash);
        let mut shard = shard.lock();
        match shard.find(key, hash) {
            Some((b, s)) => {
                let bucket = &mut shard.buckets[b];
                bucket.seen[s] = seen;
                bucket.tats[s] = decide(Some(bucket.tats[s]))?;
                Ok(())
            }
            None => self.add(shard, key, hash, now, decide),
        }
    }

    /// [`KeyTable::update`] for a key not in its shard (kept out of line:
    /// the common case is a key already tracked).
    #[cold]
    #[inline(never)]
    fn add<'a, E>(
        &'a self,
        mut shard: MutexGuard<'a, Shard>,
        key: u64,
        hash: u64,
        now: u64,
        mut decide: impl FnMut(Option<u64>) -> Result<u64, E>,
    ) -> Result<(), E> {
        let tat = decide(None)?;
        if self.reserve() {
            shard.insert(key, hash, tat, seen_at(now));
            return Ok(());
        }
        drop(shard);
        self.make_room(now);
        // Again from the start: another thread may have added the key meanwhile.
        self.update(key, now, decide)
    }

    fn shard(&self, hash: u64) -> &Mutex<Shard> {
        &self.shards[(hash >> (64 - SHARD_BITS)) as usize].0
    }

    /// Takes a place for one more key, if the table has one.
    fn reserve(&self) -> bool {
        self.len
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |len| {
                (len < self.max_keys).then_some(len + 1)
            })
            .is_ok()
    }

    /// Makes room for one more key: evicts the longest-idle tenth of the table.
    fn make_room(&self, now: u64) {
        let _sweep = self.sweeping.lock();
        if self.len() < self.max_keys {
            return; // another sweep made room meanwhile
        }
        let now = seen_at(now);
        let mut idle: Vec<(u32, u64)> = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            idle.extend(
                shard
                    .0
                    .lock()
                    .entries()
                    .map(|(key, seen)| (idle_for(now, seen), key)),
            );
        }
        let evict = (self.max_keys / 10)
            .max(1)
            .max(idle.len().saturating_sub(self.max_keys - 1))
            .min(idle.len());
        if evict == 0 {
            return;
        }
        // The `evict` longest idle first; keys are distinct, so the order is total.
        let (_, &mut threshold, _) = idle.select_nth_unstable_by(evict - 1, |a, b| b.cmp(a));
        drop(idle);
        let mut evicted = 0;
        for shard in self.shards.iter() {
            // A key seen since the list was made is younger now and stays.
            evicted += shard
                .0
                .lock()
                .retain(|key, seen| (idle_for(now, seen), key) < threshold);
        }
        self.len.fetch_sub(evicted, Ordering::Relaxed);
        self.evictions.fetch_add(evicted as u64, Ordering::Relaxed);
    }
}

impl fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyTable")
            .field("keys", &self.len())
            .field("max_keys", &self.max_keys)
            .field("evictions", &self.evictions())
            .finish()
    }
}

impl Shard {
    /// Bucket and slot of `key`.
    fn find(&self, key: u64, hash: u64) -> Option<(usize, usize)> {
        if self.buckets.is_empty() {
            return None;
        }
        let mask = self.buckets.len() - 1;
        let mut b = hash as usize & mask;
        loop {
            let bucket = &self.buckets[b];
            // Which slot holds `key`, without a branch per slot (which one
            // it is is random, so such branches mispredict).
            let found = (0..SLOTS)
                .fold(0, |found, s| found | u32::from(bucket.keys[s] == key) << s)
                & bucket.used;
            if found != 0 {
                return Some((b, found.trailing_zeros() as usize));
            }
            if bucket.used != FULL {
                return None;
            }
            b = (b + 1) & mask;
        }
    }

    /// Adds a key that is not in the shard.
    fn insert(&mut self, key: u64, hash: u64, tat: u64, seen: u32) {
        if (self.len + 1) * MAX_LOAD.1 > self.buckets.len() * SLOTS * MAX_LOAD.0 {
            self.rebuild((self.buckets.len() * 2).max(2), |_, _| true);
        }
        self.place(key, hash, tat, seen);
        self.len += 1;
    }

    /// Puts a key in the first free slot from its home bucket on.
    fn place(&mut self, key: u64, hash: u64, tat: u64, seen: u32) {
        let mask = self.buckets.len() - 1;
        let mut b = hash as usize & mask;
        while self.buckets[b].used == FULL {
            b = (b + 1) & mask;
        }
        let bucket = &mut self.buckets[b];
        let s = (!bucket.used & FULL).trailing_zeros() as usize;
        bucket.keys[s] = key;
        bucket.tats[s] = tat;
        bucket.seen[s] = seen;
        bucket.used |= 1 << s;
    }

    /// Every key with when it was last seen.
    fn entries(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.buckets.iter().flat_map(|bucket| {
            (0..SLOTS)
                .filter(|s| bucket.used & (1 << s) != 0)
                .map(|s| (bucket.keys[s], bucket.seen[s]))
        })
    }

    /// Keeps only the keys `keep` says yes to; returns how many went.
    fn retain(&mut self, keep: impl Fn(u64, u32) -> bool) -> usize {
        let before = self.len;
        self.rebuild(self.buckets.len(), keep);
        before - self.len
    }

    /// Rehashes the kept keys into `buckets` fresh buckets.
    fn rebuild(&mut self, buckets: usize, keep: impl Fn(u64, u32) -> bool) {
        let old = std::mem::replace(&mut self.buckets, vec![Bucket::default(); buckets]);
        self.len = 0;
        for bucket in &old {
            for s in (0..SLOTS).filter(|s| bucket.used & (1 << s) != 0) {
                let (key, seen) = (bucket.keys[s], bucket.seen[s]);
                if keep(key, seen) {
                    self.place(key, mix(key), bucket.tats[s], seen);
                    self.len += 1;
                }
            }
        }
    }
}

/// Spreads a key hash over all 64 bits (the top ones pick the shard, the low
/// ones the bucket), so even small sequential keys spread evenly.
fn mix(key: u64) -> u64 {
    let product = u128::from(key) * 0x9E37_79B9_7F4A_7C15;
    (product as u64) ^ ((product >> 64) as u64)
}

fn seen_at(now: u64) -> u32 {
    (now >> SEEN_SHIFT) as u32
}

/// How long a key has been idle at `now`, in seen units (0 if another
/// thread saw it a moment later than `now`).
fn idle_for(now: u32, seen: u32) -> u32 {
    u32::try_from(now.wrapping_sub(seen) as i32).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records `key` at `now` with TAT `now`, as a conforming request would.
    fn touch(table: &KeyTable, key: u64, now: u64) {
        table.update(key, now, |_| Ok::<_, ()>(now)).unwrap();
    }

    fn tat(table: &KeyTable, key: u64) -> Option<u64> {
        let mut found = None;
        table
            .update(key, 0, |tat| {
                found = tat;
                Err(())
            })
            .unwrap_err();
        found
    }

    #[test]
    fn keys_are_found_after_the_shards_grow() {
        let table = KeyTable::new(1_000_000);
        for key in 0..100_000u64 {
            touch(&table, key * 7, key + 1);
        }
        assert_eq!(table.len(), 100_000);
        for key in 0..100_000u64 {
            assert_eq!(tat(&table, key * 7), Some(key + 1), "key {key}");
        }
        assert_eq!(tat(&table, 3), None);
        // A refused new key is not added.
        assert_eq!(table.len(), 100_000);
    }

    #[test]
    fn eviction_takes_the_longest_idle_and_keeps_the_rest_findable() {
        let ms = 1_000_000;
        let table = KeyTable::new(1_000);
        for key in 0..1_000u64 {
            touch(&table, key, key * 10 * ms);
        }
        // Key 0 comes back: now it is the newest.
        touch(&table, 0, 10_000 * ms);
        // A new key to a full table evicts the 100 longest idle (1..=100).
        touch(&table, 5_000, 10_001 * ms);
        assert_eq!(table.evictions(), 100);
        assert_eq!(table.len(), 901);
        for key in 1..=100 {
            assert_eq!(tat(&table, key), None, "key {key} evicted");
        }
        assert_eq!(tat(&table, 0), Some(10_000 * ms));
        for key in 101..1_000 {
            assert_eq!(tat(&table, key), Some(key * 10 * ms), "key {key} kept");
        }
    }

    #[test]
    fn two_threads_never_overfill_the_table() {
        let table = KeyTable::new(500);
        std::thread::scope(|scope| {
            for thread in 0..2u64 {
                let table = &table;
                scope.spawn(move || {
                    for i in 0..50_000u64 {
                        touch(table, (i << 1) | thread, i << SEEN_SHIFT);
                        assert!(table.len() <= 500);
                    }
                });
            }
        });
        let tracked: usize = table.shards.iter().map(|s| s.0.lock().len).sum();
        assert_eq!(tracked, table.len());
        assert_eq!(table.len() as u64 + table.evictions(), 100_000);
    }

    #[test]
    fn idle_time_wraps_and_never_goes_negative() {
        assert_eq!(idle_for(5, 3), 2);
        assert_eq!(idle_for(3, 5), 0);
        assert_eq!(idle_for(1, u32::MAX), 2);
    }
}
