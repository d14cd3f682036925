//! An alert: what happened, the key that makes it happen once, and its
//! text for people (which also makes the body Slack-compatible).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use super::config::BodyFormat;

/// One alert. Its `key` is unique per event and run (or per day, month or
/// scope for alerts about no single run): an alert with a key already
/// recorded as sent to a target is never sent to it again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// The deduplication key, e.g. `run_late:nightly-report-20261122T0200`.
    pub key: String,
    /// `run_late`, `run_failed`, `run_start_failed`, `delivery_failing`,
    /// `errored_requests`, `budget_exceeded`, `budget_near`,
    /// `fallback_fired`, `batch_submit_failing` or `digest`.
    pub kind: &'static str,
    /// `critical`, `warning` or `info`.
    pub severity: &'static str,
    /// When the underlying event happened.
    pub at: DateTime<Utc>,
    /// The job, when it concerns one.
    pub job: Option<String>,
    /// The run's database id, when it concerns one.
    pub run_id: Option<i64>,
    /// The run's key, when it concerns one.
    pub run_key: Option<String>,
    /// One line for people.
    pub text: String,
    /// The figures behind it.
    pub detail: Value,
}

impl Alert {
    /// The webhook body in `format`.
    pub fn body(&self, format: BodyFormat) -> Value {
        let text = format!("{} [orchestrator] {}", self.icon(), self.text);
        match format {
            BodyFormat::Slack => json!({ "text": text }),
            BodyFormat::Json => json!({ "text": text, "alert": self }),
        }
    }

    fn icon(&self) -> &'static str {
        match self.severity {
            "critical" => ":rotating_light:",
            "warning" => ":warning:",
            _ => ":information_source:",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_slack_compatible() {
        let alert = Alert {
            key: "run_late:r1".into(),
            kind: "run_late",
            severity: "critical",
            at: Utc::now(),
            job: Some("nightly".into()),
            run_id: Some(1),
            run_key: Some("r1".into()),
            text: "r1 missed its deadline".into(),
            detail: json!({}),
        };
        let slack = alert.body(BodyFormat::Slack);
        assert_eq!(slack, json!({ "text": ":rotating_light: [orchestrator] r1 missed its deadline" }));
        let full = alert.body(BodyFormat::Json);
        assert_eq!(full["text"], slack["text"]);
        assert_eq!(full["alert"]["key"], "run_late:r1");
    }
}
