//! OpenAI batches (`PROVIDERS.md` §3.3–3.7): the input file validated at
//! creation, the lifecycle on the simulated clock (`validating`,
//! `in_progress` with counts rising, `finalizing`, then `completed`,
//! `failed`, `expired` or `cancelled`), the `Batch` object, and the output
//! and error files generated line by line when downloaded.
//!
//! Requests finish as the Anthropic simulator's do (a fixed fraction of the
//! batch's log-normal duration) and have the same outcomes, in OpenAI's
//! shape: a success in the output file; a refused body (400) or a failure
//! (500) in the error file; a request the window ran out on (24 h) in the
//! error file as `batch_expired`; a request a cancel stopped in neither
//! file (the client finds it missing).

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use serde_json::{Map, Value, json};

use super::chat;
use crate::sim::SimConfig;
use crate::sim::batches::{Core, DAY, Fate, Record};
use crate::sim::hash::{self, Key};
use crate::sim::params::Models;
use crate::sim::state::Clock;

/// The only endpoint the simulator's batches run.
pub(crate) const ENDPOINT: &str = "/v1/chat/completions";
/// Most requests in one input file.
const MAX_REQUESTS: usize = 50_000;
/// Share of a batch's duration spent validating, and finalizing.
const VALIDATING_SHARE: f64 = 0.02;
const FINALIZING_SHARE: f64 = 0.02;

/// A validation error of the input file: `{code, line, message, param}`.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub code: &'static str,
    pub line: Option<usize>,
    pub message: String,
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Completed,
    Failed,
    Expired,
    Cancelled,
}

/// One batch and its mutable state.
pub(crate) struct OaBatch {
    pub core: Arc<Core>,
    pub input_file_id: String,
    pub metadata: Option<Map<String, Value>>,
    pub model: Option<String>,
    /// Validation errors: non-empty means the batch fails once validated.
    pub failures: Vec<Failure>,
    pub cancel_at: Option<f64>,
    cancel_end: f64,
    pub ended: Option<(f64, End)>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
}

/// One request of an input file: its custom_id, and its body digested or why it is refused.
pub(crate) type Line = (Box<str>, Result<crate::sim::params::Prompt, Box<str>>);

/// What the input file holds once read: the requests, and what is wrong with it.
pub(crate) struct Input {
    pub records: Vec<Line>,
    pub failures: Vec<Failure>,
    pub model: Option<String>,
}

/// Reads an input file as the API validates it: every line a JSON object
/// with a unique `custom_id`, `method: POST`, the batch's `url` and a `body`
/// for one model. A body the chat endpoint refuses is no validation error:
/// it fails alone, in the error file.
pub(crate) fn read_input(bytes: &[u8]) -> Input {
    let (mut records, mut failures, mut model) = (Vec::new(), Vec::new(), None::<String>);
    let mut seen = HashSet::new();
    let mut models = Models::default();
    let mut fail =
        |code: &'static str, line: Option<usize>, message: String| failures.push(Failure { code, line, message });
    for (i, text) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(text) else {
            fail("invalid_json_line", Some(line), format!("Line {line} is not a valid JSON object."));
            continue;
        };
        let Some(custom_id) = request.get("custom_id").and_then(Value::as_str) else {
            fail("missing_required_parameter", Some(line), format!("Line {line} has no 'custom_id'."));
            continue;
        };
        if !seen.insert(custom_id.to_owned()) {
            fail(
                "duplicate_custom_id",
                Some(line),
                format!("The custom_id '{custom_id}' on line {line} is not unique."),
            );
            continue;
        }
        if request.get("method").and_then(Value::as_str) != Some("POST") {
            fail("invalid_request", Some(line), format!("Line {line}: 'method' must be POST."));
            continue;
        }
        if request.get("url").and_then(Value::as_str) != Some(ENDPOINT) {
            fail(
                "url_mismatch",
                Some(line),
                format!("Line {line}: 'url' does not match the batch endpoint {ENDPOINT}."),
            );
            continue;
        }
        let body = request.get("body").cloned().unwrap_or(Value::Null);
        let line_model = body.get("model").and_then(Value::as_str).map(str::to_owned);
        match (&model, &line_model) {
            (Some(first), Some(this)) if first != this => {
                fail(
                    "model_mismatch",
                    Some(line),
                    format!(
                        "Line {line} uses model '{this}'; the file uses '{first}'. A batch holds requests for one model."
                    ),
                );
                continue;
            }
            (None, Some(this)) => model = Some(this.clone()),
            _ => {}
        }
        let prompt = chat::digest(&body, &mut models).map_err(String::into_boxed_str);
        records.push((Box::from(custom_id), prompt));
    }
    let (empty, count) = (records.is_empty(), records.len());
    if count > MAX_REQUESTS {
        fail("too_many_tasks", None, format!("A batch holds at most {MAX_REQUESTS} requests; this file has {count}."));
    }
    if empty && failures.is_empty() {
        failures.push(Failure { code: "empty_file", line: None, message: "The input file holds no requests.".into() });
    }
    Input { records, failures, model }
}

