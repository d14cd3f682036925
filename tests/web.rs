//! The dashboard, JSON API and `/metrics` of a real `serve --simulate`
//! process on the example jobs: every figure shown equals what the store holds.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use orchestrator::clock::Clock;
use rusqlite::Connection;
use serde_json::Value;

use crate::cost::example_project;

/// A running `serve --simulate --run-now` on the example jobs.
pub struct Served {
    pub dir: tempfile::TempDir,
    pub base: String,
    /// Where the daemon's rehearsal clock started: noon UTC yesterday, so
    /// "today" and "this month" cannot change while a test reads them.
    pub clock_start: chrono::DateTime<chrono::Utc>,
    child: Child,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts the daemon and waits until every run of the first firing closed and is priced.
    pub async fn examples(env: &[(&str, &str)]) -> Served {
        // Thinned: the realtime jobs fire every 4 hours, not every few minutes mid-test.
        let dir = example_project(true);
        std::fs::write(dir.path().join("orchestrator.yaml"), "batch: { poll_initial: 1s }\n").unwrap();
        let log = dir.path().join("serve.log");
        let yesterday = (chrono::Utc::now() - chrono::Duration::days(1)).date_naive();
        let clock_start = yesterday.and_hms_opt(12, 0, 0).unwrap().and_utc();
        let child = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
            .args(["serve", "--simulate", "--run-now", "--config", "orchestrator.yaml", "--listen", "127.0.0.1:0"])
            .args(["--clock-start", &clock_start.to_rfc3339()])
            .current_dir(dir.path())
            .env_remove("NOTIFY_SOCKET")
            .env_remove("ORCHESTRATOR_API_TOKEN")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut served = Served { dir, base: String::new(), clock_start, child };
        served.base = format!("http://{}", served.bound_address(&log).await);
        served.wait_settled().await;
        served
    }

