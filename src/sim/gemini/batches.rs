//! Gemini batches (`PROVIDERS.md` §4, §4.1): the requests read from an
//! inline body or an uploaded JSONL file, the lifecycle on the simulated
//! clock (`BATCH_STATE_PENDING`, `RUNNING`, then `SUCCEEDED`, `CANCELLED` or
//! `EXPIRED` after 48 h), the operation object, and the output, inline or as
//! a responses file, generated when read.
//!
//! Requests finish as the other providers' do and have the same outcomes,
//! in Gemini's shape: a success is a `response`; a refused body (400
//! `INVALID_ARGUMENT`) or a failure (500 `INTERNAL`, 503 `UNAVAILABLE`) an
//! `error`. A request the simulator would let expire is left out of the
//! output (the client finds it missing), and a cancelled or expired job has
//! no output at all.

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Body;
use serde_json::{Value, json};

use super::generate;
use crate::sim::SimConfig;
use crate::sim::batches::{Core, DAY};
use crate::sim::faults::{self, Outcome};
use crate::sim::hash::{self, Key};
use crate::sim::params::{Models, Prompt};
use crate::sim::state::Clock;

/// A job still pending or running after this long expires.
pub(crate) const EXPIRY: f64 = 2.0 * DAY;
/// Share of a batch's duration spent pending.
const PENDING_SHARE: f64 = 0.02;
/// Real seconds a cancel takes unless configured.
const CANCEL_REAL_SECS: f64 = 0.1;

/// One request: its key, and its body digested or why it is refused.
pub(crate) type Line = (Box<str>, Result<Prompt, Box<str>>);

/// Where a batch's requests came from; its output has the same kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Inline,
    File,
}

/// Reads inline requests: `[{"request": {...}, "metadata": {"key": ...}}]`.
pub(crate) fn read_inline(requests: &[Value], model: &str) -> Result<Vec<Line>, String> {
    let mut models = Models::default();
    let mut seen = HashSet::new();
    let mut lines = Vec::with_capacity(requests.len());
    for (i, item) in requests.iter().enumerate() {
        let key = item.pointer("/metadata/key").and_then(Value::as_str).unwrap_or_default();
        let key = if key.is_empty() { format!("{i}") } else { key.to_owned() };
        if !seen.insert(key.clone()) {
            return Err(format!("* inlined_requests[{i}].metadata.key: duplicate key `{key}`"));
        }
        let request = item.get("request").ok_or_else(|| format!("* inlined_requests[{i}].request: missing"))?;
        lines.push((key.into(), generate::digest(request, model, &mut models).map_err(String::into_boxed_str)));
    }
    Ok(lines)
}

/// Reads an input file: one `{"key": ..., "request": {...}}` per line.
pub(crate) fn read_file(bytes: &[u8], model: &str) -> Result<Vec<Line>, String> {
    let mut models = Models::default();
    let mut seen = HashSet::new();
    let mut lines = Vec::new();
    for (i, text) in bytes.split(|b| *b == b'\n').enumerate() {
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let line: Value =
            serde_json::from_slice(text).map_err(|err| format!("Line {} of the input file: {err}", i + 1))?;
        let key = line.get("key").and_then(Value::as_str).ok_or_else(|| format!("Line {}: no `key`", i + 1))?;
        if !seen.insert(key.to_owned()) {
            return Err(format!("Line {}: duplicate key `{key}`", i + 1));
        }
        let request = line.get("request").ok_or_else(|| format!("Line {}: no `request`", i + 1))?;
        lines.push((key.into(), generate::digest(request, model, &mut models).map_err(String::into_boxed_str)));
    }
    if lines.is_empty() {
        return Err("The input file holds no requests.".into());
    }
    Ok(lines)
}

/// How a batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    Succeeded,
    Cancelled,
    Expired,
}

/// The result of one request of a succeeded batch.
pub(crate) enum Fate<'a> {
    Succeeded(&'a Prompt),
    Errored(u16, &'static str, &'a str),
    /// Not in the output.
    Missing,
}

/// One batch and its mutable state.
pub(crate) struct GmBatch {
    pub core: Arc<Core>,
    pub display_name: String,
    pub model: String,
    pub kind: Kind,
    pub cancel_at: Option<f64>,
    cancel_end: f64,
    pub ended: Option<(f64, End)>,
    /// Sequence number of the responses file, once a file batch succeeded.
    pub output_file: Option<u64>,
}

impl GmBatch {
    pub(crate) fn new(core: Core, display_name: String, model: String, kind: Kind) -> GmBatch {
        GmBatch {
            core: Arc::new(core),
            display_name,
            model,
            kind,
            cancel_at: None,
            cancel_end: f64::INFINITY,
            ended: None,
            output_file: None,
        }
    }

