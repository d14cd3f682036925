//! The batch lane: split, submit (intent first), reconcile, poll, ingest.

use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};

use super::limiter::TokenBucket;
use super::retry::{RetryPolicy, with_retries};
use crate::clock::Clock;
use crate::outcome::Outcome;
use crate::providers::anthropic::{AnthropicClient, MessageBatch};
use crate::providers::{ProviderError, parse_result_line};
use crate::store::{BatchRow, BatchState, NewAttempt, ResultCounts, SharedStore, Store, StoreError, Waiting};

/// Most result lines committed per transaction.
const INGEST_CHUNK: usize = 4000;
/// Parsed result lines waiting for the writer (about 1.5 KB each).
const INGEST_QUEUE: usize = 256;
/// Bytes of request body sent per chunk of the streamed create call.
const BODY_CHUNK: usize = 64 * 1024;

/// The provider's limits on one batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    /// Requests per batch.
    pub max_requests: usize,
    /// Bytes of request body per batch.
    pub max_bytes: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        // Anthropic: 100,000 requests or 256 MB, whichever comes first.
        BatchLimits { max_requests: 100_000, max_bytes: 256 * 1024 * 1024 }
    }
}

/// Why the lane could not proceed.
#[derive(Debug, thiserror::Error)]
pub enum LaneError {
    /// The provider failed, after retries where retrying made sense.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl LaneError {
    /// Whether the provider only asked us to slow down ([`ProviderError::is_backpressure`]).
    pub fn is_backpressure(&self) -> bool {
        matches!(self, LaneError::Provider(error) if error.is_backpressure())
    }
}

/// Splits waiting requests into batches within `limits`, in order.
pub fn split(waiting: &[Waiting], limits: BatchLimits) -> Vec<Vec<String>> {
    let envelope = |w: &Waiting| w.params_len + w.custom_id.len() + 32;
    let mut batches: Vec<Vec<String>> = Vec::new();
    let mut bytes = usize::MAX;
    for request in waiting {
        let size = envelope(request);
        let full = batches.last().is_none_or(|b| b.len() >= limits.max_requests) || bytes + size > limits.max_bytes;
        if full {
            batches.push(Vec::new());
            bytes = 16;
        }
        batches.last_mut().expect("a batch was just pushed").push(request.custom_id.clone());
        bytes += size;
    }
    batches
}

/// Anthropic: 50 requests per minute across the batch endpoints, shared by every run.
pub const BATCH_REQUESTS_PER_MINUTE: u64 = 50;

/// The batch lane of one provider account.
#[derive(Clone)]
pub struct BatchLane {
    client: AnthropicClient,
    store: SharedStore,
    clock: Arc<dyn Clock>,
    policy: RetryPolicy,
    /// Every batch-endpoint call of every run draws from this one bucket.
    pacer: Arc<Mutex<TokenBucket>>,
}

impl BatchLane {
    /// A lane over `client`, recording in `store`, timed by `clock`.
    pub fn new(client: AnthropicClient, store: SharedStore, clock: Arc<dyn Clock>) -> BatchLane {
        let pacer = Arc::new(Mutex::new(TokenBucket::per_minute(BATCH_REQUESTS_PER_MINUTE, clock.now())));
        BatchLane { client, store, clock, policy: RetryPolicy::default(), pacer }
    }