impl OaBatch {
    /// A batch over `records` created at `core.created`.
    pub(crate) fn new(
        core: Core,
        input_file_id: String,
        metadata: Option<Map<String, Value>>,
        input: Input,
    ) -> OaBatch {
        OaBatch {
            core: Arc::new(core),
            input_file_id,
            metadata,
            model: input.model,
            failures: input.failures,
            cancel_at: None,
            cancel_end: 0.0,
            ended: None,
            output_file_id: None,
            error_file_id: None,
        }
    }

    fn validated_at(&self) -> f64 {
        let span = if self.core.duration.is_finite() { self.core.duration.min(DAY) } else { DAY };
        self.core.created + span * VALIDATING_SHARE
    }

    /// When the last request finishes (unless canceled), and when the batch is final.
    fn natural_end(&self) -> (f64, f64) {
        let done = self.core.created + self.core.duration;
        (done, done + self.core.duration * FINALIZING_SHARE)
    }

    /// Ends the batch when its time has come; true when it ended now (its
    /// files must be given ids).
    pub(crate) fn refresh(&mut self, now: f64) -> bool {
        if self.ended.is_some() {
            return false;
        }
        let (_, final_at) = self.natural_end();
        let expiry = self.core.created + DAY;
        let end = if !self.failures.is_empty() && now >= self.validated_at() {
            Some((self.validated_at(), End::Failed))
        } else if self.cancel_at.is_some() && now >= self.cancel_end {
            Some((self.cancel_end, End::Cancelled))
        } else if final_at <= expiry && now >= final_at {
            Some((final_at, End::Completed))
        } else if final_at > expiry && now >= expiry {
            Some((expiry, End::Expired))
        } else {
            None
        };
        self.ended = end;
        end.is_some()
    }

    /// Starts cancelling at `now`; false when it is already cancelling or ended.
    pub(crate) fn cancel(&mut self, now: f64, clock: &Clock, cancel_secs: Option<f64>) -> bool {
        if self.ended.is_some() || self.cancel_at.is_some() {
            return false;
        }
        self.cancel_at = Some(now);
        self.cancel_end = now + cancel_secs.unwrap_or(0.1 / clock.real_secs(1.0));
        true
    }

