//! One outbox lane as the link task sees it: which of its messages is on its way to the
//! broker, as a pure state machine (no I/O), so the at-least-once rules are tested
//! without a network or a disk.
//!
//! The outbox itself lives on the spool thread ([`super::spool`]); the link only ever holds
//! the head the spool read from disk:
//!
//! ```text
//!            stored              head(Some)          published           PUBACK
//!   Empty ──────────> Asking ─────────────> Ready ──────────> Requested ────────> Sent
//!     ^  <──────────    ^  ^     head(None)                                          │
//!     │                 │  └──────────── delivered: ack, then the next head ─────────┘
//!     │                 └── connected (from any other state): read the head afresh
//!     └──────────────────── disconnected (Requested, Sent)
//! ```
//!
//! A message is published only from `Ready`, that is after the spool read it back from
//! disk, so nothing counts as sent before it is stored. The head leaves the outbox only on
//! the PUBACK of the packet that carried it. On every connect the head is read again: one
//! read while offline may have been dropped since (full outbox) or expired, and one lost
//! with the connection is sent again.

/// Where a lane's head is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum LaneState {
    /// The outbox was empty at the last look; a new record wakes the lane.
    Empty,
    /// The spool was asked for the head; its answer is on the way.
    Asking,
    /// The head, read from disk, waiting for a connection.
    Ready(Vec<u8>),
    /// Handed to rumqttc (`len` payload bytes), waiting for its packet id.
    Requested(usize),
    /// On the wire as packet `pkid`, waiting for the broker's PUBACK.
    Sent {
        /// The packet id.
        pkid: u16,
        /// Payload bytes.
        len: usize,
    },
}

/// What the link must do after a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Then {
    /// Nothing.
    Nothing,
    /// Ask the spool for the head.
    AskHead,
    /// Tell the spool the head was delivered (it removes it, then answers with the next).
    Delivered {
        /// Payload bytes delivered.
        len: usize,
    },
}

impl LaneState {
    /// A new record is on disk.
    pub(super) fn on_stored(&mut self) -> Then {
        // While asking, the answer already covers it: the spool handles requests in order,
        // so a head read before this record was stored arrives before this notice.
        if *self == LaneState::Empty {
            *self = LaneState::Asking;
            return Then::AskHead;
        }
        Then::Nothing
    }

    /// The spool's answer to a head request.
    pub(super) fn on_head(&mut self, head: Option<Vec<u8>>) {
        if *self != LaneState::Asking {
            tracing::debug!("link: a head arrived that was not asked for; ignored");
            return;
        }
        *self = match head {
            Some(payload) => LaneState::Ready(payload),
            None => LaneState::Empty,
        };
    }

    /// The head to publish now, if there is one waiting; the lane then waits for its
    /// packet id. Put it back with [`LaneState::unpublished`] if rumqttc refuses it.
    pub(super) fn take_ready(&mut self) -> Option<Vec<u8>> {
        match std::mem::replace(self, LaneState::Empty) {
            LaneState::Ready(payload) => {
                *self = LaneState::Requested(payload.len());
                Some(payload)
            }
            other => {
                *self = other;
                None
            }
        }
    }

    /// rumqttc's request queue was full: the head waits for the next turn.
    pub(super) fn unpublished(&mut self, payload: Vec<u8>) {
        *self = LaneState::Ready(payload);
    }

    /// rumqttc sent the publish this lane requested as packet `pkid`.
    pub(super) fn on_published(&mut self, pkid: u16) {
        if let LaneState::Requested(len) = *self {
            *self = LaneState::Sent { pkid, len };
        }
    }

    /// The broker acknowledged packet `pkid`.
    pub(super) fn on_puback(&mut self, pkid: u16) -> Then {
        match *self {
            LaneState::Sent { pkid: p, len } if p == pkid => {
                *self = LaneState::Asking;
                Then::Delivered { len }
            }
            _ => Then::Nothing,
        }
    }

    /// The connection is up: read the head afresh (unless a read is on its way already).
    pub(super) fn on_connected(&mut self) -> Then {
        if *self == LaneState::Asking {
            return Then::Nothing;
        }
        *self = LaneState::Asking;
        Then::AskHead
    }

