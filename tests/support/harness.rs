//! A project, an engine on a manual clock and a simulator following the
//! same clock: hours of schedule and deadline in milliseconds.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use orchestrator::catalog::Catalog;
use orchestrator::clock::{Clock, ManualClock};
use orchestrator::daemon::{Control, Daemon, Options, Services};
use orchestrator::engine::{Engine, EngineSettings, RunOutcome};
use orchestrator::job::Job;
use orchestrator::lanes::{BatchLane, SyncLane, SyncLimits};
use orchestrator::providers::Providers;
use orchestrator::sim::{SimConfig, SimHandle};
use orchestrator::store::{SharedStore, Store};
use orchestrator::validate::{Inputs, validate_dir};
use rusqlite::Connection;

use super::api::Api;

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T06:00:00Z").unwrap().with_timezone(&Utc)
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub sim: SimHandle,
    pub engine: Arc<Engine>,
    pub job: Job,
    /// What `validate` said of the project.
    pub diagnostics: Vec<orchestrator::diagnostics::Diagnostic>,
}

/// A project with one job `bulk` (`tier`, `deadline`) over `items` items,
/// an engine on a manual clock at `t0`, and a simulator on the same clock.
pub async fn harness(tier: &str, deadline: &str, items: usize, sim: SimConfig) -> Harness {
    let head = format!("schedule: {{ cron: '0 6 * * *' }}\ntier: {tier}\ndeadline: {deadline}\n");
    harness_at(&head, items, sim, t0()).await
}

/// Like [`harness`], with the job on `api`'s cheap model.
pub async fn harness_on(api: Api, tier: &str, deadline: &str, items: usize, sim: SimConfig) -> Harness {
    let head = format!("schedule: {{ cron: '0 6 * * *' }}\ntier: {tier}\ndeadline: {deadline}\n");
    harness_project(api, &head, items, sim, t0(), |_| {}).await
}

/// Like [`harness`], with the manifest's first lines (schedule, tier,
/// deadline, policies) given, and the clock starting at `start`.
pub async fn harness_at(head: &str, items: usize, sim: SimConfig, start: DateTime<Utc>) -> Harness {
    harness_tuned(head, items, sim, start, |_| {}).await
}

/// Like [`harness_at`], with the engine's settings changed by `tune` after
/// the harness set them (for a test that plans with the catalog's figures).
pub async fn harness_tuned(
    head: &str,
    items: usize,
    sim: SimConfig,
    start: DateTime<Utc>,
    tune: impl FnOnce(&mut EngineSettings),
) -> Harness {
    harness_project(Api::Anthropic, head, items, sim, start, tune).await
}

async fn harness_project(
    api: Api,
    head: &str,
    items: usize,
    sim: SimConfig,
    start: DateTime<Utc>,
    tune: impl FnOnce(&mut EngineSettings),
) -> Harness {
    // Logs show up only for a failing test.
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_else(|_| "orchestrator=info".into()))
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    std::fs::create_dir_all(root.join("prompts")).unwrap();
    let lines: String = (0..items).map(|i| format!("{{\"id\":{i},\"text\":\"item number {i}\"}}\n")).collect();
    std::fs::write(root.join("items.jsonl"), lines).unwrap();
    let manifest = format!(
        "{head}{model}max_tokens: 64\n\
         prompt: {{ inline: 'Label {{{{ item.text }}}}' }}\nitems: {{ jsonl: {items_path} }}\n\
         sink: {{ jsonl: {sink} }}\nretry: {{ max_attempts: 3 }}\n",
        model = api.model_lines(),
        items_path = root.join("items.jsonl").display(),
        sink = root.join("out/bulk.jsonl").display(),
    );
    std::fs::write(root.join("jobs/bulk.yaml"), manifest).unwrap();
    harness_engine(dir, "bulk", sim, start, tune).await
}

/// An engine over every job of the project in `dir` (`jobs/`, `prompts/`,
/// `state/`) on a manual clock at `start`, with a simulator on the same
/// clock; `main` names the job [`Harness::run`] starts.
pub async fn harness_for(dir: tempfile::TempDir, main: &str, sim: SimConfig, start: DateTime<Utc>) -> Harness {
    harness_engine(dir, main, sim, start, |_| {}).await
}

/// Like [`harness_for`], with the engine's settings changed by `tune`.
pub async fn harness_for_tuned(
    dir: tempfile::TempDir,
    main: &str,
    sim: SimConfig,
    start: DateTime<Utc>,
    tune: impl FnOnce(&mut EngineSettings),
) -> Harness {
    harness_engine(dir, main, sim, start, tune).await
}

