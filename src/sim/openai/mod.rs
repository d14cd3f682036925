//! The OpenAI side of the simulator (`PROVIDERS.md` §3): Chat Completions,
//! Files and Batch on the same listener as Anthropic's API (the paths do
//! not collide), with the same fault knobs. Errors are in OpenAI's shape
//! (the gate renders them), ids are `file-…`, `batch_…`, `chatcmpl-…`, and
//! timestamps are Unix seconds of simulated time.

mod batches;
mod chat;
mod files;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State as Shared};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use self::batches::{Download, OaBatch, Part, batch_id, parse_batch_id, read_input};
use self::files::{MAX_INPUT_BYTES, SimFile, file_id, parse_file_id, parse_upload};
use super::batches::{Core, Record};
use super::errors::ApiError;
use super::faults;
use super::gate::RequestNo;
use super::hash::{self, Key};
use super::params::Models;
use super::routes::read_body;
use super::state::Sim;

/// Largest chat completion body.
const CHAT_LIMIT: usize = 32 * 1024 * 1024;
/// The provider's name in the statistics.
const PROVIDER: &str = "openai";

/// Files and batches of the OpenAI API.
#[derive(Default)]
pub(crate) struct State {
    files: BTreeMap<u64, SimFile>,
    batches: BTreeMap<u64, OaBatch>,
    next_file: u64,
    next_batch: u64,
    completions: u64,
}

/// The OpenAI routes (the gate and the body limit are added by the caller).
pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/v1/chat/completions", post(create_chat_completion))
        .route("/v1/files", post(upload_file))
        .route("/v1/files/{id}", get(retrieve_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batches", post(create_batch).get(list_batches))
        .route("/v1/batches/{id}", get(retrieve_batch))
        .route("/v1/batches/{id}/cancel", post(cancel_batch))
}

type ApiResult = Result<Response, ApiError>;

async fn create_chat_completion(Shared(sim): Shared<Arc<Sim>>, headers: HeaderMap, body: Body) -> ApiResult {
    let bytes = read_body(&headers, body, CHAT_LIMIT).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::invalid(format!("We could not parse the JSON body of your request: {err}")))?;
    let prompt = chat::digest(&value, &mut Models::default()).map_err(ApiError::invalid)?;
    if sim.config.message_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sim.config.message_latency_ms)).await;
    }
    let now = sim.clock.now();
    let (cache_hit, n) = {
        let mut state = sim.lock();
        let hit = prompt.cache.as_ref().is_some_and(|plan| state.cache.hit(plan, now));
        state.openai.completions += 1;
        state.stats.messages_calls += 1;
        state.stats.of(PROVIDER).messages_calls += 1;
        (hit, state.openai.completions)
    };
    let id = hash::id("chatcmpl-", Key::new(sim.config.seed, "openai-sync").num(n).finish(), prompt.hash);
    let completion = chat::completion(&id, &prompt, cache_hit, sim.clock.unix(now), sim.config.reply_bytes);
    let mut response = Json(completion).into_response();
    rate_limit_headers(response.headers_mut());
    Ok(response)
}

