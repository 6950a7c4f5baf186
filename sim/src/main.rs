//! `edge-sim bench`: see the library's documentation and bench/fleet.sh.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use edge_sim::bench::{self, Options};

#[derive(Parser)]
#[command(name = "edge-sim", version, about = "Simulated edge devices and the fleet benchmark")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// N simulated devices against a real Mosquitto, PostgreSQL, Prometheus and edge-fleet:
    /// telemetry with no sample missing, then a deployment with late devices.
    Bench {
        /// Simulated devices.
        #[arg(long, default_value_t = 1000)]
        devices: usize,
        /// Seconds of telemetry (phase 1).
        #[arg(long, default_value_t = 300)]
        duration: u64,
        /// Telemetry interval, milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Devices offline when the deployment is made.
        #[arg(long, default_value_t = 200)]
        late: usize,
        /// Seconds after the deployment at which they come online.
        #[arg(long, default_value_t = 60)]
        late_after: u64,
        /// Size of the deployed model, bytes.
        #[arg(long, default_value_t = 5 * 1024 * 1024)]
        model_bytes: usize,
        /// Seconds every device has to run the new version.
        #[arg(long, default_value_t = 1800)]
        deploy_timeout: u64,
        /// SQLite instead of PostgreSQL.
        #[arg(long)]
        sqlite: bool,
        /// Phase 1 only.
        #[arg(long)]
        no_deploy: bool,
        /// The edge-fleet binary.
        #[arg(long)]
        fleet_bin: PathBuf,
        /// The edgectl binary.
        #[arg(long)]
        edgectl_bin: PathBuf,
        /// Keep configuration and logs in this directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let Cmd::Bench {
        devices,
        duration,
        interval_ms,
        late,
        late_after,
        model_bytes,
        deploy_timeout,
        sqlite,
        no_deploy,
        fleet_bin,
        edgectl_bin,
        keep,
    } = Cli::parse().command;
    let opts = Options {
        devices,
        duration: Duration::from_secs(duration),
        interval: Duration::from_millis(interval_ms),
        late,
        late_after: Duration::from_secs(late_after),
        model_bytes,
        deploy_timeout: Duration::from_secs(deploy_timeout),
        sqlite,
        fleet_bin,
        edgectl_bin,
        keep,
        no_deploy,
    };
    match bench::run(&opts) {
        Err(e) => {
            eprintln!("edge-sim bench: {e:#}");
            ExitCode::from(2)
        }
        Ok((telemetry, deploy)) => {
            let mut failed = vec![];
            if telemetry.found < telemetry.expected {
                failed
                    .push(format!("{} telemetry samples missing in Prometheus", telemetry.expected - telemetry.found));
            }
            if let Some(d) = deploy {
                if d.all_secs.is_none() || d.fleet_secs.is_none() {
                    failed.push(format!("{}/{devices} devices converged within {deploy_timeout} s", d.installed));
                }
            }
            if failed.is_empty() {
                println!("edge-sim bench: PASS");
                ExitCode::SUCCESS
            } else {
                println!("edge-sim bench: FAIL: {}", failed.join("; "));
                ExitCode::from(1)
            }
        }
    }
}
