//! The enqueue API: items posted to a job with `enqueue:` are committed
//! before the `202`, flush into runs by size, by time and by deadline, and
//! can be looked up until their results are delivered.

use std::time::Duration;

use orchestrator::clock::Clock;
use orchestrator::sim::SimConfig;
use orchestrator::store::RunState;
use serde_json::{Value, json};

use crate::support::harness::{Harness, harness_for, t0};
use crate::support::project;

const TOKEN: &str = "enqueue-test-token";

/// A project with the queue job `triage` (`enqueue` given) and a timed job `bulk`.
fn queue_project(enqueue: &str) -> tempfile::TempDir {
    let dir = project::empty();
    let root = dir.path();
    let triage = format!(
        "enqueue: {enqueue}\ntier: soft\ndeadline: 1h\nmodel: claude-haiku-4-5\nmax_tokens: 64\n\
         prompt: {{ inline: 'Triage {{{{ item.subject }}}}' }}\nsink: {{ jsonl: {} }}\n",
        root.join("out/triage.jsonl").display()
    );
    std::fs::write(root.join("jobs/triage.yaml"), triage).unwrap();
    project::write_job(root, "bulk", "schedule: { cron: '0 6 * * *' }\ntier: soft\ndeadline: 1h\n", 1, "");
    dir
}

