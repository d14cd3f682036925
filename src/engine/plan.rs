//! The fallback planner: when what is left of a run must leave the batch
//! lane so the sync lane can still finish it before the deadline.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::lanes::SyncLimits;

/// What the estimate of the sync lane's time needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncLoad {
    /// Requests not final yet.
    pub remaining: u64,
    /// Average input tokens per request.
    pub input_tokens: f64,
    /// Average output tokens per request.
    pub output_tokens: f64,
    /// Latency of one call (observed p90, or the configured guess).
    pub latency: Duration,
}

/// How long the sync lane needs for `load` within `limits`: the slowest of
/// the concurrency bound and each per-minute rate, plus one call's latency
/// for the last request.
pub fn sync_estimate(load: SyncLoad, limits: SyncLimits) -> Duration {
    if load.remaining == 0 {
        return Duration::ZERO;
    }
    let remaining = load.remaining as f64;
    let rounds = (remaining / limits.concurrency.max(1) as f64).ceil();
    let by_concurrency = load.latency.as_secs_f64() * rounds;
    let per_minute = |amount: f64, limit: u64| amount * 60.0 / limit.max(1) as f64;
    let by_rate = per_minute(remaining, limits.requests_per_minute)
        .max(per_minute(remaining * load.input_tokens, limits.input_tokens_per_minute))
        .max(per_minute(remaining * load.output_tokens, limits.output_tokens_per_minute));
    Duration::from_secs_f64(by_concurrency.max(by_rate + load.latency.as_secs_f64()))
}

/// The margin kept before the deadline: a tenth of the run's window,
/// at least a second, at most `max`. Deadlines of seconds get margins of a second.
pub fn safety_margin(created_at: DateTime<Utc>, deadline_at: DateTime<Utc>, max: Duration) -> Duration {
    let window = (deadline_at - created_at).to_std().unwrap_or_default();
    (window / 10).clamp(Duration::from_secs(1), max.max(Duration::from_secs(1)))
}

/// `deadline − margin − estimated sync time`: after this instant, waiting
/// longer for the batch would put the deadline at risk.
pub fn fallback_at(deadline_at: DateTime<Utc>, margin: Duration, estimate: Duration) -> DateTime<Utc> {
    let lead = crate::clock::span(margin + estimate);
    deadline_at.checked_sub_signed(lead).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// When the sync lane takes over what is left of a batch run: at
/// [`fallback_at`], unless the sync lane could not finish before the
/// deadline even if it started `now`. Taking over would then meet no
/// deadline and double the price, so the batch (half the price, and usually
/// done well within the sync estimate) keeps the run until the deadline;
/// only then does the sync lane take what is left, to bound how late it ends.
pub fn takeover_at(
    now: DateTime<Utc>,
    deadline_at: DateTime<Utc>,
    margin: Duration,
    estimate: Duration,
) -> DateTime<Utc> {
    let planned = fallback_at(deadline_at, margin, estimate);
    let sync_in_time = now.checked_add_signed(crate::clock::span(estimate)).is_some_and(|end| end <= deadline_at);
    if planned > now || sync_in_time { planned } else { deadline_at }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sync_lane_takes_over_only_when_it_can_still_meet_the_deadline() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T06:00:00Z").unwrap().with_timezone(&Utc);
        let deadline = now + chrono::Duration::hours(12);
        let margin = Duration::from_secs(3600);
        let hours = |h: u64| Duration::from_secs(h * 3600);
        // Time enough for the batch: the usual plan, deadline − margin − estimate.
        assert_eq!(takeover_at(now, deadline, margin, hours(2)), now + chrono::Duration::hours(9));
        // Too late for the margin, in time for the deadline: the sync lane now.
        assert_eq!(takeover_at(now, deadline, margin, hours(12)), now - chrono::Duration::hours(1));
        // The sync lane would end after the deadline anyway: the batch keeps it until then.
        assert_eq!(takeover_at(now, deadline, margin, hours(69)), deadline);
        // Past the deadline, the sync lane bounds how late it ends.
        assert_eq!(takeover_at(deadline, deadline, margin, hours(69)), deadline);
    }

    fn limits() -> SyncLimits {
        SyncLimits {
            concurrency: 4,
            requests_per_minute: 60,
            input_tokens_per_minute: 1_000_000,
            output_tokens_per_minute: 1_000_000,
        }
    }

    fn load(remaining: u64, latency_ms: u64) -> SyncLoad {
        SyncLoad { remaining, input_tokens: 500.0, output_tokens: 200.0, latency: Duration::from_millis(latency_ms) }
    }

    #[test]
    fn the_estimate_follows_the_tightest_limit() {
        // 8 requests, 4 at a time, 10 s each: two rounds.
        let slow = SyncLimits { requests_per_minute: 10_000, ..limits() };
        assert_eq!(sync_estimate(load(8, 10_000), slow), Duration::from_secs(20));
        // 120 requests at 60 RPM: two minutes, plus the last call.
        assert_eq!(sync_estimate(load(120, 1_000), limits()), Duration::from_secs(121));
        // Output tokens: 100 × 200 at 2,000 per minute is ten minutes.
        let tight = SyncLimits { output_tokens_per_minute: 2_000, requests_per_minute: 10_000, ..limits() };
        assert_eq!(sync_estimate(load(100, 0), tight), Duration::from_secs(600));
        assert_eq!(sync_estimate(load(0, 1_000), limits()), Duration::ZERO);
    }

    #[test]
    fn margins_scale_with_the_window() {
        let t0 = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        let max = Duration::from_secs(600);
        assert_eq!(safety_margin(t0, t0 + chrono::Duration::hours(6), max), max);
        assert_eq!(safety_margin(t0, t0 + chrono::Duration::minutes(30), max), Duration::from_secs(180));
        assert_eq!(safety_margin(t0, t0 + chrono::Duration::seconds(5), max), Duration::from_secs(1));
        let at = fallback_at(t0 + chrono::Duration::hours(1), Duration::from_secs(360), Duration::from_secs(240));
        assert_eq!(at, t0 + chrono::Duration::minutes(50));
    }
}
