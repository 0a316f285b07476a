//! The demo's load generator: open loop, following a schedule of phases.
//!
//! Open loop means requests are sent when the schedule says, whether or not
//! earlier ones have been answered — as a crowd of independent clients does —
//! so a slow answer never slows the offered rate down. Within each 100 ms tick
//! the tick's requests are spread evenly. At most [`MAX_IN_FLIGHT`] requests
//! are outstanding at once (one connection each at most); past that the next
//! request waits for one to finish, and counts as offered when it is sent.
//! Each request is given [`CLIENT_TIMEOUT`] and ends with exactly one
//! outcome in the recorder.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::{Recorder, TICK};

/// Most requests outstanding at once.
pub const MAX_IN_FLIGHT: usize = 1000;
/// Longest a request may take before it counts as failed; well above the
/// route's queue timeout plus the backend's service time.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);

/// One stretch of the schedule at a constant offered rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// "quiet", "burst 20x", "overload 2x".
    pub name: String,
    /// From the start of the run.
    pub start: Duration,
    pub end: Duration,
    /// Requests per second offered.
    pub rate: f64,
}

/// The demo's schedule over `duration`, as multiples of `capacity`:
/// quiet (half of capacity) for the first 15%, a burst of `burst` times
/// capacity for 10%, steady overload at twice capacity for 45%, and quiet
/// again for the last 30% (long enough for the queue to drain).
pub fn schedule(duration: Duration, capacity: f64, burst: u32) -> Vec<Phase> {
    phases(
        duration,
        capacity,
        [
            ("quiet".to_string(), 0.15, 0.5),
            (format!("burst {burst}x"), 0.10, f64::from(burst)),
            ("overload 2x".to_string(), 0.45, 2.0),
            ("quiet".to_string(), 0.30, 0.5),
        ],
    )
}

/// Phases of (name, share of `duration`, multiple of `capacity`), in order.
fn phases<const N: usize>(
    duration: Duration,
    capacity: f64,
    parts: [(String, f64, f64); N],
) -> Vec<Phase> {
    let mut phases = Vec::with_capacity(parts.len());
    let mut start = Duration::ZERO;
    let mut share_so_far = 0.0;
    for (name, share, multiple) in parts {
        share_so_far += share;
        // Rounded to whole ticks, so each tick belongs to one phase.
        let end = round_to_tick(duration.mul_f64(share_so_far)).min(duration);
        phases.push(Phase {
            name,
            start,
            end,
            rate: capacity * multiple,
        });
        start = end;
    }
    if let Some(last) = phases.last_mut() {
        last.end = duration;
    }
    phases
}

/// `sluice demo --async`'s schedule: quiet (half of capacity) for the
/// first 15%, a burst of `burst` times capacity for 5%, then a valley at a
/// quarter of capacity for the last 80%, in which the backlog the burst left
/// is delivered.
pub fn schedule_async(duration: Duration, capacity: f64, burst: u32) -> Vec<Phase> {
    phases(
        duration,
        capacity,
        [
            ("quiet".to_string(), 0.15, 0.5),
            (format!("burst {burst}x"), 0.05, f64::from(burst)),
            ("valley".to_string(), 0.80, 0.25),
        ],
    )
}

fn round_to_tick(d: Duration) -> Duration {
    let ticks = (d.as_secs_f64() / TICK.as_secs_f64()).round();
    TICK.mul_f64(ticks)
}

/// The offered rate at `at` from the start.
fn rate_at(phases: &[Phase], at: Duration) -> f64 {
    phases
        .iter()
        .find(|p| p.start <= at && at < p.end)
        .map_or(0.0, |p| p.rate)
}

/// Sends the schedule to `target` (requests with `method`: GET, or POST
/// for an async route) and returns once every request has ended.
pub async fn generate(
    target: SocketAddr,
    phases: &[Phase],
    method: Method,
    recorder: Arc<Recorder>,
) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .build(connector);
    let Ok(uri) = format!("http://{target}/item").parse::<Uri>() else {
        return;
    };
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let end = phases.last().map_or(Duration::ZERO, |p| p.end);
    let ticks = (end.as_secs_f64() / TICK.as_secs_f64()).round() as u32;
    // Fractions of a request carried from one tick to the next, so a rate
    // that is not a multiple of 10/s is still offered exactly on average.
    let mut carry = 0.0;
    for tick in 0..ticks {
        let tick_start = TICK * tick;
        carry += rate_at(phases, tick_start + TICK / 2) * TICK.as_secs_f64();
        let count = carry.floor();
        carry -= count;
        let count = count as u32;
        for i in 0..count {
            let at = recorder.start + tick_start + TICK * i / count;
            if at > Instant::now() {
                tokio::time::sleep_until(at).await;
            }
            // (The semaphore is never closed.)
            let Ok(permit) = permits.clone().acquire_owned().await else {
                break;
            };
            let sent = Instant::now();
            recorder.offered.add(recorder.index(sent));
            recorder.offered_total.fetch_add(1, Ordering::Relaxed);
            let (client, uri, recorder) = (client.clone(), uri.clone(), recorder.clone());
            let method = method.clone();
            tokio::spawn(async move {
                let result = tokio::time::timeout(CLIENT_TIMEOUT, send(&client, method, uri)).await;
                let status = match result {
                    Ok(Ok(status)) => Some(status),
                    Ok(Err(err)) => {
                        tracing::debug!(%err, "demo request failed");
                        None
                    }
                    Err(_) => None,
                };
                recorder.answered(sent, status);
                drop(permit);
            });
        }
    }
    // Every permit back: every request has ended (each within CLIENT_TIMEOUT).
    let _all = permits.acquire_many(MAX_IN_FLIGHT as u32).await;
}

/// One request without a body; the status once the whole response has arrived.
async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    method: Method,
    uri: Uri,
) -> Result<StatusCode, Box<dyn std::error::Error + Send + Sync>> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())?;
    let response = client.request(request).await?;
    let status = response.status();
    response.into_body().collect().await?;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each phase's start and end (ms) and rate.
    fn bounds(phases: &[Phase]) -> Vec<(u128, u128, f64)> {
        phases
            .iter()
            .map(|p| (p.start.as_millis(), p.end.as_millis(), p.rate))
            .collect()
    }

    #[test]
    fn the_async_schedule_is_a_burst_then_a_valley() {
        assert_eq!(
            bounds(&schedule_async(Duration::from_secs(20), 200.0, 20)),
            [(0, 3000, 100.0), (3000, 4000, 4000.0), (4000, 20000, 50.0)]
        );
    }

    #[test]
    fn the_schedule_covers_the_duration_in_whole_ticks() {
        let phases = schedule(Duration::from_secs(6), 200.0, 20);
        assert_eq!(
            bounds(&phases),
            [
                (0, 900, 100.0),
                (900, 1500, 4000.0),
                (1500, 4200, 400.0),
                (4200, 6000, 100.0)
            ]
        );
        assert_eq!(phases[1].name, "burst 20x");
        assert_eq!(rate_at(&phases, Duration::from_millis(950)), 4000.0);
        assert_eq!(rate_at(&phases, Duration::from_secs(6)), 0.0);
    }
}
