//! The Gemini Developer API (`v1beta`) over HTTPS (or loopback HTTP to the
//! simulator), `PROVIDERS.md` §4: `generateContent` for the sync lane; for
//! the batch lane `batchGenerateContent`, with the requests inline when the
//! body stays under 20 MB and otherwise a JSONL file sent through the
//! resumable upload protocol. The custom_id is each request's key; our tag
//! is the batch's `displayName`, so a create whose answer was lost is found
//! again by listing. Results come inline in the operation or as a
//! responses file, whatever the input was.
//!
//! The model is part of the URL, not of the body: stored params start with
//! `{"model":"…",` (the renderer writes it first), which is cut off here.

mod results;
mod wire;

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use self::results::{parse_result_line, succeeded};
pub use self::wire::Locator;
use self::wire::{Operation, RawPage};
use super::{
    ApiKey, BatchInput, BatchLimits, BatchPage, BatchStatus, LineStream, MessageReply, ProviderError, RateLimits,
    ResultsReader,
};

/// The provider's name in manifests.
pub const NAME: &str = "gemini";
/// Default base URL (the SDK appends `v1beta/`).
pub const DEFAULT_BASE_URL: &str = "https://generativelanguage.googleapis.com";
/// Environment variable holding the base URL, as the official SDK reads it.
pub const BASE_URL_ENV: &str = "GOOGLE_GEMINI_BASE_URL";
/// Environment variables holding the key: the first one set wins, as in the SDK.
pub const KEY_ENVS: [&str; 2] = ["GOOGLE_API_KEY", "GEMINI_API_KEY"];
/// File name of the key in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
pub const KEY_CREDENTIAL: &str = "gemini-api-key";
/// The API version every path starts with.
const VERSION: &str = "v1beta";
/// Requests per batch are ours to choose (the API limits bytes); file input
/// up to 2 GB. Each file line wraps a body in `{"key":"…","request":…}`.
pub const BATCH_LIMITS: BatchLimits =
    BatchLimits { max_requests: 100_000, max_bytes: 2_000 * 1024 * 1024, envelope_bytes: FILE_ENVELOPE as usize };
