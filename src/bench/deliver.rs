//! The `deliver` scenario: a run's 100,000 stored results handed to its
//! sink by the engine's own delivery code (rounds read from the state
//! database, written to the sink, recorded), in a fresh worker process per
//! sink kind: JSON Lines into an empty file, JSON Lines into a file that
//! already holds one run's delivery, a directory, a SQLite table.
//!
//! The parent sets up once: the `run` scenario's job is run against the
//! simulator and killed (`ORCHESTRATOR_FAILPOINT=after_sink_write`) once
//! its first round reached the sink, before the round was recorded, so the
//! state holds every result and no delivery. Each measurement starts from
//! a copy of that database. The file that already holds a run is the
//! issue's "cost per round independent of the file's size": a sink that
//! copied or re-read its file per round would be slower in proportion.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use chrono::{DateTime, DurationRound, Utc};
use serde::{Deserialize, Serialize};

use super::figures::{Metric, Sampled, Target};
use super::simulator::SimProcess;
use super::{Scratch, endtoend, project};
use crate::catalog::Catalog;
use crate::cost::Pricer;
use crate::manifest::{Sink, SqliteSink};
use crate::render::RunInfo;
use crate::store::{SharedStore, Store};

/// Results delivered per measurement: one full batch.
pub const RESULTS: u64 = endtoend::ITEMS;
/// Issue 18's target for JSON Lines.
const TARGET_JSONL_PER_SEC: f64 = 200_000.0;
/// How much slower rounds into a file holding a run may be than into an
/// empty one before the cost of a round is said to grow with the file.
const GROWN_SPREAD_PERCENT: f64 = 10.0;
const METRICS: [Metric; 8] = [
    Metric { name: "JSON Lines, results/s", target: Some(Target::at_least(TARGET_JSONL_PER_SEC)) },
    Metric { name: "JSON Lines into a file of one run, results/s", target: None },
    Metric {
        name: "into a file of one run vs an empty one, % slower",
        target: Some(Target::at_most(GROWN_SPREAD_PERCENT)),
    },
    Metric { name: "dir, results/s", target: None },
    Metric { name: "sqlite, results/s", target: None },
    Metric { name: "JSON Lines CPU (user + sys), s", target: None },
    Metric { name: "JSON Lines into a file of one run CPU, s", target: None },
    Metric { name: "peak RSS, MiB", target: None },
];

/// The sink a measurement delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum SinkKind {
    /// One JSON line per result, appended to a file.
    Jsonl,
    /// One file per result in a directory.
    Dir,
    /// One row per result in a SQLite table.
    Sqlite,
}

impl SinkKind {
    fn sink(self, job: &str) -> Sink {
        match self {
            SinkKind::Jsonl => Sink { jsonl: Some(format!("out/{job}/{{{{ run.date }}}}.jsonl")), ..Sink::default() },
            SinkKind::Dir => Sink { dir: Some(format!("out/{job}/{{{{ run.date }}}}")), ..Sink::default() },
            SinkKind::Sqlite => Sink {
                sqlite: Some(SqliteSink { path: "out/results.db".into(), table: "results".into() }),
                ..Sink::default()
            },
        }
    }
}

/// What a worker measured; also the JSON line it prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Results the delivery handed to the sink.
    pub delivered: u64,
    /// Wall seconds of the delivery alone.
    pub secs: f64,
    /// User plus system CPU seconds of the whole worker.
    pub cpu_secs: Option<f64>,
    /// The worker's peak RSS, KiB.
    pub peak_rss_kb: Option<u64>,
}

/// Sets up a run with `results` stored results, then delivers them
/// `repeats` times to each sink kind.
pub async fn run(results: u64, repeats: u32) -> anyhow::Result<Sampled> {
    ensure!((1..=RESULTS).contains(&results), "results must be between 1 and {RESULTS} (one batch)");
    let scratch = Scratch::new("deliver")?;
    let root = scratch.path();
    endtoend::write_project(root, results)?;
    let scheduled_for = Utc::now().duration_trunc(chrono::Duration::minutes(1))?;
    let base = root.join("undelivered.db");
    store_results_undelivered(root, results, scheduled_for, &base).await?;
    // One run's delivery, untimed: the file the "full file" measurements start from.
    let first = measure(root, &base, scheduled_for, SinkKind::Jsonl, None).await?;
    ensure!(first.delivered == results, "{} of {results} results delivered", first.delivered);
    let full = keep_delivered_file(root)?;
    let mut repeats_out = Vec::new();
    for _ in 0..repeats {
        repeats_out.push(measure_each_sink(root, &base, scheduled_for, results, (&full.0, &full.1)).await?);
    }
    let setup = format!(
        "{results} stored results of `orchestrator run`'s job (items of about 1 KB) delivered by the engine's rounds \
         to each sink; a fresh worker and a fresh copy of the state per measurement"
    );
    Ok(Sampled::new("deliver", setup, &METRICS, &repeats_out))
}

