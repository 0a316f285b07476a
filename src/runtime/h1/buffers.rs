//! The read and write buffers of HTTP/1 connections, lent by a small pool
//! per worker thread: a connection holds a buffer only while it reads a
//! head or a body, or writes a response, and gives it back as soon as it
//! has nothing in it, so an idle keep-alive connection, or one whose
//! request waits in a queue, holds none.
//!
//! Invariant: the pool keeps at most [`POOL_MAX`] buffers of exactly
//! [`BUFFER_BYTES`] capacity on each thread; a buffer that grew (a long
//! head) is freed rather than kept.

use std::cell::RefCell;

use bytes::BytesMut;

/// The capacity of a pooled buffer: a typical request head, or a response
/// head with a small body, in one read or write.
pub(crate) const BUFFER_BYTES: usize = 4096;

/// The most buffers kept idle on one thread.
const POOL_MAX: usize = 64;

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer of [`BUFFER_BYTES`], from the pool if it has one.
pub(crate) fn take() -> BytesMut {
    POOL.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| BytesMut::with_capacity(BUFFER_BYTES))
}

/// Gives a buffer back: kept for reuse if it is whole, empty and the pool
/// has room; freed otherwise.
pub(crate) fn give(mut buf: BytesMut) {
    buf.clear();
    // A buffer split by a body still in use cannot be reclaimed; one that
    // grew for a long head is not worth keeping.
    if buf.capacity() < BUFFER_BYTES && !buf.try_reclaim(BUFFER_BYTES) {
        return;
    }
    if buf.capacity() > BUFFER_BYTES * 2 {
        return;
    }
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < POOL_MAX {
            pool.push(buf);
        }
    });
}

/// Gives `slot`'s buffer back if it holds no unread bytes.
pub(crate) fn give_if_empty(slot: &mut Option<BytesMut>) {
    if slot.as_ref().is_some_and(BytesMut::is_empty)
        && let Some(buf) = slot.take()
    {
        give(buf);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_on_the_same_thread_and_grown_ones_are_not() {
        let mut a = take();
        a.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let ptr = a.as_ptr();
        give(a);
        let b = take();
        assert_eq!(b.as_ptr(), ptr, "the same buffer comes back");
        assert!(b.is_empty());
        let mut grown = b;
        grown.reserve(BUFFER_BYTES * 4);
        give(grown);
        assert_eq!(take().capacity(), BUFFER_BYTES);
    }
}
