//! The Anthropic Messages and Message Batches API over HTTPS (or loopback
//! HTTP to the simulator), `PROVIDERS.md` §1 and §2.

mod results;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub use self::results::parse_result_line;
use self::results::succeeded;
use super::{
    ApiKey, BatchInput, BatchLimits, BatchPage, BatchPhase, BatchStatus, LineStream, MessageReply, ProviderError,
    Quota, RateLimits, ResultsReader,
};

/// The provider's name in manifests.
pub const NAME: &str = "anthropic";
/// The API version header every call carries.
pub const API_VERSION: &str = "2023-06-01";
/// Default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// Environment variable holding the base URL.
pub const BASE_URL_ENV: &str = "ANTHROPIC_BASE_URL";
/// Environment variable holding the key.
pub const KEY_ENV: &str = "ANTHROPIC_API_KEY";
/// File name of the key in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
pub const KEY_CREDENTIAL: &str = "anthropic-api-key";
/// 100,000 requests or 256 MB per batch, whichever comes first.
/// Each request is framed as `{"custom_id":"..","params":..}` and a comma.
pub const BATCH_LIMITS: BatchLimits =
    BatchLimits { max_requests: 100_000, max_bytes: 256 * 1024 * 1024, envelope_bytes: 28 };
/// 50 requests per minute across the batch endpoints.
pub const BATCH_CALLS_PER_MINUTE: u64 = 50;
/// 100,000 batch requests in the processing queue, across all batches.
pub const QUEUED_REQUESTS_LIMIT: Option<u64> = Some(100_000);
/// Bytes of request body sent per chunk of the streamed create call.
const BODY_CHUNK: usize = 64 * 1024;

/// `MessageBatch` as the API returns it; unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MessageBatch {
    /// `msgbatch_...`.
    pub id: String,
    /// `in_progress`, `canceling` or `ended`.
    pub processing_status: String,
    /// Counts per outcome (all `processing` until the batch ends).
    #[serde(default)]
    pub request_counts: RequestCounts,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// RFC 3339 end time.
    #[serde(default)]
    pub ended_at: Option<String>,
    /// Where the results are, once ended.
    #[serde(default)]
    pub results_url: Option<String>,
}

impl MessageBatch {
    /// Total requests in the batch.
    pub fn total(&self) -> u64 {
        let c = &self.request_counts;
        c.processing + c.succeeded + c.errored + c.canceled + c.expired
    }

    /// The batch as the lanes see it.
    pub fn status(&self) -> BatchStatus {
        let phase = match self.processing_status.as_str() {
            "ended" => BatchPhase::Ended,
            "canceling" => BatchPhase::Canceling,
            _ => BatchPhase::InProgress,
        };
        let instant = |text: &str| DateTime::parse_from_rfc3339(text).ok().map(|t| t.with_timezone(&Utc));
        BatchStatus {
            id: self.id.clone(),
            phase,
            created_at: instant(&self.created_at),
            ended_at: self.ended_at.as_deref().and_then(instant),
            request_count: Some(self.total()),
            results: self.results_url.clone(),
            tag: None,
        }
    }
}

/// `request_counts` of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[allow(missing_docs)]
pub struct RequestCounts {
    #[serde(default)]
    pub processing: u64,
    #[serde(default)]
    pub succeeded: u64,
    #[serde(default)]
    pub errored: u64,
    #[serde(default)]
    pub canceled: u64,
    #[serde(default)]
    pub expired: u64,
}

/// One page of `GET /v1/messages/batches`.
#[derive(Debug, Clone, Deserialize)]
struct RawPage {
    /// Batches, newest first.
    data: Vec<MessageBatch>,
    /// Whether older batches follow.
    #[serde(default)]
    has_more: bool,
    /// Id to pass as `after_id` for the next page.
    #[serde(default)]
    last_id: Option<String>,
}

/// The `anthropic-ratelimit-<kind>-{limit,remaining,reset}` headers; absent or unreadable ones stay `None`.
pub fn rate_limits(headers: &HeaderMap) -> RateLimits {
    let quota = |kind: &str| {
        let text = |part: &str| {
            headers.get(format!("anthropic-ratelimit-{kind}-{part}")).and_then(|v| v.to_str().ok()).map(str::trim)
        };
        Quota {
            limit: text("limit").and_then(|v| v.parse().ok()),
            remaining: text("remaining").and_then(|v| v.parse().ok()),
            reset: text("reset").and_then(|v| DateTime::parse_from_rfc3339(v).ok()).map(|t| t.with_timezone(&Utc)),
            reset_in: None,
        }
    };
    RateLimits {
        requests: quota("requests"),
        input_tokens: quota("input-tokens"),
        output_tokens: quota("output-tokens"),
    }
}

/// A client for one API key and base URL.
#[derive(Debug, Clone)]
pub struct AnthropicClient {
    http: reqwest::Client,
    base_url: String,
    key: ApiKey,
}