/// Generous limits, as an account with headroom answers: the lanes read them.
fn rate_limit_headers(headers: &mut HeaderMap) {
    for (name, value) in [
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-requests", "9999"),
        ("x-ratelimit-reset-requests", "6ms"),
        ("x-ratelimit-limit-tokens", "10000000"),
        ("x-ratelimit-remaining-tokens", "9999000"),
        ("x-ratelimit-reset-tokens", "6ms"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

async fn upload_file(Shared(sim): Shared<Arc<Sim>>, headers: HeaderMap, body: Body) -> ApiResult {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let bytes = read_body(&headers, body, MAX_INPUT_BYTES + 64 * 1024).await?;
    let upload = tokio::task::spawn_blocking(move || parse_upload(&content_type, &bytes))
        .await
        .map_err(|err| ApiError::invalid(format!("could not read the upload: {err}")))?
        .map_err(ApiError::invalid)?;
    if !["batch", "assistants", "fine-tune", "vision", "user", "evals"].contains(&upload.purpose.as_str()) {
        return Err(ApiError::invalid(format!("Invalid value for 'purpose': '{}'.", upload.purpose)));
    }
    if upload.purpose == "batch" && upload.data.len() > MAX_INPUT_BYTES {
        return Err(ApiError::invalid(format!("A batch input file may be at most {MAX_INPUT_BYTES} bytes.")));
    }
    let now = sim.clock.now();
    let mut state = sim.lock();
    let seq = state.openai.next_file;
    state.openai.next_file += 1;
    let file = SimFile {
        id: file_id(sim.nonce, seq),
        filename: upload.filename,
        purpose: upload.purpose,
        bytes: upload.data.len() as u64,
        created_at: sim.clock.unix(now),
        body: files::Body::Uploaded(Arc::new(upload.data)),
    };
    let answer = file.to_json();
    state.openai.files.insert(seq, file);
    state.stats.of(PROVIDER).files_uploaded += 1;
    Ok(Json(answer).into_response())
}

fn no_file(id: &str) -> ApiError {
    ApiError::not_found(format!("No such File object: {id}"))
}

async fn retrieve_file(Shared(sim): Shared<Arc<Sim>>, Path(id): Path<String>) -> ApiResult {
    let state = sim.lock();
    let file =
        parse_file_id(sim.nonce, &id).and_then(|seq| state.openai.files.get(&seq)).ok_or_else(|| no_file(&id))?;
    Ok(Json(file.to_json()).into_response())
}

async fn file_content(
    Shared(sim): Shared<Arc<Sim>>,
    Extension(RequestNo(n)): Extension<RequestNo>,
    Path(id): Path<String>,
) -> ApiResult {
    let body = {
        let mut state = sim.lock();
        let seq = parse_file_id(sim.nonce, &id).ok_or_else(|| no_file(&id))?;
        let file = state.openai.files.get(&seq).ok_or_else(|| no_file(&id))?;
        let (batch, part) = match &file.body {
            files::Body::Uploaded(bytes) => return Ok(octets(Body::from(bytes.as_ref().clone()))),
            files::Body::Output(batch) => (*batch, Part::Output),
            files::Body::Errors(batch) => (*batch, Part::Errors),
        };
        let created = file.created_at;
        let batch = state.openai.batches.get(&batch).ok_or_else(|| no_file(&id))?;
        let truncate_at = faults::roll_truncation(&sim.config, n);
        let download = Download {
            config: sim.config.clone(),
            core: batch.core.clone(),
            cancel_at: batch.cancel_at,
            part,
            created,
            truncate_at,
        };
        if truncate_at.is_some() {
            state.stats.fault("truncated_results");
        }
        download.into_body()
    };
    Ok(octets(body))
}

fn octets(body: Body) -> Response {
    let mut response = body.into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    response
}

/// The body of `POST /v1/batches`.
#[derive(Debug, Deserialize)]
struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<Map<String, Value>>,
}

async fn create_batch(
    Shared(sim): Shared<Arc<Sim>>,
    Extension(RequestNo(n)): Extension<RequestNo>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let bytes = read_body(&headers, body, 1024 * 1024).await?;
    let create: CreateBatch =
        serde_json::from_slice(&bytes).map_err(|err| ApiError::invalid(format!("Invalid body: {err}")))?;
    if create.endpoint != batches::ENDPOINT {
        return Err(ApiError::invalid(format!(
            "The simulator runs batches for {} only, not '{}'.",
            batches::ENDPOINT,
            create.endpoint
        )));
    }
    if create.completion_window != "24h" {
        return Err(ApiError::invalid("Invalid value for 'completion_window': only '24h' is supported."));
    }
    check_metadata(create.metadata.as_ref())?;
    let input = {
        let state = sim.lock();
        let file = parse_file_id(sim.nonce, &create.input_file_id)
            .and_then(|seq| state.openai.files.get(&seq))
            .ok_or_else(|| no_file(&create.input_file_id))?;
        match (&file.body, file.purpose.as_str()) {
            (files::Body::Uploaded(bytes), "batch") => Arc::clone(bytes),
            _ => return Err(ApiError::invalid(format!("File {} was not uploaded with purpose 'batch'.", file.id))),
        }
    };
    let input = tokio::task::spawn_blocking(move || read_input(&input))
        .await
        .map_err(|err| ApiError::invalid(format!("could not read the input file: {err}")))?;
    let now = sim.clock.now();
    let mut state = sim.lock();
    if faults::roll_create_failure(&sim.config, n) {
        state.stats.fault("batch_create_500");
        return Err(ApiError::failed());
    }
    let seq = new_batch(&mut state, &sim, create, input, now);
    let answer = state.openai.batches[&seq].to_json(&sim.clock, now, &sim.config);
    if faults::roll_lost_answer(&sim.config, n) {
        state.stats.fault("create_answer_lost");
        return Err(ApiError::server(sim.config.retry_after_secs));
    }
    Ok(Json(answer).into_response())
}

/// At most 16 pairs, keys of at most 64 characters, string values of at most 512.
fn check_metadata(metadata: Option<&Map<String, Value>>) -> Result<(), ApiError> {
    let Some(metadata) = metadata else { return Ok(()) };
    if metadata.len() > 16 {
        return Err(ApiError::invalid("Invalid 'metadata': at most 16 key-value pairs."));
    }
    for (key, value) in metadata {
        let Some(text) = value.as_str() else {
            return Err(ApiError::invalid(format!("Invalid 'metadata.{key}': expected a string.")));
        };
        if key.chars().count() > 64 || text.chars().count() > 512 {
            return Err(ApiError::invalid("Invalid 'metadata': keys of at most 64, values of at most 512 characters."));
        }
    }
    Ok(())
}

/// Records a batch over `input` (submissions counted as for Anthropic's); its sequence number.
fn new_batch(
    state: &mut super::state::State,
    sim: &Sim,
    create: CreateBatch,
    mut input: batches::Input,
    now: f64,
) -> u64 {
    let seq = state.openai.next_batch;
    state.openai.next_batch += 1;
    let run = input.failures.is_empty();
    let mut records = Vec::with_capacity(input.records.len());
    for (custom_id, prompt) in std::mem::take(&mut input.records) {
        let submission = if run {
            let seen = state.submitted.entry(custom_id.clone()).or_insert(0);
            let submission = *seen;
            *seen += 1;
            if *seen == 2 {
                state.stats.custom_ids_submitted_more_than_once += 1;
            }
            submission
        } else {
            0
        };
        let cache_hit = match &prompt {
            Ok(super::params::Prompt { cache: Some(plan), .. }) if run => state.cache.hit(plan, now),
            _ => false,
        };
        records.push(Record { custom_id, prompt, cache_hit, submission });
    }
    if run {
        state.stats.batches_created += 1;
        state.stats.requests_received += records.len() as u64;
    }
    let stats = state.stats.of(PROVIDER);
    stats.batches_created += 1;
    stats.requests_received += records.len() as u64;
    let duration =
        if sim.config.never_end { f64::INFINITY } else { faults::batch_duration(&sim.config, seq ^ (1 << 62)) };
    let core = Core { id: batch_id(sim.nonce, seq), records: records.into_boxed_slice(), created: now, duration };
    tracing::info!(batch = %core.id, requests = core.records.len(), "OpenAI batch created");
    state.openai.batches.insert(seq, OaBatch::new(core, create.input_file_id, create.metadata, input));
    seq
}

/// The batch with this id refreshed to `now`; when it ended just now, its
/// output and error files come into being (only those with lines).
fn refreshed<'a>(state: &'a mut super::state::State, sim: &Sim, id: &str, now: f64) -> Option<&'a mut OaBatch> {
    let seq = parse_batch_id(sim.nonce, id)?;
    let openai = &mut state.openai;
    let batch = openai.batches.get_mut(&seq)?;
    if batch.refresh(now) {
        let (output, errors) = batch.has_lines(&sim.config);
        let created = sim.clock.unix(now);
        for (has, part) in [(output, Part::Output), (errors, Part::Errors)] {
            if !has {
                continue;
            }
            let file_seq = openai.next_file;
            openai.next_file += 1;
            let id = file_id(sim.nonce, file_seq);
            let (body, name) = match part {
                Part::Output => (files::Body::Output(seq), "batch_output.jsonl"),
                Part::Errors => (files::Body::Errors(seq), "batch_errors.jsonl"),
            };
            let bytes = file_bytes(batch, part, created, &sim.config);
            let file = SimFile {
                id: id.clone(),
                filename: name.into(),
                purpose: "batch_output".into(),
                bytes,
                created_at: created,
                body,
            };
            openai.files.insert(file_seq, file);
            match part {
                Part::Output => batch.output_file_id = Some(id),
                Part::Errors => batch.error_file_id = Some(id),
            }
        }
    }
    openai.batches.get_mut(&seq)
}

