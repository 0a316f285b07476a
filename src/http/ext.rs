//! Request extensions: facts the runtime attaches to a request for the
//! gateway to read, so neither imports the other for them.

use tokio::time::Instant;

/// Set on a connection's first request: when its client began waiting (the
/// connection's accept), so the route's queue timeout runs from there and
/// not from the moment sluice got round to reading the head.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WaitingSince(pub Instant);
