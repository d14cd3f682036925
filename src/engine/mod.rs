//! The engine: the life of a run, from items to delivered results, across
//! the batch lane, the fallback planner and the sync lane.

mod deliver;
mod driver;
mod error;
mod failover;
mod fallback;
mod finish;
mod gather;
mod poll;
mod prepare;
mod queue;
mod settings;
mod stage;

pub use deliver::{DeliverError, deliver_pending};
use driver::max_attempts;
pub use driver::{Engine, until};
pub use error::EngineError;
pub use finish::RunOutcome;
pub use prepare::{PrepareError, read_run_items};
pub use queue::{FlushReason, QueueLook, due_flush, next_flush};
pub use settings::{DEFAULT_BATCH_TURNAROUND, EngineSettings};
pub use stage::{read_stage_items, stage_upstream_run};
