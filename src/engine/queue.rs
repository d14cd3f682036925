//! Flushing the queues of jobs with `enqueue:`: posted items become a run
//! when `max_items` wait, when the oldest has waited `max_wait`, when an
//! item's deadline needs its run to start, or at once when an item's
//! latency budget is too short for the batch lane (a sync run of its own).

use chrono::{DateTime, Utc};

use super::{Engine, EngineError};
use crate::clock::span;
use crate::job::{Job, QueuePolicy};
use crate::render::RunInfo;
use crate::store::{NewRun, QueueSummary, QueueTake};

/// Why a queue flushes now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushReason {
    /// An item's latency budget is too short for the batch lane.
    LatencyBudget,
    /// `max_items` items wait.
    MaxItems,
    /// The oldest item has waited `max_wait`.
    MaxWait,
    /// An item's deadline needs its run to start now.
    Deadline,
}

impl FlushReason {
    /// The word in events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            FlushReason::LatencyBudget => "latency_budget",
            FlushReason::MaxItems => "max_items",
            FlushReason::MaxWait => "max_wait",
            FlushReason::Deadline => "deadline",
        }
    }
}

/// What a look at the queues did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLook {
    /// Runs it made.
    pub flushed: usize,
    /// When a queue flushes next, if nothing is posted meanwhile.
    pub next: Option<DateTime<Utc>>,
}

/// What a queue with `summary` waiting does at `now`: the flush due and
/// which items it takes, or `None` to wait.
pub fn due_flush(summary: &QueueSummary, policy: QueuePolicy, now: DateTime<Utc>) -> Option<(QueueTake, FlushReason)> {
    let all = |reason| Some((QueueTake { limit: policy.max_items, sync_only: false }, reason));
    if summary.sync_waiting > 0 {
        return Some((QueueTake { limit: policy.max_items, sync_only: true }, FlushReason::LatencyBudget));
    }
    if summary.waiting as usize >= policy.max_items {
        return all(FlushReason::MaxItems);
    }
    if summary.oldest.is_some_and(|oldest| oldest + span(policy.max_wait) <= now) {
        return all(FlushReason::MaxWait);
    }
    if summary.flush_by.is_some_and(|by| by <= now) {
        return all(FlushReason::Deadline);
    }
    None
}

/// When a queue with `summary` waiting flushes next, if nothing is posted meanwhile.
pub fn next_flush(summary: &QueueSummary, policy: QueuePolicy) -> Option<DateTime<Utc>> {
    let by_wait = summary.oldest.map(|oldest| oldest + span(policy.max_wait));
    [by_wait, summary.flush_by].into_iter().flatten().min()
}

impl Engine {
    /// Flushes every queue that is due and prepares the runs it made.
    /// Called on every daemon step, which a post wakes ([`Engine::items_posted`]).
    pub async fn flush_queues(&self) -> Result<QueueLook, EngineError> {
        let mut look = QueueLook::default();
        for job in self.jobs().values() {
            let Some(policy) = job.queue else { continue };
            let (flushed, next) = self.flush_queue(job, policy).await?;
            look.flushed += flushed;
            look.next = [look.next, next].into_iter().flatten().min();
        }
        Ok(look)
    }

    async fn flush_queue(&self, job: &Job, policy: QueuePolicy) -> Result<(usize, Option<DateTime<Utc>>), EngineError> {
        let mut flushed = 0;
        loop {
            let name = job.name.clone();
            let summary = self.store.call(move |s| s.queue_summary(&name)).await?;
            let Some((take, reason)) = due_flush(&summary, policy, self.clock.now()) else {
                return Ok((flushed, next_flush(&summary, policy)));
            };
            if !self.flush(job, take, reason).await? {
                return Ok((flushed, None));
            }
            flushed += 1;
        }
    }

    /// Queues with items waiting whose job has no `enqueue:` any more (the
    /// manifest was removed, renamed or changed): nothing flushes them
    /// until it comes back. `(job, items waiting)`.
    pub async fn orphaned_queues(&self) -> Result<Vec<(String, u64)>, EngineError> {
        let jobs = self.jobs();
        let depths = self.store.call(|s| s.queue_depths()).await?;
        let orphaned = depths.into_iter().filter(|(job, _, _)| jobs.get(job).is_none_or(|job| job.queue.is_none()));
        Ok(orphaned.map(|(job, waiting, _)| (job, waiting)).collect())
    }

    /// Tells the daemon that items were posted: its sleep ends, and the
    /// next step looks at the queues.
    pub fn items_posted(&self) {
        self.queue_posted.notify_one();
    }

    /// Resolves once items were posted since the last time it resolved.
    pub async fn posted(&self) {
        self.queue_posted.notified().await;
    }