    /// The status word (after [`OaBatch::refresh`]).
    pub(crate) fn status(&self, now: f64) -> &'static str {
        match (self.ended, self.cancel_at) {
            (Some((_, End::Completed)), _) => "completed",
            (Some((_, End::Failed)), _) => "failed",
            (Some((_, End::Expired)), _) => "expired",
            (Some((_, End::Cancelled)), _) => "cancelled",
            (None, Some(_)) => "cancelling",
            (None, None) if now < self.validated_at() => "validating",
            (None, None) if now >= self.natural_end().0 => "finalizing",
            (None, None) => "in_progress",
        }
    }

    /// The fate of request `i` as it stands at `now`: `None` while it runs.
    fn fate_at(&self, i: usize, now: f64, config: &SimConfig) -> Option<Fate<'_>> {
        if !self.failures.is_empty() {
            return None;
        }
        let record = &self.core.records[i];
        let finish = self.core.created
            + self.core.duration
                * crate::sim::faults::finish_fraction(config.seed, &record.custom_id, record.submission);
        match self.ended {
            Some(_) => Some(self.core.fate(i, self.cancel_at, config)),
            None if finish <= now => Some(self.core.fate(i, None, config)),
            None => None,
        }
    }

    /// `(completed, failed)` so far: successes, and refused or failed
    /// requests (expired ones are left out, as the API was seen to do).
    fn counts(&self, now: f64, config: &SimConfig) -> (u64, u64) {
        let (mut completed, mut failed) = (0, 0);
        for i in 0..self.core.records.len() {
            match self.fate_at(i, now, config) {
                Some(Fate::Succeeded(_)) => completed += 1,
                Some(Fate::Errored(..)) => failed += 1,
                _ => {}
            }
        }
        (completed, failed)
    }

    /// Whether the ended batch has lines for its output (successes) and error files.
    pub(crate) fn has_lines(&self, config: &SimConfig) -> (bool, bool) {
        let (mut output, mut errors) = (false, false);
        for i in 0..self.core.records.len() {
            match self.fate_at(i, f64::INFINITY, config) {
                Some(Fate::Succeeded(_)) => output = true,
                Some(Fate::Errored(..) | Fate::Expired) => errors = true,
                _ => {}
            }
        }
        (output, errors)
    }

    /// The `Batch` object at `now`.
    pub(crate) fn to_json(&self, clock: &Clock, now: f64, config: &SimConfig) -> Value {
        let at = |secs: f64| Value::from(clock.unix(secs));
        let when = |end: End| match self.ended {
            Some((secs, kind)) if kind == end => at(secs),
            _ => Value::Null,
        };
        let (completed, failed) = self.counts(now, config);
        let started = self.failures.is_empty() && now >= self.validated_at();
        let errors = (!self.failures.is_empty() && self.ended.is_some()).then(|| {
            let data: Vec<Value> = self
                .failures
                .iter()
                .map(|f| json!({"code": f.code, "line": f.line, "message": f.message, "param": null}))
                .collect();
            json!({"object": "list", "data": data})
        });
        json!({
            "id": self.core.id,
            "object": "batch",
            "endpoint": ENDPOINT,
            "model": self.model,
            "errors": errors,
            "input_file_id": self.input_file_id,
            "completion_window": "24h",
            "status": self.status(now),
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": at(self.core.created),
            "in_progress_at": if started { at(self.validated_at()) } else { Value::Null },
            "expires_at": at(self.core.created + DAY),
            "finalizing_at": if self.ended.is_some() && started { at(self.natural_end().0.min(self.core.created + DAY)) } else { Value::Null },
            "completed_at": when(End::Completed),
            "failed_at": when(End::Failed),
            "expired_at": when(End::Expired),
            "cancelling_at": self.cancel_at.map_or(Value::Null, at),
            "cancelled_at": when(End::Cancelled),
            "request_counts": { "total": self.core.records.len(), "completed": completed, "failed": failed },
            "metadata": self.metadata,
        })
    }
}

/// Batch id of sequence number `seq`: `batch_` + 8 hex digits of the start nonce + 16 of `seq`.
pub(crate) fn batch_id(nonce: u64, seq: u64) -> String {
    format!("batch_{:08x}{seq:016x}", nonce as u32)
}

/// The sequence number in a batch id of this simulator instance.
pub(crate) fn parse_batch_id(nonce: u64, id: &str) -> Option<u64> {
    let hex = id.strip_prefix("batch_")?;
    if hex.len() != 24 || !hex.starts_with(&format!("{:08x}", nonce as u32)) {
        return None;
    }
    u64::from_str_radix(&hex[8..], 16).ok()
}

/// Which file of a batch a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    Output,
    Errors,
}

/// An output or error file being downloaded, detached from the state lock.
pub(crate) struct Download {
    pub config: SimConfig,
    pub core: Arc<Core>,
    pub cancel_at: Option<f64>,
    pub part: Part,
    /// Unix seconds of the answers' `created`.
    pub created: i64,
    /// Cut the stream in the middle of the line at this fraction of all lines.
    pub truncate_at: Option<f64>,
}

