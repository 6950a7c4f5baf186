//! Validating a staged model before it may serve: load it, run its validation vector,
//! compare the outputs, time it.
//!
//! The agent never does this in its own process: [`validate_in_child`] runs
//! `edge-agent validate --staging DIR` under resource limits and a deadline, so a model
//! that crashes tract, exhausts memory or never finishes fails its validation instead of
//! taking the agent down. The child opens the staged files, then confines itself
//! ([`crate::sandbox`]: no other file, no socket, no program) before it parses anything
//! the transfer brought, and prints one JSON [`Report`].

use std::path::Path;
use std::time::Instant;

use edge_proto::command::Command;
use edge_proto::ota::Validation;
use serde::{Deserialize, Serialize};

use super::staging::Staging;
use crate::engine::isolate::{run_child, Limits};
use crate::engine::Model;
use crate::models::load::Settings;

/// Timed runs of the validation vector; the median is compared to the latency budget.
const TIMED_RUNS: usize = 5;

/// What the validating child found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Whether the model may be installed.
    pub passed: bool,
    /// Why not, when it may not.
    pub reason: Option<String>,
    /// Largest absolute difference from the expected outputs.
    pub max_abs_diff: Option<f32>,
    /// Median latency of one run of the validation vector, ms.
    pub median_ms: Option<f64>,
    /// How the child was confined ([`crate::sandbox::Report`]), once it was.
    #[serde(default)]
    pub sandbox: Option<String>,
}

impl Report {
    fn fail(reason: String) -> Report {
        Report { passed: false, reason: Some(reason), max_abs_diff: None, median_ms: None, sandbox: None }
    }
}

/// The child's side: validates the staged transfer in `dir` (complete, its command
/// already verified by the parent) and returns the report.
pub fn validate_staging(dir: &Path) -> Report {
    let mut report = validate_confined(dir);
    report.sandbox = report.sandbox.or(Some("not confined: failed before".into()));
    report
}

fn validate_confined(dir: &Path) -> Report {
    // Everything the child reads is opened first; nothing the transfer brought is parsed
    // until it is confined.
    let bytes = match std::fs::read(dir.join("command")) {
        Ok(b) => b,
        Err(e) => return Report::fail(format!("cannot read the staged command: {e}")),
    };
    let command: Command = match postcard::from_bytes(&bytes) {
        Ok(c) => c,
        Err(e) => return Report::fail(format!("staged command does not decode: {e}")),
    };
    let staging = match Staging::open(dir, command) {
        Ok(s) => s,
        Err(e) => return Report::fail(e.to_string()),
    };
    let settings = match read_settings(dir) {
        Ok(s) => s,
        Err(e) => return Report::fail(e),
    };
    let sandbox = Some(crate::sandbox::confine().to_string());
    let confined = |mut r: Report| {
        r.sandbox = sandbox.clone();
        r
    };
    let model = match staging.read_model() {
        Ok(m) => m,
        Err(e) => return confined(Report::fail(e.to_string())),
    };
    let validation = match staging.read_validation() {
        Ok(v) => v,
        Err(e) => return confined(Report::fail(e.to_string())),
    };
    let manifest = &staging.manifest;
    let loaded = crate::models::load::from_manifest(manifest, &model, &settings);
    let model = match loaded {
        Ok(m) => std::sync::Arc::new(m),
        Err(e) => return confined(Report::fail(format!("does not load: {e}"))),
    };
    let Some(validation) = validation else {
        if manifest.latency_budget_ms > 0 {
            return confined(Report::fail("a latency budget needs a validation vector to measure it with".into()));
        }
        return confined(Report { passed: true, reason: None, max_abs_diff: None, median_ms: None, sandbox: None });
    };
    confined(run_validation(&model, &validation, manifest.latency_budget_ms))
}

/// The file in the staging directory that hands the child the device's settings for the
/// model ([`Settings`]), which it cannot read from the configuration itself.
const SETTINGS_FILE: &str = "settings.json";

