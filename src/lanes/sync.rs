//! The sync lane: the Messages API, one request at a time per worker, with
//! bounded concurrency and token buckets per model, retries with backoff,
//! and every call recorded as an attempt.
//!
//! Work is queued per model and taken by at most `concurrency` workers.
//! Idle workers exit instead of waiting, so a waiting worker never holds a
//! [`ManualClock`](crate::clock::ManualClock) still in tests.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::limiter::TokenBucket;
use super::retry::{RetryPolicy, with_retries};
use crate::clock::{Clock, Presence};
use crate::outcome::Outcome;
use crate::providers::ProviderError;
use crate::providers::anthropic::{AnthropicClient, MessageReply, RateLimits};
use crate::store::{NewAttempt, SharedStore, SyncSettle};

/// Limits of the sync lane, per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncLimits {
    /// Calls in flight at once.
    pub concurrency: usize,
    /// Requests per minute.
    pub requests_per_minute: u64,
    /// Input tokens per minute.
    pub input_tokens_per_minute: u64,
    /// Output tokens per minute.
    pub output_tokens_per_minute: u64,
}

impl Default for SyncLimits {
    fn default() -> Self {
        // A middle usage tier; the provider's headers lower them when the account's are lower.
        SyncLimits {
            concurrency: 8,
            requests_per_minute: 1000,
            input_tokens_per_minute: 400_000,
            output_tokens_per_minute: 80_000,
        }
    }
}

/// One request for the sync lane.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The run it belongs to.
    pub run_id: i64,
    /// Its id.
    pub custom_id: String,
    /// The Messages API body, as JSON text.
    pub params: String,
    /// The model (rate limits and latency are per model).
    pub model: String,
    /// `anthropic-beta` values.
    pub betas: Vec<String>,
    /// No retry is started that would end after this.
    pub deadline: DateTime<Utc>,
}

/// The sync lane of one provider account.
#[derive(Clone)]
pub struct SyncLane {
    inner: Arc<Inner>,
}

struct Inner {
    client: AnthropicClient,
    store: SharedStore,
    clock: Arc<dyn Clock>,
    limits: SyncLimits,
    policy: RetryPolicy,
    models: Mutex<HashMap<String, Arc<ModelQueue>>>,
    stopping: AtomicBool,
}

struct ModelQueue {
    work: Mutex<Work>,
    buckets: Mutex<Buckets>,
}

#[derive(Default)]
struct Work {
    queue: VecDeque<SyncRequest>,
    /// custom_ids queued or in flight (with their run), so a request is never sent twice at once.
    taken: HashMap<String, i64>,
    workers: usize,
}

struct Buckets {
    requests: TokenBucket,
    input: TokenBucket,
    output: TokenBucket,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SyncLane {
    /// A lane over `client`, recording in `store`, timed by `clock`.
    pub fn new(client: AnthropicClient, store: SharedStore, clock: Arc<dyn Clock>, limits: SyncLimits) -> SyncLane {
        let inner = Inner {
            client,
            store,
            clock,
            limits,
            policy: RetryPolicy::default(),
            models: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        };
        SyncLane { inner: Arc::new(inner) }
    }

    /// The configured limits.
    pub fn limits(&self) -> SyncLimits {
        self.inner.limits
    }

    /// Queues requests that are not queued or in flight already; returns how many were queued.
    pub fn send(&self, requests: Vec<SyncRequest>) -> usize {
        let mut queued = 0;
        for request in requests {
            let model = self.model_queue(&request.model);
            let mut work = lock(&model.work);
            if !work.taken.contains_key(&request.custom_id) {
                work.taken.insert(request.custom_id.clone(), request.run_id);
                work.queue.push_back(request);
                queued += 1;
            }
            if work.workers < self.inner.limits.concurrency.max(1) && !work.queue.is_empty() {
                work.workers += 1;
                drop(work);
                self.spawn_worker(model);
            }
        }
        queued
    }

    /// Requests of `run_id` queued or in flight.
    pub fn outstanding(&self, run_id: i64) -> usize {
        let models: Vec<Arc<ModelQueue>> = lock(&self.inner.models).values().cloned().collect();
        models.iter().map(|m| lock(&m.work).taken.values().filter(|&&run| run == run_id).count()).sum()
    }

    /// Whether any worker is running.
    pub fn is_busy(&self) -> bool {
        lock(&self.inner.models).values().any(|m| lock(&m.work).workers > 0)
    }

    /// Stops taking new work; calls in flight finish on their own.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::SeqCst);
        for model in lock(&self.inner.models).values() {
            let mut work = lock(&model.work);
            let dropped: Vec<String> = work.queue.drain(..).map(|r| r.custom_id).collect();
            for id in &dropped {
                work.taken.remove(id);
            }
        }
    }

    fn model_queue(&self, model: &str) -> Arc<ModelQueue> {
        let mut models = lock(&self.inner.models);
        let now = self.inner.clock.now();
        let limits = self.inner.limits;
        Arc::clone(models.entry(model.to_owned()).or_insert_with(|| {
            Arc::new(ModelQueue {
                work: Mutex::new(Work::default()),
                buckets: Mutex::new(Buckets {
                    requests: TokenBucket::per_minute(limits.requests_per_minute, now),
                    input: TokenBucket::per_minute(limits.input_tokens_per_minute, now),
                    output: TokenBucket::per_minute(limits.output_tokens_per_minute, now),
                }),
            })
        }))
    }

    fn spawn_worker(&self, model: Arc<ModelQueue>) {
        let presence = self.inner.clock.enter();
        let lane = self.clone();
        tokio::spawn(async move { lane.work(model, presence).await });
    }

