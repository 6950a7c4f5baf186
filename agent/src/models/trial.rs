//! Trial and mark-good: a newly activated version is on trial until its health window ends
//! with the process alive.
//!
//! The trial is written to `{state_dir}/trials/{name}.json` (fsync, rename, fsync the
//! directory) *before* the switch, and removed when the version is marked good or rolled
//! back. A marker found at start therefore means the agent stopped during the trial:
//!
//! - after an orderly stop (SIGTERM, a `restart` command) the marker says so
//!   (`clean_stop`), and the trial resumes;
//! - otherwise the agent died (SIGKILL, the OOM killer, an abort, power loss, a crash while
//!   loading the new version): one death is counted, *persisted before the version is
//!   loaded again*, and after [`MAX_DEATHS`] the previous version is restored before
//!   anything serves, and the deploy is acked `failed` with the reason.
//!
//! The previous version stays installed until the trial ends (pruning waits for the mark).
//! Here is the decision only ([`Trial::on_boot`], pure); [`super::Models`] carries it out.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::fsutil::{self, write_atomic};
use crate::ota::health::Record;

/// Deaths during one trial after which the previous version is restored.
pub const MAX_DEATHS: u32 = 2;

/// What served the model before the version on trial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Previous {
    /// A version in the store.
    Installed(String),
    /// The configuration file's entry.
    Configured,
    /// Nothing: the model did not exist on this device.
    Nothing,
}

impl std::fmt::Display for Previous {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Previous::Installed(v) => write!(f, "version {v}"),
            Previous::Configured => write!(f, "the configured model"),
            Previous::Nothing => write!(f, "no version (the model is not served)"),
        }
    }
}

/// A trial, as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// The deploy that started it, as hex: its ack ends the trial.
    pub command_id: String,
    /// Model name.
    pub name: String,
    /// The version on trial.
    pub version: String,
    /// What to restore if the trial fails.
    pub previous: Previous,
    /// The previous version's record: the health window's baseline, across restarts.
    pub base: Record,
    /// Times the agent died during this trial.
    pub deaths: u32,
    /// The agent stopped in order during the trial (not a death).
    pub clean_stop: bool,
}

/// What the agent does with a trial it finds at start.
#[derive(Debug, Clone, PartialEq)]
pub enum Boot {
    /// Serve the version on trial again and restart its health window; the trial (with its
    /// count of deaths) must be saved before the version loads.
    Resume(Trial),
    /// Restore the previous version before serving, and fail the deploy with this reason.
    Restore(String),
}

fn times(n: u32) -> String {
    match n {
        1 => "once".into(),
        2 => "twice".into(),
        n => format!("{n} times"),
    }
}

impl Trial {
    /// The decision at start.
    pub fn on_boot(mut self) -> Boot {
        if self.clean_stop {
            self.clean_stop = false;
            return Boot::Resume(self);
        }
        self.deaths += 1;
        if self.deaths >= MAX_DEATHS {
            return Boot::Restore(format!(
                "agent died {} during the trial of {} {}; restored {}",
                times(self.deaths),
                self.name,
                self.version,
                self.previous
            ));
        }
        Boot::Resume(self)
    }

    /// The command id as bytes (the marker keeps it as hex).
    pub fn command_id(&self) -> Option<[u8; 16]> {
        let hex = &self.command_id;
        let bytes =
            (0..16).map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()).collect::<Option<Vec<u8>>>()?;
        bytes.try_into().ok()
    }
}

/// The directory of trial markers.
#[derive(Debug, Clone)]
pub struct Markers {
    dir: PathBuf,
}

impl Markers {
    /// Markers under `dir` (created when the first is saved).
    pub fn new(dir: &Path) -> Markers {
        Markers { dir: dir.to_path_buf() }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.json"))
    }

    /// Saves `trial` durably (replacing the model's marker, if any).
    pub fn save(&self, trial: &Trial) -> io::Result<()> {
        fsutil::create_dir_all(&self.dir)?;
        write_atomic(&self.path(&trial.name), &serde_json::to_vec(trial).expect("trial serializes"))
    }

    /// Removes the marker of `name` durably: the trial is over.
    pub fn remove(&self, name: &str) -> io::Result<()> {
        match fsutil::remove_file(&self.path(name)) {
            Ok(()) => fsutil::sync_dir(&self.dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The marker of `name`, if any.
    pub fn get(&self, name: &str) -> Option<Trial> {
        let bytes = std::fs::read(self.path(name)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Every marker, sorted by model name. One that does not decode is removed (nothing can
    /// act on it) and reported with its path and the reason (a torn marker cannot be: it is
    /// replaced atomically).
    pub fn all(&self) -> Vec<Result<Trial, String>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return vec![] };
        let mut paths: Vec<PathBuf> =
            entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "json")).collect();
        paths.sort();
        paths
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).map_err(|e| format!("{}: {e}", p.display()))?;
                serde_json::from_slice(&bytes).map_err(|e| {
                    let _ = fsutil::remove_file(&p);
                    format!("{}: {e}; removed", p.display())
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trial() -> Trial {
        Trial {
            command_id: "00".repeat(16),
            name: "wake".into(),
            version: "2".into(),
            previous: Previous::Installed("1".into()),
            base: Record::default(),
            deaths: 0,
            clean_stop: false,
        }
    }

    #[test]
    fn the_first_death_resumes_the_trial_and_counts_it() {
        assert_eq!(trial().on_boot(), Boot::Resume(Trial { deaths: 1, ..trial() }));
    }

    #[test]
    fn the_second_death_restores_the_previous_version_with_the_reason() {
        let Boot::Restore(reason) = Trial { deaths: 1, ..trial() }.on_boot() else { panic!("not restored") };
        assert_eq!(reason, "agent died twice during the trial of wake 2; restored version 1");
    }

    #[test]
    fn an_orderly_stop_is_not_a_death() {
        let stopped = Trial { deaths: 1, clean_stop: true, ..trial() };
        assert_eq!(stopped.on_boot(), Boot::Resume(Trial { deaths: 1, clean_stop: false, ..trial() }));
    }

    #[test]
    fn markers_survive_a_round_trip_and_are_removed_durably() {
        let dir = tempfile::tempdir().unwrap();
        let m = Markers::new(&dir.path().join("trials"));
        let t = Trial { base: Record { requests: 3, errors: 1, latencies: vec![1.5, 2.0] }, ..trial() };
        m.save(&t).unwrap();
        assert_eq!(m.get("wake"), Some(t.clone()));
        assert_eq!(m.all(), vec![Ok(t)]);
        m.remove("wake").unwrap();
        m.remove("wake").unwrap();
        assert!(m.all().is_empty());
        // One that does not decode is reported once and removed.
        std::fs::write(dir.path().join("trials/junk.json"), b"{").unwrap();
        assert!(matches!(&m.all()[..], [Err(e)] if e.contains("junk.json") && e.contains("removed")));
        assert!(m.all().is_empty());
    }

    #[test]
    fn the_command_id_comes_back_from_hex() {
        let t = Trial { command_id: "0102030405060708090a0b0c0d0e0f10".into(), ..trial() };
        assert_eq!(t.command_id(), Some([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]));
        assert_eq!(Trial { command_id: "zz".into(), ..trial() }.command_id(), None);
    }
}