impl Download {
    /// The streaming body: the file's lines, in a shuffled but deterministic order.
    pub(crate) fn into_body(self) -> Body {
        let order = crate::sim::results::shuffled(&self.config, &self.core);
        let lines: Vec<u32> = order.into_iter().filter(|&i| self.line(i as usize).is_some()).collect();
        let truncate_at = self.truncate_at;
        crate::sim::results::line_stream(self, lines, truncate_at, |download, i| {
            download.line(i).expect("only lines of this file are listed")
        })
    }

    /// The file's size in bytes (its lines generated and counted).
    pub(crate) fn len(&self) -> u64 {
        (0..self.core.records.len()).filter_map(|i| self.line(i)).map(|line| line.len() as u64).sum()
    }

    /// The line of request `i` in this file, with its newline; `None` when it belongs to the other file or none.
    fn line(&self, i: usize) -> Option<Vec<u8>> {
        let record: &Record = &self.core.records[i];
        let key = Key::new(self.config.seed, "openai-result").str(&record.custom_id).num(u64::from(record.submission));
        let line_id = hash::id("batch_req_", key.str("line").finish(), u64::from(record.submission));
        let request_id = hash::id("req_", key.str("req").finish(), u64::from(record.submission));
        let value = match (self.core.fate(i, self.cancel_at, &self.config), self.part) {
            (Fate::Succeeded(prompt), Part::Output) => {
                let id = hash::id("chatcmpl-", key.str("chat").finish(), prompt.hash);
                let body = chat::completion(&id, prompt, record.cache_hit, self.created, self.config.reply_bytes);
                json!({"id": line_id, "custom_id": &*record.custom_id,
                       "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": null})
            }
            (Fate::Errored(kind, message), Part::Errors) => {
                let status = if kind == "invalid_request_error" { 400 } else { 500 };
                let kind = if status == 400 { "invalid_request_error" } else { "server_error" };
                let body = json!({"error": {"message": message, "type": kind, "param": null, "code": null}});
                json!({"id": line_id, "custom_id": &*record.custom_id,
                       "response": {"status_code": status, "request_id": request_id, "body": body}, "error": null})
            }
            (Fate::Expired, Part::Errors) => json!({"id": line_id, "custom_id": &*record.custom_id, "response": null,
                "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}),
            _ => return None,
        };
        let mut line = serde_json::to_vec(&value).expect("a line serializes");
        line.push(b'\n');
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(custom_id: &str, model: &str) -> String {
        format!(
            r#"{{"custom_id":"{custom_id}","method":"POST","url":"/v1/chat/completions","body":{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}}}"#
        )
    }

    #[test]
    fn the_input_file_is_validated_line_by_line() {
        let good = format!("{}\n{}\n", line("a", "gpt-4o-mini"), line("b", "gpt-4o-mini"));
        let input = read_input(good.as_bytes());
        assert_eq!((input.records.len(), input.failures.len()), (2, 0));
        assert_eq!(input.model.as_deref(), Some("gpt-4o-mini"));
        let bad =
            format!("{}\nnot json\n{}\n{}\n", line("a", "gpt-4o-mini"), line("a", "gpt-4o-mini"), line("c", "gpt-4o"));
        let input = read_input(bad.as_bytes());
        let codes: Vec<(&str, Option<usize>)> = input.failures.iter().map(|f| (f.code, f.line)).collect();
        assert_eq!(
            codes,
            [("invalid_json_line", Some(2)), ("duplicate_custom_id", Some(3)), ("model_mismatch", Some(4))]
        );
        assert_eq!(read_input(b"\n").failures[0].code, "empty_file");
        let refused =
            r#"{"custom_id":"z","method":"POST","url":"/v1/chat/completions","body":{"model":"m","messages":[]}}"#;
        let input = read_input(refused.as_bytes());
        assert!(input.failures.is_empty() && input.records[0].1.is_err(), "a refused body fails alone, later");
    }
}
