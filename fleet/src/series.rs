//! What one telemetry sample becomes in Prometheus: a series for each number it carries,
//! every one at the sample's own time (`ts`), named `edge_device_*`. Pure: no I/O.
//!
//! Labels: `device`; `group`, the device's groups in the inventory, sorted and joined with
//! `,` (absent when it has none); for per-model series `model` and `version` (the active
//! version in the inventory, absent when unknown); `sensor` for temperatures, `core` for
//! per-core CPU, `le` for latency buckets.
//!
//! Why one `group` label with the groups joined, rather than one series per group: each
//! device's sample is then written once, so `sum()` and `count()` over the fleet count a
//! device once whatever its groups; selecting a group is a regex,
//! `group=~"(.*,)?cams(,.*)?"`. One series per group would count a device in two groups
//! twice in every fleet-wide sum.
//!
//! Per-model latency percentiles (`p50_ms`…) are not exported: percentiles of several
//! devices cannot be combined. The histograms (telemetry version 3) are, as
//! `edge_device_model_latency_seconds_{bucket,count,sum}`.
//!
//! Telemetry version 4 adds, with the version as the figures name it:
//! `edge_device_model_version_*` (requests, failures, latency histogram, and a shadow's
//! compared and agreed requests: versions side by side across the fleet) and
//! `edge_device_tensor_*{tensor}` (what each version's inputs and outputs held, and their
//! drift against the version's reference profile).

use std::collections::HashMap;

use edge_proto::telemetry::{Telemetry, LATENCY_BUCKETS};

use crate::remote_write::{Sample, Series};

/// Every metric family written, for the documentation and the dashboard checks.
pub const FAMILIES: &[&str] = &[
    "edge_device_telemetry_seq",
    "edge_device_uptime_seconds",
    "edge_device_cpu_usage_percent",
    "edge_device_cpu_core_usage_percent",
    "edge_device_load1",
    "edge_device_load5",
    "edge_device_load15",
    "edge_device_memory_total_bytes",
    "edge_device_memory_used_bytes",
    "edge_device_memory_available_bytes",
    "edge_device_swap_total_bytes",
    "edge_device_swap_used_bytes",
    "edge_device_disk_free_bytes",
    "edge_device_disk_total_bytes",
    "edge_device_disk_full",
    "edge_device_temperature_celsius",
    "edge_device_network_receive_bytes_total",
    "edge_device_network_transmit_bytes_total",
    "edge_device_agent_info",
    "edge_device_agent_rss_bytes",
    "edge_device_agent_cpu_usage_percent",
    "edge_device_agent_uptime_seconds",
    "edge_device_link_reconnects_total",
    "edge_device_link_queued_messages",
    "edge_device_link_dropped_messages_total",
    "edge_device_link_sent_bytes_total",
    "edge_device_model_requests_total",
    "edge_device_model_errors_total",
    "edge_device_model_in_flight",
    "edge_device_model_latency_seconds",
    "edge_device_cert_not_after_seconds",
    "edge_device_model_version_requests_total",
    "edge_device_model_version_failures_total",
    "edge_device_model_version_latency_seconds",
    "edge_device_model_version_shadow_compared_total",
    "edge_device_model_version_shadow_agreed_total",
    "edge_device_tensor_values_total",
    "edge_device_tensor_nan_total",
    "edge_device_tensor_inf_total",
    "edge_device_tensor_mean",
    "edge_device_tensor_std",
    "edge_device_tensor_min",
    "edge_device_tensor_max",
    "edge_device_tensor_drift_psi",
];

/// What the inventory says about a device, for its labels.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceLabels {
    /// Its groups.
    pub groups: Vec<String>,
    /// Active version by model name.
    pub versions: HashMap<String, String>,
}

impl DeviceLabels {
    /// The `group` label's value: the groups sorted and joined with `,`; empty for none.
    pub fn group(&self) -> String {
        let mut g = self.groups.clone();
        g.sort();
        g.dedup();
        g.join(",")
    }
}

/// The `le` label of a bucket bound: the shortest decimal that reads back as the bound
/// (`0.0001`, `3.2768`), as Prometheus clients print them.
pub fn le(bound: f64) -> String {
    if bound.is_infinite() {
        "+Inf".into()
    } else {
        format!("{bound}")
    }
}