/// The size of an output or error file: its lines generated once and counted.
fn file_bytes(batch: &OaBatch, part: Part, created: i64, config: &super::SimConfig) -> u64 {
    let download = Download {
        config: config.clone(),
        core: batch.core.clone(),
        cancel_at: batch.cancel_at,
        part,
        created,
        truncate_at: None,
    };
    download.len()
}

fn no_batch(id: &str) -> ApiError {
    ApiError::not_found(format!("No batch found with id '{id}'."))
}

async fn retrieve_batch(Shared(sim): Shared<Arc<Sim>>, Path(id): Path<String>) -> ApiResult {
    let now = sim.clock.now();
    let mut state = sim.lock();
    let batch = refreshed(&mut state, &sim, &id, now).ok_or_else(|| no_batch(&id))?;
    Ok(Json(batch.to_json(&sim.clock, now, &sim.config)).into_response())
}

async fn cancel_batch(Shared(sim): Shared<Arc<Sim>>, Path(id): Path<String>) -> ApiResult {
    let now = sim.clock.now();
    let mut state = sim.lock();
    let batch = refreshed(&mut state, &sim, &id, now).ok_or_else(|| no_batch(&id))?;
    if batch.ended.is_some() {
        return Err(ApiError::invalid(format!("Cannot cancel a batch with status '{}'.", batch.status(now))));
    }
    let canceled = batch.cancel(now, &sim.clock, sim.config.cancel_secs);
    let answer = batch.to_json(&sim.clock, now, &sim.config);
    if canceled {
        state.stats.batches_canceled += 1;
        state.stats.of(PROVIDER).batches_canceled += 1;
        tracing::info!(batch = %id, "OpenAI batch cancelling");
    }
    Ok(Json(answer).into_response())
}

