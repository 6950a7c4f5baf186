//! `edgectl rollout`: start a staged rollout and follow it, or list, show, follow and
//! approve rollouts (the work is the fleet service's; see `edgectl::rollout`).

use std::time::Duration;

use anyhow::{bail, Result};
use edge_proto::command::Target;
use edge_proto::rollouts::{Decision, Figures, Rollout, RolloutState, VersionReport};
use edgectl::config::CtlConfig;
use edgectl::deploy::check_chunk_size;
use edgectl::deployments::FLEET_DEFAULT_TTL;
use edgectl::fleet::Service;
use edgectl::rollout::{self, Policy};

use crate::cli::{ModelArgs, RolloutArgs, RolloutCmd, RolloutStart};

/// How often a followed rollout is looked at.
const POLL: Duration = Duration::from_secs(2);

/// Runs `edgectl rollout …`; the verdict is whether it completed (or the query worked).
pub async fn run(svc: &Service, config: &CtlConfig, args: &RolloutArgs, json: bool) -> Result<bool> {
    match (&args.cmd, (&args.what, &args.start)) {
        (Some(RolloutCmd::List), _) => {
            let all = edgectl::fleet::rollouts(svc).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!("{:<32}  {:<16} {:<24} {:<18} WAVE", "ID", "GROUP", "MODEL VERSION", "STATE");
                for r in &all {
                    let model = format!("{} {}", r.model, r.version);
                    let wave = format!("{}/{}", r.wave + 1, r.waves.len());
                    println!("{:<32}  {:<16} {:<24} {:<18} {wave}", r.id, r.group, model, r.state.name());
                }
            }
            Ok(true)
        }
        (Some(RolloutCmd::Status { id }), _) => {
            let r = edgectl::fleet::rollout(svc, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_status(&r);
            }
            Ok(true)
        }
        (Some(RolloutCmd::Watch { id }), _) => follow(svc, id, json).await,
        (Some(RolloutCmd::Approve { id }), _) => {
            let r = edgectl::fleet::approve_rollout(svc, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{}", header(&r));
            }
            Ok(true)
        }
        (None, (Some(what), Some(start))) => {
            let r = begin(svc, config, what, start).await?;
            if start.detach {
                if json {
                    println!("{}", serde_json::to_string_pretty(&r)?);
                } else {
                    println!("{}", header(&r));
                    println!("follow it with `edgectl rollout watch {}`", r.id);
                }
                return Ok(true);
            }
            if !json {
                eprintln!(
                    "edgectl: rollout {} started; Ctrl-C leaves it running (`edgectl rollout watch {}`)",
                    r.id, r.id
                );
            }
            follow(svc, &r.id, json).await
        }
        (None, _) => bail!(
            "give --group, --model, --name and --version to start a rollout, or one of list, status, watch, approve"
        ),
    }
}

async fn begin(svc: &Service, config: &CtlConfig, what: &ModelArgs, start: &RolloutStart) -> Result<Rollout> {
    let mut req = crate::model_request(what, Target::Group(start.group.clone()))?;
    req.ttl = what.ttl.map_or(FLEET_DEFAULT_TTL, Duration::from_secs);
    check_chunk_size(req.chunk_size, config.mqtt.max_packet_bytes)?;
    let file = match &start.policy {
        Some(p) => Policy::load(p).map_err(anyhow::Error::msg)?,
        None => Policy::default(),
    };
    let flags = Policy {
        waves: start.waves.clone(),
        max_p95_ratio: start.max_p95_ratio,
        max_error_rate: start.max_error_rate,
        min_requests: start.min_requests,
        min_agreement: start.min_agreement,
        wave_timeout_secs: start.wave_timeout,
        approve_each: start.approve_each.then_some(true),
    };
    let key = config.signer()?;
    Ok(rollout::start(svc, &key, &req, &file.or(flags), config.mqtt.max_packet_bytes).await?)
}

