//! The provider simulator over real HTTP on loopback: wire shapes, lifecycle,
//! fault injection and determinism.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use orchestrator::clock::{Clock, ManualClock};
use orchestrator::sim::{SimConfig, SimHandle, start_with_clock};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

/// A fast simulator: one simulated hour per second of its clock, so a 3 s batch ends within a millisecond of it.
fn fast() -> SimConfig {
    SimConfig { listen: "127.0.0.1:0".parse().unwrap(), time_scale: 3600.0, ..SimConfig::default() }
}

/// A simulator whose time stands still until the test moves its clock, so
/// what a test sees never depends on how fast the machine is.
struct Api {
    sim: SimHandle,
    http: reqwest::Client,
    clock: ManualClock,
}

impl Api {
    async fn start(config: SimConfig) -> Api {
        let clock = ManualClock::new(chrono::DateTime::parse_from_rfc3339("2026-11-22T06:00:00Z").unwrap().into());
        let shared: Arc<dyn Clock> = Arc::new(clock.clone());
        let sim = start_with_clock(config, shared).await.expect("the simulator starts");
        Api { sim, http: reqwest::Client::new(), clock }
    }

    /// Moves the simulator's clock by `duration`.
    fn advance(&self, duration: Duration) {
        self.clock.advance(duration);
    }

    /// A request with an API key and `anthropic-version`.
    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.bare(method, path).header("x-api-key", "sk-test").header("anthropic-version", "2023-06-01")
    }

    /// A request without any headers.
    fn bare(&self, method: Method, path: &str) -> RequestBuilder {
        let url = if path.starts_with("http") { path.to_owned() } else { format!("{}{path}", self.sim.base_url()) };
        self.http.request(method, url)
    }

    async fn json(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = self.req(method, path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let response = req.send().await.expect("the request is answered");
        let status = response.status();
        (status, response.json().await.expect("the body is JSON"))
    }

    async fn create(&self, requests: Value) -> Value {
        let (status, batch) =
            self.json(Method::POST, "/v1/messages/batches", Some(json!({"requests": requests}))).await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        batch
    }

    /// Polls, moving the clock a second at a time, until the batch has
    /// ended; fails if it has not within a minute of the clock.
    async fn wait_ended(&self, id: &str) -> Value {
        for _ in 0..60 {
            let (status, batch) = self.json(Method::GET, &format!("/v1/messages/batches/{id}"), None).await;
            assert_eq!(status, StatusCode::OK, "{batch}");
            if batch["processing_status"] == "ended" {
                return batch;
            }
            self.advance(Duration::from_secs(1));
        }
        panic!("batch {id} did not end within a minute of its clock");
    }

    /// The raw results text and content type of an ended batch.
    async fn results_text(&self, batch: &Value) -> (String, String) {
        let url = batch["results_url"].as_str().expect("an ended batch has a results_url");
        let response = self.req(Method::GET, url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        (response.text().await.unwrap(), content_type)
    }

    /// Results lines by custom_id.
    async fn results(&self, batch: &Value) -> HashMap<String, Value> {
        let (text, _) = self.results_text(batch).await;
        text.lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line).expect("each line is JSON");
                (value["custom_id"].as_str().unwrap().to_owned(), value["result"].clone())
            })
            .collect()
    }
}

fn params(text: &str, max_tokens: u64) -> Value {
    json!({"model": "claude-haiku-4-5", "max_tokens": max_tokens, "messages": [{"role": "user", "content": text}]})
}

fn requests(prefix: &str, n: usize) -> Value {
    (0..n)
        .map(|i| json!({"custom_id": format!("{prefix}-{i}"), "params": params(&format!("Article {i} about batch work"), 300)}))
        .collect()
}

