//! The scheduling loop's logic: which instants of each job's cron fire, once.
//!
//! Each job has a cursor in the state database: every firing at or before
//! it has been handled (fired, queued behind an open run, or skipped with a
//! recorded reason). A tick fires what lies between the cursor and now, in
//! order, then moves the cursor. Runs are keyed by `(job, scheduled_for)`,
//! so a crash between firing and moving the cursor cannot fire twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use chrono_tz::Tz;

use crate::clock::span;
use crate::engine::{Engine, EngineError};
use crate::manifest::{Job, Overlap};
use crate::schedule::{cron_parser, due_between, next_after, plan_catch_up};
use crate::store::ScheduleRow;

/// Firings found in one look; a cron firing every minute after a year of
/// downtime keeps only the newest of them.
const MAX_DUE: usize = 1000;

/// Instants this close to start-up count as on time, not as missed.
const ON_TIME: Duration = Duration::from_secs(60);

/// How soon an instant whose run could not start is tried again.
const START_RETRY: Duration = Duration::from_secs(60);

/// Fires the runs of every known job on the engine.
pub struct Scheduler {
    engine: Arc<Engine>,
}

/// What happened to one due instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fired {
    /// A run exists for it now.
    Started,
    /// The previous run is still open and the job queues: try again later.
    Queued,
    /// The previous run is still open and the job skips (recorded).
    Skipped,
    /// No run could be created for it (recorded): it is tried again later.
    Failed,
}

/// A job's parsed cron expression and time zone (`None` if either is invalid).
pub(crate) fn timing(job: &Job) -> Timing {
    parsed_schedule(&job.manifest.schedule.cron, &job.manifest.schedule.timezone)
}

/// Schedules parsed so far, by cron and time zone text. Every tick needs
/// every job's schedule, and parsing a cron expression costs about 17 µs:
/// 10,000 jobs took 180 ms per tick. Entries are few (one per distinct
/// schedule ever loaded) and never stale (the text is the key).
static PARSED: OnceLock<Mutex<HashMap<(String, String), Timing>>> = OnceLock::new();

/// A parsed cron expression and time zone, `None` if either is invalid.
type Timing = Option<(croner::Cron, Tz)>;

/// `cron` in `timezone`, parsed once per process (`None` if either is invalid).
pub fn parsed_schedule(cron: &str, timezone: &str) -> Timing {
    let cache = PARSED.get_or_init(Mutex::default);
    let key = (cron.to_owned(), timezone.to_owned());
    if let Some(hit) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return hit.clone();
    }
    let parsed = cron_parser().parse(cron).ok().zip(timezone.parse::<Tz>().ok());
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(key, parsed.clone());
    parsed
}

impl Scheduler {
    /// A scheduler firing on `engine` for the engine's known jobs.
    pub fn new(engine: Arc<Engine>) -> Scheduler {
        Scheduler { engine }
    }

    /// After downtime: applies each job's `catch_up` policy to the instants
    /// missed while nothing ran, recording the ones it skips.
    pub async fn catch_up(&self) -> Result<(), EngineError> {
        let now = self.engine.clock().now();
        for job in self.engine.jobs().values() {
            let name = job.name.clone();
            let (Some(row), Some((cron, tz))) =
                (self.engine.store().call(move |s| s.schedule(&name)).await?, timing(job))
            else {
                continue;
            };
            let missed = due_between(&cron, tz, row.cursor, now - span(ON_TIME), MAX_DUE);
            let Some(&last) = missed.last() else { continue };
            let plan = plan_catch_up(&missed, job.manifest.catch_up, now, job.deadline());
            for (instant, reason) in &plan.skipped {
                let detail = serde_json::json!({
                    "scheduled_for": instant.to_rfc3339(), "reason": reason.as_str(), "message": reason.to_string()
                });
                self.record(job, "run_skipped", detail).await?;
            }
            let mut row = ScheduleRow { cursor: last, ..row };
            for &instant in &plan.fire {
                if !self.start(job, instant, &mut row).await? {
                    // Not consumed: the loop tries it again, and what follows it.
                    row.cursor = instant - chrono::Duration::milliseconds(1);
                    break;
                }
            }
            tracing::info!(job = %job.name, missed = missed.len(), fired = plan.fire.len(), "caught up after downtime");
            self.save(row).await?;
        }
        Ok(())
    }

    /// Fires one run of every job now (`serve --run-now`), keyed by the current minute.
    pub async fn run_now(&self) -> Result<(), EngineError> {
        let now = self.engine.clock().now();
        let minute = now.duration_trunc(chrono::Duration::minutes(1)).unwrap_or(now);
        for job in self.engine.jobs().values() {
            let mut row = ScheduleRow::new(&job.name, now);
            self.start(job, minute, &mut row).await?;
        }
        Ok(())
    }

