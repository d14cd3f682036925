//! What the dashboard shows, built from the store. The pages and the JSON
//! API serialize the same structures, so a figure on a page is the figure
//! the API returns. Field names are a public contract: only ever added.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::cost::report::{self, CostReport, Kpis};
use crate::cost::{month_start, usd};
use crate::job::Job;
pub use crate::status::{BatchItem, RunItem, Zones, batch_item, runs, zones};
use crate::store::{ErrorGroup, GroupBy, RunFilter, Scope, Store, StoreError};

/// How far back the lifecycle table and `/api/v1/runs` look by default.
pub const DEFAULT_RUN_LIMIT: u32 = 100;

/// The window of the KPIs shown beside the lifecycle table.
const KPI_DAYS: i64 = 30;

/// Event kinds that record a decision about a run, shown on its page.
const DECISIONS: &[&str] = &[
    "run_created",
    "stage_input",
    "run_queued",
    "run_skipped",
    "run_late",
    "run_failed",
    "routed_to_sync",
    "fallback_started",
    "budget_exceeded",
    "batch_submitted",
    "batch_create_failed",
    "batch_adopted",
    "batch_abandoned",
    "batch_cancel_requested",
    "batch_results_ingested",
    "alert_sent",
    "alert_failed",
];

/// The strip above the lifecycle table.
#[derive(Debug, Clone, Serialize)]
pub struct Strip {
    /// Runs not yet closed.
    pub open_runs: u64,
    /// Runs completed since midnight UTC.
    pub completed_today: u64,
    /// Errored or expired results since midnight UTC.
    pub errored_today: u64,
    /// Charged this calendar month (UTC).
    pub spent_month_usd: f64,
    /// Saved against the sync baseline this month.
    pub saved_month_usd: f64,
    /// The five KPIs over the last 30 days.
    pub kpis: Kpis,
}

/// Spend and savings of one job this month (the cost-attribution chart).
#[derive(Debug, Clone, Serialize)]
pub struct JobSpend {
    /// The job.
    pub job: String,
    /// Charged.
    pub cost_usd: f64,
    /// Saved.
    pub savings_usd: f64,
}

/// `/batches`: the whole overview.
#[derive(Debug, Clone, Serialize)]
pub struct Overview {
    /// When it was taken.
    pub now: DateTime<Utc>,
    /// The KPI strip.
    pub strip: Strip,
    /// Open runs, then the most recent ones.
    pub runs: Vec<RunItem>,
    /// Spend and savings per job this month, largest spend first.
    pub spend_by_job: Vec<JobSpend>,
    /// Each provider's batch processing queue, as far as our batches fill it.
    pub queues: Vec<crate::status::QueueStatus>,
}

/// A recorded decision about a run.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    /// When.
    pub at: DateTime<Utc>,
    /// What, e.g. `fallback_started`.
    pub kind: String,
    /// Its details.
    pub detail: serde_json::Value,
}

/// Failures of one kind within a run.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorItem {
    /// `result` (a request's final answer) or `call` (a failed HTTP call, maybe retried).
    pub source: &'static str,
    /// The result's status or the call's operation.
    pub what: String,
    /// The provider's error type.
    pub error_type: String,
    /// The provider's message.
    pub message: String,
    /// How many.
    pub count: u64,
}

/// `/runs/{id}`: one run in full.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The run's line of the lifecycle table.
    pub run: RunItem,
    /// Requests by state.
    pub requests: BTreeMap<&'static str, u64>,
    /// Its batches, newest first.
    pub batches: Vec<BatchItem>,
    /// Decisions and notable events, oldest first.
    pub decisions: Vec<Decision>,
    /// Failures grouped by kind.
    pub errors: Vec<ErrorItem>,
    /// For a stage's run, the upstream run whose results it read.
    pub upstream: Option<crate::store::LinkedRun>,
    /// The stages' runs that read this run's results.
    pub downstream: Vec<crate::store::LinkedRun>,
}

/// The last run of a job.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    /// Database id.
    pub id: i64,
    /// Its key.
    pub run_key: String,
    /// Its state.
    pub state: String,
    /// Its scheduled instant.
    pub scheduled_for: DateTime<Utc>,
}

