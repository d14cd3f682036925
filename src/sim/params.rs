//! Reading a `MessageCreateParams` body (`PROVIDERS.md` §1.2, §1.3) into the
//! little the simulator keeps of it: model, `max_tokens`, a hash and size of
//! the prompt, its first words and the cache breakpoints.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use super::hash::{Key, fnv};

/// Where the params come from: batches reject more than the Messages API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// `POST /v1/messages`.
    Sync,
    /// One request of `POST /v1/messages/batches`.
    Batch,
}

/// What the simulator keeps of one request: enough to generate its answer.
#[derive(Debug, Clone)]
pub(crate) struct Prompt {
    pub model: Arc<str>,
    pub max_tokens: u32,
    /// Hash of model and whole prompt: the answer text derives from it.
    pub hash: u64,
    /// All input tokens (≈ characters / 4), cached prefix included.
    pub input_tokens: u32,
    /// The first words of the last user turn.
    pub lead: Box<str>,
    pub cache: Option<CachePlan>,
}

/// The cached prefix of a prompt: up to its last `cache_control` breakpoint.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CachePlan {
    /// Hash of model and prefix: the key of the simulated cache.
    pub prefix_hash: u64,
    /// Prefix tokens up to the last breakpoint with `ttl: "1h"`.
    pub tokens_1h: u32,
    /// The rest of the prefix (breakpoints with `ttl: "5m"`).
    pub tokens_5m: u32,
}

impl CachePlan {
    /// Longest TTL of the prefix, in seconds.
    pub(crate) fn ttl_secs(&self) -> f64 {
        if self.tokens_1h > 0 { 3600.0 } else { 300.0 }
    }
}

/// Shares one `Arc<str>` per model name across the requests of a batch.
#[derive(Debug, Default)]
pub(crate) struct Models(HashMap<String, Arc<str>>);

impl Models {
    pub(crate) fn intern(&mut self, name: &str) -> Arc<str> {
        if let Some(found) = self.0.get(name) {
            return found.clone();
        }
        let shared: Arc<str> = Arc::from(name);
        self.0.insert(name.to_owned(), shared.clone());
        shared
    }
}

/// Keys that may not appear in a batch request's params (`PROVIDERS.md` §2.2).
const NOT_IN_BATCH: [&str; 6] =
    ["speed", "store", "previous_thread_event_id", "cache_hint", "context_hint", "research_preview_2026_02"];

const LEAD_WORDS: usize = 8;
const LEAD_CHARS: usize = 60;

/// Checks `params` and digests it; the error is the message of an `invalid_request_error`.
pub(crate) fn digest(params: &Value, mode: Mode, models: &mut Models) -> Result<Prompt, String> {
    let Some(obj) = params.as_object() else {
        return Err("params: Input should be a valid dictionary".into());
    };
    let model = match obj.get("model") {
        None => return Err("model: Field required".into()),
        Some(Value::String(s)) if !s.is_empty() => s.as_str(),
        Some(_) => return Err("model: Input should be a non-empty string".into()),
    };
    let max_tokens = match obj.get("max_tokens") {
        None => return Err("max_tokens: Field required".into()),
        Some(value) => value.as_u64().ok_or("max_tokens: Input should be a valid non-negative integer")?,
    };
    if mode == Mode::Batch && max_tokens < 1 {
        return Err("max_tokens: must be at least 1 in a batch request".into());
    }
    let messages = match obj.get("messages") {
        None => return Err("messages: Field required".into()),
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => return Err("messages: at least one message is required".into()),
        Some(_) => return Err("messages: Input should be a valid list".into()),
    };
    if let Some(temperature) = obj.get("temperature") {
        match temperature.as_f64() {
            Some(t) if (0.0..=1.0).contains(&t) => {}
            Some(_) => return Err("temperature: Input should be less than or equal to 1 and at least 0".into()),
            None => return Err("temperature: Input should be a valid number".into()),
        }
    }
    if obj.get("stream").and_then(Value::as_bool) == Some(true) {
        return Err(match mode {
            Mode::Batch => "stream: streaming is not supported in the Message Batches API".into(),
            Mode::Sync => "stream: the simulator does not stream responses; send stream: false".into(),
        });
    }
    if mode == Mode::Batch
        && let Some(key) = NOT_IN_BATCH.iter().find(|key| obj.contains_key(**key))
    {
        return Err(format!("{key}: not supported in the Message Batches API"));
    }

    let mut walk = Walk { chars: 0, hash: Key::new(0, "prompt").str(model).finish(), breakpoints: Vec::new() };
    walk_tools(obj, &mut walk)?;
    walk_system(obj, &mut walk)?;
    for (i, message) in messages.iter().enumerate() {
        walk_message(i, message, &mut walk)?;
    }
    if let Some(cc) = obj.get("cache_control") {
        walk.breakpoint("cache_control", cc)?;
    }
    let cache = walk.plan()?;
    Ok(Prompt {
        model: models.intern(model),
        max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
        hash: walk.hash,
        input_tokens: tokens(walk.chars).max(1),
        lead: lead(messages).into(),
        cache,
    })
}

