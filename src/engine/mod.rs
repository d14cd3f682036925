//! The engine: the life of a run, from items to delivered results, across
//! the batch lane, the fallback planner and the sync lane.

mod deliver;
mod driver;
mod finish;
mod prepare;

pub use driver::{DEFAULT_BATCH_TURNAROUND, Engine, EngineSettings, until};
pub use finish::{EngineError, RunOutcome};
pub use prepare::{PrepareError, read_run_items};
