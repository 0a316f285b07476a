//! `sluice demo`: sluice shaping a traffic spike, self-contained on 127.0.0.1.
//!
//! One process runs three things on loopback ports the system picks:
//! a backend of limited capacity ([`backend`]: 200 requests/s), sluice in
//! front of it with the built-in `config/demo.toml`, and an open-loop load
//! generator ([`load`]) that offers quiet traffic, a burst far over capacity,
//! steady overload, and quiet again. Every 100 ms tick it records what was
//! offered (requests sent), released (requests that reached the backend),
//! answered 503 and the route's queue depth (sampled from the admin API).
//! While it runs a progress bar shows the counters (plain lines, one a
//! second, when stdout is not a terminal); at the end it prints a report and
//! writes the chart ([`chart`]).
//!
//! With `--async` ([`deferred`]) the route is asynchronous
//! (`config/demo-async.toml`, its journal in a temporary directory): the
//! burst is answered `202` at once and delivered over the seconds after it,
//! and the demo waits for the backlog to drain before it reports.
//!
//! Peaks are the most requests in any 1 s window (sliding by 100 ms), so they
//! read directly as requests per second. GCRA releases at most `rate x 1 s +
//! burst` in any 1 s window; the backend counts arrivals, a moment after
//! release, so a released peak a few requests above that is timing, not
//! leakage.

mod backend;
mod chart;
mod deferred;
mod load;

use std::collections::BTreeMap;
use std::fmt;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use parking_lot::Mutex;
use tokio::time::{Instant, MissedTickBehavior};

use crate::Config;
use crate::config::{AsyncConfig, LimitConfig, TargetConfig};
pub use deferred::AsyncFigures;
pub use load::Phase;

/// The demo's config, built in so the demo runs from any directory.
const CONFIG: &str = include_str!("../../../config/demo.toml");
/// The name the config is known by in messages.
const CONFIG_NAME: &str = "config/demo.toml";
/// `--async`: the same route, asynchronous.
const ASYNC_CONFIG: &str = include_str!("../../../config/demo-async.toml");
const ASYNC_CONFIG_NAME: &str = "config/demo-async.toml";
/// The route the load is sent to, and the upstream that is the demo backend.
const ROUTE: &str = "demo";
const UPSTREAM: &str = "backend";

/// The resolution of everything recorded.
pub const TICK: Duration = Duration::from_millis(100);
/// The window peaks are measured over.
pub const PEAK_WINDOW: Duration = Duration::from_secs(1);
/// Shortest and longest run accepted.
pub const MIN_DURATION: Duration = Duration::from_secs(3);
pub const MAX_DURATION: Duration = Duration::from_secs(300);
/// Largest burst accepted, as a multiple of the backend's capacity.
pub const MAX_BURST: u32 = 50;
/// Time between both servers being up and the first request.
const START_DELAY: Duration = Duration::from_millis(200);
/// How long stopping sluice may take.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long one admin call (queue depth, metrics) may take.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(1);

/// What `sluice demo` was asked to do.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Length of the load schedule; the phases scale with it.
    pub duration: Duration,
    /// The spike, as a multiple of the backend's capacity.
    pub burst: u32,
    /// Where the SVG chart is written.
    pub out: PathBuf,
    /// `--async`: the route accepts (`202`) and delivers later.
    pub asynchronous: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: Duration::from_secs(20),
            burst: 20,
            out: PathBuf::from("sluice-demo.svg"),
            asynchronous: false,
        }
    }
}

impl Options {
    fn validate(&self) -> anyhow::Result<()> {
        if !(MIN_DURATION..=MAX_DURATION).contains(&self.duration) {
            bail!(
                "--duration must be from {} to {}, not {}",
                humantime::format_duration(MIN_DURATION),
                humantime::format_duration(MAX_DURATION),
                humantime::format_duration(self.duration)
            );
        }
        if !(1..=MAX_BURST).contains(&self.burst) {
            bail!(
                "--burst must be from 1 to {MAX_BURST} (times the backend's capacity), not {}",
                self.burst
            );
        }
        Ok(())
    }
}

/// Counts per tick, one atomic each.
pub(crate) struct Counts(Box<[AtomicU64]>);

impl Counts {
    fn new(len: usize) -> Counts {
        Counts((0..len).map(|_| AtomicU64::new(0)).collect())
    }

    pub(crate) fn add(&self, index: usize) {
        self.0[index].fetch_add(1, Ordering::Relaxed);
    }

