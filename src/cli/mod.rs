//! The command line: argument types and dispatch. This is the binary's edge,
//! where errors get their context and become exit codes.

mod bench;
mod cost;
mod enqueue;
mod estimate;
mod progress;
mod render;
mod run;
mod schema;
mod serve;
mod setup;
mod sim;
mod status;
mod validate;

pub use cost::parse_instant;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit status when the configuration is bad (sysexits `EX_CONFIG`).
pub const EXIT_CONFIG: u8 = 78;
/// Exit status when another process drives the same state database (sysexits `EX_TEMPFAIL`).
pub const EXIT_BUSY: u8 = 75;
/// Exit status for bad command-line usage.
pub const EXIT_USAGE: u8 = 2;

/// Scheduled LLM work on the cheap batch lane, with deadlines held by a synchronous fallback.
#[derive(Debug, Parser)]
#[command(name = "orchestrator", version, about, propagate_version = true)]
pub struct Cli {
    /// Log format on standard error.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ORCHESTRATOR_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Where manifests, templates and the model catalog are.
#[derive(Debug, Clone, clap::Args)]
pub struct ProjectArgs {
    /// Directory of job manifests.
    #[arg(long, default_value = "jobs", env = "ORCHESTRATOR_JOBS")]
    pub jobs: PathBuf,
    /// Directory that template paths in manifests are relative to.
    #[arg(long, default_value = "prompts", env = "ORCHESTRATOR_PROMPTS")]
    pub prompts: PathBuf,
    /// Model catalog (models, lanes, prices); the built-in one when absent.
    #[arg(long, env = "ORCHESTRATOR_CATALOG")]
    pub catalog: Option<PathBuf>,
}

impl ProjectArgs {
    /// Validates every manifest of the project against `catalog`.
    pub fn validate(
        &self,
        catalog: &crate::catalog::Catalog,
        now: chrono::DateTime<chrono::Utc>,
    ) -> crate::validate::Report {
        crate::validate::validate_dir(crate::validate::Inputs {
            jobs_dir: &self.jobs,
            prompts_dir: &self.prompts,
            catalog,
            now,
        })
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check every manifest and template; print every problem with file, line and column.
    Validate(validate::Args),
    /// Print the JSON Schema of job manifests.
    Schema,
    /// Print the exact provider request bodies the next run of a job would send.
    Render(render::Args),
    /// Run a job once in the foreground: submit, poll, ingest, deliver. Resumable.
    Run(run::Args),
    /// The scheduler daemon: fire runs on their cron, keep every deadline with the sync fallback.
    Serve(serve::Args),
    /// Post items (JSON Lines) to a running daemon's queue for a job with `enqueue:`; prints their ids.
    Enqueue(enqueue::Args),
    /// Open runs, their batches and fallback plans, next firings, recent skipped or late runs.
    Status(status::Args),
    /// Spend, the sync baseline, savings and the five KPIs for a window, by job, tag, model, lane or day.
    Cost(cost::Args),
    /// Projected monthly cost per job: sync lane only versus as routed, at today's volume and at --volume times it.
    Estimate(estimate::Args),
    /// Run the provider simulator: the Anthropic Messages and Message Batches API on loopback, no API key needed.
    Sim(crate::sim::SimConfig),
    /// Benchmarks of the daemon's own code paths; they print figures (medians, peak RSS).
    Bench(bench::Args),
}

/// Diagnostic output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Blocks of text with the source line and a caret.
    Human,
    /// A JSON array of `{file, line, column, severity, code, message, help}`.
    Json,
}

/// Parses the command line, runs the command and returns the exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run --simulate` is about the user's job: the simulator's own lines only when asked.
    let quiet_simulator = matches!(&cli.command, Command::Run(args) if args.simulate && !args.simulator_log);
    init_tracing(cli.log_format, quiet_simulator);
    let mut command = cli.command;
    if let Err(err) = resolve_state(&mut command) {
        eprintln!("error: {err:#}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let result = match command {
        Command::Validate(args) => validate::run(&args),
        Command::Schema => schema::run(),
        Command::Render(args) => render::run(&args),
        Command::Run(args) => run::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::Status(args) => status::run(&args),
        Command::Enqueue(args) => enqueue::run(&args),
        Command::Sim(config) => sim::run(&config),
        Command::Cost(args) => cost::run(&args),
        Command::Estimate(args) => estimate::run(&args),
        Command::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Threads of the blocking pool of `run` and `serve`: store calls, the
/// renderer, the ingest writer, sink writes.
const BLOCKING_THREADS: usize = 8;

/// The runtime of `run` and `serve`: two workers, for a small VM, and a
/// bounded blocking pool. Store calls queue on one connection anyway; the
/// default pool of up to 512 threads let a sync run start dozens of threads,
/// each allocating from its own malloc arena, which more than doubled the
/// peak RSS of a 40,000-request run.
fn engine_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(BLOCKING_THREADS)
        .enable_all()
        .build()
}

fn init_tracing(format: LogFormat, quiet_simulator: bool) {
    use tracing_subscriber::EnvFilter;
    let default = if quiet_simulator { "info,orchestrator::sim=warn" } else { "info" };
    let filter = EnvFilter::try_from_env("ORCHESTRATOR_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    // Colours only on a terminal (and never with NO_COLOR): a file or the journal gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    // Log lines are drawn around `run`'s progress line, never over it.
    let builder =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(progress::MakeLogWriter).with_ansi(colour);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// `--state postgres` (or `ORCHESTRATOR_STATE=postgres`): the PostgreSQL
/// database at `ORCHESTRATOR_DATABASE_URL` (or the systemd credential
/// `orchestrator-database-url`), so its password stays out of the command
/// line and the unit file. The variable alone does not move the state: a
/// single machine whose postgres sink uses it keeps its SQLite file.
fn resolve_state(command: &mut Command) -> anyhow::Result<()> {
    let state = match command {
        Command::Render(args) => &mut args.state,
        Command::Run(args) => &mut args.state,
        Command::Serve(args) => &mut args.state,
        Command::Status(args) => &mut args.state,
        Command::Cost(args) => &mut args.state,
        Command::Estimate(args) => &mut args.state,
        _ => return Ok(()),
    };
    if crate::store::names_the_database_url(state) {
        let Some(url) = crate::store::postgres_sink::database_url() else {
            anyhow::bail!(
                "--state postgres names the database at {}, which is not set: set it (e.g. \
                 postgres://orchestrator@db.internal:5432/orchestrator) or pass the systemd credential `{}`",
                crate::store::postgres_sink::URL_ENV,
                crate::store::postgres_sink::URL_CREDENTIAL
            );
        };
        *state = std::path::PathBuf::from(url);
    }
    Ok(())
}
