//! Finds what deserves an alert: new events past a cursor (late, failed,
//! budget, fallback), failed batch creates, open runs past their deadline,
//! too many errored requests today, budgets nearly spent, and the digest.
//! It only reads; what was already sent is the notifier's business.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde_json::json;

use super::alert::Alert;
use super::config::EventRules;
use crate::cost::{Micros, month_start, usd};
use crate::job::Job;
use crate::store::{EventRow, RunRow, Scope, Store, StoreError};

/// How far back a fresh notifier looks, so a restart does not miss what
/// happened while it was down (what was sent is deduplicated).
const LOOK_BACK_HOURS: i64 = 24;

/// Most events or attempts read per scan.
const PAGE: u32 = 500;

/// What detection needs besides the store.
#[derive(Debug)]
pub(super) struct Context<'a> {
    /// Which events alert.
    pub rules: &'a EventRules,
    /// The known jobs (for budgets).
    pub jobs: &'a BTreeMap<String, Job>,
    /// The global monthly cap, micro-dollars.
    pub global_budget: Option<Micros>,
    /// The digest's local time and zone.
    pub digest: Option<(NaiveTime, Tz)>,
}

/// Where the scans are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Detector {
    events_after: i64,
    attempts_after: i64,
    /// How often the checks that sum a day or a month run: they read far
    /// more than the incremental ones, and their answers move slowly.
    totals_every: Duration,
    totals_due: DateTime<Utc>,
}

impl Detector {
    /// Starts a day back; the daily and monthly totals are checked every `totals_every`.
    pub(super) fn start(store: &Store, now: DateTime<Utc>, totals_every: Duration) -> Result<Detector, StoreError> {
        let since = now - Duration::hours(LOOK_BACK_HOURS);
        Ok(Detector {
            events_after: store.last_event_id_before(since)?,
            attempts_after: store.last_attempt_id_before(since)?,
            totals_every,
            totals_due: now,
        })
    }

    /// Whether a scan at `now` also sums the day and the month.
    pub(super) fn totals_due_by(&self, now: DateTime<Utc>) -> bool {
        now >= self.totals_due
    }

    /// Everything that deserves an alert now (possibly already sent).
    pub(super) fn scan(
        &mut self,
        store: &Store,
        context: &Context<'_>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Alert>, StoreError> {
        let rules = context.rules;
        let mut alerts = self.new_events(store, rules)?;
        if rules.run_late || rules.delivery_failing {
            alerts.extend(open_run_alerts(store, rules, now)?);
        }
        if rules.batch_submit_failing {
            alerts.extend(self.failed_creates(store)?);
        }
        if now < self.totals_due {
            return Ok(alerts);
        }
        self.totals_due = now + self.totals_every;
        if let Some(limit) = rules.errored_per_day {
            alerts.extend(errored_today(store, limit, now)?);
        }
        if rules.budget {
            alerts.extend(budgets_near(store, context, now)?);
        }
        if let Some((at, zone)) = context.digest {
            alerts.extend(digest(store, at, zone, now)?);
        }
        Ok(alerts)
    }

    fn new_events(&mut self, store: &Store, rules: &EventRules) -> Result<Vec<Alert>, StoreError> {
        let kinds: Vec<&str> = [
            ("run_late", rules.run_late),
            ("run_failed", rules.run_failed),
            ("run_start_failed", rules.run_failed),
            ("budget_exceeded", rules.budget),
            ("fallback_started", rules.fallback),
            ("failover_started", rules.failover),
            ("leader_took_over", rules.takeover),
        ]
        .into_iter()
        .filter_map(|(kind, on)| on.then_some(kind))
        .collect();
        let mut alerts = Vec::new();
        loop {
            let page = store.events_after(self.events_after, &kinds, PAGE)?;
            for (id, event) in &page {
                self.events_after = *id;
                let run = event.run_id.map(|id| store.run(id)).transpose()?.flatten();
                alerts.extend(event_alert(event, run.as_ref()));
            }
            if page.len() < PAGE as usize {
                return Ok(alerts);
            }
        }
    }

