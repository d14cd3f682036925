//! The batch lane: split, submit (intent first), reconcile, poll, ingest,
//! for every provider through its [`Client`]; what a batch holds and how
//! it is framed on the wire is the provider's business.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::pacer::Pacer;
use super::retry::{RetryPolicy, with_retries};
use crate::clock::Clock;
use crate::outcome::Outcome;
use crate::providers::{
    BatchInput, BatchPhase, BatchStatus, Client, ProviderError, Providers, RequestRows, ResultLine, ResultsReader,
};
use crate::store::{
    AnswerPrice, AnswerPricer, BatchPart, BatchRow, BatchState, IncomingResult, NewAttempt, ResultCounts, SharedStore,
    Store, StoreError, Waiting,
};

pub use crate::providers::BatchLimits;

/// Most result lines committed per transaction. A transaction rewrites
/// every index page its lines touch: when a transaction took only the lines
/// waiting (about 256), 100,000 results took 480 of them, and ingest ran at
/// 50,000 lines/s instead of 80,000 with 2,000 lines per transaction.
const INGEST_TRANSACTION: usize = 2000;
/// Lines handed to the writer at a time (about 1.5 KB each). A transaction
/// takes several chunks: what is in memory stays small while transactions
/// stay large. With 250, a 1,000-result ingest peaks 5% below a
/// 100,000-result one; chunks of 2,000 (one per transaction) ingested 15%
/// faster but peaked 49% apart, chunks of 500 13% apart.
const INGEST_CHUNK: usize = 250;
/// Chunks waiting for the writer; with the one it writes and the one being
/// gathered, at most three chunks are held in memory.
const INGEST_QUEUE: usize = 1;
/// Longest a received line waits for its chunk to fill, and longest the
/// writer holds a transaction open waiting for the next chunk: a slow
/// stream still commits as it goes, and never holds the write lock long.
const INGEST_GATHER: std::time::Duration = std::time::Duration::from_millis(250);
/// Longest backpressure waited out in one call to the batch endpoints.
const TENDING_BACKPRESSURE: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest wait for the batch endpoints' pace inside one call. The engine's
/// tick makes these calls for every run in turn: a longer wait (at a pace
/// slowed to one call a minute by an outage) would hold up every other
/// run's fallback, failover and delivery, so the call is left for the tick
/// that comes when the budget has room ([`BatchLane::budget_free_at`]).
pub const LONGEST_PACE_WAIT: std::time::Duration = TENDING_BACKPRESSURE;
/// Bytes of request rows read from the store per chunk of a create call.
const ROWS_CHUNK: usize = 64 * 1024;

/// Why the lane could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// The provider failed, after retries where retrying made sense.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The process is stopping: work in a blocking task was cut short.
    #[error("stopped: {0}")]
    Stopped(String),
    /// The batch endpoints' pace has no call to spare for longer than
    /// [`LONGEST_PACE_WAIT`]; no call was made.
    #[error("the {provider} batch endpoints are paced: the next call can go in {}s", .wait.as_secs_f64().ceil())]
    Paced {
        /// The provider.
        provider: String,
        /// How long until the budget has a call to spare.
        wait: std::time::Duration,
    },
}

/// Inside a retried call, a store failure (a busy or full disk) is tried
/// again like a transport error, and reported as what it is.
impl super::retry::Retryable for LaneError {
    fn is_retryable(&self) -> bool {
        match self {
            LaneError::Provider(error) => error.is_retryable(),
            LaneError::Store(_) | LaneError::Paced { .. } => true,
            LaneError::Stopped(_) => false,
        }
    }

    fn is_backpressure(&self) -> bool {
        LaneError::is_backpressure(self)
    }

    fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            LaneError::Provider(error) => error.retry_after(),
            LaneError::Paced { wait, .. } => Some(*wait),
            LaneError::Store(_) | LaneError::Stopped(_) => None,
        }
    }
}

impl LaneError {
    /// Whether the provider only asked us to slow down
    /// ([`ProviderError::is_backpressure`]), or our own pacing held the call back.
    pub fn is_backpressure(&self) -> bool {
        match self {
            LaneError::Provider(error) => error.is_backpressure(),
            LaneError::Paced { .. } => true,
            LaneError::Store(_) | LaneError::Stopped(_) => false,
        }
    }

    /// Whether the provider may have acted on a call that failed ([`ProviderError::may_have_taken_effect`]).
    pub fn may_have_taken_effect(&self) -> bool {
        matches!(self, LaneError::Provider(error) if error.may_have_taken_effect())
    }

    /// Whether the same work may succeed later.
    pub fn is_retryable(&self) -> bool {
        super::retry::Retryable::is_retryable(self)
    }
}

