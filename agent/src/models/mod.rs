//! Which version of each model serves, and every change to it: the one place that decides.
//!
//! A model comes from a `[[models]]` entry of the configuration file, or from the store
//! (deployed over the air). The store's active version wins over a configuration entry of
//! the same name, until it is removed or rolled back past. [`Models`] loads, activates,
//! switches, rolls back and removes, keeping the registry (what serves, in memory) and the
//! store's `current` (what serves after a restart, on disk) in agreement, and runs trials
//! ([`trial`]): a newly deployed version is on trial until its health window ends with the
//! process alive.
//!
//! - [`load`]: configuration entries and manifests become engine load options.
//! - [`trial`]: the trial marker and the decision taken at start.
//!
//! Callers: the daemon at start ([`Models::boot`]) and on SIGHUP ([`Models::reload`]), and
//! the command component for deploys, `activate`, `rollback`, `remove-model` and `erase`.
//! All of it blocks (files, model loading): never call it on the async runtime.

pub mod load;
pub mod trial;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use edge_proto::profile::Profile;

use prometheus_client::metrics::counter::Counter;

use crate::config::ModelConfig;
use crate::engine::Model;
use crate::ota::health::Record;
use crate::serving::Registry;
use crate::store::{Current, Store};
use trial::{Boot, Markers, Previous, Trial};

/// Where a model's serving version comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A version in the store.
    Installed(String),
    /// The configuration file's entry.
    Configured(ModelConfig),
}

/// A trial the start-up found: what the command component must finish.
#[derive(Debug, Clone, PartialEq)]
pub enum Resumed {
    /// The version on trial serves again; its health window starts over against the
    /// persisted baseline.
    Trial(Trial),
    /// The previous version was restored; the deploy fails with this reason.
    Restored {
        /// The deploy's command id.
        command_id: [u8; 16],
        /// Why, for the ack.
        reason: String,
    },
}

/// The models of this agent.
pub struct Models {
    config: Vec<ModelConfig>,
    store: Store,
    registry: Arc<Registry>,
    markers: Markers,
    keep_versions: usize,
    failures: Counter,
    /// Configuration entries serving now, by name: (path, version) as loaded.
    configured: HashMap<String, (PathBuf, String)>,
    /// `[drift] half_life_secs`.
    drift_half_life: Duration,
}

