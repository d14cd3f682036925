//! `orchestrator run` against the simulator on loopback: faults, resubmission,
//! exactly-once delivery, and SIGKILL at every crash point.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use orchestrator::sim::{SimConfig, SimHandle};
use serde_json::Value;

use crate::support::{code, stderr, stdout};

const SCHEDULED_FOR: &str = "2026-11-22T06:00:00Z";

/// A project with one job `bulk` over `items` items writing `out/bulk.jsonl`.
fn project(items: usize, extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    std::fs::create_dir_all(dir.path().join("prompts")).unwrap();
    let lines: String = (0..items).map(|i| format!("{{\"id\":{i},\"text\":\"item number {i}\"}}\n")).collect();
    std::fs::write(dir.path().join("items.jsonl"), lines).unwrap();
    let manifest = format!(
        "schedule: {{ cron: '0 6 * * *' }}\ntier: batch\ndeadline: 12h\nmodel: claude-haiku-4-5\nmax_tokens: 64\n\
         prompt: {{ inline: 'Label {{{{ item.text }}}}' }}\nitems: {{ jsonl: items.jsonl }}\nsink: {{ jsonl: out/bulk.jsonl }}\n{extra}"
    );
    std::fs::write(dir.path().join("jobs/bulk.yaml"), manifest).unwrap();
    dir
}

async fn simulator(config: SimConfig) -> SimHandle {
    let config = SimConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        time_scale: 3600.0,
        batch_median_secs: 1200.0,
        batch_p95_secs: 2400.0,
        ..config
    };
    orchestrator::sim::start(config).await.expect("the simulator starts")
}

/// Runs `orchestrator run bulk` in `dir` against `sim`, off the async workers.
async fn run_job(dir: &Path, sim: &SimHandle, failpoint: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command
        .args([
            "run",
            "bulk",
            "--state",
            "state/orchestrator.db",
            "--scheduled-for",
            SCHEDULED_FOR,
            "--poll-interval",
            "1s",
        ])
        .current_dir(dir)
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
        .env_remove("ORCHESTRATOR_FAILPOINT");
    if let Some(point) = failpoint {
        command.env("ORCHESTRATOR_FAILPOINT", point);
    }
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

/// custom_id → how many times it appears in the sink file.
fn delivered(dir: &Path) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    let text = std::fs::read_to_string(dir.join("out/bulk.jsonl")).unwrap_or_default();
    for line in text.lines() {
        let value: Value = serde_json::from_str(line).unwrap();
        *seen.entry(value["custom_id"].as_str().unwrap().to_owned()).or_insert(0) += 1;
    }
    seen
}

fn batch_sizes(dir: &Path) -> Vec<i64> {
    let conn = rusqlite::Connection::open(dir.join("state/orchestrator.db")).unwrap();
    let mut statement =
        conn.prepare("SELECT request_count FROM batches WHERE provider_batch_id IS NOT NULL ORDER BY id").unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_items_with_faults_end_final_and_delivered_once() {
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
    let dir = project(10_000, "retry: { max_attempts: 2 }\n");
    let output = run_job(dir.path(), &sim, None).await;
    let stats = sim.stats();
    assert_eq!(code(&output), 4, "some requests fail for good: {}\n{}", stdout(&output), stderr(&output));
    let sizes = batch_sizes(dir.path());
    assert_eq!(sizes.len(), 2, "one batch, then one follow-up: {sizes:?}");
    assert_eq!(sizes[0], 10_000);
    let delivered = delivered(dir.path());
    assert!(delivered.values().all(|n| *n == 1), "every result is delivered exactly once");
    let conn = rusqlite::Connection::open(dir.path().join("state/orchestrator.db")).unwrap();
    let count = |sql: &str| -> i64 { conn.query_row(sql, [], |row| row.get(0)).unwrap() };
    let retried_in_first = count(
        "SELECT COUNT(*) FROM results r JOIN batches b ON b.id = r.batch_id
         WHERE b.id = (SELECT MIN(id) FROM batches) AND (r.status IN ('expired', 'canceled') OR (r.status = 'errored' AND r.error_type != 'invalid_request_error'))",
    );
    assert_eq!(sizes[1], retried_in_first, "the follow-up batch holds exactly the retryable requests");
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
    let succeeded = count("SELECT COUNT(*) FROM requests WHERE state = 'succeeded'");
    assert_eq!(delivered.len() as i64, succeeded);
    assert!(stdout(&output).contains("invalid_request_error"), "{}", stdout(&output));
    assert_eq!(stats.custom_ids_submitted_more_than_once as i64, sizes[1], "only the retryable ones were sent twice");
    assert_eq!(stats.requests_received as i64, 10_000 + sizes[1]);
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
    assert_eq!(count("SELECT COUNT(*) FROM attempts WHERE http_status = 529"), injected("529"));
    assert_eq!(
        count("SELECT COUNT(*) FROM attempts WHERE error_type = 'malformed_response'"),
        injected("truncated_results")
    );
    assert_eq!(count("SELECT COUNT(*) FROM attempts WHERE operation = 'create_batch' AND error_type IS NULL"), 2);
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
    let written =
        std::fs::read_to_string(dir.path().join("out/2026-11-22/bulk.jsonl")).expect("the rendered path was written");
    assert_eq!(written.lines().count(), 3);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_crash_point_loses_and_duplicates_nothing() {
    for point in orchestrator::failpoint::POINTS {
        let sim = simulator(SimConfig { seed: 3, ..SimConfig::default() }).await;
        // More items than one ingest chunk, so `mid_ingest` is reached.
        let dir = project(4500, "");
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
    let dir = project(50, "");
    let sim = simulator(SimConfig { create_answer_lost_chance: 1.0, ..SimConfig::default() }).await;
    let output = run_job(dir.path(), &sim, None).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stats = sim.stats();
    assert_eq!(stats.faults_injected.get("create_answer_lost"), Some(&1), "{stats:?}");
    assert_eq!(stats.batches_created, 1, "the retry found the batch the lost answer created");
    assert_eq!(stats.custom_ids_submitted_more_than_once, 0);
    assert_eq!(delivered(dir.path()).len(), 50);
    sim.shutdown().await;
}
