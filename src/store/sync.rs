//! The sync lane's side of the store: what is left to send, and its results.

use super::sql::{OptionalExtension, params};
use chrono::{DateTime, Utc};

use super::results::{NewResult, insert_result};
use super::{Store, StoreError, to_millis};
use crate::outcome::Outcome;

/// A request the sync lane should send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncWork {
    /// Its id.
    pub custom_id: String,
    /// The request body for the job's provider, as JSON text.
    pub params: String,
    /// Attempts it has used (its own failed results).
    pub attempts: u32,
}

/// What storing a sync result did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncSettle {
    /// The request took this result as its own.
    Settled,
    /// The request already had a final result: this success is duplicate spend.
    Duplicate,
    /// The request already had a final result and this outcome is not a success.
    Ignored,
}

impl Store {
    /// Requests of a run that are not final and may still be sent: every
    /// state but `succeeded` and `permanent_failed`, and `retryable_failed`
    /// only below `max_attempts`; the first `limit` in sequence order.
    pub fn sync_candidates(&self, run_id: i64, max_attempts: u32, limit: usize) -> Result<Vec<SyncWork>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT q.custom_id, b.params, q.attempts FROM requests q JOIN request_bodies b ON b.custom_id = q.custom_id
                 WHERE q.run_id = ?1 AND q.state IN ('pending', 'queued', 'in_flight', 'retryable_failed')
                   AND (q.state <> 'retryable_failed' OR q.attempts < ?2)
                 ORDER BY q.seq LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map(params![run_id, max_attempts, i64::try_from(limit).unwrap_or(i64::MAX)], |row| {
                Ok(SyncWork { custom_id: row.get(0)?, params: row.get(1)?, attempts: row.get(2)? })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The items (JSON) the requests `custom_ids` were rendered from, in
    /// that order: a failover renders them again for another provider.
    pub fn request_items(&self, custom_ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT item FROM request_bodies WHERE custom_id = ?1")
            .map_err(|e| self.err(e))?;
        custom_ids.iter().map(|id| statement.query_row([id], |row| row.get(0)).map_err(|e| self.err(e))).collect()
    }

    /// Stores the outcome of a sync call. The first final result of a
    /// request wins; a later success is kept, flagged as duplicate spend.
    /// An outcome that [counts as an attempt](Outcome::counts_as_attempt) uses one up.
    pub fn record_sync_result(
        &mut self,
        custom_id: &str,
        attempt_id: i64,
        outcome: &Outcome,
        now: DateTime<Utc>,
    ) -> Result<SyncSettle, StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        let state: Option<String> = tx
            .query_row("SELECT state FROM requests WHERE custom_id = ?1", [custom_id], |row| row.get(0))
            .optional()
            .map_err(e)?;
        let already_final = matches!(state.as_deref(), Some("succeeded" | "permanent_failed"));
        let success = matches!(outcome, Outcome::Succeeded { .. });
        if already_final && !success {
            tx.commit().map_err(e)?;
            return Ok(SyncSettle::Ignored);
        }
        let row = NewResult {
            custom_id,
            lane: "sync",
            batch_id: None,
            attempt_id: Some(attempt_id),
            duplicate: already_final,
            price: None,
        };
        insert_result(&tx, &row, outcome, now).map_err(e)?;
        let result_id = tx.last_insert_rowid().map_err(e)?;
        if already_final {
            tx.commit().map_err(e)?;
            return Ok(SyncSettle::Duplicate);
        }
        let next = match outcome {
            Outcome::Succeeded { .. } => "succeeded",
            other if other.is_retryable() => "retryable_failed",
            _ => "permanent_failed",
        };
        tx.execute(
            "UPDATE requests SET state = ?2, result_id = ?3, lane = 'sync', attempts = attempts + ?5, updated_at = ?4
             WHERE custom_id = ?1",
            params![custom_id, next, result_id, to_millis(now), outcome.counts_as_attempt()],
        )
        .map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(SyncSettle::Settled)
    }

    /// Whether `custom_id` already has its final result.
    pub fn is_final(&self, custom_id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM requests WHERE custom_id = ?1 AND state IN ('succeeded', 'permanent_failed')",
            )
            .and_then(|mut statement| statement.exists([custom_id]))
            .map_err(|e| self.err(e))
    }

    /// Sends a run straight to the sync lane (the router's decision), with why.
    pub fn route_to_sync(&mut self, run_id: i64, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute("UPDATE runs SET lane = 'sync' WHERE id = ?1", [run_id]).map_err(e)?;
        super::events::insert(&tx, Some(run_id), None, "routed_to_sync", &serde_json::json!({ "reason": reason }), now)
            .map_err(e)?;
        tx.commit().map_err(e)
    }
}
