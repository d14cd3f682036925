//! The daemon: fire what the schedule says, tick the engine, tell systemd
//! how things stand, sleep on the clock until something is due, and stop
//! or reload when told to. [`Daemon::run_until`] owns the loop, the
//! services beside it (the web server, the alert notifier) and the drain on
//! shutdown; `serve` parses its arguments, maps OS signals onto a
//! [`Control`] ([`signals`]) and calls it, and tests call it the same way.

pub mod config;
pub mod leadership;
pub mod sdnotify;
pub mod signals;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use self::leadership::{Lead, StateLock};
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

/// How often a leader looks for items posted through another process.
const POSTED_ELSEWHERE_POLL: Duration = Duration::from_secs(1);

/// The scheduler and the engine of one `serve` process.
pub struct Daemon {
    engine: Arc<Engine>,
    scheduler: Scheduler<Engine>,
    notifier: Notifier,
    max_sleep: Duration,
    lock: Option<Arc<StateLock>>,
    renew_every: Duration,
    /// PostgreSQL: the lead is a lease in the database, not a lock file.
    lease: Option<Duration>,
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
        Daemon {
            scheduler: Scheduler::new(Arc::clone(&engine)),
            engine,
            notifier,
            max_sleep,
            lock: None,
            renew_every: leadership::RENEW_EVERY,
            lease: None,
        }
    }

    /// Leads only while holding the lease in the (PostgreSQL) database:
    /// while another process holds it, the daemon follows, and it takes
    /// over once the lease runs out. Renews it every
    /// [`leadership::LEASE_RENEW_EVERY`].
    pub fn with_lease(mut self, lease: Duration) -> Daemon {
        self.lease = Some(lease);
        self.renew_every = leadership::LEASE_RENEW_EVERY.min(lease / 3);
        self
    }

    /// Leads only while holding `lock` (the state database's): when another
    /// process holds it, the daemon is a standby until it is released.
    /// Without a lock (tests that own their database) it leads at once.
    pub fn with_state_lock(mut self, lock: Arc<StateLock>) -> Daemon {
        self.lock = Some(lock);
        self
    }

    /// Sleeps at most `max` between steps (tests that move a manual clock
    /// over days use long sleeps; the default keeps the watchdog fed).
    pub fn with_max_sleep(mut self, max: Duration) -> Daemon {
        self.max_sleep = max;
        self
    }

    /// Renews the leadership row every `every` (5 s by default; at least
    /// every 100 ms), beside the loop's steps.
    pub fn with_renewal_every(mut self, every: Duration) -> Daemon {
        self.renew_every = every;
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
    /// services, waits for the state lock when another process holds it (a
    /// standby serves the web meanwhile), records the lead, resumes
    /// (catch-up, `--run-now`), then steps the loop, reloading the manifests
    /// with `reload` on each request. On stop every wait of the loop ends at
    /// once (a step is dropped where it waits: its state is in the store, as
    /// after a crash), the sync lane takes no new work and its calls in
    /// flight get `options.grace`, and the services are stopped and awaited.
    /// A leader that finds another process recorded as leader steps down
    /// with [`StoreError::Superseded`].
    pub async fn run_until(
        &self,
        options: Options,
        mut control: Control,
        reload: Reload<'_>,
        services: Services,
    ) -> Result<(), StoreError> {
        let Services { web, alerts } = services;
        let mut running = Vec::new();
        if let Some(web) = web {
            running.push(tokio::spawn(web.serve(Arc::clone(&self.engine), control.stop.clone())));
        }
        let clock = Arc::clone(self.engine.clock());
        let _presence = clock.enter();
        let (led, leader) = match self.lead(&mut control, reload).await {
            Ok(Some(leader)) => {
                // Alerts only from the leader: a standby would send each one a second time.
                if let Some(alerts) = alerts {
                    running.push(tokio::spawn(alerts.run(Arc::clone(&self.engine), control.stop.clone())));
                }
                (self.lead_until(&leader, options, &mut control, reload, clock.as_ref()).await, Some(leader))
            }
            Ok(None) => (Ok(()), None),
            Err(error) => (Err(error), None),
        };
        // Renewed while the sync calls in flight have their grace and store
        // what came back, and released only after: on PostgreSQL a follower
        // takes a released or lapsed lease at once, and must not resume beside them.
        let stopping = self.stop(options.grace, running);
        tokio::pin!(stopping);
        match &leader {
            Some(lead) => tokio::select! {
                () = &mut stopping => {}
                lost = lead.renew_until_lost(self.engine.store()) => {
                    tracing::error!(error = %lost, "the lead was lost while stopping");
                    stopping.await;
                }
            },
            None => stopping.await,
        }
        if let Some(leader) = leader.filter(|_| led.is_ok()) {
            leader.release(self.engine.store()).await;
        }
        led
    }

    /// Waits for the state lock (if the daemon has one), brings the schema
    /// up to this build's (a process of another version may have led until
    /// now) and records this process as the leader; `None` when stopped first.
    async fn lead(&self, control: &mut Control, reload: Reload<'_>) -> Result<Option<Lead>, StoreError> {
        if let Some(lease) = self.lease {
            let Some(lead) = self.wait_for_lease(lease, control, reload).await? else { return Ok(None) };
            self.engine.store().call(|s| s.migrate_to_current()).await?;
            tracing::info!(
                epoch = lead.epoch(),
                pid = std::process::id(),
                "leading: this process holds the lease and drives the state database"
            );
            self.notifier.status(&format!("leading (epoch {}); resuming", lead.epoch()));
            return Ok(Some(lead));
        }
        if let Some(lock) = &self.lock
            && !self.wait_for_lock(lock, control, reload).await
        {
            return Ok(None);
        }
        self.engine.store().call(|s| s.migrate_to_current()).await?;
        let lead = Lead::take(self.engine.store(), self.lock.clone(), self.renew_every).await?;
        tracing::info!(
            epoch = lead.epoch(),
            pid = std::process::id(),
            "leading: this process drives the state database"
        );
        self.notifier.status(&format!("leading (epoch {}); resuming", lead.epoch()));
        Ok(Some(lead))
    }

    /// As a standby: polls the lock until it is ours (`true`) or the stop
    /// comes (`false`), reloading the manifests (which the web and the
    /// enqueue endpoint use) when asked. A lock that cannot be tried for
    /// [`leadership::STANDBY_GIVE_UP`] stops feeding the watchdog, so the
    /// service manager restarts the process.
    async fn wait_for_lock(&self, lock: &StateLock, control: &mut Control, reload: Reload<'_>) -> bool {
        if lock.try_take().unwrap_or(false) {
            return true;
        }
        let who = self.who_leads().await;
        tracing::info!(lock = lock.path(), "standby: {who} leads; serving the web until its lock is released");
        self.notifier.ready();
        self.notifier.status(&format!("standby: {who} leads"));
        let mut failing_since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                biased;
                () = control.stop.cancelled() => return false,
                Some(()) = control.reload.recv() => self.reload(reload).await,
                () = tokio::time::sleep(leadership::STANDBY_POLL) => {}
            }
            match lock.try_take() {
                Ok(true) => {
                    tracing::info!("the leader released the state lock: taking over");
                    return true;
                }
                Ok(false) => failing_since = None,
                Err(error) => {
                    if failing_since.is_none() {
                        tracing::error!(%error, lock = lock.path(), "cannot try the state lock; trying again");
                    }
                    failing_since.get_or_insert_with(std::time::Instant::now);
                }
            }
            if failing_since.is_none_or(|since| since.elapsed() < leadership::STANDBY_GIVE_UP) {
                self.notifier.watchdog();
            }
        }
    }

    /// The leader as the row names it, for a waiting process's log and status.
    async fn who_leads(&self) -> String {
        let leader = self.engine.store().call(|s| s.leader()).await.ok().flatten();
        leader.map_or_else(
            || "another process".to_owned(),
            |l| crate::status::LeaderStatus::new(l, Utc::now()).describe(),
        )
    }

    /// As a follower on PostgreSQL: tries the lease every
    /// [`leadership::LEASE_POLL`] until it is ours, serving the web and
    /// reloading the manifests meanwhile; `None` when the stop came first.
    /// A database that cannot be reached for [`leadership::STANDBY_GIVE_UP`]
    /// stops feeding the watchdog, so the service manager restarts the process.
    async fn wait_for_lease(
        &self,
        lease: Duration,
        control: &mut Control,
        reload: Reload<'_>,
    ) -> Result<Option<Lead>, StoreError> {
        let (store, every) = (self.engine.store(), self.renew_every);
        let mut failing_since: Option<std::time::Instant> = None;
        let mut told = false;
        loop {
            match Lead::claim(store, every, lease).await {
                Ok(Some(lead)) => {
                    if told {
                        tracing::info!("the leader's lease ran out or was released: taking over");
                    }
                    return Ok(Some(lead));
                }
                Ok(None) => {
                    failing_since = None;
                    if !told {
                        let who = self.who_leads().await;
                        tracing::info!("following: {who} leads; serving the web until its lease runs out");
                        self.notifier.ready();
                        self.notifier.status(&format!("following: {who} leads"));
                        told = true;
                    }
                }
                Err(error) => {
                    if failing_since.is_none() {
                        tracing::error!(%error, "cannot try the lease; trying again");
                    }
                    failing_since.get_or_insert_with(std::time::Instant::now);
                }
            }
            if failing_since.is_none_or(|since| since.elapsed() < leadership::STANDBY_GIVE_UP) {
                self.notifier.watchdog();
            }
            tokio::select! {
                biased;
                () = control.stop.cancelled() => return Ok(None),
                Some(()) = control.reload.recv() => self.reload(reload).await,
                () = tokio::time::sleep(leadership::LEASE_POLL) => {}
            }
        }
    }

    /// Leads until stopped: resumes, starts and steps the loop.
    async fn lead_until(
        &self,
        leader: &Lead,
        options: Options,
        control: &mut Control,
        reload: Reload<'_>,
        clock: &dyn crate::clock::Clock,
    ) -> Result<(), StoreError> {
        self.engine.resume();
        let started = tokio::select! {
            started = self.start(options.run_now) => Some(started),
            () = control.stop.cancelled() => None,
        };
        match started {
            Some(started) => {
                started?;
                // A lost lead ends the loop wherever it waits, as a stop does.
                tokio::select! {
                    stepped = self.run_loop(control, reload, clock) => stepped,
                    lost = leader.renew_until_lost(self.engine.store()) => Err(lost),
                }
            }
            None => Ok(()),
        }
    }

    /// Steps until stopped. A stop ends a step wherever it waits; a reload
    /// waits for the step to end and cuts only the sleep after it short.
    /// Items posted through another process wake the loop too.
    async fn run_loop(
        &self,
        control: &mut Control,
        reload: Reload<'_>,
        clock: &dyn crate::clock::Clock,
    ) -> Result<(), StoreError> {
        let mut newest_item = self.engine.store().call(|s| s.newest_queue_item()).await?;
        loop {
            let sleep = tokio::select! {
                biased;
                () = control.stop.cancelled() => return Ok(()),
                stepped = self.step() => stepped.unwrap_or_else(|error| {
                    tracing::error!(%error, "tick failed; trying again in 5 s");
                    AFTER_FAILED_STEP
                }),
            };
            // Evidence for tests (and a debugging operator) that the loop is between steps.
            tracing::debug!(sleep_ms = sleep.as_millis() as u64, "step done; sleeping");
            tokio::select! {
                biased;
                () = control.stop.cancelled() => return Ok(()),
                Some(()) = control.reload.recv() => self.reload(reload).await,
                () = self.engine.posted() => {}
                () = self.posted_elsewhere(&mut newest_item) => {}
                () = clock.sleep(sleep) => {}
            }
        }
    }

    /// Returns once an item newer than `newest` is stored (posted through a
    /// standby's endpoint, which cannot wake this process), looking every
    /// second while some job takes posted items; never otherwise.
    async fn posted_elsewhere(&self, newest: &mut i64) {
        loop {
            tokio::time::sleep(POSTED_ELSEWHERE_POLL).await;
            if !self.engine.jobs().values().any(|job| job.queue.is_some()) {
                continue;
            }
            match self.engine.store().call(|s| s.newest_queue_item()).await {
                Ok(id) if id > *newest => {
                    tracing::debug!(newest = id, "items were posted through another process");
                    *newest = id;
                    return;
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "could not look for posted items"),
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
