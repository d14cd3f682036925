//! Runs: one firing of a job for one scheduled instant.

use super::sql::{OptionalExtension, Row, params};
use chrono::{DateTime, Utc};

use super::{Store, StoreError, from_millis, to_millis};

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Requests are still being worked on.
    Open,
    /// Every request is final and delivered, in time.
    Completed,
    /// The run could not proceed (bad input, permanent failure of everything).
    Failed,
    /// The run finished after its deadline.
    Late,
    /// A budget policy (`on_budget: skip`) stopped the run before anything was spent.
    Skipped,
}

impl RunState {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Open => "open",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Late => "late",
            RunState::Skipped => "skipped",
        }
    }

    fn parse(text: &str) -> RunState {
        match text {
            "completed" => RunState::Completed,
            "failed" => RunState::Failed,
            "late" => RunState::Late,
            "skipped" => RunState::Skipped,
            _ => RunState::Open,
        }
    }
}

/// A stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    /// Database id.
    pub id: i64,
    /// The job's name.
    pub job: String,
    /// The scheduled instant.
    pub scheduled_for: DateTime<Utc>,
    /// `<job>-<YYYYMMDDTHHMM>`.
    pub run_key: String,
    /// The job's tier when the run was created.
    pub tier: String,
    /// When every result must be final.
    pub deadline_at: DateTime<Utc>,
    /// Where the run is.
    pub state: RunState,
    /// Why it failed or was late.
    pub reason: Option<String>,
    /// The lane the router chose: `batch` (with the sync fallback) or `sync`.
    pub lane: String,
    /// When the run was created.
    pub created_at: DateTime<Utc>,
    /// When the fallback engine plans to move what is left to the sync lane.
    pub fallback_at: Option<DateTime<Utc>>,
    /// When the fallback engaged, if it did.
    pub fallback_started_at: Option<DateTime<Utc>>,
    /// Why it engaged: `deadline` or `batch_create_failed`.
    pub fallback_reason: Option<String>,
    /// When the run closed.
    pub finished_at: Option<DateTime<Utc>>,
    /// The job's tags when the run was created (cost attribution).
    pub tags: Vec<String>,
    /// Why a budget keeps this run off the sync lane, if one does.
    pub sync_blocked: Option<String>,
    /// When the last of its requests was stored; until then the engine
    /// submits nothing of it and a restart prepares it again.
    pub prepared_at: Option<DateTime<Utc>>,
    /// When the engine saw it still open past its deadline.
    pub deadline_missed_at: Option<DateTime<Utc>>,
    /// Since when its delivery has been failing (cleared by a delivery that works).
    pub delivery_failing_since: Option<DateTime<Utc>>,
    /// The last delivery error, while delivery fails.
    pub delivery_error: Option<String>,
    /// The `(provider, model)` its sync lane failed over to, if it did.
    pub failover: Option<(String, String)>,
    /// When the failover started.
    pub failover_started_at: Option<DateTime<Utc>>,
}

impl RunRow {
    /// Whether the sync lane owns what is left of the run.
    pub fn is_sync(&self) -> bool {
        self.lane == "sync" || self.fallback_started_at.is_some()
    }
}

pub(super) const COLUMNS: &str = "id, job, scheduled_for, run_key, tier, deadline_at, state, reason, lane, created_at, \
                       fallback_at, fallback_started_at, fallback_reason, finished_at, tags, sync_blocked, prepared_at, \
                       deadline_missed_at, delivery_failing_since, delivery_error, failover_provider, failover_model, \
                       failover_started_at";

pub(super) fn from_row(row: &Row<'_>) -> super::sql::Result<RunRow> {
    Ok(RunRow {
        id: row.get(0)?,
        job: row.get(1)?,
        scheduled_for: from_millis(row.get(2)?),
        run_key: row.get(3)?,
        tier: row.get(4)?,
        deadline_at: from_millis(row.get(5)?),
        state: RunState::parse(&row.get::<_, String>(6)?),
        reason: row.get(7)?,
        lane: row.get(8)?,
        created_at: from_millis(row.get(9)?),
        fallback_at: row.get::<_, Option<i64>>(10)?.map(from_millis),
        fallback_started_at: row.get::<_, Option<i64>>(11)?.map(from_millis),
        fallback_reason: row.get(12)?,
        finished_at: row.get::<_, Option<i64>>(13)?.map(from_millis),
        tags: serde_json::from_str(&row.get::<_, String>(14)?).unwrap_or_default(),
        sync_blocked: row.get(15)?,
        prepared_at: row.get::<_, Option<i64>>(16)?.map(from_millis),
        deadline_missed_at: row.get::<_, Option<i64>>(17)?.map(from_millis),
        delivery_failing_since: row.get::<_, Option<i64>>(18)?.map(from_millis),
        delivery_error: row.get(19)?,
        failover: match (row.get::<_, Option<String>>(20)?, row.get::<_, Option<String>>(21)?) {
            (Some(provider), Some(model)) => Some((provider, model)),
            _ => None,
        },
        failover_started_at: row.get::<_, Option<i64>>(22)?.map(from_millis),
    })
}

