//! Which chunk to publish next, and where: the first pass over the artifact, then repairs
//! for the devices that ask. Pure state, tested without a network.
//!
//! The first pass publishes every chunk once, in order, on the target's `ota` topic (the
//! group's, for a group: one copy on the broker for all members). A device that has been
//! stalled, or came back after a restart or a reconnection, publishes a
//! [`Need`](edge_proto::ota::Need) with the ranges it is missing; those chunks go to that
//! device's own `ota` topic, ahead of the rest of the first pass (a device that asks has
//! been waiting already).
//!
//! Only chunks the first pass has already published are repaired: the others are on
//! their way anyway. A chunk already queued for a device is not queued twice, so repeated
//! requests cannot grow the queue beyond one entry per device and chunk.
//!
//! A delta transfer (content-defined chunks, [`Schedule::delta`]) has no fixed first pass:
//! each device says what it lacks right after accepting, and until the transfer starts
//! those requests make up the first pass (the union, on the target's topic: for a group,
//! one copy of a chunk for every member that lacks it). After that, a request is a repair
//! for every chunk the pass will not publish anymore.

use std::collections::{BTreeSet, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// Where a chunk goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    /// The target's topic: the device's for a single-device deploy, the group's otherwise.
    Target,
    /// One device's own topic (a repair).
    Device(String),
}

/// One chunk to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Send {
    /// Where.
    pub dest: Dest,
    /// Chunk index.
    pub index: u32,
}

/// The order chunks are published in.
#[derive(Debug, Clone)]
pub struct Schedule {
    count: u32,
    /// Next index the first pass considers.
    next: u32,
    /// Chunks of the first pass published.
    sent: u32,
    /// A delta transfer's first pass: the chunks asked for before it started (`None`: every
    /// chunk), and whether it is still being gathered.
    pass: Option<(BTreeSet<u32>, bool)>,
    repairs: VecDeque<(String, u32)>,
    queued: BTreeSet<(String, u32)>,
}

impl Schedule {
    /// A schedule for an artifact of `count` chunks, all in the first pass.
    pub fn new(count: u32) -> Schedule {
        Schedule { count, next: 0, sent: 0, pass: None, repairs: VecDeque::new(), queued: BTreeSet::new() }
    }

    /// A delta transfer's schedule: the first pass is what the devices ask for until
    /// [`Schedule::start`].
    pub fn delta(count: u32) -> Schedule {
        Schedule { pass: Some((BTreeSet::new(), true)), ..Schedule::new(count) }
    }

    /// The transfer starts: a delta transfer's first pass is fixed from now on.
    pub fn start(&mut self) {
        if let Some((_, gathering)) = &mut self.pass {
            *gathering = false;
        }
    }

    /// Whether the first pass will still publish chunk `index`.
    fn pass_will_send(&self, index: u32) -> bool {
        index >= self.next && self.pass.as_ref().is_none_or(|(set, _)| set.contains(&index))
    }

    /// Queues repairs for `device`, which is missing the half-open index ranges `missing`.
    /// Ranges are clipped to the chunks the first pass will not publish anymore; empty or
    /// reversed ranges are ignored. Returns how many chunks were newly queued. While a delta
    /// transfer's first pass is gathered, the chunks join it instead.
    pub fn on_need(&mut self, device: &str, missing: &[(u32, u32)]) -> u32 {
        let mut added = 0;
        if let Some((set, true)) = &mut self.pass {
            for &(start, end) in missing {
                for index in start..end.min(self.count) {
                    added += u32::from(set.insert(index));
                }
            }
            return added;
        }
        for &(start, end) in missing {
            for index in start..end.min(self.count) {
                if self.pass_will_send(index) {
                    continue;
                }
                if self.queued.insert((device.to_string(), index)) {
                    self.repairs.push_back((device.to_string(), index));
                    added += 1;
                }
            }
        }
        added
    }

