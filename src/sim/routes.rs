//! The HTTP routes: Messages, Message Batches and `/_sim/stats`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Extension, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::json;

use super::create;
use super::errors::ApiError;
use super::faults;
use super::gate::{RequestNo, gate};
use super::hash::{self, Key};
use super::messages::message;
use super::params::{self, Mode, Models};
use super::results::Download;
use super::state::Sim;

/// Largest `POST /v1/messages` body.
const MESSAGES_LIMIT: usize = 32 * 1024 * 1024;
/// Largest `POST /v1/messages/batches` body.
const BATCH_LIMIT: usize = 256 * 1024 * 1024;

/// All routes, behind the gate middleware.
pub(crate) fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/v1/messages", post(create_message))
        .route("/v1/messages/batches", post(create_batch).get(list_batches))
        .route("/v1/messages/batches/{id}", get(retrieve_batch).delete(delete_batch))
        .route("/v1/messages/batches/{id}/cancel", post(cancel_batch))
        .route("/v1/messages/batches/{id}/results", get(batch_results))
        .route("/_sim/stats", get(stats))
        .merge(super::openai::routes())
        .merge(super::gemini::routes())
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(sim.clone(), gate))
        .layer(DefaultBodyLimit::disable())
        .with_state(sim)
}

type ApiResult = Result<Response, ApiError>;

/// Reads a body of at most `limit` bytes, checking the size while it streams.
pub(crate) async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if declared.is_some_and(|len: usize| len > limit) {
        return Err(ApiError::too_large(limit));
    }
    let mut buf = Vec::with_capacity(declared.unwrap_or(0));
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| ApiError::invalid(format!("could not read the request body: {err}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::too_large(limit));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The base URL clients reached us at (for `results_url`).
pub(crate) fn base_url(sim: &Sim, headers: &HeaderMap) -> String {
    match headers.get(header::HOST).and_then(|v| v.to_str().ok()) {
        Some(host) => format!("http://{host}"),
        None => format!("http://{}", sim.addr),
    }
}

async fn create_message(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Body) -> ApiResult {
    let bytes = read_body(&headers, body, MESSAGES_LIMIT).await?;
    let value: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|err| ApiError::invalid(format!("invalid request body: {err}")))?;
    let prompt = params::digest(&value, Mode::Sync, &mut Models::default()).map_err(ApiError::invalid)?;
    if sim.config.message_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sim.config.message_latency_ms)).await;
    }
    let (cache_hit, n) = {
        let mut state = sim.lock();
        let hit = prompt.cache.as_ref().is_some_and(|plan| state.cache.hit(plan, sim.clock.now()));
        state.messages += 1;
        state.stats.messages_calls += 1;
        state.stats.of("anthropic").messages_calls += 1;
        (hit, state.messages)
    };
    let id = hash::id("msg_", Key::new(sim.config.seed, "sync").num(n).finish(), prompt.hash);
    Ok(Json(message(id, &prompt, cache_hit, "standard", sim.config.reply_bytes)).into_response())
}

async fn create_batch(
    State(sim): State<Arc<Sim>>,
    Extension(RequestNo(n)): Extension<RequestNo>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = read_body(&headers, body, BATCH_LIMIT).await?;
    let incoming = tokio::task::spawn_blocking(move || create::parse(&bytes))
        .await
        .map_err(|err| ApiError::invalid(format!("could not parse the request body: {err}")))?
        .map_err(ApiError::invalid)?;
    let base = base_url(&sim, &headers);
    let mut state = sim.lock();
    if faults::roll_create_failure(&sim.config, n) {
        state.stats.fault("batch_create_500");
        return Err(ApiError::failed());
    }
    let seq = state.create_batch(&sim.config, &sim.clock, sim.nonce, incoming);
    let batch = &state.batches[&seq];
    tracing::info!(batch = %batch.core.id, requests = batch.core.records.len(), "batch created");
    if faults::roll_lost_answer(&sim.config, n) {
        state.stats.fault("create_answer_lost");
        return Err(ApiError::server(sim.config.retry_after_secs));
    }
    Ok(Json(batch.to_json(&sim.clock, &base)).into_response())
}

async fn retrieve_batch(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let mut state = sim.lock();
    let batch = state.batch(sim.nonce, &id, sim.clock.now(), &sim.config).ok_or_else(|| unknown(&id))?;
    Ok(Json(batch.to_json(&sim.clock, &base_url(&sim, &headers))).into_response())
}

