//! The run driver: the engine's state and its tick. A tick tends every
//! active batch ([`super::poll`]), then moves every open run on: prepares
//! what a crash cut off, keeps its fallback plan and hands work to the lanes
//! ([`super::fallback`]), delivers results (retrying a failing sink), records
//! a missed deadline and closes runs that are done. It returns when it next
//! needs to look, so callers sleep on the injected clock in between.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::deliver::deliver_pending;
use super::finish::finish_if_done;
use super::poll::PollPlan;
use super::prepare::{PrepareError, RunSlot, prepare_run};
use super::{EngineError, EngineSettings, RunOutcome};
use crate::clock::{Clock, span};
use crate::cost::Pricer;
use crate::job::Job;
use crate::lanes::{BatchLane, SyncLane};
use crate::render::RunInfo;
use crate::store::{RunRow, RunState, SharedStore, TokenAverages};

/// The engine of one process.
pub struct Engine {
    pub(super) store: SharedStore,
    pub(super) batch: BatchLane,
    pub(super) sync: SyncLane,
    pub(super) clock: Arc<dyn Clock>,
    pub(super) settings: EngineSettings,
    jobs: RwLock<Arc<BTreeMap<String, Job>>>,
    /// When to look at each active batch next ([`super::poll`]).
    pub(super) polls: Mutex<HashMap<i64, PollPlan>>,
    /// Token averages per open run: reading every request body on every
    /// tick would cost more than the plan is worth, and they hardly move.
    pub(super) averages: Mutex<HashMap<i64, TokenAverages>>,
    /// Prices results as they arrive, for reports and budgets.
    pub(super) pricer: Pricer,
    /// When to try delivering again, per run whose sink failed.
    delivery_retries: Mutex<HashMap<i64, PollPlan>>,
    /// Woken when items are posted to a queue ([`super::queue`]).
    pub(super) queue_posted: tokio::sync::Notify,
}

impl Engine {
    /// An engine over the lanes, with `jobs` as the known manifests.
    pub fn new(
        store: SharedStore,
        batch: BatchLane,
        sync: SyncLane,
        clock: Arc<dyn Clock>,
        settings: EngineSettings,
        jobs: Vec<Job>,
    ) -> Engine {
        let pricer = Pricer::new(settings.catalog.clone());
        let engine = Engine {
            batch: batch.priced_by(pricer.answer_pricer()),
            pricer,
            store,
            sync,
            clock,
            settings,
            jobs: RwLock::new(Arc::default()),
            polls: Mutex::new(HashMap::new()),
            averages: Mutex::new(HashMap::new()),
            delivery_retries: Mutex::new(HashMap::new()),
            queue_posted: tokio::sync::Notify::new(),
        };
        engine.set_jobs(jobs);
        engine
    }

    /// Replaces the known manifests (a reload). Open runs of a job that
    /// disappeared wait until it comes back.
    pub fn set_jobs(&self, jobs: Vec<Job>) {
        let map = jobs.into_iter().map(|job| (job.name.clone(), job)).collect();
        *self.jobs.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
    }