/// Splits `items` (each with its [`Waiting`] request) into batches within
/// `limits`, in order.
pub fn split_by<'a, T>(items: &'a [T], limits: BatchLimits, request: impl Fn(&'a T) -> &'a Waiting) -> Vec<Vec<&'a T>> {
    let envelope = |w: &Waiting| w.params_len + w.custom_id.len() + limits.envelope_bytes;
    let mut batches: Vec<Vec<&T>> = Vec::new();
    let mut bytes = usize::MAX;
    for item in items {
        let size = envelope(request(item));
        let full = batches.last().is_none_or(|b| b.len() >= limits.max_requests) || bytes + size > limits.max_bytes;
        if full {
            batches.push(Vec::new());
            bytes = 16;
        }
        batches.last_mut().expect("a batch was just pushed").push(item);
        bytes += size;
    }
    batches
}

/// Per provider, what the daemon's configuration sets instead of the
/// provider's published figures (`batch.requests_per_minute`,
/// `batch.max_queued_requests`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchPacing {
    /// Calls per minute across the batch endpoints.
    pub requests_per_minute: HashMap<String, u64>,
    /// Requests held in the provider's batch processing queue.
    pub max_queued_requests: HashMap<String, u64>,
}

/// What the batch lane knows of one provider's batch endpoints (for `/metrics`).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchEndpoints {
    /// The provider.
    pub provider: String,
    /// Requests its processing queue holds, where it counts them.
    pub queue_limit: Option<u64>,
    /// Calls per minute the endpoints are paced at now.
    pub pace_per_minute: f64,
}

/// One provider's client and the pacing of its batch endpoints.
struct ProviderLane {
    client: Client,
    /// Every batch-endpoint call of every run draws from this one budget.
    pacer: Pacer,
    /// Requests the provider's processing queue holds, if it counts them.
    queue_limit: Option<u64>,
}

/// The batch lanes of the process's provider accounts.
#[derive(Clone)]
pub struct BatchLane {
    providers: Arc<HashMap<&'static str, ProviderLane>>,
    store: SharedStore,
    clock: Arc<dyn Clock>,
    policy: RetryPolicy,
    /// Intents whose every create this process sent was refused before it
    /// could take effect (a 429, a 529, our own pacing): trying again needs
    /// no look at the provider's list first, which would spend the scarce
    /// budget of a storm on a call that cannot find anything.
    refused_cleanly: Arc<std::sync::Mutex<std::collections::HashSet<i64>>>,
    /// Prices successes as they are stored ([`BatchLane::priced_by`]).
    pricer: Option<AnswerPricer>,
}

impl BatchLane {
    /// A lane over `providers`' clients, recording in `store`, timed by `clock`.
    pub fn new(providers: Providers, store: SharedStore, clock: Arc<dyn Clock>) -> BatchLane {
        BatchLane::with_pacing(providers, store, clock, &BatchPacing::default())
    }

    /// [`BatchLane::new`] with the pace and queue limits `pacing` overrides.
    pub fn with_pacing(
        providers: Providers,
        store: SharedStore,
        clock: Arc<dyn Clock>,
        pacing: &BatchPacing,
    ) -> BatchLane {
        let now = clock.now();
        let lanes = providers
            .iter()
            .map(|client| {
                let name = client.provider();
                let per_minute =
                    pacing.requests_per_minute.get(name).copied().unwrap_or_else(|| client.batch_calls_per_minute());
                let queue_limit = pacing.max_queued_requests.get(name).copied().or(client.queued_requests_limit());
                let lane =
                    ProviderLane { client: client.clone(), pacer: Pacer::per_minute(per_minute, now), queue_limit };
                (name, lane)
            })
            .collect();
        BatchLane {
            providers: Arc::new(lanes),
            store,
            clock,
            // Every call (create, poll, list, cancel, results) waits out
            // backpressure only briefly: the engine tends the batch again on
            // a later tick, and a long wait here would hold up every other
            // run's work, fallback and failover included, while the
            // provider is down.
            policy: RetryPolicy { max_backpressure: TENDING_BACKPRESSURE, ..RetryPolicy::default() },
            refused_cleanly: Arc::default(),
            pricer: None,
        }
    }

    /// The most one batch of `provider` may hold; `None` without a client for it.
    pub fn limits(&self, provider: &str) -> Option<BatchLimits> {
        self.providers.get(provider).map(|lane| lane.client.batch_limits())
    }

    /// The most requests `provider`'s processing queue holds across all
    /// batches, if it counts them.
    pub fn queue_limit(&self, provider: &str) -> Option<u64> {
        self.providers.get(provider).and_then(|lane| lane.queue_limit)
    }