/// The series of one sample, one sample each, at `t.ts`.
pub fn of(t: &Telemetry, labels: &DeviceLabels) -> Vec<Series> {
    let at = t.ts as i64;
    let mut base = vec![("device".to_string(), t.device.clone())];
    let group = labels.group();
    if !group.is_empty() {
        base.push(("group".into(), group));
    }
    let mut out = Vec::new();
    let mut put = |name: &str, extra: &[(&str, &str)], value: f64| {
        let mut l = base.clone();
        l.push(("__name__".into(), name.into()));
        l.extend(extra.iter().filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.to_string(), v.to_string())));
        out.push(Series { labels: l, samples: vec![Sample { value, timestamp_ms: at }] });
    };
    put("edge_device_telemetry_seq", &[], t.seq as f64);
    put("edge_device_uptime_seconds", &[], t.uptime_secs as f64);
    put("edge_device_cpu_usage_percent", &[], t.cpu.total_pct.into());
    for (i, pct) in t.cpu.per_core_pct.iter().enumerate() {
        put("edge_device_cpu_core_usage_percent", &[("core", &i.to_string())], (*pct).into());
    }
    for (name, v) in ["edge_device_load1", "edge_device_load5", "edge_device_load15"].iter().zip(t.load) {
        put(name, &[], v.into());
    }
    put("edge_device_memory_total_bytes", &[], t.mem.total_bytes as f64);
    put("edge_device_memory_used_bytes", &[], t.mem.used_bytes as f64);
    put("edge_device_memory_available_bytes", &[], t.mem.available_bytes as f64);
    put("edge_device_swap_total_bytes", &[], t.mem.swap_total_bytes as f64);
    put("edge_device_swap_used_bytes", &[], t.mem.swap_used_bytes as f64);
    put("edge_device_disk_free_bytes", &[], t.disk.free_bytes as f64);
    put("edge_device_disk_total_bytes", &[], t.disk.total_bytes as f64);
    put("edge_device_disk_full", &[], if t.disk_full { 1.0 } else { 0.0 });
    for temp in &t.temps {
        put("edge_device_temperature_celsius", &[("sensor", &temp.label)], temp.celsius.into());
    }
    put("edge_device_network_receive_bytes_total", &[], t.net.rx_bytes as f64);
    put("edge_device_network_transmit_bytes_total", &[], t.net.tx_bytes as f64);
    put("edge_device_agent_info", &[("agent_version", &t.agent.version)], 1.0);
    put("edge_device_agent_rss_bytes", &[], t.agent.rss_bytes as f64);
    put("edge_device_agent_cpu_usage_percent", &[], t.agent.cpu_pct.into());
    put("edge_device_agent_uptime_seconds", &[], t.agent.uptime_secs as f64);
    put("edge_device_link_reconnects_total", &[], t.link.reconnects as f64);
    put("edge_device_link_queued_messages", &[], t.link.queued as f64);
    put("edge_device_link_dropped_messages_total", &[], t.link.dropped as f64);
    put("edge_device_link_sent_bytes_total", &[], t.link.bytes_sent as f64);
    if let Some(secs) = t.cert_not_after {
        put("edge_device_cert_not_after_seconds", &[], secs as f64);
    }
    let version = |model: &str| labels.versions.get(model).cloned().unwrap_or_default();
    for m in &t.models {
        let v = version(&m.name);
        let l = [("model", m.name.as_str()), ("version", v.as_str())];
        put("edge_device_model_requests_total", &l, m.requests as f64);
        put("edge_device_model_errors_total", &l, m.errors as f64);
        put("edge_device_model_in_flight", &l, m.in_flight.into());
    }
    for h in t.latency.iter().filter(|h| h.buckets.len() == LATENCY_BUCKETS.len()) {
        let v = version(&h.name);
        let l = [("model", h.name.as_str()), ("version", v.as_str())];
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            let bound = le(*bound);
            put("edge_device_model_latency_seconds_bucket", &[l[0], l[1], ("le", &bound)], *n as f64);
        }
        put("edge_device_model_latency_seconds_bucket", &[l[0], l[1], ("le", "+Inf")], h.count as f64);
        put("edge_device_model_latency_seconds_count", &l, h.count as f64);
        put("edge_device_model_latency_seconds_sum", &l, h.sum_secs);
    }
    // Per version (telemetry version 4): A/B of versions across the fleet in PromQL, the
    // version a label of the figures rather than the inventory's active one.
    for v in t.versions.iter().filter(|v| v.buckets.len() == LATENCY_BUCKETS.len()) {
        let l = [("model", v.name.as_str()), ("version", v.version.as_str())];
        put("edge_device_model_version_requests_total", &l, v.requests as f64);
        put("edge_device_model_version_failures_total", &l, v.failures as f64);
        for (bound, n) in LATENCY_BUCKETS.iter().zip(&v.buckets) {
            let bound = le(*bound);
            put("edge_device_model_version_latency_seconds_bucket", &[l[0], l[1], ("le", &bound)], *n as f64);
        }
        put("edge_device_model_version_latency_seconds_bucket", &[l[0], l[1], ("le", "+Inf")], v.timed as f64);
        put("edge_device_model_version_latency_seconds_count", &l, v.timed as f64);
        put("edge_device_model_version_latency_seconds_sum", &l, v.sum_secs);
        if v.compared > 0 || v.shadow {
            put("edge_device_model_version_shadow_compared_total", &l, v.compared as f64);
            put("edge_device_model_version_shadow_agreed_total", &l, v.agreed as f64);
        }
    }
    for x in &t.tensors {
        let l = [("model", x.name.as_str()), ("version", x.version.as_str()), ("tensor", x.tensor.as_str())];
        put("edge_device_tensor_values_total", &l, x.values as f64);
        put("edge_device_tensor_nan_total", &l, x.nan as f64);
        put("edge_device_tensor_inf_total", &l, x.inf as f64);
        put("edge_device_tensor_mean", &l, x.mean);
        put("edge_device_tensor_std", &l, x.std);
        put("edge_device_tensor_min", &l, x.min);
        put("edge_device_tensor_max", &l, x.max);
        if let Some(psi) = x.drift_psi {
            put("edge_device_tensor_drift_psi", &l, psi);
        }
    }
    out
}

