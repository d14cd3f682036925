//! Two `serve` processes on one PostgreSQL database (the throwaway cluster
//! `.ci/postgres` starts; its URL in `ORCHESTRATOR_TEST_DATABASE_URL`), as
//! two machines would run them: one leads through the lease, the other
//! follows, serves the web, takes posted items, and takes over within 15 s
//! when the leader is killed; a leader paused past its lease writes nothing
//! when it resumes and steps down. Nothing is lost or done twice.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use orchestrator::sim::SimConfig;
use serde_json::{Value, json};

use crate::support::db::delivered;
use crate::support::process::{serve_command, signal, wait_exit};
use crate::support::project::{ITEMS, three_items, two_jobs};
use crate::support::{simulator_on, skip, wait_until};

const TOKEN: &str = "multinode-test-token";

/// A database of its own on the test server, dropped afterwards.
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    /// `None` (reported skipped) without a test server.
    fn create(test: &str) -> Option<Database> {
        let Some(admin) = std::env::var("ORCHESTRATOR_TEST_DATABASE_URL").ok().filter(|url| !url.is_empty()) else {
            skip("no PostgreSQL server: run `bash .ci/postgres start` and set ORCHESTRATOR_TEST_DATABASE_URL");
            return None;
        };
        let name = format!("{test}_{}", std::process::id());
        let (drop, create) =
            (format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"), format!("CREATE DATABASE {name}"));
        on_server(&admin, move |client| client.batch_execute(&drop).and_then(|()| client.batch_execute(&create)))
            .unwrap();
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Some(Database { admin, name, url })
    }

    /// The first column of the first row of `sql`; -1 while it cannot be read.
    fn count(&self, sql: &str) -> i64 {
        let sql = sql.to_owned();
        on_server(&self.url, move |client| client.query_one(&sql, &[]).map(|row| row.get::<_, i64>(0))).unwrap_or(-1)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = on_server(&self.admin, move |client| client.batch_execute(&sql));
    }
}

/// Runs `work` with a connection to `url`, on a thread of its own (the
/// synchronous client may not run on the test's async runtime).
fn on_server<T: Send + 'static>(
    url: &str,
    work: impl FnOnce(&mut postgres::Client) -> Result<T, postgres::Error> + Send + 'static,
) -> Result<T, postgres::Error> {
    let url = url.to_owned();
    std::thread::spawn(move || work(&mut postgres::Client::connect(&url, postgres::NoTls)?)).join().unwrap()
}

/// `serve --state URL ARGS` in `dir`, logging to `log` (the daemon's loop at debug).
fn serve(dir: &Path, base_url: &str, url: &str, args: &[&str], log: &Path) -> Child {
    serve_command(dir, base_url, &[&["--state", url], args].concat())
        .env_remove("ORCHESTRATOR_DATABASE_URL")
        .env("ORCHESTRATOR_API_TOKEN", TOKEN)
        .env("ORCHESTRATOR_LOG", "info,orchestrator::daemon=debug")
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap()
}

fn log_of(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

fn logged(log: &Path, text: &str) -> bool {
    log_of(log).contains(text)
}

/// The address a process logged in its `serving` line.
fn listen_address(log: &Path) -> String {
    let text = log_of(log);
    let line = text.lines().find(|line| line.contains(" serving")).expect("a serving line");
    let field = line.split_whitespace().find_map(|word| word.strip_prefix("listen=")).expect("listen=");
    format!("http://{field}")
}

/// A second `serve` on the database, named the way a unit file names it
/// (`--state postgres`, the URL in `ORCHESTRATOR_DATABASE_URL`), once it
/// follows and serves its web; the process and the base URL of its web.
async fn follower(dir: &Path, base_url: &str, url: &str, log: &Path) -> (Child, String) {
    let child = serve_command(dir, base_url, &["--state", "postgres"])
        .env("ORCHESTRATOR_DATABASE_URL", url)
        .env("ORCHESTRATOR_API_TOKEN", TOKEN)
        .env("ORCHESTRATOR_LOG", "info,orchestrator::daemon=debug")
        .stderr(Stdio::from(std::fs::File::create(log).unwrap()))
        .spawn()
        .unwrap();
    wait_until("the follower's web", Duration::from_secs(30), || logged(log, " serving") && logged(log, "following:"))
        .await;
    (child, listen_address(log))
}

/// A leader with the bulk run's batch at the provider (which ends it only
/// when the test moves `clock`), and a follower serving its web at `base`.
struct Cluster {
    clock: orchestrator::clock::ManualClock,
    sim: orchestrator::sim::SimHandle,
    dir: tempfile::TempDir,
    leader: Child,
    lead_log: std::path::PathBuf,
    follower: Child,
    base: String,
    follow_log: std::path::PathBuf,
}

impl Cluster {
    async fn start(db: &Database) -> Cluster {
        let clock = orchestrator::clock::ManualClock::new(chrono::Utc::now());
        let config = SimConfig { batch_median_secs: 3.0, batch_p95_secs: 3.5, ..SimConfig::default() };
        let sim = simulator_on(config, &clock).await;
        let dir = two_jobs();
        let (lead_log, follow_log) = (dir.path().join("lead.log"), dir.path().join("follow.log"));
        let leader = serve(dir.path(), &sim.base_url(), &db.url, &["--run-now"], &lead_log);
        let submitted = "SELECT COUNT(*) FROM batches WHERE provider_batch_id IS NOT NULL";
        wait_until("the leader's batch", Duration::from_secs(30), || db.count(submitted) == 1).await;
        let (follower, base) = follower(dir.path(), &sim.base_url(), &db.url, &follow_log).await;
        Cluster { clock, sim, dir, leader, lead_log, follower, base, follow_log }
    }
}

/// Posts `body` (JSON Lines) to `job`'s queue at `base`; the status code.
async fn post_items(base: &str, job: &str, body: String) -> u16 {
    let url = format!("{base}/api/v1/jobs/{job}/items");
    reqwest::Client::new().post(url).bearer_auth(TOKEN).body(body).send().await.unwrap().status().as_u16()
}

async fn status(base: &str) -> Value {
    let url = format!("{base}/api/v1/status");
    reqwest::Client::new().get(url).bearer_auth(TOKEN).send().await.unwrap().json().await.unwrap()
}

/// custom_ids that are in more than one batch that was not abandoned.
const IN_TWO_LIVE_BATCHES: &str = "SELECT COUNT(*) FROM (SELECT m.custom_id FROM batch_requests m
    JOIN batches b ON b.id = m.batch_id WHERE b.state <> 'abandoned' GROUP BY m.custom_id HAVING COUNT(*) > 1) twice";

