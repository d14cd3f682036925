//! The `run` scenario: `orchestrator run` end to end, in a process of its
//! own, on a job of 100,000 items of about 1 KB each: the items read,
//! rendered and stored, one batch submitted to the simulator, its results
//! ingested, priced and delivered to a JSON Lines sink. The worker process
//! runs the `run` command's own code and reports its peak RSS: the figure
//! that says how big a machine a run of that size needs.

use std::io::Write as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail, ensure};
use chrono::{DurationRound, Utc};
use serde::{Deserialize, Serialize};

use super::figures::{Metric, Sampled, Target};
use super::simulator::SimProcess;
use super::{Scratch, project};

/// Items of the run: one full batch.
pub const ITEMS: u64 = 100_000;
const METRICS: [Metric; 5] = [
    Metric { name: "items end to end, items/s", target: None },
    Metric { name: "wall time, s", target: None },
    Metric { name: "wall less batch latency, s", target: None },
    Metric { name: "CPU (user + sys), s", target: None },
    // Issue 18's bound for a whole run of 100,000 items.
    Metric { name: "peak RSS, MiB", target: Some(Target::at_most(64.0)) },
];

/// Runs the job `repeats` times, each on a fresh state database and sink.
pub async fn run(items: u64, repeats: u32) -> anyhow::Result<Sampled> {
    ensure!((1..=ITEMS).contains(&items), "items must be between 1 and {ITEMS} (one batch)");
    let sim = SimProcess::start(&[]).await?;
    let scratch = Scratch::new("run")?;
    write_project(scratch.path(), items)?;
    let mut repeats_out = Vec::new();
    for _ in 0..repeats {
        let run = measure(scratch.path(), sim.base_url(), items).await?;
        repeats_out.push(vec![
            items as f64 / run.secs,
            run.secs,
            run.secs - run.batch_latency_secs,
            run.cpu_secs,
            run.peak_kb as f64 / 1024.0,
        ]);
    }
    let setup = format!(
        "`orchestrator run` on {items} items of about 1 KB: read, rendered, stored, one batch, ingested, \
         delivered to JSON Lines; a fresh process and database per repeat"
    );
    Ok(Sampled::new("run", setup, &METRICS, &repeats_out))
}

/// The generated job with an items file of `items` lines (`items.jsonl`).
pub(super) fn write_project(root: &Path, items: u64) -> anyhow::Result<()> {
    project::write(root, 1)?;
    let items_path = root.join("items.jsonl");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&items_path)?);
    for seq in 1..=items as usize {
        serde_json::to_writer(&mut file, &project::item(seq))?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    let manifest = root.join("jobs").join(format!("{}.yaml", project::job_name(1)));
    let mut text = std::fs::read_to_string(&manifest)?;
    text.push_str(&format!("items: {{ jsonl: \"{}\" }}\n", items_path.display()));
    std::fs::write(&manifest, text)?;
    Ok(())
}

/// What the worker reports; also the JSON line it prints.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    /// The exit status `orchestrator run` would have had.
    pub exit_code: u8,
    /// Whole-process peak RSS in KiB.
    pub peak_rss_kb: Option<u64>,
    /// User plus system CPU seconds of the whole process.
    #[serde(default)]
    pub cpu_secs: Option<f64>,
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
pub(super) struct RunFigures {
    /// Wall seconds, process start to exit.
    pub secs: f64,
    /// CPU seconds of the worker process.
    pub cpu_secs: f64,
    /// Peak RSS, KiB.
    pub peak_kb: u64,
    /// From the create call's answer to the end the simulator reported:
    /// time the run spent waiting for the provider, not working.
    pub batch_latency_secs: f64,
}

/// One run from a clean state.
pub(super) async fn measure(root: &Path, base_url: &str, items: u64) -> anyhow::Result<RunFigures> {
    let _ = std::fs::remove_dir_all(root.join("state"));
    let _ = std::fs::remove_dir_all(root.join("out"));
    let scheduled_for = Utc::now().duration_trunc(chrono::Duration::minutes(1))?;
    let started = Instant::now();
    let output = super::worker_command()?
        .args(["bench", "run-worker", "--scheduled-for", &scheduled_for.to_rfc3339()])
        .current_dir(root)
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("ANTHROPIC_API_KEY", "sk-bench-not-a-real-key")
        .env("ORCHESTRATOR_LOG", "warn")
        .output()
        .await
        .context("cannot start the run worker")?;
    let secs = started.elapsed().as_secs_f64();
    let measured: Measured = super::worker_report("run", &output)?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(measured.exit_code == 0, "`orchestrator run` exited {}: {}", measured.exit_code, stderr.trim());
    let sink = root.join("out").join(project::job_name(1)).join(format!("{}.jsonl", scheduled_for.format("%Y-%m-%d")));
    let delivered = std::fs::read(&sink).with_context(|| format!("no sink file {}", sink.display()))?;
    let lines = delivered.iter().filter(|&&b| b == b'\n').count() as u64;
    ensure!(lines == items, "{lines} of {items} results reached the sink");
    let Some(peak_kb) = measured.peak_rss_kb else { bail!("this kernel does not report peak RSS") };
    let Some(cpu_secs) = measured.cpu_secs else { bail!("this kernel does not report CPU time") };
    let batch_latency_secs = batch_latency_secs(&root.join("state").join("orchestrator.db"))?;
    Ok(RunFigures { secs, cpu_secs, peak_kb, batch_latency_secs })
}

/// How long the run's batch took at the simulator: from our record of its
/// create call's answer to the `ended_at` the simulator reported (both on
/// this machine's clock).
fn batch_latency_secs(state: &Path) -> anyhow::Result<f64> {
    let store = crate::store::Store::open_read_only(state)?;
    let batches = store.all_batches(None)?;
    let [batch] = batches.as_slice() else { bail!("the run made {} batches, not one", batches.len()) };
    let (Some(submitted), Some(ended)) = (batch.submitted_at, batch.ended_at) else {
        bail!("batch {} has no submitted and end time", batch.id)
    };
    Ok((ended - submitted).num_milliseconds().max(0) as f64 / 1000.0)
}
