//! The job manifest: one YAML file per job in `jobs/`.
//!
//! These types are the contract. They are deserialized with
//! `deny_unknown_fields` and the JSON Schema in `schemas/job.schema.json` is
//! generated from them, so a doc comment here is the field's documentation.
//! Values whose checks need a source location (cron, time zone, durations,
//! model names) are kept as strings and checked by `validate`, which can point
//! at them.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One scheduled LLM workflow.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "orchestrator job manifest")]
pub struct Manifest {
    /// What the job is for, in a sentence; shown on the dashboard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// When the job fires. A stage (`items.from`) without it fires when a
    /// run of its upstream job completes; a job with `enqueue` without it
    /// runs when its queue flushes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,
    /// On-demand work: items posted to the daemon
    /// (`POST /api/v1/jobs/{job}/items`, `orchestrator enqueue`) wait in a
    /// queue and become one run when `max_items` are queued, when the
    /// oldest has waited `max_wait`, or when an item's deadline needs it.
    /// Beside `schedule`, each scheduled instant also flushes the queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enqueue: Option<Enqueue>,
    /// Latency promise; decides the lane. `realtime` runs on the synchronous
    /// API, `soft` and `batch` on the batch API (50% cheaper) with a
    /// synchronous fallback that holds the deadline.
    #[serde(default)]
    pub tier: Tier,
    /// Time after the scheduled instant by which every result must be final,
    /// e.g. `90s`, `45m`, `6h`, `1d`. Defaults: realtime 60s, soft 1h, batch 24h.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// Provider from the model catalog.
    #[serde(default = "default_provider")]
    pub provider: String,
    /// A model id or alias from the model catalog, e.g. `claude-sonnet-4-6`.
    pub model: String,
    /// Maximum output tokens per request (at least 1, at most the model's
    /// limit for the lane the tier routes to).
    pub max_tokens: i64,
    /// Sampling temperature: 0 to 1 (Anthropic), 0 to 2 (OpenAI, Gemini).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// System prompt: a template path under `prompts/`, or `{ inline: "..." }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<PromptSource>,
    /// User prompt, rendered once per item: a template path under
    /// `prompts/`, or `{ inline: "..." }`.
    pub prompt: PromptSource,
    /// Extra template variables, available as `vars` in templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Further Messages API parameters passed through as given: `thinking`,
    /// `stop_sequences`, `top_p`, `top_k`, `tools`, `tool_choice`, `metadata`,
    /// `service_tier`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Where a run's items come from. Absent: one item per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<ItemSource>,
    /// Where results go. Absent: results stay in the state database only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<Sink>,
    /// Prompt-caching breakpoints and their TTL (`5m` or `1h`). Batch-lane
    /// jobs should use `1h`: batches outlive a 5-minute cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<Cache>,
    /// `anthropic-beta` values sent with every request of the job.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub betas: Vec<String>,
    /// Retry policy per request.
    #[serde(default)]
    pub retry: Retry,
    /// What to do when the previous run is still open at the next firing.
    #[serde(default)]
    pub overlap: Overlap,
    /// Which instants missed while the daemon was down are run on start.
    #[serde(default)]
    pub catch_up: CatchUp,
    /// Spending cap and what to do when a run would cross it (or the
    /// daemon's global budget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Cost hints for `orchestrator estimate` and budget checks before the
    /// job has history: items per run and tokens per item.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub estimate: Option<EstimateHints>,
    /// A model used instead of `model` when a run goes through the batch
    /// lane (e.g. a stronger model for the same money); the sync lane,
    /// fallback included, keeps `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch_model: Option<String>,
    /// Models on other providers (ids or aliases, e.g. `gpt-4o-mini`) the
    /// sync lane sends a run's missing requests to, in this order, when the
    /// job's own provider keeps failing during its fallback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover: Vec<String>,
    /// Labels for grouping on the dashboard and in cost reports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Upper bound on requests per batch, below the provider's own limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_batch_requests: Option<u32>,
    /// How the job's requests go into provider batches.
    #[serde(default, skip_serializing_if = "BatchOptions::is_default")]
    pub batch: BatchOptions,
}

/// How a job's requests go into provider batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchOptions {
    /// Whether the job's requests may share a provider batch with other
    /// runs ready at the same time for the same provider and model (default
    /// `true`: fewer create, poll and results calls). `false` gives every
    /// run batches of its own, e.g. to read a provider's invoice per batch.
    #[serde(default = "default_share")]
    pub share: bool,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions { share: default_share() }
    }
}

impl BatchOptions {
    fn is_default(&self) -> bool {
        *self == BatchOptions::default()
    }
}

fn default_share() -> bool {
    true
}

fn default_provider() -> String {
    "anthropic".to_owned()
}

/// The flush rules of a job's queue (`enqueue:`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Enqueue {
    /// Queued items that make a run at once (default 1000).
    #[serde(default = "default_max_items")]
    pub max_items: u32,
    /// How long the oldest queued item waits before its run starts, e.g.
    /// `30m` (the default). The run's deadline is the tier's, counted from
    /// the flush, or an item's own when that is sooner.
    #[serde(default = "default_max_wait")]
    pub max_wait: String,
}

fn default_max_items() -> u32 {
    1000
}

fn default_max_wait() -> String {
    "30m".to_owned()
}

