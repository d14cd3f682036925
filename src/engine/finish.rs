//! When a run is done, and what it amounted to.

use chrono::{DateTime, Utc};

use super::EngineError;
use crate::store::{RunRow, RunState, SharedStore};

/// What a finished run amounted to.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// `<job>-<YYYYMMDDTHHMM>`.
    pub run_key: String,
    /// Final state.
    pub state: RunState,
    /// Why it is late or failed, or what failed in it.
    pub reason: Option<String>,
    /// Requests in the run.
    pub requests: u64,
    /// Requests with a successful result.
    pub succeeded: u64,
    /// Requests that failed for good: custom_id, error type, provider message.
    pub permanent_failures: Vec<(String, String, String)>,
    /// Requests that were still failing when retries or the deadline ran out.
    pub gave_up: u64,
    /// Results delivered to the sink.
    pub delivered: u64,
    /// Batches submitted for the run.
    pub batches: usize,
}

impl RunOutcome {
    /// Whether every request succeeded and was delivered.
    pub fn is_complete(&self) -> bool {
        self.succeeded == self.requests && self.delivered == self.requests
    }
}

/// Closes the run when no request can move any more.
pub(super) async fn finish_if_done(
    store: &SharedStore,
    run: &RunRow,
    max_attempts: u32,
    sync_outstanding: usize,
    now: DateTime<Utc>,
) -> Result<Option<RunOutcome>, EngineError> {
    let run_id = run.id;
    let counts = store.call(move |s| s.request_counts(run_id)).await?;
    let in_lane = counts["pending"] + counts["queued"] + counts["in_flight"];
    // The sync lane keeps trying past the deadline (late beats lost); the batch lane does not start new batches then.
    // So does a run the budget keeps on the batch lane.
    let retry_window_open = now < run.deadline_at || run.is_sync() || run.sync_blocked.is_some();
    // Asked on every tick of an open run, cheapest first: counting what is
    // undelivered looks up every success of the run (50 ms for 100,000), so
    // it is asked only of a run that nothing else keeps open.
    if in_lane > 0 || sync_outstanding > 0 {
        return Ok(None);
    }
    if retry_window_open && store.call(move |s| s.has_waiting_requests(run_id, max_attempts)).await? {
        return Ok(None);
    }
    if store.call(move |s| s.undelivered_count(run_id)).await? > 0 {
        return Ok(None);
    }
    let failed = counts["permanent_failed"];
    let gave_up = counts["retryable_failed"];
    let mut reasons = Vec::new();
    if failed > 0 {
        reasons.push(format!("{failed} request(s) failed permanently"));
    }
    if gave_up > 0 {
        reasons.push(format!("{gave_up} request(s) still failing when retries or the deadline ran out"));
    }
    let late = now > run.deadline_at;
    if late {
        reasons.push(format!("finished {}s after the deadline", (now - run.deadline_at).num_seconds()));
    }
    let state = if late { RunState::Late } else { RunState::Completed };
    let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
    store.call(move |s| s.finish_run(run_id, state, reason.as_deref(), now)).await?;
    let finished = store.call(move |s| s.run(run_id)).await?.expect("the run exists");
    outcome(store, &finished).await.map(Some)
}

pub(super) async fn outcome(store: &SharedStore, run: &RunRow) -> Result<RunOutcome, EngineError> {
    let run_id = run.id;
    let (counts, failures, delivered, batches) = store
        .call(move |s| {
            Ok((
                s.request_counts(run_id)?,
                s.permanent_failures(run_id)?,
                s.delivery_count(run_id)?,
                s.all_batches(Some(run_id))?,
            ))
        })
        .await?;
    Ok(RunOutcome {
        run_key: run.run_key.clone(),
        state: run.state,
        reason: run.reason.clone(),
        requests: counts.values().sum(),
        succeeded: counts["succeeded"],
        permanent_failures: failures,
        gave_up: counts["retryable_failed"],
        delivered,
        batches: batches.iter().filter(|b| b.provider_batch_id.is_some()).count(),
    })
}
