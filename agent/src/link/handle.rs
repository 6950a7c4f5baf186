//! What other components hold of the link: its handle (telemetry, acks, repair requests in;
//! [`LinkHandle`]), its settings and its counters.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_proto::command::ModelStatus;
use edge_proto::topics::Topics;
use tokio::sync::{mpsc, watch};

/// Link counters, shared with telemetry and `/metrics`.
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Whether the broker connection is up.
    pub connected: AtomicBool,
    /// Successful connections after the first.
    pub reconnects: AtomicU64,
    /// Telemetry payload bytes acknowledged by the broker.
    pub bytes_sent: AtomicU64,
    /// Messages acknowledged by the broker.
    pub messages_sent: AtomicU64,
    /// Messages waiting in the outbox.
    pub queued: AtomicU64,
    /// Messages dropped because the outbox was full.
    pub dropped_full: AtomicU64,
    /// Messages dropped because they outlived the TTL.
    pub dropped_expired: AtomicU64,
    /// Messages that could not be written to the outbox (disk full, I/O error).
    pub outbox_errors: AtomicU64,
    /// Of those, published directly (connected at the time), without a copy on disk.
    pub sent_unstored: AtomicU64,
    /// Of those, dropped: not connected at the time.
    pub dropped_unstored: AtomicU64,
    /// The last outbox write failed for lack of space (cleared by the next that succeeds).
    pub disk_full: AtomicBool,
    /// Commands refused `busy`: the command queue was full.
    pub commands_busy: AtomicU64,
    /// OTA chunks dropped: the chunk queue was full.
    pub chunks_busy: AtomicU64,
}

impl LinkStats {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.dropped_full.load(Ordering::Relaxed)
            + self.dropped_expired.load(Ordering::Relaxed)
            + self.dropped_unstored.load(Ordering::Relaxed)
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct LinkSettings {
    /// Topic builder for this device.
    pub topics: Topics,
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// TLS configuration; `None` only for `mqtt://` with `allow_insecure`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Largest packet, both ways.
    pub max_packet_bytes: usize,
    /// Network timeout.
    pub network_timeout: Duration,
    /// Keep-alive.
    pub keep_alive: Duration,
    /// The device's models as `get-status` reports them (active and installed versions,
    /// health), kept current by the command component: the retained status carries them,
    /// and is published again when they change.
    pub models: watch::Receiver<Vec<ModelStatus>>,
    /// First reconnect delay, doubled up to `backoff_max`.
    pub backoff_base: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// Groups whose command and OTA topics the device subscribes to.
    pub groups: Vec<String>,
}

/// What other components ask of the link.
#[derive(Debug)]
pub(super) enum Request {
    Telemetry(Vec<u8>),
    Ack(Vec<u8>),
    Need(Vec<u8>),
    EraseOutboxes(tokio::sync::oneshot::Sender<Result<(), String>>),
}

/// Sends telemetry, acks and repair requests to the link.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    pub(super) tx: mpsc::Sender<Request>,
}

impl LinkHandle {
    /// Queues one encoded telemetry message. Waits if the link task is behind (bounded).
    pub async fn send(&self, payload: Vec<u8>) -> bool {
        self.tx.send(Request::Telemetry(payload)).await.is_ok()
    }

    /// Queues one encoded ack: stored on disk, then published when connected.
    pub async fn ack(&self, payload: Vec<u8>) -> bool {
        self.tx.send(Request::Ack(payload)).await.is_ok()
    }

    /// Queues one encoded ack, from a thread outside the runtime: stored on disk, then
    /// published when connected.
    pub fn ack_blocking(&self, payload: Vec<u8>) -> bool {
        self.tx.blocking_send(Request::Ack(payload)).is_ok()
    }

    /// Publishes a repair request if connected (dropped otherwise: it is repeated), from a
    /// thread outside the runtime.
    pub fn need_blocking(&self, payload: Vec<u8>) -> bool {
        self.tx.blocking_send(Request::Need(payload)).is_ok()
    }

    /// Deletes every queued telemetry message and ack (the `erase` command: acks carry
    /// `infer` outputs), overwriting the files first, from a thread outside the runtime.
    /// Acks sent after it are queued as usual.
    pub fn erase_outboxes_blocking(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.blocking_send(Request::EraseOutboxes(tx)).map_err(|_| "link stopped".to_string())?;
        rx.blocking_recv().map_err(|_| "link stopped".to_string())?
    }
}
