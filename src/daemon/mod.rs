//! The daemon: fire what the schedule says, tick the engine, tell systemd
//! how things stand, sleep on the clock until something is due, and stop
//! or reload when told to. [`Daemon::run_until`] owns the loop, the
//! services beside it (the web server, the alert notifier) and the drain on
//! shutdown; `serve` parses its arguments, maps OS signals onto a
//! [`Control`] ([`signals`]) and calls it, and tests call it the same way.

pub mod config;
pub mod sdnotify;
pub mod signals;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use self::sdnotify::Notifier;
use crate::engine::{Engine, EngineError, until};
use crate::job::Job;
use crate::schedule::Scheduler;
use crate::store::StoreError;

/// Longest sleep of the loop, so the watchdog and status line stay fresh.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// How long a failed step waits before the next.
const AFTER_FAILED_STEP: Duration = Duration::from_secs(5);

/// How long the services (web server, notifier) get to finish after the stop.
const SERVICES_GRACE: Duration = Duration::from_secs(5);

/// The scheduler and the engine of one `serve` process.
pub struct Daemon {
    engine: Arc<Engine>,
    scheduler: Scheduler<Engine>,
    notifier: Notifier,
    max_sleep: Duration,
}

/// How the daemon is told to stop or to reload.
#[derive(Debug)]
pub struct Control {
    /// Cancelled to stop: no new runs or calls; sync calls in flight get the grace.
    pub stop: CancellationToken,
    /// One message per reload request (SIGHUP).
    pub reload: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Control {
    /// A control and the handles that drive it: the stop token and the reload sender.
    pub fn new() -> (Control, tokio::sync::mpsc::UnboundedSender<()>) {
        let (sender, reload) = tokio::sync::mpsc::unbounded_channel();
        (Control { stop: CancellationToken::new(), reload }, sender)
    }
}

/// How the daemon runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Fire every job once at start (`--run-now`).
    pub run_now: bool,
    /// How long sync calls in flight get to finish on shutdown (`shutdown.grace`).
    pub grace: Duration,
}

/// What runs beside the loop and stops with it.
#[derive(Default)]
pub struct Services {
    /// The dashboard, JSON API and `/metrics`.
    pub web: Option<crate::web::Service>,
    /// The alert notifier.
    pub alerts: Option<crate::notify::Service>,
}

/// Reads and validates the manifests again; `None` keeps the current set.
pub type Reload<'a> = &'a (dyn Fn() -> Option<Vec<Job>> + Send + Sync);

impl Daemon {
    /// A daemon over `engine`, reporting to `notifier`.
    pub fn new(engine: Arc<Engine>, notifier: Notifier) -> Daemon {
        let watchdog = sdnotify::watchdog_interval().map(|interval| interval / 2);
        let max_sleep = watchdog.map_or(MAX_SLEEP, |half| half.min(MAX_SLEEP));
        Daemon { scheduler: Scheduler::new(Arc::clone(&engine)), engine, notifier, max_sleep }
    }

    /// Sleeps at most `max` between steps (tests that move a manual clock
    /// over days use long sleeps; the default keeps the watchdog fed).
    pub fn with_max_sleep(mut self, max: Duration) -> Daemon {
        self.max_sleep = max;
        self
    }

    /// The engine.
    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// The scheduler.
    pub fn scheduler(&self) -> &Scheduler<Engine> {
        &self.scheduler
    }

    /// Runs the daemon until `control.stop` is cancelled: starts the
    /// services, resumes (catch-up, `--run-now`), then steps the loop,
    /// reloading the manifests with `reload` on each request. On stop every
    /// wait of the loop ends at once (a step is dropped where it waits: its
    /// state is in the store, as after a crash), the sync lane takes no new
    /// work and its calls in flight get `options.grace`, and the services
    /// are stopped and awaited.
    pub async fn run_until(
        &self,
        options: Options,
        mut control: Control,
        reload: Reload<'_>,
        services: Services,
    ) -> Result<(), StoreError> {
        self.engine.resume();
        let running = self.start_services(services, &control.stop);
        let clock = Arc::clone(self.engine.clock());
        let _presence = clock.enter();
        let started = tokio::select! {
            started = self.start(options.run_now) => Some(started),
            () = control.stop.cancelled() => None,
        };
        if let Some(started) = started {
            started?;
            self.run_loop(&mut control, reload, clock.as_ref()).await;
        }
        self.stop(options.grace, running).await;
        Ok(())
    }

