//! The `fallback` scenario: 2,000 requests left unfinished by the batch lane
//! pushed through the sync lane ([`SyncLane`], as the engine's fallback
//! does) against the simulator answering with zero latency.
//!
//! Two passes per repeat, each on a fresh database: one with a rate limit
//! that binds (the lane should take the limit's time and hardly more), one
//! with limits too high to matter (the lane's own cost per request).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::ensure;

use super::Scratch;
use super::figures::{Metric, Sampled, Target};
use super::ingest::seed;
use super::simulator::SimProcess;
use crate::clock::SystemClock;
use crate::lanes::limiter::BURST_SECS;
use crate::lanes::{SyncLane, SyncLimits, SyncRequest};
use crate::store::{SharedStore, Store};

/// Requests per pass.
pub const REQUESTS: u64 = 2000;
/// The binding limit: 6,000 a minute, so 2,000 requests outlast the 10 s burst.
const REQUESTS_PER_MINUTE: u64 = 6000;
/// Token limits that never bind.
const UNLIMITED_TOKENS: u64 = 1_000_000_000;
const METRICS: [Metric; 3] = [
    Metric { name: "overhead beyond rate limit, ms/req", target: Some(Target::at_most(1.0)) },
    Metric { name: "rate-limited pass, s", target: None },
    Metric { name: "unthrottled, ms/req", target: None },
];

/// Measures `repeats` rounds of both passes over `requests` requests.
pub async fn run(requests: u64, repeats: u32) -> anyhow::Result<Sampled> {
    let sim = SimProcess::start(&[]).await?;
    let scratch = Scratch::new("fallback")?;
    let limited = limits(REQUESTS_PER_MINUTE);
    let ideal = ideal_secs(requests, REQUESTS_PER_MINUTE);
    let mut repeats_out = Vec::new();
    for repeat in 1..=repeats {
        let db = scratch.path().join(format!("limited-{repeat}.db"));
        let limited_secs = pass(sim.base_url(), &db, requests, limited).await?;
        let db = scratch.path().join(format!("free-{repeat}.db"));
        let free_secs = pass(sim.base_url(), &db, requests, limits(UNLIMITED_TOKENS)).await?;
        let overhead_ms = (limited_secs - ideal).max(0.0) * 1000.0 / requests as f64;
        repeats_out.push(vec![overhead_ms, limited_secs, free_secs * 1000.0 / requests as f64]);
    }
    let setup = format!(
        "{requests} requests, sync lane concurrency 8, {REQUESTS_PER_MINUTE} requests/min \
         (the limit alone takes {ideal:.1} s), simulator latency 0"
    );
    Ok(Sampled::new("fallback", setup, &METRICS, &repeats_out))
}

fn limits(requests_per_minute: u64) -> SyncLimits {
    SyncLimits {
        requests_per_minute,
        input_tokens_per_minute: UNLIMITED_TOKENS,
        output_tokens_per_minute: UNLIMITED_TOKENS,
        ..SyncLimits::default()
    }
}

/// Seconds the rate limit alone needs for `requests`: the bucket starts
/// full with `BURST_SECS` of quota, the rest comes at the rate.
fn ideal_secs(requests: u64, per_minute: u64) -> f64 {
    let rate = per_minute as f64 / 60.0;
    (requests as f64 - rate * BURST_SECS).max(0.0) / rate
}

/// One pass: a fresh database with `requests` unfinished requests, all sent
/// through the lane; returns the seconds until every one is stored final.
async fn pass(base_url: &str, db: &std::path::Path, requests: u64, limits: SyncLimits) -> anyhow::Result<f64> {
    let store = SharedStore::new(Store::open(db)?);
    let run_id = store.call(move |s| seed(s, requests)).await?;
    let lane = SyncLane::new(super::ingest::providers(base_url)?, store.clone(), Arc::new(SystemClock), limits);
    let started = Instant::now();
    // What the engine's fallback does: every unfinished request, straight from the store.
    let work = store.call(move |s| s.sync_candidates(run_id, 3, usize::MAX)).await?;
    let batch: Vec<SyncRequest> = work
        .into_iter()
        .map(|w| SyncRequest {
            run_id,
            custom_id: w.custom_id,
            params: w.params,
            provider: "anthropic".to_owned(),
            model: "claude-haiku-4-5".to_owned(),
            betas: Vec::new(),
            attempts: w.attempts,
            max_attempts: 3,
        })
        .collect();
    ensure!(batch.len() as u64 == requests, "expected {requests} candidates, found {}", batch.len());
    lane.send(batch);
    while lane.outstanding(run_id) > 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let succeeded = store.call(move |s| s.request_counts(run_id)).await?.get("succeeded").copied().unwrap_or(0);
    ensure!(succeeded == requests, "{succeeded} of {requests} requests succeeded");
    Ok(elapsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ideal_time_leaves_out_the_burst() {
        assert_eq!(ideal_secs(2000, 6000), 10.0);
        assert_eq!(ideal_secs(500, 6000), 0.0);
    }
}
