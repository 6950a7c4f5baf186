//! The fleet dashboard (`deploy/grafana/edge-fleet.json`) and alert rules
//! (`deploy/prometheus/edge-fleet.rules.yml`) against what is written and exported,
//! offline: the `edge_device_*` families come from the exporter's own list
//! (`edge_fleet::series::FAMILIES`, which its unit tests check against what it writes), the
//! `edge_fleet_*` ones from the service's `/metrics` registry; the rules go through
//! `promtool` (Debian's `prometheus` package; scripts/setup.sh installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use edge_fleet::export::ResultLabel;
use edge_fleet::metrics::Metrics;
use edge_fleet::series::FAMILIES;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// The series names a query may use: the written families (the latency histograms by their
/// `_bucket`, `_sum` and `_count`) and the service's own, with their family.
fn known_series() -> Vec<(String, String)> {
    let mut out = vec![];
    for family in FAMILIES {
        if family.ends_with("_latency_seconds") {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.push((format!("{family}{suffix}"), family.to_string()));
            }
        } else {
            out.push((family.to_string(), family.to_string()));
        }
    }
    // A family with labels shows only once it has a series: make one of each.
    let m = Metrics::default();
    Metrics::count(&m.ingested, "status");
    Metrics::count(&m.undecodable, "status");
    m.export.messages.get_or_create(&ResultLabel { result: "written" }).inc();
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &m.registry()).unwrap();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let (name, kind) = line.split_once(' ').unwrap();
        let series = if kind == "counter" { format!("{name}_total") } else { name.to_string() };
        out.push((series, name.to_string()));
    }
    out
}

/// The `edge_device_*` and `edge_fleet_*` names in a query.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = vec![];
    let mut rest = query;
    while let Some(at) = ["edge_device_", "edge_fleet_"].iter().filter_map(|p| rest.find(p)).min() {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repo("deploy/grafana/edge-fleet.json")).unwrap();
    serde_json::from_str(&text).expect("edge-fleet.json is JSON")
}

/// Every query: panel targets and template variables, as (where, query).
fn dashboard_queries(d: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = vec![];
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap_or("?");
        for t in p["targets"].as_array().into_iter().flatten() {
            out.push((title.to_string(), t["expr"].as_str().unwrap_or_default().to_string()));
        }
    }
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// Names in `queries` that are neither written nor exported, as "where: name".
fn unknown_names(queries: &[(String, String)], known: &[(String, String)]) -> Vec<String> {
    let mut unknown = vec![];
    for (place, query) in queries {
        for name in metric_names(query) {
            if !known.iter().any(|(s, _)| *s == name) {
                unknown.push(format!("{place}: {name}"));
            }
        }
    }
    unknown
}

#[test]
fn the_fleet_dashboard_charts_every_written_family_and_only_known_names() {
    let known = known_series();
    let d = dashboard();
    let queries = dashboard_queries(&d);
    let unknown = unknown_names(&queries, &known);
    assert!(unknown.is_empty(), "panels query names edge-fleet neither writes nor exports:\n{unknown:#?}");
    let charted: BTreeSet<String> = queries
        .iter()
        .flat_map(|(_, q)| metric_names(q))
        .filter_map(|n| known.iter().find(|(s, _)| *s == n).map(|(_, f)| f.clone()))
        .collect();
    let uncharted: Vec<&&str> = FAMILIES.iter().filter(|f| !charted.contains(**f)).collect();
    assert!(uncharted.is_empty(), "written families without a panel in edge-fleet.json: {uncharted:?}");
    // What the issue asks to see at a glance.
    let all: String = queries.iter().map(|(_, q)| q.as_str()).collect::<Vec<_>>().join("\n");
    for must in [
        "edge_fleet_devices_online",
        "count by (model, version)",
        "histogram_quantile(0.95, sum by (model, version, le) (rate(edge_device_model_latency_seconds_bucket",
        "edge_device_model_errors_total",
        "edge_device_disk_free_bytes",
        "edge_device_temperature_celsius",
    ] {
        assert!(all.contains(must), "no panel queries {must}");
    }
}

#[test]
fn the_checker_catches_unknown_names() {
    // The check above must be able to fail: a misspelt family, a bare histogram, a
    // counter without _total.
    let queries = vec![
        ("misspelt".to_string(), "edge_device_temperature_c".to_string()),
        ("bare histogram".to_string(), "edge_device_model_latency_seconds".to_string()),
        ("no _total".to_string(), "rate(edge_fleet_export_samples_written[5m])".to_string()),
        (
            "fine".to_string(),
            "rate(edge_device_model_latency_seconds_count[5m]) + edge_fleet_devices_online".to_string(),
        ),
    ];
    assert_eq!(
        unknown_names(&queries, &known_series()),
        [
            "misspelt: edge_device_temperature_c",
            "bare histogram: edge_device_model_latency_seconds",
            "no _total: edge_fleet_export_samples_written"
        ]
    );
}

#[test]
fn dashboard_panels_have_unique_ids_and_do_not_overlap() {
    let d = dashboard();
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = vec![];
    for p in d["panels"].as_array().unwrap() {
        let title = p["title"].as_str().unwrap_or("?").to_string();
        assert!(ids.insert(p["id"].as_u64().unwrap()), "panel id {} used twice ({title})", p["id"]);
        let g = &p["gridPos"];
        let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().unwrap_or_else(|| panic!("{title}: gridPos.{k}")));
        assert!(b[0] + b[2] <= 24, "{title} is wider than the 24-column grid: {g}");
        for (other, o) in &boxes {
            let apart = b[0] + b[2] <= o[0] || o[0] + o[2] <= b[0] || b[1] + b[3] <= o[1] || o[1] + o[3] <= b[1];
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title, b));
    }
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo("deploy/prometheus"))
        .output()
        .expect("promtool not found: run scripts/setup.sh");
    assert!(
        out.status.success(),
        "promtool {} failed:\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn fleet_alert_rules_pass_promtool_fire_in_their_unit_tests_and_name_known_metrics() {
    promtool(&["check", "rules", "edge-fleet.rules.yml"]);
    promtool(&["test", "rules", "edge-fleet.rules.test.yml"]);
    let rules = std::fs::read_to_string(repo("deploy/prometheus/edge-fleet.rules.yml")).unwrap();
    let queries: Vec<(String, String)> = rules
        .lines()
        .filter(|l| l.trim_start().starts_with("expr:"))
        .map(|l| ("rules".to_string(), l.to_string()))
        .collect();
    assert!(queries.len() >= 8, "{queries:?}");
    let unknown = unknown_names(&queries, &known_series());
    assert!(unknown.is_empty(), "alert rules name metrics edge-fleet neither writes nor exports:\n{unknown:#?}");
    for alert in [
        "EdgeDevicesOffline",
        "EdgeDeviceSilent",
        "EdgeFleetModelErrorRateHigh",
        "EdgeFleetModelLatencyHigh",
        "EdgeDeviceDiskNearlyFull",
        "EdgeDeviceCertificateExpiring",
        "EdgeFleetTelemetryRefused",
        "EdgeFleetTelemetryExportFailing",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert} missing from the rules");
    }
}
