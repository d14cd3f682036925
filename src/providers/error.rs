//! Provider errors, typed by what the caller should do about them.

use std::time::Duration;

/// A failed provider call.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with an error status.
    #[error("{status} {error_type}: {message} (request-id {})", .request_id.as_deref().unwrap_or("none"))]
    Api {
        /// HTTP status.
        status: u16,
        /// The provider's error type (`rate_limit_error`, ...), or `http_<status>` when the body had none.
        error_type: String,
        /// The provider's message.
        message: String,
        /// The `request-id` header.
        request_id: Option<String>,
        /// The wait the provider asked for (`retry-after`).
        retry_after: Option<Duration>,
    },
    /// The connection failed or timed out.
    #[error("transport error: {0}")]
    Transport(String),
    /// The provider's answer could not be understood.
    #[error("malformed response: {0}")]
    Malformed(String),
    /// No credentials were found.
    #[error("no API key: set {env} or put the key in $CREDENTIALS_DIRECTORY/{credential} (systemd LoadCredential=)")]
    MissingKey {
        /// Environment variable.
        env: &'static str,
        /// Credential file name.
        credential: &'static str,
    },
    /// The process has no client for this provider (no key was configured when it started).
    #[error("no client for provider `{0}`: configure its API key and restart")]
    NoClient(String),
}

impl ProviderError {
    /// Whether the same call may succeed later: 408, 409, 429, 5xx and 529,
    /// transport errors and malformed answers. 400, 401, 403, 404, 413 are permanent.
    pub fn is_retryable(&self) -> bool {
        match self {
            ProviderError::Api { status, error_type, .. } => {
                // A 429 that says the account is out of credit is no backpressure.
                matches!(status, 408 | 409 | 429 | 500..=599) && error_type != "billing_error"
            }
            ProviderError::Transport(_) | ProviderError::Malformed(_) => true,
            ProviderError::MissingKey { .. } | ProviderError::NoClient(_) => false,
        }
    }

    /// Whether the provider refused the call to slow us down rather than
    /// because of the request: a 429, a 529 or `overloaded_error`, or any
    /// answer that says when to come back (`retry-after`). Backpressure is
    /// waited out; it never uses up a request's attempts.
    pub fn is_backpressure(&self) -> bool {
        match self {
            ProviderError::Api { status, error_type, retry_after, .. } => {
                (matches!(status, 429 | 529) && error_type != "billing_error")
                    || crate::outcome::is_backpressure_error_type(error_type)
                    || (retry_after.is_some() && self.is_retryable())
            }
            _ => false,
        }
    }

    /// Whether the call may have taken effect at the provider although it
    /// failed: everything but a 429 or 529, which refuse a call before it
    /// runs. A lost answer to a create call may hide a created batch.
    pub fn may_have_taken_effect(&self) -> bool {
        !matches!(
            self,
            ProviderError::Api { status: 429 | 529, .. }
                | ProviderError::MissingKey { .. }
                | ProviderError::NoClient(_)
        )
    }

    /// The wait the provider asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// A short type for logs, events and metrics.
    pub fn kind(&self) -> String {
        match self {
            ProviderError::Api { error_type, .. } => error_type.clone(),
            ProviderError::Transport(_) => "transport_error".to_owned(),
            ProviderError::Malformed(_) => "malformed_response".to_owned(),
            ProviderError::MissingKey { .. } => "missing_key".to_owned(),
            ProviderError::NoClient(_) => "no_client".to_owned(),
        }
    }
}

impl From<reqwest::Error> for ProviderError {
    fn from(err: reqwest::Error) -> Self {
        // reqwest's Display never includes headers, so the key cannot leak here.
        ProviderError::Transport(err.without_url().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16) -> ProviderError {
        answer(status, "x", None)
    }

    fn answer(status: u16, error_type: &str, retry_after: Option<u64>) -> ProviderError {
        ProviderError::Api {
            status,
            error_type: error_type.into(),
            message: String::new(),
            request_id: None,
            retry_after: retry_after.map(Duration::from_secs),
        }
    }

    #[test]
    fn retryable_and_permanent_statuses() {
        for status in [408, 409, 429, 500, 504, 529] {
            assert!(api(status).is_retryable(), "{status}");
        }
        for status in [400, 401, 403, 404, 413] {
            assert!(!api(status).is_retryable(), "{status}");
        }
        assert!(ProviderError::Transport("timeout".into()).is_retryable());
    }

    #[test]
    fn backpressure_is_a_429_a_529_an_overload_or_anything_with_retry_after() {
        assert!(api(429).is_backpressure());
        assert!(api(529).is_backpressure());
        let overloaded = answer(503, "overloaded_error", None);
        assert!(overloaded.is_backpressure());
        let told_to_wait = answer(500, "api_error", Some(3));
        assert!(told_to_wait.is_backpressure());
        // The request's own failures count as attempts.
        assert!(!api(500).is_backpressure());
        assert!(!ProviderError::Transport("timeout".into()).is_backpressure());
        assert!(!ProviderError::Malformed("cut".into()).is_backpressure());
        // A permanent refusal stays permanent even with a retry-after.
        let refused = answer(400, "invalid_request_error", Some(3));
        assert!(!refused.is_backpressure());
    }
}
