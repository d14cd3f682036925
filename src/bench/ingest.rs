//! The `ingest` scenario: the results of an ended batch streamed from the
//! provider (the simulator, in a child process) into the state database and
//! committed, by [`BatchLane::ingest`], the path the daemon takes.
//!
//! The parent sets up once: a state database with N requests, submitted as
//! one batch through the lane and polled until the batch ended. Each repeat
//! then copies that database and runs [`worker`] in a fresh child process,
//! which ingests and reports its time and its whole-process peak RSS, so
//! nothing of the setup counts towards the figures.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::simulator::SimProcess;
use super::{Figure, Report, Scratch, Target, build_profile, median, rss};
use crate::clock::SystemClock;
use crate::lanes::batch::BatchLane;
use crate::providers::anthropic::AnthropicClient;
use crate::providers::{ApiKey, Client, Providers};
use crate::store::{BatchRow, NewRequest, NewRun, SharedStore, Store, StoreError};

/// Most results one batch can hold.
pub const MAX_RESULTS: u64 = 100_000;
/// The model of every request: a batch model of the built-in catalog.
const MODEL: &str = "claude-haiku-4-5";
/// High enough that the simulator cuts no answer: every line keeps its full length.
const MAX_TOKENS: u32 = 1024;
/// Batches end after about half a second.
const SIM_FLAGS: [&str; 6] = ["--batch-median-secs", "0.5", "--batch-p95-secs", "1", "--reply-bytes", "850"];
/// Requests stored per transaction while setting up.
const INSERT_CHUNK: u64 = 10_000;
/// Wait between polls of the batch.
const POLL_EVERY: Duration = Duration::from_millis(250);
/// Give up on a batch that has not ended by then.
const END_TIMEOUT: Duration = Duration::from_secs(600);
/// Issue 7's targets, printed next to the figures.
const TARGET_RESULTS_PER_SEC: f64 = 100_000.0;
const TARGET_PEAK_RSS_KB: u64 = 64 * 1024;
const TARGET_STORAGE_RATIO: f64 = 1.3;

/// What to run.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Requests in the batch, hence result lines ingested.
    pub results: u64,
    /// Measured repeats, each in a fresh process on a fresh copy of the database.
    pub repeats: u32,
}

/// What one worker measured; also the JSON line it prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Result lines stored.
    pub results: u64,
    /// Wall time of the ingest, in milliseconds.
    pub elapsed_ms: f64,
    /// The worker's peak RSS in KiB (`None` where the OS does not say).
    pub peak_rss_kb: Option<u64>,
    /// Size of the database after the ingest, once closed (file and log).
    #[serde(default)]
    pub db_bytes: u64,
}

/// The figures of one repeat.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RepeatFigures {
    /// Result lines stored.
    pub results: u64,
    /// Wall time of the ingest, in milliseconds.
    pub elapsed_ms: f64,
    /// Result lines stored per second.
    pub results_per_sec: f64,
    /// The worker's peak RSS in KiB.
    pub peak_rss_kb: Option<u64>,
    /// Database bytes per stored request with its result.
    pub db_bytes_per_result: f64,
}

impl From<Measured> for RepeatFigures {
    fn from(m: Measured) -> RepeatFigures {
        let results_per_sec = m.results as f64 / (m.elapsed_ms / 1000.0).max(1e-9);
        let db_bytes_per_result = m.db_bytes as f64 / m.results.max(1) as f64;
        RepeatFigures {
            results: m.results,
            elapsed_ms: m.elapsed_ms,
            results_per_sec,
            peak_rss_kb: m.peak_rss_kb,
            db_bytes_per_result,
        }
    }
}

/// The scenario's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IngestReport {
    /// `ingest`.
    pub scenario: &'static str,
    /// `debug` or `release`.
    pub build: &'static str,
    /// Result lines per repeat.
    pub results: u64,
    /// Number of repeats.
    pub repeats: u32,
    /// Average bytes of a results line, newline included.
    pub bytes_per_result: f64,
    /// Median over the repeats.
    pub results_per_sec_median: f64,
    /// Median over the repeats, in KiB.
    pub peak_rss_kb_median: Option<u64>,
    /// Largest over the repeats, in KiB.
    pub peak_rss_kb_max: Option<u64>,
    /// Median database bytes per stored request with its result, over the bytes of its result line.
    pub storage_ratio_median: f64,
    /// Each repeat, in order.
    pub per_repeat: Vec<RepeatFigures>,
}