    fn failed_creates(&mut self, store: &Store) -> Result<Vec<Alert>, StoreError> {
        let mut alerts = Vec::new();
        for failure in store.failed_creates_after(self.attempts_after, PAGE)? {
            self.attempts_after = failure.id;
            let Some(run) = store.run(failure.run_id)? else { continue };
            let message = failure.error_message.clone().unwrap_or_default();
            alerts.push(run_alert(
                "batch_submit_failing",
                "warning",
                &run,
                failure.at,
                format!("creating the batch for {} failed: {} {}", run.run_key, failure.error_type, message),
                json!({ "error_type": failure.error_type, "error_message": failure.error_message }),
            ));
        }
        Ok(alerts)
    }
}

fn run_alert(
    kind: &'static str,
    severity: &'static str,
    run: &RunRow,
    at: DateTime<Utc>,
    text: String,
    detail: serde_json::Value,
) -> Alert {
    Alert {
        key: format!("{kind}:{}", run.run_key),
        kind,
        severity,
        at,
        job: Some(run.job.clone()),
        run_id: Some(run.id),
        run_key: Some(run.run_key.clone()),
        text,
        detail,
    }
}

fn event_alert(event: &EventRow, run: Option<&RunRow>) -> Option<Alert> {
    let detail = event.detail.clone();
    let reason = detail.get("reason").and_then(|r| r.as_str()).unwrap_or("").to_owned();
    match (event.kind.as_str(), run) {
        ("run_late", Some(run)) => Some(late_alert(run, event.at, reason)),
        ("run_failed", Some(run)) => Some(run_alert(
            "run_failed",
            "critical",
            run,
            event.at,
            format!("{} failed: {reason}", run.run_key),
            detail,
        )),
        ("fallback_started", Some(run)) => Some(run_alert(
            "fallback_fired",
            "info",
            run,
            event.at,
            format!(
                "{}: the sync fallback fired ({})",
                run.run_key,
                run.fallback_reason.as_deref().unwrap_or("deadline")
            ),
            detail,
        )),
        ("failover_started", Some(run)) => Some(failover_alert(event, run)),
        ("budget_exceeded", run) => Some(budget_exceeded(event, run, reason)),
        ("run_start_failed", None) => Some(start_failed(event)),
        ("leader_took_over", None) => Some(takeover_alert(event)),
        _ => None,
    }
}

fn failover_alert(event: &EventRow, run: &RunRow) -> Alert {
    let name = |side: &str| {
        let part =
            |field: &str| event.detail.pointer(&format!("/{side}/{field}")).and_then(|v| v.as_str()).unwrap_or("?");
        format!("{}/{}", part("provider"), part("model"))
    };
    let text = format!(
        "{}: its provider keeps failing; what is left goes from {} to {}",
        run.run_key,
        name("from"),
        name("to")
    );
    run_alert("failover_started", "warning", run, event.at, text, event.detail.clone())
}

fn late_alert(run: &RunRow, at: DateTime<Utc>, reason: String) -> Alert {
    let text = format!("{} missed its deadline ({})", run.run_key, run.deadline_at.format("%Y-%m-%d %H:%M UTC"));
    let text = if reason.is_empty() { text } else { format!("{text}: {reason}") };
    run_alert("run_late", "critical", run, at, text, json!({ "deadline_at": run.deadline_at, "reason": reason }))
}

fn budget_exceeded(event: &EventRow, run: Option<&RunRow>, reason: String) -> Alert {
    let field = |name: &str| event.detail.get(name).and_then(|s| s.as_str()).unwrap_or("").to_owned();
    let (scope, stage, action) = (field("scope"), field("stage"), field("action"));
    let text = format!("budget crossed ({scope}): {reason}; action: {action}");
    match run {
        // A run is checked before it submits and again before a fallback; each stage alerts once.
        Some(run) => Alert {
            key: format!("budget_exceeded:{stage}:{}", run.run_key),
            ..run_alert("budget_exceeded", "warning", run, event.at, text, event.detail.clone())
        },
        None => Alert {
            key: format!("budget_exceeded:{scope}:{}", event.at.format("%Y-%m")),
            kind: "budget_exceeded",
            severity: "warning",
            at: event.at,
            job: event.job.clone(),
            run_id: None,
            run_key: None,
            text,
            detail: event.detail.clone(),
        },
    }
}

