//! The Gemini side of the simulator (`PROVIDERS.md` §4, §4.1):
//! `generateContent`, `batchGenerateContent` (inline or from a file), the
//! batch operations (get, list, cancel, delete), the resumable upload and
//! the download of responses files, on the same listener as the other
//! APIs (the `v1beta` paths do not collide). Errors are in Google's shape
//! (the gate renders them); names are `batches/…` and `files/…` in
//! lowercase hex; timestamps are RFC 3339 of simulated time.

mod batches;
mod files;
mod generate;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Extension, Path, Query, State as Shared};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use self::batches::{Download, GmBatch, Kind, batch_name, parse_batch_name, read_file, read_inline};
use self::files::{Body as FileBody, GmFile, MAX_FILE_BYTES, Session, file_name, parse_file_name};
use super::batches::{Core, Record};
use super::errors::ApiError;
use super::faults;
use super::gate::RequestNo;
use super::hash::{self, Key};
use super::params::Models;
use super::routes::{base_url, read_body};
use super::state::Sim;

/// Largest `generateContent` body, and largest inline batch body (20 MB).
const REQUEST_LIMIT: usize = 20 * 1000 * 1000;
/// The provider's name in the statistics.
const PROVIDER: &str = "gemini";

/// Files, uploads and batches of the Gemini API.
#[derive(Default)]
pub(crate) struct State {
    files: BTreeMap<u64, GmFile>,
    sessions: BTreeMap<u64, Session>,
    batches: BTreeMap<u64, GmBatch>,
    next_file: u64,
    next_session: u64,
    next_batch: u64,
    generations: u64,
}

/// The Gemini routes (the gate and the body limit are added by the caller).
/// Paths hold `name:verb` in one segment, split by the handlers.
pub(crate) fn routes() -> Router<Arc<Sim>> {
    Router::new()
        .route("/v1beta/models/{action}", post(model_action))
        .route("/v1beta/batches", get(list_batches))
        .route("/v1beta/batches/{action}", get(get_batch).post(batch_action).delete(delete_batch))
        .route("/v1beta/files/{action}", get(file_action).delete(delete_file))
        .route("/download/v1beta/files/{action}", get(file_action))
        .route("/upload/v1beta/files", post(upload))
}

type ApiResult = Result<Response, ApiError>;

/// `{name}:{verb}` split at the last colon.
fn split_action(action: &str) -> (&str, Option<&str>) {
    match action.rsplit_once(':') {
        Some((name, verb)) => (name, Some(verb)),
        None => (action, None),
    }
}

fn not_found(what: &str) -> ApiError {
    ApiError::not_found(format!("{what} not found."))
}

async fn model_action(
    Shared(sim): Shared<Arc<Sim>>,
    Extension(RequestNo(n)): Extension<RequestNo>,
    Path(action): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let (model, verb) = split_action(&action);
    let model = model.to_owned();
    let bytes = read_body(&headers, body, REQUEST_LIMIT).await?;
    let value: Value = serde_json::from_slice(&bytes)
        .map_err(|err| ApiError::invalid(format!("Invalid JSON payload received. {err}")))?;
    match verb {
        Some("generateContent") => generate_content(&sim, &model, &value).await,
        Some("batchGenerateContent") => create_batch(&sim, n, &model, &value),
        _ => Err(not_found(&format!("Method models/{action}"))),
    }
}

async fn generate_content(sim: &Sim, model: &str, body: &Value) -> ApiResult {
    let prompt = generate::digest(body, model, &mut Models::default()).map_err(ApiError::invalid)?;
    if sim.config.message_latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sim.config.message_latency_ms)).await;
    }
    let n = {
        let mut state = sim.lock();
        state.gemini.generations += 1;
        state.stats.messages_calls += 1;
        state.stats.of(PROVIDER).messages_calls += 1;
        state.gemini.generations
    };
    let id = hash::id("", Key::new(sim.config.seed, "gemini-sync").num(n).finish(), prompt.hash);
    Ok(Json(generate::response(&id, &prompt, sim.config.reply_bytes)).into_response())
}

/// Where a create body says its requests are.
enum Source {
    Inline(Vec<Value>),
    File(String),
}