/// Tokens of `chars` characters (about four characters a token, rounded up).
pub(crate) fn tokens(chars: u64) -> u32 {
    u32::try_from(chars.div_ceil(4)).unwrap_or(u32::MAX)
}

struct Walk {
    chars: u64,
    hash: u64,
    /// `(chars so far, hash so far, is 1h)` at each breakpoint.
    breakpoints: Vec<(u64, u64, bool)>,
}

impl Walk {
    fn add(&mut self, text: &str) {
        self.chars += text.chars().count() as u64;
        self.hash = fnv(fnv(self.hash, &(text.len() as u64).to_le_bytes()), text.as_bytes());
    }

    fn add_json(&mut self, value: &Value) {
        self.add(&value.to_string());
    }

    fn breakpoint(&mut self, path: &str, cc: &Value) -> Result<(), String> {
        let Some(cc) = cc.as_object() else {
            return Err(format!("{path}: Input should be a valid dictionary"));
        };
        if cc.get("type").and_then(Value::as_str) != Some("ephemeral") {
            return Err(format!("{path}.type: Input should be 'ephemeral'"));
        }
        let one_hour = match cc.get("ttl") {
            None | Some(Value::Null) => false,
            Some(Value::String(ttl)) if ttl == "5m" => false,
            Some(Value::String(ttl)) if ttl == "1h" => true,
            Some(_) => return Err(format!("{path}.ttl: Input should be '5m' or '1h'")),
        };
        self.breakpoints.push((self.chars, self.hash, one_hour));
        Ok(())
    }

    fn block(&mut self, path: &str, block: &Value) -> Result<(), String> {
        match block.get("text").and_then(Value::as_str) {
            Some(text) if block.get("type").and_then(Value::as_str) == Some("text") => self.add(text),
            _ => self.add_json(block),
        }
        if let Some(cc) = block.get("cache_control") {
            self.breakpoint(&format!("{path}.cache_control"), cc)?;
        }
        Ok(())
    }

    fn plan(&self) -> Result<Option<CachePlan>, String> {
        let Some(&(chars, prefix_hash, _)) = self.breakpoints.last() else {
            return Ok(None);
        };
        if self.breakpoints.len() > 4 {
            return Err(format!(
                "A maximum of 4 blocks with cache_control may be provided. Found {}.",
                self.breakpoints.len()
            ));
        }
        let mut seen_5m = false;
        let mut chars_1h = 0;
        for &(at, _, one_hour) in &self.breakpoints {
            if one_hour && seen_5m {
                return Err("cache_control: a ttl='1h' cache_control block must come before any ttl='5m' block".into());
            }
            seen_5m |= !one_hour;
            if one_hour {
                chars_1h = at;
            }
        }
        let tokens_1h = tokens(chars_1h);
        Ok(Some(CachePlan { prefix_hash, tokens_1h, tokens_5m: tokens(chars) - tokens_1h }))
    }
}

fn walk_tools(obj: &Map<String, Value>, walk: &mut Walk) -> Result<(), String> {
    match obj.get("tools") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(tools)) => {
            for (i, tool) in tools.iter().enumerate() {
                walk.block(&format!("tools.{i}"), tool)?;
            }
            Ok(())
        }
        Some(_) => Err("tools: Input should be a valid list".into()),
    }
}

