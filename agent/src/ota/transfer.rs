//! The timing of a transfer in progress, as a pure state machine.
//!
//! The staging file ([`super::staging`]) knows which chunks arrived; this knows *when*
//! things must happen: a durable checkpoint at least every second while chunks arrive, a
//! progress ack at every tenth, a repair request when nothing arrived for `stall_secs`
//! (repeated at that pace) or at once when everything the last request asked for has
//! arrived and more is missing, the command's expiry, and the bandwidth cap. The shell
//! ([`super::deploy`]) passes the time in and carries out the [`Action`]s, so every rule is
//! tested here under simulated time:
//!
//! ```text
//! chunk(now, fresh, percent, complete) ─> [Wait(d)] Checkpoint? Progress(p)? AskMissing(max)? Complete?
//! tick(now, wall_ms) ─> Expire | Checkpoint? AskMissing(max)?
//! ask_now(now) ─> AskMissing(max)     (a delta transfer's first request, right after accepting)
//! ```

use std::time::Duration;

/// How often chunks received are made durable.
pub const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Most chunks one repair request asks for.
pub const MAX_NEED_CHUNKS: u32 = 512;

/// The rules a transfer runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Silence after which missing chunks are asked for again.
    pub stall: Duration,
    /// Bytes per second this device takes in; 0 for no cap.
    pub max_bytes_per_sec: u64,
    /// The manifest's chunk size.
    pub chunk_size: u32,
    /// The command's expiry, ms since the Unix epoch.
    pub expires_at_ms: u64,
}

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Make the chunks received so far durable.
    Checkpoint,
    /// Publish a repair request for at most this many missing chunks.
    AskMissing(u32),
    /// Ack progress, in percent (below 100 until complete).
    Progress(u8),
    /// Every chunk is here: checkpoint, ack 100 % and install.
    Complete,
    /// The command expired before the transfer completed: fail it and delete the staging.
    Expire,
}

/// A transfer's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pacing: Pacing,
    last_chunk: Option<Duration>,
    last_need: Option<Duration>,
    last_checkpoint: Duration,
    reported: u8,
    /// Bandwidth cap: start of the current one-second window and bytes taken in it.
    window: (Duration, u64),
    /// Chunks the last repair request asked for, and fresh chunks taken since.
    round: (u32, u32),
}

impl Transfer {
    /// A transfer that starts at `now` with `percent` already staged. One resumed after a
    /// restart (`resumed`) asks for what it misses at the first tick.
    pub fn new(pacing: Pacing, now: Duration, percent: u8, resumed: bool) -> Transfer {
        Transfer {
            pacing,
            last_chunk: (!resumed).then_some(now),
            last_need: None,
            last_checkpoint: now,
            reported: percent - percent % 10,
            window: (now, 0),
            round: (0, 0),
        }
    }

    /// Asks for what is missing now, whatever the silence: a delta transfer's sender waits
    /// for this request before sending anything.
    pub fn ask_now(&mut self, now: Duration) -> Action {
        self.ask(now)
    }

    fn ask(&mut self, now: Duration) -> Action {
        let n = self.need_size();
        self.last_need = Some(now);
        self.round = (n, 0);
        Action::AskMissing(n)
    }

    /// Before taking a chunk of `len` bytes: how long to wait first to keep under the cap.
    pub fn admit(&mut self, now: Duration, len: usize) -> Option<Duration> {
        let cap = self.pacing.max_bytes_per_sec;
        if cap == 0 {
            return None;
        }
        let (start, taken) = self.window;
        let mut wait = None;
        if now.saturating_sub(start) >= Duration::from_secs(1) {
            self.window = (now, 0);
        } else if taken >= cap {
            let resume = start + Duration::from_secs(1);
            wait = Some(resume - now);
            self.window = (resume, 0);
        }
        self.window.1 += len as u64;
        wait
    }

    /// A chunk was taken at `now` (`fresh`: new, not a duplicate), bringing the staging
    /// to `percent`, `complete` or not.
    pub fn on_chunk(&mut self, now: Duration, fresh: bool, percent: u8, complete: bool) -> Vec<Action> {
        self.last_chunk = Some(now);
        if !fresh {
            return vec![];
        }
        if complete {
            return vec![Action::Complete];
        }
        let mut actions = vec![];
        if now.saturating_sub(self.last_checkpoint) >= CHECKPOINT_EVERY {
            self.last_checkpoint = now;
            actions.push(Action::Checkpoint);
        }
        if percent >= self.reported.saturating_add(10) {
            self.reported = percent - percent % 10;
            actions.push(Action::Progress(percent.min(99)));
        }
        // A request answered in full while more is missing: the next one goes now rather
        // than after a stall (large delta transfers ask in rounds of at most 512 chunks).
        let (asked, got) = &mut self.round;
        *got += 1;
        if *asked > 0 && *got >= *asked {
            actions.push(self.ask(now));
        }
        actions
    }

    /// Time passes: `now` on the monotonic clock, `wall_ms` on the wall clock.
    pub fn on_tick(&mut self, now: Duration, wall_ms: u64) -> Vec<Action> {
        if self.pacing.expires_at_ms < wall_ms {
            return vec![Action::Expire];
        }
        let mut actions = vec![];
        if now.saturating_sub(self.last_checkpoint) >= CHECKPOINT_EVERY {
            self.last_checkpoint = now;
            actions.push(Action::Checkpoint);
        }
        let stall = self.pacing.stall;
        let quiet = |since: Option<Duration>| since.is_none_or(|t| now.saturating_sub(t) >= stall);
        if quiet(self.last_chunk) && quiet(self.last_need) {
            actions.push(self.ask(now));
        }
        actions
    }