    fn raise(&self, index: usize, value: u64) {
        self.0[index].fetch_max(value, Ordering::Relaxed);
    }

    fn values(&self) -> Vec<u64> {
        self.0.iter().map(|c| c.load(Ordering::Relaxed)).collect()
    }
}

/// What the backend, the load generator and the sampler record.
pub(crate) struct Recorder {
    /// When the first request is due; tick 0 starts here.
    pub(crate) start: Instant,
    pub(crate) offered: Counts,
    pub(crate) released: Counts,
    /// Answered 202 (an async route), by the tick of the answer.
    accepted: Counts,
    /// Answered 503 or 429, by the tick of the answer.
    shed: Counts,
    /// The most requests seen queued in the tick.
    depth: Counts,
    pub(crate) offered_total: AtomicU64,
    pub(crate) released_total: AtomicU64,
    ok: AtomicU64,
    shed_total: AtomicU64,
    limited: AtomicU64,
    failed: AtomicU64,
    /// Time to a complete 200 (or 202) answer, per successful request.
    waits: Mutex<Vec<Duration>>,
}

impl Recorder {
    fn new(start: Instant, ticks: usize) -> Recorder {
        Recorder {
            start,
            offered: Counts::new(ticks),
            released: Counts::new(ticks),
            accepted: Counts::new(ticks),
            shed: Counts::new(ticks),
            depth: Counts::new(ticks),
            offered_total: AtomicU64::new(0),
            released_total: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            shed_total: AtomicU64::new(0),
            limited: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            waits: Mutex::new(Vec::new()),
        }
    }

    /// The tick `at` falls in (the last one for anything later).
    pub(crate) fn index(&self, at: Instant) -> usize {
        let since = at.saturating_duration_since(self.start);
        let index = (since.as_millis() / TICK.as_millis()) as usize;
        index.min(self.offered.0.len() - 1)
    }

    /// A request sent at `sent` ended now, with `status` (`None`: no answer).
    pub(crate) fn answered(&self, sent: Instant, status: Option<StatusCode>) {
        let now = Instant::now();
        match status {
            Some(StatusCode::OK) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.waits.lock().push(now - sent);
            }
            Some(StatusCode::ACCEPTED) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                self.waits.lock().push(now - sent);
                self.accepted.add(self.index(now));
            }
            Some(StatusCode::SERVICE_UNAVAILABLE) => {
                self.shed_total.fetch_add(1, Ordering::Relaxed);
                self.shed.add(self.index(now));
            }
            Some(StatusCode::TOO_MANY_REQUESTS) => {
                self.limited.fetch_add(1, Ordering::Relaxed);
                self.shed.add(self.index(now));
            }
            _ => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Counts per 100 ms tick from the start of the run (the last tick also
/// holds anything later).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Ticks {
    /// Requests sent by the load generator.
    pub offered: Vec<u64>,
    /// Requests that arrived at the backend.
    pub released: Vec<u64>,
    /// Requests answered 202 (`--async`).
    pub accepted: Vec<u64>,
    /// Requests answered 503 or 429.
    pub shed: Vec<u64>,
    /// The route's queue depth (the highest sample in the tick); with
    /// `--async`, its backlog (requests held: queued or in flight).
    pub depth: Vec<u64>,
}

/// The outcome of a demo run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub duration: Duration,
    pub phases: Vec<Phase>,
    /// The spike as a multiple of the backend's capacity.
    pub burst_multiple: u32,
    /// The backend's capacity, requests/s.
    pub capacity: f64,
    /// The route's rate, burst and queue timeout (config/demo.toml).
    pub rate: f64,
    pub burst: u32,
    pub queue_timeout: Duration,
    /// Requests sent, and how each ended (`ok`: 200, or 202 with `--async`).
    pub offered: u64,
    pub ok: u64,
    pub shed: u64,
    pub limited: u64,
    pub failed: u64,
    /// Requests that reached the backend.
    pub released: u64,
    /// The most requests offered / released in any 1 s window.
    pub offered_peak: u64,
    pub released_peak: u64,
    /// The most requests seen in the queue.
    pub queue_peak: u64,
    /// The most requests at the backend at once.
    pub backend_peak: u64,
    /// Time to a complete `200` answer (queue wait + service), measured by
    /// the client: median and 99th percentile.
    pub wait_p50: Option<Duration>,
    pub wait_p99: Option<Duration>,
    /// sluice's own count, `sluice_requests_total{route="demo"}` by outcome.
    pub sluice_outcomes: BTreeMap<String, u64>,
    /// `--async`: delivery, expiry and the drain.
    pub deferred: Option<AsyncFigures>,
    pub ticks: Ticks,
    /// Where the chart was written.
    pub chart: PathBuf,
}

