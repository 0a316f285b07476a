//! Which worker thread is this: set once by the runtime when it starts a
//! worker, read by anything that keeps per-worker state (the HTTP/1.1 pool's
//! idle stacks).
//!
//! A leaf: it imports nothing from the crate, so the pool that reads it
//! needs nothing from the runtime that sets it.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

thread_local! {
    /// The index of the worker thread this is, if it is one.
    static WORKER_INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Worker threads started in this process (the most of any `start`).
static WORKER_COUNT: AtomicUsize = AtomicUsize::new(0);

/// The index of the calling worker thread; `None` off the workers.
pub fn worker_index() -> Option<usize> {
    WORKER_INDEX.with(Cell::get)
}

/// How many worker threads serve connections (0 before any start).
pub fn worker_count() -> usize {
    WORKER_COUNT.load(Ordering::Relaxed)
}

/// Records that `count` workers are being started (the count only grows).
pub(crate) fn starting(count: usize) {
    WORKER_COUNT.fetch_max(count, Ordering::Relaxed);
}

/// Marks the calling thread as worker `index`.
pub(crate) fn set_index(index: usize) {
    WORKER_INDEX.with(|i| i.set(Some(index)));
}