/// Every dashboard page and JSON endpoint answers from the PostgreSQL
/// state (their queries are the store's, on the other engine), and so do
/// `status` and `cost`, naming the leader `pid`.
async fn assert_pages_and_status_read_the_database(base: &str, url: &str, dir: &Path, pid: u32) {
    let run = "/runs/1";
    for page in ["/", "/batches", "/jobs", run, "/metrics", "/api/v1/batches", "/api/v1/jobs", "/api/v1/kpis"] {
        let response = reqwest::Client::new().get(format!("{base}{page}")).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(response.status().as_u16(), 200, "{page}: {}", response.text().await.unwrap_or_default());
    }
    for args in [&["status"][..], &["cost", "--by", "day"], &["cost", "--by", "tag"]] {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(args)
            .args(["--state", url])
            .current_dir(dir)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        if args == ["status"] {
            assert!(stdout.contains(&format!("leader: pid {pid} ")), "{stdout}");
        }
    }
}

/// Every result of both jobs reached its sink exactly once.
fn assert_delivered_once(dir: &Path, triage: usize) {
    let bulk = delivered(&dir.join("out/bulk.jsonl"));
    assert_eq!(bulk.len(), ITEMS, "every item of the bulk run reached the sink");
    assert!(bulk.values().all(|&n| n == 1), "nothing was delivered twice: {bulk:?}");
    let posted = delivered(&dir.join("out/triage.jsonl"));
    assert_eq!(posted.len(), triage, "every posted item ran");
    assert!(posted.values().all(|&n| n == 1), "nothing was delivered twice: {posted:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_takes_posted_items_and_takes_over_a_killed_leader_within_15_seconds() {
    let Some(db) = Database::create("multinode_kill") else { return };
    let Cluster { clock, sim, dir, leader, follower, base, follow_log, .. } = Cluster::start(&db).await;
    let shown = status(&base).await;
    assert_eq!(shown["leader"]["pid"], json!(leader.id()), "the follower names the leader: {shown}");
    assert_eq!(shown["leader"]["epoch"], json!(1));

    // A realtime run on the leader, while it leads.
    assert_eq!(post_items(&base, "triage", three_items("before")).await, 202);
    let triage_done = "SELECT COUNT(*) FROM runs WHERE job = 'triage' AND state = 'completed'";
    wait_until("the leader's triage run", Duration::from_secs(30), || db.count(triage_done) == 1).await;

    signal(&leader, "KILL");
    let killed = Instant::now();
    wait_exit(leader, Duration::from_secs(10)).await;
    // The leader is gone and its lease not yet run out: the follower still takes items.
    assert_eq!(post_items(&base, "triage", three_items("after")).await, 202, "a follower commits posted items");
    assert!(!logged(&follow_log, "taking over"), "posted before the takeover");
    assert_eq!(db.count("SELECT COUNT(*) FROM queue_items WHERE run_id IS NULL"), 3, "stored, not yet run");

    wait_until("the takeover", Duration::from_secs(15), || logged(&follow_log, "taking over")).await;
    let took = killed.elapsed();
    eprintln!("the follower took over {took:?} after the kill");
    assert!(took >= Duration::from_secs(4), "it waited for the lease to run out ({took:?})");
    // The batch ends at the provider; the new leader polls, ingests and delivers it.
    clock.advance(Duration::from_secs(60));
    let completed = "SELECT COUNT(*) FROM runs WHERE state = 'completed'";
    wait_until("all three runs completed", Duration::from_secs(60), || db.count(completed) == 3).await;

    let shown = status(&base).await;
    assert_eq!(shown["leader"]["pid"], json!(follower.id()), "{shown}");
    assert_eq!(shown["leader"]["epoch"], json!(2), "one takeover");
    assert_eq!(db.count("SELECT COUNT(*) FROM events WHERE kind = 'leader_took_over'"), 1);
    assert_delivered_once(dir.path(), 6);
    assert_eq!(db.count(IN_TWO_LIVE_BATCHES), 0, "no custom_id in two live batches");
    assert_eq!(sim.stats().batches_created, 1, "the batch was adopted, not submitted again");
    assert_eq!(sim.stats().custom_ids_submitted_more_than_once, 0);
    assert_pages_and_status_read_the_database(&base, &db.url, dir.path(), follower.id()).await;

    signal(&follower, "TERM");
    let (code, _) = wait_exit(follower, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", log_of(&follow_log));
    assert!(db.count("SELECT COUNT(*) FROM leadership WHERE stopped_at IS NOT NULL") == 1, "released on the way out");
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_paused_past_its_lease_writes_nothing_when_it_resumes_and_steps_down() {
    let Some(db) = Database::create("multinode_pause") else { return };
    let Cluster { clock, sim, dir, leader, lead_log, follower, follow_log, .. } = Cluster::start(&db).await;

    // Paused anywhere: even inside a transaction, the server ends its
    // session after 10 s idle, which frees the writers' lock.
    signal(&leader, "STOP");
    wait_until("the takeover", Duration::from_secs(30), || logged(&follow_log, "taking over")).await;
    // The new leader finishes the run while the old one is still paused.
    clock.advance(Duration::from_secs(60));
    let completed = "SELECT COUNT(*) FROM runs WHERE job = 'bulk' AND state = 'completed'";
    wait_until("the bulk run completed", Duration::from_secs(60), || db.count(completed) == 1).await;
    let events = db.count("SELECT COUNT(*) FROM events");
    let attempts = db.count("SELECT COUNT(*) FROM attempts");
    let paused_log = log_of(&lead_log).len();

    signal(&leader, "CONT");
    let (code, _) = wait_exit(leader, Duration::from_secs(30)).await;
    let resumed = &log_of(&lead_log)[paused_log..];
    eprintln!("the paused leader after SIGCONT:\n{resumed}");
    assert_ne!(code, Some(0), "a leader that lost its lease exits with an error: {resumed}");
    assert!(
        resumed.contains("another process took over as leader: stepping down"),
        "it noticed and stepped down: {resumed}"
    );
    for action in ["batch submitted", "results delivered", "run fired", "sent to the sync lane"] {
        assert!(!resumed.contains(action), "the paused leader did `{action}` after it resumed: {resumed}");
    }
    assert_eq!(db.count("SELECT COUNT(*) FROM events"), events, "it committed no event");
    assert_eq!(db.count("SELECT COUNT(*) FROM attempts"), attempts, "and no call");
    assert_eq!(db.count("SELECT epoch FROM leadership"), 2, "the follower leads");
    assert_eq!(db.count("SELECT pid FROM leadership"), i64::from(follower.id()));
    let bulk = delivered(&dir.path().join("out/bulk.jsonl"));
    assert_eq!((bulk.len(), bulk.values().all(|&n| n == 1)), (ITEMS, true), "delivered once: {bulk:?}");
    assert_eq!(db.count(IN_TWO_LIVE_BATCHES), 0, "no custom_id in two live batches");
    assert_eq!(sim.stats().batches_created, 1, "nothing was submitted twice");

    signal(&follower, "TERM");
    let (code, _) = wait_exit(follower, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", log_of(&follow_log));
    sim.shutdown().await;
}

#[test]
fn state_postgres_without_a_database_url_says_what_to_set() {
    let dir = two_jobs();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["status", "--state", "postgres"])
        .current_dir(dir.path())
        .env_remove("ORCHESTRATOR_DATABASE_URL")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("ORCHESTRATOR_DATABASE_URL") && stderr.contains("orchestrator-database-url"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_refuses_to_drive_a_database_another_process_leads() {
    let Some(db) = Database::create("multinode_run") else { return };
    let sim = crate::support::simulator(SimConfig::default()).await;
    let dir = two_jobs();
    let lead_log = dir.path().join("lead.log");
    let leader = serve(dir.path(), &sim.base_url(), &db.url, &[], &lead_log);
    wait_until("the leader", Duration::from_secs(30), || logged(&lead_log, "leading:")).await;
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["run", "bulk", "--state", &db.url, "--config", "orchestrator.yaml"])
        .current_dir(dir.path())
        .env("ANTHROPIC_BASE_URL", sim.base_url())
        .env("ANTHROPIC_API_KEY", "sk-test-not-a-real-key")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(75), "{stderr}");
    assert!(stderr.contains("another orchestrator process leads"), "{stderr}");
    assert_eq!(db.count("SELECT COUNT(*) FROM runs"), 0, "it started nothing");
    assert_eq!(db.count("SELECT epoch FROM leadership"), 1, "and took no lead");
    signal(&leader, "TERM");
    let (code, _) = wait_exit(leader, Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "{}", log_of(&lead_log));
    sim.shutdown().await;
}
