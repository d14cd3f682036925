//! The `deliver` scenario: a run's 100,000 stored results handed to its
//! sink by the engine's own delivery code (rounds read from the state
//! database, written to the sink, recorded), in a fresh worker process per
//! sink kind: JSON Lines, a directory, a SQLite table.
//!
//! The parent sets up once: the `run` scenario's job is run against the
//! simulator and killed (`ORCHESTRATOR_FAILPOINT=after_sink_write`) once
//! its first round reached the sink, before the round was recorded, so the
//! state holds every result and no delivery. Each measurement starts from
//! a copy of that database. Issue 18's "cost per round independent of the
//! file's size" is read from the rounds of one delivery into an empty
//! file: the later half of them, written while the file holds half the
//! run already, against the earlier half (timed from the worker's log of
//! each round). A sink that copied or re-read its file per round would
//! slow down round after round.

use std::os::unix::process::ExitStatusExt as _;
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
/// How much slower the later rounds of a delivery may be than the earlier
/// ones before the cost of a round is said to grow with the file.
const LATER_ROUNDS_PERCENT: f64 = 10.0;
/// The log line the engine writes after each recorded round.
const ROUND_LOGGED: &str = "results delivered";
const METRICS: [Metric; 6] = [
    Metric { name: "JSON Lines, results/s", target: Some(Target::at_least(TARGET_JSONL_PER_SEC)) },
    Metric {
        name: "later half of the rounds vs the earlier, % slower",
        target: Some(Target::at_most(LATER_ROUNDS_PERCENT)),
    },
    Metric { name: "dir, results/s", target: None },
    Metric { name: "sqlite, results/s", target: None },
    Metric { name: "JSON Lines CPU (user + sys), s", target: None },
    Metric { name: "peak RSS, MiB", target: None },
];

/// The sink a measurement delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
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
    let mut repeats_out = Vec::new();
    for _ in 0..repeats {
        repeats_out.push(measure_each_sink(root, &base, scheduled_for, results).await?);
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
) -> anyhow::Result<Vec<f64>> {
    let jsonl = measure(root, base, scheduled_for, SinkKind::Jsonl).await?;
    let dir = measure(root, base, scheduled_for, SinkKind::Dir).await?;
    let sqlite = measure(root, base, scheduled_for, SinkKind::Sqlite).await?;
    let rounds_at = jsonl.rounds_at;
    let (jsonl, dir, sqlite) = (jsonl.measured, dir.measured, sqlite.measured);
    for (kind, m) in [("jsonl", &jsonl), ("dir", &dir), ("sqlite", &sqlite)] {
        ensure!(m.delivered == results, "{kind}: {} of {results} results delivered", m.delivered);
    }
    let rate = |m: &Measured| results as f64 / m.secs.max(1e-9);
    let peak = [&jsonl, &dir, &sqlite].iter().filter_map(|m| m.peak_rss_kb).max();
    Ok(vec![
        rate(&jsonl),
        later_rounds_slower_percent(&rounds_at).unwrap_or(f64::NAN),
        rate(&dir),
        rate(&sqlite),
        jsonl.cpu_secs.context("this kernel does not report CPU time")?,
        peak.context("this kernel does not report peak RSS")? as f64 / 1024.0,
    ])
}

