//! Telemetry to Prometheus end to end, with real parts: a real Mosquitto (the fleet's
//! configuration and ACL, mutual TLS), a real Prometheus with its remote-write receiver
//! (`edge_it::Prometheus`), `edge-fleet` as a real process on SQLite, and either scripted
//! devices speaking the real protocol (to choose each sample's seq and time) or a real
//! `edge-agent` process.
//!
//! What is read back is Prometheus's raw samples with their timestamps
//! (`edge_it::Prometheus::samples`), so "at its original time, exactly once" is checked
//! sample by sample on `edge_device_telemetry_seq`, whose value is the sample's seq.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{agent_exe, fleet_toml, free_addr, now_ms, replica_toml, Fleet, PATIENCE};
use edge_it::Prometheus;
use edge_proto::codec::Versioned;
use edge_proto::command::ModelStatus;
use edge_proto::status::{State, Status};
use edge_proto::telemetry::{Encoding, ModelLatency, ModelStats, Telemetry, LATENCY_BUCKETS};
use edge_proto::topics::Topics;
use rumqttc::{AsyncClient, Event, Packet, QoS};

struct Setup {
    base: common::Setup,
    prom: Prometheus,
}

fn setup() -> Setup {
    Setup { base: common::setup(), prom: Prometheus::start().unwrap() }
}

/// `edge-fleet run` on SQLite with remote write to the test Prometheus; killed on drop.
fn start_fleet(s: &Setup) -> Fleet {
    let listen = free_addr();
    let db = format!("sqlite://{}", s.base.dir.path().join("fleet.db").display());
    let config = fleet_toml(&s.base, &db, &listen);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("[prometheus]\nremote_write_url = \"{}\"\n", s.prom.remote_write_url()));
    std::fs::write(&config, text).unwrap();
    Fleet::start(&config, &listen)
}

/// Labels of a series read back.
type Labels = std::collections::BTreeMap<String, String>;

/// The (timestamp, seq) samples of `device`'s `edge_device_telemetry_seq` over all its
/// series, in time order, and each series' labels.
fn seq_samples(prom: &Prometheus, device: &str) -> (Vec<(i64, u64)>, Vec<Labels>) {
    let series = prom.samples(&format!("edge_device_telemetry_seq{{device=\"{device}\"}}"), "2h").unwrap();
    let mut samples: Vec<(i64, u64)> =
        series.iter().flat_map(|s| s.samples.iter().map(|(t, v)| (*t, *v as u64))).collect();
    samples.sort();
    (samples, series.into_iter().map(|s| s.labels).collect())
}

/// The labels of `device`'s one series (labels are the same for every sample written
/// once the inventory knows the device).
fn labels_of(prom: &Prometheus, device: &str) -> Labels {
    let (_, labels) = seq_samples(prom, device);
    assert_eq!(labels.len(), 1, "one series for {device}: {labels:#?}");
    labels.into_iter().next().unwrap()
}

