//! The OpenAI objects the client reads (`PROVIDERS.md` §3.2–3.4), and what
//! they mean for the lanes: the batch's phase, where its results are.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::outcome::Outcome;
use crate::providers::{BatchPhase, BatchStatus, ResultLine};

/// A `FileObject` (only its id is used).
#[derive(Debug, Clone, Deserialize)]
pub(super) struct FileObject {
    pub id: String,
}

/// A `Batch`; unknown fields are ignored.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Batch {
    pub id: String,
    status: String,
    #[serde(default)]
    created_at: Option<i64>,
    #[serde(default)]
    completed_at: Option<i64>,
    #[serde(default)]
    failed_at: Option<i64>,
    #[serde(default)]
    expired_at: Option<i64>,
    #[serde(default)]
    cancelled_at: Option<i64>,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    errors: Option<Errors>,
    #[serde(default)]
    request_counts: Option<RequestCounts>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Deserialize)]
struct Errors {
    #[serde(default)]
    data: Vec<Failure>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
struct RequestCounts {
    #[serde(default)]
    total: u64,
}

/// A validation error of a failed batch: `{code, message, param, line}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// `invalid_json_line`, `duplicate_custom_id`, `token_limit_exceeded`, ...
    #[serde(default)]
    pub code: Option<String>,
    /// What is wrong.
    #[serde(default)]
    pub message: Option<String>,
    /// The input line it concerns (1-based), when it concerns one.
    #[serde(default)]
    pub line: Option<u64>,
}

impl Failure {
    /// A line's validation error fails that request for good (the request
    /// itself is wrong); an error of the whole batch (the enqueued-token
    /// limit, an empty file) says nothing of any request: they all come
    /// back without a result, and so are retried.
    pub(super) fn result(&self) -> Option<ResultLine> {
        let line = self.line?;
        let code = self.code.as_deref().unwrap_or("invalid_request");
        let message = format!("{code}: {}", self.message.as_deref().unwrap_or("the input line was refused"));
        Some(ResultLine {
            custom_id: String::new(),
            input_line: Some(line),
            outcome: Outcome::Errored { error_type: "invalid_request_error".to_owned(), message },
            model: None,
        })
    }
}

/// One page of `GET /batches`.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct RawPage {
    pub data: Vec<Batch>,
    #[serde(default)]
    pub has_more: bool,
    #[serde(default)]
    pub last_id: Option<String>,
}

/// Where an ended batch's results are: its two files (a clean batch has no
/// error file, a batch whose every line failed no output file; an empty id
/// counts as none) and the validation errors of a failed batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locator {
    /// The file of successful lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// The file of failed lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Validation errors (`errors.data`) of a batch that failed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<Failure>,
}

impl Locator {
    /// Reads a stored locator.
    pub fn parse(text: &str) -> Result<Locator, String> {
        serde_json::from_str(text).map_err(|err| format!("unreadable OpenAI results locator `{text}`: {err}"))
    }
}

impl Batch {
    /// The batch as the lanes see it. File ids appear only once a batch is
    /// final, so results are pointed at only then.
    pub(super) fn status(&self) -> BatchStatus {
        let phase = match self.status.as_str() {
            "completed" | "failed" | "expired" | "cancelled" => BatchPhase::Ended,
            "cancelling" => BatchPhase::Canceling,
            _ => BatchPhase::InProgress,
        };
        let instant = |secs: Option<i64>| secs.and_then(|s| DateTime::<Utc>::from_timestamp(s, 0));
        let ended_at = instant(self.completed_at.or(self.failed_at).or(self.expired_at).or(self.cancelled_at));
        let file = |id: &Option<String>| id.clone().filter(|id| !id.is_empty());
        let results = (phase == BatchPhase::Ended).then(|| {
            let locator = Locator {
                output: file(&self.output_file_id),
                error: file(&self.error_file_id),
                failures: self.errors.as_ref().map(|e| e.data.clone()).unwrap_or_default(),
            };
            serde_json::to_string(&locator).expect("a locator serializes")
        });
        let validating = self.status == "validating";
        BatchStatus {
            id: self.id.clone(),
            phase,
            created_at: instant(self.created_at),
            ended_at,
            request_count: self.request_counts.filter(|_| !validating).map(|c| c.total),
            results,
            tag: self.metadata.as_ref().and_then(|m| m.get(super::TAG_KEY)).and_then(|v| v.as_str()).map(str::to_owned),
        }
    }
}