    /// The run of a queue job for `instant` that is not a flush of its
    /// own: a scheduled instant (`schedule:` beside `enqueue:`), or
    /// `orchestrator run`. It takes what waits (up to `max_items`); with
    /// nothing waiting it is an empty run, so the instant is accounted for.
    /// A run that exists for the instant is resumed as it is.
    pub async fn start_queue_run(
        &self,
        job: &Job,
        instant: DateTime<Utc>,
        deadline_at: DateTime<Utc>,
    ) -> Result<crate::store::RunRow, EngineError> {
        let name = job.name.clone();
        if self.store.call(move |s| s.run_by_key(&name, instant)).await?.is_none()
            && let Some(policy) = job.queue
        {
            let take = QueueTake { limit: policy.max_items, sync_only: false };
            self.create_flush_run(job, (instant, deadline_at), take, "schedule").await?;
        }
        self.start_run(job, instant, deadline_at).await
    }

    /// Makes one run of the waiting items `take` names, then prepares it;
    /// false when nothing was waiting after all. The run is created with
    /// its items in one transaction; preparing it renders and stores their
    /// requests (a crash in between prepares it again on the next tick).
    async fn flush(&self, job: &Job, take: QueueTake, reason: FlushReason) -> Result<bool, EngineError> {
        let now = self.clock.now();
        let name = job.name.clone();
        let instant = self.store.call(move |s| s.next_queue_instant(&name, now)).await?;
        let slot = (instant, job.deadline_at(instant));
        let Some(run) = self.create_flush_run(job, slot, take, reason.as_str()).await? else { return Ok(false) };
        if let Err(error) = self.start_run(job, run.scheduled_for, run.deadline_at).await {
            // The run exists with its items: the next tick prepares it again.
            tracing::error!(run = %run.run_key, %error, "the queue's run could not be prepared yet");
        }
        Ok(true)
    }

    /// Creates the run of `job` for `(instant, deadline_at)` with the waiting items `take` names.
    async fn create_flush_run(
        &self,
        job: &Job,
        (instant, deadline_at): (DateTime<Utc>, DateTime<Utc>),
        take: QueueTake,
        reason: &'static str,
    ) -> Result<Option<crate::store::RunRow>, EngineError> {
        let now = self.clock.now();
        let info = RunInfo::new(job, instant);
        let (name, tier, tags) = (job.name.clone(), job.manifest.tier.as_str(), job.manifest.tags.clone());
        let lane = if take.sync_only { "sync" } else { job.manifest.tier.lane().as_str() };
        let flushed = self
            .store
            .call(move |s| {
                let run = NewRun {
                    job: &name,
                    scheduled_for: instant,
                    run_key: &info.id,
                    tier,
                    deadline_at,
                    lane,
                    tags: &tags,
                };
                s.flush_queue(&run, take, reason, now)
            })
            .await?;
        let Some((run, items)) = flushed else { return Ok(None) };
        tracing::info!(run = %run.run_key, items, reason, lane, "queue flushed into a run");
        Ok(Some(run))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    const POLICY: QueuePolicy = QueuePolicy { max_items: 10, max_wait: Duration::from_secs(60) };

    fn waiting(waiting: u64, oldest: i64) -> QueueSummary {
        QueueSummary { waiting, sync_waiting: 0, oldest: Some(at(oldest)), flush_by: None }
    }

    #[test]
    fn a_queue_waits_until_it_is_full_or_its_oldest_item_waited_max_wait() {
        assert_eq!(due_flush(&waiting(9, 0), POLICY, at(59)), None);
        assert_eq!(next_flush(&waiting(9, 0), POLICY), Some(at(60)));
        let full = due_flush(&waiting(10, 0), POLICY, at(1)).unwrap();
        assert_eq!(full, (QueueTake { limit: 10, sync_only: false }, FlushReason::MaxItems));
        assert_eq!(due_flush(&waiting(1, 0), POLICY, at(60)).unwrap().1, FlushReason::MaxWait);
        assert_eq!(due_flush(&QueueSummary::default(), POLICY, at(600)), None);
        assert_eq!(next_flush(&QueueSummary::default(), POLICY), None);
    }

    #[test]
    fn an_items_deadline_or_short_latency_budget_flushes_early() {
        let urgent = QueueSummary { flush_by: Some(at(20)), ..waiting(2, 0) };
        assert_eq!(due_flush(&urgent, POLICY, at(19)), None);
        assert_eq!(next_flush(&urgent, POLICY), Some(at(20)));
        assert_eq!(due_flush(&urgent, POLICY, at(20)).unwrap().1, FlushReason::Deadline);
        let sync = QueueSummary { sync_waiting: 1, ..waiting(3, 0) };
        let (take, reason) = due_flush(&sync, POLICY, at(0)).unwrap();
        assert_eq!((take.sync_only, reason), (true, FlushReason::LatencyBudget));
    }
}
