//! The `submit` scenario: a 100,000-request batch rendered from a job's
//! templates ([`Renderer`], about 1 KB of prompt each), stored, and sent by
//! [`BatchLane::submit`] (intent committed, body streamed from the
//! database) to the simulator.
//!
//! Each repeat runs in a fresh worker process on a fresh database, so its
//! peak RSS is the footprint of rendering and sending and nothing else.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, ensure};
use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::figures::{Metric, Sampled, Target};
use super::simulator::SimProcess;
use super::{Scratch, project, rss};
use crate::catalog::Catalog;
use crate::clock::SystemClock;
use crate::lanes::batch::BatchLane;
use crate::render::{Renderer, RunInfo};
use crate::store::{NewRequest, NewRun, SharedStore, Store};

/// Requests per batch: the provider's maximum.
pub const REQUESTS: u64 = 100_000;
/// Requests rendered and stored per transaction.
const CHUNK: usize = 5000;
const METRICS: [Metric; 6] = [
    Metric { name: "rendered + sent, requests/s", target: Some(Target::at_least(100_000.0)) },
    Metric { name: "rendered only, requests/s", target: None },
    Metric { name: "sent (lane.submit), requests/s", target: None },
    Metric { name: "stored (not in the rate), s", target: None },
    Metric { name: "body, MiB", target: None },
    // Issue 18's bound (issue 7 had 128 MiB).
    Metric { name: "peak RSS, MiB", target: Some(Target::at_most(64.0)) },
];

/// What one worker measured; also the JSON line it prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// Requests rendered and submitted.
    pub requests: u64,
    /// Seconds spent rendering (templates to the params JSON text).
    pub render_secs: f64,
    /// Seconds spent storing the rendered requests.
    pub store_secs: f64,
    /// Seconds of `BatchLane::submit`: intent, streamed body, the create call.
    pub submit_secs: f64,
    /// Bytes of params sent (the body is slightly larger).
    pub params_bytes: u64,
    /// Whole-process peak RSS in KiB.
    pub peak_rss_kb: Option<u64>,
}

/// Measures `repeats` submits of `requests` requests, each in its own process.
pub async fn run(requests: u64, repeats: u32) -> anyhow::Result<Sampled> {
    ensure!((1..=REQUESTS).contains(&requests), "requests must be between 1 and {REQUESTS} (one batch)");
    let sim = SimProcess::start(&["--batch-median-secs", "3600", "--batch-p95-secs", "7200"]).await?;
    let scratch = Scratch::new("submit")?;
    project::write(scratch.path(), 1)?;
    let mut repeats_out = Vec::new();
    for repeat in 1..=repeats {
        let m = measure(scratch.path(), sim.base_url(), requests, repeat).await?;
        let n = m.requests as f64;
        repeats_out.push(vec![
            n / (m.render_secs + m.submit_secs),
            n / m.render_secs,
            n / m.submit_secs,
            m.store_secs,
            m.params_bytes as f64 / 1024.0 / 1024.0,
            m.peak_rss_kb.map_or(f64::NAN, |kb| kb as f64 / 1024.0),
        ]);
    }
    let setup = format!("{requests} requests of about 1 KB of prompt, one batch, a fresh process per repeat");
    Ok(Sampled::new("submit", setup, &METRICS, &repeats_out))
}

async fn measure(dir: &Path, base_url: &str, requests: u64, repeat: u32) -> anyhow::Result<Measured> {
    let db = dir.join(format!("repeat-{repeat}.db"));
    let output = super::worker_command()?
        .args(["bench", "submit-worker", "--base-url", base_url, "--requests", &requests.to_string()])
        .arg("--project")
        .arg(dir)
        .arg("--state")
        .arg(&db)
        .output()
        .await
        .context("cannot start the submit worker")?;
    super::ingest::remove_database(&db);
    super::worker_report("submit", &output)
}

/// The measured part, run by `orchestrator bench submit-worker`: renders
/// `requests` items of the generated project's job into the database at
/// `state`, then submits them as one batch through the lane.
pub async fn worker(project_dir: &Path, state: &Path, base_url: &str, requests: u64) -> anyhow::Result<Measured> {
    let project = project::Project { jobs: project_dir.join("jobs"), prompts: project_dir.join("prompts") };
    let catalog = Catalog::builtin();
    let job = project::load(&project, &catalog)?.into_iter().next().context("the project has no job")?;
    let store = SharedStore::new(Store::open(state)?);
    let scheduled_for = Utc.with_ymd_and_hms(2026, 1, 1, 6, 30, 0).single().context("a valid instant")?;
    let info = RunInfo::new(&job, scheduled_for);
    let (name, key) = (job.name.clone(), info.id.clone());
    let run_id = store
        .call(move |s| {
            let deadline_at = scheduled_for + chrono::Duration::hours(12);
            let run = NewRun {
                job: &name,
                scheduled_for,
                run_key: &key,
                tier: "batch",
                deadline_at,
                lane: "batch",
                tags: &[],
            };
            Ok(s.create_run(&run, Utc::now())?.0.id)
        })
        .await?;
    let renderer = Renderer::new(&job, &job.model_id)?;
    let (mut render_secs, mut store_secs, mut params_bytes) = (0.0, 0.0, 0_u64);
    let mut ids = Vec::with_capacity(requests as usize);
    for start in (1..=requests as usize).step_by(CHUNK) {
        let started = Instant::now();
        let chunk = (start..=(requests as usize).min(start + CHUNK - 1))
            .map(|seq| render(&renderer, &info, seq))
            .collect::<anyhow::Result<Vec<NewRequest>>>()?;
        render_secs += started.elapsed().as_secs_f64();
        params_bytes += chunk.iter().map(|r| r.params.len() as u64).sum::<u64>();
        ids.extend(chunk.iter().map(|r| r.custom_id.clone()));
        let started = Instant::now();
        store.call(move |s| s.insert_requests(run_id, &chunk, Utc::now())).await?;
        store_secs += started.elapsed().as_secs_f64();
    }
    let lane = BatchLane::new(super::ingest::providers(base_url)?, store.clone(), Arc::new(SystemClock));
    let started = Instant::now();
    let batch_id = lane.submit(run_id, "anthropic", ids, &[], None).await?;
    let submit_secs = started.elapsed().as_secs_f64();
    let batch = store.call(move |s| s.batch(batch_id)).await?.context("the batch row is gone")?;
    ensure!(batch.provider_batch_id.is_some() && batch.request_count == requests, "the batch was not submitted whole");
    Ok(Measured { requests, render_secs, store_secs, submit_secs, params_bytes, peak_rss_kb: rss::peak_rss_kb() })
}

/// Item `seq` rendered into the request the engine would store.
fn render(renderer: &Renderer<'_>, info: &RunInfo, seq: usize) -> anyhow::Result<NewRequest> {
    let item = project::item(seq);
    let request = renderer.request(info, seq, &item)?;
    let item = serde_json::to_string(&item)?;
    Ok(NewRequest { custom_id: request.custom_id, seq, item, params: serde_json::to_string(&request.params)? })
}
