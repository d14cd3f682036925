//! What came back for one request, whichever lane it went through.
//!
//! Providers produce these; the store records them. Neither knows the other.

use serde::{Deserialize, Serialize};

/// Token usage of one billed response, split the way prices are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Uncached input tokens (after the last cache breakpoint).
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Input tokens written to the cache with a 5-minute TTL.
    pub cache_write_5m_tokens: u64,
    /// Input tokens written to the cache with a 1-hour TTL.
    pub cache_write_1h_tokens: u64,
    /// Input tokens read from the cache.
    pub cache_read_tokens: u64,
}

/// The final word on one request from one attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The model answered.
    Succeeded {
        /// The provider's message object, as received (JSON text).
        message: String,
        /// Why the model stopped (`end_turn`, `max_tokens`, ...).
        stop_reason: Option<String>,
        /// Billed usage.
        usage: Usage,
    },
    /// The provider refused or failed the request.
    Errored {
        /// The provider's error type (`invalid_request_error`, `overloaded_error`, ...).
        error_type: String,
        /// The provider's message.
        message: String,
    },
    /// The batch was canceled before the request ran (not billed).
    Canceled,
    /// The batch expired before the request ran (not billed).
    Expired,
}

impl Outcome {
    /// The status word stored and shown: `succeeded`, `errored`, `canceled`, `expired`.
    pub fn status(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Errored { .. } => "errored",
            Outcome::Canceled => "canceled",
            Outcome::Expired => "expired",
        }
    }

    /// Whether trying again can help. `invalid_request_error` (the body must
    /// change) and the other client errors are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            Outcome::Succeeded { .. } => false,
            Outcome::Errored { error_type, .. } => !is_permanent_error_type(error_type),
            Outcome::Canceled | Outcome::Expired => true,
        }
    }
}

/// The text of a provider's answer: an Anthropic message's text blocks
/// concatenated, an OpenAI chat completion's first choice, or the text
/// parts of a Gemini response's first candidate.
fn message_text(message: &serde_json::Value) -> String {
    use serde_json::Value;
    if let Some(candidates) = message.get("candidates").and_then(Value::as_array) {
        let parts = candidates.first().and_then(|c| c.pointer("/content/parts")).and_then(Value::as_array);
        let texts = parts.into_iter().flatten().filter(|p| p.get("thought").and_then(Value::as_bool) != Some(true));
        return texts.filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join("");
    }
    if let Some(choices) = message.get("choices").and_then(Value::as_array) {
        let content = choices.first().and_then(|c| c.get("message")).and_then(|m| m.get("content"));
        return content.and_then(Value::as_str).unwrap_or_default().to_owned();
    }
    message
        .get("content")
        .and_then(Value::as_array)
        .map(|blocks| {
            blocks
                .iter()
                .filter(|block| block.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|block| block.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("")
        })
        .unwrap_or_default()
}

/// [`message_text`] of an answer stored as JSON text, without building the
/// whole document: only the fields that hold text are read (the rest is
/// skipped by the parser), which is most of a delivery round's work saved.
/// Answers of an unexpected shape fall back to the document.
pub fn message_text_of(json: &str) -> String {
    match serde_json::from_str::<TextFields<'_>>(json) {
        Ok(fields) => fields.text(),
        Err(_) => message_text(&serde_json::from_str(json).unwrap_or_default()),
    }
}

/// The fields of the three providers' answers that carry text.
#[derive(Deserialize)]
struct TextFields<'a> {
    #[serde(default, borrow)]
    candidates: Option<Vec<Candidate<'a>>>,
    #[serde(default, borrow)]
    choices: Option<Vec<Choice<'a>>>,
    #[serde(default, borrow)]
    content: Option<Vec<Block<'a>>>,
}

#[derive(Deserialize)]
struct Candidate<'a> {
    #[serde(default, borrow)]
    content: Option<Parts<'a>>,
}

#[derive(Deserialize)]
struct Parts<'a> {
    #[serde(default, borrow)]
    parts: Option<Vec<Part<'a>>>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    thought: Option<bool>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    message: Option<ChoiceMessage<'a>>,
}

#[derive(Deserialize)]
struct ChoiceMessage<'a> {
    #[serde(default, borrow)]
    content: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Block<'a> {
    #[serde(default, rename = "type", borrow)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, borrow)]
    text: Option<std::borrow::Cow<'a, str>>,
}