/// What is needed to create a run.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// The job's name.
    pub job: &'a str,
    /// The scheduled instant.
    pub scheduled_for: DateTime<Utc>,
    /// `<job>-<YYYYMMDDTHHMM>`.
    pub run_key: &'a str,
    /// The job's tier.
    pub tier: &'a str,
    /// When every result must be final.
    pub deadline_at: DateTime<Utc>,
    /// `batch` or `sync`, as the router decided.
    pub lane: &'a str,
    /// The job's tags.
    pub tags: &'a [String],
}

/// Inserts `run` unless its `(job, scheduled_for)` exists; how many rows it added.
pub(super) fn insert_run(
    conn: &super::sql::Connection,
    run: &NewRun<'_>,
    now: DateTime<Utc>,
) -> super::sql::Result<usize> {
    conn.execute(
        "INSERT INTO runs (job, scheduled_for, run_key, tier, deadline_at, state, created_at, lane, tags)
         VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6, ?7, ?8) ON CONFLICT (job, scheduled_for) DO NOTHING",
        params![
            run.job,
            to_millis(run.scheduled_for),
            run.run_key,
            run.tier,
            to_millis(run.deadline_at),
            to_millis(now),
            run.lane,
            serde_json::to_string(run.tags).unwrap_or_else(|_| "[]".to_owned())
        ],
    )
}

impl Store {
    /// Creates the run for `(job, scheduled_for)` unless it exists; returns
    /// it and whether it was created now. A run is created at most once per key.
    pub fn create_run(&mut self, run: &NewRun<'_>, now: DateTime<Utc>) -> Result<(RunRow, bool), StoreError> {
        let inserted = insert_run(&self.conn, run, now).map_err(|e| self.err(e))?;
        let row = self.run_by_key(run.job, run.scheduled_for)?.expect("the run exists after insert");
        if inserted == 1 {
            self.record_event(
                Some(row.id),
                Some(run.job),
                "run_created",
                &serde_json::json!({ "run_key": run.run_key, "lane": run.lane }),
                now,
            )?;
        }
        Ok((row, inserted == 1))
    }

