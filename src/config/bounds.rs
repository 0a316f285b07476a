//! Bounds: every number a config may hold is one the code can honour without
//! overflowing, panicking or allocating without limit. docs/configuration.md
//! ("Bounds") lists them. The admin API checks rate overrides against the
//! same bounds.

use std::num::NonZeroU32;
use std::time::Duration;

/// The longest duration any key takes: timers and deadlines are `Instant +
/// Duration`, and a day is longer than any wait a proxy should hold.
pub const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// The least a client-facing timeout (`header_timeout`, `idle_timeout`,
/// `client_body_timeout`, `send_timeout`) may be: below it no client, however prompt, could send a request before the
/// connection is closed, so every request would fail.
pub const MIN_CLIENT_TIMEOUT: Duration = Duration::from_millis(100);
/// The least an upstream's `read_timeout` may be: a backend's ordinary
/// pauses mid-body (a scheduling hiccup, a collection, a slow disk) must
/// not cut every response it streams.
pub(crate) const MIN_READ_TIMEOUT: Duration = Duration::from_millis(100);
/// The slowest rate (requests per second) of a route or key limit, and of an
/// admin override: one request per 1000 s. With `MAX_BURST` the GCRA
/// tolerance (burst / rate) stays within 10^9 s, far inside the nanosecond
/// arithmetic of the limiters (u64, 584 years), the "local" fallback of a
/// shared rate (rate / expected_instances) included.
pub const MIN_RATE: f64 = 0.001;
/// The fastest rate. The route limiter counts in 1/1024 of a request on a
/// nanosecond clock, so near this it releases at most ~976,000 per second.
pub const MAX_RATE: f64 = 1_000_000.0;
/// The largest burst (route, key or admin override).
pub const MAX_BURST: u32 = 1_000_000;
/// A request head is held whole while it is read: on HTTP/1 sluice's codec
/// lets a connection's read buffer grow up to `max_header_bytes` before it
/// answers 431; on HTTP/2 it is the header list size hyper (h2) accepts.
/// Either way, memory per connection.
pub(crate) const MAX_MAX_HEADER_BYTES: usize = 1 << 20;
/// sluice's HTTP/1 codec parses up to 128 headers into a stack array and,
/// above that, into a vector of `max_headers` entries allocated on every
/// parse of a head, so a huge value costs memory and time per request
/// (HAProxy and Apache default to ~100). HTTP/2 does not count headers.
pub(crate) const MAX_MAX_HEADERS: usize = 1000;
/// Linux's default `fs.nr_open`: a process cannot hold more descriptors.
pub(crate) const MAX_CONNECTIONS: usize = 1 << 20;
/// In-flight caps (upstream and target) are semaphores; tokio's allows
/// `usize::MAX >> 3` permits, and no backend takes a million requests at once.
pub(crate) const MAX_INFLIGHT: usize = 1 << 20;
/// Idle connections kept per target.
pub(crate) const MAX_POOL_IDLE_PER_TARGET: usize = 1 << 20;
/// Smooth weighted round robin unrolls one cycle of `sum(weights)` entries,
/// built in `targets x sum` steps: a target's weight, and the sum of an
/// upstream's weights, are at most this.
pub(crate) const MAX_TOTAL_WEIGHT: u32 = 10_000;
/// Failures or successes in a row that a health check counts to.
pub(crate) const MAX_HEALTH_COUNT: u32 = 10_000;
/// Keys a per-key limit tracks; each costs about 35 bytes in its table (bench/README.md).
pub(crate) const MAX_KEYS: usize = 10_000_000;
/// Requests a route's queue holds.
pub(crate) const MAX_QUEUE_CAPACITY: usize = 1_000_000;
/// Bearer tokens are compared in constant time over this many bytes.
pub const MAX_TOKEN_BYTES: usize = 256;
/// A secret file is read up to this size (a token or a password, not a dump).
pub(crate) const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
/// Why a secret equal to the placeholder `sluice check` prints is refused.
pub(crate) const PLACEHOLDER_REFUSED: &str = "is the placeholder `sluice check` prints in place of a secret; put the real value back (or use the _file / _env key)";

/// Checks a rate in requests per second: the one check for the config file
/// and the admin API. NaN and infinities fail.
pub fn check_rate(rate: f64) -> Result<f64, String> {
    if rate.is_finite() && (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!(
            "must be a number of requests per second from {MIN_RATE} to {MAX_RATE}, got {rate}"
        ))
    }
}

/// Checks a burst: the one check for the config file and the admin API.
pub fn check_burst(burst: i64) -> Result<NonZeroU32, String> {
    u32::try_from(burst)
        .ok()
        .filter(|b| *b <= MAX_BURST)
        .and_then(NonZeroU32::new)
        .ok_or_else(|| format!("must be from 1 to {MAX_BURST}, got {burst}"))
}
