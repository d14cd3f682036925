//! `orchestrator estimate`: projected monthly cost per job, sync lane only
//! versus as routed by its tier, at today's volume and at `--volume` times it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use chrono::Utc;

use super::ProjectArgs;
use crate::catalog::Catalog;
use crate::cost::Pricer;
use crate::cost::estimate::{Estimate, JobEstimate, Totals, advice, inputs, project, runs_per_month, totals};
use crate::job::Job;
use crate::render::{Renderer, RunInfo};

/// Arguments of `estimate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the project is.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// State database with the jobs' history (used when it exists).
    #[arg(long, default_value = crate::store::DEFAULT_PATH, env = "ORCHESTRATOR_STATE")]
    pub state: PathBuf,
    /// Also project the totals at this multiple of today's items per run.
    #[arg(long, default_value_t = 1.0)]
    pub volume: f64,
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Output formats of `estimate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A table for a terminal.
    Table,
    /// A JSON document.
    Json,
}

pub(super) fn run(args: &Args) -> anyhow::Result<u8> {
    if !(args.volume.is_finite() && args.volume > 0.0) {
        eprintln!("error: --volume must be a positive number, e.g. `5`");
        return Ok(super::EXIT_USAGE);
    }
    let catalog = Catalog::load(args.project.catalog.as_deref())?;
    let now = Utc::now();
    let report = args.project.validate(&catalog, now);
    let store = match crate::store::state_exists(&args.state) {
        true => Some(super::setup::open_beside_daemon(&args.state, false)?),
        false => None,
    };
    let pricer = Pricer::new(catalog.clone());
    let (mut rows, mut advised) = (Vec::new(), Vec::new());
    for parsed in report.parsed.iter().filter(|parsed| report.job(&parsed.name).is_none()) {
        eprintln!("warning: {} has errors (see `orchestrator validate`); left out", parsed.file);
    }
    for job in &report.jobs {
        let known = inputs(store.as_ref(), job, || read_items(job))?;
        let runs = runs_per_month(job, now);
        rows.push(project(&pricer, job, &known, runs));
        advised.extend(advice(&pricer, job, &known, runs));
    }
    let estimate = Estimate {
        volume: args.volume,
        totals: totals(&rows, 1.0),
        totals_at_volume: totals(&rows, args.volume),
        rows,
        advice: advised,
    };
    let text = match args.format {
        Format::Table => table(&estimate),
        Format::Json => serde_json::to_string_pretty(&estimate)? + "\n",
    };
    std::io::stdout().lock().write_all(text.as_bytes()).context("cannot write to standard output")?;
    Ok(0)
}

/// The items the next run would read, and its first request's length in
/// tokens (about 4 characters each); `None` when they cannot be read now.
fn read_items(job: &Job) -> Option<(usize, f64)> {
    let next = job.schedule.next_after(Utc::now()).unwrap_or_else(Utc::now);
    let info = RunInfo::new(job, next);
    let items = crate::engine::read_run_items(job, &info).ok()?;
    let renderer = Renderer::new(job, job.model_for(job.manifest.tier.lane())).ok()?;
    let first = renderer.request(&info, 1, items.first()?).ok()?;
    Some((items.len(), first.params.to_string().len() as f64 / 4.0))
}

fn money(usd: f64) -> String {
    format!("${usd:.2}")
}

/// The table: one line per job, totals, totals at the volume, then advice.
pub(super) fn table(estimate: &Estimate) -> String {
    let mut out = format!(
        "{:<18} {:<8} {:<10} {:<18} {:>6} {:>9} {:>9} {:>8} {:<10} {:>11} {:>10} {:>10}\n",
        "job",
        "tier",
        "provider",
        "model",
        "runs",
        "items/run",
        "in/req",
        "out/req",
        "tokens",
        "sync-only",
        "routed",
        "saved"
    );
    for row in &estimate.rows {
        out.push_str(&line(row));
    }
    out.push_str(&total_line("total per month", &estimate.totals));
    if estimate.volume != 1.0 {
        out.push_str(&total_line(&format!("at {}x volume", estimate.volume), &estimate.totals_at_volume));
    }
    out.push_str(
        "\nruns: firings in the next 30 days; tokens: observed (history), hints (manifest `estimate:`) or \
         max_tokens (an upper bound).\nrouted assumes the batch lane for soft and batch jobs (no fallback).\n",
    );
    if estimate.advice.is_empty() {
        out.push_str("\nadvice: no realtime job has a deadline that allows the batch lane.\n");
    }
    for advice in &estimate.advice {
        out.push_str(&format!(
            "\nadvice: {}: {} (saves {} a month)\n",
            advice.job,
            advice.message,
            money(advice.savings_usd)
        ));
    }
    out
}

fn line(row: &JobEstimate) -> String {
    format!(
        "{:<18} {:<8} {:<10} {:<18} {:>6} {:>9.1} {:>9.0} {:>8.0} {:<10} {:>11} {:>10} {:>10}\n",
        row.job,
        row.tier,
        row.provider,
        row.model,
        row.runs_per_month,
        row.items_per_run,
        row.input_tokens,
        row.output_tokens,
        row.tokens_source,
        money(row.sync_only_usd),
        money(row.routed_usd),
        money(row.savings_usd)
    )
}

fn total_line(label: &str, totals: &Totals) -> String {
    format!(
        "{:<107} {:>11} {:>10} {:>10}\n",
        label,
        money(totals.sync_only_usd),
        money(totals.routed_usd),
        money(totals.savings_usd)
    )
}
