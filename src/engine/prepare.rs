//! Creating a run and storing its rendered requests, once.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::EngineSettings;
use crate::catalog::Catalog;
use crate::cost::budget::{self, Decision, Spend, Stage};
use crate::cost::{Micros, Pricer};
use crate::manifest::{ItemSource, Job, Lane};
use crate::render::{RenderError, Renderer, RunInfo, render_path};
use crate::sources::{self, Item, SourceError};
use crate::store::{NewRequest, NewRun, RunRow, RunState, SharedStore, StoreError};

/// When a run is scheduled and when it must be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunSlot {
    /// The scheduled instant (the run's key with the job).
    pub scheduled_for: DateTime<Utc>,
    /// When every result must be final.
    pub deadline_at: DateTime<Utc>,
}

/// Why a run could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Rendering failed (template, model, schedule).
    #[error(transparent)]
    Render(#[from] RenderError),
    /// Items could not be read.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Another run already uses this run's custom_ids.
    #[error("custom_id `{0}` belongs to another run: pick a --scheduled-for in another minute")]
    IdsTaken(String),
}

/// Creates the run for `(job, scheduled_for)` or resumes it, with its
/// deadline and the lane its tier asks for. A new run reads
/// its items and stores every rendered request in one transaction; a
/// resumed run keeps the requests it has. A run whose items cannot be read
/// is closed as failed, with the reason.
pub async fn prepare_run(
    store: &SharedStore,
    job: &Job,
    info: &RunInfo,
    slot: RunSlot,
    settings: &EngineSettings,
    pricer: &Pricer,
    now: DateTime<Utc>,
) -> Result<RunRow, PrepareError> {
    let RunSlot { scheduled_for, deadline_at } = slot;
    let (name, key, tier) = (job.name.clone(), info.id.clone(), job.manifest.tier.as_str().to_owned());
    let lane = job.manifest.tier.lane().as_str();
    let tags = job.manifest.tags.clone();
    let (run, _) = store
        .call(move |s| {
            let new = NewRun { job: &name, scheduled_for, run_key: &key, tier: &tier, deadline_at, lane, tags: &tags };
            s.create_run(&new, now)
        })
        .await?;
    let run_id = run.id;
    let existing: u64 = store.call(move |s| Ok(s.request_counts(run_id)?.values().sum())).await?;
    if existing > 0 || run.state != RunState::Open {
        tracing::info!(run = %run.run_key, requests = existing, state = run.state.as_str(), "resuming run");
        return Ok(run);
    }
    let prepared = match distinct_ids(store, info, run_id).await {
        Ok(info) => render_requests(job, &info, &settings.prompts_dir, &settings.catalog),
        Err(error) => Err(error),
    };
    let requests = match prepared {
        Ok(requests) => requests,
        Err(error) => {
            let reason = error.to_string();
            store.call(move |s| s.finish_run(run_id, RunState::Failed, Some(&reason), now)).await?;
            return Err(error);
        }
    };
    let budgets = (pricer, settings.global_budget);
    if let Decision::Skip(reason) = gate_new_run(store, job, &run, &requests, budgets, now).await? {
        tracing::warn!(run = %run.run_key, %reason, "run skipped by its budget policy");
        store.call(move |s| s.finish_run(run_id, RunState::Skipped, Some(&reason), now)).await?;
        return Ok(store.call(move |s| s.run(run_id)).await?.expect("the run exists"));
    }
    let count = requests.len();
    store.call(move |s| s.insert_requests(run_id, &requests, now)).await?;
    tracing::info!(run = %run.run_key, requests = count, "run prepared");
    Ok(store.call(move |s| s.run(run_id)).await?.expect("the run exists"))
}

/// The budget check before a run spends anything: its estimated cost on
/// its lane against the job's and the global monthly budget.
async fn gate_new_run(
    store: &SharedStore,
    job: &Job,
    run: &RunRow,
    requests: &[NewRequest],
    budgets: (&Pricer, Option<Micros>),
    now: DateTime<Utc>,
) -> Result<Decision, PrepareError> {
    let chars = requests.iter().map(|r| r.params.len()).sum::<usize>() as f64 / requests.len().max(1) as f64;
    let spend = Spend {
        job: job.clone(),
        run_id: run.id,
        lane: if run.is_sync() { Lane::Sync } else { Lane::Batch },
        requests: requests.len() as u64,
        input_guess: chars / 4.0,
    };
    let (pricer, global) = (budgets.0.clone(), budgets.1);
    Ok(store.call(move |s| budget::enforce(s, &pricer, global, &spend, Stage::Submit, now)).await?)
}

/// The run's ids, switched to the timestamped form when another run of the
/// same day already uses the date form. Collisions would otherwise drop requests.
async fn distinct_ids(store: &SharedStore, info: &RunInfo, run_id: i64) -> Result<RunInfo, PrepareError> {
    let taken = |info: &RunInfo| {
        let first = info.custom_id(1);
        async move { store.call(move |s| s.custom_id_owner(&first)).await.map(|owner| owner.is_some_and(|o| o != run_id)) }
    };
    if !taken(info).await? {
        return Ok(info.clone());
    }
    let timestamped = info.clone().with_timestamped_ids();
    if taken(&timestamped).await? {
        return Err(PrepareError::IdsTaken(timestamped.custom_id(1)));
    }
    Ok(timestamped)
}

/// Reads the items of a run exactly as the run reads them, logging skipped lines.
pub fn read_run_items(job: &Job, info: &RunInfo) -> Result<Vec<Item>, PrepareError> {
    let items = sources::read_items(rendered_source(job, info)?.as_ref())?;
    for (line, reason) in &items.skipped {
        tracing::warn!(job = %job.name, line, reason = %reason, "skipped malformed item line");
    }
    Ok(items.items)
}

fn render_requests(
    job: &Job,
    info: &RunInfo,
    prompts_dir: &Path,
    catalog: &Catalog,
) -> Result<Vec<NewRequest>, PrepareError> {
    let items = read_run_items(job, info)?;
    let mut renderer = Renderer::new(job, prompts_dir, catalog)?;
    if let (Lane::Batch, Some(model)) = (job.manifest.tier.lane(), &job.manifest.batch_model) {
        renderer.use_model(catalog, model)?;
    }
    let mut requests = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let request = renderer.request(info, index + 1, item)?;
        requests.push(NewRequest {
            custom_id: request.custom_id,
            seq: index + 1,
            item: serde_json::to_string(item).expect("items serialize"),
            params: request.params.to_string(),
        });
    }
    Ok(requests)
}

/// The job's item source with `{{ run.* }}` filled in.
fn rendered_source(job: &Job, info: &RunInfo) -> Result<Option<ItemSource>, RenderError> {
    let Some(items) = &job.manifest.items else {
        return Ok(None);
    };
    let render = |text: &Option<String>| text.as_deref().map(|t| render_path(job, info, t)).transpose();
    Ok(Some(ItemSource {
        jsonl: render(&items.jsonl)?,
        glob: render(&items.glob)?,
        command: render(&items.command)?,
        skip_malformed: items.skip_malformed,
    }))
}
