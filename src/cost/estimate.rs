//! `orchestrator estimate`: each job's projected monthly cost on the sync
//! lane only versus as its tier routes it, and advice for realtime jobs
//! whose deadline would allow the batch lane.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::budget::{UsageSource, hinted_usage, per_request};
use super::{Pricer, usd};
use crate::job::Job;
use crate::manifest::{Lane, format_duration};
use crate::store::{AverageUsage, Store, StoreError};

/// Input tokens per request assumed when nothing better is known.
const DEFAULT_INPUT_TOKENS: f64 = 1000.0;

/// Days a month is projected over.
const MONTH_DAYS: i64 = 30;

/// The projection of every job.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    /// The volume multiplier applied to `totals_at_volume`.
    pub volume: f64,
    /// One row per job, at the current volume.
    pub rows: Vec<JobEstimate>,
    /// Sums of the rows.
    pub totals: Totals,
    /// The same at `volume` times the items per run.
    pub totals_at_volume: Totals,
    /// Realtime jobs that could use the batch lane.
    pub advice: Vec<Advice>,
}

/// Monthly projection of one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobEstimate {
    /// The job.
    pub job: String,
    /// Its tier.
    pub tier: &'static str,
    /// The provider its requests go to.
    pub provider: String,
    /// The model of its routed lane (`batch_model` on the batch lane).
    pub model: String,
    /// Firings in the next 30 days.
    pub runs_per_month: u64,
    /// Items per run.
    pub items_per_run: f64,
    /// Where `items_per_run` came from: `observed`, `hints` or `items` (read now).
    pub items_source: &'static str,
    /// Input tokens per request (cache reads and writes included).
    pub input_tokens: f64,
    /// Output tokens per request.
    pub output_tokens: f64,
    /// Where the token figures came from: `observed`, `hints` or `max_tokens` (an upper bound).
    pub tokens_source: UsageSource,
    /// Everything on the synchronous API with `model`.
    pub sync_only_usd: f64,
    /// As the tier routes it (batch price for soft and batch, before any fallback).
    pub routed_usd: f64,
    /// `sync_only_usd − routed_usd`.
    pub savings_usd: f64,
}

/// Sums over jobs.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Totals {
    /// Everything on the sync lane.
    pub sync_only_usd: f64,
    /// As routed.
    pub routed_usd: f64,
    /// The difference.
    pub savings_usd: f64,
}

/// A realtime job whose deadline allows the batch lane.
#[derive(Debug, Clone, Serialize)]
pub struct Advice {
    /// The job.
    pub job: String,
    /// What to change.
    pub message: String,
    /// What the move saves a month at the current volume.
    pub savings_usd: f64,
}

/// What is known about a job before projecting it.
#[derive(Debug, Clone, Copy)]
pub struct Inputs {
    /// Items per run and where the figure came from.
    pub items: (f64, &'static str),
    /// Usage per request and where it came from.
    pub usage: (AverageUsage, UsageSource),
}

/// The per-run inputs of `job`: observed history first, then the
/// manifest's hints, then `read_items` (the items a run would read now)
/// and `input_guess` (a rendered request's length / 4).
pub fn inputs(
    store: Option<&Store>,
    job: &Job,
    read_items: impl FnOnce() -> Option<(usize, f64)>,
) -> Result<Inputs, StoreError> {
    let observed = store.map(|s| s.average_requests_per_run(&job.name)).transpose()?.flatten();
    let hinted = job.manifest.estimate.and_then(|hints| hints.items_per_run).map(|n| (n as f64, "hints"));
    let known = observed.map(|n| (n, "observed")).or(hinted);
    // Reading the items is the last resort; it also sizes a rendered request.
    let read = if known.is_none() { read_items() } else { None };
    let items = known.or(read.map(|(count, _)| (count as f64, "items"))).unwrap_or((1.0, "default"));
    let input_guess = read.map_or(DEFAULT_INPUT_TOKENS, |(_, guess)| guess);
    let usage = match store {
        Some(store) => per_request(store, job, input_guess)?,
        None => hinted_usage(job, input_guess),
    };
    Ok(Inputs { items, usage })
}

/// Firings of `job` in the 30 days after `now`.
pub fn runs_per_month(job: &Job, now: DateTime<Utc>) -> u64 {
    let end = now + chrono::Duration::days(MONTH_DAYS);
    job.schedule.due_between(now, end, usize::MAX).len() as u64
}

/// The monthly cost of `requests` requests of `job` in `lane`.
fn monthly(pricer: &Pricer, job: &Job, lane: Lane, usage: &AverageUsage, requests: f64) -> f64 {
    pricer.cost(job.model_for(lane), lane, &usage.times(requests)).map_or(0.0, |cost| usd(cost.actual))
}

/// One job's row.
pub fn project(pricer: &Pricer, job: &Job, inputs: &Inputs, runs: u64) -> JobEstimate {
    let (usage, tokens_source) = inputs.usage;
    let requests = runs as f64 * inputs.items.0;
    let lane = job.manifest.tier.lane();
    let sync_only = monthly(pricer, job, Lane::Sync, &usage, requests);
    let routed = monthly(pricer, job, lane, &usage, requests);
    JobEstimate {
        job: job.name.clone(),
        tier: job.manifest.tier.as_str(),
        provider: job.manifest.provider.clone(),
        model: job.model_for(lane).to_owned(),
        runs_per_month: runs,
        items_per_run: inputs.items.0,
        items_source: inputs.items.1,
        input_tokens: usage.input_tokens
            + usage.cache_write_5m_tokens
            + usage.cache_write_1h_tokens
            + usage.cache_read_tokens,
        output_tokens: usage.output_tokens,
        tokens_source,
        sync_only_usd: sync_only,
        routed_usd: routed,
        savings_usd: sync_only - routed,
    }
}

/// The advice for a realtime job whose deadline allows the batch lane, if it does.
pub fn advice(pricer: &Pricer, job: &Job, inputs: &Inputs, runs: u64) -> Option<Advice> {
    if !batch_eligible(job) {
        return None;
    }
    let requests = runs as f64 * inputs.items.0;
    let usage = inputs.usage.0;
    let savings =
        monthly(pricer, job, Lane::Sync, &usage, requests) - monthly(pricer, job, Lane::Batch, &usage, requests);
    Some(Advice {
        job: job.name.clone(),
        message: format!(
            "realtime with a {} deadline: `tier: soft` would put it on the batch lane at half price, \
             with the sync fallback holding the deadline",
            format_duration(job.deadline)
        ),
        savings_usd: savings,
    })
}

/// Sums of rows, scaled by `volume`.
pub fn totals(rows: &[JobEstimate], volume: f64) -> Totals {
    rows.iter().fold(Totals::default(), |sum, row| Totals {
        sync_only_usd: sum.sync_only_usd + row.sync_only_usd * volume,
        routed_usd: sum.routed_usd + row.routed_usd * volume,
        savings_usd: sum.savings_usd + row.savings_usd * volume,
    })
}

/// Whether `job` should get the advice ([`crate::plan::batch_eligible`]).
fn batch_eligible(job: &Job) -> bool {
    crate::plan::batch_eligible(job.manifest.tier, job.deadline)
}
