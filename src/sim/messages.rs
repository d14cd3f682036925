//! Deterministic answers: a `Message` object (`PROVIDERS.md` §1.4) derived
//! from the prompt's hash and first words.

use serde::Serialize;

use super::hash::mix;
use super::params::{Prompt, tokens};

const WORDS: [&str; 48] = [
    "the",
    "item",
    "describes",
    "a",
    "clear",
    "topic",
    "with",
    "several",
    "points",
    "about",
    "cost",
    "latency",
    "batch",
    "work",
    "and",
    "its",
    "deadline",
    "overall",
    "signal",
    "is",
    "positive",
    "neutral",
    "mixed",
    "key",
    "detail",
    "suggests",
    "further",
    "review",
    "of",
    "scope",
    "risk",
    "value",
    "for",
    "readers",
    "team",
    "model",
    "infrastructure",
    "security",
    "policy",
    "research",
    "summary",
    "notes",
    "one",
    "main",
    "reason",
    "because",
    "it",
    "matters",
];

/// Token usage of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    /// Input tokens after the last cache breakpoint.
    pub input_tokens: u32,
    pub cache_creation_5m: u32,
    pub cache_creation_1h: u32,
    pub cache_read: u32,
}

impl Usage {
    /// Usage of `prompt`'s input, given whether its cached prefix was a hit.
    pub(crate) fn of(prompt: &Prompt, cache_hit: bool) -> Usage {
        let Some(plan) = prompt.cache else {
            return Usage {
                input_tokens: prompt.input_tokens,
                cache_creation_5m: 0,
                cache_creation_1h: 0,
                cache_read: 0,
            };
        };
        let prefix = plan.tokens_1h + plan.tokens_5m;
        let input_tokens = prompt.input_tokens.saturating_sub(prefix);
        if cache_hit {
            Usage { input_tokens, cache_creation_5m: 0, cache_creation_1h: 0, cache_read: prefix }
        } else {
            Usage { input_tokens, cache_creation_5m: plan.tokens_5m, cache_creation_1h: plan.tokens_1h, cache_read: 0 }
        }
    }
}

/// The answer text and stop reason for `prompt`: about `fixed_bytes` long
/// if given, else a length from the hash (mostly 12–150 tokens, one in
/// sixteen 200–800); cut at `max_tokens`.
pub(crate) fn reply(prompt: &Prompt, fixed_bytes: Option<u32>) -> (String, &'static str) {
    let mut h = mix(prompt.hash);
    let hashed = if h.is_multiple_of(16) { 200 + (h >> 8) % 600 } else { 12 + (h >> 8) % 140 };
    // The words are ASCII, so bytes and characters agree (four per token).
    let target = fixed_bytes.map_or(hashed * 4, |bytes| u64::from(bytes).saturating_sub(1));
    let limit = u64::from(prompt.max_tokens) * 4;
    let mut text = if prompt.lead.is_empty() {
        "Simulated reply:".to_owned()
    } else {
        format!("Simulated reply to \"{}\":", prompt.lead)
    };
    // Stop early once past the limit: the text is cut there anyway.
    while (text.len() as u64) < target.min(limit + 4) {
        h = mix(h);
        text.push(' ');
        text.push_str(WORDS[(h % WORDS.len() as u64) as usize]);
    }
    text.push('.');
    if tokens(text.chars().count() as u64) > prompt.max_tokens {
        if let Some((cut, _)) = text.char_indices().nth(limit as usize) {
            text.truncate(cut);
        }
        return (text, "max_tokens");
    }
    (text, "end_turn")
}

/// A `Message` object, serialized field by field in the API's order.
#[derive(Debug, Serialize)]
pub(crate) struct Message<'a> {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    role: &'static str,
    model: &'a str,
    content: Vec<TextBlock>,
    stop_reason: &'static str,
    stop_sequence: Option<&'static str>,
    stop_details: Option<&'static str>,
    container: Option<&'static str>,
    usage: UsageBody<'a>,
}

