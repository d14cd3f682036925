//! `orchestrator run` against the simulator on loopback: faults, resubmission,
//! exactly-once delivery, and SIGKILL at every crash point.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use orchestrator::sim::{SimConfig, SimHandle};

use crate::support::api::Api;
use crate::support::db::count;
use crate::support::{code, stderr, stdout};

/// The instant the tests' runs are scheduled for: a minute ago, fixed for
/// the whole test process, so running again resumes the same run and a 12 h
/// deadline lies ahead whatever the machine's date (a fixed date in the past
/// made every run late once that day was over).
fn scheduled_for() -> &'static str {
    static AT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    AT.get_or_init(|| {
        let minute = chrono::DurationRound::duration_trunc(chrono::Utc::now(), chrono::Duration::minutes(1)).unwrap();
        (minute - chrono::Duration::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    })
}

/// A project with one job `bulk` over `items` items writing `out/bulk.jsonl`.
fn project(items: usize, extra: &str) -> tempfile::TempDir {
    project_on(Api::Anthropic, items, extra)
}

/// [`project`] with the job on `api` (OpenAI: `gpt-4o-mini`).
fn project_on(api: Api, items: usize, extra: &str) -> tempfile::TempDir {
    let dir = crate::support::project::empty();
    let head = "schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 12h\n";
    crate::support::project::write_job(dir.path(), "bulk", head, items, extra);
    let manifest = dir.path().join("jobs/bulk.yaml");
    std::fs::write(&manifest, api.rewrite(&std::fs::read_to_string(&manifest).unwrap())).unwrap();
    dir
}

/// The simulator an hour per real second, with batches of 20 to 40 minutes.
async fn simulator(config: SimConfig) -> SimHandle {
    crate::support::simulator(SimConfig {
        time_scale: 3600.0,
        batch_median_secs: 1200.0,
        batch_p95_secs: 2400.0,
        ..config
    })
    .await
}

/// Runs `orchestrator run bulk` in `dir` against `sim`, off the async workers.
async fn run_job(dir: &Path, sim: &SimHandle, failpoint: Option<&str>) -> Output {
    run_with(dir, sim, failpoint, &["--scheduled-for", scheduled_for()]).await
}

