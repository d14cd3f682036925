//! Tending batches: one poller for every batch of every run, paced by the
//! batch endpoints' rate limit. A step that keeps failing (a reconcile, an
//! ingest) backs off like a poll instead of running each tick; polls back
//! off while a batch is unchanged, never past its run's fallback instant.

use std::collections::HashMap;
use std::sync::{MutexGuard, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Engine, EngineError};
use crate::clock::span;
use crate::plan::safety_margin;
use crate::store::{BatchRow, BatchState, RunRow, RunState};

/// When to poll a batch next.
#[derive(Debug, Clone, Copy)]
pub(super) struct PollPlan {
    pub(super) next_at: DateTime<Utc>,
    pub(super) wait: Duration,
}

/// A batch with the runs it carries.
pub(super) struct Tending {
    pub(super) batch: BatchRow,
    pub(super) runs: Vec<RunRow>,
}

impl Tending {
    /// The run whose timing the batch's polls follow: of the runs still
    /// waiting for it, the one whose fallback comes first; else (all fell
    /// back or closed) the first open one, else the first.
    pub(super) fn governing(&self) -> &RunRow {
        let waiting = self.runs.iter().filter(|r| super::fallback::still_on_batch_lane(r));
        waiting
            .min_by_key(|r| r.fallback_at.unwrap_or(r.deadline_at))
            .or_else(|| self.runs.iter().find(|r| r.state == RunState::Open))
            .unwrap_or(&self.runs[0])
    }
}

impl Engine {
    /// The active batches that are due now, each with its runs, the urgent
    /// ones apart: a cancel, a reconcile, results to read, or a poll for a
    /// run near its fallback instant goes before anything else in a tick.
    /// Adds to `wake` when the others are due.
    pub(super) async fn due_batches(
        &self,
        only: Option<i64>,
        wake: &mut DateTime<Utc>,
    ) -> Result<(Vec<Tending>, Vec<Tending>), EngineError> {
        let now = self.clock.now();
        let (mut urgent, mut routine) = (Vec::new(), Vec::new());
        for batch in self.store.call(move |s| s.active_batches(only)).await? {
            let due = self.poll_plan(batch.id, now).next_at;
            if due > now {
                *wake = (*wake).min(due);
                continue;
            }
            let batch_id = batch.id;
            let runs = self.store.call(move |s| s.runs_of_batch(batch_id)).await?;
            if runs.is_empty() {
                tracing::error!(batch = batch.id, "a batch carries no run; it is left alone");
                continue;
            }
            let tending = Tending { batch, runs };
            match self.is_urgent(&tending, now) {
                true => urgent.push(tending),
                false => routine.push(tending),
            }
        }
        Ok((urgent, routine))
    }

    fn is_urgent(&self, tending: &Tending, now: DateTime<Utc>) -> bool {
        let run = tending.governing();
        let near = run.fallback_at.unwrap_or(run.deadline_at) - now <= span(self.settings.poll_max);
        !matches!(tending.batch.state, BatchState::InProgress) || run.fallback_started_at.is_some() || near
    }

    /// Reconciles, polls or ingests one batch that [`Self::due_batches`]
    /// found due; returns when to look again. Every step waits for its plan,
    /// so a step that keeps failing (a reconcile, an ingest) backs off like
    /// a poll instead of running each tick.
    pub(super) async fn tend_batch(&self, tending: &Tending) -> Result<DateTime<Utc>, EngineError> {
        let batch = &tending.batch;
        let run = tending.governing();
        let job = self.jobs().get(&run.job).cloned();
        let betas = job.as_ref().map(|j| j.manifest.betas.clone()).unwrap_or_default();
        let now = self.clock.now();
        let result = match batch.state {
            BatchState::Submitting => {
                let may_create = tending.runs.iter().any(super::fallback::still_on_batch_lane);
                // A create that failed in a way that may have taken effect can
                // show up in the provider's list a little later: while the
                // fallback's grace lasts, keep looking instead of abandoning it.
                let keep_looking =
                    !may_create && tending.runs.iter().any(|r| r.is_sync() && self.awaiting_cancel(r, now));
                let give_up_at = run.fallback_at.or(Some(run.deadline_at));
                self.batch.reconcile(batch, &betas, give_up_at, may_create, keep_looking).await
            }
            BatchState::InProgress | BatchState::Canceling => self.poll(batch, run).await,
            // Ended without a results URL (none in the answer that said it
            // ended): ask again, or the batch would wait for it forever.
            BatchState::Ended if batch.results_url.is_none() => self.poll(batch, run).await,
            BatchState::Ended | BatchState::Abandoned => self.batch.ingest(batch).await.map(drop),
        };
        match result {
            Err(error) => {
                tracing::warn!(batch = batch.id, run = %run.run_key, error = %error, "batch step failed; trying again later");
                self.reschedule_poll(batch.id, run, false);
            }
            // An intent still looking for its batch looks again later, not on every tick.
            Ok(()) if batch.state == BatchState::Submitting => self.reschedule_poll(batch.id, run, false),
            Ok(()) => {}
        }
        Ok(self.poll_plan(batch.id, self.clock.now()).next_at)
    }

