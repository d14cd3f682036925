//! Creating a run and storing its rendered requests, once.

use chrono::{DateTime, Utc};

use super::EngineSettings;
use super::stage::{Listed, StagePages};
use crate::cost::budget::{self, Decision, Spend, Stage};
use crate::cost::{Micros, Pricer};
use crate::job::Job;
use crate::manifest::{ItemSource, Lane};
use crate::render::{RenderError, Renderer, RunInfo, render_path};
use crate::sources::{self, Item, ItemStream, SourceError};
use crate::store::{NewRequest, NewRun, RunRow, RunState, SharedStore, StoreError};

/// When a run is scheduled and when it must be done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RunSlot {
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

/// Requests rendered and stored per transaction: a run of any size needs a
/// few chunks of memory, never the whole run. Four chunks are alive at once
/// (one rendered, two queued, one stored) at about 2.2 KB a request: with
/// 2,000 that was 18 MB and a 100,000-item run peaked at 67-81 MiB, with
/// 500 at 55-60 MiB, at the same CPU (requests are stored in sequence
/// order, so a smaller transaction rewrites few pages more).
const CHUNK: usize = 500;

/// Creates the run for `(job, scheduled_for)` or resumes it, with its
/// deadline and the lane its tier asks for.
///
/// A new run streams its items through the renderer into the store, a
/// chunk per transaction, and is marked prepared once the source has been
/// read whole and the budget allows it. Until then the engine submits
/// nothing of it, and a restart discards what was stored and prepares it
/// again. A prepared run keeps the requests it has. A run whose items
/// cannot be read is closed as failed, with the reason and no requests.
pub(super) async fn prepare_run(
    store: &SharedStore,
    job: &Job,
    info: &RunInfo,
    slot: RunSlot,
    settings: &EngineSettings,
    pricer: &Pricer,
    now: DateTime<Utc>,
) -> Result<RunRow, PrepareError> {
    let (run, created) = create_run(store, job, info, slot, now).await?;
    let run_id = run.id;
    if run.prepared_at.is_some() || run.state != RunState::Open {
        let existing: u64 = store.call(move |s| Ok(s.request_counts(run_id)?.values().sum())).await?;
        tracing::info!(run = %run.run_key, requests = existing, state = run.state.as_str(), "resuming run");
        return Ok(run);
    }
    if !created {
        // A queue's flush creates its run before preparing it: nothing was cut off then.
        let leftover = store.call(move |s| s.discard_unprepared_requests(run_id)).await?;
        if leftover > 0 || job.queue.is_none() {
            tracing::warn!(run = %run.run_key, requests = leftover, "preparing again: the last preparation was cut off");
        }
    }
    let stored = match store_requests(store, job, info, (run_id, run.scheduled_for), now).await {
        Ok(stored) => stored,
        Err(PrepareError::Store(error)) => return Err(error.into()),
        Err(error) => {
            let reason = error.to_string();
            close_unprepared(store, run_id, RunState::Failed, reason, now).await?;
            return Err(error);
        }
    };
    let budgets = (pricer, settings.global_budget);
    if let Decision::Skip(reason) = gate_new_run(store, job, &run, &stored, budgets, now).await? {
        tracing::warn!(run = %run.run_key, %reason, "run skipped by its budget policy");
        close_unprepared(store, run_id, RunState::Skipped, reason, now).await?;
        return Ok(store.call(move |s| s.run(run_id)).await?.expect("the run exists"));
    }
    store.call(move |s| s.mark_prepared(run_id, now)).await?;
    tracing::info!(run = %run.run_key, requests = stored.requests, "run prepared");
    Ok(store.call(move |s| s.run(run_id)).await?.expect("the run exists"))
}

async fn create_run(
    store: &SharedStore,
    job: &Job,
    info: &RunInfo,
    slot: RunSlot,
    now: DateTime<Utc>,
) -> Result<(RunRow, bool), StoreError> {
    let RunSlot { scheduled_for, deadline_at } = slot;
    let (name, key, tier) = (job.name.clone(), info.id.clone(), job.manifest.tier.as_str().to_owned());
    let lane = job.manifest.tier.lane().as_str();
    let tags = job.manifest.tags.clone();
    let new = move |s: &mut crate::store::Store| {
        let new = NewRun { job: &name, scheduled_for, run_key: &key, tier: &tier, deadline_at, lane, tags: &tags };
        s.create_run(&new, now)
    };
    store.call(new).await
}

/// Closes a run that will not go ahead, without the requests stored so far.
async fn close_unprepared(
    store: &SharedStore,
    run_id: i64,
    state: RunState,
    reason: String,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    store
        .call(move |s| {
            s.discard_unprepared_requests(run_id)?;
            s.finish_run(run_id, state, Some(&reason), now)
        })
        .await
}

/// How much a preparation stored: what the budget check estimates from.
#[derive(Debug, Default)]
struct Stored {
    requests: u64,
    params_chars: u64,
}

