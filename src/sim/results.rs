//! The results JSONL of an ended batch (`PROVIDERS.md` §2.4), generated line
//! by line while it streams, in a shuffled but deterministic order.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use futures_util::stream;
use serde::Serialize;

use super::SimConfig;
use super::batches::{Core, Fate};
use super::errors::{ErrorBody, error_body};
use super::hash::{self, Key};
use super::messages::{Message, message};

/// Lines per streamed chunk.
const CHUNK_LINES: usize = 256;

/// What a results download needs, detached from the state lock.
pub(crate) struct Download {
    pub config: SimConfig,
    pub core: Arc<Core>,
    pub cancel_at: Option<f64>,
    /// Cut the stream in the middle of the line at this fraction of all lines.
    pub truncate_at: Option<f64>,
}

impl Download {
    /// The streaming response body.
    pub(crate) fn into_body(self) -> Body {
        let order = shuffled(&self.config, &self.core);
        let truncate_at = self.truncate_at;
        line_stream(self, order, truncate_at, |download, i| download.line(i))
    }

    /// The JSONL line (with its newline) of request `i`.
    fn line(&self, i: usize) -> Vec<u8> {
        let record = &self.core.records[i];
        let seed = self.config.seed;
        let key = Key::new(seed, "result").str(&record.custom_id).num(u64::from(record.submission));
        let request_id;
        let result = match self.core.fate(i, self.cancel_at, &self.config) {
            Fate::Succeeded(prompt) => {
                let id = hash::id("msg_", key.str("msg").finish(), prompt.hash);
                LineResult::Succeeded {
                    message: message(id, prompt, record.cache_hit, "batch", self.config.reply_bytes),
                }
            }
            Fate::Errored(kind, text) => {
                request_id = hash::id("req_", key.str("req").finish(), u64::from(record.submission));
                LineResult::Errored { error: error_body(kind, text, &request_id) }
            }
            Fate::Canceled => LineResult::Canceled,
            Fate::Expired => LineResult::Expired,
        };
        let mut line =
            serde_json::to_vec(&Line { custom_id: &record.custom_id, result }).expect("a result line serializes");
        line.push(b'\n');
        line
    }
}

/// One results line.
#[derive(Serialize)]
struct Line<'a> {
    custom_id: &'a str,
    result: LineResult<'a>,
}

/// The `result` of a line: `{"type":"succeeded","message":..}`, `{"type":"errored","error":..}`, ...
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum LineResult<'a> {
    Succeeded { message: Message<'a> },
    Errored { error: ErrorBody<'a> },
    Canceled,
    Expired,
}

/// A body of `line(source, i)` for each `i` of `order`, `CHUNK_LINES` at a
/// time, generated as it streams. With `truncate_at`, the stream breaks off
/// in the middle of the line at that fraction of all lines, as a download
/// whose connection dropped.
pub(crate) fn line_stream<T: Send + Sync + 'static>(
    source: T,
    order: Vec<u32>,
    truncate_at: Option<f64>,
    line: fn(&T, usize) -> Vec<u8>,
) -> Body {
    let cut =
        truncate_at.filter(|_| !order.is_empty()).map(|at| ((at * order.len() as f64) as usize).min(order.len() - 1));
    let chunks = stream::unfold((source, order, 0usize), move |(source, order, pos)| async move {
        let end = pos.saturating_add(CHUNK_LINES).min(order.len());
        if pos >= end {
            return None;
        }
        let mut buf = Vec::with_capacity((end - pos) * 512);
        for (n, &i) in order[pos..end].iter().enumerate() {
            let text = line(&source, i as usize);
            if cut == Some(pos + n) {
                buf.extend_from_slice(&text[..text.len() / 2]);
                return Some((Ok::<_, std::io::Error>(Bytes::from(buf)), (source, order, usize::MAX)));
            }
            buf.extend_from_slice(&text);
        }
        Some((Ok(Bytes::from(buf)), (source, order, end)))
    });
    Body::from_stream(chunks)
}

/// Request indices in the order their lines are sent: by a hash of seed and `custom_id`.
pub(crate) fn shuffled(config: &SimConfig, core: &Core) -> Vec<u32> {
    let mut keyed: Vec<(u64, u32)> = core
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (Key::new(config.seed, "order").str(&r.custom_id).finish(), i as u32))
        .collect();
    keyed.sort_unstable();
    keyed.into_iter().map(|(_, i)| i).collect()
}