impl AnthropicClient {
    /// A client for `base_url` (no trailing slash needed).
    pub fn new(base_url: &str, key: ApiKey) -> Result<AnthropicClient, ProviderError> {
        let http = super::http::client()?;
        Ok(AnthropicClient { http, base_url: base_url.trim_end_matches('/').to_owned(), key })
    }

    /// A client from `ANTHROPIC_BASE_URL` and the key in the environment.
    pub fn from_environment() -> Result<AnthropicClient, ProviderError> {
        let base = std::env::var(BASE_URL_ENV).unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned());
        AnthropicClient::new(&base, ApiKey::from_environment(KEY_ENV, KEY_CREDENTIAL)?)
    }

    fn request(&self, method: Method, url: &str, betas: &[String]) -> RequestBuilder {
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        if let Ok(mut key) = HeaderValue::from_str(self.key.expose()) {
            key.set_sensitive(true);
            headers.insert("x-api-key", key);
        }
        if let Some(value) = (!betas.is_empty()).then(|| betas.join(",")).and_then(|b| HeaderValue::from_str(&b).ok()) {
            headers.insert("anthropic-beta", value);
        }
        self.http.request(method, url).headers(headers)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `POST /v1/messages`: one synchronous call, `params` being the JSON body.
    pub async fn create_message(&self, params: &str, betas: &[String]) -> Result<MessageReply, ProviderError> {
        let response = self
            .request(Method::POST, &self.url("/v1/messages"), betas)
            .header("content-type", "application/json")
            .body(params.to_owned())
            .send()
            .await?;
        let rate_limits = rate_limits(response.headers());
        let (text, request_id) = checked_text(response, "create_message").await?;
        let outcome = succeeded(&text).map_err(ProviderError::Malformed)?;
        Ok(MessageReply { outcome, request_id, rate_limits })
    }

    /// `POST /v1/messages/batches` with a body streamed from `input`, never
    /// built whole, its `Content-Length` computed ahead.
    pub async fn create_batch(&self, input: &BatchInput, betas: &[String]) -> Result<BatchStatus, ProviderError> {
        let builder = self
            .request(Method::POST, &self.url("/v1/messages/batches"), betas)
            .header("content-type", "application/json")
            .header("content-length", body_length(input));
        let batch: MessageBatch = decode(builder.body(request_body(input)).send().await?, "create_batch").await?;
        Ok(batch.status())
    }

    /// `GET /v1/messages/batches/{id}`.
    pub async fn retrieve_batch(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let url = self.url(&format!("/v1/messages/batches/{id}"));
        let batch: MessageBatch = decode(self.request(Method::GET, &url, &[]).send().await?, "retrieve_batch").await?;
        Ok(batch.status())
    }

    /// `GET /v1/messages/batches?limit=&after_id=`: one page, newest first.
    pub async fn list_batches(&self, after_id: Option<&str>, limit: u32) -> Result<BatchPage, ProviderError> {
        let mut url = format!("{}?limit={limit}", self.url("/v1/messages/batches"));
        if let Some(after) = after_id {
            url.push_str(&format!("&after_id={after}"));
        }
        let page: RawPage = decode(self.request(Method::GET, &url, &[]).send().await?, "list_batches").await?;
        let next = page.has_more.then(|| page.last_id.or_else(|| page.data.last().map(|b| b.id.clone()))).flatten();
        Ok(BatchPage { batches: page.data.iter().map(MessageBatch::status).collect(), next })
    }

    /// `POST /v1/messages/batches/{id}/cancel`.
    pub async fn cancel_batch(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        let url = self.url(&format!("/v1/messages/batches/{id}/cancel"));
        let batch: MessageBatch = decode(self.request(Method::POST, &url, &[]).send().await?, "cancel_batch").await?;
        Ok(batch.status())
    }

    /// `DELETE /v1/messages/batches/{id}` (only after the batch ended).
    pub async fn delete_batch(&self, id: &str) -> Result<(), ProviderError> {
        let url = self.url(&format!("/v1/messages/batches/{id}"));
        checked_text(self.request(Method::DELETE, &url, &[]).send().await?, "delete_batch").await.map(drop)
    }

    /// Opens a batch's results (`results_url`) as a stream of results.
    pub async fn results(&self, results_url: &str) -> Result<ResultsReader, ProviderError> {
        let response =
            self.request(Method::GET, results_url, &[]).header("accept", "application/binary").send().await?;
        let response = check_status(response, "results").await?;
        Ok(ResultsReader::new().lines(LineStream::new(response), parse_result_line))
    }
}

/// The create body's length: `{"requests":[` rows joined by commas `]}`,
/// each row `{"custom_id":"<id>","params":<params>}`.
fn body_length(input: &BatchInput) -> u64 {
    const OPEN: u64 = br#"{"requests":["#.len() as u64;
    const CLOSE: u64 = b"]}".len() as u64;
    const ROW: u64 = br#"{"custom_id":"","params":}"#.len() as u64;
    OPEN + CLOSE + input.count * ROW + input.count.saturating_sub(1) + input.custom_id_bytes + input.params_bytes
}

