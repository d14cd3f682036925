//! The daemon's own configuration (`--config FILE`): limits of the lanes and
//! the fallback planner's knobs. Every field is optional; an absent file
//! means the defaults.
//!
//! ```yaml
//! sync:            # per model, on the sync lane
//!   concurrency: 8
//!   requests_per_minute: 1000
//!   input_tokens_per_minute: 400000
//!   output_tokens_per_minute: 80000
//! fallback:
//!   max_safety_margin: 10m     # a tenth of the run's window, at most this
//!   assumed_sync_latency: 20s  # until sync calls to a model have been observed (default: the catalog's)
//!   assumed_batch_turnaround: 10m  # until batches have been seen to end (default: the catalog's)
//! batch:
//!   poll_initial: 10s
//!   poll_max: 5m
//!   gather_window: 2s          # runs ready within this share provider batches (0s: only those of one tick)
//!   requests_per_minute: { anthropic: 50 }       # the batch endpoints' pace (default: the provider's limit)
//!   max_queued_requests: { anthropic: 100000 }   # the provider's processing queue (default: its limit)
//! budget:
//!   monthly_usd: 500           # all jobs together, calendar month (UTC)
//! shutdown:
//!   grace: 30s                 # sync calls in flight on SIGTERM get this long
//! notify:                      # alerts: see `crate::notify::config`
//!   webhooks: [{url_env: SLACK_WEBHOOK_URL}]
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::engine::EngineSettings;
use crate::lanes::SyncLimits;
use crate::manifest::parse_duration;

/// The configuration file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Sync lane limits, per model.
    pub sync: SyncLimits,
    /// Fallback planner.
    pub fallback: FallbackConfig,
    /// Batch polling.
    pub batch: BatchConfig,
    /// The global spending cap.
    pub budget: GlobalBudget,
    /// Alerts (off when absent).
    pub notify: Option<crate::notify::NotifyConfig>,
    /// How `serve` stops.
    pub shutdown: ShutdownConfig,
    /// The enqueue endpoint (`POST /api/v1/jobs/{job}/items`).
    pub enqueue: EnqueueConfig,
}

/// The enqueue endpoint's limits.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnqueueConfig {
    /// The largest request body it takes, in bytes (default 10 MiB);
    /// a larger one is refused with `413`.
    pub max_body_bytes: Option<usize>,
}

impl EnqueueConfig {
    /// `max_body_bytes` or its default.
    pub fn max_body(&self) -> usize {
        self.max_body_bytes.unwrap_or(crate::web::DEFAULT_MAX_ENQUEUE_BODY)
    }
}

/// How `serve` stops on SIGTERM or SIGINT.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// How long sync calls in flight get to finish and be recorded, e.g.
    /// `30s` (default; keep it below systemd's `TimeoutStopSec`).
    pub grace: Option<String>,
}

/// The default of `shutdown.grace`: within the unit's `TimeoutStopSec=45s`.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

impl ShutdownConfig {
    /// The grace period.
    pub fn grace(&self) -> Result<Duration, String> {
        match &self.grace {
            None => Ok(DEFAULT_GRACE),
            Some(text) => parse_duration(text).map_err(|e| format!("shutdown.grace: {e} (write e.g. `30s`)")),
        }
    }
}

/// The spending cap of all jobs together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalBudget {
    /// Monthly cap in US dollars; each job's `budget.on_budget` says what happens when a run would cross it.
    pub monthly_usd: Option<f64>,
}

/// The fallback planner's knobs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FallbackConfig {
    /// Longest safety margin before a deadline, e.g. `10m`.
    pub max_safety_margin: Option<String>,
    /// Sync latency assumed before any call to a model was observed, e.g.
    /// `20s` (default: the catalog's figure for the model).
    pub assumed_sync_latency: Option<String>,
    /// Batch turnaround assumed before any of the provider's batches was
    /// seen to end, e.g. `10m` (default: the catalog's `batch_turnaround`).
    pub assumed_batch_turnaround: Option<String>,
}

