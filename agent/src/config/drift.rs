//! `[drift]`: how the drift of a model version with a reference profile is measured
//! ([`crate::drift`]).

use std::time::Duration;

use serde::Deserialize;

/// `[drift]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Seconds after which an element counted into a drift window weighs half as much:
    /// drift shows, and recovers, within a few half-lives.
    #[serde(default = "default_half_life_secs")]
    pub half_life_secs: f64,
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig { half_life_secs: default_half_life_secs() }
    }
}

fn default_half_life_secs() -> f64 {
    crate::drift::DEFAULT_HALF_LIFE.as_secs_f64()
}

impl DriftConfig {
    /// The half-life as a duration.
    pub fn half_life(&self) -> Duration {
        Duration::from_secs_f64(self.half_life_secs)
    }

    /// The key and the message of what is wrong.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        // A fraction of a second is allowed: tests and demos want drift to move at once.
        if !(0.001..=86_400.0 * 30.0).contains(&self.half_life_secs) {
            return Err((
                "[drift] half_life_secs",
                format!("{} must be between 0.001 and 2592000", self.half_life_secs),
            ));
        }
        Ok(())
    }
}