/// The create body, encoded row by row as the rows arrive.
fn request_body(input: &BatchInput) -> reqwest::Body {
    reqwest::Body::wrap_stream(encoded(input))
}

/// The bytes of the create body ([`body_length`] of them).
fn encoded(input: &BatchInput) -> impl futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + use<> {
    let open = futures_util::stream::once(async { Ok(bytes::Bytes::from_static(br#"{"requests":["#)) });
    let mut first = true;
    let rows = (input.rows)().map(move |chunk| {
        let chunk = chunk?;
        let mut buffer = BytesMut::with_capacity(BODY_CHUNK);
        for (custom_id, params) in &chunk {
            // custom_ids match ^[a-zA-Z0-9_-]{1,64}$: JSON needs no escapes, so the length adds up.
            debug_assert!(custom_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
            if !std::mem::take(&mut first) {
                buffer.put_u8(b',');
            }
            buffer.put_slice(br#"{"custom_id":""#);
            buffer.put_slice(custom_id.as_bytes());
            buffer.put_slice(br#"","params":"#);
            buffer.put_slice(params.as_bytes());
            buffer.put_u8(b'}');
        }
        Ok(buffer.freeze())
    });
    let close = futures_util::stream::once(async { Ok(bytes::Bytes::from_static(b"]}")) });
    open.chain(rows).chain(close)
}

async fn decode<T: DeserializeOwned>(response: Response, operation: &str) -> Result<T, ProviderError> {
    let (text, _) = checked_text(response, operation).await?;
    serde_json::from_str(&text).map_err(|err| ProviderError::Malformed(format!("{operation}: {err}")))
}

async fn checked_text(response: Response, operation: &str) -> Result<(String, Option<String>), ProviderError> {
    let response = check_status(response, operation).await?;
    let request_id = request_id(response.headers());
    Ok((response.text().await?, request_id))
}

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
        parsed
            .as_ref()
            .and_then(|v| v.get("error"))
            .and_then(|e| e.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let error = ProviderError::Api {
        status,
        error_type: field("type").unwrap_or_else(|| format!("http_{status}")),
        message: field("message").unwrap_or_else(|| body.chars().take(200).collect()),
        request_id,
        retry_after,
    };
    tracing::warn!(operation, error = %error, "provider call failed");
    Err(error)
}

fn request_id(headers: &HeaderMap) -> Option<String> {
    headers.get("request-id").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_never_print() {
        let key = ApiKey::new("sk-ant-secret");
        assert_eq!(format!("{key:?}"), "ApiKey(<redacted>)");
        let client = AnthropicClient::new("http://127.0.0.1:1", key).unwrap();
        assert!(!format!("{client:?}").contains("sk-ant-secret"));
    }

    #[test]
    fn rate_limit_headers_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-ratelimit-requests-limit", HeaderValue::from_static("50"));
        headers.insert("anthropic-ratelimit-requests-remaining", HeaderValue::from_static("0"));
        headers.insert("anthropic-ratelimit-requests-reset", HeaderValue::from_static("2026-11-22T06:00:30Z"));
        headers.insert("anthropic-ratelimit-output-tokens-limit", HeaderValue::from_static("8000"));
        let limits = rate_limits(&headers);
        assert_eq!(limits.requests.limit, Some(50));
        assert_eq!(limits.requests.remaining, Some(0));
        assert_eq!(limits.requests.reset.map(|t| t.to_rfc3339()), Some("2026-11-22T06:00:30+00:00".into()));
        assert_eq!(limits.output_tokens.limit, Some(8000));
        assert_eq!(limits.input_tokens, Quota::default());
    }

    #[tokio::test]
    async fn the_create_body_is_as_long_as_its_content_length_says() {
        let rows = vec![
            ("job-2026-11-22-001".to_owned(), r#"{"model":"m","max_tokens":5}"#.to_owned()),
            ("job-2026-11-22-002".to_owned(), r#"{"model":"m","messages":[{"role":"user","content":"é"}]}"#.to_owned()),
        ];
        let input = |rows: Vec<(String, String)>| BatchInput {
            tag: "t".into(),
            count: rows.len() as u64,
            custom_id_bytes: rows.iter().map(|(id, _)| id.len() as u64).sum(),
            params_bytes: rows.iter().map(|(_, p)| p.len() as u64).sum(),
            rows: Box::new(move || {
                let (first, rest) = rows.split_at(1);
                let chunks = vec![Ok(first.to_vec()), Ok(rest.to_vec())];
                Box::pin(futures_util::stream::iter(chunks))
            }),
        };
        let input = input(rows);
        let body: Vec<u8> = encoded(&input).map(|chunk| chunk.unwrap().to_vec()).concat().await;
        assert_eq!(body.len() as u64, body_length(&input));
        let parsed: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(parsed["requests"][1]["custom_id"], "job-2026-11-22-002");
        assert_eq!(parsed["requests"][0]["params"]["max_tokens"], 5);
    }
}