/// Runs the job until its first delivery round reached the sink, then
/// kills it there, and keeps the state, folded into one file, at `base`.
async fn store_results_undelivered(
    root: &Path,
    results: u64,
    scheduled_for: DateTime<Utc>,
    base: &Path,
) -> anyhow::Result<()> {
    let sim = SimProcess::start(&[]).await?;
    let output = super::worker_command()?
        .args(["bench", "run-worker", "--scheduled-for", &scheduled_for.to_rfc3339()])
        .current_dir(root)
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("ANTHROPIC_API_KEY", "sk-bench-not-a-real-key")
        .env("ORCHESTRATOR_LOG", "warn")
        .env("ORCHESTRATOR_FAILPOINT", "after_sink_write")
        .output()
        .await
        .context("cannot start the run worker")?;
    use std::os::unix::process::ExitStatusExt as _;
    if output.status.signal() != Some(9) {
        bail!(
            "the run was to be killed at its first delivery, but ended {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let state = root.join("state").join("orchestrator.db");
    let job = project::job_name(1);
    let store = Store::open(&state)?;
    let run = store.run_by_key(&job, scheduled_for)?.context("the killed run left no run")?;
    let undelivered = store.undelivered_count(run.id)?;
    ensure!(undelivered == results, "{undelivered} of {results} results wait for delivery");
    ensure!(store.delivery_count(run.id)? == 0, "the killed round was recorded");
    // The last connection to close folds the log into the file.
    drop(store);
    std::fs::rename(&state, base).context("cannot keep the undelivered state")?;
    Ok(())
}

/// One repeat: each sink kind in turn, each in a fresh worker on a fresh copy.
async fn measure_each_sink(
    root: &Path,
    base: &Path,
    scheduled_for: DateTime<Utc>,
    results: u64,
    full: (&str, &Path),
) -> anyhow::Result<Vec<f64>> {
    let grown = measure(root, base, scheduled_for, SinkKind::Jsonl, Some(full)).await?;
    let empty = measure(root, base, scheduled_for, SinkKind::Jsonl, None).await?;
    let dir = measure(root, base, scheduled_for, SinkKind::Dir, None).await?;
    let sqlite = measure(root, base, scheduled_for, SinkKind::Sqlite, None).await?;
    for (kind, m) in [("jsonl", &empty), ("jsonl into a full file", &grown), ("dir", &dir), ("sqlite", &sqlite)] {
        ensure!(m.delivered == results, "{kind}: {} of {results} results delivered", m.delivered);
    }
    let rate = |m: &Measured| results as f64 / m.secs.max(1e-9);
    let peak = [&empty, &grown, &dir, &sqlite].iter().filter_map(|m| m.peak_rss_kb).max();
    Ok(vec![
        rate(&empty),
        rate(&grown),
        (grown.secs / empty.secs.max(1e-9) - 1.0) * 100.0,
        rate(&dir),
        rate(&sqlite),
        empty.cpu_secs.context("this kernel does not report CPU time")?,
        grown.cpu_secs.context("this kernel does not report CPU time")?,
        peak.context("this kernel does not report peak RSS")? as f64 / 1024.0,
    ])
}

/// The JSON Lines file just delivered, moved aside, with the sink target
/// it was delivered as: the next measurement starts with it in place.
fn keep_delivered_file(root: &Path) -> anyhow::Result<(String, PathBuf)> {
    let db = root.join("state").join("orchestrator.db");
    let conn = rusqlite::Connection::open(&db)?;
    let (target, length): (String, u64) =
        conn.query_row("SELECT target, length FROM sink_files", [], |row| Ok((row.get(0)?, row.get(1)?)))?;
    let file = root.join(&target);
    let on_disk = std::fs::metadata(&file).with_context(|| format!("no sink file {}", file.display()))?.len();
    ensure!(on_disk == length, "the sink file holds {on_disk} bytes, its last recorded length is {length}");
    let kept = root.join("one-run.jsonl");
    std::fs::rename(&file, &kept)?;
    Ok((target, kept))
}

/// One delivery from a fresh copy of `base`. With `full`, the JSON Lines
/// target starts as a copy of that file, recorded as delivered before.
async fn measure(
    root: &Path,
    base: &Path,
    scheduled_for: DateTime<Utc>,
    kind: SinkKind,
    full: Option<(&str, &Path)>,
) -> anyhow::Result<Measured> {
    let state_dir = root.join("state");
    let _ = std::fs::remove_dir_all(&state_dir);
    let _ = std::fs::remove_dir_all(root.join("out"));
    std::fs::create_dir_all(&state_dir)?;
    let state = state_dir.join("orchestrator.db");
    std::fs::copy(base, &state).context("cannot copy the undelivered state")?;
    if let Some((target, file)) = full {
        let path = root.join(target);
        std::fs::create_dir_all(path.parent().context("a sink file has a directory")?)?;
        let length = write_copy(file, &path)?;
        let mut store = Store::open(&state)?;
        store.record_deliveries(&[], "jsonl", target, Some(length), Utc::now())?;
    }
    // The copies just made (hundreds of MB) would otherwise still be
    // written back while the worker runs, and be counted against it.
    let synced = tokio::process::Command::new("sync").status().await.context("cannot run sync")?;
    ensure!(synced.success(), "sync failed: {synced}");
    let kind_arg = match kind {
        SinkKind::Jsonl => "jsonl",
        SinkKind::Dir => "dir",
        SinkKind::Sqlite => "sqlite",
    };
    let output = super::worker_command()?
        .args(["bench", "deliver-worker", "--sink", kind_arg, "--scheduled-for", &scheduled_for.to_rfc3339()])
        .current_dir(root)
        .env("ORCHESTRATOR_LOG", "warn")
        .output()
        .await
        .context("cannot start the deliver worker")?;
    super::worker_report("deliver", &output)
}

/// Copies `from` to `to` with plain writes, as a sink appends. (`fs::copy`
/// makes the kernel copy the file itself, and appending to such a copy was
/// several times slower in the kernel than appending to a file built by
/// writes: it measured the copy, not the sink.)
fn write_copy(from: &Path, to: &Path) -> anyhow::Result<u64> {
    use std::io::{Read as _, Write as _};
    let (mut source, mut target) = (std::fs::File::open(from)?, std::fs::File::create(to)?);
    let (mut buffer, mut length) = (vec![0; 1 << 20], 0);
    loop {
        let read = source.read(&mut buffer)?;
        if read == 0 {
            return Ok(length);
        }
        target.write_all(&buffer[..read])?;
        length += read as u64;
    }
}

/// The worker: delivers the run of the generated project in the current
/// directory to `kind`, through the engine's delivery rounds.
pub async fn worker(kind: SinkKind, scheduled_for: DateTime<Utc>) -> anyhow::Result<Measured> {
    let project = project::Project { jobs: PathBuf::from("jobs"), prompts: PathBuf::from("prompts") };
    let mut job = project::load(&project, &Catalog::builtin())?.into_iter().next().context("the project has no job")?;
    job.manifest.sink = Some(kind.sink(&job.name));
    let store = SharedStore::new(Store::open(Path::new("state/orchestrator.db"))?);
    let name = job.name.clone();
    let run = store.call(move |s| s.run_by_key(&name, scheduled_for)).await?.context("no run to deliver")?;
    let info = RunInfo::new(&job, scheduled_for);
    let pricer = Pricer::new(Catalog::builtin());
    let started = Instant::now();
    let delivered = crate::engine::deliver_pending(&store, &job, &info, run.id, &pricer, Utc::now()).await?;
    let secs = started.elapsed().as_secs_f64();
    Ok(Measured {
        delivered: delivered as u64,
        secs,
        cpu_secs: super::cpu::cpu_secs(),
        peak_rss_kb: super::rss::peak_rss_kb(),
    })
}
