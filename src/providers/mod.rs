//! Provider clients behind one seam. The lanes call a [`Client`] and see
//! normalised batches ([`BatchStatus`]), results ([`ResultLine`]) and typed
//! errors ([`ProviderError`]); each provider module keeps its wire format,
//! its limits and its request framing to itself. Providers know nothing of
//! jobs, runs or the store.

pub mod anthropic;
mod batch;
mod client;
mod error;
pub mod gemini;
mod http;
mod lines;
pub mod openai;
mod reply;

pub use batch::{
    BatchInput, BatchLimits, BatchPage, BatchPhase, BatchStatus, LineParser, RequestRows, ResultLine, ResultsReader,
};
pub use client::{ApiKey, Client, Providers};
pub use error::ProviderError;
pub use lines::LineStream;
pub use reply::{MessageReply, Quota, RateLimits};

/// Every provider a manifest may name.
pub const NAMES: [&str; 3] = [anthropic::NAME, openai::NAME, gemini::NAME];

/// The most requests provider `name`'s batch processing queue holds
/// across all batches, where it counts them (its published limit).
pub fn queued_requests_limit(name: &str) -> Option<u64> {
    match name {
        anthropic::NAME => anthropic::QUEUED_REQUESTS_LIMIT,
        openai::NAME => openai::QUEUED_REQUESTS_LIMIT,
        gemini::NAME => gemini::QUEUED_REQUESTS_LIMIT,
        _ => None,
    }
}

/// Where the key of the provider called `name` is looked for: the
/// environment variables (the first set wins) and the credential's file name.
pub fn key_sources(name: &str) -> Option<(&'static [&'static str], &'static str)> {
    match name {
        anthropic::NAME => Some((&[anthropic::KEY_ENV], anthropic::KEY_CREDENTIAL)),
        openai::NAME => Some((&[openai::KEY_ENV], openai::KEY_CREDENTIAL)),
        gemini::NAME => Some((&gemini::KEY_ENVS, gemini::KEY_CREDENTIAL)),
        _ => None,
    }
}

/// Whether this process's environment holds a key for provider `name`.
pub fn key_configured(name: &str) -> bool {
    key_sources(name)
        .is_some_and(|(envs, credential)| envs.iter().any(|env| crate::secrets::read(env, credential).is_some()))
}

/// The batch limits of the provider called `name`, if it is one we speak.
pub fn batch_limits(name: &str) -> Option<BatchLimits> {
    match name {
        anthropic::NAME => Some(anthropic::BATCH_LIMITS),
        openai::NAME => Some(openai::BATCH_LIMITS),
        gemini::NAME => Some(gemini::BATCH_LIMITS),
        _ => None,
    }
}