    /// Drops the repairs still queued for `device` (it has everything, or gave up).
    pub fn forget(&mut self, device: &str) {
        self.repairs.retain(|(d, _)| d != device);
        self.queued.retain(|(d, _)| d != device);
    }

    /// The next chunk to publish, if any: a queued repair first, then the first pass.
    pub fn next_send(&mut self) -> Option<Send> {
        if let Some((device, index)) = self.repairs.pop_front() {
            self.queued.remove(&(device.clone(), index));
            return Some(Send { dest: Dest::Device(device), index });
        }
        let index = match &self.pass {
            None => Some(self.next).filter(|&i| i < self.count),
            Some((_, true)) => None,
            Some((set, false)) => set.range(self.next..).next().copied(),
        }?;
        self.next = index + 1;
        self.sent += 1;
        Some(Send { dest: Dest::Target, index })
    }

    /// Whether [`Schedule::next_send`] has something.
    pub fn has_work(&self) -> bool {
        !self.repairs.is_empty()
            || match &self.pass {
                None => self.next < self.count,
                Some((_, true)) => false,
                Some((set, false)) => set.range(self.next..).next().is_some(),
            }
    }

    /// Chunks of the first pass published so far.
    pub fn first_pass_sent(&self) -> u32 {
        self.sent
    }

    /// Chunks in the first pass: all of them, or what a delta transfer's devices asked for.
    pub fn first_pass_len(&self) -> u32 {
        match &self.pass {
            None => self.count,
            Some((set, _)) => set.len() as u32,
        }
    }

    /// Repairs waiting.
    pub fn queued_repairs(&self) -> usize {
        self.repairs.len()
    }
}

/// Spaces publishes so that on average at most `rate` bytes per second go out.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: Option<u64>,
    next: Instant,
}

impl Pacer {
    /// Paces to `rate` bytes per second; `None` (or 0) for no limit.
    pub fn new(rate: Option<u64>, now: Instant) -> Pacer {
        Pacer { rate: rate.filter(|r| *r > 0), next: now }
    }

    /// When the next publish may go.
    pub fn ready_at(&self) -> Instant {
        self.next
    }