/// Waits until `device` has at least `n` seq samples in Prometheus.
fn until_samples(
    fleet: &Fleet,
    prom: &Prometheus,
    device: &str,
    done: impl Fn(&[(i64, u64)]) -> bool,
) -> Vec<(i64, u64)> {
    let mut last = vec![];
    let end = Instant::now() + PATIENCE;
    loop {
        last = seq_samples(prom, device).0;
        if done(&last) {
            return last;
        }
        assert!(
            Instant::now() < end,
            "timed out waiting for {device}'s samples in Prometheus: {last:?}\nedge-fleet log:\n{}\nprometheus log:\n{}",
            fleet.log(),
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A sample of `device` with `seq` at `ts`, with `requests` answered by model `wake`, all
/// within 10 ms (the le=0.0128 bucket).
fn telemetry(device: &str, seq: u64, ts: u64, requests: u64) -> Vec<u8> {
    let bucket = LATENCY_BUCKETS.iter().position(|&b| b == 0.0128).unwrap();
    Telemetry {
        version: Telemetry::VERSION,
        device: device.into(),
        seq,
        ts,
        uptime_secs: 100 + seq,
        cpu: Default::default(),
        load: [0.5, 0.5, 0.5],
        mem: Default::default(),
        agent: edge_proto::telemetry::Agent { version: "0.1.0".into(), ..Default::default() },
        disk: edge_proto::telemetry::Disk { free_bytes: 1 << 30, total_bytes: 4 << 30 },
        temps: vec![edge_proto::telemetry::Temp { label: "soc".into(), celsius: 50.0 }],
        net: Default::default(),
        models: vec![ModelStats { name: "wake".into(), requests, ..Default::default() }],
        link: Default::default(),
        disk_full: false,
        cert_not_after: Some(1_900_000_000),
        latency: vec![ModelLatency {
            name: "wake".into(),
            buckets: (0..LATENCY_BUCKETS.len()).map(|i| if i >= bucket { requests } else { 0 }).collect(),
            count: requests,
            sum_secs: requests as f64 * 0.01,
        }],
        versions: vec![],
        tensors: vec![],
    }
    .encode(Encoding::Postcard)
}

/// A scripted device with its own certificate, its retained status naming its groups and
/// the active version of model `wake`.
struct Sim {
    id: String,
    topics: Topics,
    client: AsyncClient,
    poller: tokio::task::JoinHandle<()>,
}

impl Sim {
    async fn connect(s: &Setup, id: &str, groups: &[&str]) -> Sim {
        let topics = Topics::new("edge", id).unwrap();
        let opts = edge_it::mqtt_options(
            &edge_it::unique_client_id(id),
            s.base.broker.port(),
            s.base.pki.client_config(id).unwrap(),
        );
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) = eventloop.poll().await.unwrap() {
                break;
            }
        }
        let poller = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        let wake = ModelStatus {
            name: "wake".into(),
            active_version: Some("3".into()),
            installed_versions: vec!["3".into()],
            health: "ok".into(),
        };
        let status = edge_proto::encode(&Status {
            version: Status::VERSION,
            device: id.into(),
            state: State::Online,
            agent_version: "0.1.0".into(),
            models: vec!["wake".into()],
            uptime_secs: 1,
            ts: now_ms(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            model_states: vec![wake],
        });
        client.publish(topics.status(), QoS::AtLeastOnce, true, status).await.unwrap();
        Sim { id: id.into(), topics, client, poller }
    }

    async fn send(&self, seq: u64, ts: u64) {
        let payload = telemetry(&self.id, seq, ts, seq * 10);
        self.client.publish(self.topics.telemetry(), QoS::AtLeastOnce, false, payload).await.unwrap();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Redeliveries, late samples, a sample older than Prometheus accepts, and labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_is_in_prometheus_once_at_its_own_time_with_device_and_group() {
    let s = setup();
    let fleet = start_fleet(&s);
    let a = Sim::connect(&s, "dev-a", &["lab", "cams"]).await;
    let b = Sim::connect(&s, "dev-b", &["lab"]).await;
    let c = Sim::connect(&s, "dev-c", &[]).await;
    for d in ["dev-a", "dev-b", "dev-c"] {
        fleet.knows(d);
    }
    let now = now_ms();
    // dev-a: live samples, two of them delivered twice (at least once).
    let a_sent = [(1, now - 4000), (2, now - 3000), (3, now - 2000), (4, now - 1000)];
    for (seq, ts) in &a_sent[..2] {
        a.send(*seq, *ts).await;
    }
    // Prometheus holds recent samples before the rest comes: an empty TSDB would take any
    // time at all, even dev-c's wrong one below.
    until_samples(&fleet, &s.prom, "dev-a", |g| g.len() == 2);
    a.send(2, now - 3000).await;
    a.send(3, now - 2000).await;
    a.send(3, now - 2000).await;
    a.send(4, now - 1000).await;
    // dev-b: an outbox flushed late, samples from ten minutes ago, then one redelivered.
    let b_sent = [(10, now - 600_000), (11, now - 599_000), (12, now - 598_000), (13, now)];
    for (seq, ts) in b_sent {
        b.send(seq, ts).await;
    }
    b.send(11, now - 599_000).await;
    // dev-c: a board with its clock three hours behind, then right: Prometheus refuses the
    // first (older than its out-of-order window), the second must still go in.
    c.send(1, now - 3 * 3_600_000).await;
    c.send(2, now).await;

    let want = |sent: &[(u64, u64)]| sent.iter().map(|(seq, ts)| (*ts as i64, *seq)).collect::<Vec<_>>();
    let got_a = until_samples(&fleet, &s.prom, "dev-a", |g| g.len() >= 4);
    let got_b = until_samples(&fleet, &s.prom, "dev-b", |g| g.len() >= 4);
    let got_c = until_samples(&fleet, &s.prom, "dev-c", |g| !g.is_empty());
    fleet.until("every message is accounted for", || {
        fleet.metric("edge_fleet_export_messages_total{result=\"written\"}")
            + fleet.metric("edge_fleet_export_messages_total{result=\"duplicate\"}")
            + fleet.metric("edge_fleet_export_messages_total{result=\"rejected\"}")
            >= 13.0
    });
    assert_eq!(got_a, want(&a_sent));
    assert_eq!(got_b, want(&b_sent), "late samples at their original times");
    assert_eq!(got_c, [(now as i64, 2)], "the refused sample only is missing");
    assert_eq!(fleet.metric("edge_fleet_export_messages_total{result=\"written\"}"), 9.0);
    assert_eq!(fleet.metric("edge_fleet_export_messages_total{result=\"duplicate\"}"), 3.0);
    assert_eq!(fleet.metric("edge_fleet_export_messages_total{result=\"rejected\"}"), 1.0);
    assert!(fleet.log().contains("out_of_order_time_window"), "the refusal says what to do:\n{}", fleet.log());

    // Labels: device, the groups sorted and joined; none for a device without groups.
    assert_eq!(labels_of(&s.prom, "dev-a").get("group").map(String::as_str), Some("cams,lab"));
    assert_eq!(labels_of(&s.prom, "dev-b").get("group").map(String::as_str), Some("lab"));
    assert_eq!(labels_of(&s.prom, "dev-c").get("group"), None);
    // Model series carry the active version, and the histograms add up to a fleet p95:
    // every request took 10 ms, so it lies in the (6.4 ms, 12.8 ms] bucket.
    let req = s.prom.samples("edge_device_model_requests_total{device=\"dev-a\",model=\"wake\",version=\"3\"}", "2h");
    assert_eq!(req.unwrap()[0].samples.len(), 4);
    let p95 = s
        .prom
        .query(
            "histogram_quantile(0.95, sum by (model, version, le) \
             (increase(edge_device_model_latency_seconds_bucket{model=\"wake\"}[1h])))",
        )
        .unwrap();
    let p95: f64 = p95["result"][0]["value"][1].as_str().expect("a fleet p95").parse().unwrap();
    assert!(p95 > 0.0064 && p95 <= 0.0128, "fleet p95 {p95}");
}

/// Prometheus down: samples wait in the broker and the service, and are written once it is
/// back, none lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_down_for_a_while_loses_nothing() {
    let mut s = setup();
    let fleet = start_fleet(&s);
    let d = Sim::connect(&s, "dev-p", &["lab"]).await;
    fleet.knows("dev-p");
    let now = now_ms();
    d.send(1, now - 10_000).await;
    until_samples(&fleet, &s.prom, "dev-p", |g| g.len() == 1);
    s.prom.stop().unwrap();
    let sent: Vec<(i64, u64)> = (2..=8).map(|seq| ((now - 10_000 + seq * 1000) as i64, seq)).collect();
    for (ts, seq) in &sent {
        d.send(*seq, *ts as u64).await;
    }
    fleet.until("a write failed while Prometheus is down", || {
        fleet.metric("edge_fleet_export_write_failures_total") >= 2.0
    });
    s.prom.restart().unwrap();
    let got = until_samples(&fleet, &s.prom, "dev-p", |g| g.len() >= 8);
    let mut want = vec![((now - 10_000) as i64, 1)];
    want.extend(sent);
    assert_eq!(got, want);
    assert_eq!(fleet.metric("edge_fleet_export_messages_total{result=\"written\"}"), 8.0);
}

/// A real agent, sampling every second, through a 30 s broker outage: what it held in its
/// outbox reaches Prometheus at the times it was sampled, with no seq missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agents_outbox_reaches_prometheus_at_its_original_times_after_a_broker_outage() {
    let mut s = setup();
    let agent_bin = agent_exe();
    let fleet = start_fleet(&s);
    let files = s.base.pki.client("dev-r").unwrap();
    let config = s.base.dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"dev-r\"\nstate_dir = \"{}\"\ngroups = [\"cams\"]\n\
             [mqtt]\nurl = \"{}\"\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n\
             keep_alive_secs = 5\nnetwork_timeout_secs = 5\nreconnect_max_secs = 2\n\
             [telemetry]\ninterval_secs = 1\n[http]\nlisten = \"{}\"\n",
            s.base.dir.path().join("state-dev-r").display(),
            s.base.broker.url(),
            s.base.pki.ca_pem().display(),
            files.cert.display(),
            files.key.display(),
            free_addr(),
        ),
    )
    .unwrap();
    let agent_log = s.base.dir.path().join("agent.log");
    let mut agent = Command::new(agent_bin)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .unwrap();
    let before = until_samples(&fleet, &s.prom, "dev-r", |g| g.len() >= 2);
    let down = now_ms() as i64;
    s.base.broker.stop().unwrap();
    std::thread::sleep(Duration::from_secs(30));
    s.base.broker.restart().unwrap();
    let up = now_ms() as i64;
    let got = until_samples(&fleet, &s.prom, "dev-r", |g| g.last().is_some_and(|(t, _)| *t > up + 2000));
    let _ = agent.kill();
    let _ = agent.wait();
    let agent_log = std::fs::read_to_string(&agent_log).unwrap_or_default();
    let seqs: Vec<u64> = got.iter().map(|(_, seq)| *seq).collect();
    let first = before[0].1;
    let gaps: Vec<u64> = (first..=*seqs.last().unwrap()).filter(|n| !seqs.contains(n)).collect();
    assert!(gaps.is_empty(), "seqs missing in Prometheus: {gaps:?} of {seqs:?}\nagent log:\n{agent_log}");
    assert!(got.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1), "in time and seq order: {got:?}");
    // Sampled while the broker was down (so written after it came back) at their own times.
    let during = got.iter().filter(|(t, _)| *t > down + 1000 && *t < up - 1000).count();
    assert!(during >= 20, "only {during} samples from the 30 s outage: {got:?}\nagent log:\n{agent_log}");
    // The agent's first sample may be written before its first status reached the
    // inventory (another session), so without `group`; every later one has it.
    let (_, series) = seq_samples(&s.prom, "dev-r");
    let grouped = series.iter().find(|l| l.get("group").map(String::as_str) == Some("cams"));
    assert!(grouped.is_some() && series.len() <= 2, "{series:#?}");
    assert!(fleet.log().contains("telemetry export connected"), "{}", fleet.log());
}

