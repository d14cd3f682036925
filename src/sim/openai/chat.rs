//! Chat Completions: a request body digested into a [`Prompt`] (checked as
//! the API checks it), and the `ChatCompletion` answering it.

use serde_json::{Value, json};

use crate::sim::hash::{Key, fnv};
use crate::sim::messages::reply;
use crate::sim::params::{CachePlan, Models, Prompt, lead, tokens};

/// Output tokens when a request sets no limit.
const DEFAULT_MAX_TOKENS: u64 = 4096;
/// OpenAI caches a prompt's prefix once it is this long, in steps of 128 tokens.
const CACHE_MIN_TOKENS: u32 = 1024;
const CACHE_STEP_TOKENS: u32 = 128;
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

/// Checks a chat completion body and digests it; the error is the message of a 400.
pub(crate) fn digest(body: &Value, models: &mut Models) -> Result<Prompt, String> {
    let Some(obj) = body.as_object() else {
        return Err("The request body must be a JSON object.".into());
    };
    let model = match obj.get("model") {
        Some(Value::String(model)) if !model.is_empty() => model.as_str(),
        Some(_) => return Err("Invalid type for 'model': expected a non-empty string.".into()),
        None => return Err("Missing required parameter: 'model'.".into()),
    };
    let messages = match obj.get("messages") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => {
            return Err("Invalid 'messages': empty array. Expected an array with minimum length 1.".into());
        }
        Some(_) => return Err("Invalid type for 'messages': expected an array of objects.".into()),
        None => return Err("Missing required parameter: 'messages'.".into()),
    };
    let max_tokens = match (obj.get("max_completion_tokens"), obj.get("max_tokens")) {
        (Some(value), _) | (None, Some(value)) => match value.as_u64() {
            Some(n) if n >= 1 => n,
            _ => return Err("Invalid 'max_completion_tokens': expected an integer of at least 1.".into()),
        },
        (None, None) => DEFAULT_MAX_TOKENS,
    };
    if let Some(temperature) = obj.get("temperature")
        && !temperature.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t))
    {
        return Err("Invalid 'temperature': expected a number between 0 and 2.".into());
    }
    if obj.get("n").is_some_and(|n| n.as_u64() != Some(1)) {
        return Err("The simulator answers one choice per request: send n = 1 or leave it out.".into());
    }
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err("The simulator does not stream responses: send stream = false.".into());
    }
    let (mut chars, mut hash, mut prefix) = (0u64, Key::new(0, "chat").str(model).finish(), None);
    for (i, message) in messages.iter().enumerate() {
        if i + 1 == messages.len() {
            // Everything before the last message is the prefix OpenAI may cache.
            prefix = Some((chars, hash));
        }
        let role = message.get("role").and_then(Value::as_str);
        if !role.is_some_and(|role| ROLES.contains(&role)) {
            return Err(format!("Invalid value for 'messages[{i}].role': expected one of {}.", ROLES.join(", ")));
        }
        let text = content_text(message.get("content")).ok_or_else(|| {
            format!("Invalid type for 'messages[{i}].content': expected a string or an array of parts.")
        })?;
        chars += text.chars().count() as u64 + 12;
        hash = fnv(fnv(hash, role.unwrap_or_default().as_bytes()), text.as_bytes());
    }
    let cache = prefix.and_then(|(chars, prefix_hash)| {
        let cached = tokens(chars) / CACHE_STEP_TOKENS * CACHE_STEP_TOKENS;
        (cached >= CACHE_MIN_TOKENS).then_some(CachePlan { prefix_hash, tokens_1h: 0, tokens_5m: cached })
    });
    Ok(Prompt {
        model: models.intern(model),
        max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
        hash,
        input_tokens: tokens(chars).max(1),
        lead: lead(messages).into(),
        cache,
    })
}

/// A message's text: a string, or the text of its parts.
fn content_text(content: Option<&Value>) -> Option<String> {
    match content? {
        Value::String(text) => Some(text.clone()),
        Value::Array(parts) => Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// The `ChatCompletion` answering `prompt`: cached input counts in
/// `prompt_tokens` and again in `cached_tokens`, as the API reports it.
pub(crate) fn completion(id: &str, prompt: &Prompt, cache_hit: bool, created: i64, reply_bytes: Option<u32>) -> Value {
    let (text, stop) = reply(prompt, reply_bytes);
    let completion_tokens = tokens(text.chars().count() as u64).min(prompt.max_tokens);
    let cached = if cache_hit { prompt.cache.map_or(0, |plan| plan.tokens_5m) } else { 0 };
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": &*prompt.model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": text, "refusal": null, "annotations": [] },
            "logprobs": null,
            "finish_reason": if stop == "max_tokens" { "length" } else { "stop" },
        }],
        "usage": {
            "prompt_tokens": prompt.input_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt.input_tokens + completion_tokens,
            "prompt_tokens_details": { "cached_tokens": cached, "audio_tokens": 0 },
            "completion_tokens_details": { "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 },
        },
        "service_tier": "default",
        "system_fingerprint": "fp_simulated",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<Prompt, String> {
        digest(&serde_json::from_str(json).unwrap(), &mut Models::default())
    }

    #[test]
    fn bodies_are_checked_as_the_api_checks_them() {
        let ok = body(r#"{"model":"gpt-4o-mini","max_completion_tokens":20,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Label item 1"}]}"#).unwrap();
        assert_eq!((&*ok.model, ok.max_tokens), ("gpt-4o-mini", 20));
        assert_eq!(&*ok.lead, "Label item 1");
        assert!(ok.cache.is_none(), "a short prompt is not cached");
        assert!(body(r#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap_err().contains("'model'"));
        assert!(body(r#"{"model":"m","messages":[]}"#).unwrap_err().contains("minimum length 1"));
        assert!(body(r#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#).unwrap_err().contains("role"));
        assert!(body(r#"{"model":"m","max_completion_tokens":0,"messages":[{"role":"user","content":"x"}]}"#).is_err());
        assert!(body(r#"{"model":"m","temperature":2.5,"messages":[{"role":"user","content":"x"}]}"#).is_err());
        assert_eq!(body(r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#).unwrap().max_tokens, 4096);
    }

    #[test]
    fn a_long_shared_prefix_is_cached_in_steps_of_128_tokens() {
        let system = "word ".repeat(1200);
        let prompt = body(&format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"hi"}}]}}"#
        ))
        .unwrap();
        let plan = prompt.cache.expect("a prefix of 1,500 tokens is cached");
        assert_eq!(plan.tokens_5m % 128, 0);
        assert!(plan.tokens_5m >= 1024 && plan.tokens_5m <= prompt.input_tokens);
        let answer = completion("chatcmpl-1", &prompt, true, 1_795_000_000, Some(40));
        assert_eq!(answer["usage"]["prompt_tokens_details"]["cached_tokens"], plan.tokens_5m);
        assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    }
}