async fn harness_engine(
    dir: tempfile::TempDir,
    main: &str,
    sim: SimConfig,
    start: DateTime<Utc>,
    tune: impl FnOnce(&mut EngineSettings),
) -> Harness {
    let root = dir.path();
    let catalog = Catalog::builtin();
    let report = validate_dir(Inputs {
        jobs_dir: &root.join("jobs"),
        prompts_dir: &root.join("prompts"),
        catalog: &catalog,
        now: start,
    });
    assert!(report.passes(false), "{:?}", report.diagnostics);
    let job = report.job(main).cloned().unwrap_or_else(|| panic!("{:?}", report.diagnostics));
    let clock = ManualClock::new(start);
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let sim_config = SimConfig { listen: "127.0.0.1:0".parse().unwrap(), ..sim };
    let sim = orchestrator::sim::start_with_clock(sim_config, Arc::clone(&shared)).await.unwrap();
    let store = SharedStore::new(Store::open(&root.join("state/orchestrator.db")).unwrap());
    let mut settings = EngineSettings::new(catalog);
    settings.assumed_sync_latency = Some(Duration::from_secs(2));
    // The simulator's batches end in 3 s (median) to 8 s (p95).
    settings.assumed_batch_turnaround = Some(Duration::from_secs(10));
    settings.sync = SyncLimits { concurrency: 8, ..SyncLimits::default() };
    settings.idle_tick = Duration::from_secs(3600);
    tune(&mut settings);
    let providers = Providers::simulated(&sim.base_url(), "sk-test").unwrap();
    let batch = BatchLane::with_pacing(providers.clone(), store.clone(), Arc::clone(&shared), &settings.batch_pacing);
    let sync = SyncLane::new(providers, store.clone(), Arc::clone(&shared), settings.sync);
    let engine = Arc::new(Engine::new(store, batch, sync, shared, settings, report.jobs.clone()));
    Harness { dir, clock, sim, engine, job, diagnostics: report.diagnostics.clone() }
}

/// Runs `daemon` as `serve` does (`Daemon::run_until`) until the manual
/// clock reaches `end`, then stops it; `guard` real seconds at most.
pub async fn serve_until(h: &Harness, daemon: &Daemon, end: DateTime<Utc>, guard: u64) {
    let (control, _reload) = Control::new();
    let stop = control.stop.clone();
    let clock = h.clock.clone();
    // Present on the clock like the daemon, so time moves only when both wait.
    let stopper = async move {
        let _presence = clock.enter();
        clock.sleep(orchestrator::engine::until(clock.now(), end)).await;
        stop.cancel();
    };
    let options = Options { run_now: false, grace: Duration::from_secs(10) };
    let keep = || None;
    let served = async { daemon.run_until(options, control, &keep, Services::default()).await.unwrap() };
    let both = futures_util::future::join(served, stopper);
    tokio::time::timeout(Duration::from_secs(guard), both).await.expect("the daemon reaches the end in time");
}

impl Harness {
    /// Starts the run for `t0` and drives it to its end (a real-time guard stops a hang).
    pub async fn run(&self) -> (i64, RunOutcome) {
        let deadline_at = self.job.deadline_at(t0());
        let run = self.engine.start_run(&self.job, t0(), deadline_at).await.unwrap();
        let guard = std::env::var("TEST_GUARD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
        let outcome =
            match tokio::time::timeout(Duration::from_secs(guard), self.engine.drive(run.id, async |_| Ok(()))).await {
                Ok(outcome) => outcome.unwrap(),
                Err(_) => panic!(
                    "the run did not end within {guard} real seconds: {:?}, requests {:?}, sync calls {}, sim {:?}",
                    self.clock,
                    self.ids("SELECT state || ':' || COUNT(*) FROM requests GROUP BY state"),
                    self.count("SELECT COUNT(*) FROM attempts WHERE lane = 'sync'"),
                    self.sim.stats()
                ),
            };
        (run.id, outcome)
    }

    /// Keeps ticking (as the daemon does) until no batch is active any more.
    pub async fn settle_batches(&self) {
        let _presence = self.clock.enter();
        for _ in 0..1000 {
            let wake = self.engine.tick(None).await.unwrap();
            if self
                .count("SELECT COUNT(*) FROM batches WHERE state NOT IN ('ended', 'abandoned') OR (state = 'ended' AND results_ingested = 0)")
                == 0
            {
                return;
            }
            self.clock.sleep(orchestrator::engine::until(self.clock.now(), wake)).await;
        }
        panic!("batches never settled");
    }

    pub fn db(&self) -> Connection {
        Connection::open(self.dir.path().join("state/orchestrator.db")).unwrap()
    }

    pub fn count(&self, sql: &str) -> i64 {
        super::db::count(self.dir.path(), sql)
    }

    pub fn ids(&self, sql: &str) -> Vec<String> {
        super::db::ids(self.dir.path(), sql)
    }

    /// custom_id → how many times the sink holds it.
    pub fn delivered(&self) -> HashMap<String, usize> {
        super::db::delivered(&self.dir.path().join("out/bulk.jsonl"))
    }

    /// Deadline minus the instant the run closed, in seconds.
    pub fn margin_secs(&self, run_id: i64) -> i64 {
        let (deadline, finished): (i64, i64) = self
            .db()
            .query_row("SELECT deadline_at, finished_at FROM runs WHERE id = ?1", [run_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        (deadline - finished) / 1000
    }

    pub fn assert_each_delivered_once(&self) {
        self.assert_delivered_once(crate::fallback::ITEMS);
    }

    pub fn assert_delivered_once(&self, items: usize) {
        let delivered = self.delivered();
        assert_eq!(delivered.len(), items, "every item reached the sink");
        assert!(delivered.values().all(|&n| n == 1), "no result was delivered twice");
        assert_eq!(self.count("SELECT COUNT(*) FROM deliveries"), items as i64);
    }

    pub const SYNC_CALLS: &'static str =
        "SELECT COUNT(*) FROM attempts WHERE lane = 'sync' AND operation = 'create_message' AND error_type IS NULL";
}
