//! Counters of what the simulator has seen, served at `GET /_sim/stats`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What the simulator has seen so far. Tests use it to prove, for example,
/// that no `custom_id` was submitted in two batches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SimStats {
    /// Batches created (`POST /v1/messages/batches` that returned 200).
    pub batches_created: u64,
    /// Requests in all created batches (sum of batch sizes).
    pub requests_received: u64,
    /// Messages answered by `POST /v1/messages` (200 responses).
    pub messages_calls: u64,
    /// Batches that received a cancel while still processing.
    pub batches_canceled: u64,
    /// Batches deleted.
    pub batches_deleted: u64,
    /// Calls per endpoint, keyed `"METHOD /path/{id}"`, counted before auth and faults.
    pub endpoint_calls: BTreeMap<String, u64>,
    /// `custom_id`s that appeared in more than one created batch.
    pub custom_ids_submitted_more_than_once: u64,
    /// Injected faults by kind: `"429"`, `"529"`, `"500"`, `"truncated_results"`.
    pub faults_injected: BTreeMap<String, u64>,
    /// API calls whose body came chunked, without a `Content-Length` (the
    /// SDKs always send one, and some proxies refuse chunked uploads).
    pub chunked_bodies: u64,
    /// The same counters per provider (`anthropic`, `openai`); the fields
    /// above add them up.
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderStats>,
}

/// What one provider's endpoints have seen.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderStats {
    /// Batches created.
    pub batches_created: u64,
    /// Requests in all created batches.
    pub requests_received: u64,
    /// Synchronous calls answered.
    pub messages_calls: u64,
    /// Batches that received a cancel while still running.
    pub batches_canceled: u64,
    /// Files uploaded (OpenAI).
    pub files_uploaded: u64,
}

impl SimStats {
    /// The counters of `provider`.
    pub(crate) fn of(&mut self, provider: &str) -> &mut ProviderStats {
        self.providers.entry(provider.to_owned()).or_default()
    }

    /// Counts one call of `endpoint`.
    pub(crate) fn call(&mut self, endpoint: String) {
        *self.endpoint_calls.entry(endpoint).or_default() += 1;
    }

    /// Counts one injected fault of `kind`.
    pub(crate) fn fault(&mut self, kind: &str) {
        *self.faults_injected.entry(kind.to_owned()).or_default() += 1;
    }
}
