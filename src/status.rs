//! What `orchestrator status` and `/api/v1/status` show: open runs with
//! their batches, request counts, deadline and fallback plan; each job's
//! next firing; recent skipped, queued, late and failed runs and fallbacks.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::store::{BatchRow, RunRow, Store, StoreError};

/// Event kinds listed as "recent".
const NOTABLE: &[&str] = &[
    "run_start_failed",
    "deadline_missed",
    "delivery_failed",
    "run_skipped",
    "run_queued",
    "run_late",
    "run_failed",
    "fallback_started",
    "routed_to_sync",
    "batch_adopted",
    "budget_exceeded",
    "alert_failed",
];

/// The whole report (a public JSON shape: fields are only ever added).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// When it was taken.
    pub now: DateTime<Utc>,
    /// Open runs, oldest first.
    pub runs: Vec<RunStatus>,
    /// Each job's schedule position.
    pub schedules: Vec<ScheduleStatus>,
    /// Notable events of the last 7 days, newest first.
    pub recent: Vec<RecentEvent>,
}

/// One open run.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    /// `<job>-<YYYYMMDDTHHMM>`.
    pub run_key: String,
    /// The job.
    pub job: String,
    /// Its scheduled instant.
    pub scheduled_for: DateTime<Utc>,
    /// The tier at creation.
    pub tier: String,
    /// `batch` or `sync` (the router's choice).
    pub lane: String,
    /// The deadline.
    pub deadline_at: DateTime<Utc>,
    /// Seconds until the deadline (negative once passed).
    pub seconds_to_deadline: i64,
    /// When the fallback engine plans to move what is left to the sync lane.
    pub fallback_at: Option<DateTime<Utc>>,
    /// When it did, if it did.
    pub fallback_started_at: Option<DateTime<Utc>>,
    /// Why: `deadline` or `batch_create_failed`.
    pub fallback_reason: Option<String>,
    /// Requests by state.
    pub requests: BTreeMap<&'static str, u64>,
    /// The run's batches.
    pub batches: Vec<BatchStatus>,
    /// When it passed its deadline still open (it keeps going until every request is final).
    pub deadline_missed_at: Option<DateTime<Utc>>,
    /// Since when delivering its results has been failing (they stay stored and are retried).
    pub delivery_failing_since: Option<DateTime<Utc>>,
    /// The last delivery error.
    pub delivery_error: Option<String>,
}

/// One batch of a run.
#[derive(Debug, Clone, Serialize)]
pub struct BatchStatus {
    /// Our id.
    pub id: i64,
    /// The provider's id, once created.
    pub provider_batch_id: Option<String>,
    /// `submitting`, `in_progress`, `canceling`, `ended`, `abandoned`.
    pub state: &'static str,
    /// Requests in it.
    pub requests: u64,
    /// When it was created at the provider.
    pub submitted_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
}

/// A job's schedule position.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleStatus {
    /// The job.
    pub job: String,
    /// Its next firing.
    pub next_at: Option<DateTime<Utc>>,
    /// The scheduled instant of its latest run.
    pub last_fired_for: Option<DateTime<Utc>>,
    /// An instant whose run could not start (it is tried again every minute).
    pub start_failed_for: Option<DateTime<Utc>>,
    /// Why it could not start.
    pub start_error: Option<String>,
}

/// A notable event.
#[derive(Debug, Clone, Serialize)]
pub struct RecentEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// The job, when known.
    pub job: Option<String>,
    /// The run's key, when it concerns a run.
    pub run_key: Option<String>,
    /// What happened.
    pub kind: String,
    /// Details.
    pub detail: serde_json::Value,
}

fn batch_status(batch: &BatchRow) -> BatchStatus {
    BatchStatus {
        id: batch.id,
        provider_batch_id: batch.provider_batch_id.clone(),
        state: batch.state.as_str(),
        requests: batch.request_count,
        submitted_at: batch.submitted_at,
        ended_at: batch.ended_at,
    }
}

fn run_status(store: &Store, run: RunRow, now: DateTime<Utc>) -> Result<RunStatus, StoreError> {
    let batches = store.all_batches(Some(run.id))?.iter().map(batch_status).collect();
    Ok(RunStatus {
        requests: store.request_counts(run.id)?,
        batches,
        seconds_to_deadline: (run.deadline_at - now).num_seconds(),
        run_key: run.run_key,
        job: run.job,
        scheduled_for: run.scheduled_for,
        tier: run.tier,
        lane: run.lane,
        deadline_at: run.deadline_at,
        fallback_at: run.fallback_at,
        fallback_started_at: run.fallback_started_at,
        fallback_reason: run.fallback_reason,
        deadline_missed_at: run.deadline_missed_at,
        delivery_failing_since: run.delivery_failing_since,
        delivery_error: run.delivery_error,
    })
}