/// The error types the lanes know, from an OpenAI status and `error.code`:
/// a 429 that says the quota is spent is a billing error (no wait fixes it),
/// any other 429 a rate limit; a 503 is an overload.
pub fn normalised_error_type(status: u16, code: Option<&str>) -> &'static str {
    match (status, code) {
        (429, Some("insufficient_quota")) => "billing_error",
        (429, _) => "rate_limit_error",
        (400 | 422, _) => "invalid_request_error",
        (401, _) => "authentication_error",
        (403, _) => "permission_error",
        (404, _) => "not_found_error",
        (413, _) => "request_too_large",
        (503, _) => "overloaded_error",
        (408, _) => "timeout_error",
        _ => "api_error",
    }
}

/// An `x-ratelimit-reset-*` value: a Go-style duration (`1s`, `6m0s`, `20ms`, `1h2m3.5s`).
pub(super) fn parse_reset(text: &str) -> Option<Duration> {
    let mut total = 0.0;
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let seconds = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * seconds;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(json: &str) -> BatchStatus {
        serde_json::from_str::<Batch>(json).unwrap().status()
    }

    #[test]
    fn every_status_maps_to_a_phase_and_files_appear_only_at_the_end() {
        for (status, phase) in [
            ("validating", BatchPhase::InProgress),
            ("in_progress", BatchPhase::InProgress),
            ("finalizing", BatchPhase::InProgress),
            ("cancelling", BatchPhase::Canceling),
            ("completed", BatchPhase::Ended),
            ("failed", BatchPhase::Ended),
            ("expired", BatchPhase::Ended),
            ("cancelled", BatchPhase::Ended),
        ] {
            let seen = batch(&format!(r#"{{"id":"batch_1","status":"{status}","created_at":1795000000}}"#));
            assert_eq!(seen.phase, phase, "{status}");
            assert_eq!(seen.results.is_some(), phase == BatchPhase::Ended, "{status}");
        }
    }

    #[test]
    fn a_clean_batch_an_all_failed_batch_and_a_failed_validation_point_at_what_exists() {
        let clean = batch(
            r#"{"id":"b","status":"completed","output_file_id":"file-out","error_file_id":"","completed_at":1795000100,
                "request_counts":{"total":3,"completed":3,"failed":0},"metadata":{"orchestrator_batch":"orchestrator-batch-9"}}"#,
        );
        assert_eq!(
            Locator::parse(clean.results.as_deref().unwrap()).unwrap(),
            Locator { output: Some("file-out".into()), ..Locator::default() }
        );
        assert_eq!(clean.tag.as_deref(), Some("orchestrator-batch-9"));
        assert_eq!(clean.request_count, Some(3));
        assert_eq!(clean.ended_at, DateTime::from_timestamp(1_795_000_100, 0));
        let all_failed = batch(r#"{"id":"b","status":"completed","output_file_id":null,"error_file_id":"file-err"}"#);
        assert_eq!(Locator::parse(all_failed.results.as_deref().unwrap()).unwrap().error.as_deref(), Some("file-err"));
        let failed = batch(
            r#"{"id":"b","status":"failed","errors":{"object":"list","data":[
                {"code":"duplicate_custom_id","message":"dup","param":null,"line":2},
                {"code":"token_limit_exceeded","message":"Enqueued token limit reached","param":null,"line":null}]}}"#,
        );
        let locator = Locator::parse(failed.results.as_deref().unwrap()).unwrap();
        let results: Vec<ResultLine> = locator.failures.iter().filter_map(Failure::result).collect();
        assert_eq!(results.len(), 1, "only the line's error names a request; the token limit leaves all to retry");
        assert_eq!(results[0].input_line, Some(2));
        assert!(!results[0].outcome.is_retryable());
        let validating = batch(r#"{"id":"b","status":"validating","request_counts":{"total":0}}"#);
        assert_eq!(validating.request_count, None, "no count is known while it validates");
    }

    #[test]
    fn statuses_and_codes_become_the_lanes_error_types() {
        assert_eq!(normalised_error_type(429, Some("rate_limit_exceeded")), "rate_limit_error");
        assert_eq!(normalised_error_type(429, Some("insufficient_quota")), "billing_error");
        assert_eq!(normalised_error_type(400, None), "invalid_request_error");
        assert_eq!(normalised_error_type(503, None), "overloaded_error");
        assert_eq!(normalised_error_type(500, None), "api_error");
        assert_eq!(normalised_error_type(401, None), "authentication_error");
    }

    #[test]
    fn reset_durations_parse_as_go_writes_them() {
        assert_eq!(parse_reset("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_reset("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_reset("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(parse_reset("1h2m3.5s"), Some(Duration::from_secs_f64(3723.5)));
        assert_eq!(parse_reset("soon"), None);
        assert_eq!(parse_reset(""), None);
    }
}
