//! The fleet benchmark (`edge-sim bench`, run by bench/fleet.sh): a real Mosquitto with
//! mutual TLS, a real PostgreSQL and Prometheus (the test harness, `edge-it`), the real
//! `edge-fleet` and `edgectl` binaries, and N simulated devices in this process.
//!
//! 1. **Telemetry**: every device samples at `interval` for `duration`; then sampling
//!    stops, the export is given time to drain, and Prometheus is asked how many samples of
//!    each device it holds (`count_over_time(edge_device_telemetry_seq[…])`), against how
//!    many each device published. edge-fleet's and the broker's CPU time and memory over
//!    the phase are read from /proc.
//! 2. **Deployment**: `late` devices go offline (their last will says so), `edgectl
//!    deploy --group` hands a signed model of `model_bytes` to edge-fleet, the late devices
//!    come back `late_after` later, and the bench waits until every device runs the new
//!    version, by its own count and by edge-fleet's (`GET /v1/deployments/{id}`).
//!
//! Telemetry keeps flowing during phase 2, as on a real fleet, but is not counted there.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use edge_it::{Broker, Pki, Postgres, Prometheus};
use edge_proto::command::SigningKey;
use tokio::sync::watch;

use crate::device::{Device, Profile};
use crate::fleet_process::{start_fleet, wait_until, FleetProcess};
use crate::procfs::{usage, Usage};
use crate::session::{self, now_ms, Link, Stats, Switch};

/// The group every simulated device is in, and the deployment's target.
pub const GROUP: &str = "bench";

/// Broker settings a fleet of this size needs (appended to deploy/mosquitto/mosquitto.conf,
/// whose values are in comments): what an operator raises for a thousand devices.
pub const BROKER_TUNING: &str = "\
# 1000 per client: the fleet service's session takes 1000 devices x 1 Hz, so one second
# of delay in the service would drop telemetry.
max_queued_messages 1000000
# 16 MiB per client.
max_queued_bytes 1073741824
# 20 unacked messages per client (Mosquitto's default): edge-fleet acks a telemetry
# message once Prometheus has it, so 20 in flight cap the export at 20 per write.
max_inflight_messages 1000
";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated devices.
    pub devices: usize,
    /// Seconds of telemetry in phase 1.
    pub duration: Duration,
    /// Telemetry interval.
    pub interval: Duration,
    /// Devices offline when the deployment is made.
    pub late: usize,
    /// How long after the deployment they come online.
    pub late_after: Duration,
    /// Size of the deployed model.
    pub model_bytes: usize,
    /// How long all devices have to converge.
    pub deploy_timeout: Duration,
    /// SQLite instead of PostgreSQL.
    pub sqlite: bool,
    /// The `edge-fleet` binary.
    pub fleet_bin: PathBuf,
    /// The `edgectl` binary.
    pub edgectl_bin: PathBuf,
    /// Keep the working directory (logs, configuration) at this path instead of a
    /// temporary one.
    pub keep: Option<PathBuf>,
    /// Skip phase 2.
    pub no_deploy: bool,
}

/// What phase 1 measured.
#[derive(Debug, Clone)]
pub struct TelemetryReport {
    /// Samples the devices published.
    pub expected: u64,
    /// Samples Prometheus holds.
    pub found: u64,
    /// Devices with fewer samples in Prometheus than they published, and by how many.
    pub short: BTreeMap<String, u64>,
    /// Wall time of the phase.
    pub secs: f64,
    /// edge-fleet's usage at the start and the end of the phase.
    pub fleet: (Usage, Usage),
    /// The broker's.
    pub broker: (Usage, Usage),
    /// This process's (the simulator).
    pub sim: (Usage, Usage),
    /// Publishes the devices' clients refused (queue full).
    pub refused: u64,
}

/// What phase 2 measured.
#[derive(Debug, Clone)]
pub struct DeployReport {
    /// Wall time of `edgectl deploy` (signing, upload, POST).
    pub edgectl_secs: f64,
    /// Seconds from the deploy until the on-time devices had all installed it.
    pub on_time_secs: Option<f64>,
    /// Seconds until every device had.
    pub all_secs: Option<f64>,
    /// Seconds until edge-fleet counted every device `succeeded`.
    pub fleet_secs: Option<f64>,
    /// Devices that installed it.
    pub installed: usize,
    /// Chunk bytes edge-fleet published.
    pub bytes_published: f64,
    /// Chunk bytes the devices took in (new chunks).
    pub bytes_taken: u64,
    /// Repair requests, duplicate and dropped chunks, failed deploys on the devices.
    pub needs: u64,
    /// Duplicate chunks.
    pub duplicates: u64,
    /// Dropped chunks.
    pub dropped: u64,
    /// Deploys that failed on a device.
    pub failed: u64,
    /// edge-fleet's usage at the deploy and at the end.
    pub fleet: (Usage, Usage),
    /// The broker's.
    pub broker: (Usage, Usage),
    /// edge-fleet's counts per state at the end.
    pub counts: String,
}

