//! Lanes: how requests reach a provider. Lanes know nothing of YAML.

pub mod batch;
pub mod limiter;
pub mod pacer;
pub mod retry;
pub mod sync;
pub mod window;

pub use batch::{BatchLane, BatchLimits, BatchPacing};
pub use sync::{SyncLane, SyncLimits, SyncRequest};

use chrono::{DateTime, Utc};

use crate::providers::ProviderError;
use crate::store::NewAttempt;

/// The attempts-log row of a provider call that ended with `result`;
/// `ok_request_id` is the `request-id` of a successful answer, when the
/// caller has it (errors carry their own).
pub(crate) fn ended_attempt(
    started: NewAttempt,
    finished_at: DateTime<Utc>,
    failure: Option<&ProviderError>,
    ok_request_id: Option<String>,
) -> NewAttempt {
    let (http_status, error_type, error_message, request_id) = match failure {
        None => (None, None, None, ok_request_id),
        Some(ProviderError::Api { status, error_type, message, request_id, .. }) => {
            (Some(*status), Some(error_type.clone()), Some(message.clone()), request_id.clone())
        }
        Some(other) => (None, Some(other.kind()), Some(other.to_string()), None),
    };
    NewAttempt { finished_at, http_status, error_type, error_message, request_id, ..started }
}
