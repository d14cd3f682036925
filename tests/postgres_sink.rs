//! The postgres sink against a real PostgreSQL server (the throwaway cluster
//! `.ci/postgres` starts; its URL in `ORCHESTRATOR_TEST_DATABASE_URL`):
//! results land once per custom_id across a crash between the write and its
//! record, and a server that refuses keeps them stored, with no password in
//! the log or the state, until it accepts.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use orchestrator::sim::{SimConfig, SimHandle};

use crate::support::db::count;
use crate::support::{simulator, skip, wait_until};

const ITEMS: i64 = 200;

/// The test server's URL, or `None` (the test is reported skipped).
fn server() -> Option<String> {
    let url = std::env::var("ORCHESTRATOR_TEST_DATABASE_URL").ok().filter(|url| !url.is_empty());
    if url.is_none() {
        skip(
            "no PostgreSQL server: run `bash .ci/postgres start` and set ORCHESTRATOR_TEST_DATABASE_URL to the URL it prints",
        );
    }
    url
}

/// A table name no other test uses.
fn fresh_table(test: &str) -> String {
    format!("{test}_{}_{}", std::process::id(), chrono::Utc::now().timestamp_micros())
}

fn project(table: &str) -> tempfile::TempDir {
    let dir = crate::support::project::empty();
    let head = "schedule: { cron: '0 6 * * *' }\ntier: batch\ndeadline: 12h\n";
    crate::support::project::write_job(dir.path(), "bulk", head, ITEMS as usize, "");
    let manifest = dir.path().join("jobs/bulk.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let text = text.replace("sink: { jsonl: out/bulk.jsonl }", &format!("sink: {{ postgres: {{ table: {table} }} }}"));
    std::fs::write(&manifest, text).unwrap();
    dir
}

/// The instant the tests' runs are for (the last whole minute), and the run's key.
fn instant() -> (String, String) {
    let minute = chrono::DurationRound::duration_trunc(chrono::Utc::now(), chrono::Duration::minutes(1)).unwrap();
    (minute.to_rfc3339_opts(chrono::SecondsFormat::Secs, true), format!("bulk-{}", minute.format("%Y%m%dT%H%M")))
}

/// `orchestrator run bulk` for `at` against `sim`, delivering to the database at `url`.
fn run(dir: &Path, sim: &SimHandle, url: &str, at: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_orchestrator"));
    command
        .args(["run", "bulk", "--scheduled-for", at, "--poll-interval", "1s"])
        .current_dir(dir)
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
        .env("ORCHESTRATOR_DATABASE_URL", url)
        .env_remove("ORCHESTRATOR_FAILPOINT");
    command
}

async fn output(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap()
}

/// Rows of `table`: how many, how many distinct custom_ids, how many whose
/// stored result names its own custom_id and run and has a text.
async fn rows(url: &str, table: &str, run_key: &str) -> (i64, i64, i64) {
    let (url, table, run_key) = (url.to_owned(), table.to_owned(), run_key.to_owned());
    tokio::task::spawn_blocking(move || count_rows(&url, &table, &run_key)).await.unwrap()
}

fn count_rows(url: &str, table: &str, run_key: &str) -> (i64, i64, i64) {
    let mut client = postgres::Client::connect(url, postgres::NoTls).unwrap();
    let row = client
        .query_one(
            &format!(
                "SELECT COUNT(*), COUNT(DISTINCT custom_id),
                        COUNT(*) FILTER (WHERE result->>'custom_id' = custom_id
                                           AND result->>'run' = $1 AND text <> '')
                   FROM \"{table}\""
            ),
            &[&run_key],
        )
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_killed_after_its_round_reached_the_table_leaves_one_row_per_result() {
    let Some(url) = server() else { return };
    let table = fresh_table("killed");
    let sim = simulator(SimConfig { batch_median_secs: 1.0, batch_p95_secs: 2.0, ..SimConfig::default() }).await;
    let dir = project(&table);
    let (at, key) = instant();
    let mut crashing = run(dir.path(), &sim, &url, &at);
    crashing.env("ORCHESTRATOR_FAILPOINT", "after_sink_write");
    let crashed = output(crashing).await;
    assert_eq!(crashed.status.code(), None, "killed at the failpoint: {}", String::from_utf8_lossy(&crashed.stderr));
    assert_eq!(rows(&url, &table, &key).await, (ITEMS, ITEMS, ITEMS), "the round reached the table before the kill");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM deliveries"), 0, "and was not recorded");

    let resumed = output(run(dir.path(), &sim, &url, &at)).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(rows(&url, &table, &key).await, (ITEMS, ITEMS, ITEMS), "written again, still one row per custom_id");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM deliveries"), ITEMS);
    assert_eq!(sim.stats().batches_created, 1);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_refuses_keeps_the_results_stored_and_the_password_out_of_sight() {
    let Some(url) = server() else { return };
    let table = fresh_table("refused");
    let sim = simulator(SimConfig { batch_median_secs: 1.0, batch_p95_secs: 2.0, ..SimConfig::default() }).await;
    let dir = project(&table);
    let (at, key) = instant();
    // The right server, a database that is not there, and a password that must not leak.
    let (base, _) = url.rsplit_once('/').unwrap();
    let wrong = format!("{}/no_such_database", base.replace("postgres@", "postgres:hunter2-secret@"));
    let log = dir.path().join("run.log");
    let mut first = run(dir.path(), &sim, &wrong, &at);
    let mut failing =
        first.stdout(Stdio::null()).stderr(Stdio::from(std::fs::File::create(&log).unwrap())).spawn().unwrap();
    let failing_sql = "SELECT COUNT(*) FROM runs WHERE delivery_failing_since IS NOT NULL";
    wait_until("a failed delivery", Duration::from_secs(60), || count(dir.path(), failing_sql) == 1).await;
    failing.kill().unwrap();
    failing.wait().unwrap();
    let error: String = rusqlite::Connection::open(dir.path().join("state/orchestrator.db"))
        .unwrap()
        .query_row("SELECT delivery_error FROM runs", [], |row| row.get(0))
        .unwrap();
    assert!(error.contains("no_such_database"), "the error says what failed: {error}");
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!error.contains("hunter2") && !logged.contains("hunter2"), "no password in the state or the log");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM results"), ITEMS, "every result stays stored");

    let resumed = output(run(dir.path(), &sim, &url, &at)).await;
    assert_eq!(resumed.status.code(), Some(0), "{}", String::from_utf8_lossy(&resumed.stderr));
    assert_eq!(rows(&url, &table, &key).await, (ITEMS, ITEMS, ITEMS));
    assert_eq!(sim.stats().batches_created, 1, "nothing was paid for twice");
    sim.shutdown().await;
}
