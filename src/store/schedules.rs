//! Each job's schedule cursor: instants at or before it have been handled.

use super::sql::{OptionalExtension, Row, params};
use chrono::{DateTime, Utc};

use super::{Store, StoreError, from_millis, to_millis};

/// Where a job's schedule stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleRow {
    /// The job.
    pub job: String,
    /// Every firing at or before this instant has been fired, queued or skipped.
    pub cursor: DateTime<Utc>,
    /// The next firing after the cursor, if the cron fires again.
    pub next_at: Option<DateTime<Utc>>,
    /// The scheduled instant of the latest run fired.
    pub last_fired_for: Option<DateTime<Utc>>,
    /// The instant whose run could not start (the cursor waits before it).
    pub start_failed_for: Option<DateTime<Utc>>,
    /// Why it could not start.
    pub start_error: Option<String>,
    /// For a stage without a schedule: the upstream run last handled, which
    /// closed at `cursor` (another closing in the same millisecond comes after it).
    pub after_run: Option<i64>,
}

impl ScheduleRow {
    /// A job's schedule as it starts: every firing up to `cursor` handled.
    pub fn new(job: &str, cursor: DateTime<Utc>) -> ScheduleRow {
        ScheduleRow {
            job: job.to_owned(),
            cursor,
            next_at: None,
            last_fired_for: None,
            start_failed_for: None,
            start_error: None,
            after_run: None,
        }
    }
}

const COLUMNS: &str = "job, cursor, next_at, last_fired_for, start_failed_for, start_error, after_run";

fn from_row(row: &Row<'_>) -> super::sql::Result<ScheduleRow> {
    Ok(ScheduleRow {
        job: row.get(0)?,
        cursor: from_millis(row.get(1)?),
        next_at: row.get::<_, Option<i64>>(2)?.map(from_millis),
        last_fired_for: row.get::<_, Option<i64>>(3)?.map(from_millis),
        start_failed_for: row.get::<_, Option<i64>>(4)?.map(from_millis),
        start_error: row.get(5)?,
        after_run: row.get(6)?,
    })
}

impl Store {
    /// The schedule of `job`, if the daemon has seen it.
    pub fn schedule(&self, job: &str) -> Result<Option<ScheduleRow>, StoreError> {
        self.conn
            .query_row(&format!("SELECT {COLUMNS} FROM schedules WHERE job = ?1"), [job], from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every stored schedule, by job.
    pub fn schedules(&self) -> Result<Vec<ScheduleRow>, StoreError> {
        let mut statement =
            self.conn.prepare(&format!("SELECT {COLUMNS} FROM schedules ORDER BY job")).map_err(|e| self.err(e))?;
        let rows = statement.query_map([], from_row).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Stores where a job's schedule stands.
    pub fn save_schedule(&mut self, row: &ScheduleRow, now: DateTime<Utc>) -> Result<(), StoreError> {
        self.conn
            .execute(
                "INSERT INTO schedules (job, cursor, next_at, last_fired_for, updated_at, start_failed_for, start_error,
                                        after_run)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (job) DO UPDATE SET cursor = ?2, next_at = ?3, last_fired_for = ?4, updated_at = ?5,
                                                 start_failed_for = ?6, start_error = ?7, after_run = ?8",
                params![
                    row.job,
                    to_millis(row.cursor),
                    row.next_at.map(to_millis),
                    row.last_fired_for.map(to_millis),
                    to_millis(now),
                    row.start_failed_for.map(to_millis),
                    row.start_error,
                    row.after_run
                ],
            )
            .map(drop)
            .map_err(|e| self.err(e))
    }
}
