//! API errors in the shape of the API that was called: Anthropic's
//! `{"type":"error","error":{"type":..,"message":..},"request_id":..}`
//! (`PROVIDERS.md` §1.5) or OpenAI's `{"error":{"message","type","param","code"}}`
//! (§3.1).
//!
//! Handlers return [`ApiError`]; its response carries the error as an
//! extension, and the gate middleware renders the body with the request id
//! it also puts in the `request-id` (or `x-request-id`) header.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One error answer: HTTP status, `error.type`, message, optional `retry-after`.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub kind: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, kind, message: message.into(), retry_after: None }
    }

    /// 400 `invalid_request_error`.
    pub(crate) fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 401 `authentication_error`.
    pub(crate) fn authentication(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
    }

    /// 404 `not_found_error`.
    pub(crate) fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found_error", message)
    }

    /// 413 `request_too_large`.
    pub(crate) fn too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            format!("Request exceeds the maximum allowed number of bytes ({limit})."),
        )
    }

    /// 429 `rate_limit_error` with `retry-after`.
    pub(crate) fn rate_limited(retry_after: u64) -> ApiError {
        let mut err = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "Number of requests has exceeded your rate limit (simulated).",
        );
        err.retry_after = Some(retry_after);
        err
    }

    /// 529 `overloaded_error`.
    pub(crate) fn overloaded() -> ApiError {
        let status = StatusCode::from_u16(529).expect("529 is a valid status");
        ApiError::new(status, "overloaded_error", "Overloaded (simulated).")
    }

    /// 500 `api_error` with `retry-after`.
    pub(crate) fn server(retry_after: u64) -> ApiError {
        let mut err =
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "Internal server error (simulated).");
        err.retry_after = Some(retry_after);
        err
    }

    /// 500 `api_error` without `retry-after`: the call itself failed (it counts
    /// as one of the caller's tries, unlike backpressure).
    pub(crate) fn failed() -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "api_error", "Internal server error (simulated).")
    }

    /// The full response, body included, for the request `request_id`, in the `dialect` of the API called.
    pub(crate) fn render(&self, dialect: Dialect, request_id: &str) -> Response {
        let mut response = match dialect {
            Dialect::Anthropic => {
                (self.status, axum::Json(error_body(self.kind, &self.message, request_id))).into_response()
            }
            Dialect::OpenAi => self.render_openai(),
            Dialect::Gemini => self.render_google(),
        };
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl ApiError {
    /// OpenAI's status and `{"error":{message,type,param,code}}`: an
    /// overload is a 503, a bad key a 401 `invalid_api_key`.
    fn render_openai(&self) -> Response {
        let (status, kind, code) = match self.kind {
            "rate_limit_error" => (self.status, "requests", Some("rate_limit_exceeded")),
            "overloaded_error" => (StatusCode::SERVICE_UNAVAILABLE, "server_error", None),
            "api_error" => (self.status, "server_error", None),
            "authentication_error" => (self.status, "invalid_request_error", Some("invalid_api_key")),
            "not_found_error" => (self.status, "invalid_request_error", None),
            _ => (self.status, "invalid_request_error", None),
        };
        let body =
            serde_json::json!({ "error": { "message": self.message, "type": kind, "param": null, "code": code } });
        (status, axum::Json(body)).into_response()
    }
}

impl ApiError {
    /// Google's `{"error":{code,message,status}}`: an overload is a 503
    /// `UNAVAILABLE`, a rate limit a 429 `RESOURCE_EXHAUSTED`.
    fn render_google(&self) -> Response {
        let (status, word) = match self.kind {
            "rate_limit_error" => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
            "overloaded_error" => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            "api_error" => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
            "authentication_error" => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
            "permission_error" => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
            "not_found_error" => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            _ => (self.status, "INVALID_ARGUMENT"),
        };
        let body = serde_json::json!({ "error": { "code": status.as_u16(), "message": self.message, "status": word } });
        (status, axum::Json(body)).into_response()
    }

    /// 403 `permission_error`: Google's answer to a call without a key.
    pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "permission_error", message)
    }
}

/// Which API's conventions an answer follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    /// `/v1/messages...`.
    Anthropic,
    /// `/v1/chat/completions`, `/v1/files...`, `/v1/batches...`.
    OpenAi,
    /// `/v1beta/...`, `/upload/v1beta/...`, `/download/v1beta/...`.
    Gemini,
}

impl Dialect {
    /// The dialect of a request path.
    pub(crate) fn of(path: &str) -> Dialect {
        let openai = ["/v1/chat/", "/v1/files", "/v1/batches"].iter().any(|prefix| path.starts_with(prefix));
        let gemini = ["/v1beta/", "/upload/v1beta/", "/download/v1beta/"].iter().any(|prefix| path.starts_with(prefix));
        match (openai, gemini) {
            (true, _) => Dialect::OpenAi,
            (_, true) => Dialect::Gemini,
            _ => Dialect::Anthropic,
        }
    }

    /// The provider whose API this is, as manifests name it.
    pub(crate) fn provider(self) -> &'static str {
        match self {
            Dialect::Anthropic => "anthropic",
            Dialect::OpenAi => "openai",
            Dialect::Gemini => "gemini",
        }
    }

    /// The header that carries the request id.
    pub(crate) fn request_id_header(self) -> &'static str {
        match self {
            Dialect::Anthropic => "request-id",
            Dialect::OpenAi | Dialect::Gemini => "x-request-id",
        }
    }
}

/// The error object, as in an error response or nested in an `errored` result line.
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    error: ErrorDetail<'a>,
    request_id: &'a str,
}

#[derive(Debug, Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    message: &'a str,
}

/// The error object of `kind` with `message`, answering request `request_id`.
pub(crate) fn error_body<'a>(kind: &'a str, message: &'a str, request_id: &'a str) -> ErrorBody<'a> {
    ErrorBody { kind: "error", error: ErrorDetail { kind, message }, request_id }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = self.status.into_response();
        response.extensions_mut().insert(self);
        response
    }
}
