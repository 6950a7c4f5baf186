//! What the service publishes for its deployments: signed commands and chunks, through an
//! MQTT session of its own.
//!
//! A second connection (client id `{client_id}-out`, clean session) rather than the
//! ingestion session: ingestion acks each message only after storing it and waits for
//! the database, and a publisher that shares its client would wait behind those acks and
//! they behind it. Here nothing waits on ingestion: the deployments hand work over an
//! unbounded channel (the work is bounded by the devices × deployments in flight: one
//! entry per device and chunk, see [`Schedule`]).
//!
//! Commands go first; chunks are served round-robin over the devices that wait for them,
//! so that every transfer moves and none stalls into a repair request. The chunk bytes
//! published to each device are added to its deployment row about once a second
//! ([`Tally`]), off the publishing loop.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use edge_mqtt::MqttConfig;
use edge_proto::codec::Versioned;
use edge_proto::ota::{Chunk, Manifest};
use edge_proto::topics::fleet;
use rumqttc::{AsyncClient, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::DeploymentMetrics;
use crate::artifacts::Artifacts;
use crate::db::Db;

/// A transfer as the sender needs it.
#[derive(Debug)]
pub struct Transfer {
    /// Deployment id.
    pub deployment: String,
    /// Artifact SHA-256, hex.
    pub artifact_sha256: String,
    /// Its manifest.
    pub manifest: Manifest,
}

/// Work for the sender.
#[derive(Debug)]
pub enum Out {
    /// Publish a signed command on the device's `cmd` topic.
    Command {
        /// Device id.
        device: String,
        /// The command's bytes.
        bytes: Arc<Vec<u8>>,
    },
    /// Publish these chunks of `transfer` on the device's `ota` topic.
    Chunks {
        /// Device id.
        device: String,
        /// The transfer.
        transfer: Arc<Transfer>,
        /// Half-open index ranges.
        ranges: Vec<(u32, u32)>,
    },
    /// Drop what is queued for the device in that deployment (it is done, or cancelled).
    Forget {
        /// Device id.
        device: String,
        /// Deployment id.
        deployment: String,
    },
}

type Key = (String, String);

/// How long a chunk just published to a device is not published to it again. A device asks
/// again for what has not come within its stall time (5 s by default), and under load what
/// it asked for before may still be on its way, in this queue's wake or in the broker's: at
/// 1,000 devices, 11,740 chunks went twice in one deployment (bench/RESULTS.md). A chunk
/// truly lost is sent when the device asks after this.
pub const RESEND_AFTER: Duration = Duration::from_secs(10);

/// Which chunk goes next: per (device, deployment) the indices asked for, served
/// round-robin over the devices, and when each was last published. Pure, tested without a
/// network under simulated time (`now`: time since any fixed start).
#[derive(Debug, Default)]
pub struct Schedule {
    wanted: HashMap<Key, (Arc<Transfer>, BTreeSet<u32>)>,
    turn: VecDeque<Key>,
    sent: HashMap<Key, HashMap<u32, Duration>>,
}

impl Schedule {
    /// Adds `ranges` of `transfer` for `device` (clipped to the artifact; an index already
    /// queued, or published to it less than [`RESEND_AFTER`] ago, is not queued again).
    /// Returns how many were added.
    pub fn add(&mut self, device: &str, transfer: &Arc<Transfer>, ranges: &[(u32, u32)], now: Duration) -> usize {
        let key = (device.to_string(), transfer.deployment.clone());
        let count = transfer.manifest.chunk_count();
        let recent = self.sent.entry(key.clone()).or_default();
        recent.retain(|_, at| now.saturating_sub(*at) < RESEND_AFTER);
        let fresh: Vec<u32> = ranges
            .iter()
            .flat_map(|&(start, end)| start.min(count)..end.min(count))
            .filter(|i| !recent.contains_key(i))
            .collect();
        if recent.is_empty() {
            self.sent.remove(&key);
        }
        if fresh.is_empty() {
            return 0;
        }
        let entry = self.wanted.entry(key.clone()).or_insert_with(|| {
            self.turn.push_back(key);
            (transfer.clone(), BTreeSet::new())
        });
        let before = entry.1.len();
        entry.1.extend(fresh);
        entry.1.len() - before
    }

    /// Drops what is queued for `device` in `deployment`, and what was sent.
    pub fn forget(&mut self, device: &str, deployment: &str) {
        let key = (device.to_string(), deployment.to_string());
        self.wanted.remove(&key);
        self.sent.remove(&key);
        self.turn.retain(|k| *k != key);
    }

    /// The next (device, transfer, index), taking turns between devices; recorded as
    /// published at `now`.
    pub fn next_chunk(&mut self, now: Duration) -> Option<(String, Arc<Transfer>, u32)> {
        while let Some(key) = self.turn.pop_front() {
            let Some((transfer, indices)) = self.wanted.get_mut(&key) else { continue };
            let Some(index) = indices.pop_first() else {
                self.wanted.remove(&key);
                continue;
            };
            let transfer = transfer.clone();
            if indices.is_empty() {
                self.wanted.remove(&key);
            } else {
                self.turn.push_back(key.clone());
            }
            self.sent.entry(key.clone()).or_default().insert(index, now);
            return Some((key.0, transfer, index));
        }
        None
    }

    /// Chunks queued.
    pub fn len(&self) -> usize {
        self.wanted.values().map(|(_, s)| s.len()).sum()
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.wanted.is_empty()
    }
}

/// Chunk bytes published per (deployment, device) since the last flush.
#[derive(Debug, Default)]
pub struct Tally {
    bytes: HashMap<Key, u64>,
    since: Option<tokio::time::Instant>,
}

/// How often [`Tally`] is written to the database.
const TALLY_EVERY: Duration = Duration::from_secs(1);

impl Tally {
    fn add(&mut self, deployment: &str, device: &str, bytes: u64) {
        *self.bytes.entry((device.to_string(), deployment.to_string())).or_default() += bytes;
        self.since.get_or_insert_with(tokio::time::Instant::now);
    }

    /// Writes what was counted, in a task of its own when `detached` (the publishing loop
    /// does not wait for the database).
    async fn flush(&mut self, db: &Db, detached: bool) {
        self.since = None;
        let bytes = std::mem::take(&mut self.bytes);
        if bytes.is_empty() {
            return;
        }
        let db = db.clone();
        let write = async move {
            for ((device, deployment), n) in bytes {
                if let Err(e) = db.add_bytes_sent(&deployment, &device, n).await {
                    tracing::warn!(deployment, device, "bytes sent not recorded: {e}");
                }
            }
        };
        match detached {
            true => drop(tokio::spawn(write)),
            false => write.await,
        }
    }

    fn due(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= TALLY_EVERY)
    }
}