    /// The address the daemon logged as bound (`serving listen=ADDR`).
    async fn bound_address(&mut self, log: &std::path::Path) -> String {
        let start = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let found = text.lines().filter(|l| l.contains("serving")).find_map(|line| {
                let rest = &line[line.find("listen=")? + "listen=".len()..];
                Some(rest.split_whitespace().next()?.to_owned())
            });
            if let Some(address) = found {
                return address;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("serve exited with {status} before serving:\n{text}");
            }
            assert!(start.elapsed() < Duration::from_secs(30), "serve never logged its address:\n{text}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn db(&self) -> Connection {
        Connection::open(self.dir.path().join("state/orchestrator.db")).unwrap()
    }

    pub fn count(&self, sql: &str) -> i64 {
        Connection::open(self.dir.path().join("state/orchestrator.db"))
            .and_then(|db| db.query_row(sql, [], |row| row.get(0)))
            .unwrap_or(-1)
    }

    async fn wait_settled(&mut self) {
        let start = Instant::now();
        // Every job but a queue (`enqueue:`), which runs only when items are posted to it.
        let jobs = std::fs::read_dir(self.dir.path().join("jobs"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|path| path.extension().is_some_and(|x| x == "yaml"))
            .filter(|path| !std::fs::read_to_string(path).unwrap().contains("\nenqueue:"));
        let jobs = jobs.count() as i64;
        while self.count("SELECT COUNT(DISTINCT job) FROM runs WHERE state != 'open'") < jobs
            || self.count("SELECT COUNT(*) FROM runs WHERE state = 'open'") != 0
            || self.count("SELECT COUNT(*) FROM results WHERE cost_micros IS NULL") != 0
        {
            assert!(start.elapsed() < Duration::from_secs(90), "the example runs did not all complete");
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("serve exited early with {status}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    pub async fn json(&self, path: &str) -> Value {
        let (status, body) = self.get(path).await;
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn f(value: &Value) -> f64 {
    value.as_f64().unwrap_or_else(|| panic!("not a number: {value}"))
}

fn sql_f64(db: &Connection, sql: &str, arg: impl rusqlite::ToSql) -> f64 {
    db.query_row(sql, [arg], |row| row.get::<_, Option<f64>>(0)).unwrap().unwrap_or(0.0)
}

/// Milliseconds since the epoch of midnight UTC of `now`'s day and of the
/// 1st of its month, as the store keeps instants.
pub fn today_and_month_millis(now: chrono::DateTime<chrono::Utc>) -> (i64, i64) {
    let day = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let month = chrono::NaiveDate::from_ymd_opt(chrono::Datelike::year(&now), chrono::Datelike::month(&now), 1)
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc();
    (day.timestamp_millis(), month.timestamp_millis())
}

const RUN_COST: &str = "SELECT SUM(r.cost_micros) / 1e6 FROM results r JOIN requests q ON q.custom_id = r.custom_id
                        WHERE q.run_id = ?1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_and_api_show_what_the_store_holds() {
    let served = Served::examples(&[]).await;
    let db = served.db();
    runs_match(&served, &db).await;
    run_detail_matches(&served, &db).await;
    batches_match(&served, &db).await;
    jobs_match(&served, &db).await;
    kpis_match(&served, &db).await;
    pages_show_the_same(&served, &db).await;
    metrics_parse_and_match(&served, &db).await;
    let status = served.json("/api/v1/status").await;
    assert_eq!(
        status["runs"].as_array().unwrap().len() as i64,
        served.count("SELECT COUNT(*) FROM runs WHERE state = 'open'")
    );
    assert_eq!(status["schedules"].as_array().unwrap().len(), 10);
    assert_eq!(served.get("/healthz").await, (200, "ok\n".to_owned()));
    assert_eq!(served.get("/runs/999999").await.0, 404);
}

/// The field names docs/operating.md (the JSON API's manual) documents after `marker` (up to the closing `}`).
fn documented_fields(marker: &str) -> std::collections::BTreeSet<String> {
    let readme = std::fs::read_to_string(crate::support::root().join("docs/operating.md")).unwrap();
    let start = readme.find(marker).unwrap_or_else(|| panic!("docs/operating.md documents {marker}")) + marker.len();
    let end = start + readme[start..].find("}`").unwrap();
    readme[start..end].split('"').skip(1).step_by(2).map(str::to_owned).collect()
}

fn fields(value: &Value) -> std::collections::BTreeSet<String> {
    value.as_object().unwrap().keys().cloned().collect()
}

async fn runs_match(served: &Served, db: &Connection) {
    let api = served.json("/api/v1/runs").await;
    let runs = api["runs"].as_array().unwrap();
    assert_eq!(fields(&runs[0]), documented_fields("A `run` is `{"), "docs/operating.md lists a run's fields");
    assert_eq!(runs.len() as i64, served.count("SELECT COUNT(*) FROM runs"));
    for run in runs {
        let id = run["id"].as_i64().unwrap();
        let (state, total, done): (String, i64, i64) = db
            .query_row(
                "SELECT state, (SELECT COUNT(*) FROM requests WHERE run_id = runs.id),
                        (SELECT COUNT(*) FROM requests WHERE run_id = runs.id AND state IN ('succeeded', 'permanent_failed'))
                 FROM runs WHERE id = ?1",
                [id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        assert_eq!(run["state"], state.as_str());
        assert_eq!(run["requests_total"], total);
        assert_eq!(run["requests_done"], done);
        assert!(close(f(&run["cost_usd"]), sql_f64(db, RUN_COST, id)), "{run}");
        assert!(run["completed_at"].is_string(), "{run}");
    }
    let one_job = served.json("/api/v1/runs?job=heartbeat&limit=5").await;
    assert!(one_job["runs"].as_array().unwrap().iter().all(|r| r["job"] == "heartbeat"));
}

async fn run_detail_matches(served: &Served, db: &Connection) {
    let (id, provider_id): (i64, String) = db
        .query_row(
            "SELECT run_id, provider_batch_id FROM batches WHERE provider_batch_id IS NOT NULL LIMIT 1",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    let detail = served.json(&format!("/api/v1/runs/{id}")).await;
    assert_eq!(detail["batches"][0]["provider_batch_id"], provider_id.as_str());
    let succeeded = served.count(&format!("SELECT COUNT(*) FROM requests WHERE run_id = {id} AND state = 'succeeded'"));
    assert_eq!(detail["requests"]["succeeded"], succeeded);
    assert!(detail["decisions"].as_array().unwrap().iter().any(|d| d["kind"] == "batch_submitted"), "{detail}");
    let (status, html) = served.get(&format!("/runs/{id}")).await;
    assert_eq!(status, 200);
    assert!(html.contains(&provider_id), "the run page names its batch");
}

async fn batches_match(served: &Served, db: &Connection) {
    let api = served.json("/api/v1/batches").await;
    let batches = api["batches"].as_array().unwrap();
    assert_eq!(fields(&batches[0]), documented_fields("A `batch` is `{"), "docs/operating.md lists a batch's fields");
    assert_eq!(batches.len() as i64, served.count("SELECT COUNT(*) FROM batches"));
    for batch in batches {
        let (provider_id, requests): (Option<String>, i64) = db
            .query_row(
                "SELECT provider_batch_id, request_count FROM batches WHERE id = ?1",
                [batch["id"].as_i64()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .unwrap();
        assert_eq!(batch["provider_batch_id"].as_str(), provider_id.as_deref());
        assert_eq!(batch["requests"], requests);
        assert!(f(&batch["turnaround_secs"]) >= 0.0);
    }
}

async fn jobs_match(served: &Served, db: &Connection) {
    let api = served.json("/api/v1/jobs").await;
    let jobs = api["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 11);
    let marker = "`GET /api/v1/jobs` | `{\"jobs\": [{";
    let mut documented = documented_fields(marker);
    // The nested last_run's fields are listed in the same braces.
    documented.retain(|f| !["id", "run_key", "state", "scheduled_for"].contains(&f.as_str()));
    assert_eq!(fields(&jobs[0]), documented, "docs/operating.md lists a job's fields");
    for job in jobs {
        let name = job["name"].as_str().unwrap();
        if name == "support-tickets" {
            // A queue with nothing posted has no flush ahead, no run behind, nothing spent.
            assert!(job["next_at"].is_null() && job["cron"] == "on demand" && job["queued"] == 0, "{job}");
            assert!(job["last_run"].is_null() && job["month_cost_usd"] == 0.0, "{job}");
            continue;
        }
        let by_job = "FROM results r JOIN requests q ON q.custom_id = r.custom_id JOIN runs u ON u.id = q.run_id
                      WHERE u.job = ?1";
        let month = today_and_month_millis(served.clock_start).1;
        let cost = sql_f64(db, &format!("SELECT SUM(r.cost_micros) / 1e6 {by_job} AND r.received_at >= {month}"), name);
        assert!(close(f(&job["month_cost_usd"]), cost), "{job}");
        let successes = "AND r.status = 'succeeded' AND r.duplicate = 0";
        let output = sql_f64(db, &format!("SELECT AVG(r.output_tokens) {by_job} {successes}"), name);
        assert!(close(f(&job["avg_output_tokens"]), output), "{job}");
        match name {
            // A stage without a schedule fires after its upstream, at no instant of its own.
            "feed-digest" => assert!(job["next_at"].is_null() && job["cron"] == "after feed-classify", "{job}"),
            _ => assert!(job["next_at"].is_string() && job["queued"].is_null(), "{job}"),
        }
        let provider = match name {
            "feed-summaries" => "openai",
            "feed-topics" => "gemini",
            _ => "anthropic",
        };
        assert_eq!(job["provider"], provider, "{job}");
        assert_eq!(job["last_run"]["state"], "completed");
        assert!(!job["schedule"].as_str().unwrap().is_empty());
    }
}

async fn kpis_match(served: &Served, db: &Connection) {
    let report = served.json("/api/v1/kpis?since=2000-01-01").await;
    let cost = sql_f64(db, "SELECT SUM(cost_micros) / 1e6 FROM results WHERE ?1", 1);
    let sync = sql_f64(db, "SELECT SUM(sync_cost_micros) / 1e6 FROM results WHERE ?1", 1);
    assert!(close(f(&report["total"]["cost_usd"]), cost), "{report}");
    assert!(close(f(&report["kpis"]["savings_usd"]["value"]), sync - cost), "{report}");
    assert_eq!(report["kpis"]["batch_token_share"]["target"], ">= 0.8");
    let bad = served.get("/api/v1/kpis?since=yesterday").await;
    assert_eq!(bad.0, 400, "a bad date is refused: {}", bad.1);
}

async fn pages_show_the_same(served: &Served, db: &Connection) {
    let (status, html) = served.get("/batches").await;
    assert_eq!(status, 200);
    let keys: Vec<String> = db
        .prepare("SELECT run_key FROM runs")
        .unwrap()
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for key in &keys {
        assert!(html.contains(key), "the lifecycle table lists {key}");
    }
    let today = today_and_month_millis(served.clock_start).0;
    let completed =
        served.count(&format!("SELECT COUNT(*) FROM runs WHERE state = 'completed' AND finished_at >= {today}"));
    assert!(html.contains(&format!(
        r#"id="kpi-completed-today"><dt>Completed today</dt><dd><span class="value">{completed}</span>"#
    )));
    assert!(html.contains("<svg class=\"chart\" role=\"img\""), "the chart is inline SVG");
    for external in ["<script", "src=\"http", "href=\"http", "src=\"//", "href=\"//", "url(http"] {
        assert!(!html.contains(external), "no scripts and nothing fetched from elsewhere: found {external}");
    }
    let (status, root) = served.get("/").await;
    assert!(status == 200 && root.contains("<h1>Batches</h1>"), "/ is the overview");
    let (_, zoned) = served.get("/batches?tz=job").await;
    assert!(zoned.contains("show UTC"), "times can be shown in each job's zone");
    let (status, jobs) = served.get("/jobs").await;
    assert_eq!(status, 200);
    for name in ["nightly-report", "heartbeat", "weekly-benchmark", "feed-summaries"] {
        assert!(jobs.contains(&format!(r#"data-job="{name}""#)), "{name} is listed");
    }
    let summaries = jobs.split(r#"data-job="feed-summaries""#).nth(1).unwrap().split("</tr>").next().unwrap();
    assert!(summaries.contains("openai</span><br>gpt-4.1-mini"), "the job's provider is shown: {summaries}");
    assert_eq!(served.get("/style.css").await.0, 200);
}

/// Parses the OpenMetrics text: every sample line is `name{labels} value`.
pub fn parse_metrics(text: &str) -> Vec<(String, String, f64)> {
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF");
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad sample line: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels: {line}"))),
            None => (series, ""),
        };
        assert!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "bad metric name: {line}");
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let (key, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("bad label: {line}"));
            assert!(!key.is_empty() && quoted.starts_with('"') && quoted.ends_with('"'), "bad label: {line}");
        }
        let value: f64 = value.replace("+Inf", "inf").parse().unwrap_or_else(|_| panic!("bad value: {line}"));
        samples.push((name.to_owned(), labels.to_owned(), value));
    }
    samples
}

async fn metrics_parse_and_match(served: &Served, db: &Connection) {
    let (status, text) = served.get("/metrics").await;
    assert_eq!(status, 200);
    let samples = parse_metrics(&text);
    let sum = |name: &str| samples.iter().filter(|(n, _, _)| n == name).map(|(_, _, v)| v).sum::<f64>();
    assert_eq!(sum("orchestrator_requests") as i64, served.count("SELECT COUNT(*) FROM requests"));
    let spend = sql_f64(db, "SELECT SUM(cost_micros) / 1e6 FROM results WHERE ?1", 1);
    assert!((sum("orchestrator_spend_usd_total") - spend).abs() < 1e-6, "{text}");
    for provider in ["anthropic", "gemini", "openai"] {
        let label = format!(r#"provider="{provider}""#);
        let shown: f64 = samples
            .iter()
            .filter(|(n, l, _)| n == "orchestrator_spend_usd_total" && l.contains(&label))
            .map(|s| s.2)
            .sum();
        let stored = sql_f64(db, "SELECT SUM(cost_micros) / 1e6 FROM results WHERE provider = ?1", provider);
        assert!(stored > 0.0 && (shown - stored).abs() < 1e-6, "{provider}: {shown} shown, {stored} stored: {text}");
    }
    let ended = served.count("SELECT COUNT(*) FROM batches WHERE ended_at IS NOT NULL");
    assert_eq!(sum("orchestrator_batch_turnaround_seconds_count") as i64, ended);
    assert_eq!(sum("orchestrator_open_runs"), 0.0);
    assert_eq!(sum("orchestrator_oldest_open_batch_age_seconds"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_everything_but_healthz() {
    let served = Served::examples(&[("ORCHESTRATOR_API_TOKEN", "s3cret-token")]).await;
    assert_eq!(served.get("/api/v1/runs").await.0, 401);
    assert_eq!(served.get("/batches").await.0, 401);
    assert_eq!(served.get("/metrics").await.0, 401);
    assert_eq!(served.get("/healthz").await.0, 200);
    let client = reqwest::Client::new();
    let wrong = client.get(format!("{}/batches", served.base)).bearer_auth("s3cret-tokeN").send().await.unwrap();
    assert_eq!(wrong.status().as_u16(), 401, "a wrong token is refused");
    let page = client.get(format!("{}/batches", served.base)).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200, "the pages work with the token");
    let authorized =
        client.get(format!("{}/api/v1/runs", served.base)).bearer_auth("s3cret-token").send().await.unwrap();
    assert_eq!(authorized.status().as_u16(), 200);
}

#[test]
fn a_non_loopback_address_needs_a_token() {
    let dir = example_project(false);
    let output = Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["serve", "--simulate", "--listen", "0.0.0.0:0"])
        .current_dir(dir.path())
        .env_remove("ORCHESTRATOR_API_TOKEN")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not a loopback address") && stderr.contains("ORCHESTRATOR_API_TOKEN"), "{stderr}");
}

/// A run held open on the manual clock: its batch is out (batches take ten
/// virtual minutes), an earlier run of the same job gave the median
/// turnaround, and the dashboard serves from the same engine.
pub struct HeldOpen {
    pub h: crate::support::harness::Harness,
    pub base: String,
    pub run_id: i64,
}

impl HeldOpen {
    pub async fn start() -> HeldOpen {
        use orchestrator::sim::SimConfig;
        let sim = SimConfig { batch_median_secs: 600.0, batch_p95_secs: 660.0, ..SimConfig::default() };
        let start = crate::support::harness::t0();
        let h = crate::support::harness::harness_at(
            "schedule: { cron: '0 * * * *' }\ntier: batch\ndeadline: 6h\n",
            20,
            sim,
            start,
        )
        .await;
        // The history: a first run, driven to its end.
        let first = h.engine.start_run(&h.job, start, h.job.deadline_at(start)).await.unwrap();
        let outcome = h.engine.drive(first.id, async |_| Ok(())).await.unwrap();
        assert_eq!(outcome.state, orchestrator::store::RunState::Completed, "{outcome:?}");
        // The held run: ticked until its batch is out, then left there.
        let at = start + chrono::Duration::hours(1);
        h.clock.advance(orchestrator::engine::until(h.clock.now(), at));
        let run = h.engine.start_run(&h.job, at, h.job.deadline_at(at)).await.unwrap();
        let out = format!("SELECT COUNT(*) FROM batches WHERE run_id = {} AND provider_batch_id IS NOT NULL", run.id);
        for _ in 0..10 {
            if h.count(&out) == 1 {
                break;
            }
            h.engine.tick(Some(run.id)).await.unwrap();
        }
        assert_eq!(h.count(&out), 1, "the held run's batch is out");
        h.clock.advance(Duration::from_secs(120));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let path = h.dir.path().join("state/orchestrator.db");
        let store = orchestrator::store::SharedStore::new(orchestrator::store::Store::open_read_only(&path).unwrap());
        tokio::spawn(orchestrator::web::serve(listener, h.engine.clone(), store, None));
        HeldOpen { h, base, run_id: run.id }
    }

    pub async fn json(&self, path: &str) -> Value {
        let response = reqwest::get(format!("{}{path}", self.base)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        response.json().await.unwrap()
    }

    pub async fn text(&self, path: &str) -> String {
        reqwest::get(format!("{}{path}", self.base)).await.unwrap().text().await.unwrap()
    }

    /// The held run's (submitted_at, first run's turnaround, fallback_at, deadline_at), from the store.
    pub fn stored(&self) -> (DateTime<Utc>, chrono::Duration, DateTime<Utc>, DateTime<Utc>) {
        let instant = |ms: i64| DateTime::from_timestamp_millis(ms).unwrap();
        let (submitted, fallback, deadline): (i64, i64, i64) = self
            .h
            .db()
            .query_row(
                "SELECT b.submitted_at, r.fallback_at, r.deadline_at FROM runs r JOIN batches b ON b.run_id = r.id
                 WHERE r.id = ?1",
                [self.run_id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .unwrap();
        let turnaround: i64 = self
            .h
            .db()
            .query_row(
                "SELECT ended_at - submitted_at FROM batches WHERE run_id != ?1 AND ended_at IS NOT NULL",
                [self.run_id],
                |row| row.get(0),
            )
            .unwrap();
        (instant(submitted), chrono::Duration::milliseconds(turnaround), instant(fallback), instant(deadline))
    }
}

fn instant(value: &Value) -> DateTime<Utc> {
    let text = value.as_str().unwrap_or_else(|| panic!("not an instant: {value}"));
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_runs_eta_fallback_and_batch_age_match_the_store() {
    let held = HeldOpen::start().await;
    let now = held.h.clock.now();
    let (submitted, turnaround, fallback_at, deadline_at) = held.stored();
    assert!(submitted + turnaround < fallback_at, "the scenario: the batch is expected before the fallback");

    let runs = held.json("/api/v1/runs").await;
    let run = runs["runs"].as_array().unwrap().iter().find(|r| r["id"] == held.run_id).unwrap().clone();
    assert_eq!(run["state"], "open");
    assert_eq!(run["eta_basis"], "turnaround_p50", "{run}");
    assert_eq!(instant(&run["eta"]), submitted + turnaround, "ETA = submitted + the one turnaround known");
    assert_eq!(instant(&run["fallback_at"]), fallback_at);
    assert!(run["fallback_started_at"].is_null());
    assert_eq!(instant(&run["submitted_at"]), submitted);

    let status = held.json("/api/v1/status").await;
    let open = status["runs"].as_array().unwrap();
    assert_eq!(open.len(), 1, "only the held run is open: {status}");
    assert_eq!(open[0]["eta"], run["eta"]);
    assert_eq!(open[0]["fallback_at"], run["fallback_at"]);
    assert_eq!(open[0]["seconds_to_deadline"], (deadline_at - now).num_seconds(), "{status}");

    let samples = parse_metrics(&held.text("/metrics").await);
    let value = |name: &str| samples.iter().filter(|(n, _, _)| n == name).map(|(_, _, v)| v).sum::<f64>();
    assert_eq!(value("orchestrator_open_runs"), 1.0);
    let age = (now - submitted).num_milliseconds() as f64 / 1000.0;
    assert!(age >= 120.0, "the clock moved two minutes after the submit");
    assert_eq!(value("orchestrator_oldest_open_batch_age_seconds"), age);

    // The held run's batch is the one in the provider's queue, wherever the queue is shown.
    let queued = held
        .h
        .count(&format!("SELECT request_count FROM batches WHERE run_id = {} AND state = 'in_progress'", held.run_id));
    assert!(queued > 0, "the scenario: the held run's batch is at the provider");
    let anthropic = r#"provider="anthropic""#;
    let shown = |name: &str| samples.iter().find(|(n, l, _)| n == name && l.contains(anthropic)).map(|s| s.2);
    assert_eq!(shown("orchestrator_batch_queue_requests"), Some(queued as f64));
    assert_eq!(shown("orchestrator_batch_queue_limit"), Some(100_000.0));
    assert_eq!(shown("orchestrator_batch_pace_per_minute"), Some(50.0));
    let queue = status["queues"].as_array().unwrap().iter().find(|q| q["provider"] == "anthropic").unwrap().clone();
    assert_eq!(queue, serde_json::json!({ "provider": "anthropic", "requests": queued, "limit": 100_000 }));
    let run_page = held.text(&format!("/runs/{}", held.run_id)).await;
    assert!(run_page.contains(&format!("this run ({queued})")), "the run page lists the runs its batch carries");

    let page = held.text("/batches").await;
    let strip = &page[page.find(r#"id="queue-anthropic""#).expect("the queue is on the dashboard")..];
    assert!(strip[..strip.find("</div>").unwrap()].contains(&format!(r#"<span class="value">{queued}</span>"#)));
    let row = &page[page.find(&format!("data-run-id=\"{}\"", held.run_id)).unwrap()..];
    let row = &row[..row.find("</tr>").unwrap()];
    let times: Vec<DateTime<Utc>> = row
        .split("<time datetime=\"")
        .skip(1)
        .map(|rest| instant(&Value::from(&rest[..rest.find('"').unwrap()])))
        .collect();
    assert!(row.contains("(turnaround p50)"), "{row}");
    for expected in [submitted + turnaround, fallback_at, deadline_at] {
        assert!(times.contains(&expected), "the lifecycle row shows {expected}: {row}");
    }
    held.h.sim.shutdown().await;
}
