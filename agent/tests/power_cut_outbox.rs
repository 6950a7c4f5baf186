//! The power-cut matrix's outbox row: a cut at any point of the outbox's life (its
//! creation, a push and its fsync, a segment roll, a drop of the oldest when full, the
//! cursor written on a delivery, the repair of a torn tail at open) loses no acknowledged
//! telemetry.
//!
//! The real [`Outbox`] runs on the test thread with its file operations logged
//! (`edge_agent::fsutil::record`, which is per thread: the spool thread of the agent is
//! not involved), and for every cut point and every [`crashfs::Mode`] the outbox is opened
//! on what survives and drained. What must hold, against the queue the test knows the live
//! outbox held at the last completed step and will hold after the step in progress:
//!
//! - every record whose `push` returned `Ok` (fsynced: acknowledged to the producer) is
//!   still queued, unless it was delivered (`ack`: the cursor moved past it) or dropped
//!   for room before the cut;
//! - a record delivered before the cut does not come back. The only re-delivery is the
//!   record whose delivery was in progress (PUBACK received, cursor not yet durable):
//!   at-least-once, and receivers deduplicate telemetry by `(device, seq)`;
//! - the queue stays in order, without gaps, within its byte limit, and no record comes
//!   back corrupt;
//! - the outbox opens without error and keeps working: a push after it survives a restart.

mod crashfs;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crashfs::{every_cut, Crash, Cut};
use edge_agent::fsutil::record;
use edge_agent::outbox::Outbox;

const TTL: Duration = Duration::from_secs(3600);
const NOW: u64 = 1_000;

/// Record `i`'s payload. Every payload has the same length, so a limit is a record count.
fn sample(i: u64) -> Vec<u8> {
    format!("telemetry sample {i:07} of the power-cut matrix").into_bytes()
}

const SAMPLE_BYTES: u64 = 48;

/// The index of a payload that is exactly `sample(i)`.
fn index_of(payload: &[u8]) -> Option<u64> {
    let i = std::str::from_utf8(payload.get(17..24)?).ok()?.parse().ok()?;
    (payload == sample(i)).then_some(i)
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_bytes: u64,
    segment_bytes: u64,
}

impl Limits {
    fn open(&self, state: &Path) -> Result<Outbox, String> {
        let dir = state.join("outbox");
        Outbox::open_with(&dir, self.max_bytes, TTL, self.segment_bytes)
            .map_err(|e| format!("the outbox does not open: {e}"))
    }

    /// Records the outbox holds at most.
    fn capacity(&self) -> u64 {
        self.max_bytes / SAMPLE_BYTES
    }
}

/// Drives the outbox on this thread and keeps, step by step, the queue it must hold:
/// records `start..end` by index. Each completed step is marked in the recording.
struct Driver {
    state: PathBuf,
    limits: Limits,
    outbox: Option<Outbox>,
    queue: Range<u64>,
    /// The queue before the first step, then after each.
    steps: Vec<Range<u64>>,
}

impl Driver {
    fn new(state: &Path, limits: Limits, queue: Range<u64>) -> Driver {
        Driver { state: state.to_path_buf(), limits, outbox: None, queue: queue.clone(), steps: vec![queue] }
    }

    fn outbox(&mut self) -> &mut Outbox {
        self.outbox.as_mut().expect("opened")
    }

    /// Opens the outbox, as the agent does when it starts (again).
    fn start(&mut self) {
        self.outbox = None;
        self.outbox = Some(self.limits.open(&self.state).unwrap());
        assert_eq!(self.outbox().stats().queued, self.queue.end - self.queue.start);
        self.step();
    }

    /// Pushes the next record; the oldest go if the outbox is full.
    fn push(&mut self) {
        let i = self.queue.end;
        self.outbox().push(NOW, &sample(i)).unwrap();
        self.queue.end += 1;
        self.queue.start = self.queue.start.max(self.queue.end.saturating_sub(self.limits.capacity()));
        self.step();
    }

    /// Delivers the head: peeked, published, PUBACK received, acked.
    fn deliver(&mut self) {
        let head = self.queue.start;
        assert_eq!(self.outbox().peek(NOW).unwrap(), Some(sample(head)));
        self.outbox().ack().unwrap();
        self.queue.start += 1;
        self.step();
    }

    fn step(&mut self) {
        self.steps.push(self.queue.clone());
        record::mark(&format!("step {}", self.steps.len() - 1));
    }
}

/// Runs `run` with the file operations under `state` logged and checks the outbox after
/// every cut of it. Fails with every cut that broke an invariant; returns the operations.
fn matrix(state: &Path, limits: Limits, initial: Range<u64>, run: impl FnOnce(&mut Driver)) -> Vec<record::Op> {
    let snapshot = Crash::snapshot(state);
    let mut driver = Driver::new(state, limits, initial);
    let ops = {
        let recording = record::start(state);
        run(&mut driver);
        recording.ops()
    };
    drop(driver.outbox.take());
    assert!(ops.iter().any(|o| !matches!(o, record::Op::Mark(_))), "nothing was recorded");
    let steps = driver.steps;
    let (states, failures) = every_cut(&snapshot, &ops, |state, cut| check(state, cut, limits, &steps));
    eprintln!("{} operations, {} steps, {states} distinct states after a cut", ops.len(), steps.len() - 1);
    assert!(failures.is_empty(), "{} of the cuts broke an invariant:\n{}", failures.len(), failures.join("\n"));
    ops
}

