//! `orchestrator render`: the exact request bodies a run would send.

use serde_json::Value;

use crate::support::{code, run, stderr, stdout};

fn lines(output: &std::process::Output) -> Vec<Value> {
    stdout(output).lines().map(|line| serde_json::from_str(line).expect("each line is JSON")).collect()
}

#[test]
fn renders_one_request_per_item_with_cached_system_prompt() {
    let output = run(&["render", "feed-classify", "--scheduled-for", "2026-11-22T05:30:00Z"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let requests = lines(&output);
    let items = std::fs::read_to_string(crate::support::root().join("jobs/data/articles.jsonl")).unwrap();
    assert_eq!(requests.len(), items.lines().filter(|l| !l.trim().is_empty()).count());
    assert_eq!(requests[0]["custom_id"], "feed-classify-2026-11-22-001");
    assert_eq!(requests[1]["custom_id"], "feed-classify-2026-11-22-002");
    let params = &requests[0]["params"];
    assert_eq!(params["model"], "claude-haiku-4-5");
    assert_eq!(params["system"][0]["cache_control"], serde_json::json!({"type": "ephemeral", "ttl": "1h"}));
    assert_eq!(params["messages"][0]["role"], "user");
    let first_title = serde_json::from_str::<Value>(items.lines().next().unwrap()).unwrap()["title"].clone();
    assert!(params["messages"][0]["content"].as_str().unwrap().contains(first_title.as_str().unwrap()));
}

#[test]
fn a_given_item_renders_exactly() {
    let item = r#"{"id":"x1","title":"Batch APIs halve the bill","source":"blog","summary":"Fifty percent off."}"#;
    let output = run(&["render", "feed-classify", "--item", item, "--scheduled-for", "2026-11-22T05:30:00Z"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    insta::assert_snapshot!("render_feed_classify_item", stdout(&output));
}

#[test]
fn jobs_firing_more_than_once_a_day_get_the_time_in_their_ids() {
    let output = run(&["render", "heartbeat", "--scheduled-for", "2026-11-22T10:20:00Z"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let requests = lines(&output);
    assert_eq!(requests.len(), 1, "a job without items has one request");
    assert_eq!(requests[0]["custom_id"], "heartbeat-20261122T1020-001");
}

#[test]
fn custom_ids_use_the_jobs_local_date() {
    // 23:00 in New York on the 22nd is 04:00 UTC on the 23rd.
    let output = run(&["render", "daily-reflection", "--scheduled-for", "2026-11-23T04:00:00Z"]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    assert_eq!(lines(&output)[0]["custom_id"], "daily-reflection-2026-11-22-001");
}

#[test]
fn an_unknown_job_is_a_usage_error_with_a_suggestion() {
    let output = run(&["render", "feed-clasify"]);
    assert_eq!(code(&output), 2);
    assert!(stderr(&output).contains("did you mean `feed-classify`?"), "{}", stderr(&output));
}

#[test]
fn a_queue_renders_the_items_waiting_in_it_and_says_what_to_do_when_none_wait() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("orchestrator.db");
    let args = |extra: &[&str]| {
        let mut all = vec!["render", "support-tickets", "--state", state.to_str().unwrap()];
        all.extend_from_slice(extra);
        all.into_iter().map(str::to_owned).collect::<Vec<_>>()
    };
    let render = |extra: &[&str]| run(&args(extra).iter().map(String::as_str).collect::<Vec<_>>());
    let none = render(&[]);
    assert_eq!(code(&none), 1);
    assert!(
        stderr(&none).contains("there is no state database at") && stderr(&none).contains("--item"),
        "{}",
        stderr(&none)
    );

    let mut store = orchestrator::store::Store::open(&state).unwrap();
    let empty = render(&[]);
    assert!(stderr(&empty).contains("no items wait in the queue of job `support-tickets`"), "{}", stderr(&empty));
    let posted = |subject: &str| orchestrator::store::NewQueueItem {
        item: serde_json::json!({ "subject": subject, "body": "b", "customer": "c" }).to_string(),
        idempotency_key: None,
        deadline_at: None,
        flush_by: None,
        sync: false,
    };
    store
        .enqueue_items("support-tickets", &[posted("first ticket"), posted("second ticket")], chrono::Utc::now())
        .unwrap();
    // No --scheduled-for: a queue is off the clock, its run would be for this minute.
    let output = render(&[]);
    assert_eq!(code(&output), 0, "{}", stderr(&output));
    let requests = lines(&output);
    assert_eq!(requests.len(), 2, "the waiting items, oldest first");
    let content = |n: usize| requests[n]["params"]["messages"][0]["content"].as_str().unwrap().to_owned();
    assert!(content(0).contains("Subject: first ticket") && content(1).contains("Subject: second ticket"));
    assert!(requests[0]["custom_id"].as_str().unwrap().starts_with("support-tickets-"), "{requests:?}");
    assert_eq!(lines(&render(&["--limit", "1"])).len(), 1);
}