impl TextFields<'_> {
    /// As [`message_text`] reads the same fields.
    fn text(self) -> String {
        if let Some(candidates) = self.candidates {
            let parts = candidates.into_iter().next().and_then(|c| c.content).and_then(|c| c.parts).unwrap_or_default();
            return parts.into_iter().filter(|p| p.thought != Some(true)).filter_map(|p| p.text).collect();
        }
        if let Some(choices) = self.choices {
            let content = choices.into_iter().next().and_then(|c| c.message).and_then(|m| m.content);
            return content.map(std::borrow::Cow::into_owned).unwrap_or_default();
        }
        let blocks = self.content.unwrap_or_default();
        blocks.into_iter().filter(|b| b.kind.as_deref() == Some("text")).filter_map(|b| b.text).collect()
    }
}

impl Outcome {
    /// Whether this outcome uses up one of the request's attempts: only the
    /// request's own failures do (a success needs no more). A batch canceled
    /// or expired before the request ran, and the provider's backpressure
    /// (`overloaded_error`, `rate_limit_error`), say nothing about the request.
    pub fn counts_as_attempt(&self) -> bool {
        match self {
            Outcome::Succeeded { .. } => false,
            Outcome::Errored { error_type, .. } => !is_backpressure_error_type(error_type),
            Outcome::Canceled | Outcome::Expired => false,
        }
    }
}

/// Error types that mean "slow down", not "this request failed".
pub fn is_backpressure_error_type(error_type: &str) -> bool {
    matches!(error_type, "rate_limit_error" | "overloaded_error")
}

/// Error types that no retry can fix.
pub fn is_permanent_error_type(error_type: &str) -> bool {
    matches!(
        error_type,
        "invalid_request_error"
            | "authentication_error"
            | "permission_error"
            | "not_found_error"
            | "request_too_large"
            | "billing_error"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_of_stored_answers_is_read_as_the_document_reads_it() {
        let answers = [
            r#"{"id":"msg_1","content":[{"type":"text","text":"Hel"},{"type":"tool_use","id":"t","input":{"text":"no"}},{"type":"text","text":"lo \"q\" \u00e9"}],"usage":{"input_tokens":3}}"#,
            r#"{"choices":[{"index":0,"message":{"role":"assistant","content":"chat \n text"}},{"message":{"content":"second"}}]}"#,
            r#"{"choices":[{"message":{"role":"assistant","content":null,"tool_calls":[]}}]}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"thinking","thought":true},{"text":"gem"},{"text":"ini"}]}}]}"#,
            r#"{"content":"not a list"}"#,
            r#"{"usage":{}}"#,
            "not json",
        ];
        for answer in answers {
            let document: serde_json::Value = serde_json::from_str(answer).unwrap_or_default();
            assert_eq!(message_text_of(answer), message_text(&document), "{answer}");
        }
        assert_eq!(message_text_of(answers[0]), "Hello \"q\" é");
        assert_eq!(message_text_of(answers[3]), "gemini");
    }

    #[test]
    fn only_fixable_outcomes_are_retryable() {
        let errored = |t: &str| Outcome::Errored { error_type: t.into(), message: String::new() };
        assert!(!errored("invalid_request_error").is_retryable());
        assert!(errored("overloaded_error").is_retryable());
        assert!(errored("api_error").is_retryable());
        assert!(errored("some_future_error").is_retryable(), "unknown types are treated as transient");
        assert!(Outcome::Expired.is_retryable());
        assert!(Outcome::Canceled.is_retryable());
    }

    #[test]
    fn the_text_of_either_providers_answer() {
        let anthropic = serde_json::json!({"content": [{"type": "text", "text": "a"}, {"type": "tool_use"}, {"type": "text", "text": "b"}]});
        assert_eq!(message_text(&anthropic), "ab");
        let openai = serde_json::json!({"choices": [{"message": {"role": "assistant", "content": "hello"}}]});
        assert_eq!(message_text(&openai), "hello");
        assert_eq!(message_text(&serde_json::json!({"choices": []})), "");
        let gemini = serde_json::json!({"candidates": [{"content": {"parts": [{"text": "x", "thought": true}, {"text": "he"}, {"text": "y"}]}}]});
        assert_eq!(message_text(&gemini), "hey", "thoughts are not the answer");
    }

    #[test]
    fn only_the_requests_own_failures_use_up_attempts() {
        let errored = |t: &str| Outcome::Errored { error_type: t.into(), message: String::new() };
        assert!(errored("api_error").counts_as_attempt());
        assert!(errored("timeout_error").counts_as_attempt());
        assert!(errored("invalid_request_error").counts_as_attempt());
        assert!(!errored("overloaded_error").counts_as_attempt());
        assert!(!errored("rate_limit_error").counts_as_attempt());
        assert!(!Outcome::Canceled.counts_as_attempt());
        assert!(!Outcome::Expired.counts_as_attempt());
    }
}
