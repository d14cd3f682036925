//! One run, in the foreground, until every request is final and delivered.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::deliver::{DeliverError, deliver_pending};
use super::prepare::{PrepareError, prepare_run};
use crate::catalog::Catalog;
use crate::clock::Clock;
use crate::lanes::batch::{BatchLane, BatchLimits, LaneError, split};
use crate::manifest::Job;
use crate::render::{RenderError, RunInfo};
use crate::store::{BatchState, RunRow, RunState, SharedStore, StoreError};

/// How a run is carried out.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Directory of prompt templates.
    pub prompts_dir: PathBuf,
    /// Models and prices.
    pub catalog: Catalog,
    /// Provider limits per batch (the job's `max_batch_requests` lowers them).
    pub limits: BatchLimits,
    /// First wait between polls; it doubles while nothing changes.
    pub poll_initial: Duration,
    /// Longest wait between polls.
    pub poll_max: Duration,
}

impl RunSettings {
    /// Defaults for real providers: poll after 2 s, then back off to 5 min.
    pub fn new(prompts_dir: PathBuf, catalog: Catalog) -> RunSettings {
        RunSettings {
            prompts_dir,
            catalog,
            limits: BatchLimits::default(),
            poll_initial: Duration::from_secs(2),
            poll_max: Duration::from_secs(300),
        }
    }
}

/// Why a run stopped before it was done. The run stays open; running it again resumes it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The run could not be prepared.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The lane failed.
    #[error(transparent)]
    Lane(#[from] LaneError),
    /// Delivery failed.
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run could not be identified.
    #[error(transparent)]
    Render(#[from] RenderError),
}

/// What a finished run amounted to.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// `<job>-<YYYYMMDDTHHMM>`.
    pub run_key: String,
    /// Final state.
    pub state: RunState,
    /// Why it is late or failed, or what failed in it.
    pub reason: Option<String>,
    /// Requests in the run.
    pub requests: u64,
    /// Requests with a successful result.
    pub succeeded: u64,
    /// Requests that failed for good: custom_id, error type, provider message.
    pub permanent_failures: Vec<(String, String, String)>,
    /// Requests that were still failing when retries or the deadline ran out.
    pub gave_up: u64,
    /// Results delivered to the sink.
    pub delivered: u64,
    /// Batches submitted for the run.
    pub batches: usize,
}

impl RunOutcome {
    /// Whether every request succeeded and was delivered.
    pub fn is_complete(&self) -> bool {
        self.succeeded == self.requests && self.delivered == self.requests
    }
}

/// Runs (or resumes) the run of `job` for `scheduled_for` until every
/// request is final and every success is delivered.
pub async fn run_to_completion(
    store: SharedStore,
    lane: BatchLane,
    clock: Arc<dyn Clock>,
    job: &Job,
    scheduled_for: DateTime<Utc>,
    settings: &RunSettings,
) -> Result<RunOutcome, EngineError> {
    let info = RunInfo::new(job, scheduled_for)?;
    let run =
        prepare_run(&store, job, &info, scheduled_for, &settings.prompts_dir, &settings.catalog, clock.now()).await?;
    if run.state != RunState::Open {
        return outcome(&store, &run).await;
    }
    let max_attempts = u32::try_from(job.manifest.retry.max_attempts.max(1)).unwrap_or(u32::MAX);
    let mut limits = settings.limits;
    if let Some(cap) = job.manifest.max_batch_requests {
        limits.max_requests = limits.max_requests.min(cap as usize);
    }
    let betas = job.manifest.betas.clone();
    let mut wait = settings.poll_initial;
    loop {
        let changed = step(&store, &lane, &run, &betas, max_attempts, limits, clock.now()).await?;
        deliver_pending(&store, job, &info, run.id, clock.now()).await?;
        if let Some(done) = finish_if_done(&store, &run, max_attempts, clock.now()).await? {
            return Ok(done);
        }
        wait = if changed { settings.poll_initial } else { (wait * 2).min(settings.poll_max) };
        let left = (run.deadline_at - clock.now()).to_std().unwrap_or_default();
        clock.sleep(wait.min((left / 4).max(settings.poll_initial))).await;
    }
}

