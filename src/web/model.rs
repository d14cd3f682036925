//! What the dashboard shows, built from the store. The pages and the JSON
//! API serialize the same structures, so a figure on a page is the figure
//! the API returns. Field names are a public contract: only ever added.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::cost::report::{self, CostReport, Kpis};
use crate::cost::{month_start, usd};
use crate::job::Job;
use crate::store::{BatchListing, ErrorGroup, GroupBy, RunFilter, RunSummary, Scope, Store, StoreError};

/// How far back the lifecycle table and `/api/v1/runs` look by default.
pub const DEFAULT_RUN_LIMIT: u32 = 100;

/// The window of the KPIs shown beside the lifecycle table.
const KPI_DAYS: i64 = 30;

/// Event kinds that record a decision about a run, shown on its page.
const DECISIONS: &[&str] = &[
    "run_created",
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

/// One run in the lifecycle table and in `/api/v1/runs`.
#[derive(Debug, Clone, Serialize)]
pub struct RunItem {
    /// Database id (the page is `/runs/{id}`).
    pub id: i64,
    /// `<job>-<YYYYMMDDTHHMM>`.
    pub run_key: String,
    /// The job.
    pub job: String,
    /// The job's tags when the run was created.
    pub tags: Vec<String>,
    /// The job's time zone (for display), UTC when the job is gone.
    pub timezone: String,
    /// The tier at creation.
    pub tier: String,
    /// The router's lane: `batch` or `sync`.
    pub lane: String,
    /// `open`, `completed`, `failed`, `late` or `skipped`.
    pub state: String,
    /// Why it failed, was late or skipped.
    pub reason: Option<String>,
    /// When an open run passed its deadline (it keeps going until every request is final).
    pub deadline_missed_at: Option<DateTime<Utc>>,
    /// Since when delivering its results fails (they stay stored and are retried).
    pub delivery_failing_since: Option<DateTime<Utc>>,
    /// The last delivery error, while delivery fails.
    pub delivery_error: Option<String>,
    /// The scheduled instant.
    pub scheduled_for: DateTime<Utc>,
    /// When its first batch was created at the provider.
    pub submitted_at: Option<DateTime<Utc>>,
    /// Requests in the run.
    pub requests_total: u64,
    /// Requests with a final outcome.
    pub requests_done: u64,
    /// Of those, failed for good.
    pub requests_failed: u64,
    /// When an open run is expected to finish, and on what grounds (`eta_basis`).
    pub eta: Option<DateTime<Utc>>,
    /// `turnaround_p50` (the job's median batch turnaround), `fallback` or `deadline`.
    pub eta_basis: Option<&'static str>,
    /// When the run closed.
    pub completed_at: Option<DateTime<Utc>>,
    /// When the fallback engine plans to move what is left to the sync lane.
    pub fallback_at: Option<DateTime<Utc>>,
    /// When it did, if it did.
    pub fallback_started_at: Option<DateTime<Utc>>,
    /// `deadline` or `batch_create_failed`.
    pub fallback_reason: Option<String>,
    /// The deadline.
    pub deadline_at: DateTime<Utc>,
    /// Charged so far.
    pub cost_usd: f64,
    /// What the synchronous API would have charged.
    pub sync_equivalent_usd: f64,
    /// The difference.
    pub savings_usd: f64,
}

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
}

