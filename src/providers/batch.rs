//! Batches as the lanes see them, whichever provider runs them: a status,
//! a page of the provider's list, the input of a create call, and the
//! results read back as normalised lines.

use std::collections::VecDeque;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures_util::Stream;

use super::ProviderError;
use super::lines::LineStream;
use crate::outcome::Outcome;

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchPhase {
    /// Accepted and running (validating and finalizing included).
    InProgress,
    /// A cancel was asked for; finished requests keep their results.
    Canceling,
    /// Done: every request has an outcome, or none will come.
    Ended,
}

/// What the provider says about one batch.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchStatus {
    /// The provider's batch id.
    pub id: String,
    /// Its phase.
    pub phase: BatchPhase,
    /// When the provider created it.
    pub created_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub ended_at: Option<DateTime<Utc>>,
    /// Requests in it, when the provider says (not while it validates).
    pub request_count: Option<u64>,
    /// Where its results are, once it ended: opaque to everyone but the
    /// provider that wrote it (a URL, file ids), and stored as it is.
    pub results: Option<String>,
    /// The tag of the create call ([`BatchInput::tag`]), for providers that
    /// keep metadata: finds a batch whose create answer was lost.
    pub tag: Option<String>,
}

/// One page of the provider's batches, newest first.
#[derive(Debug, Clone)]
pub struct BatchPage {
    /// The batches.
    pub batches: Vec<BatchStatus>,
    /// The cursor of the next (older) page, if there is one.
    pub next: Option<String>,
}

/// The provider's limits on one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Requests per batch.
    pub max_requests: usize,
    /// Bytes of request bodies per batch.
    pub max_bytes: usize,
    /// Bytes the provider's framing adds to each request's custom_id and params.
    pub envelope_bytes: usize,
}

/// Rows of `(custom_id, params)` in chunks, in the batch's order.
pub type RequestRows = Pin<Box<dyn Stream<Item = Result<Vec<(String, String)>, std::io::Error>> + Send>>;

/// The requests of one create call: read afresh for every try (a batch is
/// never held whole in memory), with their sizes known ahead so the body
/// goes out with a `Content-Length`.
pub struct BatchInput {
    /// Names our batch row; providers that keep metadata store it with the batch.
    pub tag: String,
    /// Number of requests.
    pub count: u64,
    /// Bytes of all custom_ids together.
    pub custom_id_bytes: u64,
    /// Bytes of all params (JSON text) together.
    pub params_bytes: u64,
    /// Opens the rows.
    pub rows: Box<dyn Fn() -> RequestRows + Send + Sync>,
}

impl BatchInput {
    /// The input of rows held in memory, served `chunk` rows at a time
    /// (tools and tests; the lanes read theirs from the store).
    pub fn in_memory(tag: &str, rows: Vec<(String, String)>, chunk: usize) -> BatchInput {
        BatchInput {
            tag: tag.to_owned(),
            count: rows.len() as u64,
            custom_id_bytes: rows.iter().map(|(id, _)| id.len() as u64).sum(),
            params_bytes: rows.iter().map(|(_, params)| params.len() as u64).sum(),
            rows: Box::new(move || {
                let chunks: Vec<_> = rows.chunks(chunk.max(1)).map(|c| Ok(c.to_vec())).collect();
                Box::pin(futures_util::stream::iter(chunks))
            }),
        }
    }
}

impl std::fmt::Debug for BatchInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchInput").field("tag", &self.tag).field("count", &self.count).finish_non_exhaustive()
    }
}

/// One result of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultLine {
    /// The request it answers (empty when only its `input_line` is known).
    pub custom_id: String,
    /// The request's line in the batch's input (1-based, requests in
    /// custom_id order), for a provider that names refused requests so.
    pub input_line: Option<u64>,
    /// What happened.
    pub outcome: Outcome,
    /// The model a success names (`model` of the answer), when it names one.
    pub model: Option<String>,
}

/// Parses one line of a results file into a result, or says why it cannot.
pub type LineParser = fn(&str) -> Result<ResultLine, String>;

/// A batch's results, read as they arrive: one or more line streams (a
/// provider may keep successes and errors in separate files) and results
/// known without a download. Memory is bounded by the longest line.
pub struct ResultsReader {
    sources: VecDeque<Source>,
    bytes: u64,
}

enum Source {
    Lines(LineStream, LineParser),
    Known(VecDeque<ResultLine>),
}

impl ResultsReader {
    /// A reader with nothing to read yet.
    pub(crate) fn new() -> ResultsReader {
        ResultsReader { sources: VecDeque::new(), bytes: 0 }
    }

    /// Adds a streamed file whose lines `parse` reads.
    pub(crate) fn lines(mut self, lines: LineStream, parse: LineParser) -> ResultsReader {
        self.sources.push_back(Source::Lines(lines, parse));
        self
    }

    /// Adds results known without a download.
    pub(crate) fn known(mut self, results: Vec<ResultLine>) -> ResultsReader {
        self.sources.push_back(Source::Known(results.into()));
        self
    }

    /// The next result: `Ok(Some(Err(why)))` for a line that cannot be read
    /// (skipped by the caller), `Ok(None)` at the end, `Err` when the
    /// download failed or was cut short.
    pub async fn next(&mut self) -> Result<Option<Result<ResultLine, String>>, ProviderError> {
        loop {
            let Some(source) = self.sources.front_mut() else { return Ok(None) };
            match source {
                Source::Lines(lines, parse) => match lines.next_line().await? {
                    Some(line) => {
                        self.bytes += line.len() as u64 + 1;
                        return Ok(Some(parse(&line)));
                    }
                    None => drop(self.sources.pop_front()),
                },
                Source::Known(results) => match results.pop_front() {
                    Some(result) => return Ok(Some(Ok(result))),
                    None => drop(self.sources.pop_front()),
                },
            }
        }
    }

    /// Bytes of the lines read so far (newlines included).
    pub fn bytes_read(&self) -> u64 {
        self.bytes
    }
}