/// `/jobs`: one job.
#[derive(Debug, Clone, Serialize)]
pub struct JobItem {
    /// The job's name.
    pub name: String,
    /// Its description.
    pub description: Option<String>,
    /// The cron expression.
    pub cron: String,
    /// The schedule in words.
    pub schedule: String,
    /// The time zone of the schedule.
    pub timezone: String,
    /// The next firing (for a queue: its next flush by `max_wait` or an item's deadline).
    pub next_at: Option<DateTime<Utc>>,
    /// For a job with `enqueue:`, the posted items waiting for a flush.
    pub queued: Option<u64>,
    /// `realtime`, `soft` or `batch`.
    pub tier: &'static str,
    /// The provider its requests go to.
    pub provider: String,
    /// The model.
    pub model: String,
    /// The batch lane's model, when different.
    pub batch_model: Option<String>,
    /// Its tags.
    pub tags: Vec<String>,
    /// Its latest run.
    pub last_run: Option<LastRun>,
    /// Charged this calendar month (UTC).
    pub month_cost_usd: f64,
    /// Its monthly budget, if it has one.
    pub budget_usd: Option<f64>,
    /// Month-to-date cost over the budget.
    pub budget_used: Option<f64>,
    /// Successful responses over the last 30 days (what the token figures cover).
    pub responses_30d: u64,
    /// Average input tokens per request (cached and uncached).
    pub avg_input_tokens: Option<f64>,
    /// Average output tokens per request.
    pub avg_output_tokens: Option<f64>,
    /// Share of responses cut off at `max_tokens`.
    pub max_tokens_share: Option<f64>,
    /// The manifest's `max_tokens`.
    pub max_tokens: i64,
}

