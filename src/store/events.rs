//! The append-only event log: every decision and every notable thing that happened.

use super::sql::{Connection, params};
use chrono::{DateTime, Utc};

use super::{Store, StoreError, from_millis, to_millis};

/// A stored event.
#[derive(Debug, Clone, PartialEq)]
pub struct EventRow {
    /// When it happened.
    pub at: DateTime<Utc>,
    /// The run it concerns, if any.
    pub run_id: Option<i64>,
    /// The job it concerns, if any.
    pub job: Option<String>,
    /// What happened, e.g. `batch_submitted`.
    pub kind: String,
    /// Details as JSON.
    pub detail: serde_json::Value,
}

pub(super) fn from_row(row: &super::sql::Row<'_>) -> super::sql::Result<EventRow> {
    let detail: String = row.get(4)?;
    Ok(EventRow {
        at: from_millis(row.get(0)?),
        run_id: row.get(1)?,
        job: row.get(2)?,
        kind: row.get(3)?,
        detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::String(detail)),
    })
}

pub(super) fn insert(
    conn: &Connection,
    run_id: Option<i64>,
    job: Option<&str>,
    kind: &str,
    detail: &serde_json::Value,
    at: DateTime<Utc>,
) -> super::sql::Result<usize> {
    conn.execute(
        "INSERT INTO events (at, run_id, job, kind, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![to_millis(at), run_id, job, kind, detail.to_string()],
    )
}

impl Store {
    /// Appends an event.
    pub fn record_event(
        &self,
        run_id: Option<i64>,
        job: Option<&str>,
        kind: &str,
        detail: &serde_json::Value,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        insert(&self.conn, run_id, job, kind, detail, at).map(drop).map_err(|e| self.err(e))
    }

    /// Events of a run (or all events with `None`), oldest first.
    pub fn events(&self, run_id: Option<i64>) -> Result<Vec<EventRow>, StoreError> {
        let mut statement = self
            .conn
            .prepare("SELECT at, run_id, job, kind, detail FROM events WHERE CAST(?1 AS BIGINT) IS NULL OR run_id = ?1 ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([run_id], from_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

impl Store {
    /// Events of the given kinds since `since`, newest first, at most `limit`.
    pub fn recent_events(
        &self,
        kinds: &[&str],
        since: DateTime<Utc>,
        limit: usize,
    ) -> Result<Vec<EventRow>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT at, run_id, job, kind, detail FROM events WHERE at >= ?1 ORDER BY id DESC")
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([to_millis(since)], from_row).map_err(|e| self.err(e))?;
        let mut found = Vec::new();
        for row in rows {
            let event = row.map_err(|e| self.err(e))?;
            if kinds.contains(&event.kind.as_str()) {
                found.push(event);
            }
            if found.len() >= limit {
                break;
            }
        }
        Ok(found)
    }
}
