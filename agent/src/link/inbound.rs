//! What the link receives for the command component: two bounded queues it fills without
//! ever waiting, one for commands and one for OTA chunks.
//!
//! The link task also publishes acks and telemetry, and the command component can be busy
//! for minutes (a validation run, a model load). So the link offers each message once
//! (`InboundTx::offer`); when the queue is full:
//!
//! - a **command** is refused with a `Rejected("busy: …")` ack, sent through the ack outbox
//!   to the id its envelope claims (as for any rejection, see `docs/protocol.md`), so the
//!   operator knows to send it again; it was PUBACKed already, and dropping it silently
//!   would lose it;
//! - an **OTA chunk** is handed back: the link holds it a short while, without taking
//!   further messages, so a transfer is paced by the rate chunks are written (see
//!   [`chunk_patience`](super::chunk_patience)); if there is still no room, it is dropped
//!   and the device asks again for the chunks it is missing.
//!
//! Both are counted ([`LinkStats::commands_busy`](super::LinkStats::commands_busy),
//! [`LinkStats::chunks_busy`](super::LinkStats::chunks_busy)) and logged.
//!
//! Commands have their own queue so that a transfer's stream of chunks never fills the
//! room a `cancel` needs, and [`InboundRx::recv`] serves commands first, so a deploy
//! command is seen before the chunks published after it.

use edge_proto::codec::Versioned;
use edge_proto::command::{Ack, AckState};
use tokio::sync::mpsc::{self, error::TrySendError};

/// Commands that wait for the command component before the next is refused as busy.
/// Commands are at most 64 KiB once decoded (a larger one still takes its room here until
/// the gate refuses it), so this bounds the queue's RAM to a few hundred KiB in practice.
pub const COMMAND_QUEUE: usize = 8;

/// OTA chunks that wait: each may be up to 1 MiB, so only a couple.
pub const CHUNK_QUEUE: usize = 2;

/// A message the link received for another component.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound {
    /// On a command topic (the device's or a group's): a signed command.
    Command(Vec<u8>),
    /// On an OTA topic: a chunk.
    Chunk(Vec<u8>),
}

/// The link's end of the inbound queues.
#[derive(Debug, Clone)]
pub struct InboundTx {
    commands: mpsc::Sender<Vec<u8>>,
    chunks: mpsc::Sender<Vec<u8>>,
}

/// The command component's end of the inbound queues.
#[derive(Debug)]
pub struct InboundRx {
    commands: mpsc::Receiver<Vec<u8>>,
    chunks: mpsc::Receiver<Vec<u8>>,
}

/// The inbound queues, holding up to `commands` commands and `chunks` chunks.
pub fn queue(commands: usize, chunks: usize) -> (InboundTx, InboundRx) {
    let (commands_tx, commands_rx) = mpsc::channel(commands);
    let (chunks_tx, chunks_rx) = mpsc::channel(chunks);
    (InboundTx { commands: commands_tx, chunks: chunks_tx }, InboundRx { commands: commands_rx, chunks: chunks_rx })
}

impl InboundRx {
    /// The next message, commands first; `None` once the link is gone.
    pub async fn recv(&mut self) -> Option<Inbound> {
        tokio::select! {
            biased;
            Some(c) = self.commands.recv() => Some(Inbound::Command(c)),
            Some(c) = self.chunks.recv() => Some(Inbound::Chunk(c)),
            else => None,
        }
    }
}

/// What became of a message offered to the queues.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Offer {
    /// Queued.
    Queued,
    /// The queue was full with `queued` messages; here is the message back.
    Busy { queued: usize, message: Inbound },
    /// The command component is gone.
    Closed,
}

impl InboundTx {
    /// Queues `message` if there is room, without waiting.
    pub(super) fn offer(&self, message: Inbound) -> Offer {
        let (queue, bytes, rebuild): (_, _, fn(Vec<u8>) -> Inbound) = match message {
            Inbound::Command(b) => (&self.commands, b, Inbound::Command),
            Inbound::Chunk(b) => (&self.chunks, b, Inbound::Chunk),
        };
        match queue.try_send(bytes) {
            Ok(()) => Offer::Queued,
            Err(TrySendError::Full(bytes)) => {
                Offer::Busy { queued: queue.max_capacity() - queue.capacity(), message: rebuild(bytes) }
            }
            Err(TrySendError::Closed(_)) => Offer::Closed,
        }
    }
}

