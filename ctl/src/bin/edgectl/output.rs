//! What edgectl prints on stdout: tables and lines, or with `--json` one JSON document per
//! run (`watch`: one object per line, as samples arrive). Messages about the run go to
//! stderr in both modes.

use std::path::Path;

use anyhow::{bail, Context, Result};
use edge_proto::command::{hex, NpyBytes, Reply, Target};
use edge_proto::status::{State, Status};
use edge_proto::telemetry::Telemetry;
use edgectl::track::Outcome;
use edgectl::{npy, report, CommandOutcome, DeployOutcome};
use serde_json::json;

/// What to print of a command's outcome.
pub enum Show {
    /// One line per device.
    Lines,
    /// The status each device sent (`cmd get-status`).
    Status,
    /// The outputs each device sent (`infer`), written into the directory if given.
    Outputs {
        /// `--output-dir`.
        dir: Option<std::path::PathBuf>,
    },
}

/// Prints a document as pretty JSON.
pub fn document(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("JSON values serialize"));
}

/// `devices`: the fleet service's array as is with `--json`, else a table.
pub fn devices(devices: &[edge_proto::inventory::Device], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(devices).expect("devices serialize"));
    } else {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
        print!("{}", report::devices_text(devices, now));
    }
}

/// `watch`'s header, before the first sample (none with `--json`).
pub fn watch_header(json: bool) {
    if !json {
        println!(
            "{:<16} {:>8} {:>6} {:>10} {:>10} {:>7} {:>7}",
            "DEVICE", "SEQ", "CPU%", "MEM MiB", "RSS KiB", "QUEUED", "DROPPED"
        );
    }
}

/// One telemetry sample: a table row, or one JSON object on its own line.
pub fn watch_sample(t: &Telemetry, json: bool) {
    if json {
        println!("{}", serde_json::to_string(t).expect("telemetry serializes"));
    } else {
        println!(
            "{:<16} {:>8} {:>6.1} {:>10} {:>10} {:>7} {:>7}",
            t.device,
            t.seq,
            t.cpu.total_pct,
            t.mem.used_bytes / (1 << 20),
            t.agent.rss_bytes / 1024,
            t.link.queued,
            t.link.dropped
        );
    }
}

/// `status`: a table, or one JSON array of the devices' retained status.
pub fn statuses<'a>(devices: impl Iterator<Item = &'a Status>, json: bool) -> Result<()> {
    if json {
        let all: Vec<&Status> = devices.collect();
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    println!("{:<16} {:<8} {:<10} {:>10}  MODELS", "DEVICE", "STATE", "VERSION", "UPTIME s");
    for s in devices {
        let state = match s.state {
            State::Online => "online",
            State::Offline => "offline",
        };
        println!("{:<16} {:<8} {:<10} {:>10}  {}", s.device, state, s.agent_version, s.uptime_secs, s.models.join(","));
    }
    Ok(())
}

/// A deploy's results: the table (and repairs), or [`report::results_json`] with the
/// transfer's figures.
pub fn deploy(outcome: &DeployOutcome, target: &Target, accept_wait: std::time::Duration, json: bool) {
    if outcome.results.is_empty() {
        if let Target::Group(g) = target {
            eprintln!("edgectl: no device of group {g} answered within {accept_wait:?}");
        }
    }
    if outcome.results.iter().any(|r| matches!(r.outcome, Outcome::TimedOut(_))) {
        eprintln!(
            "edgectl: devices still at work can be stopped with `edgectl cmd cancel --command {}`",
            hex(&outcome.command_id)
        );
    }
    let s = &outcome.stats;
    if json {
        let mut v = report::results_json(&outcome.command_id, &outcome.results);
        v["transfer_id"] = json!(hex(&outcome.transfer_id));
        v["transfer"] = json!({
            "chunks": s.chunks,
            "artifact_bytes": s.artifact_bytes,
            "bytes_published": s.bytes_published,
            "repair_requests": s.repair_requests,
            "repaired_chunks": s.repaired_chunks,
        });
        document(&v);
        return;
    }
    print!("{}", report::results_table(&outcome.results));
    println!(
        "sent: {} bytes of chunk messages for a {}-byte artifact ({} of {} chunks in the first pass)",
        s.bytes_published, s.artifact_bytes, s.first_pass_chunks, s.chunks
    );
    if s.repair_requests > 0 {
        println!("repairs: {} requests, {} chunks resent", s.repair_requests, s.repaired_chunks);
    }
}

/// A command's results as `show` says; with `--json`, one document whose `results` carry
/// the replies (`status`, or `outputs` with dtype, shape and the file written).
pub fn command(outcome: &CommandOutcome, show: &Show, json: bool) -> Result<()> {
    if let Show::Outputs { dir: Some(dir) } = show {
        std::fs::create_dir_all(dir).with_context(|| format!("--output-dir {}", dir.display()))?;
    }
    let mut doc = report::results_json(&outcome.command_id, &outcome.results);
    for (k, r) in outcome.results.iter().enumerate() {
        let reply = match (show, &r.reply, r.outcome.is_ok()) {
            (Show::Lines, _, _) => {
                if !json {
                    println!("{}", report::result_line(r));
                }
                continue;
            }
            (_, _, false) => {
                eprintln!("edgectl: {}", report::result_line(r));
                continue;
            }
            (Show::Status, Some(Reply::Status(s)), true) => {
                if !json {
                    print!("{}", report::status_text(&r.device, s));
                }
                json!({ "status": report::status_json(&r.device, s) })
            }
            (Show::Outputs { dir }, Some(Reply::Outputs(outputs)), true) => {
                json!({ "outputs": write_outputs(outputs, dir.as_deref(), json)? })
            }
            (_, _, true) => bail!("{}: succeeded without the expected reply in its answer", r.device),
        };
        if let serde_json::Value::Object(fields) = reply {
            for (name, value) in fields {
                doc["results"][k][name] = value;
            }
        }
    }
    if json {
        document(&doc);
    }
    Ok(())
}

/// Writes `output.K.npy` files into `dir` (or only describes the outputs without one);
/// returns each output's `index`, `dtype`, `shape` and `path` for the JSON document.
fn write_outputs(outputs: &[NpyBytes], dir: Option<&Path>, json: bool) -> Result<Vec<serde_json::Value>> {
    let mut described = vec![];
    for (k, NpyBytes(bytes)) in outputs.iter().enumerate() {
        let header = npy::header(bytes);
        let path = match dir {
            Some(dir) => {
                let path = dir.join(format!("output.{k}.npy"));
                std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
                if !json {
                    println!("{}", path.display());
                }
                Some(path)
            }
            None => {
                if !json {
                    match &header {
                        Ok(h) => println!("output {k}: {} {}", h.dtype(), h.shape_text()),
                        Err(e) => println!("output {k}: {} bytes, {e}", bytes.len()),
                    }
                }
                None
            }
        };
        described.push(match &header {
            Ok(h) => json!({"index": k, "dtype": h.dtype(), "shape": h.shape, "path": path}),
            Err(e) => json!({"index": k, "bytes": bytes.len(), "error": e.to_string(), "path": path}),
        });
    }
    Ok(described)
}
