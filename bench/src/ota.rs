//! `ota-bench`: over-the-air deploy figures, each beside what it compares against.
//!
//! 1. **One device**: a real `edge-agent run` process behind a real Mosquitto (mutual TLS,
//!    loopback), deployed a generated ONNX model of `--size-mb` with edgectl's library.
//!    Reported: transfer throughput (publish to `Progress(100)`, chunks verified and on
//!    disk), install time (validation child, store, activation), and the agent's peak RSS
//!    during the transfer. Beside it: the same bytes as plain QoS 1 publishes through the
//!    same broker to a subscriber that only counts them, the ceiling the broker and TLS
//!    allow.
//! 2. **A fleet**: `--devices` receivers in this process, each with its own certificate and
//!    MQTT connection, taking the group transfer through the agent's own staging code
//!    (`edge_agent::ota::staging`: per-chunk hash check, write in place, bitmap, whole-model
//!    hash) and answering like the agent (accepted, repair requests, `Progress(100)`).
//!    Reported: time from the command's publication until every device has the verified
//!    model. Installing is per-device work measured in (1).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use edge_agent::ota::staging::Staging;
use edge_bench::agent::{operator_mqtt, AgentProcess, MAX_PACKET};
use edge_it::{mqtt_options, unique_client_id, Broker, Pki};
use edge_proto::codec::Versioned;
use edge_proto::command::{verify, Ack, AckState, NpyBytes, Payload, SigningKey, Target};
use edge_proto::ota::{decode_chunk, ModelFormat, Need, Validation};
use edgectl::command::Event;
use edgectl::deploy::{deploy, DeployRequest};
use edgectl::link::Link;
use prost::Message;
use rumqttc::{AsyncClient, Event as MqttEvent, Packet, QoS};
use tract_onnx::pb;

#[derive(Parser)]
#[command(name = "ota-bench", about = "OTA throughput, fleet deploy time and agent RSS during a transfer")]
struct Args {
    /// The agent binary (a release build).
    #[arg(long, default_value = "target/release/edge-agent")]
    agent: PathBuf,
    /// Model size in MB (a generated ONNX MatMul with that many bytes of weights).
    #[arg(long, default_value_t = 50)]
    size_mb: usize,
    /// Chunk sizes in KiB for the one-device run.
    #[arg(long, value_delimiter = ',', default_value = "240,1024")]
    chunk_kib: Vec<u32>,
    /// Pace of the deploys that measure RSS, MB/s.
    #[arg(long, default_value_t = 20)]
    rss_rate_mb: u64,
    /// Devices in the fleet run (0 skips it).
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Chunk size in KiB for the fleet run.
    #[arg(long, default_value_t = 1024)]
    fleet_chunk_kib: u32,
    /// Where staging files go (the fleet run writes size × devices bytes; tmpfs by default).
    #[arg(long, default_value = "/dev/shm")]
    scratch: PathBuf,
}

/// Silence before a simulated device asks for missing chunks: the agent's default
/// `[ota] stall_secs`.
const STALL: Duration = Duration::from_secs(5);

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(args))
}

