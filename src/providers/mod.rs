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

/// The batch limits of the provider called `name`, if it is one we speak.
pub fn batch_limits(name: &str) -> Option<BatchLimits> {
    match name {
        anthropic::NAME => Some(anthropic::BATCH_LIMITS),
        openai::NAME => Some(openai::BATCH_LIMITS),
        gemini::NAME => Some(gemini::BATCH_LIMITS),
        _ => None,
    }
}
