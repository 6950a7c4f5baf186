//! `edgectl`: the operator's CLI for an edge-agent fleet.
//!
//! `edgectl --config ctl.toml watch` prints decoded telemetry; `edgectl status` lists the
//! devices from their retained status messages. `ctl.toml` takes the same `[mqtt]` keys as
//! the agent's configuration, and flags override them. `edgectl keygen --out DIR` makes the
//! key pair that signs fleet commands (no configuration needed).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use edge_agent::config::{host_port, MqttConfig};
use edge_proto::status::{State, Status};
use edge_proto::telemetry::Telemetry;
use edge_proto::topics::fleet;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use serde::Deserialize;

mod keys;

#[derive(Parser)]
#[command(name = "edgectl", version, about = "Operate an edge-agent fleet")]
struct Cli {
    /// Configuration file with an [mqtt] table, as the agent's.
    #[arg(long, global = true, default_value = "ctl.toml")]
    config: PathBuf,
    /// Broker URL, overriding [mqtt] url.
    #[arg(long, global = true)]
    url: Option<String>,
    /// CA file, overriding [mqtt] ca_file.
    #[arg(long, global = true)]
    ca_file: Option<PathBuf>,
    /// Operator certificate, overriding [mqtt] cert_file.
    #[arg(long, global = true)]
    cert_file: Option<PathBuf>,
    /// Operator key, overriding [mqtt] key_file.
    #[arg(long, global = true)]
    key_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print telemetry as it arrives.
    Watch {
        /// One device.
        #[arg(long, conflicts_with = "all")]
        device: Option<String>,
        /// Every device (the default).
        #[arg(long)]
        all: bool,
        /// Stop after N messages.
        #[arg(long)]
        count: Option<usize>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List devices from their retained status.
    Status {
        /// Seconds to wait for retained messages.
        #[arg(long, default_value_t = 2)]
        wait: u64,
        /// JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make the operator key pair that signs commands: DIR/operator.key (secret, 0600) and
    /// DIR/operator.pub (for the devices' [ota] trusted_keys). Never overwrites.
    Keygen {
        /// Directory to write the two files into.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CtlConfig {
    mqtt: MqttConfig,
}

fn load_mqtt(cli: &Cli) -> Result<MqttConfig> {
    let text = std::fs::read_to_string(&cli.config).with_context(|| format!("config {}", cli.config.display()))?;
    let mut mqtt = toml::from_str::<CtlConfig>(&text)
        .map_err(|e| anyhow::anyhow!("config {}: {}", cli.config.display(), e.message()))?
        .mqtt;
    let base = cli.config.parent().unwrap_or(Path::new("."));
    for p in [&mut mqtt.ca_file, &mut mqtt.cert_file, &mut mqtt.key_file] {
        if p.is_relative() {
            *p = base.join(&*p);
        }
    }
    if let Some(u) = &cli.url {
        mqtt.url = u.clone();
    }
    for (flag, target) in
        [(&cli.ca_file, &mut mqtt.ca_file), (&cli.cert_file, &mut mqtt.cert_file), (&cli.key_file, &mut mqtt.key_file)]
    {
        if let Some(v) = flag {
            *target = v.clone();
        }
    }
    Ok(mqtt)
}

async fn connect(mqtt: &MqttConfig) -> Result<(AsyncClient, rumqttc::EventLoop)> {
    let (host, port) = host_port(&mqtt.url).with_context(|| format!("[mqtt] url {:?} has no host:port", mqtt.url))?;
    let id = format!("edgectl-{}-{:08x}", std::process::id(), fastrand::u32(..));
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_max_packet_size(mqtt.max_packet_bytes, mqtt.max_packet_bytes);
    if mqtt.url.starts_with("mqtts://") {
        let tls = edge_agent::link::tls::client_config(&mqtt.ca_file, &mqtt.cert_file, &mqtt.key_file)?;
        opts.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    } else if !mqtt.allow_insecure {
        bail!("[mqtt] url {:?}: plaintext needs allow_insecure = true", mqtt.url);
    }
    Ok(AsyncClient::new(opts, 16))
}

/// Polls until the broker accepts the connection.
async fn wait_connected(eventloop: &mut rumqttc::EventLoop) -> Result<()> {
    loop {
        match eventloop.poll().await.context("connecting to the broker")? {
            Event::Incoming(Packet::ConnAck(_)) => return Ok(()),
            _ => continue,
        }
    }
}

fn table_row(t: &Telemetry) -> String {
    format!(
        "{:<16} {:>8} {:>6.1} {:>10} {:>10} {:>7} {:>7}",
        t.device,
        t.seq,
        t.cpu.total_pct,
        t.mem.used_bytes / (1 << 20),
        t.agent.rss_bytes / 1024,
        t.link.queued,
        t.link.dropped
    )
}

async fn watch(mqtt: &MqttConfig, device: Option<&str>, count: Option<usize>, json: bool) -> Result<()> {
    let (client, mut eventloop) = connect(mqtt).await?;
    wait_connected(&mut eventloop).await?;
    client.subscribe(fleet::telemetry(&mqtt.topic_prefix, device), QoS::AtLeastOnce).await?;
    if !json {
        println!(
            "{:<16} {:>8} {:>6} {:>10} {:>10} {:>7} {:>7}",
            "DEVICE", "SEQ", "CPU%", "MEM MiB", "RSS KiB", "QUEUED", "DROPPED"
        );
    }
    let mut seen = 0;
    while count.is_none_or(|c| seen < c) {
        let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await.context("broker connection")? else {
            continue;
        };
        match edge_proto::decode::<Telemetry>(&p.payload) {
            Ok(t) => {
                if json {
                    println!("{}", serde_json::to_string(&t)?);
                } else {
                    println!("{}", table_row(&t));
                }
                seen += 1;
            }
            Err(e) => eprintln!("edgectl: skipping message on {}: {e}", p.topic),
        }
    }
    Ok(())
}

async fn status(mqtt: &MqttConfig, wait: Duration, json: bool) -> Result<()> {
    let (client, mut eventloop) = connect(mqtt).await?;
    wait_connected(&mut eventloop).await?;
    client.subscribe(fleet::status(&mqtt.topic_prefix, None), QoS::AtLeastOnce).await?;
    let mut devices: BTreeMap<String, Status> = BTreeMap::new();
    let deadline = tokio::time::sleep(wait);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            event = eventloop.poll() => {
                if let Event::Incoming(Packet::Publish(p)) = event.context("broker connection")? {
                    match edge_proto::decode::<Status>(&p.payload) {
                        Ok(s) => { devices.insert(s.device.clone(), s); }
                        Err(e) => eprintln!("edgectl: skipping status on {}: {e}", p.topic),
                    }
                }
            }
        }
    }
    if json {
        for s in devices.values() {
            println!("{}", serde_json::to_string(s)?);
        }
        return Ok(());
    }
    println!("{:<16} {:<8} {:<10} {:>10}  MODELS", "DEVICE", "STATE", "VERSION", "UPTIME s");
    for s in devices.values() {
        let state = match s.state {
            State::Online => "online",
            State::Offline => "offline",
        };
        println!("{:<16} {:<8} {:<10} {:>10}  {}", s.device, state, s.agent_version, s.uptime_secs, s.models.join(","));
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = (|| -> Result<()> {
        if let Command::Keygen { out } = &cli.command {
            let (key, public, id) = keys::keygen(out)?;
            println!("wrote {} and {} (key id {id})", key.display(), public.display());
            return Ok(());
        }
        let mqtt = load_mqtt(&cli)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async {
            match &cli.command {
                Command::Watch { device, all: _, count, json } => watch(&mqtt, device.as_deref(), *count, *json).await,
                Command::Status { wait, json } => status(&mqtt, Duration::from_secs(*wait), *json).await,
                Command::Keygen { .. } => unreachable!("handled before loading the configuration"),
            }
        })
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgectl: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