/// The KPIs of the last 30 days, as `orchestrator cost` computes them.
pub fn kpis(store: &Store, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<CostReport, StoreError> {
    report::build(store, &Scope { since: Some(since), until: Some(until), ..Scope::default() }, None)
}

/// `/batches`.
/// `queue_limit` says each provider's queue limit (the batch lane's).
pub fn overview(
    store: &Store,
    zones: &Zones,
    queue_limit: impl Fn(&str) -> Option<u64>,
    now: DateTime<Utc>,
) -> Result<Overview, StoreError> {
    let month = Scope { since: Some(month_start(now)), until: None, ..Scope::default() };
    let (month_total, by_job) = store.spend(&month, Some(GroupBy::Job))?;
    let mut spend_by_job: Vec<JobSpend> = by_job
        .iter()
        .map(|row| JobSpend {
            job: row.key.clone().unwrap_or_default(),
            cost_usd: usd(row.cost_micros),
            savings_usd: usd(row.sync_cost_micros - row.cost_micros),
        })
        .collect();
    spend_by_job.sort_by(|a, b| b.cost_usd.total_cmp(&a.cost_usd).then_with(|| a.job.cmp(&b.job)));
    let filter = RunFilter { limit: DEFAULT_RUN_LIMIT, ..RunFilter::default() };
    let strip = Strip {
        open_runs: store.open_runs()?.len() as u64,
        completed_today: store.runs_completed_since(crate::clock::day_start(now))?,
        errored_today: store.errored_requests_since(crate::clock::day_start(now))?,
        spent_month_usd: usd(month_total.cost_micros),
        saved_month_usd: usd(month_total.sync_cost_micros - month_total.cost_micros),
        kpis: kpis(store, now - Duration::days(KPI_DAYS), now)?.kpis,
    };
    let queues = crate::status::queues(store, queue_limit)?;
    Ok(Overview { now, strip, runs: runs(store, &filter, zones, now)?, spend_by_job, queues })
}

fn error_item(group: ErrorGroup) -> ErrorItem {
    ErrorItem {
        source: group.source,
        what: group.what,
        error_type: group.error_type,
        message: group.message,
        count: group.count,
    }
}

/// `/runs/{id}`, or `None` when there is no such run.
pub fn run_detail(store: &Store, id: i64, zones: &Zones, now: DateTime<Utc>) -> Result<Option<RunDetail>, StoreError> {
    let Some(summary) = store.run_summary(id)? else { return Ok(None) };
    let decisions = store
        .events(Some(id))?
        .into_iter()
        .filter(|e| DECISIONS.contains(&e.kind.as_str()))
        .map(|e| Decision { at: e.at, kind: e.kind, detail: e.detail })
        .collect();
    Ok(Some(RunDetail {
        run: crate::status::run_view(store, &summary, zones, now)?,
        requests: store.request_counts(id)?,
        batches: store.batch_listings(Some(id), u32::MAX)?.iter().map(batch_item).collect(),
        decisions,
        errors: store.run_errors(id)?.into_iter().map(error_item).collect(),
        upstream: store.upstream_of(id)?,
        downstream: store.downstream_of(id)?,
    }))
}

/// The schedule of `job` in words, e.g. "At 02:00 on every day".
pub fn describe_schedule(cron: &str) -> String {
    crate::schedule::cron_parser().parse(cron).map_or_else(|_| cron.to_owned(), |parsed| parsed.describe())
}

/// When a job fires, in words: its cron, its upstream, its queue's flush rules.
fn describe_firing(job: &Job) -> String {
    let mut words = Vec::new();
    if job.schedule.is_timed() {
        words.push(describe_schedule(&job.schedule.text));
    } else if let Some(upstream) = job.manifest.items.as_ref().and_then(|items| items.from.as_deref()) {
        words.push(format!("when a run of `{upstream}` completes"));
    }
    if let Some(policy) = job.queue {
        words.push(format!(
            "when {} posted items wait or the oldest has waited {}",
            policy.max_items,
            crate::manifest::format_duration(policy.max_wait)
        ));
    }
    words.join(", and ")
}

/// `/jobs`: every known job.
pub fn jobs(store: &Store, jobs: &BTreeMap<String, Job>, now: DateTime<Utc>) -> Result<Vec<JobItem>, StoreError> {
    let schedules: HashMap<String, Option<DateTime<Utc>>> =
        store.schedules()?.into_iter().map(|s| (s.job, s.next_at)).collect();
    let mut items = Vec::with_capacity(jobs.len());
    for job in jobs.values() {
        // The latest by schedule: an older run still open must not hide a newer one.
        let last = store.latest_run(&job.name)?;
        let manifest = &job.manifest;
        let month_cost_usd = usd(store.spent_since(Some(&job.name), month_start(now))?);
        let budget_usd = manifest.budget.as_ref().and_then(|b| b.monthly_usd);
        let tokens = store.token_efficiency(&job.name, now - Duration::days(KPI_DAYS))?;
        let queue =
            job.queue.map(|policy| store.queue_summary(&job.name).map(|summary| (policy, summary))).transpose()?;
        let timed_next = schedules.get(&job.name).copied().flatten();
        let queue_next = queue.and_then(|(policy, summary)| crate::engine::next_flush(&summary, policy));
        items.push(JobItem {
            name: job.name.clone(),
            description: manifest.description.clone(),
            cron: job.schedule.text.clone(),
            schedule: describe_firing(job),
            timezone: job.schedule.timezone.name().to_owned(),
            next_at: [timed_next, queue_next].into_iter().flatten().min(),
            queued: queue.map(|(_, summary)| summary.waiting),
            tier: manifest.tier.as_str(),
            provider: manifest.provider.clone(),
            model: manifest.model.clone(),
            batch_model: manifest.batch_model.clone(),
            tags: manifest.tags.clone(),
            last_run: last.map(|run| LastRun {
                id: run.id,
                run_key: run.run_key,
                state: run.state.as_str().to_owned(),
                scheduled_for: run.scheduled_for,
            }),
            month_cost_usd,
            budget_usd,
            budget_used: budget_usd.filter(|b| *b > 0.0).map(|b| month_cost_usd / b),
            responses_30d: tokens.responses,
            avg_input_tokens: tokens.avg_input_tokens,
            avg_output_tokens: tokens.avg_output_tokens,
            max_tokens_share: tokens.max_tokens_share,
            max_tokens: manifest.max_tokens,
        });
    }
    Ok(items)
}