/// Query of the list endpoint.
#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<i64>,
    after: Option<String>,
}

async fn list_batches(Shared(sim): Shared<Arc<Sim>>, query: Result<Query<ListQuery>, QueryRejection>) -> ApiResult {
    let Query(query) = query.map_err(|err| ApiError::invalid(err.body_text()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid(format!("Invalid 'limit': integer between 1 and 100, got {limit}.")));
    }
    let after = match &query.after {
        None => None,
        Some(id) => {
            Some(parse_batch_id(sim.nonce, id).ok_or_else(|| ApiError::invalid(format!("Invalid 'after': '{id}'.")))?)
        }
    };
    let now = sim.clock.now();
    let mut state = sim.lock();
    let mut seqs: Vec<u64> = match after {
        Some(after) => {
            state.openai.batches.range(..after).rev().map(|(seq, _)| *seq).take(limit as usize + 1).collect()
        }
        None => state.openai.batches.keys().rev().copied().take(limit as usize + 1).collect(),
    };
    let has_more = seqs.len() > limit as usize;
    seqs.truncate(limit as usize);
    let mut data = Vec::with_capacity(seqs.len());
    for seq in seqs {
        let id = batch_id(sim.nonce, seq);
        let batch = refreshed(&mut state, &sim, &id, now).expect("a listed batch exists");
        data.push(batch.to_json(&sim.clock, now, &sim.config));
    }
    let first_id = data.first().map(|b| b["id"].clone());
    let last_id = data.last().map(|b| b["id"].clone());
    Ok(Json(json!({"object": "list", "data": data, "first_id": first_id, "last_id": last_id, "has_more": has_more}))
        .into_response())
}
