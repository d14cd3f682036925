//! `orchestrator render JOB`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};

use super::{EXIT_CONFIG, EXIT_USAGE, ProjectArgs};
use crate::catalog::Catalog;
use crate::engine::{read_run_items, read_stage_items};
use crate::render::{Renderer, RunInfo};
use crate::sources::Item;
use crate::suggest;

/// Arguments of `render`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job (its manifest's file stem).
    pub job: String,
    /// Where the project is.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// Render for this one item (a JSON object) instead of reading the job's items.
    #[arg(long)]
    pub item: Option<String>,
    /// The run's scheduled instant (RFC 3339); default: the job's next firing.
    #[arg(long)]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Print at most this many requests.
    #[arg(long)]
    pub limit: Option<usize>,
    /// State database a stage (`items.from`) reads its upstream's results from.
    #[arg(long, default_value = crate::store::DEFAULT_PATH, env = "ORCHESTRATOR_STATE")]
    pub state: PathBuf,
}

pub(super) fn run(args: &Args) -> anyhow::Result<u8> {
    let catalog = Catalog::load(args.project.catalog.as_deref())?;
    let now = Utc::now();
    let report = args.project.validate(&catalog, now);
    let Some(job) = report.job(&args.job) else {
        let errors = report.errors_of(&args.job);
        if report.parsed(&args.job).is_some() && !errors.is_empty() {
            errors.iter().for_each(|diagnostic| eprint!("{}", diagnostic.render_human()));
            eprintln!("error: fix the manifest first (see `orchestrator validate`)");
            return Ok(EXIT_CONFIG);
        }
        let names = report.parsed.iter().map(|parsed| parsed.name.as_str());
        let hint = suggest::did_you_mean(&args.job, names).map(|h| format!(" ({h})")).unwrap_or_default();
        eprintln!("error: no valid job `{}` in {}{hint}", args.job, args.project.jobs.display());
        return Ok(EXIT_USAGE);
    };
    let scheduled_for = match args.scheduled_for {
        Some(instant) => instant,
        None => next_firing(job, now)?,
    };
    let run = RunInfo::new(job, scheduled_for);
    let items = match &args.item {
        Some(text) => vec![serde_json::from_str::<Item>(text).context("--item must be a JSON object")?],
        None if is_stage(job) => stage_items(job, &args.state)?,
        None if job.queue.is_some() => queued_items(job, &args.state, args.limit)?,
        None => read_run_items(job, &run).with_context(|| format!("cannot read the items of job `{}`", job.name))?,
    };
    let renderer = Renderer::new(job, job.model_for(job.manifest.tier.lane()))?;
    let mut stdout = std::io::stdout().lock();
    for (index, item) in items.iter().enumerate().take(args.limit.unwrap_or(usize::MAX)) {
        let request = renderer.request(&run, index + 1, item)?;
        writeln!(stdout, "{}", serde_json::to_string(&request)?).context("cannot write to standard output")?;
    }
    Ok(0)
}

fn is_stage(job: &crate::job::Job) -> bool {
    job.manifest.items.as_ref().is_some_and(|items| items.from.is_some())
}

/// A stage's items as its next run would read them now.
fn stage_items(job: &crate::job::Job, state: &Path) -> anyhow::Result<Vec<Item>> {
    let upstream = job.manifest.items.as_ref().and_then(|items| items.from.as_deref()).unwrap_or_default();
    if !state.exists() {
        bail!(
            "job `{}` reads the results of `{upstream}` from the state database, and {} does not exist (pass --state)",
            job.name,
            state.display()
        );
    }
    let store = super::setup::open_beside_daemon(state, true)?;
    match read_stage_items(&store, job, None)? {
        Some((_, items)) => Ok(items),
        None => {
            bail!("job `{upstream}` has no completed run yet: a stage reads the results of its newest completed run")
        }
    }
}

/// The instant a run would be for: the next firing, or, for a job off the
/// clock (a stage without `schedule:`, a queue), this minute, as when it
/// fired now.
fn next_firing(job: &crate::job::Job, now: DateTime<Utc>) -> anyhow::Result<DateTime<Utc>> {
    if job.manifest.schedule.is_none() {
        return Ok(chrono::DurationRound::duration_trunc(now, chrono::Duration::minutes(1))?);
    }
    match job.schedule.next_after(now) {
        Some(next) => Ok(next),
        None => bail!("job `{}` never fires", job.name),
    }
}

/// A queue's items as its next flush would take them: the posted items
/// waiting in the state (at most `limit`).
fn queued_items(job: &crate::job::Job, state: &Path, limit: Option<usize>) -> anyhow::Result<Vec<Item>> {
    let hint = "pass `--item '{...}'` to render one item of your own";
    if !state.exists() {
        bail!("job `{}` takes posted items, and there is no state database at {} ({hint})", job.name, state.display());
    }
    let store = super::setup::open_beside_daemon(state, true)?;
    let waiting = store.waiting_queue_items(&job.name, limit.unwrap_or(usize::MAX))?;
    if waiting.is_empty() {
        bail!("no items wait in the queue of job `{}` ({hint})", job.name);
    }
    waiting
        .iter()
        .map(|text| serde_json::from_str::<Item>(text).context("a stored queue item is not a JSON object"))
        .collect()
}