    /// The known manifests.
    pub fn jobs(&self) -> Arc<BTreeMap<String, Job>> {
        Arc::clone(&self.jobs.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The state database.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// How the engine works.
    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    /// The sync lane.
    pub fn sync_lane(&self) -> &SyncLane {
        &self.sync
    }

    /// Each provider's batch endpoints as the batch lane paces them.
    pub fn batch_endpoints(&self) -> Vec<crate::lanes::batch::BatchEndpoints> {
        self.batch.endpoints()
    }

    /// Creates (or resumes) the run of `job` for `scheduled_for` with its
    /// deadline at `deadline_at`, rendering and storing its requests.
    pub async fn start_run(
        &self,
        job: &Job,
        scheduled_for: DateTime<Utc>,
        deadline_at: DateTime<Utc>,
    ) -> Result<RunRow, EngineError> {
        let info = RunInfo::new(job, scheduled_for);
        let slot = RunSlot { scheduled_for, deadline_at };
        Ok(prepare_run(&self.store, job, &info, slot, &self.settings, &self.pricer, self.clock.now()).await?)
    }

    /// One pass over the active batches and open runs (of `only`, or all);
    /// returns when the engine next needs a tick.
    pub async fn tick(&self, only: Option<i64>) -> Result<DateTime<Utc>, EngineError> {
        let mut wake = self.clock.now() + span(self.settings.idle_tick);
        // The batch endpoints' budget goes first to what protects a
        // deadline, then to creates, then to routine polls.
        let (urgent, routine) = self.due_batches(only, &mut wake).await?;
        for tending in &urgent {
            if let Some(free_at) = self.held_by_pace(&tending.batch.provider, false) {
                self.defer_poll(tending.batch.id, free_at);
                wake = wake.min(free_at);
                continue;
            }
            wake = wake.min(self.tend_batch(tending).await?);
        }
        let runs = match only {
            Some(id) => self.store.call(move |s| s.run(id)).await?.into_iter().collect(),
            None => self.store.call(|s| s.open_runs()).await?,
        };
        let open: Vec<RunRow> = runs.into_iter().filter(|run| run.state == RunState::Open).collect();
        if only.is_none() {
            self.averages
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|id, _| open.iter().any(|r| r.id == *id));
        }
        let mut ready = Vec::new();
        for run in open {
            wake = wake.min(self.tend_run(run, &mut ready).await?);
        }
        // Driving one run, there is no one to gather with.
        let window = if only.is_some() { Duration::ZERO } else { self.settings.gather_window };
        wake = wake.min(self.submit_ready(ready, window).await?);
        wake = wake.min(self.tend_routine(routine).await?);
        // Batches submitted or canceled during this tick are due for a poll,
        // and so is one without a plan yet (an intent whose create was pushed
        // back); plans of batches that are no longer active are dropped.
        let active: Vec<i64> = self.store.call(move |s| s.active_batches(only)).await?.iter().map(|b| b.id).collect();
        let mut polls = self.polls();
        if only.is_none() {
            polls.retain(|id, _| active.contains(id));
        }
        let now = self.clock.now();
        Ok(active.iter().map(|id| polls.get(id).map_or(now, |plan| plan.next_at)).fold(wake, DateTime::min))
    }

    /// Ticks until the run is closed; returns its outcome.
    /// `on_tick` sees the run after every tick (a progress display).
    pub async fn drive(
        &self,
        run_id: i64,
        mut on_tick: impl AsyncFnMut(&RunRow) -> Result<(), EngineError>,
    ) -> Result<RunOutcome, EngineError> {
        let _presence = self.clock.enter();
        loop {
            let wake = self.tick(Some(run_id)).await?;
            let run = self.store.call(move |s| s.run(run_id)).await?.expect("a driven run exists");
            on_tick(&run).await?;
            if run.state != RunState::Open {
                return self.outcome(run_id).await;
            }
            self.clock.sleep(until(self.clock.now(), wake)).await;
        }
    }

    /// What a run amounts to so far (final once it is closed).
    pub async fn outcome(&self, run_id: i64) -> Result<RunOutcome, EngineError> {
        let run = self.store.call(move |s| s.run(run_id)).await?.expect("the run exists");
        super::finish::outcome(&self.store, &run).await
    }

    /// Stops the sync lane from taking new work (shutdown).
    pub fn stop(&self) {
        self.sync.stop();
    }

    /// Lets the sync lane take work again after [`Engine::stop`].
    pub fn resume(&self) {
        self.sync.resume();
    }

    /// Polls batches that are not urgent: the first one may wait a moment
    /// for the batch endpoints' pace, the others go only while it has a
    /// call to spare, so neither creates nor polls can starve the other.
    async fn tend_routine(&self, routine: Vec<super::poll::Tending>) -> Result<DateTime<Utc>, EngineError> {
        let mut wake = self.clock.now() + span(self.settings.idle_tick);
        let mut polled_one = false;
        for tending in routine {
            if let Some(free_at) = self.held_by_pace(&tending.batch.provider, polled_one) {
                self.defer_poll(tending.batch.id, free_at);
                wake = wake.min(free_at);
                continue;
            }
            polled_one = true;
            wake = wake.min(self.tend_batch(&tending).await?);
        }
        Ok(wake)
    }

    /// When a call to `provider`'s batch endpoints should wait for their
    /// pace instead of going now: the first call of its kind in a tick
    /// (`spent_one` false) may wait a moment
    /// ([`LONGEST_PACE_WAIT`](crate::lanes::batch::LONGEST_PACE_WAIT)),
    /// the others go only while the budget has one to spare. `None`: go.
    pub(super) fn held_by_pace(&self, provider: &str, spent_one: bool) -> Option<DateTime<Utc>> {
        let (now, free_at) = (self.clock.now(), self.batch.budget_free_at(provider));
        let patience = if spent_one { Duration::ZERO } else { crate::lanes::batch::LONGEST_PACE_WAIT };
        (free_at > now + span(patience)).then_some(free_at)
    }

    /// Moves one open run forward; returns when it next needs a tick.
    /// Requests waiting for a batch go into `ready`.
    async fn tend_run(&self, run: RunRow, ready: &mut Vec<super::gather::Ready>) -> Result<DateTime<Utc>, EngineError> {
        let Some(job) = self.jobs().get(&run.job).cloned() else {
            tracing::warn!(run = %run.run_key, "no manifest for this run's job any more; it waits for a reload");
            return Ok(self.clock.now() + span(self.settings.idle_tick));
        };
        if run.prepared_at.is_none() {
            return self.prepare_again(&job, &run).await;
        }
        let mut wake = self.clock.now() + span(self.settings.idle_tick);
        let run = if run.is_sync() { run } else { self.plan_batch_run(&job, run, &mut wake, ready).await? };
        let run = self.fail_over_if_down(&job, run).await?;
        if run.is_sync() {
            if self.settle_batches(&run).await? {
                let grace_end = run.fallback_started_at.map(|t| t + span(self.cancel_grace(&run)));
                wake = grace_end.map_or(wake, |end| wake.min(end));
            } else {
                self.feed_sync_lane(&job, &run).await?;
            }
            if self.sync.outstanding(run.id) > 0 {
                wake = wake.min(self.clock.now() + span(self.settings.sync_tick));
            }
        }
        if let Some(retry_at) = self.deliver(&job, &run).await? {
            return Ok(wake.min(retry_at));
        }
        self.note_if_late(&run).await?;
        let outstanding = self.sync.outstanding(run.id);
        finish_if_done(&self.store, &run, max_attempts(&job), outstanding, self.clock.now()).await?;
        Ok(wake)
    }

    /// Delivers the run's new results, unless an earlier failure's backoff
    /// has not run out. A failing sink is retried with a growing wait (the
    /// results stay stored, the run stays open, even past its deadline);
    /// returns when to try again while it fails.
    async fn deliver(&self, job: &Job, run: &RunRow) -> Result<Option<DateTime<Utc>>, EngineError> {
        let now = self.clock.now();
        if let Some(retry) = self.delivery_retries().get(&run.id).filter(|retry| retry.next_at > now) {
            return Ok(Some(retry.next_at));
        }
        let info = RunInfo::new(job, run.scheduled_for);
        let run_id = run.id;
        match deliver_pending(&self.store, job, &info, run_id, &self.pricer, now).await {
            Ok(_) => {
                if self.delivery_retries().remove(&run_id).is_some() || run.delivery_failing_since.is_some() {
                    tracing::info!(run = %run.run_key, "delivery works again");
                    self.store.call(move |s| s.clear_delivery_failure(run_id, now)).await?;
                }
                Ok(None)
            }
            Err(error) => {
                let wait = self
                    .delivery_retries()
                    .get(&run_id)
                    .map_or(DELIVERY_RETRY_FIRST, |r| (r.wait * 2).min(DELIVERY_RETRY_MAX));
                let next_at = now + span(wait);
                self.delivery_retries().insert(run_id, PollPlan { next_at, wait });
                tracing::warn!(run = %run.run_key, error = %error, retry_in_ms = wait.as_millis() as u64, "delivery failed; the results stay stored and are delivered once the sink works");
                let message = error.to_string();
                self.store.call(move |s| s.record_delivery_failure(run_id, &message, now)).await?;
                Ok(Some(next_at))
            }
        }
    }

    fn delivery_retries(&self) -> MutexGuard<'_, HashMap<i64, PollPlan>> {
        self.delivery_retries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records, once, that an open run passed its deadline: late, not
    /// abandoned; its retryable requests keep going until each is final.
    async fn note_if_late(&self, run: &RunRow) -> Result<(), EngineError> {
        let now = self.clock.now();
        if now <= run.deadline_at || run.deadline_missed_at.is_some() {
            return Ok(());
        }
        let run_id = run.id;
        let counts = self.store.call(move |s| s.request_counts(run_id)).await?;
        let open = counts["pending"] + counts["queued"] + counts["in_flight"] + counts["retryable_failed"];
        let detail = serde_json::json!({ "deadline_at": run.deadline_at.to_rfc3339(), "requests_not_final": open });
        if self.store.call(move |s| s.mark_deadline_missed(run_id, &detail, now)).await? {
            tracing::warn!(run = %run.run_key, requests_not_final = open, "missed its deadline: it keeps going until every request is final");
        }
        Ok(())
    }

    /// Finishes a run whose preparation was cut off (a crash between two
    /// chunks, a store error): nothing of it is sent until all of it is
    /// stored. A source that fails now closes the run as failed.
    async fn prepare_again(&self, job: &Job, run: &RunRow) -> Result<DateTime<Utc>, EngineError> {
        match self.start_run(job, run.scheduled_for, run.deadline_at).await {
            Ok(_) => Ok(self.clock.now()),
            Err(EngineError::Store(error) | EngineError::Prepare(PrepareError::Store(error))) => Err(error.into()),
            Err(error) => {
                tracing::error!(run = %run.run_key, %error, "run could not be prepared");
                Ok(self.clock.now() + span(self.settings.idle_tick))
            }
        }
    }
}

/// The scheduler starts runs through the engine.
impl crate::schedule::RunStarter for Engine {
    fn jobs(&self) -> Arc<BTreeMap<String, Job>> {
        Engine::jobs(self)
    }

