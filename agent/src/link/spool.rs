//! The spool thread: owns the link's two outboxes and does all their disk work (append
//! and fsync, read, cursor writes, erase) on a thread of its own, so that a slow or full
//! disk never stalls the async runtime that polls the broker connection.
//!
//! The link task talks to it over a channel that never blocks the sender, and gets its
//! answers back, in the order it asked, as [`SpoolEvent`]s:
//!
//! - `Push(lane, payload)`: append and fsync; answered `Stored(lane)` once the record is
//!   durable, or `Unstored(lane, payload)` if it could not be written (the link then
//!   publishes it directly, best effort);
//! - `Head(lane)`: the lane's oldest unexpired record, answered `Head(lane, payload)`;
//! - `Delivered(lane)`: the broker acknowledged the head: remove it, then answer with the
//!   next head;
//! - `Erase(reply)`: delete every queued telemetry record and ack, overwriting the files;
//!   answered on `reply`, then `Erased`.
//!
//! Every push is answered exactly once, so the link can bound how many it has in flight
//! ([`SpoolHandle::has_room`]) and the memory both channels hold stays bounded.

use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::sync::{mpsc, oneshot};

use super::{LaneId, LinkStats};
use crate::clock::now_ms;
use crate::outbox::{Outbox, OutboxError};

/// Pushes the link hands to the spool before it stops taking more from its producers.
pub(super) const MAX_PENDING_PUSHES: usize = 16;

/// What the link asks of the spool thread.
#[derive(Debug)]
pub(super) enum SpoolRequest {
    Push(LaneId, Vec<u8>),
    Head(LaneId),
    Delivered(LaneId),
    Erase(oneshot::Sender<Result<(), String>>),
}

/// What the spool thread answers, in the order of the requests.
#[derive(Debug)]
pub(super) enum SpoolEvent {
    /// The lane's head (`None`: the outbox is empty).
    Head(LaneId, Option<Vec<u8>>),
    /// A pushed record is on disk.
    Stored(LaneId),
    /// A pushed record could not be stored; here it is back.
    Unstored(LaneId, Vec<u8>),
    /// The telemetry outbox was erased.
    Erased,
}

/// The link's end of the spool: requests out, and the count of pushes not yet answered.
pub(super) struct SpoolHandle {
    tx: std_mpsc::Sender<SpoolRequest>,
    pending: usize,
}

/// The spool thread stopped (it panicked): the link cannot store anything any more.
#[derive(Debug, thiserror::Error)]
#[error("the outbox thread stopped; see the log for its panic")]
pub(super) struct SpoolStopped;

impl SpoolHandle {
    fn send(&self, request: SpoolRequest) -> Result<(), SpoolStopped> {
        self.tx.send(request).map_err(|_| SpoolStopped)
    }

    /// Stores `payload` in `lane`'s outbox.
    pub(super) fn push(&mut self, lane: LaneId, payload: Vec<u8>) -> Result<(), SpoolStopped> {
        self.send(SpoolRequest::Push(lane, payload))?;
        self.pending += 1;
        Ok(())
    }

    /// Asks for `lane`'s head.
    pub(super) fn ask_head(&self, lane: LaneId) -> Result<(), SpoolStopped> {
        self.send(SpoolRequest::Head(lane))
    }

    /// Reports `lane`'s head delivered.
    pub(super) fn delivered(&self, lane: LaneId) -> Result<(), SpoolStopped> {
        self.send(SpoolRequest::Delivered(lane))
    }

    /// Erases the telemetry outbox, answering on `reply`.
    pub(super) fn erase(&self, reply: oneshot::Sender<Result<(), String>>) -> Result<(), SpoolStopped> {
        self.send(SpoolRequest::Erase(reply))
    }

    /// A push was answered (`Stored` or `Unstored`).
    pub(super) fn answered(&mut self) {
        self.pending = self.pending.saturating_sub(1);
    }

    /// Whether the link may take another message to store from its producers.
    pub(super) fn has_room(&self) -> bool {
        self.pending < MAX_PENDING_PUSHES
    }
}

/// Starts the spool thread with the ack and telemetry outboxes. It stops once the handle
/// is dropped and every request before that is done.
pub(super) fn start(
    acks: Outbox,
    telemetry: Outbox,
    stats: Arc<LinkStats>,
) -> std::io::Result<(SpoolHandle, mpsc::UnboundedReceiver<SpoolEvent>, JoinHandle<()>)> {
    let (tx, rx) = std_mpsc::channel();
    // Unbounded, yet bounded in practice: every event answers one request, pushes are
    // capped at MAX_PENDING_PUSHES and a lane has at most one head request out.
    let (events_tx, events) = mpsc::unbounded_channel();
    let spool = Spool { acks, telemetry, stats, events: events_tx };
    let thread = std::thread::Builder::new().name("outbox".into()).spawn(move || spool.run(rx))?;
    Ok((SpoolHandle { tx, pending: 0 }, events, thread))
}

