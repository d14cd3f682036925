//! The daemon's loop: fire what the schedule says, tick the engine, tell
//! systemd how things stand, sleep on the clock until something is due.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::engine::{Engine, EngineError, until};
use crate::schedule::Scheduler;
use crate::sdnotify::Notifier;

/// Longest sleep of the loop, so the watchdog and status line stay fresh.
const MAX_SLEEP: Duration = Duration::from_secs(30);

/// The scheduler and the engine of one `serve` process.
pub struct Daemon {
    engine: Arc<Engine>,
    scheduler: Scheduler<Engine>,
    notifier: Notifier,
    max_sleep: Duration,
}

impl Daemon {
    /// A daemon over `engine`, reporting to `notifier`.
    pub fn new(engine: Arc<Engine>, notifier: Notifier) -> Daemon {
        let watchdog = crate::sdnotify::watchdog_interval().map(|interval| interval / 2);
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

    /// Resumes after a (re)start: catches up on missed instants; open runs
    /// and their batches are picked up by the first tick.
    pub async fn start(&self, run_now: bool) -> Result<(), EngineError> {
        self.scheduler.catch_up().await?;
        if run_now {
            self.scheduler.run_now().await?;
        }
        self.notifier.ready();
        Ok(())
    }

    /// One turn: fire due runs, tick every run and batch; returns how long to sleep.
    pub async fn step(&self) -> Result<Duration, EngineError> {
        self.notifier.watchdog();
        let next_fire = self.scheduler.tick().await?;
        let next_engine = self.engine.tick(None).await?;
        let now = self.engine.clock().now();
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

    /// Tells systemd the daemon is stopping.
    pub fn stopping(&self) {
        self.notifier.stopping();
    }

    /// Tells systemd the manifests are being reloaded.
    pub fn reloading(&self) {
        self.notifier.reloading();
    }

    /// Tells systemd the reload is over.
    pub fn ready(&self) {
        self.notifier.ready();
    }
}
