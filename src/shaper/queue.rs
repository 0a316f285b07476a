//! The waiting room of one route: who is queued, and who leaves next.
//!
//! Waiters live in a slab and are threaded on intrusive doubly linked lists:
//! one list per priority class in arrival order, and (with per-key fairness)
//! one list per key within a class. Any waiter can leave in O(1) — timed out,
//! cancelled, displaced or released — so memory is exactly the live waiters.
//!
//! Who leaves next: the class with the best *aged* rank (class index minus
//! one per `aging` its oldest waiter has waited; ties to the older waiter), so
//! higher classes go first and nothing starves. Within the class, keys take
//! turns (round robin) when fairness is per key; within a key or class, the
//! oldest goes first, or the newest while adaptive LIFO is engaged.

use std::collections::hash_map::Entry as MapEntry;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use slab::Slab;
use tokio::time::Instant;

/// A waiter's place: slab index plus a generation, so a stale handle never
/// touches a newer waiter that reused the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    index: usize,
    generation: u64,
}

#[derive(Debug)]
pub struct Waiter<T> {
    generation: u64,
    pub class: usize,
    pub key: u64,
    pub enqueued_at: Instant,
    pub payload: T,
    in_class: Link,
    in_lane: Link,
}

#[derive(Debug, Default, Clone, Copy)]
struct Link {
    prev: Option<usize>,
    next: Option<usize>,
}

#[derive(Debug, Default, Clone, Copy)]
struct List {
    head: Option<usize>,
    tail: Option<usize>,
    len: usize,
}

/// Which of a waiter's two links a list uses.
#[derive(Clone, Copy)]
enum Thread {
    Class,
    Lane,
}

#[derive(Debug, Default)]
struct Class {
    order: List,
    lanes: HashMap<u64, Lane>,
    /// Keys in turn order; entries whose generation no longer matches their
    /// lane are stale and skipped.
    turns: VecDeque<(u64, u64)>,
    /// (lane length, key) for every lane: the fattest is last.
    by_len: BTreeSet<(usize, u64)>,
}

#[derive(Debug)]
struct Lane {
    list: List,
    generation: u64,
}

/// Turn entries beyond the live lanes tolerated before the turn ring is rebuilt.
const TURN_SLACK: usize = 64;

#[derive(Debug)]
pub struct Queue<T> {
    slab: Slab<Waiter<T>>,
    classes: Vec<Class>,
    per_key: bool,
    aging: Duration,
    next_generation: u64,
}

