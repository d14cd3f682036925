//! `orchestrator serve`: the scheduler daemon.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::setup::{Rehearsal, backend};
use super::validate::human;
use super::{EXIT_CONFIG, ProjectArgs};
use crate::catalog::Catalog;
use crate::daemon::config::Config;
use crate::daemon::sdnotify::Notifier;
use crate::daemon::{Control, Daemon, Options, Services, signals};
use crate::engine::EngineSettings;
use crate::job::Job;
use crate::store::{SharedStore, Store};

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
    /// When another process drives the state: serve the dashboard, the API
    /// and the enqueue endpoint as a standby, and take over when it stops
    /// (instead of exiting with 75).
    /// Not with `--simulate`: each process would talk to a simulator of its
    /// own, whose batches the other cannot see.
    #[arg(long, env = "ORCHESTRATOR_STANDBY", conflicts_with = "simulate")]
    pub standby: bool,
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
    let options = Options { run_now: args.run_now, grace: config.shutdown.grace().map_err(anyhow::Error::msg)? };
    let max_enqueue_body = config.enqueue.max_body();
    if args.simulate {
        // The simulator ends a small batch in seconds: poll like someone is watching.
        settings.poll_initial = settings.poll_initial.min(Duration::from_secs(2));
    }
    let runtime = super::engine_runtime()?;
    runtime.block_on(async {
        let backend =
            match backend(&args.state, args.rehearsal.clock(), settings, jobs, args.simulate, args.standby).await? {
                Ok(backend) => backend,
                Err(code) => return Ok(code),
            };
        let (control, reload) = Control::new();
        signals::listen(control.stop.clone(), reload)?;
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        // The bound address, not the asked one: `--listen 127.0.0.1:0` picks a free port.
        let listen = listener.local_addr().unwrap_or(args.listen);
        let read_only = || -> anyhow::Result<SharedStore> { Ok(SharedStore::new(Store::open_read_only(&args.state)?)) };
        let services = Services {
            web: Some(crate::web::Service { listener, store: read_only()?, token, max_enqueue_body }),
            alerts: match notify {
                Some(settings) => Some(crate::notify::Service { settings, store: read_only()? }),
                None => None,
            },
        };
        tracing::info!(%listen, jobs = backend.engine.jobs().len(), simulate = args.simulate, "serving");
        let daemon = Daemon::new(Arc::clone(&backend.engine), Notifier::from_env());
        let daemon = match &backend.lock {
            Some(lock) => daemon.with_state_lock(Arc::clone(lock)),
            None => daemon.with_lease(crate::daemon::leadership::LEASE),
        };
        // A reload may not bring in a provider the process has no client for.
        let reload_jobs = || {
            let jobs = load_jobs(&args.project, &catalog)?;
            let missing = super::setup::missing_providers(&jobs, &backend.providers);
            if !missing.is_empty() {
                tracing::error!(
                    providers = missing.join(", "),
                    "the new manifests use a provider without an API key; restart with its key set"
                );
                return None;
            }
            Some(jobs)
        };
        daemon.run_until(options, control, &reload_jobs, services).await?;
        backend.shutdown().await;
        Ok(0)
    })
}
