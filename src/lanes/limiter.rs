//! Token buckets for the provider's per-minute limits, on the injected clock.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// A bucket refilled continuously at `per_minute`, holding at most a few
/// seconds' worth so a full minute's quota is never spent in one burst.
/// Reservations may take it below zero: a request larger than the bucket
/// still goes through, later, instead of never.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_minute: f64,
    tokens: f64,
    updated: DateTime<Utc>,
}

/// Seconds of quota the bucket holds.
pub const BURST_SECS: f64 = 10.0;

impl TokenBucket {
    /// A full bucket for `per_minute` units per minute.
    pub fn per_minute(per_minute: u64, now: DateTime<Utc>) -> TokenBucket {
        let mut bucket = TokenBucket { per_minute: per_minute.max(1) as f64, tokens: 0.0, updated: now };
        bucket.tokens = bucket.capacity();
        bucket
    }

    fn capacity(&self) -> f64 {
        (self.per_minute * BURST_SECS / 60.0).max(1.0)
    }

    fn refill(&mut self, now: DateTime<Utc>) {
        let elapsed = (now - self.updated).num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6;
        self.tokens = (self.tokens + elapsed * self.per_minute / 60.0).min(self.capacity());
        self.updated = self.updated.max(now);
    }

    /// Takes `amount` now; returns how long to wait before using it.
    pub fn reserve(&mut self, amount: f64, now: DateTime<Utc>) -> Duration {
        self.refill(now);
        self.tokens -= amount;
        self.debt_wait()
    }

    /// Takes `amount` after the fact (output tokens are known only afterwards).
    pub fn charge(&mut self, amount: f64, now: DateTime<Utc>) {
        self.refill(now);
        self.tokens -= amount;
    }

    /// How long until the bucket is out of debt.
    pub fn wait(&mut self, now: DateTime<Utc>) -> Duration {
        self.refill(now);
        self.debt_wait()
    }

    fn debt_wait(&self) -> Duration {
        if self.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.tokens * 60.0 / self.per_minute) }
    }

    /// The refill rate.
    pub fn rate_per_minute(&self) -> f64 {
        self.per_minute
    }

    /// Follows the limit the provider reports, which may be lower than configured.
    pub fn set_rate(&mut self, per_minute: u64, now: DateTime<Utc>) {
        self.refill(now);
        self.per_minute = per_minute.max(1) as f64;
        self.tokens = self.tokens.min(self.capacity());
    }

    /// Spends the burst the bucket holds: what follows comes at the steady
    /// rate (the provider pushed back, so no rush of calls now).
    pub fn drain(&mut self, now: DateTime<Utc>) {
        self.refill(now);
        self.tokens = self.tokens.min(0.0);
    }

    /// Empties the bucket until `until` (the provider said the quota is spent).
    pub fn exhaust_until(&mut self, until: DateTime<Utc>, now: DateTime<Utc>) {
        self.refill(now);
        let secs = (until - now).num_milliseconds().max(0) as f64 / 1000.0;
        self.tokens = self.tokens.min(-secs * self.per_minute / 60.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn a_burst_is_limited_then_paced_at_the_rate() {
        let mut bucket = TokenBucket::per_minute(60, at(0));
        // 10 s of quota at 1/s: ten go at once, the eleventh waits a second.
        for _ in 0..10 {
            assert_eq!(bucket.reserve(1.0, at(0)), Duration::ZERO);
        }
        assert_eq!(bucket.reserve(1.0, at(0)), Duration::from_secs(1));
        assert_eq!(bucket.reserve(1.0, at(0)), Duration::from_secs(2));
        assert_eq!(bucket.wait(at(2)), Duration::ZERO);
    }

    #[test]
    fn large_requests_pass_after_paying_their_debt() {
        let mut bucket = TokenBucket::per_minute(6_000, at(0));
        assert_eq!(bucket.reserve(4_000.0, at(0)), Duration::from_secs(30));
        bucket.charge(600.0, at(30));
        assert_eq!(bucket.wait(at(30)), Duration::from_secs(6));
    }

    #[test]
    fn the_providers_word_overrides_the_configuration() {
        let mut bucket = TokenBucket::per_minute(600, at(0));
        bucket.exhaust_until(at(20), at(0));
        assert_eq!(bucket.wait(at(0)), Duration::from_secs(20));
        bucket.set_rate(60, at(20));
        assert_eq!(bucket.rate_per_minute(), 60.0);
        assert_eq!(bucket.reserve(2.0, at(20)), Duration::from_secs(2));
    }

    #[test]
    fn a_drained_bucket_paces_at_the_rate_without_debt() {
        let mut bucket = TokenBucket::per_minute(60, at(0));
        bucket.drain(at(0));
        assert_eq!(bucket.wait(at(0)), Duration::ZERO, "no pause");
        assert_eq!(bucket.reserve(1.0, at(0)), Duration::from_secs(1), "but no burst");
    }
}