    fn store(&self) -> &SharedStore {
        &self.store
    }

    fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    async fn start_run(
        &self,
        job: &Job,
        scheduled_for: DateTime<Utc>,
    ) -> Result<RunRow, Box<dyn std::error::Error + Send + Sync>> {
        if job.queue.is_some() {
            // A queue's scheduled instant flushes what waits into its run.
            return Ok(self.start_queue_run(job, scheduled_for, job.deadline_at(scheduled_for)).await?);
        }
        Ok(Engine::start_run(self, job, scheduled_for, job.deadline_at(scheduled_for)).await?)
    }
}

/// The wait until `wake`, at least a few milliseconds so no caller can spin.
pub fn until(now: DateTime<Utc>, wake: DateTime<Utc>) -> Duration {
    (wake - now).to_std().unwrap_or_default().max(MIN_SLEEP)
}

/// First wait before delivering again after a sink failed; it doubles.
const DELIVERY_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between deliveries to a failing sink.
const DELIVERY_RETRY_MAX: Duration = Duration::from_secs(300);

/// Shortest sleep between ticks.
const MIN_SLEEP: Duration = Duration::from_millis(10);
/// A job's `retry.max_attempts`, at least one.
pub(super) fn max_attempts(job: &Job) -> u32 {
    u32::try_from(job.manifest.retry.max_attempts.max(1)).unwrap_or(u32::MAX)
}
