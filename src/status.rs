//! The read model of runs and batches: what `orchestrator status`,
//! `/api/v1/status`, the dashboard's lifecycle table and `/api/v1/runs` and
//! `/api/v1/batches` show, built once here. A status report adds each job's
//! next firing and recent notable events. Field names are a public
//! contract: only ever added.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::cost::report;
use crate::cost::usd;
use crate::job::Job;
use crate::store::{BatchListing, RunFilter, RunSummary, Scope, Store, StoreError};

/// The window of the turnaround medians behind an open run's ETA.
const KPI_DAYS: i64 = 30;

/// Event kinds listed as "recent".
const NOTABLE: &[&str] = &[
    "run_start_failed",
    "deadline_missed",
    "delivery_failed",
    "run_skipped",
    "run_queued",
    "run_late",
    "run_failed",
    "fallback_started",
    "routed_to_sync",
    "batch_adopted",
    "budget_exceeded",
    "alert_failed",
    "leader_took_over",
];

/// The whole report (a public JSON shape: fields are only ever added).
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    /// When it was taken.
    pub now: DateTime<Utc>,
    /// Open runs, oldest first.
    pub runs: Vec<RunStatus>,
    /// Each job's schedule position.
    pub schedules: Vec<ScheduleStatus>,
    /// Notable events of the last 7 days, newest first.
    pub recent: Vec<RecentEvent>,
    /// Each provider's batch processing queue, as far as our batches fill it.
    pub queues: Vec<QueueStatus>,
    /// Each job's queue of posted items (`enqueue:`) with items waiting for a flush.
    pub enqueued: Vec<EnqueuedStatus>,
    /// The process that drives the state database, as last recorded.
    pub leader: Option<LeaderStatus>,
}

/// A leader whose row is older than this has stopped renewing it (it
/// renews every 5 s while it leads).
const LEADER_STALE_SECS: i64 = 90;

/// Who leads, and whether it still says so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LeaderStatus {
    /// The recorded leader.
    #[serde(flatten)]
    pub leader: crate::store::Leader,
    /// Seconds since it last renewed its row.
    pub renewed_secs_ago: i64,
    /// Whether that was in the last 90 s (a leader that stopped or crashed
    /// stops renewing; a standby takes over when its lock is free).
    pub renewing: bool,
}

impl LeaderStatus {
    /// The recorded `leader` as seen at `now` (real time: the row is).
    pub fn new(leader: crate::store::Leader, now: DateTime<Utc>) -> LeaderStatus {
        let renewed_secs_ago = (now - leader.renewed_at).num_seconds().max(0);
        let renewing = leader.stopped_at.is_none() && renewed_secs_ago <= LEADER_STALE_SECS;
        LeaderStatus { leader, renewed_secs_ago, renewing }
    }

    /// One line: `pid 12 on host-a (epoch 3) since …, renewed 4 s ago`.
    pub fn describe(&self) -> String {
        let (l, ago) = (&self.leader, self.renewed_secs_ago);
        let renewal = match (self.renewing, l.stopped_at) {
            (_, Some(at)) => format!("stopped cleanly at {}", time(at)),
            (true, None) => format!("renewed {ago} s ago"),
            (false, None) => format!("not renewed for {ago} s: no process leads now?"),
        };
        format!("pid {} on {} (epoch {}) since {}, {renewal}", l.pid, l.host, l.epoch, time(l.since))
    }
}

/// What waits in one job's queue of posted items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnqueuedStatus {
    /// The job.
    pub job: String,
    /// Items waiting for a flush.
    pub waiting: u64,
    /// When the oldest of them was posted.
    pub oldest_at: DateTime<Utc>,
}

/// How full one provider's batch processing queue is with our requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QueueStatus {
    /// The provider.
    pub provider: String,
    /// Requests of our batches not ended yet.
    pub requests: u64,
    /// Requests the queue holds across all batches, where the provider counts them.
    pub limit: Option<u64>,
}

/// The queue of every provider, with the limit `limit` says for each
/// (new creates wait while a queue is full).
pub fn queues(store: &Store, limit: impl Fn(&str) -> Option<u64>) -> Result<Vec<QueueStatus>, StoreError> {
    let depths = store.batch_queue_depths()?;
    Ok(crate::providers::NAMES
        .iter()
        .map(|name| QueueStatus {
            provider: (*name).to_owned(),
            requests: depths.get(*name).copied().unwrap_or(0),
            limit: limit(name),
        })
        .collect())
}