    fn running_at(&self) -> f64 {
        self.core.created + (self.core.duration * PENDING_SHARE).min(60.0)
    }

    /// Moves the batch to its end when that has passed; true when it ended just now.
    pub(crate) fn refresh(&mut self, now: f64) -> bool {
        if self.ended.is_some() {
            return false;
        }
        let natural = self.core.created + self.core.duration;
        let expiry = self.core.created + EXPIRY;
        let end = if self.cancel_at.is_some() && self.cancel_end < natural.min(expiry) {
            (self.cancel_end, End::Cancelled)
        } else if natural <= expiry {
            (natural, End::Succeeded)
        } else {
            (expiry, End::Expired)
        };
        if now >= end.0 {
            self.ended = Some(end);
            return true;
        }
        false
    }

    /// Asks for a cancel (it lands after `cancel_secs` simulated seconds, or
    /// a tenth of a real second); false when it was asked for already.
    pub(crate) fn cancel(&mut self, now: f64, cancel_secs: Option<f64>, time_scale: f64) -> bool {
        if self.cancel_at.is_some() || self.ended.is_some() {
            return false;
        }
        self.cancel_at = Some(now);
        self.cancel_end = now + cancel_secs.unwrap_or(CANCEL_REAL_SECS * time_scale);
        true
    }

    /// The state word at `now`.
    pub(crate) fn state(&self, now: f64) -> &'static str {
        match (self.ended, self.cancel_at) {
            (Some((_, End::Succeeded)), _) => "BATCH_STATE_SUCCEEDED",
            (Some((_, End::Cancelled)), _) => "BATCH_STATE_CANCELLED",
            (Some((_, End::Expired)), _) => "BATCH_STATE_EXPIRED",
            // The API has no cancelling state: a job runs until the cancel lands.
            (None, Some(_)) => "BATCH_STATE_RUNNING",
            (None, None) if now < self.running_at() => "BATCH_STATE_PENDING",
            (None, None) => "BATCH_STATE_RUNNING",
        }
    }

    /// The fate of request `i` once the batch succeeded.
    pub(crate) fn fate(&self, i: usize, config: &SimConfig) -> Fate<'_> {
        fate(&self.core, i, config)
    }

    /// `(succeeded, failed, pending)`: all pending until the job ends, and
    /// only a succeeded job's requests count as done.
    fn counts(&self, config: &SimConfig) -> (u64, u64, u64) {
        let total = self.core.records.len() as u64;
        if self.ended.is_none_or(|(_, end)| end != End::Succeeded) {
            let finished = if self.ended.is_some() { total } else { 0 };
            return (0, 0, total - finished);
        }
        let (mut ok, mut failed) = (0, 0);
        for i in 0..self.core.records.len() {
            match self.fate(i, config) {
                Fate::Succeeded(_) => ok += 1,
                Fate::Errored(..) => failed += 1,
                Fate::Missing => {}
            }
        }
        (ok, failed, 0)
    }

    /// The operation object at `now`; `base` is where files are downloaded from.
    pub(crate) fn to_json(&self, clock: &Clock, now: f64, config: &SimConfig, file: Option<&str>) -> Value {
        let (ok, failed, pending) = self.counts(config);
        let mut metadata = json!({
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch",
            "model": format!("models/{}", self.model),
            "displayName": self.display_name,
            "state": self.state(now),
            "createTime": clock.timestamp(self.core.created),
            "updateTime": clock.timestamp(self.ended.map_or(now, |(at, _)| at)),
            "batchStats": {
                "requestCount": self.core.records.len().to_string(),
                "successfulRequestCount": ok.to_string(),
                "failedRequestCount": failed.to_string(),
                "pendingRequestCount": pending.to_string(),
            },
        });
        let mut operation = json!({ "name": self.core.id, "done": self.ended.is_some() });
        if let Some((at, _)) = self.ended {
            metadata["endTime"] = Value::from(clock.timestamp(at));
        }
        if let Some((_, End::Succeeded)) = self.ended {
            let output = match (self.kind, file) {
                (Kind::File, Some(name)) => json!({ "responsesFile": name }),
                _ => json!({ "inlinedResponses": { "inlinedResponses": self.inline_responses(config) } }),
            };
            metadata["output"] = output.clone();
            let mut response = output;
            response["@type"] =
                Value::from("type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput");
            operation["response"] = response;
        }
        operation["metadata"] = metadata;
        operation
    }

    /// The inline responses, in a shuffled but deterministic order (the API
    /// does not promise input order).
    fn inline_responses(&self, config: &SimConfig) -> Vec<Value> {
        let order = crate::sim::results::shuffled(config, &self.core);
        order.into_iter().filter_map(|i| result_value(&self.core, i as usize, config, false)).collect()
    }
}

