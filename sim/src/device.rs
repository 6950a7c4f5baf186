//! One simulated device without I/O: what it answers to a command, a chunk or the passing
//! of time, and the status and telemetry it publishes. [`crate::session`] carries the
//! [`Out`]s over MQTT.
//!
//! It follows the agent where the fleet can see the difference:
//!
//! - the acceptance order of `commands::Gate` (docs/protocol.md, "Acceptance"): size,
//!   version, decoding, key, signature (all in `edge_proto::command::verify`), expiry, not
//!   yet valid, target, replay; a refusal is acked `Rejected(reason)` with the agent's
//!   reason prefixes, and a command for someone else is not answered;
//! - a deploy is acked `Accepted`, `Progress(0)`, a progress at every tenth,
//!   `Progress(100)`, then the status is published again with the new version active and
//!   healthy (what edge-fleet counts as `succeeded`), then `Succeeded`;
//! - a transfer still incomplete when its command expires fails with the agent's reason.
//!
//! What it skips: disk (nothing is written; a restart is not simulated), validation in a
//! child process and the health window (a first version is marked good at once on the
//! agent too), delta transfers (it holds no earlier chunks, so it needs every chunk, which
//! is what an agent without a matching version gets). Commands other than `deploy-model`,
//! `get-status` and `cancel` are accepted and then failed as not simulated.

use std::collections::HashSet;
use std::time::Duration;

use edge_proto::codec::Versioned;
use edge_proto::command::{verify, AckState, Command, DeviceStatus, ModelStatus, Payload, Reply, Target, VerifyingKey};
use edge_proto::ota::Need;
use edge_proto::status::{State, Status};
use edge_proto::telemetry::{
    Agent, Cpu, Disk, Link, Mem, ModelLatency, ModelStats, Net, Telemetry, Temp, LATENCY_BUCKETS,
};

use crate::receiver::{Receiver, Taken};

/// The clock-skew allowance for `issued_at`, as the agent's.
const SKEW_MS: u64 = 5 * 60 * 1000;
/// Requests each telemetry sample adds to the simulated model's counters.
const REQUESTS_PER_SAMPLE: u64 = 10;

/// What every simulated device shares.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Groups every device is a member of.
    pub groups: Vec<String>,
    /// Keys whose commands are accepted (`[ota] trusted_keys`).
    pub trusted: Vec<VerifyingKey>,
    /// Agent version reported.
    pub agent_version: String,
    /// Silence after which missing chunks are asked for (`[ota] stall_secs`).
    pub stall: Duration,
}

/// Something to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Out {
    /// An ack on the device's `ack` topic.
    Ack {
        /// The command acknowledged.
        command_id: [u8; 16],
        /// Its state.
        state: AckState,
        /// Data returned with `Succeeded`.
        reply: Option<Reply>,
    },
    /// The retained online status, again (the models changed).
    Status,
    /// A repair request on the device's `need` topic.
    Need(Need),
    /// A deploy ended: `Ok` installed, `Err` failed (for the bench's tally; not published).
    Finished(Result<(), String>),
}

struct Transfer {
    command_id: [u8; 16],
    expires_at: u64,
    receiver: Receiver,
}

/// One device's state.
pub struct Device {
    id: String,
    profile: std::sync::Arc<Profile>,
    models: Vec<ModelStatus>,
    window: HashSet<[u8; 16]>,
    transfer: Option<Transfer>,
    seq: u64,
    started_ms: u64,
    requests: u64,
    buckets: [u64; LATENCY_BUCKETS.len()],
    sum_secs: f64,
}

impl Device {
    /// Device `id`, started at `now_ms`, serving one model (`kws` version 1).
    pub fn new(id: &str, profile: std::sync::Arc<Profile>, now_ms: u64) -> Device {
        Device {
            id: id.into(),
            profile,
            models: vec![ModelStatus {
                name: "kws".into(),
                active_version: Some("1".into()),
                installed_versions: vec!["1".into()],
                health: "ok".into(),
            }],
            window: HashSet::new(),
            transfer: None,
            seq: 0,
            started_ms: now_ms,
            requests: 0,
            buckets: [0; LATENCY_BUCKETS.len()],
            sum_secs: 0.0,
        }
    }

    /// The device id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether a transfer is in progress.
    pub fn transferring(&self) -> bool {
        self.transfer.is_some()
    }

