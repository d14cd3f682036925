//! Gemini files (`PROVIDERS.md` §4.1): uploads through the resumable
//! protocol (a start request names the length and answers the session URL in
//! `x-goog-upload-url`; chunks follow with `x-goog-upload-command` and
//! `x-goog-upload-offset`, the last with `finalize`), and generated files
//! (batch responses), the only ones that can be downloaded.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::sim::state::Clock;

/// Largest file: 2 GB.
pub(crate) const MAX_FILE_BYTES: usize = 2_000 * 1000 * 1000;

/// What a file holds.
pub(crate) enum Body {
    /// Bytes a client uploaded.
    Uploaded(Arc<Vec<u8>>),
    /// The responses of the batch with this sequence number, generated when read.
    Responses(u64),
}

/// One file.
pub(crate) struct GmFile {
    pub name: String,
    pub display_name: Option<String>,
    pub mime_type: String,
    pub size: u64,
    pub created: f64,
    pub body: Body,
}

impl GmFile {
    /// The `File` object; `base` is the URL clients reach the simulator at.
    pub(crate) fn to_json(&self, clock: &Clock, base: &str) -> Value {
        let generated = matches!(self.body, Body::Responses(_));
        let mut file = json!({
            "name": self.name,
            "mimeType": self.mime_type,
            "sizeBytes": self.size.to_string(),
            "createTime": clock.timestamp(self.created),
            "updateTime": clock.timestamp(self.created),
            "expirationTime": clock.timestamp(self.created + 2.0 * crate::sim::batches::DAY),
            "uri": format!("{base}/v1beta/{}", self.name),
            "state": "ACTIVE",
            "source": if generated { "GENERATED" } else { "UPLOADED" },
        });
        if let Some(display) = &self.display_name {
            file["displayName"] = Value::from(display.as_str());
        }
        if generated {
            file["downloadUri"] = Value::from(format!("{base}/download/v1beta/{}:download?alt=media", self.name));
        }
        file
    }
}

/// An upload in progress.
pub(crate) struct Session {
    pub declared: Option<u64>,
    pub mime_type: String,
    pub display_name: Option<String>,
    pub data: Vec<u8>,
}

impl Session {
    /// A session from the start request's headers and `{"file": {...}}` body
    /// (snake_case from the SDK, camelCase from other clients).
    pub(crate) fn start(declared: Option<u64>, header_mime: Option<&str>, body: &Value) -> Session {
        let file = body.get("file").unwrap_or(body);
        let field = |camel: &str, snake: &str| {
            file.get(camel).or_else(|| file.get(snake)).and_then(Value::as_str).map(str::to_owned)
        };
        let mime_type = field("mimeType", "mime_type").or(header_mime.map(str::to_owned));
        Session {
            declared,
            mime_type: mime_type.unwrap_or_else(|| "application/octet-stream".into()),
            display_name: field("displayName", "display_name"),
            data: Vec::new(),
        }
    }

    /// Appends a chunk sent at `offset`.
    pub(crate) fn append(&mut self, offset: Option<u64>, chunk: &[u8]) -> Result<(), String> {
        if offset.is_some_and(|o| o != self.data.len() as u64) {
            return Err(format!("offset {offset:?} does not continue the upload at {}", self.data.len()));
        }
        if self.data.len() + chunk.len() > MAX_FILE_BYTES {
            return Err(format!("a file may hold at most {MAX_FILE_BYTES} bytes"));
        }
        self.data.extend_from_slice(chunk);
        Ok(())
    }

    /// Whether the bytes received match the length the start request declared.
    pub(crate) fn complete(&self) -> Result<(), String> {
        match self.declared {
            Some(n) if n != self.data.len() as u64 => {
                Err(format!("the upload declared {n} bytes and sent {}", self.data.len()))
            }
            _ => Ok(()),
        }
    }
}

/// The name of file `seq`: `files/` + lowercase hex.
pub(crate) fn file_name(nonce: u64, seq: u64) -> String {
    format!("files/{:08x}{seq:016x}", nonce as u32)
}

/// The sequence number of a file name (or bare id) of this simulator instance.
pub(crate) fn parse_file_name(nonce: u64, name: &str) -> Option<u64> {
    let hex = name.strip_prefix("files/").unwrap_or(name);
    if hex.len() != 24 || !hex.starts_with(&format!("{:08x}", nonce as u32)) {
        return None;
    }
    u64::from_str_radix(&hex[8..], 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_takes_chunks_in_order_up_to_the_declared_length() {
        let start = json!({"file": {"mime_type": "application/jsonl", "display_name": "in"}});
        let mut session = Session::start(Some(5), None, &start);
        assert_eq!((session.mime_type.as_str(), session.display_name.as_deref()), ("application/jsonl", Some("in")));
        session.append(Some(0), b"abc").unwrap();
        assert!(session.append(Some(1), b"x").is_err(), "a chunk must continue where the last ended");
        assert!(session.complete().is_err());
        session.append(Some(3), b"de").unwrap();
        session.complete().unwrap();
        assert_eq!(parse_file_name(9, &file_name(9, 3)), Some(3));
        assert_eq!(parse_file_name(9, "files/other"), None);
    }
}
