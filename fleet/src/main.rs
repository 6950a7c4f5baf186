//! `edge-fleet run --config fleet.toml`: parses flags, loads the configuration, runs the
//! service until SIGTERM or Ctrl-C, and maps the result to an exit status (0 stopped on a
//! signal, 1 failed, 2 the configuration is unusable).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

/// The fleet service of edge-agent.
#[derive(Debug, Parser)]
#[command(name = "edge-fleet", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the service: inventory ingestion from the broker and the HTTP API.
    Run {
        /// The configuration file.
        #[arg(long, env = "EDGE_FLEET_CONFIG", default_value = "/etc/edge-fleet/fleet.toml")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("EDGE_FLEET_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        // Logs on stderr (journald takes both streams); colours only on a terminal.
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let Command::Run { config } = cli.command;
    let config = match edge_fleet::Config::load(&config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("edge-fleet: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edge-fleet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(config: edge_fleet::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let cancel = CancellationToken::new();
        let stop = cancel.clone();
        tokio::spawn(async move {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("cannot listen for SIGTERM: {e}");
                    return;
                }
            };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            tracing::info!("stopping");
            stop.cancel();
        });
        edge_fleet::run(config, cancel).await.map_err(anyhow::Error::from)
    })
}
