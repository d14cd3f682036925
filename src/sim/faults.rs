//! Every simulated chance: injected HTTP faults, truncated result streams,
//! batch durations and per-request outcomes. All are rolled from the seed
//! and a stable input, so a run can be replayed.

use super::SimConfig;
use super::errors::ApiError;
use super::hash::{Key, unit};

/// Rolls the fault of request number `n`, answered `now` simulated seconds
/// after start-up: `(label, error)` or none. A storm answers everything 429.
pub(crate) fn roll_fault(config: &SimConfig, n: u64, now: f64) -> Option<(&'static str, ApiError)> {
    if config.storm_secs.is_some_and(|storm| now < storm) {
        return Some(("429", ApiError::rate_limited(config.retry_after_secs)));
    }
    if config.faults_for_secs.is_some_and(|window| now >= window) {
        return None;
    }
    let roll = Key::new(config.seed, "fault").num(n).unit();
    let mut bound = config.rate_limit_chance;
    if roll < bound {
        return Some(("429", ApiError::rate_limited(config.retry_after_secs)));
    }
    bound += config.overloaded_chance;
    if roll < bound {
        return Some(("529", ApiError::overloaded()));
    }
    bound += config.server_error_chance;
    if roll < bound {
        return Some(("500", ApiError::server(config.retry_after_secs)));
    }
    None
}

/// Whether create call number `n` (the request number) fails before
/// creating anything (`batch_create_error_chance`). Rolled per call, not per
/// batch, so one failure does not doom every later create.
pub(crate) fn roll_create_failure(config: &SimConfig, n: u64) -> bool {
    config.batch_create_error_chance > 0.0
        && Key::new(config.seed, "create").num(n).unit() < config.batch_create_error_chance
}

/// Whether create call number `n` creates its batch but loses the answer
/// (`create_answer_lost_chance`): the client sees a 500 for a batch that exists.
pub(crate) fn roll_lost_answer(config: &SimConfig, n: u64) -> bool {
    config.create_answer_lost_chance > 0.0
        && Key::new(config.seed, "lost").num(n).unit() < config.create_answer_lost_chance
}

/// Whether the results download of request number `n` is cut, and after
/// which fraction of its lines (in `[0, 1)`).
pub(crate) fn roll_truncation(config: &SimConfig, n: u64) -> Option<f64> {
    let key = Key::new(config.seed, "truncate").num(n);
    (key.unit() < config.truncate_results_chance).then(|| key.str("at").unit())
}

/// How long batch number `seq` takes, in simulated seconds: log-normal with
/// the configured median and 95th percentile.
pub(crate) fn batch_duration(config: &SimConfig, seq: u64) -> f64 {
    let key = Key::new(config.seed, "duration").num(seq);
    // Box-Muller: two uniforms in (0, 1] give one standard normal.
    let u1 = 1.0 - key.str("u1").unit();
    let u2 = key.str("u2").unit();
    let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
    let mu = config.batch_median_secs.ln();
    let sigma = (config.batch_p95_secs.ln() - mu).max(0.0) / 1.644_853_626_951_472_2;
    (mu + sigma * z).exp()
}

/// When a request finishes, as a fraction in `(0, 1]` of its batch's duration.
pub(crate) fn finish_fraction(seed: u64, custom_id: &str, submission: u32) -> f64 {
    1.0 - Key::new(seed, "finish").str(custom_id).num(u64::from(submission)).unit()
}

/// The result of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    /// `errored`, with `error.type` and a message.
    Errored(&'static str, &'static str),
    Expired,
}

/// The message of a simulated retryable error.
const RETRYABLE: [(&str, &str); 2] =
    [("api_error", "Internal server error (simulated)."), ("overloaded_error", "Overloaded (simulated).")];

/// The outcome of a valid request that ran, by the configured shares. It
/// depends on the seed, the `custom_id` and how many earlier batches held the
/// same `custom_id` (`submission`), so a retry may succeed.
pub(crate) fn roll_outcome(config: &SimConfig, custom_id: &str, submission: u32) -> Outcome {
    let hash = Key::new(config.seed, "outcome").str(custom_id).num(u64::from(submission)).finish();
    let roll = unit(hash);
    let mut bound = config.invalid_share;
    if roll < bound {
        return Outcome::Errored("invalid_request_error", "Simulated invalid request: fix the request body.");
    }
    bound += config.errored_share;
    if roll < bound {
        let (kind, message) = RETRYABLE[(hash & 1) as usize];
        return Outcome::Errored(kind, message);
    }
    bound += config.expired_share;
    if roll < bound {
        return Outcome::Expired;
    }
    Outcome::Succeeded
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_follow_median_and_p95() {
        let config = SimConfig { batch_median_secs: 100.0, batch_p95_secs: 400.0, ..SimConfig::default() };
        let mut samples: Vec<f64> = (0..4000).map(|seq| batch_duration(&config, seq)).collect();
        samples.sort_by(f64::total_cmp);
        let median = samples[2000];
        let p95 = samples[3800];
        assert!((80.0..125.0).contains(&median), "median {median}");
        assert!((300.0..530.0).contains(&p95), "p95 {p95}");
    }

    #[test]
    fn a_storm_answers_everything_429_then_the_faults_stop_when_their_window_closes() {
        let config = SimConfig {
            storm_secs: Some(600.0),
            faults_for_secs: Some(1800.0),
            rate_limit_chance: 0.5,
            ..SimConfig::default()
        };
        assert!((0..100).all(|n| roll_fault(&config, n, 599.0).is_some_and(|(label, _)| label == "429")));
        let during = (0..1000).filter(|&n| roll_fault(&config, n, 1000.0).is_some()).count();
        assert!((400..600).contains(&during), "half of them in the rest of the storm: {during}");
        assert!((0..1000).all(|n| roll_fault(&config, n, 1800.0).is_none()), "calm after the window");
    }

    #[test]
    fn outcomes_follow_shares() {
        let config = SimConfig { errored_share: 0.3, invalid_share: 0.1, expired_share: 0.1, ..SimConfig::default() };
        let outcomes: Vec<Outcome> = (0..2000).map(|i| roll_outcome(&config, &format!("r-{i}"), 0)).collect();
        let ok = outcomes.iter().filter(|o| **o == Outcome::Succeeded).count();
        assert!((900..1100).contains(&ok), "{ok}");
    }
}
