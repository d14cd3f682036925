//! The fallback planner at work on each batch-lane run: keeps its plan
//! (when the sync lane takes over, whether a batch can still help),
//! submits what waits, and hands the rest to the sync lane when the plan
//! says so, a window of requests at a time.

use std::sync::PoisonError;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::gather::Ready;
use super::settings::DEFAULT_SYNC_LATENCY;
use super::{DEFAULT_BATCH_TURNAROUND, Engine, EngineError, max_attempts};
use crate::clock::span;
use crate::cost::budget::{self, Decision, Spend, Stage};
use crate::job::Job;
use crate::lanes::SyncRequest;
use crate::manifest::Lane;
use crate::plan::{SyncLoad, batch_worthwhile, safety_margin, sync_estimate, takeover_at};
use crate::store::{BatchRow, BatchState, RunRow, TokenAverages};

/// What the planner knows of how long each lane takes, and where it got it
/// (`measured`, `configured`, `catalog`, `assumed`).
#[derive(Debug, Clone, Copy)]
struct Evidence {
    latency: Duration,
    latency_from: &'static str,
    turnaround: Duration,
    turnaround_from: &'static str,
}

/// A batch-lane run's fallback plan, recomputed every tick.
#[derive(Debug, Clone, Copy)]
struct Plan {
    /// When the sync lane takes over what is left.
    takeover_at: DateTime<Utc>,
    /// Whether a new batch could still end before then.
    batch_worthwhile: bool,
    /// Time the sync lane needs for what is left.
    estimate: Duration,
    evidence: Evidence,
    /// Requests not final yet.
    remaining: u64,
}

impl Plan {
    /// Why a run goes (or went) to the sync lane, with the figures.
    fn why_sync(&self, waiting: usize) -> String {
        let e = &self.evidence;
        format!(
            "no batch is expected to end before the sync lane must take over: a batch takes about {} ({}), \
             the sync lane about {} for {} request(s) ({} per call, {}); {waiting} waiting",
            crate::manifest::format_duration(e.turnaround),
            e.turnaround_from,
            crate::manifest::format_duration(self.estimate),
            self.remaining,
            crate::manifest::format_duration(e.latency),
            e.latency_from,
        )
    }
}

impl Engine {
    /// For a run on the batch lane: keeps its fallback plan, and either
    /// readies what waits for a batch or hands the rest to the sync lane.
    /// What waits goes into `ready`, submitted once every run was tended
    /// ([`super::gather`]), so runs ready together share batches.
    pub(super) async fn plan_batch_run(
        &self,
        job: &Job,
        run: RunRow,
        wake: &mut DateTime<Utc>,
        ready: &mut Vec<Ready>,
    ) -> Result<RunRow, EngineError> {
        let now = self.clock.now();
        let (run_id, attempts) = (run.id, max_attempts(job));
        let (batches, waiting) =
            self.store.call(move |s| Ok((s.all_batches(Some(run_id))?, s.waiting_requests(run_id, attempts)?))).await?;
        let plan = self.fallback_plan(job, &run, &batches).await?;
        self.keep_plan(&run, &plan).await?;
        let active = batches.iter().any(|b| matches!(b.state, BatchState::Submitting | BatchState::InProgress));
        // A batch is worth submitting only if it can end before the sync lane must take over.
        let too_late_for_a_batch = !waiting.is_empty() && !active && !plan.batch_worthwhile;
        if batches.is_empty() && too_late_for_a_batch && self.sync_allowed(job, &run).await? {
            let reason = plan.why_sync(waiting.len());
            tracing::info!(run = %run.run_key, %reason, "routed to the sync lane");
            self.store.call(move |s| s.route_to_sync(run_id, &reason, now)).await?;
        } else if (plan.takeover_at <= now || too_late_for_a_batch) && self.sync_allowed(job, &run).await? {
            let detail = serde_json::json!({ "fallback_at": plan.takeover_at.to_rfc3339(), "why": plan.why_sync(waiting.len()) });
            self.start_fallback(&run, "deadline", detail).await?;
        } else {
            // A run the budget keeps off the sync lane still submits after
            // its deadline: late beats lost.
            let may_submit = now < run.deadline_at || run.sync_blocked.is_some();
            if may_submit && !waiting.is_empty() {
                ready.push(Ready { job: job.clone(), run: run.clone(), waiting, takeover_at: plan.takeover_at });
            }
            if plan.takeover_at > now {
                *wake = (*wake).min(plan.takeover_at);
            }
        }
        Ok(self.store.call(move |s| s.run(run_id)).await?.expect("the run exists"))
    }

