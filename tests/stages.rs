//! Pipeline stages (`items: { from: JOB }`): a job whose items are the
//! results another job's newest completed run delivered.

use chrono::Duration;
use orchestrator::sim::SimConfig;
use orchestrator::store::RunState;

use crate::support::harness::{Harness, harness_for, t0};
use crate::support::project;

/// A `classify` job of `items` items and a `digest` stage over its
/// results, written with `items` (the stage's `items:` mapping).
fn pipeline(items: usize, stage_items: &str) -> tempfile::TempDir {
    let dir = project::empty();
    let root = dir.path();
    let lines: String = (0..items).map(|i| format!("{{\"id\":{i},\"text\":\"item number {i}\"}}\n")).collect();
    std::fs::write(root.join("classify.jsonl"), lines).unwrap();
    let classify = format!(
        "schedule: {{ cron: '0 6 * * *' }}\ntier: realtime\ndeadline: 1h\nmodel: claude-haiku-4-5\nmax_tokens: 64\n\
         prompt: {{ inline: 'Label {{{{ item.text }}}}' }}\nitems: {{ jsonl: {} }}\nsink: {{ jsonl: {} }}\n",
        root.join("classify.jsonl").display(),
        root.join("out/classify.jsonl").display(),
    );
    std::fs::write(root.join("jobs/classify.yaml"), classify).unwrap();
    let stage = format!(
        "schedule: {{ cron: '0 7 * * *' }}\ntier: realtime\ndeadline: 1h\nmodel: claude-haiku-4-5\nmax_tokens: 64\n\
         prompt: {{ inline: 'Summarise {{{{ item.custom_id }}}} ({{{{ item.item.text }}}}): {{{{ item.text }}}}' }}\n\
         items: {stage_items}\nsink: {{ jsonl: {} }}\n",
        root.join("out/digest.jsonl").display(),
    );
    std::fs::write(dir.path().join("jobs/digest.yaml"), stage).unwrap();
    dir
}

/// Starts the stage's run for 07:00 and drives it to its end.
async fn run_stage(h: &Harness) -> (i64, orchestrator::engine::RunOutcome) {
    let job = h.engine.jobs().get("digest").cloned().expect("the stage validated");
    let at = t0() + Duration::hours(1);
    let run = h.engine.start_run(&job, at, job.deadline_at(at)).await.unwrap();
    let outcome = h.engine.drive(run.id, async |_| Ok(())).await.unwrap();
    (run.id, outcome)
}

