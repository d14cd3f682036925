//! The OpenAI Chat Completions and Batch API over HTTPS (or loopback HTTP
//! to the simulator), `PROVIDERS.md` §3: a batch is a JSONL file uploaded
//! with `POST /files` (multipart, streamed, its length known ahead), then
//! `POST /batches` naming it, with our tag in `metadata`. Results come back
//! as two files, successes and errors; a batch that fails validation lists
//! its errors by input line.

mod results;
mod wire;

use bytes::{BufMut, BytesMut};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

pub use self::results::{parse_result_line, succeeded};
use self::wire::{Batch, FileObject, RawPage};
pub use self::wire::{Locator, normalised_error_type};
use super::{
    ApiKey, BatchInput, BatchLimits, BatchPage, BatchStatus, LineStream, MessageReply, ProviderError, Quota,
    RateLimits, ResultsReader,
};

/// The provider's name in manifests.
pub const NAME: &str = "openai";
/// Default base URL; it includes `/v1`, as the SDK's does.
pub const DEFAULT_BASE_URL: &str = "https://api.openai.com/v1";
/// Environment variable holding the base URL (with `/v1`).
pub const BASE_URL_ENV: &str = "OPENAI_BASE_URL";
/// Environment variable holding the key.
pub const KEY_ENV: &str = "OPENAI_API_KEY";
/// File name of the key in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
pub const KEY_CREDENTIAL: &str = "openai-api-key";
/// The endpoint every request of our batches goes to.
pub const ENDPOINT: &str = "/v1/chat/completions";
/// 50,000 requests or 200 MB per input file; each line wraps a body in
/// `{"custom_id":..,"method":"POST","url":"/v1/chat/completions","body":..}`.
pub const BATCH_LIMITS: BatchLimits =
    BatchLimits { max_requests: 50_000, max_bytes: 200 * 1024 * 1024, envelope_bytes: LINE_ENVELOPE as usize };
/// Calls per minute across the batch endpoints. OpenAI allows 2,000 batch
/// creations an hour; polls and downloads count against the general limits.
pub const BATCH_CALLS_PER_MINUTE: u64 = 100;
/// Queue limits are enqueued tokens per model, refused by the provider as `token_limit_exceeded` (retried later).
pub const QUEUED_REQUESTS_LIMIT: Option<u64> = None;
/// The metadata key that carries our tag.
pub const TAG_KEY: &str = "orchestrator_batch";

/// Bytes of one input line around its custom_id and body, newline included.
const LINE_ENVELOPE: u64 =
    (r#"{"custom_id":"","method":"POST","url":""#.len() + ENDPOINT.len() + r#"","body":}"#.len() + 1) as u64;
/// The multipart boundary of uploads (it cannot occur in JSONL lines: they hold no raw CR LF).
const BOUNDARY: &str = "orchestrator-batch-upload-7f3c9a2e41d8";
/// Bytes of the upload sent per chunk.
const BODY_CHUNK: usize = 64 * 1024;

/// A client for one API key and base URL.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    http: reqwest::Client,
    base_url: String,
    key: ApiKey,
}

impl OpenAiClient {
    /// A client for `base_url`, which includes `/v1` (no trailing slash needed).
    pub fn new(base_url: &str, key: ApiKey) -> Result<OpenAiClient, ProviderError> {
        Ok(OpenAiClient { http: super::http::client()?, base_url: base_url.trim_end_matches('/').to_owned(), key })
    }

