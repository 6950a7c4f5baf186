//! The inventory as pure state: what one message from a device says ([`Observation`],
//! read from a topic and payload by [`observe`]) and how it changes that device's record
//! ([`apply`]). No I/O: the database layer stores what [`apply`] returns.
//!
//! Who says what:
//! - the retained **status** is the authority on `online`, groups and, since Status v2,
//!   each model's active and installed versions and health. A version 1 status carries
//!   only model names: the record keeps what it knew of the groups, and the models become
//!   names without versions.
//! - **telemetry** reports the agent version and the certificate expiry (`cert_not_after`,
//!   since Telemetry v2). It does not set `online`: a sample may have waited in the
//!   device's outbox, or in the broker's queue for this service, and arrive after the
//!   device left.
//! - an **ack** carrying a `get-status` reply refreshes the agent version and the models.
//! - a **need** (a device's request for missing chunks) changes nothing here; it is read
//!   for the deployments, which serve the chunks.
//!
//! `last_seen` is the newest timestamp a device put in a message (its own clock, in
//! milliseconds since the Unix epoch): samples delivered late never move it back. The
//! offline last will carries the time of the connection it belongs to, so it does not
//! move `last_seen` either.

use edge_proto::command::{Ack, ModelStatus, Reply};
pub use edge_proto::inventory::Device;
use edge_proto::ota::Need;
use edge_proto::status::{State, Status};
use edge_proto::telemetry::Telemetry;

/// Which topic a message came on, for the metrics' `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `{prefix}/{device}/status`
    Status,
    /// `{prefix}/{device}/telemetry`
    Telemetry,
    /// `{prefix}/{device}/ack`
    Ack,
    /// `{prefix}/{device}/need`
    Need,
}

impl Kind {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Status => "status",
            Kind::Telemetry => "telemetry",
            Kind::Ack => "ack",
            Kind::Need => "need",
        }
    }
}

/// What one message says about one device.
#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// A retained status.
    Status(Status),
    /// A telemetry sample (only what the inventory keeps of it).
    Telemetry {
        /// Sample time, ms since the Unix epoch.
        ts: u64,
        /// Agent version.
        agent_version: String,
        /// Certificate expiry, if reported.
        cert_not_after: Option<i64>,
        /// Per-version figures (telemetry version 4), for rollouts.
        versions: Vec<edge_proto::telemetry::VersionStats>,
    },
    /// A command ack.
    Ack(Ack),
    /// An empty retained status: someone cleared it (the device was retired).
    Cleared,
    /// A request for missing chunks.
    Need(Need),
}

/// Why a message was not turned into an [`Observation`].
#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    /// The topic is not `{prefix}/{device}/status|telemetry|ack|need`.
    #[error("topic {0:?} is not a device's status, telemetry, ack or need topic")]
    Topic(String),
    /// The payload does not decode.
    #[error("{kind} on {topic:?}: {reason}")]
    Payload {
        /// The topic.
        topic: String,
        /// Which message.
        kind: &'static str,
        /// The decoder's reason.
        reason: String,
    },
    /// The payload names another device than its topic: the topic (which the broker's ACL
    /// ties to the sender's certificate) is believed, the message is not.
    #[error("{kind} on {topic:?} claims to be from device {claimed:?}")]
    Mismatch {
        /// The topic.
        topic: String,
        /// Which message.
        kind: &'static str,
        /// The device id in the payload.
        claimed: String,
    },
}

/// The kind and device of a topic under `prefix`, if it is one the inventory reads.
pub fn route<'t>(prefix: &str, topic: &'t str) -> Option<(Kind, &'t str)> {
    let mut parts = topic.split('/');
    let (p, device, leaf) = (parts.next()?, parts.next()?, parts.next()?);
    if p != prefix || parts.next().is_some() || device == "group" || device.is_empty() {
        return None;
    }
    let kind = match leaf {
        "status" => Kind::Status,
        "telemetry" => Kind::Telemetry,
        "ack" => Kind::Ack,
        "need" => Kind::Need,
        _ => return None,
    };
    Some((kind, device))
}

/// Reads a message: its device, kind and what it says.
pub fn observe(prefix: &str, topic: &str, payload: &[u8]) -> Result<(String, Kind, Observation), ObserveError> {
    let (kind, device) = route(prefix, topic).ok_or_else(|| ObserveError::Topic(topic.into()))?;
    let bad = |reason: String| ObserveError::Payload { topic: topic.into(), kind: kind.as_str(), reason };
    let (claimed, obs) = match kind {
        Kind::Status if payload.is_empty() => (device.to_string(), Observation::Cleared),
        Kind::Status => {
            let s = edge_proto::status::decode(payload).map_err(|e| bad(e.to_string()))?;
            (s.device.clone(), Observation::Status(s))
        }
        Kind::Telemetry => {
            let t: Telemetry = edge_proto::telemetry::decode(payload).map_err(|e| bad(e.to_string()))?;
            let obs = Observation::Telemetry {
                ts: t.ts,
                agent_version: t.agent.version,
                cert_not_after: t.cert_not_after,
                versions: t.versions,
            };
            (t.device, obs)
        }
        Kind::Ack => {
            let a: Ack = edge_proto::decode(payload).map_err(|e| bad(e.to_string()))?;
            (a.device.clone(), Observation::Ack(a))
        }
        Kind::Need => {
            let n: Need = edge_proto::decode(payload).map_err(|e| bad(e.to_string()))?;
            (n.device.clone(), Observation::Need(n))
        }
    };
    if claimed != device {
        return Err(ObserveError::Mismatch { topic: topic.into(), kind: kind.as_str(), claimed });
    }
    Ok((device.to_string(), kind, obs))
}

