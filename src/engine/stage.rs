//! What a pipeline stage (`items.from`) reads: its upstream run, chosen by
//! the stage's firing, and that run's delivered results as items. With
//! `as: each` the results are read a page at a time while the stage's
//! requests are rendered, so a stage over a large upstream run needs a
//! page of memory, not the whole run; `as: one` is one item of them all.

use chrono::{DateTime, Utc};

use super::prepare::PrepareError;
use crate::job::Job;
use crate::manifest::StageShape;
use crate::sources::{self, Item, SourceError};
use crate::store::{RunRow, RunState, SharedStore, Store, StoreError};

/// Upstream results read per page.
const PAGE: usize = 2000;

/// Items a run is given instead of reading a source.
pub(super) enum Listed {
    /// All of them (a queue's posted items, a stage's one digest item).
    Items(Vec<Item>),
    /// A stage's, read a page at a time.
    Pages(StagePages),
}

/// A stage's upstream run: for a stage that fires after its upstream, the
/// run of the same instant (`scheduled_for`); for one on its own schedule
/// (or with no instant given), the newest completed run of `items.from`.
/// `None` when there is no such completed run (or `job` is no stage).
pub fn stage_upstream_run(
    store: &Store,
    job: &Job,
    scheduled_for: Option<DateTime<Utc>>,
) -> Result<Option<RunRow>, StoreError> {
    let Some(upstream) = job.manifest.items.as_ref().and_then(|items| items.from.as_deref()) else { return Ok(None) };
    match scheduled_for.filter(|_| !job.schedule.is_timed()) {
        Some(instant) => Ok(store
            .run_by_key(upstream, instant)?
            .filter(|run| matches!(run.state, RunState::Completed | RunState::Late))),
        None => store.newest_completed_run(upstream),
    }
}

/// A stage's upstream run ([`stage_upstream_run`]) and all the items its
/// delivered results make (what `render` shows).
pub fn read_stage_items(
    store: &Store,
    job: &Job,
    scheduled_for: Option<DateTime<Utc>>,
) -> Result<Option<(RunRow, Vec<Item>)>, StoreError> {
    let Some(run) = stage_upstream_run(store, job, scheduled_for)? else { return Ok(None) };
    let results = store.delivered_results(run.id)?;
    let items = sources::stage_items(&run.run_key, &results, shape(job));
    Ok(Some((run, items)))
}

fn shape(job: &Job) -> StageShape {
    job.manifest.items.as_ref().and_then(|items| items.shape).unwrap_or_default()
}

/// For a stage, what its run `run_id` reads, recorded on the run as a
/// `stage_input` event (with the upstream requests that delivered nothing)
/// and as its upstream run. `None` for a job that is no stage.
pub(super) async fn stage_input(
    store: &SharedStore,
    job: &Job,
    (run_id, scheduled_for): (i64, DateTime<Utc>),
    now: DateTime<Utc>,
) -> Result<Option<Listed>, PrepareError> {
    let Some(upstream) = job.manifest.items.as_ref().and_then(|items| items.from.clone()) else { return Ok(None) };
    let (stage, shape) = (job.clone(), shape(job));
    let read = store
        .call(move |s| {
            let Some(run) = stage_upstream_run(s, &stage, Some(scheduled_for))? else { return Ok(None) };
            // Upstream requests that failed for good delivered nothing: they are no item, and said so here.
            let upstream_requests: u64 = s.request_counts(run.id)?.values().sum();
            let results = s.delivered_count(run.id)?;
            let items = if shape == StageShape::One { 1 } else { results };
            let detail = serde_json::json!({
                "upstream_job": run.job, "upstream_run": run.run_key, "results": results,
                "items": items, "upstream_without_result": upstream_requests.saturating_sub(results),
            });
            s.record_event(Some(run_id), None, "stage_input", &detail, now)?;
            s.set_upstream_run(run_id, run.id)?;
            // As one item, all of them now; each as an item, a page at a time while rendering.
            let digest = match shape {
                StageShape::One => Some(sources::stage_items(&run.run_key, &s.delivered_results(run.id)?, shape)),
                StageShape::Each => None,
            };
            Ok(Some((run, results, digest)))
        })
        .await?;
    let Some((run, results, digest)) = read else { return Err(SourceError::NoUpstreamRun { job: upstream }.into()) };
    tracing::info!(job = %job.name, upstream = %run.run_key, results, "stage reads its upstream run");
    Ok(Some(match digest {
        Some(items) => Listed::Items(items),
        None => Listed::Pages(StagePages::new(store.clone(), run.id, run.run_key)),
    }))
}

/// A stage's items (`as: each`), read from its upstream run's delivered
/// results a page at a time, on the rendering thread. A store failure ends
/// it with that error, so the run is prepared again, not failed.
pub(super) struct StagePages {
    store: SharedStore,
    upstream_run: i64,
    upstream_key: String,
    after_seq: i64,
    page: std::vec::IntoIter<Item>,
    done: bool,
}

impl StagePages {
    fn new(store: SharedStore, upstream_run: i64, upstream_key: String) -> StagePages {
        StagePages { store, upstream_run, upstream_key, after_seq: 0, page: Vec::new().into_iter(), done: false }
    }

    fn next_page(&mut self) -> Result<(), StoreError> {
        let (run, after) = (self.upstream_run, self.after_seq);
        let page = self.store.blocking_call(|s| s.delivered_results_after(run, after, PAGE))?;
        self.done = page.len() < PAGE;
        if let Some((seq, _)) = page.last() {
            self.after_seq = *seq;
        }
        let results: Vec<_> = page.into_iter().map(|(_, result)| result).collect();
        self.page = sources::stage_items(&self.upstream_key, &results, StageShape::Each).into_iter();
        Ok(())
    }
}

impl Iterator for StagePages {
    type Item = Result<Item, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(item) = self.page.next() {
                return Some(Ok(item));
            }
            if self.done {
                return None;
            }
            if let Err(error) = self.next_page() {
                self.done = true;
                return Some(Err(error));
            }
        }
    }
}