    /// Steps until stopped. A stop ends a step wherever it waits; a reload
    /// waits for the step to end and cuts only the sleep after it short.
    async fn run_loop(&self, control: &mut Control, reload: Reload<'_>, clock: &dyn crate::clock::Clock) {
        loop {
            let sleep = tokio::select! {
                biased;
                () = control.stop.cancelled() => return,
                stepped = self.step() => stepped.unwrap_or_else(|error| {
                    tracing::error!(%error, "tick failed; trying again in 5 s");
                    AFTER_FAILED_STEP
                }),
            };
            tokio::select! {
                biased;
                () = control.stop.cancelled() => return,
                Some(()) = control.reload.recv() => self.reload(reload).await,
                () = self.engine.posted() => {}
                () = clock.sleep(sleep) => {}
            }
        }
    }

    /// Re-reads the manifests; keeps the old set when any is invalid.
    async fn reload(&self, reload: Reload<'_>) {
        self.notifier.reloading();
        match reload() {
            Some(jobs) => {
                tracing::info!(jobs = jobs.len(), "manifests reloaded");
                self.engine.set_jobs(jobs);
                self.warn_of_orphaned_queues().await;
            }
            None => tracing::error!("reload refused: the manifests have errors; keeping the previous set"),
        }
        self.notifier.ready();
    }

    fn start_services(&self, services: Services, stop: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let mut running = Vec::new();
        if let Some(web) = services.web {
            running.push(tokio::spawn(web.serve(Arc::clone(&self.engine), stop.clone())));
        }
        if let Some(alerts) = services.alerts {
            running.push(tokio::spawn(alerts.run(Arc::clone(&self.engine), stop.clone())));
        }
        running
    }

    /// Stops taking work, lets sync calls in flight finish for at most
    /// `grace`, and waits for the services; batches stay at the provider
    /// and are resumed on the next start.
    async fn stop(&self, grace: Duration, running: Vec<tokio::task::JoinHandle<()>>) {
        tracing::info!("stopping: no new runs; batches stay at the provider and resume on the next start");
        self.notifier.stopping();
        self.engine.stop();
        match tokio::time::timeout(grace, self.engine.sync_lane().drained()).await {
            Ok(()) => tracing::info!("stopped cleanly"),
            Err(_) => tracing::warn!(
                grace_secs = grace.as_secs(),
                "sync calls still in flight were abandoned; they are sent again on the next start"
            ),
        }
        let services = futures_util::future::join_all(running);
        if tokio::time::timeout(SERVICES_GRACE, services).await.is_err() {
            tracing::warn!("the web server or the notifier did not stop in time");
        }
    }

    /// Resumes after a (re)start: catches up on missed instants; open runs
    /// and their batches are picked up by the first tick.
    pub async fn start(&self, run_now: bool) -> Result<(), StoreError> {
        self.scheduler.catch_up().await?;
        self.warn_of_orphaned_queues().await;
        if run_now {
            self.scheduler.run_now().await?;
        }
        self.notifier.ready();
        Ok(())
    }

    /// Says so when posted items wait for a job that takes none any more:
    /// they stay stored, and flush once its `enqueue:` is back.
    async fn warn_of_orphaned_queues(&self) {
        match self.engine.orphaned_queues().await {
            Ok(orphaned) => {
                for (job, waiting) in orphaned {
                    tracing::warn!(
                        job = %job,
                        waiting,
                        "posted items wait for a job without `enqueue:` (removed or renamed?): nothing flushes them until it is back"
                    );
                }
            }
            Err(error) => tracing::error!(%error, "could not look for queues without a job"),
        }
    }

    /// One turn: fire due runs, tick every run and batch; returns how long to sleep.
    pub async fn step(&self) -> Result<Duration, EngineError> {
        self.notifier.watchdog();
        let next_fire = self.scheduler.tick().await?;
        let mut next_engine = self.engine.tick(None).await?;
        let now = self.engine.clock().now();
        // A run that closed in this tick fires its stages now, not a tick later.
        if self.scheduler.fire_stages().await? {
            next_engine = now;
        }
        // Posted items that are due become runs now; the next tick submits them.
        let queues = self.engine.flush_queues().await?;
        if queues.flushed > 0 {
            next_engine = now;
        }
        let next_engine = queues.next.map_or(next_engine, |flush| flush.min(next_engine));
        let wake: DateTime<Utc> = next_fire.map_or(next_engine, |fire| fire.min(next_engine));
        self.report_status(next_fire).await?;
        Ok(until(now, wake).min(self.max_sleep))
    }

    async fn report_status(&self, next_fire: Option<DateTime<Utc>>) -> Result<(), EngineError> {
        if !self.notifier.is_enabled() {
            return Ok(());
        }
        let (runs, batches) =
            self.engine.store().call(|s| Ok((s.open_runs()?.len(), s.active_batches(None)?.len()))).await?;
        let next = next_fire.map_or("none".to_owned(), |at| at.format("%Y-%m-%d %H:%M UTC").to_string());
        self.notifier.status(&format!(
            "{} jobs, {runs} open runs, {batches} active batches, next firing {next}",
            self.engine.jobs().len()
        ));
        Ok(())
    }
}
