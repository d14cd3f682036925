//! The lines of a streamed download, read as the bytes arrive.

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};

use super::ProviderError;

/// Lines of a response body; memory is bounded by the longest line.
pub struct LineStream {
    stream: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: BytesMut,
    done: bool,
}

impl LineStream {
    /// The lines of `response`'s body.
    pub(crate) fn new(response: reqwest::Response) -> LineStream {
        LineStream { stream: Box::pin(response.bytes_stream()), buffer: BytesMut::new(), done: false }
    }

    /// The next non-empty line, `None` at the end. A last line cut short
    /// (no newline and not valid JSON) is an error: the stream was truncated.
    pub async fn next_line(&mut self) -> Result<Option<String>, ProviderError> {
        loop {
            if let Some(at) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(at + 1);
                let text = String::from_utf8_lossy(&line[..at]).trim().to_owned();
                if text.is_empty() {
                    continue;
                }
                return Ok(Some(text));
            }
            if self.done {
                let rest = self.buffer.split();
                let text = String::from_utf8_lossy(&rest).trim().to_owned();
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
            match self.stream.next().await {
                Some(chunk) => self.buffer.extend_from_slice(&chunk?),
                None => self.done = true,
            }
        }
    }
}