/// A 1 x N by N x N MatMul with about `mb` MB of f32 weights, its input and its output.
fn generated_model(mb: usize) -> (Vec<u8>, Validation) {
    let n = ((mb as f64 * 1e6 / 4.0).sqrt()) as usize;
    let mut rng = fastrand::Rng::with_seed(7);
    let w: Vec<f32> = (0..n * n).map(|_| rng.f32() * 0.02 - 0.01).collect();
    let x: Vec<f32> = (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let mut y = vec![0f64; n];
    for (i, xi) in x.iter().enumerate() {
        for (j, yj) in y.iter_mut().enumerate() {
            *yj += f64::from(*xi) * f64::from(w[i * n + j]);
        }
    }
    let y: Vec<f32> = y.iter().map(|v| *v as f32).collect();
    let value_info = |name: &str, dims: &[i64]| pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type: 1,
                shape: Some(pb::TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| pb::tensor_shape_proto::Dimension {
                            denotation: String::new(),
                            value: Some(pb::tensor_shape_proto::dimension::Value::DimValue(*d)),
                        })
                        .collect(),
                }),
            })),
        }),
        doc_string: String::new(),
    };
    let raw: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 13 }],
        graph: Some(pb::GraphProto {
            node: vec![pb::NodeProto {
                input: vec!["x".into(), "w".into()],
                output: vec!["y".into()],
                op_type: "MatMul".into(),
                ..Default::default()
            }],
            name: "bench".into(),
            initializer: vec![pb::TensorProto {
                dims: vec![n as i64, n as i64],
                data_type: 1,
                name: "w".into(),
                raw_data: raw,
                ..Default::default()
            }],
            input: vec![value_info("x", &[1, n as i64])],
            output: vec![value_info("y", &[1, n as i64])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let npy = |v: &[f32]| {
        let t = tract_onnx::prelude::Tensor::from_shape(&[1, v.len()], v).expect("shape");
        NpyBytes(edge_agent::npy::to_bytes(&t).expect("npy"))
    };
    let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
    let validation = Validation {
        version: Validation::VERSION,
        inputs: vec![npy(&x)],
        expected: vec![npy(&y)],
        tolerance: 1e-3 * scale,
    };
    (model.encode_to_vec(), validation)
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

fn mb(bytes: f64) -> f64 {
    bytes / 1e6
}

/// What every run shares: the options, the broker and its PKI, the operator key, the model.
struct Bench {
    args: Args,
    pki: Pki,
    broker: Broker,
    key: SigningKey,
    model: Vec<u8>,
    validation: Validation,
    work: tempfile::TempDir,
}

async fn run(args: Args) -> Result<()> {
    let (model, validation) = generated_model(args.size_mb);
    let key = SigningKey::from_bytes(&[42; 32]);
    let work = tempfile::tempdir()?;
    let pki = Pki::generate(&work.path().join("pki"))?;
    let broker = Broker::start(&pki)?;
    let bench = Bench { args, pki, broker, key, model, validation, work };
    let Bench { args, pki, broker, model, validation, .. } = &bench;
    println!("# OTA benchmark");
    println!();
    println!(
        "model: generated ONNX MatMul, {} bytes (+ {} bytes of validation vector); broker: mosquitto, mutual TLS on loopback",
        model.len(),
        edge_proto::encode(&validation).len()
    );
    println!();
    println!("## One device");
    println!();
    println!("| what | chunk KiB | bytes | seconds | MB/s | install s |");
    println!("|---|---:|---:|---:|---:|---:|");
    for &kib in &args.chunk_kib {
        let (bytes, secs) = raw_publish(pki, broker, model.len(), kib).await?;
        println!(
            "| mosquitto QoS 1, TLS, publish to a counting subscriber | {kib} | {bytes} | {secs:.2} | {:.0} | - |",
            mb(bytes as f64) / secs
        );
        let r = one_device(&bench, kib, None).await?;
        println!(
            "| edge-agent deploy (chunks hashed, written, bitmap synced) | {kib} | {} | {:.2} | {:.0} | {:.2} |",
            r.bytes,
            r.transfer_s,
            mb(r.bytes as f64) / r.transfer_s,
            r.install_s
        );
    }
    // RSS during a transfer: paced, so that the device's progress reports are not stuck
    // behind megabytes of chunks in the broker-to-device stream, and the peak up to its
    // last report below 100 % is really the transfer's (at 100 % it starts installing,
    // which reads the whole model).
    println!();
    println!("| agent RSS, MiB: paced at {} MB/s, chunk KiB | before the deploy | peak during the transfer | after the install (the model loaded) |", args.rss_rate_mb);
    println!("|---|---:|---:|---:|");
    for &kib in &args.chunk_kib {
        let rate = Some(args.rss_rate_mb * 1_000_000);
        let r = one_device(&bench, kib, rate).await?;
        println!(
            "| {kib} | {:.1} | {:.1} | {:.1} |",
            r.rss_before as f64 / 1048576.0,
            r.peak_rss as f64 / 1048576.0,
            r.rss_after as f64 / 1048576.0
        );
    }
    if args.devices > 0 {
        println!();
        println!("## A fleet: {} devices in one process, group deploy", args.devices);
        println!();
        let raw = raw_fanout(args, pki, broker, model.len()).await?;
        let r = fleet(&bench).await?;
        println!("| what | devices | chunk KiB | bytes per device | chunks published (first pass + repairs) | seconds | of which acceptance window | aggregate MB/s |");
        println!("|---|---:|---:|---:|---:|---:|---:|---:|");
        println!(
            "| mosquitto QoS 1, TLS, one publish per chunk to counting subscribers | {} | {} | {} | - | {:.2} | - | {:.0} |",
            args.devices,
            args.fleet_chunk_kib,
            raw.0,
            raw.1,
            mb((raw.0 * args.devices) as f64) / raw.1
        );
        println!(
            "| edgectl group deploy to receivers using the agent's staging code, until all verified | {} | {} | {} | {} + {} | {:.2} | {:.1} | {:.0} |",
            r.devices,
            args.fleet_chunk_kib,
            r.bytes,
            r.first_pass,
            r.repaired,
            r.secs,
            r.accept_window,
            mb((r.bytes * r.devices as u64) as f64) / r.secs
        );
    }
    Ok(())
}

/// Publishes `total` bytes in `kib` KiB QoS 1 messages to a subscriber that counts them;
/// bytes and seconds until the subscriber has them all.
async fn raw_publish(pki: &Pki, broker: &Broker, total: usize, kib: u32) -> Result<(usize, f64)> {
    let chunk = kib as usize * 1024;
    let count = total.div_ceil(chunk);
    let sub_tls = pki.client_config("raw-sub")?;
    let mut sub_opts = mqtt_options(&unique_client_id("raw-sub"), broker.port(), sub_tls);
    sub_opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    let (sub, mut sub_ev) = AsyncClient::new(sub_opts, 64);
    sub.subscribe("edge/raw-sub/ota", QoS::AtLeastOnce).await?;
    loop {
        if let MqttEvent::Incoming(Packet::SubAck(_)) = sub_ev.poll().await? {
            break;
        }
    }
    let got = Arc::new(AtomicU64::new(0));
    let counter = got.clone();
    let receiver = tokio::spawn(async move {
        let mut n = 0;
        while n < count {
            match sub_ev.poll().await {
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    n += 1;
                    counter.fetch_add(p.payload.len() as u64, Ordering::Relaxed);
                }
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("subscriber: {e}")),
            }
        }
        Ok(Instant::now())
    });
    let (start, poller) = publish_raw(pki, broker, "edge/raw-sub/ota", chunk, count).await?;
    let end = tokio::time::timeout(Duration::from_secs(300), receiver).await.context("raw publish timed out")???;
    poller.abort();
    Ok((got.load(Ordering::Relaxed) as usize, (end - start).as_secs_f64()))
}

/// Publishes `count` messages of `chunk` bytes to `topic` as the operator, QoS 1, with a
/// window of 100 in flight. When it started, and the task polling its connection (abort it
/// once the receivers are done).
async fn publish_raw(
    pki: &Pki,
    broker: &Broker,
    topic: &str,
    chunk: usize,
    count: usize,
) -> Result<(Instant, tokio::task::JoinHandle<()>)> {
    let mut opts = mqtt_options(&unique_client_id("raw-pub"), broker.port(), pki.client_config("operator")?);
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts.set_inflight(100);
    let (op, mut op_ev) = AsyncClient::new(opts, 64);
    let poller = tokio::spawn(async move { while op_ev.poll().await.is_ok() {} });
    let payload = vec![0x5au8; chunk];
    let start = Instant::now();
    for _ in 0..count {
        op.publish(topic, QoS::AtLeastOnce, false, payload.clone()).await?;
    }
    Ok((start, poller))
}

/// `devices` subscribers (device certificates) on a group topic count what one publisher
/// sends them: `total` bytes in the fleet chunk size. Bytes per subscriber and seconds
/// until all have everything.
async fn raw_fanout(args: &Args, pki: &Pki, broker: &Broker, total: usize) -> Result<(usize, f64)> {
    let chunk = args.fleet_chunk_kib as usize * 1024;
    let count = total.div_ceil(chunk);
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.devices);
    let mut done = vec![];
    for i in 0..args.devices {
        let device = format!("raw-{i:03}");
        let mut opts = mqtt_options(&device, broker.port(), pki.client_config(&device)?);
        opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        let ready = ready_tx.clone();
        done.push(tokio::spawn(async move {
            let (client, mut ev) = AsyncClient::new(opts, 64);
            client.subscribe("edge/group/raw/ota", QoS::AtLeastOnce).await?;
            let (mut n, mut bytes) = (0, 0);
            while n < count {
                match ev.poll().await? {
                    MqttEvent::Incoming(Packet::SubAck(_)) => {
                        let _ = ready.send(()).await;
                    }
                    MqttEvent::Incoming(Packet::Publish(p)) => {
                        n += 1;
                        bytes += p.payload.len();
                    }
                    _ => {}
                }
            }
            anyhow::Ok((bytes, Instant::now()))
        }));
    }
    for _ in 0..args.devices {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .context("subscribers did not subscribe")?;
    }
    let (start, poller) = publish_raw(pki, broker, "edge/group/raw/ota", chunk, count).await?;
    let mut end = start;
    let mut bytes = 0;
    for d in done {
        let (b, t) = tokio::time::timeout(Duration::from_secs(600), d).await.context("fan-out timed out")???;
        bytes = b;
        end = end.max(t);
    }
    poller.abort();
    Ok((bytes, (end - start).as_secs_f64()))
}

