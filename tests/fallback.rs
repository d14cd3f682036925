//! The fallback engine on a manual clock: hours of deadline in milliseconds,
//! against the simulator on loopback following the same clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use orchestrator::catalog::Catalog;
use orchestrator::clock::{Clock, ManualClock};
use orchestrator::engine::{Engine, EngineSettings, RunOutcome};
use orchestrator::lanes::{BatchLane, SyncLane, SyncLimits};
use orchestrator::manifest::Job;
use orchestrator::providers::anthropic::{AnthropicClient, ApiKey};
use orchestrator::sim::{SimConfig, SimHandle};
use orchestrator::store::{RunState, SharedStore, Store};
use orchestrator::validate::{Inputs, validate_dir};
use rusqlite::Connection;
use serde_json::Value;

const ITEMS: usize = 200;

fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-22T06:00:00Z").unwrap().with_timezone(&Utc)
}

struct Harness {
    dir: tempfile::TempDir,
    clock: ManualClock,
    sim: SimHandle,
    engine: Arc<Engine>,
    job: Job,
}

/// A project with one job `bulk` (`tier`, `deadline`) over `items` items,
/// an engine on a manual clock at `t0`, and a simulator on the same clock.
async fn harness(tier: &str, deadline: &str, items: usize, sim: SimConfig) -> Harness {
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
        "schedule: {{ cron: '0 6 * * *' }}\ntier: {tier}\ndeadline: {deadline}\nmodel: claude-haiku-4-5\nmax_tokens: 64\n\
         prompt: {{ inline: 'Label {{{{ item.text }}}}' }}\nitems: {{ jsonl: {items_path} }}\n\
         sink: {{ jsonl: {sink} }}\nretry: {{ max_attempts: 3 }}\n",
        items_path = root.join("items.jsonl").display(),
        sink = root.join("out/bulk.jsonl").display(),
    );
    std::fs::write(root.join("jobs/bulk.yaml"), manifest).unwrap();
    let catalog = Catalog::builtin();
    let report = validate_dir(Inputs {
        jobs_dir: &root.join("jobs"),
        prompts_dir: &root.join("prompts"),
        catalog: &catalog,
        now: t0(),
    });
    let job = report.job("bulk").cloned().unwrap_or_else(|| panic!("{:?}", report.diagnostics));
    let clock = ManualClock::new(t0());
    let shared: Arc<dyn Clock> = Arc::new(clock.clone());
    let sim_config = SimConfig { listen: "127.0.0.1:0".parse().unwrap(), ..sim };
    let sim = orchestrator::sim::start_with_clock(sim_config, Arc::clone(&shared)).await.unwrap();
    let store = SharedStore::new(Store::open(&root.join("state/orchestrator.db")).unwrap());
    let client = AnthropicClient::new(&sim.base_url(), ApiKey::new("sk-test")).unwrap();
    let mut settings = EngineSettings::new(root.join("prompts"), catalog);
    settings.assumed_sync_latency = Duration::from_secs(2);
    settings.sync = SyncLimits { concurrency: 8, ..SyncLimits::default() };
    let batch = BatchLane::new(client.clone(), store.clone(), Arc::clone(&shared));
    let sync = SyncLane::new(client, store.clone(), Arc::clone(&shared), settings.sync);
    let engine = Arc::new(Engine::new(store, batch, sync, shared, settings, vec![job.clone()]));
    Harness { dir, clock, sim, engine, job }
}