/// One open run, as `status` shows it: the run as the dashboard and
/// `/api/v1/runs` show it, with its requests by state and its batches.
#[derive(Debug, Clone, Serialize)]
pub struct RunStatus {
    /// Every field of a run in `/api/v1/runs`.
    #[serde(flatten)]
    pub run: RunItem,
    /// Seconds until the deadline (negative once passed).
    pub seconds_to_deadline: i64,
    /// Requests by state.
    pub requests: BTreeMap<&'static str, u64>,
    /// The run's batches, oldest first.
    pub batches: Vec<BatchItem>,
    /// For a stage's run, the upstream run whose results it read.
    pub upstream: Option<crate::store::LinkedRun>,
    /// The stages' runs that read this run's results so far.
    pub downstream: Vec<crate::store::LinkedRun>,
}

/// A job's schedule position.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleStatus {
    /// The job.
    pub job: String,
    /// Its next firing.
    pub next_at: Option<DateTime<Utc>>,
    /// The scheduled instant of its latest run.
    pub last_fired_for: Option<DateTime<Utc>>,
    /// An instant whose run could not start (it is tried again every minute).
    pub start_failed_for: Option<DateTime<Utc>>,
    /// Why it could not start.
    pub start_error: Option<String>,
}

/// A notable event.
#[derive(Debug, Clone, Serialize)]
pub struct RecentEvent {
    /// When.
    pub at: DateTime<Utc>,
    /// The job, when known.
    pub job: Option<String>,
    /// The run's key, when it concerns a run.
    pub run_key: Option<String>,
    /// What happened.
    pub kind: String,
    /// Details.
    pub detail: serde_json::Value,
}

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
    /// `provider/model` its sync lane failed over to, if it did.
    pub failover: Option<String>,
    /// When the failover started.
    pub failover_started_at: Option<DateTime<Utc>>,
    /// The deadline.
    pub deadline_at: DateTime<Utc>,
    /// Charged so far.
    pub cost_usd: f64,
    /// What the synchronous API would have charged.
    pub sync_equivalent_usd: f64,
    /// The difference.
    pub savings_usd: f64,
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
    /// The runs it carries, with how many of their requests: one unless the
    /// batch is shared by runs that were ready together.
    pub runs: Vec<crate::store::CarriedRun>,
}

/// The zone each job's times are shown in.
pub type Zones = HashMap<String, String>;

/// Each known job's time zone.
pub fn zones(jobs: &BTreeMap<String, Job>) -> Zones {
    jobs.values().map(|job| (job.name.clone(), job.schedule.timezone.name().to_owned())).collect()
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
        failover: run.failover.as_ref().map(|(provider, model)| format!("{provider}/{model}")),
        failover_started_at: run.failover_started_at,
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
        runs: listing.runs.clone(),
    }
}

/// One run as the lifecycle table shows it (its ETA from its job's median turnaround).
pub fn run_view(store: &Store, summary: &RunSummary, zones: &Zones, now: DateTime<Utc>) -> Result<RunItem, StoreError> {
    let medians = turnaround_medians(store, std::slice::from_ref(summary), now)?;
    Ok(run_item(summary, zones, medians.get(&summary.run.job).copied().flatten()))
}

/// Open runs with their requests by state and batches, of every job or only `job`.
fn open_runs(
    store: &Store,
    job: Option<&str>,
    zones: &Zones,
    now: DateTime<Utc>,
) -> Result<Vec<RunStatus>, StoreError> {
    let filter = RunFilter { job: job.map(str::to_owned), state: Some("open".into()), since: None, limit: u32::MAX };
    let mut runs = runs(store, &filter, zones, now)?;
    runs.sort_by_key(|run| (run.scheduled_for, run.id));
    let mut open = Vec::with_capacity(runs.len());
    for run in runs {
        let mut listings = store.batch_listings(Some(run.id), u32::MAX)?;
        listings.reverse();
        open.push(RunStatus {
            seconds_to_deadline: (run.deadline_at - now).num_seconds(),
            requests: store.request_counts(run.id)?,
            batches: listings.iter().map(batch_item).collect(),
            upstream: store.upstream_of(run.id)?,
            downstream: store.downstream_of(run.id)?,
            run,
        });
    }
    Ok(open)
}

