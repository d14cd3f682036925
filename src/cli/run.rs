//! `orchestrator run JOB`: one run in the foreground, resumable.

use std::io::IsTerminal;
use std::sync::Arc;

use anyhow::Context;
use chrono::{DateTime, DurationRound, Utc};

use super::progress::Progress;
use super::setup::{Rehearsal, backend};
use super::{EXIT_CONFIG, EXIT_USAGE, ProjectArgs};
use crate::catalog::Catalog;
use crate::daemon::config::Config;
use crate::daemon::leadership::{LEASE, LEASE_RENEW_EVERY, Lead, RENEW_EVERY};
use crate::engine::{Engine, EngineSettings, RunOutcome};
use crate::store::{RunRow, RunState};

/// Exit status: the run completed, but some requests failed for good.
pub(super) const EXIT_REQUESTS_FAILED: u8 = 4;
/// Exit status: the run finished after its deadline.
pub(super) const EXIT_LATE: u8 = 5;
/// `run`: the job's budget policy (`on_budget: skip`) skipped the run; nothing was spent.
pub(super) const EXIT_SKIPPED: u8 = 6;

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
    /// The run's scheduled instant (RFC 3339): creates that run, or resumes
    /// it if it exists. Default: the job's newest open run (resumed), else a
    /// new run for now, to the minute.
    #[arg(long, conflicts_with = "new")]
    pub scheduled_for: Option<DateTime<Utc>>,
    /// Start a fresh run for now even if the job has an open run (to the
    /// second when a run of the current minute exists already).
    #[arg(long)]
    pub new: bool,
    /// First wait between polls of a batch (default 2s); it doubles while
    /// nothing changes, up to 5 minutes, and shrinks as the deadline nears.
    #[arg(long, value_parser = parse_interval)]
    pub poll_interval: Option<std::time::Duration>,
    /// The run's deadline, counted from its scheduled instant (e.g. `30m`);
    /// default: the manifest's. A resumed run keeps the deadline it was created with.
    #[arg(long, value_parser = parse_interval)]
    pub deadline: Option<std::time::Duration>,
    /// Daemon configuration file (lane limits, fallback margins).
    #[arg(long, env = "ORCHESTRATOR_CONFIG")]
    pub config: Option<std::path::PathBuf>,
    /// Start the built-in provider simulator on a loopback port and send
    /// everything there: no API key needed, nothing leaves the machine.
    #[arg(long)]
    pub simulate: bool,
    /// With `--simulate`: show the simulator's own log lines too.
    #[arg(long, requires = "simulate")]
    pub simulator_log: bool,
    /// A rehearsal clock (with `--simulate`).
    #[command(flatten)]
    pub rehearsal: Rehearsal,
}

fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    crate::manifest::parse_duration(text)
        .and_then(|d| if d.is_zero() { Err("must be longer than zero".into()) } else { Ok(d) })
}

pub(super) fn run(args: &Args) -> anyhow::Result<u8> {
    let catalog = Catalog::load(args.project.catalog.as_deref())?;
    let clock = args.rehearsal.clock();
    let report = args.project.validate(&catalog, clock.now());
    let Some(job) = report.job(&args.job).cloned() else {
        let errors = report.errors_of(&args.job);
        if report.parsed(&args.job).is_some() && !errors.is_empty() {
            errors.iter().for_each(|d| eprint!("{}", d.render_human()));
            return Ok(EXIT_CONFIG);
        }
        eprintln!("error: no valid job `{}` in {}", args.job, args.project.jobs.display());
        return Ok(EXIT_USAGE);
    };
    let deadline = args.deadline.unwrap_or(job.deadline);
    let mut settings = EngineSettings::new(catalog);
    Config::load(args.config.as_deref())?.apply(&mut settings).map_err(anyhow::Error::msg)?;
    // In the foreground someone watches: poll sooner than the daemon does.
    settings.poll_initial = args.poll_interval.unwrap_or(settings.poll_initial.min(std::time::Duration::from_secs(2)));
    let runtime = super::engine_runtime()?;
    runtime.block_on(async {
        let backend =
            match backend(&args.state, Arc::clone(&clock), settings, vec![job.clone()], args.simulate, false).await? {
                Ok(backend) => backend,
                Err(code) => return Ok(code),
            };
        let engine = Arc::clone(&backend.engine);
        // Recorded as the leader while it drives (status and a standby's pages name it),
        // and marked stopped on every way out but a kill.
        let lead = match &backend.lock {
            Some(lock) => Lead::take(engine.store(), Some(Arc::clone(lock)), RENEW_EVERY).await?,
            None => match Lead::claim(engine.store(), LEASE_RENEW_EVERY, LEASE).await? {
                Some(lead) => lead,
                None => {
                    eprintln!(
                        "error: another orchestrator process leads {}; two would submit the same requests twice. \
                         Let it run this job, or stop it first.",
                        crate::store::shown(&args.state).display()
                    );
                    return Ok(super::EXIT_BUSY);
                }
            },
        };
        let outcome = drive(&engine, &job, args, deadline, &lead).await;
        lead.release(engine.store()).await;
        let outcome = outcome?;
        print_summary(&outcome);
        backend.shutdown().await;
        Ok(exit_code(&outcome))
    })
}