/// The harness with the web server on loopback, requiring `token` when given.
async fn served(enqueue: &str, token: Option<&str>) -> (Harness, String) {
    let h = harness_for(queue_project(enqueue), "triage", SimConfig::default(), t0()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let path = h.dir.path().join("state/orchestrator.db");
    let store = orchestrator::store::SharedStore::new(orchestrator::store::Store::open_read_only(&path).unwrap());
    tokio::spawn(orchestrator::web::serve(listener, h.engine.clone(), store, token.map(str::to_owned)));
    (h, base)
}

async fn post(base: &str, job: &str, token: Option<&str>, body: String) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(format!("{base}/api/v1/jobs/{job}/items")).body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn item(base: &str, id: i64) -> Value {
    let response = reqwest::Client::new().get(format!("{base}/api/v1/items/{id}")).bearer_auth(TOKEN).send().await;
    response.unwrap().json().await.unwrap()
}

/// JSON Lines of `count` entries keyed `prefix-<n>`, from `first`.
fn entries(prefix: &str, first: usize, count: usize) -> String {
    (first..first + count)
        .map(|n| json!({ "item": { "subject": format!("ticket {n}") }, "idempotency_key": format!("{prefix}-{n}") }))
        .map(|entry| format!("{entry}\n"))
        .collect()
}

fn ids(answer: &Value) -> Vec<i64> {
    answer["ids"].as_array().unwrap().iter().map(|id| id.as_i64().unwrap()).collect()
}

/// Runs of `triage` and how many queue items each took, in order.
fn runs_of_queue(h: &Harness) -> Vec<(String, i64)> {
    let db = h.db();
    let mut statement = db
        .prepare(
            "SELECT r.lane, COUNT(q.id) FROM runs r JOIN queue_items q ON q.run_id = r.id
             WHERE r.job = 'triage' GROUP BY r.id ORDER BY r.id",
        )
        .unwrap();
    statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?))).unwrap().map(Result::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posted_items_flush_by_size_then_by_time_and_are_delivered_once() {
    let (h, base) = served("{ max_items: 5, max_wait: 10m }", Some(TOKEN)).await;
    let (status, first) = post(&base, "triage", Some(TOKEN), entries("t", 0, 12)).await;
    assert_eq!(status, 202, "{first}");
    let first = ids(&first);
    assert_eq!(first.len(), 12);
    assert!(first.windows(2).all(|pair| pair[0] < pair[1]), "ids in the order posted: {first:?}");
    // A retried post (the answer was lost) adds nothing and names the same items.
    let (status, again) = post(&base, "triage", Some(TOKEN), entries("t", 0, 12)).await;
    assert_eq!((status, ids(&again)), (202, first.clone()));
    assert_eq!(h.count("SELECT COUNT(*) FROM queue_items"), 12);
    assert_eq!(item(&base, first[0]).await["state"], "queued");
    // Operators see the queue: /metrics and status.
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move { reqwest::Client::new().get(url).bearer_auth(TOKEN).send().await.unwrap().text().await.unwrap() }
    };
    let metrics = get("/metrics").await;
    assert!(metrics.contains("orchestrator_queued_items{job=\"triage\"} 12"), "{metrics}");
    let status: Value = serde_json::from_str(&get("/api/v1/status").await).unwrap();
    assert_eq!(status["enqueued"], json!([{ "job": "triage", "waiting": 12, "oldest_at": "2026-11-22T06:00:00Z" }]));

    // Two full queues' worth flush at once; two items wait for max_wait.
    let look = h.engine.flush_queues().await.unwrap();
    assert_eq!(look.flushed, 2);
    assert_eq!(look.next, Some(t0() + chrono::Duration::minutes(10)));
    assert_eq!(runs_of_queue(&h), [("batch".to_owned(), 5), ("batch".to_owned(), 5)]);
    assert_eq!(h.engine.flush_queues().await.unwrap().flushed, 0, "nothing is due before max_wait");
    h.clock.advance(Duration::from_secs(600));
    assert_eq!(h.engine.flush_queues().await.unwrap().flushed, 1);
    assert_eq!(runs_of_queue(&h).len(), 3);
    assert_eq!(runs_of_queue(&h)[2].1, 2, "the last run takes what waited");

    let runs = h.ids("SELECT CAST(id AS TEXT) FROM runs WHERE job = 'triage' ORDER BY id");
    for run in &runs {
        let outcome = h.engine.drive(run.parse().unwrap(), async |_| Ok(())).await.unwrap();
        assert_eq!(outcome.state, RunState::Completed, "{outcome:?}");
    }
    let sink = std::fs::read_to_string(h.dir.path().join("out/triage.jsonl")).unwrap();
    assert_eq!(sink.lines().count(), 12, "every posted item delivered once");
    let view = item(&base, first[11]).await;
    assert_eq!(view["state"], "delivered", "{view}");
    assert_eq!(view["id"], first[11]);
    assert!(view["run"].as_str().unwrap().starts_with("triage-20261122T0610"), "{view}");
    let custom_id = view["custom_id"].as_str().unwrap();
    assert!(sink.contains(custom_id), "the sink has {custom_id}");
    assert_eq!(view["result"]["lane"], "batch");
    assert!(view["result"]["cost_usd"].as_f64().unwrap() > 0.0, "{view}");
    assert!(view["result"]["usage"]["output_tokens"].as_u64().unwrap() > 0, "{view}");
    assert!(!view["result"]["text"].as_str().unwrap().is_empty(), "{view}");
    let prompt = h.ids(&format!("SELECT b.params FROM request_bodies b WHERE b.custom_id = '{custom_id}'"));
    assert!(prompt[0].contains("Triage ticket 11"), "the item reached the template: {}", prompt[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_latency_budget_goes_to_the_sync_lane_at_once_and_a_deadline_flushes_early() {
    let (h, base) = served("{ max_items: 100, max_wait: 30m }", Some(TOKEN)).await;
    let urgent = json!({ "item": { "subject": "outage" }, "latency_budget": "200ms" }).to_string();
    let (status, answer) = post(&base, "triage", Some(TOKEN), urgent).await;
    assert_eq!(status, 202, "{answer}");
    let look = h.engine.flush_queues().await.unwrap();
    assert_eq!(look.flushed, 1);
    assert_eq!(runs_of_queue(&h), [("sync".to_owned(), 1)]);
    let created = h.ids("SELECT detail FROM events WHERE kind = 'run_created' AND job = 'triage'");
    let created: Value = serde_json::from_str(&created[0]).unwrap();
    assert_eq!((created["flush"].as_str(), created["lane"].as_str()), (Some("latency_budget"), Some("sync")));
    let run_id: i64 = h.ids("SELECT CAST(id AS TEXT) FROM runs WHERE job = 'triage'")[0].parse().unwrap();
    let outcome = h.engine.drive(run_id, async |_| Ok(())).await.unwrap();
    assert_eq!((outcome.state, outcome.delivered), (RunState::Completed, 1), "{outcome:?}");
    assert_eq!(item(&base, ids(&answer)[0]).await["result"]["lane"], "sync");

    // An item due in 70 minutes, on a job whose runs get an hour, flushes
    // after 10 minutes, long before max_wait (30m), and its run keeps its deadline.
    let soon = json!({ "item": { "subject": "renewal" }, "deadline": "70m" }).to_string();
    let posted = h.clock.now();
    assert_eq!(post(&base, "triage", Some(TOKEN), soon).await.0, 202);
    let look = h.engine.flush_queues().await.unwrap();
    let flush_by = posted + chrono::Duration::minutes(10);
    assert_eq!((look.flushed, look.next), (0, Some(flush_by)));
    h.clock.advance(orchestrator::engine::until(h.clock.now(), flush_by));
    assert_eq!(h.engine.flush_queues().await.unwrap().flushed, 1);
    let deadline = h.count("SELECT MAX(deadline_at) FROM runs WHERE job = 'triage'");
    assert_eq!(deadline, (posted + chrono::Duration::minutes(70)).timestamp_millis(), "the item's own deadline");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_post_stores_nothing_and_says_why() {
    let (h, base) = served("{ max_items: 5, max_wait: 10m }", Some(TOKEN)).await;
    let mut body = entries("r", 0, 2);
    body.push_str("{\"item\": \"not an object\"}\n");
    let (status, answer) = post(&base, "triage", Some(TOKEN), body).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["line"], 3, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("line 3: invalid type"), "{answer}");
    let bad_duration = json!([{ "item": {} }, { "item": {}, "deadline": "soon" }]).to_string();
    let (status, answer) = post(&base, "triage", Some(TOKEN), bad_duration).await;
    assert_eq!((status, answer["entry"].as_i64()), (400, Some(2)), "{answer}");
    assert_eq!(h.count("SELECT COUNT(*) FROM queue_items"), 0, "all or nothing per request");

    assert_eq!(post(&base, "triage", None, entries("r", 0, 1)).await.0, 401, "no token");
    assert_eq!(post(&base, "triage", Some("wrong"), entries("r", 0, 1)).await.0, 401, "a wrong token");
    let (status, answer) = post(&base, "triag", Some(TOKEN), entries("r", 0, 1)).await;
    assert_eq!(status, 404);
    assert!(answer["error"].as_str().unwrap().contains("triage"), "did you mean: {answer}");
    let (status, answer) = post(&base, "bulk", Some(TOKEN), entries("r", 0, 1)).await;
    assert_eq!(status, 409);
    assert!(answer["error"].as_str().unwrap().contains("add `enqueue:"), "{answer}");
    let huge = format!("{{\"item\": {{\"text\": \"{}\"}}}}", "x".repeat(orchestrator::web::DEFAULT_MAX_ENQUEUE_BODY));
    assert_eq!(post(&base, "triage", Some(TOKEN), huge).await.0, 413);
    assert_eq!(h.count("SELECT COUNT(*) FROM queue_items"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_needs_a_token_even_on_loopback() {
    let (h, base) = served("{ max_items: 5, max_wait: 10m }", None).await;
    let (status, answer) = post(&base, "triage", None, entries("n", 0, 1)).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("ORCHESTRATOR_API_TOKEN"), "{answer}");
    assert_eq!(h.count("SELECT COUNT(*) FROM queue_items"), 0);
}

#[test]
fn validate_takes_a_queue_without_a_schedule_and_points_at_what_a_queue_cannot_have() {
    use crate::support::{code, run_in, stdout};
    let dir = queue_project("{ max_items: 5, max_wait: 10m }");
    let output = run_in(dir.path(), &["validate", "--deny-warnings"]);
    assert_eq!(code(&output), 0, "a queue needs no schedule: {}", stdout(&output));
    let triage = std::fs::read_to_string(dir.path().join("jobs/triage.yaml")).unwrap();
    let broken =
        triage.replace("max_items: 5, max_wait: 10m", "max_items: 0, max_wait: soon") + "items: { jsonl: a.jsonl }\n";
    std::fs::write(dir.path().join("jobs/triage.yaml"), broken).unwrap();
    let output = run_in(dir.path(), &["validate", "--format", "json"]);
    assert_eq!(code(&output), 78);
    let diagnostics: Vec<Value> = serde_json::from_str(&stdout(&output)).unwrap();
    let found: Vec<(&str, u64, u64)> = diagnostics
        .iter()
        .map(|d| (d["code"].as_str().unwrap(), d["line"].as_u64().unwrap(), d["column"].as_u64().unwrap()))
        .collect();
    assert_eq!(found, [("E073", 1, 23), ("E073", 1, 36), ("E069", 8, 1)], "{diagnostics:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_fills_the_queue_wakes_the_sleeping_daemon() {
    use orchestrator::daemon::{Control, Daemon, Options, Services};
    let (h, base) = served("{ max_items: 3, max_wait: 1d }", Some(TOKEN)).await;
    // Present on the manual clock and never sleeping on it: time stands
    // still, so only the post's wake-up can make the daemon flush.
    let _presence = h.clock.enter();
    let daemon = Daemon::new(h.engine.clone(), orchestrator::daemon::sdnotify::Notifier::disabled())
        .with_max_sleep(Duration::from_secs(3600));
    let (control, _reload) = Control::new();
    let stop = control.stop.clone();
    let served = tokio::spawn(async move {
        let keep = || None;
        let options = Options { run_now: false, grace: Duration::from_secs(1) };
        daemon.run_until(options, control, &keep, Services::default()).await.unwrap();
    });
    let dir = h.dir.path().to_owned();
    crate::support::wait_until("the daemon's first step", Duration::from_secs(30), || {
        crate::support::db::count(&dir, "SELECT COUNT(*) FROM schedules WHERE job = 'bulk'") == 1
    })
    .await;
    assert_eq!(post(&base, "triage", Some(TOKEN), entries("w", 0, 2)).await.0, 202);
    assert_eq!(post(&base, "triage", Some(TOKEN), entries("w", 2, 1)).await.0, 202);
    crate::support::wait_until("the full queue's run", Duration::from_secs(30), || {
        crate::support::db::count(&dir, "SELECT COUNT(*) FROM runs WHERE job = 'triage' AND prepared_at IS NOT NULL")
            == 1
    })
    .await;
    assert_eq!(h.clock.now(), t0(), "no time passed: the post woke the daemon");
    assert_eq!(runs_of_queue(&h), [("batch".to_owned(), 3)]);
    stop.cancel();
    served.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_with_a_schedule_flushes_what_waits_at_each_instant() {
    let (h, base) = served("{ max_items: 100, max_wait: 1d }", Some(TOKEN)).await;
    let triage = h.dir.path().join("jobs/triage.yaml");
    let text = std::fs::read_to_string(&triage).unwrap();
    std::fs::write(&triage, format!("schedule: {{ cron: '0 7 * * *' }}\n{text}")).unwrap();
    let report = orchestrator::validate::validate_dir(orchestrator::validate::Inputs {
        jobs_dir: &h.dir.path().join("jobs"),
        prompts_dir: &h.dir.path().join("prompts"),
        catalog: &orchestrator::catalog::Catalog::builtin(),
        now: t0(),
    });
    assert!(report.passes(true), "{:?}", report.diagnostics);
    h.engine.set_jobs(report.jobs.clone());
    let scheduler = orchestrator::schedule::Scheduler::new(h.engine.clone());
    scheduler.tick().await.unwrap();
    assert_eq!(post(&base, "triage", Some(TOKEN), entries("s", 0, 3)).await.0, 202);
    assert_eq!(h.engine.flush_queues().await.unwrap().flushed, 0, "neither full nor old");
    h.clock.advance(Duration::from_secs(3600));
    scheduler.tick().await.unwrap();
    assert_eq!(runs_of_queue(&h), [("batch".to_owned(), 3)]);
    let run = h.ids("SELECT run_key || ' ' || scheduled_for FROM runs WHERE job = 'triage'");
    assert_eq!(run, [format!("triage-20261122T0700 {}", (t0() + chrono::Duration::hours(1)).timestamp_millis())]);
    let created = h.ids("SELECT detail FROM events WHERE kind = 'run_created' AND job = 'triage'");
    assert!(created[0].contains("\"flush\":\"schedule\""), "{created:?}");
    let first: i64 = h.ids("SELECT CAST(id AS TEXT) FROM runs WHERE job = 'triage'")[0].parse().unwrap();
    let outcome = h.engine.drive(first, async |_| Ok(())).await.unwrap();
    assert_eq!((outcome.state, outcome.delivered), (RunState::Completed, 3), "{outcome:?}");
    // Nothing waits at the next instant: an empty run accounts for it.
    h.clock.advance(Duration::from_secs(86_400));
    scheduler.tick().await.unwrap();
    let runs = h.ids("SELECT CAST(id AS TEXT) FROM runs WHERE job = 'triage' ORDER BY id");
    assert_eq!(runs.len(), 2);
    let outcome = h.engine.drive(runs[1].parse().unwrap(), async |_| Ok(())).await.unwrap();
    assert_eq!((outcome.state, outcome.requests), (RunState::Completed, 0), "{outcome:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_of_a_job_that_lost_its_queue_wait_stored_until_it_is_back() {
    let (h, base) = served("{ max_items: 2, max_wait: 10m }", Some(TOKEN)).await;
    let all: Vec<orchestrator::job::Job> = h.engine.jobs().values().cloned().collect();
    assert_eq!(post(&base, "triage", Some(TOKEN), entries("o", 0, 1)).await.0, 202);
    // A reload without the queue job (renamed, say): its item is kept, said so, and not flushed.
    h.engine.set_jobs(all.iter().filter(|job| job.name != "triage").cloned().collect());
    assert_eq!(h.engine.orphaned_queues().await.unwrap(), [("triage".to_owned(), 1)]);
    h.clock.advance(Duration::from_secs(3600));
    assert_eq!(h.engine.flush_queues().await.unwrap().flushed, 0);
    assert_eq!(post(&base, "triage", Some(TOKEN), entries("o", 1, 1)).await.0, 404, "no such job now");
    h.engine.set_jobs(all);
    assert!(h.engine.orphaned_queues().await.unwrap().is_empty());
    assert_eq!(h.engine.flush_queues().await.unwrap().flushed, 1, "back: its oldest item waited past max_wait");
    assert_eq!(runs_of_queue(&h), [("batch".to_owned(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_item_whose_run_cannot_start_is_shown_failed_with_the_reason() {
    let (h, base) = served("{ max_items: 1, max_wait: 10m }", Some(TOKEN)).await;
    // The template reads `item.subject`: an item without it cannot be rendered.
    let (status, answer) = post(&base, "triage", Some(TOKEN), json!({ "item": { "topic": "x" } }).to_string()).await;
    assert_eq!(status, 202, "{answer}");
    assert_eq!(h.engine.flush_queues().await.unwrap().flushed, 1);
    let state = h.ids("SELECT state FROM runs WHERE job = 'triage'");
    assert_eq!(state, ["failed"]);
    let view = item(&base, ids(&answer)[0]).await;
    assert_eq!(view["state"], "failed", "{view}");
    assert!(view["run"].as_str().unwrap().starts_with("triage-"), "{view}");
    assert!(view["error"].as_str().unwrap().contains("subject"), "the reason names the field: {view}");
    assert!(view["result"].is_null(), "{view}");
}
