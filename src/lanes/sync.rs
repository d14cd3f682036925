//! The sync lane: the Messages API, one request at a time per worker, with
//! a concurrency window and token buckets per model, and every call
//! recorded as an attempt.
//!
//! Two kinds of failure are told apart. Backpressure (a 429, a 529, an
//! overload, any answer with `retry-after`) means the provider wants us
//! slower: the request waits as told, the model's concurrency window is
//! halved (additive increase, multiplicative decrease), and the request is
//! sent again; it never uses up one of its attempts. The request's own
//! failures (a 5xx without `retry-after`, a timeout, a malformed answer)
//! are recorded as results and count against `retry.max_attempts`. Neither
//! kind gives up at the deadline: a late result beats none.
//!
//! Work is queued per model and taken by at most the window's worth of
//! workers. Idle workers exit instead of waiting, so a waiting worker never
//! holds a [`ManualClock`](crate::clock::ManualClock) still in tests.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::limiter::TokenBucket;
use super::retry::RetryPolicy;
use super::window::Window;
use crate::clock::{Clock, Presence};
use crate::outcome::Outcome;
use crate::providers::{MessageReply, ProviderError, Providers, RateLimits};
use crate::store::{NewAttempt, SharedStore, StoreError, SyncSettle};

pub use crate::plan::SyncLimits;

/// One request for the sync lane.
#[derive(Debug, Clone)]
pub struct SyncRequest {
    /// The run it belongs to.
    pub run_id: i64,
    /// Its id.
    pub custom_id: String,
    /// The Messages API body, as JSON text.
    pub params: String,
    /// The provider that answers it (its name in manifests).
    pub provider: String,
    /// The model (rate limits and latency are per model).
    pub model: String,
    /// `anthropic-beta` values.
    pub betas: Vec<String>,
    /// Attempts the request has used so far (its own failures).
    pub attempts: u32,
    /// Attempts it may use in all (`retry.max_attempts`).
    pub max_attempts: u32,
}

/// The sync lane of one provider account.
#[derive(Clone)]
pub struct SyncLane {
    inner: Arc<Inner>,
}

struct Inner {
    providers: Providers,
    store: SharedStore,
    clock: Arc<dyn Clock>,
    limits: SyncLimits,
    policy: RetryPolicy,
    models: Mutex<HashMap<String, Arc<ModelQueue>>>,
    /// Cancelled on shutdown: no new call starts, every wait ends. Replaced
    /// by a fresh one when the lane is resumed.
    stop: Mutex<CancellationToken>,
    /// Woken whenever a worker leaves, for [`SyncLane::drained`].
    left: tokio::sync::Notify,
    /// `(run, provider)` pairs whose requests are no longer sent (a failover moved them).
    withdrawn: Mutex<Vec<(i64, String)>>,
}

struct ModelQueue {
    work: Mutex<Work>,
    buckets: Mutex<Buckets>,
    window: Mutex<Window>,
}

#[derive(Default)]
struct Work {
    queue: VecDeque<SyncRequest>,
    /// custom_ids queued or in flight (with their run), so a request is never sent twice at once.
    taken: HashMap<String, i64>,
    workers: usize,
    /// Workers holding a request (the others are about to take one or leave).
    busy: usize,
}

struct Buckets {
    requests: TokenBucket,
    input: TokenBucket,
    output: TokenBucket,
}

