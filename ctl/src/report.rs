//! What edgectl shows: results and device status as text or JSON. Pure functions returning
//! strings; the binary prints them.

use std::fmt::Write as _;
use std::time::Duration;

use edge_proto::command::DeviceStatus;
use serde_json::json;

use crate::track::DeviceResult;

/// `0.4 s`, `12.3 s`, `3 min 05 s`.
pub fn elapsed(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 60.0 {
        format!("{s:.1} s")
    } else {
        let whole = d.as_secs();
        format!("{} min {:02} s", whole / 60, whole % 60)
    }
}

/// A table of results, one row per device: device, result, time, reason.
pub fn results_table(results: &[DeviceResult]) -> String {
    let width = results.iter().map(|r| r.device.len()).max().unwrap_or(0).max("DEVICE".len());
    let mut out = format!("{:<width$}  {:<11}  {:>12}  REASON\n", "DEVICE", "RESULT", "TIME");
    for r in results {
        out.push_str(&row(r, width));
        out.push('\n');
    }
    out
}

/// One result on one line, as `cmd` prints them.
pub fn result_line(r: &DeviceResult) -> String {
    row(r, 16)
}

fn row(r: &DeviceResult, width: usize) -> String {
    let line = format!(
        "{:<width$}  {:<11}  {:>12}  {}",
        r.device,
        r.outcome.label(),
        elapsed(r.elapsed),
        r.outcome.reason().unwrap_or_default()
    );
    line.trim_end().to_string()
}

/// A command's or deploy's results as one JSON object: `command_id` (hex), `ok` (every
/// device reached the goal), and `results`, one per device with `device`, `result` (the
/// table's label), `reason` (or null) and `elapsed_ms`.
pub fn results_json(command_id: &[u8; 16], results: &[DeviceResult]) -> serde_json::Value {
    json!({
        "command_id": edge_proto::command::hex(command_id),
        "ok": !results.is_empty() && results.iter().all(|r| r.outcome.is_ok()),
        "results": results.iter().map(|r| json!({
            "device": r.device,
            "result": r.outcome.label(),
            "reason": r.outcome.reason(),
            "elapsed_ms": r.elapsed.as_millis() as u64,
        })).collect::<Vec<_>>(),
    })
}

/// `get-status` as one JSON object: `device`, `agent_version`, `config_digest`,
/// `telemetry_interval_secs`, `log_level`, and `models` with `name`, `active_version`,
/// `installed_versions`, `health`.
pub fn status_json(device: &str, s: &DeviceStatus) -> serde_json::Value {
    json!({
        "device": device,
        "agent_version": s.agent_version,
        "config_digest": s.config_digest,
        "telemetry_interval_secs": s.telemetry_interval_secs,
        "log_level": s.log_level,
        "models": s.models.iter().map(|m| json!({
            "name": m.name,
            "active_version": m.active_version,
            "installed_versions": m.installed_versions,
            "health": m.health,
        })).collect::<Vec<_>>(),
    })
}

/// `get-status` as text: the device's settings, then a table of its models.
pub fn status_text(device: &str, s: &DeviceStatus) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "device              {device}");
    let _ = writeln!(out, "agent version       {}", s.agent_version);
    let _ = writeln!(out, "config digest       {}", s.config_digest);
    let _ = writeln!(out, "telemetry interval  {} s", s.telemetry_interval_secs);
    let _ = writeln!(out, "log level           {}", s.log_level);
    if s.models.is_empty() {
        out.push_str("no models\n");
        return out;
    }
    let width = s.models.iter().map(|m| m.name.len()).max().unwrap_or(0).max("MODEL".len());
    let _ = writeln!(out, "\n{:<width$}  {:<10}  {:<20}  HEALTH", "MODEL", "ACTIVE", "INSTALLED");
    for m in &s.models {
        let _ = writeln!(
            out,
            "{:<width$}  {:<10}  {:<20}  {}",
            m.name,
            m.active_version.as_deref().unwrap_or("-"),
            m.installed_versions.join(","),
            m.health
        );
    }
    out
}

/// `edgectl devices` as text: one row per device, models as `name=active` (`-`: none
/// active). `now_ms` is the time `last_seen` and the certificate expiry are measured from.
pub fn devices_text(devices: &[edge_proto::inventory::Device], now_ms: i64) -> String {
    let mut out = String::new();
    if devices.is_empty() {
        out.push_str("no devices\n");
        return out;
    }
    let width = devices.iter().map(|d| d.device.len()).max().unwrap_or(0).max("DEVICE".len());
    let groups: Vec<String> = devices.iter().map(|d| d.groups.join(",")).collect();
    let gwidth = groups.iter().map(|g| g.len()).max().unwrap_or(0).max("GROUPS".len());
    let _ = writeln!(
        out,
        "{:<width$}  {:<7}  {:<gwidth$}  {:<9}  {:<9}  {:<8}  MODELS",
        "DEVICE", "STATE", "GROUPS", "AGENT", "LAST SEEN", "CERT"
    );
    for (d, g) in devices.iter().zip(&groups) {
        let seen = d.last_seen.map_or("-".to_string(), |t| format!("{} ago", age((now_ms - t).max(0) / 1000)));
        let cert = d.cert_not_after.map_or("-".to_string(), |t| {
            let left = t - now_ms / 1000;
            if left < 0 {
                "EXPIRED".to_string()
            } else {
                format!("{}d", left / 86_400)
            }
        });
        let models: Vec<String> =
            d.models.iter().map(|m| format!("{}={}", m.name, m.active_version.as_deref().unwrap_or("-"))).collect();
        let _ = writeln!(
            out,
            "{:<width$}  {:<7}  {:<gwidth$}  {:<9}  {:<9}  {:<8}  {}",
            d.device,
            if d.online { "online" } else { "offline" },
            g,
            d.agent_version.as_deref().unwrap_or("-"),
            seen,
            cert,
            models.join(" ")
        );
    }
    out
}

