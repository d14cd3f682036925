//! `orchestrator bench SCENARIO`: benchmarks that print figures (not tests:
//! they assert nothing about speed). Each scenario is a subcommand.

use std::path::PathBuf;

use anyhow::Context;

use crate::bench::{Report, ingest};

/// Arguments of `bench`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The scenario to run.
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Benchmark scenarios.
#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Results of an ended batch streamed into the state database and committed: results/s and peak RSS.
    Ingest(IngestArgs),
    /// One measured ingest, in a process of its own (started by `bench ingest`).
    #[command(hide = true)]
    IngestWorker(WorkerArgs),
}

/// Arguments of `bench ingest`.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// Results in the batch (a batch holds at most 100,000).
    #[arg(long, default_value_t = ingest::MAX_RESULTS,
          value_parser = clap::value_parser!(u64).range(1..=ingest::MAX_RESULTS))]
    pub results: u64,
    /// Measured repeats, each in a fresh process on a fresh copy of the database.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Where the figures go.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Where a scenario's figures go.
#[derive(Debug, clap::Args)]
pub struct OutputArgs {
    /// What to print on standard output.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Also write the figures as JSON to this file (e.g. bench/results/latest.json).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Output formats of `bench`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Medians, then each repeat, for a terminal.
    Table,
    /// One JSON object with every figure.
    Json,
}

/// Arguments of the hidden `bench ingest-worker`.
#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The database copy to ingest into.
    #[arg(long)]
    pub state: PathBuf,
    /// The batch's database id.
    #[arg(long)]
    pub batch: i64,
    /// The provider's base URL.
    #[arg(long, env = "ANTHROPIC_BASE_URL")]
    pub base_url: String,
}

pub(super) fn run(args: &Args) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    match &args.scenario {
        Scenario::Ingest(a) => {
            let options = ingest::Options { results: a.results, repeats: a.repeat };
            let report = runtime.block_on(ingest::run(options))?;
            emit(&report, &a.output)?;
        }
        Scenario::IngestWorker(a) => {
            let measured = runtime.block_on(ingest::worker(&a.state, a.batch, &a.base_url))?;
            println!("{}", serde_json::to_string(&measured)?);
        }
    }
    Ok(0)
}

/// Prints the report in the chosen format and writes the JSON file if asked.
fn emit(report: &impl Report, output: &OutputArgs) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)? + "\n";
    if let Some(path) = &output.out {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        std::fs::write(path, &json).with_context(|| format!("cannot write {}", path.display()))?;
    }
    match output.format {
        Format::Table => print!("{}", report.table()),
        Format::Json => print!("{json}"),
    }
    Ok(())
}