    async fn work(self, model: Arc<ModelQueue>, _presence: Presence) {
        loop {
            let next = {
                let mut work = lock(&model.work);
                let next = if self.inner.stopping.load(Ordering::SeqCst) { None } else { work.queue.pop_front() };
                if next.is_none() {
                    work.workers -= 1;
                }
                next
            };
            let Some(request) = next else { return };
            let custom_id = request.custom_id.clone();
            if let Err(error) = self.process(&model, request).await {
                tracing::error!(custom_id = %custom_id, error = %error, "sync request could not be recorded");
            }
            lock(&model.work).taken.remove(&custom_id);
        }
    }

    /// Sends one request (with retries) and stores its outcome.
    async fn process(&self, model: &ModelQueue, request: SyncRequest) -> Result<SyncSettle, crate::store::StoreError> {
        let clock = self.inner.clock.as_ref();
        // The engine may have queued it from a snapshot taken just before
        // another worker finished it: never pay for a request twice.
        let id = request.custom_id.clone();
        if self.inner.store.call(move |s| s.is_final(&id)).await? {
            return Ok(SyncSettle::Ignored);
        }
        let last_attempt = Mutex::new(None::<i64>);
        let reply = with_retries(clock, self.inner.policy, Some(request.deadline), "create_message", || async {
            self.pace(model, &request).await;
            let (result, attempt_id) = self.call(&request).await;
            *lock(&last_attempt) = attempt_id;
            self.adapt(model, &result);
            result
        })
        .await;
        let outcome = match reply {
            Ok(reply) => reply.outcome,
            Err(error) => failure_outcome(&error),
        };
        let Some(attempt_id) = *lock(&last_attempt) else {
            // The store refused the attempt row; it will refuse the result too.
            // The request stays as it was and is sent again on a later tick.
            return Ok(SyncSettle::Ignored);
        };
        let (custom_id, now) = (request.custom_id.clone(), clock.now());
        let settled =
            self.inner.store.call(move |s| s.record_sync_result(&custom_id, attempt_id, &outcome, now)).await?;
        if settled == SyncSettle::Duplicate {
            tracing::info!(custom_id = %request.custom_id, "sync result arrived after another final result: duplicate spend");
        }
        Ok(settled)
    }

    /// Waits until the model's buckets allow one more call of this size.
    async fn pace(&self, model: &ModelQueue, request: &SyncRequest) {
        let clock = self.inner.clock.as_ref();
        let input_estimate = (request.params.len() / 4) as f64;
        let wait = {
            let mut buckets = lock(&model.buckets);
            let now = clock.now();
            let output_debt = buckets.output.wait(now);
            buckets.requests.reserve(1.0, now).max(buckets.input.reserve(input_estimate, now)).max(output_debt)
        };
        if !wait.is_zero() {
            clock.sleep(wait).await;
        }
    }

    /// One call, recorded as an attempt; returns the attempt's id when it was recorded.
    async fn call(&self, request: &SyncRequest) -> (Result<MessageReply, ProviderError>, Option<i64>) {
        let clock = self.inner.clock.as_ref();
        let started_at = clock.now();
        let result = self.inner.client.create_message(&request.params, &request.betas).await;
        let started = NewAttempt {
            run_id: Some(request.run_id),
            custom_id: Some(request.custom_id.clone()),
            model: Some(request.model.clone()),
            ..NewAttempt::started("sync", "create_message", started_at)
        };
        let ok_request_id = result.as_ref().ok().and_then(|reply| reply.request_id.clone());
        let attempt = super::ended_attempt(started, clock.now(), &result, ok_request_id);
        let recorded = self.inner.store.call(move |s| s.record_attempt(&attempt)).await;
        if let Err(error) = &recorded {
            tracing::warn!(custom_id = %request.custom_id, error = %error, "could not record a sync call");
        }
        (result, recorded.ok())
    }

    /// Follows what the provider said about the account's limits.
    fn adapt(&self, model: &ModelQueue, result: &Result<MessageReply, ProviderError>) {
        let now = self.inner.clock.now();
        let mut buckets = lock(&model.buckets);
        match result {
            Ok(reply) => {
                if let Outcome::Succeeded { usage, .. } = &reply.outcome {
                    buckets.output.charge(usage.output_tokens as f64, now);
                }
                follow(&mut buckets, &reply.rate_limits, now);
            }
            Err(error @ ProviderError::Api { status: 429, .. }) => {
                let until = now
                    + chrono::Duration::from_std(error.retry_after().unwrap_or(Duration::from_secs(1)))
                        .unwrap_or_default();
                buckets.requests.exhaust_until(until, now);
            }
            Err(_) => {}
        }
    }
}

fn follow(buckets: &mut Buckets, limits: &RateLimits, now: DateTime<Utc>) {
    let pairs = [
        (&mut buckets.requests, limits.requests),
        (&mut buckets.input, limits.input_tokens),
        (&mut buckets.output, limits.output_tokens),
    ];
    for (bucket, quota) in pairs {
        if let Some(limit) = quota.limit.filter(|&l| (l as f64) < bucket.rate_per_minute()) {
            bucket.set_rate(limit, now);
        }
        if let (Some(0), Some(reset)) = (quota.remaining, quota.reset) {
            bucket.exhaust_until(reset, now);
        }
    }
}

/// What a failed call means for the request: the provider's error type, so
/// permanent errors stay permanent and transient ones may be tried again.
fn failure_outcome(error: &ProviderError) -> Outcome {
    match error {
        ProviderError::Api { error_type, message, .. } => {
            Outcome::Errored { error_type: error_type.clone(), message: message.clone() }
        }
        other => Outcome::Errored { error_type: other.kind(), message: other.to_string() },
    }
}
