//! Lanes: how requests reach a provider. Lanes know nothing of YAML.

pub mod batch;
pub mod limiter;
pub mod retry;
pub mod sync;

pub use batch::{BatchLane, BatchLimits};
pub use sync::{SyncLane, SyncLimits, SyncRequest};
