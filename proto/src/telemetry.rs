//! Telemetry: one sample of the box, the agent, its models and its link.
//!
//! Two encodings on the wire, told apart by the first byte ([`decode`]):
//! - postcard (the default): version first, then the fields in order. Version 2 appended
//!   `disk_full` and `cert_not_after` to version 1; version 3 appended `latency`, each
//!   model's latency histogram with the fixed bounds [`LATENCY_BUCKETS`]; version 4
//!   appended `versions`, the same figures per model version, which staged rollouts compare,
//!   and `tensors`, what each version's tensors held and their drift.
//!   Older samples still decode, with the later fields unknown (`false`, `None`, empty
//!   lists).
//! - JSON (`[telemetry] encoding = "json"`), for Telegraf, Node-RED and broker rule
//!   engines: one object whose field names are the Rust field names, the schema in
//!   `docs/telemetry.schema.json`. Scripts can rely on `device`, `seq`, `ts`,
//!   `cpu.total_pct`, `mem.used_bytes` and `agent.rss_bytes`; `edgectl watch --json` prints
//!   the same object.

use serde::{Deserialize, Serialize};

use crate::codec::{ProtoError, Versioned, MAX_MESSAGE_BYTES};

/// One telemetry message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// Schema version, [`Telemetry::VERSION`].
    pub version: u16,
    /// Device id.
    pub device: String,
    /// Sequence number: increases by one per sample, across restarts.
    pub seq: u64,
    /// Sample time, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Seconds since the box booted.
    pub uptime_secs: u64,
    /// CPU usage.
    pub cpu: Cpu,
    /// Load average over 1, 5 and 15 minutes.
    pub load: [f32; 3],
    /// Memory.
    pub mem: Mem,
    /// The agent process itself.
    pub agent: Agent,
    /// Space where the agent keeps its state.
    pub disk: Disk,
    /// Temperatures the board reports.
    pub temps: Vec<Temp>,
    /// Network bytes over all interfaces since boot.
    pub net: Net,
    /// Inference statistics per model.
    pub models: Vec<ModelStats>,
    /// The MQTT link.
    pub link: Link,
    /// The state directory's file system is full (little free, the agent's reserve drawn
    /// on, or a write refused for lack of space). Since version 2.
    pub disk_full: bool,
    /// End of validity of the device's MQTT certificate, seconds since the Unix epoch;
    /// `None` where it could not be read. Since version 2.
    pub cert_not_after: Option<i64>,
    /// Each model's latency histogram since the agent started (cumulative, with the
    /// bounds of [`LATENCY_BUCKETS`]): unlike the percentiles in `models`, histograms of
    /// several devices add up to a fleet-wide distribution. Since version 3.
    #[serde(default)]
    pub latency: Vec<ModelLatency>,
    /// Requests, failures and latencies per model version served since the agent started
    /// (the active one and the last few before it): what a staged rollout compares, old
    /// version against new on the same device. Since version 4.
    #[serde(default)]
    pub versions: Vec<VersionStats>,
    /// What each model version's input and output tensors held since it was activated (at
    /// most [`MAX_TENSORS`] of them), with its drift score where the version has a reference
    /// profile. Since version 4.
    #[serde(default)]
    pub tensors: Vec<TensorSummary>,
}

/// Most tensor summaries one sample carries (the first by model, version and tensor).
pub const MAX_TENSORS: usize = 64;

/// The running figures of one tensor of one model version, as the agent's
/// `edge_agent_tensor_*` series show them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TensorSummary {
    /// Model name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// `input:NAME` or `output:NAME`.
    pub tensor: String,
    /// Elements seen.
    pub values: u64,
    /// Of which NaN.
    pub nan: u64,
    /// Of which infinite.
    pub inf: u64,
    /// Mean, standard deviation, smallest and largest of the finite elements.
    pub mean: f64,
    /// Standard deviation.
    pub std: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Population stability index against the version's reference profile over the recent
    /// window; `None` without a profile or before enough values.
    pub drift_psi: Option<f64>,
}

