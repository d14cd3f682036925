//! Shared batches: runs that are ready together for the same provider and
//! model go into one provider batch, and each keeps its own results,
//! deadline, fallback and sink. On the manual clock, and as real processes
//! killed at every crash point.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use orchestrator::clock::Clock;
use orchestrator::sim::SimConfig;
use orchestrator::store::RunState;

use crate::support::db::{count, delivered};
use crate::support::harness::{Harness, harness_for, harness_for_tuned, t0};
use crate::support::process::{serve, signal, wait_exit};
use crate::support::{simulator, wait_until};

/// Writes job `name`: batch tier, `deadline`, `items` items, its own sink
/// `out/<name>.jsonl`, with `extra` manifest lines; every path absolute.
fn write_job(dir: &Path, name: &str, deadline: &str, items: usize, extra: &str) {
    let lines: String = (0..items).map(|i| format!("{{\"id\":{i},\"text\":\"{name} item {i}\"}}\n")).collect();
    std::fs::write(dir.join(format!("{name}.jsonl")), lines).unwrap();
    let manifest = format!(
        "schedule: {{ cron: '0 6 * * *' }}\ntier: batch\ndeadline: {deadline}\nmodel: claude-haiku-4-5\n\
         max_tokens: 64\nprompt: {{ inline: 'Label {{{{ item.text }}}}' }}\nitems: {{ jsonl: {items} }}\n\
         sink: {{ jsonl: {sink} }}\n{extra}",
        items = dir.join(format!("{name}.jsonl")).display(),
        sink = dir.join(format!("out/{name}.jsonl")).display(),
    );
    std::fs::write(dir.join(format!("jobs/{name}.yaml")), manifest).unwrap();
}

/// Starts a run of every job for `t0` and ticks (as the daemon does) until
/// all of them are closed and no batch is active any more.
async fn run_all(h: &Harness) {
    let jobs = h.engine.jobs();
    for job in jobs.values() {
        start(h, &job.name).await;
    }
    drive(h).await;
}

/// Starts the run of `job` for `t0`.
async fn start(h: &Harness, job: &str) {
    let job = h.engine.jobs()[job].clone();
    h.engine.start_run(&job, t0(), job.deadline_at(t0())).await.unwrap();
}

/// One tick, present on the clock; returns when the engine wants the next.
async fn tick(h: &Harness) -> chrono::DateTime<chrono::Utc> {
    let _presence = h.clock.enter();
    h.engine.tick(None).await.unwrap()
}

