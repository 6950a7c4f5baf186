//! What the telemetry export has written, per device, and what the inventory says for its
//! labels: the deduplication rule (pure) and its table `export_progress`.
//!
//! # The rule
//!
//! Telemetry is delivered at least once and in order per device; every sample carries the
//! device's `seq` (one more per sample, kept across agent restarts) and its own time `ts`.
//! Replicas of the service split a device's samples between them (shared subscriptions
//! hand each message to one replica), so they arrive here out of order too. The export keeps,
//! per device, a [`Mark`]: the `(seq, ts)` of the highest sample written, and which of the
//! [`WINDOW`] samples below it were written. A sample is new when
//!
//! - its `seq` is higher: the normal case, whatever its `ts` (a board without a clock
//!   may sample at a wrong time before NTP; a late outbox flush has old times);
//! - or its `seq` is lower **and** its `ts` is later: the agent's state directory was
//!   wiped (a reflashed card), so its `seq` started again from 0, and what it sends now is
//!   newer than anything written. The new `(seq, ts)` becomes the mark;
//! - or its `seq` is lower and it is not known to be written: another replica wrote the
//!   higher one first, or it is further below than the window reaches.
//!
//! So a sample is skipped only when it is known to be written: the same `seq` as the mark,
//! or a lower one whose bit is set. Anything unknown is written, and a duplicate write is
//! harmless (Prometheus takes the same series, time and value as a no-op). The marks are
//! stored after Prometheus accepted the write, before the messages are acked to the broker:
//! a crash between the two writes the same samples again. Replicas merge what they wrote
//! into the stored mark under a lock of the device's row ([`Progress::save`]), so neither
//! undoes the other's; a stale mark (another replica's writes not seen yet) only ever
//! causes a duplicate write, never a skip.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::db::{now_ms, query, Db, DbError};
use crate::series::DeviceLabels;

/// How long a device's labels are reused before the inventory is read again.
pub const LABELS_TTL: Duration = Duration::from_secs(10);

/// How many samples below its highest a [`Mark`] remembers.
pub const WINDOW: u64 = 64;

/// What was written for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// The highest `seq` written.
    pub seq: u64,
    /// Its `ts`, milliseconds since the Unix epoch.
    pub ts: u64,
    /// Bit `i` set: `seq - 1 - i` was written too.
    pub below: u64,
}

impl Mark {
    /// The mark of a device whose first written sample is `(seq, ts)`.
    pub fn first(seq: u64, ts: u64) -> Mark {
        Mark { seq, ts, below: 0 }
    }

    /// Whether `seq`, below the mark, is known to be written.
    fn has_below(&self, seq: u64) -> bool {
        let d = self.seq - seq;
        d <= WINDOW && self.below & (1 << (d - 1)) != 0
    }
}

/// Whether a sample `(seq, ts)` is to be written after `last` (see the module docs).
pub fn is_new(last: Option<Mark>, seq: u64, ts: u64) -> bool {
    match last {
        None => true,
        Some(m) if seq == m.seq => false,
        Some(m) => seq > m.seq || ts > m.ts || !m.has_below(seq),
    }
}

/// `last` once `(seq, ts)` is written too.
pub fn record(last: Option<Mark>, seq: u64, ts: u64) -> Mark {
    let Some(m) = last else { return Mark::first(seq, ts) };
    if seq > m.seq {
        let d = seq - m.seq;
        let below = if d <= WINDOW { m.below.checked_shl(d as u32).unwrap_or(0) | 1 << (d - 1) } else { 0 };
        Mark { seq, ts, below }
    } else if seq == m.seq {
        m
    } else if ts > m.ts {
        // A wiped agent: what it sends now starts the record again.
        Mark::first(seq, ts)
    } else {
        let d = m.seq - seq;
        let below = if d <= WINDOW { m.below | 1 << (d - 1) } else { m.below };
        Mark { below, ..m }
    }
}