/// Runs the demo: prints the live view and the report to stdout, writes the
/// chart to `options.out`. Needs a multi-threaded tokio runtime.
pub async fn run(options: &Options) -> anyhow::Result<Report> {
    options.validate()?;
    // Fail now rather than after the run if the chart cannot be written.
    std::fs::write(&options.out, "")
        .with_context(|| format!("cannot write the chart to {}", options.out.display()))?;
    let out = std::path::absolute(&options.out).unwrap_or_else(|_| options.out.clone());

    let (mut config, route) = demo_config(options.asynchronous)?;
    // `--async`: the journal in a fresh temporary directory, removed when
    // this returns (after sluice has stopped).
    let journal = match route.deferred {
        Some(_) => Some(deferred::JournalDir::create()?),
        None => None,
    };
    if let Some(journal) = &journal {
        config.storage.dir = Some(journal.path().to_path_buf());
    }
    let (backend, running) = start_both(config, route.config_name).await?;
    // Tick 0 starts shortly after both servers are up; an async run may
    // wait up to `deliver_within` after the load for the backlog to drain.
    let drain_limit = route.deferred.map(|a| a.deliver_within);
    let span = options.duration + load::CLIENT_TIMEOUT + drain_limit.unwrap_or_default();
    let ticks = span.as_millis() / TICK.as_millis() + 10;
    let recorder = Arc::new(Recorder::new(Instant::now() + START_DELAY, ticks as usize));
    backend.record_into(recorder.clone());

    let phases = match route.deferred {
        Some(_) => load::schedule_async(options.duration, backend::capacity(), options.burst),
        None => load::schedule(options.duration, backend::capacity(), options.burst),
    };
    print_setup(options, &backend, &running, &route);
    if let Some(journal) = &journal {
        println!(
            "  journal  {}  (removed at the end)",
            journal.path().display()
        );
    }
    let admin = AdminClient::new(running.admin_addr());
    let outcome = drive(&running, &admin, &phases, &recorder, drain_limit).await;
    let (sluice_outcomes, events) = match outcome {
        Ok(_) => (admin.outcomes().await, admin.async_events().await),
        Err(_) => (BTreeMap::new(), BTreeMap::new()),
    };
    drop(admin);

    let backend_peak = stop_both(running, backend).await;
    drop(journal);
    let drained_after = outcome?;

    let mut report = Report::of(
        options,
        &recorder,
        phases,
        &route,
        backend_peak,
        sluice_outcomes,
        out,
    );
    report.deferred = route.deferred.map(|a| AsyncFigures {
        capacity: a.capacity.get(),
        deliver_within: a.deliver_within,
        accepted_peak: peak(&recorder.accepted.values()),
        delivered: events.get("delivered").copied().unwrap_or(0),
        expired: events.get("expired").copied().unwrap_or(0),
        drained_after,
    });
    let svg =
        chart::render(&report).map_err(|err| anyhow::anyhow!("cannot draw the chart: {err}"))?;
    std::fs::write(&report.chart, svg)
        .with_context(|| format!("cannot write the chart to {}", report.chart.display()))?;
    print!("{report}");
    std::io::stdout().flush().ok();
    Ok(report)
}

/// The demo route's limit and queue timeout, as config/demo.toml sets them
/// (or config/demo-async.toml, with its `[routes.async]`).
struct DemoRoute {
    config_name: &'static str,
    limit: LimitConfig,
    queue_timeout: Duration,
    deferred: Option<AsyncConfig>,
}

/// The built-in config (the async one if `asynchronous`), and its demo
/// route's settings.
fn demo_config(asynchronous: bool) -> anyhow::Result<(Config, DemoRoute)> {
    let (text, name) = match asynchronous {
        true => (ASYNC_CONFIG, ASYNC_CONFIG_NAME),
        false => (CONFIG, CONFIG_NAME),
    };
    let config = Config::parse(text, Path::new(name))?;
    let route = config
        .routes
        .iter()
        .find(|r| r.name == ROUTE)
        .with_context(|| format!("{name}: no route named {ROUTE:?}"))?;
    let limit = route
        .limit
        .with_context(|| format!("{name}: route {ROUTE:?} has no [routes.limit]"))?;
    let route = DemoRoute {
        config_name: name,
        limit,
        queue_timeout: route.queue.timeout,
        deferred: route.deferred,
    };
    Ok((config, route))
}

