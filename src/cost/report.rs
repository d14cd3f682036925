//! `orchestrator cost`: spend, the sync baseline, savings and the five
//! KPIs for a window, as a table, JSON (a public contract) or CSV.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::usd;
use crate::store::{GroupBy, KpiFigures, Scope, SpendRow, Store, StoreError};

/// The whole report. Fields are only ever added.
#[derive(Debug, Clone, Serialize)]
pub struct CostReport {
    /// The results covered.
    pub window: Window,
    /// How `rows` are grouped (`job`, `tag`, `model`, `lane`, `day`), if at all.
    pub by: Option<String>,
    /// Everything in the window.
    pub total: Totals,
    /// One row per group.
    pub rows: Vec<Row>,
    /// The five KPIs of everything in the window.
    pub kpis: Kpis,
}

/// The window of a report.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    /// Start, inclusive.
    pub since: DateTime<Utc>,
    /// End, exclusive.
    pub until: DateTime<Utc>,
    /// Only this job, if set.
    pub job: Option<String>,
}

/// Spend, savings and usage of a group or of everything.
#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// What was charged.
    pub cost_usd: f64,
    /// What the synchronous API would have charged for the same work.
    pub sync_equivalent_usd: f64,
    /// `sync_equivalent_usd − cost_usd`.
    pub savings_usd: f64,
    /// Savings as a percentage of the sync baseline (null without spend).
    pub savings_pct: Option<f64>,
    /// Successful responses.
    pub requests: i64,
    /// Successful responses through the batch lane.
    pub requests_batch: i64,
    /// Successful responses through the sync lane.
    pub requests_sync: i64,
    /// Errored and expired results (not billed).
    pub failed_results: i64,
    /// Uncached input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache writes (5-minute and 1-hour).
    pub cache_write_tokens: i64,
    /// Cache reads.
    pub cache_read_tokens: i64,
    /// Share of input tokens read from the cache (null without input).
    pub cache_read_share: Option<f64>,
    /// All tokens through the batch lane.
    pub batch_tokens: i64,
    /// All tokens through the sync lane.
    pub sync_tokens: i64,
    /// Charged for the sync fallback of batch-tier runs, on the job's own provider (included in cost_usd).
    pub fallback_usd: f64,
    /// Charged to failover models on other providers (included in cost_usd, apart from fallback_usd).
    pub failover_usd: f64,
    /// Charged for duplicate successes, e.g. a batch result that arrived after its sync fallback (waste).
    pub duplicate_usd: f64,
    /// Duplicate successes.
    pub duplicates: i64,
}

/// One group.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The job, tag, model, lane or day.
    pub key: String,
    /// Its figures.
    #[serde(flatten)]
    pub totals: Totals,
    /// Its KPIs (rows by job or tag only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kpis: Option<Kpis>,
}

/// One KPI: its value, its target and whether it is met (null when there is nothing to measure).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Kpi {
    /// The measured value.
    pub value: Option<f64>,
    /// The target, as a bound (`>= 0.8`, `<= 14400`), if there is one.
    pub target: Option<&'static str>,
    /// Whether the value meets the target.
    pub met: Option<bool>,
}

/// The five KPIs of the migration plan.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Kpis {
    /// 1. Share of batch-eligible token volume that went through the batch lane (target ≥ 80%).
    pub batch_token_share: Kpi,
    /// 2. Money saved versus the sync baseline, US dollars.
    pub savings_usd: Kpi,
    /// 3. Batch turnaround, submission to end, seconds: median (target ≤ 4 h)...
    pub turnaround_p50_secs: Kpi,
    /// ... and 95th percentile (target ≤ 12 h).
    pub turnaround_p95_secs: Kpi,
    /// 4. Errored and expired batch requests over batch requests (target ≤ 1%).
    pub batch_error_rate: Kpi,
    /// 5. Runs whose sync fallback engaged (target ≤ 5 per 30 days)...
    pub fallbacks_fired: Kpi,
    /// ... and batch create calls that failed.
    pub batch_submit_failures: Kpi,
}

fn at_least(value: Option<f64>, target: f64, text: &'static str) -> Kpi {
    Kpi { value, target: Some(text), met: value.map(|v| v >= target) }
}

