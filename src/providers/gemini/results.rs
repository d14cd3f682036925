//! A `GenerateContentResponse` as an outcome, and one result of a batch,
//! inline or a line of its responses file (`PROVIDERS.md` §4, §4.1).

use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

use crate::outcome::{Outcome, Usage};
use crate::providers::ResultLine;

/// The outcome of a `generateContent` answer, kept as received.
/// `promptTokenCount` includes the cached tokens (priced at the cache read
/// rate); thinking tokens are billed as output.
pub fn succeeded(response: &str) -> Result<Outcome, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Response {
        #[serde(default)]
        candidates: Vec<Candidate>,
        #[serde(default)]
        usage_metadata: Option<RawUsage>,
    }
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Candidate {
        #[serde(default)]
        finish_reason: Option<String>,
    }
    let parsed: Response = serde_json::from_str(response).map_err(|err| err.to_string())?;
    Ok(Outcome::Succeeded {
        message: response.to_owned(),
        stop_reason: parsed.candidates.first().and_then(|c| c.finish_reason.clone()),
        usage: parsed.usage_metadata.map(RawUsage::into_usage).unwrap_or_default(),
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawUsage {
    #[serde(default)]
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
}

impl RawUsage {
    fn into_usage(self) -> Usage {
        let cached = self.cached_content_token_count.min(self.prompt_token_count);
        Usage {
            input_tokens: self.prompt_token_count - cached,
            output_tokens: self.candidates_token_count + self.thoughts_token_count,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            cache_read_tokens: cached,
        }
    }
}

/// A per-request error: `{code, message, status}`.
#[derive(Debug, Deserialize)]
pub(super) struct RawError {
    #[serde(default)]
    pub code: Option<u16>,
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub status: Option<String>,
}

impl RawError {
    /// 400 / `INVALID_ARGUMENT` is final; 429, 500, 503 and 504 are retried.
    pub(super) fn outcome(&self) -> Outcome {
        let status = self.status.as_deref().unwrap_or_default();
        let code = match self.code {
            // A gRPC code (the API has used both): its HTTP equivalent.
            Some(code) if code < 100 => grpc_to_http(code),
            Some(code) => code,
            None => super::code_of(status),
        };
        Outcome::Errored {
            error_type: super::normalised_error_type(code, status).to_owned(),
            message: format!("{code} {status}: {}", self.message.as_deref().unwrap_or("(no message)")),
        }
    }
}

/// The HTTP status a gRPC status code stands for.
fn grpc_to_http(code: u16) -> u16 {
    match code {
        3 | 9 | 11 => 400,
        16 => 401,
        7 => 403,
        5 => 404,
        8 => 429,
        14 => 503,
        4 => 504,
        _ => 500,
    }
}

#[derive(Deserialize)]
struct FileLine {
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    response: Option<Box<RawValue>>,
    #[serde(default)]
    error: Option<RawError>,
}

#[derive(Deserialize)]
struct Metadata {
    #[serde(default)]
    key: Option<String>,
}

/// Parses one result: a responses-file line (`{"key", "response"}` or
/// `{"key", "error"}`) or an inline response (the key under `metadata`).
pub fn parse_result_line(line: &str) -> Result<ResultLine, String> {
    let raw: FileLine = serde_json::from_str(line).map_err(|err| err.to_string())?;
    let key = raw.key.or_else(|| raw.metadata.and_then(|m| m.key)).ok_or("a result without its key")?;
    let outcome = match (raw.response, raw.error) {
        (_, Some(error)) => error.outcome(),
        (Some(response), None) => succeeded(response.get())?,
        (None, None) => return Err(format!("a result for `{key}` with neither response nor error")),
    };
    // The answer names a `modelVersion`, not the catalog's model: it is
    // priced afterwards as the model the request named.
    Ok(ResultLine { custom_id: key, input_line: None, outcome, model: None })
}

/// The inline responses of a batch operation, wherever this version of the
/// API put them: `response.inlinedResponses.inlinedResponses[]`, or the
/// same under `metadata.output`.
pub(super) fn inline_results(operation: &Value) -> Vec<Result<ResultLine, String>> {
    fn list(root: Option<&Value>) -> Option<&Vec<Value>> {
        root?.get("inlinedResponses")?.get("inlinedResponses")?.as_array()
    }
    let responses = list(operation.get("response")).or_else(|| list(operation.pointer("/metadata/output")));
    responses.map(|items| items.iter().map(|item| parse_result_line(&item.to_string())).collect()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_splits_cached_input_and_bills_thoughts_as_output() {
        let body = r#"{"candidates":[{"content":{"parts":[{"text":"hi"}],"role":"model"},"finishReason":"STOP"}],
            "usageMetadata":{"promptTokenCount":1300,"candidatesTokenCount":20,"cachedContentTokenCount":1024,"thoughtsTokenCount":50,"totalTokenCount":1370}}"#;
        let Outcome::Succeeded { stop_reason, usage, .. } = succeeded(body).unwrap() else { panic!() };
        assert_eq!(stop_reason.as_deref(), Some("STOP"));
        assert_eq!(usage, Usage { input_tokens: 276, output_tokens: 70, cache_read_tokens: 1024, ..Usage::default() });
    }

    #[test]
    fn results_name_their_key_inline_or_in_a_file_and_errors_keep_their_class() {
        let file = r#"{"key":"a","response":{"candidates":[],"usageMetadata":{"promptTokenCount":3}}}"#;
        assert_eq!(parse_result_line(file).unwrap().custom_id, "a");
        let refused = r#"{"key":"b","error":{"code":400,"message":"bad","status":"INVALID_ARGUMENT"}}"#;
        let refused = parse_result_line(refused).unwrap().outcome;
        assert!(!refused.is_retryable(), "{refused:?}");
        let busy = r#"{"metadata":{"key":"c"},"error":{"code":503,"message":"busy","status":"UNAVAILABLE"}}"#;
        let busy = parse_result_line(busy).unwrap();
        assert_eq!(busy.custom_id, "c");
        assert!(busy.outcome.is_retryable() && !busy.outcome.counts_as_attempt(), "{busy:?}");
        let failed = r#"{"key":"d","error":{"code":500,"message":"oops","status":"INTERNAL"}}"#;
        let failed = parse_result_line(failed).unwrap().outcome;
        assert!(failed.is_retryable() && failed.counts_as_attempt(), "{failed:?}");
        assert!(parse_result_line(r#"{"response":{}}"#).is_err(), "a result without a key");
        let grpc = parse_result_line(r#"{"metadata":{"key":"g"},"error":{"code":3,"message":"bad"}}"#).unwrap();
        assert!(!grpc.outcome.is_retryable(), "gRPC code 3 is INVALID_ARGUMENT: {grpc:?}");
        let operation: Value = serde_json::from_str(
            r#"{"name":"batches/x","metadata":{"output":{"inlinedResponses":{"inlinedResponses":[{"metadata":{"key":"e"},"response":{}}]}}}}"#,
        )
        .unwrap();
        let inline = inline_results(&operation);
        assert_eq!(inline.len(), 1);
        assert_eq!(inline[0].as_ref().unwrap().custom_id, "e");
    }
}
