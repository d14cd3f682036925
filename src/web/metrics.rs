//! `/metrics` in the Prometheus (OpenMetrics) text format. The store is the
//! source of truth, so every scrape builds a fresh registry from it: the
//! figures survive restarts, and counters only grow because stored rows
//! are never deleted.

use std::sync::atomic::AtomicU64;

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::status::LeaderStatus;
use crate::store::MetricFigures;

/// The content type of the OpenMetrics text format, which Prometheus scrapes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Batch turnaround buckets, seconds: one minute to the 24-hour limit.
const TURNAROUND_BUCKETS: &[f64] = &[60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    job: String,
    lane: String,
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    job: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

pub use crate::lanes::batch::BatchEndpoints;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    lane: String,
    error_type: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MoneyLabels {
    job: String,
    provider: String,
    lane: String,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// The figures as OpenMetrics text.
pub fn encode(
    figures: &MetricFigures,
    endpoints: &[BatchEndpoints],
    leader: Option<&LeaderStatus>,
    now: DateTime<Utc>,
) -> String {
    let mut registry = Registry::with_prefix("orchestrator");
    requests(&mut registry, figures);
    turnaround(&mut registry, figures);
    per_job(&mut registry, "fallbacks", "Runs whose sync fallback engaged", &figures.fallbacks);
    per_job(&mut registry, "deadline_misses", "Runs that missed their deadline", &figures.deadline_misses);
    provider_errors(&mut registry, figures);
    spend(&mut registry, &figures.spend_usd);
    savings(&mut registry, &figures.savings_usd);
    gauges(&mut registry, figures, now);
    batch_endpoints(&mut registry, figures, endpoints);
    queued_items(&mut registry, figures, now);
    leadership(&mut registry, leader);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

fn requests(registry: &mut Registry, figures: &MetricFigures) {
    let family = Family::<RequestLabels, Gauge>::default();
    for row in &figures.requests {
        let [job, lane, state] = row.labels.clone();
        family.get_or_create(&RequestLabels { job, lane, state }).set(row.value as i64);
    }
    registry.register("requests", "Stored requests by job, lane and state", family);
}

fn turnaround(registry: &mut Registry, figures: &MetricFigures) {
    let histogram = Histogram::new(TURNAROUND_BUCKETS.iter().copied());
    for secs in &figures.turnarounds_secs {
        histogram.observe(*secs);
    }
    registry.register_with_unit(
        "batch_turnaround",
        "Batch submission to end at the provider",
        Unit::Seconds,
        histogram,
    );
}

fn per_job(registry: &mut Registry, name: &str, help: &str, rows: &[crate::store::Labelled<1>]) {
    let family = Family::<JobLabels, Counter>::default();
    for row in rows {
        family.get_or_create(&JobLabels { job: row.labels[0].clone() }).inc_by(row.value as u64);
    }
    registry.register(name, help, family);
}

fn provider_errors(registry: &mut Registry, figures: &MetricFigures) {
    let family = Family::<ErrorLabels, Counter>::default();
    for row in &figures.provider_errors {
        let [lane, error_type] = row.labels.clone();
        family.get_or_create(&ErrorLabels { lane, error_type }).inc_by(row.value as u64);
    }
    registry.register("provider_errors", "Failed provider calls and errored results, by lane and type", family);
}

fn spend(registry: &mut Registry, rows: &[crate::store::Labelled<3>]) {
    let family = Family::<MoneyLabels, FloatCounter>::default();
    for row in rows {
        let [job, provider, lane] = row.labels.clone();
        family.get_or_create(&MoneyLabels { job, provider, lane }).inc_by(row.value.max(0.0));
    }
    registry.register_with_unit("spend", "Charged, by job, provider and lane", Unit::Other("usd".into()), family);
}

/// A gauge, not a counter: a duplicate result (charged, saving nothing)
/// lowers the savings, and a counter that drops reads as a reset.
fn savings(registry: &mut Registry, rows: &[crate::store::Labelled<3>]) {
    let family = Family::<MoneyLabels, FloatGauge>::default();
    for row in rows {
        let [job, provider, lane] = row.labels.clone();
        family.get_or_create(&MoneyLabels { job, provider, lane }).set(row.value);
    }
    let help = "Saved against the synchronous price, by job, provider and lane (lowered by duplicates)";
    registry.register_with_unit("savings", help, Unit::Other("usd".into()), family);
}

fn gauges(registry: &mut Registry, figures: &MetricFigures, now: DateTime<Utc>) {
    let open = Gauge::<i64>::default();
    open.set(figures.open_runs as i64);
    registry.register("open_runs", "Runs not yet closed", open);
    let age = FloatGauge::default();
    let secs = figures.oldest_open_batch_at.map_or(0.0, |at| (now - at).num_milliseconds().max(0) as f64 / 1000.0);
    age.set(secs);
    registry.register_with_unit(
        "oldest_open_batch_age",
        "Age of the oldest batch still at the provider (0 when none)",
        Unit::Seconds,
        age,
    );
}

/// Who leads the state database: its epoch, how long ago it renewed its
/// row, whether it stopped cleanly, and whether this process is the one
/// (a standby's `/metrics` says 0), so an alert can fire when no process
/// leads. Nothing before any process has led.
fn leadership(registry: &mut Registry, leader: Option<&LeaderStatus>) {
    let Some(status) = leader else { return };
    let gauge = |value: i64| {
        let gauge = Gauge::<i64>::default();
        gauge.set(value);
        gauge
    };
    registry.register(
        "leader_epoch",
        "Takeovers of the state database so far (the leader's epoch)",
        gauge(status.leader.epoch),
    );
    registry.register_with_unit(
        "leader_renewal_age",
        "Time since the leader last renewed its row",
        Unit::Seconds,
        gauge(status.renewed_secs_ago),
    );
    registry.register(
        "leader_stopped",
        "1 when the last leader stopped cleanly and none has taken over",
        gauge(i64::from(status.leader.stopped_at.is_some())),
    );
    registry.register(
        "leading",
        "1 when this process leads, 0 on a standby",
        gauge(i64::from(status.leader.is_this_process())),
    );
}

/// Each provider's processing queue (what we hold in it, and its limit)
/// and the pace of its batch endpoints.
fn batch_endpoints(registry: &mut Registry, figures: &MetricFigures, endpoints: &[BatchEndpoints]) {
    let (queued, limit, pace) = (
        Family::<ProviderLabels, Gauge>::default(),
        Family::<ProviderLabels, Gauge>::default(),
        Family::<ProviderLabels, FloatGauge>::default(),
    );
    for endpoint in endpoints {
        let labels = ProviderLabels { provider: endpoint.provider.clone() };
        queued.get_or_create(&labels).set(0);
        if let Some(max) = endpoint.queue_limit {
            limit.get_or_create(&labels).set(i64::try_from(max).unwrap_or(i64::MAX));
        }
        pace.get_or_create(&labels).set(endpoint.pace_per_minute);
    }
    for row in &figures.batch_queues {
        queued.get_or_create(&ProviderLabels { provider: row.labels[0].clone() }).set(row.value as i64);
    }
    registry.register(
        "batch_queue_requests",
        "Requests in the provider's batch processing queue (batches not ended)",
        queued,
    );
    registry.register("batch_queue_limit", "Requests the provider's batch processing queue holds", limit);
    registry.register(
        "batch_pace_per_minute",
        "Calls per minute the provider's batch endpoints are paced at now",
        pace,
    );
}

/// What waits in each queue (`enqueue:`): a queue that grows, or whose
/// oldest item ages past its `max_wait`, is not being flushed.
fn queued_items(registry: &mut Registry, figures: &MetricFigures, now: DateTime<Utc>) {
    let (waiting, age) = (Family::<JobLabels, Gauge>::default(), Family::<JobLabels, FloatGauge>::default());
    for (job, items, oldest) in &figures.queued_items {
        let labels = JobLabels { job: job.clone() };
        waiting.get_or_create(&labels).set(i64::try_from(*items).unwrap_or(i64::MAX));
        age.get_or_create(&labels).set((now - *oldest).num_milliseconds().max(0) as f64 / 1000.0);
    }
    registry.register("queued_items", "Items posted to a job's queue and waiting for a flush", waiting);
    registry.register_with_unit(
        "oldest_queued_item_age",
        "How long the oldest item waiting in a job's queue has waited",
        Unit::Seconds,
        age,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Labelled;

    #[test]
    fn figures_become_labelled_series() {
        let base = Utc::now();
        let figures = MetricFigures {
            requests: vec![Labelled { labels: ["nightly".into(), "batch".into(), "succeeded".into()], value: 3.0 }],
            turnarounds_secs: vec![120.0, 4000.0],
            spend_usd: vec![Labelled { labels: ["nightly".into(), "openai".into(), "batch".into()], value: 0.25 }],
            open_runs: 2,
            oldest_open_batch_at: Some(base - chrono::Duration::seconds(90)),
            batch_queues: vec![Labelled { labels: ["anthropic".into()], value: 4500.0 }],
            queued_items: vec![("tickets".into(), 12, base - chrono::Duration::seconds(60))],
            ..MetricFigures::default()
        };
        let now = figures.oldest_open_batch_at.unwrap() + chrono::Duration::seconds(90);
        let endpoints = [
            BatchEndpoints { provider: "anthropic".into(), queue_limit: Some(100_000), pace_per_minute: 25.0 },
            BatchEndpoints { provider: "openai".into(), queue_limit: None, pace_per_minute: 100.0 },
        ];
        let leader = crate::store::Leader {
            epoch: 3,
            pid: 1,
            host: "elsewhere".into(),
            since: base,
            renewed_at: now - chrono::Duration::seconds(12),
            stopped_at: None,
        };
        let text = encode(&figures, &endpoints, Some(&LeaderStatus::new(leader, now)), now);
        assert!(text.contains("orchestrator_leader_epoch 3\n"), "{text}");
        assert!(text.contains("orchestrator_leader_renewal_age_seconds 12\n"), "{text}");
        assert!(text.contains("orchestrator_leader_stopped 0\n"), "{text}");
        assert!(text.contains("orchestrator_leading 0\n"), "another process leads: {text}");
        assert!(!encode(&figures, &endpoints, None, now).contains("leader"), "no series before any lead");
        assert!(text.contains(r#"orchestrator_batch_queue_requests{provider="anthropic"} 4500"#), "{text}");
        assert!(text.contains(r#"orchestrator_batch_queue_requests{provider="openai"} 0"#), "{text}");
        assert!(text.contains(r#"orchestrator_batch_queue_limit{provider="anthropic"} 100000"#), "{text}");
        assert!(!text.contains(r#"orchestrator_batch_queue_limit{provider="openai"}"#), "{text}");
        assert!(text.contains(r#"orchestrator_batch_pace_per_minute{provider="anthropic"} 25.0"#), "{text}");
        assert!(text.contains(r#"orchestrator_requests{job="nightly",lane="batch",state="succeeded"} 3"#), "{text}");
        assert!(text.contains("orchestrator_batch_turnaround_seconds_count 2"), "{text}");
        assert!(text.contains(r#"orchestrator_batch_turnaround_seconds_bucket{le="300.0"} 1"#), "{text}");
        assert!(
            text.contains(r#"orchestrator_spend_usd_total{job="nightly",provider="openai",lane="batch"} 0.25"#),
            "{text}"
        );
        assert!(text.contains("orchestrator_open_runs 2"), "{text}");
        assert!(text.contains(r#"orchestrator_queued_items{job="tickets"} 12"#), "{text}");
        assert!(text.contains(r#"orchestrator_oldest_queued_item_age_seconds{job="tickets"} 60.0"#), "{text}");
        assert!(text.contains("orchestrator_oldest_open_batch_age_seconds 90"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
