//! `orchestrator bench SCENARIO`: benchmarks that print figures (not tests:
//! they assert nothing about speed). Each scenario is a subcommand.

use std::path::PathBuf;

use anyhow::Context;

use crate::bench::{
    Report, Sampled, all, deliver, endtoend, enqueue, fallback, idle, ingest, jobs, reference, schedule, submit,
    validate,
};

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
    /// Every scenario below, one table of medians against the targets, and a JSON file.
    All(AllArgs),
    /// Results of an ended batch streamed into the state database and committed: results/s and peak RSS.
    Ingest(IngestArgs),
    /// A 100,000-request batch rendered from templates and sent by the batch lane: requests/s and peak RSS.
    Submit(SizedArgs),
    /// Unfinished requests pushed through the sync lane: its overhead beyond the rate limit.
    Fallback(SizedArgs),
    /// `orchestrator validate` over generated manifests with templates: wall time.
    Validate(SizedArgs),
    /// Next firing of many jobs across cron shapes and time zones: milliseconds.
    Schedule(SizedArgs),
    /// `serve --simulate` with the example jobs, idle: start to ready, CPU and RSS.
    Idle(IdleArgs),
    /// Database bytes per stored request with its result, against the result line's bytes.
    Storage(SizedArgs),
    /// The seeds' SDK script and `orchestrator run` on the same items and simulator: our CPU as a ratio of its CPU.
    Reference(SizedArgs),
    /// Many batch-tier jobs firing at once under `serve --run-now` (`--count` jobs, 500 by default, of 20 items): firing to last delivery, provider calls by kind, daemon CPU and peak RSS.
    Jobs(SizedArgs),
    /// Clients posting items to `serve`'s enqueue endpoint (`--count` items, 50,000 by default): items accepted/s, the latency of a 202, daemon CPU.
    Enqueue(SizedArgs),
    /// `orchestrator run` end to end on 100,000 items (read, rendered, stored, one batch, ingested, delivered): wall time and peak RSS.
    Run(SizedArgs),
    /// A run's 100,000 stored results delivered by the engine's rounds to JSON Lines, a directory and a SQLite table: results/s, and whether later rounds cost more.
    Deliver(SizedArgs),
    /// One measured `orchestrator run`, in a process of its own (started by `bench run`).
    #[command(hide = true)]
    RunWorker(RunWorkerArgs),
    /// One measured ingest, in a process of its own (started by `bench ingest`).
    #[command(hide = true)]
    IngestWorker(WorkerArgs),
    /// One measured submit, in a process of its own (started by `bench submit`).
    #[command(hide = true)]
    SubmitWorker(SubmitWorkerArgs),
    /// One measured delivery, in a process of its own (started by `bench deliver`).
    #[command(hide = true)]
    DeliverWorker(DeliverWorkerArgs),
}

/// Arguments of `bench all`.
#[derive(Debug, clap::Args)]
pub struct AllArgs {
    /// Measured repeats of every scenario.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Idle seconds per repeat of `idle`.
    #[arg(long, default_value_t = idle::IDLE_SECS)]
    pub idle_secs: u64,
    /// The example project `idle` serves.
    #[command(flatten)]
    pub project: ExampleProject,
    /// What to print on standard output.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Where the JSON figures go.
    #[arg(long, default_value = "bench/results/latest.json")]
    pub out: PathBuf,
}

/// The jobs the daemon serves in `idle`.
#[derive(Debug, clap::Args)]
pub struct ExampleProject {
    /// Directory of job manifests.
    #[arg(long, default_value = "jobs")]
    pub jobs: PathBuf,
    /// Directory of templates.
    #[arg(long, default_value = "prompts")]
    pub prompts: PathBuf,
}