/// The requests of a create body, camelCase or snake_case, in either of the
/// places the API and its docs have put a file name.
fn source(body: &Value) -> Result<(Source, Option<String>), ApiError> {
    let batch = body.get("batch").ok_or_else(|| ApiError::invalid("* BatchGenerateContentRequest.batch: missing"))?;
    let field = |v: &Value, camel: &str, snake: &str| v.get(camel).or_else(|| v.get(snake)).cloned();
    let display = field(batch, "displayName", "display_name").and_then(|v| v.as_str().map(str::to_owned));
    let config = field(batch, "inputConfig", "input_config")
        .ok_or_else(|| ApiError::invalid("* GenerateContentBatch.input_config: missing"))?;
    let requests = config.get("requests");
    let file = field(&config, "fileName", "file_name")
        .or_else(|| requests.and_then(|r| field(r, "fileName", "file_name")))
        .and_then(|v| v.as_str().map(str::to_owned));
    if let Some(file) = file {
        return Ok((Source::File(file), display));
    }
    match requests.and_then(|r| r.get("requests")).and_then(Value::as_array) {
        Some(list) if !list.is_empty() => Ok((Source::Inline(list.clone()), display)),
        _ => Err(ApiError::invalid("* GenerateContentBatch.input_config: give requests or a file_name")),
    }
}

fn create_batch(sim: &Sim, n: u64, model: &str, body: &Value) -> ApiResult {
    let (source, display) = source(body)?;
    let (lines, kind) = match source {
        Source::Inline(requests) => (read_inline(&requests, model).map_err(ApiError::invalid)?, Kind::Inline),
        Source::File(name) => {
            let bytes = {
                let state = sim.lock();
                let file = parse_file_name(sim.nonce, &name)
                    .and_then(|seq| state.gemini.files.get(&seq))
                    .ok_or_else(|| not_found(&format!("File {name}")))?;
                match &file.body {
                    FileBody::Uploaded(bytes) => Arc::clone(bytes),
                    FileBody::Responses(_) => return Err(ApiError::invalid("A generated file is no batch input.")),
                }
            };
            (read_file(&bytes, model).map_err(ApiError::invalid)?, Kind::File)
        }
    };
    let now = sim.clock.now();
    let mut state = sim.lock();
    if faults::roll_create_failure(&sim.config, n) {
        state.stats.fault("batch_create_500");
        return Err(ApiError::failed());
    }
    let seq = new_batch(&mut state, sim, lines, display.unwrap_or_default(), model, kind, now);
    let answer = state.gemini.batches[&seq].to_json(&sim.clock, now, &sim.config, None);
    if faults::roll_lost_answer(&sim.config, n) {
        state.stats.fault("create_answer_lost");
        return Err(ApiError::server(sim.config.retry_after_secs));
    }
    Ok(Json(answer).into_response())
}

/// Records a batch over `lines` (submissions counted as for the other providers); its sequence number.
fn new_batch(
    state: &mut super::state::State,
    sim: &Sim,
    lines: Vec<batches::Line>,
    display_name: String,
    model: &str,
    kind: Kind,
    now: f64,
) -> u64 {
    let seq = state.gemini.next_batch;
    state.gemini.next_batch += 1;
    let mut records = Vec::with_capacity(lines.len());
    for (custom_id, prompt) in lines {
        let seen = state.submitted.entry(custom_id.clone()).or_insert(0);
        let submission = *seen;
        *seen += 1;
        if *seen == 2 {
            state.stats.custom_ids_submitted_more_than_once += 1;
        }
        records.push(Record { custom_id, prompt, cache_hit: false, submission });
    }
    state.stats.batches_created += 1;
    state.stats.requests_received += records.len() as u64;
    let stats = state.stats.of(PROVIDER);
    stats.batches_created += 1;
    stats.requests_received += records.len() as u64;
    let duration =
        if sim.config.never_end { f64::INFINITY } else { faults::batch_duration(&sim.config, seq ^ (1 << 61)) };
    let core = Core { id: batch_name(sim.nonce, seq), records: records.into_boxed_slice(), created: now, duration };
    tracing::info!(batch = %core.id, requests = core.records.len(), "Gemini batch created");
    state.gemini.batches.insert(seq, GmBatch::new(core, display_name, model.to_owned(), kind));
    seq
}

/// The batch refreshed to `now`; a file batch that succeeded just now gets its responses file.
fn refreshed<'a>(state: &'a mut super::state::State, sim: &Sim, name: &str, now: f64) -> Option<&'a mut GmBatch> {
    let seq = parse_batch_name(sim.nonce, name)?;
    let gemini = &mut state.gemini;
    let batch = gemini.batches.get_mut(&seq)?;
    if batch.refresh(now) && batch.kind == Kind::File && matches!(batch.ended, Some((_, batches::End::Succeeded))) {
        let file_seq = gemini.next_file;
        gemini.next_file += 1;
        let download = Download { config: sim.config.clone(), core: batch.core.clone(), truncate_at: None };
        gemini.files.insert(
            file_seq,
            GmFile {
                name: file_name(sim.nonce, file_seq),
                display_name: Some(format!("{}-responses", batch.display_name)),
                mime_type: "application/jsonl".into(),
                size: download.len(),
                created: now,
                body: FileBody::Responses(seq),
            },
        );
        batch.output_file = Some(file_seq);
    }
    gemini.batches.get_mut(&seq)
}