    /// The connection dropped: whatever was on its way waits for the next connect.
    pub(super) fn on_disconnected(&mut self) {
        if let LaneState::Requested(_) | LaneState::Sent { .. } = self {
            *self = LaneState::Empty;
        }
    }

    /// The outbox was erased: a head read before the erase must not be sent.
    pub(super) fn on_erased(&mut self) -> Then {
        if let LaneState::Ready(_) = self {
            *self = LaneState::Asking;
            return Then::AskHead;
        }
        Then::Nothing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_is_published_once_and_delivered_on_its_own_puback() {
        let mut lane = LaneState::Empty;
        assert_eq!(lane.on_stored(), Then::AskHead);
        lane.on_head(Some(b"sample".to_vec()));
        assert_eq!(lane.take_ready().as_deref(), Some(&b"sample"[..]));
        assert_eq!(lane.take_ready(), None, "published twice");
        lane.on_published(7);
        assert_eq!(lane.on_puback(8), Then::Nothing, "another packet's PUBACK delivered this head");
        assert_eq!(lane.on_puback(7), Then::Delivered { len: 6 });
        assert_eq!(lane, LaneState::Asking);
        lane.on_head(None);
        assert_eq!(lane, LaneState::Empty);
    }

    #[test]
    fn a_record_stored_while_asking_does_not_ask_twice() {
        let mut lane = LaneState::Asking;
        assert_eq!(lane.on_stored(), Then::Nothing);
        lane.on_head(Some(vec![1]));
        assert_eq!(lane.on_stored(), Then::Nothing);
        assert_eq!(lane, LaneState::Ready(vec![1]));
    }

    // A head lost with the connection must be sent again, never counted as delivered.
    #[test]
    fn a_disconnect_before_the_puback_reads_the_head_again_on_connect() {
        for published in [false, true] {
            let mut lane = LaneState::Ready(vec![1, 2]);
            lane.take_ready().unwrap();
            if published {
                lane.on_published(3);
            }
            lane.on_disconnected();
            assert_eq!(lane.on_puback(3), Then::Nothing, "a PUBACK from the old connection");
            assert_eq!(lane.on_connected(), Then::AskHead);
            lane.on_head(Some(vec![1, 2]));
            assert_eq!(lane.take_ready(), Some(vec![1, 2]));
        }
    }

    // Regression: a head read while offline was published on connect after the full
    // outbox had dropped it, ahead of the newer records that were kept.
    #[test]
    fn a_head_read_while_offline_is_read_again_on_connect() {
        let mut lane = LaneState::Empty;
        assert_eq!(lane.on_stored(), Then::AskHead);
        lane.on_head(Some(b"oldest".to_vec()));
        assert_eq!(lane.on_connected(), Then::AskHead);
        assert_eq!(lane.take_ready(), None, "the stale head was kept");
        // A read already on its way is fresh enough: not asked twice.
        assert_eq!(lane.on_connected(), Then::Nothing);
    }

    #[test]
    fn a_refused_publish_keeps_the_head_ready() {
        let mut lane = LaneState::Ready(vec![9]);
        let p = lane.take_ready().unwrap();
        lane.unpublished(p);
        assert_eq!(lane, LaneState::Ready(vec![9]));
    }

    #[test]
    fn an_erase_discards_a_head_read_before_it() {
        let mut lane = LaneState::Ready(vec![5]);
        assert_eq!(lane.on_erased(), Then::AskHead);
        assert_eq!(lane.take_ready(), None);
        // Already on the wire: nothing to take back.
        let mut lane = LaneState::Sent { pkid: 1, len: 1 };
        assert_eq!(lane.on_erased(), Then::Nothing);
    }

    #[test]
    fn an_unasked_head_is_ignored() {
        let mut lane = LaneState::Sent { pkid: 1, len: 1 };
        lane.on_head(Some(vec![1]));
        assert_eq!(lane, LaneState::Sent { pkid: 1, len: 1 });
    }
}