/// Starts the demo backend, then sluice with the backend as its upstream's
/// one target (the backend is stopped again if sluice does not start).
async fn start_both(
    mut config: Config,
    config_name: &str,
) -> anyhow::Result<(backend::Backend, crate::Running)> {
    let backend = backend::Backend::start()
        .await
        .context("cannot start the demo backend")?;
    let target = backend
        .addr()
        .to_string()
        .parse()
        .context("the demo backend's address is not a valid authority")?;
    config
        .upstreams
        .get_mut(UPSTREAM)
        .with_context(|| format!("{config_name}: no upstream named {UPSTREAM:?}"))?
        .targets = vec![TargetConfig::new(target)];
    match crate::start(&config).await {
        Ok(running) => Ok((backend, running)),
        Err(err) => {
            backend.stop().await;
            Err(err).context("cannot start sluice")
        }
    }
}

/// Stops sluice (warning if it takes over STOP_GRACE), then the backend;
/// returns the most requests the backend held at once.
async fn stop_both(running: crate::Running, backend: backend::Backend) -> u64 {
    running.shutdown();
    if tokio::time::timeout(STOP_GRACE, running.wait())
        .await
        .is_err()
    {
        tracing::warn!("sluice did not stop within {STOP_GRACE:?}");
    }
    let backend_peak = backend.peak_backlog();
    backend.stop().await;
    backend_peak
}

/// What runs where, before the load starts.
fn print_setup(
    options: &Options,
    backend: &backend::Backend,
    running: &crate::Running,
    route: &DemoRoute,
) {
    println!(
        "sluice demo: {} of load, all on 127.0.0.1",
        humantime::format_duration(options.duration)
    );
    println!(
        "  backend  {}  {:.0} req/s ({} workers x {} ms)",
        backend.addr(),
        backend::capacity(),
        backend::WORKERS,
        backend::SERVICE.as_millis(),
    );
    match route.deferred {
        Some(a) => println!(
            "  sluice   {}  {}: async route, delivered at rate {}/s, burst {}; capacity {}, deliver_within {}",
            running.proxy_addr(),
            route.config_name,
            route.limit.rate,
            route.limit.burst,
            a.capacity,
            humantime::format_duration(a.deliver_within),
        ),
        None => println!(
            "  sluice   {}  {}: rate {}/s, burst {}, queue timeout {} ms",
            running.proxy_addr(),
            route.config_name,
            route.limit.rate,
            route.limit.burst,
            route.queue_timeout.as_millis(),
        ),
    }
    println!(
        "  status   http://{}/  live status page: open it in a browser while the demo runs",
        running.admin_addr()
    );
}

impl Report {
    /// The report of a run: what `recorder` counted (totals, peaks, wait
    /// percentiles, the ticks), beside what the run was asked to do and
    /// what the backend and sluice counted.
    fn of(
        options: &Options,
        recorder: &Recorder,
        phases: Vec<Phase>,
        route: &DemoRoute,
        backend_peak: u64,
        sluice_outcomes: BTreeMap<String, u64>,
        chart: PathBuf,
    ) -> Report {
        let mut waits = std::mem::take(&mut *recorder.waits.lock());
        waits.sort_unstable();
        let ticks = Ticks {
            offered: recorder.offered.values(),
            released: recorder.released.values(),
            accepted: recorder.accepted.values(),
            shed: recorder.shed.values(),
            depth: recorder.depth.values(),
        };
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Report {
            duration: options.duration,
            phases,
            burst_multiple: options.burst,
            capacity: backend::capacity(),
            rate: route.limit.rate,
            burst: route.limit.burst.get(),
            queue_timeout: route.queue_timeout,
            offered: load(&recorder.offered_total),
            ok: load(&recorder.ok),
            shed: load(&recorder.shed_total),
            limited: load(&recorder.limited),
            failed: load(&recorder.failed),
            released: load(&recorder.released_total),
            offered_peak: peak(&ticks.offered),
            released_peak: peak(&ticks.released),
            queue_peak: ticks.depth.iter().copied().max().unwrap_or(0),
            backend_peak,
            wait_p50: percentile(&waits, 0.50),
            wait_p99: percentile(&waits, 0.99),
            sluice_outcomes,
            deferred: None,
            ticks,
            chart,
        }
    }
}

