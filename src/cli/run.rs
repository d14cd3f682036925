//! `orchestrator run JOB`: one run in the foreground, resumable.

use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, DurationRound, Utc};

use super::{EXIT_CONFIG, EXIT_USAGE, ProjectArgs};
use crate::catalog::Catalog;
use crate::clock::{Clock, SystemClock};
use crate::diagnostics::Severity;
use crate::engine::{RunOutcome, RunSettings, run_to_completion};
use crate::lanes::BatchLane;
use crate::providers::anthropic::{AnthropicClient, ApiKey};
use crate::store::{RunState, SharedStore, Store};
use crate::validate::{Inputs, validate_dir};

/// Exit status: the run completed, but some requests failed for good.
pub const EXIT_REQUESTS_FAILED: u8 = 4;
/// Exit status: the run finished after its deadline.
pub const EXIT_LATE: u8 = 5;

/// Arguments of `run`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The job (its manifest's file stem).
    pub job: String,
    /// Where the project is.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// State database.
    #[arg(long, default_value = crate::store::DEFAULT_PATH, env = "ORCHESTRATOR_STATE")]
    pub state: std::path::PathBuf,
    /// The run's scheduled instant (RFC 3339); default: now, to the minute.
    /// Running again with the same instant resumes that run.
    #[arg(long)]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// First wait between polls of a batch; it doubles while nothing changes, up to 5 minutes.
    #[arg(long, default_value = "2s", value_parser = parse_interval)]
    pub poll_interval: std::time::Duration,
    /// Start the built-in provider simulator on a loopback port and send
    /// everything there: no API key needed, nothing leaves the machine.
    #[arg(long)]
    pub simulate: bool,
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    crate::manifest::parse_duration(text)
        .and_then(|d| if d.is_zero() { Err("must be longer than zero".into()) } else { Ok(d) })
}

pub(super) fn run(args: &Args) -> anyhow::Result<u8> {
    let catalog = Catalog::load(args.project.catalog.as_deref())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let report = validate_dir(Inputs {
        jobs_dir: &args.project.jobs,
        prompts_dir: &args.project.prompts,
        catalog: &catalog,
        now: clock.now(),
    });
    let Some(job) = report.job(&args.job).cloned() else {
        eprintln!("error: no valid job `{}` in {}", args.job, args.project.jobs.display());
        return Ok(EXIT_USAGE);
    };
    let errors: Vec<_> =
        report.diagnostics.iter().filter(|d| d.file == job.file && d.severity == Severity::Error).collect();
    if !errors.is_empty() {
        errors.iter().for_each(|d| eprint!("{}", d.render_human()));
        return Ok(EXIT_CONFIG);
    }
    let scheduled_for = match args.scheduled_for {
        Some(at) => at,
        None => clock.now().duration_trunc(chrono::Duration::minutes(1)).context("cannot truncate the current time")?,
    };
    let store = SharedStore::new(Store::open(&args.state)?);
    let mut settings = RunSettings::new(args.project.prompts.clone(), catalog);
    settings.poll_initial = args.poll_interval;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let simulator = match args.simulate {
            true => Some(crate::sim::start(simulator_config()).await.context("cannot start the simulator")?),
            false => None,
        };
        let client = match &simulator {
            Some(sim) => AnthropicClient::new(&sim.base_url(), ApiKey::new("simulated"))?,
            None => match AnthropicClient::from_environment() {
                Ok(client) => client,
                Err(err) => {
                    eprintln!("error: {err} (or pass --simulate to use the built-in simulator)");
                    return Ok(EXIT_CONFIG);
                }
            },
        };
        let lane = BatchLane::new(client, store.clone(), Arc::clone(&clock));
        let outcome = run_to_completion(store, lane, clock, &job, scheduled_for, &settings)
            .await
            .with_context(|| format!("run of `{}` stopped; run the same command again to resume it", job.name))?;
        print_summary(&outcome);
        if let Some(sim) = simulator {
            sim.shutdown().await;
        }
        Ok(exit_code(&outcome))
    })
}

/// The simulator `--simulate` starts: any free loopback port, default knobs
/// (a small batch ends within seconds).
fn simulator_config() -> crate::sim::SimConfig {
    crate::sim::SimConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ..crate::sim::SimConfig::default()
    }
}

fn print_summary(outcome: &RunOutcome) {
    println!(
        "run {}: {} ({} requests, {} succeeded, {} delivered, {} failed, {} batches)",
        outcome.run_key,
        outcome.state.as_str(),
        outcome.requests,
        outcome.succeeded,
        outcome.delivered,
        outcome.permanent_failures.len() as u64 + outcome.gave_up,
        outcome.batches
    );
    if let Some(reason) = &outcome.reason {
        println!("  {reason}");
    }
    for (custom_id, error_type, message) in outcome.permanent_failures.iter().take(20) {
        println!("  failed {custom_id}: {error_type}: {message}");
    }
    if outcome.permanent_failures.len() > 20 {
        println!("  … and {} more (see the events in the state database)", outcome.permanent_failures.len() - 20);
    }
}

fn exit_code(outcome: &RunOutcome) -> u8 {
    match outcome.state {
        RunState::Late => EXIT_LATE,
        RunState::Failed => 1,
        _ if outcome.is_complete() => 0,
        _ => EXIT_REQUESTS_FAILED,
    }
}
