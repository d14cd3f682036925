//! Reading the body of `POST /v1/messages/batches` (`PROVIDERS.md` §2.2):
//! each request is digested as soon as it is parsed, so a 100,000-request
//! batch never sits in memory as JSON values.

use std::collections::HashSet;
use std::fmt;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::params::{self, Mode, Models, Prompt};

/// Most requests in one batch.
pub(crate) const MAX_REQUESTS: usize = 100_000;

/// One request of a create call: its `custom_id` and its digested params, or
/// why the params are invalid (reported later as an `errored` result).
pub(crate) struct Incoming {
    pub custom_id: Box<str>,
    pub prompt: Result<Prompt, Box<str>>,
}

/// Parses and checks a create body; the error is the message of a 400.
pub(crate) fn parse(bytes: &[u8]) -> Result<Vec<Incoming>, String> {
    let body: CreateBody = serde_json::from_slice(bytes).map_err(|err| format!("invalid request body: {err}"))?;
    let requests = body.requests.0;
    if requests.is_empty() {
        return Err("requests: List should have at least 1 item after validation, not 0".into());
    }
    let mut seen = HashSet::with_capacity(requests.len());
    for (i, request) in requests.iter().enumerate() {
        if !seen.insert(&*request.custom_id) {
            return Err(format!(
                "requests.{i}.custom_id: duplicate custom_id '{}'; custom_id must be unique within a batch",
                request.custom_id
            ));
        }
    }
    Ok(requests)
}

/// Whether `id` matches `^[a-zA-Z0-9_-]{1,64}$`.
pub(crate) fn valid_custom_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[derive(Deserialize)]
struct CreateBody {
    requests: Requests,
}

#[derive(Deserialize)]
struct RawRequest {
    custom_id: Value,
    params: Value,
}

struct Requests(Vec<Incoming>);

impl<'de> Deserialize<'de> for Requests {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_seq(RequestsVisitor)
    }
}

struct RequestsVisitor;

impl<'de> Visitor<'de> for RequestsVisitor {
    type Value = Requests;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list of {custom_id, params}")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Requests, A::Error> {
        let mut models = Models::default();
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_REQUESTS));
        while let Some(raw) = seq.next_element::<RawRequest>()? {
            let i = out.len();
            if i == MAX_REQUESTS {
                return Err(A::Error::custom(format!(
                    "requests: List should have at most {MAX_REQUESTS} items after validation"
                )));
            }
            let custom_id = match raw.custom_id {
                Value::String(id) if valid_custom_id(&id) => id.into_boxed_str(),
                other => {
                    return Err(A::Error::custom(format!(
                        "requests.{i}.custom_id: {other} does not match ^[a-zA-Z0-9_-]{{1,64}}$"
                    )));
                }
            };
            let prompt = params::digest(&raw.params, Mode::Batch, &mut models).map_err(String::into_boxed_str);
            out.push(Incoming { custom_id, prompt });
        }
        Ok(Requests(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_id_rules() {
        assert!(valid_custom_id("feed-classify-2026-01-01-1_a"));
        assert!(!valid_custom_id(""));
        assert!(!valid_custom_id("a b"));
        assert!(!valid_custom_id(&"a".repeat(65)));
        let body = br#"{"requests":[{"custom_id":"a","params":{}},{"custom_id":"a","params":{}}]}"#;
        assert!(parse(body).err().unwrap().contains("duplicate"));
        let body = br#"{"requests":[{"custom_id":"a","params":{}}]}"#;
        let parsed = parse(body).unwrap();
        assert!(parsed[0].prompt.is_err());
    }
}
