//! `edge-agent check-config`: the configuration checked in full, and every model it names
//! loaded with its options, without starting the agent. Anything wrong exits 2 with one
//! line naming the file, the key or model, and the problem.

use std::path::PathBuf;

use crate::config::Config;
use crate::engine::Model;
use crate::exit::Failure;

/// The flags of `edge-agent check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The TOML configuration.
    #[arg(long)]
    pub config: PathBuf,
}

/// Checks the configuration and its models; prints one `ok` line.
pub fn run(args: Args) -> Result<(), Failure> {
    let path = &args.config;
    let config = Config::load(path).map_err(Failure::config)?;
    for (i, m) in config.models.iter().enumerate() {
        let what = format!("config {}: [[models]] #{} ({:?})", path.display(), i + 1, m.name);
        let options = crate::models::load::options_for(m).map_err(|e| Failure::config(format!("{what}: {e}")))?;
        Model::load(&m.path, &options).map_err(|e| Failure::config(format!("{what}: {e}")))?;
    }
    println!("config {}: ok (device {}, {} models)", path.display(), config.device_id, config.models.len());
    Ok(())
}
