//! The pace of one provider's batch endpoints: every create, poll, list,
//! cancel and results download of every run draws from one bucket. The
//! rate starts at what is configured (or the provider's published limit),
//! halves at once when the provider pushes back (a 429 or 529 on a batch
//! endpoint), and climbs back by one call per minute for each call that
//! went through (additive increase, multiplicative decrease).
//!
//! Who goes first is the engine's business ([`crate::engine`]'s tick):
//! it spends the budget on what protects a deadline first, and asks
//! [`Pacer::free_at`] before the work that can wait.

use std::sync::Mutex;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::limiter::TokenBucket;

/// Lowest rate a push-back can bring the pace down to, calls per minute.
const FLOOR_PER_MINUTE: f64 = 1.0;

/// One provider's batch-endpoint budget.
#[derive(Debug)]
pub struct Pacer {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    bucket: TokenBucket,
    /// The rate the pace climbs back to.
    ceiling: f64,
    /// The rate now.
    rate: f64,
}

impl Pacer {
    /// A full budget of `per_minute` calls per minute.
    pub fn per_minute(per_minute: u64, now: DateTime<Utc>) -> Pacer {
        let rate = per_minute.max(1) as f64;
        Pacer { state: Mutex::new(State { bucket: TokenBucket::per_minute(per_minute, now), ceiling: rate, rate }) }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes one call from the budget; returns how long to wait before making it.
    pub fn reserve(&self, now: DateTime<Utc>) -> Duration {
        self.state().bucket.reserve(1.0, now)
    }

    /// When a call could be made without waiting: `now` if the budget has
    /// one to spare, else the instant it will.
    pub fn free_at(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        // Reserving on a copy asks without taking.
        let wait = self.state().bucket.clone().reserve(1.0, now);
        now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX)
    }

    /// The provider pushed back: halve the rate at once and spend the burst.
    pub fn pushed_back(&self, now: DateTime<Utc>) {
        let mut state = self.state();
        state.rate = (state.rate / 2.0).max(FLOOR_PER_MINUTE);
        let rate = state.rate;
        state.bucket.set_rate(rate.round() as u64, now);
        state.bucket.drain(now);
    }

    /// A call went through: the rate climbs back by one per minute, up to the ceiling.
    pub fn went_through(&self, now: DateTime<Utc>) {
        let mut state = self.state();
        if state.rate >= state.ceiling {
            return;
        }
        state.rate = (state.rate + 1.0).min(state.ceiling);
        let rate = state.rate;
        state.bucket.set_rate(rate.round() as u64, now);
    }

    /// Calls per minute now.
    pub fn rate_per_minute(&self) -> f64 {
        self.state().rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn the_budget_says_when_a_call_could_go_without_waiting() {
        // 60 per minute holds 10 s of burst: ten calls go at once.
        let pacer = Pacer::per_minute(60, at(0));
        for _ in 0..10 {
            assert_eq!(pacer.free_at(at(0)), at(0));
            assert_eq!(pacer.reserve(at(0)), Duration::ZERO);
        }
        assert_eq!(pacer.free_at(at(0)), at(1), "the eleventh waits a second");
        assert_eq!(pacer.free_at(at(0)), at(1), "asking takes nothing");
        assert_eq!(pacer.reserve(at(0)), Duration::from_secs(1));
        assert_eq!(pacer.free_at(at(0)), at(2));
    }

    #[test]
    fn a_push_back_halves_the_rate_at_once_and_each_call_through_adds_one() {
        let pacer = Pacer::per_minute(50, at(0));
        pacer.pushed_back(at(0));
        assert_eq!(pacer.rate_per_minute(), 25.0);
        assert_eq!(pacer.free_at(at(0)), at(0) + chrono::Duration::milliseconds(2400), "no burst after a push-back");
        pacer.pushed_back(at(0));
        assert_eq!(pacer.rate_per_minute(), 12.5);
        for _ in 0..100 {
            pacer.went_through(at(1));
        }
        assert_eq!(pacer.rate_per_minute(), 50.0, "back to the ceiling, never above it");
        for _ in 0..10 {
            pacer.pushed_back(at(2));
        }
        assert_eq!(pacer.rate_per_minute(), FLOOR_PER_MINUTE);
    }
}
