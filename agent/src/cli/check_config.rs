//! `edge-agent check-config`: the configuration checked in full, the device certificate
//! read (X.509 v3, CN = `device_id`, not expired: [`edge_mqtt::cert`]), and every model it
//! names loaded with its options, without starting the agent. Anything wrong exits 2 with
//! one line naming the file, the key or model, and the problem; a certificate that expires
//! within 30 days is a warning on stderr.

use std::path::PathBuf;

use crate::config::Config;
use crate::engine::Model;
use crate::exit::Failure;

/// The flags of `edge-agent check-config`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The TOML configuration.
    #[arg(long, env = crate::config::CONFIG_ENV, default_value = crate::config::DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,
}

/// Checks the configuration and its models; prints one `ok` line.
pub fn run(args: Args) -> Result<(), Failure> {
    let path = &args.config;
    let config = Config::load(path).map_err(Failure::config)?;
    if config.mqtt.url.starts_with("mqtts://") {
        let now = (crate::clock::now_ms() / 1000) as i64;
        let cert = edge_mqtt::cert::check_device(&config.mqtt.cert_file, &config.device_id, now)
            .map_err(|e| Failure::config(format!("config {}: {e}", path.display())))?;
        let left = cert.not_after - now;
        if left < edge_mqtt::cert::EXPIRY_WARNING_SECS {
            eprintln!(
                "warning: [mqtt] cert_file {} expires in {} days; issue a new certificate for {}",
                config.mqtt.cert_file.display(),
                left / 86_400,
                config.device_id
            );
        }
    }
    for (i, m) in config.models.iter().enumerate() {
        let what = format!("config {}: [[models]] #{} ({:?})", path.display(), i + 1, m.name);
        let options = crate::models::load::options_for(m).map_err(|e| Failure::config(format!("{what}: {e}")))?;
        Model::load(&m.path, &options).map_err(|e| Failure::config(format!("{what}: {e}")))?;
    }
    println!("config {}: ok (device {}, {} models)", path.display(), config.device_id, config.models.len());
    Ok(())
}