async fn read_mark(conn: &mut sqlx::AnyConnection, device: &str) -> Result<Option<Mark>, DbError> {
    let row = sqlx::query("SELECT last_seq, last_ts, written_below FROM export_progress WHERE device = $1")
        .bind(device)
        .fetch_optional(&mut *conn)
        .await
        .map_err(query("read the export progress"))?;
    let Some(row) = row else { return Ok(None) };
    let get = |i| row.try_get::<i64, _>(i).map_err(query("read the export progress"));
    Ok(Some(Mark { seq: get(0)? as u64, ts: get(1)? as u64, below: get(2)? as u64 }))
}

/// The marks and labels, cached in memory over the database.
#[derive(Debug)]
pub struct Progress {
    db: Db,
    marks: HashMap<String, Mark>,
    labels: HashMap<String, (Instant, DeviceLabels)>,
}

impl Progress {
    /// Empty caches over `db`.
    pub fn new(db: Db) -> Progress {
        Progress { db, marks: HashMap::new(), labels: HashMap::new() }
    }

    /// The mark of `device`, read from the database the first time.
    pub async fn mark(&mut self, device: &str) -> Result<Option<Mark>, DbError> {
        if let Some(m) = self.marks.get(device) {
            return Ok(Some(*m));
        }
        let mut conn = self.db.pool().acquire().await.map_err(query("read the export progress"))?;
        let m = read_mark(&mut conn, device).await?;
        if let Some(m) = m {
            self.marks.insert(device.into(), m);
        }
        Ok(m)
    }

    /// Records the samples written, `(seq, ts)` per device in the order written, into the
    /// stored marks in one transaction, each device's under its lock (another replica may
    /// have written others of its samples), then in the cache.
    pub async fn save(&mut self, written: &BTreeMap<String, Vec<(u64, u64)>>) -> Result<(), DbError> {
        if written.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.pool().begin().await.map_err(query("begin"))?;
        let mut merged = Vec::with_capacity(written.len());
        // In the map's order, so that two replicas take the locks in one order.
        for (device, samples) in written {
            self.db.lock(&mut tx, &format!("export/{device}")).await.map_err(query("lock the export progress"))?;
            let mut m = read_mark(&mut tx, device).await?;
            for &(seq, ts) in samples {
                m = Some(record(m, seq, ts));
            }
            let Some(m) = m else { continue };
            sqlx::query(
                "INSERT INTO export_progress (device, last_seq, last_ts, written_below, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (device) DO UPDATE SET last_seq = excluded.last_seq, \
                 last_ts = excluded.last_ts, written_below = excluded.written_below, updated_at = excluded.updated_at",
            )
            .bind(device)
            .bind(m.seq as i64)
            .bind(m.ts as i64)
            .bind(m.below as i64)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(query("write the export progress"))?;
            merged.push((device.clone(), m));
        }
        tx.commit().await.map_err(query("commit the export progress"))?;
        self.marks.extend(merged);
        Ok(())
    }