/// Batch polling, sharing and pacing.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// First wait between polls, e.g. `10s`.
    pub poll_initial: Option<String>,
    /// Longest wait between polls, e.g. `5m`.
    pub poll_max: Option<String>,
    /// How long a run ready for the batch lane waits for other runs to
    /// share its provider batch, e.g. `2s` (the default; never past its
    /// fallback instant).
    pub gather_window: Option<String>,
    /// Calls per minute across each provider's batch endpoints, e.g.
    /// `{anthropic: 50}` (default: the provider's published limit).
    pub requests_per_minute: std::collections::BTreeMap<String, u64>,
    /// Requests each provider's batch processing queue holds across all
    /// batches, e.g. `{anthropic: 100000}` (default: its published limit).
    pub max_queued_requests: std::collections::BTreeMap<String, u64>,
}

/// The daemon's default of `batch.gather_window`.
pub const DEFAULT_GATHER_WINDOW: Duration = Duration::from_secs(2);

impl BatchConfig {
    /// The pacing overrides, each naming a known provider.
    fn pacing(&self) -> Result<crate::lanes::BatchPacing, String> {
        let known = crate::providers::NAMES;
        let check = |field: &str, map: &std::collections::BTreeMap<String, u64>| {
            for (name, value) in map {
                if !known.contains(&name.as_str()) {
                    return Err(format!(
                        "batch.{field}: unknown provider `{name}` (write one of {})",
                        known.join(", ")
                    ));
                }
                if *value == 0 {
                    return Err(format!("batch.{field}.{name} must be more than zero"));
                }
            }
            Ok(map.iter().map(|(name, value)| (name.clone(), *value)).collect())
        };
        Ok(crate::lanes::BatchPacing {
            requests_per_minute: check("requests_per_minute", &self.requests_per_minute)?,
            max_queued_requests: check("max_queued_requests", &self.max_queued_requests)?,
        })
    }
}

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read configuration {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid configuration.
    #[error("configuration {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, with the line and column when known.
        message: String,
    },
}

