//! The enqueue endpoint: `POST /api/v1/jobs/{job}/items` commits posted
//! items to the job's queue before it answers `202 {"ids": [...]}`, and
//! `GET /api/v1/items/{id}` says where an item is and, once delivered,
//! what it returned.
//!
//! A body is one entry (a JSON object), a JSON array of entries, or JSON
//! Lines of entries. It is taken whole or not at all: one malformed entry
//! refuses the request, naming its line, and stores nothing of it. The
//! endpoint always needs the bearer token, even on loopback: it writes.

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{Web, internal};
use crate::clock::span;
use crate::job::Job;
use crate::store::{NewQueueItem, QueueItemView};

/// A latency budget below this cannot wait for the batch lane: the item
/// goes to the sync lane at once, in a run of its own flush.
const SYNC_BUDGET: Duration = Duration::from_secs(1);

/// The longest idempotency key taken.
const MAX_KEY_LEN: usize = 256;

pub(super) fn routes(max_body: usize) -> Router<Web> {
    Router::new()
        .route("/api/v1/jobs/{job}/items", post(post_items))
        .route("/api/v1/items/{id}", get(item))
        .layer(DefaultBodyLimit::max(max_body))
}

/// One posted entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    /// What the template sees as `item`.
    item: serde_json::Map<String, serde_json::Value>,
    /// How soon the caller wants the answer, e.g. `500ms`, `2h`.
    latency_budget: Option<String>,
    /// When the answer must be final, e.g. `2h`.
    deadline: Option<String>,
    /// A retried post with the same key adds nothing.
    idempotency_key: Option<String>,
}

/// Where in a body an entry is, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// A line of JSON Lines (or of a single object).
    Line(usize),
    /// An entry of an array, or of the body as parsed.
    Entry(usize),
}

/// A refused body: what is wrong and where.
#[derive(Debug, PartialEq)]
struct Refusal {
    at: Option<At>,
    message: String,
}

impl Refusal {
    fn at(at: At, message: impl Into<String>) -> Refusal {
        Refusal { at: Some(at), message: message.into() }
    }

    fn into_response(self) -> Response {
        let (text, line, entry) = match self.at {
            Some(At::Line(n)) => (format!("line {n}: {}", self.message), Some(n), None),
            Some(At::Entry(n)) => (format!("entry {n}: {}", self.message), None, Some(n)),
            None => (self.message, None, None),
        };
        let body =
            json!({ "error": format!("{text}; nothing of this request was stored"), "line": line, "entry": entry });
        (StatusCode::BAD_REQUEST, Json(body)).into_response()
    }
}

/// The entries of a body, in order, or why it is refused.
fn parse_body(body: &[u8]) -> Result<Vec<Entry>, Refusal> {
    let text =
        std::str::from_utf8(body).map_err(|e| Refusal { at: None, message: format!("the body is not UTF-8: {e}") })?;
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(Refusal {
            at: None,
            message: "the body has no entries: post a JSON object, an array or JSON Lines".into(),
        });
    }
    if trimmed.starts_with('[') {
        let values: Vec<serde_json::Value> = serde_json::from_str(text)
            .map_err(|e| Refusal { at: None, message: format!("the JSON array is malformed: {e}") })?;
        return values
            .into_iter()
            .enumerate()
            .map(|(i, value)| serde_json::from_value(value).map_err(|e| Refusal::at(At::Entry(i + 1), e.to_string())))
            .collect();
    }
    // One object, maybe written over several lines; otherwise JSON Lines.
    if let Ok(entry) = serde_json::from_str::<Entry>(text) {
        return Ok(vec![entry]);
    }
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).map_err(|e| Refusal::at(At::Line(i + 1), without_position(&e))))
        .collect()
}

