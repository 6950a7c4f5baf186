//! What the telemetry export has written, per device, and what the inventory says for its
//! labels: the deduplication rule (pure) and its table `export_progress`.
//!
//! # The rule
//!
//! Telemetry is delivered at least once and in order per device; every sample carries the
//! device's `seq` (one more per sample, kept across agent restarts) and its own time `ts`.
//! The export keeps, per device, the `(seq, ts)` of the last sample it wrote, and takes a
//! sample as new when
//!
//! - its `seq` is higher: the normal case, whatever its `ts` (a board without a clock
//!   may sample at a wrong time before NTP; a late outbox flush has old times);
//! - or its `seq` is lower **and** its `ts` is later: the agent's state directory was
//!   wiped (a reflashed card), so its `seq` started again from 0, and what it sends now is
//!   newer than anything written. The new `(seq, ts)` becomes the mark.
//!
//! Anything else is a redelivery (the same `seq`, or a lower one at an earlier or equal
//! time) and is skipped. The mark is stored after Prometheus accepted the write, before
//! the messages are acked to the broker: a crash between the two writes the same samples
//! again, which Prometheus takes as the no-op it is (same series, time and value).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::Row;

use crate::db::{now_ms, Db, DbError};
use crate::series::DeviceLabels;

/// How long a device's labels are reused before the inventory is read again.
pub const LABELS_TTL: Duration = Duration::from_secs(10);

/// The last sample written for a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    /// Its `seq`.
    pub seq: u64,
    /// Its `ts`, milliseconds since the Unix epoch.
    pub ts: u64,
}

/// Whether a sample `(seq, ts)` is to be written after `last` (see the module docs).
pub fn is_new(last: Option<Mark>, seq: u64, ts: u64) -> bool {
    match last {
        None => true,
        Some(m) => seq > m.seq || (seq < m.seq && ts > m.ts),
    }
}

fn query(what: &'static str) -> impl FnOnce(sqlx::Error) -> DbError {
    move |source| DbError::Query { what, source }
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
        let row = sqlx::query("SELECT last_seq, last_ts FROM export_progress WHERE device = $1")
            .bind(device)
            .fetch_optional(self.db.pool())
            .await
            .map_err(query("read the export progress"))?;
        let Some(row) = row else { return Ok(None) };
        let seq: i64 = row.try_get(0).map_err(query("read the export progress"))?;
        let ts: i64 = row.try_get(1).map_err(query("read the export progress"))?;
        let m = Mark { seq: seq as u64, ts: ts as u64 };
        self.marks.insert(device.into(), m);
        Ok(Some(m))
    }

    /// Stores `marks` (written samples) in one transaction, then in the cache.
    pub async fn save(&mut self, marks: &HashMap<String, Mark>) -> Result<(), DbError> {
        if marks.is_empty() {
            return Ok(());
        }
        let mut tx = self.db.pool().begin().await.map_err(query("begin"))?;
        for (device, m) in marks {
            sqlx::query(
                "INSERT INTO export_progress (device, last_seq, last_ts, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (device) DO UPDATE SET last_seq = excluded.last_seq, last_ts = excluded.last_ts, \
                 updated_at = excluded.updated_at",
            )
            .bind(device)
            .bind(m.seq as i64)
            .bind(m.ts as i64)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(query("write the export progress"))?;
        }
        tx.commit().await.map_err(query("commit the export progress"))?;
        self.marks.extend(marks.iter().map(|(d, m)| (d.clone(), *m)));
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

    const M: Mark = Mark { seq: 10, ts: 1_000_000 };

    #[test]
    fn a_first_sample_and_higher_seqs_are_new_whatever_their_time() {
        assert!(is_new(None, 0, 0));
        assert!(is_new(Some(M), 11, 2_000_000));
        assert!(is_new(Some(M), 11, 5), "a board before NTP samples at a wrong time");
    }

    #[test]
    fn redeliveries_are_skipped() {
        assert!(!is_new(Some(M), 10, 1_000_000), "the same sample again");
        assert!(!is_new(Some(M), 10, 1_000_001), "the same seq is never written twice");
        assert!(!is_new(Some(M), 9, 999_000), "an older one again");
        assert!(!is_new(Some(M), 9, 1_000_000));
    }

    #[test]
    fn a_seq_restarting_with_a_later_time_is_a_wiped_agent() {
        // The state directory was wiped: seq starts again at 0, at a later time.
        assert!(is_new(Some(M), 0, 1_060_000));
        let after = Mark { seq: 0, ts: 1_060_000 };
        assert!(is_new(Some(after), 1, 1_061_000));
        assert!(!is_new(Some(after), 0, 1_060_000));
    }
}