    /// A client from `OPENAI_BASE_URL` and the key in the environment.
    pub fn from_environment() -> Result<OpenAiClient, ProviderError> {
        let base = std::env::var(BASE_URL_ENV).unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned());
        OpenAiClient::new(&base, ApiKey::from_environment(KEY_ENV, KEY_CREDENTIAL)?)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let mut headers = HeaderMap::new();
        if let Ok(mut value) = HeaderValue::from_str(&format!("Bearer {}", self.key.expose())) {
            value.set_sensitive(true);
            headers.insert("authorization", value);
        }
        self.http.request(method, format!("{}{path}", self.base_url)).headers(headers)
    }

    /// `POST /chat/completions`: one synchronous call, `params` being the JSON body.
    pub async fn create_chat_completion(&self, params: &str) -> Result<MessageReply, ProviderError> {
        let response = self
            .request(Method::POST, "/chat/completions")
            .header("content-type", "application/json")
            .body(params.to_owned())
            .send()
            .await?;
        let rate_limits = rate_limits(response.headers());
        let response = check_status(response, "create_message").await?;
        let request_id = request_id(response.headers());
        let text = response.text().await?;
        let outcome = succeeded(&text).map_err(ProviderError::Malformed)?;
        Ok(MessageReply { outcome, request_id, rate_limits })
    }

    /// Uploads `input` as a JSONL file, then creates the batch over it with
    /// our tag in `metadata`. A create whose answer is lost is found again
    /// by the tag; an uploaded file nobody uses expires on its own.
    pub async fn create_batch(&self, input: &BatchInput) -> Result<BatchStatus, ProviderError> {
        let file = self.upload(input).await?;
        let body = json!({
            "input_file_id": file.id,
            "endpoint": ENDPOINT,
            "completion_window": "24h",
            "metadata": { TAG_KEY: input.tag },
        });
        let builder = self.request(Method::POST, "/batches").json(&body);
        let batch: Batch = decode(builder.send().await?, "create_batch").await?;
        Ok(batch.status())
    }

    /// `POST /files` with `purpose=batch`: the input lines streamed from
    /// `input`, with a `Content-Length` computed ahead.
    async fn upload(&self, input: &BatchInput) -> Result<FileObject, ProviderError> {
        let (head, tail) = multipart_frame(&input.tag);
        let length = head.len() as u64 + file_length(input) + tail.len() as u64;
        let head = futures_util::stream::once(async move { Ok::<_, std::io::Error>(bytes::Bytes::from(head)) });
        let tail = futures_util::stream::once(async move { Ok(bytes::Bytes::from(tail)) });
        let body = reqwest::Body::wrap_stream(head.chain(input_lines(input)).chain(tail));
        let builder = self
            .request(Method::POST, "/files")
            .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
            .header("content-length", length)
            .body(body);
        decode(builder.send().await?, "upload_file").await
    }

    /// `GET /batches/{id}`.
    pub async fn retrieve_batch(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let batch: Batch =
            decode(self.request(Method::GET, &format!("/batches/{id}")).send().await?, "retrieve_batch").await?;
        Ok(batch.status())
    }

    /// `GET /batches?limit=&after=`: one page, newest first.
    pub async fn list_batches(&self, after: Option<&str>, limit: u32) -> Result<BatchPage, ProviderError> {
        let mut path = format!("/batches?limit={limit}");
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let page: RawPage = decode(self.request(Method::GET, &path).send().await?, "list_batches").await?;
        let next = page.has_more.then(|| page.last_id.or_else(|| page.data.last().map(|b| b.id.clone()))).flatten();
        Ok(BatchPage { batches: page.data.iter().map(Batch::status).collect(), next })
    }

    /// `POST /batches/{id}/cancel`.
    pub async fn cancel_batch(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let batch: Batch =
            decode(self.request(Method::POST, &format!("/batches/{id}/cancel")).send().await?, "cancel_batch").await?;
        Ok(batch.status())
    }

    /// Opens the results of an ended batch: its output file, then its error
    /// file, then the validation errors it listed by input line.
    pub async fn results(&self, locator: &str) -> Result<ResultsReader, ProviderError> {
        let locator = Locator::parse(locator).map_err(ProviderError::Malformed)?;
        let mut reader = ResultsReader::new();
        for file in [&locator.output, &locator.error].into_iter().flatten() {
            let response = self
                .request(Method::GET, &format!("/files/{file}/content"))
                .header("accept", "application/binary")
                .send()
                .await?;
            let response = check_status(response, "results").await?;
            reader = reader.lines(LineStream::new(response), parse_result_line);
        }
        Ok(reader.known(locator.failures.iter().filter_map(wire::Failure::result).collect()))
    }
}

/// The multipart parts around the file's bytes: the `purpose` field, the
/// file part's headers, and the closing boundary.
fn multipart_frame(tag: &str) -> (Vec<u8>, Vec<u8>) {
    let head = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{tag}.jsonl\"\r\n\
         Content-Type: application/jsonl\r\n\r\n"
    );
    (head.into_bytes(), format!("\r\n--{BOUNDARY}--\r\n").into_bytes())
}

/// The input file's length: one line per request.
fn file_length(input: &BatchInput) -> u64 {
    input.count * LINE_ENVELOPE + input.custom_id_bytes + input.params_bytes
}

