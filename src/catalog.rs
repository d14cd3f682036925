//! The model catalog: providers, models, lanes, betas and list prices.
//!
//! The catalog is data (`catalog/models.yaml`, compiled in as the default)
//! so prices and models can change without a rebuild.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::manifest::Lane;

/// The catalog compiled into the binary.
pub const BUILTIN: &str = include_str!("../catalog/models.yaml");

/// Why a catalog could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The file could not be read.
    #[error("cannot read model catalog {path}")]
    Read {
        /// The catalog file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid catalog.
    #[error("model catalog {path} is invalid: {message}")]
    Parse {
        /// The catalog file.
        path: PathBuf,
        /// serde-saphyr's rendering, with line and column.
        message: String,
    },
}

/// Every provider the orchestrator knows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// Providers by name (`anthropic`).
    pub providers: BTreeMap<String, Provider>,
}

/// One provider's models and lane rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// Fraction of the list price charged in the batch lane (0.5 = half).
    pub batch_discount: f64,
    /// How long the provider keeps a batch before its requests expire.
    pub batch_expiry: String,
    /// How long a small batch is expected to take, before any was seen to end.
    #[serde(default)]
    pub batch_turnaround: Option<String>,
    /// Betas and the lanes that allow them.
    #[serde(default)]
    pub betas: BTreeMap<String, Beta>,
    /// Models by canonical id.
    pub models: BTreeMap<String, Model>,
}

/// A beta header value and where it may be used.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Beta {
    /// Lanes that accept the beta.
    pub lanes: Vec<Lane>,
    /// Output limit the beta raises `max_tokens` to, for `models`.
    #[serde(default)]
    pub max_output_tokens: Option<u32>,
    /// Models the raised limit applies to (all when empty).
    #[serde(default)]
    pub models: Vec<String>,
}

/// One model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Model {
    /// Other names that resolve to this model.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Whether the batch API accepts the model.
    pub batch: bool,
    /// Output limit in both lanes without betas.
    pub max_output_tokens: u32,
    /// Synchronous list prices.
    pub prices: Prices,
    /// Whether the prices come from secondary sources only (shown with the figures that use them).
    #[serde(default)]
    pub prices_unverified: bool,
    /// What one synchronous call is assumed to take before any was measured.
    #[serde(default)]
    pub latency: Option<Latency>,
}

/// A slow synchronous call: the first token, then the output at a rate.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Latency {
    /// Time to the first token, in milliseconds.
    pub first_token_ms: u64,
    /// Output tokens per second after the first.
    pub output_tokens_per_second: f64,
}

impl Model {
    /// The catalog's latency of a call answering `output_tokens`, if it has one.
    pub fn sync_latency(&self, output_tokens: f64) -> Option<std::time::Duration> {
        let latency = self.latency?;
        let streaming = output_tokens.max(0.0) / latency.output_tokens_per_second.max(1.0);
        Some(std::time::Duration::from_millis(latency.first_token_ms) + std::time::Duration::from_secs_f64(streaming))
    }
}

/// List prices in US dollars per million tokens.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    /// Uncached input tokens.
    pub input: f64,
    /// Output tokens.
    pub output: f64,
    /// Cache writes with a 5-minute TTL.
    pub cache_write_5m: f64,
    /// Cache writes with a 1-hour TTL.
    pub cache_write_1h: f64,
    /// Cache reads.
    pub cache_read: f64,
}

impl Catalog {
    /// The catalog compiled into the binary.
    pub fn builtin() -> Catalog {
        Catalog::parse(BUILTIN, Path::new("<builtin catalog>"))
            .expect("the built-in catalog is valid (a unit test checks it)")
    }

    /// Loads `path`, or the built-in catalog when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Catalog, CatalogError> {
        let Some(path) = path else {
            return Ok(Catalog::builtin());
        };
        let text =
            std::fs::read_to_string(path).map_err(|source| CatalogError::Read { path: path.to_owned(), source })?;
        Catalog::parse(&text, path)
    }

    fn parse(text: &str, path: &Path) -> Result<Catalog, CatalogError> {
        let catalog: Catalog = serde_saphyr::from_str(text)
            .map_err(|err| CatalogError::Parse { path: path.to_owned(), message: err.without_snippet().to_string() })?;
        for (name, provider) in &catalog.providers {
            let durations = [
                ("batch_expiry", Some(&provider.batch_expiry)),
                ("batch_turnaround", provider.batch_turnaround.as_ref()),
            ];
            for (field, text) in durations {
                if let Some(text) = text
                    && let Err(reason) = crate::manifest::parse_duration(text)
                {
                    let message = format!(
                        "providers.{name}.{field}: `{text}` is not a duration ({reason}); write e.g. `10m` or `24h`"
                    );
                    return Err(CatalogError::Parse { path: path.to_owned(), message });
                }
            }
        }
        Ok(catalog)
    }

    /// Finds a model by id or alias; returns its canonical id and entry.
    pub fn model(&self, provider: &str, name: &str) -> Option<(&str, &Model)> {
        let models = &self.providers.get(provider)?.models;
        models
            .iter()
            .find(|(id, model)| *id == name || model.aliases.iter().any(|alias| alias == name))
            .map(|(id, model)| (id.as_str(), model))
    }

    /// The provider and canonical id of `name` (an id or alias) on any
    /// provider but `except`; `Err` lists the providers when it is on more
    /// than one.
    pub fn model_elsewhere(&self, name: &str, except: &str) -> Result<Option<(&str, &str)>, Vec<&str>> {
        let found: Vec<(&str, &str)> = self
            .providers
            .keys()
            .filter(|provider| *provider != except)
            .filter_map(|provider| self.model(provider, name).map(|(id, _)| (provider.as_str(), id)))
            .collect();
        match found.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(*one)),
            many => Err(many.iter().map(|(provider, _)| *provider).collect()),
        }
    }

    /// Every model id and alias of a provider, for suggestions.
    pub fn model_names(&self, provider: &str) -> Vec<&str> {
        let Some(entry) = self.providers.get(provider) else {
            return Vec::new();
        };
        entry
            .models
            .iter()
            .flat_map(|(id, model)| std::iter::once(id.as_str()).chain(model.aliases.iter().map(String::as_str)))
            .collect()
    }
}

