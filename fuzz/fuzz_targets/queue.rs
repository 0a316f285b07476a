//! The shaper's waiting room (`sluice::shaper::Queue`) driven by arbitrary
//! operation sequences, checked against a model of the live waiters.
//!
//! Invariants after every operation: `len()` equals the live waiters,
//! `class_len` per class matches and sums to `len()`, `is_empty()` agrees,
//! `oldest()` is the earliest class head. A removed, released or drained slot is
//! never returned or accepted again (generations). `next()` names a live
//! waiter of the class with the best aged rank, the oldest (FIFO) or newest
//! (LIFO) of its class, or with per-key fairness of its key; asking twice
//! names the same one. `victim()` names a lower-class waiter (the lowest class
//! present) or, with per-key fairness, one of a key holding at least two more
//! places than the arriving key. `reconfigure` keeps every waiter and its slot.

#![no_main]

use std::sync::OnceLock;
use std::time::Duration;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::shaper::{Queue, Slot};
use tokio::time::Instant;

#[derive(Debug, Arbitrary)]
struct Input {
    classes: u8,
    per_key: bool,
    aging: Aging,
    ops: Vec<Op>,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
enum Aging {
    Micros(u16),
    Millis(u16),
    Zero,
}

impl Aging {
    fn duration(self) -> Duration {
        match self {
            Aging::Micros(n) => Duration::from_micros(u64::from(n)),
            Aging::Millis(n) => Duration::from_millis(u64::from(n)),
            Aging::Zero => Duration::ZERO,
        }
    }
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Times are milliseconds after a fixed base; not necessarily increasing.
    Push {
        class: u8,
        key: u8,
        at_ms: u16,
    },
    /// Remove a live waiter (cancelled, timed out).
    Remove(u8),
    /// Remove a slot that already left: must be refused.
    RemoveStale(u8),
    /// Next at `now`, then release it (or not: the same must come next time).
    Next {
        now_ms: u16,
        lifo: bool,
        release: bool,
    },
    ReleaseStale(u8),
    /// Who gives way to an arrival of `class` and `key`; optionally remove it.
    Victim {
        class: u8,
        key: u8,
        lifo: bool,
        take: bool,
    },
    Ahead {
        class: u8,
        key: u8,
        lifo: bool,
    },
    Reconfigure {
        classes: u8,
        per_key: bool,
        aging: Aging,
    },
    Drain,
}

#[derive(Debug, Clone, Copy)]
struct Live {
    slot: Slot,
    id: u32,
    class: usize,
    key: u64,
    at: Instant,
    /// Position in arrival order (push order, re-sorted by reconfigure).
    order: u64,
}

struct Model {
    live: Vec<Live>,
    dead: Vec<Slot>,
    classes: usize,
    per_key: bool,
    aging: Duration,
    next_id: u32,
    next_order: u64,
}

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn ms(n: u16) -> Instant {
    base() + Duration::from_millis(u64::from(n))
}

impl Model {
    fn find(&self, slot: Slot) -> Option<usize> {
        self.live.iter().position(|l| l.slot == slot)
    }

    fn take(&mut self, slot: Slot) -> Live {
        let i = self
            .find(slot)
            .expect("the queue named a slot the model does not hold");
        let l = self.live.remove(i);
        self.bury(slot);
        l
    }

    fn bury(&mut self, slot: Slot) {
        self.dead.push(slot);
        if self.dead.len() > 256 {
            self.dead.remove(0);
        }
    }

    /// Live waiters of a class (and key) in arrival order.
    fn list(&self, class: usize, key: Option<u64>) -> Vec<Live> {
        let mut v: Vec<Live> = self
            .live
            .iter()
            .filter(|l| l.class == class && key.is_none_or(|k| l.key == k))
            .copied()
            .collect();
        v.sort_by_key(|l| l.order);
        v
    }

    fn aging(&self) -> Duration {
        self.aging.max(Duration::from_nanos(1))
    }

