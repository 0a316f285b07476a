//! The worker threads that serve proxy connections, each with its own
//! single-threaded runtime, so a connection's request and the upstream
//! connection it borrows are driven by one thread without cross-thread
//! wake-ups.
//!
//! Invariant: each worker thread records its index in [`crate::worker`]
//! before it runs anything, so per-worker state (the HTTP/1.1 pool's idle
//! stacks) is sized and indexed consistently.

/// One worker per CPU.
pub(super) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

/// The threads that serve proxy connections, each running a single-threaded
/// runtime; connections are dealt to them in turn. Dropping this stops them
/// (their remaining tasks are dropped).
pub(crate) struct Workers {
    pub(super) handles: Vec<tokio::runtime::Handle>,
    _stop: Vec<tokio::sync::oneshot::Sender<()>>,
}

impl Workers {
    pub(super) fn start(count: usize) -> std::io::Result<Workers> {
        let mut handles = Vec::with_capacity(count);
        let mut stops = Vec::with_capacity(count);
        crate::worker::starting(count);
        for index in 0..count {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(runtime.handle().clone());
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            stops.push(stop);
            std::thread::Builder::new()
                .name(format!("sluice-worker-{index}"))
                .spawn(move || {
                    crate::worker::set_index(index);
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
        }
        Ok(Workers {
            handles,
            _stop: stops,
        })
    }

    /// How many workers there are (at least one).
    pub(super) fn len(&self) -> usize {
        self.handles.len()
    }
}
