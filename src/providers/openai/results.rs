//! A chat completion as an outcome, and one line of a batch's output or
//! error file (`BatchRequestOutput`, `PROVIDERS.md` §3.5).

use serde::Deserialize;
use serde_json::Value;

use super::wire::normalised_error_type;
use crate::outcome::{Outcome, Usage};
use crate::providers::ResultLine;

/// The outcome of a chat completion, keeping the completion as received.
/// `prompt_tokens` includes the cached ones: those are priced at the cache
/// read rate, the rest as input; `completion_tokens` includes reasoning
/// tokens, all billed as output.
pub fn succeeded(completion: &str) -> Result<Outcome, String> {
    answer(completion).map(|(outcome, _)| outcome)
}

/// [`succeeded`] and the model the completion names, in one parse.
fn answer(completion: &str) -> Result<(Outcome, Option<String>), String> {
    #[derive(Deserialize)]
    struct Completion {
        #[serde(default)]
        model: Option<String>,
        #[serde(default)]
        choices: Vec<Choice>,
        #[serde(default)]
        usage: Option<RawUsage>,
    }
    #[derive(Deserialize)]
    struct Choice {
        #[serde(default)]
        finish_reason: Option<String>,
    }
    let parsed: Completion = serde_json::from_str(completion).map_err(|err| err.to_string())?;
    let outcome = Outcome::Succeeded {
        message: completion.to_owned(),
        stop_reason: parsed.choices.first().and_then(|c| c.finish_reason.clone()),
        usage: parsed.usage.map(RawUsage::into_usage).unwrap_or_default(),
    };
    Ok((outcome, parsed.model))
}

#[derive(Debug, Default, Deserialize)]
struct RawUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Default, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: u64,
}

impl RawUsage {
    fn into_usage(self) -> Usage {
        let cached = self.prompt_tokens_details.map_or(0, |d| d.cached_tokens).min(self.prompt_tokens);
        Usage {
            input_tokens: self.prompt_tokens - cached,
            output_tokens: self.completion_tokens,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            cache_read_tokens: cached,
        }
    }
}

#[derive(Deserialize)]
struct RawLine {
    custom_id: String,
    #[serde(default)]
    response: Option<RawResponse>,
    #[serde(default)]
    error: Option<RawError>,
}

#[derive(Deserialize)]
struct RawResponse {
    status_code: u16,
    #[serde(default)]
    body: Option<Box<serde_json::value::RawValue>>,
}

#[derive(Deserialize)]
struct RawError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// Parses one line of an output or error file. A `response` with status
/// 200 is a success; any other status is an error whatever its body says
/// (400 permanent; 429 and 5xx retryable); `error.code: batch_expired` is
/// an expiry (retried).
pub fn parse_result_line(line: &str) -> Result<ResultLine, String> {
    let raw: RawLine = serde_json::from_str(line).map_err(|err| err.to_string())?;
    let mut model = None;
    let outcome = match (raw.response, raw.error) {
        (_, Some(error)) if error.code.as_deref() == Some("batch_expired") => Outcome::Expired,
        (_, Some(error)) => Outcome::Errored {
            error_type: "api_error".to_owned(),
            message: format!(
                "{}: {}",
                error.code.as_deref().unwrap_or("error"),
                error.message.as_deref().unwrap_or_default()
            ),
        },
        (Some(response), None) if response.status_code == 200 => {
            let body = response.body.ok_or("a 200 response without a body")?;
            let answer = answer(body.get())?;
            model = answer.1;
            answer.0
        }
        (Some(response), None) => {
            let body: Option<Value> = response.body.and_then(|b| serde_json::from_str(b.get()).ok());
            let field = |name: &str| {
                body.as_ref().and_then(|b| b.get("error")).and_then(|e| e.get(name)).and_then(Value::as_str)
            };
            Outcome::Errored {
                error_type: normalised_error_type(response.status_code, field("code")).to_owned(),
                message: format!("{} {}", response.status_code, field("message").unwrap_or("(no message)")),
            }
        }
        (None, None) => return Err("a line with neither response nor error".to_owned()),
    };
    Ok(ResultLine { custom_id: raw.custom_id, input_line: None, outcome, model })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_completion_keeps_its_body_and_splits_cached_input() {
        let body = r#"{"id":"chatcmpl-1","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"length"}],
            "usage":{"prompt_tokens":1200,"completion_tokens":90,"total_tokens":1290,"prompt_tokens_details":{"cached_tokens":1024},
                     "completion_tokens_details":{"reasoning_tokens":40}}}"#;
        let Outcome::Succeeded { message, stop_reason, usage } = succeeded(body).unwrap() else { panic!() };
        assert_eq!(message, body);
        assert_eq!(stop_reason.as_deref(), Some("length"));
        assert_eq!(usage, Usage { input_tokens: 176, output_tokens: 90, cache_read_tokens: 1024, ..Usage::default() });
    }

    #[test]
    fn lines_of_both_files_become_outcomes() {
        let ok = r#"{"id":"batch_req_1","custom_id":"a","response":{"status_code":200,"request_id":"req_1","body":{"model":"gpt-4o-mini-2024-07-18","choices":[{"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":2}}},"error":null}"#;
        let line = parse_result_line(ok).unwrap();
        assert_eq!(line.custom_id, "a");
        assert_eq!(line.model.as_deref(), Some("gpt-4o-mini-2024-07-18"), "the model it is priced as");
        assert!(matches!(line.outcome, Outcome::Succeeded { .. }));
        let refused = r#"{"id":"batch_req_2","custom_id":"b","response":{"status_code":400,"request_id":"req_2","body":{"error":{"message":"bad max_completion_tokens","type":"invalid_request_error","code":null}}},"error":null}"#;
        let refused = parse_result_line(refused).unwrap().outcome;
        assert!(!refused.is_retryable(), "{refused:?}");
        let limited = r#"{"custom_id":"c","response":{"status_code":429,"body":{"error":{"message":"slow down","code":"rate_limit_exceeded"}}},"error":null}"#;
        let limited = parse_result_line(limited).unwrap().outcome;
        assert!(limited.is_retryable() && !limited.counts_as_attempt(), "{limited:?}");
        let failed =
            r#"{"custom_id":"d","response":{"status_code":500,"body":{"error":{"message":"oops"}}},"error":null}"#;
        assert!(parse_result_line(failed).unwrap().outcome.is_retryable());
        let expired = r#"{"id":"batch_req_5","custom_id":"e","response":null,"error":{"code":"batch_expired","message":"This request could not be executed before the completion window expired."}}"#;
        assert_eq!(parse_result_line(expired).unwrap().outcome, Outcome::Expired);
        assert!(parse_result_line(r#"{"custom_id":"f"}"#).is_err());
        assert!(parse_result_line(r#"{"custom_id":"g","response":{"status_"#).is_err());
    }
}