/// Sends the load while sampling the queue and showing the live view;
/// returns once every request has ended — and, given a `drain_limit` (an
/// async route), once its backlog is empty too or the limit has passed
/// since: how long after the load the backlog was empty.
async fn drive(
    running: &crate::Running,
    admin: &AdminClient,
    phases: &[Phase],
    recorder: &Arc<Recorder>,
    drain_limit: Option<Duration>,
) -> anyhow::Result<Option<Duration>> {
    let mut generator = tokio::spawn({
        let (target, phases, recorder) = (running.proxy_addr(), phases.to_vec(), recorder.clone());
        let method = match drain_limit {
            Some(_) => Method::POST,
            None => Method::GET,
        };
        async move { load::generate(target, &phases, method, recorder).await }
    });
    let duration = phases.last().map_or(Duration::ZERO, |p| p.end);
    let mut live = Live::new(duration);
    let mut ticker = tokio::time::interval_at(recorder.start, TICK);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut depth = 0;
    // The tick of the last sample: ticks without one (a late or failed
    // sample) keep the depth last seen rather than showing an empty queue.
    let mut sampled_tick = 0;
    // When the load generator was done (every request answered).
    let mut load_ended: Option<Instant> = None;
    let drained = loop {
        tokio::select! {
            joined = &mut generator, if load_ended.is_none() => {
                joined.context("the load generator failed")?;
                load_ended = Some(Instant::now());
            }
            _ = ticker.tick() => {}
        }
        if let Some(ended) = load_ended {
            match drain_limit {
                Some(limit) if ended.elapsed() <= limit => {}
                _ => break None,
            }
        }
        let now = Instant::now();
        let tick = recorder.index(now);
        let sample = admin.queue_depth().await;
        if let Some(sampled) = sample {
            for skipped in sampled_tick + 1..tick {
                recorder.depth.raise(skipped, depth);
            }
            depth = sampled;
            sampled_tick = tick;
            recorder.depth.raise(tick, depth);
        }
        let elapsed = now.saturating_duration_since(recorder.start);
        live.update(elapsed, phase_name(phases, elapsed), recorder, depth);
        if let (Some(ended), Some(0)) = (load_ended, sample) {
            break Some(now.saturating_duration_since(ended));
        }
    };
    live.finish(recorder.start.elapsed(), recorder);
    Ok(drained)
}

fn phase_name(phases: &[Phase], at: Duration) -> &str {
    phases
        .iter()
        .find(|p| p.start <= at && at < p.end)
        .map_or("draining", |p| p.name.as_str())
}

/// The most counted in any PEAK_WINDOW of consecutive ticks: requests/s.
fn peak(counts: &[u64]) -> u64 {
    let window = (PEAK_WINDOW.as_millis() / TICK.as_millis()) as usize;
    if counts.len() < window {
        return counts.iter().sum();
    }
    counts
        .windows(window)
        .map(|w| w.iter().sum::<u64>())
        .max()
        .unwrap_or(0)
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Reads the route's state and sluice's counters from the admin listener.
struct AdminClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
}

impl AdminClient {
    fn new(addr: SocketAddr) -> AdminClient {
        AdminClient {
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            addr,
        }
    }

    async fn get(&self, path: &str) -> Option<String> {
        let uri: Uri = format!("http://{}{path}", self.addr).parse().ok()?;
        let call = async {
            let response = self.client.get(uri).await.ok()?;
            if response.status() != StatusCode::OK {
                return None;
            }
            let body = response.into_body().collect().await.ok()?.to_bytes();
            String::from_utf8(body.to_vec()).ok()
        };
        tokio::time::timeout(ADMIN_TIMEOUT, call)
            .await
            .ok()
            .flatten()
    }

    /// The route's queue depth now (`GET /admin/routes/demo`); an async
    /// route's backlog (requests held: queued or in flight).
    async fn queue_depth(&self) -> Option<u64> {
        let body = self.get(&format!("/admin/routes/{ROUTE}")).await?;
        let json: serde_json::Value = serde_json::from_str(&body).ok()?;
        match json.get("async").filter(|a| a.is_object()) {
            Some(deferred) => deferred.get("held")?.as_u64(),
            None => json.get("queue_depth")?.as_u64(),
        }
    }