/// The fate of request `i` of a batch that succeeded.
fn fate<'a>(core: &'a Core, i: usize, config: &SimConfig) -> Fate<'a> {
    let record = &core.records[i];
    let prompt = match &record.prompt {
        Ok(prompt) => prompt,
        Err(message) => return Fate::Errored(400, "INVALID_ARGUMENT", message),
    };
    match faults::roll_outcome(config, &record.custom_id, record.submission) {
        Outcome::Succeeded => Fate::Succeeded(prompt),
        Outcome::Errored("invalid_request_error", message) => Fate::Errored(400, "INVALID_ARGUMENT", message),
        Outcome::Errored("overloaded_error", message) => Fate::Errored(503, "UNAVAILABLE", message),
        Outcome::Errored(_, message) => Fate::Errored(500, "INTERNAL", message),
        Outcome::Expired => Fate::Missing,
    }
}

/// Request `i`'s result: a file line (`key` on top) or an inline item
/// (`metadata.key`); `None` when the output leaves it out.
fn result_value(core: &Core, i: usize, config: &SimConfig, file_line: bool) -> Option<Value> {
    let record = &core.records[i];
    let mut value = match fate(core, i, config) {
        Fate::Succeeded(prompt) => {
            let key = Key::new(config.seed, "gemini-result").str(&record.custom_id).num(u64::from(record.submission));
            let id = hash::id("", key.finish(), prompt.hash);
            json!({ "response": generate::response(&id, prompt, config.reply_bytes) })
        }
        Fate::Errored(code, status, message) => {
            json!({ "error": { "code": code, "message": message, "status": status } })
        }
        Fate::Missing => return None,
    };
    if file_line {
        value["key"] = Value::from(&*record.custom_id);
    } else {
        value["metadata"] = json!({ "key": &*record.custom_id });
    }
    Some(value)
}

/// Batch name of sequence number `seq`: `batches/` + lowercase hex.
pub(crate) fn batch_name(nonce: u64, seq: u64) -> String {
    format!("batches/{:08x}{seq:016x}", nonce as u32)
}

/// The sequence number in a batch name (or bare id) of this simulator instance.
pub(crate) fn parse_batch_name(nonce: u64, name: &str) -> Option<u64> {
    let hex = name.strip_prefix("batches/").unwrap_or(name);
    if hex.len() != 24 || !hex.starts_with(&format!("{:08x}", nonce as u32)) {
        return None;
    }
    u64::from_str_radix(&hex[8..], 16).ok()
}

/// A responses file being downloaded, detached from the state lock.
pub(crate) struct Download {
    pub config: SimConfig,
    pub core: Arc<Core>,
    /// Cut the stream in the middle of a line at this fraction of all lines.
    pub truncate_at: Option<f64>,
}

impl Download {
    fn line(&self, i: usize) -> Option<Vec<u8>> {
        let value = result_value(&self.core, i, &self.config, true)?;
        let mut line = serde_json::to_vec(&value).expect("a line serializes");
        line.push(b'\n');
        Some(line)
    }

    /// The file's size in bytes.
    pub(crate) fn len(&self) -> u64 {
        (0..self.core.records.len()).filter_map(|i| self.line(i)).map(|l| l.len() as u64).sum()
    }

    /// The streaming body, in a shuffled but deterministic order.
    pub(crate) fn into_body(self) -> Body {
        let order = crate::sim::results::shuffled(&self.config, &self.core);
        let lines: Vec<u32> = order.into_iter().filter(|&i| self.line(i as usize).is_some()).collect();
        let truncate_at = self.truncate_at;
        crate::sim::results::line_stream(self, lines, truncate_at, |download, i| {
            download.line(i).expect("only lines of this file are listed")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_and_file_inputs_are_read_by_key() {
        let request = json!({"contents": [{"parts": [{"text": "hi"}]}]});
        let inline = read_inline(&[json!({"request": request, "metadata": {"key": "a"}})], "gemini-2.5-flash").unwrap();
        assert_eq!(&*inline[0].0, "a");
        assert!(inline[0].1.is_ok());
        let twice = [
            json!({"request": request, "metadata": {"key": "a"}}),
            json!({"request": request, "metadata": {"key": "a"}}),
        ];
        assert!(read_inline(&twice, "m").unwrap_err().contains("duplicate"));
        let file = format!(
            "{}\n{}\n",
            json!({"key": "x", "request": request}),
            json!({"key": "y", "request": {"contents": []}})
        );
        let lines = read_file(file.as_bytes(), "gemini-2.5-flash").unwrap();
        assert_eq!(lines.len(), 2);
        assert!(lines[1].1.is_err(), "a refused body fails alone");
        assert!(read_file(b"\n", "m").is_err());
        assert_eq!(parse_batch_name(0xabc, &batch_name(0xabc, 7)), Some(7));
    }
}
