//! Batches: the intent is committed before the create call, the provider's
//! id the moment it returns.

use super::sql::{Row, params};
use chrono::{DateTime, Utc};

use super::{Store, StoreError, from_millis, to_millis};

/// Where a batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchState {
    /// Intent committed; the create call may or may not have reached the provider.
    Submitting,
    /// The provider is processing it.
    InProgress,
    /// Cancel requested; the provider has not ended it yet.
    Canceling,
    /// The provider ended it; results can be (or have been) ingested.
    Ended,
    /// Never created at the provider, and given up (its requests went back to pending).
    Abandoned,
}

impl BatchState {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchState::Submitting => "submitting",
            BatchState::InProgress => "in_progress",
            BatchState::Canceling => "canceling",
            BatchState::Ended => "ended",
            BatchState::Abandoned => "abandoned",
        }
    }

    fn parse(text: &str) -> BatchState {
        match text {
            "in_progress" => BatchState::InProgress,
            "canceling" => BatchState::Canceling,
            "ended" => BatchState::Ended,
            "abandoned" => BatchState::Abandoned,
            _ => BatchState::Submitting,
        }
    }
}

/// A stored batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRow {
    /// Database id.
    pub id: i64,
    /// The run it belongs to.
    pub run_id: i64,
    /// Provider name.
    pub provider: String,
    /// The provider's id, once the create call returned.
    pub provider_batch_id: Option<String>,
    /// Where it is.
    pub state: BatchState,
    /// Number of requests in it.
    pub request_count: u64,
    /// When the intent was committed (just before the create call).
    pub intent_at: DateTime<Utc>,
    /// When the create call returned.
    pub submitted_at: Option<DateTime<Utc>>,
    /// When the provider ended it.
    pub ended_at: Option<DateTime<Utc>>,
    /// Where its results are.
    pub results_url: Option<String>,
    /// Whether every result line has been committed.
    pub results_ingested: bool,
}

/// The size of a batch's requests ([`Store::batch_payload_size`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadSize {
    /// Requests.
    pub requests: u64,
    /// Bytes of their custom_ids.
    pub custom_id_bytes: u64,
    /// Bytes of their params.
    pub params_bytes: u64,
}

pub(super) const COLUMNS: &str = "id, run_id, provider, provider_batch_id, state, request_count, intent_at, submitted_at, ended_at, results_url, results_ingested";

pub(super) fn from_row(row: &Row<'_>) -> super::sql::Result<BatchRow> {
    Ok(BatchRow {
        id: row.get(0)?,
        run_id: row.get(1)?,
        provider: row.get(2)?,
        provider_batch_id: row.get(3)?,
        state: BatchState::parse(&row.get::<_, String>(4)?),
        request_count: row.get(5)?,
        intent_at: from_millis(row.get(6)?),
        submitted_at: row.get::<_, Option<i64>>(7)?.map(from_millis),
        ended_at: row.get::<_, Option<i64>>(8)?.map(from_millis),
        results_url: row.get(9)?,
        results_ingested: row.get(10)?,
    })
}

/// Appends an event about `batch_id` to the log of every run it carries, inside `tx`.
fn batch_event(
    tx: &super::sql::Transaction<'_>,
    batch_id: i64,
    kind: &str,
    detail: &serde_json::Value,
    now: DateTime<Utc>,
) -> super::sql::Result<()> {
    let mut runs = tx.prepare_cached("SELECT run_id FROM batch_runs WHERE batch_id = ?1 ORDER BY run_id")?;
    let run_ids = runs.query_map([batch_id], |row| row.get::<_, i64>(0))?.collect::<super::sql::Result<Vec<_>>>()?;
    for run_id in run_ids {
        super::events::insert(tx, Some(run_id), None, kind, detail, now)?;
    }
    Ok(())
}

/// The requests of one run in a batch's intent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchPart {
    /// The run.
    pub run_id: i64,
    /// Its requests in the batch.
    pub custom_ids: Vec<String>,
}