#[derive(Debug, Serialize)]
struct TextBlock {
    #[serde(rename = "type")]
    kind: &'static str,
    text: String,
}

#[derive(Debug, Serialize)]
struct UsageBody<'a> {
    input_tokens: u32,
    output_tokens: u32,
    cache_creation_input_tokens: u32,
    cache_read_input_tokens: u32,
    cache_creation: CacheCreation,
    server_tool_use: ServerToolUse,
    service_tier: &'a str,
    inference_geo: &'static str,
    output_tokens_details: OutputDetails,
}

#[derive(Debug, Serialize)]
struct CacheCreation {
    ephemeral_5m_input_tokens: u32,
    ephemeral_1h_input_tokens: u32,
}

#[derive(Debug, Serialize)]
struct ServerToolUse {
    web_search_requests: u32,
    web_fetch_requests: u32,
}

#[derive(Debug, Serialize)]
struct OutputDetails {
    thinking_tokens: u32,
}

/// The full `Message` object answering `prompt`; `service_tier` is
/// `"standard"` or `"batch"`; `reply_bytes` as in [`reply`].
pub(crate) fn message<'a>(
    id: String,
    prompt: &'a Prompt,
    cache_hit: bool,
    service_tier: &'a str,
    reply_bytes: Option<u32>,
) -> Message<'a> {
    let usage = Usage::of(prompt, cache_hit);
    let (text, stop_reason) = reply(prompt, reply_bytes);
    let output_tokens = tokens(text.chars().count() as u64).min(prompt.max_tokens);
    let content = if text.is_empty() { Vec::new() } else { vec![TextBlock { kind: "text", text }] };
    Message {
        id,
        kind: "message",
        role: "assistant",
        model: &prompt.model,
        content,
        stop_reason,
        stop_sequence: None,
        stop_details: None,
        container: None,
        usage: UsageBody {
            input_tokens: usage.input_tokens,
            output_tokens,
            cache_creation_input_tokens: usage.cache_creation_5m + usage.cache_creation_1h,
            cache_read_input_tokens: usage.cache_read,
            cache_creation: CacheCreation {
                ephemeral_5m_input_tokens: usage.cache_creation_5m,
                ephemeral_1h_input_tokens: usage.cache_creation_1h,
            },
            server_tool_use: ServerToolUse { web_search_requests: 0, web_fetch_requests: 0 },
            service_tier,
            inference_geo: "global",
            output_tokens_details: OutputDetails { thinking_tokens: 0 },
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn prompt(hash: u64, max_tokens: u32) -> Prompt {
        Prompt { model: Arc::from("m"), max_tokens, hash, input_tokens: 10, lead: "Hello world".into(), cache: None }
    }

    #[test]
    fn small_max_tokens_cut_some_answers() {
        let cut = (0..200).filter(|h| reply(&prompt(*h, 40), None).1 == "max_tokens").count();
        assert!(cut > 20 && cut < 190, "{cut}");
        for h in 0..50 {
            let p = prompt(h, 40);
            let msg = serde_json::to_value(message("msg_x".into(), &p, false, "batch", None)).unwrap();
            assert!(msg["usage"]["output_tokens"].as_u64().unwrap() <= 40);
        }
        let (text, stop) = reply(&prompt(1, 0), None);
        assert_eq!((text.as_str(), stop), ("", "max_tokens"));
    }

    #[test]
    fn a_fixed_reply_length_is_kept_within_a_word() {
        for h in 0..50 {
            let (text, stop) = reply(&prompt(h, 4096), Some(900));
            assert!((900..=916).contains(&text.len()), "{}", text.len());
            assert_eq!(stop, "end_turn");
        }
        assert_eq!(reply(&prompt(1, 40), Some(900)).1, "max_tokens", "max_tokens still cuts");
    }
}