/// What one version of a model did since the agent started, cumulative. A version that is
/// active again after a rollback goes on from its own figures.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionStats {
    /// Model name.
    pub name: String,
    /// Version label.
    pub version: String,
    /// Whether it serves requests now.
    pub active: bool,
    /// Requests that reached it and ended, whatever their outcome.
    pub requests: u64,
    /// Of which the model's failures: errors, timeouts, a full queue, requests the version it
    /// replaced accepted (not the callers' bad requests).
    pub failures: u64,
    /// Latency histogram of the requests it answered or let time out (a timeout counts at its
    /// deadline): cumulative counts with the bounds of [`LATENCY_BUCKETS`], as
    /// [`ModelLatency::buckets`].
    pub buckets: Vec<u64>,
    /// How many requests the histogram holds (the `+Inf` bucket).
    pub timed: u64,
    /// Sum of their latencies, seconds.
    pub sum_secs: f64,
    /// Whether it runs as a shadow of the active version now (a shadow deploy): its
    /// requests are copies of sampled live requests, its answers never returned.
    pub shadow: bool,
    /// As a shadow: requests whose outputs were compared with the active version's.
    pub compared: u64,
    /// Of which agreed: the same arg-max for outputs of scores, every element within
    /// 0.1 % of the active output's largest magnitude (at least 0.001) for the others.
    pub agreed: u64,
    /// As a shadow: the largest absolute difference seen from the active version's outputs
    /// (the largest finite number when their shapes differed).
    pub max_abs_diff: f64,
}

impl VersionStats {
    /// The `q` quantile (0-1) of the latency histogram, in seconds, interpolated inside its
    /// bucket as Prometheus' `histogram_quantile` does ([`quantile`]). `None` without
    /// requests; past the top bound, infinity.
    pub fn latency_quantile(&self, q: f64) -> Option<f64> {
        quantile(&self.buckets, self.timed, q)
    }

    /// Adds `other`'s figures to these (several devices pooled): counts and histograms sum.
    /// A histogram of another length than [`LATENCY_BUCKETS`] is left out, its counts kept.
    pub fn merge(&mut self, other: &VersionStats) {
        self.requests += other.requests;
        self.failures += other.failures;
        if other.buckets.len() == LATENCY_BUCKETS.len() {
            self.buckets.resize(LATENCY_BUCKETS.len(), 0);
            for (total, n) in self.buckets.iter_mut().zip(&other.buckets) {
                *total += n;
            }
            self.timed += other.timed;
            self.sum_secs += other.sum_secs;
        }
        self.shadow |= other.shadow;
        self.compared += other.compared;
        self.agreed += other.agreed;
        self.max_abs_diff = self.max_abs_diff.max(other.max_abs_diff);
    }

    /// Agreed over compared; `None` before any comparison.
    pub fn agreement(&self) -> Option<f64> {
        (self.compared > 0).then(|| self.agreed as f64 / self.compared as f64)
    }
}

