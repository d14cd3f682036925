//! Files (`PROVIDERS.md` §3.2): uploads of batch input (multipart), and the
//! output and error files of ended batches, generated when downloaded.

use std::sync::Arc;

use serde_json::{Value, json};

/// Largest batch input file.
pub(crate) const MAX_INPUT_BYTES: usize = 200 * 1024 * 1024;
/// Files with `purpose=batch` expire after this many seconds (30 days).
const EXPIRES_AFTER_SECS: i64 = 30 * 86_400;

/// What a file holds.
pub(crate) enum Body {
    /// Uploaded bytes.
    Uploaded(Arc<Vec<u8>>),
    /// The successful lines of the batch with this sequence number.
    Output(u64),
    /// The failed lines of the batch with this sequence number.
    Errors(u64),
}

/// One file.
pub(crate) struct SimFile {
    pub id: String,
    pub filename: String,
    pub purpose: String,
    pub bytes: u64,
    /// Unix seconds (simulated).
    pub created_at: i64,
    pub body: Body,
}

impl SimFile {
    /// The `FileObject`.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "expires_at": self.created_at + EXPIRES_AFTER_SECS,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
        })
    }
}

/// File id of sequence number `seq`: `file-` + 8 hex digits of the start nonce + 16 of `seq`.
pub(crate) fn file_id(nonce: u64, seq: u64) -> String {
    format!("file-{:08x}{seq:016x}", nonce as u32)
}

/// The sequence number in a file id of this simulator instance.
pub(crate) fn parse_file_id(nonce: u64, id: &str) -> Option<u64> {
    let hex = id.strip_prefix("file-")?;
    if hex.len() != 24 || !hex.starts_with(&format!("{:08x}", nonce as u32)) {
        return None;
    }
    u64::from_str_radix(&hex[8..], 16).ok()
}

/// The fields of an upload.
#[derive(Debug)]
pub(crate) struct Upload {
    pub purpose: String,
    pub filename: String,
    pub data: Vec<u8>,
}

/// Reads a `multipart/form-data` body with a `purpose` field and a `file` part.
pub(crate) fn parse_upload(content_type: &str, body: &[u8]) -> Result<Upload, String> {
    let boundary = content_type
        .split(';')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("boundary="))
        .map(|b| b.trim_matches('"'))
        .filter(|_| content_type.trim_start().starts_with("multipart/form-data"))
        .ok_or("Expected a multipart/form-data body with a boundary.")?;
    let delimiter = format!("--{boundary}");
    let (mut purpose, mut file) = (None, None);
    for part in split(body, delimiter.as_bytes()) {
        let Some(at) = find(part, b"\r\n\r\n") else { continue };
        let (head, mut content) = (String::from_utf8_lossy(&part[..at]), &part[at + 4..]);
        if content.ends_with(b"\r\n") {
            content = &content[..content.len() - 2];
        }
        let disposition =
            head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition")).unwrap_or("");
        match parameter(disposition, "name").as_deref() {
            Some("purpose") => purpose = Some(String::from_utf8_lossy(content).into_owned()),
            Some("file") => {
                let filename = parameter(disposition, "filename").unwrap_or_else(|| "upload.jsonl".to_owned());
                file = Some((filename, content.to_vec()));
            }
            _ => {}
        }
    }
    let purpose = purpose.ok_or("Missing required parameter: 'purpose'.")?;
    let (filename, data) = file.ok_or("Missing required parameter: 'file'.")?;
    Ok(Upload { purpose, filename, data })
}

/// The parts between delimiters (the preamble and the closing `--` left out).
fn split<'a>(body: &'a [u8], delimiter: &[u8]) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    let mut rest = match find(body, delimiter) {
        Some(at) => &body[at + delimiter.len()..],
        None => return parts,
    };
    while !rest.starts_with(b"--") {
        let rest_start = rest.strip_prefix(b"\r\n").unwrap_or(rest);
        match find(rest_start, delimiter) {
            Some(at) => {
                parts.push(&rest_start[..at]);
                rest = &rest_start[at + delimiter.len()..];
            }
            None => break,
        }
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

/// `name="value"` in a `Content-Disposition` line.
fn parameter(line: &str, name: &str) -> Option<String> {
    line.split(';').map(str::trim).find_map(|part| {
        let value = part.strip_prefix(name)?.strip_prefix('=')?;
        Some(value.trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upload_as_httpx_and_our_client_send_it() {
        let body = b"--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--xyz\r\n\
Content-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/octet-stream\r\n\r\n\
{\"custom_id\":\"a\"}\n{\"custom_id\":\"b\"}\n\r\n--xyz--\r\n";
        let upload = parse_upload("multipart/form-data; boundary=xyz", body).unwrap();
        assert_eq!(upload.purpose, "batch");
        assert_eq!(upload.filename, "in.jsonl");
        assert_eq!(upload.data, b"{\"custom_id\":\"a\"}\n{\"custom_id\":\"b\"}\n");
        assert!(parse_upload("application/json", body).is_err());
        let no_file = b"--xyz\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--xyz--\r\n";
        assert!(parse_upload("multipart/form-data; boundary=xyz", no_file).unwrap_err().contains("'file'"));
    }

    #[test]
    fn file_ids_round_trip_only_for_this_instance() {
        let id = file_id(0xabcd_ef01, 7);
        assert_eq!(parse_file_id(0xabcd_ef01, &id), Some(7));
        assert_eq!(parse_file_id(0x1234_5678, &id), None);
    }
}