impl Models {
    /// The models of `config`, installed in `store`, served by `registry`; load failures
    /// count in `failures`. Nothing loads until [`Models::boot`].
    pub fn new(config: &crate::config::Config, store: Store, registry: Arc<Registry>, failures: Counter) -> Models {
        Models {
            config: config.models.clone(),
            store,
            registry,
            markers: Markers::new(&config.state_dir.join("trials")),
            keep_versions: config.ota.keep_versions,
            failures,
            configured: HashMap::new(),
            drift_half_life: config.drift.half_life(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Replaces the store (after `erase` made a new key).
    pub fn set_store(&mut self, store: Store) {
        self.store = store;
    }

    /// The configuration entries.
    pub fn configured_entries(&self) -> &[ModelConfig] {
        &self.config
    }

    fn entry(&self, name: &str) -> Option<&ModelConfig> {
        self.config.iter().find(|m| m.name == name)
    }

    /// Who serves `name`, as recorded: the store's active version, else the configuration
    /// entry; `None` when neither exists.
    pub fn source(&self, name: &str) -> Option<Source> {
        match self.store.current(name).ok().and_then(|c| c.active) {
            Some(v) => Some(Source::Installed(v)),
            None => self.entry(name).cloned().map(Source::Configured),
        }
    }

    /// Every model name this agent knows: configured, installed or serving; sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.store.names().unwrap_or_default();
        names.extend(self.registry.list().iter().map(|s| s.name.clone()));
        names.extend(self.config.iter().map(|m| m.name.clone()));
        names.sort();
        names.dedup();
        names
    }

    /// Whether a version of `name` is on trial.
    pub fn on_trial(&self, name: &str) -> bool {
        self.markers.get(name).is_some()
    }

    /// Serves `model` as `version` of `name`, with its reference `profile` for drift (one
    /// that does not fit the model is refused).
    fn serve(&self, name: &str, version: &str, model: Model, profile: Option<Profile>) -> Result<(), String> {
        if let Some(p) = &profile {
            crate::drift::check_fits(p, model.inputs(), model.outputs())
                .map_err(|e| format!("{name} {version}: {e}"))?;
        }
        self.registry.set_profile(name, version, profile.map(Arc::new), self.drift_half_life);
        let settings = load::pool_settings(&self.config, name);
        self.registry.activate(name, version, Arc::new(model), settings).map_err(|e| e.to_string())
    }

    /// `version` of `name` from the store, with its profile. A profile file that cannot be
    /// read costs the version its drift, not its serving.
    fn load_installed(&self, name: &str, version: &str) -> Result<(Model, Option<Profile>), String> {
        let profile = self.store.profile(name, version).unwrap_or_else(|e| {
            self.failures.inc();
            tracing::error!(model = name, version, "{e}; serving without drift");
            None
        });
        let model = load::installed(&self.store, name, version, &load::Settings::of(&self.config, name))?;
        Ok((model, profile))
    }

    /// Replaces the reference profile of installed `version` of `name` (a deploy of a version
    /// already installed carries its own, or none), in the store and, if it serves, for drift.
    pub fn replace_profile(&mut self, name: &str, version: &str, profile: Option<&Profile>) -> Result<(), String> {
        self.store.set_profile(name, version, profile).map_err(|e| e.to_string())?;
        if let Ok(served) = self.registry.get(name) {
            if served.version == version {
                if let Some(p) = profile {
                    crate::drift::check_fits(p, served.inputs(), served.outputs())
                        .map_err(|e| format!("{name} {version}: {e}"))?;
                }
                self.registry.set_profile(name, version, profile.cloned().map(Arc::new), self.drift_half_life);
            }
        }
        Ok(())
    }

    /// Loads and serves the configuration entry of `name` (memory only).
    fn serve_configured(&mut self, m: &ModelConfig) -> Result<(), String> {
        let model =
            load::configured(m).map_err(|e| format!("{} from the configuration file does not load: {e}", m.name))?;
        self.serve(&m.name, &m.version, model, None)?;
        self.configured.insert(m.name.clone(), (m.path.clone(), m.version.clone()));
        Ok(())
    }

    /// Loads `version` of `name` from the store and makes it the one that serves, in memory
    /// and on disk. Returns the store's `current` from before.
    pub fn switch_to(&mut self, name: &str, version: &str) -> Result<Current, String> {
        let before = self.store.current(name).map_err(|e| e.to_string())?;
        let (model, profile) = self.load_installed(name, version)?;
        let old = self.registry.get(name).ok();
        self.serve(name, version, model, profile)?;
        if let Err(e) = self.store.set_active(name, version) {
            // Memory and disk must agree on what serves: put the old version back.
            if let Some(old) = old {
                let settings = load::pool_settings(&self.config, name);
                let _ = self.registry.activate(name, &old.version, old.model.clone(), settings);
            }
            return Err(format!("cannot record the activation: {e}"));
        }
        self.configured.remove(name);
        Ok(before)
    }

    /// Serves the configuration file's entry for `name` again; the store's active version
    /// becomes its previous one.
    pub fn switch_to_configured(&mut self, name: &str) -> Result<(), String> {
        let m = self.entry(name).cloned().ok_or_else(|| format!("{name} is not in the configuration file"))?;
        self.serve_configured(&m)?;
        self.clear_store_active(name)
    }

    fn clear_store_active(&self, name: &str) -> Result<(), String> {
        let mut current = self.store.current(name).map_err(|e| e.to_string())?;
        if let Some(active) = current.active.take() {
            current.previous = Some(active);
            self.store.restore(name, &current).map_err(|e| e.to_string())?;
        }
        Ok(())
    }

    /// Puts `previous` back in memory and on disk.
    fn restore(&mut self, name: &str, previous: &Previous) -> Result<(), String> {
        match previous {
            Previous::Installed(v) => self.switch_to(name, v).map(|_| ()),
            Previous::Configured => self.switch_to_configured(name),
            Previous::Nothing => {
                self.registry.deactivate(name);
                self.clear_store_active(name)
            }
        }
    }

    /// What serves `name` now, as a trial would restore it.
    fn previous_of(&self, name: &str) -> Previous {
        match self.source(name) {
            Some(Source::Installed(v)) => Previous::Installed(v),
            Some(Source::Configured(_)) if self.registry.get(name).is_ok() => Previous::Configured,
            _ => Previous::Nothing,
        }
    }

    // ---- start and reload ------------------------------------------------------------

    /// Start-up: settles interrupted trials first (restoring the previous version of one
    /// that killed the agent too often, *before* anything serves), then loads every model
    /// from its source. A model that fails to load is logged and counted; its previous
    /// version, or its configuration entry, serves instead.
    pub fn boot(&mut self) -> Vec<Resumed> {
        let mut resumed = vec![];
        for marker in self.markers.all() {
            let trial = match marker {
                Ok(t) => t,
                Err(e) => {
                    tracing::error!("trial marker unreadable: {e}");
                    continue;
                }
            };
            let name = trial.name.clone();
            let Some(command_id) = trial.command_id() else {
                tracing::error!(model = %name, "trial marker without a command id; removed");
                let _ = self.markers.remove(&name);
                continue;
            };
            let previous = trial.previous.clone();
            match trial.on_boot() {
                Boot::Resume(t) => {
                    // Counted before the version loads: if loading it kills the agent, the
                    // next start sees one more death.
                    if let Err(e) = self.markers.save(&t) {
                        tracing::error!(model = %name, "cannot record the trial ({e}); restoring {}", t.previous);
                        let reason = format!("cannot record the trial of {name} {}: {e}", t.version);
                        self.end_trial_as_failed(&t, &reason, &mut resumed, command_id);
                        continue;
                    }
                    // A cut between the marker and `current` leaves `current` behind.
                    if self.store.current(&name).ok().and_then(|c| c.active).as_deref() != Some(t.version.as_str()) {
                        if let Err(e) = self.store.set_active(&name, &t.version) {
                            let reason = format!("cannot resume the trial of {name} {}: {e}", t.version);
                            self.end_trial_as_failed(&t, &reason, &mut resumed, command_id);
                            continue;
                        }
                    }
                    tracing::warn!(model = %name, version = %t.version, deaths = t.deaths, "resuming the trial a restart interrupted");
                    resumed.push(Resumed::Trial(t));
                }
                Boot::Restore(reason) => {
                    tracing::error!(model = %name, "{reason}");
                    if let Err(e) = self.restore_on_disk(&name, &previous) {
                        tracing::error!(model = %name, "cannot restore {previous}: {e}");
                    }
                    let _ = self.markers.remove(&name);
                    resumed.push(Resumed::Restored { command_id, reason });
                }
            }
        }
        self.load_all();
        // A trial whose version did not load at all has already failed: what serves instead
        // is what the store fell back to.
        resumed
            .into_iter()
            .map(|r| match r {
                Resumed::Trial(t) if self.registry.get(&t.name).map(|s| s.version != t.version).unwrap_or(true) => {
                    let _ = self.markers.remove(&t.name);
                    let reason = format!("{} {} on trial did not load after a restart", t.name, t.version);
                    tracing::error!(model = %t.name, "{reason}");
                    let command_id = t.command_id().unwrap_or_default();
                    Resumed::Restored { command_id, reason }
                }
                other => other,
            })
            .collect()
    }

    fn end_trial_as_failed(&mut self, t: &Trial, reason: &str, resumed: &mut Vec<Resumed>, command_id: [u8; 16]) {
        if let Err(e) = self.restore_on_disk(&t.name, &t.previous) {
            tracing::error!(model = %t.name, "cannot restore {}: {e}", t.previous);
        }
        let _ = self.markers.remove(&t.name);
        resumed.push(Resumed::Restored { command_id, reason: reason.to_string() });
    }

    /// Restores `previous` in the store only (nothing is loaded yet at start).
    fn restore_on_disk(&self, name: &str, previous: &Previous) -> Result<(), String> {
        match previous {
            Previous::Installed(v) => self.store.set_active(name, v).map(|_| ()).map_err(|e| e.to_string()),
            Previous::Configured | Previous::Nothing => self.clear_store_active(name),
        }
    }

    /// Loads every model from its source.
    fn load_all(&mut self) {
        let deployed: Vec<String> = self
            .store
            .names()
            .unwrap_or_default()
            .into_iter()
            .filter(|n| self.store.current(n).map(|c| c.active.is_some()).unwrap_or(false))
            .collect();
        let mut expected: Vec<String> = self.config.iter().map(|m| m.name.clone()).collect();
        expected.extend(deployed.iter().cloned());
        expected.sort();
        expected.dedup();
        self.registry.expect(expected);
        for name in &deployed {
            if self.load_deployed(name) {
                continue;
            }
            tracing::error!(model = %name, "no deployed version of this model loads; the configured one serves, if any");
        }
        for m in self.config.clone() {
            if self.registry.get(&m.name).is_ok() {
                continue;
            }
            self.load_configured(&m);
        }
    }

    /// Serves the store's active version of `name`, or its previous one if that fails.
    fn load_deployed(&mut self, name: &str) -> bool {
        let current = match self.store.current(name) {
            Ok(c) => c,
            Err(e) => {
                self.failures.inc();
                tracing::error!(model = %name, "{e}");
                return false;
            }
        };
        for version in current.active.iter().chain(current.previous.iter()) {
            match self.load_installed(name, version).and_then(|(m, p)| self.serve(name, version, m, p)) {
                Ok(()) => {
                    tracing::info!(model = %name, version = %version, "deployed model loaded");
                    if Some(version) != current.active.as_ref() {
                        let _ = self.store.set_active(name, version);
                    }
                    return true;
                }
                Err(e) => {
                    self.failures.inc();
                    tracing::error!(model = %name, version = %version, "deployed model not loaded: {e}");
                }
            }
        }
        false
    }

    fn load_configured(&mut self, m: &ModelConfig) {
        match self.serve_configured(m) {
            Ok(()) => tracing::info!(model = %m.name, version = %m.version, path = %m.path.display(), "model loaded"),
            Err(e) => {
                self.failures.inc();
                tracing::error!(model = %m.name, version = %m.version, path = %m.path.display(), "model not loaded: {e}");
            }
        }
    }

    /// SIGHUP: takes the configuration's new `[[models]]`. Changed entries load and serve
    /// (one that fails is logged and counted, and the running version stays); entries no
    /// longer configured stop. Models deployed over the air are left alone.
    pub fn reload(&mut self, models: Vec<ModelConfig>) {
        self.config = models;
        let deployed = |s: &Models, n: &str| matches!(s.source(n), Some(Source::Installed(_)));
        let mut expected: Vec<String> = self.config.iter().map(|m| m.name.clone()).collect();
        expected.extend(self.store.names().unwrap_or_default().into_iter().filter(|n| deployed(self, n)));
        expected.sort();
        expected.dedup();
        self.registry.expect(expected);
        for m in self.config.clone() {
            let same = self.configured.get(&m.name) == Some(&(m.path.clone(), m.version.clone()));
            if same || deployed(self, &m.name) {
                continue;
            }
            self.load_configured(&m);
        }
        let gone: Vec<String> =
            self.configured.keys().filter(|n| !self.config.iter().any(|m| &m.name == *n)).cloned().collect();
        for name in gone {
            self.configured.remove(&name);
            if !deployed(self, &name) {
                self.registry.deactivate(&name);
            }
        }
    }

    // ---- trials ----------------------------------------------------------------------

    /// Puts `version` of `name` (installed) on trial: the marker is saved, then the version
    /// serves. `base` is the replaced version's record. `Ok(None)`: it already serves, there
    /// is nothing to try.
    pub fn begin_trial(
        &mut self,
        command_id: [u8; 16],
        name: &str,
        version: &str,
        base: Record,
    ) -> Result<Option<Trial>, String> {
        let previous = self.previous_of(name);
        if previous == Previous::Installed(version.to_string()) {
            return Ok(None);
        }
        let prior_inputs = self.registry.get(name).ok().map(|s| s.inputs().to_vec());
        let trial = Trial {
            command_id: edge_proto::command::hex(&command_id),
            name: name.into(),
            version: version.into(),
            previous,
            base,
            deaths: 0,
            clean_stop: false,
        };
        self.markers.save(&trial).map_err(|e| format!("cannot record the trial of {name} {version}: {e}"))?;
        if let Err(e) = self.switch_to(name, version) {
            let _ = self.markers.remove(name);
            return Err(e);
        }
        self.registry.set_prior_inputs(name, prior_inputs);
        Ok(Some(trial))
    }

    /// Resumes serving a trial found at start (its version already serves): the registry
    /// learns the previous version's signature where it is still at hand.
    pub fn resume_trial(&self, trial: &Trial) {
        if let Previous::Installed(v) = &trial.previous {
            if let Ok((manifest, bytes)) = self.store.read(&trial.name, v) {
                if let Ok(model) =
                    load::from_manifest(&manifest, &bytes, &load::Settings::of(&self.config, &trial.name))
                {
                    self.registry.set_prior_inputs(&trial.name, Some(model.inputs().to_vec()));
                }
            }
        }
    }

    /// The trial of `name` ended well: the version is marked good and older versions are
    /// pruned (the previous one is kept: `rollback` returns to it).
    pub fn mark_good(&mut self, name: &str) -> Result<(), String> {
        self.markers.remove(name).map_err(|e| format!("cannot end the trial of {name}: {e}"))?;
        self.registry.set_prior_inputs(name, None);
        match self.store.prune(name, self.keep_versions) {
            Ok(removed) if !removed.is_empty() => tracing::info!(model = name, ?removed, "old versions removed"),
            Ok(_) => {}
            Err(e) => tracing::warn!(model = name, "cannot remove old versions: {e}"),
        }
        Ok(())
    }

    /// The trial of `name` failed: the previous version serves again. Returns what serves.
    pub fn fail_trial(&mut self, name: &str) -> Result<String, String> {
        let trial = self.markers.get(name).ok_or_else(|| format!("no trial of {name} is running"))?;
        self.registry.set_prior_inputs(name, None);
        let restored = self.restore(name, &trial.previous);
        self.markers.remove(name).map_err(|e| format!("cannot end the trial of {name}: {e}"))?;
        restored.map(|_| trial.previous.to_string())
    }

    /// An operator's command about `name` supersedes its trial: the marker goes, the
    /// version stays.
    pub fn abandon_trial(&mut self, name: &str) {
        self.registry.set_prior_inputs(name, None);
        if let Err(e) = self.markers.remove(name) {
            tracing::warn!(model = name, "cannot remove the trial marker: {e}");
        }
    }

    /// An orderly stop: every running trial resumes at the next start without counting a
    /// death.
    pub fn stop_in_order(&self) {
        for trial in self.markers.all().into_iter().flatten() {
            if let Err(e) = self.markers.save(&Trial { clean_stop: true, ..trial }) {
                tracing::warn!("cannot record the orderly stop in the trial marker: {e}");
            }
        }
    }

    // ---- operator commands -------------------------------------------------------------

    /// `activate`: serve an installed version.
    pub fn activate(&mut self, name: &str, version: &str) -> Result<(), String> {
        self.abandon_trial(name);
        self.switch_to(name, version).map(|_| ())
    }

    /// Runs installed `version` of `name` as a shadow of the active version on `sample_pct`
    /// % of its requests ([`crate::serving::shadow`]); the active version keeps serving.
    pub fn start_shadow(&mut self, name: &str, version: &str, sample_pct: u8) -> Result<(), String> {
        let active = self.registry.get(name).map_err(|_| format!("{name:?} has no active version to shadow"))?;
        if active.version == version {
            return Err(format!("{name} {version} is the active version already"));
        }
        let model = load::installed(&self.store, name, version, &load::Settings::of(&self.config, name))?;
        let stats = self.registry.stats();
        let shadow = crate::serving::shadow::Shadow::start(name, version, Arc::new(model), sample_pct, stats)
            .map_err(|e| e.to_string())?;
        self.registry.set_shadow(name, Some(shadow));
        Ok(())
    }

    /// `end-shadow`: stops `name`'s shadow (its version stays installed).
    pub fn end_shadow(&mut self, name: &str) -> Result<(), String> {
        match self.registry.shadow(name) {
            Some(_) => {
                self.registry.set_shadow(name, None);
                Ok(())
            }
            None => Err(format!("{name:?} has no shadow running")),
        }
    }

    /// `rollback`: the version before the active one, or the configuration entry.
    pub fn rollback(&mut self, name: &str) -> Result<(), String> {
        self.abandon_trial(name);
        let current = self.store.current(name).map_err(|e| e.to_string())?;
        match (current.previous, current.active) {
            (Some(prev), _) if self.store.has(name, &prev) => self.switch_to(name, &prev).map(|_| ()),
            (_, Some(_)) if self.entry(name).is_some() => self.switch_to_configured(name),
            _ => Err(format!("no previous version of {name:?} to roll back to")),
        }
    }

    /// `remove-model`: deletes every installed version; a configured model serves its
    /// file again, any other stops serving.
    pub fn remove(&mut self, name: &str) -> Result<(), String> {
        self.abandon_trial(name);
        let in_store = self.store.names().map_err(|e| e.to_string())?.iter().any(|n| n == name);
        if self.entry(name).is_some() {
            if !in_store {
                return Err(format!("{name:?} comes from the configuration file; remove its [[models]] entry there"));
            }
            self.store.remove(name).map_err(|e| e.to_string())?;
            return self.switch_to_configured(name);
        }
        if !in_store && self.registry.get(name).is_err() {
            return Err(format!("no model named {name:?}"));
        }
        self.registry.deactivate(name);
        self.store.remove(name).map_err(|e| e.to_string())
    }

    /// `erase`, first step: only configured models serve; trials end. The caller wipes the
    /// store next.
    pub fn serve_configured_only(&mut self) -> Result<(), String> {
        for name in self.store.names().map_err(|e| e.to_string())? {
            self.abandon_trial(&name);
            match self.entry(&name).cloned() {
                Some(m) => {
                    if let Err(e) = self.serve_configured(&m) {
                        tracing::warn!(model = %name, "{e}");
                    }
                }
                None => {
                    self.registry.deactivate(&name);
                }
            }
        }
        for trial in self.markers.all().into_iter().flatten() {
            self.abandon_trial(&trial.name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
