//! The power-cut matrix: at every durability point the power is cut, unsynced writes are
//! lost (not only the process), and the device must start into a valid state.
//!
//! Each test runs the real operation sequence through the real code with the file
//! operations logged (`edge_agent::fsutil::record`), then for every cut point and every
//! [`crashfs::Mode`] materialises what survives into a fresh state directory and starts
//! on it as the agent does (`load_or_create_key`, `Store::open`, `Staging::list/open`,
//! `ReplayWindow::open_in`, `Models::boot` with a real `Registry` and the shipped model
//! `models/mediapipe__hand_recrop.tflite`), asserting what must hold there.

mod crashfs;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crashfs::{every_cut, Crash, Cut};
use edge_agent::commands::ReplayWindow;
use edge_agent::config::Config;
use edge_agent::fsutil::record;
use edge_agent::models::Models;
use edge_agent::ota::health::Record;
use edge_agent::ota::staging::Staging;
use edge_agent::serving::Registry;
use edge_agent::stats::InferenceStats;
use edge_agent::store::{load_or_create_key, Store};
use edge_proto::command::{Command, Payload, Target};
use edge_proto::ota::{prepare, sha256, Chunk, Manifest, ModelFormat};

fn recrop() -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/mediapipe__hand_recrop.tflite");
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn manifest(version: &str, model: &[u8]) -> (Manifest, Vec<u8>) {
    prepare([2; 16], "hand", version, ModelFormat::Tflite, model, None, 16 * 1024)
}

/// The agent's configuration for a state directory: models encrypted at rest, one old
/// version kept.
fn config(state: &Path) -> Config {
    // The TLS files only need to exist; they live outside the state directory.
    static ETC: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    let etc = ETC.get_or_init(|| {
        let etc = tempfile::tempdir().unwrap();
        for f in ["ca.pem", "dev.pem", "dev.key"] {
            std::fs::write(etc.path().join(f), "x").unwrap();
        }
        etc
    });
    let text = format!(
        r#"
device_id = "dev-1"
state_dir = "{}"
[mqtt]
url = "mqtts://broker.example:8883"
ca_file = "ca.pem"
cert_file = "dev.pem"
key_file = "dev.key"
[ota]
keep_versions = 1
encrypt_models = true
"#,
        state.display()
    );
    Config::parse(&text, &etc.path().join("agent.toml"), |_| None).unwrap()
}

fn key_path(state: &Path) -> PathBuf {
    config(state).model_key_file()
}

/// Starts on `state` as the daemon does: the key, the store, the models (trials settled).
fn boot(state: &Path) -> Result<(Models, Arc<Registry>), String> {
    let config = config(state);
    let key = load_or_create_key(&config.model_key_file()).map_err(|e| format!("key: {e}"))?;
    let store = Store::open(&config.state_dir.join("models"), Some(key)).map_err(|e| format!("store: {e}"))?;
    let registry =
        Arc::new(Registry::new(Arc::new(InferenceStats::default()), Duration::from_secs(5), Duration::from_secs(60)));
    let mut models = Models::new(&config, store, registry.clone(), Default::default());
    models.boot();
    Ok((models, registry))
}

fn serving(registry: &Registry, name: &str) -> Option<String> {
    registry.get(name).ok().map(|s| s.version.clone())
}

/// Runs `run` with the file operations under `state` logged; every cut of it is checked
/// with `check`. Fails with every cut that broke an invariant.
fn matrix(state: &Path, run: impl FnOnce(), check: impl FnMut(&Path, &Cut) -> Result<(), String>) {
    let snapshot = Crash::snapshot(state);
    let ops = {
        let recording = record::start(state);
        run();
        recording.ops()
    };
    assert!(ops.iter().any(|o| !matches!(o, record::Op::Mark(_))), "nothing was recorded");
    let (states, failures) = every_cut(&snapshot, &ops, check);
    eprintln!("{} operations, {states} distinct states after a cut", ops.len());
    assert!(failures.is_empty(), "{} of the cuts broke an invariant:\n{}", failures.len(), failures.join("\n"));
}

fn chunk(manifest: &Manifest, artifact: &[u8], index: u32) -> Chunk {
    let range = manifest.chunk_range(index);
    Chunk { version: 1, transfer_id: [2; 16], index, data: artifact[range.start as usize..range.end as usize].to_vec() }
}

/// What the start-up finds of staged transfers: each either resumes with every chunk its
/// bitmap claims really on disk, or is gone.
fn check_staging(state: &Path) -> Result<(), String> {
    for (dir, bytes) in Staging::list(&state.join("ota")) {
        let command: Command =
            postcard::from_bytes(&bytes).map_err(|e| format!("{}: command does not decode: {e}", dir.display()))?;
        let staging = Staging::open(&dir, command).map_err(|e| format!("staging does not reopen: {e}"))?;
        let count = staging.manifest.chunk_count();
        let missing = staging.missing(count);
        let artifact = std::fs::read(staging.artifact_path()).map_err(|e| e.to_string())?;
        for i in (0..count).filter(|i| !missing.iter().any(|(a, b)| (*a..*b).contains(i))) {
            let r = staging.manifest.chunk_range(i);
            let bytes = artifact.get(r.start as usize..r.end as usize).unwrap_or_default();
            if sha256(bytes) != staging.manifest.chunk_hashes[i as usize] {
                return Err(format!("chunk {i} is marked received but its bytes are not on disk"));
            }
        }
        if staging.is_complete() {
            staging.read_model().map_err(|e| format!("a complete staging does not read: {e}"))?;
        }
    }
    Ok(())
}

