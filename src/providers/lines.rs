//! The lines of a streamed download, read as the bytes arrive.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::ProviderError;

/// Lines of a response body; memory is bounded by the longest line.
pub struct LineStream {
    stream: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: BytesMut,
    /// How much of `buffer` is known to hold no newline: a line longer than
    /// a chunk is searched once, not again after every chunk.
    scanned: usize,
    done: bool,
}

/// A line's bytes as text, trimmed: valid UTF-8 is taken as it is (one
/// validation, one copy); anything else has its bad bytes replaced.
fn line_text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.trim().to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).trim().to_owned(),
    }
}

impl LineStream {
    /// The lines of `response`'s body.
    pub(crate) fn new(response: reqwest::Response) -> LineStream {
        LineStream { stream: Box::pin(response.bytes_stream()), buffer: BytesMut::new(), scanned: 0, done: false }
    }

    /// The lines of a stream of body chunks (a download made up by a test).
    #[cfg(test)]
    pub(crate) fn from_chunks(chunks: impl Stream<Item = reqwest::Result<Bytes>> + Send + 'static) -> LineStream {
        LineStream { stream: Box::pin(chunks), buffer: BytesMut::new(), scanned: 0, done: false }
    }

    /// The next non-empty line, `None` at the end. A last line cut short
    /// (no newline and not valid JSON) is an error: the stream was truncated.
    pub async fn next_line(&mut self) -> Result<Option<String>, ProviderError> {
        loop {
            if let Some(found) = memchr::memchr(b'\n', &self.buffer[self.scanned..]) {
                let at = self.scanned + found;
                self.scanned = 0;
                let line = self.buffer.split_to(at + 1);
                let text = line_text(&line[..at]);
                if text.is_empty() {
                    continue;
                }
                return Ok(Some(text));
            }
            if self.done {
                let rest = self.buffer.split();
                let text = line_text(&rest);
                if text.is_empty() {
                    return Ok(None);
                }
                if serde_json::from_str::<serde::de::IgnoredAny>(&text).is_err() {
                    return Err(ProviderError::Malformed(format!(
                        "results stream truncated in a line of {} bytes",
                        text.len()
                    )));
                }
                return Ok(Some(text));
            }
            self.scanned = self.buffer.len();
            match self.stream.next().await {
                Some(chunk) => self.buffer.extend_from_slice(&chunk?),
                None => self.done = true,
            }
        }
    }
}