    /// `sluice_requests_total` of the route by outcome (`GET /metrics`).
    async fn outcomes(&self) -> BTreeMap<String, u64> {
        let Some(text) = self.get("/metrics").await else {
            return BTreeMap::new();
        };
        parse_outcomes(&text)
    }

    /// `sluice_async_requests_total` of the route by event (`GET /metrics`).
    async fn async_events(&self) -> BTreeMap<String, u64> {
        let Some(text) = self.get("/metrics").await else {
            return BTreeMap::new();
        };
        parse_counts(&text, "sluice_async_requests_total", "event")
    }
}

/// `sluice_requests_total{...route="demo"...,outcome="X"} N` lines as X -> N.
fn parse_outcomes(metrics: &str) -> BTreeMap<String, u64> {
    parse_counts(metrics, "sluice_requests_total", "outcome")
}

/// `FAMILY{...route="demo"...,LABEL="X"} N` lines as X -> N (zeros left out).
fn parse_counts(metrics: &str, family: &str, by: &str) -> BTreeMap<String, u64> {
    let prefix = format!("{family}{{");
    let label = |labels: &str, name: &str| -> Option<String> {
        let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
        let end = labels[start..].find('"')? + start;
        Some(labels[start..end].to_string())
    };
    metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(prefix.as_str())?;
            let (labels, value) = rest.split_once('}')?;
            if label(labels, "route")? != ROUTE {
                return None;
            }
            let value: f64 = value.trim().parse().ok()?;
            Some((label(labels, by)?, value as u64))
        })
        .filter(|&(_, count)| count > 0)
        .collect()
}

/// The live view: a progress bar on a terminal, else a plain line a second.
enum Live {
    Bar(ProgressBar),
    Lines { next: Duration },
}

impl Live {
    fn new(duration: Duration) -> Live {
        if !std::io::stdout().is_terminal() {
            return Live::Lines {
                next: Duration::ZERO,
            };
        }
        let ticks = (duration.as_millis() / TICK.as_millis()) as u64;
        let bar = ProgressBar::with_draw_target(Some(ticks), ProgressDrawTarget::stdout());
        if let Ok(style) = ProgressStyle::with_template("{prefix:>6} [{bar:30.cyan/blue}] {msg}") {
            bar.set_style(style.progress_chars("=> "));
        }
        Live::Bar(bar)
    }

    fn counters(recorder: &Recorder, depth: u64) -> String {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        format!(
            "offered {:>6}  released {:>6}  queued {:>5}  dropped {:>6}",
            load(&recorder.offered_total),
            load(&recorder.released_total),
            depth,
            load(&recorder.shed_total) + load(&recorder.limited),
        )
    }

    fn update(&mut self, elapsed: Duration, phase: &str, recorder: &Recorder, depth: u64) {
        let seconds = elapsed.as_secs_f64();
        match self {
            Live::Bar(bar) => {
                bar.set_position((elapsed.as_millis() / TICK.as_millis()) as u64);
                bar.set_prefix(format!("{seconds:.1}s"));
                bar.set_message(format!("{phase:<12} {}", Live::counters(recorder, depth)));
            }
            Live::Lines { next } => {
                if elapsed >= *next {
                    println!(
                        "t={seconds:>5.1}s  {phase:<12} {}",
                        Live::counters(recorder, depth)
                    );
                    *next += Duration::from_secs(1);
                }
            }
        }
    }

    fn finish(self, elapsed: Duration, recorder: &Recorder) {
        let seconds = elapsed.as_secs_f64();
        let counters = Live::counters(recorder, 0);
        match self {
            Live::Bar(bar) => {
                bar.set_prefix(format!("{seconds:.1}s"));
                bar.set_message(format!("{:<12} {counters}", "done"));
                bar.finish();
                println!();
            }
            Live::Lines { .. } => {
                println!("t={seconds:>5.1}s  {:<12} {counters}", "done");
            }
        }
    }
}

fn millis(d: Option<Duration>) -> String {
    d.map_or_else(|| "-".to_string(), |d| format!("{} ms", d.as_millis()))
}

