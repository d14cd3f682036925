//! The budget circuit breaker: would spending an estimate now cross the
//! job's or the global monthly budget?

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{Micros, Pricer, micros, month_start, price_pending, usd};
use crate::job::Job;
use crate::manifest::{Lane, OnBudget};
use crate::store::{AverageUsage, Store, StoreError};

/// Which budget a run would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The job's `budget.monthly_usd`.
    Job,
    /// The daemon's `budget.monthly_usd`.
    Global,
}

/// A budget an estimate would cross.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Crossing {
    /// Which budget.
    pub scope: Scope,
    /// The cap, in micro-dollars.
    pub budget: Micros,
    /// Spent this month so far.
    pub spent: Micros,
    /// What the run (or its fallback) would add.
    pub estimate: Micros,
}

impl Crossing {
    /// One line for logs, run reasons and alerts.
    pub fn reason(&self) -> String {
        let scope = match self.scope {
            Scope::Job => "the job's",
            Scope::Global => "the global",
        };
        format!(
            "{scope} monthly budget of ${:.2} would be crossed: ${:.4} spent this month + ${:.4} estimated",
            usd(self.budget),
            usd(self.spent),
            usd(self.estimate)
        )
    }

    /// The event detail: what was decided, where, with the figures.
    pub fn detail(&self, stage: &str, policy: &str, action: &str) -> serde_json::Value {
        json!({
            "scope": match self.scope { Scope::Job => "job", Scope::Global => "global" },
            "stage": stage,
            "policy": policy,
            "action": action,
            "budget_usd": usd(self.budget),
            "spent_usd": usd(self.spent),
            "estimate_usd": usd(self.estimate),
            "reason": self.reason(),
        })
    }
}

/// Where a per-request figure came from.
pub type UsageSource = &'static str;

/// What one request of `job` is expected to use: its observed average,
/// else the manifest's `estimate:` hints, else `input_guess` input tokens
/// and the full `max_tokens` of output (an upper bound).
pub fn per_request(store: &Store, job: &Job, input_guess: f64) -> Result<(AverageUsage, UsageSource), StoreError> {
    if let Some(observed) = store.usage_averages(&job.name)? {
        return Ok((observed, "observed"));
    }
    Ok(hinted_usage(job, input_guess))
}

/// What one request is expected to use without history: the manifest's
/// `estimate:` hints, else `input_guess` and the full `max_tokens`.
pub fn hinted_usage(job: &Job, input_guess: f64) -> (AverageUsage, UsageSource) {
    let hints = job.manifest.estimate.unwrap_or_default();
    let usage = AverageUsage {
        input_tokens: hints.input_tokens.map_or(input_guess, |n| n as f64),
        output_tokens: hints.output_tokens.map_or(job.manifest.max_tokens as f64, |n| n as f64),
        ..AverageUsage::default()
    };
    let source = if hints.input_tokens.is_some() || hints.output_tokens.is_some() { "hints" } else { "max_tokens" };
    (usage, source)
}

/// The cost of `requests` requests of `job` in `lane` at `per_request` usage.
pub fn estimate(pricer: &Pricer, job: &Job, lane: Lane, per_request: &AverageUsage, requests: u64) -> Micros {
    pricer.cost(job.model_for(lane), lane, &per_request.times(requests as f64)).map_or(0, |cost| cost.actual)
}

/// Where in a run's life a budget is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before the run's requests are stored and submitted.
    Submit,
    /// Before the fallback engine moves unfinished requests to the sync lane.
    Fallback,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Submit => "submit",
            Stage::Fallback => "fallback",
        }
    }
}

/// The spending a run is about to do.
#[derive(Debug, Clone)]
pub struct Spend {
    /// The run's job.
    pub job: Job,
    /// The run.
    pub run_id: i64,
    /// The lane the requests would go through.
    pub lane: Lane,
    /// How many requests.
    pub requests: u64,
    /// Input tokens per request when neither history nor hints say (a rendered request's length / 4).
    pub input_guess: f64,
}

/// What a budget check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Within budget, or over it under `alert`: go ahead.
    Proceed,
    /// `skip` at submission: do not run; the reason.
    Skip(String),
    /// The run is kept off the sync lane for good (recorded on the run).
    SyncBlocked,
}

