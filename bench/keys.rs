//! Memory of the per-key limiter's key table with a million distinct keys.
//!
//! `cargo bench --bench keys` prints the process's resident memory (VmRSS)
//! before and after: (a) tracking 1,000,000 keys (max_keys = 1,000,000) and
//! (b) offering 1,000,000 keys to a table capped at 100,000. Each scenario
//! runs in a fresh child process so they do not share an allocator's heap.

// A measuring tool, not the proxy: a failed setup step should stop it
// loudly, so it may unwrap, expect and panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::num::{NonZeroU32, NonZeroUsize};
use std::process::Command;
use std::time::Instant as StdInstant;

use sluice::shaper::KeyedLimiter;

const KEYS: u64 = 1_000_000;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn scenario(max_keys: usize) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let before = rss_kib();
        let limiter = KeyedLimiter::new(
            10.0,
            NonZeroU32::new(20).unwrap(),
            NonZeroUsize::new(max_keys).unwrap(),
        );
        let started = StdInstant::now();
        let now = tokio::time::Instant::now();
        for key in 0..KEYS {
            // Keys as the proxy makes them: 64-bit hashes.
            let _ = limiter.check(key.wrapping_mul(0x9E37_79B9_7F4A_7C15), now);
        }
        let elapsed = started.elapsed();
        let after = rss_kib();
        let tracked = limiter.keys();
        println!(
            "max_keys={max_keys:>9} offered={KEYS} tracked={tracked:>8} evicted={:>8} \
             rss_delta={:>7} KiB ({:.0} bytes/tracked key) decisions/s={:.0}",
            limiter.evictions(),
            after.saturating_sub(before),
            after.saturating_sub(before) as f64 * 1024.0 / tracked.max(1) as f64,
            KEYS as f64 / elapsed.as_secs_f64(),
        );
    });
}

fn main() {
    // `cargo bench` passes `--bench`; a child gets `scenario N`.
    let args: Vec<String> = std::env::args().collect();
    if let Some(pos) = args.iter().position(|a| a == "scenario") {
        let max_keys = args[pos + 1].parse().expect("max_keys");
        scenario(max_keys);
        return;
    }
    let exe = std::env::current_exe().expect("own path");
    for max_keys in [1_000_000usize, 100_000] {
        let status = Command::new(&exe)
            .args(["scenario", &max_keys.to_string()])
            .status()
            .expect("child runs");
        assert!(status.success());
    }
}