/// Connects the outgoing session and publishes what arrives on `rx` until `cancel`, chunk
/// data at most `max_bytes_per_sec` (0: as fast as the broker takes it). The chunk bytes
/// published go to each device's row in `db`.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    mqtt: MqttConfig,
    client_id: String,
    max_bytes_per_sec: u64,
    artifacts: Artifacts,
    db: Db,
    mut rx: mpsc::UnboundedReceiver<Out>,
    metrics: DeploymentMetrics,
    cancel: CancellationToken,
) -> Result<(), crate::ingest::IngestError> {
    let (client, mut eventloop) = crate::session::connect(&mqtt, client_id, crate::session::REQUESTS, false)?;
    let poller = {
        let (mqtt, client, cancel) = (mqtt.clone(), client.clone(), cancel.clone());
        tokio::spawn(async move {
            let nothing = crate::session::Filters::default();
            crate::session::pump(&mqtt, "deployment publisher", &client, &mut eventloop, &nothing, None, &cancel).await;
        })
    };
    let prefix = mqtt.topic_prefix.clone();
    let mut commands: VecDeque<(String, Arc<Vec<u8>>)> = VecDeque::new();
    let mut schedule = Schedule::default();
    let mut tally = Tally::default();
    let start = tokio::time::Instant::now();
    loop {
        if tally.due() {
            tally.flush(&db, true).await;
        }
        // Take in everything waiting, then publish one thing.
        loop {
            match rx.try_recv() {
                Ok(out) => take(out, &mut commands, &mut schedule, start.elapsed()),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    if commands.is_empty() && schedule.is_empty() {
                        cancel.cancel();
                    }
                    break;
                }
            }
        }
        metrics.chunks_queued.set(schedule.len() as i64);
        if cancel.is_cancelled() {
            break;
        }
        if let Some((device, bytes)) = commands.pop_front() {
            let topic = fleet::command(&prefix, &device);
            if publish(&client, &cancel, topic, bytes.to_vec()).await {
                metrics.commands_sent.inc();
            }
            continue;
        }
        if let Some((device, transfer, index)) = schedule.next_chunk(start.elapsed()) {
            let data = match artifacts.chunk(&transfer.artifact_sha256, &transfer.manifest, index).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(deployment = %transfer.deployment, device, index, "chunk not sent: {e}");
                    metrics.chunk_errors.inc();
                    continue;
                }
            };
            let bytes = data.len() as u64;
            let message = edge_proto::encode(&Chunk {
                version: Chunk::VERSION,
                transfer_id: transfer.manifest.transfer_id,
                index,
                data,
            });
            if publish(&client, &cancel, fleet::ota(&prefix, &device), message).await {
                metrics.chunks_sent.inc();
                metrics.chunk_bytes_sent.inc_by(bytes);
                tally.add(&transfer.deployment, &device, bytes);
            }
            if max_bytes_per_sec > 0 {
                // Paced per chunk: the next one leaves when this one's share of the cap is used.
                let pause = Duration::from_secs_f64(bytes as f64 / max_bytes_per_sec as f64);
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            continue;
        }
        // Idle: wait for work, or for the tally to come due.
        let flush_at = tally.since.map(|t| t + TALLY_EVERY);
        tokio::select! {
            _ = cancel.cancelled() => break,
            out = rx.recv() => match out {
                Some(out) => take(out, &mut commands, &mut schedule, start.elapsed()),
                None => break,
            },
            _ = async { tokio::time::sleep_until(flush_at.expect("guarded")).await }, if flush_at.is_some() => {}
        }
    }
    tally.flush(&db, false).await;
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(2), poller).await;
    Ok(())
}