fn unknown(id: &str) -> ApiError {
    ApiError::not_found(format!("No batch found with id '{id}'."))
}

/// Query of the list endpoint.
#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    after_id: Option<String>,
    before_id: Option<String>,
}

async fn list_batches(
    State(sim): State<Arc<Sim>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult {
    let Query(query) = query.map_err(|err| ApiError::invalid(err.body_text()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(format!("limit: must be between 1 and 1000, got {limit}")));
    }
    if query.after_id.is_some() && query.before_id.is_some() {
        return Err(ApiError::invalid("after_id and before_id cannot both be given"));
    }
    let cursor = |id: &Option<String>| match id {
        None => Ok(None),
        Some(id) => super::batches::parse_id(sim.nonce, id)
            .map(Some)
            .ok_or_else(|| ApiError::invalid(format!("invalid batch id '{id}' in cursor"))),
    };
    let (after, before) = (cursor(&query.after_id)?, cursor(&query.before_id)?);
    let base = base_url(&sim, &headers);
    let now = sim.clock.now();
    let mut state = sim.lock();
    let (seqs, has_more) = state.page(limit as usize, after, before);
    let mut data = Vec::with_capacity(seqs.len());
    for seq in &seqs {
        let batch = state.batches.get_mut(seq).expect("a listed batch exists");
        batch.refresh(now, &sim.config);
        data.push(batch.to_json(&sim.clock, &base));
    }
    let first_id = data.first().map(|b| b["id"].clone());
    let last_id = data.last().map(|b| b["id"].clone());
    Ok(Json(json!({"data": data, "has_more": has_more, "first_id": first_id, "last_id": last_id})).into_response())
}

async fn cancel_batch(State(sim): State<Arc<Sim>>, headers: HeaderMap, Path(id): Path<String>) -> ApiResult {
    let now = sim.clock.now();
    let mut state = sim.lock();
    let batch = state.batch(sim.nonce, &id, now, &sim.config).ok_or_else(|| unknown(&id))?;
    let canceled = batch.cancel(now, &sim.clock, sim.config.cancel_secs);
    let body = batch.to_json(&sim.clock, &base_url(&sim, &headers));
    if canceled {
        state.stats.batches_canceled += 1;
        state.stats.of("anthropic").batches_canceled += 1;
        tracing::info!(batch = %id, "batch canceling");
    }
    Ok(Json(body).into_response())
}

async fn delete_batch(State(sim): State<Arc<Sim>>, Path(id): Path<String>) -> ApiResult {
    let mut state = sim.lock();
    let batch = state.batch(sim.nonce, &id, sim.clock.now(), &sim.config).ok_or_else(|| unknown(&id))?;
    if batch.ended.is_none() {
        return Err(ApiError::invalid(format!(
            "Batch '{id}' cannot be deleted while it is {}; cancel it and wait for it to end.",
            batch.status()
        )));
    }
    let seq = super::batches::parse_id(sim.nonce, &id).expect("a found id parses");
    state.batches.remove(&seq);
    state.stats.batches_deleted += 1;
    Ok(Json(json!({"id": id, "type": "message_batch_deleted"})).into_response())
}

async fn batch_results(
    State(sim): State<Arc<Sim>>,
    Extension(n): Extension<RequestNo>,
    Path(id): Path<String>,
) -> ApiResult {
    let download = {
        let mut state = sim.lock();
        let batch = state.batch(sim.nonce, &id, sim.clock.now(), &sim.config).ok_or_else(|| unknown(&id))?;
        if batch.ended.is_none() {
            return Err(ApiError::invalid(format!(
                "Batch '{id}' is still {}; results are available once processing_status is ended.",
                batch.status()
            )));
        }
        let truncate_at = faults::roll_truncation(&sim.config, n.0);
        let download =
            Download { config: sim.config.clone(), core: batch.core.clone(), cancel_at: batch.cancel_at, truncate_at };
        if truncate_at.is_some() {
            state.stats.fault("truncated_results");
        }
        download
    };
    let mut response = download.into_body().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-jsonl"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename*=utf-8''{id}_results.jsonl")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    Json(sim.stats()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found(
        "Not found: the simulator serves /v1/messages, /v1/messages/batches, /v1/chat/completions, /v1/files and /v1/batches.",
    )
}
