//! Budgets: each `on_budget` policy takes effect before money is spent.

use std::time::Duration;

use orchestrator::clock::Clock;
use orchestrator::sim::SimConfig;
use serde_json::Value;

use crate::support::harness::{Harness, harness_at, t0};

const ITEMS: usize = 20;

/// A job over `ITEMS` items whose budget (a millionth of a dollar) any run crosses.
async fn over_budget(tier: &str, policy: &str, sim: SimConfig) -> Harness {
    let head = format!(
        "schedule: {{ cron: '0 6 * * *' }}\ntier: {tier}\ndeadline: 1h\n\
         budget: {{ monthly_usd: 0.000001, on_budget: {policy} }}\n"
    );
    harness_at(&head, ITEMS, sim, t0()).await
}

fn budget_events(h: &Harness) -> Vec<Value> {
    h.ids("SELECT detail FROM events WHERE kind = 'budget_exceeded' ORDER BY id")
        .iter()
        .map(|text| serde_json::from_str(text).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skip_stops_the_run_before_anything_is_submitted() {
    let h = over_budget("batch", "skip", SimConfig::default()).await;
    let (_, outcome) = h.run().await;
    assert_eq!(outcome.state.as_str(), "skipped");
    assert!(outcome.reason.unwrap().contains("monthly budget of $0.00"));
    assert_eq!(h.sim.stats().batches_created, 0, "nothing was submitted");
    assert_eq!(h.count("SELECT COUNT(*) FROM requests"), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM attempts"), 0, "no provider call at all");
    let events = budget_events(&h);
    assert_eq!(events.len(), 1);
    assert_eq!((events[0]["action"].as_str(), events[0]["stage"].as_str()), (Some("skipped"), Some("submit")));
    assert!(events[0]["estimate_usd"].as_f64().unwrap() > 0.0);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_only_keeps_a_stuck_run_off_the_sync_lane_past_its_fallback() {
    let h = over_budget("soft", "batch_only", SimConfig { never_end: true, ..SimConfig::default() }).await;
    let deadline_at = t0() + chrono::Duration::hours(1);
    let run = h.engine.start_run(&h.job, t0(), deadline_at).await.unwrap();
    assert!(run.sync_blocked.is_some(), "the budget blocked the sync lane at submission");
    let _presence = h.clock.enter();
    let guard = tokio::time::timeout(Duration::from_secs(60), async {
        while h.clock.now() < deadline_at + chrono::Duration::minutes(30) {
            let wake = h.engine.tick(Some(run.id)).await.unwrap();
            h.clock.sleep(orchestrator::engine::until(h.clock.now(), wake)).await;
        }
    });
    guard.await.expect("ticks reach half an hour past the deadline");
    assert_eq!(h.count("SELECT COUNT(*) FROM attempts WHERE lane = 'sync'"), 0, "no sync call was paid for");
    assert_eq!(h.sim.stats().batches_created, 1, "the cheap lane kept the work");
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE fallback_started_at IS NOT NULL"), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE state = 'open'"), 1, "the run waits for its batch");
    let events = budget_events(&h);
    assert_eq!(events.len(), 1, "one decision, recorded once: {events:?}");
    assert_eq!(events[0]["action"], "batch_only");
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_only_moves_a_realtime_run_to_the_batch_lane() {
    let h = over_budget("realtime", "batch_only", SimConfig::default()).await;
    let (run_id, outcome) = h.run().await;
    assert!(outcome.is_complete(), "{outcome:?}");
    assert_eq!(h.count(&format!("SELECT COUNT(*) FROM runs WHERE id = {run_id} AND lane = 'batch'")), 1);
    assert_eq!(h.count(Harness::SYNC_CALLS), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE lane = 'batch' AND status = 'succeeded'"), ITEMS as i64);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_runs_as_usual_and_records_the_crossing() {
    let h = over_budget("realtime", "alert", SimConfig::default()).await;
    let (_, outcome) = h.run().await;
    assert!(outcome.is_complete(), "{outcome:?}");
    assert_eq!(h.count(Harness::SYNC_CALLS), ITEMS as i64, "realtime stays on the sync lane");
    let events = budget_events(&h);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["action"], "alerted");
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_crossed_while_the_batch_runs_blocks_the_sync_fallback() {
    let sim = SimConfig { never_end: true, ..SimConfig::default() };
    let h = harness_at("schedule: { cron: '0 6 * * *' }\ntier: soft\ndeadline: 1h\n", ITEMS, sim, t0()).await;
    let deadline_at = t0() + chrono::Duration::hours(1);
    let run = h.engine.start_run(&h.job, t0(), deadline_at).await.unwrap();
    assert!(run.sync_blocked.is_none(), "no budget at submission");
    // The team sets a budget (a reload) after the batch went out.
    let mut job = h.job.clone();
    job.manifest.budget = Some(orchestrator::manifest::Budget {
        monthly_usd: Some(0.000001),
        on_budget: orchestrator::manifest::OnBudget::BatchOnly,
    });
    h.engine.set_jobs(vec![job]);
    let _presence = h.clock.enter();
    let guard = tokio::time::timeout(Duration::from_secs(60), async {
        while h.clock.now() < deadline_at {
            let wake = h.engine.tick(Some(run.id)).await.unwrap();
            h.clock.sleep(orchestrator::engine::until(h.clock.now(), wake)).await;
        }
    });
    guard.await.expect("ticks reach the deadline");
    assert_eq!(h.count("SELECT COUNT(*) FROM attempts WHERE lane = 'sync'"), 0, "the fallback paid for nothing");
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE fallback_started_at IS NOT NULL"), 0);
    let events = budget_events(&h);
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!((events[0]["stage"].as_str(), events[0]["action"].as_str()), (Some("fallback"), Some("sync_blocked")));
    h.sim.shutdown().await;
}

/// The daemon-wide `budget.monthly_usd` of orchestrator.yaml, on the real
/// `serve`: neither job has a budget of its own, yet both answer to it,
/// each by its own policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_wide_budget_holds_every_job_to_its_policy_end_to_end() {
    let sim = crate::support::simulator(SimConfig::default()).await;
    let dir = crate::support::project::empty();
    let head = |policy: &str| {
        format!("schedule: {{ cron: '0 6 * * *' }}\ntier: batch\ndeadline: 2h\nbudget: {{ on_budget: {policy} }}\n")
    };
    crate::support::project::write_job(dir.path(), "skipper", &head("skip"), 4, "");
    crate::support::project::write_job(dir.path(), "keeper", &head("alert"), 6, "");
    // A millionth of a dollar for all jobs together: any run crosses it.
    crate::support::project::write_config(
        dir.path(),
        "batch: { poll_initial: 1s }\nbudget: { monthly_usd: 0.000001 }\n",
    );
    let daemon = crate::support::process::serve(dir.path(), &sim, &["--run-now"], std::process::Stdio::null());
    let closed = "SELECT COUNT(*) FROM runs WHERE state != 'open'";
    crate::support::wait_until("both runs to close", std::time::Duration::from_secs(60), || {
        crate::support::db::count(dir.path(), closed) == 2
    })
    .await;
    crate::support::process::kill(daemon);
    let db = |sql: &str| crate::support::db::ids(dir.path(), sql);
    assert_eq!(db("SELECT job || ' ' || state FROM runs ORDER BY job"), ["keeper completed", "skipper skipped"]);
    let reason = db("SELECT reason FROM runs WHERE job = 'skipper'");
    assert!(reason[0].starts_with("the global monthly budget of $0.00 would be crossed"), "{reason:?}");
    let skipped_requests = "SELECT COUNT(*) FROM requests r JOIN runs u ON u.id = r.run_id WHERE u.job = 'skipper'";
    assert_eq!(crate::support::db::count(dir.path(), skipped_requests), 0);
    assert_eq!(sim.stats().requests_received, 6, "only the keeper's requests reached the provider");
    // A run's events name it by run_id; the job is the run's.
    let decisions = db("SELECT r.job || ' ' || json_extract(e.detail, '$.scope') || ' '
                || json_extract(e.detail, '$.policy') || ' ' || json_extract(e.detail, '$.stage')
         FROM events e JOIN runs r ON r.id = e.run_id WHERE e.kind = 'budget_exceeded' ORDER BY r.job, e.id");
    assert_eq!(decisions, ["keeper global alert submit", "skipper global skip submit"]);
    sim.shutdown().await;
}
