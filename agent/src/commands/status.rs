//! `get-status`: the device's models and settings.

use edge_proto::command::{hex, DeviceStatus, ModelStatus};

use super::settings::RuntimeSettings;
use crate::models::Models;
use crate::serving::Registry;

/// What the device reports about itself. `watching(name)`: a deploy of that model is in its
/// health window.
pub fn status(
    models: &Models,
    registry: &Registry,
    config_text: &[u8],
    settings: &RuntimeSettings,
    watching: impl Fn(&str) -> bool,
) -> DeviceStatus {
    let models = models
        .names()
        .into_iter()
        .map(|name| {
            let active = registry.get(&name).ok().map(|s| s.version.clone());
            let installed = models.store().current(&name).map(|c| c.installed).unwrap_or_default();
            let health = if watching(&name) || models.on_trial(&name) {
                "watching".to_string()
            } else if active.is_none() {
                "not loaded".to_string()
            } else {
                "ok".to_string()
            };
            ModelStatus { name, active_version: active, installed_versions: installed, health }
        })
        .collect();
    let mut digest_input = config_text.to_vec();
    digest_input.extend(serde_json::to_vec(settings).unwrap_or_default());
    DeviceStatus {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        models,
        config_digest: hex(&edge_proto::ota::sha256(&digest_input)),
        telemetry_interval_secs: settings.telemetry_interval_secs,
        log_level: settings.log_level.clone(),
    }
}