impl Harness {
    /// Starts the run for `t0` and drives it to its end (a real-time guard stops a hang).
    async fn run(&self) -> (i64, RunOutcome) {
        let deadline_at = t0() + chrono::Duration::from_std(self.job.deadline()).unwrap();
        let run = self.engine.start_run(&self.job, t0(), deadline_at).await.unwrap();
        let guard = std::env::var("TEST_GUARD_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
        let outcome = match tokio::time::timeout(Duration::from_secs(guard), self.engine.drive(run.id)).await {
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
    async fn settle_batches(&self) {
        let _presence = self.clock.enter();
        for _ in 0..1000 {
            let wake = self.engine.tick(None).await.unwrap();
            if self
                .count("SELECT COUNT(*) FROM batches WHERE state NOT IN ('ended', 'abandoned') OR results_ingested = 0")
                == 0
            {
                return;
            }
            self.clock.sleep(orchestrator::engine::until(self.clock.now(), wake)).await;
        }
        panic!("batches never settled");
    }

    fn db(&self) -> Connection {
        Connection::open(self.dir.path().join("state/orchestrator.db")).unwrap()
    }

    fn count(&self, sql: &str) -> i64 {
        self.db().query_row(sql, [], |row| row.get(0)).unwrap()
    }

    fn ids(&self, sql: &str) -> Vec<String> {
        let db = self.db();
        let mut statement = db.prepare(sql).unwrap();
        statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
    }

    /// custom_id → how many times the sink holds it.
    fn delivered(&self) -> HashMap<String, usize> {
        let text = std::fs::read_to_string(self.dir.path().join("out/bulk.jsonl")).unwrap_or_default();
        let mut seen = HashMap::new();
        for line in text.lines() {
            let value: Value = serde_json::from_str(line).unwrap();
            *seen.entry(value["custom_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
        }
        seen
    }

    /// Deadline minus the instant the run closed, in seconds.
    fn margin_secs(&self, run_id: i64) -> i64 {
        let (deadline, finished): (i64, i64) = self
            .db()
            .query_row("SELECT deadline_at, finished_at FROM runs WHERE id = ?1", [run_id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        (deadline - finished) / 1000
    }

    fn assert_each_delivered_once(&self) {
        let delivered = self.delivered();
        assert_eq!(delivered.len(), ITEMS, "every item reached the sink");
        assert!(delivered.values().all(|&n| n == 1), "no result was delivered twice");
        assert_eq!(self.count("SELECT COUNT(*) FROM deliveries"), ITEMS as i64);
    }

    const SYNC_CALLS: &'static str =
        "SELECT COUNT(*) FROM attempts WHERE lane = 'sync' AND operation = 'create_message' AND error_type IS NULL";
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_never_ends_is_finished_by_the_sync_lane_before_the_deadline() {
    let h = harness("batch", "4h", ITEMS, SimConfig { never_end: true, ..SimConfig::default() }).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    assert!(outcome.is_complete());
    h.assert_each_delivered_once();
    assert_eq!(h.count(Harness::SYNC_CALLS), ITEMS as i64, "one sync call per missing item, no more");
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE fallback_reason = 'deadline'"), 1);
    let margin = h.margin_secs(run_id);
    assert!(margin > 0, "finished {margin}s before the deadline");
    eprintln!("never-ending batch: finished {margin}s before a 4h deadline");
    h.settle_batches().await;
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE lane = 'batch' AND status = 'canceled'"), ITEMS as i64);
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE duplicate = 1"), 0);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_canceled_half_way_sends_only_the_other_half_to_the_sync_lane() {
    // The batch would take 7.6 h; the fallback fires about 3.8 h in.
    let sim = SimConfig { batch_median_secs: 27_360.0, batch_p95_secs: 27_360.0, ..SimConfig::default() };
    let h = harness("batch", "4h", ITEMS, sim).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_each_delivered_once();
    let from_batch = h.ids("SELECT custom_id FROM results WHERE lane = 'batch' AND status = 'succeeded'");
    let canceled = h.count("SELECT COUNT(*) FROM results WHERE lane = 'batch' AND status = 'canceled'");
    assert!((50..150).contains(&from_batch.len()), "about half finished in the batch: {}", from_batch.len());
    assert_eq!(from_batch.len() as i64 + canceled, ITEMS as i64);
    assert_eq!(h.count(Harness::SYNC_CALLS), canceled, "only the canceled half went to the sync lane");
    let sent_sync = h.ids("SELECT DISTINCT custom_id FROM attempts WHERE lane = 'sync'");
    assert!(sent_sync.iter().all(|id| !from_batch.contains(id)), "nothing the batch finished was sent again");
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE duplicate = 1"), 0);
    eprintln!(
        "half-way batch: {} from the batch, {canceled} sync, {}s margin",
        from_batch.len(),
        h.margin_secs(run_id)
    );
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ending_after_the_fallback_started_is_duplicate_spend_never_a_second_delivery() {
    // The cancel takes an hour to land: the sync lane stops waiting after its grace.
    let sim = SimConfig {
        batch_median_secs: 18_000.0,
        batch_p95_secs: 18_000.0,
        cancel_secs: Some(3600.0),
        ..SimConfig::default()
    };
    let h = harness("batch", "4h", ITEMS, sim).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    assert_eq!(h.count(Harness::SYNC_CALLS), ITEMS as i64, "nothing had come back: all went sync");
    h.settle_batches().await;
    let late = h.count("SELECT COUNT(*) FROM results WHERE lane = 'batch' AND status = 'succeeded'");
    assert!(late > 0, "the batch finished some requests before the cancel");
    assert_eq!(
        h.count("SELECT COUNT(*) FROM results WHERE duplicate = 1"),
        late,
        "each is recorded as duplicate spend"
    );
    h.assert_each_delivered_once();
    let sync_won =
        h.count("SELECT COUNT(*) FROM requests q JOIN results r ON r.id = q.result_id WHERE r.lane = 'sync'");
    assert_eq!(sync_won, ITEMS as i64, "the first final result of each request won");
    eprintln!("late batch: {late} duplicate results recorded, {}s margin", h.margin_secs(run_id));
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_be_created_falls_back_at_once() {
    let h = harness("batch", "12h", ITEMS, SimConfig { batch_create_error_chance: 1.0, ..SimConfig::default() }).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_each_delivered_once();
    assert_eq!(h.sim.stats().batches_created, 0);
    assert_eq!(h.count(Harness::SYNC_CALLS), ITEMS as i64);
    let (reason, after_ms): (String, i64) = h
        .db()
        .query_row("SELECT fallback_reason, fallback_started_at - created_at FROM runs WHERE id = ?1", [run_id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!(reason, "batch_create_failed");
    assert!(after_ms < 120_000, "fell back {after_ms} ms after the run started, not at the planned instant");
    assert_eq!(h.count("SELECT COUNT(*) FROM batches WHERE state = 'abandoned'"), 1);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_with_retry_after_still_meets_the_deadline() {
    let sim = SimConfig { rate_limit_chance: 0.5, retry_after_secs: 5, seed: 3, ..SimConfig::default() };
    let h = harness("realtime", "30m", ITEMS, sim).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_each_delivered_once();
    let limited = h.count("SELECT COUNT(*) FROM attempts WHERE http_status = 429");
    assert!(limited > 50, "the storm hit: {limited} answers were 429");
    assert_eq!(h.count(Harness::SYNC_CALLS), ITEMS as i64, "each item succeeded once");
    assert_eq!(h.count("SELECT COUNT(*) FROM batches"), 0, "realtime work never touches the batch lane");
    eprintln!("429 storm: {limited} rate-limited answers, finished {}s before a 30m deadline", h.margin_secs(run_id));
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_too_close_for_a_batch_goes_straight_to_the_sync_lane() {
    let h = harness("batch", "40s", ITEMS, SimConfig::default()).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_each_delivered_once();
    assert_eq!(h.count("SELECT COUNT(*) FROM batches"), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE lane = 'sync' AND fallback_started_at IS NULL"), 1);
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind = 'routed_to_sync'"), 1);
    assert!(h.margin_secs(run_id) >= 0);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_of_seconds_still_uses_the_batch_when_it_can() {
    // 20 items, a batch of about 3 s, a 60 s deadline: the batch lane does it all.
    let h = harness("soft", "60s", 20, SimConfig::default()).await;
    let deadline_at = t0() + chrono::Duration::seconds(60);
    let run = h.engine.start_run(&h.job, t0(), deadline_at).await.unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(60), h.engine.drive(run.id)).await.unwrap().unwrap();
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE lane = 'batch' AND status = 'succeeded'"), 20);
    assert_eq!(h.count(Harness::SYNC_CALLS), 0);
    let finished: i64 = h.db().query_row("SELECT finished_at FROM runs", [], |r| r.get(0)).unwrap();
    let took = (finished - t0().timestamp_millis()) as f64 / 1000.0;
    assert!(took < 30.0, "polling scaled to the short deadline: done after {took}s");
    h.sim.shutdown().await;
}
