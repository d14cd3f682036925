//! Shared batches: the waiting requests of runs that are ready at about
//! the same time, for the same provider, model and batch parameters, go
//! into one provider batch (up to its limits). Each request keeps its run:
//! results are routed back by custom_id, and every run keeps its own
//! deadline, fallback plan, budget, sink and costs. One create, one poll
//! schedule and one results download serve them all.
//!
//! A run waits up to the gathering window for others to join (never past
//! its fallback instant); the provider's processing-queue limit holds new
//! creates back instead of collecting 429s.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Engine, EngineError};
use crate::clock::span;
use crate::job::Job;
use crate::lanes::batch::{LaneError, split_by};
use crate::providers::ProviderError;
use crate::store::{BatchPart, RunRow, Waiting};

/// A batch-lane run whose waiting requests go to a batch in this tick.
pub(super) struct Ready {
    pub(super) job: Job,
    pub(super) run: RunRow,
    pub(super) waiting: Vec<Waiting>,
    /// When the sync lane takes the run over: a create is not retried past it.
    pub(super) takeover_at: DateTime<Utc>,
}

impl Ready {
    /// Until when a create for this run is worth retrying (`None`: as long
    /// as it takes, for a run the budget keeps off the sync lane).
    fn give_up_at(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        Some(self.takeover_at).filter(|at| *at > now && self.run.sync_blocked.is_none())
    }

    /// When the run stops waiting for others to share its batch.
    fn gathered_at(&self, window: Duration, now: DateTime<Utc>) -> DateTime<Utc> {
        (self.run.prepared_at.unwrap_or(now) + span(window)).min(self.takeover_at)
    }
}

/// What runs must have in common to share a batch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ShareKey {
    provider: String,
    /// The batch lane's model: OpenAI and Gemini batches hold one model each.
    model: String,
    betas: Vec<String>,
    /// The job's own `max_batch_requests`, if any.
    cap: Option<u32>,
    /// A run of a job with `batch: { share: false }` shares with no one.
    alone: Option<i64>,
}

fn share_key(ready: &Ready) -> ShareKey {
    let job = &ready.job;
    let mut betas = job.manifest.betas.clone();
    betas.sort();
    ShareKey {
        provider: job.manifest.provider.clone(),
        model: job.batch_model_id.clone().unwrap_or_else(|| job.model_id.clone()),
        betas,
        cap: job.manifest.max_batch_requests,
        alone: (!job.manifest.batch.share).then_some(ready.run.id),
    }
}

impl Engine {
    /// Submits the waiting requests of `ready` runs, those that can share in
    /// one batch, once their gathering `window` is over. The first create
    /// of a tick may wait a moment for the batch endpoints' pace; the others go only
    /// while the pace has a call to spare, so polls are never held up
    /// behind a queue of creates. Returns when to look again.
    pub(super) async fn submit_ready(&self, ready: Vec<Ready>, window: Duration) -> Result<DateTime<Utc>, EngineError> {
        let now = self.clock.now();
        let mut wake = now + span(self.settings.idle_tick);
        let mut groups: BTreeMap<ShareKey, Vec<Ready>> = BTreeMap::new();
        for run in ready {
            groups.entry(share_key(&run)).or_default().push(run);
        }
        let mut created_one = false;
        for (key, members) in groups {
            let due = members.iter().map(|r| r.gathered_at(window, now)).min().unwrap_or(now);
            if due > now {
                wake = wake.min(due);
                continue;
            }
            if let Some(free_at) = self.held_by_pace(&key.provider, created_one) {
                wake = wake.min(free_at);
                continue;
            }
            created_one = true;
            if let Some(again) = self.submit_group(&key, &members).await? {
                wake = wake.min(again);
            }
        }
        Ok(wake)
    }

