//! A ring of the last `N` samples: pushing past its capacity drops the
//! oldest, so the history costs the same memory after five minutes as
//! after five days.
//!
//! Invariant: `len() <= capacity`, and iteration runs oldest first.

use std::collections::VecDeque;

/// The last `capacity` values pushed, oldest first.
#[derive(Debug, Clone)]
pub(super) struct Ring<T> {
    items: VecDeque<T>,
    capacity: usize,
}

impl<T> Ring<T> {
    /// An empty ring holding at most `capacity` (at least 1) values.
    pub(super) fn new(capacity: usize) -> Ring<T> {
        let capacity = capacity.max(1);
        Ring {
            items: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Adds `value` as the newest, dropping the oldest when full.
    pub(super) fn push(&mut self, value: T) {
        if self.items.len() == self.capacity {
            self.items.pop_front();
        }
        self.items.push_back(value);
    }

    pub(super) fn newest(&self) -> Option<&T> {
        self.items.back()
    }

    pub(super) fn oldest(&self) -> Option<&T> {
        self.items.front()
    }

    /// Oldest first.
    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_values_oldest_first() {
        let mut ring = Ring::new(3);
        assert!(ring.newest().is_none());
        for v in 1..=5 {
            ring.push(v);
        }
        assert_eq!(ring.iter().copied().collect::<Vec<_>>(), [3, 4, 5]);
        assert_eq!((ring.oldest(), ring.newest()), (Some(&3), Some(&5)));
    }

    #[test]
    fn a_zero_capacity_holds_one() {
        let mut ring = Ring::new(0);
        ring.push('a');
        ring.push('b');
        assert_eq!(ring.iter().copied().collect::<String>(), "b");
    }
}