fn params_of(h: &Harness, run_id: i64) -> Vec<String> {
    h.ids(&format!(
        "SELECT b.params FROM requests q JOIN request_bodies b ON b.custom_id = q.custom_id
         WHERE q.run_id = {run_id} ORDER BY q.seq"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_takes_each_result_its_upstream_run_delivered_as_an_item() {
    let h = harness_for(pipeline(5, "{ from: classify }"), "classify", SimConfig::default(), t0()).await;
    let (_, upstream) = h.run().await;
    assert_eq!((upstream.state, upstream.delivered), (RunState::Completed, 5), "{upstream:?}");
    let (run_id, outcome) = run_stage(&h).await;
    assert_eq!((outcome.state, outcome.requests, outcome.delivered), (RunState::Completed, 5, 5), "{outcome:?}");
    let upstream_ids = h
        .ids("SELECT custom_id FROM requests WHERE run_id = (SELECT id FROM runs WHERE job = 'classify') ORDER BY seq");
    // By custom_id: on a loaded machine a result that arrives behind a
    // delivery round goes out in the next one, so the file's order is not the items'.
    let upstream_texts: std::collections::HashMap<String, String> =
        std::fs::read_to_string(h.dir.path().join("out/classify.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .map(|line| (line["custom_id"].as_str().unwrap().to_owned(), line["text"].as_str().unwrap().to_owned()))
            .collect();
    let params = params_of(&h, run_id);
    assert_eq!(params.len(), 5);
    for (i, (params, id)) in params.iter().zip(&upstream_ids).enumerate() {
        let body: serde_json::Value = serde_json::from_str(params).unwrap();
        let prompt = body["messages"][0]["content"].to_string();
        assert!(prompt.contains(id.as_str()), "the upstream custom_id: {prompt}");
        assert!(prompt.contains(&format!("item number {i}")), "the upstream item: {prompt}");
        let answer: String = upstream_texts[id].rsplit('"').next().unwrap().chars().take(30).collect();
        assert!(prompt.contains(&answer), "the upstream answer's text `{answer}`: {prompt}");
    }
    let input = h.ids(&format!("SELECT detail FROM events WHERE run_id = {run_id} AND kind = 'stage_input'"));
    let input: serde_json::Value = serde_json::from_str(&input[0]).unwrap();
    assert_eq!(input["upstream_run"], "classify-20261122T0600");
    assert_eq!(input["results"], 5);
    // `render` shows what the stage's next run would send, from the same results.
    let output = crate::support::run_in(h.dir.path(), &["render", "digest", "--limit", "2"]);
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    let rendered: Vec<serde_json::Value> =
        crate::support::stdout(&output).lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(rendered.len(), 2);
    assert!(rendered[1]["params"].to_string().contains(&upstream_ids[1]), "{}", rendered[1]);
    let empty = tempfile::tempdir().unwrap();
    let output = crate::support::run_in(
        h.dir.path(),
        &["render", "digest", "--state", empty.path().join("none.db").to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("does not exist (pass --state)"));
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_with_as_one_takes_all_results_as_one_item() {
    let dir = pipeline(4, "{ from: classify, as: one }");
    // The digest lists every result it was given.
    let stage = std::fs::read_to_string(dir.path().join("jobs/digest.yaml")).unwrap().replace(
        "prompt: { inline: 'Summarise {{ item.custom_id }} ({{ item.item.text }}): {{ item.text }}' }",
        "prompt: { inline: '{{ item.results | length }} from {{ item.run }}:{% for r in item.results %} [{{ r.custom_id }}]{% endfor %}' }",
    );
    std::fs::write(dir.path().join("jobs/digest.yaml"), stage).unwrap();
    let h = harness_for(dir, "classify", SimConfig::default(), t0()).await;
    assert_eq!(h.run().await.1.delivered, 4);
    let (run_id, outcome) = run_stage(&h).await;
    assert_eq!((outcome.state, outcome.requests, outcome.delivered), (RunState::Completed, 1, 1), "{outcome:?}");
    let params = params_of(&h, run_id);
    let ids = h
        .ids("SELECT custom_id FROM requests WHERE run_id = (SELECT id FROM runs WHERE job = 'classify') ORDER BY seq");
    let listed: String = ids.iter().map(|id| format!(" [{id}]")).collect();
    assert!(params[0].contains(&format!("4 from classify-20261122T0600:{listed}")), "{}", params[0]);
    h.sim.shutdown().await;
}

/// A permanently failed upstream request delivered nothing, so it is no
/// item; a stage whose upstream never completed fails and says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_reads_only_what_a_completed_upstream_run_delivered() {
    let h = harness_for(pipeline(3, "{ from: classify }"), "classify", SimConfig::default(), t0()).await;
    let job = h.engine.jobs().get("digest").cloned().unwrap();
    let early = t0() - Duration::hours(23);
    let error = h.engine.start_run(&job, early, job.deadline_at(early)).await.unwrap_err();
    assert!(error.to_string().contains("job `classify` has no completed run yet"), "{error}");
    let reason = h.ids("SELECT state || ': ' || reason FROM runs WHERE job = 'digest'");
    assert_eq!(reason.len(), 1);
    assert!(reason[0].starts_with("failed: job `classify` has no completed run yet"), "{reason:?}");
    assert_eq!(h.run().await.1.delivered, 3);
    // One upstream request turns out to have failed for good: it delivered nothing.
    h.db()
        .execute(
            "DELETE FROM deliveries WHERE custom_id = (SELECT custom_id FROM requests WHERE run_id = (SELECT id FROM runs WHERE job = 'classify') AND seq = 2)",
            [],
        )
        .unwrap();
    let (run_id, outcome) = run_stage(&h).await;
    assert_eq!((outcome.state, outcome.requests), (RunState::Completed, 2), "{outcome:?}");
    let ids = h
        .ids("SELECT custom_id FROM requests WHERE run_id = (SELECT id FROM runs WHERE job = 'classify') ORDER BY seq");
    let params = params_of(&h, run_id);
    assert!(params[0].contains(&ids[0]) && params[1].contains(&ids[2]), "{params:?}");
    let input = h.ids(&format!("SELECT detail FROM events WHERE run_id = {run_id} AND kind = 'stage_input'"));
    let input: serde_json::Value = serde_json::from_str(&input[0]).unwrap();
    assert_eq!((input["results"].as_u64(), input["upstream_without_result"].as_u64()), (Some(2), Some(1)), "{input}");
    h.sim.shutdown().await;
}

/// Writes a stage without a schedule: it fires when a run of `from` completes.
fn write_triggered(dir: &std::path::Path, name: &str, from: &str, shape: &str) {
    let prompt = match shape {
        "" => "Digest of {{ item.custom_id }} of {{ item.run }}",
        _ => "{{ item.results | length }} digests of {{ item.run }}",
    };
    let stage = format!(
        "tier: realtime\ndeadline: 3h\nmodel: claude-haiku-4-5\nmax_tokens: 64\n\
         prompt: {{ inline: '{prompt}' }}\n\
         items: {{ from: {from}{shape} }}\nsink: {{ jsonl: {} }}\n",
        dir.join(format!("out/{name}.jsonl")).display(),
    );
    std::fs::write(dir.join(format!("jobs/{name}.yaml")), stage).unwrap();
}

fn daemon(h: &Harness) -> orchestrator::daemon::Daemon {
    orchestrator::daemon::Daemon::new(h.engine.clone(), orchestrator::daemon::sdnotify::Notifier::disabled())
        .with_max_sleep(std::time::Duration::from_secs(3600))
}

/// Three stages on the daemon's own loop: `classify` fires at 06:00 on two
/// days, `digest` (no schedule) after each of its runs, `weekly` (no
/// schedule, all results as one item) after each digest. Each stage run has
/// its upstream's instant and deadline base, and fires exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stages_without_a_schedule_fire_after_each_completed_upstream_run() {
    let dir = pipeline(3, "{ from: classify }");
    std::fs::remove_file(dir.path().join("jobs/digest.yaml")).unwrap();
    write_triggered(dir.path(), "digest", "classify", "");
    write_triggered(dir.path(), "weekly", "digest", ", as: one");
    let start = t0() - Duration::minutes(1);
    let h = harness_for(dir, "classify", SimConfig::default(), start).await;
    let daemon = daemon(&h);
    crate::support::harness::serve_until(&h, &daemon, t0() + Duration::days(1) + Duration::hours(1), 120).await;
    let runs = h.ids(
        "SELECT job || ' ' || state || ' ' || scheduled_for || ' ' || (deadline_at - scheduled_for) FROM runs
         ORDER BY scheduled_for, id",
    );
    let (day1, day2) = (t0().timestamp_millis(), (t0() + Duration::days(1)).timestamp_millis());
    assert_eq!(
        runs,
        [
            format!("classify completed {day1} 3600000"),
            format!("digest completed {day1} 10800000"),
            format!("weekly completed {day1} 10800000"),
            format!("classify completed {day2} 3600000"),
            format!("digest completed {day2} 10800000"),
            format!("weekly completed {day2} 10800000"),
        ]
    );
    // Each digest read its own day's classify run; each weekly digest one item of them all.
    let digest_ids = h.ids("SELECT q.custom_id FROM requests q JOIN runs r ON r.id = q.run_id WHERE r.job = 'digest'");
    assert_eq!(digest_ids.len(), 6);
    assert!(digest_ids.iter().all(|id| id.starts_with("digest-2026112")), "timestamped ids: {digest_ids:?}");
    let weekly = h.ids(
        "SELECT b.params FROM requests q JOIN runs r ON r.id = q.run_id JOIN request_bodies b ON b.custom_id = q.custom_id
         WHERE r.job = 'weekly' ORDER BY r.scheduled_for",
    );
    assert_eq!(weekly.len(), 2);
    assert!(weekly[0].contains("3 digests of digest-20261122T0600"), "{}", weekly[0]);
    assert!(weekly[1].contains("3 digests of digest-20261123T0600"), "{}", weekly[1]);
    // Each run names the run it read and the runs that read it: the run page and its API.
    let links = h.ids(
        "SELECT r.run_key || ' <- ' || COALESCE(u.run_key, '-') FROM runs r LEFT JOIN runs u ON u.id = r.upstream_run_id
         ORDER BY r.scheduled_for, r.id",
    );
    assert_eq!(
        links,
        [
            "classify-20261122T0600 <- -",
            "digest-20261122T0600 <- classify-20261122T0600",
            "weekly-20261122T0600 <- digest-20261122T0600",
            "classify-20261123T0600 <- -",
            "digest-20261123T0600 <- classify-20261123T0600",
            "weekly-20261123T0600 <- digest-20261123T0600",
        ]
    );
    let digest: i64 =
        h.ids("SELECT CAST(id AS TEXT) FROM runs WHERE run_key = 'digest-20261123T0600'")[0].parse().unwrap();
    let zones = orchestrator::web::model::zones(&h.engine.jobs());
    let now = orchestrator::clock::Clock::now(&h.clock);
    let detail = h
        .engine
        .store()
        .call(move |s| orchestrator::web::model::run_detail(s, digest, &zones, now))
        .await
        .unwrap()
        .unwrap();
    let upstream = detail.upstream.expect("the digest's upstream");
    assert_eq!((upstream.run_key.as_str(), upstream.state.as_str()), ("classify-20261123T0600", "completed"));
    let downstream: Vec<&str> = detail.downstream.iter().map(|d| d.run_key.as_str()).collect();
    assert_eq!(downstream, ["weekly-20261123T0600"]);
    h.sim.shutdown().await;
}

/// The upstream run closed, then the process died before the stage's run
/// was created (its cursor still before that close): the next look creates
/// it once, and looking again creates nothing more. A failed upstream run
/// fires nothing, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_fires_once_per_upstream_run_across_a_crash_and_never_after_a_failed_one() {
    let dir = pipeline(2, "{ from: classify }");
    std::fs::remove_file(dir.path().join("jobs/digest.yaml")).unwrap();
    write_triggered(dir.path(), "digest", "classify", "");
    let h = harness_for(dir, "classify", SimConfig::default(), t0()).await;
    let scheduler = orchestrator::schedule::Scheduler::new(h.engine.clone());
    assert!(!scheduler.fire_stages().await.unwrap(), "nothing upstream yet; the cursor starts now");
    assert_eq!(h.run().await.1.state, RunState::Completed);
    // As after a crash: the stage's cursor is saved again before the upstream closed.
    h.db().execute("UPDATE schedules SET cursor = ?1 WHERE job = 'digest'", [t0().timestamp_millis() - 1]).unwrap();
    assert!(scheduler.fire_stages().await.unwrap());
    h.db().execute("UPDATE schedules SET cursor = ?1 WHERE job = 'digest'", [t0().timestamp_millis() - 1]).unwrap();
    scheduler.fire_stages().await.unwrap();
    assert!(!scheduler.fire_stages().await.unwrap());
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE job = 'digest'"), 1, "one stage run for one upstream run");
    // A failed upstream run: its items file is gone.
    std::fs::remove_file(h.dir.path().join("classify.jsonl")).unwrap();
    let next = t0() + Duration::days(1);
    assert!(h.engine.start_run(&h.job, next, h.job.deadline_at(next)).await.is_err());
    assert!(!scheduler.fire_stages().await.unwrap());
    assert_eq!(h.count("SELECT COUNT(*) FROM runs WHERE job = 'digest'"), 1);
    let skipped = h.ids("SELECT detail FROM events WHERE job = 'digest' AND kind = 'run_skipped'");
    assert_eq!(skipped.len(), 1);
    assert!(skipped[0].contains("upstream run classify-20261123T0600 ended failed"), "{skipped:?}");
    h.sim.shutdown().await;
}

/// `validate` knows what a stage's item has: an upstream result's fields
/// (`as: each`) or `results` and `run` (`as: one`), and says so with the upstream's name.
#[test]
fn validate_refuses_a_stage_template_field_its_upstream_cannot_provide() {
    use crate::support::{code, run_in, stdout};
    let dir = pipeline(1, "{ from: classify }");
    let output = run_in(dir.path(), &["validate", "--deny-warnings"]);
    assert_eq!(code(&output), 0, "{}", stdout(&output));
    let digest = dir.path().join("jobs/digest.yaml");
    let text = std::fs::read_to_string(&digest).unwrap();
    std::fs::write(&digest, text.replace("{{ item.text }}", "{{ item.txt }}")).unwrap();
    let output = run_in(dir.path(), &["validate", "--format", "json"]);
    assert_eq!(code(&output), 78);
    let errors = |output: &std::process::Output| -> Vec<serde_json::Value> {
        let all: Vec<serde_json::Value> = serde_json::from_str(&stdout(output)).unwrap();
        all.into_iter().filter(|d| d["severity"] == "error").collect()
    };
    let diagnostics = errors(&output);
    assert_eq!(diagnostics.len(), 1, "{diagnostics:#?}");
    assert_eq!((diagnostics[0]["code"].as_str(), diagnostics[0]["line"].as_u64()), (Some("E052"), Some(6)));
    let message = diagnostics[0]["message"].as_str().unwrap();
    assert!(message.contains("`item.txt`, which a result of `classify` does not have"), "{message}");
    assert_eq!(diagnostics[0]["help"], "did you mean `text`?");
    // As one item, the results are a list: `item.text` is no field of it.
    std::fs::write(&digest, text.replace("items: { from: classify }", "items: { from: classify, as: one }")).unwrap();
    let output = run_in(dir.path(), &["validate", "--format", "json"]);
    let diagnostics = errors(&output);
    let found: Vec<&str> = diagnostics.iter().map(|d| d["message"].as_str().unwrap()).collect();
    assert_eq!(found.len(), 3, "custom_id, item, text: {found:#?}");
    assert!(found.iter().all(|m| m.contains("which a result of `classify` does not have")), "{found:#?}");
}

/// `pipeline` with both jobs' cron in Europe/Berlin: `classify` at 01:00,
/// the scheduled stage `digest` at 02:30 local.
fn berlin_pipeline() -> tempfile::TempDir {
    let dir = pipeline(2, "{ from: classify }");
    for (name, from, to) in [
        ("classify", "schedule: { cron: '0 6 * * *' }", "schedule: { cron: '0 1 * * *', timezone: Europe/Berlin }"),
        ("digest", "schedule: { cron: '0 7 * * *' }", "schedule: { cron: '30 2 * * *', timezone: Europe/Berlin }"),
    ] {
        let path = dir.path().join(format!("jobs/{name}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(from));
        std::fs::write(&path, text.replace(from, to)).unwrap();
    }
    dir
}

fn instant(text: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&chrono::Utc)
}

/// Runs of the project as `job scheduled_for(UTC) <- upstream run key`, in order.
fn fired(h: &Harness) -> Vec<String> {
    h.ids(
        "SELECT r.job || ' ' || strftime('%Y-%m-%dT%H:%MZ', r.scheduled_for / 1000, 'unixepoch') || ' <- '
                || COALESCE(u.run_key, '-')
         FROM runs r LEFT JOIN runs u ON u.id = r.upstream_run_id ORDER BY r.scheduled_for, r.id",
    )
}

/// A scheduled stage keeps the DST rules of every job: on the night clocks
/// go forward its 02:30 does not exist and it fires at 03:00 CEST; on the
/// night they go back its 02:30 occurs twice and it fires once. Each time it
/// reads the upstream run of that night.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_stage_fires_once_across_both_dst_changes() {
    for (start, end, expected) in [
        (
            "2026-03-28T23:30:00Z",
            "2026-03-29T03:00:00Z",
            ["classify 2026-03-29T00:00Z <- -", "digest 2026-03-29T01:00Z <- classify-20260329T0100"],
        ),
        (
            "2026-10-24T22:30:00Z",
            "2026-10-25T03:00:00Z",
            ["classify 2026-10-24T23:00Z <- -", "digest 2026-10-25T00:30Z <- classify-20261025T0100"],
        ),
    ] {
        let h = harness_for(berlin_pipeline(), "classify", SimConfig::default(), instant(start)).await;
        crate::support::harness::serve_until(&h, &daemon(&h), instant(end), 120).await;
        assert_eq!(fired(&h), expected, "from {start}");
        let open = h.count("SELECT COUNT(*) FROM runs WHERE state != 'completed'");
        assert_eq!(open, 0, "every run completed");
        h.sim.shutdown().await;
    }
}

/// The daemon was down across two of a scheduled stage's instants (and its
/// upstream's): with `catch_up: latest` the stage runs once, for the newest
/// missed instant, reads the newest upstream run completed by then, and
/// records the older instant as skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_stage_catches_up_on_the_newest_missed_instant_only() {
    let dir = pipeline(2, "{ from: classify }");
    let classify = dir.path().join("jobs/classify.yaml");
    let text = std::fs::read_to_string(&classify).unwrap();
    std::fs::write(&classify, text.replace("deadline: 1h", "deadline: 2h\ncatch_up: none")).unwrap();
    let start = t0() - Duration::minutes(1);
    let h = harness_for(dir, "classify", SimConfig::default(), start).await;
    crate::support::harness::serve_until(&h, &daemon(&h), t0() + Duration::hours(2), 120).await;
    assert_eq!(fired(&h), ["classify 2026-11-22T06:00Z <- -", "digest 2026-11-22T07:00Z <- classify-20261122T0600"]);
    // Down until 07:30 two days later: classify's 06:00s and digest's 07:00s were missed.
    h.clock.advance(std::time::Duration::from_secs(2 * 86_400 - 30 * 60));
    crate::support::harness::serve_until(&h, &daemon(&h), t0() + Duration::days(2) + Duration::hours(2), 120).await;
    assert_eq!(
        fired(&h),
        [
            "classify 2026-11-22T06:00Z <- -",
            "digest 2026-11-22T07:00Z <- classify-20261122T0600",
            "digest 2026-11-24T07:00Z <- classify-20261122T0600",
        ],
        "classify catches up on nothing; the digest on its newest instant, from the newest completed classify run"
    );
    let skipped = h.ids("SELECT detail FROM events WHERE job = 'digest' AND kind = 'run_skipped'");
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert!(skipped[0].contains("2026-11-23T07:00:00"), "{skipped:?}");
    h.sim.shutdown().await;
}

/// A stage over more upstream results than one page (2,000) reads them a
/// page at a time: every result becomes exactly one item, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stage_reads_a_large_upstream_run_a_page_at_a_time_in_order() {
    let items: u64 = 4321;
    let dir = pipeline(items as usize, "{ from: classify }");
    // Both on the batch lane: thousands of sync calls would only take longer.
    for name in ["classify", "digest"] {
        let path = dir.path().join(format!("jobs/{name}.yaml"));
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("tier: realtime\ndeadline: 1h", "tier: soft\ndeadline: 1h")).unwrap();
    }
    let h = harness_for(dir, "classify", SimConfig::default(), t0()).await;
    let (_, upstream) = h.run().await;
    assert_eq!((upstream.state, upstream.delivered), (RunState::Completed, items), "{upstream:?}");
    let (run_id, outcome) = run_stage(&h).await;
    assert_eq!((outcome.state, outcome.requests), (RunState::Completed, items), "{outcome:?}");
    let read = h.ids(&format!(
        "SELECT u.custom_id FROM requests q JOIN request_bodies b ON b.custom_id = q.custom_id
         JOIN requests u ON u.custom_id = json_extract(b.item, '$.custom_id')
         WHERE q.run_id = {run_id} ORDER BY q.seq"
    ));
    let upstream_ids = h
        .ids("SELECT custom_id FROM requests WHERE run_id = (SELECT id FROM runs WHERE job = 'classify') ORDER BY seq");
    assert_eq!(read, upstream_ids, "each upstream result once, in the upstream's order");
    h.sim.shutdown().await;
}
