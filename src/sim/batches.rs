//! Batches: what is kept per request, the lifecycle on the simulated clock
//! and the `MessageBatch` object (`PROVIDERS.md` §2.3).
//!
//! Each batch draws a duration from the log-normal distribution; each request
//! finishes at a fixed fraction of it. At the batch's end (or at 24 simulated
//! hours, when unfinished requests expire) every result is known at once, and
//! the counts leave `processing` together. A cancel ends the batch shortly
//! after: requests that had finished keep their result, the rest are canceled.

use std::sync::Arc;

use serde_json::{Value, json};

use super::SimConfig;
use super::create::Incoming;
use super::faults::{self, Outcome};
use super::params::Prompt;
use super::state::{Clock, State};

/// 24 hours in seconds: when a batch expires.
pub(crate) const DAY: f64 = 86_400.0;

/// How long `canceling` lasts, in real seconds (unless the batch ends sooner).
const CANCEL_REAL_SECS: f64 = 0.1;

/// One request of a batch: only what its result needs.
pub(crate) struct Record {
    pub custom_id: Box<str>,
    pub prompt: Result<Prompt, Box<str>>,
    pub cache_hit: bool,
    /// How many earlier created batches held this `custom_id`.
    pub submission: u32,
}

/// The parts of a batch that never change after creation.
pub(crate) struct Core {
    pub id: String,
    pub records: Box<[Record]>,
    /// Simulated creation instant.
    pub created: f64,
    /// Simulated seconds the batch would take if nothing stopped it (infinite with `never_end`).
    pub duration: f64,
}

/// A batch and its mutable state.
pub(crate) struct Batch {
    pub core: Arc<Core>,
    pub cancel_at: Option<f64>,
    cancel_end: f64,
    pub ended: Option<Ended>,
}

/// Set once a batch has ended.
pub(crate) struct Ended {
    pub at: f64,
    pub counts: Counts,
}

/// Final result counts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Counts {
    pub succeeded: u64,
    pub errored: u64,
    pub canceled: u64,
    pub expired: u64,
}

/// The result of one request once its batch has ended.
pub(crate) enum Fate<'a> {
    Succeeded(&'a Prompt),
    Errored(&'static str, &'a str),
    Canceled,
    Expired,
}

impl Core {
    /// The result of request `i`, given the batch's cancel instant.
    pub(crate) fn fate(&self, i: usize, cancel_at: Option<f64>, config: &SimConfig) -> Fate<'_> {
        let record = &self.records[i];
        let finish =
            self.created + self.duration * faults::finish_fraction(config.seed, &record.custom_id, record.submission);
        if cancel_at.is_some_and(|at| finish > at) {
            return Fate::Canceled;
        }
        if finish > self.created + DAY {
            return Fate::Expired;
        }
        let prompt = match &record.prompt {
            Ok(prompt) => prompt,
            Err(message) => return Fate::Errored("invalid_request_error", message),
        };
        match faults::roll_outcome(config, &record.custom_id, record.submission) {
            Outcome::Succeeded => Fate::Succeeded(prompt),
            Outcome::Errored(kind, message) => Fate::Errored(kind, message),
            Outcome::Expired => Fate::Expired,
        }
    }
}

impl Batch {
    /// When the batch ends unless canceled: at its duration, or at 24 h.
    fn natural_end(&self) -> f64 {
        if self.core.duration.is_infinite() { f64::INFINITY } else { self.core.created + self.core.duration.min(DAY) }
    }

    /// When the batch ends, cancel included.
    fn end(&self) -> f64 {
        match self.cancel_at {
            Some(_) => self.natural_end().min(self.cancel_end),
            None => self.natural_end(),
        }
    }

    /// Moves the batch to `ended` when its end has passed, counting the results.
    pub(crate) fn refresh(&mut self, now: f64, config: &SimConfig) {
        if self.ended.is_some() || now < self.end() {
            return;
        }
        let mut counts = Counts::default();
        for i in 0..self.core.records.len() {
            match self.core.fate(i, self.cancel_at, config) {
                Fate::Succeeded(_) => counts.succeeded += 1,
                Fate::Errored(..) => counts.errored += 1,
                Fate::Canceled => counts.canceled += 1,
                Fate::Expired => counts.expired += 1,
            }
        }
        self.ended = Some(Ended { at: self.end(), counts });
    }

    /// Starts canceling at `now`; false when the batch had already ended or was canceling.
    pub(crate) fn cancel(&mut self, now: f64, clock: &Clock, cancel_secs: Option<f64>) -> bool {
        if self.ended.is_some() || self.cancel_at.is_some() {
            return false;
        }
        self.cancel_at = Some(now);
        self.cancel_end = now + cancel_secs.unwrap_or(CANCEL_REAL_SECS / clock.real_secs(1.0));
        true
    }

