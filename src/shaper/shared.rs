//! A route rate whose GCRA state lives outside this process, in a store that
//! a fleet of sluice instances shares (Redis: [`crate::redis_store`]).
//!
//! The shaper never waits on the store on a request's path: `admit` only
//! spends tokens already leased; the release task asks the store for more
//! (up to `lease` at a time) while requests wait. When the store fails, the
//! route falls back as configured (a local limiter at `rate / instances`,
//! everything allowed, or nothing), and the release task asks again after a
//! back-off (100 ms doubling to 5 s) until the store answers.

use std::fmt;
use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::time::Duration;

/// The GCRA parameters a request to the store carries (the store holds only
/// the theoretical arrival time, so a changed rate applies at once).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GcraParams {
    /// Emission interval: one token per `interval` (1 / rate).
    pub interval: Duration,
    /// Burst tolerance: `(burst - 1) x interval`, plus the lateness tolerance.
    pub tolerance: Duration,
}

/// What the store granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    /// Tokens granted now, `0..=want`.
    pub granted: u32,
    /// How long, after this grant, until the next token is free (zero if one
    /// is free now), as the store's clock sees it.
    pub next_in: Duration,
}

/// The store could not answer (connection refused or lost, timeout, script error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

pub type StoreFuture = Pin<Box<dyn Future<Output = Result<Taken, StoreError>> + Send>>;

/// A shared GCRA state for one route (one key in the store).
pub trait TokenStore: Send + Sync + fmt::Debug {
    /// Takes up to `want` (>= 1) tokens at the store's own time: as many as
    /// conform, all at once, atomically with every other instance's request.
    /// The future must finish in bounded time (the store applies its timeout).
    fn take(&self, want: NonZeroU32, params: GcraParams) -> StoreFuture;
}