struct Spool {
    acks: Outbox,
    telemetry: Outbox,
    stats: Arc<LinkStats>,
    events: mpsc::UnboundedSender<SpoolEvent>,
}

impl Spool {
    fn run(mut self, rx: std_mpsc::Receiver<SpoolRequest>) {
        self.refresh_stats();
        for request in rx {
            let event = self.handle(request);
            self.refresh_stats();
            if let Some(event) = event {
                if self.events.send(event).is_err() {
                    // The link task is gone; requests left are dropped with it.
                    return;
                }
            }
        }
    }

    fn outbox(&mut self, lane: LaneId) -> &mut Outbox {
        match lane {
            LaneId::Acks => &mut self.acks,
            LaneId::Telemetry => &mut self.telemetry,
        }
    }

    fn handle(&mut self, request: SpoolRequest) -> Option<SpoolEvent> {
        match request {
            SpoolRequest::Push(lane, payload) => match self.outbox(lane).push(now_ms(), &payload) {
                Ok(()) => {
                    self.stats.disk_full.store(false, Ordering::Relaxed);
                    Some(SpoolEvent::Stored(lane))
                }
                Err(e) => {
                    self.failed(&e);
                    self.stats.outbox_errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!("outbox: {} not stored: {e}", lane.what());
                    Some(SpoolEvent::Unstored(lane, payload))
                }
            },
            SpoolRequest::Head(lane) => Some(SpoolEvent::Head(lane, self.head(lane))),
            SpoolRequest::Delivered(lane) => {
                if let Err(e) = self.outbox(lane).ack() {
                    // The head is gone from memory all the same; after a restart it may
                    // be sent once more.
                    self.failed(&e);
                    tracing::error!("outbox: cannot mark a delivered {}: {e}", lane.what());
                }
                Some(SpoolEvent::Head(lane, self.head(lane)))
            }
            SpoolRequest::Erase(reply) => {
                // Both, even when the first fails: an erase leaves as little as it can.
                let telemetry = self.telemetry.clear().map_err(|e| format!("queued telemetry: {e}"));
                let acks = self.acks.clear().map_err(|e| format!("queued acks: {e}"));
                let _ = reply.send(telemetry.and(acks));
                Some(SpoolEvent::Erased)
            }
        }
    }

    fn head(&mut self, lane: LaneId) -> Option<Vec<u8>> {
        match self.outbox(lane).peek(now_ms()) {
            Ok(head) => head,
            Err(e) => {
                // Left for the next record stored (or the next connection) to retry.
                self.failed(&e);
                tracing::error!("outbox: cannot read the next {}: {e}", lane.what());
                None
            }
        }
    }

    fn failed(&self, e: &OutboxError) {
        if e.is_disk_full() {
            self.stats.disk_full.store(true, Ordering::Relaxed);
        }
    }

    fn refresh_stats(&self) {
        let s = self.telemetry.stats();
        self.stats.queued.store(s.queued, Ordering::Relaxed);
        self.stats.dropped_full.store(s.dropped_full, Ordering::Relaxed);
        self.stats.dropped_expired.store(s.dropped_expired, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn outboxes(dir: &std::path::Path) -> (Outbox, Outbox) {
        let ttl = Duration::from_secs(3600);
        (Outbox::open(&dir.join("acks"), 1 << 20, ttl).unwrap(), Outbox::open(&dir.join("t"), 1 << 20, ttl).unwrap())
    }

    #[test]
    fn answers_in_order_and_removes_the_head_only_when_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (acks, telemetry) = outboxes(dir.path());
        let stats = Arc::new(LinkStats::default());
        let (mut spool, mut events, thread) = start(acks, telemetry, stats.clone()).unwrap();
        spool.ask_head(LaneId::Telemetry).unwrap();
        spool.push(LaneId::Telemetry, b"one".to_vec()).unwrap();
        spool.push(LaneId::Telemetry, b"two".to_vec()).unwrap();
        spool.ask_head(LaneId::Telemetry).unwrap();
        spool.ask_head(LaneId::Telemetry).unwrap();
        spool.delivered(LaneId::Telemetry).unwrap();
        drop(spool);
        thread.join().unwrap();
        let mut got = vec![];
        while let Ok(e) = events.try_recv() {
            got.push(format!("{e:?}"));
        }
        let head = |p: Option<&[u8]>| format!("{:?}", SpoolEvent::Head(LaneId::Telemetry, p.map(<[u8]>::to_vec)));
        let stored = format!("{:?}", SpoolEvent::Stored(LaneId::Telemetry));
        assert_eq!(
            got,
            vec![head(None), stored.clone(), stored, head(Some(b"one")), head(Some(b"one")), head(Some(b"two")),]
        );
        assert_eq!(stats.queued.load(Ordering::Relaxed), 1);
    }
}