/// Merges series with the same labels (several samples of one device in a batch) and puts
/// each one's samples in time order, as a remote-write receiver needs them.
pub fn merge(series: impl IntoIterator<Item = Series>) -> Vec<Series> {
    let mut by_labels: HashMap<Vec<(String, String)>, Vec<Sample>> = HashMap::new();
    let mut order = Vec::new();
    for mut s in series {
        s.labels.sort();
        let e = by_labels.entry(s.labels.clone()).or_insert_with(|| {
            order.push(s.labels);
            Vec::new()
        });
        e.extend(s.samples);
    }
    order
        .into_iter()
        .map(|labels| {
            let mut samples = by_labels.remove(&labels).unwrap_or_default();
            samples.sort_by_key(|s| s.timestamp_ms);
            samples.dedup_by_key(|s| s.timestamp_ms);
            Series { labels, samples }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use edge_proto::codec::Versioned;
    use edge_proto::telemetry::{ModelLatency, ModelStats, Temp};

    use super::*;
    use edge_proto::telemetry::{TensorSummary, VersionStats};

    fn sample() -> Telemetry {
        Telemetry {
            version: Telemetry::VERSION,
            device: "dev-1".into(),
            seq: 7,
            ts: 1_700_000_000_123,
            uptime_secs: 5,
            cpu: edge_proto::telemetry::Cpu { total_pct: 12.5, per_core_pct: vec![10.0, 15.0] },
            load: [0.5, 0.25, 0.125],
            mem: Default::default(),
            agent: edge_proto::telemetry::Agent { version: "0.2.0".into(), ..Default::default() },
            disk: Default::default(),
            temps: vec![Temp { label: "soc".into(), celsius: 51.5 }],
            net: Default::default(),
            models: vec![ModelStats { name: "wake".into(), requests: 9, errors: 1, ..Default::default() }],
            link: Default::default(),
            disk_full: true,
            cert_not_after: Some(1_800_000_000),
            latency: vec![ModelLatency {
                name: "wake".into(),
                buckets: (0..LATENCY_BUCKETS.len() as u64).collect(),
                count: 20,
                sum_secs: 0.5,
            }],
            versions: vec![VersionStats {
                name: "wake".into(),
                version: "4".into(),
                active: false,
                requests: 12,
                failures: 1,
                buckets: vec![10; LATENCY_BUCKETS.len()],
                timed: 11,
                sum_secs: 0.1,
                shadow: true,
                compared: 10,
                agreed: 9,
                max_abs_diff: 0.5,
            }],
            tensors: vec![TensorSummary {
                name: "wake".into(),
                version: "3".into(),
                tensor: "output:score".into(),
                values: 40,
                nan: 2,
                mean: 0.25,
                drift_psi: Some(0.3),
                ..Default::default()
            }],
        }
    }

    #[test]
    fn version_and_tensor_series_name_the_version_their_figures_are_of() {
        let series = of(&sample(), &labels());
        // The shadow version 4, not the inventory's active 3.
        let l = [("model", "wake"), ("version", "4")];
        assert_eq!(find(&series, "edge_device_model_version_requests_total", &l)[0].samples[0].value, 12.0);
        assert_eq!(find(&series, "edge_device_model_version_shadow_agreed_total", &l)[0].samples[0].value, 9.0);
        let inf = find(&series, "edge_device_model_version_latency_seconds_bucket", &[("le", "+Inf")]);
        assert_eq!(inf[0].samples[0].value, 11.0);
        let t = [("tensor", "output:score"), ("version", "3")];
        assert_eq!(find(&series, "edge_device_tensor_drift_psi", &t)[0].samples[0].value, 0.3);
        assert_eq!(find(&series, "edge_device_tensor_nan_total", &t)[0].samples[0].value, 2.0);
    }

    fn find<'a>(series: &'a [Series], name: &str, extra: &[(&str, &str)]) -> Vec<&'a Series> {
        series
            .iter()
            .filter(|s| s.labels.iter().any(|(k, v)| k == "__name__" && v == name))
            .filter(|s| extra.iter().all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v)))
            .collect()
    }

    fn labels() -> DeviceLabels {
        DeviceLabels {
            groups: vec!["lab".into(), "cams".into()],
            versions: [("wake".to_string(), "3".to_string())].into(),
        }
    }

    #[test]
    fn every_series_is_at_the_samples_own_time_with_device_and_group() {
        let series = of(&sample(), &labels());
        assert!(series.len() > 40, "{}", series.len());
        for s in &series {
            assert_eq!(s.samples, [Sample { value: s.samples[0].value, timestamp_ms: 1_700_000_000_123 }]);
            assert!(s.labels.contains(&("device".into(), "dev-1".into())), "{s:?}");
            assert!(s.labels.contains(&("group".into(), "cams,lab".into())), "sorted and joined: {s:?}");
        }
        assert_eq!(find(&series, "edge_device_telemetry_seq", &[])[0].samples[0].value, 7.0);
        assert_eq!(find(&series, "edge_device_temperature_celsius", &[("sensor", "soc")])[0].samples[0].value, 51.5);
        assert_eq!(find(&series, "edge_device_cpu_core_usage_percent", &[("core", "1")])[0].samples[0].value, 15.0);
        assert_eq!(find(&series, "edge_device_disk_full", &[])[0].samples[0].value, 1.0);
        // Every family named in FAMILIES is written (histograms by their suffixes).
        for family in FAMILIES {
            let n = series.iter().filter(|s| s.labels.iter().any(|(k, v)| k == "__name__" && v.starts_with(family)));
            assert!(n.count() > 0, "{family} not written");
        }
    }

    #[test]
    fn model_series_carry_the_active_version_and_latency_is_a_classic_histogram() {
        let series = of(&sample(), &labels());
        let req = find(&series, "edge_device_model_requests_total", &[("model", "wake"), ("version", "3")]);
        assert_eq!(req[0].samples[0].value, 9.0);
        let buckets = find(&series, "edge_device_model_latency_seconds_bucket", &[("version", "3")]);
        assert_eq!(buckets.len(), LATENCY_BUCKETS.len() + 1);
        assert_eq!(
            find(&series, "edge_device_model_latency_seconds_bucket", &[("le", "0.0001")])[0].samples[0].value,
            1.0
        );
        assert_eq!(
            find(&series, "edge_device_model_latency_seconds_bucket", &[("le", "+Inf")])[0].samples[0].value,
            20.0
        );
        assert_eq!(find(&series, "edge_device_model_latency_seconds_sum", &[])[0].samples[0].value, 0.5);
        // Unknown version and no groups: the labels are left out, not empty.
        let bare = of(&sample(), &DeviceLabels::default());
        let req = find(&bare, "edge_device_model_requests_total", &[])[0];
        assert!(!req.labels.iter().any(|(k, _)| k == "version" || k == "group"), "{req:?}");
        // A histogram of another length (another bucket layout) is left out.
        let mut odd = sample();
        odd.latency[0].buckets.pop();
        assert!(find(&of(&odd, &labels()), "edge_device_model_latency_seconds_count", &[]).is_empty());
    }

    #[test]
    fn merged_series_hold_their_samples_in_time_order_once() {
        let mut late = sample();
        late.ts -= 60_000;
        late.seq = 6;
        let all = of(&sample(), &labels()).into_iter().chain(of(&late, &labels())).chain(of(&sample(), &labels()));
        let merged = merge(all);
        assert_eq!(merged.len(), of(&sample(), &labels()).len());
        let seq = find(&merged, "edge_device_telemetry_seq", &[])[0];
        assert_eq!(seq.samples.iter().map(|s| s.value).collect::<Vec<_>>(), [6.0, 7.0]);
    }

    #[test]
    fn le_labels_read_as_prometheus_clients_print_them() {
        assert_eq!(le(0.00005), "0.00005");
        assert_eq!(le(3.2768), "3.2768");
        assert_eq!(le(f64::INFINITY), "+Inf");
    }
}
