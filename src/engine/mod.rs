//! The engine: the life of a run, from items to delivered results.

mod deliver;
mod prepare;
mod run;

pub use prepare::{PrepareError, read_run_items};
pub use run::{RunOutcome, RunSettings, run_to_completion};