/// What one call amounted to, for the request.
enum Step {
    /// A final result to store (a success or a permanent failure).
    Final(Outcome),
    /// The request's own failure: stored, counts as an attempt; retried while attempts remain.
    Failed(Outcome),
    /// The provider wants us slower: wait this long, then send it again.
    Backpressure(Duration),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SyncLane {
    /// A lane over `providers`' clients, recording in `store`, timed by `clock`.
    pub fn new(providers: Providers, store: SharedStore, clock: Arc<dyn Clock>, limits: SyncLimits) -> SyncLane {
        let inner = Inner {
            providers,
            store,
            clock,
            limits,
            policy: RetryPolicy::default(),
            models: Mutex::new(HashMap::new()),
            stop: Mutex::new(CancellationToken::new()),
            left: tokio::sync::Notify::new(),
            withdrawn: Mutex::new(Vec::new()),
        };
        SyncLane { inner: Arc::new(inner) }
    }

    /// The configured limits.
    pub fn limits(&self) -> SyncLimits {
        self.inner.limits
    }

    /// Queues requests that are not queued or in flight already; returns how many were queued.
    pub fn send(&self, requests: Vec<SyncRequest>) -> usize {
        if self.stopped() {
            return 0;
        }
        let mut queued = 0;
        let mut touched: Vec<Arc<ModelQueue>> = Vec::new();
        for request in requests {
            let model = self.model_queue(&request.provider, &request.model);
            let mut work = lock(&model.work);
            if !work.taken.contains_key(&request.custom_id) {
                work.taken.insert(request.custom_id.clone(), request.run_id);
                work.queue.push_back(request);
                queued += 1;
            }
            drop(work);
            if !touched.iter().any(|m| Arc::ptr_eq(m, &model)) {
                touched.push(model);
            }
        }
        for model in touched {
            self.top_up(&model);
        }
        queued
    }

    /// Stops sending `run_id`'s requests to `provider`: queued ones are
    /// dropped at once, one in flight or waiting out backpressure leaves
    /// after its call (its answer is still recorded). A failover sends them
    /// to another provider once [`SyncLane::outstanding`] is 0.
    pub fn withdraw(&self, run_id: i64, provider: &str) {
        lock(&self.inner.withdrawn).push((run_id, provider.to_owned()));
        for model in lock(&self.inner.models).values() {
            let mut work = lock(&model.work);
            let (keep, dropped): (VecDeque<SyncRequest>, VecDeque<SyncRequest>) =
                work.queue.drain(..).partition(|r| r.run_id != run_id || r.provider != provider);
            work.queue = keep;
            for request in dropped {
                work.taken.remove(&request.custom_id);
            }
        }
    }

    /// Whether the lane has a client for `provider`.
    pub fn serves(&self, provider: &str) -> bool {
        self.inner.providers.get(provider).is_some()
    }

    fn is_withdrawn(&self, request: &SyncRequest) -> bool {
        lock(&self.inner.withdrawn)
            .iter()
            .any(|(run, provider)| *run == request.run_id && *provider == request.provider)
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

    /// Returns once no worker is running (after [`SyncLane::stop`]: once the
    /// calls in flight have finished and been recorded).
    pub async fn drained(&self) {
        loop {
            let left = self.inner.left.notified();
            tokio::pin!(left);
            // Registered before looking, so a worker leaving in between is not missed.
            left.as_mut().enable();
            if !self.is_busy() {
                return;
            }
            left.await;
        }
    }

    /// The concurrency window of `provider`'s `model` now (for progress and tests).
    pub fn window(&self, provider: &str, model: &str) -> Option<f64> {
        lock(&self.inner.models).get(&queue_key(provider, model)).map(|m| lock(&m.window).allowed())
    }

    /// Whether the lane is stopped.
    fn stopped(&self) -> bool {
        lock(&self.inner.stop).is_cancelled()
    }

    /// Takes work again after [`SyncLane::stop`] (a daemon started again in the same process).
    pub fn resume(&self) {
        let mut stop = lock(&self.inner.stop);
        if stop.is_cancelled() {
            *stop = CancellationToken::new();
        }
    }

    /// Stops taking new work and ends every wait; calls in flight finish on their own.
    pub fn stop(&self) {
        lock(&self.inner.stop).cancel();
        for model in lock(&self.inner.models).values() {
            let mut work = lock(&model.work);
            let dropped: Vec<String> = work.queue.drain(..).map(|r| r.custom_id).collect();
            for id in &dropped {
                work.taken.remove(id);
            }
        }
    }

    fn model_queue(&self, provider: &str, model: &str) -> Arc<ModelQueue> {
        let mut models = lock(&self.inner.models);
        let now = self.inner.clock.now();
        let limits = self.inner.limits;
        Arc::clone(models.entry(queue_key(provider, model)).or_insert_with(|| {
            Arc::new(ModelQueue {
                work: Mutex::new(Work::default()),
                buckets: Mutex::new(Buckets {
                    requests: TokenBucket::per_minute(limits.requests_per_minute, now),
                    input: TokenBucket::per_minute(limits.input_tokens_per_minute, now),
                    output: TokenBucket::per_minute(limits.output_tokens_per_minute, now),
                }),
                window: Mutex::new(Window::new(limits.concurrency)),
            })
        }))
    }

    /// Starts workers until the window is full or every queued request has one.
    fn top_up(&self, model: &Arc<ModelQueue>) {
        let allowed = lock(&model.window).workers();
        loop {
            let mut work = lock(&model.work);
            // Idle workers will take queued requests; a busy one will not soon.
            let idle = work.workers - work.busy;
            if self.stopped() || work.workers >= allowed || idle >= work.queue.len() {
                return;
            }
            work.workers += 1;
            drop(work);
            self.spawn_worker(Arc::clone(model));
        }
    }

    fn spawn_worker(&self, model: Arc<ModelQueue>) {
        let presence = self.inner.clock.enter();
        let lane = self.clone();
        tokio::spawn(async move { lane.work(model, presence).await });
    }

    async fn work(self, model: Arc<ModelQueue>, _presence: Presence) {
        loop {
            let next = {
                let allowed = lock(&model.window).workers();
                let mut work = lock(&model.work);
                // A worker beyond the window (it shrank under backpressure) leaves.
                let next = match self.stopped() || work.workers > allowed {
                    true => None,
                    false => work.queue.pop_front(),
                };
                match next {
                    Some(_) => work.busy += 1,
                    None => work.workers -= 1,
                }
                next
            };
            let Some(request) = next else {
                self.inner.left.notify_waiters();
                return;
            };
            let custom_id = request.custom_id.clone();
            if let Err(error) = self.process(&model, request).await {
                tracing::error!(custom_id = %custom_id, error = %error, "sync request could not be recorded");
            }
            let mut work = lock(&model.work);
            work.taken.remove(&custom_id);
            work.busy -= 1;
            drop(work);
            // The window may have grown with this success.
            self.top_up(&model);
        }
    }

    /// Sends one request until it has a final result, runs out of
    /// attempts, or the lane stops; stores every outcome that counts.
    async fn process(&self, model: &ModelQueue, request: SyncRequest) -> Result<(), StoreError> {
        let (mut attempts, mut pushed_back) = (request.attempts, 0u32);
        loop {
            // Checked before every call, waits included: the engine may have
            // queued it from a snapshot taken just before another worker
            // finished it, or a canceled batch's results may have settled it
            // while it waited out backpressure. Never pay for a request twice.
            let id = request.custom_id.clone();
            if self.is_withdrawn(&request) || self.inner.store.call(move |s| s.is_final(&id)).await? {
                return Ok(());
            }
            if !self.pace(model, &request).await {
                return Ok(());
            }
            let Some((result, attempt_id)) = self.call(&request).await else { return Ok(()) };
            let step = self.adapt(model, &request.model, &result, pushed_back + 1);
            let wait = match step {
                Step::Backpressure(wait) => {
                    pushed_back += 1;
                    tracing::debug!(custom_id = %request.custom_id, wait_ms = wait.as_millis() as u64, "backpressure; waiting");
                    wait
                }
                Step::Final(outcome) => return self.settle(&request, attempt_id, outcome).await,
                Step::Failed(outcome) => {
                    self.settle(&request, attempt_id, outcome).await?;
                    attempts += 1;
                    if attempts >= request.max_attempts {
                        return Ok(());
                    }
                    self.inner.policy.backoff(attempts)
                }
            };
            if !self.wait(wait).await {
                return Ok(());
            }
        }
    }

    /// Stores an outcome of the request (the attempt row is its source).
    async fn settle(&self, request: &SyncRequest, attempt_id: i64, outcome: Outcome) -> Result<(), StoreError> {
        let (custom_id, now) = (request.custom_id.clone(), self.inner.clock.now());
        let write = move |s: &mut crate::store::Store| s.record_sync_result(&custom_id, attempt_id, &outcome, now);
        let Some(settled) = self.persist("result", &request.custom_id, write).await else { return Ok(()) };
        crate::failpoint::hit("mid_sync_fallback");
        if settled == SyncSettle::Duplicate {
            tracing::info!(custom_id = %request.custom_id, "sync result arrived after another final result: duplicate spend");
        }
        Ok(())
    }

    /// Runs a store write until it is committed. A call that was paid for is
    /// never dropped to be sent (and paid) again: while the store refuses
    /// writes (a full disk), the worker holds its request and makes no new
    /// call, retrying the write with a growing wait. `None` if the lane stopped first.
    async fn persist<T: Send + 'static>(
        &self,
        what: &'static str,
        custom_id: &str,
        write: impl FnMut(&mut crate::store::Store) -> Result<T, StoreError> + Clone + Send + 'static,
    ) -> Option<T> {
        let mut wait = Duration::from_secs(1);
        loop {
            match self.inner.store.call(write.clone()).await {
                Ok(value) => return Some(value),
                Err(error) => {
                    tracing::error!(custom_id, what, %error, retry_in_ms = wait.as_millis() as u64, "cannot store a sync call; holding it until the store takes it");
                }
            }
            if !self.wait(wait).await {
                return None;
            }
            wait = (wait * 2).min(Duration::from_secs(30));
        }
    }

    /// Sleeps on the lane's clock; false when the lane stopped meanwhile.
    async fn wait(&self, duration: Duration) -> bool {
        if duration.is_zero() {
            return !self.stopped();
        }
        let stop = lock(&self.inner.stop).clone();
        tokio::select! {
            () = self.inner.clock.sleep(duration) => !stop.is_cancelled(),
            () = stop.cancelled() => false,
        }
    }

    /// Waits until the model's buckets allow one more call of this size;
    /// false when the lane stopped meanwhile.
    async fn pace(&self, model: &ModelQueue, request: &SyncRequest) -> bool {
        let clock = self.inner.clock.as_ref();
        let input_estimate = (request.params.len() / 4) as f64;
        let wait = {
            let mut buckets = lock(&model.buckets);
            let now = clock.now();
            let output_debt = buckets.output.wait(now);
            buckets.requests.reserve(1.0, now).max(buckets.input.reserve(input_estimate, now)).max(output_debt)
        };
        self.wait(wait).await
    }

    /// One call, recorded as an attempt, with the attempt's id (`None` if
    /// the lane stopped while the store refused the record).
    async fn call(&self, request: &SyncRequest) -> Option<(Result<MessageReply, ProviderError>, i64)> {
        let clock = self.inner.clock.as_ref();
        let started_at = clock.now();
        let result = match self.inner.providers.client(&request.provider) {
            Ok(client) => client.send_message(&request.params, &request.betas).await,
            Err(error) => Err(error),
        };
        let started = NewAttempt {
            run_id: Some(request.run_id),
            custom_id: Some(request.custom_id.clone()),
            model: Some(request.model.clone()),
            ..NewAttempt::started("sync", "create_message", started_at)
        };
        let ok_request_id = result.as_ref().ok().and_then(|reply| reply.request_id.clone());
        let attempt = super::ended_attempt(started, clock.now(), result.as_ref().err(), ok_request_id);
        let id = self.persist("attempt", &request.custom_id, move |s| s.record_attempt(&attempt)).await?;
        Some((result, id))
    }

    /// Follows what the provider said: its rate-limit headers, and for
    /// backpressure a smaller window; returns what the call means for the
    /// request (`pushed_back` counts its backpressure answers in a row).
    fn adapt(
        &self,
        model: &ModelQueue,
        name: &str,
        result: &Result<MessageReply, ProviderError>,
        pushed_back: u32,
    ) -> Step {
        let now = self.inner.clock.now();
        match result {
            Ok(reply) => {
                let mut buckets = lock(&model.buckets);
                if let Outcome::Succeeded { usage, .. } = &reply.outcome {
                    buckets.output.charge(usage.output_tokens as f64, now);
                }
                follow(&mut buckets, &reply.rate_limits, now);
                lock(&model.window).grow();
                Step::Final(reply.outcome.clone())
            }
            Err(error) if error.is_backpressure() => {
                let wait = self.inner.policy.wait(pushed_back, error);
                if lock(&model.window).shrink(now, wait) {
                    tracing::info!(model = name, window = lock(&model.window).allowed(), error = %error, "backpressure: fewer calls at once");
                }
                // The burst is spent: calls go on at the steady rate, not in a rush.
                lock(&model.buckets).requests.drain(now);
                Step::Backpressure(wait)
            }
            Err(error) if error.is_retryable() => Step::Failed(failure_outcome(error)),
            Err(error) => Step::Final(failure_outcome(error)),
        }
    }
}

/// Queues, windows and buckets are per model of a provider: two providers' models never share one.
fn queue_key(provider: &str, model: &str) -> String {
    format!("{provider}/{model}")
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
        if let (Some(0), Some(reset)) = (quota.remaining, quota.reset_at(now)) {
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