    /// Stores the plan's takeover instant when it moved by a second or more.
    async fn keep_plan(&self, run: &RunRow, plan: &Plan) -> Result<(), EngineError> {
        let (run_id, at, now) = (run.id, plan.takeover_at, self.clock.now());
        if run.fallback_at.is_some_and(|old| (old - at).num_milliseconds().abs() < 1000) {
            return Ok(());
        }
        if at == run.deadline_at && at > now {
            tracing::warn!(run = %run.run_key, deadline = %at, "late either way, and the batch is expected to end before the sync lane would: the batch keeps the run until its deadline");
        }
        Ok(self.store.call(move |s| s.set_fallback_at(run_id, at)).await?)
    }

    /// The fallback plan of a batch-lane run: when the sync lane takes over
    /// ([`takeover_at`]) and whether a new batch could still help
    /// ([`batch_worthwhile`]), from the time the sync lane needs for what is
    /// left and how long a batch is expected to take.
    async fn fallback_plan(&self, job: &Job, run: &RunRow, batches: &[BatchRow]) -> Result<Plan, EngineError> {
        let run_id = run.id;
        let counts = self.store.call(move |s| s.request_counts(run_id)).await?;
        let averages = self.token_averages(run).await?;
        let remaining = counts["pending"] + counts["queued"] + counts["in_flight"] + counts["retryable_failed"];
        let output_tokens = averages.output_tokens.unwrap_or(job.manifest.max_tokens as f64 / 2.0);
        let evidence = self.evidence(job, output_tokens).await?;
        let load =
            SyncLoad { remaining, input_tokens: averages.input_tokens, output_tokens, latency: evidence.latency };
        let now = self.clock.now();
        let margin = safety_margin(run.created_at, run.deadline_at, self.settings.max_safety_margin);
        let estimate = sync_estimate(load, self.sync.limits());
        // The batch at the provider is expected to end a turnaround after it
        // was created; one that is overdue, any moment now.
        let submitted =
            batches.iter().filter(|b| b.state == BatchState::InProgress).filter_map(|b| b.submitted_at).min();
        let batch_end = submitted.map_or(now, |at| at + span(evidence.turnaround)).max(now);
        Ok(Plan {
            takeover_at: takeover_at(now, run.deadline_at, margin, estimate, batch_end),
            batch_worthwhile: batch_worthwhile(now, run.deadline_at, margin, estimate, evidence.turnaround),
            estimate,
            evidence,
            remaining,
        })
    }