    /// Submits one group's requests in batches within the provider's
    /// limits and the room its queue has; returns when to try again with
    /// what the queue held back.
    async fn submit_group(&self, key: &ShareKey, members: &[Ready]) -> Result<Option<DateTime<Utc>>, EngineError> {
        let now = self.clock.now();
        let Some(mut limits) = self.batch.limits(&key.provider) else {
            let error = LaneError::from(ProviderError::NoClient(key.provider.clone()));
            for ready in members {
                self.create_failed(&ready.job, &ready.run, &error).await?;
            }
            return Ok(None);
        };
        if let Some(cap) = key.cap {
            limits.max_requests = limits.max_requests.min(cap as usize);
        }
        let mut items: Vec<(&Ready, &Waiting)> =
            members.iter().flat_map(|ready| ready.waiting.iter().map(move |w| (ready, w))).collect();
        let room = self.queue_room(&key.provider).await?;
        let held = items.len().saturating_sub(room);
        if held > 0 {
            items.truncate(room);
            tracing::info!(
                provider = %key.provider,
                held,
                limit = self.batch.queue_limit(&key.provider),
                "the provider's batch queue is full: creates wait for room"
            );
        }
        let chunks = split_by(&items, limits, |(_, waiting)| *waiting);
        for (index, chunk) in chunks.iter().enumerate() {
            let parts = parts_of(chunk);
            let give_up_at = chunk.iter().filter_map(|(ready, _)| ready.give_up_at(now)).min();
            let betas = &members[0].job.manifest.betas;
            match self.batch.submit_shared(&key.provider, parts, betas, give_up_at).await {
                Ok(batch_id) => self.schedule_poll(batch_id, self.settings.poll_initial),
                Err(error) => {
                    // This chunk's runs and those of the chunks not sent yet.
                    let mut failed: Vec<&Ready> = chunks[index..].iter().flatten().map(|(ready, _)| *ready).collect();
                    failed.dedup_by_key(|ready| ready.run.id);
                    for ready in failed {
                        self.create_failed(&ready.job, &ready.run, &error).await?;
                    }
                    return Ok(None);
                }
            }
            if chunk.iter().any(|(_, waiting)| waiting.retry) {
                crate::failpoint::hit("after_followup_submit");
            }
        }
        Ok((held > 0).then(|| now + span(self.settings.poll_initial)))
    }

    /// Requests the provider's processing queue has room for now.
    async fn queue_room(&self, provider: &str) -> Result<usize, EngineError> {
        let Some(limit) = self.batch.queue_limit(provider) else { return Ok(usize::MAX) };
        let name = provider.to_owned();
        let queued = self.store.call(move |s| Ok(s.batch_queue_depths()?.get(&name).copied().unwrap_or(0))).await?;
        Ok(usize::try_from(limit.saturating_sub(queued)).unwrap_or(usize::MAX))
    }

    /// A create that failed for `run`: backpressure keeps the intent for
    /// another try; anything else sends the run to the sync lane, unless
    /// its budget keeps it off it.
    async fn create_failed(&self, job: &Job, run: &RunRow, error: &LaneError) -> Result<(), EngineError> {
        if error.is_backpressure() {
            // Not a failure of the batch lane: the intent stays, and the
            // create is tried again while the fallback plan stands.
            tracing::info!(run = %run.run_key, %error, "the batch endpoint pushes back; creating the batch later");
        } else if self.sync_allowed(job, run).await? {
            let detail = serde_json::json!({ "error": error.to_string() });
            self.start_fallback(run, "batch_create_failed", detail).await?;
        } else {
            tracing::warn!(run = %run.run_key, %error, "batch create failed; the budget blocks the sync lane, so it is retried");
        }
        Ok(())
    }
}

/// A chunk's requests as one part per run, in order.
fn parts_of(chunk: &[&(&Ready, &Waiting)]) -> Vec<BatchPart> {
    let mut parts: Vec<BatchPart> = Vec::new();
    for (ready, waiting) in chunk.iter().copied() {
        match parts.last_mut() {
            Some(part) if part.run_id == ready.run.id => part.custom_ids.push(waiting.custom_id.clone()),
            _ => parts.push(BatchPart { run_id: ready.run.id, custom_ids: vec![waiting.custom_id.clone()] }),
        }
    }
    parts
}