fn at_most(value: Option<f64>, target: f64, text: &'static str) -> Kpi {
    Kpi { value, target: Some(text), met: value.map(|v| v <= target) }
}

fn ratio(part: i64, whole: i64) -> Option<f64> {
    (whole > 0).then(|| part as f64 / whole as f64)
}

/// Nearest-rank percentile of sorted values.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

impl Totals {
    fn from_row(row: &SpendRow) -> Totals {
        let input = row.input_tokens + row.cache_write_tokens + row.cache_read_tokens;
        Totals {
            cost_usd: usd(row.cost_micros),
            sync_equivalent_usd: usd(row.sync_cost_micros),
            savings_usd: usd(row.sync_cost_micros - row.cost_micros),
            savings_pct: ratio(row.sync_cost_micros - row.cost_micros, row.sync_cost_micros).map(|r| r * 100.0),
            requests: row.requests,
            requests_batch: row.requests_batch,
            requests_sync: row.requests_sync,
            failed_results: row.failed_results,
            input_tokens: row.input_tokens,
            output_tokens: row.output_tokens,
            cache_write_tokens: row.cache_write_tokens,
            cache_read_tokens: row.cache_read_tokens,
            cache_read_share: ratio(row.cache_read_tokens, input),
            batch_tokens: row.batch_tokens,
            sync_tokens: row.sync_tokens,
            fallback_usd: usd(row.fallback_micros),
            failover_usd: usd(row.failover_micros),
            duplicate_usd: usd(row.duplicate_micros),
            duplicates: row.duplicates,
        }
    }
}

impl Kpis {
    fn new(spend: &SpendRow, figures: &KpiFigures, days: f64) -> Kpis {
        // "At most 5 a month": a shorter window is held to the monthly figure, a longer one pro rata.
        let fallback_target = 5.0 * (days / 30.0).max(1.0);
        let turnarounds = &figures.turnarounds_secs;
        Kpis {
            batch_token_share: at_least(ratio(spend.eligible_batch_tokens, spend.eligible_tokens), 0.8, ">= 0.8"),
            savings_usd: Kpi { value: Some(usd(spend.sync_cost_micros - spend.cost_micros)), target: None, met: None },
            turnaround_p50_secs: at_most(percentile(turnarounds, 0.5), 4.0 * 3600.0, "<= 14400"),
            turnaround_p95_secs: at_most(percentile(turnarounds, 0.95), 12.0 * 3600.0, "<= 43200"),
            batch_error_rate: at_most(ratio(figures.batch_failed_results, figures.batch_results), 0.01, "<= 0.01"),
            fallbacks_fired: Kpi {
                value: Some(figures.fallbacks as f64),
                target: Some("<= 5 per 30 days"),
                met: Some(figures.fallbacks as f64 <= fallback_target),
            },
            batch_submit_failures: Kpi { value: Some(figures.submit_failures as f64), target: None, met: None },
        }
    }
}

/// Builds the report for `scope` (whose bounds must be set), grouped by `by`.
pub fn build(store: &Store, scope: &Scope, by: Option<GroupBy>) -> Result<CostReport, StoreError> {
    let (since, until) = (scope.since.unwrap_or(DateTime::<Utc>::MIN_UTC), scope.until.unwrap_or_else(Utc::now));
    let days = ((until - since).num_seconds() as f64 / 86_400.0).max(1.0);
    let (total, groups) = store.spend(scope, by)?;
    let kpis = Kpis::new(&total, &store.kpi_figures(scope)?, days);
    let mut rows = Vec::with_capacity(groups.len());
    for group in &groups {
        let key = group.key.clone().unwrap_or_default();
        let group_scope = match by {
            Some(GroupBy::Job) => Some(Scope { job: Some(key.clone()), ..scope.clone() }),
            Some(GroupBy::Tag) if key != "(untagged)" => Some(Scope { tag: Some(key.clone()), ..scope.clone() }),
            _ => None,
        };
        let kpis = match group_scope {
            Some(s) => Some(Kpis::new(group, &store.kpi_figures(&s)?, days)),
            None => None,
        };
        rows.push(Row { key, totals: Totals::from_row(group), kpis });
    }
    Ok(CostReport {
        window: Window { since, until, job: scope.job.clone() },
        by: by.map(|by| by.as_str().to_owned()),
        total: Totals::from_row(&total),
        rows,
        kpis,
    })
}
