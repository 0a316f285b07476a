//! The `sluice` command: `run` serves, `check` validates a config, `demo`
//! shows sluice shaping a spike on 127.0.0.1, `simulate` replays a trace in
//! virtual time (these two with the default cargo feature `tools`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::Config;
use sluice::config::LogFormat;
use sluice::runtime::watch::FileWatch;
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "sluice", version, about = "A traffic-shaping reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config until SIGTERM or SIGINT.
    Run {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config and print it with every default filled in.
    Check {
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Show sluice shaping a traffic spike, self-contained on 127.0.0.1: a
    /// built-in backend of 200 requests/s, sluice in front of it, and a load
    /// generator (quiet, a burst, steady overload, quiet). Prints a report
    /// and writes an SVG chart (docs/demo.md).
    #[cfg(feature = "tools")]
    Demo {
        /// Length of the load; the phases scale with it (3s to 5m).
        #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// The spike, as a multiple of the backend's capacity (1 to 50).
        #[arg(long, value_name = "TIMES", default_value_t = 20)]
        burst: u32,
        /// Where to write the SVG chart.
        #[arg(long, value_name = "FILE", default_value = "sluice-demo.svg")]
        out: PathBuf,
        /// Make the route asynchronous (config/demo-async.toml): the burst
        /// is answered 202 at once and delivered over time; the journal
        /// lives in a temporary directory, removed at the end.
        #[arg(long = "async")]
        asynchronous: bool,
    },
    /// Replay a request trace through the shaper in virtual time: what would
    /// this config have done to that traffic? No sockets, no sleeping.
    #[cfg(feature = "tools")]
    Simulate(sluice::simulate::SimulateArgs),
}

#[cfg(feature = "tools")]
fn parse_duration(text: &str) -> Result<std::time::Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        #[cfg(feature = "tools")]
        Command::Demo {
            duration,
            burst,
            out,
            asynchronous,
        } => demo(sluice::demo::Options {
            duration,
            burst,
            out,
            asynchronous,
        }),
        #[cfg(feature = "tools")]
        Command::Simulate(args) => sluice::simulate::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    print!("{}", config.to_toml());
    eprintln!("{}: ok", path.display());
    Ok(())
}

fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    init_logging(&config);
    abort_on_panic();
    // This thread accepts connections, runs the shapers' release tasks, the
    // admin listener and reloads; the worker threads `start` makes serve the
    // connections.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        // Watch (and listen for signals) before serving, so a change made
        // the moment sluice reports it is serving is not missed.
        let watch = match FileWatch::new(path) {
            Ok(watch) => Some(watch),
            Err(err) => {
                tracing::warn!(%err, file = %path.display(), "cannot watch the config file; reload with SIGHUP");
                None
            }
        };
        let signals = Signals::new()?;
        let running = sluice::start(&config).await?;
        #[cfg(debug_assertions)]
        debug_panic_trigger();
        serve_until_stopped(&running, path, watch, signals).await;
        tracing::info!("shutdown requested");
        running.shutdown();
        running.wait().await;
        tracing::info!("stopped");
        Ok(())
    })
}

#[cfg(feature = "tools")]
fn demo(options: sluice::demo::Options) -> anyhow::Result<()> {
    // sluice's own logs: warnings and errors only (RUST_LOG overrides), on
    // stderr, apart from the demo's output.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(sluice::demo::run(&options))?;
    Ok(())
}

/// The signals sluice acts on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?,
            int: signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?,
            hup: signal(SignalKind::hangup()).context("cannot listen for SIGHUP")?,
        })
    }
}

/// Reloads on SIGHUP and when the file changes; returns on SIGTERM or SIGINT.
async fn serve_until_stopped(
    running: &sluice::Running,
    path: &Path,
    mut watch: Option<FileWatch>,
    mut signals: Signals,
) {
    loop {
        let file_changed = async {
            match watch.as_mut() {
                Some(watch) => watch.changed().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = signals.term.recv() => return,
            _ = signals.int.recv() => return,
            _ = signals.hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                let _logged = running.reload_file(path);
            }
            () = file_changed => {
                tracing::info!(file = %path.display(), "config file changed: reloading");
                let _logged = running.reload_file(path);
            }
        }
    }
}

/// A panic anywhere — the main thread, a worker, any task — ends the process
/// after it is logged: a task that died would otherwise leave a half-alive
/// process (a listener gone, `/readyz` still 200) that no supervisor
/// restarts. The hook runs before any unwinding, so tokio never catches the
/// panic; `abort` ends the process with SIGABRT (exit 134 in a shell), and
/// the supervisor (systemd `Restart=on-failure`, Kubernetes) starts a fresh
/// one, as Envoy does.
fn abort_on_panic() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let thread = thread.name().unwrap_or("unnamed");
        let backtrace = std::backtrace::Backtrace::force_capture();
        tracing::error!(%thread, panic = %info, %backtrace, "panic: aborting the process so a supervisor restarts it");
        // Also straight to stderr, in case the log filter or writer drops it.
        eprintln!("sluice: panic in thread {thread}: {info}; aborting");
        std::process::abort();
    }));
}

/// Debug builds only (tests run them; release builds do not contain this):
/// `SLUICE_DEBUG_PANIC_IN_TASK=1` panics in a spawned task once sluice
/// serves, so tests/cli.rs can check that a panic in a task ends the process.
#[cfg(debug_assertions)]
#[allow(clippy::panic)]
fn debug_panic_trigger() {
    if std::env::var_os("SLUICE_DEBUG_PANIC_IN_TASK").is_some() {
        tokio::spawn(async {
            panic!("SLUICE_DEBUG_PANIC_IN_TASK is set");
        });
    }
}

/// sluice's log on stderr, filtered by `log.level` (RUST_LOG overrides);
/// the warnings a client can cause in rustls and h2 are counted and written
/// at most once a minute per library (`sluice::tls::noise`).
fn init_logging(config: &Config) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{Layer, fmt};

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let noise = sluice::tls::noise::ClientWarnings::new;
    let layer = match config.log.format {
        LogFormat::Json => fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .with_filter(noise())
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(noise())
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(layer)
        .init();
}