/// Collects the report, for every job or only `job`; times are shown in
/// each job's zone from `zones` (UTC for a job not in it).
pub fn collect(
    store: &Store,
    job: Option<&str>,
    zones: &Zones,
    now: DateTime<Utc>,
) -> Result<StatusReport, StoreError> {
    let wanted = |name: &str| job.is_none_or(|j| j == name);
    let runs = open_runs(store, job, zones, now)?;
    let schedules = store
        .schedules()?
        .into_iter()
        .filter(|s| wanted(&s.job))
        .map(|s| ScheduleStatus {
            job: s.job,
            next_at: s.next_at,
            last_fired_for: s.last_fired_for,
            start_failed_for: s.start_failed_for,
            start_error: s.start_error,
        })
        .collect();
    let mut recent = Vec::new();
    for event in store.recent_events(NOTABLE, now - chrono::Duration::days(7), 200)? {
        let run = event.run_id.map(|id| store.run(id)).transpose()?.flatten();
        let job_name = event.job.clone().or_else(|| run.as_ref().map(|r| r.job.clone()));
        if !job_name.as_deref().is_none_or(wanted) || recent.len() >= 20 {
            continue;
        }
        recent.push(RecentEvent {
            at: event.at,
            job: job_name,
            run_key: run.map(|r| r.run_key),
            kind: event.kind,
            detail: event.detail,
        });
    }
    let queues = queues(store, crate::providers::queued_requests_limit)?;
    let enqueued = store
        .queue_depths()?
        .into_iter()
        .filter(|(name, _, _)| wanted(name))
        .map(|(job, waiting, oldest_at)| EnqueuedStatus { job, waiting, oldest_at })
        .collect();
    let leader = store.leader()?.map(|leader| LeaderStatus::new(leader, Utc::now()));
    Ok(StatusReport { now, runs, schedules, recent, queues, enqueued, leader })
}

