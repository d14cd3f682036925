//! Retrying provider calls: exponential backoff with jitter, honouring
//! `retry-after`, never on permanent errors. Backpressure (a 429, a 529,
//! anything with `retry-after`) is waited out without using up a call:
//! only the call's own failures count against `max_calls`.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;

use crate::clock::{Clock, span};
use crate::providers::ProviderError;

/// What [`with_retries`] needs to know of a failure.
pub trait Retryable: std::fmt::Display {
    /// Whether the same call may succeed later.
    fn is_retryable(&self) -> bool;
    /// Whether the provider only asked us to slow down (uses up no call).
    fn is_backpressure(&self) -> bool;
    /// The wait the provider asked for.
    fn retry_after(&self) -> Option<Duration>;
}

impl Retryable for ProviderError {
    fn is_retryable(&self) -> bool {
        ProviderError::is_retryable(self)
    }

    fn is_backpressure(&self) -> bool {
        ProviderError::is_backpressure(self)
    }

    fn retry_after(&self) -> Option<Duration> {
        ProviderError::retry_after(self)
    }
}

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Calls that failed on their own (not backpressure), counting the first.
    pub max_calls: u32,
    /// First wait.
    pub base: Duration,
    /// Longest wait.
    pub cap: Duration,
    /// Longest time spent waiting out backpressure in one [`with_retries`]
    /// (the caller tries again later: a poll, the next tick).
    pub max_backpressure: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_calls: 6,
            base: Duration::from_millis(500),
            cap: Duration::from_secs(60),
            max_backpressure: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// The wait before try `n + 1` after `n` (≥ 1) failed tries: exponential
    /// with jitter, so many clients do not retry in step.
    pub fn backoff(&self, n: u32) -> Duration {
        let exponential = self.base.saturating_mul(1 << n.clamp(1, 16)).min(self.cap);
        exponential.mul_f64(rand::rng().random_range(0.5..=1.0))
    }

    /// The wait after the `n`-th (≥ 1) backpressure answer in a row that
    /// named no wait: what the official SDKs do (0.5 s doubling, at most
    /// 8 s, less up to a quarter of jitter). Overload is usually brief; the
    /// lane slows down by sending fewer calls at once, not by waiting long.
    pub fn pushed_back(&self, n: u32) -> Duration {
        let exponential =
            Duration::from_millis(500).saturating_mul(1 << (n.clamp(1, 16) - 1)).min(Duration::from_secs(8));
        exponential.mul_f64(rand::rng().random_range(0.75..=1.0))
    }

    /// The wait before call `n + 1` (n ≥ 1) after `error`: what the provider
    /// asked for, else [`RetryPolicy::pushed_back`] for backpressure and
    /// [`RetryPolicy::backoff`] for the call's own failures.
    pub fn wait(&self, n: u32, error: &impl Retryable) -> Duration {
        match error.retry_after() {
            Some(asked) => asked.min(self.cap * 5),
            None if error.is_backpressure() => self.pushed_back(n),
            None => self.backoff(n),
        }
    }
}

/// Calls `call` until it succeeds, fails permanently, fails on its own
/// `max_calls` times, or the next wait would end after `give_up_at` (or
/// would take the backpressure waits past `max_backpressure`).
pub async fn with_retries<T, E, F, Fut>(
    clock: &dyn Clock,
    policy: RetryPolicy,
    give_up_at: Option<DateTime<Utc>>,
    operation: &str,
    mut call: F,
) -> Result<T, E>
where
    E: Retryable,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let (mut failed, mut pushed_back, mut waited_out) = (0, 0, Duration::ZERO);
    loop {
        let error = match call().await {
            Ok(value) => return Ok(value),
            Err(error) if !error.is_retryable() => return Err(error),
            Err(error) => error,
        };
        let wait = if error.is_backpressure() {
            pushed_back += 1;
            let wait = policy.wait(pushed_back, &error);
            waited_out += wait;
            if waited_out > policy.max_backpressure {
                return Err(error);
            }
            wait
        } else {
            failed += 1;
            if failed >= policy.max_calls {
                return Err(error);
            }
            policy.wait(failed, &error)
        };
        if give_up_at.is_some_and(|at| clock.now() + span(wait) > at) {
            return Err(error);
        }
        tracing::info!(operation, failed, pushed_back, wait_ms = wait.as_millis() as u64, error = %error, "retrying provider call");
        clock.sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::clock::ManualClock;

    fn api(status: u16, retry_after: Option<u64>) -> ProviderError {
        ProviderError::Api {
            status,
            error_type: "x".into(),
            message: String::new(),
            request_id: None,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[tokio::test]
    async fn backpressure_does_not_use_up_calls_but_own_failures_do() {
        let clock = ManualClock::new(DateTime::from_timestamp(1_795_000_000, 0).unwrap());
        let _presence = clock.enter();
        let calls = AtomicU32::new(0);
        // Ten 429s, then success: more than max_calls tries, all backpressure.
        let policy = RetryPolicy { max_calls: 3, ..RetryPolicy::default() };
        let result = with_retries(&clock, policy, None, "test", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            if n < 10 { Err(api(429, Some(1))) } else { Ok(n) }
        })
        .await;
        assert_eq!(result.unwrap(), 10);
        // Three 500s without retry-after are the call's own failures: it gives up.
        let calls = AtomicU32::new(0);
        let result: Result<u32, _> = with_retries(&clock, policy, None, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(api(500, None))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn backpressure_is_waited_out_only_so_long() {
        let start = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        let clock = ManualClock::new(start);
        let _presence = clock.enter();
        let policy = RetryPolicy { max_backpressure: Duration::from_secs(30), ..RetryPolicy::default() };
        let calls = AtomicU32::new(0);
        let result: Result<u32, _> = with_retries(&clock, policy, None, "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(api(429, Some(10)))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 4, "three waits of 10 s fit in 30 s, the fourth does not");
        assert_eq!(clock.now(), start + chrono::Duration::seconds(30));
        // A give-up instant comes first when it is sooner.
        let calls = AtomicU32::new(0);
        let give_up = clock.now() + chrono::Duration::seconds(15);
        let result: Result<u32, _> = with_retries(&clock, policy, Some(give_up), "test", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(api(429, Some(10)))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }
}
