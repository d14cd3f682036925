//! The engine: drives every open run and every active batch, one tick at a
//! time. A tick reconciles, polls and ingests batches (one poller for all
//! runs, paced by the batch endpoints' rate limit), keeps each run's
//! fallback plan, submits batches or hands work to the sync lane, delivers
//! results and closes runs that are done. It returns when it next needs to
//! look, so callers sleep on the injected clock in between.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::deliver::deliver_pending;
use super::finish::finish_if_done;
use super::prepare::{PrepareError, RunSlot, prepare_run};
use super::{EngineError, RunOutcome};
use crate::catalog::Catalog;
use crate::clock::{Clock, span};
use crate::cost::Pricer;
use crate::cost::budget::{self, Decision, Spend, Stage};
use crate::job::Job;
use crate::lanes::batch::split;
use crate::lanes::{BatchLane, BatchLimits, SyncLane, SyncLimits, SyncRequest};
use crate::manifest::Lane;
use crate::plan::{SyncLoad, batch_worthwhile, safety_margin, sync_estimate, takeover_at};
use crate::render::RunInfo;
use crate::store::{BatchRow, BatchState, RunRow, RunState, SharedStore, TokenAverages, Waiting};

/// How the engine works; defaults suit real providers.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Models and prices.
    pub catalog: Catalog,
    /// Provider limits per batch (a job's `max_batch_requests` lowers them).
    pub limits: BatchLimits,
    /// First wait between polls of a batch; it doubles while nothing changes.
    pub poll_initial: Duration,
    /// Longest wait between polls.
    pub poll_max: Duration,
    /// Longest safety margin kept before a deadline (a tenth of the window below that).
    pub max_safety_margin: Duration,
    /// Latency of a sync call to a model with no observed calls yet; `None`:
    /// the catalog's figure for the model.
    pub assumed_sync_latency: Option<Duration>,
    /// How long a batch takes before any of the provider's was seen to end;
    /// `None`: the catalog's `batch_turnaround` for the provider.
    pub assumed_batch_turnaround: Option<Duration>,
    /// Limits of the sync lane, per model.
    pub sync: SyncLimits,
    /// How often to look while the sync lane works for a run (to deliver its results).
    pub sync_tick: Duration,
    /// Longest wait between ticks when nothing is due.
    pub idle_tick: Duration,
    /// The monthly cap of all jobs together, in micro-dollars.
    pub global_budget: Option<crate::cost::Micros>,
}

impl EngineSettings {
    /// The default longest safety margin before a deadline.
    pub const DEFAULT_MAX_SAFETY_MARGIN: Duration = Duration::from_secs(600);

    /// Defaults for real providers.
    pub fn new(catalog: Catalog) -> EngineSettings {
        EngineSettings {
            catalog,
            limits: BatchLimits::default(),
            poll_initial: Duration::from_secs(10),
            poll_max: Duration::from_secs(300),
            max_safety_margin: Self::DEFAULT_MAX_SAFETY_MARGIN,
            assumed_sync_latency: None,
            assumed_batch_turnaround: None,
            sync: SyncLimits::default(),
            sync_tick: Duration::from_secs(1),
            idle_tick: Duration::from_secs(60),
            global_budget: None,
        }
    }
}

/// Latency assumed for a sync call when neither a measurement, nor the
/// configuration, nor the catalog says.
const DEFAULT_SYNC_LATENCY: Duration = Duration::from_secs(20);
/// Batch turnaround assumed when neither a measurement, nor the
/// configuration, nor the catalog says (the `W021` threshold).
pub const DEFAULT_BATCH_TURNAROUND: Duration = Duration::from_secs(600);

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

/// When to poll a batch next.
#[derive(Debug, Clone, Copy)]
struct PollPlan {
    next_at: DateTime<Utc>,
    wait: Duration,
}