    /// Fires every due instant of every job; returns the next firing instant.
    pub async fn tick(&self) -> Result<Option<DateTime<Utc>>, EngineError> {
        let mut next: Option<DateTime<Utc>> = None;
        for job in self.engine.jobs().values() {
            if let Some(at) = self.tick_job(job).await? {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        Ok(next)
    }

    async fn tick_job(&self, job: &Job) -> Result<Option<DateTime<Utc>>, EngineError> {
        let Some((cron, tz)) = timing(job) else { return Ok(None) };
        let now = self.engine.clock().now();
        let name = job.name.clone();
        let stored = self.engine.store().call(move |s| s.schedule(&name)).await?;
        // A job seen for the first time starts from now: no backfill from the past.
        let mut row = stored.unwrap_or_else(|| ScheduleRow::new(&job.name, now));
        let (mut cursor, mut retry_in) = (now, None);
        for instant in due_between(&cron, tz, row.cursor, now, MAX_DUE) {
            let fired = self.fire(job, instant, &mut row).await?;
            if matches!(fired, Fired::Queued | Fired::Failed) {
                // Stay just before the instant: it is due again on a later tick.
                cursor = instant - chrono::Duration::milliseconds(1);
                // A queued instant waits for the open run to close; a failed one for its cause to go away.
                retry_in = Some(if fired == Fired::Queued { Duration::from_secs(1) } else { START_RETRY });
                break;
            }
        }
        row.cursor = cursor;
        row.next_at = next_after(&cron, tz, cursor);
        let next_at = row.next_at;
        self.save(row).await?;
        Ok(retry_in.map(|wait| now + span(wait)).or(next_at))
    }

    /// Applies the job's overlap policy to one due instant.
    async fn fire(&self, job: &Job, instant: DateTime<Utc>, row: &mut ScheduleRow) -> Result<Fired, EngineError> {
        let name = job.name.clone();
        let open = self.engine.store().call(move |s| s.open_runs_of(&name)).await?;
        let previous_open = open.iter().any(|run| run.scheduled_for < instant);
        match (previous_open, job.manifest.overlap) {
            (false, _) | (true, Overlap::Allow) => match self.start(job, instant, row).await? {
                true => Ok(Fired::Started),
                false => Ok(Fired::Failed),
            },
            (true, Overlap::Skip) => {
                let detail = serde_json::json!({ "scheduled_for": instant.to_rfc3339(), "reason": "overlap" });
                self.record(job, "run_skipped", detail).await?;
                tracing::warn!(job = %job.name, scheduled_for = %instant, "skipped: the previous run is still open");
                Ok(Fired::Skipped)
            }
            (true, Overlap::Queue) => {
                let first_time = row.cursor < instant - chrono::Duration::milliseconds(1);
                if first_time {
                    let detail = serde_json::json!({ "scheduled_for": instant.to_rfc3339() });
                    self.record(job, "run_queued", detail).await?;
                }
                Ok(Fired::Queued)
            }
        }
    }

    /// Creates (or finds) the run of `job` for `instant`; true if the run
    /// exists now. A run whose items cannot be read exists, closed as failed
    /// by the engine. When no run could be created at all, that is never
    /// silent: a `run_start_failed` event (once per instant, alerted as a
    /// failed run), the reason on the job's schedule (`status`, the
    /// dashboard), and the instant stays due. A store that cannot even
    /// record that fails the tick instead (the instant stays due too).
    async fn start(&self, job: &Job, instant: DateTime<Utc>, row: &mut ScheduleRow) -> Result<bool, EngineError> {
        let deadline_at = instant + span(job.deadline());
        let error = match self.engine.start_run(job, instant, deadline_at).await {
            Ok(run) => {
                tracing::info!(job = %job.name, run = %run.run_key, "run fired");
                row.last_fired_for = Some(instant);
                row.start_failed_for = None;
                row.start_error = None;
                return Ok(true);
            }
            Err(error) => error,
        };
        let name = job.name.clone();
        if let Some(run) = self.engine.store().call(move |s| s.run_by_key(&name, instant)).await? {
            // A failed run is closed with the reason (and alerted); an unprepared one is prepared again.
            tracing::error!(job = %job.name, run = %run.run_key, %error, "the run exists, but starting it failed");
            row.last_fired_for = Some(instant);
            return Ok(true);
        }
        tracing::error!(job = %job.name, scheduled_for = %instant, %error, "run could not start; trying again in a minute");
        if row.start_failed_for != Some(instant) {
            let detail = serde_json::json!({ "scheduled_for": instant.to_rfc3339(), "error": error.to_string() });
            self.record(job, "run_start_failed", detail).await?;
        }
        row.start_failed_for = Some(instant);
        row.start_error = Some(error.to_string());
        Ok(false)
    }

    async fn record(&self, job: &Job, kind: &'static str, detail: serde_json::Value) -> Result<(), EngineError> {
        let (name, now) = (job.name.clone(), self.engine.clock().now());
        Ok(self.engine.store().call(move |s| s.record_event(None, Some(&name), kind, &detail, now)).await?)
    }

    async fn save(&self, row: ScheduleRow) -> Result<(), EngineError> {
        let now = self.engine.clock().now();
        Ok(self.engine.store().call(move |s| s.save_schedule(&row, now)).await?)
    }
}