#[test]
fn a_deploy_cut_at_any_point_boots_into_version_1_or_2_and_finishes_or_abandons_cleanly() {
    // Staging checkpoints, store install and `current`, the trial marker, prune.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let model = recrop();
    let key = load_or_create_key(&key_path(state)).unwrap();
    let store = Store::open(&state.join("models"), Some(key)).unwrap();
    for v in ["0", "1"] {
        store.install(&manifest(v, &model).0, &model).unwrap();
        store.set_active("hand", v).unwrap();
    }
    let (mut models, registry) = boot(state).unwrap();
    assert_eq!(serving(&registry, "hand").as_deref(), Some("1"));
    let (m2, artifact) = manifest("2", &model);
    let cmd = Command::new([9; 16], 0, u64::MAX, Target::Device("dev-1".into()), Payload::DeployModel(m2.clone()));

    matrix(
        state,
        || {
            let mut s = Staging::create(&state.join("ota"), &edge_proto::encode(&cmd), cmd.clone()).unwrap();
            for i in 0..m2.chunk_count() {
                s.accept(&chunk(&m2, &artifact, i)).unwrap();
                if i % 3 == 2 {
                    s.checkpoint().unwrap();
                }
            }
            s.checkpoint().unwrap();
            let bytes = s.read_model().unwrap();
            models.store().install(&m2, &bytes).unwrap();
            record::mark("installed");
            s.remove();
            models.begin_trial([9; 16], "hand", "2", Record::default()).unwrap();
            record::mark("trial");
            models.mark_good("hand").unwrap();
            record::mark("good");
        },
        |state, cut| {
            check_staging(state)?;
            if load_or_create_key(&key_path(state)).map_err(|e| e.to_string())? != key {
                return Err("the device key changed".into());
            }
            let (models, registry) = boot(state)?;
            let store = models.store();
            store.read("hand", "1").map_err(|e| format!("version 1 (previous) does not read: {e}"))?;
            let serves = serving(&registry, "hand");
            match serves.as_deref() {
                Some("1") | Some("2") => {}
                other => return Err(format!("hand serves {other:?}, not version 1 or 2")),
            }
            if cut.passed("installed") {
                store.read("hand", "2").map_err(|e| format!("installed version 2 does not read: {e}"))?;
            }
            if cut.passed("good") && serves.as_deref() != Some("2") {
                return Err(format!("marked good, but {serves:?} serves after the cut"));
            }
            Ok(())
        },
    );
}

#[test]
fn an_accepted_command_stays_in_the_replay_window_after_any_cut() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    matrix(
        state,
        || {
            let mut w = ReplayWindow::open_in(state).unwrap();
            for i in 1..=4u8 {
                w.record([i; 16], 10_000 + i as u64, 0).unwrap();
                record::mark(&format!("accepted {i}"));
            }
        },
        |state, cut| {
            let w = ReplayWindow::open_in(state).map_err(|e| e.to_string())?;
            for i in 1..=4u8 {
                if cut.passed(&format!("accepted {i}")) && !w.contains(&[i; 16]) {
                    return Err(format!("command {i} was accepted, and is forgotten after the cut"));
                }
            }
            Ok(())
        },
    );
}

#[test]
fn a_first_model_installed_and_activated_survives_any_cut() {
    // Failed under POSIX rules: `models/` and `models/hand/` were made without an fsync of
    // their parent, and a cut after the activation lost the model.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let model = recrop();
    let key = load_or_create_key(&key_path(state)).unwrap();
    matrix(
        state,
        || {
            let store = Store::open(&state.join("models"), Some(key)).unwrap();
            store.install(&manifest("1", &model).0, &model).unwrap();
            store.set_active("hand", "1").unwrap();
            record::mark("installed");
        },
        |state, cut| {
            let (_, registry) = boot(state)?;
            let serves = serving(&registry, "hand");
            if cut.passed("installed") && serves.as_deref() != Some("1") {
                return Err(format!("installed and activated, but {serves:?} serves"));
            }
            Ok(())
        },
    );
}

#[test]
fn the_device_key_is_absent_or_whole_after_a_cut_during_its_creation() {
    // Key creation, then a first model encrypted under it.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path();
    let model = recrop();
    matrix(
        state,
        || {
            let key = load_or_create_key(&key_path(state)).unwrap();
            record::mark("key");
            let store = Store::open(&state.join("models"), Some(key)).unwrap();
            store.install(&manifest("1", &model).0, &model).unwrap();
            store.set_active("hand", "1").unwrap();
            record::mark("installed");
        },
        |state, cut| {
            load_or_create_key(&key_path(state)).map_err(|e| format!("the agent cannot start: {e}"))?;
            let (models, registry) = boot(state)?;
            if models.store().has("hand", "1") {
                models.store().read("hand", "1").map_err(|e| format!("installed version 1 does not read: {e}"))?;
            }
            if cut.passed("installed") && serving(&registry, "hand").as_deref() != Some("1") {
                return Err(format!("installed and activated, but {:?} serves", serving(&registry, "hand")));
            }
            Ok(())
        },
    );
}