    /// When a call to `provider`'s batch endpoints could go without waiting
    /// (`now` while the budget has one to spare): what work that can wait
    /// asks before it spends the budget.
    pub fn budget_free_at(&self, provider: &str) -> DateTime<Utc> {
        let now = self.clock.now();
        self.providers.get(provider).map_or(now, |lane| lane.pacer.free_at(now))
    }

    /// The lane pricing each success whose answer names its model as it is
    /// stored; the others are priced afterwards (`cost::price_pending`).
    pub fn priced_by(mut self, pricer: AnswerPricer) -> BatchLane {
        self.pricer = Some(pricer);
        self
    }

    /// Each provider's queue limit and pace, by name.
    pub fn endpoints(&self) -> Vec<BatchEndpoints> {
        let mut endpoints: Vec<_> = self
            .providers
            .iter()
            .map(|(name, lane)| BatchEndpoints {
                provider: (*name).to_owned(),
                queue_limit: lane.queue_limit,
                pace_per_minute: lane.pacer.rate_per_minute(),
            })
            .collect();
        endpoints.sort_by(|a, b| a.provider.cmp(&b.provider));
        endpoints
    }

    fn lane(&self, provider: &str) -> Result<&ProviderLane, ProviderError> {
        self.providers.get(provider).ok_or_else(|| ProviderError::NoClient(provider.to_owned()))
    }

    /// Asks the provider to cancel a batch; what it finished stays billed and
    /// comes back in the results, the rest comes back `canceled`.
    pub async fn cancel(&self, batch: &BatchRow) -> Result<(), LaneError> {
        let Some(provider_id) = batch.provider_batch_id.clone() else {
            return Ok(());
        };
        let lane = self.lane(&batch.provider)?;
        let seen = with_retries(self.clock.as_ref(), self.policy, None, "cancel_batch", || {
            self.recorded(
                lane,
                "cancel_batch",
                Some(batch.run_id),
                Some(batch.id),
                lane.client.cancel_batch(&provider_id),
            )
        })
        .await?;
        self.record_seen(batch, &seen).await?;
        let now = self.clock.now();
        let detail = serde_json::json!({ "batch": batch.id, "provider_batch_id": provider_id });
        let batch_id = batch.id;
        self.store.call(move |s| s.mark_cancel_requested(batch_id, &detail, now)).await?;
        crate::failpoint::hit("after_cancel_requested");
        tracing::info!(batch = batch.id, provider_batch_id = %provider_id, "batch cancel requested");
        Ok(())
    }

    /// Waits for room in the rate limit of `lane`'s batch endpoints, if it
    /// comes within [`LONGEST_PACE_WAIT`]; else takes nothing from the
    /// budget and says how long the wait would be.
    async fn pace(&self, lane: &ProviderLane) -> Result<(), LaneError> {
        let now = self.clock.now();
        let wait = (lane.pacer.free_at(now) - now).to_std().unwrap_or_default();
        if wait > LONGEST_PACE_WAIT {
            return Err(LaneError::Paced { provider: lane.client.provider().to_owned(), wait });
        }
        let wait = lane.pacer.reserve(now);
        if !wait.is_zero() {
            self.clock.sleep(wait).await;
        }
        Ok(())
    }

    /// Submits `custom_ids` of `run_id` as one batch ([`Self::submit_shared`] with one part).
    pub async fn submit(
        &self,
        run_id: i64,
        provider: &str,
        custom_ids: Vec<String>,
        betas: &[String],
        give_up_at: Option<DateTime<Utc>>,
    ) -> Result<i64, LaneError> {
        self.submit_shared(provider, vec![BatchPart { run_id, custom_ids }], betas, give_up_at).await
    }

    /// Submits the requests of `parts` (of one or more runs) as one batch:
    /// the intent is committed first, the provider's id right after the
    /// create call returns. Retries stop at `give_up_at` (the batch would
    /// no longer help).
    pub async fn submit_shared(
        &self,
        provider: &str,
        parts: Vec<BatchPart>,
        betas: &[String],
        give_up_at: Option<DateTime<Utc>>,
    ) -> Result<i64, LaneError> {
        let lane = self.lane(provider)?;
        let now = self.clock.now();
        let name = lane.client.provider();
        let batch = self.store.call(move |s| s.record_shared_batch_intent(name, &parts, now)).await?;
        crate::failpoint::hit("after_intent");
        self.create(&batch, betas, give_up_at).await?;
        Ok(batch.id)
    }