/// When a job fires: a cron expression in a time zone.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    /// Standard 5-field crontab (`minute hour day-of-month month day-of-week`),
    /// e.g. `30 2 * * *`, with `L`, `W`, `#` and nicknames like `@daily`.
    pub cron: String,
    /// IANA time zone the cron expression is read in, e.g. `Europe/Berlin`.
    #[serde(default = "default_timezone")]
    pub timezone: String,
}

fn default_timezone() -> String {
    "UTC".to_owned()
}

/// Latency promise of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Under a minute: synchronous API.
    Realtime,
    /// Minutes to an hour: batch API with a short deadline and early fallback.
    Soft,
    /// An hour to a day: batch API.
    #[default]
    Batch,
}

impl Tier {
    /// The name used in manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Realtime => "realtime",
            Tier::Soft => "soft",
            Tier::Batch => "batch",
        }
    }

    /// The lane a request of this tier starts in.
    pub fn lane(self) -> Lane {
        match self {
            Tier::Realtime => Lane::Sync,
            Tier::Soft | Tier::Batch => Lane::Batch,
        }
    }
}

/// How a request is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Lane {
    /// The provider's synchronous Messages API.
    Sync,
    /// The provider's batch API.
    Batch,
}

impl Lane {
    /// The name used in the catalog, the store and the dashboard.
    pub fn as_str(self) -> &'static str {
        match self {
            Lane::Sync => "sync",
            Lane::Batch => "batch",
        }
    }
}

/// A prompt template: a path under `prompts/` or inline text.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum PromptSource {
    /// Path of a template file, relative to the prompts directory.
    Path(String),
    /// Template text written in the manifest.
    Inline {
        /// The template text.
        inline: String,
    },
}

/// Where a run's items come from. Exactly one of `jsonl`, `glob`, `command`, `from`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ItemSource {
    /// A JSON Lines file, one object per item. May contain `{{ run.date }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonl: Option<String>,
    /// A file glob; each matching file is an item with `path`, `name`, `content`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub glob: Option<String>,
    /// A shell command (`sh -c`) whose standard output is JSON Lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Another job (a pipeline stage): the results its newest completed run
    /// delivered are the items, each with its `custom_id`, `text`, `item`
    /// and `usage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// With `from`: `each` result is an item (the default), or all of them
    /// are `one` item, as the list `results` (a digest).
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub shape: Option<StageShape>,
    /// Skip malformed JSON lines (reported) instead of refusing to start the run.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_malformed: bool,
}

/// How a stage takes its upstream run's results (`items.as`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum StageShape {
    /// Each delivered result is one item.
    #[default]
    Each,
    /// All of them are one item, as the list `results`.
    One,
}

/// Where results go. Exactly one of `jsonl`, `dir`, `sqlite`, `command`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sink {
    /// Append one JSON line per result to this file. May contain `{{ run.date }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jsonl: Option<String>,
    /// Write one `<custom_id>.json` file per result into this directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// Upsert each result into a SQLite table, keyed by custom_id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sqlite: Option<SqliteSink>,
    /// Upsert each result into a PostgreSQL table, keyed by custom_id, in the
    /// database at `ORCHESTRATOR_DATABASE_URL` (or the systemd credential
    /// `orchestrator-database-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSink>,
    /// Pipe each result as a JSON line to this shell command's standard input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// A PostgreSQL table that receives results.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PostgresSink {
    /// Table name (letters, digits, underscores); created if missing.
    pub table: String,
}

/// A SQLite table that receives results.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SqliteSink {
    /// Database file.
    pub path: String,
    /// Table name (letters, digits, underscores).
    pub table: String,
}

/// Prompt-caching breakpoints: which blocks get `cache_control`, with which TTL.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    /// TTL of a breakpoint on the system prompt: `5m` or `1h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// TTL of a breakpoint on the last tool definition in `params.tools`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<String>,
}

/// Retry policy per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    /// Attempts per request, counting the first (default 3).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: i64,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { max_attempts: default_max_attempts() }
    }
}

fn default_max_attempts() -> i64 {
    3
}

/// What to do when a run is still open at the next firing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Do not start the new run; record the skipped instant.
    #[default]
    Skip,
    /// Start the new run when the open one finishes.
    Queue,
    /// Start the new run at once.
    Allow,
}

/// Which missed instants run after downtime.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// One run for the most recent missed instant, if its deadline can be met.
    #[default]
    Latest,
    /// Every missed instant, oldest first.
    All,
    /// None; missed instants are recorded as skipped.
    None,
}

/// Spending caps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Monthly cap in US dollars (calendar month, UTC) for this job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
    /// What happens when a run would cross this budget or the daemon's
    /// global one: `skip` the run, `batch_only` (default: keep the cheap
    /// lane, never pay for the sync fallback, alert) or `alert` (run as
    /// usual and record the crossing).
    #[serde(default)]
    pub on_budget: OnBudget,
}

/// The budget policy of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnBudget {
    /// Do not run at all; nothing is spent.
    Skip,
    /// Run on the batch lane only; no sync fallback, no sync routing.
    #[default]
    BatchOnly,
    /// Run as usual; record and alert.
    Alert,
}

impl OnBudget {
    /// The name used in manifests and events.
    pub fn as_str(self) -> &'static str {
        match self {
            OnBudget::Skip => "skip",
            OnBudget::BatchOnly => "batch_only",
            OnBudget::Alert => "alert",
        }
    }
}

/// Cost hints used while a job has no history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EstimateHints {
    /// Items in a typical run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items_per_run: Option<u64>,
    /// Input tokens per request (system prompt included).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<u64>,
    /// Output tokens per request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u64>,
}
