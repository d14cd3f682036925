//! The queue of items posted to a job with `enqueue:`: each item is
//! committed before the daemon answers `202`, waits until a flush takes it
//! into a run (in the same transaction that creates the run), and can be
//! looked up by its id until its result is delivered.

use super::sql::{OptionalExtension, params};
use chrono::{DateTime, Utc};

use super::{NewRun, RunRow, Store, StoreError, from_millis, to_millis};
use crate::outcome::Usage;

/// One posted item, as the endpoint checked it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewQueueItem {
    /// What the template sees as `item` (JSON).
    pub item: String,
    /// A client's key: a second post with the same key adds nothing.
    pub idempotency_key: Option<String>,
    /// When its result must be final, if sooner than the job's deadline.
    pub deadline_at: Option<DateTime<Utc>>,
    /// When its run must start for that deadline to hold.
    pub flush_by: Option<DateTime<Utc>>,
    /// Its latency budget is too short for the batch lane: it goes to the sync lane at once.
    pub sync: bool,
}

/// What waits in a job's queue, for the flush rules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueSummary {
    /// Items not in a run yet.
    pub waiting: u64,
    /// Of them, those bound for the sync lane at once.
    pub sync_waiting: u64,
    /// When the oldest of them was posted.
    pub oldest: Option<DateTime<Utc>>,
    /// The soonest instant by which one of them must be in a run.
    pub flush_by: Option<DateTime<Utc>>,
}

/// Which waiting items a flush takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueTake {
    /// At most this many, oldest first.
    pub limit: usize,
    /// Only those bound for the sync lane (the run is a sync run).
    pub sync_only: bool,
}

/// A posted item as `GET /api/v1/items/{id}` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueItemView {
    /// Its id, as the `202` named it.
    pub id: i64,
    /// `queued`, `running`, `delivered` or `failed`.
    pub state: &'static str,
    /// The run key of the run that took it, once a flush did.
    pub run: Option<String>,
    /// Its request's custom_id in that run.
    pub custom_id: Option<String>,
    /// Its result, once delivered.
    pub result: Option<QueueItemResult>,
    /// Why it failed, when it did.
    pub error: Option<String>,
}

/// The delivered result of a posted item.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueItemResult {
    /// The answer's text.
    pub text: String,
    /// Its tokens.
    pub usage: Usage,
    /// `batch` or `sync`.
    pub lane: String,
    /// What it cost, in millionths of a dollar, once priced.
    pub cost_micros: Option<i64>,
}

impl Store {
    /// The id of the newest posted item (0 when none): a leader watches it
    /// for items another process (a standby's enqueue endpoint) posted.
    pub fn newest_queue_item(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM queue_items", [], |row| row.get(0))
            .map_err(|e| self.err(e))
    }