/// The `q` quantile of a cumulative histogram with the bounds [`LATENCY_BUCKETS`] and `count`
/// observations, interpolated linearly inside the bucket holding it (as Prometheus'
/// `histogram_quantile`; the first bucket starts at 0); infinity past the last bound; `None`
/// for an empty one or one of another length.
pub fn quantile(buckets: &[u64], count: u64, q: f64) -> Option<f64> {
    if count == 0 || buckets.len() != LATENCY_BUCKETS.len() {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * count as f64;
    let Some(i) = buckets.iter().position(|&n| n as f64 >= rank) else { return Some(f64::INFINITY) };
    let (below, lower) = if i == 0 { (0, 0.0) } else { (buckets[i - 1], LATENCY_BUCKETS[i - 1]) };
    let inside = (buckets[i] - below) as f64;
    if inside == 0.0 {
        return Some(LATENCY_BUCKETS[i]);
    }
    Some(lower + (LATENCY_BUCKETS[i] - lower) * (rank - below as f64) / inside)
}

/// Upper bounds, in seconds, of the latency histogram buckets in telemetry (and of the
/// agent's `edge_agent_inference_duration_seconds` on `/metrics`): 50 µs doubling to
/// about 3.3 s, wake words at the low end, vision models at the top. Fixed: a change is a
/// new telemetry version, since histograms with other bounds cannot be added together.
pub const LATENCY_BUCKETS: [f64; 17] = [
    0.00005, 0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128, 0.0256, 0.0512, 0.1024, 0.2048, 0.4096,
    0.8192, 1.6384, 3.2768,
];

/// The latency histogram of one model, a Prometheus classic histogram in one message.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelLatency {
    /// Model name, as in [`ModelStats::name`].
    pub name: String,
    /// Cumulative counts: `buckets[i]` requests took at most `LATENCY_BUCKETS[i]` seconds.
    /// As long as [`LATENCY_BUCKETS`]; a receiver ignores a histogram of another length.
    pub buckets: Vec<u64>,
    /// Every request timed (the `+Inf` bucket).
    pub count: u64,
    /// Sum of their latencies, seconds.
    pub sum_secs: f64,
}

impl Versioned for Telemetry {
    const VERSION: u16 = 4;
    fn version(&self) -> u16 {
        self.version
    }
}

/// Version 1: version 2 without its last two fields. Read, never written.
#[derive(Deserialize)]
struct TelemetryV1 {
    version: u16,
    device: String,
    seq: u64,
    ts: u64,
    uptime_secs: u64,
    cpu: Cpu,
    load: [f32; 3],
    mem: Mem,
    agent: Agent,
    disk: Disk,
    temps: Vec<Temp>,
    net: Net,
    models: Vec<ModelStats>,
    link: Link,
}

impl Versioned for TelemetryV1 {
    const VERSION: u16 = 1;
    fn version(&self) -> u16 {
        self.version
    }
}

impl From<TelemetryV1> for Telemetry {
    fn from(v: TelemetryV1) -> Telemetry {
        Telemetry {
            version: v.version,
            device: v.device,
            seq: v.seq,
            ts: v.ts,
            uptime_secs: v.uptime_secs,
            cpu: v.cpu,
            load: v.load,
            mem: v.mem,
            agent: v.agent,
            disk: v.disk,
            temps: v.temps,
            net: v.net,
            models: v.models,
            link: v.link,
            disk_full: false,
            cert_not_after: None,
            latency: Vec::new(),
            versions: Vec::new(),
            tensors: Vec::new(),
        }
    }
}

/// Version 2: version 1 and `disk_full`, `cert_not_after`; version 3 without `latency`.
/// Read, never written.
#[derive(Deserialize)]
struct TelemetryV2 {
    v1: TelemetryV1,
    disk_full: bool,
    cert_not_after: Option<i64>,
}

impl Versioned for TelemetryV2 {
    const VERSION: u16 = 2;
    fn version(&self) -> u16 {
        self.v1.version
    }
}

impl From<TelemetryV2> for Telemetry {
    fn from(v: TelemetryV2) -> Telemetry {
        Telemetry { disk_full: v.disk_full, cert_not_after: v.cert_not_after, ..Telemetry::from(v.v1) }
    }
}

/// Version 3: version 2 and `latency`; version 4 without `versions`. Read, never written.
#[derive(Deserialize)]
struct TelemetryV3 {
    v2: TelemetryV2,
    latency: Vec<ModelLatency>,
}

impl Versioned for TelemetryV3 {
    const VERSION: u16 = 3;
    fn version(&self) -> u16 {
        self.v2.v1.version
    }
}

impl From<TelemetryV3> for Telemetry {
    fn from(v: TelemetryV3) -> Telemetry {
        Telemetry { latency: v.latency, ..Telemetry::from(v.v2) }
    }
}

/// How a device encodes its telemetry (`[telemetry] encoding`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// postcard: compact, what the fleet tools read by default.
    #[default]
    Postcard,
    /// JSON, for tools that cannot read postcard.
    Json,
}

