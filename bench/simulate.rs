//! Trace replay speed of `sluice simulate`: trace requests per second of wall time.
//!
//! `cargo bench --bench simulate` generates three 2,000,000-request CSV traces
//! (seeded, so every run replays the same requests), writes each to a
//! temporary file and, three times each, reads it with `Trace::load` and
//! replays it with `simulate`, as `sluice simulate` does. It prints the
//! median of the three runs: the replay alone, and reading plus replay.
//!
//! - `mixed` (the headline): two shaped routes and a little unrouted
//!   traffic over 200 s: `api` (rate 8000/s, a per-key limit of 20/s)
//!   offered ~6000/s by 2000 clients and 5 over-limit ones, `seckill` (rate 1500/s) offered ~2500/s with a 10x
//!   spike for 1 s every 20 s; exponential service times (mean 5 ms) and a
//!   backend concurrency of 200.
//! - `fast_path`: one route that never queues (10,000/s offered, rate 1e6/s):
//!   the floor cost of an arrival.
//! - `overload`: one route at rate 1000/s offered 10,000/s for 200 s: the
//!   queue is always full, 90% are turned away.
//!
//! `SIMULATE_BENCH_REQUESTS` changes the trace length (default 2,000,000).

// A measuring tool, not the proxy: a failed setup step should stop it
// loudly, so it may unwrap, expect and panic.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sluice::Config;
use sluice::simulate::{BackendModel, Rng, ServiceTime, Trace, TraceFormat, simulate};

const CONFIG: &str = r#"
[upstreams.api]
targets = ["127.0.0.1:9000"]
max_inflight = 256

[[routes]]
name = "api"
path_prefix = "/api"
upstream = "api"
key = "header:x-client"
[routes.limit]
rate = 8000
burst = 200
[routes.queue]
capacity = 2000
timeout = "1s"
[routes.key_limit]
rate = 20
burst = 20

[[routes]]
name = "seckill"
path_prefix = "/seckill"
upstream = "api"
[routes.limit]
rate = 1500
burst = 100
[routes.queue]
capacity = 5000
timeout = "2s"

[[routes]]
name = "fast"
path_prefix = "/fast"
upstream = "api"
[routes.limit]
rate = 1000000
burst = 1000
[routes.queue]
capacity = 1000
timeout = "1s"

[[routes]]
name = "overload"
path_prefix = "/overload"
upstream = "api"
[routes.limit]
rate = 1000
burst = 10
[routes.queue]
capacity = 1000
timeout = "1s"
"#;

/// A CSV trace `timestamp,path,key` of `n` requests.
fn generate(scenario: &str, n: usize) -> String {
    let mut rng = Rng(42);
    let mut out = String::with_capacity(n * 32);
    let mut t = 0.0f64;
    for _ in 0..n {
        match scenario {
            "mixed" => {
                // api ~6000/s; seckill ~2500/s, 25,000/s for 1 s in every 20 s.
                let spike = (t % 20.0) >= 10.0 && (t % 20.0) < 11.0;
                let seckill = if spike { 25_000.0 } else { 2_500.0 };
                let total = 6_000.0 + seckill + 50.0;
                t += rng.exponential(1.0 / total);
                let pick = rng.unit() * total;
                if pick < 5_400.0 {
                    let client = rng.next_u64() % 2000;
                    let _ = writeln!(out, "{t:.6},/api/items,c{client}");
                } else if pick < 6_000.0 {
                    // 5 clients at 120/s each, over their limit of 20/s.
                    let bot = rng.next_u64() % 5;
                    let _ = writeln!(out, "{t:.6},/api/items,bot{bot}");
                } else if pick < 6_000.0 + seckill {
                    let _ = writeln!(out, "{t:.6},/seckill/buy,");
                } else {
                    let _ = writeln!(out, "{t:.6},/nowhere,");
                }
            }
            "fast_path" => {
                t += rng.exponential(1.0 / 10_000.0);
                let _ = writeln!(out, "{t:.6},/fast/x,");
            }
            "overload" => {
                t += rng.exponential(1.0 / 10_000.0);
                let _ = writeln!(out, "{t:.6},/overload/x,");
            }
            other => panic!("unknown scenario {other}"),
        }
    }
    out
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn run(config: &Config, scenario: &str, n: usize, dir: &Path) {
    let path: PathBuf = dir.join(format!("{scenario}.csv"));
    std::fs::write(&path, generate(scenario, n)).expect("write the trace");
    let backend = BackendModel {
        service_time: ServiceTime::Exponential(Duration::from_millis(5)),
        concurrency: std::num::NonZeroUsize::new(200),
        seed: 7,
    };
    let mut replay_rates = Vec::new();
    let mut total_rates = Vec::new();
    let mut last = None;
    for _ in 0..3 {
        let started = Instant::now();
        let trace = Trace::load(&path, TraceFormat::Csv, false).expect("the trace reads");
        let read = started.elapsed();
        let report = simulate(config, &trace, &backend).expect("the replay runs");
        let total = started.elapsed();
        replay_rates.push(report.requests_per_second);
        total_rates.push(n as f64 / total.as_secs_f64());
        eprintln!(
            "  {scenario}: read {:.3} s, replay {:.3} s",
            read.as_secs_f64(),
            report.wall_seconds
        );
        last = Some(report);
    }
    let report = last.expect("three runs");
    println!(
        "{scenario:<10} {n} requests, {:.0} s virtual: replay {:.2} M requests/s, read + replay {:.2} M requests/s (median of 3)",
        report.virtual_seconds,
        median(replay_rates) / 1e6,
        median(total_rates) / 1e6,
    );
    for r in &report.routes {
        if r.offered == 0 {
            continue;
        }
        let o = &r.outcomes;
        println!(
            "           {:<9} offered {:>8} forwarded {:>8} rejected_queue_full {:>8} rejected_rate_limited {:>7} dropped_timeout {:>5} no_route {:>6} peak depth {:>5}",
            r.route,
            r.offered,
            o.forwarded,
            o.rejected_queue_full,
            o.rejected_rate_limited,
            o.dropped_timeout,
            o.no_route,
            r.peak_queue_depth
        );
    }
    let _ = std::fs::remove_file(&path);
}

fn main() {
    let n: usize = std::env::var("SIMULATE_BENCH_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let config = Config::parse(CONFIG, Path::new("bench.toml")).expect("the bench config is valid");
    let dir = std::env::temp_dir().join(format!("sluice-simulate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    println!(
        "sluice simulate replay speed on {} ({} cores)",
        cpu_model(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    for scenario in ["mixed", "fast_path", "overload"] {
        run(&config, scenario, n, &dir);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