/// Two replicas on one PostgreSQL share the telemetry (shared subscriptions hand each message
/// to one of them): one device's samples, split between them, are each written once, none
/// skipped as a duplicate; sent again, Prometheus still holds each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_split_a_devices_samples_and_write_each_once() {
    let s = setup();
    let pg = edge_it::Postgres::start().unwrap();
    let base = fleet_toml(&s.base, &pg.url(), &free_addr());
    let mut text = std::fs::read_to_string(&base).unwrap();
    text.push_str(&format!("[prometheus]\nremote_write_url = \"{}\"\n", s.prom.remote_write_url()));
    std::fs::write(&base, text).unwrap();
    let replicas: Vec<Fleet> = ["a", "b"]
        .iter()
        .map(|name| {
            let listen = free_addr();
            Fleet::start(&replica_toml(&base, name, &listen), &listen)
        })
        .collect();
    let d = Sim::connect(&s, "dev-s", &["lab"]).await;
    for r in &replicas {
        r.knows("dev-s");
    }
    let now = now_ms();
    let sent: Vec<(i64, u64)> = (1..=40).map(|seq| ((now - 60_000 + seq * 1000) as i64, seq)).collect();
    for (ts, seq) in &sent {
        d.send(*seq, *ts as u64).await;
    }
    let got = until_samples(&replicas[0], &s.prom, "dev-s", |g| g.len() >= 40);
    assert_eq!(got, sent);
    let written = |r: &Fleet| r.metric("edge_fleet_export_messages_total{result=\"written\"}");
    let duplicate = |r: &Fleet| r.metric("edge_fleet_export_messages_total{result=\"duplicate\"}");
    replicas[0].until("both replicas counted their writes", || written(&replicas[0]) + written(&replicas[1]) >= 40.0);
    let (wa, wb) = (written(&replicas[0]), written(&replicas[1]));
    assert!(wa > 0.0 && wb > 0.0, "each replica wrote its share: {wa} + {wb}");
    assert_eq!(wa + wb, 40.0, "no sample written twice");
    assert_eq!(duplicate(&replicas[0]) + duplicate(&replicas[1]), 0.0, "none skipped");

    // Delivered again (a device re-sending, a broker redelivering), to whichever replica:
    // skipped where the replica knows it was written, written again where its record is
    // older than the other's writes; either way Prometheus still holds each sample once.
    for (ts, seq) in sent.iter().rev().take(20) {
        d.send(*seq, *ts as u64).await;
    }
    let seen = || written(&replicas[0]) + written(&replicas[1]) + duplicate(&replicas[0]) + duplicate(&replicas[1]);
    replicas[0].until("the redeliveries were handled", || seen() >= 60.0);
    assert_eq!(seen(), 60.0);
    eprintln!(
        "redelivered: {} skipped, {} written again",
        duplicate(&replicas[0]) + duplicate(&replicas[1]),
        written(&replicas[0]) + written(&replicas[1]) - 40.0
    );
    assert_eq!(seq_samples(&s.prom, "dev-s").0, sent);
}
