//! The deadline guard under backpressure, on a manual clock against the
//! simulator: 429 and 529 storms slow the lanes down but never use up a
//! request's attempts, and short windows go where `validate` says they go.

use orchestrator::clock::Clock;
use orchestrator::diagnostics::Code;
use orchestrator::sim::SimConfig;
use orchestrator::store::RunState;

use crate::support::harness::{Harness, harness, harness_tuned, t0};

/// Requests that used up an attempt or ended failed: none may under backpressure.
const FAILED_OR_CHARGED: &str =
    "SELECT COUNT(*) FROM requests WHERE attempts > 0 OR state IN ('retryable_failed', 'permanent_failed')";

/// The rate-limit storm of issue 14, planned with the catalog's figures (as a
/// new user's engine, which has measured nothing): a `soft` job of 200 items
/// with a 120 s deadline, batches that never end, 30% of calls answered 429.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_storm_on_a_short_window_delivers_everything_before_the_deadline() {
    let sim =
        SimConfig { never_end: true, rate_limit_chance: 0.3, retry_after_secs: 1, seed: 14, ..SimConfig::default() };
    let head = "schedule: { cron: '0 6 * * *' }\ntier: soft\ndeadline: 120s\n";
    let h = harness_tuned(head, 200, sim, t0(), |settings| {
        settings.assumed_sync_latency = None;
        settings.assumed_batch_turnaround = None;
    })
    .await;
    let warned = h
        .diagnostics
        .iter()
        .any(|d| d.code == Code::DeadlineTierMismatch && d.message.contains("straight to the sync lane"));
    assert!(warned, "validate says where the run goes: {:?}", h.diagnostics);
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_delivered_once(200);
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind = 'routed_to_sync'"), 1, "and the engine agrees");
    assert_eq!(h.count("SELECT COUNT(*) FROM batches"), 0, "no batch that could only be canceled");
    let limited = h.count("SELECT COUNT(*) FROM attempts WHERE http_status = 429");
    assert!(limited >= 40, "the storm hit: {limited} answers were 429");
    assert_eq!(h.count(FAILED_OR_CHARGED), 0, "a 429 uses up no attempt");
    assert_eq!(h.count(Harness::SYNC_CALLS), 200, "one successful call per request");
    let margin = h.margin_secs(run_id);
    assert!(margin > 0, "before the deadline: {margin}s");
    eprintln!("storm on a 120 s window: 200 delivered, {limited} 429s, {margin}s before the deadline");
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_realtime_job_under_an_overload_storm_delivers_everything() {
    // Half of all calls answer 529 `overloaded_error`, without retry-after.
    let sim = SimConfig { overloaded_chance: 0.5, seed: 529, ..SimConfig::default() };
    let h = harness("realtime", "60s", 50, sim).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_delivered_once(50);
    let overloaded = h.count("SELECT COUNT(*) FROM attempts WHERE http_status = 529");
    assert!(overloaded >= 20, "the storm hit: {overloaded} answers were 529");
    assert_eq!(h.count(FAILED_OR_CHARGED), 0, "a 529 uses up no attempt");
    let window = h.engine.sync_lane().window("anthropic", "claude-haiku-4-5").expect("the lane served the model");
    assert!(window < 8.0, "the lane sent fewer calls at once while overloaded: window {window}");
    let margin = h.margin_secs(run_id);
    assert!(margin >= 0, "in time: {margin}s");
    eprintln!("529 storm: 50 delivered, {overloaded} 529s, {margin}s before a 60 s deadline");
    h.sim.shutdown().await;
}

/// SQL for the milliseconds from `t0` to `instant` (an expression over the
/// attempts `matching`).
fn since_t0(instant: &str, matching: &str) -> String {
    format!("SELECT {instant} - {} FROM attempts WHERE {matching}", t0().timestamp_millis())
}