/// Collects the report, for every job or only `job`.
pub fn collect(store: &Store, job: Option<&str>, now: DateTime<Utc>) -> Result<StatusReport, StoreError> {
    let wanted = |name: &str| job.is_none_or(|j| j == name);
    let mut runs = Vec::new();
    for run in store.open_runs()?.into_iter().filter(|r| wanted(&r.job)) {
        runs.push(run_status(store, run, now)?);
    }
    let schedules = store
        .schedules()?
        .into_iter()
        .filter(|s| wanted(&s.job))
        .map(|s| ScheduleStatus {
            job: s.job,
            next_at: s.next_at,
            last_fired_for: s.last_fired_for,
            start_failed_for: s.start_failed_for,
            start_error: s.start_error,
        })
        .collect();
    let mut recent = Vec::new();
    for event in store.recent_events(NOTABLE, now - chrono::Duration::days(7), 200)? {
        let run = event.run_id.map(|id| store.run(id)).transpose()?.flatten();
        let job_name = event.job.clone().or_else(|| run.as_ref().map(|r| r.job.clone()));
        if !job_name.as_deref().is_none_or(wanted) || recent.len() >= 20 {
            continue;
        }
        recent.push(RecentEvent {
            at: event.at,
            job: job_name,
            run_key: run.map(|r| r.run_key),
            kind: event.kind,
            detail: event.detail,
        });
    }
    Ok(StatusReport { now, runs, schedules, recent })
}

/// The report as text for a terminal.
pub fn render_text(report: &StatusReport) -> String {
    let mut out = String::new();
    let time = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S UTC").to_string();
    if report.runs.is_empty() {
        out.push_str("no open runs\n");
    }
    for run in &report.runs {
        let counts: Vec<String> =
            run.requests.iter().filter(|(_, n)| **n > 0).map(|(s, n)| format!("{s} {n}")).collect();
        out.push_str(&format!("{}  ({} tier, {} lane)\n", run.run_key, run.tier, run.lane));
        out.push_str(&format!("  requests:  {}\n", counts.join(", ")));
        out.push_str(&format!("  deadline:  {} (in {}s)\n", time(run.deadline_at), run.seconds_to_deadline));
        match (&run.fallback_started_at, &run.fallback_at) {
            (Some(at), _) => out.push_str(&format!(
                "  fallback:  engaged {} ({})\n",
                time(*at),
                run.fallback_reason.as_deref().unwrap_or("")
            )),
            (None, Some(at)) => out.push_str(&format!("  fallback:  planned at {}\n", time(*at))),
            (None, None) => {}
        }
        for batch in &run.batches {
            let id = batch.provider_batch_id.as_deref().unwrap_or("(not created)");
            out.push_str(&format!("  batch {}: {id} {} ({} requests)\n", batch.id, batch.state, batch.requests));
        }
        if let Some(at) = run.deadline_missed_at {
            out.push_str(&format!(
                "  late:      missed its deadline at {}; it keeps going until every request is final\n",
                time(at)
            ));
        }
        if let Some(since) = run.delivery_failing_since {
            let error = run.delivery_error.as_deref().unwrap_or("");
            out.push_str(&format!(
                "  delivery:  failing since {} (retried; results stay stored): {error}\n",
                time(since)
            ));
        }
    }
    for schedule in &report.schedules {
        let next = schedule.next_at.map_or("never".to_owned(), time);
        out.push_str(&format!("job {}: next firing {next}\n", schedule.job));
        if let Some(at) = schedule.start_failed_for {
            let error = schedule.start_error.as_deref().unwrap_or("");
            out.push_str(&format!("  could not start the run for {} (tried again every minute): {error}\n", time(at)));
        }
    }
    if !report.recent.is_empty() {
        out.push_str("recent:\n");
    }
    for event in &report.recent {
        let who = event.run_key.clone().or_else(|| event.job.clone()).unwrap_or_default();
        out.push_str(&format!("  {} {} {} {}\n", time(event.at), event.kind, who, event.detail));
    }
    out
}
