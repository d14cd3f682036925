//! Lanes: how requests reach a provider. Lanes know nothing of YAML.

pub mod batch;
pub mod retry;

pub use batch::{BatchLane, BatchLimits};
