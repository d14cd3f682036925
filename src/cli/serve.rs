//! `orchestrator serve`: the scheduler daemon.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use super::setup::{Rehearsal, backend};
use super::validate::human;
use super::{EXIT_CONFIG, ProjectArgs};
use crate::catalog::Catalog;
use crate::config::Config;
use crate::daemon::Daemon;
use crate::engine::EngineSettings;
use crate::job::Job;
use crate::sdnotify::Notifier;

/// How long in-flight sync calls get to finish on shutdown.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Arguments of `serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the project is.
    #[command(flatten)]
    pub project: ProjectArgs,
    /// State database.
    #[arg(long, default_value = crate::store::DEFAULT_PATH, env = "ORCHESTRATOR_STATE")]
    pub state: std::path::PathBuf,
    /// Address of the HTTP endpoint (`/healthz`); loopback unless a token is set.
    #[arg(long, default_value = "127.0.0.1:8080", env = "ORCHESTRATOR_LISTEN")]
    pub listen: SocketAddr,
    /// Start the built-in provider simulator on a loopback port and send
    /// everything there: no API key needed, nothing leaves the machine.
    #[arg(long)]
    pub simulate: bool,
    /// Fire every job once at start (for its current minute), then follow the schedule.
    #[arg(long)]
    pub run_now: bool,
    /// A rehearsal clock (with `--simulate`).
    #[command(flatten)]
    pub rehearsal: Rehearsal,
    /// Daemon configuration file (lane limits, fallback margins, polling).
    #[arg(long, env = "ORCHESTRATOR_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

/// Validates the manifests; prints every problem and returns `None` on errors.
fn load_jobs(project: &ProjectArgs, catalog: &Catalog) -> Option<Vec<Job>> {
    let report = project.validate(catalog, chrono::Utc::now());
    if !report.passes(false) {
        eprint!("{}", human(&report));
        return None;
    }
    Some(report.jobs)
}

pub(super) fn run(args: &Args) -> anyhow::Result<u8> {
    let catalog = Catalog::load(args.project.catalog.as_deref())?;
    let Some(jobs) = load_jobs(&args.project, &catalog) else {
        eprintln!("error: not starting: fix the manifests above (`orchestrator validate` shows the same)");
        return Ok(EXIT_CONFIG);
    };
    let token = crate::web::token();
    if !args.listen.ip().is_loopback() && token.is_none() {
        eprintln!(
            "error: --listen {} is not a loopback address: set {} (or the credential `{}`) to require a bearer token",
            args.listen,
            crate::web::TOKEN_ENV,
            crate::web::TOKEN_CREDENTIAL
        );
        return Ok(EXIT_CONFIG);
    }
    let mut settings = EngineSettings::new(catalog.clone());
    let config = Config::load(args.config.as_deref())?;
    config.apply(&mut settings).map_err(anyhow::Error::msg)?;
    let config_path = args.config.as_deref().map_or_else(String::new, |p| format!("{}: ", p.display()));
    let notify =
        config.notify.as_ref().map(|n| n.resolve()).transpose().map_err(|e| anyhow::anyhow!("{config_path}{e}"))?;
    if args.simulate {
        // The simulator ends a small batch in seconds: poll like someone is watching.
        settings.poll_initial = settings.poll_initial.min(Duration::from_secs(2));
    }
    let runtime = super::engine_runtime()?;
    runtime.block_on(async {
        let clock = args.rehearsal.clock();
        let backend = match backend(&args.state, clock, settings, jobs, args.simulate).await? {
            Ok(backend) => backend,
            Err(code) => return Ok(code),
        };
        let daemon = Daemon::new(Arc::clone(&backend.engine), Notifier::from_env());
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        // The bound address, not the asked one: `--listen 127.0.0.1:0` picks a free port.
        let listen = listener.local_addr().unwrap_or(args.listen);
        let observer = crate::store::SharedStore::new(crate::store::Store::open_read_only(&args.state)?);
        let web = tokio::spawn(crate::web::serve(listener, Arc::clone(&backend.engine), observer, token));
        let alerts = match notify {
            Some(settings) => {
                let store = crate::store::SharedStore::new(crate::store::Store::open_read_only(&args.state)?);
                Some(tokio::spawn(crate::notify::run(settings, Arc::clone(&backend.engine), store)))
            }
            None => None,
        };
        tracing::info!(%listen, jobs = backend.engine.jobs().len(), simulate = args.simulate, "serving");
        daemon.start(args.run_now).await?;
        serve_until_signal(&daemon, args, &catalog).await?;
        web.abort();
        if let Some(alerts) = alerts {
            alerts.abort();
        }
        backend.shutdown().await;
        Ok(0)
    })
}

/// Runs the loop until SIGTERM or SIGINT; SIGHUP reloads the manifests.
async fn serve_until_signal(daemon: &Daemon, args: &Args, catalog: &Catalog) -> anyhow::Result<()> {
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let clock = Arc::clone(daemon.engine().clock());
    loop {
        let sleep = match daemon.step().await {
            Ok(sleep) => sleep,
            Err(error) => {
                tracing::error!(error = %error, "tick failed; trying again in 5 s");
                Duration::from_secs(5)
            }
        };
        tokio::select! {
            _ = clock.sleep(sleep) => {}
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
            _ = hangup.recv() => reload(daemon, args, catalog),
        }
    }
    stop(daemon, &mut terminate, &mut interrupt).await;
    Ok(())
}

/// Re-reads the manifests; keeps the old set when any is invalid.
fn reload(daemon: &Daemon, args: &Args, catalog: &Catalog) {
    daemon.reloading();
    match load_jobs(&args.project, catalog) {
        Some(jobs) => {
            tracing::info!(jobs = jobs.len(), "manifests reloaded");
            daemon.engine().set_jobs(jobs);
        }
        None => tracing::error!("reload refused: the manifests have errors (printed above); keeping the previous set"),
    }
    daemon.ready();
}

/// Stops taking work, lets sync calls in flight finish for a bounded time,
/// and leaves submitted batches at the provider for the next start. A second
/// signal exits at once.
async fn stop(
    daemon: &Daemon,
    terminate: &mut tokio::signal::unix::Signal,
    interrupt: &mut tokio::signal::unix::Signal,
) {
    tracing::info!("stopping: no new runs; batches stay at the provider and resume on the next start");
    daemon.stopping();
    daemon.engine().stop();
    let drained = async {
        while daemon.engine().sync_lane().is_busy() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::select! {
        _ = drained => tracing::info!("stopped cleanly"),
        _ = tokio::time::sleep(STOP_GRACE) => tracing::warn!("sync calls still in flight were abandoned; they are sent again on the next start"),
        _ = terminate.recv() => std::process::exit(1),
        _ = interrupt.recv() => std::process::exit(1),
    }
}
