//! `serve --standby` as real processes on one state database: the standby
//! serves the dashboard, the JSON API and the enqueue endpoint while another
//! process leads, takes over when the leader is killed, and finishes its
//! work with nothing lost or done twice.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use orchestrator::sim::SimConfig;
use serde_json::{Value, json};

use crate::support::db::{count, delivered};
use crate::support::process::{serve_command, signal, wait_exit};
use crate::support::project::{ITEMS, three_items, two_jobs};
use crate::support::{project, simulator_on, wait_until};

const TOKEN: &str = "standby-test-token";

/// `serve ARGS` in `dir` with the API token, logging to `log` (the
/// daemon's loop at debug, for its evidence).
fn serve(dir: &Path, base_url: &str, args: &[&str], log: &Path) -> Child {
    serve_command(dir, base_url, args)
        .env("ORCHESTRATOR_API_TOKEN", TOKEN)
        .env("ORCHESTRATOR_LOG", "info,orchestrator::daemon=debug")
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

fn logged(log: &Path, text: &str) -> bool {
    std::fs::read_to_string(log).unwrap_or_default().contains(text)
}

/// SIGTERM to `child`, which must exit 0 (its log, `log`, says why not).
async fn stop_cleanly(child: Child, log: &Path) {
    signal(&child, "TERM");
    let (code, _) = wait_exit(child, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", std::fs::read_to_string(log).unwrap_or_default());
}

/// The address a process logged in its `serving` line.
fn listen_address(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap();
    let line = text.lines().find(|line| line.contains(" serving")).expect("a serving line");
    let field = line.split_whitespace().find_map(|word| word.strip_prefix("listen=")).expect("listen=");
    format!("http://{field}")
}

/// `serve --standby` in `dir`, logging to `log`, once it waits and serves;
/// the process and the base URL of its web.
async fn standby_beside(dir: &Path, base_url: &str, log: &Path) -> (Child, String) {
    let standby = serve(dir, base_url, &["--standby"], log);
    wait_until("the standby's web", Duration::from_secs(30), || logged(log, " serving") && logged(log, "standby:"))
        .await;
    (standby, listen_address(log))
}

/// Posts `body` (JSON Lines) to `job`'s queue at `base`; the status code.
async fn post_items(base: &str, job: &str, body: String) -> u16 {
    let url = format!("{base}/api/v1/jobs/{job}/items");
    reqwest::Client::new().post(url).bearer_auth(TOKEN).body(body).send().await.unwrap().status().as_u16()
}

async fn get(url: &str) -> reqwest::Response {
    reqwest::Client::new().get(url).bearer_auth(TOKEN).send().await.unwrap()
}

async fn get_json(url: &str) -> Value {
    get(url).await.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_serves_and_queues_while_another_leads_then_takes_over_a_killed_leader() {
    let clock = orchestrator::clock::ManualClock::new(chrono::Utc::now());
    let sim =
        simulator_on(SimConfig { batch_median_secs: 3.0, batch_p95_secs: 3.5, ..SimConfig::default() }, &clock).await;
    let dir = two_jobs();
    let (lead_log, standby_log) = (dir.path().join("lead.log"), dir.path().join("standby.log"));
    let leader = serve(dir.path(), &sim.base_url(), &["--run-now"], &lead_log);
    let batch_created = "SELECT COUNT(*) FROM batches WHERE provider_batch_id IS NOT NULL";
    wait_until("the leader's batch", Duration::from_secs(30), || count(dir.path(), batch_created) == 1).await;

    let (standby, base) = standby_beside(dir.path(), &sim.base_url(), &standby_log).await;
    let status = get_json(&format!("{base}/api/v1/status")).await;
    assert_eq!(status["leader"]["pid"], json!(leader.id()), "the standby names the leader: {status}");
    assert_eq!(status["leader"]["epoch"], json!(1));
    let page = get(&format!("{base}/batches")).await.text().await.unwrap();
    assert!(page.contains("this process is a standby"), "the dashboard footer says so");
    let metrics = get(&format!("{base}/metrics")).await.text().await.unwrap();
    assert!(
        metrics.contains("orchestrator_leading 0\n") && metrics.contains("orchestrator_leader_epoch 1\n"),
        "{metrics}"
    );

    // The leader stops answering (its lock stays held): the standby still takes posted items.
    // It is stopped between two steps, where it holds no write transaction that would keep the
    // standby's commit waiting.
    let steps = || std::fs::read_to_string(&lead_log).unwrap_or_default().matches("step done; sleeping").count();
    let before = steps();
    wait_until("the leader between steps", Duration::from_secs(30), || steps() > before).await;
    signal(&leader, "STOP");
    assert_eq!(post_items(&base, "triage", three_items("k")).await, 202, "a standby commits posted items");
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM queue_items WHERE run_id IS NULL"), 3, "stored, not run");

    assert_eq!(sim.stats().batches_created, 1, "the standby created nothing while it waited");
    signal(&leader, "KILL");
    wait_exit(leader, Duration::from_secs(10)).await;
    wait_until("the takeover", Duration::from_secs(15), || logged(&standby_log, "released the state lock")).await;
    // The batch ends at the provider; the new leader polls, ingests and delivers it.
    clock.advance(Duration::from_secs(60));
    let completed = "SELECT COUNT(*) FROM runs WHERE state = 'completed'";
    wait_until("both runs completed", Duration::from_secs(60), || count(dir.path(), completed) == 2).await;

    let status = get_json(&format!("{base}/api/v1/status")).await;
    assert_eq!(status["leader"]["pid"], json!(standby.id()), "{status}");
    assert_eq!(status["leader"]["epoch"], json!(2), "one takeover");
    let metrics = get(&format!("{base}/metrics")).await.text().await.unwrap();
    assert!(metrics.contains("orchestrator_leading 1\n"), "{metrics}");
    let page = get(&format!("{base}/batches")).await.text().await.unwrap();
    assert!(page.contains(&format!("led by pid {} on", standby.id())), "the footer names the new leader");
    assert!(!page.contains("this process is a standby"), "and no longer calls this process a standby");
    let bulk = delivered(&dir.path().join("out/bulk.jsonl"));
    assert_eq!(bulk.len(), ITEMS, "every item of the killed leader's run reached the sink");
    assert!(bulk.values().all(|&n| n == 1), "nothing was delivered twice");
    let triage = delivered(&dir.path().join("out/triage.jsonl"));
    assert_eq!((triage.len(), triage.values().all(|&n| n == 1)), (3, true), "the posted items ran once");
    assert_eq!(sim.stats().batches_created, 1, "the batch was adopted, not submitted again");
    assert_eq!(sim.stats().custom_ids_submitted_more_than_once, 0);

    stop_cleanly(standby, &standby_log).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_posted_to_a_standby_are_flushed_by_the_running_leader() {
    let sim = crate::support::simulator(SimConfig::default()).await;
    let dir = two_jobs();
    let (lead_log, standby_log) = (dir.path().join("lead.log"), dir.path().join("standby.log"));
    let leader = serve(dir.path(), &sim.base_url(), &[], &lead_log);
    wait_until("the leader", Duration::from_secs(30), || logged(&lead_log, "leading:")).await;
    let (standby, base) = standby_beside(dir.path(), &sim.base_url(), &standby_log).await;
    assert_eq!(post_items(&base, "triage", three_items("p")).await, 202);
    // The leader's loop notices the items (the standby's endpoint cannot wake it) and runs them.
    wait_until("the leader's wake", Duration::from_secs(30), || {
        logged(&lead_log, "items were posted through another process")
    })
    .await;
    let completed = "SELECT COUNT(*) FROM runs WHERE job = 'triage' AND state = 'completed'";
    wait_until("the triage run", Duration::from_secs(30), || count(dir.path(), completed) == 1).await;
    let triage = delivered(&dir.path().join("out/triage.jsonl"));
    assert_eq!((triage.len(), triage.values().all(|&n| n == 1)), (3, true));
    assert!(!logged(&standby_log, "released the state lock"), "the standby never led");
    stop_cleanly(standby, &standby_log).await;
    stop_cleanly(leader, &lead_log).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_told_to_stop_before_it_leads_exits_cleanly_having_written_nothing() {
    let clock = orchestrator::clock::ManualClock::new(chrono::Utc::now());
    let sim = simulator_on(SimConfig::default(), &clock).await;
    let dir = two_jobs();
    // A cron that cannot come due while the test runs (the standby's --run-now would fire it).
    let bulk = dir.path().join("jobs/bulk.yaml");
    std::fs::write(&bulk, std::fs::read_to_string(&bulk).unwrap().replace("'0 6 * * *'", "'0 6 1 1 *'")).unwrap();
    let (lead_log, standby_log) = (dir.path().join("lead.log"), dir.path().join("standby.log"));
    let leader = serve(dir.path(), &sim.base_url(), &[], &lead_log);
    wait_until("the leader", Duration::from_secs(30), || logged(&lead_log, "leading:")).await;
    let standby = serve(dir.path(), &sim.base_url(), &["--standby", "--run-now"], &standby_log);
    wait_until("the standby", Duration::from_secs(30), || logged(&standby_log, "standby:")).await;
    // A standby reloads its manifests when asked: its enqueue endpoint checks posts against them.
    signal(&standby, "HUP");
    wait_until("the standby's reload", Duration::from_secs(30), || logged(&standby_log, "manifests reloaded")).await;
    stop_cleanly(standby, &standby_log).await;
    assert_eq!(count(dir.path(), "SELECT COUNT(*) FROM runs"), 0, "the standby's --run-now fired nothing");
    assert_eq!(count(dir.path(), "SELECT epoch FROM leadership"), 1, "it never took the lead");
    stop_cleanly(leader, &lead_log).await;
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_process_holding_the_lock_migrates_and_a_newer_standby_waits_to() {
    let dir = two_jobs();
    let state = dir.path().join("state/orchestrator.db");
    // A database as version 14 left it (15 added the leadership table), and a
    // leader of that older build holding its lock.
    drop(orchestrator::store::Store::open(&state).unwrap());
    let behind = 14;
    rusqlite::Connection::open(&state)
        .unwrap()
        .execute_batch("DROP TABLE leadership; PRAGMA user_version = 14;")
        .unwrap();
    let lock = orchestrator::daemon::leadership::StateLock::open(&state).unwrap();
    assert!(lock.try_take().unwrap());
    let version = || orchestrator::store::Store::stored_version(&state).unwrap();

    let log = dir.path().join("serve.log");
    let busy = serve(dir.path(), "http://127.0.0.1:9", &[], &log);
    let (code, _) = wait_exit(busy, Duration::from_secs(30)).await;
    assert_eq!(code, Some(75), "{}", std::fs::read_to_string(&log).unwrap());
    assert_eq!(version(), behind, "a process refused as busy left the schema alone");
    let status = crate::support::run_in(dir.path(), &["status"]);
    assert_eq!(crate::support::code(&status), 1);
    assert!(crate::support::stderr(&status).contains("only the process holding its lock may migrate it"));
    assert_eq!(version(), behind, "so did status");

    let standby_log = dir.path().join("standby.log");
    let standby = serve(dir.path(), "http://127.0.0.1:9", &["--standby"], &standby_log);
    wait_until("the waiting standby", Duration::from_secs(30), || logged(&standby_log, "waits for it to stop")).await;
    assert_eq!(version(), behind, "the newer standby waits before it migrates");
    // A reload asked while it waits is ignored (it has loaded nothing yet), not fatal.
    signal(&standby, "HUP");
    wait_until("the ignored reload", Duration::from_secs(30), || logged(&standby_log, "reload ignored")).await;
    // A second one told to stop while it waits exits cleanly.
    let second_log = dir.path().join("second.log");
    let second = serve(dir.path(), "http://127.0.0.1:9", &["--standby"], &second_log);
    wait_until("the second waiting standby", Duration::from_secs(30), || logged(&second_log, "waits for it to stop"))
        .await;
    stop_cleanly(second, &second_log).await;
    drop(lock);
    wait_until("the lead", Duration::from_secs(30), || logged(&standby_log, "leading:")).await;
    assert_eq!(version(), orchestrator::store::Store::supported_version(), "migrated once it held the lock");
    stop_cleanly(standby, &standby_log).await;
    assert_eq!(
        count(dir.path(), "SELECT COUNT(*) FROM leadership WHERE stopped_at IS NOT NULL"),
        1,
        "a clean stop is marked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_finishes_a_leader_killed_at_each_crash_point_with_nothing_lost_or_done_twice() {
    // More items than one ingest chunk, so `mid_ingest` is reached.
    const MANY: usize = 4500;
    let items: String = (0..MANY)
        .map(|n| json!({ "item": { "subject": format!("ticket {n}") }, "idempotency_key": format!("m-{n}") }))
        .map(|entry| format!("{entry}\n"))
        .collect();
    for point in ["after_intent", "after_create", "mid_ingest", "after_sink_write"] {
        let sim = crate::support::simulator(SimConfig {
            batch_median_secs: 1.0,
            batch_p95_secs: 2.0,
            ..SimConfig::default()
        })
        .await;
        let dir = project::empty();
        // A batch-tier queue that flushes at MANY items: the leader's run starts only when they are
        // posted, by which time the standby waits beside it.
        let queue = format!(
            "enqueue: {{ max_items: {MANY}, max_wait: 1d }}\ntier: batch\ndeadline: 2h\nmodel: claude-haiku-4-5\n\
             max_tokens: 64\nprompt: {{ inline: 'Triage {{{{ item.subject }}}}' }}\nsink: {{ jsonl: out/bulk.jsonl }}\n"
        );
        std::fs::write(dir.path().join("jobs/bulk.yaml"), queue).unwrap();
        project::write_config(dir.path(), "batch: { poll_initial: 1s }\n");
        let (lead_log, standby_log) = (dir.path().join("lead.log"), dir.path().join("standby.log"));
        let leader = serve_command(dir.path(), &sim.base_url(), &[])
            .env("ORCHESTRATOR_API_TOKEN", TOKEN)
            .env("ORCHESTRATOR_FAILPOINT", point)
            .stderr(Stdio::from(std::fs::File::create(&lead_log).unwrap()))
            .spawn()
            .unwrap();
        wait_until("the leader", Duration::from_secs(30), || logged(&lead_log, "leading:")).await;
        let (standby, base) = standby_beside(dir.path(), &sim.base_url(), &standby_log).await;
        assert_eq!(post_items(&base, "bulk", items.clone()).await, 202, "{point}");
        let (code, _) = wait_exit(leader, Duration::from_secs(120)).await;
        assert_eq!(code, None, "{point}: the leader was killed at its failpoint");
        wait_until("the takeover", Duration::from_secs(15), || logged(&standby_log, "released the state lock")).await;
        let completed = "SELECT COUNT(*) FROM runs WHERE state = 'completed'";
        wait_until("the run completed", Duration::from_secs(120), || count(dir.path(), completed) == 1).await;
        let bulk = delivered(&dir.path().join("out/bulk.jsonl"));
        assert_eq!(bulk.len(), MANY, "{point}: nothing lost");
        assert!(bulk.values().all(|&n| n == 1), "{point}: nothing delivered twice");
        assert_eq!(sim.stats().batches_created, 1, "{point}: the batch was adopted or resumed, not submitted again");
        assert_eq!(sim.stats().custom_ids_submitted_more_than_once, 0, "{point}");
        stop_cleanly(standby, &standby_log).await;
        sim.shutdown().await;
    }
}