/// Reads, renders and stores the run's requests. Reading and rendering run
/// on a blocking thread that hands over a chunk at a time, with at most two
/// chunks waiting, so memory stays flat however many items the source has.
async fn store_requests(
    store: &SharedStore,
    job: &Job,
    info: &RunInfo,
    (run_id, scheduled_for): (i64, DateTime<Utc>),
    now: DateTime<Utc>,
) -> Result<Stored, PrepareError> {
    let info = distinct_ids(store, info, run_id).await?;
    let listed = match job.queue {
        Some(_) => Some(Listed::Items(queued_items(store, run_id).await?)),
        None => super::stage::stage_input(store, job, (run_id, scheduled_for), now).await?,
    };
    let (sender, mut chunks) = tokio::sync::mpsc::channel::<Vec<NewRequest>>(2);
    let job = job.clone();
    let renderer = tokio::task::spawn_blocking(move || render_chunks(&job, &info, listed, &sender));
    let mut stored = Stored::default();
    while let Some(chunk) = chunks.recv().await {
        stored.requests += chunk.len() as u64;
        stored.params_chars += chunk.iter().map(|r| r.params.len() as u64).sum::<u64>();
        store.call(move |s| s.insert_requests(run_id, &chunk, now)).await?;
        crate::failpoint::hit("mid_prepare");
    }
    renderer.await.expect("rendering does not panic")?;
    Ok(stored)
}

/// For a run of a queue (`enqueue:`), the posted items its flush took, in
/// the order they were posted.
async fn queued_items(store: &SharedStore, run_id: i64) -> Result<Vec<Item>, PrepareError> {
    let texts = store.call(move |s| s.queued_items_of_run(run_id)).await?;
    // The endpoint accepted only JSON objects as items.
    Ok(texts.iter().map(|text| serde_json::from_str(text).unwrap_or_default()).collect())
}

/// The budget check before a run spends anything: its estimated cost on
/// its lane against the job's and the global monthly budget.
async fn gate_new_run(
    store: &SharedStore,
    job: &Job,
    run: &RunRow,
    stored: &Stored,
    budgets: (&Pricer, Option<Micros>),
    now: DateTime<Utc>,
) -> Result<Decision, PrepareError> {
    let chars = stored.params_chars as f64 / stored.requests.max(1) as f64;
    let spend = Spend {
        job: job.clone(),
        run_id: run.id,
        lane: if run.is_sync() { Lane::Sync } else { Lane::Batch },
        requests: stored.requests,
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
    log_skipped(job, &items.skipped);
    Ok(items.items)
}

/// Streams the run's items through the renderer into `chunks`. Returns
/// once the source has been read whole and checked (a failed command,
/// malformed lines), or when the receiver stopped listening.
fn render_chunks(
    job: &Job,
    info: &RunInfo,
    listed: Option<Listed>,
    chunks: &tokio::sync::mpsc::Sender<Vec<NewRequest>>,
) -> Result<(), PrepareError> {
    let mut source = match listed {
        Some(Listed::Items(items)) => Items::Stream(ItemStream::listed(items)),
        Some(Listed::Pages(pages)) => Items::Pages(pages),
        None => Items::Stream(ItemStream::open(rendered_source(job, info)?.as_ref())?),
    };
    // A batch-lane run renders for `batch_model` when the job has one.
    let renderer = Renderer::new(job, job.model_for(job.manifest.tier.lane()))?;
    let mut chunk = Vec::with_capacity(CHUNK);
    for (index, item) in source.by_ref().enumerate() {
        let (seq, item) = (index + 1, item?);
        let request = renderer.request(info, seq, &item)?;
        let item = serde_json::to_string(&item).expect("items serialize");
        chunk.push(NewRequest { custom_id: request.custom_id, seq, item, params: request.params.to_string() });
        if chunk.len() == CHUNK
            && chunks.blocking_send(std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK))).is_err()
        {
            return Ok(());
        }
    }
    if let Items::Stream(items) = source {
        log_skipped(job, &items.finish()?);
    }
    if !chunk.is_empty() {
        let _ = chunks.blocking_send(chunk);
    }
    Ok(())
}

/// Items a run was given ([`Listed`]) or reads from its source.
enum Items {
    /// From a source, or a list.
    Stream(ItemStream),
    /// A stage's, a page of its upstream's results at a time.
    Pages(StagePages),
}

impl Iterator for Items {
    type Item = Result<Item, PrepareError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Items::Stream(items) => items.next().map(|item| item.map_err(PrepareError::from)),
            Items::Pages(pages) => pages.next().map(|item| item.map_err(PrepareError::from)),
        }
    }
}

fn log_skipped(job: &Job, skipped: &[(usize, String)]) {
    for (line, reason) in skipped {
        tracing::warn!(job = %job.name, line, reason = %reason, "skipped malformed item line");
    }
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
        from: items.from.clone(),
        shape: items.shape,
        skip_malformed: items.skip_malformed,
    }))
}
