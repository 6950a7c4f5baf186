//! `erase`: installed models, staged transfers, trials, the generated model key and queued
//! telemetry are wiped. Configured models keep serving (their files are the operator's).

use crate::config::Config;
use crate::link::LinkHandle;
use crate::models::Models;
use crate::store::{load_or_create_key, wipe_dir, wipe_file, Store};

/// Wipes what the agent keeps about deployed models. Deploys in progress must have been
/// ended first ([`crate::ota::deploy::Deploys::erase`]).
pub fn erase(config: &Config, models: &mut Models, link: &LinkHandle) -> Result<(), String> {
    tracing::warn!("erase: wiping installed models, staged transfers, the model key and queued telemetry");
    models.serve_configured_only()?;
    models.store().wipe().map_err(|e| e.to_string())?;
    wipe_dir(&config.state_dir.join("ota")).map_err(|e| e.to_string())?;
    wipe_dir(&config.state_dir.join("trials")).map_err(|e| e.to_string())?;
    if config.ota.key_file.is_none() {
        // The key the agent generated; a key file the operator provisioned is theirs.
        let key = config.model_key_file();
        wipe_file(&key).map_err(|e| e.to_string())?;
        if models.store().encrypted() {
            let fresh = load_or_create_key(&key).map_err(|e| e.to_string())?;
            models.set_store(Store::open(&config.state_dir.join("models"), Some(fresh)).map_err(|e| e.to_string())?);
        }
    }
    link.erase_telemetry_blocking().map_err(|e| format!("queued telemetry: {e}"))?;
    tracing::warn!("erase done");
    Ok(())
}
