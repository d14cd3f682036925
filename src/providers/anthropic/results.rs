//! One line of a Message Batches results file (`PROVIDERS.md` §2.4).

use serde::Deserialize;
use serde_json::Value;

use crate::outcome::{Outcome, Usage};
use crate::providers::ResultLine;

#[derive(Deserialize)]
struct RawLine {
    custom_id: String,
    result: RawResult,
}

#[derive(Deserialize)]
struct RawResult {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    error: Option<Value>,
}

/// Parses one JSONL line; tolerant of unknown fields and unknown result or
/// error types (an unknown result type is kept as a retryable error).
pub fn parse_result_line(line: &str) -> Result<ResultLine, String> {
    let raw: RawLine = serde_json::from_str(line).map_err(|err| err.to_string())?;
    let mut model = None;
    let outcome = match raw.result.kind.as_str() {
        "succeeded" => {
            let message = raw.result.message.ok_or("succeeded result without message")?;
            let answer = answer(message.get())?;
            model = answer.1;
            answer.0
        }
        "errored" => errored(raw.result.error.as_ref()),
        "canceled" => Outcome::Canceled,
        "expired" => Outcome::Expired,
        other => Outcome::Errored {
            error_type: format!("unknown_result_type:{other}"),
            message: line.chars().take(200).collect(),
        },
    };
    Ok(ResultLine { custom_id: raw.custom_id, input_line: None, outcome, model })
}

/// The outcome of a successful message, keeping the message as received.
pub(super) fn succeeded(message: &str) -> Result<Outcome, String> {
    answer(message).map(|(outcome, _)| outcome)
}

/// [`succeeded`] and the model the message names, in one parse.
fn answer(message: &str) -> Result<(Outcome, Option<String>), String> {
    #[derive(Deserialize)]
    struct Message {
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        stop_reason: Option<String>,
        #[serde(default)]
        usage: Option<RawUsage>,
    }
    let parsed: Message = serde_json::from_str(message).map_err(|err| err.to_string())?;
    let outcome = Outcome::Succeeded {
        message: message.to_owned(),
        stop_reason: parsed.stop_reason,
        usage: parsed.usage.map(RawUsage::into_usage).unwrap_or_default(),
    };
    Ok((outcome, parsed.model))
}

/// `usage` as the Messages API sends it; every field but two is optional.
#[derive(Debug, Default, Deserialize)]
pub(super) struct RawUsage {
    #[serde(default)]
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation: Option<CacheCreation>,
}

#[derive(Debug, Default, Deserialize)]
struct CacheCreation {
    #[serde(default)]
    ephemeral_5m_input_tokens: u64,
    #[serde(default)]
    ephemeral_1h_input_tokens: u64,
}

impl RawUsage {
    /// Splits cache writes by TTL; without the breakdown they count as 5-minute writes.
    pub(super) fn into_usage(self) -> Usage {
        let (write_5m, write_1h) = match self.cache_creation {
            Some(split) => (split.ephemeral_5m_input_tokens, split.ephemeral_1h_input_tokens),
            None => (self.cache_creation_input_tokens.unwrap_or(0), 0),
        };
        Usage {
            input_tokens: self.input_tokens,
            output_tokens: self.output_tokens,
            cache_write_5m_tokens: write_5m,
            cache_write_1h_tokens: write_1h,
            cache_read_tokens: self.cache_read_input_tokens.unwrap_or(0),
        }
    }
}

/// `{"type":"error","error":{"type":..,"message":..}}` inside an errored result.
fn errored(error: Option<&Value>) -> Outcome {
    let inner = error.and_then(|e| e.get("error")).or(error);
    let field = |name: &str| inner.and_then(|e| e.get(name)).and_then(Value::as_str).map(str::to_owned);
    Outcome::Errored {
        error_type: field("type").unwrap_or_else(|| "unknown_error".to_owned()),
        message: field("message").unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_result_type_of_the_wire_format() {
        let ok = r#"{"custom_id":"a","result":{"type":"succeeded","message":{"id":"msg_1","model":"claude-haiku-4-5-20251001","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":50,"output_tokens":5,"cache_creation_input_tokens":248,"cache_read_input_tokens":1800,"cache_creation":{"ephemeral_5m_input_tokens":148,"ephemeral_1h_input_tokens":100},"new_field":1}}},"extra":true}"#;
        let line = parse_result_line(ok).unwrap();
        assert_eq!(line.custom_id, "a");
        assert_eq!(line.model.as_deref(), Some("claude-haiku-4-5-20251001"), "the model it is priced as");
        let Outcome::Succeeded { usage, stop_reason, message } = line.outcome else { panic!() };
        assert_eq!(
            usage,
            Usage {
                input_tokens: 50,
                output_tokens: 5,
                cache_write_5m_tokens: 148,
                cache_write_1h_tokens: 100,
                cache_read_tokens: 1800
            }
        );
        assert_eq!(stop_reason.as_deref(), Some("end_turn"));
        assert!(message.starts_with("{\"id\":\"msg_1\""));
        let err = r#"{"custom_id":"b","result":{"type":"errored","error":{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: must be >= 1"},"request_id":"req_1"}}}"#;
        assert_eq!(
            parse_result_line(err).unwrap().outcome,
            Outcome::Errored { error_type: "invalid_request_error".into(), message: "max_tokens: must be >= 1".into() }
        );
        assert_eq!(
            parse_result_line(r#"{"custom_id":"c","result":{"type":"canceled"}}"#).unwrap().outcome,
            Outcome::Canceled
        );
        assert_eq!(
            parse_result_line(r#"{"custom_id":"d","result":{"type":"expired"}}"#).unwrap().outcome,
            Outcome::Expired
        );
        let future = parse_result_line(r#"{"custom_id":"e","result":{"type":"deferred"}}"#).unwrap();
        assert!(future.outcome.is_retryable());
        assert!(parse_result_line(r#"{"custom_id":"f","result":{"type":"succ"#).is_err());
    }
}
