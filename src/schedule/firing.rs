//! The scheduling loop's logic: which instants of each job's cron fire, once.
//!
//! Each job has a cursor in the state database: every firing at or before
//! it has been handled (fired, queued behind an open run, or skipped with a
//! recorded reason). A tick fires what lies between the cursor and now, in
//! order, then moves the cursor. Runs are keyed by `(job, scheduled_for)`,
//! so a crash between firing and moving the cursor cannot fire twice.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};

use crate::clock::{Clock, span};
use crate::job::Job;
use crate::manifest::Overlap;
use crate::schedule::plan_catch_up;
use crate::store::{RunRow, RunState, ScheduleRow, SharedStore, StoreError};

/// Firings found in one look; a cron firing every minute after a year of
/// downtime keeps only the newest of them.
const MAX_DUE: usize = 1000;

/// Instants this close to start-up count as on time, not as missed.
const ON_TIME: Duration = Duration::from_secs(60);

/// How soon an instant whose run could not start is tried again.
const START_RETRY: Duration = Duration::from_secs(60);

/// What the loop needs from whoever runs the runs (the engine): the known
/// jobs, the state, the clock, and starting a run. Scheduling sits below the
/// engine; the engine implements this.
pub trait RunStarter: Send + Sync {
    /// The jobs to fire, by name.
    fn jobs(&self) -> Arc<BTreeMap<String, Job>>;
    /// The state database (schedule cursors, open runs, events).
    fn store(&self) -> &SharedStore;
    /// The clock the loop reads.
    fn clock(&self) -> &Arc<dyn Clock>;
    /// Creates (or resumes) the run of `job` for `scheduled_for`.
    fn start_run(
        &self,
        job: &Job,
        scheduled_for: DateTime<Utc>,
    ) -> impl Future<Output = Result<RunRow, Box<dyn std::error::Error + Send + Sync>>> + Send;
}

/// Fires the runs of every known job through a [`RunStarter`].
pub struct Scheduler<E> {
    engine: Arc<E>,
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

impl<E: RunStarter> Scheduler<E> {
    /// A scheduler firing on `engine` for the engine's known jobs.
    pub fn new(engine: Arc<E>) -> Scheduler<E> {
        Scheduler { engine }
    }

