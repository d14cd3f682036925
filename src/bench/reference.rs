//! The `reference` scenario: the seeds' approach (`bench/reference.py`: the
//! official `anthropic` SDK and `sqlite3`, one batch, poll, stream the
//! results, insert each row) and `orchestrator run` on the same items
//! against the same simulator, in the same bench run: our CPU as a ratio of
//! the script's, since these machines are too noisy for absolute figures.
//! Without the SDK the scenario says so and reports no figures.

use std::path::Path;

use anyhow::{Context, ensure};
use serde::Deserialize;

use super::figures::{Metric, Sampled, Target};
use super::simulator::SimProcess;
use super::{Scratch, endtoend};

/// The script, compiled in so the scenario runs from any directory.
const SCRIPT: &str = include_str!("../../bench/reference.py");

const METRICS: [Metric; 5] = [
    Metric { name: "our CPU / the SDK script's CPU", target: Some(Target::at_most(0.1)) },
    Metric { name: "SDK script CPU (user + sys), s", target: None },
    Metric { name: "our CPU (user + sys), s", target: None },
    Metric { name: "SDK script peak RSS, MiB", target: None },
    Metric { name: "our peak RSS, MiB", target: Some(Target::at_most(64.0)) },
];

/// What the script prints.
#[derive(Debug, Deserialize)]
struct ScriptReport {
    cpu_secs: f64,
    peak_rss_kb: u64,
    results: u64,
}

/// Whether `python3` can import the official SDK.
async fn sdk_available() -> bool {
    let check = tokio::process::Command::new("python3").args(["-c", "import anthropic"]).output().await;
    check.is_ok_and(|o| o.status.success())
}

/// Runs the script and `orchestrator run` on `items` items, `repeats` times each.
pub async fn run(items: u64, repeats: u32) -> anyhow::Result<Sampled> {
    let setup = format!(
        "bench/reference.py (the official anthropic SDK + sqlite3: one batch, poll, stream, insert each result) \
         and `orchestrator run` on the same {items} items of about 1 KB, against the same simulator"
    );
    if !sdk_available().await {
        eprintln!("bench: reference skipped: the official `anthropic` SDK is not installed (pip install anthropic)");
        return Ok(Sampled::new("reference", format!("SKIPPED (pip install anthropic): {setup}"), &METRICS, &[]));
    }
    let sim = SimProcess::start(&[]).await?;
    let scratch = Scratch::new("reference")?;
    endtoend::write_project(scratch.path(), items)?;
    std::fs::write(scratch.path().join("reference.py"), SCRIPT)?;
    let mut repeats_out = Vec::new();
    for _ in 0..repeats {
        let script = run_script(scratch.path(), sim.base_url(), items).await?;
        let ours = endtoend::measure(scratch.path(), sim.base_url(), items).await?;
        repeats_out.push(vec![
            ours.cpu_secs / script.cpu_secs,
            script.cpu_secs,
            ours.cpu_secs,
            script.peak_rss_kb as f64 / 1024.0,
            ours.peak_kb as f64 / 1024.0,
        ]);
    }
    Ok(Sampled::new("reference", setup, &METRICS, &repeats_out))
}

/// One run of the script on a fresh database.
async fn run_script(root: &Path, base_url: &str, items: u64) -> anyhow::Result<ScriptReport> {
    let db = root.join("reference.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let output = tokio::process::Command::new("python3")
        .arg(root.join("reference.py"))
        .arg(root.join("items.jsonl"))
        .arg(&db)
        .env("ANTHROPIC_BASE_URL", base_url)
        .env("ANTHROPIC_API_KEY", "sk-bench-not-a-real-key")
        .output()
        .await
        .context("cannot start python3")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "bench/reference.py failed: {}", stderr.trim());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: ScriptReport = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .with_context(|| format!("bench/reference.py printed no report: {stdout}"))?;
    ensure!(report.results == items, "the script stored {} of {items} results", report.results);
    Ok(report)
}
