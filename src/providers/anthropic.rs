//! The Anthropic Messages and Message Batches API over HTTPS (or loopback HTTP to the simulator).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::ProviderError;
use super::results::succeeded;
use crate::outcome::Outcome;

/// The API version header every call carries.
pub const API_VERSION: &str = "2023-06-01";
/// Default base URL.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// Environment variable holding the key.
pub const KEY_ENV: &str = "ANTHROPIC_API_KEY";
/// File name of the key in `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
pub const KEY_CREDENTIAL: &str = "anthropic-api-key";

/// An API key that never shows up in `Debug` output or logs.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The key from `ANTHROPIC_API_KEY`, else `$CREDENTIALS_DIRECTORY/anthropic-api-key`.
    pub fn from_environment() -> Result<ApiKey, ProviderError> {
        crate::secrets::read(KEY_ENV, KEY_CREDENTIAL)
            .map(ApiKey)
            .ok_or(ProviderError::MissingKey { env: KEY_ENV, credential: KEY_CREDENTIAL })
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

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
pub struct BatchPage {
    /// Batches, newest first.
    pub data: Vec<MessageBatch>,
    /// Whether older batches follow.
    #[serde(default)]
    pub has_more: bool,
    /// Id to pass as `after_id` for the next page.
    #[serde(default)]
    pub last_id: Option<String>,
}

/// What a synchronous call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageReply {
    /// The message (always `Succeeded`; errors come back as `ProviderError`).
    pub outcome: Outcome,
    /// The provider's `request-id`.
    pub request_id: Option<String>,
    /// What the `anthropic-ratelimit-*` headers said.
    pub rate_limits: RateLimits,
}

/// One quota from the `anthropic-ratelimit-<kind>-{limit,remaining,reset}` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Units per minute.
    pub limit: Option<u64>,
    /// Units left now.
    pub remaining: Option<u64>,
    /// When the quota is full again.
    pub reset: Option<chrono::DateTime<chrono::Utc>>,
}

/// The rate-limit headers of a response.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// `requests`.
    pub requests: Quota,
    /// `input-tokens`.
    pub input_tokens: Quota,
    /// `output-tokens`.
    pub output_tokens: Quota,
}