/// One batch, in `/api/v1/batches` and on a run's page.
#[derive(Debug, Clone, Serialize)]
pub struct BatchItem {
    /// Our id.
    pub id: i64,
    /// Its run.
    pub run_id: i64,
    /// The run's key.
    pub run_key: String,
    /// The job.
    pub job: String,
    /// Provider name.
    pub provider: String,
    /// The provider's id, once created.
    pub provider_batch_id: Option<String>,
    /// `submitting`, `in_progress`, `canceling`, `ended` or `abandoned`.
    pub state: &'static str,
    /// Requests in it.
    pub requests: u64,
    /// When the intent to create it was committed.
    pub intent_at: DateTime<Utc>,
    /// When the provider accepted it.
    pub submitted_at: Option<DateTime<Utc>>,
    /// When the provider ended it.
    pub ended_at: Option<DateTime<Utc>>,
    /// `ended_at − submitted_at`, seconds.
    pub turnaround_secs: Option<f64>,
    /// Whether every result line is stored.
    pub results_ingested: bool,
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
    /// The next firing.
    pub next_at: Option<DateTime<Utc>>,
    /// `realtime`, `soft` or `batch`.
    pub tier: &'static str,
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

/// The zone each job's times are shown in.
pub type Zones = HashMap<String, String>;

/// Each known job's time zone.
pub fn zones(jobs: &BTreeMap<String, Job>) -> Zones {
    jobs.values().map(|job| (job.name.clone(), job.manifest.schedule.timezone.clone())).collect()
}

/// Median batch turnaround per job, seconds, over the last 30 days.
fn turnaround_medians(store: &Store, runs: &[RunSummary], now: DateTime<Utc>) -> Result<Medians, StoreError> {
    let mut medians = HashMap::new();
    for run in runs.iter().filter(|r| r.run.state.as_str() == "open") {
        if medians.contains_key(&run.run.job) {
            continue;
        }
        let scope =
            Scope { since: Some(now - Duration::days(KPI_DAYS)), job: Some(run.run.job.clone()), ..Scope::default() };
        let figures = store.kpi_figures(&scope)?;
        medians.insert(run.run.job.clone(), report::percentile(&figures.turnarounds_secs, 0.5));
    }
    Ok(medians)
}

/// The median batch turnaround of each job, seconds (`None` without history).
type Medians = HashMap<String, Option<f64>>;

/// When an open run should finish: its batch's expected end by the job's
/// median turnaround, but never after the fallback (which takes over then),
/// and never after the deadline.
fn eta(summary: &RunSummary, median: Option<f64>) -> (Option<DateTime<Utc>>, Option<&'static str>) {
    let run = &summary.run;
    if run.state.as_str() != "open" {
        return (None, None);
    }
    let by_turnaround = summary
        .submitted_at
        .zip(median)
        .filter(|_| run.fallback_started_at.is_none() && run.lane == "batch")
        .map(|(at, secs)| at + Duration::milliseconds((secs * 1000.0) as i64));
    let candidates = [
        (by_turnaround, "turnaround_p50"),
        (run.fallback_at.filter(|_| run.fallback_started_at.is_none() && run.sync_blocked.is_none()), "fallback"),
        (Some(run.deadline_at), "deadline"),
    ];
    candidates
        .into_iter()
        .filter_map(|(at, basis)| at.map(|at| (at, basis)))
        .min_by_key(|(at, _)| *at)
        .map_or((None, None), |(at, basis)| (Some(at), Some(basis)))
}

fn run_item(summary: &RunSummary, zones: &Zones, median: Option<f64>) -> RunItem {
    let run = &summary.run;
    let (eta, eta_basis) = eta(summary, median);
    RunItem {
        id: run.id,
        run_key: run.run_key.clone(),
        job: run.job.clone(),
        tags: run.tags.clone(),
        timezone: zones.get(&run.job).cloned().unwrap_or_else(|| "UTC".into()),
        tier: run.tier.clone(),
        lane: run.lane.clone(),
        state: run.state.as_str().to_owned(),
        reason: run.reason.clone(),
        deadline_missed_at: run.deadline_missed_at,
        delivery_failing_since: run.delivery_failing_since,
        delivery_error: run.delivery_error.clone(),
        scheduled_for: run.scheduled_for,
        submitted_at: summary.submitted_at,
        requests_total: summary.requests_total,
        requests_done: summary.requests_done,
        requests_failed: summary.requests_failed,
        eta,
        eta_basis,
        completed_at: run.finished_at,
        fallback_at: run.fallback_at,
        fallback_started_at: run.fallback_started_at,
        fallback_reason: run.fallback_reason.clone(),
        deadline_at: run.deadline_at,
        cost_usd: usd(summary.cost_micros),
        sync_equivalent_usd: usd(summary.sync_cost_micros),
        savings_usd: usd(summary.sync_cost_micros - summary.cost_micros),
    }
}

/// The runs matching `filter`, as the lifecycle table shows them.
pub fn runs(store: &Store, filter: &RunFilter, zones: &Zones, now: DateTime<Utc>) -> Result<Vec<RunItem>, StoreError> {
    let summaries = store.run_summaries(filter)?;
    let medians = turnaround_medians(store, &summaries, now)?;
    Ok(summaries.iter().map(|s| run_item(s, zones, medians.get(&s.run.job).copied().flatten())).collect())
}

/// The KPIs of the last 30 days, as `orchestrator cost` computes them.
pub fn kpis(store: &Store, since: DateTime<Utc>, until: DateTime<Utc>) -> Result<CostReport, StoreError> {
    report::build(store, &Scope { since: Some(since), until: Some(until), ..Scope::default() }, None)
}

/// `/batches`.
pub fn overview(store: &Store, zones: &Zones, now: DateTime<Utc>) -> Result<Overview, StoreError> {
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
    Ok(Overview { now, strip, runs: runs(store, &filter, zones, now)?, spend_by_job })
}

/// A batch listing as the API and the run page show it.
pub fn batch_item(listing: &BatchListing) -> BatchItem {
    let batch = &listing.batch;
    BatchItem {
        id: batch.id,
        run_id: batch.run_id,
        run_key: listing.run_key.clone(),
        job: listing.job.clone(),
        provider: batch.provider.clone(),
        provider_batch_id: batch.provider_batch_id.clone(),
        state: batch.state.as_str(),
        requests: batch.request_count,
        intent_at: batch.intent_at,
        submitted_at: batch.submitted_at,
        ended_at: batch.ended_at,
        turnaround_secs: batch
            .submitted_at
            .zip(batch.ended_at)
            .map(|(start, end)| (end - start).num_milliseconds() as f64 / 1000.0),
        results_ingested: batch.results_ingested,
    }
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
    let medians = turnaround_medians(store, std::slice::from_ref(&summary), now)?;
    let decisions = store
        .events(Some(id))?
        .into_iter()
        .filter(|e| DECISIONS.contains(&e.kind.as_str()))
        .map(|e| Decision { at: e.at, kind: e.kind, detail: e.detail })
        .collect();
    Ok(Some(RunDetail {
        run: run_item(&summary, zones, medians.get(&summary.run.job).copied().flatten()),
        requests: store.request_counts(id)?,
        batches: store.batch_listings(Some(id), u32::MAX)?.iter().map(batch_item).collect(),
        decisions,
        errors: store.run_errors(id)?.into_iter().map(error_item).collect(),
    }))
}

/// The schedule of `job` in words, e.g. "At 02:00 on every day".
pub fn describe_schedule(cron: &str) -> String {
    crate::schedule::cron_parser().parse(cron).map_or_else(|_| cron.to_owned(), |parsed| parsed.describe())
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
        items.push(JobItem {
            name: job.name.clone(),
            description: manifest.description.clone(),
            cron: manifest.schedule.cron.clone(),
            schedule: describe_schedule(&manifest.schedule.cron),
            timezone: manifest.schedule.timezone.clone(),
            next_at: schedules.get(&job.name).copied().flatten(),
            tier: manifest.tier.as_str(),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RunRow, RunState};

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    fn open_run(fallback_at: Option<DateTime<Utc>>) -> RunSummary {
        let run = RunRow {
            id: 1,
            job: "nightly".into(),
            scheduled_for: at(0),
            run_key: "nightly-x".into(),
            tier: "batch".into(),
            deadline_at: at(10_000),
            state: RunState::Open,
            reason: None,
            lane: "batch".into(),
            created_at: at(0),
            fallback_at,
            fallback_started_at: None,
            fallback_reason: None,
            finished_at: None,
            tags: vec![],
            sync_blocked: None,
            prepared_at: Some(at(0)),
            deadline_missed_at: None,
            delivery_failing_since: None,
            delivery_error: None,
        };
        RunSummary {
            run,
            requests_total: 10,
            requests_done: 0,
            requests_failed: 0,
            submitted_at: Some(at(60)),
            cost_micros: 0,
            sync_cost_micros: 0,
        }
    }

    #[test]
    fn the_eta_is_the_median_turnaround_unless_the_fallback_or_deadline_comes_first() {
        assert_eq!(eta(&open_run(Some(at(9_000))), Some(600.0)), (Some(at(660)), Some("turnaround_p50")));
        assert_eq!(eta(&open_run(Some(at(300))), Some(600.0)), (Some(at(300)), Some("fallback")));
        assert_eq!(eta(&open_run(None), None), (Some(at(10_000)), Some("deadline")));
        let mut blocked = open_run(Some(at(300)));
        blocked.run.sync_blocked = Some("budget".into());
        assert_eq!(
            eta(&blocked, Some(600.0)),
            (Some(at(660)), Some("turnaround_p50")),
            "a blocked fallback never fires"
        );
        let mut closed = open_run(None);
        closed.run.state = RunState::Completed;
        assert_eq!(eta(&closed, Some(600.0)), (None, None));
    }
}