fn assert_error(body: &Value, kind: &str) {
    assert_eq!(body["type"], "error", "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["request_id"].as_str().unwrap().starts_with("req_"), "{body}");
}

#[tokio::test]
async fn credentials_and_version_are_required() {
    let api = Api::start(fast()).await;
    let response =
        api.bare(Method::GET, "/v1/messages/batches").header("anthropic-version", "2023-06-01").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let header_id = response.headers()["request-id"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_error(&body, "authentication_error");
    assert_eq!(body["request_id"], header_id.as_str());

    let response = api.bare(Method::GET, "/v1/messages/batches").header("x-api-key", "k").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_error(&response.json().await.unwrap(), "invalid_request_error");

    let response = api
        .bare(Method::GET, "/v1/messages/batches?beta=true")
        .header("authorization", "Bearer tok")
        .header("anthropic-version", "2026-10-21")
        .header("anthropic-beta", "message-batches-2024-09-24")
        .header("x-stainless-lang", "python")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["request-id"].to_str().unwrap().starts_with("req_"));

    let (status, body) = api.json(Method::GET, "/v1/messages/batches/msgbatch_nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_error(&body, "not_found_error");
}

#[tokio::test]
async fn a_batch_ends_and_streams_jsonl_results() {
    let api = Api::start(fast()).await;
    let batch = api.create(requests("feed", 50)).await;
    let id = batch["id"].as_str().unwrap();
    assert!(id.starts_with("msgbatch_"));
    assert_eq!(batch["type"], "message_batch");
    assert_eq!(batch["processing_status"], "in_progress");
    assert_eq!(
        batch["request_counts"],
        json!({"processing": 50, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0})
    );
    assert!(batch["results_url"].is_null() && batch["ended_at"].is_null() && batch["archived_at"].is_null());
    let created = chrono::DateTime::parse_from_rfc3339(batch["created_at"].as_str().unwrap()).unwrap();
    let expires = chrono::DateTime::parse_from_rfc3339(batch["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(expires - created, chrono::Duration::hours(24));

    let ended = api.wait_ended(id).await;
    assert_eq!(ended["request_counts"]["succeeded"], 50);
    assert_eq!(ended["request_counts"]["processing"], 0);
    assert!(ended["ended_at"].is_string());
    assert_eq!(ended["results_url"], format!("{}/v1/messages/batches/{id}/results", api.sim.base_url()));

    let (text, content_type) = api.results_text(&ended).await;
    assert_eq!(content_type, "application/x-jsonl");
    assert_eq!(text.lines().count(), 50);
    let results = api.results(&ended).await;
    let ids: BTreeSet<String> = results.keys().cloned().collect();
    let expected: BTreeSet<String> = (0..50).map(|i| format!("feed-{i}")).collect();
    assert_eq!(ids, expected);
    let first_line: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_ne!(first_line["custom_id"], "feed-0", "lines come shuffled");
    let message = &results["feed-7"]["message"];
    assert_eq!(results["feed-7"]["type"], "succeeded");
    assert!(message["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(message["type"], "message");
    assert_eq!(message["model"], "claude-haiku-4-5");
    assert_eq!(message["content"][0]["type"], "text");
    assert!(message["content"][0]["text"].as_str().unwrap().contains("Article 7"));
    assert_eq!(message["usage"]["service_tier"], "batch");
    assert!(message["usage"]["input_tokens"].as_u64().unwrap() > 0);
    api.sim.shutdown().await;
}

#[tokio::test]
async fn counts_stay_processing_until_the_whole_batch_ends() {
    // Three seconds of the simulator's clock per batch: nothing ends until the test moves it.
    let config = SimConfig { time_scale: 100.0, batch_median_secs: 300.0, batch_p95_secs: 320.0, ..fast() };
    let api = Api::start(config).await;
    let batch = api.create(requests("slow", 20)).await;
    let id = batch["id"].as_str().unwrap();
    let (_, polled) = api.json(Method::GET, &format!("/v1/messages/batches/{id}"), None).await;
    assert_eq!(polled["processing_status"], "in_progress");
    assert_eq!(polled["request_counts"]["processing"], 20);
    let (status, body) = api.json(Method::GET, &format!("/v1/messages/batches/{id}/results"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "invalid_request_error");
    let (status, body) = api.json(Method::DELETE, &format!("/v1/messages/batches/{id}"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "invalid_request_error");
    let ended = api.wait_ended(id).await;
    assert_eq!(ended["request_counts"]["succeeded"], 20);
    let (status, body) = api.json(Method::DELETE, &format!("/v1/messages/batches/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"id": id, "type": "message_batch_deleted"}));
    let (status, _) = api.json(Method::GET, &format!("/v1/messages/batches/{id}"), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn create_rejects_bad_and_duplicate_custom_ids() {
    let api = Api::start(fast()).await;
    let p = params("hi", 10);
    for requests in [
        json!([{"custom_id": "has space", "params": p}]),
        json!([{"custom_id": "a".repeat(65), "params": p}]),
        json!([{"custom_id": "", "params": p}]),
        json!([{"custom_id": "dup", "params": p}, {"custom_id": "dup", "params": p}]),
        json!([]),
    ] {
        let (status, body) = api.json(Method::POST, "/v1/messages/batches", Some(json!({"requests": requests}))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{requests}");
        assert_error(&body, "invalid_request_error");
    }
    let (status, body) = api.json(Method::POST, "/v1/messages/batches", Some(json!({"nope": 1}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_error(&body, "invalid_request_error");
    assert_eq!(api.sim.stats().batches_created, 0);
}

#[tokio::test]
async fn oversized_create_gets_413() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::start(fast()).await;
    let mut stream = tokio::net::TcpStream::connect(api.sim.addr).await.unwrap();
    let head = "POST /v1/messages/batches HTTP/1.1\r\nhost: x\r\nx-api-key: k\r\nanthropic-version: 2023-06-01\r\n\
                content-type: application/json\r\ncontent-length: 300000000\r\nconnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("request_too_large"), "{answer}");
}

#[tokio::test]
async fn bad_params_come_back_as_errored_results() {
    let api = Api::start(fast()).await;
    let good = params("fine", 50);
    let mut no_model = good.clone();
    no_model.as_object_mut().unwrap().remove("model");
    let mut zero = good.clone();
    zero["max_tokens"] = json!(0);
    let mut stream = good.clone();
    stream["stream"] = json!(true);
    let mut no_messages = good.clone();
    no_messages.as_object_mut().unwrap().remove("messages");
    let batch = api
        .create(json!([
            {"custom_id": "good", "params": good},
            {"custom_id": "no-model", "params": no_model},
            {"custom_id": "zero", "params": zero},
            {"custom_id": "stream", "params": stream},
            {"custom_id": "no-messages", "params": no_messages},
        ]))
        .await;
    let ended = api.wait_ended(batch["id"].as_str().unwrap()).await;
    assert_eq!(ended["request_counts"]["succeeded"], 1);
    assert_eq!(ended["request_counts"]["errored"], 4);
    let results = api.results(&ended).await;
    assert_eq!(results["good"]["type"], "succeeded");
    for id in ["no-model", "zero", "stream", "no-messages"] {
        assert_eq!(results[id]["type"], "errored", "{id}");
        assert_error(&results[id]["error"], "invalid_request_error");
    }
    assert!(results["stream"]["error"]["error"]["message"].as_str().unwrap().contains("stream"));
}

#[tokio::test]
async fn list_pages_newest_first() {
    let api = Api::start(fast()).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(api.create(requests(&format!("b{i}"), 1)).await["id"].as_str().unwrap().to_owned());
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut path = "/v1/messages/batches?limit=2".to_owned();
    loop {
        let (status, page) = api.json(Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let data = page["data"].as_array().unwrap();
        assert_eq!(page["first_id"], data[0]["id"]);
        assert_eq!(page["last_id"], data[data.len() - 1]["id"]);
        seen.extend(data.iter().map(|b| b["id"].as_str().unwrap().to_owned()));
        if page["has_more"] == false {
            break;
        }
        path = format!("/v1/messages/batches?limit=2&after_id={}", page["last_id"].as_str().unwrap());
    }
    assert_eq!(seen, ids);
    let (_, page) = api.json(Method::GET, &format!("/v1/messages/batches?limit=2&before_id={}", ids[3]), None).await;
    let newer: Vec<&str> = page["data"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap()).collect();
    assert_eq!(newer, [ids[1].as_str(), ids[2].as_str()]);
    assert_eq!(page["has_more"], true);
    let (_, page) = api.json(Method::GET, "/v1/messages/batches", None).await;
    assert_eq!(page["data"].as_array().unwrap().len(), 5);
    for bad in ["limit=0", "limit=1001"] {
        let (status, _) = api.json(Method::GET, &format!("/v1/messages/batches?{bad}"), None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn cancel_ends_with_canceled_results() {
    let api = Api::start(SimConfig { never_end: true, ..fast() }).await;
    let batch = api.create(requests("c", 10)).await;
    let id = batch["id"].as_str().unwrap();
    let (status, canceling) = api.json(Method::POST, &format!("/v1/messages/batches/{id}/cancel"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(canceling["processing_status"], "canceling");
    assert!(canceling["cancel_initiated_at"].is_string());
    let ended = api.wait_ended(id).await;
    assert_eq!(ended["request_counts"]["canceled"], 10);
    let results = api.results(&ended).await;
    assert_eq!(results.len(), 10);
    assert!(results.values().all(|r| *r == json!({"type": "canceled"})));
    assert_eq!(api.sim.stats().batches_canceled, 1);
}

#[tokio::test]
async fn requests_unfinished_at_24_hours_expire() {
    // Every batch would take 48 simulated hours; it ends at 24 h (86 ms real).
    let config = SimConfig { time_scale: 1e6, batch_median_secs: 172_800.0, batch_p95_secs: 172_800.0, ..fast() };
    let api = Api::start(config).await;
    let batch = api.create(requests("late", 100)).await;
    let ended = api.wait_ended(batch["id"].as_str().unwrap()).await;
    let counts = &ended["request_counts"];
    let expired = counts["expired"].as_u64().unwrap();
    assert!((25..75).contains(&expired), "{counts}");
    assert_eq!(counts["succeeded"].as_u64().unwrap() + expired, 100, "{counts}");
    let created = chrono::DateTime::parse_from_rfc3339(ended["created_at"].as_str().unwrap()).unwrap();
    let ended_at = chrono::DateTime::parse_from_rfc3339(ended["ended_at"].as_str().unwrap()).unwrap();
    assert!((ended_at - created - chrono::Duration::hours(24)).num_milliseconds().abs() < 5);
}

#[tokio::test]
async fn error_shares_shape_the_outcomes() {
    let config = SimConfig { errored_share: 0.5, invalid_share: 0.1, expired_share: 0.1, ..fast() };
    let api = Api::start(config).await;
    let batch = api.create(requests("share", 200)).await;
    let ended = api.wait_ended(batch["id"].as_str().unwrap()).await;
    let counts = &ended["request_counts"];
    let errored = counts["errored"].as_u64().unwrap();
    let expired = counts["expired"].as_u64().unwrap();
    assert!((90..150).contains(&errored), "{counts}");
    assert!((5..40).contains(&expired), "{counts}");
    let results = api.results(&ended).await;
    let kinds: BTreeSet<&str> = results
        .values()
        .filter(|r| r["type"] == "errored")
        .map(|r| r["error"]["error"]["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, BTreeSet::from(["api_error", "invalid_request_error", "overloaded_error"]));
    assert_eq!(results.values().filter(|r| r["type"] == "expired").count() as u64, expired);
}

#[tokio::test]
async fn injected_faults_carry_retry_after() {
    let api = Api::start(SimConfig { rate_limit_chance: 1.0, retry_after_secs: 7, ..fast() }).await;
    let response = api.req(Method::GET, "/v1/messages/batches").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_error(&response.json().await.unwrap(), "rate_limit_error");
    assert_eq!(api.sim.stats().faults_injected["429"], 1);

    let api = Api::start(SimConfig { overloaded_chance: 1.0, ..fast() }).await;
    let (status, body) = api.json(Method::POST, "/v1/messages", Some(params("x", 5))).await;
    assert_eq!(status.as_u16(), 529);
    assert_error(&body, "overloaded_error");

    let api = Api::start(SimConfig { server_error_chance: 1.0, ..fast() }).await;
    let response = api.req(Method::GET, "/v1/messages/batches").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(response.headers().contains_key("retry-after"));
    assert_error(&response.json().await.unwrap(), "api_error");
}

#[tokio::test]
async fn a_failed_create_does_not_doom_the_next_ones() {
    let api = Api::start(SimConfig { batch_create_error_chance: 0.5, ..fast() }).await;
    let mut outcomes = Vec::new();
    for n in 0..20 {
        let body = json!({"requests": requests(&format!("c{n}"), 1)});
        let (status, _) = api.json(Method::POST, "/v1/messages/batches", Some(body)).await;
        outcomes.push(status == StatusCode::OK);
    }
    let first_failure = outcomes.iter().position(|ok| !ok).expect("some of 20 creates fail at 50%");
    assert!(outcomes[first_failure..].contains(&true), "a create succeeds after a failure: {outcomes:?}");
}

#[tokio::test]
async fn a_lost_create_answer_still_creates_the_batch() {
    let api = Api::start(SimConfig { create_answer_lost_chance: 1.0, ..fast() }).await;
    let (status, body) =
        api.json(Method::POST, "/v1/messages/batches", Some(json!({"requests": requests("l", 2)}))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_error(&body, "api_error");
    let (_, list) = api.json(Method::GET, "/v1/messages/batches", None).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "the batch exists: {list}");
}

#[tokio::test]
async fn a_truncated_stream_ends_mid_line() {
    let api = Api::start(SimConfig { truncate_results_chance: 1.0, ..fast() }).await;
    let batch = api.create(requests("t", 40)).await;
    let ended = api.wait_ended(batch["id"].as_str().unwrap()).await;
    let (text, _) = api.results_text(&ended).await;
    assert!(!text.is_empty() && !text.ends_with('\n'), "{text}");
    let lines: Vec<&str> = text.split('\n').collect();
    assert!(lines.len() <= 40);
    for line in &lines[..lines.len() - 1] {
        serde_json::from_str::<Value>(line).expect("whole lines are JSON");
    }
    assert!(serde_json::from_str::<Value>(lines[lines.len() - 1]).is_err());
    assert_eq!(api.sim.stats().faults_injected["truncated_results"], 1);
}

#[tokio::test]
async fn the_same_seed_gives_the_same_results() {
    let config = SimConfig { seed: 42, errored_share: 0.2, ..fast() };
    let mut texts = Vec::new();
    for config in [config.clone(), config.clone(), SimConfig { seed: 43, ..config }] {
        let api = Api::start(config).await;
        let batch = api.create(requests("d", 30)).await;
        let ended = api.wait_ended(batch["id"].as_str().unwrap()).await;
        texts.push(api.results_text(&ended).await.0);
    }
    assert_eq!(texts[0], texts[1]);
    assert_ne!(texts[0], texts[2]);
}

#[tokio::test]
async fn stats_count_custom_ids_submitted_twice() {
    let api = Api::start(fast()).await;
    api.create(json!([{"custom_id": "a", "params": params("x", 5)}, {"custom_id": "b", "params": params("y", 5)}]))
        .await;
    api.create(json!([{"custom_id": "b", "params": params("y", 5)}, {"custom_id": "c", "params": params("z", 5)}]))
        .await;
    api.json(Method::POST, "/v1/messages", Some(params("sync", 5))).await;
    let response = api.bare(Method::GET, "/_sim/stats").send().await.unwrap();
    let stats: Value = response.json().await.unwrap();
    assert_eq!(stats["batches_created"], 2);
    assert_eq!(stats["requests_received"], 4);
    assert_eq!(stats["messages_calls"], 1);
    assert_eq!(stats["custom_ids_submitted_more_than_once"], 1);
    assert_eq!(stats["endpoint_calls"]["POST /v1/messages/batches"], 2);
    assert_eq!(stats["endpoint_calls"]["POST /v1/messages"], 1);
}

#[tokio::test]
async fn messages_report_usage_and_cache_writes_then_reads() {
    let api = Api::start(fast()).await;
    let body = json!({
        "model": "claude-sonnet-4-5",
        "max_tokens": 1024,
        "system": [{"type": "text", "text": "s".repeat(4000), "cache_control": {"type": "ephemeral", "ttl": "1h"}}],
        "messages": [{"role": "user", "content": "Classify this article about GPUs"}],
    });
    let (status, first) = api.json(Method::POST, "/v1/messages", Some(body.clone())).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert!(first["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(first["role"], "assistant");
    assert_eq!(first["stop_reason"], "end_turn");
    let usage = &first["usage"];
    assert_eq!(usage["service_tier"], "standard");
    assert_eq!(usage["cache_creation_input_tokens"], 1000);
    assert_eq!(usage["cache_creation"]["ephemeral_1h_input_tokens"], 1000);
    assert_eq!(usage["cache_creation"]["ephemeral_5m_input_tokens"], 0);
    assert_eq!(usage["cache_read_input_tokens"], 0);
    let text = first["content"][0]["text"].as_str().unwrap();
    assert_eq!(usage["output_tokens"].as_u64().unwrap(), (text.chars().count() as u64).div_ceil(4));

    let (_, second) = api.json(Method::POST, "/v1/messages", Some(body.clone())).await;
    assert_eq!(second["usage"]["cache_read_input_tokens"], 1000);
    assert_eq!(second["usage"]["cache_creation_input_tokens"], 0);
    assert_eq!(second["content"], first["content"], "answers derive from the prompt");
    assert_ne!(second["id"], first["id"]);

    let mut small = body.clone();
    small["max_tokens"] = json!(5);
    let (_, cut) = api.json(Method::POST, "/v1/messages", Some(small)).await;
    assert_eq!(cut["stop_reason"], "max_tokens");
    assert_eq!(cut["usage"]["output_tokens"], 5);

    for bad in [
        json!({"max_tokens": 5, "messages": []}),
        json!({"model": "m", "messages": [{"role": "user", "content": "x"}]}),
    ] {
        let (status, body) = api.json(Method::POST, "/v1/messages", Some(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_error(&body, "invalid_request_error");
    }
}

#[tokio::test]
async fn a_100k_request_batch_streams() {
    let api = Api::start(fast()).await;
    let mut body = String::from(r#"{"requests":["#);
    for i in 0..100_000 {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!(
            r#"{{"custom_id":"big-{i}","params":{{"model":"m","max_tokens":20,"messages":[{{"role":"user","content":"item {i}"}}]}}}}"#
        ));
    }
    body.push_str("]}");
    let response = api.req(Method::POST, "/v1/messages/batches").body(body).send().await.unwrap();
    let batch: Value = response.json().await.unwrap();
    assert_eq!(batch["request_counts"]["processing"], 100_000, "{batch}");
    let ended = api.wait_ended(batch["id"].as_str().unwrap()).await;
    assert_eq!(ended["request_counts"]["succeeded"], 100_000);
    let url = ended["results_url"].as_str().unwrap();
    let mut response = api.req(Method::GET, url).send().await.unwrap();
    let mut lines = 0;
    while let Some(chunk) = response.chunk().await.unwrap() {
        lines += chunk.iter().filter(|b| **b == b'\n').count();
    }
    assert_eq!(lines, 100_000);
    assert_eq!(api.sim.stats().requests_received, 100_000);
}

/// The real binary: `orchestrator sim --listen 127.0.0.1:0` says where it listens and serves until killed.
#[tokio::test]
async fn the_binary_serves_on_the_port_it_reports() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_orchestrator"))
        .args(["sim", "--listen", "127.0.0.1:0"])
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Its log line `simulator listening addr=127.0.0.1:PORT` is the evidence it is up.
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(at) = line.find("addr=127.0.0.1:") {
                let digits: String = line[at + 15..].chars().take_while(char::is_ascii_digit).collect();
                return digits.parse::<u16>().unwrap();
            }
        }
        panic!("the simulator exited without saying where it listens");
    })
    .await
    .expect("the simulator says where it listens");
    let response = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/v1/messages/batches"))
        .header("x-api-key", "k")
        .header("anthropic-version", "2023-06-01")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page: Value = response.json().await.unwrap();
    assert_eq!(page, json!({"data": [], "has_more": false, "first_id": null, "last_id": null}));
    child.kill().await.unwrap();
}