    /// How long a sync call to the job's model and a batch of its provider
    /// take: measured when calls and batches have been seen, else what is
    /// configured, else the catalog's figures.
    async fn evidence(&self, job: &Job, output_tokens: f64) -> Result<Evidence, EngineError> {
        let (model, provider) = (job.model_id.clone(), job.manifest.provider.clone());
        let (latency, turnaround) = self
            .store
            .call(move |s| Ok((s.sync_latency_p90_ms(&model)?, s.batch_turnaround_p90_ms(&provider)?)))
            .await?;
        let catalog = &self.settings.catalog;
        let (latency, latency_from) = match latency {
            Some(ms) => (Duration::from_millis(ms), "measured"),
            None => match self.settings.assumed_sync_latency {
                Some(configured) => (configured, "configured"),
                None => catalog
                    .model(&job.manifest.provider, &job.model_id)
                    .and_then(|(_, model)| model.sync_latency(output_tokens))
                    .map_or((DEFAULT_SYNC_LATENCY, "assumed"), |latency| (latency, "catalog")),
            },
        };
        let (turnaround, turnaround_from) = match turnaround {
            Some(ms) => (Duration::from_millis(ms), "measured"),
            None => match self.settings.assumed_batch_turnaround {
                Some(configured) => (configured, "configured"),
                None => catalog
                    .providers
                    .get(&job.manifest.provider)
                    .and_then(crate::catalog::Provider::batch_turnaround)
                    .map_or((DEFAULT_BATCH_TURNAROUND, "assumed"), |turnaround| (turnaround, "catalog")),
            },
        };
        Ok(Evidence { latency, latency_from, turnaround, turnaround_from })
    }

    /// The run's token averages, read once per run.
    pub(super) async fn token_averages(&self, run: &RunRow) -> Result<TokenAverages, EngineError> {
        if let Some(known) = self.averages.lock().unwrap_or_else(PoisonError::into_inner).get(&run.id) {
            return Ok(*known);
        }
        let (run_id, name) = (run.id, run.job.clone());
        let averages = self.store.call(move |s| s.token_averages(run_id, &name)).await?;
        self.averages.lock().unwrap_or_else(PoisonError::into_inner).insert(run.id, averages);
        Ok(averages)
    }

    /// Whether the budget lets the run's unfinished requests go to the
    /// sync lane. A crossing under `alert` is recorded and allowed; under
    /// the other policies it blocks the sync lane for the run, for good.
    pub(super) async fn sync_allowed(&self, job: &Job, run: &RunRow) -> Result<bool, EngineError> {
        if run.sync_blocked.is_some() {
            return Ok(false);
        }
        let input_guess = self.token_averages(run).await?.input_tokens;
        let (pricer, global, now) = (self.pricer.clone(), self.settings.global_budget, self.clock.now());
        let (job, run_id) = (job.clone(), run.id);
        let allowed = self
            .store
            .call(move |s| {
                let requests = s.unfinished_requests(run_id)?;
                let spend = Spend { job, run_id, lane: Lane::Sync, requests, input_guess };
                Ok(budget::enforce(s, &pricer, global, &spend, Stage::Fallback, now)? == Decision::Proceed)
            })
            .await?;
        if !allowed {
            tracing::warn!(run = %run.run_key, "the budget blocks the sync fallback; the run stays on the batch lane");
        }
        Ok(allowed)
    }

    /// Hands what is left of the run to the sync lane and cancels its batches.
    pub(super) async fn start_fallback(
        &self,
        run: &RunRow,
        reason: &str,
        detail: serde_json::Value,
    ) -> Result<(), EngineError> {
        let (run_id, now, why) = (run.id, self.clock.now(), reason.to_owned());
        let mut detail = detail;
        detail["reason"] = serde_json::Value::from(reason);
        if !self.store.call(move |s| s.start_fallback(run_id, &why, &detail, now)).await? {
            return Ok(());
        }
        tracing::warn!(run = %run.run_key, reason, "fallback: what is left goes to the sync lane");
        crate::failpoint::hit("after_fallback_started");
        Ok(())
    }