    /// Sends the create call for a batch whose intent is committed, and commits the id.
    async fn create(
        &self,
        batch: &BatchRow,
        betas: &[String],
        give_up_at: Option<DateTime<Utc>>,
    ) -> Result<(), LaneError> {
        let lane = self.lane(&batch.provider)?;
        let (batch_id, run_id) = (batch.id, batch.run_id);
        let input = self.input(batch).await?;
        // A failed create may still have created the batch (its answer was
        // lost): before sending again, look for it, so it is never created
        // twice. Once a try may have taken effect, every later try looks
        // first, even after a 429 in between.
        let maybe_created = std::sync::atomic::AtomicBool::new(false);
        let created = with_retries(self.clock.as_ref(), self.policy, give_up_at, "create_batch", || async {
            if maybe_created.load(std::sync::atomic::Ordering::Relaxed)
                && let Some(found) = self.created_for(batch_id).await?
            {
                tracing::info!(batch = batch_id, provider_batch_id = %found.id, "adopted the batch a failed create made");
                return Ok(found);
            }
            let sent = self.recorded(lane, "create_batch", Some(run_id), Some(batch_id), lane.client.create_batch(&input, betas));
            let result = sent.await;
            if result.as_ref().err().is_some_and(LaneError::may_have_taken_effect) {
                maybe_created.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            result
        })
        .await;
        self.note_refusal(batch_id, created.is_err() && !maybe_created.into_inner());
        let created = match created {
            Ok(created) => created,
            Err(error) => {
                if !error.is_retryable() {
                    let reason = format!("batch create refused: {error}");
                    let now = self.clock.now();
                    self.store.call(move |s| s.abandon_batch(batch_id, &reason, now)).await?;
                }
                return Err(error);
            }
        };
        crate::failpoint::hit("after_create");
        let now = self.clock.now();
        let id = created.id.clone();
        self.store.call(move |s| s.mark_batch_submitted(batch_id, &id, now)).await?;
        tracing::info!(batch = batch_id, provider_batch_id = %created.id, "batch submitted");
        Ok(())
    }

    /// The create call's input for `batch`: its requests read from the
    /// store for each try, their sizes summed ahead.
    async fn input(&self, batch: &BatchRow) -> Result<BatchInput, LaneError> {
        let batch_id = batch.id;
        let size = self.store.call(move |s| s.batch_payload_size(batch_id)).await?;
        let db = self.store.path().to_owned();
        Ok(BatchInput {
            tag: batch_tag(batch),
            count: size.requests,
            custom_id_bytes: size.custom_id_bytes,
            params_bytes: size.params_bytes,
            rows: Box::new(move || request_rows(db.clone(), batch_id)),
        })
    }

    /// Settles a batch left `submitting` by a crash or a failed create:
    /// adopts the provider's batch created for it if there is one, else
    /// submits it again when `may_create`, else (unless `keep_looking`, when
    /// it looks again later) abandons it: its requests went to the sync lane.
    pub async fn reconcile(
        &self,
        batch: &BatchRow,
        betas: &[String],
        give_up_at: Option<DateTime<Utc>>,
        may_create: bool,
        keep_looking: bool,
    ) -> Result<(), LaneError> {
        let looked = if self.was_refused_cleanly(batch.id) { None } else { self.find_created(batch).await? };
        if let Some(found) = looked {
            let now = self.clock.now();
            let (batch_id, id) = (batch.id, found.id.clone());
            self.store.call(move |s| s.mark_batch_submitted(batch_id, &id, now)).await?;
            tracing::info!(batch = batch.id, provider_batch_id = %found.id, "adopted batch created before a restart");
            let detail = serde_json::json!({ "batch": batch.id, "provider_batch_id": found.id });
            let run_id = batch.run_id;
            self.store.call(move |s| s.record_event(Some(run_id), None, "batch_adopted", &detail, now)).await?;
            return Ok(());
        }
        if !may_create && keep_looking {
            return Ok(());
        }
        if !may_create {
            let (batch_id, now) = (batch.id, self.clock.now());
            let reason = "never created; its requests went to the sync lane";
            self.store.call(move |s| s.abandon_batch(batch_id, reason, now)).await?;
            return Ok(());
        }
        tracing::info!(batch = batch.id, "no provider batch matches the intent: submitting it again");
        self.create(batch, betas, give_up_at).await
    }

    /// Remembers whether the last create of `batch_id` was refused before
    /// it could take effect.
    fn note_refusal(&self, batch_id: i64, cleanly: bool) {
        let mut refused = self.refused_cleanly.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match cleanly {
            true => refused.insert(batch_id),
            false => refused.remove(&batch_id),
        };
    }

    fn was_refused_cleanly(&self, batch_id: i64) -> bool {
        self.refused_cleanly.lock().unwrap_or_else(std::sync::PoisonError::into_inner).contains(&batch_id)
    }

    /// [`Self::find_created`] for the batch with database id `batch_id`, as a provider call.
    async fn created_for(&self, batch_id: i64) -> Result<Option<BatchStatus>, LaneError> {
        let Some(batch) = self.store.call(move |s| s.batch(batch_id)).await? else { return Ok(None) };
        self.find_created(&batch).await
    }

    /// The provider batch created for `batch`. A provider that keeps the
    /// create call's tag names it exactly. Otherwise: the oldest one with
    /// the same request count, created no earlier than shortly before the
    /// intent, that is not already ours. There is no upper time bound: the
    /// provider's clock (or a time-scaled simulator's) may run ahead of ours.
    async fn find_created(&self, batch: &BatchRow) -> Result<Option<BatchStatus>, LaneError> {
        let lane = self.lane(&batch.provider)?;
        let by_tag = lane.client.keeps_tags();
        let (tag, earliest) = (batch_tag(batch), batch.intent_at - chrono::Duration::minutes(2));
        let mut cursor: Option<String> = None;
        let mut oldest_match: Option<BatchStatus> = None;
        loop {
            let after = cursor.clone();
            let page = with_retries(self.clock.as_ref(), self.policy, None, "list_batches", || {
                self.recorded(
                    lane,
                    "list_batches",
                    Some(batch.run_id),
                    Some(batch.id),
                    lane.client.list_batches(after.as_deref()),
                )
            })
            .await?;
            for candidate in &page.batches {
                if by_tag && candidate.tag.as_deref() == Some(tag.as_str()) {
                    return Ok(Some(candidate.clone()));
                }
                let recent = candidate.created_at.is_some_and(|t| t >= earliest);
                let id = candidate.id.clone();
                if !by_tag
                    && recent
                    && candidate.request_count == Some(batch.request_count)
                    && !self.store.call(move |s| s.knows_provider_batch(&id)).await?
                {
                    // Pages are newest first: the last match seen is the oldest.
                    oldest_match = Some(candidate.clone());
                }
            }
            let reached_older = page.batches.last().and_then(|b| b.created_at).is_none_or(|t| t < earliest);
            match page.next {
                Some(next) if !reached_older => cursor = Some(next),
                _ => return Ok(oldest_match),
            }
        }
    }

    /// Polls a submitted batch and records what it saw; true once it has ended.
    pub async fn poll(&self, batch: &BatchRow) -> Result<bool, LaneError> {
        let Some(provider_id) = batch.provider_batch_id.clone() else {
            return Ok(false);
        };
        let lane = self.lane(&batch.provider)?;
        let seen = with_retries(self.clock.as_ref(), self.policy, None, "retrieve_batch", || {
            self.recorded(
                lane,
                "retrieve_batch",
                Some(batch.run_id),
                Some(batch.id),
                lane.client.retrieve_batch(&provider_id),
            )
        })
        .await?;
        let state = self.record_seen(batch, &seen).await?;
        Ok(state == BatchState::Ended && seen.results.is_some())
    }

    /// Stores what the provider said about a batch (retrieve or cancel answer).
    async fn record_seen(&self, batch: &BatchRow, seen: &BatchStatus) -> Result<BatchState, LaneError> {
        let state = match seen.phase {
            BatchPhase::Ended => BatchState::Ended,
            BatchPhase::Canceling => BatchState::Canceling,
            BatchPhase::InProgress => BatchState::InProgress,
        };
        let (now, batch_id, url, ended_at) = (self.clock.now(), batch.id, seen.results.clone(), seen.ended_at);
        self.store.call(move |s| s.update_batch_status(batch_id, state, ended_at, url.as_deref(), now)).await?;
        Ok(state)
    }

    /// Streams an ended batch's results into the store, a chunk per
    /// transaction, settles the requests they answer, then marks the batch
    /// ingested. Safe to repeat after a crash at any point.
    pub async fn ingest(&self, batch: &BatchRow) -> Result<ResultCounts, LaneError> {
        let url = match batch.results_url.clone() {
            Some(url) => url,
            None => return Ok(ResultCounts::default()),
        };
        let lane = self.lane(&batch.provider)?;
        let streamed = with_retries(self.clock.as_ref(), self.policy, None, "ingest_results", || {
            self.recorded(lane, "results", Some(batch.run_id), Some(batch.id), self.ingest_once(lane, batch.id, &url))
        })
        .await;
        let mut counts = match streamed {
            Ok(counts) => counts,
            // Results that can never be read (a 404 once they expired after 29
            // days, a refused key): what was stored stays, and every request
            // without a result is retryable instead of in flight forever.
            Err(error) if !error.is_retryable() => {
                tracing::error!(batch = batch.id, %error, "the batch's results cannot be read; its requests without a result are retried");
                ResultCounts::default()
            }
            Err(error) => return Err(error),
        };
        let (now, batch_id) = (self.clock.now(), batch.id);
        tracing::debug!(batch = batch.id, stored = counts.stored, "batch results stored; settling their requests");
        counts.duplicates += self.store.call(move |s| s.settle_batch_results(batch_id, now)).await?;
        self.store.call(move |s| s.mark_results_ingested(batch_id, now)).await?;
        tracing::info!(batch = batch.id, stored = counts.stored, unknown = counts.unknown, "batch results ingested");
        Ok(counts)
    }

    /// Streams the results into the store: lines are read and parsed here,
    /// gathered into chunks, while a blocking thread with its own connection
    /// writes them, up to [`INGEST_TRANSACTION`] lines per transaction. Only
    /// a few chunks are held in memory, so the footprint is the same for
    /// 1,000 lines or 100,000.
    async fn ingest_once(&self, lane: &ProviderLane, batch_id: i64, url: &str) -> Result<ResultCounts, LaneError> {
        let mut reader = lane.client.results(url).await?;
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<Vec<IncomingResult>>(INGEST_QUEUE);
        let (db, now) = (self.store.path().to_owned(), self.clock.now());
        let writer = tokio::task::spawn_blocking(move || {
            let mut first_commit = true;
            let mut committed = || {
                if std::mem::take(&mut first_commit) {
                    crate::failpoint::hit("mid_ingest");
                }
            };
            Store::open(&db)
                .and_then(|mut store| {
                    store.store_batch_stream(batch_id, &mut receiver, INGEST_TRANSACTION, now, &mut committed)
                })
                .map_err(LaneError::Store)
        });
        let mut chunks = Gathering::new(sender, INGEST_GATHER);
        // Requests named by their input line (a failed validation) are looked
        // up in the batch's order, read only when a result needs it.
        let mut by_line: Option<Vec<String>> = None;
        let streamed = async {
            while let Some(line) = chunks.next_line(&mut reader).await? {
                match line {
                    Ok(mut parsed) => {
                        if let Some(line) = parsed.input_line {
                            if by_line.is_none() {
                                let ids = self.store.call(move |s| s.batch_custom_ids(batch_id)).await;
                                by_line = Some(ids?);
                            }
                            let ids = by_line.as_deref().unwrap_or_default();
                            let Some(id) = line.checked_sub(1).and_then(|i| ids.get(i as usize)) else {
                                tracing::warn!(
                                    batch = batch_id,
                                    line,
                                    "a result names an input line the batch does not have"
                                );
                                continue;
                            };
                            parsed.custom_id = id.clone();
                        }
                        let price = self.price(&parsed);
                        let incoming = IncomingResult { custom_id: parsed.custom_id, outcome: parsed.outcome, price };
                        // A closed queue means the writer failed: its error is returned below.
                        if !chunks.push(incoming).await {
                            break;
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(batch = batch_id, reason = %reason, "skipped an unreadable result line")
                    }
                }
            }
            chunks.send().await;
            Ok::<(), LaneError>(())
        }
        .await;
        // The writer commits what it has and stops once the queue is closed.
        drop(chunks);
        let stored = joined(writer.await);
        streamed?;
        stored
    }

    /// The price of a success whose answer names its model, if the lane prices.
    fn price(&self, line: &ResultLine) -> Option<AnswerPrice> {
        let (Some(pricer), Some(model)) = (&self.pricer, &line.model) else { return None };
        match &line.outcome {
            Outcome::Succeeded { usage, .. } => pricer(model, usage),
            _ => None,
        }
    }
}

/// Result lines gathered into chunks for the writer. A full chunk goes at
/// once and the writer's transaction stays open for the next one; when the
/// stream is slow ([`INGEST_GATHER`] after a chunk's first line, or after
/// the last chunk sent), what is gathered goes with an empty chunk behind
/// it, which tells the writer to commit.
struct Gathering {
    chunk: Vec<IncomingResult>,
    /// When to stop waiting for the stream: send what is gathered and commit.
    due: Option<tokio::time::Instant>,
    /// How long the stream may keep the writer waiting ([`INGEST_GATHER`]).
    patience: std::time::Duration,
    sender: tokio::sync::mpsc::Sender<Vec<IncomingResult>>,
    /// The writer has stopped (it failed): nothing more is sent.
    closed: bool,
}

impl Gathering {
    fn new(sender: tokio::sync::mpsc::Sender<Vec<IncomingResult>>, patience: std::time::Duration) -> Gathering {
        Gathering { chunk: Vec::with_capacity(INGEST_CHUNK), due: None, patience, sender, closed: false }
    }

    /// The next line of the stream; meanwhile, if waiting for it falls due,
    /// what is gathered goes to the writer and its transaction is committed.
    async fn next_line(
        &mut self,
        reader: &mut ResultsReader,
    ) -> Result<Option<Result<ResultLine, String>>, ProviderError> {
        let next = reader.next();
        tokio::pin!(next);
        loop {
            let Some(due) = self.due else { return next.await };
            tokio::select! {
                // A line that is there already wins over the timer: only a
                // stream that keeps the writer waiting is a stalled one.
                biased;
                line = &mut next => return line,
                () = tokio::time::sleep_until(due) => self.commit().await,
            }
        }
    }

    /// Adds a line, sending the chunk once it is full; false once the
    /// writer has stopped.
    async fn push(&mut self, line: IncomingResult) -> bool {
        if self.due.is_none() {
            self.due = Some(tokio::time::Instant::now() + self.patience);
        }
        self.chunk.push(line);
        if self.chunk.len() >= INGEST_CHUNK {
            self.send().await;
            self.due = Some(tokio::time::Instant::now() + self.patience);
        }
        !self.closed
    }

    /// Sends what is gathered and asks the writer to commit.
    async fn commit(&mut self) {
        self.send().await;
        self.send_chunk(Vec::new()).await;
        self.due = None;
    }

    /// Sends what is gathered, if anything.
    async fn send(&mut self) {
        if !self.chunk.is_empty() {
            let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(INGEST_CHUNK));
            self.send_chunk(chunk).await;
        }
    }

    async fn send_chunk(&mut self, chunk: Vec<IncomingResult>) {
        if !self.closed {
            self.closed = self.sender.send(chunk).await.is_err();
        }
    }
}

/// The outcome of a spawned commit; a panic in it is passed on.
fn joined(result: Result<Result<ResultCounts, LaneError>, tokio::task::JoinError>) -> Result<ResultCounts, LaneError> {
    match result {
        Ok(counts) => counts,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        // Only a runtime shutting down cancels a blocking task.
        Err(error) => Err(LaneError::Stopped(format!("a commit of results did not finish: {error}"))),
    }
}

impl BatchLane {
    /// Awaits one provider call and appends it to the attempts log.
    async fn recorded<T, E, Fut>(
        &self,
        lane: &ProviderLane,
        operation: &'static str,
        run_id: Option<i64>,
        batch_id: Option<i64>,
        call: Fut,
    ) -> Result<T, LaneError>
    where
        E: Into<LaneError>,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        // Held back by our own pacing, no call is made, and none is logged.
        self.pace(lane).await?;
        let started_at = self.clock.now();
        let result = call.await.map_err(Into::into);
        match &result {
            Err(error) if error.is_backpressure() => lane.pacer.pushed_back(self.clock.now()),
            Err(_) => {}
            Ok(_) => lane.pacer.went_through(self.clock.now()),
        }
        let started = NewAttempt::started("batch", operation, started_at);
        let started = NewAttempt { run_id, batch_id, ..started };
        let attempt = match &result {
            Ok(_) => super::ended_attempt(started, self.clock.now(), None, None),
            Err(LaneError::Provider(error)) => super::ended_attempt(started, self.clock.now(), Some(error), None),
            // Our own disk failed during the call, or the process is stopping:
            // logged as what it is, not as a provider error.
            Err(error) => NewAttempt {
                finished_at: self.clock.now(),
                error_type: Some(
                    if matches!(error, LaneError::Store(_)) { "state_database" } else { "stopped" }.to_owned(),
                ),
                error_message: Some(error.to_string()),
                ..started
            },
        };
        if let Err(error) = self.store.call(move |s| s.record_attempt(&attempt)).await {
            // The call itself happened; losing its log line must not stop the run.
            tracing::warn!(operation, error = %error, "could not record a provider call");
        }
        result
    }
}