/// Seconds as the largest whole unit: `42s`, `5m`, `3h`, `12d`.
fn age(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3_600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3_600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::track::Outcome;
    use edge_proto::command::{AckState, ModelStatus};

    fn result(device: &str, outcome: Outcome, ms: u64) -> DeviceResult {
        DeviceResult { device: device.into(), outcome, elapsed: Duration::from_millis(ms), reply: None }
    }

    #[test]
    fn table_has_one_row_per_device_with_the_agents_reason() {
        let t = results_table(&[
            result("pi-kitchen-01", Outcome::Succeeded, 12_300),
            result("pi-2", Outcome::Failed("validation: max diff 0.31 > 1e-4; rolled back".into()), 4_000),
            result("pi-3", Outcome::TimedOut(AckState::Progress(40)), 600_000),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("DEVICE         RESULT"), "{t}");
        assert!(lines[1].starts_with("pi-kitchen-01  succeeded") && lines[1].ends_with("12.3 s"), "{t}");
        assert!(lines[2].contains("failed") && lines[2].ends_with("rolled back"), "{t}");
        assert!(
            lines[3].contains("timed out") && lines[3].contains("10 min 00 s") && lines[3].ends_with("40 %"),
            "{t}"
        );
    }

    #[test]
    fn results_json_has_one_entry_per_device_and_is_ok_only_if_all_are() {
        let id = [0xab; 16];
        let v = results_json(
            &id,
            &[result("a", Outcome::Succeeded, 1_500), result("b", Outcome::Rejected("busy; retry later".into()), 20)],
        );
        assert_eq!(v["command_id"], "ab".repeat(16));
        assert_eq!(v["ok"], false);
        assert_eq!(v["results"][0]["result"], "succeeded");
        assert!(v["results"][0]["reason"].is_null());
        assert_eq!(v["results"][0]["elapsed_ms"], 1500);
        assert_eq!(v["results"][1]["reason"], "busy; retry later");
        assert_eq!(results_json(&id, &[result("a", Outcome::Accepted, 5)])["ok"], true);
        assert_eq!(results_json(&id, &[])["ok"], false);
    }

    #[test]
    fn status_json_has_the_documented_fields() {
        let s = DeviceStatus {
            agent_version: "0.1.0".into(),
            models: vec![ModelStatus {
                name: "kws".into(),
                active_version: Some("7".into()),
                installed_versions: vec!["6".into(), "7".into()],
                health: "ok".into(),
            }],
            config_digest: "abcd".into(),
            telemetry_interval_secs: 10,
            log_level: "info".into(),
        };
        let v = status_json("d1", &s);
        assert_eq!(v["device"], "d1");
        assert_eq!(v["telemetry_interval_secs"], 10);
        assert_eq!(v["models"][0]["installed_versions"][1], "7");
        assert_eq!(v["models"][0]["active_version"], "7");
        let text = status_text("d1", &s);
        assert!(text.lines().any(|l| l.starts_with("kws") && l.contains("6,7") && l.ends_with("ok")), "{text}");
    }

    #[test]
    fn devices_are_one_row_each_with_state_age_expiry_and_active_versions() {
        let now = 10_000_000_000i64;
        let d = |id: &str, online: bool| edge_proto::inventory::Device {
            device: id.into(),
            online,
            groups: vec!["cams".into(), "lab".into()],
            last_seen: Some(now - 125_000),
            agent_version: Some("0.1.0".into()),
            cert_not_after: Some(now / 1000 + 3 * 86_400 + 5),
            models: vec![ModelStatus {
                name: "wake".into(),
                active_version: Some("7".into()),
                installed_versions: vec!["6".into(), "7".into()],
                health: "ok".into(),
            }],
        };
        let mut gone = d("dev-2", false);
        gone.cert_not_after = Some(now / 1000 - 1);
        gone.models[0].active_version = None;
        let text = devices_text(&[d("dev-1", true), gone], now);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("DEVICE") && lines[0].ends_with("MODELS"), "{text}");
        for w in ["dev-1", "online", "cams,lab", "2m ago", "3d", "wake=7"] {
            assert!(lines[1].contains(w), "{w} in {}", lines[1]);
        }
        assert!(lines[2].contains("offline") && lines[2].contains("EXPIRED") && lines[2].contains("wake=-"), "{text}");
        assert_eq!(devices_text(&[], now), "no devices\n");
    }
}