    /// The run of `job` for `scheduled_for`, if any.
    pub fn run_by_key(&self, job: &str, scheduled_for: DateTime<Utc>) -> Result<Option<RunRow>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM runs WHERE job = ?1 AND scheduled_for = ?2"),
                params![job, to_millis(scheduled_for)],
                from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The run with database id `id`.
    pub fn run(&self, id: i64) -> Result<Option<RunRow>, StoreError> {
        self.conn
            .query_row(&format!("SELECT {COLUMNS} FROM runs WHERE id = ?1"), [id], from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The runs batch `batch_id` carries (one unless it is shared), by id.
    pub fn runs_of_batch(&self, batch_id: i64) -> Result<Vec<RunRow>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT {COLUMNS} FROM runs WHERE id IN (SELECT run_id FROM batch_runs WHERE batch_id = ?1) ORDER BY id"
            ))
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([batch_id], from_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The job's most recently scheduled run, open or closed.
    pub fn latest_run(&self, job: &str) -> Result<Option<RunRow>, StoreError> {
        self.conn
            .query_row(
                &format!("SELECT {COLUMNS} FROM runs WHERE job = ?1 ORDER BY scheduled_for DESC, id DESC LIMIT 1"),
                [job],
                from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every run still open, oldest first.
    pub fn open_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let mut statement = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM runs WHERE state = 'open' ORDER BY scheduled_for, id"))
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([], from_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Records that every request of the run is stored.
    pub fn mark_prepared(&mut self, id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE runs SET prepared_at = ?2 WHERE id = ?1", params![id, to_millis(now)])
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Closes a run with its final state and, for failed or late runs, why.
    pub fn finish_run(
        &mut self,
        id: i64,
        state: RunState,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| super::database(&self.path, e))?;
        tx.execute(
            "UPDATE runs SET state = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
            params![id, state.as_str(), reason, to_millis(now)],
        )
        .map_err(|e| super::database(&self.path, e))?;
        super::events::insert(
            &tx,
            Some(id),
            None,
            &format!("run_{}", state.as_str()),
            &serde_json::json!({ "reason": reason }),
            now,
        )
        .map_err(|e| super::database(&self.path, e))?;
        tx.commit().map_err(|e| super::database(&self.path, e))
    }
}

impl Store {
    /// Stores the fallback engine's current plan for a run.
    pub fn set_fallback_at(&mut self, id: i64, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn
            .execute("UPDATE runs SET fallback_at = ?2 WHERE id = ?1", params![id, to_millis(at)])
            .map(drop)
            .map_err(|e| self.err(e))
    }

    /// Hands what is left of a run to the sync lane, once: true if it
    /// engaged now, false if it had already.
    pub fn start_fallback(
        &mut self,
        id: i64,
        reason: &str,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE runs SET fallback_started_at = ?2, fallback_reason = ?3 WHERE id = ?1 AND fallback_started_at IS NULL";
        self.update_once_with_event(id, sql, params![id, to_millis(now), reason], "fallback_started", detail, now)
    }

    /// Moves a run's sync lane to `model` of `provider` (once: false when it
    /// had failed over already), recorded as a `failover_started` event.
    pub fn start_failover(
        &mut self,
        id: i64,
        provider: &str,
        model: &str,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let sql = "UPDATE runs SET failover_provider = ?2, failover_model = ?3, failover_started_at = ?4
                   WHERE id = ?1 AND failover_provider IS NULL";
        let values = params![id, provider, model, to_millis(now)];
        self.update_once_with_event(id, sql, values, "failover_started", detail, now)
    }

    /// The run's sync calls that failed on the provider's side (5xx,
    /// overloaded, no answer) since its last sync success: how many, and
    /// since when. A rate limit is no outage and breaks no streak.
    pub fn sync_failure_streak(&self, id: i64) -> Result<(u64, Option<DateTime<Utc>>), StoreError> {
        let (count, since): (u64, Option<i64>) = self
            .conn
            .query_row(
                "SELECT COUNT(*), MIN(started_at) FROM attempts
                 WHERE run_id = ?1 AND lane = 'sync' AND error_type IS NOT NULL
                   AND (http_status IS NULL OR http_status >= 500)
                   AND error_type NOT IN ('state_database', 'stopped')
                   AND started_at > COALESCE((SELECT MAX(started_at) FROM attempts
                       WHERE run_id = ?1 AND lane = 'sync' AND error_type IS NULL), 0)",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|e| super::database(&self.path, e))?;
        Ok((count, since.map(from_millis)))
    }

    /// Keeps a run off the sync lane for good (a budget decision): it
    /// stays on, or moves to, the batch lane; `reason` says why, and the
    /// decision is recorded as a `budget_exceeded` event with `detail`.
    pub fn block_sync(
        &mut self,
        id: i64,
        reason: &str,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| super::database(&self.path, e))?;
        tx.execute("UPDATE runs SET lane = 'batch', sync_blocked = ?2 WHERE id = ?1", params![id, reason])
            .map_err(|e| super::database(&self.path, e))?;
        super::events::insert(&tx, Some(id), None, "budget_exceeded", detail, now)
            .map_err(|e| super::database(&self.path, e))?;
        tx.commit().map_err(|e| super::database(&self.path, e))
    }

    /// Records, once, that an open run passed its deadline: it is late, and
    /// keeps going until every request is final. True the first time.
    pub fn mark_deadline_missed(
        &mut self,
        id: i64,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let sql =
            "UPDATE runs SET deadline_missed_at = ?2 WHERE id = ?1 AND deadline_missed_at IS NULL AND state = 'open'";
        self.update_once_with_event(id, sql, params![id, to_millis(now)], "deadline_missed", detail, now)
    }

    /// Records a failed delivery round: the error, and since when delivery
    /// fails (kept from the first failure); the first failure of a streak is
    /// a `delivery_failed` event. True on the first failure of a streak.
    pub fn record_delivery_failure(&mut self, id: i64, error: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let tx = self.conn.transaction().map_err(|e| super::database(&self.path, e))?;
        let e = |source| super::database(&self.path, source);
        let since: Option<i64> =
            tx.query_row("SELECT delivery_failing_since FROM runs WHERE id = ?1", [id], |row| row.get(0)).map_err(e)?;
        tx.execute(
            "UPDATE runs SET delivery_failing_since = COALESCE(delivery_failing_since, ?2), delivery_error = ?3 WHERE id = ?1",
            params![id, to_millis(now), error],
        )
        .map_err(e)?;
        if since.is_none() {
            super::events::insert(&tx, Some(id), None, "delivery_failed", &serde_json::json!({ "error": error }), now)
                .map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(since.is_none())
    }

    /// Clears a delivery failure streak (a round went through); records
    /// `delivery_recovered` when there was one.
    pub fn clear_delivery_failure(&mut self, id: i64, now: DateTime<Utc>) -> Result<(), StoreError> {
        let sql = "UPDATE runs SET delivery_failing_since = NULL, delivery_error = NULL
                   WHERE id = ?1 AND delivery_failing_since IS NOT NULL";
        self.update_once_with_event(id, sql, [id], "delivery_recovered", &serde_json::json!({}), now).map(|_| ())
    }

    /// Runs `update`, which changes run `id` only the first time it applies,
    /// and when it did, records the event `kind` with `detail`, in one
    /// transaction. True when the update changed the run.
    fn update_once_with_event(
        &mut self,
        id: i64,
        update: &str,
        values: impl super::sql::Params,
        kind: &str,
        detail: &serde_json::Value,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let tx = self.conn.transaction().map_err(|e| super::database(&self.path, e))?;
        let e = |source| super::database(&self.path, source);
        let changed = tx.execute(update, values).map_err(e)? == 1;
        if changed {
            super::events::insert(&tx, Some(id), None, kind, detail, now).map_err(e)?;
        }
        tx.commit().map_err(e)?;
        Ok(changed)
    }

    /// The open runs of `job`.
    pub fn open_runs_of(&self, job: &str) -> Result<Vec<RunRow>, StoreError> {
        Ok(self.open_runs()?.into_iter().filter(|run| run.job == job).collect())
    }
}