    /// After downtime: applies each job's `catch_up` policy to the instants
    /// missed while nothing ran, recording the ones it skips.
    pub async fn catch_up(&self) -> Result<(), StoreError> {
        let now = self.engine.clock().now();
        for job in self.engine.jobs().values() {
            let name = job.name.clone();
            let Some(row) = self.engine.store().call(move |s| s.schedule(&name)).await? else { continue };
            let missed = job.schedule.due_between(row.cursor, now - span(ON_TIME), MAX_DUE);
            let Some(&last) = missed.last() else { continue };
            let plan = plan_catch_up(&missed, job.manifest.catch_up, now, job.deadline);
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
    pub async fn run_now(&self) -> Result<(), StoreError> {
        let now = self.engine.clock().now();
        let minute = now.duration_trunc(chrono::Duration::minutes(1)).unwrap_or(now);
        // A stage without a schedule fires after its upstream's run instead.
        for job in self.engine.jobs().values().filter(|job| job.schedule.is_timed()) {
            let mut row = ScheduleRow::new(&job.name, now);
            self.start(job, minute, &mut row).await?;
        }
        Ok(())
    }

    /// Fires every due instant of every job; returns the next firing instant.
    /// Stages without a schedule have no instants: [`Self::fire_stages`]
    /// fires them once the engine's tick has closed their upstream's runs.
    pub async fn tick(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut next: Option<DateTime<Utc>> = None;
        for job in self.engine.jobs().values().filter(|job| job.schedule.is_timed()) {
            if let Some(at) = self.tick_job(job).await? {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        Ok(next)
    }

    async fn tick_job(&self, job: &Job) -> Result<Option<DateTime<Utc>>, StoreError> {
        let now = self.engine.clock().now();
        let name = job.name.clone();
        let stored = self.engine.store().call(move |s| s.schedule(&name)).await?;
        // A job seen for the first time starts from now: no backfill from the past.
        let mut row = stored.unwrap_or_else(|| ScheduleRow::new(&job.name, now));
        let (mut cursor, mut retry_in) = (now, None);
        for instant in job.schedule.due_between(row.cursor, now, MAX_DUE) {
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
        row.next_at = job.schedule.next_after(cursor);
        let next_at = row.next_at;
        self.save(row).await?;
        Ok(retry_in.map(|wait| now + span(wait)).or(next_at))
    }

    /// Fires the stages without a schedule for the runs of their upstream
    /// that closed since they last looked: a completed (or late) run fires
    /// the stage's run for the same instant, which reads that run's
    /// results; a failed or skipped one fires nothing, recorded as a
    /// `run_skipped` event. The stage's cursor is the closing time and id
    /// of the last upstream run handled, so a crash in between fires
    /// nothing twice (a run is keyed by its job and instant) and misses
    /// nothing. A stage seen for the first time starts from now. Returns
    /// whether it started a run.
    pub async fn fire_stages(&self) -> Result<bool, StoreError> {
        let mut started = false;
        for job in self.engine.jobs().values().filter(|job| !job.schedule.is_timed()) {
            if let Some(upstream) = job.manifest.items.as_ref().and_then(|items| items.from.clone()) {
                started |= self.fire_stage(job, upstream).await?;
            }
        }
        Ok(started)
    }

    async fn fire_stage(&self, job: &Job, upstream: String) -> Result<bool, StoreError> {
        let (name, now) = (job.name.clone(), self.engine.clock().now());
        let stored = self.engine.store().call(move |s| s.schedule(&name)).await?;
        let first_look = stored.is_none();
        let mut row = stored.unwrap_or_else(|| ScheduleRow::new(&job.name, now));
        let after = (row.cursor, row.after_run);
        let closed = self.engine.store().call(move |s| s.runs_closed_after(&upstream, after)).await?;
        // Looked at on every step: the cursor is written only when it moves.
        if closed.is_empty() && !first_look {
            return Ok(false);
        }
        let mut started = false;
        for run in closed {
            if matches!(run.state, RunState::Completed | RunState::Late) {
                if !self.start(job, run.scheduled_for, &mut row).await? {
                    break;
                }
                started = true;
            } else {
                let detail = serde_json::json!({
                    "scheduled_for": run.scheduled_for.to_rfc3339(),
                    "reason": "upstream_not_completed",
                    "message": format!("upstream run {} ended {}: the stage does not run for it", run.run_key, run.state.as_str()),
                });
                self.record(job, "run_skipped", detail).await?;
            }
            row.cursor = run.finished_at.unwrap_or(row.cursor);
            row.after_run = Some(run.id);
        }
        row.next_at = None;
        self.save(row).await?;
        Ok(started)
    }

    /// Applies the job's overlap policy to one due instant.
    async fn fire(&self, job: &Job, instant: DateTime<Utc>, row: &mut ScheduleRow) -> Result<Fired, StoreError> {
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
    async fn start(&self, job: &Job, instant: DateTime<Utc>, row: &mut ScheduleRow) -> Result<bool, StoreError> {
        let error = match self.engine.start_run(job, instant).await {
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

    async fn record(&self, job: &Job, kind: &'static str, detail: serde_json::Value) -> Result<(), StoreError> {
        let (name, now) = (job.name.clone(), self.engine.clock().now());
        self.engine.store().call(move |s| s.record_event(None, Some(&name), kind, &detail, now)).await
    }

    async fn save(&self, row: ScheduleRow) -> Result<(), StoreError> {
        let now = self.engine.clock().now();
        self.engine.store().call(move |s| s.save_schedule(&row, now)).await
    }
}
