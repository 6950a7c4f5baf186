//! Delta transfer figures (issue 12 item 6): for each ONNX model in a directory, how many
//! bytes a new version costs when a device already holds the old one, with fixed-size
//! chunks (the old scheme) and with content-defined chunks ([`edge_proto::cdc`]).
//!
//! Two new versions per model, both made from the file's own bytes:
//! - *head retrained*: the weights of the classifier head (the largest initializer of two or
//!   more dimensions that the graph's last weighted node reads) are changed in place: every
//!   float `w` becomes `w * 1.01 + 0.001`. Same length, nothing else moves.
//! - *one more class*: one row of that tensor's size (`dims[1..]` elements) is inserted at
//!   the start of its data, as a head with one more output class would be: every byte after
//!   it shifts. (The file is only measured, not loaded: the tensor's dims are left as they
//!   were.)
//! - *4 KiB inserted early*: 4096 bytes (copied from the file's start) inserted a quarter of
//!   the way into the file, as a layer or a tensor added near the input would be: most of
//!   the file shifts.
//!
//! A chunk is sent when no chunk of the old version has the same SHA-256.
//!
//! With `--agent PATH` (a release `edge-agent`), the same on the wire as well: for each
//! model, a real agent behind a real Mosquitto is deployed the model, then its *head
//! retrained* version with content-defined chunks (the agent copies what it holds and asks
//! for the rest; edgectl publishes the union of what was asked), then a version retrained
//! once more with fixed-size chunks; what edgectl published for each is printed beside the
//! artifact's size. (The other two versions are not valid models, which the agent would
//! refuse to install.)

use std::collections::HashSet;
use std::path::PathBuf;

use std::time::Duration;

use anyhow::{bail, Context};
use edge_bench::agent::{operator_mqtt, AgentProcess};
use edge_it::{Broker, Pki};
use edge_proto::cdc::CdcParams;
use edge_proto::command::{SigningKey, Target};
use edge_proto::ota::{sha256, ModelFormat, DEFAULT_CHUNK_BYTES};
use edgectl::deploy::{deploy, DeployRequest};
use edgectl::link::Link;
use prost::Message;
use tract_onnx::pb;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let agent = args
        .iter()
        .position(|a| a == "--agent")
        .map(|i| PathBuf::from(args.get(i + 1).cloned().unwrap_or_else(|| "target/release/edge-agent".into())));
    let dir = PathBuf::from(args.first().filter(|a| !a.starts_with("--")).cloned().unwrap_or_else(|| "models".into()));
    let mut models: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}: pass the models directory as the argument", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "onnx"))
        .collect();
    models.sort();
    if models.is_empty() {
        bail!("no .onnx model in {}", dir.display());
    }
    offline(&models)?;
    if let Some(agent) = agent {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        runtime.block_on(wire(&agent, &models))?;
    }
    Ok(())
}

/// The table of bytes each scheme sends, worked out from the files.
fn offline(models: &[PathBuf]) -> anyhow::Result<()> {
    let cdc = CdcParams::DEFAULT;
    let fixed_small = cdc.avg;
    println!(
        "Bytes sent for a new version when the device holds the old one. Fixed: chunks of {} KiB \
         (the default) and of {} KiB; CDC: content-defined, min/avg/max {}/{}/{} KiB. Chunks in \
         parentheses: how many the new version has (each costs 32 bytes of hash in the manifest).\n",
        DEFAULT_CHUNK_BYTES / 1024,
        fixed_small / 1024,
        cdc.min / 1024,
        cdc.avg / 1024,
        cdc.max / 1024
    );
    println!(
        "| model | size | head tensor | new version | full | fixed {} KiB | fixed {} KiB | CDC |",
        DEFAULT_CHUNK_BYTES / 1024,
        fixed_small / 1024
    );
    println!("|---|---:|---|---|---:|---:|---:|---:|");
    for path in models {
        let v1 = std::fs::read(path)?;
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let Some(head) = head(&v1)? else {
            println!("| {name} | {} | (no weighted node found) | | | | | |", v1.len());
            continue;
        };
        let early = {
            let mut v = v1.clone();
            let at = v1.len() / 4;
            v.splice(at..at, v1[..4096.min(v1.len())].to_vec());
            v
        };
        for (label, v2) in [
            ("head retrained", head.retrained(&v1)),
            ("one more class", head.one_more_class(&v1)),
            ("4 KiB inserted early", early),
        ] {
            let fixed = |size: u32| {
                let cut = |d: &[u8]| d.chunks(size as usize).map(<[u8]>::to_vec).collect::<Vec<_>>();
                sent(&cut(&v1), &cut(&v2))
            };
            let by_cdc = |d: &[u8]| split(d, &cdc.lengths(d));
            println!(
                "| {name} | {} | `{}` {:?}, {} B at {} | {label} | {} | {} | {} | {} |",
                v1.len(),
                head.name,
                head.dims,
                head.range.len(),
                head.range.start,
                v2.len(),
                fixed(DEFAULT_CHUNK_BYTES),
                fixed(fixed_small),
                sent(&by_cdc(&v1), &by_cdc(&v2)),
            );
        }
    }
    Ok(())
}

