//! `edge-agent validate --staging DIR`: the OTA model check, run by the agent itself in a
//! child process under memory and time limits ([`crate::ota::validate`]). It prints the
//! JSON report whatever the verdict; only a report it cannot print is a failure.

use std::path::PathBuf;

use crate::exit::Failure;

/// The flags of `edge-agent validate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The staging directory.
    #[arg(long)]
    pub staging: PathBuf,
}

/// Validates the staged transfer and prints its report on stdout.
pub fn run(args: Args) -> Result<(), Failure> {
    let report = crate::ota::validate::validate_staging(&args.staging);
    println!("{}", serde_json::to_string(&report).map_err(anyhow::Error::from)?);
    Ok(())
}
