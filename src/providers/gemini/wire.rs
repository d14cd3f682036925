//! The Gemini batch operation the client reads (`PROVIDERS.md` §4, §4.1),
//! and what it means for the lanes: the batch's phase, where its results are.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::providers::{BatchPhase, BatchStatus};

/// A batch operation (`{"name": "batches/…", "metadata": {…}, "response": {…}}`);
/// a bare `GenerateContentBatch` (the same fields without the envelope) is read too.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct Operation {
    pub name: String,
    #[serde(default)]
    metadata: Option<BatchMetadata>,
    #[serde(flatten)]
    bare: BatchMetadata,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    response: Option<Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchMetadata {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    create_time: Option<DateTime<Utc>>,
    #[serde(default)]
    end_time: Option<DateTime<Utc>>,
    #[serde(default)]
    update_time: Option<DateTime<Utc>>,
    #[serde(default)]
    batch_stats: Option<BatchStats>,
    #[serde(default)]
    output: Option<Value>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BatchStats {
    /// int64 values come as strings.
    #[serde(default, deserialize_with = "int64")]
    request_count: Option<u64>,
}

fn int64<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    Ok(match Option::<Value>::deserialize(deserializer)? {
        Some(Value::String(text)) => text.parse().ok(),
        Some(Value::Number(n)) => n.as_u64(),
        _ => None,
    })
}

/// One page of `GET /v1beta/batches`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawPage {
    #[serde(default)]
    pub operations: Vec<Operation>,
    #[serde(default)]
    pub batches: Vec<Operation>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// Where an ended batch's results are: inline in the operation (fetched
/// again when read), in a responses file, or nowhere (a failed, cancelled
/// or expired job: everything in it is retried).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locator {
    /// The batch's name, `batches/…`.
    pub batch: String,
    /// `files/…` of the responses file, when the output is a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Whether the output is inline in the operation.
    #[serde(default)]
    pub inline: bool,
}

impl Locator {
    /// Reads a stored locator.
    pub fn parse(text: &str) -> Result<Locator, String> {
        serde_json::from_str(text).map_err(|err| format!("unreadable Gemini results locator `{text}`: {err}"))
    }
}

/// What a state word means, `BATCH_STATE_*` and `JOB_STATE_*` alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    Running,
    Cancelling,
    Succeeded,
    /// Failed, cancelled or expired: no results.
    EndedEmpty,
    /// A word this client does not know (a newer API): still running.
    Unknown,
}

pub(super) fn state(word: &str) -> State {
    let word = word.strip_prefix("BATCH_STATE_").or_else(|| word.strip_prefix("JOB_STATE_")).unwrap_or(word);
    match word {
        "PENDING" | "QUEUED" | "RUNNING" | "UPDATING" | "PAUSED" | "UNSPECIFIED" => State::Running,
        "CANCELLING" => State::Cancelling,
        "SUCCEEDED" | "PARTIALLY_SUCCEEDED" => State::Succeeded,
        "FAILED" | "CANCELLED" | "EXPIRED" => State::EndedEmpty,
        _ => State::Unknown,
    }
}

impl Operation {
    fn meta(&self) -> &BatchMetadata {
        self.metadata.as_ref().unwrap_or(&self.bare)
    }

    /// The raw state word (`BATCH_STATE_RUNNING`, ...).
    pub(super) fn state_word(&self) -> &str {
        self.meta().state.as_deref().unwrap_or("BATCH_STATE_UNSPECIFIED")
    }

    /// Where the output is, read from both places the API has used.
    fn output(&self) -> Option<&Value> {
        self.response.as_ref().or(self.meta().output.as_ref())
    }

