//! The fallback planner's rules: when what is left of a run must leave the
//! batch lane so the sync lane can still finish it before the deadline, and
//! whether a batch is worth submitting at all. Pure functions of limits,
//! latencies and instants, so the engine that acts on them and `validate`
//! that warns about them use the same rules.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::manifest::Tier;

/// Limits of the sync lane, per model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncLimits {
    /// Calls in flight at once (the most the concurrency window opens to).
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

/// Batch turnaround assumed when neither a measurement, nor the
/// configuration, nor the catalog says (the `W021` threshold).
pub const DEFAULT_BATCH_TURNAROUND: Duration = Duration::from_secs(600);

/// The longest safety margin kept before a deadline, unless configured.
pub const DEFAULT_MAX_SAFETY_MARGIN: Duration = Duration::from_secs(600);

/// The deadline from which a realtime job is advised to move to `tier: soft`:
/// the soft tier's default, long enough for a small batch to end and for
/// the fallback to finish what it does not.
pub const ADVICE_MIN_DEADLINE: Duration = Duration::from_secs(3600);

/// Whether a job of `tier` with `deadline` could run on the batch lane at
/// half the price: a realtime job with an hour or more to spare
/// (`validate`'s note N080, `estimate`'s advice).
pub fn batch_eligible(tier: Tier, deadline: Duration) -> bool {
    tier == Tier::Realtime && deadline >= ADVICE_MIN_DEADLINE
}

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

/// When the sync lane takes over what is left of a run on the batch lane,
/// given when its batch is expected to end (`batch_end`).
///
/// Normally at [`fallback_at`]. Once that instant has come, the sync lane
/// takes over at once if it can still finish by the deadline. If it
/// cannot, the run is late either way, and whichever lane is expected to
/// finish first keeps it: the batch (half the price) until the deadline
/// when it is expected to end before the sync lane would, else the sync
/// lane now. So a large run the sync lane could never finish in time
/// stays on the batch, and a small run is not left waiting for a batch
/// that is expected to take longer than the sync lane.
pub fn takeover_at(
    now: DateTime<Utc>,
    deadline_at: DateTime<Utc>,
    margin: Duration,
    estimate: Duration,
    batch_end: DateTime<Utc>,
) -> DateTime<Utc> {
    let planned = fallback_at(deadline_at, margin, estimate);
    if planned > now || sync_end(now, estimate) <= deadline_at {
        return planned;
    }
    if batch_end < sync_end(now, estimate) { deadline_at } else { planned }
}

/// Whether a run that has no batch yet should submit one: when a batch
/// (expected to take `turnaround`) can end before the sync lane would have
/// to take over, or when the run is late either way and the batch is
/// expected to end before the sync lane would. Otherwise the batch would
/// only be canceled: the run goes to the sync lane now.
pub fn batch_worthwhile(
    now: DateTime<Utc>,
    deadline_at: DateTime<Utc>,
    margin: Duration,
    estimate: Duration,
    turnaround: Duration,
) -> bool {
    let batch_end = sync_end(now, turnaround);
    if batch_end <= fallback_at(deadline_at, margin, estimate) {
        return true;
    }
    let late_either_way = sync_end(now, estimate) > deadline_at;
    late_either_way && batch_end < sync_end(now, estimate)
}

/// `now + estimate`, saturating.
fn sync_end(now: DateTime<Utc>, estimate: Duration) -> DateTime<Utc> {
    now.checked_add_signed(crate::clock::span(estimate)).unwrap_or(DateTime::<Utc>::MAX_UTC)
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
        let batch_end = now + chrono::Duration::hours(1);
        // Time enough for the batch: the usual plan, deadline − margin − estimate.
        assert_eq!(takeover_at(now, deadline, margin, hours(2), batch_end), now + chrono::Duration::hours(9));
        // Too late for the margin, in time for the deadline: the sync lane now.
        assert_eq!(takeover_at(now, deadline, margin, hours(12), batch_end), now - chrono::Duration::hours(1));
        // The sync lane would end after the deadline and the batch is expected first: the batch keeps it.
        assert_eq!(takeover_at(now, deadline, margin, hours(69), batch_end), deadline);
        // Past the deadline, the sync lane bounds how late it ends.
        assert_eq!(takeover_at(deadline, deadline, margin, hours(69), batch_end), deadline);
        // Late either way, but the batch is expected to take longer than the sync lane: the sync lane now.
        let slow_batch = now + chrono::Duration::hours(20);
        assert!(takeover_at(now, deadline, margin, hours(13), slow_batch) <= now);
    }

    #[test]
    fn a_new_run_submits_a_batch_only_when_it_can_help() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T06:00:00Z").unwrap().with_timezone(&Utc);
        let secs = Duration::from_secs;
        let ten_minutes = secs(600);
        // A soft job's hour: the batch has 50 minutes to end.
        let hour = now + chrono::Duration::hours(1);
        assert!(batch_worthwhile(now, hour, secs(360), secs(40), ten_minutes));
        // 200 requests under 120 s (the storm of issue 14): no batch ends in time,
        // the sync lane can still make it, so it goes there at once.
        let two_minutes = now + chrono::Duration::seconds(120);
        assert!(!batch_worthwhile(now, two_minutes, secs(12), secs(50), ten_minutes));
        // Even a guessed 20 s per call (500 s for 200 requests): late either way,
        // and the sync lane is expected to finish before a batch would.
        assert!(!batch_worthwhile(now, two_minutes, secs(12), secs(500), ten_minutes));
        // 100,000 requests under 12 h at the default limits: the sync lane needs
        // longer than the window; the batch is expected to end well before.
        let twelve_hours = now + chrono::Duration::hours(12);
        assert!(batch_worthwhile(now, twelve_hours, ten_minutes, secs(70 * 3600), ten_minutes));
    }

    #[test]
    fn a_hundred_thousand_requests_under_twelve_hours_stay_on_the_batch_lane() {
        let now = DateTime::parse_from_rfc3339("2026-11-22T06:00:00Z").unwrap().with_timezone(&Utc);
        let deadline = now + chrono::Duration::hours(12);
        let margin = safety_margin(now, deadline, Duration::from_secs(600));
        let catalog = crate::catalog::Catalog::builtin();
        let (_, haiku) = catalog.model("anthropic", "claude-haiku-4-5").unwrap();
        let turnaround = catalog.providers["anthropic"].batch_turnaround().unwrap();
        // 1 KB prompts (250 tokens), 64 max tokens, at the sync lane's default limits,
        // with the catalog's latency and with a blind 20 s guess.
        for latency in [haiku.sync_latency(32.0).unwrap(), Duration::from_secs(20)] {
            let load = SyncLoad { remaining: 100_000, input_tokens: 250.0, output_tokens: 32.0, latency };
            let estimate = sync_estimate(load, SyncLimits::default());
            assert!(batch_worthwhile(now, deadline, margin, estimate, turnaround), "{latency:?}: {estimate:?}");
            let batch_end = now + chrono::Duration::from_std(turnaround).unwrap();
            assert!(takeover_at(now, deadline, margin, estimate, batch_end) > now + chrono::Duration::hours(1));
        }
    }

    #[test]
    fn only_realtime_jobs_with_an_hour_to_spare_could_use_the_batch_lane() {
        assert!(batch_eligible(Tier::Realtime, Duration::from_secs(3600)));
        assert!(!batch_eligible(Tier::Realtime, Duration::from_secs(3599)));
        assert!(!batch_eligible(Tier::Soft, Duration::from_secs(86_400)));
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