/// Calls per minute across the batch endpoints (100 concurrent batches per project).
pub const BATCH_CALLS_PER_MINUTE: u64 = 60;
/// Queue limits are enqueued tokens per model, refused by the provider with a 429 (backpressure).
pub const QUEUED_REQUESTS_LIMIT: Option<u64> = None;
/// Inline requests only while the create body stays under this.
const INLINE_MAX_BYTES: u64 = 20 * 1000 * 1000;
/// Bytes of one file line around its key and body, newline included.
const FILE_ENVELOPE: u64 = (r#"{"key":"","request":}"#.len() + 1) as u64;
/// Bytes of one inline request around its body and key.
const INLINE_ENVELOPE: u64 = r#"{"request":,"metadata":{"key":""}}"#.len() as u64;
/// Bytes of rows encoded per chunk of a streamed body.
const BODY_CHUNK: usize = 64 * 1024;

/// A client for one API key and base URL.
#[derive(Debug, Clone)]
pub struct GeminiClient {
    http: reqwest::Client,
    base_url: String,
    key: ApiKey,
}

/// The model named first in stored params, and the rest of the body:
/// the body without the model is `{` followed by that rest (no copy is
/// made, as a create streams 100,000 of them).
pub fn split_model(params: &str) -> Result<(&str, &str), ProviderError> {
    let malformed = || ProviderError::Malformed(format!("Gemini params must start with the model: {params:.60}"));
    let rest = params.strip_prefix(r#"{"model":""#).ok_or_else(malformed)?;
    let end = rest.find('"').ok_or_else(malformed)?;
    let (model, after) = (&rest[..end], &rest[end + 1..]);
    let tail = match after.strip_prefix(',') {
        Some(fields) => fields,
        None if after == "}" => after,
        None => return Err(malformed()),
    };
    Ok((model.strip_prefix("models/").unwrap_or(model), tail))
}

impl GeminiClient {
    /// A client for `base_url` (without the version).
    pub fn new(base_url: &str, key: ApiKey) -> Result<GeminiClient, ProviderError> {
        Ok(GeminiClient { http: super::http::client()?, base_url: base_url.trim_end_matches('/').to_owned(), key })
    }

    /// A client from `GOOGLE_GEMINI_BASE_URL` and the key in the environment
    /// (`GOOGLE_API_KEY`, else `GEMINI_API_KEY`, else the credential).
    pub fn from_environment() -> Result<GeminiClient, ProviderError> {
        let base = std::env::var(BASE_URL_ENV).unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned());
        let key = match std::env::var(KEY_ENVS[0]).ok().filter(|k| !k.trim().is_empty()) {
            Some(key) => ApiKey::new(key.trim()),
            None => ApiKey::from_environment(KEY_ENVS[1], KEY_CREDENTIAL).map_err(|_| ProviderError::MissingKey {
                env: "GOOGLE_API_KEY (or GEMINI_API_KEY)",
                credential: KEY_CREDENTIAL,
            })?,
        };
        GeminiClient::new(&base, key)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut headers = HeaderMap::new();
        if let Ok(mut value) = HeaderValue::from_str(self.key.expose()) {
            value.set_sensitive(true);
            headers.insert("x-goog-api-key", value);
        }
        let url = if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base_url)
        };
        self.http.request(method, url).headers(headers)
    }

    /// `POST /v1beta/models/{model}:generateContent`.
    pub async fn generate_content(&self, params: &str) -> Result<MessageReply, ProviderError> {
        let (model, tail) = split_model(params)?;
        let body = format!("{{{tail}");
        let path = format!("/{VERSION}/models/{model}:generateContent");
        let response =
            self.request(Method::POST, &path).header("content-type", "application/json").body(body).send().await?;
        let response = check_status(response, "create_message").await?;
        let request_id = request_id(response.headers());
        let text = response.text().await?;
        let outcome = succeeded(&text).map_err(ProviderError::Malformed)?;
        // Gemini sends no rate-limit headers: the lane's own buckets and its 429s pace it.
        Ok(MessageReply { outcome, request_id, rate_limits: RateLimits::default() })
    }

    /// Creates a batch of `input`: inline when the body stays under 20 MB,
    /// else from an uploaded JSONL file. The tag is the `displayName`.
    pub async fn create_batch(&self, input: &BatchInput) -> Result<BatchStatus, ProviderError> {
        let model = first_model(input).await?;
        let shape = Shape::new(input, &model);
        let path = format!("/{VERSION}/models/{model}:batchGenerateContent");
        let builder = match shape.inline_length(&input.tag) {
            Some(length) if length < INLINE_MAX_BYTES => {
                let (head, tail) = inline_frame(&input.tag);
                let body = head.chain(encoded(input, Framing::Inline)).chain(tail);
                self.request(Method::POST, &path)
                    .header("content-type", "application/json")
                    .header("content-length", length)
                    .body(reqwest::Body::wrap_stream(body))
            }
            _ => {
                let file = self.upload(input, shape).await?;
                let body = json!({"batch": {"displayName": input.tag, "inputConfig": {"fileName": file}}});
                self.request(Method::POST, &path).json(&body)
            }
        };
        let operation: Operation = decode(builder.send().await?, "create_batch").await?;
        Ok(operation.status())
    }

    /// The resumable upload of the input file: a start request that names
    /// the length, then the bytes in one `upload, finalize` request streamed
    /// from the store. Returns the file's name (`files/…`).
    async fn upload(&self, input: &BatchInput, shape: Shape) -> Result<String, ProviderError> {
        let length = shape.file_length();
        let start = self
            .request(Method::POST, &format!("/upload/{VERSION}/files"))
            .header("x-goog-upload-protocol", "resumable")
            .header("x-goog-upload-command", "start")
            .header("x-goog-upload-header-content-length", length)
            .header("x-goog-upload-header-content-type", "application/jsonl")
            .json(&json!({"file": {"displayName": input.tag, "mimeType": "application/jsonl"}}));
        let response = check_status(start.send().await?, "upload_file").await?;
        let url = response
            .headers()
            .get("x-goog-upload-url")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Malformed("the upload start answered no x-goog-upload-url".into()))?;
        let chunks = reqwest::Body::wrap_stream(encoded(input, Framing::File));
        let finish = self
            .request(Method::POST, &url)
            .header("x-goog-upload-command", "upload, finalize")
            .header("x-goog-upload-offset", 0)
            .header("content-length", length)
            .body(chunks);
        let response = check_status(finish.send().await?, "upload_file").await?;
        let status = response.headers().get("x-goog-upload-status").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let uploaded: Value = decode(response, "upload_file").await?;
        let name = uploaded.pointer("/file/name").and_then(Value::as_str);
        match (status.as_deref(), name) {
            (Some("final") | None, Some(name)) => Ok(name.to_owned()),
            _ => Err(ProviderError::Malformed(format!("the upload did not finish: status {status:?}, {uploaded}"))),
        }
    }

    /// `GET /v1beta/batches/{id}`.
    pub async fn retrieve_batch(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        Ok(self.operation(id).await?.status())
    }

    async fn operation(&self, id: &str) -> Result<Operation, ProviderError> {
        let id = id.strip_prefix("batches/").unwrap_or(id);
        decode(self.request(Method::GET, &format!("/{VERSION}/batches/{id}")).send().await?, "retrieve_batch").await
    }

    /// `GET /v1beta/batches?pageSize=&pageToken=`: one page, newest first.
    pub async fn list_batches(&self, after: Option<&str>, limit: u32) -> Result<BatchPage, ProviderError> {
        let mut path = format!("/{VERSION}/batches?pageSize={limit}");
        if let Some(token) = after {
            path.push_str(&format!("&pageToken={token}"));
        }
        let page: RawPage = decode(self.request(Method::GET, &path).send().await?, "list_batches").await?;
        let operations = if page.operations.is_empty() { &page.batches } else { &page.operations };
        Ok(BatchPage {
            batches: operations.iter().map(Operation::status).collect(),
            next: page.next_page_token.filter(|t| !t.is_empty()),
        })
    }

    /// `POST /v1beta/batches/{id}:cancel` (it answers nothing), then the batch as it stands.
    pub async fn cancel_batch(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let bare = id.strip_prefix("batches/").unwrap_or(id);
        let response = self.request(Method::POST, &format!("/{VERSION}/batches/{bare}:cancel")).send().await?;
        check_status(response, "cancel_batch").await?;
        self.retrieve_batch(id).await
    }

    /// Opens the results of an ended batch: its responses file, or the
    /// inline responses of the operation (read again).
    pub async fn results(&self, locator: &str) -> Result<ResultsReader, ProviderError> {
        let locator = Locator::parse(locator).map_err(ProviderError::Malformed)?;
        let mut reader = ResultsReader::new();
        if let Some(file) = &locator.file {
            let path = format!("/download/{VERSION}/{file}:download?alt=media");
            let response = check_status(self.request(Method::GET, &path).send().await?, "results").await?;
            reader = reader.lines(LineStream::new(response), parse_result_line);
        }
        if locator.inline {
            let id = locator.batch.strip_prefix("batches/").unwrap_or(&locator.batch);
            let path = format!("/{VERSION}/batches/{id}");
            let operation: Value = decode(self.request(Method::GET, &path).send().await?, "results").await?;
            let (known, unreadable): (Vec<_>, Vec<_>) =
                results::inline_results(&operation).into_iter().partition(Result::is_ok);
            for reason in unreadable.into_iter().filter_map(Result::err) {
                tracing::warn!(batch = %locator.batch, %reason, "skipped an unreadable inline response");
            }
            reader = reader.known(known.into_iter().filter_map(Result::ok).collect());
        }
        Ok(reader)
    }
}

