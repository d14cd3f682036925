//! The seam between the lanes and the providers: one [`Client`] per
//! provider account, with exactly the calls the lanes make, and the set of
//! clients a process has ([`Providers`]).

use std::collections::BTreeMap;

use super::anthropic::AnthropicClient;
use super::gemini::GeminiClient;
use super::openai::OpenAiClient;
use super::{BatchInput, BatchLimits, BatchPage, BatchStatus, MessageReply, ProviderError, ResultsReader};

/// An API key that never shows up in `Debug` output or logs.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> ApiKey {
        ApiKey(key.into())
    }

    /// The key from the environment variable `env`, else the systemd
    /// credential `credential`.
    pub fn from_environment(env: &'static str, credential: &'static str) -> Result<ApiKey, ProviderError> {
        crate::secrets::read(env, credential).map(ApiKey).ok_or(ProviderError::MissingKey { env, credential })
    }

    /// The key, for a request header (marked sensitive there).
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A client of one provider account.
#[derive(Debug, Clone)]
pub enum Client {
    /// Anthropic Messages and Message Batches.
    Anthropic(AnthropicClient),
    /// OpenAI Chat Completions, Files and Batch.
    OpenAi(OpenAiClient),
    /// Gemini generateContent, Files and Batch.
    Gemini(GeminiClient),
}

impl Client {
    /// The provider's name, as manifests write it.
    pub fn provider(&self) -> &'static str {
        match self {
            Client::Anthropic(_) => super::anthropic::NAME,
            Client::OpenAi(_) => super::openai::NAME,
            Client::Gemini(_) => super::gemini::NAME,
        }
    }

    /// The most one batch may hold.
    pub fn batch_limits(&self) -> BatchLimits {
        match self {
            Client::Anthropic(_) => super::anthropic::BATCH_LIMITS,
            Client::OpenAi(_) => super::openai::BATCH_LIMITS,
            Client::Gemini(_) => super::gemini::BATCH_LIMITS,
        }
    }

    /// Calls per minute the batch endpoints take, shared by every run.
    pub fn batch_calls_per_minute(&self) -> u64 {
        match self {
            Client::Anthropic(_) => super::anthropic::BATCH_CALLS_PER_MINUTE,
            Client::OpenAi(_) => super::openai::BATCH_CALLS_PER_MINUTE,
            Client::Gemini(_) => super::gemini::BATCH_CALLS_PER_MINUTE,
        }
    }

    /// The most requests the provider holds in its batch processing queue
    /// across all batches, where it counts requests (else `None`).
    pub fn queued_requests_limit(&self) -> Option<u64> {
        super::queued_requests_limit(self.provider())
    }

    /// Whether the provider keeps a batch's [`BatchInput::tag`], so a batch
    /// whose create answer was lost is found by it; else only by its size
    /// and creation time.
    pub fn keeps_tags(&self) -> bool {
        match self {
            Client::Anthropic(_) => false,
            Client::OpenAi(_) | Client::Gemini(_) => true,
        }
    }

    /// One synchronous call; `params` is the request body the renderer made for this provider.
    pub async fn send_message(&self, params: &str, betas: &[String]) -> Result<MessageReply, ProviderError> {
        match self {
            Client::Anthropic(client) => client.create_message(params, betas).await,
            Client::OpenAi(client) => client.create_chat_completion(params).await,
            Client::Gemini(client) => client.generate_content(params).await,
        }
    }

    /// Creates a batch of `input`'s requests.
    pub async fn create_batch(&self, input: &BatchInput, betas: &[String]) -> Result<BatchStatus, ProviderError> {
        match self {
            Client::Anthropic(client) => client.create_batch(input, betas).await,
            Client::OpenAi(client) => client.create_batch(input).await,
            Client::Gemini(client) => client.create_batch(input).await,
        }
    }

    /// What the provider says about batch `id` now.
    pub async fn retrieve_batch(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        match self {
            Client::Anthropic(client) => client.retrieve_batch(id).await,
            Client::OpenAi(client) => client.retrieve_batch(id).await,
            Client::Gemini(client) => client.retrieve_batch(id).await,
        }
    }

    /// One page of the account's batches, newest first, from `cursor`.
    pub async fn list_batches(&self, cursor: Option<&str>) -> Result<BatchPage, ProviderError> {
        match self {
            Client::Anthropic(client) => client.list_batches(cursor, 100).await,
            Client::OpenAi(client) => client.list_batches(cursor, 100).await,
            Client::Gemini(client) => client.list_batches(cursor, 100).await,
        }
    }

    /// Asks the provider to cancel batch `id`.
    pub async fn cancel_batch(&self, id: &str) -> Result<BatchStatus, ProviderError> {
        match self {
            Client::Anthropic(client) => client.cancel_batch(id).await,
            Client::OpenAi(client) => client.cancel_batch(id).await,
            Client::Gemini(client) => client.cancel_batch(id).await,
        }
    }

    /// Opens the results an ended batch's status pointed at ([`BatchStatus::results`]).
    pub async fn results(&self, results: &str) -> Result<ResultsReader, ProviderError> {
        match self {
            Client::Anthropic(client) => client.results(results).await,
            Client::OpenAi(client) => client.results(results).await,
            Client::Gemini(client) => client.results(results).await,
        }
    }
}

/// The clients of one process, by provider name.
#[derive(Debug, Clone, Default)]
pub struct Providers {
    clients: BTreeMap<&'static str, Client>,
}

impl Providers {
    /// The given clients (one per provider; a later one replaces an earlier).
    pub fn new(clients: impl IntoIterator<Item = Client>) -> Providers {
        Providers { clients: clients.into_iter().map(|client| (client.provider(), client)).collect() }
    }

    /// Every provider, pointed at `orchestrator sim` at `base_url` (it
    /// serves them all on one listener; OpenAI's base includes `/v1`, as
    /// the SDK has it).
    pub fn simulated(base_url: &str, key: &str) -> Result<Providers, ProviderError> {
        Ok(Providers::new([
            Client::Anthropic(super::anthropic::AnthropicClient::new(base_url, ApiKey::new(key))?),
            Client::OpenAi(super::openai::OpenAiClient::new(&format!("{base_url}/v1"), ApiKey::new(key))?),
            Client::Gemini(super::gemini::GeminiClient::new(base_url, ApiKey::new(key))?),
        ]))
    }

    /// The client of `provider`.
    pub fn get(&self, provider: &str) -> Option<&Client> {
        self.clients.get(provider)
    }

    /// Every client.
    pub fn iter(&self) -> impl Iterator<Item = &Client> {
        self.clients.values()
    }

    /// The client of `provider`, or the error the lanes report for a provider without one.
    pub fn client(&self, provider: &str) -> Result<&Client, ProviderError> {
        self.get(provider).ok_or_else(|| ProviderError::NoClient(provider.to_owned()))
    }
}