impl RateLimits {
    /// Reads the headers; absent or unreadable ones stay `None`.
    pub fn from_headers(headers: &HeaderMap) -> RateLimits {
        let quota = |kind: &str| {
            let text = |part: &str| {
                headers.get(format!("anthropic-ratelimit-{kind}-{part}")).and_then(|v| v.to_str().ok()).map(str::trim)
            };
            Quota {
                limit: text("limit").and_then(|v| v.parse().ok()),
                remaining: text("remaining").and_then(|v| v.parse().ok()),
                reset: text("reset")
                    .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
                    .map(|t| t.with_timezone(&chrono::Utc)),
            }
        };
        RateLimits {
            requests: quota("requests"),
            input_tokens: quota("input-tokens"),
            output_tokens: quota("output-tokens"),
        }
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
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(600))
            .user_agent(concat!("orchestrator/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(AnthropicClient { http, base_url: base_url.trim_end_matches('/').to_owned(), key })
    }

    /// A client from `ANTHROPIC_BASE_URL` and the key in the environment.
    pub fn from_environment() -> Result<AnthropicClient, ProviderError> {
        let base = std::env::var("ANTHROPIC_BASE_URL").unwrap_or_else(|_| DEFAULT_BASE_URL.to_owned());
        AnthropicClient::new(&base, ApiKey::from_environment()?)
    }

    fn request(&self, method: Method, url: &str, betas: &[String]) -> RequestBuilder {
        let mut headers = HeaderMap::new();
        headers.insert("anthropic-version", HeaderValue::from_static(API_VERSION));
        if let Ok(mut key) = HeaderValue::from_str(&self.key.0) {
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
        let rate_limits = RateLimits::from_headers(response.headers());
        let (text, request_id) = checked_text(response, "create_message").await?;
        let outcome = succeeded(&text).map_err(ProviderError::Malformed)?;
        Ok(MessageReply { outcome, request_id, rate_limits })
    }

    /// `POST /v1/messages/batches` with a body that is streamed, never built whole.
    pub async fn create_batch(&self, body: reqwest::Body, betas: &[String]) -> Result<MessageBatch, ProviderError> {
        let builder = self
            .request(Method::POST, &self.url("/v1/messages/batches"), betas)
            .header("content-type", "application/json");
        decode(builder.body(body).send().await?, "create_batch").await
    }

    /// `GET /v1/messages/batches/{id}`.
    pub async fn retrieve_batch(&self, id: &str) -> Result<MessageBatch, ProviderError> {
        decode(
            self.request(Method::GET, &self.url(&format!("/v1/messages/batches/{id}")), &[]).send().await?,
            "retrieve_batch",
        )
        .await
    }

    /// `GET /v1/messages/batches?limit=&after_id=`: one page, newest first.
    pub async fn list_batches(&self, after_id: Option<&str>, limit: u32) -> Result<BatchPage, ProviderError> {
        let mut url = format!("{}?limit={limit}", self.url("/v1/messages/batches"));
        if let Some(after) = after_id {
            url.push_str(&format!("&after_id={after}"));
        }
        decode(self.request(Method::GET, &url, &[]).send().await?, "list_batches").await
    }

    /// `POST /v1/messages/batches/{id}/cancel`.
    pub async fn cancel_batch(&self, id: &str) -> Result<MessageBatch, ProviderError> {
        let url = self.url(&format!("/v1/messages/batches/{id}/cancel"));
        decode(self.request(Method::POST, &url, &[]).send().await?, "cancel_batch").await
    }

    /// `DELETE /v1/messages/batches/{id}` (only after the batch ended).
    pub async fn delete_batch(&self, id: &str) -> Result<(), ProviderError> {
        let url = self.url(&format!("/v1/messages/batches/{id}"));
        checked_text(self.request(Method::DELETE, &url, &[]).send().await?, "delete_batch").await.map(drop)
    }

    /// Opens a batch's results (`results_url`) as a stream of lines.
    pub async fn results(&self, results_url: &str) -> Result<ResultsReader, ProviderError> {
        let response =
            self.request(Method::GET, results_url, &[]).header("accept", "application/binary").send().await?;
        let response = check_status(response, "results").await?;
        Ok(ResultsReader { stream: Box::pin(response.bytes_stream()), buffer: BytesMut::new(), done: false })
    }
}

/// Lines of a results file, read as the bytes arrive; memory is bounded by the longest line.
pub struct ResultsReader {
    stream: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: BytesMut,
    done: bool,
}

impl ResultsReader {
    /// The next non-empty line, `None` at the end. A last line cut short
    /// (no newline and not valid JSON) is an error: the stream was truncated.
    pub async fn next_line(&mut self) -> Result<Option<String>, ProviderError> {
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(at + 1);
                let text = String::from_utf8_lossy(&line[..at]).trim().to_owned();
                if text.is_empty() {
                    continue;
                }
                return Ok(Some(text));
            }
            if self.done {
                let rest = self.buffer.split();
                let text = String::from_utf8_lossy(&rest).trim().to_owned();
                if text.is_empty() {
                    return Ok(None);
                }
                if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
                    return Err(ProviderError::Malformed(format!(
                        "results stream truncated in a line of {} bytes",
                        text.len()
                    )));
                }
                return Ok(Some(text));
            }
            match self.stream.next().await {
                Some(chunk) => self.buffer.extend_from_slice(&chunk?),
                None => self.done = true,
            }
        }
    }
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
    let retry_after = retry_after(response.headers());
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

/// `retry-after-ms`, else `retry-after` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<f64>().ok());
    number("retry-after-ms")
        .map(|ms| Duration::from_secs_f64(ms.max(0.0) / 1000.0))
        .or_else(|| number("retry-after").map(|s| Duration::from_secs_f64(s.max(0.0))))
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
        let limits = RateLimits::from_headers(&headers);
        assert_eq!(limits.requests.limit, Some(50));
        assert_eq!(limits.requests.remaining, Some(0));
        assert_eq!(limits.requests.reset.map(|t| t.to_rfc3339()), Some("2026-11-22T06:00:30+00:00".into()));
        assert_eq!(limits.output_tokens.limit, Some(8000));
        assert_eq!(limits.input_tokens, Quota::default());
    }

    #[test]
    fn retry_after_reads_both_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert("retry-after-ms", HeaderValue::from_static("250"));
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
    }
}
