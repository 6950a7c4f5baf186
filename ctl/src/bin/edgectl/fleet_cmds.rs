//! The commands that talk to the fleet service (HTTP, no broker): `devices`, `deployments`,
//! and `deploy` when `[fleet] url` is set (and not `--direct`).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use edge_proto::deployments::{Deployment, DeviceProgress, TargetKind};
use edgectl::config::CtlConfig;
use edgectl::deploy::check_chunk_size;
use edgectl::deployments::{self, FLEET_DEFAULT_TTL};
use serde_json::json;

use crate::cli::{Command, DeploymentsCmd};
use crate::output;

/// How often `watch` and `deploy --wait` look at the deployment.
const POLL: Duration = Duration::from_secs(1);

/// Runs `command` if it is one for the fleet service: `Some(verdict)`; `None` for the others.
pub fn run(command: &Command, config: &CtlConfig, json: bool) -> Result<Option<bool>> {
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build();
    match command {
        Command::Devices { group } => {
            let url = &config.fleet_service()?;
            let devices = runtime()?.block_on(edgectl::fleet::devices(url, group.as_deref()))?;
            output::devices(&devices, json);
            Ok(Some(true))
        }
        Command::Deployments { cmd } => {
            let url = &config.fleet_service()?;
            runtime()?
                .block_on(deployments_cmd(url, config, cmd.as_ref().unwrap_or(&DeploymentsCmd::List), json))
                .map(Some)
        }
        Command::Deploy(args) if config.fleet.is_some() && !args.direct => {
            let url = &config.fleet_service()?;
            let mut req = crate::deploy_request(args)?;
            req.ttl = args.what.ttl.map_or(FLEET_DEFAULT_TTL, Duration::from_secs);
            check_chunk_size(req.chunk_size, config.mqtt.max_packet_bytes)?;
            let key = config.signer()?;
            let timeout = Duration::from_secs(args.timeout);
            runtime()?
                .block_on(async {
                    let d = deployments::hand_over(url, &key, &req, config.mqtt.max_packet_bytes).await?;
                    if !args.wait {
                        stored(&d, json);
                        return Ok(true);
                    }
                    if !json {
                        eprintln!("edgectl: deployment {} stored; waiting for the devices", d.id);
                    }
                    watch(url, &d.id, Some(timeout), json).await
                })
                .map(Some)
        }
        Command::Compare { model, since } => {
            let url = &config.fleet_service()?;
            let report = runtime()?.block_on(edgectl::fleet::model_versions(url, model, *since))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                crate::rollout_cmd::print_versions(&report);
            }
            Ok(Some(true))
        }
        Command::Rollout(args) => {
            let url = &config.fleet_service()?;
            runtime()?.block_on(crate::rollout_cmd::run(url, config, args, json)).map(Some)
        }
        _ => Ok(None),
    }
}

async fn deployments_cmd(
    url: &edgectl::fleet::Service,
    config: &CtlConfig,
    cmd: &DeploymentsCmd,
    json: bool,
) -> Result<bool> {
    match cmd {
        DeploymentsCmd::List => {
            let all = edgectl::fleet::deployments(url).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                println!("{:<32}  {:<24} {:<24} {:<10} DEVICES", "ID", "TARGET", "MODEL VERSION", "STATE");
                for d in &all {
                    println!(
                        "{:<32}  {:<24} {:<24} {:<10} {}",
                        d.id,
                        target(d),
                        format!("{} {}", d.model, d.version),
                        d.state,
                        counts(d)
                    );
                }
            }
            Ok(true)
        }
        DeploymentsCmd::Show { id } => {
            let d = edgectl::fleet::deployment(url, id).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("{}", header(&d));
                for p in &d.devices {
                    println!("  {}", line(p));
                }
                println!("{}", sent(&d));
            }
            Ok(true)
        }
        DeploymentsCmd::Watch { id, timeout } => watch(url, id, timeout.map(Duration::from_secs), json).await,
        DeploymentsCmd::Cancel { id, ttl } => {
            let key = config.signer()?;
            let d = deployments::cancel(url, &key, id, Duration::from_secs(*ttl), config.mqtt.max_packet_bytes).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                println!("{}", header(&d));
            }
            Ok(true)
        }
    }
}