/// Deploys each model, then a retrained head with content-defined chunks, then a head
/// retrained again with fixed-size chunks, to a real agent; prints what edgectl published.
async fn wire(agent: &std::path::Path, models: &[PathBuf]) -> anyhow::Result<()> {
    let work = tempfile::tempdir()?;
    let pki = Pki::generate(&work.path().join("pki"))?;
    let broker = Broker::start(&pki)?;
    let key = SigningKey::from_bytes(&[42; 32]);
    println!();
    println!(
        "On the wire: a real edge-agent and Mosquitto (mutual TLS, loopback); edgectl's direct deploy, \
         content-defined chunks of the default limits, fixed chunks of {} KiB. Bytes: what edgectl \
         published for the new version, chunk messages with their envelopes.\n",
        DEFAULT_CHUNK_BYTES / 1024
    );
    println!("| model | artifact bytes | head retrained, content-defined: published | of the artifact | retrained again, fixed: published | of the artifact |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (n, path) in models.iter().enumerate() {
        let v1 = std::fs::read(path)?;
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let Some(head) = head(&v1)? else { continue };
        let v2 = head.retrained(&v1);
        let v3 = head.retrained(&v2);
        let device = format!("delta-{n}");
        let _agent = AgentProcess::start(agent, work.path(), &pki, &broker, &device, &key).await?;
        let mut link = Link::connect(&operator_mqtt(&pki, &broker)?).await?;
        let (mut published, mut refused) = (vec![], None);
        for (version, model, delta) in [("1", &v1, true), ("2", &v2, true), ("3", &v3, false)] {
            let mut req =
                DeployRequest::new(Target::Device(device.clone()), "m", version, ModelFormat::Onnx, model.clone());
            req.delta = delta;
            req.wait = true;
            req.timeout = Duration::from_secs(600);
            let outcome = deploy(&mut link, &edgectl::keys::Signer::new(key.clone()), &req, |_| {}).await?;
            if !outcome.all_ok() {
                refused = outcome.results.first().map(|r| format!("{:?}", r.outcome));
                break;
            }
            published.push((outcome.stats.bytes_published, outcome.stats.artifact_bytes));
        }
        link.close().await;
        if let Some(why) = refused {
            // A model that loads only with input shapes from the device's configuration
            // (`[[models]] shapes`), which a deploy does not carry.
            let why: String = why.replace('|', "/").chars().take(100).collect();
            println!("| {name} | {} | not installed: {why}… | | | |", v1.len());
            continue;
        }
        let share = |(sent, size): (u64, u64)| format!("{:.1} %", 100.0 * sent as f64 / size as f64);
        println!(
            "| {name} | {} | {} | {} | {} | {} |",
            published[1].1,
            published[1].0,
            share(published[1]),
            published[2].0,
            share(published[2])
        );
    }
    Ok(())
}

/// "bytes (chunks)": what is sent of `new` when the device holds every chunk of `old`.
fn sent(old: &[Vec<u8>], new: &[Vec<u8>]) -> String {
    let held: HashSet<[u8; 32]> = old.iter().map(|c| sha256(c)).collect();
    let bytes: usize = new.iter().filter(|c| !held.contains(&sha256(c))).map(Vec::len).sum();
    format!("{bytes} ({})", new.len())
}

fn split(data: &[u8], lengths: &[u32]) -> Vec<Vec<u8>> {
    let mut at = 0;
    lengths
        .iter()
        .map(|&l| {
            let c = data[at..at + l as usize].to_vec();
            at += l as usize;
            c
        })
        .collect()
}

struct Head {
    name: String,
    dims: Vec<i64>,
    float: bool,
    range: std::ops::Range<usize>,
}

/// The classifier head: walking the graph from its last node back, the first node that
/// reads an initializer of two or more dimensions stored as raw data; of its initializers,
/// the largest. Located in the file by its bytes.
fn head(file: &[u8]) -> anyhow::Result<Option<Head>> {
    let model = pb::ModelProto::decode(file).context("not an ONNX protobuf")?;
    let graph = model.graph.context("no graph")?;
    for node in graph.node.iter().rev() {
        let best = node
            .input
            .iter()
            .filter_map(|i| graph.initializer.iter().find(|t| &t.name == i))
            .filter(|t| t.dims.len() >= 2 && t.raw_data.len() >= 64)
            .max_by_key(|t| t.raw_data.len());
        let Some(t) = best else { continue };
        let at = find(file, &t.raw_data).context("head tensor bytes not found in the file")?;
        return Ok(Some(Head {
            name: t.name.clone(),
            dims: t.dims.clone(),
            float: t.data_type == pb::tensor_proto::DataType::Float as i32,
            range: at..at + t.raw_data.len(),
        }));
    }
    Ok(None)
}

impl Head {
    fn retrained(&self, file: &[u8]) -> Vec<u8> {
        let mut out = file.to_vec();
        let data = &mut out[self.range.clone()];
        if self.float {
            for w in data.chunks_exact_mut(4) {
                let v = f32::from_le_bytes(w.try_into().unwrap()) * 1.01 + 0.001;
                w.copy_from_slice(&v.to_le_bytes());
            }
        } else {
            data.iter_mut().for_each(|b| *b = b.wrapping_add(1));
        }
        out
    }

    fn one_more_class(&self, file: &[u8]) -> Vec<u8> {
        let row = self.range.len() / self.dims[0].max(1) as usize;
        let mut out = file.to_vec();
        out.splice(self.range.start..self.range.start, file[self.range.start..self.range.start + row].to_vec());
        out
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