impl IngestReport {
    fn new(options: Options, bytes_per_result: f64, per_repeat: Vec<RepeatFigures>) -> IngestReport {
        let rates: Vec<f64> = per_repeat.iter().map(|r| r.results_per_sec).collect();
        let peaks: Option<Vec<u64>> = per_repeat.iter().map(|r| r.peak_rss_kb).collect();
        let peaks_f64: Option<Vec<f64>> = peaks.as_ref().map(|p| p.iter().map(|&kb| kb as f64).collect());
        let ratios: Vec<f64> = per_repeat.iter().map(|r| r.db_bytes_per_result / bytes_per_result.max(1.0)).collect();
        IngestReport {
            scenario: "ingest",
            build: build_profile(),
            results: options.results,
            repeats: options.repeats,
            bytes_per_result,
            results_per_sec_median: median(&rates).unwrap_or(0.0),
            peak_rss_kb_median: peaks_f64.and_then(|p| median(&p)).map(|kb| kb.round() as u64),
            peak_rss_kb_max: peaks.and_then(|p| p.into_iter().max()),
            storage_ratio_median: median(&ratios).unwrap_or(0.0),
            per_repeat,
        }
    }
}

/// Sets up a database and an ended batch of `options.results` requests,
/// then measures `options.repeats` ingests of it, each in its own process.
pub async fn run(options: Options) -> anyhow::Result<IngestReport> {
    ensure!((1..=MAX_RESULTS).contains(&options.results), "results must be between 1 and {MAX_RESULTS} (one batch)");
    ensure!(options.repeats > 0, "at least one repeat is needed");
    let sim = SimProcess::start(&SIM_FLAGS).await?;
    let scratch = Scratch::new("ingest")?;
    let setup = prepare(sim.base_url(), scratch.path(), options.results).await?;
    let mut per_repeat = Vec::new();
    for repeat in 1..=options.repeats {
        let measured = measure(&setup, sim.base_url(), scratch.path(), repeat).await?;
        ensure!(
            measured.results == options.results,
            "repeat {repeat} stored {} results, expected {}",
            measured.results,
            options.results
        );
        per_repeat.push(RepeatFigures::from(measured));
    }
    Ok(IngestReport::new(options, setup.bytes_per_result, per_repeat))
}

/// An ended batch whose results are not ingested yet.
struct Setup {
    /// The database, closed.
    db: PathBuf,
    batch_id: i64,
    bytes_per_result: f64,
}

/// Stores the requests, submits them as one batch through the lane, polls
/// it until it ended, reads its results once for their size, and closes
/// the database (the last close folds the WAL into the file).
async fn prepare(base_url: &str, dir: &Path, results: u64) -> anyhow::Result<Setup> {
    let db = dir.join("state.db");
    let store = SharedStore::new(Store::open(&db)?);
    let client = client(base_url)?;
    let lane =
        BatchLane::new(Providers::new([Client::Anthropic(client.clone())]), store.clone(), Arc::new(SystemClock));
    let run_id = store.call(move |s| seed(s, results)).await?;
    tracing::info!(requests = results, "requests stored; submitting the batch");
    let ids = (1..=results).map(custom_id).collect();
    let batch_id = lane.submit(run_id, "anthropic", ids, &[], None).await?;
    let batch = wait_until_ended(&lane, &store, batch_id).await?;
    let url = batch.results_url.context("the ended batch has no results_url")?;
    let bytes_per_result = stream_bytes(&client, &url, results).await?;
    Ok(Setup { db, batch_id, bytes_per_result })
}

/// The run and its `results` requests, in chunks so setup stays small too.
pub(super) fn seed(store: &mut Store, results: u64) -> Result<i64, StoreError> {
    let scheduled_for: DateTime<Utc> = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("a valid instant");
    let run = NewRun {
        job: "bench",
        scheduled_for,
        run_key: "bench-20260101T0000",
        tier: "batch",
        deadline_at: scheduled_for + chrono::Duration::hours(24),
        lane: "batch",
        tags: &[],
    };
    let now = Utc::now();
    let (run, _) = store.create_run(&run, now)?;
    for start in (1..=results).step_by(INSERT_CHUNK as usize) {
        let chunk: Vec<NewRequest> = (start..=results.min(start + INSERT_CHUNK - 1)).map(request).collect();
        store.insert_requests(run.id, &chunk, now)?;
    }
    Ok(run.id)
}

/// `bench-2026-01-01-<seq>`, the form the engine gives a daily job's requests.
pub(super) fn custom_id(seq: u64) -> String {
    format!("bench-2026-01-01-{seq:06}")
}

