//! Per-thread reuse of the memory behind the few large futures boxed once
//! per request (the gateway's forward phase, an HTTP/1 connection's serving
//! and answering phases).
//!
//! They are boxed so that what waits — an idle connection, a request in a
//! route's queue — holds only a pointer, not room for them. But each is
//! over 1,032 bytes, the largest block glibc's per-thread cache keeps, so
//! every request took and gave back its blocks through glibc's shared bins
//! (`_int_malloc`, `_int_free`: the costliest part of the allocator in the
//! profile). A [`Recycled`] future lives in a block from this thread's
//! free list of its size, and its block goes back to the list when it is
//! dropped: a stream of requests on a worker reuses the same few blocks.
//!
//! Bounded: at most [`KEPT_PER_SIZE`] free blocks per size and thread are
//! kept (beyond that a block goes back to the allocator), and only for the
//! few sizes these futures have.

use std::alloc::Layout;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::ptr::NonNull;
use std::task::{Context, Poll};

/// Free blocks kept per size and thread (a worker with this many requests
/// forwarding at once reuses them all; more in flight allocate).
pub const KEPT_PER_SIZE: usize = 64;

/// Sizes of block kept per thread; a future of another size (there are a
/// handful) is allocated and freed as a `Box` would be.
const SIZES: usize = 8;

/// A future in a block of this thread's free list, pinned there until it is
/// dropped.
pub struct Recycled<F> {
    /// Valid and initialised from `new` until `drop`; never moved.
    ptr: NonNull<F>,
}

// SAFETY: a `Recycled<F>` owns its `F` as a `Box<F>` does; the block it
// lives in is plain memory from the global allocator, which any thread may
// give back (here, to its own free list).
unsafe impl<F: Send> Send for Recycled<F> {}
// SAFETY: as above: shared access is access to the `F`.
unsafe impl<F: Sync> Sync for Recycled<F> {}

impl<F> Recycled<F> {
    /// `future`, moved into a block of this thread's free list (or a new
    /// one).
    pub fn new(future: F) -> Recycled<F> {
        let layout = Layout::new::<F>();
        if layout.size() == 0 {
            // Nothing to keep: a dangling, aligned pointer serves.
            let ptr = NonNull::<F>::dangling();
            // SAFETY: writing a zero-sized value through an aligned pointer.
            unsafe { ptr.as_ptr().write(future) };
            return Recycled { ptr };
        }
        let block = take(layout).cast::<F>();
        // SAFETY: `block` is an unused allocation of `F`'s layout.
        unsafe { block.as_ptr().write(future) };
        Recycled { ptr: block }
    }
}

impl<F> Drop for Recycled<F> {
    fn drop(&mut self) {
        // SAFETY: the `F` was written in `new` and is dropped once, here.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        let layout = Layout::new::<F>();
        if layout.size() != 0 {
            give(self.ptr.cast::<u8>(), layout);
        }
    }
}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the `F` stays where `new` wrote it until it is dropped
        // (`Recycled` is a pointer to it, moving that moves no `F`), so it
        // is pinned.
        let future = unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) };
        future.poll(cx)
    }
}

/// This thread's free blocks, by layout.
struct FreeLists(Vec<(Layout, Vec<NonNull<u8>>)>);

impl Drop for FreeLists {
    fn drop(&mut self) {
        for (layout, blocks) in self.0.drain(..) {
            for block in blocks {
                // SAFETY: each block was allocated with `layout` and is free.
                unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
            }
        }
    }
}

thread_local! {
    static FREE: RefCell<FreeLists> = const { RefCell::new(FreeLists(Vec::new())) };
}

/// A block of `layout` (not zero-sized): a free one of this thread's, or a
/// new allocation.
fn take(layout: Layout) -> NonNull<u8> {
    let reused = FREE
        .try_with(|free| {
            let mut free = free.borrow_mut();
            let (_, blocks) = free.0.iter_mut().find(|(l, _)| *l == layout)?;
            blocks.pop()
        })
        .ok()
        .flatten();
    reused.unwrap_or_else(|| {
        // SAFETY: `layout` is not zero-sized.
        let block = unsafe { std::alloc::alloc(layout) };
        NonNull::new(block).unwrap_or_else(|| std::alloc::handle_alloc_error(layout))
    })
}

/// Gives back a free block of `layout`: kept for reuse while there is room,
/// else deallocated.
fn give(block: NonNull<u8>, layout: Layout) {
    let kept = FREE
        .try_with(|free| {
            let mut free = free.borrow_mut();
            let lists = &mut free.0;
            let index = match lists.iter().position(|(l, _)| *l == layout) {
                Some(index) => index,
                None if lists.len() < SIZES => {
                    lists.push((layout, Vec::with_capacity(KEPT_PER_SIZE)));
                    lists.len() - 1
                }
                None => return false,
            };
            let blocks = &mut lists[index].1;
            if blocks.len() < KEPT_PER_SIZE {
                blocks.push(block);
                true
            } else {
                false
            }
        })
        // The thread is ending: its lists are gone.
        .unwrap_or(false);
    if !kept {
        // SAFETY: the block was allocated with `layout` and is free.
        unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A large future that counts its drops and says where it lives.
    struct Big {
        _room: [u8; 4096],
        drops: Arc<AtomicUsize>,
        value: u32,
    }

    impl Future for Big {
        type Output = (u32, usize);

        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<(u32, usize)> {
            let at = std::ptr::from_ref(&*self) as usize;
            Poll::Ready((self.value, at))
        }
    }

    impl Drop for Big {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn big(value: u32, drops: &Arc<AtomicUsize>) -> Big {
        Big {
            _room: [0; 4096],
            drops: drops.clone(),
            value,
        }
    }

    fn poll_once<F: Future + Unpin>(f: &mut F) -> F::Output {
        match Pin::new(f).poll(&mut Context::from_waker(std::task::Waker::noop())) {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("pending"),
        }
    }

    #[test]
    fn a_dropped_futures_block_is_reused_and_each_future_dropped_once() {
        let drops = Arc::new(AtomicUsize::new(0));
        let mut first = Recycled::new(big(1, &drops));
        let (value, at) = poll_once(&mut first);
        assert_eq!(value, 1);
        drop(first);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // The next future of the same size lives in the same block.
        let mut second = Recycled::new(big(2, &drops));
        assert_eq!(poll_once(&mut second), (2, at));
        // Two at once: two blocks.
        let mut third = Recycled::new(big(3, &drops));
        let (value, elsewhere) = poll_once(&mut third);
        assert_eq!(value, 3);
        assert_ne!(elsewhere, at);
        drop((second, third));
        assert_eq!(drops.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn at_most_kept_per_size_blocks_are_kept() {
        let drops = Arc::new(AtomicUsize::new(0));
        let many: Vec<_> = (0..KEPT_PER_SIZE + 10)
            .map(|i| Recycled::new(big(i as u32, &drops)))
            .collect();
        drop(many);
        assert_eq!(drops.load(Ordering::SeqCst), KEPT_PER_SIZE + 10);
        let kept = FREE.with(|free| {
            let free = free.borrow();
            free.0
                .iter()
                .find(|(l, _)| *l == Layout::new::<Big>())
                .map_or(0, |(_, blocks)| blocks.len())
        });
        assert_eq!(kept, KEPT_PER_SIZE);
    }

    #[test]
    fn zero_sized_futures_need_no_block() {
        struct Seven;
        impl Future for Seven {
            type Output = u8;
            fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<u8> {
                Poll::Ready(7)
            }
        }
        let mut seven = Recycled::new(Seven);
        assert_eq!(poll_once(&mut seven), 7);
    }
}