    /// Commits `items` to `job`'s queue in one transaction and returns
    /// their ids in order. An item whose idempotency key the job has seen
    /// is not added again: its id is the first post's.
    pub fn enqueue_items(
        &mut self,
        job: &str,
        items: &[NewQueueItem],
        now: DateTime<Utc>,
    ) -> Result<Vec<i64>, StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        let mut ids = Vec::with_capacity(items.len());
        {
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO queue_items (job, idempotency_key, item, enqueued_at, deadline_at, flush_by, sync)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (job, idempotency_key) DO NOTHING",
                )
                .map_err(e)?;
            let mut existing =
                tx.prepare_cached("SELECT id FROM queue_items WHERE job = ?1 AND idempotency_key = ?2").map_err(e)?;
            for item in items {
                let inserted = insert
                    .execute(params![
                        job,
                        item.idempotency_key,
                        item.item,
                        to_millis(now),
                        item.deadline_at.map(to_millis),
                        item.flush_by.map(to_millis),
                        item.sync
                    ])
                    .map_err(e)?;
                let id = match (inserted, &item.idempotency_key) {
                    (0, Some(key)) => existing.query_row(params![job, key], |row| row.get(0)).map_err(e)?,
                    _ => tx.last_insert_rowid().map_err(e)?,
                };
                ids.push(id);
            }
        }
        tx.commit().map_err(e)?;
        Ok(ids)
    }

    /// What waits in `job`'s queue.
    pub fn queue_summary(&self, job: &str) -> Result<QueueSummary, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT COUNT(*), COALESCE(SUM(sync), 0), MIN(enqueued_at), MIN(flush_by)
                 FROM queue_items WHERE job = ?1 AND run_id IS NULL",
            )
            .and_then(|mut statement| {
                statement.query_row([job], |row| {
                    Ok(QueueSummary {
                        waiting: row.get::<_, i64>(0)? as u64,
                        sync_waiting: row.get::<_, i64>(1)? as u64,
                        oldest: row.get::<_, Option<i64>>(2)?.map(from_millis),
                        flush_by: row.get::<_, Option<i64>>(3)?.map(from_millis),
                    })
                })
            })
            .map_err(|e| self.err(e))
    }

    /// The instant a new flush of `job` at `now` keys its run by: `now` to
    /// the second, or the second after the job's latest run when a flush
    /// took that second already (a run is keyed by its job and instant).
    pub fn next_queue_instant(&self, job: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, StoreError> {
        let second = to_millis(now) / 1000 * 1000;
        let last: Option<i64> = self
            .conn
            .query_row("SELECT MAX(scheduled_for) FROM runs WHERE job = ?1", [job], |row| row.get(0))
            .map_err(|e| self.err(e))?;
        Ok(from_millis(last.map_or(second, |last| second.max(last / 1000 * 1000 + 1000))))
    }

    /// Creates `run` for the waiting items `take` names and moves them
    /// into it, numbered from 1 in the order they were posted, in one
    /// transaction: a crash leaves either both or neither, so no item is
    /// taken twice or lost. The run's deadline is the sooner of its own and
    /// the items'; its `run_created` event says why it flushed (`reason`).
    /// `None` when nothing waits or the run's instant has a run already
    /// (no run is created, nothing moves).
    pub fn flush_queue(
        &mut self,
        run: &NewRun<'_>,
        take: QueueTake,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<(RunRow, usize)>, StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        let taken: Vec<(i64, Option<i64>)> = {
            let mut waiting = tx
                .prepare_cached(
                    "SELECT id, deadline_at FROM queue_items
                     WHERE job = ?1 AND run_id IS NULL AND (?2 = 0 OR sync = 1) ORDER BY id LIMIT ?3",
                )
                .map_err(e)?;
            let rows = waiting
                .query_map(params![run.job, take.sync_only, take.limit as i64], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(e)?;
            rows.collect::<Result<_, _>>().map_err(e)?
        };
        if taken.is_empty() {
            return Ok(None);
        }
        let own = taken.iter().filter_map(|(_, own)| own.map(from_millis)).min();
        let deadline_at = own.map_or(run.deadline_at, |own| own.min(run.deadline_at));
        if super::runs::insert_run(&tx, &NewRun { deadline_at, ..run.clone() }, now).map_err(e)? == 0 {
            // The instant has its run already; the items stay queued (the transaction rolls back).
            return Ok(None);
        }
        let run_id = tx.last_insert_rowid().map_err(e)?;
        {
            let mut assign =
                tx.prepare_cached("UPDATE queue_items SET run_id = ?2, seq = ?3 WHERE id = ?1").map_err(e)?;
            for (seq, (id, _)) in taken.iter().enumerate() {
                assign.execute(params![id, run_id, seq as i64 + 1]).map_err(e)?;
            }
        }
        let detail = serde_json::json!({
            "run_key": run.run_key, "lane": run.lane, "queued_items": taken.len(), "flush": reason,
        });
        super::events::insert(&tx, Some(run_id), Some(run.job), "run_created", &detail, now).map_err(e)?;
        tx.commit().map_err(e)?;
        let created = self.run(run_id)?.expect("the run was just created");
        Ok(Some((created, taken.len())))
    }

    /// Every queue with items waiting: `(job, waiting, oldest posted)`, by job.
    pub fn queue_depths(&self) -> Result<Vec<(String, u64, DateTime<Utc>)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT job, COUNT(*), MIN(enqueued_at) FROM queue_items WHERE run_id IS NULL GROUP BY job ORDER BY job",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([], |row| Ok((row.get(0)?, row.get::<_, i64>(1)? as u64, from_millis(row.get(2)?))))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The items waiting in `job`'s queue, oldest first, at most `limit`:
    /// what its next flush takes.
    pub fn waiting_queue_items(&self, job: &str, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT item FROM queue_items WHERE job = ?1 AND run_id IS NULL ORDER BY id LIMIT ?2")
            .map_err(|e| self.err(e))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement.query_map(params![job, limit], |row| row.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The items a flush moved into `run_id`, in their order there.
    pub fn queued_items_of_run(&self, run_id: i64) -> Result<Vec<String>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached("SELECT item FROM queue_items WHERE run_id = ?1 ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([run_id], |row| row.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// A posted item and where it is, for `GET /api/v1/items/{id}`.
    pub fn queue_item(&self, id: i64) -> Result<Option<QueueItemView>, StoreError> {
        self.conn
            .query_row(
                "SELECT q.id, r.run_key, r.state, r.reason, rq.custom_id, rq.state, d.result_id, res.message,
                        res.input_tokens, res.output_tokens, res.cache_write_5m, res.cache_write_1h, res.cache_read,
                        res.lane, res.cost_micros, fail.error_message
                 FROM queue_items q
                 LEFT JOIN runs r ON r.id = q.run_id
                 LEFT JOIN requests rq INDEXED BY requests_by_run_seq ON rq.run_id = q.run_id AND rq.seq = q.seq
                 LEFT JOIN deliveries d ON d.custom_id = rq.custom_id
                 LEFT JOIN results res ON res.id = d.result_id
                 LEFT JOIN results fail ON fail.id = rq.result_id AND rq.state = 'permanent_failed'
                 WHERE q.id = ?1",
                [id],
                item_view,
            )
            .optional()
            .map_err(|e| self.err(e))
    }
}

fn item_view(row: &super::sql::Row<'_>) -> super::sql::Result<QueueItemView> {
    let run_key: Option<String> = row.get(1)?;
    let run_state: Option<String> = row.get(2)?;
    let request_state: Option<String> = row.get(5)?;
    let delivered = row.get::<_, Option<i64>>(6)?.is_some();
    let result = if delivered {
        let message: Option<String> = row.get(7)?;
        Some(QueueItemResult {
            text: message.as_deref().map(crate::outcome::message_text_of).unwrap_or_default(),
            usage: super::results::usage_at(row, 8)?,
            lane: row.get(13)?,
            cost_micros: row.get(14)?,
        })
    } else {
        None
    };
    let run_closed_without = matches!(run_state.as_deref(), Some("failed" | "skipped")) && request_state.is_none();
    let state = match (&run_key, request_state.as_deref()) {
        _ if delivered => "delivered",
        (None, _) => "queued",
        (Some(_), Some("permanent_failed")) => "failed",
        _ if run_closed_without => "failed",
        _ => "running",
    };
    let error = match state {
        "failed" => row.get::<_, Option<String>>(15)?.or(row.get(3)?),
        _ => None,
    };
    Ok(QueueItemView { id: row.get(0)?, state, run: run_key, custom_id: row.get(4)?, result, error })
}
