//! What a synchronous call returns, whichever provider answered.

use crate::outcome::Outcome;

/// What a synchronous call returned.
#[derive(Debug, Clone, PartialEq)]
pub struct MessageReply {
    /// The message (always `Succeeded`; errors come back as `ProviderError`).
    pub outcome: Outcome,
    /// The provider's request id.
    pub request_id: Option<String>,
    /// What the rate-limit headers said.
    pub rate_limits: RateLimits,
}

/// One quota of the rate-limit headers: its size, what is left, when it refills.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    /// Units per minute.
    pub limit: Option<u64>,
    /// Units left now.
    pub remaining: Option<u64>,
    /// When the quota is full again (a provider that says when).
    pub reset: Option<chrono::DateTime<chrono::Utc>>,
    /// How long until the quota is full again (a provider that says how long).
    pub reset_in: Option<std::time::Duration>,
}

impl Quota {
    /// When the quota is full again, `now` being when the answer came.
    pub fn reset_at(&self, now: chrono::DateTime<chrono::Utc>) -> Option<chrono::DateTime<chrono::Utc>> {
        self.reset.or_else(|| Some(now + chrono::Duration::from_std(self.reset_in?).ok()?))
    }
}

/// The rate-limit headers of a response, by what they limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimits {
    /// Requests.
    pub requests: Quota,
    /// Input tokens (all tokens, for a provider that counts them together).
    pub input_tokens: Quota,
    /// Output tokens.
    pub output_tokens: Quota,
}