/// Ticks (as the daemon does) until every run is closed and no batch is active.
async fn drive(h: &Harness) {
    let _presence = h.clock.enter();
    let settled = async {
        loop {
            let wake = h.engine.tick(None).await.unwrap();
            let open = h.count("SELECT COUNT(*) FROM runs WHERE state = 'open'");
            let active = h.count(
                "SELECT COUNT(*) FROM batches WHERE state NOT IN ('ended', 'abandoned') OR results_ingested = 0",
            );
            if open == 0 && active == 0 {
                return;
            }
            h.clock.sleep(orchestrator::engine::until(h.clock.now(), wake)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), settled).await.expect("every run closes within 120 real seconds");
}

fn run_id(h: &Harness, job: &str) -> i64 {
    h.count(&format!("SELECT id FROM runs WHERE job = '{job}'"))
}

async fn run_row(h: &Harness, job: &str) -> orchestrator::store::RunRow {
    let id = run_id(h, job);
    h.engine.store().call(move |s| s.run(id)).await.unwrap().unwrap()
}

/// Results of `run_id`'s requests from `lane`, duplicates (`1`) or first answers (`0`).
fn answers(h: &Harness, run_id: i64, lane: &str, duplicate: u8) -> i64 {
    h.count(&format!(
        "SELECT COUNT(*) FROM results WHERE lane = '{lane}' AND duplicate = {duplicate}
           AND custom_id IN (SELECT custom_id FROM requests WHERE run_id = {run_id})"
    ))
}

fn assert_sink_once(dir: &Path, job: &str, items: usize) {
    let sink = delivered(&dir.join(format!("out/{job}.jsonl")));
    assert_eq!(sink.len(), items, "{job}: every item reached its own sink");
    assert!(sink.values().all(|&n| n == 1), "{job}: nothing delivered twice");
    assert!(sink.keys().all(|id| id.starts_with(&format!("{job}-"))), "{job}: only its own results");
}

const ITEMS: usize = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_that_fire_together_share_one_batch_and_each_gets_its_own_results() {
    let dir = crate::support::project::empty();
    for job in ["alpha", "beta", "gamma"] {
        write_job(dir.path(), job, "4h", ITEMS, "");
    }
    write_job(dir.path(), "solo", "4h", ITEMS, "batch: { share: false }\n");
    let sim = SimConfig { batch_median_secs: 60.0, batch_p95_secs: 90.0, ..SimConfig::default() };
    let h = harness_for(dir, "alpha", sim, t0()).await;
    run_all(&h).await;

    let db = h.db();
    for job in ["alpha", "beta", "gamma", "solo"] {
        let run = run_row(&h, job).await;
        assert_eq!(run.state, RunState::Completed, "{job}: {:?}", run.reason);
        assert_sink_once(h.dir.path(), job, ITEMS);
        assert_eq!(answers(&h, run.id, "batch", 0), ITEMS as i64, "{job}: answered by the batch lane");
        let cost: i64 = db
            .query_row(
                "SELECT SUM(r.cost_micros) FROM results r JOIN requests q USING (custom_id) WHERE q.run_id = ?1",
                [run.id],
                |row| row.get(0),
            )
            .unwrap();
        assert!(cost > 0, "{job}: its results carry its cost");
    }
    // Three runs in one batch, the one that asked for its own in another.
    assert_eq!(h.sim.stats().batches_created, 2);
    assert_eq!(h.count("SELECT COUNT(*) FROM attempts WHERE operation = 'create_batch' AND error_type IS NULL"), 2);
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE duplicate = 1"), 0);
    let shared = h.count("SELECT batch_id FROM batch_runs GROUP BY batch_id HAVING COUNT(*) = 3");
    assert_eq!(h.count(&format!("SELECT request_count FROM batches WHERE id = {shared}")), 3 * ITEMS as i64);
    assert_eq!(
        h.ids(&format!(
            "SELECT u.job || ':' || c.request_count FROM batch_runs c JOIN runs u ON u.id = c.run_id WHERE c.batch_id = {shared} ORDER BY u.job"
        )),
        ["alpha:20", "beta:20", "gamma:20"]
    );
    assert_eq!(
        h.count(&format!("SELECT COUNT(*) FROM batch_runs c JOIN runs u ON u.id = c.run_id WHERE u.job = 'solo' AND c.batch_id != {shared}")),
        1
    );
    // One set of polls and one results download serve the three runs.
    assert_eq!(
        h.count(&format!("SELECT COUNT(*) FROM attempts WHERE operation = 'results' AND batch_id = {shared}")),
        1
    );
    // Each run's log tells its batch was submitted, and the listing names every run it carries.
    for job in ["alpha", "beta", "gamma"] {
        let id = run_id(&h, job);
        let events = h.count(&format!("SELECT COUNT(*) FROM events WHERE run_id = {id} AND kind = 'batch_submitted'"));
        assert_eq!(events, 1, "{job}");
        let listings = h.engine.store().call(move |s| s.batch_listings(Some(id), 10)).await.unwrap();
        assert_eq!(listings.len(), 1, "{job}: one batch carries it");
        let carried: Vec<&str> = listings[0].runs.iter().map(|r| r.job.as_str()).collect();
        assert_eq!(carried, ["alpha", "beta", "gamma"]);
    }
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_of_a_shared_batch_falls_back_while_the_others_finish_on_the_batch_lane() {
    let dir = crate::support::project::empty();
    // The batch takes about an hour: `short` must leave it before its 30-minute deadline.
    write_job(dir.path(), "short", "30m", ITEMS, "");
    write_job(dir.path(), "long-a", "6h", ITEMS, "");
    write_job(dir.path(), "long-b", "6h", ITEMS, "");
    let sim = SimConfig { batch_median_secs: 3600.0, batch_p95_secs: 3700.0, ..SimConfig::default() };
    let h = harness_for(dir, "short", sim, t0()).await;
    run_all(&h).await;

    assert_eq!(h.sim.stats().batches_created, 1, "the three runs shared one batch");
    let short = run_row(&h, "short").await;
    assert_eq!(short.state, RunState::Completed, "{:?}", short.reason);
    assert_eq!(short.fallback_reason.as_deref(), Some("deadline"));
    assert!(h.margin_secs(short.id) > 0, "short made its deadline");
    assert_eq!(
        h.count("SELECT COUNT(*) FROM attempts WHERE operation = 'cancel_batch'"),
        0,
        "the batch was not canceled while other runs waited for it"
    );
    assert_eq!(answers(&h, short.id, "sync", 0), ITEMS as i64, "short's requests left the batch for the sync lane");
    assert_eq!(h.count(Harness::SYNC_CALLS), ITEMS as i64, "and only they");
    // The batch ended with its answers for short too: paid twice, counted as duplicates.
    assert_eq!(answers(&h, short.id, "batch", 1), ITEMS as i64);
    for job in ["long-a", "long-b"] {
        let run = run_row(&h, job).await;
        assert_eq!(run.state, RunState::Completed, "{job}: {:?}", run.reason);
        assert_eq!(run.fallback_started_at, None, "{job} stayed on the batch lane");
        assert_eq!(answers(&h, run.id, "batch", 0), ITEMS as i64, "{job}");
        assert!(run.finished_at.unwrap() - t0() > chrono::Duration::minutes(50), "{job} waited for the batch");
    }
    for job in ["short", "long-a", "long-b"] {
        assert_sink_once(h.dir.path(), job, ITEMS);
    }
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_batch_is_canceled_once_when_the_last_of_its_runs_falls_back() {
    let dir = crate::support::project::empty();
    write_job(dir.path(), "first", "30m", ITEMS, "");
    write_job(dir.path(), "second", "45m", ITEMS, "");
    let sim = SimConfig { never_end: true, ..SimConfig::default() };
    let h = harness_for(dir, "first", sim, t0()).await;
    run_all(&h).await;

    assert_eq!(h.sim.stats().batches_created, 1);
    let cancels = "SELECT COUNT(*) FROM attempts WHERE operation = 'cancel_batch' AND error_type IS NULL";
    assert_eq!(h.count(cancels), 1, "canceled once, by the last run to leave it");
    let (first, second) = (run_id(&h, "first"), run_id(&h, "second"));
    let canceled_at = h.count("SELECT cancel_requested_at FROM batches");
    let fell_back = |id: i64| h.count(&format!("SELECT fallback_started_at FROM runs WHERE id = {id}"));
    assert!(fell_back(first) < fell_back(second), "first left the batch before second");
    assert!(canceled_at >= fell_back(second), "the cancel came when second left, not when first did");
    for (job, id) in [("first", first), ("second", second)] {
        let state = h.ids(&format!("SELECT state FROM runs WHERE id = {id}"));
        assert_eq!(state, ["completed"], "{job}");
        assert_sink_once(h.dir.path(), job, ITEMS);
    }
    assert_eq!(h.count(Harness::SYNC_CALLS), 2 * ITEMS as i64);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_ready_a_little_later_joins_the_batch_of_the_first_within_the_gathering_window() {
    let dir = crate::support::project::empty();
    write_job(dir.path(), "early", "4h", ITEMS, "");
    write_job(dir.path(), "later", "4h", ITEMS, "");
    let sim = SimConfig { batch_median_secs: 60.0, batch_p95_secs: 90.0, ..SimConfig::default() };
    let window = |s: &mut orchestrator::engine::EngineSettings| s.gather_window = Duration::from_secs(5);
    let h = harness_for_tuned(dir, "early", sim, t0(), window).await;
    start(&h, "early").await;
    let wake = tick(&h).await;
    assert_eq!(h.count("SELECT COUNT(*) FROM batches"), 0, "early waits for company");
    assert_eq!(wake, t0() + chrono::Duration::seconds(5), "until its window ends");
    h.clock.advance(Duration::from_secs(2));
    start(&h, "later").await;
    tick(&h).await;
    assert_eq!(h.count("SELECT COUNT(*) FROM batches"), 0, "later does not extend early's window");
    h.clock.advance(Duration::from_secs(3));
    tick(&h).await;
    assert_eq!(h.count("SELECT COUNT(*) FROM batches"), 1, "early's window ended: both go, in one batch");
    assert_eq!(h.count("SELECT COUNT(*) FROM batch_runs"), 2);
    assert_eq!(h.count("SELECT intent_at FROM batches"), (t0() + chrono::Duration::seconds(5)).timestamp_millis());
    drive(&h).await;
    for job in ["early", "later"] {
        assert_eq!(h.ids(&format!("SELECT state FROM runs WHERE job = '{job}'")), ["completed"]);
        assert_sink_once(h.dir.path(), job, ITEMS);
    }
    assert_eq!(h.sim.stats().batches_created, 1);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creates_wait_for_room_in_the_providers_queue_instead_of_collecting_429s() {
    let dir = crate::support::project::empty();
    for job in ["alpha", "beta", "gamma"] {
        write_job(dir.path(), job, "4h", ITEMS, "");
    }
    let sim = SimConfig { batch_median_secs: 60.0, batch_p95_secs: 90.0, ..SimConfig::default() };
    let queue = |s: &mut orchestrator::engine::EngineSettings| {
        s.batch_pacing.max_queued_requests.insert("anthropic".into(), 30);
    };
    let h = harness_for_tuned(dir, "alpha", sim, t0(), queue).await;
    for job in ["alpha", "beta", "gamma"] {
        start(&h, job).await;
    }
    tick(&h).await;
    assert_eq!(h.ids("SELECT CAST(request_count AS TEXT) FROM batches"), ["30"], "30 of 60 fit in the queue");
    let depths = h.engine.store().call(|s| s.batch_queue_depths()).await.unwrap();
    assert_eq!(depths.get("anthropic"), Some(&30));
    let limit = |name: &str| (name == "anthropic").then_some(30);
    let queues = h.engine.store().call(move |s| orchestrator::status::queues(s, limit)).await.unwrap();
    assert_eq!(
        queues[0],
        orchestrator::status::QueueStatus { provider: "anthropic".into(), requests: 30, limit: Some(30) }
    );
    drive(&h).await;

    assert_eq!(h.ids("SELECT CAST(request_count AS TEXT) FROM batches ORDER BY id"), ["30", "30"]);
    let (first_seen_ended, second_intent): (i64, i64) = h
        .db()
        .query_row(
            "SELECT (SELECT polled_at FROM batches ORDER BY id LIMIT 1), (SELECT intent_at FROM batches ORDER BY id DESC LIMIT 1)",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert!(second_intent >= first_seen_ended, "the second create waited until the first batch left the queue");
    assert_eq!(h.count("SELECT COUNT(*) FROM attempts WHERE http_status = 429"), 0, "no 429 was collected");
    for job in ["alpha", "beta", "gamma"] {
        assert_eq!(h.ids(&format!("SELECT state FROM runs WHERE job = '{job}'")), ["completed"]);
        assert_sink_once(h.dir.path(), job, ITEMS);
    }
    h.sim.shutdown().await;
}

/// Three jobs of 1,500 items each: one shared batch of 4,500, more than one
/// ingest chunk, so `mid_ingest` is reached.
const CRASH_ITEMS: usize = 1500;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_crash_point_of_a_shared_batch_loses_and_duplicates_nothing() {
    // `mid_prepare` comes before the runs exist together; every later point has all three.
    for point in ["after_intent", "after_create", "mid_ingest", "after_sink_write"] {
        let sim = simulator(SimConfig { seed: 5, ..SimConfig::default() }).await;
        let dir = crate::support::project::empty();
        for job in ["one", "two", "three"] {
            crate::support::project::write_job(
                dir.path(),
                job,
                "schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 4h\n",
                CRASH_ITEMS,
                "",
            );
        }
        crate::support::project::write_config(dir.path(), "batch: { poll_initial: 1s }\n");
        let mut crashing = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        crashing
            .args(["serve", "--listen", "127.0.0.1:0", "--config", "orchestrator.yaml", "--run-now"])
            .current_dir(dir.path())
            .env("ANTHROPIC_BASE_URL", sim.base_url())
            .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
            .env("ORCHESTRATOR_FAILPOINT", point)
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let (code, stderr) = wait_exit(crashing.spawn().unwrap(), Duration::from_secs(120)).await;
        assert_eq!(code, None, "{point}: killed by its failpoint\n{stderr}");
        assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM runs"), 3, "{point}");
        assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM batches"), 1, "{point}: one shared intent");

        let resumed = serve(dir.path(), &sim, &[], Stdio::null());
        let completed = "SELECT COUNT(*) FROM runs WHERE state = 'completed'";
        wait_until(&format!("{point}: three runs completed"), Duration::from_secs(120), || {
            count(dir.path(), completed) == 3
        })
        .await;
        signal(&resumed, "TERM");
        wait_exit(resumed, Duration::from_secs(15)).await;
        for job in ["one", "two", "three"] {
            let sink = delivered(&dir.path().join(format!("out/{job}.jsonl")));
            assert_eq!(sink.len(), CRASH_ITEMS, "{point}: {job} lost nothing");
            assert!(sink.values().all(|&n| n == 1), "{point}: {job} got nothing twice");
        }
        let stats = sim.stats();
        assert_eq!(stats.batches_created, 1, "{point}: the shared batch was created once");
        assert_eq!(stats.custom_ids_submitted_more_than_once, 0, "{point}");
        assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM batch_runs"), 3, "{point}");
        sim.shutdown().await;
    }
}