/// Reconciles, submits, polls and ingests once; true if anything moved.
async fn step(
    store: &SharedStore,
    lane: &BatchLane,
    run: &RunRow,
    betas: &[String],
    max_attempts: u32,
    limits: BatchLimits,
    now: DateTime<Utc>,
) -> Result<bool, EngineError> {
    let run_id = run.id;
    let mut changed = false;
    for batch in store.call(move |s| s.all_batches(Some(run_id))).await? {
        match batch.state {
            BatchState::Submitting => {
                lane.reconcile(&batch, betas, run.deadline_at).await?;
                changed = true;
            }
            BatchState::InProgress | BatchState::Canceling => {
                if lane.poll(&batch).await? {
                    let batch_id = batch.id;
                    let ended = store.call(move |s| s.batch(batch_id)).await?.expect("a polled batch exists");
                    lane.ingest(&ended).await?;
                    changed = true;
                }
            }
            BatchState::Ended if !batch.results_ingested => {
                lane.ingest(&batch).await?;
                changed = true;
            }
            BatchState::Ended | BatchState::Abandoned => {}
        }
    }
    if now < run.deadline_at {
        let waiting = store.call(move |s| s.waiting_requests(run_id, max_attempts)).await?;
        for custom_ids in split(&waiting, limits) {
            lane.submit(run_id, custom_ids, betas, run.deadline_at).await?;
            changed = true;
        }
    }
    Ok(changed)
}

/// Closes the run when no request can move any more.
async fn finish_if_done(
    store: &SharedStore,
    run: &RunRow,
    max_attempts: u32,
    now: DateTime<Utc>,
) -> Result<Option<RunOutcome>, EngineError> {
    let run_id = run.id;
    let counts = store.call(move |s| s.request_counts(run_id)).await?;
    let in_lane = counts["pending"] + counts["queued"] + counts["in_flight"];
    let can_retry =
        now < run.deadline_at && !store.call(move |s| s.waiting_requests(run_id, max_attempts)).await?.is_empty();
    let undelivered = store.call(move |s| s.undelivered_count(run_id)).await? > 0;
    if in_lane > 0 || can_retry || undelivered {
        return Ok(None);
    }
    let failed = counts["permanent_failed"];
    let gave_up = counts["retryable_failed"];
    let mut reasons = Vec::new();
    if failed > 0 {
        reasons.push(format!("{failed} request(s) failed permanently"));
    }
    if gave_up > 0 {
        reasons.push(format!("{gave_up} request(s) still failing when retries or the deadline ran out"));
    }
    let late = now > run.deadline_at;
    if late {
        reasons.push(format!("finished {}s after the deadline", (now - run.deadline_at).num_seconds()));
    }
    let state = if late { RunState::Late } else { RunState::Completed };
    let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    store.call(move |s| s.finish_run(run_id, state, reason.as_deref(), now)).await?;
    let finished = store.call(move |s| s.run(run_id)).await?.expect("the run exists");
    outcome(store, &finished).await.map(Some)
}

async fn outcome(store: &SharedStore, run: &RunRow) -> Result<RunOutcome, EngineError> {
    let run_id = run.id;
    let (counts, failures, delivered, batches) = store
        .call(move |s| {
            Ok((
                s.request_counts(run_id)?,
                s.permanent_failures(run_id)?,
                s.delivery_count(run_id)?,
                s.all_batches(Some(run_id))?,
            ))
        })
        .await?;
    Ok(RunOutcome {
        run_key: run.run_key.clone(),
        state: run.state,
        reason: run.reason.clone(),
        requests: counts.values().sum(),
        succeeded: counts["succeeded"],
        permanent_failures: failures,
        gave_up: counts["retryable_failed"],
        delivered,
        batches: batches.iter().filter(|b| b.provider_batch_id.is_some()).count(),
    })
}
