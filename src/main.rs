//! The `sluice` command: `run` serves, `check` validates a config.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice::Config;
use sluice::config::LogFormat;
use sluice::reload::FileWatch;
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
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
    let runtime = tokio::runtime::Builder::new_multi_thread()
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
        serve_until_stopped(&running, path, watch, signals).await;
        tracing::info!("shutdown requested");
        running.shutdown();
        running.wait().await;
        tracing::info!("stopped");
        Ok(())
    })
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

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}