/// Starts (or resumes) the run and drives it to its end, renewing `lead`
/// as it goes: a lead another process took stops it.
async fn drive(
    engine: &Engine,
    job: &crate::job::Job,
    args: &Args,
    deadline: std::time::Duration,
    lead: &Lead,
) -> anyhow::Result<RunOutcome> {
    let scheduled_for = which_run(engine, args, &job.name).await?;
    let deadline_at = scheduled_for + chrono::Duration::from_std(deadline).context("deadline too long")?;
    let run = match job.queue {
        // A queue's run takes the items waiting in it.
        Some(_) => engine.start_queue_run(job, scheduled_for, deadline_at).await?,
        None => engine.start_run(job, scheduled_for, deadline_at).await?,
    };
    // A progress line on a terminal, below the log; logs alone otherwise.
    let progress = std::io::stderr().is_terminal().then(Progress::start);
    let driven = engine.drive(run.id, async |run| match &progress {
        Some(line) => show_progress(engine, run, line).await,
        None => Ok(()),
    });
    let outcome = tokio::select! {
        outcome = driven => outcome,
        lost = lead.renew_until_lost(engine.store()) => Err(lost.into()),
    };
    drop(progress);
    outcome.with_context(|| format!("run of `{}` stopped; run the same command again to resume it", job.name))
}

/// The instant of the run to drive: `--scheduled-for`; else, unless
/// `--new`, the job's newest open run (a rerun after a failure resumes it
/// instead of paying for everything again); else now, to the minute, or to
/// the second with `--new` when the minute's run exists already.
async fn which_run(engine: &Engine, args: &Args, job: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Some(at) = args.scheduled_for {
        return Ok(at);
    }
    let name = job.to_owned();
    let newest_open = engine.store().call(move |s| s.open_runs_of(&name)).await?.into_iter().last();
    let now = engine.clock().now();
    match newest_open {
        Some(run) if !args.new => {
            eprintln!(
                "resuming run {} (scheduled for {}, open since {}); pass --new for a fresh run",
                run.run_key,
                run.scheduled_for.to_rfc3339(),
                run.created_at.format("%Y-%m-%d %H:%M:%S UTC")
            );
            Ok(run.scheduled_for)
        }
        _ => {
            let minute =
                now.duration_trunc(chrono::Duration::minutes(1)).context("cannot truncate the current time")?;
            let name = job.to_owned();
            let taken = args.new && engine.store().call(move |s| s.run_by_key(&name, minute)).await?.is_some();
            if !taken {
                return Ok(minute);
            }
            let second =
                now.duration_trunc(chrono::Duration::seconds(1)).context("cannot truncate the current time")?;
            let name = job.to_owned();
            if engine.store().call(move |s| s.run_by_key(&name, second)).await?.is_some() {
                anyhow::bail!("a run of `{job}` was started this very second; try again in a second");
            }
            Ok(second)
        }
    }
}

/// What the progress line says: how far the run is, and what it waits for.
async fn show_progress(engine: &Engine, run: &RunRow, line: &Progress) -> Result<(), crate::engine::EngineError> {
    let run_id = run.id;
    let (counts, batches) =
        engine.store().call(move |s| Ok((s.request_counts(run_id)?, s.all_batches(Some(run_id))?))).await?;
    let total: u64 = counts.values().sum();
    let done = counts["succeeded"] + counts["permanent_failed"];
    let in_flight = engine.sync_lane().outstanding(run_id);
    let waiting = match (run.lane.as_str(), run.fallback_started_at, batches.last()) {
        ("sync", _, _) => format!("sync lane: {in_flight} in flight"),
        (_, Some(_), _) => format!("fallback: {in_flight} in flight on the sync lane"),
        (_, None, Some(batch)) => match &batch.provider_batch_id {
            Some(id) => format!("waiting for batch {id} ({})", batch.state.as_str()),
            None => "creating the batch".to_owned(),
        },
        (_, None, None) => "preparing".to_owned(),
    };
    let fallback = run.fallback_at.filter(|_| !run.is_sync());
    let fallback = fallback.map(|at| format!(" · fallback at {}", at.format("%H:%M:%S"))).unwrap_or_default();
    let delivery = match (&run.delivery_failing_since, &run.delivery_error) {
        (Some(since), error) => format!(
            " · delivery failing since {} (retrying; results are stored): {}",
            since.format("%H:%M:%S"),
            error.as_deref().unwrap_or("")
        ),
        _ => String::new(),
    };
    let late = if run.deadline_missed_at.is_some() { " · past its deadline, still going" } else { "" };
    line.say(format!("{}: {done}/{total} final · {waiting}{fallback}{late}{delivery}", run.run_key));
    Ok(())
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
        RunState::Skipped => EXIT_SKIPPED,
        RunState::Failed => 1,
        _ if outcome.is_complete() => 0,
        _ => EXIT_REQUESTS_FAILED,
    }
}