    /// The status, online or offline (the last will).
    pub fn status(&self, state: State, now_ms: u64) -> Status {
        Status {
            version: Status::VERSION,
            device: self.id.clone(),
            state,
            agent_version: self.profile.agent_version.clone(),
            models: self.models.iter().map(|m| m.name.clone()).collect(),
            uptime_secs: if state == State::Online { now_ms.saturating_sub(self.started_ms) / 1000 } else { 0 },
            ts: now_ms,
            groups: self.profile.groups.clone(),
            model_states: self.models.clone(),
        }
    }

    /// The next telemetry sample (current version, next `seq`), taken at `now_ms`.
    pub fn telemetry(&mut self, now_ms: u64) -> Telemetry {
        let seq = self.seq;
        self.seq += 1;
        // Latencies spread over a few buckets around 3 ms, deterministic per sample.
        for k in 0..REQUESTS_PER_SAMPLE {
            let bucket = 5 + ((seq + k) % 4) as usize;
            self.buckets[bucket] += 1;
            self.sum_secs += LATENCY_BUCKETS[bucket] * 0.75;
        }
        self.requests += REQUESTS_PER_SAMPLE;
        let cumulative: Vec<u64> =
            self.buckets.iter().scan(0, |acc, b| Some(*acc + b).inspect(|v| *acc = *v)).collect();
        let uptime = now_ms.saturating_sub(self.started_ms) / 1000;
        let wobble = (seq % 7) as f32;
        let active = self.models.iter().find(|m| m.name == "kws");
        let name = active.map(|m| m.name.clone()).unwrap_or_else(|| "kws".into());
        Telemetry {
            version: Telemetry::VERSION,
            device: self.id.clone(),
            seq,
            ts: now_ms,
            uptime_secs: uptime + 3600,
            cpu: Cpu { total_pct: 12.0 + wobble, per_core_pct: vec![10.0 + wobble, 14.0] },
            load: [0.3, 0.25, 0.2],
            mem: Mem {
                total_bytes: 1 << 30,
                used_bytes: 300 << 20,
                available_bytes: 700 << 20,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
            },
            agent: Agent {
                version: self.profile.agent_version.clone(),
                rss_bytes: 14 << 20,
                cpu_pct: 2.5,
                uptime_secs: uptime,
            },
            disk: Disk { free_bytes: 6 << 30, total_bytes: 8 << 30 },
            temps: vec![Temp { label: "cpu".into(), celsius: 48.0 + wobble }],
            net: Net { rx_bytes: seq * 2048, tx_bytes: seq * 1024 },
            models: vec![ModelStats {
                name: name.clone(),
                requests: self.requests,
                errors: 0,
                in_flight: 0,
                p50_ms: 3.0,
                p95_ms: 5.0,
                p99_ms: 6.0,
            }],
            link: Link { reconnects: 0, queued: 0, dropped: 0, bytes_sent: seq * 400 },
            disk_full: false,
            cert_not_after: Some(2_000_000_000),
            latency: vec![ModelLatency { name, buckets: cumulative, count: self.requests, sum_secs: self.sum_secs }],
            versions: vec![],
            tensors: vec![],
        }
    }

