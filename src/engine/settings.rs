//! How the engine works: the knobs of the lanes and the fallback planner,
//! with defaults that suit real providers.

use std::time::Duration;

use crate::catalog::Catalog;
use crate::lanes::SyncLimits;

/// Latency assumed for a sync call when neither a measurement, nor the
/// configuration, nor the catalog says.
pub(super) const DEFAULT_SYNC_LATENCY: Duration = Duration::from_secs(20);
pub use crate::plan::DEFAULT_BATCH_TURNAROUND;

/// How the engine works; defaults suit real providers.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Models and prices.
    pub catalog: Catalog,
    /// First wait between polls of a batch; it doubles while nothing changes.
    pub poll_initial: Duration,
    /// Longest wait between polls.
    pub poll_max: Duration,
    /// Longest safety margin kept before a deadline (a tenth of the window below that).
    pub max_safety_margin: Duration,
    /// Latency of a sync call to a model with no observed calls yet; `None`:
    /// the catalog's figure for the model.
    pub assumed_sync_latency: Option<Duration>,
    /// How long a batch takes before any of the provider's was seen to end;
    /// `None`: the catalog's `batch_turnaround` for the provider.
    pub assumed_batch_turnaround: Option<Duration>,
    /// Limits of the sync lane, per model.
    pub sync: SyncLimits,
    /// How often to look while the sync lane works for a run (to deliver its results).
    pub sync_tick: Duration,
    /// Longest wait between ticks when nothing is due.
    pub idle_tick: Duration,
    /// The monthly cap of all jobs together, in micro-dollars.
    pub global_budget: Option<crate::cost::Micros>,
    /// How long a run ready for the batch lane waits for others to share its
    /// batch with (never past its fallback instant); zero submits at once,
    /// shared with whatever else is ready in the same tick.
    pub gather_window: Duration,
    /// The batch endpoints' pace and queue limits, per provider, where the
    /// configuration overrides the provider's published figures.
    pub batch_pacing: crate::lanes::BatchPacing,
}

impl EngineSettings {
    /// The default longest safety margin before a deadline.
    pub const DEFAULT_MAX_SAFETY_MARGIN: Duration = crate::plan::DEFAULT_MAX_SAFETY_MARGIN;

    /// Defaults for real providers.
    pub fn new(catalog: Catalog) -> EngineSettings {
        EngineSettings {
            catalog,
            poll_initial: Duration::from_secs(10),
            poll_max: Duration::from_secs(300),
            max_safety_margin: Self::DEFAULT_MAX_SAFETY_MARGIN,
            assumed_sync_latency: None,
            assumed_batch_turnaround: None,
            sync: SyncLimits::default(),
            sync_tick: Duration::from_secs(1),
            idle_tick: Duration::from_secs(60),
            global_budget: None,
            gather_window: Duration::ZERO,
            batch_pacing: crate::lanes::BatchPacing::default(),
        }
    }
}
