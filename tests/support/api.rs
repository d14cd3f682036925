//! The provider a test's job uses: the promises are the same for each, so
//! scenarios take an [`Api`] and run once per provider.

use orchestrator::sim::{ProviderStats, SimHandle};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Anthropic,
    OpenAi,
    Gemini,
}

impl Api {
    /// The provider's name in manifests and the simulator's stats.
    pub fn name(self) -> &'static str {
        match self {
            Api::Anthropic => "anthropic",
            Api::OpenAi => "openai",
            Api::Gemini => "gemini",
        }
    }

    /// The manifest lines naming the provider and a cheap model of it.
    pub fn model_lines(self) -> &'static str {
        match self {
            Api::Anthropic => "model: claude-haiku-4-5\n",
            Api::OpenAi => "provider: openai\nmodel: gpt-4o-mini\n",
            Api::Gemini => "provider: gemini\nmodel: gemini-2.5-flash-lite\n",
        }
    }

    /// Rewrites a manifest written for Claude Haiku to this provider.
    pub fn rewrite(self, manifest: &str) -> String {
        manifest.replace("model: claude-haiku-4-5\n", self.model_lines())
    }

    /// The status an overloaded provider answers (the simulator's injected "529").
    pub fn overloaded_status(self) -> i64 {
        match self {
            Api::Anthropic => 529,
            Api::OpenAi | Api::Gemini => 503,
        }
    }

    /// The simulator's counters for this provider's endpoints.
    pub fn stats(self, sim: &SimHandle) -> ProviderStats {
        sim.stats().providers.get(self.name()).cloned().unwrap_or_default()
    }
}