/// Writes `settings` for the validation child into the staging directory `dir`.
pub fn write_settings(dir: &Path, settings: &Settings) -> Result<(), String> {
    let path = dir.join(SETTINGS_FILE);
    let json = serde_json::to_vec(settings).map_err(|e| format!("cannot encode the model settings: {e}"))?;
    std::fs::write(&path, json).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The settings the parent wrote into `dir`; the defaults when there is no such file.
fn read_settings(dir: &Path) -> Result<Settings, String> {
    let path = dir.join(SETTINGS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{} does not decode: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// Runs `validation` on `model`, compares the outputs and checks the median latency
/// against `budget_ms` (0: none).
pub fn run_validation(model: &std::sync::Arc<Model>, validation: &Validation, budget_ms: u32) -> Report {
    let inputs = match validation.inputs.iter().map(|b| crate::npy::from_bytes(&b.0)).collect::<Result<Vec<_>, _>>() {
        Ok(i) => i,
        Err(e) => return Report::fail(format!("validation input: {e}")),
    };
    let expected = match validation.expected.iter().map(|b| crate::npy::from_bytes(&b.0)).collect::<Result<Vec<_>, _>>()
    {
        Ok(e) => e,
        Err(e) => return Report::fail(format!("validation expected output: {e}")),
    };
    let mut session = match model.session() {
        Ok(s) => s,
        Err(e) => return Report::fail(format!("cannot start a session: {e}")),
    };
    let outputs = match session.run(inputs.clone()) {
        Ok(o) => o,
        Err(e) => return Report::fail(format!("validation run failed: {e}")),
    };
    if outputs.len() < expected.len() {
        return Report::fail(format!("{} outputs, the validation vector expects {}", outputs.len(), expected.len()));
    }
    let mut max_diff = 0f32;
    for (k, (got, want)) in outputs.iter().zip(&expected).enumerate() {
        if got.shape() != want.shape() {
            return Report::fail(format!("output {k} has shape {:?}, expected {:?}", got.shape(), want.shape()));
        }
        let (Ok(g), Ok(w)) = (got.cast_to::<f32>(), want.cast_to::<f32>()) else {
            return Report::fail(format!("output {k} is not numeric"));
        };
        let (Ok(g), Ok(w)) = (g.try_as_plain_ram(), w.try_as_plain_ram()) else {
            return Report::fail(format!("output {k} is not numeric"));
        };
        let (Ok(g), Ok(w)) = (g.as_slice::<f32>(), w.as_slice::<f32>()) else {
            return Report::fail(format!("output {k} is not numeric"));
        };
        for (a, b) in g.iter().zip(w) {
            let d = (a - b).abs();
            if d.is_nan() || d > max_diff {
                max_diff = if d.is_nan() { f32::INFINITY } else { d };
            }
        }
    }
    let mut times = vec![];
    for _ in 0..TIMED_RUNS {
        session.reset();
        let t = Instant::now();
        if let Err(e) = session.run(inputs.clone()) {
            return Report::fail(format!("validation run failed: {e}"));
        }
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mut report =
        Report { passed: true, reason: None, max_abs_diff: Some(max_diff), median_ms: Some(median), sandbox: None };
    if max_diff > validation.tolerance {
        report.passed = false;
        report.reason = Some(format!(
            "outputs differ from the validation vector by up to {max_diff:e} (tolerance {:e})",
            validation.tolerance
        ));
    } else if budget_ms > 0 && median > budget_ms as f64 {
        report.passed = false;
        report.reason = Some(format!("median latency {median:.2} ms is over the {budget_ms} ms budget"));
    }
    report
}

/// Runs `program validate --staging DIR` under `limits` and returns its report; a crash,
/// a timeout or an unreadable report is a failed report that says which.
pub fn validate_in_child(program: &Path, dir: &Path, limits: Limits) -> Report {
    let args = ["validate".as_ref(), "--staging".as_ref(), dir.as_os_str()];
    match run_child(program, &args, limits, "new model") {
        Ok(stdout) => serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| Report::fail(format!("unreadable validation report: {e}"))),
        Err(e) => Report::fail(e.to_string()),
    }
}