/// Prints each device's change until every device met is done (or `timeout`); whether all
/// of them succeeded.
async fn watch(url: &edgectl::fleet::Service, id: &str, timeout: Option<Duration>, json: bool) -> Result<bool> {
    let start = Instant::now();
    let mut last: Option<Deployment> = None;
    loop {
        let d = edgectl::fleet::deployment(url, id).await?;
        if last.is_none() && !json {
            println!("{}", header(&d));
        }
        for p in deployments::changes(last.as_ref(), &d) {
            if json {
                println!("{}", serde_json::to_string(&json!({ "deployment": d.id, "progress": p }))?);
            } else {
                println!("  {}", line(p));
            }
        }
        if deployments::settled(&d) {
            let ok = deployments::all_succeeded(&d);
            if !json {
                println!("{}: {}", d.id, counts(&d));
                println!("{}", sent(&d));
                if d.state == "active" && d.target_kind == TargetKind::Group {
                    println!("(the deployment stays active: members that join group {} later get it)", d.target);
                }
            }
            return Ok(ok);
        }
        if timeout.is_some_and(|t| start.elapsed() >= t) {
            let waiting: Vec<&str> = d
                .devices
                .iter()
                .filter(|p| !edge_proto::deployments::is_terminal(&p.state))
                .map(|p| p.device.as_str())
                .collect();
            eprintln!(
                "edgectl: {} devices not done after {:?}: {}; the fleet service keeps delivering: `edgectl deployments watch {}`",
                waiting.len(),
                timeout.unwrap_or_default(),
                waiting.join(", "),
                d.id
            );
            return Ok(false);
        }
        if d.state != "active" && d.devices.is_empty() {
            bail!("deployment {} is {} and met no device", d.id, d.state);
        }
        last = Some(d);
        tokio::time::sleep(POLL).await;
    }
}

fn stored(d: &Deployment, json: bool) {
    if json {
        output::document(&serde_json::to_value(d).expect("deployments serialize"));
        return;
    }
    println!("{}", header(d));
    println!("devices: {}", if d.devices.is_empty() { "none known yet".to_string() } else { counts(d) });
    println!(
        "the fleet service delivers it to devices that come online later; follow with `edgectl deployments watch {}`",
        d.id
    );
}

fn target(d: &Deployment) -> String {
    match d.target_kind {
        TargetKind::Device => format!("device {}", d.target),
        TargetKind::Group => format!("group {}", d.target),
    }
}

fn header(d: &Deployment) -> String {
    let mut h = format!("deployment {}: {} {} to {}, {}", d.id, d.model, d.version, target(d), d.state);
    if let Some(by) = &d.superseded_by {
        h.push_str(&format!(" by {by}"));
    }
    h
}

/// What the transfer cost against what a full copy per device would have.
fn sent(d: &Deployment) -> String {
    let met = d.devices.len() as u64;
    let full = d.artifact_bytes * met;
    let share = if full > 0 {
        format!(" ({:.1} % of a full copy each)", 100.0 * d.bytes_sent as f64 / full as f64)
    } else {
        String::new()
    };
    format!("sent: {} chunk bytes to {met} device(s) for a {}-byte artifact{share}", d.bytes_sent, d.artifact_bytes)
}

fn counts(d: &Deployment) -> String {
    d.counts.iter().map(|(state, n)| format!("{n} {state}")).collect::<Vec<_>>().join(", ")
}

fn line(p: &DeviceProgress) -> String {
    let mut l = format!("{:<24} {}", p.device, p.state);
    if let Some(pct) = p.progress {
        l.push_str(&format!(" {pct}%"));
    }
    if p.bytes_sent > 0 {
        l.push_str(&format!(" [{} bytes sent]", p.bytes_sent));
    }
    if let Some(detail) = &p.detail {
        l.push_str(&format!(": {detail}"));
    }
    l
}