/// The tag a create call carries: the batch row's id, unique in this state database.
fn batch_tag(batch: &BatchRow) -> String {
    format!("orchestrator-batch-{}", batch.id)
}

/// The batch's request rows, read on a blocking thread from a separate
/// connection (WAL lets it read while the writer works) in chunks, so a
/// 256 MB batch is never held in memory.
fn request_rows(db: std::path::PathBuf, batch_id: i64) -> RequestRows {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Vec<(String, String)>, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let failed = |e: StoreError| std::io::Error::other(e.to_string());
        let (mut chunk, mut bytes) = (Vec::new(), 0);
        let result = Store::open(&db).map_err(failed).and_then(|store| {
            store
                .for_each_batch_request(batch_id, |custom_id, params| {
                    bytes += custom_id.len() + params.len();
                    chunk.push((custom_id.to_owned(), params.to_owned()));
                    if bytes >= ROWS_CHUNK {
                        bytes = 0;
                        let _ = sender.blocking_send(Ok(std::mem::take(&mut chunk)));
                    }
                })
                .map_err(failed)
        });
        let _ = sender.blocking_send(result.map(|()| chunk));
    });
    Box::pin(futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: usize, len: usize) -> Vec<Waiting> {
        (0..n).map(|i| Waiting { custom_id: format!("job-2026-11-22-{i:03}"), params_len: len, retry: false }).collect()
    }

    #[test]
    fn splits_by_request_count_and_by_bytes() {
        let limits = BatchLimits { max_requests: 3, max_bytes: 1_000_000, envelope_bytes: 32 };
        let sizes: Vec<usize> = split_by(&waiting(7, 100), limits, |w| w).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let by_bytes = BatchLimits { max_requests: 100, max_bytes: 500, envelope_bytes: 32 };
        let sizes: Vec<usize> = split_by(&waiting(5, 150), by_bytes, |w| w).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(split_by(&[], limits, |w: &Waiting| w).is_empty());
    }

    fn incoming(line: ResultLine) -> IncomingResult {
        IncomingResult { custom_id: line.custom_id, outcome: line.outcome, price: None }
    }

    /// Each line of the made-up downloads below is its own custom_id.
    fn named(line: &str) -> Result<ResultLine, String> {
        Ok(ResultLine { custom_id: line.to_owned(), input_line: None, outcome: Outcome::Expired, model: None })
    }

    #[tokio::test]
    async fn a_full_chunk_goes_to_the_writer_at_once_and_the_rest_at_the_end() {
        let lines = (0..INGEST_CHUNK * 2 + 3).map(|i| named(&format!("r{i}")).unwrap()).collect();
        let mut reader = ResultsReader::new().known(lines);
        let (sender, mut receiver) = tokio::sync::mpsc::channel(INGEST_QUEUE);
        // Patient enough that a slow machine never makes this a stalled stream.
        let mut chunks = Gathering::new(sender, std::time::Duration::from_secs(3600));
        let mut lengths = Vec::new();
        while let Some(line) = chunks.next_line(&mut reader).await.unwrap() {
            assert!(chunks.push(incoming(line.unwrap())).await);
            if let Ok(chunk) = receiver.try_recv() {
                lengths.push(chunk.len());
            }
        }
        chunks.send().await;
        drop(chunks);
        while let Some(chunk) = receiver.recv().await {
            lengths.push(chunk.len());
        }
        assert_eq!(lengths, [INGEST_CHUNK, INGEST_CHUNK, 3], "no commit asked for: the stream never stalled");
    }

    #[tokio::test]
    async fn a_stalled_stream_hands_over_what_it_has_gathered_and_commits_while_the_next_line_is_awaited() {
        let first = futures_util::stream::iter([Ok(bytes::Bytes::from_static(b"a\nb\n"))]);
        let stalled = futures_util::StreamExt::chain(first, futures_util::stream::pending());
        let mut reader = ResultsReader::new().lines(crate::providers::LineStream::from_chunks(stalled), named);
        let (sender, mut receiver) = tokio::sync::mpsc::channel(INGEST_QUEUE);
        let mut chunks = Gathering::new(sender, INGEST_GATHER);
        for _ in 0..2 {
            let line = chunks.next_line(&mut reader).await.unwrap().unwrap().unwrap();
            assert!(chunks.push(incoming(line)).await);
        }
        assert!(receiver.try_recv().is_err(), "two lines neither fill a chunk nor are due yet");
        let waiting = tokio::spawn(async move { chunks.next_line(&mut reader).await.map(|line| line.is_some()) });
        let patience = std::time::Duration::from_secs(30);
        let gathered = tokio::time::timeout(patience, receiver.recv()).await;
        let gathered = gathered.expect("the gathered lines go while the stream stalls").unwrap();
        let ids: Vec<String> = gathered.into_iter().map(|r| r.custom_id).collect();
        assert_eq!(ids, ["a", "b"]);
        let commit = tokio::time::timeout(patience, receiver.recv()).await.expect("a commit follows them").unwrap();
        assert!(commit.is_empty(), "an empty chunk asks the writer to commit");
        assert!(!waiting.is_finished(), "the next line is still awaited");
        waiting.abort();
    }
}