impl Config {
    /// Reads `path`, or the defaults when `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else { return Ok(Config::default()) };
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let invalid = |message: String| ConfigError::Invalid { path: path.into(), message };
        let config: Config = serde_saphyr::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        config.check().map_err(invalid)?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        let mut probe = EngineSettings::new(crate::catalog::Catalog::builtin());
        // `notify` is resolved by `serve` alone: it reads webhook secrets,
        // which `run` (loading the same file) neither needs nor may be able to read.
        self.apply(&mut probe)?;
        if self.sync.concurrency == 0 {
            return Err("sync.concurrency must be at least 1".into());
        }
        self.shutdown.grace()?;
        Ok(())
    }

    /// Applies the file's values over `settings`.
    pub fn apply(&self, settings: &mut EngineSettings) -> Result<(), String> {
        settings.sync = self.sync;
        let set = |target: &mut Duration, value: &Option<String>, name: &str| -> Result<(), String> {
            if let Some(text) = value {
                *target = parse_duration(text).map_err(|e| format!("{name}: {e} (write e.g. `30s`, `10m`)"))?;
            }
            Ok(())
        };
        set(&mut settings.max_safety_margin, &self.fallback.max_safety_margin, "fallback.max_safety_margin")?;
        let set_some = |target: &mut Option<Duration>, value: &Option<String>, name: &str| -> Result<(), String> {
            let mut parsed = target.unwrap_or_default();
            set(&mut parsed, value, name)?;
            if value.is_some() {
                *target = Some(parsed);
            }
            Ok(())
        };
        set_some(
            &mut settings.assumed_sync_latency,
            &self.fallback.assumed_sync_latency,
            "fallback.assumed_sync_latency",
        )?;
        set_some(
            &mut settings.assumed_batch_turnaround,
            &self.fallback.assumed_batch_turnaround,
            "fallback.assumed_batch_turnaround",
        )?;
        set(&mut settings.poll_initial, &self.batch.poll_initial, "batch.poll_initial")?;
        set(&mut settings.poll_max, &self.batch.poll_max, "batch.poll_max")?;
        settings.gather_window = DEFAULT_GATHER_WINDOW;
        set(&mut settings.gather_window, &self.batch.gather_window, "batch.gather_window")?;
        settings.batch_pacing = self.batch.pacing()?;
        if let Some(amount) = self.budget.monthly_usd {
            if !(amount.is_finite() && amount > 0.0) {
                return Err(format!("budget.monthly_usd {amount} is not a positive amount (write e.g. `500`)"));
            }
            settings.global_budget = Some(crate::cost::micros(amount));
        }
        if settings.poll_initial.is_zero() {
            return Err("batch.poll_initial must be longer than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_limits_and_durations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orchestrator.yaml");
        std::fs::write(
            &path,
            "sync: { concurrency: 2, requests_per_minute: 50 }\nfallback: { max_safety_margin: 2m }\n",
        )
        .unwrap();
        let config = Config::load(Some(&path)).unwrap();
        assert_eq!(config.sync.concurrency, 2);
        assert_eq!(config.sync.output_tokens_per_minute, SyncLimits::default().output_tokens_per_minute);
        let mut settings = EngineSettings::new(crate::catalog::Catalog::builtin());
        config.apply(&mut settings).unwrap();
        assert_eq!(settings.max_safety_margin, Duration::from_secs(120));
        assert_eq!(settings.sync.requests_per_minute, 50);
    }

    #[test]
    fn batch_pacing_names_known_providers_and_gathering_defaults_to_two_seconds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orchestrator.yaml");
        let apply = |text: &str| {
            std::fs::write(&path, text).unwrap();
            let mut settings = EngineSettings::new(crate::catalog::Catalog::builtin());
            let config = Config::load(Some(&path)).map_err(|e| e.to_string())?;
            config.apply(&mut settings).map(|()| settings)
        };
        let settings =
            apply("batch: { requests_per_minute: { openai: 20 }, max_queued_requests: { anthropic: 500 } }\n");
        let settings = settings.unwrap();
        assert_eq!(settings.gather_window, DEFAULT_GATHER_WINDOW);
        assert_eq!(settings.batch_pacing.requests_per_minute, [("openai".to_owned(), 20)].into());
        assert_eq!(settings.batch_pacing.max_queued_requests, [("anthropic".to_owned(), 500)].into());
        assert_eq!(apply("batch: { gather_window: 0s }\n").unwrap().gather_window, Duration::ZERO);
        let error = apply("batch: { requests_per_minute: { antropic: 50 } }\n").unwrap_err();
        assert!(
            error.contains("unknown provider `antropic`") && error.contains("anthropic, openai, gemini"),
            "{error}"
        );
        let error = apply("batch: { max_queued_requests: { gemini: 0 } }\n").unwrap_err();
        assert!(error.ends_with("batch.max_queued_requests.gemini must be more than zero"), "{error}");
    }

    #[test]
    fn names_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("orchestrator.yaml");
        std::fs::write(&path, "fallback: { max_safety_margin: soon }\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("orchestrator.yaml") && error.contains("fallback.max_safety_margin"), "{error}");
        std::fs::write(&path, "notify: { webhooks: [{ url_env: ORCHESTRATOR_TEST_UNSET_WEBHOOK }] }\n").unwrap();
        assert!(Config::load(Some(&path)).is_ok(), "loading for `run` reads no webhook secret");
        std::fs::write(&path, "sync: { concurency: 2 }\n").unwrap();
        let error = Config::load(Some(&path)).unwrap_err().to_string();
        assert!(error.contains("concurency"), "{error}");
    }
}