impl Telemetry {
    /// The sample in `encoding`.
    pub fn encode(&self, encoding: Encoding) -> Vec<u8> {
        match encoding {
            Encoding::Postcard => crate::codec::encode(self),
            Encoding::Json => serde_json::to_vec(self).expect("telemetry serializes to JSON"),
        }
    }
}

/// Decodes a sample in either encoding and any version this build reads (1 to 4): a JSON
/// object starts with `{`, which no postcard sample does (its first byte is the version).
pub fn decode(bytes: &[u8]) -> Result<Telemetry, ProtoError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ProtoError::TooLarge(bytes.len()));
    }
    if bytes.first() == Some(&b'{') {
        let t: Telemetry = serde_json::from_slice(bytes).map_err(|e| ProtoError::Malformed(e.to_string()))?;
        if !(TelemetryV1::VERSION..=Telemetry::VERSION).contains(&t.version) {
            return Err(ProtoError::UnknownVersion { found: t.version, expected: Telemetry::VERSION });
        }
        return Ok(t);
    }
    match crate::codec::decode::<Telemetry>(bytes) {
        Err(ProtoError::UnknownVersion { found: 1, .. }) => {
            crate::codec::decode::<TelemetryV1>(bytes).map(Telemetry::from)
        }
        Err(ProtoError::UnknownVersion { found: 2, .. }) => {
            crate::codec::decode::<TelemetryV2>(bytes).map(Telemetry::from)
        }
        Err(ProtoError::UnknownVersion { found: 3, .. }) => {
            crate::codec::decode::<TelemetryV3>(bytes).map(Telemetry::from)
        }
        other => other,
    }
}

/// CPU usage in percent of one core's capacity per core, and overall.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Cpu {
    /// All cores, 0-100.
    pub total_pct: f32,
    /// Each core, 0-100.
    pub per_core_pct: Vec<f32>,
}

/// Memory in bytes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mem {
    /// Installed.
    pub total_bytes: u64,
    /// In use.
    pub used_bytes: u64,
    /// Available to new allocations without swapping.
    pub available_bytes: u64,
    /// Swap size.
    pub swap_total_bytes: u64,
    /// Swap in use.
    pub swap_used_bytes: u64,
}

/// The agent process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    /// Agent version.
    pub version: String,
    /// Resident set size.
    pub rss_bytes: u64,
    /// CPU usage in percent of one core.
    pub cpu_pct: f32,
    /// Seconds since the agent started.
    pub uptime_secs: u64,
}

/// Free and total space of the filesystem holding `state_dir`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Disk {
    /// Free bytes.
    pub free_bytes: u64,
    /// Total bytes.
    pub total_bytes: u64,
}

/// One temperature sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Temp {
    /// Sensor label.
    pub label: String,
    /// Degrees Celsius.
    pub celsius: f32,
}

/// Network totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Net {
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
}

/// Inference statistics of one model since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelStats {
    /// Model name.
    pub name: String,
    /// Requests served.
    pub requests: u64,
    /// Requests that failed.
    pub errors: u64,
    /// Requests running now.
    pub in_flight: u32,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f32,
    /// 95th percentile.
    pub p95_ms: f32,
    /// 99th percentile.
    pub p99_ms: f32,
}

