//! The sync lane's concurrency window per model: additive increase,
//! multiplicative decrease, as TCP does with its congestion window.
//!
//! Every success opens the window by `1 / window` (about one call more per
//! window's worth of successes); backpressure halves it, at most once per
//! wait the provider asked for, so one burst of 429s answering calls that
//! were already in flight counts as one signal, not as many.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// How many calls to one model may be in flight.
#[derive(Debug, Clone)]
pub struct Window {
    allowed: f64,
    max: f64,
    /// No further cut before this instant.
    calm_until: Option<DateTime<Utc>>,
}

impl Window {
    /// A window open to `max` calls (at least one).
    pub fn new(max: usize) -> Window {
        let max = max.max(1) as f64;
        Window { allowed: max, max, calm_until: None }
    }

    /// The window's size now (fractional while it grows).
    pub fn allowed(&self) -> f64 {
        self.allowed
    }

    /// Whole calls allowed now: at least one, so the lane always moves.
    pub fn workers(&self) -> usize {
        (self.allowed.floor() as usize).max(1)
    }

    /// A success: one call more per window of successes, up to the maximum.
    pub fn grow(&mut self) {
        self.allowed = (self.allowed + 1.0 / self.allowed).min(self.max);
    }

    /// Backpressure at `now`, with the provider asking for `wait`: halves the
    /// window unless it was halved within the last such wait. True if it shrank.
    pub fn shrink(&mut self, now: DateTime<Utc>, wait: Duration) -> bool {
        if self.calm_until.is_some_and(|calm| now < calm) {
            return false;
        }
        let span = chrono::Duration::from_std(wait.max(Duration::from_secs(1))).unwrap_or(chrono::Duration::MAX);
        self.calm_until = now.checked_add_signed(span);
        self.allowed = (self.allowed / 2.0).max(1.0);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn halves_once_per_wait_and_grows_back_one_call_per_window() {
        let mut window = Window::new(8);
        assert!(window.shrink(at(0), Duration::from_secs(2)));
        assert_eq!(window.workers(), 4);
        // More 429s within the same two seconds answer calls already sent: one signal.
        assert!(!window.shrink(at(1), Duration::from_secs(2)));
        assert_eq!(window.workers(), 4);
        assert!(window.shrink(at(2), Duration::from_secs(2)));
        assert!(window.shrink(at(4), Duration::from_secs(2)));
        assert!(window.shrink(at(6), Duration::from_secs(2)));
        assert_eq!(window.workers(), 1, "never below one call");
        // From 1: +1 after one success; from 2, +1/2, then +1/2.5, +1/2.9: three for the next call.
        window.grow();
        assert_eq!(window.workers(), 2);
        window.grow();
        window.grow();
        assert_eq!(window.workers(), 2);
        window.grow();
        assert_eq!(window.workers(), 3);
        for _ in 0..100 {
            window.grow();
        }
        assert_eq!(window.allowed(), 8.0, "never above the configured concurrency");
    }
}