    /// A command arrived on one of the device's command topics.
    pub fn on_command(&mut self, bytes: &[u8], now: Duration, now_ms: u64) -> Vec<Out> {
        let cmd = match self.gate(bytes, now_ms) {
            Ok(cmd) => cmd,
            Err(None) => return vec![],
            Err(Some((command_id, reason))) => {
                return vec![Out::Ack { command_id, state: AckState::Rejected(reason), reply: None }]
            }
        };
        let ack = |state| Out::Ack { command_id: cmd.id, state, reply: None };
        match cmd.payload {
            Payload::DeployModel(manifest)
            | Payload::DeployModelContent(manifest)
            | Payload::DeployModelProfiled(manifest) => {
                if let Err(e) = manifest.check_consistent() {
                    return vec![ack(AckState::Rejected(format!("bad manifest: {e}")))];
                }
                let mut out = vec![];
                if let Some(old) = self.transfer.take() {
                    out.push(Out::Ack {
                        command_id: old.command_id,
                        state: AckState::Failed(format!("superseded by deploy {}", edge_proto::command::hex(&cmd.id))),
                        reply: None,
                    });
                }
                let delta = manifest.content.is_some();
                let mut receiver = Receiver::new(manifest, now, self.profile.stall);
                out.extend([ack(AckState::Accepted), ack(AckState::Progress(0))]);
                // Content-defined chunks: the sender waits to be told what to send. A
                // simulated device holds no earlier version, so it asks for everything
                // (the agent asks again as soon as a request is answered; this asks again
                // after a stall, which takes more than 512 chunks only for large models).
                if delta {
                    let missing = receiver.ask_now(now);
                    out.push(Out::Need(Need {
                        version: Need::VERSION,
                        device: self.id.clone(),
                        transfer_id: receiver.manifest().transfer_id,
                        missing,
                    }));
                }
                self.transfer = Some(Transfer { command_id: cmd.id, expires_at: cmd.expires_at, receiver });
                out
            }
            Payload::GetStatus => {
                let reply = Reply::Status(DeviceStatus {
                    agent_version: self.profile.agent_version.clone(),
                    models: self.models.clone(),
                    config_digest: String::new(),
                    telemetry_interval_secs: 1,
                    log_level: "info".into(),
                });
                vec![
                    ack(AckState::Accepted),
                    Out::Ack { command_id: cmd.id, state: AckState::Succeeded, reply: Some(reply) },
                ]
            }
            Payload::Cancel { command_id } => match self.transfer.take_if(|t| t.command_id == command_id) {
                Some(_) => vec![
                    ack(AckState::Accepted),
                    Out::Ack { command_id, state: AckState::Failed("cancelled by the operator".into()), reply: None },
                    ack(AckState::Succeeded),
                ],
                None => vec![ack(AckState::Accepted), ack(AckState::Failed("no such deploy in progress".into()))],
            },
            _ => vec![ack(AckState::Accepted), ack(AckState::Failed("edge-sim does not simulate this command".into()))],
        }
    }

    /// The acceptance checks, in the agent's order. `Err(None)`: not for this device, not
    /// answered; `Err(Some((id, reason)))`: rejected.
    fn gate(&mut self, bytes: &[u8], now_ms: u64) -> Result<Command, Option<([u8; 16], String)>> {
        use edge_proto::command::CommandError;
        let cmd = verify(bytes, &self.profile.trusted).map_err(|e| {
            // The id is the second field in every version: answer it when it can be read.
            let id = postcard::take_from_bytes::<(u16, [u8; 16])>(bytes).ok().map(|((_, id), _)| id);
            let reason = match &e {
                CommandError::TooLarge(_) => format!("oversized: {e}"),
                CommandError::UnknownVersion { .. } => format!("unknown_version: {e}"),
                CommandError::Malformed(_) => format!("malformed: {e}"),
                CommandError::UnknownKey(_) => format!("unknown_key: {e}"),
                CommandError::BadSignature(_) => format!("bad_signature: {e}"),
            };
            id.map(|id| (id, reason))
        })?;
        let reject = |reason: String| Some((cmd.id, reason));
        if cmd.expires_at < now_ms {
            return Err(reject(format!("expired at {} (now {now_ms})", cmd.expires_at)));
        }
        if cmd.issued_at > now_ms + SKEW_MS {
            return Err(reject(format!("not_yet_valid: issued at {} (now {now_ms})", cmd.issued_at)));
        }
        let mine = match &cmd.target {
            Target::Device(d) => *d == self.id,
            Target::Group(g) => self.profile.groups.contains(g),
        };
        if !mine {
            return Err(None);
        }
        if !self.window.insert(cmd.id) {
            return Err(reject("replayed: this command was accepted before".into()));
        }
        Ok(cmd)
    }

    /// A chunk arrived on one of the device's `ota` topics.
    pub fn on_chunk(&mut self, bytes: &[u8], now: Duration) -> (Vec<Out>, Option<Taken>) {
        let Ok(chunk) = edge_proto::ota::decode_chunk(bytes) else { return (vec![], None) };
        let Some(t) = &mut self.transfer else { return (vec![], None) };
        let id = t.command_id;
        let taken = t.receiver.on_chunk(now, chunk);
        let ack = |state| Out::Ack { command_id: id, state, reply: None };
        let out = match &taken {
            Taken::Taken(Some(p)) => vec![ack(AckState::Progress(*p))],
            Taken::Complete(Ok(())) => {
                let m = self.transfer.take().expect("a transfer").receiver.manifest().clone();
                self.install(&m.name, &m.version);
                vec![ack(AckState::Progress(100)), Out::Status, ack(AckState::Succeeded), Out::Finished(Ok(()))]
            }
            Taken::Complete(Err(reason)) => {
                self.transfer = None;
                vec![
                    ack(AckState::Progress(100)),
                    ack(AckState::Failed(reason.clone())),
                    Out::Finished(Err(reason.clone())),
                ]
            }
            _ => vec![],
        };
        (out, Some(taken))
    }

