//! The budget circuit breaker: would spending an estimate now cross the
//! job's or the global monthly budget?

use chrono::{DateTime, Utc};
use serde_json::json;

use super::{Micros, Pricer, micros, month_start, price_pending, usd};
use crate::manifest::{Job, Lane};
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
    let hints = job.manifest.estimate.unwrap_or_default();
    let usage = AverageUsage {
        input_tokens: hints.input_tokens.map_or(input_guess, |n| n as f64),
        output_tokens: hints.output_tokens.map_or(job.manifest.max_tokens as f64, |n| n as f64),
        ..AverageUsage::default()
    };
    let source = if hints.input_tokens.is_some() || hints.output_tokens.is_some() { "hints" } else { "max_tokens" };
    Ok((usage, source))
}

/// The model a job's requests use in `lane`.
pub fn lane_model(job: &Job, lane: Lane) -> &str {
    match (lane, job.manifest.batch_model.as_deref()) {
        (Lane::Batch, Some(model)) => model,
        _ => &job.manifest.model,
    }
}

/// The cost of `requests` requests of `job` in `lane` at `per_request` usage.
pub fn estimate(pricer: &Pricer, job: &Job, lane: Lane, per_request: &AverageUsage, requests: u64) -> Micros {
    pricer.cost(lane_model(job, lane), lane, &per_request.times(requests)).map_or(0, |cost| cost.actual)
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