/// `orchestrator run bulk ARGS` in `dir` against `sim`.
async fn run_with(dir: &Path, sim: &SimHandle, failpoint: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command
        .args(["run", "bulk", "--state", "state/orchestrator.db", "--poll-interval", "1s"])
        .args(args)
        .current_dir(dir)
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
        .env("OPENAI_BASE_URL", format!("{}/v1", sim.base_url()))
        .env("OPENAI_API_KEY", "sk-test-not-a-real-key")
        .env("GOOGLE_GEMINI_BASE_URL", sim.base_url())
        .env("GEMINI_API_KEY", "gemini-test-not-a-real-key")
        .env_remove("GOOGLE_API_KEY")
        .env_remove("ORCHESTRATOR_FAILPOINT");
    if let Some(point) = failpoint {
        command.env("ORCHESTRATOR_FAILPOINT", point);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

/// custom_id → how many times it appears in the sink file.
fn delivered(dir: &Path) -> HashMap<String, usize> {
    crate::support::db::delivered(&dir.join("out/bulk.jsonl"))
}

fn batch_sizes(dir: &Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(dir.join("state/orchestrator.db")).unwrap();
    let mut statement =
        conn.prepare("SELECT request_count FROM batches WHERE provider_batch_id IS NOT NULL ORDER BY id").unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_items_with_faults_end_final_and_delivered_once() {
    faults_end_final_and_delivered_once(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_openai_items_with_faults_end_final_and_delivered_once() {
    faults_end_final_and_delivered_once(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_gemini_items_with_faults_end_final_and_delivered_once() {
    faults_end_final_and_delivered_once(Api::Gemini).await;
}

/// Errored, expired, invalid results, 429s, overloads and truncated
/// downloads over 10,000 requests on `api`.
async fn faults_end_final_and_delivered_once(api: Api) {
    let sim = simulator(SimConfig {
        errored_share: 0.05,
        expired_share: 0.02,
        invalid_share: 0.01,
        rate_limit_chance: 0.05,
        overloaded_chance: 0.03,
        truncate_results_chance: 0.3,
        retry_after_secs: 0,
        seed: 7,
        ..SimConfig::default()
    })
    .await;
    let dir = project_on(api, 10_000, "retry: { max_attempts: 2 }\n");
    let output = run_job(dir.path(), &sim, None).await;
    let stats = sim.stats();
    assert_eq!(code(&output), 4, "some requests fail for good: {}\n{}", stdout(&output), stderr(&output));
    let sizes = batch_sizes(dir.path());
    // Follow-ups go on while requests have attempts left: only a request's own
    // failures (`api_error`) use them up, not expiry or `overloaded_error`.
    assert!(sizes.len() >= 3, "one batch, then follow-ups: {sizes:?}");
    assert!(sizes.windows(2).all(|pair| pair[1] < pair[0]), "each follow-up is smaller: {sizes:?}");
    assert_eq!(sizes[0], 10_000);
    let delivered = delivered(dir.path());
    assert!(delivered.values().all(|n| *n == 1), "every result is delivered exactly once");
    let conn = rusqlite::Connection::open(dir.path().join("state/orchestrator.db")).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
    let retried_in_first = count(
        "SELECT COUNT(*) FROM results r JOIN batches b ON b.id = r.batch_id
         WHERE b.id = (SELECT MIN(id) FROM batches) AND (r.status IN ('expired', 'canceled') OR (r.status = 'errored' AND r.error_type != 'invalid_request_error'))",
    );
    // What the first batch's results left out (Gemini drops the requests it let expire) is retried too.
    let missing_in_first = count(
        "SELECT COUNT(*) FROM batch_requests q WHERE q.batch_id = (SELECT MIN(id) FROM batches)
         AND NOT EXISTS (SELECT 1 FROM results r WHERE r.batch_id = q.batch_id AND r.custom_id = q.custom_id)",
    );
    assert_eq!(
        sizes[1],
        retried_in_first + missing_in_first,
        "the follow-up batch holds exactly the retryable requests ({missing_in_first} without a result)"
    );
    if api != Api::Gemini {
        assert_eq!(missing_in_first, 0, "{api:?} names every request in its results");
    }
    let invalid = count("SELECT COUNT(*) FROM requests WHERE state = 'permanent_failed'");
    assert!(invalid > 0);
    let resubmitted_after_invalid = count(
        "SELECT COUNT(*) FROM results r JOIN batch_requests later ON later.custom_id = r.custom_id AND later.batch_id > r.batch_id
         WHERE r.error_type = 'invalid_request_error'",
    );
    assert_eq!(resubmitted_after_invalid, 0, "a request is never sent again after invalid_request_error");
    assert_eq!(
        count("SELECT COUNT(*) FROM requests WHERE state IN ('pending', 'queued', 'in_flight')"),
        0,
        "every request is final"
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM requests WHERE state = 'retryable_failed' AND attempts <> 2"),
        0,
        "a request is given up only when its own failures used up retry.max_attempts"
    );
    assert_eq!(
        count(
            "SELECT COUNT(*) FROM requests q WHERE q.attempts <> (SELECT COUNT(*) FROM results r
               WHERE r.custom_id = q.custom_id AND r.status = 'errored' AND r.error_type <> 'overloaded_error')"
        ),
        0,
        "the attempts used are the request's own errors received (api_error, invalid_request_error), nothing else"
    );
    let succeeded = count("SELECT COUNT(*) FROM requests WHERE state = 'succeeded'");
    assert_eq!(delivered.len() as i64, succeeded);
    assert!(stdout(&output).contains("invalid_request_error"), "{}", stdout(&output));
    assert_eq!(stats.custom_ids_submitted_more_than_once as i64, sizes[1], "only the retryable ones were sent twice");
    assert_eq!(stats.requests_received as i64, sizes.iter().sum::<i64>());
    // Every provider call is in the attempts log, failures with their status.
    let injected = |key: &str| stats.faults_injected.get(key).copied().unwrap_or(0) as i64;
    let breakdown: Vec<(String, Option<i64>, Option<String>, i64)> = conn
        .prepare("SELECT operation, http_status, error_type, COUNT(*) FROM attempts GROUP BY 1, 2, 3")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let faults = &stats.faults_injected;
    assert!(injected("429") + injected("529") > 0, "the run met injected faults");
    assert_eq!(
        count("SELECT COUNT(*) FROM attempts WHERE http_status = 429"),
        injected("429"),
        "{breakdown:?} vs {faults:?}"
    );
    let overloaded = format!("SELECT COUNT(*) FROM attempts WHERE http_status = {}", api.overloaded_status());
    assert_eq!(count(&overloaded), injected("529"), "{breakdown:?} vs {faults:?}");
    assert_eq!(
        count("SELECT COUNT(*) FROM attempts WHERE error_type = 'malformed_response'"),
        injected("truncated_results")
    );
    assert_eq!(
        count("SELECT COUNT(*) FROM attempts WHERE operation = 'create_batch' AND error_type IS NULL"),
        sizes.len() as i64
    );
    assert_eq!(api.stats(&sim).batches_created, sizes.len() as u64, "every batch went to {api:?}");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_again_resumes_instead_of_starting_over() {
    let sim = simulator(SimConfig::default()).await;
    let dir = project(25, "");
    let first = run_job(dir.path(), &sim, None).await;
    assert_eq!(code(&first), 0, "{}", stderr(&first));
    let second = run_job(dir.path(), &sim, None).await;
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert_eq!(stdout(&first), stdout(&second));
    assert_eq!(sim.stats().batches_created, 1);
    assert_eq!(delivered(dir.path()).len(), 25);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_sink_path_is_rendered_for_the_run() {
    let sim = simulator(SimConfig::default()).await;
    let dir = project(3, "");
    let manifest = dir.path().join("jobs/bulk.yaml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("out/bulk.jsonl", "'out/{{ run.date }}/{{ job.name }}.jsonl'");
    std::fs::write(&manifest, text).unwrap();
    let output = run_job(dir.path(), &sim, None).await;
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let date = &scheduled_for()[..10];
    let written = std::fs::read_to_string(dir.path().join(format!("out/{date}/bulk.jsonl")))
        .expect("the rendered path was written");
    assert_eq!(written.lines().count(), 3);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_crash_point_loses_and_duplicates_nothing() {
    sigkill_at_every_crash_point(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_crash_point_of_an_openai_run_loses_and_duplicates_nothing() {
    sigkill_at_every_crash_point(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_crash_point_of_a_gemini_run_loses_and_duplicates_nothing() {
    sigkill_at_every_crash_point(Api::Gemini).await;
}

async fn sigkill_at_every_crash_point(api: Api) {
    for point in orchestrator::failpoint::POINTS {
        let sim = simulator(SimConfig { seed: 3, ..SimConfig::default() }).await;
        // More items than one ingest chunk, so `mid_ingest` is reached.
        let dir = project_on(api, 4500, "");
        let crashed = run_job(dir.path(), &sim, Some(point)).await;
        assert_eq!(crashed.status.code(), None, "{point}: the process was killed by a signal\n{}", stderr(&crashed));
        let resumed = run_job(dir.path(), &sim, None).await;
        assert_eq!(code(&resumed), 0, "{point}: {}\n{}", stdout(&resumed), stderr(&resumed));
        let delivered = delivered(dir.path());
        assert_eq!(delivered.len(), 4500, "{point}: nothing lost");
        assert!(delivered.values().all(|n| *n == 1), "{point}: nothing delivered twice");
        let stats = sim.stats();
        assert_eq!(stats.custom_ids_submitted_more_than_once, 0, "{point}: nothing submitted twice");
        assert_eq!(stats.batches_created, 1, "{point}");
        assert_eq!(api.stats(&sim).batches_created, 1, "{point}: at {api:?}");
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_its_budget_skips_exits_6_and_sends_nothing() {
    let dir = project(5, "budget: { monthly_usd: 0.000001, on_budget: skip }\n");
    let sim = simulator(SimConfig::default()).await;
    let output = run_job(dir.path(), &sim, None).await;
    assert_eq!(output.status.code(), Some(6), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("skipped"), "{}", String::from_utf8_lossy(&output.stdout));
    assert_eq!(sim.stats().batches_created, 0);
    assert!(!dir.path().join("out/bulk.jsonl").exists(), "nothing was delivered");
    let conn = rusqlite::Connection::open(dir.path().join("state/orchestrator.db")).unwrap();
    let stored: i64 = conn.query_row("SELECT COUNT(*) FROM requests", [], |row| row.get(0)).unwrap();
    assert_eq!(stored, 0, "a skipped run keeps no requests");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_whose_answer_is_lost_adopts_the_batch_instead_of_creating_it_twice() {
    lost_create_is_adopted(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_openai_create_whose_answer_is_lost_adopts_the_batch_by_its_metadata() {
    lost_create_is_adopted(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gemini_create_whose_answer_is_lost_adopts_the_batch_by_its_display_name() {
    lost_create_is_adopted(Api::Gemini).await;
}

async fn lost_create_is_adopted(api: Api) {
    let dir = project_on(api, 50, "");
    let sim = simulator(SimConfig { create_answer_lost_chance: 1.0, ..SimConfig::default() }).await;
    let output = run_job(dir.path(), &sim, None).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stats = sim.stats();
    assert_eq!(stats.faults_injected.get("create_answer_lost"), Some(&1), "{stats:?}");
    assert_eq!(stats.batches_created, 1, "the retry found the batch the lost answer created");
    assert_eq!(api.stats(&sim).batches_created, 1, "at {api:?}");
    assert_eq!(stats.custom_ids_submitted_more_than_once, 0);
    assert_eq!(delivered(dir.path()).len(), 50);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_again_after_a_failing_sink_resumes_the_open_run_and_pays_nothing_twice() {
    let sim = simulator(SimConfig::default()).await;
    let dir = project(20, "");
    let manifest = dir.path().join("jobs/bulk.yaml");
    let working = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(
        &manifest,
        working.replace("sink: { jsonl: out/bulk.jsonl }", "sink: { command: 'cat > /dev/null; exit 3' }"),
    )
    .unwrap();
    // No --scheduled-for: `run` picks the instant, as a user's cron would.
    let mut first = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "bulk", "--poll-interval", "1s"])
        .current_dir(dir.path())
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let failing = "SELECT COUNT(*) FROM runs WHERE delivery_failing_since IS NOT NULL";
    let start = std::time::Instant::now();
    while count(dir.path(), failing) < 1 {
        assert!(start.elapsed() < std::time::Duration::from_secs(60), "the sink never failed");
        assert!(first.try_wait().unwrap().is_none(), "run keeps retrying a failing sink instead of exiting");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM requests WHERE state = 'succeeded'"), 20, "paid for and stored");
    // The user fixes the sink and runs the same command a minute (or a day) later.
    std::fs::write(&manifest, &working).unwrap();
    let mut again = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    again.args(["run", "bulk", "--poll-interval", "1s"]).current_dir(dir.path());
    again.env("ANTHROPIC_BASE_URL", sim.base_url()).env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key");
    let second = tokio::task::spawn_blocking(move || again.output().unwrap()).await.unwrap();
    assert_eq!(code(&second), 0, "{}", stderr(&second));
    assert!(stderr(&second).contains("resuming run bulk-"), "it says which run it resumes: {}", stderr(&second));
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM runs"), 1, "no second run");
    assert_eq!(sim.stats().batches_created, 1, "nothing was paid for twice");
    assert_eq!(sim.stats().requests_received, 20);
    let once = delivered(dir.path());
    assert_eq!(once.len(), 20);
    assert!(once.values().all(|n| *n == 1));
    // --new starts a fresh run even though one of this minute may exist.
    let mut fresh = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    fresh.args(["run", "bulk", "--new", "--poll-interval", "1s"]).current_dir(dir.path());
    fresh.env("ANTHROPIC_BASE_URL", sim.base_url()).env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key");
    let third = tokio::task::spawn_blocking(move || fresh.output().unwrap()).await.unwrap();
    assert_eq!(code(&third), 0, "{}", stderr(&third));
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM runs"), 2, "--new made a second run");
    assert_eq!(count(dir.path(), "SELECT COUNT(DISTINCT run_key) FROM runs"), 2);
    assert_eq!(delivered(dir.path()).len(), 40, "with its own custom_ids");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_scheduled_inside_the_repeated_hour_gets_its_own_ids() {
    let sim = simulator(SimConfig::default()).await;
    let dir = project(2, "");
    let manifest = dir.path().join("jobs/bulk.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace(
        "schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 12h",
        "schedule: { cron: '0 * * * *', timezone: Europe/Berlin }\ntier: realtime\ndeadline: 10m",
    );
    std::fs::write(&manifest, text).unwrap();
    // 02:00 CEST, then 02:00 CET an hour later: both passes of 2026-10-25's repeated hour.
    for instant in ["2026-10-25T00:00:00Z", "2026-10-25T01:00:00Z"] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
        command.args(["run", "bulk", "--scheduled-for", instant, "--deadline", "1000d"]).current_dir(dir.path());
        command.env("ANTHROPIC_BASE_URL", sim.base_url()).env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key");
        let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
        assert_eq!(code(&output), 0, "{instant}: {}", stderr(&output));
    }
    let mut ids: Vec<String> = delivered(dir.path()).into_keys().collect();
    ids.sort();
    assert_eq!(
        ids,
        ["bulk-20261025T0200-001", "bulk-20261025T0200-002", "bulk-20261025T0200B-001", "bulk-20261025T0200B-002"]
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_storm_on_a_two_minute_window_delivers_everything_in_time() {
    // Issue 14's storm as a user meets it, on real time: batches never end,
    // 30% of calls answer 429 with retry-after 1, a soft job of 200 items due in 120 s.
    let sim = orchestrator::sim::start(SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        never_end: true,
        rate_limit_chance: 0.3,
        retry_after_secs: 1,
        seed: 14,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = project(200, "");
    let manifest = dir.path().join("jobs/bulk.yaml");
    let text =
        std::fs::read_to_string(&manifest).unwrap().replace("tier: batch\ndeadline: 12h", "tier: soft\ndeadline: 120s");
    std::fs::write(&manifest, text).unwrap();
    // Scheduled for now to the second, so the whole 120 s window lies ahead.
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command.args(["run", "bulk", "--scheduled-for", &now]).current_dir(dir.path());
    command.env("ANTHROPIC_BASE_URL", sim.base_url()).env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    assert_eq!(code(&output), 0, "completed in time: {}\n{}", stdout(&output), stderr(&output));
    assert!(
        stdout(&output).contains("completed (200 requests, 200 succeeded, 200 delivered, 0 failed, 0 batches)"),
        "{}",
        stdout(&output)
    );
    assert!(stderr(&output).contains("routed to the sync lane"), "W021's word holds: {}", stderr(&output));
    let limited = count(dir.path(), "SELECT COUNT(*) FROM attempts WHERE http_status = 429");
    assert!(limited >= 40, "the storm hit: {limited}");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM requests WHERE attempts > 0"), 0, "no 429 used up an attempt");
    let margin = count(dir.path(), "SELECT (deadline_at - finished_at) / 1000 FROM runs");
    eprintln!("storm as a process: 200 delivered, {limited} 429s, {margin}s before the deadline");
    assert_eq!(delivered(dir.path()).len(), 200);
    sim.shutdown().await;
}

/// A run whose batch never ends and whose fallback starts about 5 s in: a
/// 50 s deadline (a 5 s margin), and a sync lane of one call at a time
/// planned at 1 s per call (40 s for 40 requests) that is in fact instant.
fn falling_back(api: Api) -> tempfile::TempDir {
    let dir = project_on(api, 40, "");
    crate::support::project::write_config(
        dir.path(),
        "fallback: { assumed_sync_latency: 1s, assumed_batch_turnaround: 2s }\nbatch: { poll_initial: 1s }\n\
         sync: { concurrency: 1 }\n",
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_point_of_the_fallback_loses_and_duplicates_nothing() {
    sigkill_at_every_point_of_the_fallback(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_point_of_an_openai_fallback_loses_and_duplicates_nothing() {
    sigkill_at_every_point_of_the_fallback(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_point_of_a_gemini_fallback_loses_and_duplicates_nothing() {
    sigkill_at_every_point_of_the_fallback(Api::Gemini).await;
}

async fn sigkill_at_every_point_of_the_fallback(api: Api) {
    for point in orchestrator::failpoint::FALLBACK_POINTS {
        // Scheduled for now, so the whole minute lies ahead.
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let args = ["--scheduled-for", &now, "--deadline", "50s", "--config", "orchestrator.yaml"];
        let sim = crate::support::simulator(SimConfig { never_end: true, ..SimConfig::default() }).await;
        let dir = falling_back(api);
        let crashed = run_with(dir.path(), &sim, Some(point), &args).await;
        assert_eq!(crashed.status.code(), None, "{point}: killed by a signal\n{}", stderr(&crashed));
        assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM runs WHERE fallback_started_at IS NOT NULL"), 1, "{point}");
        let resumed = run_with(dir.path(), &sim, None, &args).await;
        assert_eq!(code(&resumed), 0, "{point}: {}\n{}", stdout(&resumed), stderr(&resumed));
        let delivered = delivered(dir.path());
        assert_eq!(delivered.len(), 40, "{point}: nothing lost");
        assert!(delivered.values().all(|n| *n == 1), "{point}: nothing delivered twice");
        let stats = sim.stats();
        assert_eq!(stats.batches_created, 1, "{point}: the batch was never submitted again");
        assert_eq!(stats.custom_ids_submitted_more_than_once, 0, "{point}");
        let stored = count(dir.path(), "SELECT COUNT(*) FROM results WHERE lane = 'sync' AND status = 'succeeded'");
        assert_eq!(stored, 40, "{point}: one sync result per request, none twice");
        // One call at a time: a kill as a result is stored leaves no paid call unrecorded.
        assert_eq!(stats.messages_calls, 40, "{point}: each request paid for once on the sync lane");
        assert_eq!(api.stats(&sim).messages_calls, 40, "{point}: at {api:?}");
        assert_eq!(
            count(dir.path(), "SELECT COUNT(*) FROM batches WHERE cancel_requested_at IS NOT NULL"),
            1,
            "{point}"
        );
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_a_follow_up_batch_resumes_it_instead_of_submitting_it_again() {
    sigkill_after_a_follow_up_batch(Api::Anthropic).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_an_openai_follow_up_batch_resumes_it_instead_of_submitting_it_again() {
    sigkill_after_a_follow_up_batch(Api::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_a_gemini_follow_up_batch_resumes_it_instead_of_submitting_it_again() {
    sigkill_after_a_follow_up_batch(Api::Gemini).await;
}

async fn sigkill_after_a_follow_up_batch(api: Api) {
    // A fifth of the first batch expires: the expired ones go out again in a follow-up batch.
    let sim = simulator(SimConfig { expired_share: 0.2, seed: 5, ..SimConfig::default() }).await;
    let dir = project_on(api, 50, "");
    let crashed = run_job(dir.path(), &sim, Some(orchestrator::failpoint::FOLLOW_UP_POINT)).await;
    assert_eq!(crashed.status.code(), None, "killed by a signal\n{}", stderr(&crashed));
    let sizes = batch_sizes(dir.path());
    assert_eq!(sizes.len(), 2, "the batch and its follow-up: {sizes:?}");
    let resumed = run_job(dir.path(), &sim, None).await;
    assert_eq!(code(&resumed), 0, "{}\n{}", stdout(&resumed), stderr(&resumed));
    let after = batch_sizes(dir.path());
    assert_eq!(after[..2], sizes, "the follow-up was resumed, not submitted again");
    let stats = sim.stats();
    assert_eq!(stats.batches_created as usize, after.len(), "later batches hold what expired again: {after:?}");
    assert_eq!(stats.custom_ids_submitted_more_than_once as i64, sizes[1], "only the expired ones went out twice");
    let delivered = delivered(dir.path());
    assert_eq!(delivered.len(), 50);
    assert!(delivered.values().all(|n| *n == 1));
    sim.shutdown().await;
}

/// Issue 17's outage on the real process: Anthropic is down, the job names
/// `failover: [gpt-4o-mini]`, and the process is killed right after the
/// failover is committed. Run again, it carries on with OpenAI: every
/// request delivered once, each paid once at OpenAI, none by Anthropic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_after_a_failover_resumes_on_the_failover_model() {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let args = ["--scheduled-for", &now, "--deadline", "120s", "--config", "orchestrator.yaml"];
    let sim = crate::support::simulator(SimConfig { outage: Some("anthropic".into()), ..SimConfig::default() }).await;
    // Planned at 30 s a call, one at a time, no batch can help: the run goes
    // to the sync lane at once, meets the outage, and fails over.
    let dir = project_on(Api::Anthropic, 40, "");
    crate::support::project::write_config(
        dir.path(),
        "fallback: { assumed_sync_latency: 30s, assumed_batch_turnaround: 1h }\nsync: { concurrency: 1 }\n",
    );
    let manifest = dir.path().join("jobs/bulk.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap() + "failover: [gpt-4o-mini]\n";
    std::fs::write(&manifest, text).unwrap();
    let crashed = run_with(dir.path(), &sim, Some(orchestrator::failpoint::FAILOVER_POINT), &args).await;
    assert_eq!(crashed.status.code(), None, "killed by a signal\n{}", stderr(&crashed));
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM runs WHERE failover_provider = 'openai'"), 1);
    let resumed = run_with(dir.path(), &sim, None, &args).await;
    assert_eq!(code(&resumed), 0, "{}\n{}", stdout(&resumed), stderr(&resumed));
    let delivered = delivered(dir.path());
    assert_eq!(delivered.len(), 40, "nothing lost");
    assert!(delivered.values().all(|n| *n == 1), "nothing delivered twice");
    assert_eq!(Api::OpenAi.stats(&sim).messages_calls, 40, "each request paid for once, at OpenAI");
    assert_eq!(Api::Anthropic.stats(&sim).messages_calls, 0);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM events WHERE kind = 'failover_started'"), 1);
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM runs WHERE state = 'completed'"), 1, "before its deadline");
    sim.shutdown().await;
}