    /// Asks the provider to cancel a batch; what it finished stays billed and
    /// comes back in the results, the rest comes back `canceled`.
    pub async fn cancel(&self, batch: &BatchRow) -> Result<(), LaneError> {
        let Some(provider_id) = batch.provider_batch_id.clone() else {
            return Ok(());
        };
        let seen = with_retries(self.clock.as_ref(), self.policy, None, "cancel_batch", || {
            self.recorded("cancel_batch", Some(batch.run_id), Some(batch.id), self.client.cancel_batch(&provider_id))
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

    /// Waits for room in the batch endpoints' rate limit.
    async fn pace(&self) {
        let wait = self.pacer.lock().unwrap_or_else(|p| p.into_inner()).reserve(1.0, self.clock.now());
        if !wait.is_zero() {
            self.clock.sleep(wait).await;
        }
    }

    /// Submits `custom_ids` of `run_id` as one batch: the intent is committed
    /// first, the provider's id right after the create call returns.
    /// Retries stop at `give_up_at` (the batch would no longer help).
    pub async fn submit(
        &self,
        run_id: i64,
        custom_ids: Vec<String>,
        betas: &[String],
        give_up_at: Option<DateTime<Utc>>,
    ) -> Result<i64, LaneError> {
        let now = self.clock.now();
        let batch = self.store.call(move |s| s.record_batch_intent(run_id, "anthropic", &custom_ids, now)).await?;
        crate::failpoint::hit("after_intent");
        self.create(run_id, batch.id, betas, give_up_at).await?;
        Ok(batch.id)
    }

    /// Sends the create call for a batch whose intent is committed, and commits the id.
    async fn create(
        &self,
        run_id: i64,
        batch_id: i64,
        betas: &[String],
        give_up_at: Option<DateTime<Utc>>,
    ) -> Result<(), LaneError> {
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
            let body = request_body(self.store.path().to_owned(), batch_id);
            let sent = self.recorded("create_batch", Some(run_id), Some(batch_id), self.client.create_batch(body, betas));
            let result = sent.await;
            if result.as_ref().err().is_some_and(ProviderError::may_have_taken_effect) {
                maybe_created.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            result
        })
        .await;
        let created = match created {
            Ok(created) => created,
            Err(error) => {
                if !error.is_retryable() {
                    let reason = format!("batch create refused: {error}");
                    let now = self.clock.now();
                    self.store.call(move |s| s.abandon_batch(batch_id, &reason, now)).await?;
                }
                return Err(error.into());
            }
        };
        crate::failpoint::hit("after_create");
        let now = self.clock.now();
        let id = created.id.clone();
        self.store.call(move |s| s.mark_batch_submitted(batch_id, &id, now)).await?;
        tracing::info!(batch = batch_id, provider_batch_id = %created.id, "batch submitted");
        Ok(())
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
        if let Some(found) = self.find_created(batch).await? {
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
        self.create(batch.run_id, batch.id, betas, give_up_at).await
    }

    /// [`Self::find_created`] for the batch with database id `batch_id`, as a provider call.
    async fn created_for(&self, batch_id: i64) -> Result<Option<MessageBatch>, ProviderError> {
        let in_store = |e: StoreError| ProviderError::Transport(format!("state database: {e}"));
        let batch = self.store.call(move |s| s.batch(batch_id)).await.map_err(in_store)?;
        let Some(batch) = batch else { return Ok(None) };
        self.find_created(&batch).await.map_err(|error| match error {
            LaneError::Provider(e) => e,
            LaneError::Store(e) => in_store(e),
        })
    }

    /// The provider batch created for `batch`: the oldest one with the same
    /// request count, created no earlier than shortly before the intent, that
    /// is not already ours. There is no upper time bound: the provider's clock
    /// (or a time-scaled simulator's) may run ahead of ours.
    async fn find_created(&self, batch: &BatchRow) -> Result<Option<MessageBatch>, LaneError> {
        let earliest = batch.intent_at - chrono::Duration::minutes(2);
        let created_at =
            |b: &MessageBatch| DateTime::parse_from_rfc3339(&b.created_at).ok().map(|t| t.with_timezone(&Utc));
        let mut after: Option<String> = None;
        let mut oldest_match: Option<MessageBatch> = None;
        loop {
            let cursor = after.clone();
            let page = with_retries(self.clock.as_ref(), self.policy, None, "list_batches", || {
                self.recorded(
                    "list_batches",
                    Some(batch.run_id),
                    Some(batch.id),
                    self.client.list_batches(cursor.as_deref(), 100),
                )
            })
            .await?;
            for candidate in &page.data {
                let recent = created_at(candidate).is_some_and(|t| t >= earliest);
                let id = candidate.id.clone();
                if recent
                    && candidate.total() == batch.request_count
                    && !self.store.call(move |s| s.knows_provider_batch(&id)).await?
                {
                    // Pages are newest first: the last match seen is the oldest.
                    oldest_match = Some(candidate.clone());
                }
            }
            let reached_older = page.data.last().and_then(created_at).is_none_or(|t| t < earliest);
            if !page.has_more || reached_older {
                return Ok(oldest_match);
            }
            after = page.last_id.or_else(|| page.data.last().map(|b| b.id.clone()));
        }
    }

    /// Polls a submitted batch and records what it saw; true once it has ended.
    pub async fn poll(&self, batch: &BatchRow) -> Result<bool, LaneError> {
        let Some(provider_id) = batch.provider_batch_id.clone() else {
            return Ok(false);
        };
        let seen = with_retries(self.clock.as_ref(), self.policy, None, "retrieve_batch", || {
            self.recorded(
                "retrieve_batch",
                Some(batch.run_id),
                Some(batch.id),
                self.client.retrieve_batch(&provider_id),
            )
        })
        .await?;
        let state = self.record_seen(batch, &seen).await?;
        Ok(state == BatchState::Ended && seen.results_url.is_some())
    }

    /// Stores what the provider said about a batch (retrieve or cancel answer).
    async fn record_seen(&self, batch: &BatchRow, seen: &MessageBatch) -> Result<BatchState, LaneError> {
        let state = match seen.processing_status.as_str() {
            "ended" => BatchState::Ended,
            "canceling" => BatchState::Canceling,
            _ => BatchState::InProgress,
        };
        let ended_at =
            seen.ended_at.as_deref().and_then(|t| DateTime::parse_from_rfc3339(t).ok()).map(|t| t.with_timezone(&Utc));
        let (now, batch_id, url) = (self.clock.now(), batch.id, seen.results_url.clone());
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
        let streamed = with_retries(self.clock.as_ref(), self.policy, None, "ingest_results", || {
            self.recorded("results", Some(batch.run_id), Some(batch.id), self.ingest_once(batch.id, &url))
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
            Err(error) => return Err(error.into()),
        };
        let (now, batch_id) = (self.clock.now(), batch.id);
        tracing::debug!(batch = batch.id, stored = counts.stored, "batch results stored; settling their requests");
        counts.duplicates += self.store.call(move |s| s.settle_batch_results(batch_id, now)).await?;
        self.store.call(move |s| s.mark_results_ingested(batch_id, now)).await?;
        tracing::info!(batch = batch.id, stored = counts.stored, unknown = counts.unknown, "batch results ingested");
        Ok(counts)
    }

    /// Streams the results into the store: lines are read and parsed here
    /// while a blocking thread with its own connection writes them, a few
    /// thousand per transaction. Only the queue between the two is held in
    /// memory, so the footprint is the same for a hundred lines or 100,000.
    async fn ingest_once(&self, batch_id: i64, url: &str) -> Result<ResultCounts, ProviderError> {
        let mut reader = self.client.results(url).await?;
        let (sender, mut receiver) = tokio::sync::mpsc::channel::<(String, Outcome)>(INGEST_QUEUE);
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
                    store.store_batch_stream(batch_id, &mut receiver, INGEST_CHUNK, now, &mut committed)
                })
                .map_err(|e| ProviderError::Transport(format!("state database: {e}")))
        });
        let streamed = async {
            while let Some(line) = reader.next_line().await? {
                match parse_result_line(&line) {
                    // A closed queue means the writer failed: its error is returned below.
                    Ok(parsed) => {
                        if sender.send((parsed.custom_id, parsed.outcome)).await.is_err() {
                            break;
                        }
                    }
                    Err(reason) => {
                        tracing::warn!(batch = batch_id, reason = %reason, "skipped an unreadable result line")
                    }
                }
            }
            Ok::<(), ProviderError>(())
        }
        .await;
        // The writer commits what it has and stops once the queue is closed.
        drop(sender);
        let stored = joined(writer.await);
        streamed?;
        stored
    }
}