    /// The batch as the lanes see it.
    pub(super) fn status(&self) -> BatchStatus {
        let state = state(self.state_word());
        if state == State::Unknown {
            log_unknown_state(self.state_word());
        }
        let phase = match state {
            State::Succeeded | State::EndedEmpty => BatchPhase::Ended,
            State::Cancelling => BatchPhase::Canceling,
            State::Running | State::Unknown => BatchPhase::InProgress,
        };
        let meta = self.meta();
        let results = (phase == BatchPhase::Ended).then(|| {
            let output = if state == State::Succeeded { self.output() } else { None };
            let file = output.and_then(|o| o.get("responsesFile")).and_then(Value::as_str).map(str::to_owned);
            let inline = output.is_some_and(|o| o.get("inlinedResponses").is_some());
            let locator = Locator { batch: self.name.clone(), file, inline };
            serde_json::to_string(&locator).expect("a locator serializes")
        });
        let ended_at = meta.end_time.or(if phase == BatchPhase::Ended { meta.update_time } else { None });
        BatchStatus {
            id: self.name.strip_prefix("batches/").unwrap_or(&self.name).to_owned(),
            phase,
            created_at: meta.create_time,
            ended_at: ended_at.filter(|_| phase == BatchPhase::Ended || self.done),
            request_count: meta.batch_stats.and_then(|s| s.request_count),
            results,
            tag: meta.display_name.clone(),
        }
    }
}

/// A state word we do not know is treated as running; it is logged once per word.
fn log_unknown_state(word: &str) {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(|p| p.into_inner());
    if !seen.iter().any(|w| w == word) {
        seen.push(word.to_owned());
        tracing::warn!(state = word, "a Gemini batch state this version does not know: treated as still running");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation(json: &str) -> BatchStatus {
        serde_json::from_str::<Operation>(json).unwrap().status()
    }

    #[test]
    fn both_spellings_of_every_state_and_unknown_ones_as_running() {
        for (word, phase) in [
            ("BATCH_STATE_PENDING", BatchPhase::InProgress),
            ("JOB_STATE_QUEUED", BatchPhase::InProgress),
            ("BATCH_STATE_RUNNING", BatchPhase::InProgress),
            ("JOB_STATE_CANCELLING", BatchPhase::Canceling),
            ("BATCH_STATE_SUCCEEDED", BatchPhase::Ended),
            ("JOB_STATE_SUCCEEDED", BatchPhase::Ended),
            ("BATCH_STATE_FAILED", BatchPhase::Ended),
            ("JOB_STATE_CANCELLED", BatchPhase::Ended),
            ("BATCH_STATE_EXPIRED", BatchPhase::Ended),
            ("BATCH_STATE_SOMETHING_NEW", BatchPhase::InProgress),
        ] {
            let json = format!(r#"{{"name":"batches/a","metadata":{{"state":"{word}"}}}}"#);
            assert_eq!(operation(&json).phase, phase, "{word}");
        }
    }

    #[test]
    fn results_are_inline_or_a_file_and_an_expired_job_has_none() {
        let inline = operation(
            r#"{"name":"batches/a","done":true,"metadata":{"state":"BATCH_STATE_SUCCEEDED","displayName":"orchestrator-batch-3",
                "batchStats":{"requestCount":"2"}},"response":{"inlinedResponses":{"inlinedResponses":[]}}}"#,
        );
        assert_eq!(
            (inline.id.as_str(), inline.request_count, inline.tag.as_deref()),
            ("a", Some(2), Some("orchestrator-batch-3"))
        );
        let locator = Locator::parse(inline.results.as_deref().unwrap()).unwrap();
        assert_eq!(locator, Locator { batch: "batches/a".into(), file: None, inline: true });
        let file = operation(
            r#"{"name":"batches/b","metadata":{"state":"JOB_STATE_SUCCEEDED","output":{"responsesFile":"files/out1"}}}"#,
        );
        let locator = Locator::parse(file.results.as_deref().unwrap()).unwrap();
        assert_eq!(locator.file.as_deref(), Some("files/out1"));
        let expired = operation(r#"{"name":"batches/c","metadata":{"state":"BATCH_STATE_EXPIRED"}}"#);
        let locator = Locator::parse(expired.results.as_deref().unwrap()).unwrap();
        assert_eq!(locator, Locator { batch: "batches/c".into(), file: None, inline: false });
    }
}
