//! Failover: when the job's own provider keeps failing while a run's sync
//! lane carries it (its batch could not help, and its sync calls meet only
//! 5xx, overloaded or no answers for a stretch that puts the deadline at
//! risk), what is left of the run goes to the job's `failover` models on
//! other providers, rendered for their APIs. First final result wins, as
//! everywhere: an answer of the job's provider that arrives later is
//! duplicate spend.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{Engine, EngineError};
use crate::clock::span;
use crate::cost::budget::{self, Decision, Spend, Stage};
use crate::job::Job;
use crate::manifest::Lane;
use crate::render::{Renderer, RunInfo};
use crate::store::RunRow;

/// Failed calls in a row (with no success between) before a failover is considered.
const MIN_FAILURES: u64 = 3;
/// The shortest and longest stretch of failures that starts a failover.
const MIN_STRETCH: Duration = Duration::from_secs(10);
const MAX_STRETCH: Duration = Duration::from_secs(120);

/// How long the provider must keep failing before the run leaves it: a
/// tenth of the time the run has left, within 10 s to 2 min.
fn stretch(now: DateTime<Utc>, deadline_at: DateTime<Utc>) -> Duration {
    let left = (deadline_at - now).to_std().unwrap_or_default();
    (left / 10).clamp(MIN_STRETCH, MAX_STRETCH)
}

impl Engine {
    /// For a run on the sync lane: moves it to its first failover model
    /// whose provider this process can reach, once its own provider has
    /// failed for long enough and the budget allows the other model.
    /// Returns the run as it stands.
    pub(super) async fn fail_over_if_down(&self, job: &Job, run: RunRow) -> Result<RunRow, EngineError> {
        if job.failover.is_empty() || run.failover.is_some() || !run.is_sync() {
            return Ok(run);
        }
        let run_id = run.id;
        let (failures, since) = self.store.call(move |s| s.sync_failure_streak(run_id)).await?;
        let now = self.clock.now();
        let Some(since) = since.filter(|_| failures >= MIN_FAILURES) else { return Ok(run) };
        let needed = stretch(now, run.deadline_at);
        if now - since < span(needed) {
            return Ok(run);
        }
        let Some((provider, model)) = job.failover.iter().find(|(provider, _)| self.sync.serves(provider)).cloned()
        else {
            tracing::warn!(run = %run.run_key, "the job's provider keeps failing, and no failover model's provider has a key here");
            return Ok(run);
        };
        if !self.failover_allowed(job, &run, &provider, &model).await? {
            return Ok(run);
        }
        let detail = serde_json::json!({
            "from": { "provider": job.manifest.provider, "model": job.model_id },
            "to": { "provider": provider, "model": model },
            "failures": failures,
            "failing_since": since.to_rfc3339(),
        });
        let (to_provider, to_model) = (provider.clone(), model.clone());
        if self.store.call(move |s| s.start_failover(run_id, &to_provider, &to_model, &detail, now)).await? {
            tracing::warn!(run = %run.run_key, from = %job.manifest.provider, to = %format!("{provider}/{model}"), failures, "failover: the job's provider keeps failing; what is left goes to another provider");
            self.sync.withdraw(run.id, &job.manifest.provider);
            crate::failpoint::hit(crate::failpoint::FAILOVER_POINT);
        }
        Ok(self.store.call(move |s| s.run(run_id)).await?.expect("the run exists"))
    }

    /// Whether the budget lets what is left go to `model` of `provider`,
    /// priced at that model's price.
    async fn failover_allowed(
        &self,
        job: &Job,
        run: &RunRow,
        provider: &str,
        model: &str,
    ) -> Result<bool, EngineError> {
        let mut priced = job.clone();
        priced.manifest.provider = provider.to_owned();
        priced.model_id = model.to_owned();
        priced.batch_model_id = None;
        let input_guess = self.token_averages(run).await?.input_tokens;
        let (pricer, global, now, run_id) =
            (self.pricer.clone(), self.settings.global_budget, self.clock.now(), run.id);
        let allowed = self
            .store
            .call(move |s| {
                let requests = s.unfinished_requests(run_id)?;
                let spend = Spend { job: priced, run_id, lane: Lane::Sync, requests, input_guess };
                Ok(budget::enforce(s, &pricer, global, &spend, Stage::Fallback, now)? == Decision::Proceed)
            })
            .await?;
        if !allowed {
            tracing::warn!(run = %run.run_key, provider, model, "the budget blocks the failover");
        }
        Ok(allowed)
    }

    /// The bodies of requests for the run's failover model: their `items`
    /// (JSON) rendered again with the job's templates, in that provider's
    /// API shape.
    pub(super) fn failover_params(
        &self,
        job: &Job,
        run: &RunRow,
        (provider, model): (&str, &str),
        items: &[String],
    ) -> Result<Vec<String>, EngineError> {
        let renderer = Renderer::for_provider(job, provider, model)?;
        let info = RunInfo::new(job, run.scheduled_for);
        items
            .iter()
            .map(|item| {
                let item: crate::sources::Item = serde_json::from_str(item).unwrap_or_default();
                Ok(renderer.request(&info, 1, &item)?.params.to_string())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stretch_is_a_tenth_of_what_is_left_within_bounds() {
        let now = DateTime::from_timestamp(1_795_000_000, 0).unwrap();
        assert_eq!(stretch(now, now + chrono::Duration::minutes(10)), Duration::from_secs(60));
        assert_eq!(stretch(now, now + chrono::Duration::hours(5)), MAX_STRETCH);
        assert_eq!(stretch(now, now + chrono::Duration::seconds(30)), MIN_STRETCH);
        assert_eq!(stretch(now, now - chrono::Duration::seconds(30)), MIN_STRETCH, "past the deadline");
    }
}