impl<T> Queue<T> {
    /// A queue with `classes` priority classes (index 0 highest).
    pub fn new(classes: usize, per_key: bool, aging: Duration) -> Queue<T> {
        Queue {
            slab: Slab::new(),
            classes: (0..classes.max(1)).map(|_| Class::default()).collect(),
            per_key,
            aging: aging.max(Duration::from_nanos(1)),
            next_generation: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// Waiters in class `class`.
    pub fn class_len(&self, class: usize) -> usize {
        self.classes[class].order.len
    }

    pub fn get(&self, slot: Slot) -> Option<&Waiter<T>> {
        self.slab
            .get(slot.index)
            .filter(|w| w.generation == slot.generation)
    }

    pub fn push(&mut self, class: usize, key: u64, enqueued_at: Instant, payload: T) -> Slot {
        let class = class.min(self.classes.len() - 1);
        let generation = self.next_generation;
        self.next_generation += 1;
        let index = self.slab.insert(Waiter {
            generation,
            class,
            key,
            enqueued_at,
            payload,
            in_class: Link::default(),
            in_lane: Link::default(),
        });
        self.thread(index);
        Slot { index, generation }
    }

    /// Puts a slab entry at the back of its class's order and its key's lane.
    fn thread(&mut self, index: usize) {
        let (class, key) = (self.slab[index].class, self.slab[index].key);
        let mut order = self.classes[class].order;
        append(&mut self.slab, &mut order, index, Thread::Class);
        self.classes[class].order = order;
        if self.per_key {
            let lane_generation = self.next_generation;
            self.next_generation += 1;
            let c = &mut self.classes[class];
            let lane = match c.lanes.entry(key) {
                MapEntry::Occupied(entry) => entry.into_mut(),
                MapEntry::Vacant(entry) => {
                    c.turns.push_back((key, lane_generation));
                    entry.insert(Lane {
                        list: List::default(),
                        generation: lane_generation,
                    })
                }
            };
            let before = lane.list.len;
            let mut list = lane.list;
            append(&mut self.slab, &mut list, index, Thread::Lane);
            lane.list = list;
            if before > 0 {
                c.by_len.remove(&(before, key));
            }
            c.by_len.insert((before + 1, key));
        }
    }

    /// Changes the number of classes, per-key fairness or aging with waiters
    /// in place: every waiter keeps its slot (tickets stay valid) and its
    /// place in arrival order; a class beyond the new count becomes the lowest.
    pub fn reconfigure(&mut self, classes: usize, per_key: bool, aging: Duration) {
        let mut order: Vec<(Instant, u64, usize)> = self
            .slab
            .iter()
            .map(|(index, w)| (w.enqueued_at, w.generation, index))
            .collect();
        order.sort_unstable();
        self.classes = (0..classes.max(1)).map(|_| Class::default()).collect();
        self.per_key = per_key;
        self.aging = aging.max(Duration::from_nanos(1));
        for (_, _, index) in order {
            let waiter = &mut self.slab[index];
            waiter.class = waiter.class.min(classes.max(1) - 1);
            waiter.in_class = Link::default();
            waiter.in_lane = Link::default();
            self.thread(index);
        }
    }

    /// Takes a waiter out, wherever it is; `None` if it already left.
    pub fn remove(&mut self, slot: Slot) -> Option<Waiter<T>> {
        self.get(slot)?;
        Some(self.remove_index(slot.index))
    }

    fn remove_index(&mut self, index: usize) -> Waiter<T> {
        let (class, key) = {
            let w = &self.slab[index];
            (w.class, w.key)
        };
        let mut order = self.classes[class].order;
        unlink(&mut self.slab, &mut order, index, Thread::Class);
        self.classes[class].order = order;
        if self.per_key {
            let c = &mut self.classes[class];
            if let Some(lane) = c.lanes.get_mut(&key) {
                let before = lane.list.len;
                let mut list = lane.list;
                unlink(&mut self.slab, &mut list, index, Thread::Lane);
                lane.list = list;
                c.by_len.remove(&(before, key));
                if list.len == 0 {
                    c.lanes.remove(&key);
                    if c.turns.len() > 2 * c.lanes.len() + TURN_SLACK {
                        let lanes = &c.lanes;
                        c.turns
                            .retain(|(k, g)| lanes.get(k).is_some_and(|l| l.generation == *g));
                    }
                } else {
                    c.by_len.insert((list.len, key));
                }
            }
        }
        self.slab.remove(index)
    }

    /// When the oldest waiter of any class arrived.
    pub fn oldest(&self) -> Option<Instant> {
        self.classes
            .iter()
            .filter_map(|c| c.order.head.map(|i| self.slab[i].enqueued_at))
            .min()
    }

    /// The waiter to release next at `now` (it stays queued until removed).
    /// With `newest_first`, the newest of the chosen class or key goes.
    pub fn next(&mut self, now: Instant, newest_first: bool) -> Option<Slot> {
        let class = self.next_class(now)?;
        let index = if self.per_key {
            self.next_in_turn(class, newest_first)?
        } else {
            let order = self.classes[class].order;
            if newest_first { order.tail } else { order.head }?
        };
        Some(Slot {
            index,
            generation: self.slab[index].generation,
        })
    }

    /// The class with the best aged rank; ties go to the older head.
    fn next_class(&self, now: Instant) -> Option<usize> {
        let aging = self.aging.as_nanos();
        self.classes
            .iter()
            .enumerate()
            .filter_map(|(class, c)| {
                let head = self.slab[c.order.head?].enqueued_at;
                let waited = now.saturating_duration_since(head).as_nanos();
                let promoted = usize::try_from(waited / aging).unwrap_or(usize::MAX);
                Some(((class.saturating_sub(promoted), head), class))
            })
            .min()
            .map(|(_, class)| class)
    }

    /// The head (or tail) of the key whose turn it is. The turn moves on only
    /// when that waiter is [`Queue::release`]d, so asking twice is harmless.
    fn next_in_turn(&mut self, class: usize, newest_first: bool) -> Option<usize> {
        let c = &mut self.classes[class];
        while let Some(&(key, generation)) = c.turns.front() {
            match c.lanes.get(&key).filter(|l| l.generation == generation) {
                Some(lane) => {
                    return if newest_first {
                        lane.list.tail
                    } else {
                        lane.list.head
                    };
                }
                None => {
                    c.turns.pop_front(); // stale turn of a lane that emptied
                }
            }
        }
        None
    }

    /// Takes out the waiter [`Queue::next`] named, and passes the turn on to
    /// the next key.
    pub fn release(&mut self, slot: Slot) -> Option<Waiter<T>> {
        let waiter = self.remove(slot)?;
        if self.per_key {
            let c = &mut self.classes[waiter.class];
            // The key whose turn it was goes to the back, if it still waits.
            if c.turns.front().is_some_and(|(key, _)| *key == waiter.key)
                && let Some(turn) = c.turns.pop_front()
                && c.lanes.get(&turn.0).is_some_and(|l| l.generation == turn.1)
            {
                c.turns.push_back(turn);
            }
        }
        Some(waiter)
    }

    /// Who gives up a place when the queue is full and a request of `class`
    /// and `key` arrives: a waiter of the lowest class below it; else, with
    /// per-key fairness, one of the key holding the most places in its class
    /// if that is at least two more than `key` holds. The newest of the
    /// victim's kind gives up its place (the oldest under LIFO).
    pub fn victim(&self, class: usize, key: u64, newest_first: bool) -> Option<Slot> {
        let pick = |list: &List| if newest_first { list.head } else { list.tail };
        let lower = self.classes[class + 1..]
            .iter()
            .rev()
            .find(|c| c.order.len > 0)
            .and_then(|c| {
                if self.per_key {
                    // Take from the fattest key of that class.
                    let (_, fat) = c.by_len.last()?;
                    pick(&c.lanes.get(fat)?.list)
                } else {
                    pick(&c.order)
                }
            });
        let index = lower.or_else(|| {
            if !self.per_key {
                return None;
            }
            let c = &self.classes[class];
            let &(fat_len, fat_key) = c.by_len.last()?;
            let own = c.lanes.get(&key).map_or(0, |l| l.list.len);
            (fat_key != key && fat_len > own + 1).then(|| pick(&c.lanes.get(&fat_key)?.list))?
        })?;
        Some(Slot {
            index,
            generation: self.slab[index].generation,
        })
    }

    /// Waiters that a new request of `class` and `key` would expect to see
    /// released before it.
    pub fn ahead(&self, class: usize, key: u64, newest_first: bool) -> usize {
        let higher: usize = self.classes[..class].iter().map(|c| c.order.len).sum();
        let c = &self.classes[class];
        let same = if newest_first {
            0
        } else if self.per_key {
            let own = c.lanes.get(&key).map_or(0, |l| l.list.len);
            let lanes = c.lanes.len() + usize::from(!c.lanes.contains_key(&key));
            c.order.len.min(own * lanes + lanes.saturating_sub(1))
        } else {
            c.order.len
        };
        higher + same
    }

    /// Removes every waiter.
    pub fn drain(&mut self) -> Vec<T> {
        for c in &mut self.classes {
            *c = Class::default();
        }
        self.slab.drain().map(|w| w.payload).collect()
    }
}

fn link<T>(slab: &mut Slab<Waiter<T>>, index: usize, thread: Thread) -> &mut Link {
    let waiter = &mut slab[index];
    match thread {
        Thread::Class => &mut waiter.in_class,
        Thread::Lane => &mut waiter.in_lane,
    }
}

fn append<T>(slab: &mut Slab<Waiter<T>>, list: &mut List, index: usize, thread: Thread) {
    *link(slab, index, thread) = Link {
        prev: list.tail,
        next: None,
    };
    match list.tail {
        Some(tail) => link(slab, tail, thread).next = Some(index),
        None => list.head = Some(index),
    }
    list.tail = Some(index);
    list.len += 1;
}

fn unlink<T>(slab: &mut Slab<Waiter<T>>, list: &mut List, index: usize, thread: Thread) {
    let Link { prev, next } = *link(slab, index, thread);
    match prev {
        Some(p) => link(slab, p, thread).next = next,
        None => list.head = next,
    }
    match next {
        Some(n) => link(slab, n, thread).prev = prev,
        None => list.tail = prev,
    }
    list.len -= 1;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain_order(q: &mut Queue<u32>, now: Instant, newest_first: bool) -> Vec<u32> {
        let mut out = Vec::new();
        while let Some(slot) = q.next(now, newest_first) {
            // Asking again without releasing names the same waiter.
            assert_eq!(q.next(now, newest_first), Some(slot));
            out.push(q.release(slot).unwrap().payload);
        }
        out
    }

    #[test]
    fn fifo_and_lifo_within_one_class() {
        let t = Instant::now();
        let mut q = Queue::new(1, false, Duration::from_secs(1));
        for i in 0..4 {
            q.push(0, 0, t, i);
        }
        let second = q.next(t, false).unwrap();
        assert_eq!(q.remove(second).unwrap().payload, 0);
        assert_eq!(drain_order(&mut q, t, true), vec![3, 2, 1]);
        assert!(q.is_empty());
    }

    #[test]
    fn removal_from_the_middle_keeps_order() {
        let t = Instant::now();
        let mut q = Queue::new(1, true, Duration::from_secs(1));
        let slots: Vec<Slot> = (0..5).map(|i| q.push(0, 7, t, i)).collect();
        assert_eq!(q.remove(slots[2]).unwrap().payload, 2);
        assert!(q.remove(slots[2]).is_none(), "a slot leaves once");
        assert_eq!(drain_order(&mut q, t, false), vec![0, 1, 3, 4]);
    }

    #[test]
    fn higher_classes_first_until_aging_promotes_the_lower() {
        let t0 = Instant::now();
        let mut q = Queue::new(3, false, Duration::from_millis(100));
        q.push(2, 0, t0, 20);
        q.push(0, 0, t0 + Duration::from_millis(10), 0);
        q.push(1, 0, t0 + Duration::from_millis(20), 10);
        // At 30 ms nobody is promoted: strict order.
        assert_eq!(
            drain_order(&mut q, t0 + Duration::from_millis(30), false),
            vec![0, 10, 20]
        );

        q.push(2, 0, t0, 21);
        q.push(0, 0, t0 + Duration::from_millis(250), 1);
        // At 260 ms the class-2 waiter has aged two classes (rank 0) and is older.
        assert_eq!(
            drain_order(&mut q, t0 + Duration::from_millis(260), false),
            vec![21, 1]
        );
    }

    #[test]
    fn keys_take_turns() {
        let t = Instant::now();
        let mut q = Queue::new(1, true, Duration::from_secs(1));
        for i in 0..6 {
            q.push(0, 1, t, 100 + i); // heavy key
        }
        q.push(0, 2, t, 200);
        q.push(0, 3, t, 300);
        assert_eq!(
            drain_order(&mut q, t, false),
            vec![100, 200, 300, 101, 102, 103, 104, 105]
        );
    }

    #[test]
    fn displacement_prefers_lower_classes_then_the_fattest_key() {
        let t = Instant::now();
        let mut q = Queue::new(2, true, Duration::from_secs(1));
        for i in 0..3 {
            q.push(0, 1, t, i); // heavy key, high class
        }
        q.push(1, 9, t, 90);
        q.push(1, 9, t, 91);
        // A high-class arrival displaces the newest low-class waiter.
        let v = q.victim(0, 2, false).unwrap();
        assert_eq!(q.remove(v).unwrap().payload, 91);
        // A low-class arrival cannot displace anyone above it, and key 9's
        // single place is its fair share.
        assert!(q.victim(1, 2, false).is_none());
        q.push(1, 9, t, 92);
        // Two places against none: key 9 gives up its newest.
        let v = q.victim(1, 2, false).unwrap();
        assert_eq!(q.remove(v).unwrap().payload, 92);
        let ninety = q.victim(0, 2, false).unwrap();
        assert_eq!(q.remove(ninety).unwrap().payload, 90);
        // Same class: the fattest key (3 places) gives one up to a newcomer key.
        let v = q.victim(0, 2, false).unwrap();
        assert_eq!(q.remove(v).unwrap().payload, 2);
        // Now key 1 holds 2, key 2 holds 0: still more than one apart.
        assert!(q.victim(0, 2, false).is_some());
        q.push(0, 2, t, 20);
        // 2 vs 1: fair enough, nobody is displaced.
        assert!(q.victim(0, 2, false).is_none());
        // Without per-key fairness nobody in the same class is displaced.
        let mut plain: Queue<u32> = Queue::new(1, false, Duration::from_secs(1));
        plain.push(0, 1, t, 0);
        assert!(plain.victim(0, 2, false).is_none());
    }

    #[test]
    fn reconfiguring_keeps_every_waiter_and_its_order() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = Queue::new(2, false, Duration::from_secs(1));
        let a = q.push(1, 1, ms(0), 'a');
        let b = q.push(0, 1, ms(1), 'b');
        let c = q.push(1, 2, ms(2), 'c');
        // Per key, one class: arrival order, keys in turn.
        q.reconfigure(1, true, Duration::from_secs(1));
        assert_eq!(q.get(b).unwrap().class, 0);
        assert_eq!(q.get(a).unwrap().class, 0);
        let first = q.next(ms(3), false).unwrap();
        assert_eq!(first, a);
        q.release(first);
        // Key 2's turn comes before key 1's second waiter.
        assert_eq!(q.next(ms(3), false), Some(c));
        q.reconfigure(3, false, Duration::from_secs(1));
        assert_eq!(q.len(), 2);
        assert!(q.remove(b).is_some() && q.remove(c).is_some());
    }

    #[test]
    fn turn_ring_stays_bounded_under_key_churn() {
        let t = Instant::now();
        let mut q = Queue::new(1, true, Duration::from_secs(1));
        let _stuck = q.push(0, 0, t, 0);
        for key in 1..10_000u64 {
            let slot = q.push(0, key, t, 1);
            q.remove(slot);
        }
        assert!(q.classes[0].turns.len() <= 2 + TURN_SLACK);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn ahead_counts_higher_classes_and_fair_share() {
        let t = Instant::now();
        let mut q = Queue::new(2, true, Duration::from_secs(1));
        for _ in 0..10 {
            q.push(1, 1, t, 0);
        }
        q.push(0, 5, t, 0);
        // A new key in class 1 waits for the class-0 waiter and one of key 1's turns.
        assert_eq!(q.ahead(1, 2, false), 1 + 1);
        // Key 1 itself is behind its own ten.
        assert_eq!(q.ahead(1, 1, false), 1 + 10);
        assert_eq!(q.ahead(0, 7, false), 1);
        assert_eq!(q.ahead(1, 1, true), 1);
    }
}
