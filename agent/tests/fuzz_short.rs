//! The fuzz targets' short form, on the stable toolchain, in every test run: each target
//! (`edge_agent::fuzzing`) gets its seed corpus (`fuzz/corpus/TARGET/`, and the shipped
//! models for the importers) and a fixed number of deterministic mutations of it. No
//! coverage feedback here: the long, coverage-guided runs are `bash fuzz/run.sh` (libFuzzer,
//! figures in docs/security.md). A panic or a crash fails the test and names the target,
//! the seed and the mutation number, which reproduce it.
//!
//! `FUZZ_WRITE_SEEDS=1 cargo test -p edge-agent --test fuzz_short` rewrites the generated
//! seeds (messages, state files) from the current encoders.

use std::path::PathBuf;

use edge_agent::fuzzing::{corpus_key, TARGETS};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = vec![];
    let dir = root().join("fuzz/corpus").join(target);
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        out.push((e.path().display().to_string(), std::fs::read(e.path()).unwrap()));
    }
    let model = match target {
        "tflite" => Some("models/pymicro-wakeword__okay_nabu.tflite"),
        "onnx" => Some("models/openwakeword-js__hello_deepa.onnx"),
        _ => None,
    };
    if let Some(m) = model {
        out.push((m.to_string(), std::fs::read(root().join(m)).unwrap()));
    }
    out.sort();
    out
}