/// Arguments of a scenario with a size (each has its own default).
#[derive(Debug, clap::Args)]
pub struct SizedArgs {
    /// Requests, manifests, jobs or results, as the scenario counts (default: issue 7's size).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Measured repeats.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Where the figures go.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Arguments of `bench idle`.
#[derive(Debug, clap::Args)]
pub struct IdleArgs {
    /// Idle seconds per repeat.
    #[arg(long, default_value_t = idle::IDLE_SECS)]
    pub idle_secs: u64,
    /// The jobs to serve.
    #[command(flatten)]
    pub project: ExampleProject,
    /// Measured repeats.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeat: u32,
    /// Where the figures go.
    #[command(flatten)]
    pub output: OutputArgs,
}

/// Arguments of the hidden `bench submit-worker`.
#[derive(Debug, clap::Args)]
pub struct SubmitWorkerArgs {
    /// The generated project (one job).
    #[arg(long)]
    pub project: PathBuf,
    /// The fresh database to render into.
    #[arg(long)]
    pub state: PathBuf,
    /// The provider's base URL.
    #[arg(long)]
    pub base_url: String,
    /// Requests to render and submit.
    #[arg(long)]
    pub requests: u64,
}

/// Arguments of the hidden `bench run-worker`: the generated project is the current directory.
#[derive(Debug, clap::Args)]
pub struct RunWorkerArgs {
    /// The run's scheduled instant.
    #[arg(long)]
    pub scheduled_for: chrono::DateTime<chrono::Utc>,
}

/// Arguments of the hidden `bench deliver-worker`: the generated project and
/// its state are in the current directory.
#[derive(Debug, clap::Args)]
pub struct DeliverWorkerArgs {
    /// The sink to deliver to.
    #[arg(long, value_enum)]
    pub sink: deliver::SinkKind,
    /// The run's scheduled instant.
    #[arg(long)]
    pub scheduled_for: chrono::DateTime<chrono::Utc>,
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
    if let Scenario::RunWorker(a) = &args.scenario {
        // Before any runtime of ours: the peak RSS is the `run` command's alone.
        return run_worker(a);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    match &args.scenario {
        Scenario::All(a) => {
            let options = all::Options {
                repeats: a.repeat,
                idle_secs: a.idle_secs,
                jobs: a.project.jobs.clone(),
                prompts: a.project.prompts.clone(),
            };
            let report = runtime.block_on(all::run(&options))?;
            emit(&report, &OutputArgs { format: a.format, out: Some(a.out.clone()) })?;
        }
        Scenario::Ingest(a) => {
            let options = ingest::Options { results: a.results, repeats: a.repeat };
            let report = runtime.block_on(ingest::run(options))?;
            emit(&report, &a.output)?;
        }
        Scenario::Storage(a) => {
            let results = a.count.unwrap_or(STORAGE_RESULTS).min(ingest::MAX_RESULTS);
            let report = runtime.block_on(ingest::run(ingest::Options { results, repeats: a.repeat }))?;
            emit(&report, &a.output)?;
        }
        Scenario::Idle(a) => {
            let options = idle::Options {
                jobs: a.project.jobs.clone(),
                prompts: a.project.prompts.clone(),
                idle_secs: a.idle_secs,
                repeats: a.repeat,
            };
            emit(&idle::run(&options)?, &a.output)?;
        }
        Scenario::RunWorker(_) => unreachable!("run-worker returns before the runtime starts"),
        Scenario::Submit(_)
        | Scenario::Fallback(_)
        | Scenario::Validate(_)
        | Scenario::Schedule(_)
        | Scenario::Run(_)
        | Scenario::Deliver(_)
        | Scenario::Jobs(_)
        | Scenario::Enqueue(_)
        | Scenario::Reference(_) => {
            sized(&runtime, &args.scenario)?;
        }
        Scenario::IngestWorker(a) => {
            let measured = runtime.block_on(ingest::worker(&a.state, a.batch, &a.base_url))?;
            println!("{}", serde_json::to_string(&measured)?);
        }
        Scenario::SubmitWorker(a) => {
            let measured = runtime.block_on(submit::worker(&a.project, &a.state, &a.base_url, a.requests))?;
            println!("{}", serde_json::to_string(&measured)?);
        }
        Scenario::DeliverWorker(a) => {
            let measured = runtime.block_on(deliver::worker(a.sink, a.scheduled_for))?;
            println!("{}", serde_json::to_string(&measured)?);
        }
    }
    Ok(0)
}

/// The `run` command's own code, in this process, so its peak RSS is the run's.
fn run_worker(args: &RunWorkerArgs) -> anyhow::Result<u8> {
    let exit_code = super::run::run(&run_worker_args(args))?;
    let measured = endtoend::Measured {
        exit_code,
        peak_rss_kb: crate::bench::rss::peak_rss_kb(),
        cpu_secs: crate::bench::cpu::cpu_secs(),
    };
    println!("{}", serde_json::to_string(&measured)?);
    Ok(0)
}

/// `orchestrator run` on the generated project's job, as `bench run` measures it.
fn run_worker_args(args: &RunWorkerArgs) -> super::run::Args {
    super::run::Args {
        job: crate::bench::project::job_name(1),
        project: super::ProjectArgs { jobs: "jobs".into(), prompts: "prompts".into(), catalog: None },
        state: "state/orchestrator.db".into(),
        scheduled_for: Some(args.scheduled_for),
        new: false,
        poll_interval: Some(std::time::Duration::from_secs(1)),
        deadline: None,
        config: None,
        simulate: false,
        simulator_log: false,
        rehearsal: super::setup::Rehearsal::default(),
    }
}

/// Results stored by `bench storage` unless told otherwise.
const STORAGE_RESULTS: u64 = 10_000;

/// The scenarios that take only a size and a repeat count.
fn sized(runtime: &tokio::runtime::Runtime, scenario: &Scenario) -> anyhow::Result<()> {
    let (report, output): (Sampled, &OutputArgs) = match scenario {
        Scenario::Submit(a) => {
            (runtime.block_on(submit::run(a.count.unwrap_or(submit::REQUESTS), a.repeat))?, &a.output)
        }
        Scenario::Fallback(a) => {
            (runtime.block_on(fallback::run(a.count.unwrap_or(fallback::REQUESTS), a.repeat))?, &a.output)
        }
        Scenario::Validate(a) => {
            let manifests = a.count.map_or(validate::MANIFESTS, |n| n as usize);
            (validate::run(manifests, a.repeat)?, &a.output)
        }
        Scenario::Schedule(a) => (schedule::run(a.count.map_or(schedule::JOBS, |n| n as usize), a.repeat)?, &a.output),
        Scenario::Run(a) => (runtime.block_on(endtoend::run(a.count.unwrap_or(endtoend::ITEMS), a.repeat))?, &a.output),
        Scenario::Deliver(a) => {
            (runtime.block_on(deliver::run(a.count.unwrap_or(deliver::RESULTS), a.repeat))?, &a.output)
        }
        Scenario::Reference(a) => {
            (runtime.block_on(reference::run(a.count.unwrap_or(endtoend::ITEMS), a.repeat))?, &a.output)
        }
        Scenario::Jobs(a) => {
            (runtime.block_on(jobs::run(a.count.unwrap_or(jobs::JOBS), jobs::ITEMS, a.repeat))?, &a.output)
        }
        Scenario::Enqueue(a) => {
            (runtime.block_on(enqueue::run(a.count.unwrap_or(enqueue::ITEMS), a.repeat))?, &a.output)
        }
        _ => unreachable!("only sized scenarios are passed here"),
    };
    emit(&report, output)
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