/// The outcome of a spawned commit; a panic in it is passed on.
fn joined(
    result: Result<Result<ResultCounts, ProviderError>, tokio::task::JoinError>,
) -> Result<ResultCounts, ProviderError> {
    match result {
        Ok(counts) => counts,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => Err(ProviderError::Transport(format!("a commit of results did not finish: {error}"))),
    }
}

impl BatchLane {
    /// Awaits one provider call and appends it to the attempts log.
    async fn recorded<T, Fut>(
        &self,
        operation: &'static str,
        run_id: Option<i64>,
        batch_id: Option<i64>,
        call: Fut,
    ) -> Result<T, ProviderError>
    where
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        self.pace().await;
        let started_at = self.clock.now();
        let result = call.await;
        let started = NewAttempt::started("batch", operation, started_at);
        let started = NewAttempt { run_id, batch_id, ..started };
        let attempt = super::ended_attempt(started, self.clock.now(), &result, None);
        if let Err(error) = self.store.call(move |s| s.record_attempt(&attempt)).await {
            // The call itself happened; losing its log line must not stop the run.
            tracing::warn!(operation, error = %error, "could not record a provider call");
        }
        result
    }
}

/// The create body, streamed from a separate read connection (WAL lets it
/// read while the writer works) so a 256 MB batch is never held in memory.
fn request_body(db: std::path::PathBuf, batch_id: i64) -> reqwest::Body {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        let failed = |e: StoreError| std::io::Error::other(e.to_string());
        let mut buffer = BytesMut::with_capacity(BODY_CHUNK * 2);
        buffer.put_slice(b"{\"requests\":[");
        let mut first = true;
        let result = Store::open(&db).map_err(failed).and_then(|store| {
            store
                .for_each_batch_request(batch_id, |custom_id, params| {
                    if !std::mem::take(&mut first) {
                        buffer.put_u8(b',');
                    }
                    buffer.put_slice(b"{\"custom_id\":");
                    buffer.put_slice(serde_json::to_string(custom_id).expect("strings serialize").as_bytes());
                    buffer.put_slice(b",\"params\":");
                    buffer.put_slice(params.as_bytes());
                    buffer.put_u8(b'}');
                    if buffer.len() >= BODY_CHUNK {
                        let _ = sender.blocking_send(Ok(buffer.split().freeze()));
                    }
                })
                .map_err(failed)
        });
        match result {
            Ok(()) => {
                buffer.put_slice(b"]}");
                let _ = sender.blocking_send(Ok(buffer.freeze()));
            }
            Err(error) => {
                let _ = sender.blocking_send(Err(error));
            }
        }
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|item| (item, receiver))
    });
    reqwest::Body::wrap_stream(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(n: usize, len: usize) -> Vec<Waiting> {
        (0..n).map(|i| Waiting { custom_id: format!("job-2026-11-22-{i:03}"), params_len: len, retry: false }).collect()
    }

    #[test]
    fn splits_by_request_count_and_by_bytes() {
        let limits = BatchLimits { max_requests: 3, max_bytes: 1_000_000 };
        let sizes: Vec<usize> = split(&waiting(7, 100), limits).iter().map(Vec::len).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let by_bytes = BatchLimits { max_requests: 100, max_bytes: 500 };
        let sizes: Vec<usize> = split(&waiting(5, 150), by_bytes).iter().map(Vec::len).collect();
        assert_eq!(sizes, [2, 2, 1]);
        assert!(split(&[], limits).is_empty());
    }
}