/// The model of the batch, from its first request (a batch holds one model).
async fn first_model(input: &BatchInput) -> Result<String, ProviderError> {
    let mut rows = (input.rows)();
    while let Some(chunk) = rows.next().await {
        let chunk = chunk.map_err(|e| ProviderError::Transport(format!("reading the batch's requests: {e}")))?;
        if let Some((_, params)) = chunk.first() {
            return Ok(split_model(params)?.0.to_owned());
        }
    }
    Err(ProviderError::Malformed("a batch without requests".into()))
}

/// The sizes a create body is computed from: every stored params has the
/// same `{"model":"…",` prefix, cut off on the way out.
#[derive(Debug, Clone, Copy)]
struct Shape {
    count: u64,
    custom_id_bytes: u64,
    /// Bytes of the bodies once the model prefix is cut off.
    body_bytes: u64,
}

impl Shape {
    fn new(input: &BatchInput, model: &str) -> Shape {
        // `{"model":"M",` becomes `{`.
        let cut = (r#"{"model":"","#.len() + model.len() - 1) as u64;
        Shape {
            count: input.count,
            custom_id_bytes: input.custom_id_bytes,
            body_bytes: input.params_bytes.saturating_sub(cut * input.count),
        }
    }

    fn file_length(self) -> u64 {
        self.count * FILE_ENVELOPE + self.custom_id_bytes + self.body_bytes
    }

    /// The inline create body's length, prefix (with `tag`) and suffix included.
    fn inline_length(self, tag: &str) -> Option<u64> {
        let (head, tail) = inline_frame_text(tag);
        let commas = self.count.checked_sub(1)?;
        Some(
            head.len() as u64
                + tail.len() as u64
                + self.count * INLINE_ENVELOPE
                + commas
                + self.custom_id_bytes
                + self.body_bytes,
        )
    }
}

fn inline_frame_text(tag: &str) -> (String, &'static str) {
    (format!(r#"{{"batch":{{"displayName":"{tag}","inputConfig":{{"requests":{{"requests":["#), "]}}}}")
}

/// The inline body's head and tail as one-chunk streams (the tag's length is part of the head).
fn inline_frame(
    tag: &str,
) -> (
    impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + use<>,
    impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + use<>,
) {
    let (head, tail) = inline_frame_text(tag);
    let head = bytes::Bytes::from(head);
    (
        futures_util::stream::iter(vec![Ok(head)]),
        futures_util::stream::iter(vec![Ok(bytes::Bytes::from_static(tail.as_bytes()))]),
    )
}

/// How each request is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `{"request":…,"metadata":{"key":"…"}}`, comma separated.
    Inline,
    /// `{"key":"…","request":…}` lines.
    File,
}

/// The requests encoded as the rows arrive.
fn encoded(
    input: &BatchInput,
    framing: Framing,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + use<> {
    let mut first = true;
    (input.rows)().map(move |chunk| {
        let mut buffer = BytesMut::with_capacity(BODY_CHUNK);
        for (custom_id, params) in &chunk? {
            let (_, tail) = split_model(params).map_err(std::io::Error::other)?;
            // custom_ids match ^[a-zA-Z0-9_-]{1,64}$: JSON needs no escapes, so the length adds up.
            debug_assert!(custom_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            match framing {
                Framing::Inline => {
                    if !std::mem::take(&mut first) {
                        buffer.put_u8(b',');
                    }
                    buffer.put_slice(br#"{"request":{"#);
                    buffer.put_slice(tail.as_bytes());
                    buffer.put_slice(br#","metadata":{"key":""#);
                    buffer.put_slice(custom_id.as_bytes());
                    buffer.put_slice(br#""}}"#);
                }
                Framing::File => {
                    buffer.put_slice(br#"{"key":""#);
                    buffer.put_slice(custom_id.as_bytes());
                    buffer.put_slice(br#"","request":{"#);
                    buffer.put_slice(tail.as_bytes());
                    buffer.put_slice(b"}\n");
                }
            }
        }
        Ok(buffer.freeze())
    })
}

/// Error statuses as the words the lanes know: `INVALID_ARGUMENT` (400) is
/// final, `RESOURCE_EXHAUSTED` (429) and `UNAVAILABLE` (503) are
/// backpressure, `INTERNAL` (500) and `DEADLINE_EXCEEDED` (504) the
/// request's own failures.
pub fn normalised_error_type(code: u16, status: &str) -> &'static str {
    match (code, status) {
        (400, _) | (_, "INVALID_ARGUMENT" | "FAILED_PRECONDITION") => "invalid_request_error",
        (401, _) | (_, "UNAUTHENTICATED") => "authentication_error",
        (403, _) | (_, "PERMISSION_DENIED") => "permission_error",
        (404, _) | (_, "NOT_FOUND") => "not_found_error",
        (413, _) => "request_too_large",
        (429, _) | (_, "RESOURCE_EXHAUSTED") => "rate_limit_error",
        (503, _) | (_, "UNAVAILABLE") => "overloaded_error",
        _ => "api_error",
    }
}

/// The HTTP code a status word stands for, when only the word is given.
pub(super) fn code_of(status: &str) -> u16 {
    match status {
        "INVALID_ARGUMENT" | "FAILED_PRECONDITION" | "OUT_OF_RANGE" => 400,
        "UNAUTHENTICATED" => 401,
        "PERMISSION_DENIED" => 403,
        "NOT_FOUND" => 404,
        "RESOURCE_EXHAUSTED" => 429,
        "UNAVAILABLE" => 503,
        "DEADLINE_EXCEEDED" => 504,
        _ => 500,
    }
}

async fn decode<T: DeserializeOwned>(response: Response, operation: &str) -> Result<T, ProviderError> {
    let text = check_status(response, operation).await?.text().await?;
    serde_json::from_str(&text).map_err(|err| ProviderError::Malformed(format!("{operation}: {err}")))
}

/// The response when it succeeded, else its error (`{"error": {code,
/// message, status, details}}`) with the type normalised; the wait comes
/// from `retry-after` or a `RetryInfo` detail.
async fn check_status(response: Response, operation: &str) -> Result<Response, ProviderError> {
    let status = response.status().as_u16();
    let request_id = request_id(response.headers());
    tracing::debug!(operation, status, "provider call");
    if response.status().is_success() {
        return Ok(response);
    }
    let header_wait = super::http::retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    let error = parsed.as_ref().and_then(|p| p.get("error"));
    let word = error.and_then(|e| e.get("status")).and_then(Value::as_str).unwrap_or_default().to_owned();
    let message = error
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| body.chars().take(200).collect());
    let retry_info = error.and_then(|e| e.get("details")).and_then(Value::as_array).and_then(|details| {
        details.iter().find_map(|d| d.get("retryDelay").and_then(Value::as_str)).and_then(parse_delay)
    });
    let error = ProviderError::Api {
        status,
        error_type: normalised_error_type(status, &word).to_owned(),
        message: if word.is_empty() { message } else { format!("{message} ({word})") },
        request_id,
        retry_after: header_wait.or(retry_info),
    };
    tracing::warn!(operation, error = %error, "provider call failed");
    Err(error)
}

/// A protobuf duration as JSON: `"17s"`, `"0.5s"`.
fn parse_delay(text: &str) -> Option<std::time::Duration> {
    let secs: f64 = text.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| std::time::Duration::from_secs_f64(secs))
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(rows: Vec<(String, String)>) -> BatchInput {
        BatchInput::in_memory("orchestrator-batch-7", rows, 1000)
    }

    fn rows() -> Vec<(String, String)> {
        let params = |text: &str| {
            format!(r#"{{"model":"gemini-2.5-flash","contents":[{{"role":"user","parts":[{{"text":"{text}"}}]}}]}}"#)
        };
        vec![("job-2026-11-22-001".into(), params("a")), ("job-2026-11-22-002".into(), params("é"))]
    }

    #[test]
    fn the_model_comes_off_the_params() {
        let (model, tail) = split_model(r#"{"model":"models/gemini-2.5-pro","contents":[]}"#).unwrap();
        assert_eq!((model, tail), ("gemini-2.5-pro", r#""contents":[]}"#));
        assert_eq!(split_model(r#"{"model":"m"}"#).unwrap(), ("m", "}"), "a body of the model alone is `{{}}`");
        assert!(split_model(r#"{"contents":[]}"#).is_err());
    }

    #[tokio::test]
    async fn bodies_are_as_long_as_computed_in_both_framings() {
        let input = input(rows());
        let model = first_model(&input).await.unwrap();
        assert_eq!(model, "gemini-2.5-flash");
        let shape = Shape::new(&input, &model);
        let file: Vec<u8> = encoded(&input, Framing::File).map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(file.len() as u64, shape.file_length());
        let lines: Vec<Value> =
            file.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(lines[1]["key"], "job-2026-11-22-002");
        assert!(lines[0]["request"]["contents"].is_array() && lines[0]["request"].get("model").is_none());

        let (head, tail) = inline_frame(&input.tag);
        let body: Vec<u8> =
            head.chain(encoded(&input, Framing::Inline)).chain(tail).map(|c| c.unwrap().to_vec()).concat().await;
        assert_eq!(body.len() as u64, shape.inline_length(&input.tag).unwrap());
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        let requests = &parsed["batch"]["inputConfig"]["requests"]["requests"];
        assert_eq!(requests[1]["metadata"]["key"], "job-2026-11-22-002");
        assert_eq!(parsed["batch"]["displayName"], "orchestrator-batch-7");
    }

    #[test]
    fn keys_never_print_and_error_words_are_classed() {
        let client = GeminiClient::new("http://127.0.0.1:1", ApiKey::new("AIza-secret")).unwrap();
        assert!(!format!("{client:?}").contains("AIza-secret"));
        assert_eq!(normalised_error_type(429, "RESOURCE_EXHAUSTED"), "rate_limit_error");
        assert_eq!(normalised_error_type(503, "UNAVAILABLE"), "overloaded_error");
        assert_eq!(normalised_error_type(400, "INVALID_ARGUMENT"), "invalid_request_error");
        assert_eq!(normalised_error_type(504, "DEADLINE_EXCEEDED"), "api_error");
        assert_eq!(parse_delay("17s"), Some(std::time::Duration::from_secs(17)));
    }
}