/// A 30-minute storm: every answer 429 for the first 10 minutes, then 30%.
fn thirty_minute_storm() -> SimConfig {
    SimConfig {
        storm_secs: Some(600.0),
        rate_limit_chance: 0.3,
        faults_for_secs: Some(1800.0),
        retry_after_secs: 5,
        seed: 30,
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_storm_on_the_sync_lane_still_meets_an_hour_with_nothing_failed() {
    let h = harness("realtime", "1h", 100, thirty_minute_storm()).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_delivered_once(100);
    let first_success = h.count(&since_t0("MIN(finished_at)", "error_type IS NULL"));
    assert!(first_success >= 600_000, "nothing got through the first ten minutes: {first_success} ms");
    assert_eq!(h.count(FAILED_OR_CHARGED), 0, "no request is marked failed");
    let margin = h.margin_secs(run_id);
    assert!(margin > 0, "in time: {margin}s");
    eprintln!("30-minute storm, sync lane: 100 delivered, {margin}s before a 1 h deadline");
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_storm_on_the_batch_lane_waits_for_the_endpoint_instead_of_failing_over() {
    let h = harness("soft", "1h", 100, thirty_minute_storm()).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_delivered_once(100);
    assert_eq!(
        h.count("SELECT COUNT(*) FROM runs WHERE fallback_started_at IS NOT NULL"),
        0,
        "backpressure is not a reason to pay twice"
    );
    assert_eq!(h.count(Harness::SYNC_CALLS), 0);
    assert_eq!(
        h.count("SELECT COUNT(*) FROM batches WHERE provider_batch_id IS NOT NULL"),
        1,
        "one batch, created once"
    );
    assert_eq!(h.sim.stats().batches_created, 1);
    let creates = "SELECT COUNT(*) FROM attempts WHERE operation = 'create_batch'";
    let refused = h.count(&format!("{creates} AND http_status = 429"));
    assert!(refused >= 5, "the storm met the create again and again: {refused} refusals");
    assert_eq!(h.count(creates), refused + 1, "every create but the one that went through met the storm");
    let created_after = h.count(&since_t0("MIN(finished_at)", "operation = 'create_batch' AND error_type IS NULL"));
    assert!(created_after >= 600_000, "nothing got through the storm's first ten minutes: {created_after} ms");
    assert_eq!(
        h.count("SELECT COUNT(*) FROM attempts WHERE operation = 'list_batches'"),
        0,
        "a create refused with a 429 made nothing: it is sent again without a look at the provider's list"
    );
    assert_eq!(h.count(FAILED_OR_CHARGED), 0, "no request is marked failed");
    let margin = h.margin_secs(run_id);
    assert!(margin > 0, "in time: {margin}s");
    eprintln!("30-minute storm, batch lane: 100 delivered from one batch, {margin}s before a 1 h deadline");
    h.sim.shutdown().await;
}

/// A request handed to the sync lane while another is in flight gets a
/// worker of its own at once: found by the shutdown tests, where a run's
/// second request waited for the first (ten minutes) because the lane
/// counted the busy worker as one ready for the queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_behind_one_in_flight_is_sent_without_waiting_for_it() {
    // Sync calls take a minute of real time: the test ends long before any answers.
    let h = harness("realtime", "1h", 2, SimConfig { message_latency_ms: 60_000, ..SimConfig::default() }).await;
    let run = h.engine.start_run(&h.job, t0(), h.job.deadline_at(t0())).await.unwrap();
    let work = h.engine.store().call(move |s| s.sync_candidates(run.id, 3, 10)).await.unwrap();
    assert_eq!(work.len(), 2);
    let requests: Vec<orchestrator::lanes::SyncRequest> = work
        .into_iter()
        .map(|w| orchestrator::lanes::SyncRequest {
            run_id: run.id,
            custom_id: w.custom_id,
            params: w.params,
            provider: h.job.manifest.provider.clone(),
            model: h.job.model_id.clone(),
            betas: Vec::new(),
            attempts: w.attempts,
            max_attempts: 3,
        })
        .collect();
    let calls = || h.sim.stats().endpoint_calls.get("POST /v1/messages").copied().unwrap_or(0);
    let lane = h.engine.sync_lane();
    assert_eq!(lane.send(vec![requests[0].clone()]), 1);
    crate::support::wait_until("the first call in flight", std::time::Duration::from_secs(20), || calls() == 1).await;
    assert_eq!(lane.send(vec![requests[1].clone()]), 1);
    crate::support::wait_until("the second call in flight", std::time::Duration::from_secs(20), || calls() == 2).await;
    assert_eq!(h.sim.stats().messages_calls, 0, "while the first is still unanswered");
    // Not `sim.shutdown()`: it would wait a minute for the calls to be answered.
    lane.stop();
}

/// The provider's batch endpoints answer only 529s for an hour, so their
/// pace falls to one call a minute. A tick still never waits for them
/// more than a moment: a call the pace holds back waits for a later tick,
/// and the run's other work (its fallback here) goes on meanwhile. Found
/// by the failover test, where one tick waited four minutes for four
/// paced list calls and the run missed its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tick_never_waits_long_for_batch_endpoints_slowed_by_an_outage() {
    let sim = SimConfig { outage: Some("anthropic".into()), ..SimConfig::default() };
    let h = harness("batch", "2h", 20, sim).await;
    let run = h.engine.start_run(&h.job, t0(), h.job.deadline_at(t0())).await.unwrap();
    let _presence = h.clock.enter();
    let (mut ticks, mut longest) = (0, chrono::Duration::zero());
    while h.clock.now() < t0() + chrono::Duration::minutes(30) {
        let before = h.clock.now();
        let wake = h.engine.tick(Some(run.id)).await.unwrap();
        longest = longest.max(h.clock.now() - before);
        ticks += 1;
        h.clock.sleep(orchestrator::engine::until(h.clock.now(), wake)).await;
    }
    let pace = h.engine.batch_endpoints().iter().find(|e| e.provider == "anthropic").unwrap().pace_per_minute;
    assert_eq!(pace, 1.0, "the outage slowed the batch endpoints to their floor");
    let refused = h.count("SELECT COUNT(*) FROM attempts WHERE lane = 'batch' AND http_status = 529");
    assert!(refused >= 10, "the outage met the batch endpoints: {refused} refusals");
    // One paced wait (5 s) and 5 s of backpressure per call, a create and a poll at most.
    assert!(longest <= chrono::Duration::seconds(20), "the longest tick took {longest} of the clock");
    assert!(ticks >= 10, "the run was tended again and again: {ticks} ticks");
    eprintln!("outage of the batch endpoints: {ticks} ticks in 30 min, the longest {longest}, {refused} refusals");
    h.sim.shutdown().await;
}
