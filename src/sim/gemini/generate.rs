//! Reading a `GenerateContentRequest` (`contents`, `systemInstruction`,
//! `generationConfig`) into the simulator's [`Prompt`], and the
//! `GenerateContentResponse` answering it.

use serde_json::{Value, json};

use crate::sim::hash::{Key, fnv};
use crate::sim::messages::reply;
use crate::sim::params::{Models, Prompt, tokens};

/// The output limit when `generationConfig.maxOutputTokens` is not given.
const DEFAULT_MAX_TOKENS: u64 = 8192;
const ROLES: [&str; 2] = ["user", "model"];

/// Checks `body` as the API does for `model` and keeps what the answer needs.
pub(crate) fn digest(body: &Value, model: &str, models: &mut Models) -> Result<Prompt, String> {
    let Some(obj) = body.as_object() else {
        return Err("Invalid JSON payload received: the request must be a JSON object.".into());
    };
    let contents = match obj.get("contents") {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) | None => {
            return Err("* GenerateContentRequest.contents: contents is not specified".into());
        }
        Some(_) => return Err("Invalid JSON payload received. 'contents' must be a list.".into()),
    };
    let config = obj.get("generationConfig").or_else(|| obj.get("generation_config"));
    let max_tokens = match config.and_then(|c| c.get("maxOutputTokens").or_else(|| c.get("max_output_tokens"))) {
        Some(value) => match value.as_u64() {
            Some(n) if n >= 1 => n,
            _ => return Err("* GenerateContentRequest.generation_config.max_output_tokens: must be positive".into()),
        },
        None => DEFAULT_MAX_TOKENS,
    };
    if let Some(temperature) = config.and_then(|c| c.get("temperature"))
        && !temperature.as_f64().is_some_and(|t| (0.0..=2.0).contains(&t))
    {
        return Err("* GenerateContentRequest.generation_config.temperature: must be in [0.0, 2.0]".into());
    }
    let (mut chars, mut hash) = (0u64, Key::new(0, "gemini").str(model).finish());
    if let Some(system) = obj.get("systemInstruction").or_else(|| obj.get("system_instruction")) {
        let text = parts_text(system).ok_or("Invalid JSON payload received. 'systemInstruction' needs parts.")?;
        chars += text.chars().count() as u64;
        hash = fnv(hash, text.as_bytes());
    }
    let mut lead = String::new();
    for (i, content) in contents.iter().enumerate() {
        let role = content.get("role").and_then(Value::as_str).unwrap_or("user");
        if !ROLES.contains(&role) {
            return Err(format!("* GenerateContentRequest.contents[{i}].role: must be `user` or `model`"));
        }
        let text = parts_text(content)
            .ok_or_else(|| format!("* GenerateContentRequest.contents[{i}].parts: contents.parts must not be empty"))?;
        chars += text.chars().count() as u64 + 4;
        hash = fnv(fnv(hash, role.as_bytes()), text.as_bytes());
        if role == "user" {
            lead = text.split_whitespace().take(8).collect::<Vec<_>>().join(" ");
        }
    }
    Ok(Prompt {
        model: models.intern(model),
        max_tokens: u32::try_from(max_tokens).unwrap_or(u32::MAX),
        hash,
        input_tokens: tokens(chars).max(1),
        lead: lead.into(),
        cache: None,
    })
}

/// The text of a `Content`'s parts; `None` when it has no parts.
fn parts_text(content: &Value) -> Option<String> {
    let parts = content.get("parts")?.as_array().filter(|p| !p.is_empty())?;
    Some(parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect::<Vec<_>>().join(""))
}

/// The `GenerateContentResponse` answering `prompt`.
pub(crate) fn response(id: &str, prompt: &Prompt, reply_bytes: Option<u32>) -> Value {
    let (text, stop) = reply(prompt, reply_bytes);
    let output = tokens(text.chars().count() as u64).min(prompt.max_tokens);
    json!({
        "candidates": [{
            "content": { "parts": [{ "text": text }], "role": "model" },
            "finishReason": if stop == "max_tokens" { "MAX_TOKENS" } else { "STOP" },
            "index": 0,
        }],
        "usageMetadata": {
            "promptTokenCount": prompt.input_tokens,
            "candidatesTokenCount": output,
            "totalTokenCount": prompt.input_tokens + output,
            "promptTokensDetails": [{ "modality": "TEXT", "tokenCount": prompt.input_tokens }],
        },
        "modelVersion": &*prompt.model,
        "responseId": id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> Result<Prompt, String> {
        digest(&serde_json::from_str(json).unwrap(), "gemini-2.5-flash", &mut Models::default())
    }

    #[test]
    fn requests_are_checked_as_the_api_checks_them() {
        let ok = body(
            r#"{"contents":[{"role":"user","parts":[{"text":"Label item 1"}]}],"systemInstruction":{"parts":[{"text":"Be brief."}]},
                "generationConfig":{"maxOutputTokens":20,"temperature":0.5}}"#,
        )
        .unwrap();
        assert_eq!((&*ok.model, ok.max_tokens, &*ok.lead), ("gemini-2.5-flash", 20, "Label item 1"));
        assert!(body(r#"{"contents":[]}"#).unwrap_err().contains("contents"));
        assert!(body(r#"{"contents":[{"role":"robot","parts":[{"text":"x"}]}]}"#).unwrap_err().contains("role"));
        assert!(body(r#"{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"temperature":3}}"#).is_err());
        assert!(body(r#"{"contents":[{"parts":[{"text":"x"}]}],"generationConfig":{"maxOutputTokens":0}}"#).is_err());
        let answer = response("r1", &ok, Some(40));
        assert_eq!(answer["candidates"][0]["finishReason"], "STOP");
        assert_eq!(answer["usageMetadata"]["promptTokenCount"], ok.input_tokens);
    }
}