impl Store {
    /// Commits the intent to submit `custom_ids` of one run as one batch
    /// ([`Store::record_shared_batch_intent`] with one part).
    pub fn record_batch_intent(
        &mut self,
        run_id: i64,
        provider: &str,
        custom_ids: &[String],
        now: DateTime<Utc>,
    ) -> Result<BatchRow, StoreError> {
        let part = BatchPart { run_id, custom_ids: custom_ids.to_vec() };
        self.record_shared_batch_intent(provider, std::slice::from_ref(&part), now)
    }

    /// Commits the intent to submit the requests of `parts` (one or more
    /// runs) as one batch: the batch row (`submitting`, opened by the first
    /// part's run), the runs it carries and its request list, with the
    /// requests `queued`. Call this before the create call, never after.
    /// Submitting uses up none of a request's attempts: only its own failed
    /// results do.
    pub fn record_shared_batch_intent(
        &mut self,
        provider: &str,
        parts: &[BatchPart],
        now: DateTime<Utc>,
    ) -> Result<BatchRow, StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let opener = parts.first().map(|p| p.run_id).expect("a batch intent names at least one run");
        let total: usize = parts.iter().map(|p| p.custom_ids.len()).sum();
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute(
            "INSERT INTO batches (run_id, provider, state, request_count, intent_at) VALUES (?1, ?2, 'submitting', ?3, ?4)",
            params![opener, provider, total as i64, to_millis(now)],
        )
        .map_err(e)?;
        let batch_id = tx.last_insert_rowid().map_err(e)?;
        {
            let mut carried = tx
                .prepare_cached("INSERT INTO batch_runs (batch_id, run_id, request_count) VALUES (?1, ?2, ?3)")
                .map_err(e)?;
            let mut member =
                tx.prepare_cached("INSERT INTO batch_requests (batch_id, custom_id) VALUES (?1, ?2)").map_err(e)?;
            let mut queue = tx
                .prepare_cached(
                    "UPDATE requests SET state = 'queued', lane = 'batch', updated_at = ?2
                     WHERE custom_id = ?1 AND state NOT IN ('succeeded', 'permanent_failed')",
                )
                .map_err(e)?;
            for part in parts {
                carried.execute(params![batch_id, part.run_id, part.custom_ids.len() as i64]).map_err(e)?;
                for custom_id in &part.custom_ids {
                    member.execute(params![batch_id, custom_id]).map_err(e)?;
                    queue.execute(params![custom_id, to_millis(now)]).map_err(e)?;
                }
            }
        }
        for part in parts {
            let mut detail = serde_json::json!({ "batch": batch_id, "requests": part.custom_ids.len() });
            if parts.len() > 1 {
                detail["shared_with_runs"] = serde_json::Value::from(parts.len() - 1);
                detail["batch_requests"] = serde_json::Value::from(total);
            }
            super::events::insert(&tx, Some(part.run_id), None, "batch_intent", &detail, now).map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(self.batch(batch_id)?.expect("the batch exists after insert"))
    }