/// What to do with the device's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Store this record.
    Put(Device),
    /// Remove the device.
    Forget,
    /// Nothing to store.
    Keep,
}

/// The record of `device` after `obs`, from what was known before (`None`: a device never
/// seen).
pub fn apply(device: &str, known: Option<Device>, obs: &Observation) -> Change {
    let new = known.is_none();
    let mut d = known.unwrap_or_else(|| Device { device: device.to_string(), ..Device::default() });
    let seen = |d: &mut Device, ts: u64| {
        let ts = i64::try_from(ts).unwrap_or(i64::MAX);
        d.last_seen = Some(d.last_seen.map_or(ts, |s| s.max(ts)));
    };
    match obs {
        Observation::Cleared => return Change::Forget,
        Observation::Need(_) => return Change::Keep,
        Observation::Status(s) => {
            d.online = s.state == State::Online;
            if d.online {
                seen(&mut d, s.ts);
            }
            // The last will was made when the device connected: its models may have changed
            // since (a deploy), so it says only "offline" of a device already known.
            if !d.online && !new {
                return Change::Put(d);
            }
            if !s.agent_version.is_empty() {
                d.agent_version = Some(s.agent_version.clone());
            }
            if s.version >= 2 {
                d.groups = sorted(s.groups.clone());
                d.models = s.model_states.clone();
            } else {
                d.models = s
                    .models
                    .iter()
                    .map(|name| ModelStatus {
                        name: name.clone(),
                        active_version: None,
                        installed_versions: Vec::new(),
                        health: "unknown".into(),
                    })
                    .collect();
            }
            d.models.sort_by(|a, b| a.name.cmp(&b.name));
        }
        Observation::Telemetry { ts, agent_version, cert_not_after, .. } => {
            seen(&mut d, *ts);
            if !agent_version.is_empty() {
                d.agent_version = Some(agent_version.clone());
            }
            if cert_not_after.is_some() {
                d.cert_not_after = *cert_not_after;
            }
        }
        Observation::Ack(a) => {
            seen(&mut d, a.ts);
            if let Some(Reply::Status(s)) = &a.reply {
                d.agent_version = Some(s.agent_version.clone());
                d.models = s.models.clone();
                d.models.sort_by(|a, b| a.name.cmp(&b.name));
            }
        }
    }
    Change::Put(d)
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::codec::Versioned;
    use edge_proto::command::{AckState, DeviceStatus};

    fn model(name: &str, active: &str) -> ModelStatus {
        ModelStatus {
            name: name.into(),
            active_version: Some(active.into()),
            installed_versions: vec![active.into()],
            health: "ok".into(),
        }
    }

    fn status(state: State, ts: u64) -> Status {
        Status {
            version: Status::VERSION,
            device: "dev-1".into(),
            state,
            agent_version: "0.2.0".into(),
            models: vec!["wake".into()],
            uptime_secs: 1,
            ts,
            groups: vec!["cams".into(), "all".into()],
            model_states: vec![model("wake", "3")],
        }
    }

    fn put(c: Change) -> Device {
        match c {
            Change::Put(d) => d,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_repair_request_changes_nothing_in_the_inventory() {
        let need = Need { version: 1, device: "dev-1".into(), transfer_id: [1; 16], missing: vec![(0, 3)] };
        let (device, kind, obs) = observe("edge", "edge/dev-1/need", &edge_proto::encode(&need)).unwrap();
        assert_eq!((device.as_str(), kind), ("dev-1", Kind::Need));
        assert_eq!(apply("dev-1", None, &obs), Change::Keep);
    }

    #[test]
    fn a_v2_status_sets_online_groups_and_model_versions() {
        let d = put(apply("dev-1", None, &Observation::Status(status(State::Online, 1_000))));
        assert!(d.online);
        assert_eq!(d.groups, ["all", "cams"]);
        assert_eq!(d.models, [model("wake", "3")]);
        assert_eq!((d.last_seen, d.agent_version.as_deref()), (Some(1_000), Some("0.2.0")));
    }

    #[test]
    fn the_last_will_sets_offline_and_keeps_everything_else() {
        let mut online = status(State::Online, 5_000);
        online.model_states = vec![model("wake", "4")];
        let on = put(apply("dev-1", None, &Observation::Status(online)));
        // The will carries the time its connection was made, before the online status, and
        // the models as they were then (version 3, since replaced by 4).
        let off = put(apply("dev-1", Some(on.clone()), &Observation::Status(status(State::Offline, 4_990))));
        assert!(!off.online);
        assert_eq!(off.last_seen, Some(5_000));
        assert_eq!((off.groups, off.models), (on.groups, on.models));
    }

    #[test]
    fn a_v1_status_keeps_known_groups_and_lists_names_without_versions() {
        let on = put(apply("dev-1", None, &Observation::Status(status(State::Online, 1))));
        let mut v1 = status(State::Online, 2);
        v1.version = 1;
        v1.groups.clear();
        v1.model_states.clear();
        let d = put(apply("dev-1", Some(on), &Observation::Status(v1)));
        assert_eq!(d.groups, ["all", "cams"]);
        assert_eq!(d.models.len(), 1);
        assert_eq!((d.models[0].name.as_str(), d.models[0].active_version.as_ref()), ("wake", None));
    }

    #[test]
    fn late_telemetry_never_moves_last_seen_back_nor_sets_online() {
        let on = put(apply("dev-1", None, &Observation::Status(status(State::Offline, 9_000))));
        assert_eq!(on.last_seen, None);
        let obs = |ts| Observation::Telemetry {
            ts,
            agent_version: "0.2.1".into(),
            cert_not_after: Some(1_900_000_000),
            versions: vec![],
        };
        let d = put(apply("dev-1", Some(on), &obs(10_000)));
        let d = put(apply("dev-1", Some(d), &obs(7_000)));
        assert_eq!(d.last_seen, Some(10_000));
        assert!(!d.online);
        assert_eq!((d.agent_version.as_deref(), d.cert_not_after), (Some("0.2.1"), Some(1_900_000_000)));
        // A v1 sample (no expiry) keeps the one known.
        let v1 = Observation::Telemetry {
            ts: 11_000,
            agent_version: "0.2.1".into(),
            cert_not_after: None,
            versions: vec![],
        };
        assert_eq!(put(apply("dev-1", Some(d), &v1)).cert_not_after, Some(1_900_000_000));
    }

    #[test]
    fn a_get_status_reply_refreshes_the_models() {
        let on = put(apply("dev-1", None, &Observation::Status(status(State::Online, 1))));
        let reply = DeviceStatus {
            agent_version: "0.3.0".into(),
            models: vec![model("wake", "4"), model("asr", "1")],
            config_digest: String::new(),
            telemetry_interval_secs: 10,
            log_level: "info".into(),
        };
        let ack = Ack {
            version: Ack::VERSION,
            command_id: [1; 16],
            device: "dev-1".into(),
            state: AckState::Succeeded,
            ts: 50,
            reply: Some(Reply::Status(reply)),
        };
        let d = put(apply("dev-1", Some(on), &Observation::Ack(ack)));
        assert_eq!(d.models, [model("asr", "1"), model("wake", "4")]);
        assert_eq!((d.agent_version.as_deref(), d.last_seen), (Some("0.3.0"), Some(50)));
    }

    #[test]
    fn a_cleared_status_forgets_the_device() {
        assert_eq!(apply("dev-1", None, &Observation::Cleared), Change::Forget);
    }

    #[test]
    fn topics_are_routed_by_prefix_device_and_leaf() {
        assert_eq!(route("edge", "edge/dev-1/status"), Some((Kind::Status, "dev-1")));
        assert_eq!(route("edge", "edge/dev-1/telemetry"), Some((Kind::Telemetry, "dev-1")));
        assert_eq!(route("edge", "edge/dev-1/ack"), Some((Kind::Ack, "dev-1")));
        for t in ["edge/dev-1/cmd", "other/dev-1/status", "edge/group/status", "edge/dev-1/status/x", "edge//ack"] {
            assert_eq!(route("edge", t), None, "{t}");
        }
    }

    #[test]
    fn observe_refuses_garbage_and_payloads_that_name_another_device() {
        let bytes = edge_proto::encode(&status(State::Online, 1));
        let (device, kind, _) = observe("edge", "edge/dev-1/status", &bytes).unwrap();
        assert_eq!((device.as_str(), kind), ("dev-1", Kind::Status));
        assert!(matches!(observe("edge", "edge/dev-2/status", &bytes), Err(ObserveError::Mismatch { .. })));
        let err = observe("edge", "edge/dev-1/telemetry", b"\x07garbage").unwrap_err();
        assert!(matches!(err, ObserveError::Payload { kind: "telemetry", .. }), "{err}");
        assert!(err.to_string().contains("edge/dev-1/telemetry"), "{err}");
        assert!(matches!(observe("edge", "edge/dev-1/status", b""), Ok((_, _, Observation::Cleared))));
    }
}