/// Runs the benchmark, printing as it goes; an error when a goal is missed.
pub fn run(opts: &Options) -> Result<(TelemetryReport, Option<DeployReport>)> {
    ensure!(opts.late <= opts.devices, "--late {} is more than --devices {}", opts.late, opts.devices);
    let tmp = tempfile::Builder::new().prefix("edge-sim-bench-").tempdir()?;
    let dir = match &opts.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => tmp.path().to_path_buf(),
    };
    let began = Instant::now();
    println!("edge-sim bench: {} devices, work directory {}", opts.devices, dir.display());
    let pki = Pki::generate(&dir.join("pki"))?;
    let broker = Broker::start_tuned(&pki, BROKER_TUNING)?;
    let broker_pid = broker.pid().context("the broker has no process")?;
    let postgres = if opts.sqlite { None } else { Some(Postgres::start()?) };
    let database = match &postgres {
        Some(pg) => pg.url(),
        None => format!("sqlite://{}", dir.join("fleet.db").display()),
    };
    let prometheus = Prometheus::start()?;
    println!(
        "  broker {} (pid {broker_pid}), database {}, prometheus {}",
        broker.url(),
        if opts.sqlite { "SQLite" } else { "PostgreSQL" },
        prometheus.remote_write_url()
    );
    let fleet = start_fleet(opts, &dir, &pki, &broker, &database, &prometheus)?;

    // Devices: one certificate each, CN = device id, as the real agents.
    let key = SigningKey::from_bytes(&random_seed()?);
    std::fs::write(dir.join("operator.key"), edge_proto::command::hex(&key.to_bytes()))?;
    let profile = Arc::new(Profile {
        groups: vec![GROUP.into()],
        trusted: vec![key.verifying_key()],
        agent_version: env!("CARGO_PKG_VERSION").into(),
        stall: Duration::from_secs(5),
    });
    let link = Arc::new(Link {
        host: "127.0.0.1".into(),
        port: broker.port(),
        prefix: "edge".into(),
        keep_alive: Duration::from_secs(30),
        interval: opts.interval,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let (telemetry_tx, telemetry_rx) = watch::channel(false);
    let mut switches = vec![];
    let mut stats = vec![];
    let certs = Instant::now();
    for i in 0..opts.devices {
        let id = format!("sim-{i:04}");
        let files = pki.client(&id)?;
        let tls = edge_mqtt::client_config(pki.ca_pem(), &files.cert, &files.key)?;
        let (online_tx, online_rx) = watch::channel(true);
        let s = Arc::new(Stats::default());
        let device = Device::new(&id, profile.clone(), now_ms());
        let switch = Switch { online: online_rx, telemetry: telemetry_rx.clone() };
        // Connections ramp up over a few seconds, as a fleet's do, not all in one instant.
        let delay = Duration::from_millis(5 * i as u64);
        let (link, s2) = (link.clone(), s.clone());
        runtime.spawn(async move {
            tokio::time::sleep(delay).await;
            session::run(device, tls, link, switch, s2).await
        });
        switches.push(online_tx);
        stats.push(s);
    }
    println!("  {} device certificates made in {:.1} s; connecting", opts.devices, certs.elapsed().as_secs_f64());
    wait_until("every device is connected and known online", Duration::from_secs(120), || {
        Ok(stats.iter().all(|s| s.connects.load(Ordering::Relaxed) > 0) && fleet.online()? == opts.devices)
    })
    .with_context(|| format!("edge-fleet log:\n{}", fleet.log_tail()))?;
    println!("  all {} devices online ({:.1} s after start)", opts.devices, began.elapsed().as_secs_f64());

    let telemetry = phase1(opts, &fleet, broker_pid, &prometheus, &telemetry_tx, &stats, began)?;
    let deploy = if opts.no_deploy {
        None
    } else {
        Some(phase2(opts, &dir, &pki, &broker, &fleet, broker_pid, &telemetry_tx, &switches, &stats)?)
    };
    drop(switches);
    runtime.shutdown_timeout(Duration::from_secs(2));
    drop(fleet);
    Ok((telemetry, deploy))
}

fn random_seed() -> Result<[u8; 32]> {
    let mut seed = [0u8; 32];
    for b in &mut seed {
        *b = fastrand::u8(..);
    }
    // fastrand is seeded from the OS at start; this key signs a throwaway bench deployment.
    Ok(seed)
}

fn phase1(
    opts: &Options,
    fleet: &FleetProcess,
    broker_pid: u32,
    prometheus: &Prometheus,
    telemetry: &watch::Sender<bool>,
    stats: &[Arc<Stats>],
    began: Instant,
) -> Result<TelemetryReport> {
    let gone = || anyhow::anyhow!("a process of the bench is gone");
    let start = (
        usage(fleet.pid()).ok_or_else(gone)?,
        usage(broker_pid).ok_or_else(gone)?,
        usage(std::process::id()).ok_or_else(gone)?,
    );
    let t0 = Instant::now();
    telemetry.send_replace(true);
    println!("phase 1: {} devices, one sample every {:?} for {:?}", opts.devices, opts.interval, opts.duration);
    std::thread::sleep(opts.duration);
    telemetry.send_replace(false);
    let secs = t0.elapsed().as_secs_f64();
    let end = (
        usage(fleet.pid()).ok_or_else(gone)?,
        usage(broker_pid).ok_or_else(gone)?,
        usage(std::process::id()).ok_or_else(gone)?,
    );
    let sent: Vec<u64> = stats.iter().map(|s| s.telemetry_sent.load(Ordering::Relaxed)).collect();
    let expected: u64 = sent.iter().sum();
    let refused: u64 = stats.iter().map(|s| s.publish_refused.load(Ordering::Relaxed)).sum();

    // Everything the devices sent since the bench began is phase 1's: sampling starts with it.
    let window = format!("{}s", began.elapsed().as_secs() + 120);
    let count = |by_device: bool| -> Result<BTreeMap<String, u64>> {
        let expr = if by_device {
            format!("sum by (device) (count_over_time(edge_device_telemetry_seq[{window}]))")
        } else {
            format!("sum(count_over_time(edge_device_telemetry_seq[{window}]))")
        };
        let data = prometheus.query(&expr)?;
        let mut out = BTreeMap::new();
        for r in data["result"].as_array().context("prometheus: no result")? {
            let device = r["metric"]["device"].as_str().unwrap_or("").to_string();
            let v: f64 = r["value"][1].as_str().context("prometheus: no value")?.parse()?;
            out.insert(device, v as u64);
        }
        Ok(out)
    };
    // Drain: the export writes within seconds; wait until Prometheus has them all, or
    // nothing moved for 30 s.
    let mut found = 0;
    let mut moved = Instant::now();
    let drain = Instant::now();
    loop {
        let now = count(false)?.values().sum::<u64>();
        if now != found {
            found = now;
            moved = Instant::now();
        }
        if found >= expected || moved.elapsed() > Duration::from_secs(30) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let per_device = count(true)?;
    let mut short = BTreeMap::new();
    for (i, n) in sent.iter().enumerate() {
        let id = format!("sim-{i:04}");
        let have = per_device.get(&id).copied().unwrap_or(0);
        if have < *n {
            short.insert(id, n - have);
        }
    }
    let report = TelemetryReport {
        expected,
        found,
        short,
        secs,
        fleet: (start.0, end.0),
        broker: (start.1, end.1),
        sim: (start.2, end.2),
        refused,
    };
    print_telemetry(&report, drain.elapsed(), fleet);
    // The inventory reads the same telemetry through its own session (agent version,
    // last_seen): a backlog there delays statuses, acks and repair requests behind it.
    let stored = fleet.ingested_telemetry();
    println!("  inventory: {stored} of {expected} telemetry messages stored when Prometheus had them all");
    let caught_up = Instant::now();
    wait_until("the inventory has stored every telemetry message", Duration::from_secs(1800), || {
        Ok(fleet.ingested_telemetry() >= expected)
    })?;
    println!("  inventory caught up {:.0} s later", caught_up.elapsed().as_secs_f64());
    Ok(report)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn cpu_line(name: &str, (a, b): &(Usage, Usage), secs: f64) -> String {
    let cpu = b.cpu_secs - a.cpu_secs;
    format!(
        "  {name:<10} CPU {cpu:7.1} s over {secs:.0} s = {:5.1} % of one core; RSS last {:6.1} MiB, peak {:6.1} MiB",
        100.0 * cpu / secs,
        mib(b.rss),
        mib(b.peak_rss)
    )
}

fn print_telemetry(r: &TelemetryReport, drain: Duration, fleet: &FleetProcess) {
    println!("phase 1 result (Prometheus read {:.0} s after sampling stopped):", drain.as_secs_f64());
    println!(
        "  samples    expected {:>9}   found {:>9}   missing {:>6}",
        r.expected,
        r.found,
        r.expected.saturating_sub(r.found)
    );
    if !r.short.is_empty() {
        let some: Vec<String> = r.short.iter().take(10).map(|(d, n)| format!("{d} -{n}")).collect();
        println!(
            "  devices short: {} ({}{})",
            r.short.len(),
            some.join(", "),
            if r.short.len() > 10 { ", …" } else { "" }
        );
    }
    if r.refused > 0 {
        println!("  publishes refused by the simulator's own client queues: {}", r.refused);
    }
    println!(
        "  edge-fleet export: written {} duplicate {} rejected {} write failures {}",
        fleet.metric("edge_fleet_export_messages_total{result=\"written\"}"),
        fleet.metric("edge_fleet_export_messages_total{result=\"duplicate\"}"),
        fleet.metric("edge_fleet_export_messages_total{result=\"rejected\"}"),
        fleet.metric("edge_fleet_export_write_failures_total"),
    );
    println!("{}", cpu_line("edge-fleet", &r.fleet, r.secs));
    println!("{}", cpu_line("mosquitto", &r.broker, r.secs));
    println!("{}", cpu_line("edge-sim", &r.sim, r.secs));
}

#[allow(clippy::too_many_arguments)]
fn phase2(
    opts: &Options,
    dir: &Path,
    pki: &Pki,
    broker: &Broker,
    fleet: &FleetProcess,
    broker_pid: u32,
    telemetry: &watch::Sender<bool>,
    switches: &[watch::Sender<bool>],
    stats: &[Arc<Stats>],
) -> Result<DeployReport> {
    telemetry.send_replace(true);
    let n = opts.devices;
    let on_time = n - opts.late;
    for s in &switches[on_time..] {
        s.send_replace(false);
    }
    wait_until("edge-fleet sees the late devices offline", Duration::from_secs(60), || Ok(fleet.online()? == on_time))?;
    let op = pki.client("operator")?;
    let ctl = dir.join("ctl.toml");
    std::fs::write(
        &ctl,
        format!(
            "signing_key = \"{}\"\n[mqtt]\nurl = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             [fleet]\nurl = \"http://{}\"\n",
            dir.join("operator.key").display(),
            broker.url(),
            pki.ca_pem().display(),
            op.cert.display(),
            op.key.display(),
            fleet.listen,
        ),
    )?;
    let model = dir.join("bench-model.onnx");
    let bytes: Vec<u8> = (0..opts.model_bytes).map(|_| fastrand::u8(..)).collect();
    std::fs::write(&model, &bytes)?;
    println!(
        "phase 2: a {:.1} MiB model to {n} devices in group {GROUP}, {} of them offline until {:?} after the deploy",
        mib(opts.model_bytes as u64),
        opts.late,
        opts.late_after
    );
    let before = (usage(fleet.pid()).context("edge-fleet is gone")?, usage(broker_pid).context("mosquitto is gone")?);
    let bytes_before = fleet.metric("edge_fleet_deployment_chunk_bytes_sent_total");
    let t0 = Instant::now();
    let t0_ms = now_ms();
    let out = Command::new(&opts.edgectl_bin)
        .arg("--config")
        .arg(&ctl)
        .arg("--json")
        .args(["deploy", "--model"])
        .arg(&model)
        .args(["--name", "det", "--version", "2", "--group", GROUP])
        .output()
        .with_context(|| format!("running {}", opts.edgectl_bin.display()))?;
    let edgectl_secs = t0.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "edgectl deploy failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stored: serde_json::Value = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("edgectl --json deploy printed: {}", String::from_utf8_lossy(&out.stdout)))?;
    let id = stored["id"].as_str().context("edgectl's answer has no id")?.to_string();
    println!(
        "  edgectl deploy returned in {edgectl_secs:.2} s: deployment {id}, {} member rows",
        stored["devices"].as_array().map_or(0, |a| a.len())
    );

    let installed_at = |range: std::ops::Range<usize>| -> Option<u64> {
        let times: Vec<u64> = stats[range].iter().map(|s| s.installed_ms.load(Ordering::Relaxed)).collect();
        (times.iter().all(|t| *t >= t0_ms)).then(|| times.into_iter().max().unwrap_or(t0_ms))
    };
    let mut late_on = false;
    let mut fleet_secs = None;
    let mut counts = String::new();
    let deadline = t0 + opts.deploy_timeout;
    let mut last_print = Instant::now();
    loop {
        if !late_on && t0.elapsed() >= opts.late_after {
            for s in &switches[on_time..] {
                s.send_replace(true);
            }
            late_on = true;
            println!("  {:.0} s: the {} late devices come online", t0.elapsed().as_secs_f64(), opts.late);
        }
        if fleet_secs.is_none() {
            let d: serde_json::Value = serde_json::from_str(&fleet.get(&format!("/v1/deployments/{id}"))?)?;
            counts = d["counts"].to_string();
            if d["counts"]["succeeded"].as_u64() == Some(n as u64) {
                fleet_secs = Some(t0.elapsed().as_secs_f64());
            }
        }
        let all = installed_at(0..n);
        if all.is_some() && fleet_secs.is_some() {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(10) {
            let done = stats.iter().filter(|s| s.installed_ms.load(Ordering::Relaxed) >= t0_ms).count();
            println!("  {:.0} s: {done}/{n} installed; edge-fleet {counts}", t0.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let after = (usage(fleet.pid()).context("edge-fleet is gone")?, usage(broker_pid).context("mosquitto is gone")?);
    let secs = |t: Option<u64>| t.map(|t| (t - t0_ms) as f64 / 1000.0);
    let sum = |f: fn(&Stats) -> u64| stats.iter().map(|s| f(s)).sum::<u64>();
    let report = DeployReport {
        edgectl_secs,
        on_time_secs: secs(installed_at(0..on_time)),
        all_secs: secs(installed_at(0..n)),
        fleet_secs,
        installed: stats.iter().filter(|s| s.installed_ms.load(Ordering::Relaxed) >= t0_ms).count(),
        bytes_published: fleet.metric("edge_fleet_deployment_chunk_bytes_sent_total") - bytes_before,
        bytes_taken: sum(|s| s.chunk_bytes.load(Ordering::Relaxed)),
        needs: sum(|s| s.needs.load(Ordering::Relaxed)),
        duplicates: sum(|s| s.duplicate_chunks.load(Ordering::Relaxed)),
        dropped: sum(|s| s.dropped_chunks.load(Ordering::Relaxed)),
        failed: sum(|s| s.deploys_failed.load(Ordering::Relaxed)),
        fleet: (before.0, after.0),
        broker: (before.1, after.1),
        counts,
    };
    print_deploy(&report, opts, t0.elapsed().as_secs_f64());
    Ok(report)
}

fn print_deploy(r: &DeployReport, opts: &Options, secs: f64) {
    let fmt = |t: Option<f64>| t.map_or("not converged".to_string(), |t| format!("{t:.1} s"));
    let n = opts.devices;
    println!("phase 2 result:");
    println!(
        "  converged  first {} (online at the deploy): {}   all {n}: {}   edge-fleet says all succeeded: {}",
        n - opts.late,
        fmt(r.on_time_secs),
        fmt(r.all_secs),
        fmt(r.fleet_secs)
    );
    println!("  installed {}/{n}, deploys failed on devices {}; edge-fleet counts {}", r.installed, r.failed, r.counts);
    println!(
        "  bytes      published by edge-fleet {:.1} MiB   taken by devices {:.1} MiB   ({:.2} x {n} x model)",
        r.bytes_published / 1048576.0,
        mib(r.bytes_taken),
        r.bytes_published / (n as f64 * opts.model_bytes as f64).max(1.0)
    );
    println!("  repair requests {}   duplicate chunks {}   dropped chunks {}", r.needs, r.duplicates, r.dropped);
    println!("{}", cpu_line("edge-fleet", &r.fleet, secs));
    println!("{}", cpu_line("mosquitto", &r.broker, secs));
}
