//! `set-config`: the settings an operator may change at run time, persisted in
//! `{state_dir}/runtime.json` and applied without a restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// Changes the log filter at run time (`set-config log_level`).
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The accepted telemetry intervals, in seconds.
pub const INTERVAL_SECS: std::ops::RangeInclusive<u32> = 1..=86_400;

/// Settings `set-config` may change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RuntimeSettings {
    /// Seconds between telemetry samples.
    pub telemetry_interval_secs: u32,
    /// Log filter (`RUST_LOG` syntax).
    pub log_level: String,
}

impl RuntimeSettings {
    /// The file they are kept in.
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join("runtime.json")
    }

    /// The persisted settings, if any were set and they are valid. A file that does not
    /// decode, or holds a value `set-config` would refuse, is logged and ignored: the
    /// configuration file's settings apply (an interval of 0 would stop telemetry).
    pub fn load(state_dir: &Path) -> Option<RuntimeSettings> {
        let path = RuntimeSettings::path(state_dir);
        let bytes = std::fs::read(&path).ok()?;
        let checked = serde_json::from_slice::<RuntimeSettings>(&bytes).map_err(|e| e.to_string()).and_then(|s| {
            s.check()?;
            Ok(s)
        });
        match checked {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(
                    "{}: {e}; using the configuration file's settings (send set-config again, or delete the file)",
                    path.display()
                );
                None
            }
        }
    }

    /// Refuses values the agent cannot run with.
    pub fn check(&self) -> Result<(), String> {
        if !INTERVAL_SECS.contains(&self.telemetry_interval_secs) {
            return Err(format!(
                "telemetry interval {} s is outside {}..={}",
                self.telemetry_interval_secs,
                INTERVAL_SECS.start(),
                INTERVAL_SECS.end()
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map(|_| ())
            .map_err(|e| format!("log level {:?}: {e}", self.log_level))
    }
}

/// The live settings and what applies them.
pub struct Settings {
    /// As in force now.
    pub current: RuntimeSettings,
    /// Where they are persisted.
    pub state_dir: PathBuf,
    /// Telemetry's interval.
    pub interval: watch::Sender<Duration>,
    /// The log filter, when logging supports changing it.
    pub log: Option<LogControl>,
}

impl Settings {
    /// `set-config`: checks, applies and persists the given values; nothing changes when
    /// one of them is refused.
    pub fn set(&mut self, interval: Option<u32>, log_level: Option<String>) -> Result<(), String> {
        let mut next = self.current.clone();
        if let Some(secs) = interval {
            next.telemetry_interval_secs = secs;
        }
        if let Some(level) = &log_level {
            next.log_level = level.clone();
        }
        next.check()?;
        if let Some(level) = &log_level {
            match &self.log {
                Some(set) => set(level)?,
                None => return Err("this agent's logging cannot change its filter at run time".into()),
            }
        }
        let path = RuntimeSettings::path(&self.state_dir);
        let json = serde_json::to_vec_pretty(&next).expect("settings serialize");
        crate::fsutil::write_atomic(&path, &json).map_err(|e| format!("cannot save {}: {e}", path.display()))?;
        let _ = self.interval.send(Duration::from_secs(next.telemetry_interval_secs.into()));
        tracing::info!(interval = next.telemetry_interval_secs, log = %next.log_level, "settings changed");
        self.current = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_interval_in_runtime_json_is_ignored_not_fatal() {
        // `telemetry_interval_secs: 0` there used to panic tokio's interval at start.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(RuntimeSettings::path(dir.path()), br#"{"telemetry_interval_secs":0,"log_level":"info"}"#)
            .unwrap();
        assert_eq!(RuntimeSettings::load(dir.path()), None);
        std::fs::write(RuntimeSettings::path(dir.path()), br#"{"telemetry_interval_secs":7,"log_level":"info"}"#)
            .unwrap();
        assert_eq!(RuntimeSettings::load(dir.path()).map(|s| s.telemetry_interval_secs), Some(7));
    }

    #[test]
    fn a_refused_value_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, rx) = watch::channel(Duration::from_secs(5));
        let mut s = Settings {
            current: RuntimeSettings { telemetry_interval_secs: 5, log_level: "info".into() },
            state_dir: dir.path().to_path_buf(),
            interval: tx,
            log: None,
        };
        assert!(s.set(Some(0), None).unwrap_err().contains("outside 1..=86400"));
        s.set(Some(9), None).unwrap();
        assert_eq!((*rx.borrow(), s.current.telemetry_interval_secs), (Duration::from_secs(9), 9));
        assert!(RuntimeSettings::path(dir.path()).exists());
    }
}