/// The input file's lines, encoded as the rows arrive.
fn input_lines(input: &BatchInput) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + use<> {
    (input.rows)().map(|chunk| {
        let mut buffer = BytesMut::with_capacity(BODY_CHUNK);
        for (custom_id, params) in &chunk? {
            // custom_ids match ^[a-zA-Z0-9_-]{1,64}$: JSON needs no escapes, so the length adds up.
            debug_assert!(custom_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            buffer.put_slice(br#"{"custom_id":""#);
            buffer.put_slice(custom_id.as_bytes());
            buffer.put_slice(br#"","method":"POST","url":""#);
            buffer.put_slice(ENDPOINT.as_bytes());
            buffer.put_slice(br#"","body":"#);
            buffer.put_slice(params.as_bytes());
            buffer.put_slice(b"}\n");
        }
        Ok(buffer.freeze())
    })
}

/// The `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` headers;
/// tokens (input and output together) fill the input quota.
pub fn rate_limits(headers: &HeaderMap) -> RateLimits {
    let quota = |kind: &str| {
        let text =
            |part: &str| headers.get(format!("x-ratelimit-{part}-{kind}")).and_then(|v| v.to_str().ok()).map(str::trim);
        Quota {
            limit: text("limit").and_then(|v| v.parse().ok()),
            remaining: text("remaining").and_then(|v| v.parse().ok()),
            reset: None,
            reset_in: text("reset").and_then(wire::parse_reset),
        }
    };
    RateLimits { requests: quota("requests"), input_tokens: quota("tokens"), output_tokens: Quota::default() }
}

async fn decode<T: DeserializeOwned>(response: Response, operation: &str) -> Result<T, ProviderError> {
    let text = check_status(response, operation).await?.text().await?;
    serde_json::from_str(&text).map_err(|err| ProviderError::Malformed(format!("{operation}: {err}")))
}

/// The response when it succeeded, else its error with the type normalised
/// to the words the lanes know (`rate_limit_error`, `invalid_request_error`, ...).
async fn check_status(response: Response, operation: &str) -> Result<Response, ProviderError> {
    let status = response.status().as_u16();
    let request_id = request_id(response.headers());
    tracing::debug!(operation, status, request_id = request_id.as_deref().unwrap_or("none"), "provider call");
    if response.status().is_success() {
        return Ok(response);
    }
    let retry_after = super::http::retry_after(response.headers());
    let body = response.text().await.unwrap_or_default();
    let parsed: Option<Value> = serde_json::from_str(&body).ok();
    let field = |name: &str| {
        let value = parsed.as_ref()?.get("error")?.get(name)?;
        value.as_str().map(str::to_owned)
    };
    let code = field("code");
    let message = field("message").unwrap_or_else(|| body.chars().take(200).collect());
    let error = ProviderError::Api {
        status,
        error_type: normalised_error_type(status, code.as_deref()).to_owned(),
        message: match (field("type"), code) {
            (Some(kind), Some(code)) => format!("{message} ({kind}, {code})"),
            (Some(kind), None) | (None, Some(kind)) => format!("{message} ({kind})"),
            (None, None) => message,
        },
        request_id,
        retry_after,
    };
    tracing::warn!(operation, error = %error, "provider call failed");
    Err(error)
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

    #[tokio::test]
    async fn the_input_file_is_as_long_as_computed_and_one_request_per_line() {
        let rows = vec![
            ("job-2026-11-22-001".to_owned(), r#"{"model":"gpt-4o-mini","max_completion_tokens":5}"#.to_owned()),
            (
                "job-2026-11-22-002".to_owned(),
                r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"é"}]}"#.to_owned(),
            ),
        ];
        let input = input(rows);
        let file: Vec<u8> = input_lines(&input).map(|chunk| chunk.unwrap().to_vec()).concat().await;
        assert_eq!(file.len() as u64, file_length(&input));
        let lines: Vec<Value> =
            file.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice(l).unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["custom_id"], "job-2026-11-22-002");
        assert_eq!(lines[0]["url"], ENDPOINT);
        assert_eq!(lines[0]["method"], "POST");
        assert_eq!(lines[0]["body"]["max_completion_tokens"], 5);
        let (head, tail) = multipart_frame(&input.tag);
        let head = String::from_utf8(head).unwrap();
        assert!(
            head.contains("name=\"purpose\"\r\n\r\nbatch\r\n")
                && head.contains("filename=\"orchestrator-batch-7.jsonl\"")
        );
        assert!(tail.ends_with(format!("--{BOUNDARY}--\r\n").as_bytes()));
    }

    #[test]
    fn keys_never_print() {
        let client = OpenAiClient::new("http://127.0.0.1:1/v1", ApiKey::new("sk-proj-secret")).unwrap();
        assert!(!format!("{client:?}").contains("sk-proj-secret"));
    }

    #[test]
    fn rate_limit_headers_are_read_with_their_reset_as_a_wait() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit-requests", HeaderValue::from_static("500"));
        headers.insert("x-ratelimit-remaining-requests", HeaderValue::from_static("0"));
        headers.insert("x-ratelimit-reset-requests", HeaderValue::from_static("6m0.5s"));
        headers.insert("x-ratelimit-limit-tokens", HeaderValue::from_static("200000"));
        headers.insert("x-ratelimit-reset-tokens", HeaderValue::from_static("20ms"));
        let limits = rate_limits(&headers);
        assert_eq!(limits.requests.limit, Some(500));
        assert_eq!(limits.requests.remaining, Some(0));
        assert_eq!(limits.requests.reset_in, Some(std::time::Duration::from_millis(360_500)));
        assert_eq!(limits.input_tokens.limit, Some(200_000));
        assert_eq!(limits.input_tokens.reset_in, Some(std::time::Duration::from_millis(20)));
        assert_eq!(limits.output_tokens, Quota::default());
    }
}
