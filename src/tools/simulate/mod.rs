//! `sluice simulate`: replays a request trace through the real shaper code in
//! virtual time — no sockets, no sleeping — and reports per route what
//! sluice would have done with it (docs/simulate.md).
//!
//! - `trace`: CSV, JSON lines and NGINX access logs into one sorted form;
//! - `engine`: the replay on a paused current-thread tokio runtime, through
//!   the same [`Router`](crate::gateway::router::Router), [`Shaper`](crate::shaper::Shaper),
//!   limiters and in-flight semaphores as the proxy, with a backend model
//!   (service time, concurrency) in place of the network; an async route
//!   accepts up to its capacity and delivers through its shaper;
//! - `report`: counts, queue waits, peak depth; text and JSON;
//! - `chart`: the SVG.
//!
//! A library caller: [`Trace::parse`] or [`Trace::load`], then [`simulate`].

mod chart;
mod engine;
mod report;
mod trace;

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Instant as WallInstant;

use anyhow::Context as _;

use crate::config::Config;

pub use engine::{BackendModel, Rng, ServiceTime};
pub use report::{
    AsyncReport, BackendSummary, Notes, Outcomes, QueueWait, Refusals, Report, RouteReport, Series,
    TraceSummary,
};
pub use trace::{Trace, TraceError, TraceFormat};

/// `sluice simulate`: replay a request trace through the shaper in virtual
/// time and report what sluice would have done with it.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The sluice config whose routes shape the trace.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// The request trace: CSV, JSON lines or an NGINX access log.
    #[arg(short, long, value_name = "FILE")]
    pub trace: PathBuf,
    /// The trace's format; `auto` decides from its first line.
    #[arg(long, value_enum, default_value_t = TraceFormat::Auto)]
    pub format: TraceFormat,
    /// The backend's service time per request: a duration (`20ms`), or
    /// `exp:MEAN` for exponentially distributed times (seeded by --seed).
    #[arg(long, value_name = "TIME", default_value = "10ms")]
    pub service_time: ServiceTime,
    /// Requests each upstream's backend serves at once (default: no limit);
    /// more wait at the backend, holding their in-flight slot.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<NonZeroUsize>,
    /// Seed for sampled service times.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub seed: u64,
    /// Skip malformed trace lines (and count them) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// Also write the report as JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Also draw an SVG chart (rates and queue depth over time) to this file.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Healthy targets that `rate_per_target` routes multiply their figure
    /// by (default: each upstream's `targets` as written, a name counting
    /// as one).
    #[arg(long, value_name = "N")]
    pub targets: Option<NonZeroUsize>,
}

/// Replays `trace` through `config`'s routes with `backend` standing in for
/// every upstream's targets, in virtual time.
///
/// Builds its own current-thread runtime with a paused clock, so it must not
/// be called from inside a tokio runtime (use `spawn_blocking` there).
pub fn simulate(config: &Config, trace: &Trace, backend: &BackendModel) -> anyhow::Result<Report> {
    let fixed = fixed_per_target(config, None);
    let config = &fixed;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .context("cannot start the simulation runtime")?;
    let started = WallInstant::now();
    let stats = runtime.block_on(engine::replay(config, trace, backend))?;
    let wall = started.elapsed();
    drop(runtime);
    Ok(report::build(config, trace, backend, stats, wall))
}

/// `sluice simulate`: reads the config and the trace, replays, prints the
/// text report and writes `--json` and `--svg` if asked.
pub fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let config = fixed_per_target(&Config::load(&args.config)?, args.targets);
    let trace = Trace::load(&args.trace, args.format, args.skip_bad)?;
    if let Some(bad) = trace.first_bad() {
        eprintln!(
            "warning: skipped {} malformed line(s) of {}; the first: {bad}",
            trace.skipped(),
            trace.source()
        );
    }
    let backend = BackendModel {
        service_time: args.service_time,
        concurrency: args.concurrency,
        seed: args.seed,
    };
    let report = simulate(&config, &trace, &backend)?;
    print!("{}", report.to_text());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report).context("cannot encode the report")?;
        std::fs::write(path, json + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        let svg = chart::render(&report).map_err(|err| anyhow::anyhow!("cannot draw: {err}"))?;
        std::fs::write(path, svg).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

/// `config` with each `rate_per_target` route's rate fixed at its figure
/// times `targets` healthy targets, or, without a count, the targets its
/// upstream lists (a name discovered by DNS counts as one): the simulation
/// has no health checks or DNS to follow.
pub fn fixed_per_target(config: &Config, targets: Option<NonZeroUsize>) -> Config {
    let mut fixed = config.clone();
    for route in &mut fixed.routes {
        let listed = config
            .upstreams
            .get(&route.upstream)
            .map_or(1, |u| u.targets.len());
        let count = targets.map_or(listed, NonZeroUsize::get);
        if let Some(limit) = route.limit.as_mut().filter(|l| l.per_target) {
            limit.rate = crate::gateway::route::scaled_rate(limit.rate, count);
            limit.per_target = false;
        }
    }
    fixed
}

/// The SVG chart of a report (what `--svg` writes).
pub fn render_svg(report: &Report) -> anyhow::Result<String> {
    chart::render(report).map_err(|err| anyhow::anyhow!("cannot draw: {err}"))
}