    /// Records `bytes` published at `now`.
    pub fn sent(&mut self, bytes: usize, now: Instant) {
        if let Some(rate) = self.rate {
            let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
            self.next = self.next.max(now) + cost;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Schedule) -> Vec<Send> {
        std::iter::from_fn(|| s.next_send()).collect()
    }

    fn to(device: &str, index: u32) -> Send {
        Send { dest: Dest::Device(device.into()), index }
    }

    #[test]
    fn first_pass_publishes_every_chunk_once_in_order() {
        let mut s = Schedule::new(3);
        let sends = drain(&mut s);
        assert_eq!(
            sends.iter().map(|x| (x.dest.clone(), x.index)).collect::<Vec<_>>(),
            [(Dest::Target, 0), (Dest::Target, 1), (Dest::Target, 2)]
        );
        assert!(!s.has_work());
    }

    #[test]
    fn a_need_sends_exactly_the_missing_chunks_to_that_device() {
        let mut s = Schedule::new(10);
        drain(&mut s);
        assert_eq!(s.on_need("d1", &[(1, 3), (7, 8)]), 3);
        assert_eq!(drain(&mut s), [to("d1", 1), to("d1", 2), to("d1", 7)]);
    }

    #[test]
    fn repairs_go_before_the_rest_of_the_first_pass_and_only_for_chunks_already_sent() {
        let mut s = Schedule::new(10);
        for _ in 0..4 {
            s.next_send();
        }
        // The device restarted and asks for everything: 0..4 were published (and lost for
        // it); 4.. are still coming in the first pass.
        assert_eq!(s.on_need("d1", &[(0, 10)]), 4);
        let sends = drain(&mut s);
        assert_eq!(&sends[..4], [to("d1", 0), to("d1", 1), to("d1", 2), to("d1", 3)]);
        assert_eq!(sends[4..].iter().map(|x| x.index).collect::<Vec<_>>(), [4, 5, 6, 7, 8, 9]);
        assert!(sends[4..].iter().all(|x| x.dest == Dest::Target));
    }

    #[test]
    fn a_need_before_anything_was_sent_queues_nothing() {
        let mut s = Schedule::new(5);
        assert_eq!(s.on_need("d1", &[(0, 5)]), 0);
        assert_eq!(s.queued_repairs(), 0);
    }

    #[test]
    fn repeated_needs_do_not_queue_a_chunk_twice_but_requeue_after_it_was_sent() {
        let mut s = Schedule::new(4);
        drain(&mut s);
        assert_eq!(s.on_need("d1", &[(0, 2)]), 2);
        assert_eq!(s.on_need("d1", &[(0, 2)]), 0);
        assert_eq!(s.on_need("d2", &[(1, 2)]), 1, "another device gets its own copy");
        assert_eq!(drain(&mut s), [to("d1", 0), to("d1", 1), to("d2", 1)]);
        assert_eq!(s.on_need("d1", &[(1, 2)]), 1, "lost again: sent again");
    }

    #[test]
    fn out_of_range_and_reversed_ranges_are_clipped_or_ignored() {
        let mut s = Schedule::new(4);
        drain(&mut s);
        assert_eq!(s.on_need("d1", &[(3, 1), (2, 2), (3, u32::MAX)]), 1);
        assert_eq!(drain(&mut s), [to("d1", 3)]);
    }

    #[test]
    fn forget_drops_a_devices_pending_repairs() {
        let mut s = Schedule::new(4);
        drain(&mut s);
        s.on_need("d1", &[(0, 4)]);
        s.on_need("d2", &[(0, 1)]);
        s.forget("d1");
        assert_eq!(drain(&mut s), [to("d2", 0)]);
        assert_eq!(s.on_need("d1", &[(0, 1)]), 1, "a forgotten device may ask again");
    }

    #[test]
    fn a_delta_first_pass_is_the_union_of_what_devices_ask_before_it_starts() {
        let mut s = Schedule::delta(10);
        assert!(!s.has_work(), "nothing goes before the devices say what they lack");
        assert_eq!(s.on_need("d1", &[(8, 10)]), 2);
        assert_eq!(s.on_need("d2", &[(2, 3), (9, 10)]), 1, "9 is in the pass already");
        assert_eq!(s.next_send(), None, "still gathering");
        s.start();
        assert_eq!(s.first_pass_len(), 3);
        let first = s.next_send().unwrap();
        assert_eq!((first.dest, first.index), (Dest::Target, 2));
        // Asked for after the start: 9 is still coming in the pass, 0 and 2 are repairs.
        assert_eq!(s.on_need("d3", &[(0, 1), (2, 3), (9, 10)]), 2);
        let rest: Vec<(Dest, u32)> = drain(&mut s).into_iter().map(|x| (x.dest, x.index)).collect();
        assert_eq!(
            rest,
            [(Dest::Device("d3".into()), 0), (Dest::Device("d3".into()), 2), (Dest::Target, 8), (Dest::Target, 9)]
        );
        assert_eq!(s.first_pass_sent(), 3);
        assert!(!s.has_work());
    }

    #[test]
    fn pacer_spaces_publishes_to_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(Some(1000), t0);
        assert_eq!(p.ready_at(), t0);
        p.sent(500, t0);
        assert_eq!(p.ready_at(), t0 + Duration::from_millis(500));
        // Late by 2 s: no burst to catch up beyond one chunk.
        p.sent(1000, t0 + Duration::from_secs(2));
        assert_eq!(p.ready_at(), t0 + Duration::from_secs(3));
        let mut unlimited = Pacer::new(None, t0);
        unlimited.sent(1 << 30, t0);
        assert_eq!(unlimited.ready_at(), t0);
    }
}