fn walk_system(obj: &Map<String, Value>, walk: &mut Walk) -> Result<(), String> {
    match obj.get("system") {
        None | Some(Value::Null) => Ok(()),
        Some(Value::String(text)) => {
            walk.add(text);
            Ok(())
        }
        Some(Value::Array(blocks)) => {
            for (i, block) in blocks.iter().enumerate() {
                walk.block(&format!("system.{i}"), block)?;
            }
            Ok(())
        }
        Some(_) => Err("system: Input should be a valid string or list of text blocks".into()),
    }
}

fn walk_message(i: usize, message: &Value, walk: &mut Walk) -> Result<(), String> {
    let role = message.get("role").and_then(Value::as_str);
    if !matches!(role, Some("user" | "assistant" | "system")) {
        return Err(format!("messages.{i}.role: Input should be 'user', 'assistant' or 'system'"));
    }
    walk.add(role.unwrap_or_default());
    match message.get("content") {
        Some(Value::String(text)) => {
            walk.add(text);
            Ok(())
        }
        Some(Value::Array(blocks)) => {
            for (j, block) in blocks.iter().enumerate() {
                walk.block(&format!("messages.{i}.content.{j}"), block)?;
            }
            Ok(())
        }
        None => Err(format!("messages.{i}.content: Field required")),
        Some(_) => Err(format!("messages.{i}.content: Input should be a valid string or list")),
    }
}

/// The first words of the last user turn, at most [`LEAD_CHARS`] characters.
pub(crate) fn lead(messages: &[Value]) -> String {
    let text = messages
        .iter()
        .rev()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .find_map(|m| match m.get("content") {
            Some(Value::String(text)) => Some(text.as_str()),
            Some(Value::Array(blocks)) => blocks.iter().find_map(|b| b.get("text").and_then(Value::as_str)),
            _ => None,
        })
        .unwrap_or_default();
    let mut out = String::new();
    for word in text.split_whitespace().take(LEAD_WORDS) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    match out.char_indices().nth(LEAD_CHARS) {
        Some((cut, _)) => out[..cut].to_owned(),
        None => out,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn run(params: Value, mode: Mode) -> Result<Prompt, String> {
        digest(&params, mode, &mut Models::default())
    }

    #[test]
    fn rejects_bad_params() {
        let ok = json!({"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
        let digested = run(ok.clone(), Mode::Batch).unwrap();
        assert_eq!((&*digested.model, digested.max_tokens, digested.input_tokens), ("m", 5, 2), "\"hi\" and its turn");
        let mut zero = ok.clone();
        zero["max_tokens"] = json!(0);
        assert!(run(zero.clone(), Mode::Batch).unwrap_err().contains("max_tokens"));
        assert_eq!(run(zero, Mode::Sync).unwrap().max_tokens, 0, "a cache pre-warm outside a batch");
        let mut hot = ok.clone();
        hot["temperature"] = json!(1.5);
        assert!(run(hot.clone(), Mode::Sync).unwrap_err().starts_with("temperature"));
        hot["temperature"] = json!(0.7);
        assert_eq!(run(hot, Mode::Sync).unwrap().max_tokens, 5);
        let mut stream = ok.clone();
        stream["stream"] = json!(true);
        assert!(run(stream, Mode::Batch).unwrap_err().starts_with("stream"));
        assert!(run(json!({"max_tokens": 1, "messages": []}), Mode::Sync).unwrap_err().starts_with("model"));
    }

    #[test]
    fn cache_plan_splits_ttls() {
        let system = "s".repeat(400);
        let params = json!({
            "model": "m", "max_tokens": 5,
            "system": [
                {"type": "text", "text": system, "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                {"type": "text", "text": "t".repeat(40), "cache_control": {"type": "ephemeral"}}
            ],
            "messages": [{"role": "user", "content": "The quick brown fox jumps"}]
        });
        let prompt = run(params, Mode::Batch).unwrap();
        let plan = prompt.cache.unwrap();
        assert_eq!(plan.tokens_1h, 100);
        assert_eq!(plan.tokens_5m, 10);
        assert_eq!(&*prompt.lead, "The quick brown fox jumps");
        assert!(prompt.input_tokens > 110);
    }
}