    /// For a run whose fallback engaged: cancels its batches still in
    /// progress; true while the sync lane should wait for them to end.
    pub(super) async fn settle_batches(&self, run: &RunRow) -> Result<bool, EngineError> {
        if run.fallback_started_at.is_none() {
            return Ok(false);
        }
        let run_id = run.id;
        let now = self.clock.now();
        let mut settling = false;
        for batch in self.store.call(move |s| s.active_batches(Some(run_id))).await? {
            // A batch shared with runs still on the batch lane goes on for
            // them: only this run's requests leave it (for the sync lane; its
            // results for them, if they come, are duplicate spend). The last
            // run to leave cancels it.
            let batch_id = batch.id;
            let carried = self.store.call(move |s| s.runs_of_batch(batch_id)).await?;
            if carried.iter().any(|other| other.id != run_id && still_on_batch_lane(other)) {
                continue;
            }
            if batch.state == BatchState::InProgress {
                match self.batch.cancel(&batch).await {
                    Ok(()) => self.reschedule_poll(batch.id, run, true),
                    Err(error) => tracing::warn!(
                        batch = batch.id,
                        error = %error,
                        "could not cancel a batch; results it returns after the sync lane's count as duplicate spend"
                    ),
                }
            }
            // A batch still `submitting` does not hold the sync lane back (the
            // fallback after a failed create is at once); its reconcile keeps
            // looking for it during the grace, and a batch found then is
            // canceled, what it returns counted as duplicate spend.
            settling |= matches!(batch.state, BatchState::InProgress | BatchState::Canceling);
        }
        Ok(settling && self.awaiting_cancel(run, now))
    }

    /// Hands the sync lane the run's next window of unfinished requests, so a
    /// fallback of any size holds one window of bodies in memory, not the run.
    pub(super) async fn feed_sync_lane(&self, job: &Job, run: &RunRow) -> Result<(), EngineError> {
        // While the lane still holds work of this run, reading unfinished
        // bodies again (each tick) would only find what it already has; the
        // next window, and retries, go out once it drains.
        if self.sync.outstanding(run.id) > 0 {
            return Ok(());
        }
        let (run_id, attempts) = (run.id, max_attempts(job));
        let candidates = self.store.call(move |s| s.sync_candidates(run_id, attempts, SYNC_WINDOW)).await?;
        // After a failover the items are rendered again for the other provider.
        let (provider, model, betas, failover) = match &run.failover {
            Some((provider, model)) => {
                let ids: Vec<String> = candidates.iter().map(|w| w.custom_id.clone()).collect();
                let items = self.store.call(move |s| s.request_items(&ids)).await?;
                let params = self.failover_params(job, run, (provider, model), &items)?;
                (provider.clone(), model.clone(), Vec::new(), Some(params))
            }
            None => (job.manifest.provider.clone(), job.model_id.clone(), job.manifest.betas.clone(), None),
        };
        let mut failover = failover.map(Vec::into_iter);
        let requests = candidates
            .into_iter()
            .map(|work| SyncRequest {
                run_id: run.id,
                params: match failover.as_mut().and_then(Iterator::next) {
                    Some(params) => params,
                    None => sync_params(job, work.params),
                },
                custom_id: work.custom_id,
                provider: provider.clone(),
                model: model.clone(),
                betas: betas.clone(),
                attempts: work.attempts,
                max_attempts: attempts,
            })
            .collect();
        let queued = self.sync.send(requests);
        if queued > 0 {
            tracing::info!(run = %run.run_key, requests = queued, "sent to the sync lane");
        }
        Ok(())
    }
}

/// Whether `run` still waits for its batches' results.
pub(super) fn still_on_batch_lane(run: &RunRow) -> bool {
    run.state == crate::store::RunState::Open && !run.is_sync()
}

/// A request's body for the sync lane: with `batch_model`, requests were
/// rendered for the batch lane, and the sync lane uses the job's `model`.
fn sync_params(job: &Job, params: String) -> String {
    if job.batch_model_id.is_none() {
        return params;
    }
    match serde_json::from_str::<serde_json::Value>(&params) {
        Ok(mut body) => {
            body["model"] = serde_json::Value::from(job.model_id.as_str());
            body.to_string()
        }
        Err(_) => params,
    }
}

/// Requests handed to the sync lane at a time. Far more than its
/// concurrency, so the lane rarely idles while the next window is read.
const SYNC_WINDOW: usize = 2000;