    /// Requests in each provider's processing queue as far as we know, by
    /// provider name (every provider that has batches): those of its
    /// batches not ended yet, intents included (their create may be on the
    /// way). What a provider's queue limit is checked against.
    pub fn batch_queue_depths(&self) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT provider, COALESCE(SUM(CASE WHEN state IN ('submitting', 'in_progress', 'canceling')
                                                    THEN request_count END), 0)
                 FROM batches GROUP BY provider",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64)));
        rows.map_err(|e| self.err(e))?.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Commits the provider's batch id the moment the create call returns.
    pub fn mark_batch_submitted(
        &mut self,
        batch_id: i64,
        provider_batch_id: &str,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute(
            "UPDATE batches SET provider_batch_id = ?2, state = 'in_progress', submitted_at = ?3 WHERE id = ?1",
            params![batch_id, provider_batch_id, to_millis(now)],
        )
        .map_err(e)?;
        tx.execute(
            "UPDATE requests SET state = 'in_flight', updated_at = ?2
             WHERE custom_id IN (SELECT custom_id FROM batch_requests WHERE batch_id = ?1) AND state = 'queued'",
            params![batch_id, to_millis(now)],
        )
        .map_err(e)?;
        let detail = serde_json::json!({ "batch": batch_id, "provider_batch_id": provider_batch_id });
        batch_event(&tx, batch_id, "batch_submitted", &detail, now).map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Gives up on a batch that was never created at the provider: its
    /// requests go back to `pending` for another batch or the sync lane.
    pub fn abandon_batch(&mut self, batch_id: i64, reason: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute("UPDATE batches SET state = 'abandoned', error = ?2 WHERE id = ?1", params![batch_id, reason])
            .map_err(e)?;
        tx.execute(
            "UPDATE requests SET state = 'pending', updated_at = ?2
             WHERE custom_id IN (SELECT custom_id FROM batch_requests WHERE batch_id = ?1) AND state IN ('queued', 'in_flight')",
            params![batch_id, to_millis(now)],
        )
        .map_err(e)?;
        batch_event(&tx, batch_id, "batch_abandoned", &serde_json::json!({ "batch": batch_id, "reason": reason }), now)
            .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// Records that a batch was asked to cancel (once), with its event.
    pub fn mark_cancel_requested(
        &mut self,
        batch_id: i64,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        let first = tx
            .execute(
                "UPDATE batches SET cancel_requested_at = ?2 WHERE id = ?1 AND cancel_requested_at IS NULL",
                params![batch_id, to_millis(now)],
            )
            .map_err(e)?;
        if first == 1 {
            batch_event(&tx, batch_id, "batch_cancel_requested", detail, now).map_err(e)?;
        }
        tx.commit().map_err(e)
    }

    /// How long the provider's batches took, from the create call to the
    /// poll that saw them ended (our clock: the provider's timestamps may run
    /// on another): the 90th percentile of its last 20 that ended on their
    /// own (a canceled batch says nothing of it). `None` before 3 such
    /// batches were seen.
    pub fn batch_turnaround_p90_ms(&self, provider: &str) -> Result<Option<u64>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT polled_at - submitted_at FROM batches
                 WHERE provider = ?1 AND state = 'ended' AND cancel_requested_at IS NULL
                   AND polled_at IS NOT NULL AND submitted_at IS NOT NULL
                 ORDER BY id DESC LIMIT 20",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([provider], |row| row.get::<_, i64>(0)).map_err(|e| self.err(e))?;
        let mut took: Vec<u64> = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?
            .into_iter()
            .map(|ms| ms.max(0) as u64)
            .collect();
        if took.len() < 3 {
            return Ok(None);
        }
        took.sort_unstable();
        Ok(Some(took[(took.len() * 9).div_ceil(10) - 1]))
    }

    /// Records what a poll saw.
    pub fn update_batch_status(
        &mut self,
        batch_id: i64,
        state: BatchState,
        ended_at: Option<DateTime<Utc>>,
        results_url: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.conn
            .execute(
                "UPDATE batches SET state = ?2, ended_at = COALESCE(?3, ended_at), results_url = COALESCE(?4, results_url), polled_at = ?5
                 WHERE id = ?1",
                params![batch_id, state.as_str(), ended_at.map(to_millis), results_url, to_millis(now)],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Marks a batch's results as fully committed. Set last, after every result line.
    pub fn mark_results_ingested(&mut self, batch_id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        tx.execute("UPDATE batches SET results_ingested = 1 WHERE id = ?1", [batch_id]).map_err(e)?;
        // Requests of the batch without any result line (a provider that
        // dropped them) must not stay in flight forever: a retry can fix them.
        // Driven by the run's in-flight requests (an index range, usually
        // empty by now), not by `custom_id IN (batch list)`: SQLite would
        // build that list in memory, 100,000 ids for a full batch.
        tx.execute(
            "UPDATE requests SET state = 'retryable_failed', updated_at = ?2
             WHERE run_id IN (SELECT run_id FROM batch_runs WHERE batch_id = ?1) AND state = 'in_flight'
               AND EXISTS (SELECT 1 FROM batch_requests b WHERE b.batch_id = ?1 AND b.custom_id = requests.custom_id)
               AND NOT EXISTS (SELECT 1 FROM results r WHERE r.custom_id = requests.custom_id AND r.batch_id = ?1)",
            params![batch_id, to_millis(now)],
        )
        .map_err(e)?;
        batch_event(&tx, batch_id, "batch_results_ingested", &serde_json::json!({ "batch": batch_id }), now)
            .map_err(e)?;
        tx.commit().map_err(e)
    }

    /// The batch with database id `id`.
    pub fn batch(&self, id: i64) -> Result<Option<BatchRow>, StoreError> {
        use super::sql::OptionalExtension;
        self.conn
            .query_row(&format!("SELECT {COLUMNS} FROM batches WHERE id = ?1"), [id], from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Batches in any of `states`, oldest first.
    pub fn batches_in(&self, states: &[BatchState]) -> Result<Vec<BatchRow>, StoreError> {
        Ok(self.all_batches(None)?.into_iter().filter(|b| states.contains(&b.state)).collect())
    }

    /// Batches that still need the lane (submitting, at the provider, or
    /// ended with results not yet stored), of one run or all; oldest first.
    pub fn active_batches(&self, run_id: Option<i64>) -> Result<Vec<BatchRow>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM batches
                 WHERE (state IN ('submitting', 'in_progress', 'canceling') OR (state = 'ended' AND results_ingested = 0))
                   AND (CAST(?1 AS BIGINT) IS NULL OR id IN (SELECT batch_id FROM batch_runs WHERE run_id = ?1))
                 ORDER BY id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([run_id], from_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The batches of a run (or all with `None`), oldest first.
    pub fn all_batches(&self, run_id: Option<i64>) -> Result<Vec<BatchRow>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM batches
                 WHERE CAST(?1 AS BIGINT) IS NULL OR id IN (SELECT batch_id FROM batch_runs WHERE run_id = ?1) ORDER BY id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([run_id], from_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// How many requests `batch_id` holds and their bytes, custom_ids and
    /// params apart: what a create call's `Content-Length` is computed from.
    pub fn batch_payload_size(&self, batch_id: i64) -> Result<PayloadSize, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), COALESCE(SUM(octet_length(r.custom_id)), 0), COALESCE(SUM(r.params_len), 0)
                 FROM batch_requests b JOIN requests r ON r.custom_id = b.custom_id WHERE b.batch_id = ?1",
                [batch_id],
                |row| {
                    Ok(PayloadSize { requests: row.get(0)?, custom_id_bytes: row.get(1)?, params_bytes: row.get(2)? })
                },
            )
            .map_err(|e| self.err(e))
    }

    /// The custom_ids of a batch in its order (custom_id order): the order
    /// of its input, whose lines a provider may name.
    pub fn batch_custom_ids(&self, batch_id: i64) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT custom_id FROM batch_requests WHERE batch_id = ?1 ORDER BY custom_id")
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([batch_id], |row| row.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Calls `each(custom_id, params_json)` for every request of a batch, in
    /// custom_id order, without loading them all at once.
    pub fn for_each_batch_request(&self, batch_id: i64, mut each: impl FnMut(&str, &str)) -> Result<(), StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT r.custom_id, r.params FROM batch_requests b JOIN request_bodies r ON r.custom_id = b.custom_id
                 WHERE b.batch_id = ?1 ORDER BY b.custom_id",
            )
            .map_err(|e| self.err(e))?;
        statement
            .for_each([batch_id], |row| {
                each(row.get_str(0)?, row.get_str(1)?);
                Ok(())
            })
            .map_err(|e| self.err(e))
    }
}
