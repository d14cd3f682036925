//! Runs: one firing of a job for one scheduled instant.

use chrono::{DateTime, Utc};
use rusqlite::{OptionalExtension, Row, params};

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
}

impl RunState {
    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Open => "open",
            RunState::Completed => "completed",
            RunState::Failed => "failed",
            RunState::Late => "late",
        }
    }

    fn parse(text: &str) -> RunState {
        match text {
            "completed" => RunState::Completed,
            "failed" => RunState::Failed,
            "late" => RunState::Late,
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
}

const COLUMNS: &str = "id, job, scheduled_for, run_key, tier, deadline_at, state, reason";

fn from_row(row: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: row.get(0)?,
        job: row.get(1)?,
        scheduled_for: from_millis(row.get(2)?),
        run_key: row.get(3)?,
        tier: row.get(4)?,
        deadline_at: from_millis(row.get(5)?),
        state: RunState::parse(&row.get::<_, String>(6)?),
        reason: row.get(7)?,
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
}

impl Store {
    /// Creates the run for `(job, scheduled_for)` unless it exists; returns
    /// it and whether it was created now. A run is created at most once per key.
    pub fn create_run(&mut self, run: &NewRun<'_>, now: DateTime<Utc>) -> Result<(RunRow, bool), StoreError> {
        let inserted = self
            .conn
            .execute(
                "INSERT INTO runs (job, scheduled_for, run_key, tier, deadline_at, state, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'open', ?6) ON CONFLICT (job, scheduled_for) DO NOTHING",
                params![
                    run.job,
                    to_millis(run.scheduled_for),
                    run.run_key,
                    run.tier,
                    to_millis(run.deadline_at),
                    to_millis(now)
                ],
            )
            .map_err(|e| self.err(e))?;
        let row = self.run_by_key(run.job, run.scheduled_for)?.expect("the run exists after insert");
        if inserted == 1 {
            self.record_event(
                Some(row.id),
                Some(run.job),
                "run_created",
                &serde_json::json!({ "run_key": run.run_key }),
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

    /// Every run still open, oldest first.
    pub fn open_runs(&self) -> Result<Vec<RunRow>, StoreError> {
        let mut statement = self
            .conn
            .prepare(&format!("SELECT {COLUMNS} FROM runs WHERE state = 'open' ORDER BY scheduled_for, id"))
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([], from_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Closes a run with its final state and, for failed or late runs, why.
    pub fn finish_run(
        &mut self,
        id: i64,
        state: RunState,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| super::sqlite(&self.path, e))?;
        tx.execute(
            "UPDATE runs SET state = ?2, reason = ?3, finished_at = ?4 WHERE id = ?1",
            params![id, state.as_str(), reason, to_millis(now)],
        )
        .map_err(|e| super::sqlite(&self.path, e))?;
        super::events::insert(
            &tx,
            Some(id),
            None,
            &format!("run_{}", state.as_str()),
            &serde_json::json!({ "reason": reason }),
            now,
        )
        .map_err(|e| super::sqlite(&self.path, e))?;
        tx.commit().map_err(|e| super::sqlite(&self.path, e))
    }
}