struct OneDevice {
    bytes: u64,
    transfer_s: f64,
    install_s: f64,
    peak_rss: u64,
    rss_before: u64,
    rss_after: u64,
}

async fn one_device(bench: &Bench, kib: u32, rate: Option<u64>) -> Result<OneDevice> {
    let Bench { args, pki, broker, key, model, validation, work } = bench;
    let work = work.path();
    let device = format!("bench-{kib}-{}", rate.unwrap_or(0));
    let agent = AgentProcess::start(&args.agent, work, pki, broker, &device, key).await?;
    let pid = agent.pid;
    let result = async {
        let rss_before = rss_bytes(pid).unwrap_or(0);
        let peak = Arc::new(AtomicU64::new(0));
        let transferring = Arc::new(AtomicBool::new(true));
        let sampler = {
            let (peak, transferring) = (peak.clone(), transferring.clone());
            std::thread::spawn(move || {
                while transferring.load(Ordering::Relaxed) {
                    if let Some(r) = rss_bytes(pid) {
                        peak.fetch_max(r, Ordering::Relaxed);
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        let mut link = Link::connect(&operator_mqtt(pki, broker)?).await?;
        let mut req = DeployRequest::new(
            Target::Device(device.clone()),
            "bench",
            &format!("v{kib}"),
            ModelFormat::Onnx,
            model.to_vec(),
        );
        req.validation = Some(validation.clone());
        req.chunk_size = kib * 1024;
        // Fixed chunks: the figures compare chunk sizes (bench/delta.sh measures delta).
        req.delta = false;
        req.wait = true;
        req.rate = rate;
        req.timeout = Duration::from_secs(600);
        let start = Instant::now();
        let mut received_at = None;
        // The peak as of the device's last report from inside the transfer (Progress < 100):
        // once it reports 100 it is installing, which reads the whole model into memory.
        let mut transfer_peak = 0;
        let outcome = deploy(&mut link, &edgectl::keys::Signer::new(key.clone()), &req, |e| {
            if let Event::Ack(c) = e {
                match c.state {
                    AckState::Progress(100) if received_at.is_none() => {
                        received_at = Some(Instant::now());
                        transferring.store(false, Ordering::Relaxed);
                    }
                    AckState::Progress(_) if received_at.is_none() => {
                        transfer_peak = peak.load(Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
        .await?;
        let done = Instant::now();
        transferring.store(false, Ordering::Relaxed);
        let _ = sampler.join();
        link.close().await;
        if !outcome.all_ok() {
            bail!("deploy did not succeed: {outcome:?}");
        }
        let received_at = received_at.context("no Progress(100) seen")?;
        Ok(OneDevice {
            bytes: outcome.stats.artifact_bytes,
            transfer_s: (received_at - start).as_secs_f64(),
            install_s: (done - received_at).as_secs_f64(),
            peak_rss: transfer_peak,
            rss_before,
            rss_after: rss_bytes(pid).unwrap_or(0),
        })
    }
    .await;
    drop(agent);
    result
}

struct FleetResult {
    accept_window: f64,
    devices: usize,
    bytes: u64,
    first_pass: u32,
    repaired: u32,
    secs: f64,
}

/// One simulated device: its own connection; the agent's staging code for the transfer.
async fn receiver(
    tls: rustls::ClientConfig,
    port: u16,
    device: String,
    key: edge_proto::command::VerifyingKey,
    scratch: PathBuf,
    ready: tokio::sync::mpsc::Sender<()>,
) -> Result<()> {
    let mut opts = mqtt_options(&device, port, tls);
    opts.set_max_packet_size(MAX_PACKET, MAX_PACKET);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(opts, 64);
    let mut staging: Option<Staging> = None;
    let mut last_chunk = Instant::now();
    let mut last_need = Instant::now();
    let ack = |id: [u8; 16], state: AckState| {
        edge_proto::encode(&Ack {
            version: Ack::VERSION,
            command_id: id,
            device: device.clone(),
            state,
            ts: 0,
            reply: None,
        })
    };
    loop {
        let event = match tokio::time::timeout(Duration::from_millis(500), ev.poll()).await {
            Ok(e) => e?,
            Err(_) => {
                if let Some(s) = &staging {
                    if !s.is_complete() && last_chunk.elapsed() > STALL && last_need.elapsed() > STALL {
                        let need = Need {
                            version: Need::VERSION,
                            device: device.clone(),
                            transfer_id: s.manifest.transfer_id,
                            missing: s.missing(512),
                        };
                        client.try_publish(
                            format!("edge/{device}/need"),
                            QoS::AtMostOnce,
                            false,
                            edge_proto::encode(&need),
                        )?;
                        last_need = Instant::now();
                    }
                }
                continue;
            }
        };
        match event {
            MqttEvent::Incoming(Packet::ConnAck(_)) => {
                client.try_subscribe("edge/group/bench/cmd", QoS::AtLeastOnce)?;
                client.try_subscribe("edge/group/bench/ota", QoS::AtLeastOnce)?;
                client.try_subscribe(format!("edge/{device}/ota"), QoS::AtLeastOnce)?;
            }
            MqttEvent::Incoming(Packet::SubAck(s)) if s.pkid == 3 => {
                let _ = ready.send(()).await;
            }
            MqttEvent::Incoming(Packet::Publish(p)) if p.topic.ends_with("/cmd") => {
                let cmd = verify(&p.payload, &[key])?;
                let id = cmd.id;
                client.try_publish(
                    format!("edge/{device}/ack"),
                    QoS::AtLeastOnce,
                    false,
                    ack(id, AckState::Accepted),
                )?;
                if let Payload::DeployModel(_) = &cmd.payload {
                    staging = Some(Staging::create(&scratch.join(&device), &p.payload, cmd)?);
                    last_chunk = Instant::now();
                }
            }
            MqttEvent::Incoming(Packet::Publish(p)) => {
                let Some(s) = staging.as_mut() else { continue };
                let Ok(chunk) = decode_chunk(&p.payload) else { continue };
                if s.accept(&chunk).is_ok() {
                    last_chunk = Instant::now();
                }
                if s.is_complete() {
                    s.checkpoint()?;
                    s.read_model()?;
                    let id = s.command.id;
                    client.try_publish(
                        format!("edge/{device}/ack"),
                        QoS::AtLeastOnce,
                        false,
                        ack(id, AckState::Progress(100)),
                    )?;
                    if let Some(s) = staging.take() {
                        s.remove();
                    }
                }
            }
            _ => {}
        }
    }
}

async fn fleet(bench: &Bench) -> Result<FleetResult> {
    let Bench { args, pki, broker, key, model, validation, .. } = bench;
    let scratch = tempfile::Builder::new().prefix("ota-bench-").tempdir_in(&args.scratch)?;
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(args.devices);
    let mut tasks = vec![];
    for i in 0..args.devices {
        let device = format!("fleet-{i:03}");
        let tls = pki.client_config(&device)?;
        let (port, public, dir, ready) =
            (broker.port(), key.verifying_key(), scratch.path().to_path_buf(), ready_tx.clone());
        tasks.push(tokio::spawn(async move {
            if let Err(e) = receiver(tls, port, device.clone(), public, dir, ready).await {
                eprintln!("{device}: {e:#}");
            }
        }));
    }
    for _ in 0..args.devices {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv()).await.context("receivers did not subscribe")?;
    }
    let mut link = Link::connect(&operator_mqtt(pki, broker)?).await?;
    let mut req =
        DeployRequest::new(Target::Group("bench".into()), "bench", "fleet", ModelFormat::Onnx, model.to_vec());
    req.validation = Some(validation.clone());
    req.chunk_size = args.fleet_chunk_kib * 1024;
    // Fixed chunks: these receivers take every chunk and never say what they lack.
    req.delta = false;
    req.accept_wait = Duration::from_secs(3);
    req.timeout = Duration::from_secs(600);
    let mut published = None;
    let mut transfer_started = None;
    let outcome = deploy(&mut link, &edgectl::keys::Signer::new(key.clone()), &req, |e| match e {
        Event::Published { .. } => published = Some(Instant::now()),
        Event::TransferStarted { .. } => transfer_started = Some(Instant::now()),
        _ => {}
    })
    .await?;
    let done = Instant::now();
    link.close().await;
    for t in tasks {
        t.abort();
    }
    let ok = outcome.results.iter().filter(|r| r.outcome.is_ok()).count();
    if ok != args.devices {
        bail!("{ok} of {} devices got the model: {:?}", args.devices, outcome.results);
    }
    // The acceptance window (accept_wait) is part of the time: it is how long edgectl
    // waits to learn the group's members before the first pass.
    let start = published.context("never published")?;
    let accept_window = (transfer_started.context("transfer never started")? - start).as_secs_f64();
    Ok(FleetResult {
        accept_window,
        devices: args.devices,
        bytes: outcome.stats.artifact_bytes,
        first_pass: outcome.stats.first_pass_chunks,
        repaired: outcome.stats.repaired_chunks,
        secs: (done - start).as_secs_f64(),
    })
}
