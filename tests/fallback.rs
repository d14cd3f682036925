//! The fallback engine on a manual clock: hours of deadline in milliseconds,
//! against the simulator on loopback following the same clock.

use std::time::Duration;

use orchestrator::sim::SimConfig;
use orchestrator::store::RunState;

use crate::support::api::Api;
use crate::support::harness::{Harness, harness, harness_on, t0};

pub const ITEMS: usize = 200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_never_ends_is_finished_by_the_sync_lane_before_the_deadline() {
    a_batch_that_never_ends(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_batch_that_never_ends_is_finished_by_the_sync_lane_before_the_deadline() {
    a_batch_that_never_ends(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_batch_that_never_ends_is_finished_by_the_sync_lane_before_the_deadline() {
    a_batch_that_never_ends(Api::Gemini).await;
}

async fn a_batch_that_never_ends(api: Api) {
    let h = harness_on(api, "batch", "4h", ITEMS, SimConfig { never_end: true, ..SimConfig::default() }).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    assert!(outcome.is_complete());
    h.assert_each_delivered_once();
    assert_eq!(h.count(Harness::SYNC_CALLS), ITEMS as i64, "one sync call per missing item, no more");
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE fallback_reason = 'deadline'"), 1);
    let margin = h.margin_secs(run_id);
    assert!(margin > 0, "finished {margin}s before the deadline");
    eprintln!("never-ending batch on {api:?}: finished {margin}s before a 4h deadline");
    h.settle_batches().await;
    assert_eq!(h.count("SELECT COUNT(*) FROM batches WHERE state = 'ended' AND cancel_requested_at IS NOT NULL"), 1);
    // Anthropic lists each canceled request; OpenAI's files and Gemini's output leave them out (missing is retryable).
    let canceled = if api == Api::Anthropic { ITEMS as i64 } else { 0 };
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE lane = 'batch' AND status = 'canceled'"), canceled);
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE lane = 'batch' AND status = 'succeeded'"), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE duplicate = 1"), 0);
    assert_eq!(api.stats(&h.sim).messages_calls, ITEMS as u64, "the sync calls went to {api:?}");
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_canceled_half_way_sends_only_the_other_half_to_the_sync_lane() {
    a_batch_canceled_half_way(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_batch_cancelled_half_way_sends_only_the_other_half_to_the_sync_lane() {
    a_batch_canceled_half_way(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_batch_cancelled_half_way_sends_all_of_it_to_the_sync_lane_as_its_cancel_keeps_nothing() {
    a_batch_canceled_half_way(Api::Gemini).await;
}

async fn a_batch_canceled_half_way(api: Api) {
    // The batch would take 7.6 h; the fallback fires about 3.8 h in.
    let sim = SimConfig { batch_median_secs: 27_360.0, batch_p95_secs: 27_360.0, ..SimConfig::default() };
    let h = harness_on(api, "batch", "4h", ITEMS, sim).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_each_delivered_once();
    let from_batch = h.ids("SELECT custom_id FROM results WHERE lane = 'batch' AND status = 'succeeded'");
    // What the batch did not finish: canceled lines (Anthropic), or in neither file (OpenAI).
    let canceled = ITEMS as i64 - from_batch.len() as i64;
    if api == Api::Gemini {
        // A cancelled Gemini job returns nothing (PROVIDERS.md 4.1): its finished half is sent again.
        assert!(from_batch.is_empty(), "a cancelled Gemini job has no results: {}", from_batch.len());
    } else {
        assert!((50..150).contains(&from_batch.len()), "about half finished in the batch: {}", from_batch.len());
    }
    if api == Api::Anthropic {
        let listed = h.count("SELECT COUNT(*) FROM results WHERE lane = 'batch' AND status = 'canceled'");
        assert_eq!(listed, canceled, "each unfinished request is listed as canceled");
    }
    assert_eq!(h.count(Harness::SYNC_CALLS), canceled, "only the canceled half went to the sync lane");
    let sent_sync = h.ids("SELECT DISTINCT custom_id FROM attempts WHERE lane = 'sync'");
    assert!(sent_sync.iter().all(|id| !from_batch.contains(id)), "nothing the batch finished was sent again");
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE duplicate = 1"), 0);
    eprintln!(
        "half-way batch on {api:?}: {} from the batch, {canceled} sync, {}s margin",
        from_batch.len(),
        h.margin_secs(run_id)
    );
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_ending_after_the_fallback_started_is_duplicate_spend_never_a_second_delivery() {
    a_batch_ending_after_the_fallback_started(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_batch_ending_after_the_fallback_started_is_duplicate_spend_never_a_second_delivery() {
    a_batch_ending_after_the_fallback_started(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_batch_ending_after_the_fallback_started_is_duplicate_spend_never_a_second_delivery() {
    a_batch_ending_after_the_fallback_started(Api::Gemini).await;
}

async fn a_batch_ending_after_the_fallback_started(api: Api) {
    // The cancel takes an hour to land: the sync lane stops waiting after its grace.
    // A Gemini job's cancel keeps nothing, so there the batch ends first (the cancel takes two hours).
    let cancel_secs = if api == Api::Gemini { 7200.0 } else { 3600.0 };
    let sim = SimConfig {
        batch_median_secs: 18_000.0,
        batch_p95_secs: 18_000.0,
        cancel_secs: Some(cancel_secs),
        ..SimConfig::default()
    };
    let h = harness_on(api, "batch", "4h", ITEMS, sim).await;
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
    eprintln!("late batch on {api:?}: {late} duplicate results recorded, {}s margin", h.margin_secs(run_id));
    assert_duplicate_spend_in_cost(&h, late);
    h.sim.shutdown().await;
}

/// `orchestrator cost` shows the duplicate spend the store holds: its count
/// and dollars in JSON, and the dollars in the table's total line.
fn assert_duplicate_spend_in_cost(h: &Harness, duplicates: i64) {
    let db = h.dir.path().join("state/orchestrator.db");
    let cost = |format: &str| {
        let output = crate::support::run(&[
            "cost",
            "--state",
            db.to_str().unwrap(),
            "--since",
            "2000-01-01",
            "--format",
            format,
        ]);
        assert!(output.status.success(), "{}", crate::support::stderr(&output));
        crate::support::stdout(&output)
    };
    let report: serde_json::Value = serde_json::from_str(&cost("json")).unwrap();
    let stored: f64 = h
        .db()
        .query_row("SELECT SUM(cost_micros) / 1e6 FROM results WHERE duplicate = 1", [], |row| row.get(0))
        .unwrap();
    assert!(stored > 0.0);
    assert_eq!(report["total"]["duplicates"], duplicates, "{report}");
    let shown = report["total"]["duplicate_usd"].as_f64().unwrap();
    assert!((shown - stored).abs() < 1e-9, "duplicate_usd {shown} = the store's {stored}");
    let table = cost("table");
    let total = table.lines().find(|line| line.starts_with("total")).expect("a total line");
    let last = total.split_whitespace().last().unwrap();
    assert_eq!(last, format!("${stored:.4}"), "the table's duplicate column: {total}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_cannot_be_created_falls_back_at_once() {
    a_batch_that_cannot_be_created(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_batch_that_cannot_be_created_falls_back_at_once() {
    a_batch_that_cannot_be_created(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_batch_that_cannot_be_created_falls_back_at_once() {
    a_batch_that_cannot_be_created(Api::Gemini).await;
}

async fn a_batch_that_cannot_be_created(api: Api) {
    let sim = SimConfig { batch_create_error_chance: 1.0, ..SimConfig::default() };
    let h = harness_on(api, "batch", "12h", ITEMS, sim).await;
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
    // Its intent is looked for a while longer (a lost answer's batch may show up late), then given up.
    h.settle_batches().await;
    assert_eq!(h.count("SELECT COUNT(*) FROM batches WHERE state = 'abandoned'"), 1);
    assert_eq!(h.sim.stats().batches_created, 0);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_storm_with_retry_after_still_meets_the_deadline() {
    a_429_storm_with_retry_after(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_429_storm_with_retry_after_still_meets_the_deadline() {
    a_429_storm_with_retry_after(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_429_storm_with_retry_after_still_meets_the_deadline() {
    a_429_storm_with_retry_after(Api::Gemini).await;
}

async fn a_429_storm_with_retry_after(api: Api) {
    let sim = SimConfig { rate_limit_chance: 0.5, retry_after_secs: 5, seed: 3, ..SimConfig::default() };
    let h = harness_on(api, "realtime", "30m", ITEMS, sim).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_each_delivered_once();
    let limited = h.count("SELECT COUNT(*) FROM attempts WHERE http_status = 429");
    assert!(limited > 50, "the storm hit: {limited} answers were 429");
    assert_eq!(h.count(Harness::SYNC_CALLS), ITEMS as i64, "each item succeeded once");
    assert_eq!(h.count("SELECT COUNT(*) FROM batches"), 0, "realtime work never touches the batch lane");
    assert_eq!(h.count("SELECT COUNT(*) FROM requests WHERE attempts > 0"), 0, "no 429 used up an attempt");
    eprintln!("429 storm on {api:?}: {limited} rate-limited answers, {}s before a 30m deadline", h.margin_secs(run_id));
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_too_close_for_a_batch_goes_straight_to_the_sync_lane() {
    // 150 items, 8 at a time, 2 s each: the sync lane needs 38 s of the 40.
    let h = harness("batch", "40s", 150, SimConfig::default()).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_delivered_once(150);
    assert_eq!(h.count("SELECT COUNT(*) FROM batches"), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE lane = 'sync' AND fallback_started_at IS NULL"), 1);
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind = 'routed_to_sync'"), 1);
    assert!(h.margin_secs(run_id) >= 0);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_the_sync_lane_could_not_finish_by_its_deadline_goes_to_the_batch() {
    // 400 items, 8 at a time, 2 s each: the sync lane needs 100 s, the deadline is in 60.
    let h = harness("soft", "60s", 400, SimConfig::default()).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    h.assert_delivered_once(400);
    assert_eq!(h.count(Harness::SYNC_CALLS), 0, "nothing paid at the sync price");
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind = 'routed_to_sync'"), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE fallback_started_at IS NOT NULL"), 0);
    assert!(h.margin_secs(run_id) >= 0);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_that_never_ends_is_taken_over_at_the_deadline_when_the_sync_lane_cannot_finish_before() {
    let h = harness("soft", "60s", 400, SimConfig { never_end: true, ..SimConfig::default() }).await;
    let (_, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Late, "late, but finished: {outcome:?}");
    assert_eq!((outcome.succeeded, outcome.delivered, outcome.gave_up), (400, 400, 0), "{outcome:?}");
    h.assert_delivered_once(400);
    assert_eq!(h.count(Harness::SYNC_CALLS), 400, "the sync lane finished what the batch did not");
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind = 'deadline_missed'"), 1, "and says it was late");
    let started: i64 =
        h.db().query_row("SELECT fallback_started_at - deadline_at FROM runs", [], |r| r.get(0)).unwrap();
    assert!((0..5000).contains(&started), "taken over at the deadline: {started} ms after it, {outcome:?}");
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_of_seconds_still_uses_the_batch_when_it_can() {
    // 20 items, a batch of about 3 s, a 60 s deadline: the batch lane does it all.
    let h = harness("soft", "60s", 20, SimConfig::default()).await;
    let deadline_at = t0() + chrono::Duration::seconds(60);
    let run = h.engine.start_run(&h.job, t0(), deadline_at).await.unwrap();
    let outcome =
        tokio::time::timeout(Duration::from_secs(60), h.engine.drive(run.id, async |_| Ok(()))).await.unwrap().unwrap();
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE lane = 'batch' AND status = 'succeeded'"), 20);
    assert_eq!(h.count(Harness::SYNC_CALLS), 0);
    let finished: i64 = h.db().query_row("SELECT finished_at FROM runs", [], |r| r.get(0)).unwrap();
    let took = (finished - t0().timestamp_millis()) as f64 / 1000.0;
    assert!(took < 30.0, "polling scaled to the short deadline: done after {took}s");
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_model_is_sent_to_the_batch_lane_and_the_fallback_uses_model() {
    let head = "schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 4h\nbatch_model: claude-sonnet-4-6\n";
    let sim = SimConfig { never_end: true, ..SimConfig::default() };
    let h = crate::support::harness::harness_at(head, 20, sim, t0()).await;
    let (_, outcome) = h.run().await;
    assert!(outcome.is_complete(), "{outcome:?}");
    let batch_models = h.ids("SELECT DISTINCT json_extract(params, '$.model') FROM request_bodies");
    assert_eq!(batch_models, ["claude-sonnet-4-6"], "requests were rendered for the batch lane");
    // The simulator answers with the model it was asked for: the sync fallback asked for `model`.
    let answered = h.ids("SELECT DISTINCT model FROM results WHERE lane = 'sync'");
    assert_eq!(answered, ["claude-haiku-4-5"]);
    h.sim.shutdown().await;
}

/// Issue 17's outage: Anthropic answers 529 to everything (its batch create
/// included), and the job names `failover: [gpt-4o-mini]`. The fallback
/// hands the run to the sync lane, which meets only 529s; once that has
/// lasted long enough, the missing requests go to OpenAI and land before
/// the deadline, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_of_the_jobs_provider_is_carried_by_its_failover_model_before_the_deadline() {
    let head = "schedule: { cron: '0 6 * * *' }\ntier: soft\ndeadline: 1h\nfailover: [gpt-4o-mini]\n";
    let sim = SimConfig { outage: Some("anthropic".into()), ..SimConfig::default() };
    let h = crate::support::harness::harness_at(head, ITEMS, sim, t0()).await;
    let (run_id, outcome) = h.run().await;
    assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    assert_eq!((outcome.succeeded, outcome.delivered), (ITEMS as u64, ITEMS as u64), "{outcome:?}");
    h.assert_each_delivered_once();
    let won = "SELECT COUNT(*) FROM requests q JOIN results r ON r.id = q.result_id";
    assert_eq!(h.count(&format!("{won} WHERE r.provider = 'openai' AND r.model = 'gpt-4o-mini'")), ITEMS as i64);
    assert_eq!(h.count("SELECT COUNT(*) FROM results WHERE provider = 'anthropic' AND status = 'succeeded'"), 0);
    assert_eq!(h.count("SELECT COUNT(*) FROM events WHERE kind = 'failover_started'"), 1);
    assert_eq!(
        h.count("SELECT COUNT(*) FROM runs WHERE failover_provider = 'openai' AND failover_model = 'gpt-4o-mini'"),
        1
    );
    assert_eq!(Api::OpenAi.stats(&h.sim).messages_calls, ITEMS as u64, "one OpenAI call per request, none twice");
    assert_eq!(Api::Anthropic.stats(&h.sim).messages_calls, 0, "Anthropic answered nothing");
    let outage = h.sim.stats().faults_injected.get("outage").copied().unwrap_or(0);
    assert!(outage >= 3, "the outage was met: {outage} calls refused");
    assert!(h.count("SELECT COUNT(*) FROM attempts WHERE lane = 'sync' AND http_status = 529") >= 3);
    let margin = h.margin_secs(run_id);
    assert!(margin > 0, "finished {margin}s before the deadline");
    // OpenAI's price: the cost is gpt-4o-mini's at the sync price.
    let (cost, sync): (i64, i64) = h
        .db()
        .query_row("SELECT SUM(cost_micros), SUM(sync_cost_micros) FROM results WHERE provider = 'openai'", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert!(cost > 0 && cost == sync, "failover answers are priced at the model's sync price: {cost} vs {sync}");
    let db = h.dir.path().join("state/orchestrator.db");
    let report_as = |format: &str| {
        let args = ["cost", "--state", db.to_str().unwrap(), "--since", "2000-01-01", "--format", format];
        crate::support::stdout(&crate::support::run(&args))
    };
    let report: serde_json::Value = serde_json::from_str(&report_as("json")).unwrap();
    let total = &report["total"];
    assert!((total["failover_usd"].as_f64().unwrap() - cost as f64 / 1e6).abs() < 1e-9, "{total}");
    assert_eq!(total["fallback_usd"].as_f64().unwrap(), 0.0, "failover spend is apart from fallback spend: {total}");
    let table = report_as("table");
    assert!(table.contains("failover to other providers $"), "{table}");
    eprintln!("outage: {outage} refused calls, failover to gpt-4o-mini, {margin}s before a 1h deadline");
    h.sim.shutdown().await;
}
