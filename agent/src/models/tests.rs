//! The decisions of [`super::Models`] on real files and a real model, without a daemon:
//! what a start finds after the agent died at each step of a trial.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use edge_proto::ota::{prepare, ModelFormat};
use prometheus_client::metrics::counter::Counter;

use super::trial::{Markers, Previous, Trial, MAX_DEATHS};
use super::{Models, Resumed};
use crate::config::Config;
use crate::ota::health::Record;
use crate::serving::Registry;
use crate::stats::InferenceStats;
use crate::store::Store;

const HAND: &str = "mediapipe__hand_recrop.tflite";

fn config(state: &Path) -> Config {
    // The [mqtt] files must exist for the configuration to check out; nothing reads them.
    for f in ["ca.pem", "c.pem", "k.pem"] {
        std::fs::write(state.join(f), b"").unwrap();
    }
    let text = format!(
        "device_id = \"dev-1\"\nstate_dir = \"{}\"\n[mqtt]\nurl = \"mqtts://localhost:8883\"\n\
         ca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n",
        state.display()
    );
    Config::parse(&text, &state.join("agent.toml"), |_| None).expect("test config")
}

/// The agent at start on `state`: its models booted; what it serves of `hand`, and what
/// the boot reported.
fn start(state: &Path) -> (Option<String>, Vec<Resumed>) {
    let registry =
        Arc::new(Registry::new(Arc::new(InferenceStats::default()), Duration::from_secs(5), Duration::from_secs(60)));
    let store = Store::open(&state.join("models"), None).unwrap();
    let mut models = Models::new(&config(state), store, registry.clone(), Counter::default());
    let resumed = models.boot();
    (registry.get("hand").ok().map(|s| s.version.clone()), resumed)
}

/// `hand` 1 active and 2 installed, as a deploy of 2 leaves them just before its trial.
fn installed_1_and_2(state: &Path) -> Store {
    let bytes = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models").join(HAND)).unwrap();
    let store = Store::open(&state.join("models"), None).unwrap();
    for v in ["1", "2"] {
        let (m, _) = prepare([1; 16], "hand", v, ModelFormat::Tflite, &bytes, None, 64 * 1024);
        store.install(&m, &bytes).unwrap();
    }
    store.set_active("hand", "1").unwrap();
    store
}

fn trial_of_2() -> Trial {
    Trial {
        command_id: "ab".repeat(16),
        name: "hand".into(),
        version: "2".into(),
        previous: Previous::Installed("1".into()),
        base: Record::default(),
        deaths: 0,
        clean_stop: false,
    }
}

#[test]
fn a_version_that_kills_the_agent_while_it_loads_is_replaced_after_two_deaths() {
    // A version that aborts the agent (or is OOM-killed) while loading dies after the trial
    // marker is written and before `current` names it: the state left behind is exactly this.
    let dir = tempfile::tempdir().unwrap();
    installed_1_and_2(dir.path());
    let markers = Markers::new(&dir.path().join("trials"));
    markers.save(&trial_of_2()).unwrap();

    // First start: one death counted (saved before loading), version 2 tried again.
    let (serving, resumed) = start(dir.path());
    assert_eq!(serving.as_deref(), Some("2"));
    assert!(matches!(&resumed[..], [Resumed::Trial(t)] if t.deaths == 1), "{resumed:?}");
    assert_eq!(markers.get("hand").map(|t| t.deaths), Some(1));

    // It dies loading again: the second start restores version 1 before serving.
    let (serving, resumed) = start(dir.path());
    assert_eq!(serving.as_deref(), Some("1"));
    let [Resumed::Restored { command_id, reason }] = &resumed[..] else { panic!("{resumed:?}") };
    assert_eq!(*command_id, [0xab; 16]);
    assert_eq!(reason, "agent died twice during the trial of hand 2; restored version 1");
    assert_eq!(MAX_DEATHS, 2);
    assert!(markers.get("hand").is_none(), "the trial is over");
    let current = Store::open(&dir.path().join("models"), None).unwrap().current("hand").unwrap();
    assert_eq!(current.active.as_deref(), Some("1"));
    assert!(current.installed.contains(&"2".to_string()), "nothing is deleted by a restore");

    // And a third start is a normal one.
    let (serving, resumed) = start(dir.path());
    assert_eq!((serving.as_deref(), resumed.len()), (Some("1"), 0));
}

#[test]
fn a_new_model_that_kills_the_agent_is_not_served_after_two_deaths() {
    // Nothing served the model before: restoring means not serving it, not a crash loop.
    let dir = tempfile::tempdir().unwrap();
    let store = installed_1_and_2(dir.path());
    store.restore("hand", &crate::store::Current { active: None, ..store.current("hand").unwrap() }).unwrap();
    let markers = Markers::new(&dir.path().join("trials"));
    markers.save(&Trial { previous: Previous::Nothing, deaths: 1, ..trial_of_2() }).unwrap();
    let (serving, resumed) = start(dir.path());
    assert_eq!(serving, None);
    assert!(matches!(&resumed[..], [Resumed::Restored { reason, .. }] if reason.contains("restored no version")));
}

#[test]
fn a_trial_whose_version_no_longer_loads_fails_with_the_previous_version_serving() {
    let dir = tempfile::tempdir().unwrap();
    installed_1_and_2(dir.path());
    Markers::new(&dir.path().join("trials")).save(&Trial { clean_stop: true, ..trial_of_2() }).unwrap();
    // Version 2's file is damaged on the flash: the store's hash check refuses it.
    let model = dir.path().join("models/hand/2/model");
    let mut bytes = std::fs::read(&model).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&model, bytes).unwrap();
    let (serving, resumed) = start(dir.path());
    assert_eq!(serving.as_deref(), Some("1"));
    assert!(
        matches!(&resumed[..], [Resumed::Restored { reason, .. }] if reason.contains("did not load")),
        "{resumed:?}"
    );
}