/// The engine of one process.
pub struct Engine {
    store: SharedStore,
    batch: BatchLane,
    sync: SyncLane,
    clock: Arc<dyn Clock>,
    settings: EngineSettings,
    jobs: RwLock<Arc<BTreeMap<String, Job>>>,
    polls: Mutex<HashMap<i64, PollPlan>>,
    /// Token averages per open run: reading every request body on every
    /// tick would cost more than the plan is worth, and they hardly move.
    averages: Mutex<HashMap<i64, TokenAverages>>,
    /// Prices results as they arrive, for reports and budgets.
    pricer: Pricer,
    /// When to try delivering again, per run whose sink failed.
    delivery_retries: Mutex<HashMap<i64, PollPlan>>,
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
        let engine = Engine {
            pricer: Pricer::new(settings.catalog.clone()),
            store,
            batch,
            sync,
            clock,
            settings,
            jobs: RwLock::new(Arc::default()),
            polls: Mutex::new(HashMap::new()),
            averages: Mutex::new(HashMap::new()),
            delivery_retries: Mutex::new(HashMap::new()),
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
        for batch in self.store.call(move |s| s.active_batches(only)).await? {
            wake = wake.min(self.tend_batch(&batch).await?);
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
        for run in open {
            wake = wake.min(self.tend_run(run).await?);
        }
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

    /// Reconciles, polls or ingests one batch when due; returns when to look again.
    async fn tend_batch(&self, batch: &BatchRow) -> Result<DateTime<Utc>, EngineError> {
        let run_id = batch.run_id;
        let run = self.store.call(move |s| s.run(run_id)).await?.expect("a batch's run exists");
        let job = self.jobs().get(&run.job).cloned();
        let betas = job.as_ref().map(|j| j.manifest.betas.clone()).unwrap_or_default();
        // Every step waits for its plan, so a step that keeps failing (a
        // reconcile, an ingest) backs off like a poll instead of running each tick.
        let now = self.clock.now();
        let due = self.poll_plan(batch.id, now).next_at;
        if due > now {
            return Ok(due);
        }
        let result = match batch.state {
            BatchState::Submitting => {
                let may_create = run.state == RunState::Open && !run.is_sync();
                // A create that failed in a way that may have taken effect can
                // show up in the provider's list a little later: while the
                // fallback's grace lasts, keep looking instead of abandoning it.
                let keep_looking = run.is_sync() && self.awaiting_cancel(&run, now);
                let give_up_at = run.fallback_at.or(Some(run.deadline_at));
                self.batch.reconcile(batch, &betas, give_up_at, may_create, keep_looking).await
            }
            BatchState::InProgress | BatchState::Canceling => self.poll(batch, &run).await,
            // Ended without a results URL (none in the answer that said it
            // ended): ask again, or the batch would wait for it forever.
            BatchState::Ended if batch.results_url.is_none() => self.poll(batch, &run).await,
            BatchState::Ended | BatchState::Abandoned => self.batch.ingest(batch).await.map(drop),
        };
        match result {
            Err(error) => {
                tracing::warn!(batch = batch.id, run = %run.run_key, error = %error, "batch step failed; trying again later");
                self.reschedule_poll(batch.id, &run, false);
            }
            // An intent still looking for its batch looks again later, not on every tick.
            Ok(()) if batch.state == BatchState::Submitting => self.reschedule_poll(batch.id, &run, false),
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
    fn reschedule_poll(&self, batch_id: i64, run: &RunRow, changed: bool) {
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

    /// Polls `batch_id` again after `wait`.
    fn schedule_poll(&self, batch_id: i64, wait: Duration) {
        let plan = PollPlan { next_at: self.clock.now() + span(wait), wait };
        self.polls().insert(batch_id, plan);
    }

    fn polls(&self) -> MutexGuard<'_, HashMap<i64, PollPlan>> {
        self.polls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long after the fallback engaged the sync lane waits for the
    /// run's canceled batches to end, so what they finished is not paid twice.
    fn cancel_grace(&self, run: &RunRow) -> Duration {
        let margin = safety_margin(run.created_at, run.deadline_at, self.settings.max_safety_margin);
        (margin / 2).min(Duration::from_secs(120))
    }

    fn awaiting_cancel(&self, run: &RunRow, now: DateTime<Utc>) -> bool {
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

    /// Moves one open run forward; returns when it next needs a tick.
    async fn tend_run(&self, run: RunRow) -> Result<DateTime<Utc>, EngineError> {
        let Some(job) = self.jobs().get(&run.job).cloned() else {
            tracing::warn!(run = %run.run_key, "no manifest for this run's job any more; it waits for a reload");
            return Ok(self.clock.now() + span(self.settings.idle_tick));
        };
        if run.prepared_at.is_none() {
            return self.prepare_again(&job, &run).await;
        }
        let mut wake = self.clock.now() + span(self.settings.idle_tick);
        let run = if run.is_sync() { run } else { self.plan_batch_run(&job, run, &mut wake).await? };
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

    /// For a run on the batch lane: keeps its fallback plan, and either
    /// submits what waits or hands the rest to the sync lane.
    async fn plan_batch_run(&self, job: &Job, run: RunRow, wake: &mut DateTime<Utc>) -> Result<RunRow, EngineError> {
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
        } else if let Err(error) = self.submit_waiting(job, &run, &waiting, plan.takeover_at).await {
            let detail = serde_json::json!({ "error": error.to_string() });
            if error.is_backpressure() {
                // Not a failure of the batch lane: the intent stays, and the
                // create is tried again while the fallback plan stands.
                tracing::info!(run = %run.run_key, %error, "the batch endpoint pushes back; creating the batch later");
            } else if self.sync_allowed(job, &run).await? {
                self.start_fallback(&run, "batch_create_failed", detail).await?;
            } else {
                tracing::warn!(run = %run.run_key, %error, "batch create failed; the budget blocks the sync lane, so it is retried");
            }
        } else if plan.takeover_at > now {
            *wake = (*wake).min(plan.takeover_at);
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
    async fn token_averages(&self, run: &RunRow) -> Result<TokenAverages, EngineError> {
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
    async fn sync_allowed(&self, job: &Job, run: &RunRow) -> Result<bool, EngineError> {
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

    /// Submits the run's waiting requests in batches within the limits. A
    /// run the budget keeps off the sync lane still submits after its
    /// deadline: late beats lost. Backpressure on the create call is waited
    /// out until `takeover_at`, when the sync lane would take over anyway.
    async fn submit_waiting(
        &self,
        job: &Job,
        run: &RunRow,
        waiting: &[Waiting],
        takeover_at: DateTime<Utc>,
    ) -> Result<(), crate::lanes::batch::LaneError> {
        let now = self.clock.now();
        if (now >= run.deadline_at && run.sync_blocked.is_none()) || waiting.is_empty() {
            return Ok(());
        }
        let give_up_at = Some(takeover_at).filter(|at| *at > now && run.sync_blocked.is_none());
        let mut limits = self.settings.limits;
        if let Some(cap) = job.manifest.max_batch_requests {
            limits.max_requests = limits.max_requests.min(cap as usize);
        }
        for custom_ids in split(waiting, limits) {
            let batch_id = self.batch.submit(run.id, custom_ids, &job.manifest.betas, give_up_at).await?;
            self.schedule_poll(batch_id, self.settings.poll_initial);
        }
        Ok(())
    }

    /// Hands what is left of the run to the sync lane and cancels its batches.
    async fn start_fallback(&self, run: &RunRow, reason: &str, detail: serde_json::Value) -> Result<(), EngineError> {
        let (run_id, now, why) = (run.id, self.clock.now(), reason.to_owned());
        let mut detail = detail;
        detail["reason"] = serde_json::Value::from(reason);
        if !self.store.call(move |s| s.start_fallback(run_id, &why, &detail, now)).await? {
            return Ok(());
        }
        tracing::warn!(run = %run.run_key, reason, "fallback: what is left goes to the sync lane");
        Ok(())
    }

    /// For a run whose fallback engaged: cancels its batches still in
    /// progress; true while the sync lane should wait for them to end.
    async fn settle_batches(&self, run: &RunRow) -> Result<bool, EngineError> {
        if run.fallback_started_at.is_none() {
            return Ok(false);
        }
        let run_id = run.id;
        let now = self.clock.now();
        let mut settling = false;
        for batch in self.store.call(move |s| s.active_batches(Some(run_id))).await? {
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
    async fn feed_sync_lane(&self, job: &Job, run: &RunRow) -> Result<(), EngineError> {
        // While the lane still holds work of this run, reading unfinished
        // bodies again (each tick) would only find what it already has; the
        // next window, and retries, go out once it drains.
        if self.sync.outstanding(run.id) > 0 {
            return Ok(());
        }
        let (run_id, attempts) = (run.id, max_attempts(job));
        let candidates = self.store.call(move |s| s.sync_candidates(run_id, attempts, SYNC_WINDOW)).await?;
        let requests = candidates
            .into_iter()
            .map(|work| SyncRequest {
                run_id: run.id,
                custom_id: work.custom_id,
                params: sync_params(job, work.params),
                model: job.model_id.clone(),
                betas: job.manifest.betas.clone(),
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
        Ok(Engine::start_run(self, job, scheduled_for, job.deadline_at(scheduled_for)).await?)
    }
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
/// Requests handed to the sync lane at a time. Far more than its
/// concurrency, so the lane rarely idles while the next window is read.
const SYNC_WINDOW: usize = 2000;

fn max_attempts(job: &Job) -> u32 {
    u32::try_from(job.manifest.retry.max_attempts.max(1)).unwrap_or(u32::MAX)
}