impl fmt::Display for Report {
    /// The report `sluice demo` prints; tests/demo.rs reads its lines.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        writeln!(f, "phases:")?;
        for phase in &self.phases {
            writeln!(
                f,
                "  {:<12} {:>5.1}s - {:>5.1}s  {:>6.0} req/s offered",
                phase.name,
                phase.start.as_secs_f64(),
                phase.end.as_secs_f64(),
                phase.rate
            )?;
        }
        writeln!(f, "offered peak: {} req/s (busiest 1 s)", self.offered_peak)?;
        writeln!(
            f,
            "released peak: {} req/s (busiest 1 s; the route allows {}/s + burst {})",
            self.released_peak, self.rate, self.burst
        )?;
        match &self.deferred {
            Some(deferred) => deferred.write(f, self)?,
            None => writeln!(
                f,
                "queue peak: {} waiting (at the backend: at most {} at once)",
                self.queue_peak, self.backend_peak
            )?,
        }
        writeln!(
            f,
            "outcomes: {} offered = {} ok ({}) + {} shed (503) + {} limited (429) + {} failed",
            self.offered,
            self.ok,
            if self.deferred.is_some() { 202 } else { 200 },
            self.shed,
            self.limited,
            self.failed
        )?;
        let counted: Vec<String> = self
            .sluice_outcomes
            .iter()
            .map(|(outcome, count)| format!("{outcome} {count}"))
            .collect();
        writeln!(f, "sluice counted: {}", counted.join(", "))?;
        writeln!(f, "released to the backend: {}", self.released)?;
        if self.deferred.is_none() {
            writeln!(
                f,
                "wait of the 200s: p50 {}, p99 {} (client side: queue + service)",
                millis(self.wait_p50),
                millis(self.wait_p99)
            )?;
        }
        writeln!(f, "chart: {}", self.chart.display())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_the_busiest_second() {
        let mut counts = vec![20; 30];
        counts[12] = 400;
        assert_eq!(peak(&counts), 180 + 400);
        assert_eq!(peak(&[5, 5]), 10);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let waits: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&waits, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&waits, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn outcomes_are_read_from_the_metrics() {
        let text = "# TYPE sluice_requests_total counter\n\
            sluice_requests_total{outcome=\"forwarded\",route=\"demo\"} 12\n\
            sluice_requests_total{outcome=\"cancelled\",route=\"demo\"} 0\n\
            sluice_requests_total{outcome=\"forwarded\",route=\"other\"} 7\n\
            sluice_requests_total{outcome=\"rejected_queue_full\",route=\"demo\"} 3\n";
        let outcomes = parse_outcomes(text);
        assert_eq!(
            outcomes.into_iter().collect::<Vec<_>>(),
            [
                ("forwarded".to_string(), 12),
                ("rejected_queue_full".to_string(), 3)
            ]
        );
    }

    #[test]
    fn the_built_in_config_is_valid_and_listens_on_free_loopback_ports() {
        let config = Config::parse(CONFIG, Path::new(CONFIG_NAME)).unwrap();
        assert!(config.server.listen.ip().is_loopback());
        assert_eq!(config.server.listen.port(), 0);
        assert!(config.admin.listen.ip().is_loopback());
        assert_eq!(config.admin.listen.port(), 0);
        let route = config.routes.iter().find(|r| r.name == ROUTE).unwrap();
        assert_eq!(route.upstream, UPSTREAM);
        // The route releases what the backend can take.
        assert_eq!(route.limit.unwrap().rate, backend::capacity());
    }

    #[test]
    fn the_built_in_async_config_is_the_same_route_made_async() {
        let (config, route) = demo_config(true).unwrap();
        let (sync, _) = demo_config(false).unwrap();
        assert_eq!(config.server.listen, sync.server.listen);
        assert_eq!(config.admin.listen, sync.admin.listen);
        assert_eq!(route.limit.rate, backend::capacity());
        let deferred = route.deferred.expect("an async route");
        // The drain after the load is bounded by deliver_within.
        assert!(deferred.deliver_within <= Duration::from_secs(60));
        assert!(config.storage.dir.is_some());
        assert!(demo_config(false).unwrap().1.deferred.is_none());
    }

    #[test]
    fn options_are_bounded() {
        let ok = Options::default();
        assert!(ok.validate().is_ok());
        for bad in [
            Options {
                duration: Duration::from_secs(1),
                ..ok.clone()
            },
            Options {
                duration: Duration::from_secs(3600),
                ..ok.clone()
            },
            Options {
                burst: 0,
                ..ok.clone()
            },
            Options {
                burst: 1000,
                ..ok.clone()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
