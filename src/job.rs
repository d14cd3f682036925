//! A compiled job: what `validate` makes of a manifest without errors, and
//! what everything downstream (the scheduler, the engine, rendering, cost)
//! works with. Durations are typed, the cron is parsed in its time zone, the
//! model is resolved in the catalog and the templates are loaded, once; the
//! raw manifest's source and spans stay in [`crate::manifest`], for
//! diagnostics only.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::manifest::Manifest;
use crate::schedule::Schedule;
use crate::templates::TemplateText;

/// A job ready to run.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's name: the manifest's file stem.
    pub name: String,
    /// The manifest file, as diagnostics and logs name it.
    pub file: String,
    /// The manifest's values (the fields that need no compiling are read from here).
    pub manifest: Manifest,
    /// When it fires.
    pub schedule: Schedule,
    /// How long after a scheduled instant every result must be final.
    pub deadline: Duration,
    /// The canonical id of `model` in the catalog.
    pub model_id: String,
    /// The canonical id of `batch_model`, when the job has one.
    pub batch_model_id: Option<String>,
    /// `failover`, resolved: `(provider, model id)` in the manifest's order.
    pub failover: Vec<(String, String)>,
    /// The system and prompt templates, as loaded when the job was compiled.
    pub templates: Templates,
    /// When its queue of posted items flushes into a run (`enqueue:`).
    pub queue: Option<QueuePolicy>,
}

/// A job's `enqueue:` rules, compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePolicy {
    /// Queued items that make a run at once.
    pub max_items: usize,
    /// How long the oldest queued item waits at most.
    pub max_wait: Duration,
}

/// A job's templates, loaded once: a run renders what was validated.
#[derive(Debug, Clone)]
pub struct Templates {
    /// The system prompt, if the job has one.
    pub system: Option<TemplateText>,
    /// The user prompt.
    pub prompt: TemplateText,
}

impl Job {
    /// The deadline of the run scheduled for `scheduled_for` (saturating).
    pub fn deadline_at(&self, scheduled_for: DateTime<Utc>) -> DateTime<Utc> {
        scheduled_for.checked_add_signed(crate::clock::span(self.deadline)).unwrap_or(DateTime::<Utc>::MAX_UTC)
    }

    /// The model a run on `lane` renders its requests for: `batch_model` on
    /// the batch lane when the job has one, else `model`.
    pub fn model_for(&self, lane: crate::manifest::Lane) -> &str {
        match (lane, &self.batch_model_id) {
            (crate::manifest::Lane::Batch, Some(batch)) => batch,
            _ => &self.model_id,
        }
    }
}
