//! Why the engine stopped short: the error every engine step returns.

use super::deliver::DeliverError;
use super::prepare::PrepareError;
use crate::lanes::batch::LaneError;
use crate::render::RenderError;
use crate::store::StoreError;

/// Why a run stopped before it was done. The run stays open; running it again resumes it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The run could not be prepared.
    #[error(transparent)]
    Prepare(#[from] PrepareError),
    /// The lane failed.
    #[error(transparent)]
    Lane(#[from] LaneError),
    /// Delivery failed.
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The run could not be identified.
    #[error(transparent)]
    Render(#[from] RenderError),
}