    /// Chunks per repair request: what the cap lets in before the next one, at most
    /// [`MAX_NEED_CHUNKS`].
    fn need_size(&self) -> u32 {
        match self.pacing.max_bytes_per_sec {
            0 => MAX_NEED_CHUNKS,
            cap => ((cap * self.pacing.stall.as_secs().max(1)) / u64::from(self.pacing.chunk_size.max(1)))
                .clamp(1, u64::from(MAX_NEED_CHUNKS)) as u32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    fn pacing() -> Pacing {
        Pacing { stall: Duration::from_secs(5), max_bytes_per_sec: 0, chunk_size: 1000, expires_at_ms: 1_000_000 }
    }

    #[test]
    fn progress_is_acked_at_each_tenth_and_capped_below_100_until_complete() {
        let mut t = Transfer::new(pacing(), MS(0), 0, false);
        assert_eq!(t.on_chunk(MS(10), true, 5, false), vec![]);
        assert_eq!(t.on_chunk(MS(20), true, 13, false), vec![Action::Progress(13)]);
        assert_eq!(t.on_chunk(MS(30), true, 19, false), vec![], "still in the same tenth");
        assert_eq!(t.on_chunk(MS(40), true, 99, false), vec![Action::Progress(99)]);
        assert_eq!(t.on_chunk(MS(50), true, 100, true), vec![Action::Complete]);
    }

    #[test]
    fn duplicates_change_nothing_but_the_silence() {
        let mut t = Transfer::new(pacing(), MS(0), 0, false);
        assert_eq!(t.on_chunk(MS(4_000), false, 50, false), vec![]);
        assert_eq!(t.on_tick(MS(8_000), 0), vec![Action::Checkpoint], "a duplicate 4 s ago is not silence");
    }

    #[test]
    fn chunks_are_checkpointed_at_most_once_a_second() {
        let mut t = Transfer::new(pacing(), MS(0), 0, false);
        assert_eq!(t.on_chunk(MS(500), true, 1, false), vec![]);
        assert_eq!(t.on_chunk(MS(1_000), true, 2, false), vec![Action::Checkpoint]);
        assert_eq!(t.on_chunk(MS(1_900), true, 3, false), vec![]);
        assert_eq!(t.on_tick(MS(2_000), 0), vec![Action::Checkpoint]);
    }

    #[test]
    fn a_stalled_transfer_asks_for_missing_chunks_once_per_stall_period() {
        let mut t = Transfer::new(pacing(), MS(0), 0, false);
        t.on_chunk(MS(100), true, 1, false);
        assert!(!t.on_tick(MS(5_000), 0).contains(&Action::AskMissing(MAX_NEED_CHUNKS)));
        assert!(t.on_tick(MS(5_100), 0).contains(&Action::AskMissing(MAX_NEED_CHUNKS)));
        assert!(!t.on_tick(MS(9_000), 0).iter().any(|a| matches!(a, Action::AskMissing(_))), "asked 3.9 s ago");
        assert!(t.on_tick(MS(10_100), 0).iter().any(|a| matches!(a, Action::AskMissing(_))));
    }

    #[test]
    fn a_request_answered_in_full_is_followed_at_once_by_the_next() {
        let capped = Pacing { max_bytes_per_sec: 3_000, ..pacing() };
        let mut t = Transfer::new(capped, MS(0), 0, false);
        // 3 kB/s over a 5 s stall: 15 chunks of 1 kB per request.
        assert_eq!(t.ask_now(MS(0)), Action::AskMissing(15));
        for i in 1..15 {
            assert_eq!(t.on_chunk(MS(i * 10), true, 1, false), vec![], "chunk {i}");
        }
        assert_eq!(t.on_chunk(MS(150), true, 2, false), vec![Action::AskMissing(15)], "the 15th: ask for more");
        assert_eq!(t.on_chunk(MS(160), true, 2, false), vec![], "a new round");
    }

    #[test]
    fn a_resumed_transfer_asks_at_the_first_tick() {
        let mut t = Transfer::new(pacing(), MS(0), 40, true);
        assert!(t.on_tick(MS(500), 0).contains(&Action::AskMissing(MAX_NEED_CHUNKS)));
        assert_eq!(t.on_chunk(MS(600), true, 45, false), vec![], "40 % was reported before the restart");
    }

    #[test]
    fn an_expired_command_ends_the_transfer() {
        let mut t = Transfer::new(pacing(), MS(0), 0, false);
        assert_eq!(t.on_tick(MS(100), 1_000_001), vec![Action::Expire]);
    }

    #[test]
    fn the_bandwidth_cap_delays_chunks_beyond_it_and_sizes_repairs() {
        let capped = Pacing { max_bytes_per_sec: 2_000, ..pacing() };
        let mut t = Transfer::new(capped, MS(0), 0, false);
        assert_eq!(t.admit(MS(0), 1000), None);
        assert_eq!(t.admit(MS(100), 1000), None);
        assert_eq!(t.admit(MS(200), 1000), Some(MS(800)), "2000 bytes taken in this second");
        // The chunk that waited opened the next second: it and one more fit there.
        assert_eq!(t.admit(MS(1_000), 1000), None);
        assert_eq!(t.admit(MS(1_100), 1000), Some(MS(900)));
        // Five seconds of stall at 2000 B/s are ten 1000-byte chunks.
        assert!(t.on_tick(MS(9_000), 0).contains(&Action::AskMissing(10)));
    }
}