/// An instant as the terminal report shows it.
fn time(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The report as text for a terminal.
pub fn render_text(report: &StatusReport) -> String {
    let mut out = String::new();
    if let Some(leader) = &report.leader {
        out.push_str(&format!("leader: {}\n", leader.describe()));
    }
    if report.runs.is_empty() {
        out.push_str("no open runs\n");
    }
    for queue in report.queues.iter().filter(|q| q.requests > 0) {
        let limit = queue.limit.map_or(String::new(), |limit| format!(" of {limit}"));
        out.push_str(&format!("batch queue: {} {}{limit} requests\n", queue.provider, queue.requests));
    }
    for queue in &report.enqueued {
        out.push_str(&format!(
            "queue {}: {} items waiting, the oldest posted {}\n",
            queue.job,
            queue.waiting,
            time(queue.oldest_at)
        ));
    }
    for status in &report.runs {
        let run = &status.run;
        let counts: Vec<String> =
            status.requests.iter().filter(|(_, n)| **n > 0).map(|(s, n)| format!("{s} {n}")).collect();
        out.push_str(&format!("{}  ({} tier, {} lane)\n", run.run_key, run.tier, run.lane));
        out.push_str(&format!("  requests:  {}\n", counts.join(", ")));
        out.push_str(&format!("  deadline:  {} (in {}s)\n", time(run.deadline_at), status.seconds_to_deadline));
        match (&run.fallback_started_at, &run.fallback_at) {
            (Some(at), _) => out.push_str(&format!(
                "  fallback:  engaged {} ({})\n",
                time(*at),
                run.fallback_reason.as_deref().unwrap_or("")
            )),
            (None, Some(at)) => out.push_str(&format!("  fallback:  planned at {}\n", time(*at))),
            (None, None) => {}
        }
        if let (Some(to), Some(at)) = (&run.failover, run.failover_started_at) {
            out.push_str(&format!("  failover:  to {to} since {} (the job's provider kept failing)\n", time(at)));
        }
        if let Some(upstream) = &status.upstream {
            out.push_str(&format!("  upstream:  {} ({})\n", upstream.run_key, upstream.state));
        }
        for downstream in &status.downstream {
            out.push_str(&format!("  stage:     {} ({})\n", downstream.run_key, downstream.state));
        }
        for batch in &status.batches {
            let id = batch.provider_batch_id.as_deref().unwrap_or("(not created)");
            out.push_str(&format!("  batch {}: {id} {} ({} requests)\n", batch.id, batch.state, batch.requests));
        }
        if let Some(at) = run.deadline_missed_at {
            out.push_str(&format!(
                "  late:      missed its deadline at {}; it keeps going until every request is final\n",
                time(at)
            ));
        }
        if let Some(since) = run.delivery_failing_since {
            let error = run.delivery_error.as_deref().unwrap_or("");
            out.push_str(&format!(
                "  delivery:  failing since {} (retried; results stay stored): {error}\n",
                time(since)
            ));
        }
    }
    render_schedules(&report.schedules, &mut out);
    if !report.recent.is_empty() {
        out.push_str("recent:\n");
    }
    for event in &report.recent {
        let who = event.run_key.clone().or_else(|| event.job.clone()).unwrap_or_default();
        out.push_str(&format!("  {} {} {} {}\n", time(event.at), event.kind, who, event.detail));
    }
    out
}

/// Each job's next firing, or the trigger it fires on instead, and an instant that could not start.
fn render_schedules(schedules: &[ScheduleStatus], out: &mut String) {
    for schedule in schedules {
        match schedule.next_at {
            Some(next) => out.push_str(&format!("job {}: next firing {}\n", schedule.job, time(next))),
            // A stage fires on its upstream's runs and a queue on its posted items, not on a clock.
            None => out.push_str(&format!(
                "job {}: no firing on a schedule (a stage fires when its upstream completes, a queue when items are posted)\n",
                schedule.job
            )),
        }
        if let Some(at) = schedule.start_failed_for {
            let error = schedule.start_error.as_deref().unwrap_or("");
            out.push_str(&format!("  could not start the run for {} (tried again every minute): {error}\n", time(at)));
        }
    }
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
            failover: None,
            failover_started_at: None,
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
    fn the_text_names_each_queue_our_batches_fill() {
        let queue = |provider: &str, requests, limit| QueueStatus { provider: provider.into(), requests, limit };
        let report = StatusReport {
            now: at(0),
            runs: vec![],
            schedules: vec![],
            recent: vec![],
            queues: vec![queue("anthropic", 4500, Some(100_000)), queue("openai", 20, None), queue("gemini", 0, None)],
            enqueued: vec![EnqueuedStatus { job: "tickets".into(), waiting: 12, oldest_at: at(0) }],
            leader: None,
        };
        let text = render_text(&report);
        assert!(text.contains("batch queue: anthropic 4500 of 100000 requests\n"), "{text}");
        assert!(
            text.contains("queue tickets: 12 items waiting, the oldest posted 2027-01-15 08:00:00 UTC\n"),
            "{text}"
        );
        assert!(text.contains("batch queue: openai 20 requests\n"), "{text}");
        assert!(!text.contains("gemini"), "an empty queue is not shown: {text}");
    }

    #[test]
    fn a_job_off_the_clock_is_not_said_to_fire_never() {
        let schedule = |job: &str, next_at| ScheduleStatus {
            job: job.into(),
            next_at,
            last_fired_for: None,
            start_failed_for: None,
            start_error: None,
        };
        let report = StatusReport {
            now: at(0),
            runs: vec![],
            schedules: vec![schedule("nightly", Some(at(3600))), schedule("digest", None)],
            recent: vec![],
            queues: vec![],
            enqueued: vec![],
            leader: None,
        };
        let text = render_text(&report);
        assert!(text.contains("job nightly: next firing 2027-01-15 09:00:00 UTC\n"), "{text}");
        assert!(text.contains("job digest: no firing on a schedule (a stage fires when its upstream"), "{text}");
        assert!(!text.contains("never"), "{text}");
    }

    #[test]
    fn the_leader_line_says_whether_the_leader_still_renews() {
        let leader = crate::store::Leader {
            epoch: 3,
            pid: 42,
            host: "host-a".into(),
            since: at(0),
            renewed_at: at(10),
            stopped_at: None,
        };
        let fresh = LeaderStatus::new(leader.clone(), at(10) + Duration::seconds(90));
        assert_eq!(fresh.describe(), "pid 42 on host-a (epoch 3) since 2027-01-15 08:00:00 UTC, renewed 90 s ago");
        let stale = LeaderStatus::new(leader.clone(), at(10) + Duration::seconds(91));
        assert!(!stale.renewing);
        assert!(stale.describe().ends_with("not renewed for 91 s: no process leads now?"), "{}", stale.describe());
        let report = StatusReport {
            now: at(100),
            runs: vec![],
            schedules: vec![],
            recent: vec![],
            queues: vec![],
            enqueued: vec![],
            leader: Some(fresh.clone()),
        };
        assert!(render_text(&report).starts_with(&format!("leader: {}\n", fresh.describe())), "the first line");
        let stopped = LeaderStatus::new(crate::store::Leader { stopped_at: Some(at(20)), ..leader }, at(21));
        assert!(!stopped.renewing);
        assert!(stopped.describe().ends_with("stopped cleanly at 2027-01-15 08:00:20 UTC"), "{}", stopped.describe());
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