    /// Time passes: a repair request after a stall, or the end of an expired transfer.
    pub fn on_tick(&mut self, now: Duration, now_ms: u64) -> Vec<Out> {
        let Some(t) = &mut self.transfer else { return vec![] };
        if t.expires_at < now_ms {
            let id = t.command_id;
            self.transfer = None;
            let reason = "the command expired before the transfer completed".to_string();
            return vec![
                Out::Ack { command_id: id, state: AckState::Failed(reason.clone()), reply: None },
                Out::Finished(Err(reason)),
            ];
        }
        match t.receiver.on_tick(now) {
            Some(missing) => vec![Out::Need(Need {
                version: 1,
                device: self.id.clone(),
                transfer_id: t.receiver.manifest().transfer_id,
                missing,
            })],
            None => vec![],
        }
    }

    /// The version becomes the active one, healthy at once (a first version is marked good
    /// as soon as it loads; the simulator has no traffic to judge a trial by).
    fn install(&mut self, name: &str, version: &str) {
        let entry = match self.models.iter().position(|m| m.name == name) {
            Some(i) => &mut self.models[i],
            None => {
                self.models.push(ModelStatus {
                    name: name.into(),
                    active_version: None,
                    installed_versions: vec![],
                    health: "ok".into(),
                });
                self.models.last_mut().expect("pushed")
            }
        };
        entry.active_version = Some(version.into());
        if !entry.installed_versions.iter().any(|v| v == version) {
            entry.installed_versions.push(version.into());
        }
        entry.health = "ok".into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::command::{sign, SigningKey};
    use edge_proto::ota::{prepare, Chunk, ModelFormat};
    use std::sync::Arc;

    const NOW: u64 = 1_800_000_000_000;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn device() -> Device {
        let profile = Profile {
            groups: vec!["bench".into()],
            trusted: vec![key().verifying_key()],
            agent_version: "0.1.0".into(),
            stall: Duration::from_secs(5),
        };
        Device::new("sim-1", Arc::new(profile), NOW - 10_000)
    }

    fn deploy(target: Target, expires_at: u64) -> (Vec<u8>, edge_proto::ota::Manifest, Vec<u8>) {
        let (m, artifact) = prepare([4; 16], "det", "2", ModelFormat::Onnx, &[3u8; 950], None, 100);
        let cmd = edge_proto::command::Command::new([1; 16], NOW, expires_at, target, Payload::DeployModel(m.clone()));
        (edge_proto::encode(&sign(cmd, &key())), m, artifact)
    }

    fn states(out: &[Out]) -> Vec<AckState> {
        out.iter().filter_map(|o| if let Out::Ack { state, .. } = o { Some(state.clone()) } else { None }).collect()
    }

    #[test]
    fn a_group_deploy_is_acked_like_the_agent_and_ends_with_the_version_active_and_healthy() {
        let mut d = device();
        let (cmd, m, artifact) = deploy(Target::Group("bench".into()), NOW + 60_000);
        let out = d.on_command(&cmd, Duration::ZERO, NOW);
        assert_eq!(states(&out), vec![AckState::Accepted, AckState::Progress(0)]);
        let mut acks = vec![];
        let mut all = vec![];
        for i in 0..m.chunk_count() {
            let r = m.chunk_range(i);
            let chunk = Chunk {
                version: 1,
                transfer_id: m.transfer_id,
                index: i,
                data: artifact[r.start as usize..r.end as usize].to_vec(),
            };
            let (out, _) = d.on_chunk(&edge_proto::encode(&chunk), Duration::from_secs(1));
            acks.extend(states(&out));
            all.extend(out);
        }
        assert_eq!(acks.first(), Some(&AckState::Progress(10)));
        assert_eq!(&acks[acks.len() - 2..], &[AckState::Progress(100), AckState::Succeeded]);
        let status_at = all.iter().position(|o| *o == Out::Status).expect("status published");
        let succeeded_at = all.iter().position(|o| matches!(o, Out::Ack { state: AckState::Succeeded, .. })).unwrap();
        assert!(status_at < succeeded_at, "the status shows the version before the ack says succeeded");
        let det = d.status(State::Online, NOW).model_states.into_iter().find(|s| s.name == "det").unwrap();
        assert_eq!((det.active_version.as_deref(), det.health.as_str()), (Some("2"), "ok"));
    }

    #[test]
    fn a_content_deploy_asks_for_every_chunk_right_after_accepting() {
        let mut d = device();
        let model: Vec<u8> = (0..5000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let params = edge_proto::cdc::CdcParams::for_max(1000).unwrap();
        let cut = edge_proto::ota::Cut::Content(params);
        let (m, _) = edge_proto::ota::prepare_cut([4; 16], "det", "3", ModelFormat::Onnx, &model, None, cut);
        let cmd = edge_proto::command::Command::new(
            [2; 16],
            NOW,
            NOW + 60_000,
            Target::Group("bench".into()),
            Payload::deploy(m.clone()),
        );
        let out = d.on_command(&edge_proto::encode(&sign(cmd, &key())), Duration::ZERO, NOW);
        assert_eq!(states(&out), vec![AckState::Accepted, AckState::Progress(0)]);
        let need = out.iter().find_map(|o| if let Out::Need(n) = o { Some(n) } else { None }).expect("a need");
        assert_eq!((need.transfer_id, need.missing.clone()), (m.transfer_id, vec![(0, m.chunk_count())]));
    }

    #[test]
    fn refusals_follow_the_gate_order_and_a_command_for_another_device_is_not_answered() {
        let mut d = device();
        let (cmd, ..) = deploy(Target::Device("sim-2".into()), NOW + 60_000);
        assert!(d.on_command(&cmd, Duration::ZERO, NOW).is_empty());
        let (cmd, ..) = deploy(Target::Group("bench".into()), NOW - 1);
        assert!(
            matches!(&states(&d.on_command(&cmd, Duration::ZERO, NOW))[..], [AckState::Rejected(r)] if r.starts_with("expired"))
        );
        let (mut cmd, ..) = deploy(Target::Group("bench".into()), NOW + 60_000);
        let last = cmd.len() - 1;
        cmd[last] ^= 1;
        assert!(
            matches!(&states(&d.on_command(&cmd, Duration::ZERO, NOW))[..], [AckState::Rejected(r)] if r.starts_with("bad_signature"))
        );
        cmd[last] ^= 1;
        assert_eq!(states(&d.on_command(&cmd, Duration::ZERO, NOW)).len(), 2);
        assert!(
            matches!(&states(&d.on_command(&cmd, Duration::ZERO, NOW))[..], [AckState::Rejected(r)] if r.starts_with("replayed"))
        );
    }

    #[test]
    fn a_stalled_transfer_asks_for_its_missing_chunks_and_an_expired_one_fails() {
        let mut d = device();
        let (cmd, m, _) = deploy(Target::Group("bench".into()), NOW + 60_000);
        d.on_command(&cmd, Duration::ZERO, NOW);
        let out = d.on_tick(Duration::from_secs(5), NOW + 5_000);
        assert!(matches!(&out[..], [Out::Need(n)] if n.missing == vec![(0, m.chunk_count())] && n.device == "sim-1"));
        let out = d.on_tick(Duration::from_secs(61), NOW + 61_000);
        assert!(matches!(&out[..], [Out::Ack { state: AckState::Failed(_), .. }, Out::Finished(Err(_))]));
        assert!(!d.transferring());
    }

    #[test]
    fn telemetry_counts_on_and_its_histogram_is_cumulative() {
        let mut d = device();
        let a = d.telemetry(NOW);
        let b = d.telemetry(NOW + 1000);
        assert_eq!((a.seq, b.seq), (0, 1));
        let h = &b.latency[0];
        assert_eq!(h.buckets.len(), LATENCY_BUCKETS.len());
        assert!(h.buckets.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*h.buckets.last().unwrap(), h.count);
        assert_eq!(edge_proto::telemetry::decode(&b.encode(Default::default())).unwrap(), b);
    }
}