/// What must hold after `cut`, whose last completed step left the queue `steps[m]` and
/// whose step in progress would have left `steps[m + 1]`.
fn check(state: &Path, cut: &Cut, limits: Limits, steps: &[Range<u64>]) -> Result<(), String> {
    let m = (1..steps.len()).take_while(|j| cut.passed(&format!("step {j}"))).count();
    let before = steps[m].clone();
    let after = steps.get(m + 1).cloned().unwrap_or_else(|| before.clone());

    let mut outbox = limits.open(state)?;
    let stats = outbox.stats();
    if stats.queued_bytes > limits.max_bytes {
        return Err(format!("{} bytes queued, over the limit of {}", stats.queued_bytes, limits.max_bytes));
    }
    let mut got = vec![];
    while let Some(payload) = outbox.peek(NOW).map_err(|e| format!("peek: {e}"))? {
        let i = index_of(&payload).ok_or_else(|| {
            format!("record {} after {got:?} is corrupt: {:?}", got.len(), String::from_utf8_lossy(&payload))
        })?;
        got.push(i);
        outbox.ack().map_err(|e| format!("ack: {e}"))?;
    }
    let held = format!("the queue held {before:?} before the step in progress and {after:?} after it");
    match (got.first(), got.last()) {
        (Some(&first), Some(&last)) => {
            let range = first..last + 1;
            if got != range.clone().collect::<Vec<_>>() {
                return Err(format!("records out of order or with gaps: {got:?}"));
            }
            if range.end < before.end {
                return Err(format!("records {:?} were pushed and are lost; {held}", range.end..before.end));
            }
            if range.start < before.start {
                return Err(format!(
                    "records {:?}, delivered or dropped before the cut, come back; {held}",
                    range.start..before.start
                ));
            }
            if range.start > after.start {
                return Err(format!("records {:?} are lost; {held}", after.start..range.start));
            }
            if range.end > after.end {
                return Err(format!("records {:?} were never pushed; {held}", after.end..range.end));
            }
        }
        _ if before.end > after.start => {
            return Err(format!(
                "the queue is empty after the cut: records {:?} are lost; {held}",
                after.start..before.end
            ));
        }
        _ => {}
    }

    // The outbox keeps working on what the cut left: a push survives a restart.
    let next = sample(9_999_999);
    outbox.push(NOW, &next).map_err(|e| format!("a push after the cut fails: {e}"))?;
    drop(outbox);
    let mut outbox = limits.open(state)?;
    match outbox.peek(NOW).map_err(|e| format!("peek: {e}"))? {
        Some(p) if p == next => Ok(()),
        other => Err(format!("a record pushed after the cut reads back as {other:?} after a restart")),
    }
}

/// Room for `n` records in a segment: it rolls once it holds that many.
fn segment_of(n: u64) -> u64 {
    n * (16 + SAMPLE_BYTES)
}

#[test]
fn acknowledged_telemetry_survives_any_cut_and_delivered_telemetry_stays_delivered() {
    // The outbox's creation, pushes across segment rolls, deliveries moving the cursor from
    // one segment to the next (and the delivered segments deleted), a restart.
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { max_bytes: 1 << 20, segment_bytes: segment_of(3) };
    matrix(dir.path(), limits, 0..0, |d| {
        d.start();
        for _ in 0..4 {
            d.push();
        }
        d.deliver();
        for _ in 0..3 {
            d.push();
        }
        for _ in 0..4 {
            d.deliver();
        }
        d.start();
        d.push();
        while !d.queue.is_empty() {
            d.deliver();
        }
        d.push();
    });
}

#[test]
fn a_full_outbox_keeps_its_newest_records_after_any_cut() {
    // Pushes past the limit drop the oldest and move the cursor in the same step; segments
    // roll every two records.
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { max_bytes: 3 * SAMPLE_BYTES, segment_bytes: segment_of(2) };
    matrix(dir.path(), limits, 0..0, |d| {
        d.start();
        for _ in 0..5 {
            d.push();
        }
        d.deliver();
        for _ in 0..3 {
            d.push();
        }
        d.deliver();
        d.deliver();
        d.push();
    });
}

#[test]
fn a_cut_while_the_outbox_repairs_a_torn_tail_loses_nothing_acknowledged() {
    // What an earlier cut left: a torn record after the last good one, and a cursor
    // written to its temporary file but never renamed.
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { max_bytes: 1 << 20, segment_bytes: segment_of(3) };
    {
        let mut outbox = limits.open(dir.path()).unwrap();
        for i in 0..4 {
            outbox.push(NOW, &sample(i)).unwrap();
        }
        assert_eq!(outbox.peek(NOW).unwrap(), Some(sample(0)));
        outbox.ack().unwrap();
    }
    let outbox_dir = dir.path().join("outbox");
    let mut segments: Vec<PathBuf> = std::fs::read_dir(&outbox_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("seg-"))
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "the records span a roll: {segments:?}");
    let mut torn = (SAMPLE_BYTES as u32).to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xA5; 20]);
    let last = segments.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    bytes.extend_from_slice(&torn);
    let bytes_len = bytes.len() as u64;
    std::fs::write(last, bytes).unwrap();
    std::fs::write(outbox_dir.join("cursor.tmp"), [0x5A; 24]).unwrap();

    let ops = matrix(dir.path(), limits, 1..4, |d| {
        d.start();
        d.push();
        d.deliver();
        d.push();
    });
    // The cuts fell inside the repair: the tail cut off, the temporary cursor removed.
    let last = last.strip_prefix(dir.path()).unwrap();
    let cut_off = bytes_len - torn.len() as u64;
    assert!(ops.contains(&record::Op::SetLen { path: last.to_path_buf(), len: cut_off }), "{ops:?}");
    assert!(ops.contains(&record::Op::Remove(Path::new("outbox/cursor.tmp").to_path_buf())), "{ops:?}");
}