/// The operation JSON of batch `name` at `now`.
fn operation(state: &mut super::state::State, sim: &Sim, name: &str, now: f64) -> Option<Value> {
    let batch = refreshed(state, sim, name, now)?;
    let file = batch.output_file.map(|seq| file_name(sim.nonce, seq));
    Some(batch.to_json(&sim.clock, now, &sim.config, file.as_deref()))
}

fn full_name(id: &str) -> String {
    format!("batches/{id}")
}

async fn get_batch(Shared(sim): Shared<Arc<Sim>>, Path(action): Path<String>) -> ApiResult {
    let now = sim.clock.now();
    let name = full_name(&action);
    let mut state = sim.lock();
    let answer = operation(&mut state, &sim, &name, now).ok_or_else(|| not_found(&format!("Batch {name}")))?;
    Ok(Json(answer).into_response())
}

async fn batch_action(Shared(sim): Shared<Arc<Sim>>, Path(action): Path<String>) -> ApiResult {
    let (id, verb) = split_action(&action);
    if verb != Some("cancel") {
        return Err(not_found(&format!("Method batches/{action}")));
    }
    let now = sim.clock.now();
    let name = full_name(id);
    let mut state = sim.lock();
    let batch = refreshed(&mut state, &sim, &name, now).ok_or_else(|| not_found(&format!("Batch {name}")))?;
    if batch.ended.is_some() {
        return Err(ApiError::invalid(format!(
            "Batch {name} has ended ({}): it cannot be cancelled.",
            batch.state(now)
        )));
    }
    if batch.cancel(now, sim.config.cancel_secs, sim.config.time_scale) {
        state.stats.batches_canceled += 1;
        state.stats.of(PROVIDER).batches_canceled += 1;
        tracing::info!(batch = %name, "Gemini batch cancelling");
    }
    Ok(Json(json!({})).into_response())
}

async fn delete_batch(Shared(sim): Shared<Arc<Sim>>, Path(action): Path<String>) -> ApiResult {
    let name = full_name(&action);
    let mut state = sim.lock();
    let seq = parse_batch_name(sim.nonce, &name).ok_or_else(|| not_found(&format!("Batch {name}")))?;
    state.gemini.batches.remove(&seq).ok_or_else(|| not_found(&format!("Batch {name}")))?;
    state.stats.batches_deleted += 1;
    Ok(Json(json!({})).into_response())
}

/// Query of the list endpoint.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListQuery {
    page_size: Option<usize>,
    page_token: Option<String>,
}

async fn list_batches(Shared(sim): Shared<Arc<Sim>>, Query(query): Query<ListQuery>) -> ApiResult {
    let size = query.page_size.unwrap_or(50).clamp(1, 1000);
    let before = match &query.page_token {
        None => None,
        Some(token) => {
            Some(token.parse::<u64>().map_err(|_| ApiError::invalid(format!("Invalid page token `{token}`.")))?)
        }
    };
    let now = sim.clock.now();
    let mut state = sim.lock();
    let mut seqs: Vec<u64> = match before {
        Some(before) => state.gemini.batches.range(..before).rev().map(|(seq, _)| *seq).take(size + 1).collect(),
        None => state.gemini.batches.keys().rev().copied().take(size + 1).collect(),
    };
    let more = seqs.len() > size;
    seqs.truncate(size);
    let operations: Vec<Value> =
        seqs.iter().filter_map(|seq| operation(&mut state, &sim, &batch_name(sim.nonce, *seq), now)).collect();
    let mut page = json!({ "operations": operations });
    if more && let Some(last) = seqs.last() {
        // The token of the next page: batches older than the last one listed.
        page["nextPageToken"] = Value::from(last.to_string());
    }
    Ok(Json(page).into_response())
}