impl Provider {
    /// How long a small batch is expected to take (`batch_turnaround`), if the catalog says.
    pub fn batch_turnaround(&self) -> Option<std::time::Duration> {
        self.batch_turnaround.as_deref().and_then(|text| crate::manifest::parse_duration(text).ok())
    }

    /// The output limit for `model` in `lane` with the job's `betas`.
    pub fn max_output_tokens(&self, model_id: &str, model: &Model, lane: Lane, betas: &[String]) -> u32 {
        betas
            .iter()
            .filter_map(|name| self.betas.get(name))
            .filter(|beta| beta.lanes.contains(&lane))
            .filter(|beta| beta.models.is_empty() || beta.models.iter().any(|m| m == model_id))
            .filter_map(|beta| beta.max_output_tokens)
            .fold(model.max_output_tokens, u32::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_catalog_parses_and_resolves_aliases() {
        let catalog = Catalog::builtin();
        let (id, model) = catalog.model("anthropic", "sonnet").unwrap();
        assert_eq!(id, "claude-sonnet-4-6");
        assert!(model.batch);
        assert_eq!(model.prices.input, 3.0);
        assert!(catalog.model("anthropic", "gpt-4o").is_none());
        assert!(catalog.model("openai", "sonnet").is_none());
        let (id, mini) = catalog.model("openai", "gpt-4o-mini").unwrap();
        assert_eq!((id, mini.prices.input, mini.prices.cache_read), ("gpt-4o-mini", 0.15, 0.075));
        assert!(mini.prices_unverified, "PROVIDERS.md 5.2 calls OpenAI's prices unverified");
        for model in ["gpt-4o-mini", "gpt-4o", "gpt-4.1", "gpt-4.1-mini", "gpt-5"] {
            assert!(catalog.model("openai", model).is_some_and(|(_, m)| m.batch && m.latency.is_some()), "{model}");
        }
        for model in ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"] {
            let (_, found) = catalog.model("gemini", model).unwrap_or_else(|| panic!("{model}"));
            assert!(found.batch && found.latency.is_some() && found.prices_unverified, "{model}");
        }
        assert_eq!(catalog.providers["gemini"].batch_expiry, "48h");
    }

    #[test]
    fn planning_figures_are_in_the_catalog() {
        let catalog = Catalog::builtin();
        let provider = &catalog.providers["anthropic"];
        assert_eq!(provider.batch_turnaround(), Some(std::time::Duration::from_secs(600)));
        let (_, haiku) = catalog.model("anthropic", "haiku").unwrap();
        // 0.8 s to the first token, then 100 tokens at 100 per second.
        assert_eq!(haiku.sync_latency(100.0), Some(std::time::Duration::from_millis(1800)));
        for (id, model) in &provider.models {
            assert!(model.latency.is_some(), "{id} has a latency for the planner");
        }
    }

    #[test]
    fn the_300k_beta_raises_the_limit_only_in_the_batch_lane() {
        let catalog = Catalog::builtin();
        let provider = &catalog.providers["anthropic"];
        let (id, model) = catalog.model("anthropic", "claude-opus-4-6").unwrap();
        let betas = vec!["output-300k-2026-03-24".to_owned()];
        assert_eq!(provider.max_output_tokens(id, model, Lane::Batch, &betas), 300_000);
        assert_eq!(provider.max_output_tokens(id, model, Lane::Sync, &betas), 128_000);
        let (haiku_id, haiku) = catalog.model("anthropic", "haiku").unwrap();
        assert_eq!(provider.max_output_tokens(haiku_id, haiku, Lane::Batch, &betas), 64_000);
    }

    #[test]
    fn a_user_catalog_with_an_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prices.yaml");
        std::fs::write(&path, "providers:\n  anthropic:\n    batch_discount: half\n").unwrap();
        let err = Catalog::load(Some(&path)).unwrap_err().to_string();
        assert!(err.contains("prices.yaml"), "{err}");
    }
}
