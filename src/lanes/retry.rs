//! Retrying provider calls: exponential backoff with jitter, honouring
//! `retry-after`, never past a deadline, never on permanent errors.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::clock::Clock;
use crate::providers::ProviderError;

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Calls in total, counting the first.
    pub max_calls: u32,
    /// First wait.
    pub base: Duration,
    /// Longest wait.
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_calls: 6, base: Duration::from_millis(500), cap: Duration::from_secs(60) }
    }
}

impl RetryPolicy {
    /// The wait before call `n + 1` (n ≥ 1) after `error`.
    pub fn wait(&self, n: u32, error: &ProviderError) -> Duration {
        if let Some(asked) = error.retry_after() {
            return asked.min(self.cap * 5);
        }
        let exponential = self.base.saturating_mul(1 << n.min(16)).min(self.cap);
        // Full jitter keeps many clients from retrying in step.
        let jitter = rand::rng().random_range(0.5..=1.0);
        exponential.mul_f64(jitter)
    }
}

/// Calls `call` until it succeeds, fails permanently, runs out of calls, or
/// the next wait would end after `deadline`.
pub async fn with_retries<T, F, Fut>(
    clock: &dyn Clock,
    policy: RetryPolicy,
    deadline: Option<DateTime<Utc>>,
    operation: &str,
    mut call: F,
) -> Result<T, ProviderError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match call().await {
            Ok(value) => return Ok(value),
            Err(error) if !error.is_retryable() || n >= policy.max_calls => return Err(error),
            Err(error) => {
                let wait = policy.wait(n, &error);
                let past_deadline =
                    deadline.is_some_and(|d| clock.now() + chrono::Duration::from_std(wait).unwrap_or_default() > d);
                if past_deadline {
                    return Err(error);
                }
                tracing::info!(operation, attempt = n, wait_ms = wait.as_millis() as u64, error = %error, "retrying provider call");
                clock.sleep(wait).await;
            }
        }
    }
}
