//! Named crash points for crash tests: with `ORCHESTRATOR_FAILPOINT=name`
//! the process kills itself with SIGKILL when it reaches `name`, exactly as
//! a power cut or `kill -9` would stop it. Unset, this costs one lookup.

use std::sync::OnceLock;

/// Points where a crash is most likely to lose or duplicate work, on the way
/// of a run whose batch ends.
pub const POINTS: &[&str] = &["mid_prepare", "after_intent", "after_create", "mid_ingest", "after_sink_write"];

/// Points on the way of a run that falls back to the sync lane: the
/// fallback committed, its batch's cancel recorded, the first sync result stored.
pub const FALLBACK_POINTS: &[&str] = &["after_fallback_started", "after_cancel_requested", "mid_sync_fallback"];

/// The point after a run's failover to another provider was committed.
pub const FAILOVER_POINT: &str = "after_failover_started";

/// The point after a follow-up batch (of retryable requests) was submitted.
pub const FOLLOW_UP_POINT: &str = "after_followup_submit";

/// Kills the process with SIGKILL if `ORCHESTRATOR_FAILPOINT` names `point`.
pub fn hit(point: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("ORCHESTRATOR_FAILPOINT").ok());
    if armed.as_deref() == Some(point) {
        tracing::warn!(point, "failpoint reached: killing the process");
        let pid = std::process::id().to_string();
        let _ = std::process::Command::new("kill").args(["-9", &pid]).status();
        std::process::abort();
    }
}