/// serde_json's message without its "at line 1 column N" (the line is ours to name).
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    match text.rfind(" at line ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}

/// An entry as the queue stores it, for `job` at `now`.
fn queue_item(job: &Job, entry: Entry, now: DateTime<Utc>) -> Result<NewQueueItem, String> {
    let duration = |field: &str, text: &Option<String>| {
        text.as_deref()
            .map(|text| match crate::manifest::parse_duration(text) {
                Ok(length) if !length.is_zero() => Ok(length),
                Ok(_) => Err(format!("{field} must be longer than zero")),
                Err(reason) => Err(format!("{field} `{text}`: {reason} (write e.g. `500ms`, `30m`, `2h`)")),
            })
            .transpose()
    };
    let budget = duration("latency_budget", &entry.latency_budget)?;
    let deadline = duration("deadline", &entry.deadline)?;
    if let Some(key) = &entry.idempotency_key
        && (key.is_empty() || key.len() > MAX_KEY_LEN)
    {
        return Err(format!("idempotency_key must be 1 to {MAX_KEY_LEN} bytes"));
    }
    let sync = budget.is_some_and(|budget| budget < SYNC_BUDGET);
    // A budget the batch lane can meet is a deadline; a shorter one sends
    // the item to the sync lane at once, which no deadline can make faster
    // (its run keeps the job's deadline, or the item's own).
    let budget = budget.filter(|_| !sync);
    let own = [budget, deadline].into_iter().flatten().min();
    let deadline_at = own.map(|own| now + span(own));
    // Its run must start by then for the job's usual window to fit before the item's deadline.
    let flush_by = deadline_at.map(|at| (at - span(job.deadline)).max(now));
    Ok(NewQueueItem {
        item: serde_json::Value::Object(entry.item).to_string(),
        idempotency_key: entry.idempotency_key,
        deadline_at,
        flush_by,
        sync,
    })
}

fn refuse(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

async fn post_items(State(web): State<Web>, Path(name): Path<String>, body: Bytes) -> Response {
    if web.token.is_none() {
        let message = format!(
            "the enqueue endpoint needs a bearer token: start the daemon with {} (or the credential `{}`) set",
            super::TOKEN_ENV,
            super::TOKEN_CREDENTIAL
        );
        return refuse(StatusCode::FORBIDDEN, message);
    }
    let jobs = web.engine.jobs();
    let Some(job) = jobs.get(&name) else {
        let help = crate::suggest::did_you_mean(&name, jobs.keys().map(String::as_str))
            .unwrap_or_else(|| "name a job of jobs/ (its file name without .yaml)".to_owned());
        return refuse(StatusCode::NOT_FOUND, format!("no job `{name}`: {help}"));
    };
    if job.queue.is_none() {
        let message = format!(
            "job `{name}` takes no posted items: add `enqueue: {{ max_items: 1000, max_wait: 30m }}` to {}",
            job.file
        );
        return refuse(StatusCode::CONFLICT, message);
    }
    let entries = match parse_body(&body) {
        Ok(entries) => entries,
        Err(refusal) => return refusal.into_response(),
    };
    let now = web.now();
    let mut items = Vec::with_capacity(entries.len());
    for (i, entry) in entries.into_iter().enumerate() {
        match queue_item(job, entry, now) {
            Ok(item) => items.push(item),
            Err(message) => return Refusal::at(At::Entry(i + 1), message).into_response(),
        }
    }
    let committed = web.engine.store().call(move |s| s.enqueue_items(&name, &items, now)).await;
    match committed {
        Ok(ids) => {
            web.engine.items_posted();
            (StatusCode::ACCEPTED, Json(json!({ "ids": ids }))).into_response()
        }
        Err(error) => internal(error),
    }
}

async fn item(State(web): State<Web>, Path(id): Path<i64>) -> Response {
    match web.read(move |s| s.queue_item(id)).await {
        Ok(Some(view)) => Json(item_json(&view)).into_response(),
        Ok(None) => refuse(StatusCode::NOT_FOUND, format!("no posted item with id {id}")),
        Err(response) => response,
    }
}

/// `{"id", "state", "run", "custom_id", "result"}`, with `error` when it failed.
fn item_json(view: &QueueItemView) -> serde_json::Value {
    let result = view.result.as_ref().map(|result| {
        json!({
            "text": result.text,
            "usage": result.usage,
            "lane": result.lane,
            "cost_usd": result.cost_micros.map(crate::cost::usd),
        })
    });
    let mut body = json!({
        "id": view.id, "state": view.state, "run": view.run, "custom_id": view.custom_id, "result": result,
    });
    if let Some(error) = &view.error {
        body["error"] = json!(error);
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(body: &str) -> Vec<Option<String>> {
        parse_body(body.as_bytes()).unwrap().into_iter().map(|e| e.idempotency_key).collect()
    }

    #[test]
    fn a_body_is_one_object_an_array_or_json_lines() {
        assert_eq!(keys("{\"item\": {\"n\": 1},\n \"idempotency_key\": \"a\"}\n"), [Some("a".to_owned())]);
        assert_eq!(keys("[{\"item\": {}}, {\"item\": {}, \"idempotency_key\": \"b\"}]"), [None, Some("b".to_owned())]);
        assert_eq!(
            keys("{\"item\": {}}\n\n{\"item\": {\"x\": 2}, \"idempotency_key\": \"c\"}\n"),
            [None, Some("c".to_owned())]
        );
    }

    #[test]
    fn a_malformed_entry_is_named_by_its_line_or_place() {
        let lines = parse_body(b"{\"item\": {}}\n{\"item\": {}}\n{\"item\": 3}\n").unwrap_err();
        assert_eq!(lines.at, Some(At::Line(3)));
        assert!(lines.message.contains("invalid type"), "{}", lines.message);
        let unknown = parse_body(b"{\"item\": {}}\n{\"itme\": {}}\n").unwrap_err();
        assert_eq!(unknown.at, Some(At::Line(2)));
        assert!(unknown.message.contains("unknown field `itme`"), "{}", unknown.message);
        let array = parse_body(b"[{\"item\": {}}, {\"item\": {}, \"deadline\": 5}]").unwrap_err();
        assert_eq!(array.at, Some(At::Entry(2)));
        assert_eq!(parse_body(b"  \n").unwrap_err().at, None);
    }
}