/// The MQTT link since the agent started.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Link {
    /// Reconnections after the first connection.
    pub reconnects: u64,
    /// Messages waiting in the outbox.
    pub queued: u64,
    /// Messages dropped from a full or expired outbox.
    pub dropped: u64,
    /// Payload bytes published.
    pub bytes_sent: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode, encode};

    fn sample() -> Telemetry {
        Telemetry {
            version: Telemetry::VERSION,
            device: "dev-1".into(),
            seq: 42,
            ts: 1_700_000_000_000,
            uptime_secs: 100,
            cpu: Cpu { total_pct: 12.5, per_core_pct: vec![10.0, 15.0] },
            load: [0.1, 0.2, 0.3],
            mem: Mem { total_bytes: 1 << 30, used_bytes: 1 << 29, ..Default::default() },
            agent: Agent { version: "0.1.0".into(), rss_bytes: 5 << 20, cpu_pct: 0.1, uptime_secs: 10 },
            disk: Disk::default(),
            temps: vec![Temp { label: "cpu".into(), celsius: 45.0 }],
            net: Net::default(),
            models: vec![ModelStats { name: "wake".into(), requests: 3, ..Default::default() }],
            link: Link::default(),
            disk_full: true,
            cert_not_after: Some(1_800_000_000),
            latency: vec![ModelLatency {
                name: "wake".into(),
                buckets: LATENCY_BUCKETS.iter().enumerate().map(|(i, _)| (i as u64).min(3)).collect(),
                count: 3,
                sum_secs: 0.0125,
            }],
            versions: vec![VersionStats {
                name: "wake".into(),
                version: "2".into(),
                active: true,
                requests: 3,
                failures: 1,
                buckets: LATENCY_BUCKETS.iter().enumerate().map(|(i, _)| (i as u64).min(2)).collect(),
                timed: 2,
                sum_secs: 0.004,
                shadow: false,
                compared: 0,
                agreed: 0,
                max_abs_diff: 0.0,
            }],
            tensors: vec![TensorSummary {
                name: "wake".into(),
                version: "2".into(),
                tensor: "input:audio".into(),
                values: 120,
                mean: 0.5,
                std: 0.1,
                min: 0.0,
                max: 1.0,
                drift_psi: Some(0.02),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn a_version_3_sample_still_decodes_without_version_figures() {
        let mut t = sample();
        t.version = 3;
        t.versions.clear();
        t.tensors.clear();
        let mut bytes = encode(&t);
        assert_eq!(bytes.pop(), Some(0), "an empty list is one 0 byte");
        assert_eq!(bytes.pop(), Some(0), "an empty list is one 0 byte");
        assert_eq!(super::decode(&bytes).unwrap(), t);
        assert!(matches!(decode::<Telemetry>(&bytes), Err(ProtoError::UnknownVersion { found: 3, .. })));
    }

    #[test]
    fn quantiles_are_interpolated_inside_the_bucket_they_fall_in() {
        let mut buckets = vec![0u64; LATENCY_BUCKETS.len()];
        // 90 requests in (0.4, 0.8] ms, 10 more in (6.4, 12.8] ms.
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = if i < 4 {
                0
            } else if i < 8 {
                90
            } else {
                100
            };
        }
        let close = |a: Option<f64>, b: f64| (a.unwrap() - b).abs() < 1e-9;
        // The 50th of the 90 in (0.4, 0.8] ms: 0.4 + 0.4 * 50/90.
        assert!(close(quantile(&buckets, 100, 0.5), 0.0004 + 0.0004 * 50.0 / 90.0));
        assert!(close(quantile(&buckets, 100, 0.90), 0.0008));
        // The 5th of the 10 in (6.4, 12.8] ms.
        assert!(close(quantile(&buckets, 100, 0.95), 0.0064 + 0.0064 * 0.5));
        // Past the top bound: infinity; empty or of another length: nothing.
        assert_eq!(quantile(&buckets, 120, 0.99), Some(f64::INFINITY));
        assert_eq!(quantile(&buckets, 0, 0.5), None);
        assert_eq!(quantile(&buckets[1..], 100, 0.5), None);
    }

    #[test]
    fn round_trips_through_postcard_and_json() {
        let t = sample();
        assert_eq!(decode::<Telemetry>(&encode(&t)).unwrap(), t);
        assert_eq!(super::decode(&t.encode(Encoding::Postcard)).unwrap(), t);
        assert_eq!(super::decode(&t.encode(Encoding::Json)).unwrap(), t);
    }

    #[test]
    fn a_version_2_sample_still_decodes_without_histograms() {
        // Version 2 is version 4 without `latency` and `versions`: cut them off the encoding.
        let mut t = sample();
        t.version = 2;
        t.latency.clear();
        t.versions.clear();
        t.tensors.clear();
        let mut bytes = encode(&t);
        assert_eq!(bytes.pop(), Some(0), "an empty list is one 0 byte");
        assert_eq!(bytes.pop(), Some(0), "an empty list is one 0 byte");
        assert_eq!(bytes.pop(), Some(0), "an empty list is one 0 byte");
        assert_eq!(super::decode(&bytes).unwrap(), t);
        assert!(matches!(decode::<Telemetry>(&bytes), Err(ProtoError::UnknownVersion { found: 2, .. })));
        // The same in JSON: a version 2 object has no `latency` key.
        let mut v = serde_json::to_value(&t).unwrap();
        v.as_object_mut().unwrap().remove("latency");
        v.as_object_mut().unwrap().remove("versions");
        v.as_object_mut().unwrap().remove("tensors");
        assert_eq!(super::decode(&serde_json::to_vec(&v).unwrap()).unwrap(), t);
    }

    #[test]
    fn a_version_1_sample_still_decodes_with_the_new_fields_unknown() {
        // Version 1 is version 4 without the last four fields: cut them off the encoding.
        let mut t = sample();
        t.version = 1;
        t.disk_full = false;
        t.cert_not_after = None;
        t.latency.clear();
        t.versions.clear();
        t.tensors.clear();
        let mut bytes = encode(&t);
        assert_eq!(bytes.pop(), Some(0), "an empty list is one 0 byte");
        assert_eq!(bytes.pop(), Some(0), "an empty list is one 0 byte");
        assert_eq!(bytes.pop(), Some(0), "an empty list is one 0 byte");
        assert_eq!(bytes.pop(), Some(0), "None is one 0 byte");
        assert_eq!(bytes.pop(), Some(0), "false is one 0 byte");
        assert_eq!(super::decode(&bytes).unwrap(), t);
        // And a version 4 decoder alone refuses it as an older version, not as garbage.
        assert!(matches!(decode::<Telemetry>(&bytes), Err(ProtoError::UnknownVersion { found: 1, .. })));
    }

    #[test]
    fn json_samples_of_unknown_versions_or_shapes_are_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["version"] = 5.into();
        let bytes = serde_json::to_vec(&v).unwrap();
        assert!(matches!(super::decode(&bytes), Err(ProtoError::UnknownVersion { found: 5, .. })));
        assert!(matches!(super::decode(b"{\"device\": 1}"), Err(ProtoError::Malformed(_))));
        let mut big = b"{".to_vec();
        big.resize(MAX_MESSAGE_BYTES + 1, b' ');
        assert!(matches!(super::decode(&big), Err(ProtoError::TooLarge(_))));
    }

    #[test]
    fn refuses_unknown_versions_oversized_and_truncated_payloads() {
        let mut t = sample();
        t.version = 9;
        assert!(matches!(decode::<Telemetry>(&encode(&t)), Err(ProtoError::UnknownVersion { found: 9, .. })));
        assert!(matches!(decode::<Telemetry>(&vec![1u8; MAX_MESSAGE_BYTES + 1]), Err(ProtoError::TooLarge(_))));
        let bytes = encode(&sample());
        assert!(matches!(decode::<Telemetry>(&bytes[..bytes.len() / 2]), Err(ProtoError::Malformed(_))));
    }

    #[test]
    fn json_has_the_fields_scripts_rely_on() {
        let v = serde_json::to_value(sample()).unwrap();
        assert_eq!(v["device"], "dev-1");
        assert_eq!(v["seq"], 42);
        assert!(v["ts"].is_u64());
        assert_eq!(v["cpu"]["total_pct"], 12.5);
        assert_eq!(v["mem"]["used_bytes"], 1u64 << 29);
        assert_eq!(v["agent"]["rss_bytes"], 5u64 << 20);
    }
}
