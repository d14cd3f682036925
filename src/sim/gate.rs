//! The middleware every API call passes: request id, credentials and
//! `anthropic-version` checks, fault injection, per-endpoint counts, and the
//! rendering of [`ApiError`]s with the request id.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::errors::{ApiError, Dialect};
use super::faults;
use super::state::Sim;

/// The request number of an API call (faults and truncation are rolled from it).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestNo(pub u64);

/// Runs around every route and the fallback.
pub(crate) async fn gate(State(sim): State<Arc<Sim>>, mut req: Request, next: Next) -> Response {
    let n = sim.next_request();
    let request_id = sim.request_id(n);
    let internal = req.uri().path().starts_with("/_sim/");
    let dialect = Dialect::of(req.uri().path());
    let mut response = if internal {
        next.run(req).await
    } else {
        let endpoint = endpoint(req.method().as_str(), req.uri().path());
        let chunked = req.headers().contains_key(axum::http::header::TRANSFER_ENCODING);
        {
            let mut state = sim.lock();
            state.stats.call(endpoint);
            state.stats.chunked_bodies += u64::from(chunked);
        }
        if let Err(err) = check_headers(req.headers(), req.uri().query(), dialect, sim.config.api_key.as_deref()) {
            err.into_response()
        } else if sim.config.outage.as_deref() == Some(dialect.provider()) {
            sim.lock().stats.fault("outage");
            ApiError::overloaded().into_response()
        } else if let Some((label, err)) = faults::roll_fault(&sim.config, n, sim.clock.now()) {
            tracing::debug!(fault = label, path = req.uri().path(), "injecting a fault");
            sim.lock().stats.fault(label);
            err.into_response()
        } else {
            req.extensions_mut().insert(RequestNo(n));
            next.run(req).await
        }
    };
    if let Some(err) = response.extensions_mut().remove::<ApiError>() {
        response = err.render(dialect, &request_id);
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(dialect.request_id_header(), value);
    }
    response
}

/// `"METHOD /path"` with batch and file ids replaced by `{id}`, e.g.
/// `GET /v1/messages/batches/{id}`; `"other"` outside the APIs.
fn endpoint(method: &str, path: &str) -> String {
    let known =
        ["/v1/messages", "/v1/chat/", "/v1/files", "/v1/batches", "/v1beta/", "/upload/v1beta/", "/download/v1beta/"];
    if !known.iter().any(|prefix| path.starts_with(prefix)) {
        return "other".to_owned();
    }
    let is_id = |segment: &str| ["msgbatch_", "batch_", "file-"].iter().any(|p| segment.starts_with(p));
    // Gemini names are 24 hex digits, maybe followed by `:verb`.
    let gemini_id = |segment: &str| {
        let (id, verb) = segment.split_once(':').map_or((segment, None), |(id, verb)| (id, Some(verb)));
        (id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| verb.map_or("{id}".to_owned(), |v| format!("{{id}}:{v}")))
    };
    let path: Vec<String> =
        path.split('/')
            .map(|segment| {
                if is_id(segment) {
                    "{id}".to_owned()
                } else {
                    gemini_id(segment).unwrap_or_else(|| segment.to_owned())
                }
            })
            .collect();
    format!("{method} {}", path.join("/"))
}

/// A credential (`x-api-key`, or `Authorization: Bearer`; `accepted` when
/// set) must be present, and for Anthropic's API `anthropic-version` too.
fn check_headers(
    headers: &HeaderMap,
    query: Option<&str>,
    dialect: Dialect,
    accepted: Option<&str>,
) -> Result<(), ApiError> {
    let non_empty =
        |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    if dialect == Dialect::Gemini {
        return check_google_key(non_empty("x-goog-api-key"), query, accepted);
    }
    let bearer = non_empty("authorization")
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .filter(|token| !token.trim().is_empty());
    let (missing, wrong) = match dialect {
        Dialect::Anthropic => ("x-api-key header is required (or Authorization: Bearer <token>)", "invalid x-api-key"),
        Dialect::OpenAi | Dialect::Gemini => (
            "You didn't provide an API key. Provide it in an Authorization header (Authorization: Bearer YOUR_KEY).",
            "Incorrect API key provided.",
        ),
    };
    let Some(key) = non_empty("x-api-key").or(bearer) else {
        return Err(ApiError::authentication(missing));
    };
    if accepted.is_some_and(|accepted| accepted != key) {
        return Err(ApiError::authentication(wrong));
    }
    if dialect == Dialect::Anthropic && non_empty("anthropic-version").is_none() {
        return Err(ApiError::invalid("anthropic-version: header is required"));
    }
    Ok(())
}

/// Google's key: `x-goog-api-key` or `?key=`. A call without one is a 403,
/// a wrong one a 400 `INVALID_ARGUMENT`, as the API answers. The chunks of
/// a resumable upload carry none (the session URL is the credential), as
/// the official SDK sends them.
fn check_google_key(header: Option<&str>, query: Option<&str>, accepted: Option<&str>) -> Result<(), ApiError> {
    let param = |name: &str| {
        query?.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')).filter(|v| !v.is_empty())
    };
    if param("upload_id").is_some() {
        return Ok(());
    }
    let Some(key) = header.or(param("key")) else {
        return Err(ApiError::forbidden(
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        ));
    };
    if accepted.is_some_and(|accepted| accepted != key) {
        return Err(ApiError::invalid("API key not valid. Please pass a valid API key."));
    }
    Ok(())
}