    /// The class `next` must pick: best aged rank, ties to the older head.
    fn next_class(&self, now: Instant) -> Option<usize> {
        let aging = self.aging().as_nanos();
        (0..self.classes)
            .filter_map(|c| {
                let head = *self.list(c, None).first()?;
                let waited = now.saturating_duration_since(head.at).as_nanos();
                let promoted = usize::try_from(waited / aging).unwrap_or(usize::MAX);
                Some(((c.saturating_sub(promoted), head.at), c))
            })
            .min()
            .map(|(_, c)| c)
    }

    fn count(&self, class: usize, key: u64) -> usize {
        self.live
            .iter()
            .filter(|l| l.class == class && l.key == key)
            .count()
    }
}

fn check(q: &Queue<u32>, m: &Model) {
    assert_eq!(q.len(), m.live.len(), "len");
    assert_eq!(q.is_empty(), m.live.is_empty(), "is_empty");
    let mut sum = 0;
    for c in 0..m.classes {
        let n = q.class_len(c);
        assert_eq!(
            n,
            m.live.iter().filter(|l| l.class == c).count(),
            "class_len({c})"
        );
        sum += n;
    }
    assert_eq!(sum, q.len(), "class lengths do not sum to len");
    for l in &m.live {
        let w = q.get(l.slot).expect("a live slot is gone");
        assert_eq!(
            (w.payload, w.class, w.key, w.enqueued_at),
            (l.id, l.class, l.key, l.at)
        );
    }
    for &slot in &m.dead {
        assert!(q.get(slot).is_none(), "a slot that left is back: {slot:?}");
    }
    let oldest = (0..m.classes)
        .filter_map(|c| m.list(c, None).first().map(|l| l.at))
        .min();
    assert_eq!(q.oldest(), oldest, "oldest");
}

fuzz_target!(|input: Input| {
    let classes = usize::from(input.classes % 10);
    let mut q: Queue<u32> = Queue::new(classes, input.per_key, input.aging.duration());
    let mut m = Model {
        live: Vec::new(),
        dead: Vec::new(),
        classes: classes.max(1),
        per_key: input.per_key,
        aging: input.aging.duration(),
        next_id: 0,
        next_order: 0,
    };
    check(&q, &m);
    for op in input.ops.iter().take(2000) {
        match *op {
            Op::Push { class, key, at_ms } => {
                let (class, key, at) = (usize::from(class % 12), u64::from(key % 8), ms(at_ms));
                let id = m.next_id;
                m.next_id += 1;
                let slot = q.push(class, key, at, id);
                assert!(
                    m.find(slot).is_none() && !m.dead.contains(&slot),
                    "slot reused: {slot:?}"
                );
                m.live.push(Live {
                    slot,
                    id,
                    class: class.min(m.classes - 1),
                    key,
                    at,
                    order: m.next_order,
                });
                m.next_order += 1;
            }
            Op::Remove(i) => {
                if m.live.is_empty() {
                    continue;
                }
                let l = m.live[usize::from(i) % m.live.len()];
                let w = q
                    .remove(l.slot)
                    .expect("a live waiter could not be removed");
                assert_eq!(w.payload, l.id);
                m.take(l.slot);
            }
            Op::RemoveStale(i) => {
                if m.dead.is_empty() {
                    continue;
                }
                let slot = m.dead[usize::from(i) % m.dead.len()];
                assert!(q.remove(slot).is_none(), "a slot left twice");
            }
            Op::ReleaseStale(i) => {
                if m.dead.is_empty() {
                    continue;
                }
                let slot = m.dead[usize::from(i) % m.dead.len()];
                assert!(q.release(slot).is_none(), "a slot released twice");
            }
            Op::Next {
                now_ms,
                lifo,
                release,
            } => {
                let now = ms(now_ms);
                let got = q.next(now, lifo);
                let Some(slot) = got else {
                    assert!(
                        m.live.is_empty(),
                        "next() is None with {} waiting",
                        m.live.len()
                    );
                    continue;
                };
                assert_eq!(
                    q.next(now, lifo),
                    Some(slot),
                    "asking twice changed the answer"
                );
                let i = m.find(slot).expect("next() named a slot that is not live");
                let l = m.live[i];
                assert_eq!(
                    Some(l.class),
                    m.next_class(now),
                    "next() chose the wrong class"
                );
                let list = m.list(l.class, m.per_key.then_some(l.key));
                let want = if lifo { list.last() } else { list.first() }.unwrap();
                assert_eq!(
                    want.slot, slot,
                    "next() is not the oldest/newest of its class or key"
                );
                if release {
                    let w = q.release(slot).expect("release of next() failed");
                    assert_eq!(w.payload, l.id);
                    m.take(slot);
                }
            }
            Op::Victim {
                class,
                key,
                lifo,
                take,
            } => {
                // The shaper clamps an arrival's class below the class count.
                let class = usize::from(class) % m.classes;
                let key = u64::from(key % 8);
                let got = q.victim(class, key, lifo);
                let lowest = (class + 1..m.classes)
                    .rev()
                    .find(|&c| m.live.iter().any(|l| l.class == c));
                match got {
                    Some(slot) => {
                        let l = m.live[m
                            .find(slot)
                            .expect("victim() named a slot that is not live")];
                        if let Some(low) = lowest {
                            assert_eq!(l.class, low, "victim not from the lowest class below");
                        } else {
                            assert!(m.per_key, "same-class victim without per-key fairness");
                            assert_eq!(l.class, class);
                            assert_ne!(l.key, key, "an arrival displaced its own key");
                            assert!(
                                m.count(class, l.key) > m.count(class, key) + 1,
                                "victim's key not over its share"
                            );
                        }
                        if m.per_key {
                            let most = m
                                .live
                                .iter()
                                .filter(|o| o.class == l.class)
                                .map(|o| m.count(l.class, o.key))
                                .max();
                            assert_eq!(
                                Some(m.count(l.class, l.key)),
                                most,
                                "victim's key is not the fattest"
                            );
                        }
                        let list = m.list(l.class, m.per_key.then_some(l.key));
                        let want = if lifo { list.first() } else { list.last() }.unwrap();
                        assert_eq!(
                            want.slot, slot,
                            "victim is not the newest (oldest under LIFO)"
                        );
                        if take {
                            assert_eq!(q.remove(slot).expect("victim removable").payload, l.id);
                            m.take(slot);
                        }
                    }
                    None => {
                        assert!(lowest.is_none(), "no victim though a lower class waits");
                        if m.per_key {
                            let own = m.count(class, key);
                            assert!(
                                !m.live.iter().any(|o| o.class == class
                                    && o.key != key
                                    && m.count(class, o.key) > own + 1),
                                "no victim though a key holds two more places"
                            );
                        }
                    }
                }
            }
            Op::Ahead { class, key, lifo } => {
                let class = usize::from(class) % m.classes;
                let ahead = q.ahead(class, u64::from(key % 8), lifo);
                let higher = m.live.iter().filter(|l| l.class < class).count();
                let same = m.live.iter().filter(|l| l.class == class).count();
                assert!(
                    ahead >= higher && ahead <= higher + same,
                    "ahead {ahead} outside {higher}..={}",
                    higher + same
                );
            }
            Op::Reconfigure {
                classes,
                per_key,
                aging,
            } => {
                let classes = usize::from(classes % 10);
                q.reconfigure(classes, per_key, aging.duration());
                m.classes = classes.max(1);
                m.per_key = per_key;
                m.aging = aging.duration();
                m.live.sort_by_key(|l| (l.at, l.order));
                for l in &mut m.live {
                    l.class = l.class.min(m.classes - 1);
                    l.order = m.next_order;
                    m.next_order += 1;
                }
            }
            Op::Drain => {
                let mut got = q.drain();
                got.sort_unstable();
                let mut want: Vec<u32> = m.live.iter().map(|l| l.id).collect();
                want.sort_unstable();
                assert_eq!(got, want, "drain");
                for l in std::mem::take(&mut m.live) {
                    m.bury(l.slot);
                }
            }
        }
        check(&q, &m);
    }
});