/// Checks `spend` against the job's and the global budget and applies the
/// job's `on_budget` policy: `alert` proceeds, `skip` skips a run that has
/// not started, and otherwise (`batch_only`, or `skip` once money is
/// committed) the run keeps to the batch lane. Every crossing is recorded
/// as a `budget_exceeded` event.
pub fn enforce(
    store: &mut Store,
    pricer: &Pricer,
    global: Option<Micros>,
    spend: &Spend,
    stage: Stage,
    now: DateTime<Utc>,
) -> Result<Decision, StoreError> {
    let (usage, _) = per_request(store, &spend.job, spend.input_guess)?;
    let estimate = estimate(pricer, &spend.job, spend.lane, &usage, spend.requests);
    let Some(crossing) = check(store, pricer, &spend.job, global, estimate, now)? else {
        return Ok(Decision::Proceed);
    };
    let policy = spend.job.manifest.budget.unwrap_or_default().on_budget;
    let (decision, action) = match (policy, stage) {
        (OnBudget::Alert, _) => (Decision::Proceed, "alerted"),
        (OnBudget::Skip, Stage::Submit) => (Decision::Skip(crossing.reason()), "skipped"),
        (OnBudget::BatchOnly, Stage::Submit) => (Decision::SyncBlocked, "batch_only"),
        (_, Stage::Fallback) => (Decision::SyncBlocked, "sync_blocked"),
    };
    let detail = crossing.detail(stage.as_str(), policy.as_str(), action);
    match decision {
        Decision::SyncBlocked => store.block_sync(spend.run_id, &crossing.reason(), &detail, now)?,
        _ => store.record_event(Some(spend.run_id), None, "budget_exceeded", &detail, now)?,
    }
    Ok(decision)
}

/// The first budget (the job's, then the global one) that spending
/// `estimate` now would cross, if any. Prices what is not priced yet first.
pub fn check(
    store: &mut Store,
    pricer: &Pricer,
    job: &Job,
    global: Option<Micros>,
    estimate: Micros,
    now: DateTime<Utc>,
) -> Result<Option<Crossing>, StoreError> {
    price_pending(store, pricer)?;
    let since = month_start(now);
    if let Some(budget) = job.manifest.budget.and_then(|b| b.monthly_usd).map(micros) {
        let spent = store.spent_since(Some(&job.name), since)?;
        if spent + estimate > budget {
            return Ok(Some(Crossing { scope: Scope::Job, budget, spent, estimate }));
        }
    }
    if let Some(budget) = global {
        let spent = store.spent_since(None, since)?;
        if spent + estimate > budget {
            return Ok(Some(Crossing { scope: Scope::Global, budget, spent, estimate }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;
    use crate::store::{NewRequest, NewRun};

    fn job(budget: Option<f64>) -> Job {
        let source = format!(
            "schedule: {{ cron: '0 6 * * *' }}\nmodel: claude-haiku-4-5\nmax_tokens: 100\nprompt: {{ inline: hi }}\n{}",
            budget.map(|usd| format!("budget: {{ monthly_usd: {usd} }}\n")).unwrap_or_default()
        );
        crate::validate::test_job("feed", &source)
    }

    /// A store where job `feed` spent 1,000,000 output tokens of haiku on the sync lane ($5).
    fn store_with_spend(now: DateTime<Utc>) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("state.db")).unwrap();
        let new = NewRun {
            job: "feed",
            scheduled_for: now,
            run_key: "feed-1",
            tier: "realtime",
            deadline_at: now,
            lane: "sync",
            tags: &[],
        };
        let (run, _) = store.create_run(&new, now).unwrap();
        let params = r#"{"model":"claude-haiku-4-5"}"#.to_owned();
        let request = NewRequest { custom_id: "feed-1-1".into(), seq: 1, item: "{}".into(), params };
        store.insert_requests(run.id, &[request], now).unwrap();
        let usage = crate::outcome::Usage { output_tokens: 1_000_000, ..Default::default() };
        let outcome = crate::outcome::Outcome::Succeeded { message: "{}".into(), stop_reason: None, usage };
        let attempt = store.record_attempt(&crate::store::NewAttempt::started("sync", "create_message", now)).unwrap();
        store.record_sync_result("feed-1-1", attempt, &outcome, now).unwrap();
        (dir, store)
    }

    #[test]
    fn the_job_budget_is_checked_first_then_the_global_one() {
        let now = Utc::now();
        let (_dir, mut store) = store_with_spend(now);
        let pricer = Pricer::new(Catalog::builtin());
        let within = check(&mut store, &pricer, &job(Some(6.0)), None, 500_000, now).unwrap();
        assert_eq!(within, None, "$5 spent + $0.50 fits in $6");
        let crossing = check(&mut store, &pricer, &job(Some(5.2)), None, 500_000, now).unwrap().unwrap();
        assert_eq!((crossing.scope, crossing.spent, crossing.budget), (Scope::Job, 5_000_000, 5_200_000));
        let global = check(&mut store, &pricer, &job(None), Some(5_400_000), 500_000, now).unwrap().unwrap();
        assert_eq!(global.scope, Scope::Global);
        assert!(global.reason().contains("global monthly budget of $5.40"), "{}", global.reason());
    }
}
