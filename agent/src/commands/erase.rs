//! `erase`: the model key the agent generated is destroyed first, then installed models,
//! staged transfers, trials, queued telemetry and queued acks (which carry `infer`
//! outputs) are wiped. Configured models keep serving (their files are the operator's).
//!
//! The key goes first because it is what makes everything sealed with it unreadable at
//! once (with `[ota] encrypt_models`), also the copies that flash wear levelling keeps out
//! of reach of an overwrite; and because a later step that fails must not leave it behind.
//! Every step is tried even when an earlier one fails, and the failures are reported
//! together: an erase leaves as little as it can, and says what it could not remove.

use crate::config::Config;
use crate::link::LinkHandle;
use crate::models::Models;
use crate::store::{load_or_create_key, wipe_dir, wipe_file, Store};

/// Wipes what the agent keeps about deployed models. Deploys in progress must have been
/// ended first ([`crate::ota::deploy::Deploys::erase`]).
pub fn erase(config: &Config, models: &mut Models, link: &LinkHandle) -> Result<(), String> {
    tracing::warn!("erase: destroying the model key, then wiping installed models, staged transfers and the outboxes");
    let mut failed: Vec<String> = vec![];
    let mut step = |what: &str, r: Result<(), String>| {
        if let Err(e) = r {
            tracing::error!("erase: {what}: {e}");
            failed.push(format!("{what}: {e}"));
        }
    };
    // The key the agent generated; a key file the operator provisioned is theirs.
    let own_key = config.ota.key_file.is_none();
    if own_key {
        step("model key", wipe_file(&config.model_key_file()).map_err(|e| e.to_string()));
    }
    step("serving", models.serve_configured_only());
    step("installed models", models.store().wipe().map_err(|e| e.to_string()));
    step("staged transfers", wipe_dir(&config.state_dir.join("ota")).map_err(|e| e.to_string()));
    step("trials", wipe_dir(&config.state_dir.join("trials")).map_err(|e| e.to_string()));
    step("outboxes", link.erase_outboxes_blocking());
    if own_key && models.store().encrypted() {
        // A fresh key for what is deployed from now on.
        let fresh = load_or_create_key(&config.model_key_file())
            .and_then(|k| Store::open(&config.state_dir.join("models"), Some(k)))
            .map(|store| models.set_store(store))
            .map_err(|e| e.to_string());
        step("new model key", fresh);
    }
    if !failed.is_empty() {
        return Err(failed.join("; "));
    }
    tracing::warn!("erase done");
    Ok(())
}
