//! The Grafana dashboard and the Prometheus alert rules against what the agent exports,
//! offline: the metric families come from the agent's own `/metrics` renderer, the rules
//! go through `promtool` (Debian's `prometheus` package; scripts/setup.sh installs it).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use edge_agent::commands::control::{CommandStats, Reason};
use edge_agent::engine::{LoadOptions, Model};
use edge_agent::http::Metrics;
use edge_agent::link::LinkStats;
use edge_agent::serving::shadow::{ShadowLabel, ShadowVersion};
use edge_agent::serving::{PoolSettings, Registry};
use edge_agent::stats::InferenceStats;
use prometheus_client::metrics::counter::Counter;

/// Exported families no panel charts, each as (name, why). Keep it short: a family worth
/// exporting is worth a panel. Empty today: every family has one.
const NOT_CHARTED: &[(&str, &str)] = &[];

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// Every family `/metrics` exports (counters with their `_total`), by type. A family with
/// labels shows only once it has a series, so one of each is made: a real model serving,
/// a command, a deploy, a chunk, a trial.
fn exported() -> Vec<(String, String)> {
    let state = tempfile::tempdir().unwrap();
    let stats = Arc::new(InferenceStats::default());
    let serving = Arc::new(Registry::new(stats.clone(), Duration::from_secs(1), Duration::from_secs(1)));
    let model = Model::load(&repo("models/openwakeword-js__hello_deepa.onnx"), &LoadOptions::default()).unwrap();
    serving.activate("deepa", "1", Arc::new(model), PoolSettings::default()).unwrap();
    // A version with a reference profile, and one request's inputs described: the tensor
    // statistics and the drift of a tensor.
    let mut sample = vec![0.0f32, 1.0];
    let tensors = vec![edge_proto::profile::TensorProfile::from_values("input:0", &mut sample, 2).unwrap()];
    let profile = edge_proto::profile::Profile { version: 1, model_sha256: "0".repeat(64), samples: 1, tensors };
    stats.tensors.set_profile("deepa", "1", Some(Arc::new(profile)), Duration::from_secs(60));
    let input = tract_core::internal::Tensor::from_shape(&[2], &[0.5f32, f32::NAN]).unwrap();
    stats.tensors.describe_side("deepa", "1", edge_agent::tensor_stats::Side::Input, &[], &[input]);
    let commands = CommandStats::default();
    commands.accepted("get-status");
    CommandStats::count(&commands.deploys, "succeeded");
    CommandStats::count(&commands.chunks, "stored");
    CommandStats::count(&commands.trials_ended, "passed");
    commands.chunks_dropped.get_or_create(&Reason { reason: "malformed" }).inc();
    let metrics = Metrics::new(
        Arc::new(LinkStats::default()),
        &stats,
        Counter::default(),
        serving,
        Counter::default(),
        &commands,
        edge_agent::disk::open_reserve(state.path()),
        Some(1_900_000_000),
    );
    metrics.http_stats().refused("unauthorized");
    stats.shadow_started("deepa", "2");
    stats
        .shadow
        .requests
        .get_or_create(&ShadowLabel { model: "deepa".into(), version: "2".into(), result: "agreed" })
        .inc();
    stats.shadow.duration.get_or_create(&ShadowVersion { model: "deepa".into(), version: "2".into() }).observe(0.01);
    let text = metrics.render();
    let families: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| (name.to_string(), kind.to_string()))
        .collect();
    assert!(families.len() > 20, "too few families in:\n{text}");
    families
}

/// The series names a query may use for each exported family.
fn series_names(families: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = vec![];
    for (family, kind) in families {
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                out.push((format!("{family}{suffix}"), family.clone()));
            }
        } else {
            out.push((family.clone(), family.clone()));
        }
    }
    out
}

/// The `edge_agent_*` names in a query.
fn metric_names(query: &str) -> Vec<String> {
    let mut names = vec![];
    let mut rest = query;
    while let Some(at) = rest.find("edge_agent_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}

/// Every query of the dashboard: panel targets (rows nest panels too) and template variables.
fn dashboard_queries(dashboard: &serde_json::Value) -> Vec<(String, String)> {
    fn panels(list: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in list.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?").to_string();
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(expr) = t["expr"].as_str() {
                    out.push((title.clone(), expr.to_string()));
                }
            }
            panels(&p["panels"], out);
        }
    }
    let mut out = vec![];
    panels(&dashboard["panels"], &mut out);
    for v in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = v["query"]["query"].as_str().or(v["query"].as_str()) {
            out.push((format!("variable {}", v["name"]), q.to_string()));
        }
    }
    out
}