/// Prints each decision as it is taken until the rollout completes or halts.
async fn follow(svc: &Service, id: &str, json: bool) -> Result<bool> {
    let mut last: Option<Rollout> = None;
    loop {
        let r = edgectl::fleet::rollout(svc, id).await?;
        if last.is_none() && !json {
            println!("{}", header(&r));
        }
        for d in rollout::news(last.as_ref(), &r) {
            if json {
                println!("{}", serde_json::to_string(&serde_json::json!({ "rollout": r.id, "decision": d }))?);
            } else {
                println!("  {}", decision(d));
            }
        }
        if last.as_ref().is_none_or(|l| l.state != r.state) && r.state == RolloutState::AwaitingApproval && !json {
            println!("  waiting for `edgectl rollout approve {}`", r.id);
        }
        if r.state.is_final() {
            if !json {
                println!("{}", header(&r));
            }
            return Ok(r.state == RolloutState::Completed);
        }
        last = Some(r);
        tokio::time::sleep(POLL).await;
    }
}

fn header(r: &Rollout) -> String {
    format!(
        "rollout {}: {} {} to group {}, {} (wave {} of {})",
        r.id,
        r.model,
        r.version,
        r.group,
        r.state.name(),
        r.wave + 1,
        r.waves.len()
    )
}

fn decision(d: &Decision) -> String {
    format!("wave {}: {}: {}", d.wave + 1, d.verdict, d.reason)
}

fn figures(f: &Figures) -> String {
    let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} ms"));
    let ratio = f.p95_ratio().map_or("-".into(), |r| format!("{r:.2} x"));
    let agreement = f.agreement().map_or(String::new(), |a| format!(", agreed {:.1} % of {}", a * 100.0, f.compared));
    format!(
        "{} requests, {} failed ({:.2} %), p95 {} vs {} before ({ratio}){agreement}",
        f.requests,
        f.failures,
        f.error_rate() * 100.0,
        ms(f.p95_ms),
        ms(f.old_p95_ms)
    )
}

fn print_status(r: &Rollout) {
    println!("{}", header(r));
    let g = &r.gates;
    let gate =
        |what: &str, op: &str, v: Option<f64>| v.map_or(format!("{what} not checked"), |v| format!("{what} {op} {v}"));
    println!(
        "gates: {}, {}, at least {} requests, {}",
        gate("p95 ratio", "<=", g.max_p95_ratio),
        gate("error rate", "<=", g.max_error_rate),
        g.min_requests,
        gate("agreement", ">=", g.min_agreement)
    );
    for (i, w) in r.waves.iter().enumerate() {
        println!("wave {} ({}): {}, {} device(s): {}", i + 1, w.size, w.state, w.devices.len(), w.devices.join(", "));
        if let Some(f) = &w.figures {
            println!("  pooled: {}", figures(f));
        }
        for (device, f) in &w.device_figures {
            println!("  {device}: {}", figures(f));
        }
    }
    for d in &r.decisions {
        println!("  {}", decision(d));
    }
}

/// `edgectl compare`: a model's versions side by side.
pub fn print_versions(r: &VersionReport) {
    println!("model {} (devices updated within {} s)", r.model, r.since_secs);
    if r.versions.is_empty() {
        println!("no device reports figures of it (agents send them from telemetry version 4)");
        return;
    }
    println!(
        "{:<16} {:>8} {:>7} {:>10} {:>9} {:>8} {:>10} {:>10} {:>10}",
        "VERSION", "DEVICES", "ACTIVE", "REQUESTS", "FAILURES", "ERRORS", "P50", "P95", "P99"
    );
    let ms = |v: Option<f64>| match v {
        Some(v) if v.is_finite() => format!("{v:.1} ms"),
        Some(_) => "over top".into(),
        None => "-".into(),
    };
    for v in &r.versions {
        println!(
            "{:<16} {:>8} {:>7} {:>10} {:>9} {:>7.2}% {:>10} {:>10} {:>10}",
            v.version,
            v.devices,
            v.active_on,
            v.requests,
            v.failures,
            v.error_rate * 100.0,
            ms(v.p50_ms),
            ms(v.p95_ms),
            ms(v.p99_ms)
        );
    }
}