/// Mutations per seed: cheap decoders get many, model imports few; `FUZZ_SCALE=N`
/// multiplies them for a longer run by hand (`cargo test --release`).
fn budget(target: &str) -> usize {
    let scale: usize = std::env::var("FUZZ_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    scale
        * match target {
            "tflite" | "onnx" => 40,
            "window" | "outbox" | "operators" => 300,
            _ => 3_000,
        }
}

/// One deterministic mutation of `seed` (the rng is seeded per seed and round).
fn mutate(rng: &mut fastrand::Rng, seed: &[u8], others: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..rng.usize(1..=4) {
        let len = d.len();
        match rng.u8(0..7) {
            0 if len > 0 => {
                let i = rng.usize(0..len);
                d[i] ^= 1 << rng.u8(0..8);
            }
            1 if len > 0 => {
                let i = rng.usize(0..len);
                d[i] = [0, 1, 0x7f, 0x80, 0xff][rng.usize(0..5)];
            }
            2 if len > 0 => d.truncate(rng.usize(0..len)),
            3 => {
                let i = rng.usize(0..=len);
                let n = rng.usize(1..16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                d.splice(i..i, bytes);
            }
            4 if len > 4 => {
                // A length or count field made huge, or zero.
                let i = rng.usize(0..len - 4);
                let v: u32 = [0, u32::MAX, 0x7fff_ffff, 0x10000][rng.usize(0..4)];
                d[i..i + 4].copy_from_slice(&v.to_le_bytes());
            }
            5 if len > 1 => {
                let (a, b) = (rng.usize(0..len), rng.usize(0..len));
                let (a, b) = (a.min(b), a.max(b));
                let part = d[a..b].to_vec();
                let at = rng.usize(0..=d.len());
                d.splice(at..at, part);
            }
            6 if !others.is_empty() => {
                let other = &others[rng.usize(0..others.len())].1;
                let cut = rng.usize(0..=d.len());
                let from = rng.usize(0..=other.len());
                d.truncate(cut);
                d.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
    d
}

#[test]
fn every_target_survives_its_corpus_and_mutations_of_it() {
    if std::env::var_os("FUZZ_WRITE_SEEDS").is_some() {
        write_seeds();
    }
    for (target, run) in TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty(), "no seed for {target}: fuzz/corpus/{target}/");
        let mut runs = 0;
        for (i, (name, seed)) in seeds.iter().enumerate() {
            run(seed);
            let mut rng = fastrand::Rng::with_seed(i as u64 * 7919 + target.len() as u64);
            for round in 0..budget(target) {
                let input = mutate(&mut rng, seed, &seeds);
                let outcome = std::panic::catch_unwind(|| run(&input));
                assert!(outcome.is_ok(), "{target}: mutation {round} of {name} panicked ({} bytes)", input.len());
                runs += 1;
            }
        }
        eprintln!("{target}: {} seeds, {runs} mutations", seeds.len());
    }
}

/// Writes the generated seeds into fuzz/corpus/.
fn write_seeds() {
    use edge_proto::command::{cosign, sign, Command, OperatorGrant, Payload, Role, Target};
    use edge_proto::ota::{prepare, prepare_cut, Cut, ModelFormat};
    let put = |target: &str, name: &str, bytes: &[u8]| {
        let dir = root().join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let key = corpus_key();
    let model: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8).collect();
    let (fixed, artifact) = prepare([1; 16], "m", "1", ModelFormat::Onnx, &model, None, 512);
    let params = edge_proto::cdc::CdcParams { min: 64, avg: 256, max: 1024 };
    let (content, _) = prepare_cut([2; 16], "m", "2", ModelFormat::Onnx, &model, None, Cut::Content(params));
    let cmd = |id: u8, payload| Command::new([id; 16], 1, u64::MAX / 2, Target::Device("dev-1".into()), payload);
    let grant = OperatorGrant { key: [9; 32], role: Role::Deploy, groups: vec!["lab".into()], max_ttl_secs: Some(60) };
    let mut values: Vec<f32> = (0..200).map(|i| (i % 17) as f32 * 0.5 - 2.0).collect();
    let profile = edge_proto::profile::Profile {
        version: 1,
        model_sha256: edge_proto::command::hex(&content.sha256),
        samples: 2,
        tensors: vec![edge_proto::profile::TensorProfile::from_values("input:x", &mut values, 8).unwrap()],
    };
    let profiled = edge_proto::ota::Manifest { profile: Some(profile.clone()), ..content.clone() };
    let commands = [
        ("get-status", sign(cmd(1, Payload::GetStatus), &key)),
        ("deploy", sign(cmd(2, Payload::deploy(fixed.clone())), &key)),
        ("deploy-content", sign(cmd(3, Payload::deploy(content.clone())), &key)),
        ("deploy-profiled", sign(cmd(6, Payload::deploy(profiled)), &key)),
        ("add-operator", sign(cmd(4, Payload::AddOperator(grant)).for_fleet("prod"), &key)),
        (
            "erase-cosigned",
            cosign(
                sign(cmd(5, Payload::Erase).for_fleet("prod"), &key),
                &edge_proto::command::SigningKey::from_bytes(&[1; 32]),
            )
            .unwrap(),
        ),
    ];
    for (name, c) in commands {
        put("command", name, &edge_proto::encode(&c));
    }
    let chunk = edge_proto::ota::Chunk { version: 1, transfer_id: [1; 16], index: 0, data: artifact[..512].to_vec() };
    put("chunk", "first", &edge_proto::encode(&chunk));
    let need = edge_proto::ota::Need {
        version: 1,
        device: "dev-1".into(),
        transfer_id: [1; 16],
        missing: vec![(0, 3), (5, 6)],
    };
    put("need", "need", &edge_proto::encode(&need));
    put("manifest", "fixed", &postcard::to_stdvec(&fixed).unwrap());
    put("manifest", "content", &postcard::to_stdvec(&content).unwrap());
    put("profile", "one-tensor", &edge_proto::encode(&profile));
    for npy in ["pymicro-wakeword__okay_nabu.input.npy", "openwakeword-js__hello_deepa.output.npy"] {
        put("npy", npy, &std::fs::read(root().join("models").join(npy)).unwrap());
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w");
    let mut w = edge_agent::commands::ReplayWindow::open(&path, 64).unwrap();
    w.record([1; 16], 500, 100).unwrap();
    w.record([2; 16], 900, 200).unwrap();
    put("window", "two-ids", &std::fs::read(&path).unwrap());
    let out = dir.path().join("outbox");
    let mut o = edge_agent::outbox::Outbox::open(&out, 1 << 20, std::time::Duration::from_secs(3600)).unwrap();
    for p in [&b"first"[..], b"second record", &[7u8; 300]] {
        o.push(1, p).unwrap();
    }
    let cursor = std::fs::read(out.join("cursor")).unwrap();
    assert_eq!(cursor.len(), 24, "the outbox target takes the first 24 bytes as the cursor");
    let seg = std::fs::read(out.join("seg-000001.log")).unwrap();
    put("outbox", "three-records", &[cursor, seg].concat());
    let mut ops = edge_agent::commands::Operators::load(vec![], dir.path()).unwrap();
    let grant =
        OperatorGrant { key: *key.verifying_key().as_bytes(), role: Role::Admin, groups: vec![], max_ttl_secs: None };
    let change = edge_agent::commands::operators::Change { command: "01".into(), at_ms: 1 };
    ops.add(&grant, change).unwrap();
    let file = dir.path().join(edge_agent::commands::operators::OPERATORS_FILE);
    put("operators", "one-added", &std::fs::read(file).unwrap());
}