    async fn poll(&self, batch: &BatchRow, run: &RunRow) -> Result<(), crate::lanes::batch::LaneError> {
        let ended = self.batch.poll(batch).await?;
        self.reschedule_poll(batch.id, run, ended);
        if ended {
            let batch_id = batch.id;
            let fresh = self.store.call(move |s| s.batch(batch_id)).await?.expect("a polled batch exists");
            self.batch.ingest(&fresh).await?;
            self.polls().remove(&batch.id);
        }
        Ok(())
    }

    fn poll_plan(&self, batch_id: i64, now: DateTime<Utc>) -> PollPlan {
        *self.polls().entry(batch_id).or_insert(PollPlan { next_at: now, wait: self.settings.poll_initial })
    }

    /// Backs off while a batch is unchanged, never past the run's fallback
    /// instant, and faster when little time is left.
    pub(super) fn reschedule_poll(&self, batch_id: i64, run: &RunRow, changed: bool) {
        let now = self.clock.now();
        let wait = if run.fallback_started_at.is_some() {
            self.settling_poll(run, now)
        } else {
            let left = (run.fallback_at.unwrap_or(run.deadline_at) - now).to_std().unwrap_or_default();
            let floor = self.settings.poll_initial.min(left / 10).max(Duration::from_millis(100));
            let current = self.polls().get(&batch_id).map(|p| p.wait);
            let wait = match (changed, current) {
                (false, Some(wait)) => (wait * 2).min(self.settings.poll_max),
                _ => floor,
            };
            wait.min((left / 4).max(floor))
        };
        self.schedule_poll(batch_id, wait);
    }

    /// Leaves `batch_id` until `at` (the batch endpoints' pace has no call
    /// to spare before), keeping its backoff.
    pub(super) fn defer_poll(&self, batch_id: i64, at: DateTime<Utc>) {
        let now = self.clock.now();
        let mut polls = self.polls();
        let plan = polls.entry(batch_id).or_insert(PollPlan { next_at: now, wait: self.settings.poll_initial });
        plan.next_at = plan.next_at.max(at);
    }

    /// Polls `batch_id` again after `wait`.
    pub(super) fn schedule_poll(&self, batch_id: i64, wait: Duration) {
        let plan = PollPlan { next_at: self.clock.now() + span(wait), wait };
        self.polls().insert(batch_id, plan);
    }

    pub(super) fn polls(&self) -> MutexGuard<'_, HashMap<i64, PollPlan>> {
        self.polls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long after the fallback engaged the sync lane waits for the
    /// run's canceled batches to end, so what they finished is not paid twice.
    pub(super) fn cancel_grace(&self, run: &RunRow) -> Duration {
        let margin = safety_margin(run.created_at, run.deadline_at, self.settings.max_safety_margin);
        (margin / 2).min(Duration::from_secs(120))
    }

    pub(super) fn awaiting_cancel(&self, run: &RunRow, now: DateTime<Utc>) -> bool {
        run.fallback_started_at.is_some_and(|started| now < started + span(self.cancel_grace(run)))
    }

    /// Poll interval for a run's batches once its fallback engaged: quick
    /// while their cancels settle, then the ordinary first interval (their
    /// late results only count duplicate spend).
    fn settling_poll(&self, run: &RunRow, now: DateTime<Utc>) -> Duration {
        match self.awaiting_cancel(run, now) {
            true => (self.cancel_grace(run) / 4).clamp(Duration::from_millis(100), Duration::from_secs(5)),
            false => self.settings.poll_initial,
        }
    }
}
