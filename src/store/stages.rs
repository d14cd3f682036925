//! What a pipeline stage reads: the results its upstream job's newest
//! completed run delivered.

use super::sql::{OptionalExtension, params};
use chrono::{DateTime, Utc};

use super::runs::{COLUMNS, from_row};
use super::{RunRow, Store, StoreError, to_millis};
use crate::outcome::Usage;

/// One delivered result of an upstream run.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamResult {
    /// The upstream request's id.
    pub custom_id: String,
    /// The upstream item, as JSON text.
    pub item: String,
    /// The answer as received (JSON text).
    pub message: String,
    /// Billed usage.
    pub usage: Usage,
}

/// A run linked to another as its upstream or downstream.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LinkedRun {
    /// Database id (the page is `/runs/{id}`).
    pub id: i64,
    /// Its job.
    pub job: String,
    /// Its key.
    pub run_key: String,
    /// `open`, `completed`, ...
    pub state: String,
}

fn linked(row: &super::sql::Row<'_>) -> super::sql::Result<LinkedRun> {
    Ok(LinkedRun { id: row.get(0)?, job: row.get(1)?, run_key: row.get(2)?, state: row.get(3)? })
}

impl Store {
    /// Records that the stage run `run_id` reads the results of `upstream_id`.
    pub fn set_upstream_run(&self, run_id: i64, upstream_id: i64) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE runs SET upstream_run_id = ?2 WHERE id = ?1", params![run_id, upstream_id])
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// The upstream run `run_id` read, if it is a stage's run.
    pub fn upstream_of(&self, run_id: i64) -> Result<Option<LinkedRun>, StoreError> {
        self.conn
            .query_row(
                "SELECT u.id, u.job, u.run_key, u.state FROM runs r JOIN runs u ON u.id = r.upstream_run_id WHERE r.id = ?1",
                [run_id],
                linked,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The stages' runs that read `run_id`'s results, oldest first.
    pub fn downstream_of(&self, run_id: i64) -> Result<Vec<LinkedRun>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT id, job, run_key, state FROM runs WHERE upstream_run_id = ?1 ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([run_id], linked).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The newest run of `job` that completed (in time or late); a failed
    /// or skipped run feeds no stage.
    pub fn newest_completed_run(&self, job: &str) -> Result<Option<RunRow>, StoreError> {
        self.conn
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM runs WHERE job = ?1 AND state IN ('completed', 'late')
                     ORDER BY scheduled_for DESC, id DESC LIMIT 1"
                ),
                [job],
                from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Runs of `job` that closed after `(closed_at, run)` (the closing time
    /// and id of the last one handled), in the order they closed: what fires
    /// the stages without a schedule that read `job`.
    pub fn runs_closed_after(
        &self,
        job: &str,
        (closed_at, run): (DateTime<Utc>, Option<i64>),
    ) -> Result<Vec<RunRow>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM runs WHERE job = ?1 AND state != 'open'
                   AND (finished_at > ?2 OR (finished_at = ?2 AND id > ?3))
                 ORDER BY finished_at, id"
            ))
            .map_err(|e| self.err(e))?;
        let (closed_at, run) = (to_millis(closed_at), run.unwrap_or(i64::MAX));
        let rows = statement.query_map(params![job, closed_at, run], from_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// How many results `run_id` delivered.
    pub fn delivered_count(&self, run_id: i64) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM requests q JOIN deliveries d ON d.custom_id = q.custom_id WHERE q.run_id = ?1",
                [run_id],
                |row| row.get::<_, i64>(0),
            )
            .map(|n| n as u64)
            .map_err(|e| self.err(e))
    }

    /// The results `run_id` delivered, in the order of its items. A request
    /// that failed for good delivered nothing, so it is not among them.
    pub fn delivered_results(&self, run_id: i64) -> Result<Vec<UpstreamResult>, StoreError> {
        Ok(self.delivered_results_after(run_id, 0, i64::MAX as usize)?.into_iter().map(|(_, result)| result).collect())
    }

    /// Like [`Store::delivered_results`], a page at a time: at most `limit`
    /// of the results of the requests after sequence number `after_seq`,
    /// each with its request's sequence number (where the next page starts).
    pub fn delivered_results_after(
        &self,
        run_id: i64,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<(i64, UpstreamResult)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT q.seq, q.custom_id, b.item, r.message, r.input_tokens, r.output_tokens,
                        r.cache_write_5m, r.cache_write_1h, r.cache_read
                 FROM requests q INDEXED BY requests_by_run_seq
                 JOIN deliveries d ON d.custom_id = q.custom_id JOIN results r ON r.id = d.result_id
                 JOIN request_bodies b ON b.custom_id = q.custom_id
                 WHERE q.run_id = ?1 AND q.seq > ?2 ORDER BY q.seq LIMIT ?3",
            )
            .map_err(|e| self.err(e))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement
            .query_map(params![run_id, after_seq, limit], |row| {
                let result = UpstreamResult {
                    custom_id: row.get(1)?,
                    item: row.get(2)?,
                    message: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    usage: super::results::usage_at(row, 4)?,
                };
                Ok((row.get(0)?, result))
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}
