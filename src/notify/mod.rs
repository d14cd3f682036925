//! Alerts: a task beside the engine that watches the store for what
//! deserves attention and tells people, through webhooks (Slack-compatible
//! JSON) and/or a command.
//!
//! It never blocks the engine: it reads through a connection of its own,
//! every delivery runs in a task of its own with its own timeout and
//! retries, and each target has its own few slots, so a dead receiver only
//! delays alerts to itself. The one write per delivery (its `alert_sent` or
//! `alert_failed` event) goes through the engine's connection: a second
//! writing connection could make one of the engine's read-then-write
//! transactions fail with a stale snapshot. Each alert has a key (one per event per run, or per
//! day or month); once it is recorded as `alert_sent` for a target it is
//! never sent there again, across restarts. A delivery that exhausts its
//! retries is recorded as `alert_failed` and not tried again by this
//! process. A crash between a delivery and its record can send it twice:
//! at least once beats never.

mod alert;
pub mod config;
mod detect;
mod send;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use chrono::Duration;
use serde_json::json;

pub use alert::Alert;
pub use config::{NotifyConfig, NotifySettings};
use detect::{Context, Detector};

use crate::engine::Engine;
use crate::store::SharedStore;

/// How many tries may be in flight at once to one target.
const SLOTS_PER_TARGET: usize = 4;

/// How far back recorded alerts are loaded for deduplication (keys carry
/// their day or month, so older ones cannot recur).
const SENT_MEMORY_DAYS: i64 = 40;

/// `(alert key, target label)`.
type Slot = (String, String);

/// The notifier's shared state.
struct Notifier {
    settings: NotifySettings,
    engine: Arc<Engine>,
    /// A read connection of its own.
    store: SharedStore,
    client: reqwest::Client,
    /// Sent (recorded), given up, or being delivered: not to start again.
    taken: Mutex<HashSet<Slot>>,
    /// Per target (same order as `settings.targets`).
    slots: Vec<Arc<tokio::sync::Semaphore>>,
}

/// The notifier as the daemon runs it: its settings and a read connection of its own.
pub struct Service {
    /// Targets, rules, retries.
    pub settings: NotifySettings,
    /// A connection for the notifier alone (it only reads).
    pub store: SharedStore,
}

impl Service {
    /// Scans every `check_every` and delivers what is new, until `stop` is
    /// cancelled; deliveries under way are left to their own timeouts.
    pub async fn run(self, engine: Arc<Engine>, stop: tokio_util::sync::CancellationToken) {
        tokio::select! {
            () = run(self.settings, engine, self.store) => {}
            () = stop.cancelled() => {}
        }
    }
}

/// Runs until aborted: scans every `check_every`, delivers what is new.
/// `store` must be a connection of its own (it is only read).
pub async fn run(settings: NotifySettings, engine: Arc<Engine>, store: SharedStore) {
    let notifier = match start(settings, engine, store).await {
        Ok(notifier) => Arc::new(notifier),
        Err(error) => {
            tracing::error!(%error, "alerts are off: the notifier could not read the state database");
            return;
        }
    };
    let now = notifier.engine.clock().now();
    // Sums over a day or a month run at most every six scans (and at least once a minute).
    let totals_every = Duration::from_std(notifier.settings.check_every.saturating_mul(6))
        .unwrap_or(Duration::MAX)
        .min(Duration::minutes(1));
    let mut detector = match notifier.store.call(move |s| Detector::start(s, now, totals_every)).await {
        Ok(detector) => detector,
        Err(error) => return tracing::error!(%error, "alerts are off: cannot read the event log"),
    };
    loop {
        detector = notifier.round(detector).await;
        notifier.engine.clock().sleep(notifier.settings.check_every).await;
    }
}

async fn start(settings: NotifySettings, engine: Arc<Engine>, store: SharedStore) -> Result<Notifier, String> {
    let since = engine.clock().now() - Duration::days(SENT_MEMORY_DAYS);
    let sent = store.call(move |s| s.sent_alerts_since(since)).await.map_err(|e| e.to_string())?;
    let client = reqwest::Client::builder().build().map_err(|e| e.to_string())?;
    tracing::info!(targets = settings.targets.len(), "alerts on");
    let slots = settings.targets.iter().map(|_| Arc::new(tokio::sync::Semaphore::new(SLOTS_PER_TARGET))).collect();
    Ok(Notifier { settings, engine, store, client, taken: Mutex::new(sent), slots })
}

impl Notifier {
    /// One scan: detects, then starts a delivery for each new (alert, target).
    async fn round(self: &Arc<Self>, detector: Detector) -> Detector {
        let now = self.engine.clock().now();
        let totals = detector.totals_due_by(now);
        let jobs = self.engine.jobs();
        let rules = self.settings.rules.clone();
        let (digest, global_budget) = (self.settings.digest, self.engine.settings().global_budget);
        let scanned = self
            .store
            .call(move |s| {
                let mut detector = detector;
                let context = Context { rules: &rules, jobs: &jobs, global_budget, digest };
                let alerts = detector.scan(s, &context, now)?;
                Ok((detector, alerts))
            })
            .await;
        match scanned {
            Ok((detector, alerts)) => {
                let found = alerts.len();
                let started: usize = alerts.into_iter().map(|alert| self.dispatch(alert)).sum();
                // Evidence for operators (and tests) that a scan ran and what it decided.
                tracing::debug!(found, started, totals, "alert scan");
                detector
            }
            Err(error) => {
                tracing::warn!(%error, "alert scan failed; trying again");
                detector
            }
        }
    }

    /// Starts a delivery to each target that has not had `alert`; how many started.
    fn dispatch(self: &Arc<Self>, alert: Alert) -> usize {
        let alert = Arc::new(alert);
        let mut started = 0;
        for target in 0..self.settings.targets.len() {
            let slot = (alert.key.clone(), self.settings.targets[target].label().to_owned());
            if !self.taken.lock().unwrap_or_else(|p| p.into_inner()).insert(slot) {
                continue;
            }
            let (notifier, alert) = (Arc::clone(self), Arc::clone(&alert));
            tokio::spawn(async move { notifier.deliver(target, alert).await });
            started += 1;
        }
        started
    }

    async fn deliver(&self, index: usize, alert: Arc<Alert>) {
        let target = &self.settings.targets[index];
        let policy = send::Policy {
            retries: self.settings.retries,
            backoff: self.settings.retry_backoff,
            timeout: self.settings.timeout,
        };
        let outcome = send::deliver(&self.client, target, &self.slots[index], &alert, policy).await;
        let mut detail = json!({ "key": alert.key, "alert": alert.kind, "target": target.label(), "text": alert.text });
        let kind = match &outcome {
            Ok(tries) => {
                tracing::info!(target = target.label(), alert = %alert.key, "alert sent");
                detail["tries"] = json!(tries);
                "alert_sent"
            }
            Err((tries, error)) => {
                tracing::error!(target = target.label(), alert = %alert.key, %error, "alert not delivered; giving up");
                detail["tries"] = json!(tries);
                detail["error"] = json!(error);
                "alert_failed"
            }
        };
        let (run_id, job, now) = (alert.run_id, alert.job.clone(), self.engine.clock().now());
        let recorded =
            self.engine.store().call(move |s| s.record_event(run_id, job.as_deref(), kind, &detail, now)).await;
        if let Err(error) = recorded {
            tracing::error!(%error, alert = %alert.key, "cannot record the alert's outcome");
        }
    }
}
