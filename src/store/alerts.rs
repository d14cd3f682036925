//! What the notifier reads and writes: new events and failed batch creates
//! past a cursor, the alerts already recorded (for deduplication across
//! restarts), and yesterday's figures for the digest.

use std::collections::{BTreeMap, HashSet};

use super::sql::params;
use chrono::{DateTime, Utc};

use super::events::from_row as event_from_row;
use super::{EventRow, Store, StoreError, from_millis, to_millis};

/// A batch create call that failed.
#[derive(Debug, Clone, PartialEq)]
pub struct FailedCreate {
    /// The attempt's id (the cursor).
    pub id: i64,
    /// The run it was for.
    pub run_id: i64,
    /// When the call started.
    pub at: DateTime<Utc>,
    /// The provider's error type, or ours (`timeout`, `connect`, ...).
    pub error_type: String,
    /// What it said.
    pub error_message: Option<String>,
}

impl Store {
    /// The id of the last event before `at` (0 when none): where a fresh notifier starts.
    pub fn last_event_id_before(&self, at: DateTime<Utc>) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events WHERE at < ?1", [to_millis(at)], |row| row.get(0))
            .map_err(|e| self.err(e))
    }

    /// Events after id `after` of the given kinds, oldest first, at most `limit`.
    pub fn events_after(&self, after: i64, kinds: &[&str], limit: u32) -> Result<Vec<(i64, EventRow)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT at, run_id, job, kind, detail, id FROM events
                 WHERE id > ?1 AND kind IN (SELECT k.value FROM {}) ORDER BY id LIMIT ?3",
                self.conn.dialect().json_values("?2", "k")
            ))
            .map_err(|e| self.err(e))?;
        let kinds = serde_json::to_string(kinds).expect("strings serialize");
        let rows = statement
            .query_map(params![after, kinds, limit], |row| Ok((row.get(5)?, event_from_row(row)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The highest event id (0 when none).
    pub fn last_event_id(&self) -> Result<i64, StoreError> {
        self.conn.query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| row.get(0)).map_err(|e| self.err(e))
    }

    /// The id of the last attempt before `at` (0 when none).
    pub fn last_attempt_id_before(&self, at: DateTime<Utc>) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM attempts WHERE started_at < ?1", [to_millis(at)], |row| {
                row.get(0)
            })
            .map_err(|e| self.err(e))
    }

    /// Failed batch create calls after attempt id `after`, oldest first.
    pub fn failed_creates_after(&self, after: i64, limit: u32) -> Result<Vec<FailedCreate>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT id, run_id, started_at, error_type, error_message FROM attempts
                 WHERE id > ?1 AND operation = 'create_batch' AND error_type IS NOT NULL AND run_id IS NOT NULL
                 ORDER BY id LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map(params![after, limit], |row| {
                Ok(FailedCreate {
                    id: row.get(0)?,
                    run_id: row.get(1)?,
                    at: from_millis(row.get(2)?),
                    error_type: row.get(3)?,
                    error_message: row.get(4)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// `(key, target)` of every alert recorded as sent since `since`.
    pub fn sent_alerts_since(&self, since: DateTime<Utc>) -> Result<HashSet<(String, String)>, StoreError> {
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT {}, {} FROM events WHERE kind = 'alert_sent' AND at >= ?1",
                self.conn.dialect().json_text("detail", "key"),
                self.conn.dialect().json_text("detail", "target")
            ))
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([to_millis(since)], |row| {
                Ok((row.get::<_, Option<String>>(0)?, row.get::<_, Option<String>>(1)?))
            })
            .map_err(|e| self.err(e))?;
        let mut sent = HashSet::new();
        for row in rows {
            if let (Some(key), Some(target)) = row.map_err(|e| self.err(e))? {
                sent.insert((key, target));
            }
        }
        Ok(sent)
    }

    /// Runs scheduled in `[since, until)`, counted by state.
    pub fn run_states_between(
        &self,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT state, COUNT(*) FROM runs WHERE scheduled_for >= ?1 AND scheduled_for < ?2 GROUP BY 1")
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map(params![to_millis(since), to_millis(until)], |row| Ok((row.get(0)?, row.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}