/// A scheduled instant for which no run could be created.
fn start_failed(event: &EventRow) -> Alert {
    let field = |name: &str| event.detail.get(name).and_then(|s| s.as_str()).unwrap_or("").to_owned();
    let (job, instant, error) = (event.job.clone().unwrap_or_default(), field("scheduled_for"), field("error"));
    Alert {
        key: format!("run_start_failed:{job}:{instant}"),
        kind: "run_start_failed",
        severity: "critical",
        at: event.at,
        job: event.job.clone(),
        run_id: None,
        run_key: None,
        text: format!("the run of {job} for {instant} could not start (tried again every minute): {error}"),
        detail: event.detail.clone(),
    }
}

fn takeover_alert(event: &EventRow) -> Alert {
    let text = |pointer: &str| match event.detail.pointer(pointer) {
        Some(serde_json::Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
        None => "?".to_owned(),
    };
    Alert {
        key: format!("leader_took_over:{}", text("/epoch")),
        kind: "leader_took_over",
        severity: "warning",
        at: event.at,
        job: None,
        run_id: None,
        run_key: None,
        text: format!(
            "pid {} on {} took over the state (epoch {}) from pid {} on {}, which stopped without a clean stop \
             (last renewed {}); open runs resume where they were",
            text("/pid"),
            text("/host"),
            text("/epoch"),
            text("/previous/pid"),
            text("/previous/host"),
            text("/previous/renewed_at")
        ),
        detail: event.detail.clone(),
    }
}

/// Open runs past their deadline (late already, even before they close),
/// and open runs whose delivery has failed for a while.
fn open_run_alerts(store: &Store, rules: &EventRules, now: DateTime<Utc>) -> Result<Vec<Alert>, StoreError> {
    let mut alerts = Vec::new();
    let failing_for = Duration::from_std(super::config::DELIVERY_FAILING_AFTER).unwrap_or(Duration::MAX);
    for run in store.open_runs()? {
        if rules.run_late && run.deadline_at <= now {
            alerts.push(late_alert(&run, run.deadline_at, "still open".into()));
        }
        if let Some(since) =
            run.delivery_failing_since.filter(|since| rules.delivery_failing && *since + failing_for <= now)
        {
            let error = run.delivery_error.clone().unwrap_or_default();
            let text = format!(
                "{}: delivering its results has failed since {} (they stay stored and are retried): {error}",
                run.run_key,
                since.format("%Y-%m-%d %H:%M UTC")
            );
            alerts.push(run_alert(
                "delivery_failing",
                "warning",
                &run,
                now,
                text,
                json!({ "since": since, "error": error }),
            ));
        }
    }
    Ok(alerts)
}

fn errored_today(store: &Store, limit: u64, now: DateTime<Utc>) -> Result<Option<Alert>, StoreError> {
    let day = crate::clock::day_start(now);
    let count = store.errored_requests_since(day)?;
    Ok((count > limit).then(|| Alert {
        key: format!("errored_requests:{}", day.format("%Y-%m-%d")),
        kind: "errored_requests",
        severity: "warning",
        at: now,
        job: None,
        run_id: None,
        run_key: None,
        text: format!("{count} requests errored today ({}, UTC), more than {limit}", day.format("%Y-%m-%d")),
        detail: json!({ "errored": count, "limit": limit, "day": day.format("%Y-%m-%d").to_string() }),
    }))
}

/// Budgets with at least `budget_warn_at` of them spent this month.
fn budgets_near(store: &Store, context: &Context<'_>, now: DateTime<Utc>) -> Result<Vec<Alert>, StoreError> {
    let since = month_start(now);
    let mut caps: Vec<(Option<&str>, f64)> = context
        .jobs
        .values()
        .filter_map(|job| Some((Some(job.name.as_str()), job.manifest.budget.as_ref()?.monthly_usd?)))
        .collect();
    caps.extend(context.global_budget.map(|micros| (None, usd(micros))));
    let mut alerts = Vec::new();
    for (job, cap) in caps.into_iter().filter(|(_, cap)| *cap > 0.0) {
        let spent = usd(store.spent_since(job, since)?);
        if spent < cap * context.rules.budget_warn_at {
            continue;
        }
        let scope = job.map_or("global".to_owned(), |j| format!("job {j}"));
        alerts.push(Alert {
            // `job:` keeps a job named `global` apart from the global budget.
            key: format!(
                "budget_near:{}:{}",
                job.map_or("global".to_owned(), |j| format!("job:{j}")),
                since.format("%Y-%m")
            ),
            kind: "budget_near",
            severity: "warning",
            at: now,
            job: job.map(str::to_owned),
            run_id: None,
            run_key: None,
            text: format!(
                "{scope} has spent ${spent:.2} of its ${cap:.2} monthly budget ({:.0}%)",
                spent / cap * 100.0
            ),
            detail: json!({ "spent_usd": spent, "budget_usd": cap, "month": since.format("%Y-%m").to_string() }),
        });
    }
    Ok(alerts)
}

/// Once the local time passes `at`, yesterday (local) in one message.
fn digest(store: &Store, at: NaiveTime, zone: Tz, now: DateTime<Utc>) -> Result<Option<Alert>, StoreError> {
    let local = now.with_timezone(&zone);
    if local.time() < at {
        return Ok(None);
    }
    let today = local.date_naive();
    let yesterday = today - Duration::days(1);
    let midnight = |day: chrono::NaiveDate| {
        zone.from_local_datetime(&day.and_time(NaiveTime::MIN)).earliest().map(|t| t.with_timezone(&Utc))
    };
    let (Some(since), Some(until)) = (midnight(yesterday), midnight(today)) else { return Ok(None) };
    let states = store.run_states_between(since, until)?;
    let (spend, _) = store.spend(&Scope { since: Some(since), until: Some(until), ..Scope::default() }, None)?;
    let runs: u64 = states.values().sum();
    let breakdown: Vec<String> = states.iter().map(|(state, n)| format!("{n} {state}")).collect();
    let (cost, saved) = (usd(spend.cost_micros), usd(spend.sync_cost_micros - spend.cost_micros));
    let text = format!(
        "{} {}: {runs} runs ({}); spent ${cost:.2}, saved ${saved:.2} against sync prices",
        yesterday.weekday(),
        yesterday,
        if breakdown.is_empty() { "none".to_owned() } else { breakdown.join(", ") },
    );
    Ok(Some(Alert {
        key: format!("digest:{yesterday}"),
        kind: "digest",
        severity: "info",
        at: now,
        job: None,
        run_id: None,
        run_key: None,
        text,
        detail: json!({ "day": yesterday.to_string(), "timezone": zone.name(), "runs": states,
                        "cost_usd": cost, "savings_usd": saved, "errored": spend.failed_results }),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewRun, RunState};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    fn store_with_runs() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let run = |key: &'static str, scheduled: &str, deadline: &str| NewRun {
            job: "nightly",
            scheduled_for: at(scheduled),
            run_key: key,
            tier: "batch",
            deadline_at: at(deadline),
            lane: "batch",
            tags: &[],
        };
        let (done, _) = store
            .create_run(&run("nightly-a", "2026-11-21T02:00:00Z", "2026-11-21T10:00:00Z"), at("2026-11-21T02:00:00Z"))
            .unwrap();
        store.finish_run(done.id, RunState::Completed, None, at("2026-11-21T03:00:00Z")).unwrap();
        store
            .create_run(&run("nightly-b", "2026-11-22T02:00:00Z", "2026-11-22T07:00:00Z"), at("2026-11-22T02:00:00Z"))
            .unwrap();
        (dir, store)
    }

    fn context<'a>(
        rules: &'a EventRules,
        jobs: &'a BTreeMap<String, Job>,
        digest: Option<(NaiveTime, Tz)>,
    ) -> Context<'a> {
        Context { rules, jobs, global_budget: None, digest }
    }

    #[test]
    fn the_digest_goes_out_once_the_local_time_passes_and_covers_yesterday() {
        let (_dir, store) = store_with_runs();
        let eight = NaiveTime::from_hms_opt(8, 0, 0).unwrap();
        let zone = chrono_tz::Europe::Berlin;
        assert_eq!(digest(&store, eight, zone, at("2026-11-22T06:59:00Z")).unwrap(), None, "07:59 in Berlin");
        let alert = digest(&store, eight, zone, at("2026-11-22T07:01:00Z")).unwrap().expect("08:01 in Berlin");
        assert_eq!(alert.key, "digest:2026-11-21");
        assert!(alert.text.contains("2026-11-21: 1 runs (1 completed)"), "{}", alert.text);
    }

    #[test]
    fn an_open_run_past_its_deadline_is_late_before_it_closes() {
        let (_dir, store) = store_with_runs();
        let (rules, jobs) = (EventRules::default(), BTreeMap::new());
        let mut detector = Detector::start(&store, at("2026-11-22T06:00:00Z"), Duration::zero()).unwrap();
        let before = detector.scan(&store, &context(&rules, &jobs, None), at("2026-11-22T06:59:00Z")).unwrap();
        assert!(before.is_empty(), "{before:?}");
        let after = detector.scan(&store, &context(&rules, &jobs, None), at("2026-11-22T07:00:00Z")).unwrap();
        assert_eq!(after.iter().map(|a| a.key.as_str()).collect::<Vec<_>>(), ["run_late:nightly-b"]);
        let off = EventRules { run_late: false, ..EventRules::default() };
        assert!(detector.scan(&store, &context(&off, &jobs, None), at("2026-11-22T07:00:00Z")).unwrap().is_empty());
    }

    #[test]
    fn a_failing_delivery_alerts_after_five_minutes_and_a_run_that_cannot_start_at_once() {
        let (_dir, mut store) = store_with_runs();
        let (rules, jobs) = (EventRules::default(), BTreeMap::new());
        let mut detector = Detector::start(&store, at("2026-11-22T03:00:00Z"), Duration::zero()).unwrap();
        let run = store.run_by_key("nightly", at("2026-11-22T02:00:00Z")).unwrap().unwrap();
        store
            .record_delivery_failure(run.id, "sink out/x.jsonl: No space left on device", at("2026-11-22T03:00:00Z"))
            .unwrap();
        let soon = detector.scan(&store, &context(&rules, &jobs, None), at("2026-11-22T03:04:59Z")).unwrap();
        assert!(soon.is_empty(), "a hiccup is retried quietly: {soon:?}");
        let later = detector.scan(&store, &context(&rules, &jobs, None), at("2026-11-22T03:05:00Z")).unwrap();
        assert_eq!(later.iter().map(|a| a.key.as_str()).collect::<Vec<_>>(), ["delivery_failing:nightly-b"]);
        assert!(later[0].text.contains("No space left on device"), "{}", later[0].text);
        let detail = serde_json::json!({ "scheduled_for": "2026-11-22T04:00:00+00:00", "error": "refused" });
        store.record_event(None, Some("nightly"), "run_start_failed", &detail, at("2026-11-22T04:00:01Z")).unwrap();
        let now = at("2026-11-22T04:00:02Z");
        let alerts = detector.scan(&store, &context(&rules, &jobs, None), now).unwrap();
        let started: Vec<&Alert> = alerts.iter().filter(|a| a.kind == "run_start_failed").collect();
        assert_eq!(started.len(), 1, "{alerts:?}");
        assert_eq!(started[0].key, "run_start_failed:nightly:2026-11-22T04:00:00+00:00");
        assert_eq!(started[0].severity, "critical");
        store.clear_delivery_failure(run.id, now).unwrap();
        let off = EventRules { delivery_failing: false, ..EventRules::default() };
        assert!(
            detector
                .scan(&store, &context(&off, &jobs, None), now)
                .unwrap()
                .iter()
                .all(|a| a.kind != "delivery_failing")
        );
    }

    #[test]
    fn events_past_the_cursor_are_read_once() {
        let (_dir, mut store) = store_with_runs();
        let (rules, jobs) = (EventRules::default(), BTreeMap::new());
        let mut detector = Detector::start(&store, at("2026-11-22T06:00:00Z"), Duration::zero()).unwrap();
        let run = store.run_by_key("nightly", at("2026-11-22T02:00:00Z")).unwrap().unwrap();
        store.finish_run(run.id, RunState::Failed, Some("sink unwritable"), at("2026-11-22T06:30:00Z")).unwrap();
        let now = at("2026-11-22T06:31:00Z");
        let first = detector.scan(&store, &context(&rules, &jobs, None), now).unwrap();
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].key, "run_failed:nightly-b");
        assert!(first[0].text.contains("sink unwritable"));
        assert!(detector.scan(&store, &context(&rules, &jobs, None), now).unwrap().is_empty(), "read once");
    }

    #[test]
    fn a_failover_alerts_by_default_naming_both_models() {
        let (_dir, mut store) = store_with_runs();
        let (rules, jobs) = (EventRules::default(), BTreeMap::new());
        let mut detector = Detector::start(&store, at("2026-11-22T06:00:00Z"), Duration::zero()).unwrap();
        let run = store.run_by_key("nightly", at("2026-11-22T02:00:00Z")).unwrap().unwrap();
        let detail = serde_json::json!({ "from": { "provider": "anthropic", "model": "claude-haiku-4-5" },
                                         "to": { "provider": "openai", "model": "gpt-4o-mini" }, "failures": 7 });
        assert!(store.start_failover(run.id, "openai", "gpt-4o-mini", &detail, at("2026-11-22T06:10:00Z")).unwrap());
        assert!(
            !store.start_failover(run.id, "gemini", "gemini-2.5-flash", &detail, at("2026-11-22T06:11:00Z")).unwrap()
        );
        let alerts = detector.scan(&store, &context(&rules, &jobs, None), at("2026-11-22T06:12:00Z")).unwrap();
        let failover: Vec<&Alert> = alerts.iter().filter(|a| a.kind == "failover_started").collect();
        assert_eq!(failover.len(), 1, "once, though asked twice: {alerts:?}");
        assert!(
            failover[0].text.contains("from anthropic/claude-haiku-4-5 to openai/gpt-4o-mini"),
            "{}",
            failover[0].text
        );
        let stored = store.run(run.id).unwrap().unwrap();
        assert_eq!(stored.failover, Some(("openai".to_owned(), "gpt-4o-mini".to_owned())));
    }

    #[test]
    fn a_lead_taken_from_a_leader_that_never_stopped_alerts_and_a_clean_handover_does_not() {
        let (_dir, mut store) = store_with_runs();
        let (rules, jobs) = (EventRules::default(), BTreeMap::new());
        let mut detector = Detector::start(&store, at("2026-11-22T06:00:00Z"), Duration::zero()).unwrap();
        store.take_leadership(100, "host-a", at("2026-11-22T06:01:00Z")).unwrap();
        store.release_leadership(1, at("2026-11-22T06:02:00Z")).unwrap();
        store.take_leadership(200, "host-a", at("2026-11-22T06:03:00Z")).unwrap();
        // The leader of epoch 2 is killed; another process takes over.
        store.take_leadership(300, "host-b", at("2026-11-22T06:04:00Z")).unwrap();
        let alerts = detector.scan(&store, &context(&rules, &jobs, None), at("2026-11-22T06:05:00Z")).unwrap();
        let takeovers: Vec<&Alert> = alerts.iter().filter(|a| a.kind == "leader_took_over").collect();
        assert_eq!(takeovers.len(), 1, "the clean handover did not alert: {alerts:?}");
        assert_eq!(takeovers[0].key, "leader_took_over:3");
        assert!(
            takeovers[0].text.starts_with("pid 300 on host-b took over the state (epoch 3) from pid 200 on host-a"),
            "{}",
            takeovers[0].text
        );
        let quiet = EventRules { takeover: false, ..EventRules::default() };
        let mut detector = Detector::start(&store, at("2026-11-22T06:00:00Z"), Duration::zero()).unwrap();
        store.take_leadership(400, "host-c", at("2026-11-22T06:06:00Z")).unwrap();
        let alerts = detector.scan(&store, &context(&quiet, &jobs, None), at("2026-11-22T06:07:00Z")).unwrap();
        assert!(alerts.iter().all(|a| a.kind != "leader_took_over"), "turned off: {alerts:?}");
    }
}