async fn file_action(
    Shared(sim): Shared<Arc<Sim>>,
    Extension(RequestNo(n)): Extension<RequestNo>,
    Path(action): Path<String>,
    headers: HeaderMap,
) -> ApiResult {
    let (id, verb) = split_action(&action);
    let name = format!("files/{id}");
    let mut state = sim.lock();
    let file = parse_file_name(sim.nonce, &name)
        .and_then(|seq| state.gemini.files.get(&seq))
        .ok_or_else(|| not_found(&format!("File {name}")))?;
    match verb {
        None => Ok(Json(file.to_json(&sim.clock, &base_url(&sim, &headers))).into_response()),
        Some("download") => {
            let FileBody::Responses(batch) = file.body else {
                return Err(ApiError::invalid(format!("Only generated files can be downloaded; {name} was uploaded.")));
            };
            let core = state.gemini.batches.get(&batch).map(|b| b.core.clone()).ok_or_else(|| not_found(&name))?;
            let truncate_at = faults::roll_truncation(&sim.config, n);
            if truncate_at.is_some() {
                state.stats.fault("truncated_results");
            }
            let body = Download { config: sim.config.clone(), core, truncate_at }.into_body();
            let mut response = body.into_response();
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/jsonl"));
            Ok(response)
        }
        Some(other) => Err(not_found(&format!("Method files/{id}:{other}"))),
    }
}

async fn delete_file(Shared(sim): Shared<Arc<Sim>>, Path(action): Path<String>) -> ApiResult {
    let name = format!("files/{action}");
    let mut state = sim.lock();
    let seq = parse_file_name(sim.nonce, &name).ok_or_else(|| not_found(&format!("File {name}")))?;
    state.gemini.files.remove(&seq).ok_or_else(|| not_found(&format!("File {name}")))?;
    Ok(Json(json!({})).into_response())
}

/// Query of an upload: the session, once started.
#[derive(Debug, Deserialize)]
struct UploadQuery {
    upload_id: Option<u64>,
}

/// The resumable upload: `start` opens a session, `upload` appends a chunk,
/// `finalize` (with the last chunk or alone) makes the file.
async fn upload(
    Shared(sim): Shared<Arc<Sim>>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).map(str::to_owned);
    let command = text("x-goog-upload-command").unwrap_or_default().to_lowercase();
    let bytes = read_body(&headers, body, MAX_FILE_BYTES).await?;
    if command.contains("start") {
        if text("x-goog-upload-protocol").as_deref() != Some("resumable") {
            return Err(ApiError::invalid(
                "Only the resumable upload protocol is served (x-goog-upload-protocol: resumable).",
            ));
        }
        let declared = text("x-goog-upload-header-content-length").and_then(|v| v.parse().ok());
        let start: Value = if bytes.is_empty() {
            json!({})
        } else {
            serde_json::from_slice(&bytes)
                .map_err(|err| ApiError::invalid(format!("Invalid JSON payload received. {err}")))?
        };
        let session = Session::start(declared, text("x-goog-upload-header-content-type").as_deref(), &start);
        let mut state = sim.lock();
        let id = state.gemini.next_session;
        state.gemini.next_session += 1;
        state.gemini.sessions.insert(id, session);
        let url = format!("{}/upload/v1beta/files?upload_id={id}&upload_protocol=resumable", base_url(&sim, &headers));
        let mut response = Json(json!({})).into_response();
        response.headers_mut().insert("x-goog-upload-url", HeaderValue::from_str(&url).expect("an ASCII URL"));
        response.headers_mut().insert("x-goog-upload-status", HeaderValue::from_static("active"));
        return Ok(response);
    }
    let id = query.upload_id.ok_or_else(|| ApiError::invalid("An upload needs x-goog-upload-command: start first."))?;
    let offset = text("x-goog-upload-offset").and_then(|v| v.parse().ok());
    let now = sim.clock.now();
    let mut state = sim.lock();
    let session = state.gemini.sessions.get_mut(&id).ok_or_else(|| not_found("Upload session"))?;
    if command.contains("upload") {
        session.append(offset, &bytes).map_err(ApiError::invalid)?;
    }
    if !command.contains("finalize") {
        let mut response = Json(json!({})).into_response();
        response.headers_mut().insert("x-goog-upload-status", HeaderValue::from_static("active"));
        return Ok(response);
    }
    let session = state.gemini.sessions.remove(&id).expect("the session was just found");
    if let Err(reason) = session.complete() {
        let mut refused = ApiError::invalid(reason).into_response();
        refused.headers_mut().insert("x-goog-upload-status", HeaderValue::from_static("final"));
        return Ok(refused);
    }
    let seq = state.gemini.next_file;
    state.gemini.next_file += 1;
    let file = GmFile {
        name: file_name(sim.nonce, seq),
        display_name: session.display_name,
        mime_type: session.mime_type,
        size: session.data.len() as u64,
        created: now,
        body: FileBody::Uploaded(Arc::new(session.data)),
    };
    let answer = json!({ "file": file.to_json(&sim.clock, &base_url(&sim, &headers)) });
    state.gemini.files.insert(seq, file);
    state.stats.of(PROVIDER).files_uploaded += 1;
    let mut response = Json(answer).into_response();
    response.headers_mut().insert("x-goog-upload-status", HeaderValue::from_static("final"));
    Ok(response)
}