    /// The inventory's groups and active model versions of `device`, at most
    /// [`LABELS_TTL`] old. A device the inventory does not know (yet) has none, and is
    /// not cached.
    pub async fn labels(&mut self, device: &str) -> Result<DeviceLabels, DbError> {
        if let Some((at, l)) = self.labels.get(device) {
            if at.elapsed() < LABELS_TTL {
                return Ok(l.clone());
            }
        }
        let pool = self.db.pool();
        let groups = sqlx::query("SELECT group_name FROM device_groups WHERE device = $1 ORDER BY group_name")
            .bind(device)
            .fetch_all(pool)
            .await
            .map_err(query("read a device's groups"))?;
        let models = sqlx::query("SELECT name, active_version FROM device_models WHERE device = $1")
            .bind(device)
            .fetch_all(pool)
            .await
            .map_err(query("read a device's models"))?;
        let known = sqlx::query("SELECT device FROM devices WHERE device = $1")
            .bind(device)
            .fetch_optional(pool)
            .await
            .map_err(query("read a device"))?
            .is_some();
        let mut l = DeviceLabels::default();
        for r in groups {
            l.groups.push(r.try_get(0).map_err(query("read a device's groups"))?);
        }
        for r in models {
            let name: String = r.try_get(0).map_err(query("read a device's models"))?;
            if let Some(v) = r.try_get::<Option<String>, _>(1).map_err(query("read a device's models"))? {
                l.versions.insert(name, v);
            }
        }
        // A device the inventory does not know yet (its first status is still on its way
        // through the other session) is asked about again with its next sample.
        if known {
            self.labels.insert(device.into(), (Instant::now(), l.clone()));
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples 0..=10 written in order, one a second.
    fn written_to_10() -> Mark {
        (0..=10).fold(None, |m, seq| Some(record(m, seq, 1_000_000 - (10 - seq) * 1000))).unwrap()
    }

    #[test]
    fn a_first_sample_and_higher_seqs_are_new_whatever_their_time() {
        let m = written_to_10();
        assert_eq!((m.seq, m.ts), (10, 1_000_000));
        assert!(is_new(None, 0, 0));
        assert!(is_new(Some(m), 11, 2_000_000));
        assert!(is_new(Some(m), 11, 5), "a board before NTP samples at a wrong time");
    }

    #[test]
    fn redeliveries_are_skipped() {
        let m = written_to_10();
        assert!(!is_new(Some(m), 10, 1_000_000), "the same sample again");
        assert!(!is_new(Some(m), 10, 1_000_001), "the same seq is never written twice");
        for seq in 0..10 {
            assert!(!is_new(Some(m), seq, 1_000_000 - (10 - seq) * 1000), "{seq} again");
        }
    }

    #[test]
    fn a_seq_restarting_with_a_later_time_is_a_wiped_agent() {
        // The state directory was wiped: seq starts again at 0, at a later time.
        let m = written_to_10();
        assert!(is_new(Some(m), 0, 1_060_000));
        let after = record(Some(m), 0, 1_060_000);
        assert_eq!(after, Mark::first(0, 1_060_000), "the record starts again");
        assert!(is_new(Some(after), 1, 1_061_000));
        assert!(!is_new(Some(after), 0, 1_060_000));
    }

    #[test]
    fn samples_split_between_replicas_are_each_written_once() {
        // Replica A writes the even samples, replica B the odd ones, B a batch behind: what
        // B writes is below A's mark but not known to be written, so it is new.
        let ts = |seq: u64| 1_000_000 + seq * 1000;
        let mut stored: Option<Mark> = None;
        for seq in (0..20).step_by(2) {
            assert!(is_new(stored, seq, ts(seq)));
            stored = Some(record(stored, seq, ts(seq)));
        }
        for seq in (1..20).step_by(2) {
            assert!(is_new(stored, seq, ts(seq)), "{seq} was never written");
            stored = Some(record(stored, seq, ts(seq)));
        }
        let m = stored.unwrap();
        assert_eq!((m.seq, m.ts), (19, ts(19)));
        for seq in 0..20 {
            assert!(!is_new(stored, seq, ts(seq)), "{seq} is written, a redelivery is skipped");
        }
    }

    #[test]
    fn what_the_window_does_not_reach_is_written_again_not_skipped() {
        let ts = |seq: u64| 1_000_000 + seq * 1000;
        let m = (0..=200).fold(None, |m, seq| Some(record(m, seq, ts(seq)))).unwrap();
        assert!(!is_new(Some(m), 200 - WINDOW, ts(200 - WINDOW)), "the window's last");
        assert!(is_new(Some(m), 199 - WINDOW, ts(199 - WINDOW)), "unknown: written (a no-op if it was)");
        // A jump past the window forgets what was below.
        let jumped = record(Some(m), 200 + WINDOW + 1, ts(300));
        assert_eq!(jumped.below, 0);
        assert!(is_new(Some(jumped), 200, ts(200)));
        // Exactly the window: the old mark is the highest bit.
        let edge = record(Some(Mark::first(5, ts(5))), 5 + WINDOW, ts(90));
        assert_eq!(edge.below, 1 << (WINDOW - 1));
        assert!(!is_new(Some(edge), 5, ts(5)));
    }
}