/// Request `seq`: a short prompt whose first words the simulator quotes in its answer.
fn request(seq: u64) -> NewRequest {
    let item = serde_json::json!({ "id": seq, "title": format!("Item {seq} of the benchmark feed") });
    let prompt =
        format!("Summarise item {seq} of the benchmark feed in a few sentences, with its key points and risks.");
    let params = serde_json::json!({
        "model": MODEL,
        "max_tokens": MAX_TOKENS,
        "messages": [{ "role": "user", "content": prompt }],
    });
    NewRequest { custom_id: custom_id(seq), seq: seq as usize, item: item.to_string(), params: params.to_string() }
}

pub(super) fn client(base_url: &str) -> anyhow::Result<AnthropicClient> {
    Ok(AnthropicClient::new(base_url, ApiKey::new("bench"))?)
}

/// The benchmarks' provider: Anthropic on the simulator at `base_url`.
pub(super) fn providers(base_url: &str) -> anyhow::Result<Providers> {
    Ok(Providers::new([Client::Anthropic(client(base_url)?)]))
}

/// Polls through the lane until the batch ended; returns its row then.
async fn wait_until_ended(lane: &BatchLane, store: &SharedStore, batch_id: i64) -> anyhow::Result<BatchRow> {
    let started = Instant::now();
    loop {
        let batch = store.call(move |s| s.batch(batch_id)).await?.context("the batch row is gone")?;
        if lane.poll(&batch).await? {
            // The poll stored the results URL: read the row again.
            return store.call(move |s| s.batch(batch_id)).await?.context("the batch row is gone");
        }
        ensure!(started.elapsed() < END_TIMEOUT, "the batch did not end within {END_TIMEOUT:?}");
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Average bytes per line of the results stream (newline included), read
/// with the reader the lane uses; checks there is one line per request.
async fn stream_bytes(client: &AnthropicClient, url: &str, expected: u64) -> anyhow::Result<f64> {
    let mut reader = client.results(url).await?;
    let mut lines = 0_u64;
    while let Some(line) = reader.next().await? {
        line.map_err(|why| anyhow::anyhow!("an unreadable result line: {why}"))?;
        lines += 1;
    }
    ensure!(lines == expected, "the results stream has {lines} lines, expected {expected}");
    Ok(reader.bytes_read() as f64 / lines as f64)
}

/// One repeat: a fresh copy of the database, ingested by a fresh worker process.
async fn measure(setup: &Setup, base_url: &str, dir: &Path, repeat: u32) -> anyhow::Result<Measured> {
    let copy = dir.join(format!("repeat-{repeat}.db"));
    copy_database(&setup.db, &copy)?;
    let output = super::worker_command()?
        .args(["bench", "ingest-worker", "--batch", &setup.batch_id.to_string(), "--base-url", base_url])
        .arg("--state")
        .arg(&copy)
        .output()
        .await
        .context("cannot start the ingest worker")?;
    remove_database(&copy);
    super::worker_report("ingest", &output)
}

/// The files of a closed SQLite database: the main file and, should a
/// close have left one, its write-ahead log.
fn database_files(db: &Path) -> [PathBuf; 2] {
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    [db.to_owned(), PathBuf::from(wal)]
}

fn copy_database(from: &Path, to: &Path) -> anyhow::Result<()> {
    for (source, target) in database_files(from).iter().zip(database_files(to)) {
        if source.exists() {
            std::fs::copy(source, &target)
                .with_context(|| format!("cannot copy {} to {}", source.display(), target.display()))?;
        }
    }
    Ok(())
}

/// Removes a scratch database and its log, unless told to keep files.
pub(super) fn remove_database(db: &Path) {
    if super::keep_files() {
        return;
    }
    for file in database_files(db) {
        let _ = std::fs::remove_file(file);
    }
    let mut shm = db.as_os_str().to_owned();
    shm.push("-shm");
    let _ = std::fs::remove_file(shm);
}

/// The measured part, run in its own process by `orchestrator bench
/// ingest-worker`: ingests batch `batch_id` of the database at `state`
/// through the lane, checks every result was stored, and reports.
pub async fn worker(state: &Path, batch_id: i64, base_url: &str) -> anyhow::Result<Measured> {
    let store = SharedStore::new(Store::open(state)?);
    let lane = BatchLane::new(providers(base_url)?, store.clone(), Arc::new(SystemClock));
    let batch = store.call(move |s| s.batch(batch_id)).await?.with_context(|| format!("no batch {batch_id}"))?;
    ensure!(!batch.results_ingested, "batch {batch_id} is already ingested: nothing to measure");
    let started = Instant::now();
    let counts = lane.ingest(&batch).await?;
    let elapsed = started.elapsed();
    let run_id = batch.run_id;
    let succeeded = store.call(move |s| s.request_counts(run_id)).await?.get("succeeded").copied().unwrap_or(0);
    ensure!(
        counts.stored == batch.request_count && succeeded == batch.request_count,
        "stored {} results and {succeeded} requests succeeded, expected {}",
        counts.stored,
        batch.request_count
    );
    let peak_rss_kb = rss::peak_rss_kb();
    // The last connection to close folds the log into the file.
    drop((lane, store));
    let db_bytes = database_files(state).iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
    Ok(Measured { results: counts.stored, elapsed_ms: elapsed.as_secs_f64() * 1000.0, peak_rss_kb, db_bytes })
}

impl Report for IngestReport {
    fn figures(&self) -> Vec<Figure> {
        let mib = |kb: Option<u64>| kb.map(|kb| kb as f64 / 1024.0);
        vec![
            Figure::new(
                "ingest",
                "results/s",
                Some(self.results_per_sec_median),
                Some(Target::at_least(TARGET_RESULTS_PER_SEC)),
            ),
            Figure::new(
                "ingest",
                "peak RSS, MiB",
                mib(self.peak_rss_kb_median),
                Some(Target::at_most((TARGET_PEAK_RSS_KB / 1024) as f64)),
            ),
            Figure::new(
                "storage",
                "db bytes per result / line bytes",
                Some(self.storage_ratio_median),
                Some(Target::at_most(TARGET_STORAGE_RATIO)),
            ),
        ]
    }

    fn table(&self) -> String {
        let mib = |kb: Option<u64>| kb.map_or_else(|| "n/a".to_owned(), |kb| format!("{:.1}", kb as f64 / 1024.0));
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ingest: {} results of one ended batch into the state database, {} repeat(s), {} build",
            self.results, self.repeats, self.build
        );
        let _ = writeln!(out, "results stream: {:.0} bytes per result", self.bytes_per_result);
        let _ = writeln!(
            out,
            "database: {:.2} x the result line per stored request with its result (target <= {TARGET_STORAGE_RATIO})\n",
            self.storage_ratio_median
        );
        let _ = writeln!(out, "{:<18}{:>12}{:>12}{:>12}", "", "median", "max", "target");
        let _ = writeln!(
            out,
            "{:<18}{:>12.0}{:>12}{:>12}",
            "results/s",
            self.results_per_sec_median,
            "",
            format!(">= {TARGET_RESULTS_PER_SEC:.0}")
        );
        let _ = writeln!(
            out,
            "{:<18}{:>12}{:>12}{:>12}",
            "peak RSS (MiB)",
            mib(self.peak_rss_kb_median),
            mib(self.peak_rss_kb_max),
            format!("<= {}", TARGET_PEAK_RSS_KB / 1024)
        );
        let _ = writeln!(
            out,
            "\n{:<8}{:>10}{:>14}{:>14}{:>16}",
            "repeat", "results", "elapsed ms", "results/s", "peak RSS MiB"
        );
        for (n, r) in self.per_repeat.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:<8}{:>10}{:>14.1}{:>14.0}{:>16}",
                n + 1,
                r.results,
                r.elapsed_ms,
                r.results_per_sec,
                mib(r.peak_rss_kb)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_takes_medians_and_the_largest_peak() {
        let measured =
            |elapsed_ms, kb| Measured { results: 1000, elapsed_ms, peak_rss_kb: Some(kb), db_bytes: 1_800_000 };
        let repeats = [measured(10.0, 30_000), measured(20.0, 31_000), measured(5.0, 29_000)];
        let report =
            IngestReport::new(Options { results: 1000, repeats: 3 }, 1500.0, repeats.map(RepeatFigures::from).into());
        assert_eq!(report.results_per_sec_median, 100_000.0);
        assert_eq!(report.peak_rss_kb_median, Some(30_000));
        assert_eq!(report.peak_rss_kb_max, Some(31_000));
        assert_eq!(report.storage_ratio_median, 1.2);
        assert!(report.table().contains("results/s"));
    }

    #[test]
    fn an_unknown_peak_is_reported_as_unknown() {
        let repeats = [Measured { results: 1, elapsed_ms: 1.0, peak_rss_kb: None, db_bytes: 0 }];
        let report =
            IngestReport::new(Options { results: 1, repeats: 1 }, 1.0, repeats.map(RepeatFigures::from).into());
        assert_eq!((report.peak_rss_kb_median, report.peak_rss_kb_max), (None, None));
        assert!(report.table().contains("n/a"));
    }

    #[test]
    fn database_files_are_the_file_and_its_log() {
        let [db, wal] = database_files(Path::new("/tmp/x/state.db"));
        assert_eq!((db.to_str(), wal.to_str()), (Some("/tmp/x/state.db"), Some("/tmp/x/state.db-wal")));
    }
}