/// Names in `queries` that are not series of an exported family, as "where: name".
fn unknown_names(queries: &[(String, String)], series: &[(String, String)]) -> Vec<String> {
    let mut unknown = vec![];
    for (place, query) in queries {
        for name in metric_names(query) {
            if !series.iter().any(|(s, _)| *s == name) {
                unknown.push(format!("{place}: {name}"));
            }
        }
    }
    unknown
}

#[test]
fn the_dashboard_charts_every_exported_family_and_only_those() {
    let families = exported();
    let series = series_names(&families);
    let text = std::fs::read_to_string(repo("deploy/grafana/edge-agent.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("edge-agent.json is JSON");
    let queries = dashboard_queries(&dashboard);
    assert!(queries.len() > 30, "too few queries found: {queries:?}");

    let unknown = unknown_names(&queries, &series);
    assert!(unknown.is_empty(), "panels query metrics the agent does not export (renamed or removed?):\n{unknown:#?}");

    let charted: BTreeSet<String> = queries
        .iter()
        .flat_map(|(_, q)| metric_names(q))
        .filter_map(|n| series.iter().find(|(s, _)| *s == n).map(|(_, f)| f.clone()))
        .collect();
    let uncharted: Vec<&String> = families
        .iter()
        .map(|(f, _)| f)
        .filter(|f| !charted.contains(*f) && !NOT_CHARTED.iter().any(|(n, _)| n == f))
        .collect();
    assert!(
        uncharted.is_empty(),
        "exported families without a panel (add one to deploy/grafana/edge-agent.json, or to NOT_CHARTED with \
         the reason): {uncharted:?}"
    );
    for (name, _) in NOT_CHARTED {
        assert!(families.iter().any(|(f, _)| f == name), "NOT_CHARTED names {name}, which is not exported");
        assert!(!charted.contains(*name), "NOT_CHARTED names {name}, which a panel charts: drop the exception");
    }
}

#[test]
fn the_checker_catches_an_unknown_name_and_a_histogram_misused_as_a_series() {
    // The check above must be able to fail: a renamed metric and a bare histogram name.
    let series = series_names(&exported());
    let queries = vec![
        ("renamed".to_string(), "rate(edge_agent_inference_errors_total[5m])".to_string()),
        ("bare histogram".to_string(), "edge_agent_inference_duration_seconds".to_string()),
        ("fine".to_string(), "rate(edge_agent_inference_duration_seconds_bucket[5m])".to_string()),
    ];
    assert_eq!(
        unknown_names(&queries, &series),
        ["renamed: edge_agent_inference_errors_total", "bare histogram: edge_agent_inference_duration_seconds"]
    );
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
fn alert_rules_pass_promtool_fire_in_their_unit_tests_and_name_exported_metrics() {
    promtool(&["check", "rules", "edge-agent.rules.yml"]);
    promtool(&["test", "rules", "edge-agent.rules.test.yml"]);
    let rules = std::fs::read_to_string(repo("deploy/prometheus/edge-agent.rules.yml")).unwrap();
    let queries: Vec<(String, String)> = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .map(|l| ("rules".to_string(), l.to_string()))
        .collect();
    let unknown = unknown_names(&queries, &series_names(&exported()));
    assert!(unknown.is_empty(), "alert rules name metrics the agent does not export:\n{unknown:#?}");
    for alert in [
        "EdgeAgentDown",
        "EdgeAgentAbsent",
        "EdgeAgentCertificateExpiring",
        "EdgeAgentDiskFull",
        "EdgeAgentInferenceErrorRateHigh",
        "EdgeAgentQueueSaturated",
        "EdgeAgentTrialRolledBack",
        "EdgeAgentTensorDrift",
    ] {
        assert!(rules.contains(&format!("alert: {alert}\n")), "{alert} missing from the rules");
    }
}

#[test]
fn dashboard_panels_have_unique_ids_and_do_not_overlap() {
    let text = std::fs::read_to_string(repo("deploy/grafana/edge-agent.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(String, [u64; 4])> = vec![];
    for p in panels {
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