fn take(out: Out, commands: &mut VecDeque<(String, Arc<Vec<u8>>)>, schedule: &mut Schedule, now: Duration) {
    match out {
        Out::Command { device, bytes } => commands.push_back((device, bytes)),
        Out::Chunks { device, transfer, ranges } => {
            schedule.add(&device, &transfer, &ranges, now);
        }
        Out::Forget { device, deployment } => schedule.forget(&device, &deployment),
    }
}

/// Publishes at QoS 1; `false` when cancelled first or the client is gone.
async fn publish(client: &AsyncClient, cancel: &CancellationToken, topic: String, payload: Vec<u8>) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        r = client.publish(topic.clone(), QoS::AtLeastOnce, false, payload) => match r {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(topic, "cannot publish: {e}");
                false
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::ota::{prepare, ModelFormat};

    const Z: Duration = Duration::ZERO;

    fn transfer(id: &str, chunks: u32) -> Arc<Transfer> {
        let (manifest, _) = prepare([1; 16], "m", "1", ModelFormat::Onnx, &vec![0u8; chunks as usize * 10], None, 10);
        Arc::new(Transfer { deployment: id.into(), artifact_sha256: String::new(), manifest })
    }

    #[test]
    fn devices_take_turns_and_each_chunk_goes_once() {
        let t = transfer("d1", 3);
        let mut s = Schedule::default();
        assert_eq!(s.add("a", &t, &[(0, 3)], Z), 3);
        assert_eq!(s.add("b", &t, &[(1, 3)], Z), 2);
        assert_eq!(s.add("a", &t, &[(0, 2)], Z), 0, "already queued");
        let order: Vec<(String, u32)> = std::iter::from_fn(|| s.next_chunk(Z)).map(|(d, _, i)| (d, i)).collect();
        let want = [("a", 0), ("b", 1), ("a", 1), ("b", 2), ("a", 2)];
        assert_eq!(order, want.iter().map(|(d, i)| (d.to_string(), *i)).collect::<Vec<_>>());
        assert!(s.is_empty());
    }

    #[test]
    fn ranges_are_clipped_to_the_artifact_and_a_forgotten_device_gets_nothing() {
        let t = transfer("d1", 4);
        let mut s = Schedule::default();
        assert_eq!(s.add("a", &t, &[(2, 100), (7, 3)], Z), 2);
        assert_eq!(s.len(), 2);
        s.add("b", &t, &[(0, 1)], Z);
        s.forget("a", "d1");
        let rest: Vec<String> = std::iter::from_fn(|| s.next_chunk(Z)).map(|(d, _, _)| d).collect();
        assert_eq!(rest, vec!["b".to_string()]);
    }

    #[test]
    fn two_deployments_of_one_device_are_two_queues() {
        let mut s = Schedule::default();
        s.add("a", &transfer("d1", 1), &[(0, 1)], Z);
        s.add("a", &transfer("d2", 1), &[(0, 1)], Z);
        let got: Vec<String> = std::iter::from_fn(|| s.next_chunk(Z)).map(|(_, t, _)| t.deployment.clone()).collect();
        assert_eq!(got, vec!["d1".to_string(), "d2".to_string()]);
    }

    #[test]
    fn a_chunk_just_sent_is_not_sent_again_until_resend_after() {
        let t = transfer("d1", 3);
        let mut s = Schedule::default();
        let at = |secs: u64| Duration::from_secs(secs);
        s.add("a", &t, &[(0, 2)], at(0));
        assert_eq!(s.next_chunk(at(1)).map(|c| c.2), Some(0));
        // Asked again while chunk 0 is on its way: only chunk 2 is new, 1 is still queued.
        assert_eq!(s.add("a", &t, &[(0, 3)], at(5)), 1);
        let order: Vec<u32> = std::iter::from_fn(|| s.next_chunk(at(6))).map(|c| c.2).collect();
        assert_eq!(order, vec![1, 2]);
        // Another device is not held back by what this one was sent.
        assert_eq!(s.add("b", &t, &[(0, 1)], at(6)), 1);
        s.next_chunk(at(6));
        // Past RESEND_AFTER, a chunk asked for again is lost: it goes again.
        assert_eq!(s.add("a", &t, &[(0, 3)], at(1) + RESEND_AFTER), 1);
        assert_eq!(s.add("a", &t, &[(0, 3)], at(6) + RESEND_AFTER), 2);
        // A forgotten device's record goes with it.
        s.forget("a", "d1");
        assert_eq!(s.add("a", &t, &[(0, 3)], at(7)), 3);
    }
}