    /// `in_progress`, `canceling` or `ended` (call [`Batch::refresh`] first).
    pub(crate) fn status(&self) -> &'static str {
        match (&self.ended, self.cancel_at) {
            (Some(_), _) => "ended",
            (None, Some(_)) => "canceling",
            (None, None) => "in_progress",
        }
    }

    /// The `MessageBatch` object; `base` is the base URL for `results_url`.
    pub(crate) fn to_json(&self, clock: &Clock, base: &str) -> Value {
        let total = self.core.records.len() as u64;
        let (counts, ended_at, results_url) = match &self.ended {
            Some(ended) => {
                let c = ended.counts;
                (
                    json!({"processing": 0, "succeeded": c.succeeded, "errored": c.errored, "canceled": c.canceled, "expired": c.expired}),
                    Value::from(clock.timestamp(ended.at)),
                    Value::from(format!("{base}/v1/messages/batches/{}/results", self.core.id)),
                )
            }
            None => (
                json!({"processing": total, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}),
                Value::Null,
                Value::Null,
            ),
        };
        json!({
            "id": self.core.id,
            "type": "message_batch",
            "processing_status": self.status(),
            "request_counts": counts,
            "created_at": clock.timestamp(self.core.created),
            "expires_at": clock.timestamp_plus(self.core.created, chrono::Duration::days(1)),
            "ended_at": ended_at,
            "cancel_initiated_at": self.cancel_at.map(|at| clock.timestamp(at)),
            "archived_at": null,
            "results_url": results_url,
        })
    }
}

/// Batch id of sequence number `seq`: `msgbatch_` + 8 hex digits of the start nonce + 16 of `seq`.
pub(crate) fn batch_id(nonce: u64, seq: u64) -> String {
    format!("msgbatch_{:08x}{seq:016x}", nonce as u32)
}

/// The sequence number in a batch id of this simulator instance.
pub(crate) fn parse_id(nonce: u64, id: &str) -> Option<u64> {
    let hex = id.strip_prefix("msgbatch_")?;
    if hex.len() != 24 || !hex.starts_with(&format!("{:08x}", nonce as u32)) {
        return None;
    }
    u64::from_str_radix(&hex[8..], 16).ok()
}

impl State {
    /// Creates a batch from checked requests; returns its sequence number.
    pub(crate) fn create_batch(
        &mut self,
        config: &SimConfig,
        clock: &Clock,
        nonce: u64,
        incoming: Vec<Incoming>,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let now = clock.now();
        let mut records = Vec::with_capacity(incoming.len());
        for Incoming { custom_id, prompt } in incoming {
            let seen = self.submitted.entry(custom_id.clone()).or_insert(0);
            let submission = *seen;
            *seen += 1;
            if *seen == 2 {
                self.stats.custom_ids_submitted_more_than_once += 1;
            }
            let cache_hit = match &prompt {
                Ok(Prompt { cache: Some(plan), .. }) => self.cache.hit(plan, now),
                _ => false,
            };
            records.push(Record { custom_id, prompt, cache_hit, submission });
        }
        self.stats.batches_created += 1;
        self.stats.requests_received += records.len() as u64;
        let anthropic = self.stats.of("anthropic");
        anthropic.batches_created += 1;
        anthropic.requests_received += records.len() as u64;
        let duration = if config.never_end { f64::INFINITY } else { faults::batch_duration(config, seq) };
        let core = Core { id: batch_id(nonce, seq), records: records.into_boxed_slice(), created: now, duration };
        self.batches.insert(seq, Batch { core: Arc::new(core), cancel_at: None, cancel_end: 0.0, ended: None });
        seq
    }

    /// The batch with this id, refreshed to `now`.
    pub(crate) fn batch(&mut self, nonce: u64, id: &str, now: f64, config: &SimConfig) -> Option<&mut Batch> {
        let batch = self.batches.get_mut(&parse_id(nonce, id)?)?;
        batch.refresh(now, config);
        Some(batch)
    }

    /// One page of batches, newest first: `(page, has_more)`. `after` gives
    /// the page after (older than) that sequence number, `before` the page
    /// before (newer than) it.
    pub(crate) fn page(&mut self, limit: usize, after: Option<u64>, before: Option<u64>) -> (Vec<u64>, bool) {
        let mut seqs: Vec<u64> = match (after, before) {
            (Some(after), _) => self.batches.range(..after).rev().map(|(seq, _)| *seq).take(limit + 1).collect(),
            (None, Some(before)) => {
                let mut newer: Vec<u64> =
                    self.batches.range(before.saturating_add(1)..).map(|(seq, _)| *seq).take(limit + 1).collect();
                newer.reverse();
                newer
            }
            (None, None) => self.batches.keys().rev().copied().take(limit + 1).collect(),
        };
        let has_more = seqs.len() > limit;
        if has_more {
            if after.is_none() && before.is_some() {
                seqs.remove(0);
            } else {
                seqs.truncate(limit);
            }
        }
        (seqs, has_more)
    }
}