/// One delivery from a fresh copy of `base`.
async fn measure(root: &Path, base: &Path, scheduled_for: DateTime<Utc>, kind: SinkKind) -> anyhow::Result<Timed> {
    let state_dir = root.join("state");
    let _ = std::fs::remove_dir_all(&state_dir);
    let _ = std::fs::remove_dir_all(root.join("out"));
    std::fs::create_dir_all(&state_dir)?;
    let state = state_dir.join("orchestrator.db");
    std::fs::copy(base, &state).context("cannot copy the undelivered state")?;
    // The copy just made (hundreds of MB) would otherwise still be
    // written back while the worker runs, and be counted against it.
    let synced = tokio::process::Command::new("sync").status().await.context("cannot run sync")?;
    ensure!(synced.success(), "sync failed: {synced}");
    let kind = clap::ValueEnum::to_possible_value(&kind).expect("every sink kind has a name");
    let output = super::worker_command()?
        .args(["bench", "deliver-worker", "--sink", kind.get_name(), "--scheduled-for", &scheduled_for.to_rfc3339()])
        .current_dir(root)
        .env("ORCHESTRATOR_LOG", "warn,orchestrator::engine::deliver=info")
        .env("ORCHESTRATOR_LOG_FORMAT", "json")
        .output()
        .await
        .context("cannot start the deliver worker")?;
    let measured: Measured = super::worker_report("deliver", &output)?;
    Ok(Timed { measured, rounds_at: rounds_logged(&String::from_utf8_lossy(&output.stderr)) })
}

/// A worker's report, with when each of its rounds was recorded.
#[derive(Debug)]
struct Timed {
    measured: Measured,
    rounds_at: Vec<DateTime<Utc>>,
}

/// The instants of the worker's JSON log lines that say a round was recorded.
fn rounds_logged(log: &str) -> Vec<DateTime<Utc>> {
    #[derive(Deserialize)]
    struct Line {
        timestamp: DateTime<Utc>,
        fields: Fields,
    }
    #[derive(Deserialize)]
    struct Fields {
        message: String,
    }
    log.lines()
        .filter_map(|line| serde_json::from_str::<Line>(line).ok())
        .filter(|line| line.fields.message == ROUND_LOGGED)
        .map(|line| line.timestamp)
        .collect()
}

/// How much longer the later half of the rounds took, per round, than the
/// earlier half (a round's time is from the previous round's record to
/// its own); `None` with fewer than four rounds.
fn later_rounds_slower_percent(rounds_at: &[DateTime<Utc>]) -> Option<f64> {
    let secs: Vec<f64> =
        rounds_at.windows(2).map(|pair| (pair[1] - pair[0]).num_microseconds().unwrap_or(0) as f64 / 1e6).collect();
    if secs.len() < 3 {
        return None;
    }
    let (earlier, later) = secs.split_at(secs.len() / 2);
    let mean = |part: &[f64]| part.iter().sum::<f64>() / part.len() as f64;
    Some((mean(later) / mean(earlier).max(1e-9) - 1.0) * 100.0)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: &[i64]) -> Vec<DateTime<Utc>> {
        millis.iter().map(|&ms| DateTime::from_timestamp_millis(1_800_000_000_000 + ms).unwrap()).collect()
    }

    #[test]
    fn rounds_are_read_from_the_engines_log_lines_only() {
        let log = concat!(
            r#"{"timestamp":"2026-12-03T14:00:00.100000Z","level":"INFO","fields":{"message":"results delivered","delivered":2000},"target":"orchestrator::engine::deliver"}"#,
            "\n",
            r#"{"timestamp":"2026-12-03T14:00:00.200000Z","level":"WARN","fields":{"message":"something else"}}"#,
            "\nnot json\n",
            r#"{"timestamp":"2026-12-03T14:00:00.350000Z","level":"INFO","fields":{"message":"results delivered"}}"#,
        );
        let rounds = rounds_logged(log);
        assert_eq!(rounds.len(), 2);
        assert_eq!((rounds[1] - rounds[0]).num_milliseconds(), 250);
    }

    #[test]
    fn later_rounds_are_compared_with_earlier_ones_per_round() {
        // Rounds of 10 ms, then of 15 ms: the later half is 50% slower.
        let slowing = at(&[0, 10, 20, 30, 45, 60, 75]);
        assert!((later_rounds_slower_percent(&slowing).unwrap() - 50.0).abs() < 1e-9);
        let steady = at(&[0, 10, 20, 30, 40]);
        assert!(later_rounds_slower_percent(&steady).unwrap().abs() < 1e-9);
        assert_eq!(later_rounds_slower_percent(&at(&[0, 10, 20])), None, "two rounds say nothing");
    }
}