impl InboundTx {
    /// Waits for room for one chunk; `None` once the command component is gone.
    pub(super) async fn chunk_room(&self) -> Option<mpsc::Permit<'_, Vec<u8>>> {
        self.chunks.reserve().await.ok()
    }
}

/// The reason a busy rejection gives: what happened and what to do.
pub(super) fn busy_reason(queued: usize) -> String {
    format!("busy: {queued} commands queued for the device's command thread; retry later")
}

/// The encoded `Rejected(busy …)` ack for `command`, from `device`, addressed to the id its
/// envelope claims (every envelope version starts `(u16 version, [u8; 16] id)`); `None`
/// if the bytes do not even hold that.
pub(super) fn busy_ack(device: &str, command: &[u8], queued: usize, now_ms: u64) -> Option<Vec<u8>> {
    let ((_, command_id), _) = postcard::take_from_bytes::<(u16, [u8; 16])>(command).ok()?;
    let ack = Ack {
        version: Ack::VERSION,
        command_id,
        device: device.to_string(),
        state: AckState::Rejected(busy_reason(queued)),
        ts: now_ms,
        reply: None,
    };
    Some(edge_proto::encode(&ack))
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::command::{sign, Command, Payload, SigningKey, Target};

    #[tokio::test]
    async fn a_full_command_queue_hands_the_command_back_and_chunks_have_their_own_room() {
        let (tx, mut rx) = queue(2, 1);
        assert_eq!(tx.offer(Inbound::Command(vec![1])), Offer::Queued);
        assert_eq!(tx.offer(Inbound::Command(vec![2])), Offer::Queued);
        assert_eq!(tx.offer(Inbound::Command(vec![3])), Offer::Busy { queued: 2, message: Inbound::Command(vec![3]) });
        // Commands filling their queue leave the chunk queue alone, and the other way round.
        assert_eq!(tx.offer(Inbound::Chunk(vec![9])), Offer::Queued);
        assert_eq!(tx.offer(Inbound::Chunk(vec![8])), Offer::Busy { queued: 1, message: Inbound::Chunk(vec![8]) });
        // Commands first, then chunks.
        assert_eq!(rx.recv().await, Some(Inbound::Command(vec![1])));
        assert_eq!(tx.offer(Inbound::Command(vec![4])), Offer::Queued);
        assert_eq!(rx.recv().await, Some(Inbound::Command(vec![2])));
        assert_eq!(rx.recv().await, Some(Inbound::Command(vec![4])));
        assert_eq!(rx.recv().await, Some(Inbound::Chunk(vec![9])));
        drop(rx);
        assert_eq!(tx.offer(Inbound::Command(vec![5])), Offer::Closed);
    }

    #[tokio::test]
    async fn recv_ends_once_the_link_is_gone() {
        let (tx, mut rx) = queue(1, 1);
        assert_eq!(tx.offer(Inbound::Chunk(vec![1])), Offer::Queued);
        drop(tx);
        assert_eq!(rx.recv().await, Some(Inbound::Chunk(vec![1])));
        assert_eq!(rx.recv().await, None);
    }

    #[test]
    fn a_busy_ack_answers_the_claimed_id_with_what_to_do() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let cmd = Command::new([7; 16], 1, 2, Target::Device("dev-1".into()), Payload::GetStatus);
        let bytes = edge_proto::encode(&sign(cmd, &key));
        let ack: Ack = edge_proto::decode(&busy_ack("dev-1", &bytes, 8, 5).unwrap()).unwrap();
        assert_eq!((ack.version, ack.command_id, ack.device.as_str(), ack.ts), (Ack::VERSION, [7; 16], "dev-1", 5));
        match ack.state {
            AckState::Rejected(reason) => {
                assert!(reason.starts_with("busy: 8 commands queued") && reason.contains("retry later"), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        // Too short to hold an id: nobody to answer.
        assert_eq!(busy_ack("dev-1", &[1, 2, 3], 8, 5), None);
    }
}
