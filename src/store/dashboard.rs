//! Read-only queries behind the dashboard, its JSON API and `/metrics`:
//! runs with their progress and cost, errors grouped by type, per-job
//! token efficiency, and the aggregates exported to Prometheus.

use super::sql::params;
use chrono::{DateTime, Utc};

use super::runs::{COLUMNS as RUN_COLUMNS, from_row as run_from_row};
use super::{RunRow, Store, StoreError, from_millis, to_millis};

/// A run with its progress and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    /// The run.
    pub run: RunRow,
    /// Requests in it.
    pub requests_total: u64,
    /// Requests with a final outcome (succeeded or failed for good).
    pub requests_done: u64,
    /// Of those, failed for good.
    pub requests_failed: u64,
    /// When its first batch was created at the provider.
    pub submitted_at: Option<DateTime<Utc>>,
    /// Charged so far, micro-dollars.
    pub cost_micros: i64,
    /// What the synchronous API would have charged, micro-dollars.
    pub sync_cost_micros: i64,
}

/// Which runs to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only this job.
    pub job: Option<String>,
    /// Only runs in this state (`open`, `completed`, ...).
    pub state: Option<String>,
    /// Only runs scheduled at or after this instant.
    pub since: Option<DateTime<Utc>>,
    /// At most this many (open runs first, then newest first).
    pub limit: u32,
}

/// Failures of one kind within a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorGroup {
    /// `result` (a request's final answer) or `call` (a failed HTTP call, maybe retried).
    pub source: &'static str,
    /// What was being done: the result's status, or the call's operation.
    pub what: String,
    /// The provider's error type, e.g. `overloaded_error`.
    pub error_type: String,
    /// The provider's message (the most recent one of the group).
    pub message: String,
    /// How many.
    pub count: u64,
}

/// How a job used its tokens over a window.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenEfficiency {
    /// Successful responses measured.
    pub responses: u64,
    /// Average input tokens per request (cached and uncached).
    pub avg_input_tokens: Option<f64>,
    /// Average output tokens per request.
    pub avg_output_tokens: Option<f64>,
    /// Share of responses cut off at `max_tokens`.
    pub max_tokens_share: Option<f64>,
}

/// One labelled figure for `/metrics`.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled<const N: usize> {
    /// Label values, in the order the metric declares them.
    pub labels: [String; N],
    /// The figure.
    pub value: f64,
}

/// Everything `/metrics` exports, read in one pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricFigures {
    /// Requests by job, lane (`batch`, `sync` or `none` before routing) and state.
    pub requests: Vec<Labelled<3>>,
    /// Submission-to-end seconds of every ended batch.
    pub turnarounds_secs: Vec<f64>,
    /// Runs whose fallback engaged, by job.
    pub fallbacks: Vec<Labelled<1>>,
    /// Runs that missed their deadline, by job.
    pub deadline_misses: Vec<Labelled<1>>,
    /// Provider errors by lane and error type (failed calls and errored results).
    pub provider_errors: Vec<Labelled<2>>,
    /// Charged, US dollars, by job, provider and lane.
    pub spend_usd: Vec<Labelled<3>>,
    /// Saved against the sync baseline, US dollars, by job, provider and lane.
    pub savings_usd: Vec<Labelled<3>>,
    /// Open runs.
    pub open_runs: u64,
    /// When the oldest batch still at the provider was created.
    pub oldest_open_batch_at: Option<DateTime<Utc>>,
    /// Requests in each provider's batch processing queue (of batches not ended yet).
    pub batch_queues: Vec<Labelled<1>>,
    /// Posted items waiting for a flush, by job (`enqueue:`): how many, and
    /// when the oldest was posted.
    pub queued_items: Vec<(String, u64, DateTime<Utc>)>,
}

fn summary_from_row(row: &super::sql::Row<'_>) -> super::sql::Result<RunSummary> {
    let base = RUN_COLUMNS.split(", ").count(); // the run's columns come first
    Ok(RunSummary {
        run: run_from_row(row)?,
        requests_total: row.get(base)?,
        requests_done: row.get(base + 1)?,
        requests_failed: row.get(base + 2)?,
        submitted_at: row.get::<_, Option<i64>>(base + 3)?.map(from_millis),
        cost_micros: row.get(base + 4)?,
        sync_cost_micros: row.get(base + 5)?,
    })
}

fn summary_sql(filter: &str) -> String {
    format!(
        "SELECT {RUN_COLUMNS},
           (SELECT COUNT(*) FROM requests q WHERE q.run_id = runs.id),
           (SELECT COUNT(*) FROM requests q WHERE q.run_id = runs.id AND q.state IN ('succeeded', 'permanent_failed')),
           (SELECT COUNT(*) FROM requests q WHERE q.run_id = runs.id AND q.state = 'permanent_failed'),
           (SELECT MIN(b.submitted_at) FROM batch_runs c JOIN batches b ON b.id = c.batch_id WHERE c.run_id = runs.id),
           (SELECT COALESCE(SUM(r.cost_micros), 0) FROM results r JOIN requests q ON q.custom_id = r.custom_id
             WHERE q.run_id = runs.id),
           (SELECT COALESCE(SUM(r.sync_cost_micros), 0) FROM results r JOIN requests q ON q.custom_id = r.custom_id
             WHERE q.run_id = runs.id)
         FROM runs WHERE {filter}"
    )
}

impl Store {
    /// Runs matching `filter`: open runs first, then the newest.
    pub fn run_summaries(&self, filter: &RunFilter) -> Result<Vec<RunSummary>, StoreError> {
        let sql = format!(
            "{} ORDER BY state = 'open' DESC, scheduled_for DESC, id DESC LIMIT ?4",
            summary_sql(
                "(CAST(?1 AS TEXT) IS NULL OR job = ?1) AND (CAST(?2 AS TEXT) IS NULL OR state = ?2) AND scheduled_for >= ?3"
            )
        );
        let since = filter.since.map_or(i64::MIN, to_millis);
        let mut statement = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = statement
            .query_map(params![filter.job, filter.state, since, filter.limit], summary_from_row)
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// One run with its progress and cost.
    pub fn run_summary(&self, id: i64) -> Result<Option<RunSummary>, StoreError> {
        use super::sql::OptionalExtension;
        self.conn.query_row(&summary_sql("id = ?1"), [id], summary_from_row).optional().map_err(|e| self.err(e))
    }

    /// The run's failures grouped by kind: final results that are not
    /// successes, and failed provider calls (which may have been retried).
    /// Each group shows the message of its latest row (read by its id:
    /// PostgreSQL has no bare columns beside an aggregate, as SQLite has).
    pub fn run_errors(&self, run_id: i64) -> Result<Vec<ErrorGroup>, StoreError> {
        let mut groups = self.error_groups(
            "result",
            "SELECT g.what, g.kind, COALESCE((SELECT e.error_message FROM results e WHERE e.id = g.latest), ''), g.n
             FROM (SELECT r.status AS what, COALESCE(r.error_type, r.status) AS kind, COUNT(*) AS n, MAX(r.id) AS latest
                   FROM results r JOIN requests q ON q.custom_id = r.custom_id
                   WHERE q.run_id = ?1 AND r.status != 'succeeded' GROUP BY 1, 2) g
             ORDER BY 4 DESC, 2",
            run_id,
        )?;
        groups.extend(self.error_groups(
            "call",
            "SELECT g.what, g.kind, COALESCE((SELECT e.error_message FROM attempts e WHERE e.id = g.latest), ''), g.n
             FROM (SELECT a.operation AS what, a.error_type AS kind, COUNT(*) AS n, MAX(a.id) AS latest
                   FROM attempts a WHERE a.run_id = ?1 AND a.error_type IS NOT NULL GROUP BY 1, 2) g
             ORDER BY 4 DESC, 2",
            run_id,
        )?);
        Ok(groups)
    }

    fn error_groups(&self, source: &'static str, sql: &str, run_id: i64) -> Result<Vec<ErrorGroup>, StoreError> {
        let mut statement = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([run_id], |row| {
                Ok(ErrorGroup {
                    source,
                    what: row.get(0)?,
                    error_type: row.get(1)?,
                    message: row.get(2)?,
                    count: row.get(3)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// `job`'s token use over the successes received since `since`.
    pub fn token_efficiency(&self, job: &str, since: DateTime<Utc>) -> Result<TokenEfficiency, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), AVG(r.input_tokens + r.cache_write_5m + r.cache_write_1h + r.cache_read),
                        AVG(r.output_tokens), AVG(CASE WHEN r.stop_reason = 'max_tokens' THEN 1.0 ELSE 0.0 END)
                 FROM results r JOIN requests q ON q.custom_id = r.custom_id JOIN runs u ON u.id = q.run_id
                 WHERE u.job = ?1 AND r.status = 'succeeded' AND r.duplicate = 0 AND r.received_at >= ?2",
                params![job, to_millis(since)],
                |row| {
                    Ok(TokenEfficiency {
                        responses: row.get(0)?,
                        avg_input_tokens: row.get(1)?,
                        avg_output_tokens: row.get(2)?,
                        max_tokens_share: row.get(3)?,
                    })
                },
            )
            .map_err(|e| self.err(e))
    }

    /// Runs that closed `completed` at or after `since`.
    pub fn runs_completed_since(&self, since: DateTime<Utc>) -> Result<u64, StoreError> {
        self.count("SELECT COUNT(*) FROM runs WHERE state = 'completed' AND finished_at >= ?1", since)
    }

    /// Requests with an errored or expired result received at or after
    /// `since` (a request that errored on both lanes counts once).
    pub fn errored_requests_since(&self, since: DateTime<Utc>) -> Result<u64, StoreError> {
        self.count(
            "SELECT COUNT(DISTINCT custom_id) FROM results WHERE status IN ('errored', 'expired') AND received_at >= ?1",
            since,
        )
    }

    fn count(&self, sql: &str, since: DateTime<Utc>) -> Result<u64, StoreError> {
        self.conn.query_row(sql, [to_millis(since)], |row| row.get(0)).map_err(|e| self.err(e))
    }

    /// The aggregates `/metrics` exports.
    pub fn metric_figures(&self) -> Result<MetricFigures, StoreError> {
        let oldest: Option<i64> = self
            .conn
            .query_row(
                "SELECT MIN(COALESCE(submitted_at, intent_at)) FROM batches
                 WHERE state IN ('submitting', 'in_progress', 'canceling')",
                [],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))?;
        Ok(MetricFigures {
            requests: self.labelled(
                "SELECT u.job, COALESCE(q.lane, 'none'), q.state, COUNT(*)
                 FROM requests q JOIN runs u ON u.id = q.run_id GROUP BY 1, 2, 3",
            )?,
            turnarounds_secs: self.column(
                "SELECT (ended_at - submitted_at) / 1000.0 FROM batches
                 WHERE ended_at IS NOT NULL AND submitted_at IS NOT NULL",
            )?,
            fallbacks: self
                .labelled("SELECT job, COUNT(*) FROM runs WHERE fallback_started_at IS NOT NULL GROUP BY 1")?,
            deadline_misses: self.labelled("SELECT job, COUNT(*) FROM runs WHERE state = 'late' GROUP BY 1")?,
            provider_errors: self.provider_errors()?,
            spend_usd: self.labelled(
                "SELECT u.job, COALESCE(r.provider, 'unknown'), r.lane, SUM(r.cost_micros) / 1e6
                 FROM results r JOIN requests q ON q.custom_id = r.custom_id JOIN runs u ON u.id = q.run_id
                 GROUP BY 1, 2, 3",
            )?,
            savings_usd: self.labelled(
                "SELECT u.job, COALESCE(r.provider, 'unknown'), r.lane, SUM(r.sync_cost_micros - r.cost_micros) / 1e6
                 FROM results r JOIN requests q ON q.custom_id = r.custom_id JOIN runs u ON u.id = q.run_id
                 GROUP BY 1, 2, 3",
            )?,
            open_runs: self
                .conn
                .query_row("SELECT COUNT(*) FROM runs WHERE state = 'open'", [], |row| row.get(0))
                .map_err(|e| self.err(e))?,
            oldest_open_batch_at: oldest.map(from_millis),
            batch_queues: self
                .batch_queue_depths()?
                .into_iter()
                .map(|(provider, requests)| Labelled { labels: [provider], value: requests as f64 })
                .collect(),
            queued_items: self.queue_depths()?,
        })
    }

    /// Failed calls by lane and type, plus errored batch results, which the
    /// provider reports per request inside a batch that itself succeeded (an
    /// errored sync result is its failed call, already counted).
    fn provider_errors(&self) -> Result<Vec<Labelled<2>>, StoreError> {
        self.labelled(
            "SELECT lane, error_type, SUM(n) FROM (
                 SELECT lane, error_type, COUNT(*) AS n FROM attempts
                 WHERE error_type IS NOT NULL AND error_type NOT IN ('state_database', 'stopped') GROUP BY 1, 2
                 UNION ALL
                 SELECT lane, COALESCE(error_type, status), COUNT(*) FROM results
                 WHERE lane = 'batch' AND status IN ('errored', 'expired') GROUP BY 1, 2) errors
             GROUP BY 1, 2",
        )
    }

    fn labelled<const N: usize>(&self, sql: &str) -> Result<Vec<Labelled<N>>, StoreError> {
        let mut statement = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([], |row| {
                let mut labels: [String; N] = std::array::from_fn(|_| String::new());
                for (i, label) in labels.iter_mut().enumerate() {
                    *label = row.get(i)?;
                }
                Ok(Labelled { labels, value: row.get::<_, Option<f64>>(N)?.unwrap_or(0.0) })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    fn column(&self, sql: &str) -> Result<Vec<f64>, StoreError> {
        let mut statement = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = statement.query_map([], |row| row.get(0)).map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

/// A batch with the run that opened it and every run it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchListing {
    /// The batch.
    pub batch: super::BatchRow,
    /// Its opening run's job.
    pub job: String,
    /// Its opening run's key.
    pub run_key: String,
    /// The runs it carries (one unless it is shared), by run id.
    pub runs: Vec<CarriedRun>,
}

/// One run a batch carries, with how many of its requests.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CarriedRun {
    /// The run.
    pub run_id: i64,
    /// Its job.
    pub job: String,
    /// Its key.
    pub run_key: String,
    /// Its requests in the batch.
    pub requests: u64,
}

impl Store {
    /// The newest `limit` batches (of one run when `run_id` is set: the
    /// batches that carry it), newest first.
    pub fn batch_listings(&self, run_id: Option<i64>, limit: u32) -> Result<Vec<BatchListing>, StoreError> {
        let sql = format!(
            "SELECT {}, u.job, u.run_key FROM batches JOIN runs u ON u.id = batches.run_id
             WHERE CAST(?1 AS BIGINT) IS NULL OR batches.id IN (SELECT batch_id FROM batch_runs WHERE run_id = ?1)
             ORDER BY batches.id DESC LIMIT ?2",
            super::batches::COLUMNS.split(", ").map(|c| format!("batches.{c}")).collect::<Vec<_>>().join(", ")
        );
        let mut statement = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = statement
            .query_map(params![run_id, limit], |row| {
                Ok(BatchListing {
                    batch: super::batches::from_row(row)?,
                    job: row.get(11)?,
                    run_key: row.get(12)?,
                    runs: Vec::new(),
                })
            })
            .map_err(|e| self.err(e))?;
        let mut listings: Vec<BatchListing> = rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?;
        for listing in &mut listings {
            listing.runs = self.carried_runs(listing.batch.id)?;
        }
        Ok(listings)
    }

    /// The runs `batch_id` carries, by run id.
    pub fn carried_runs(&self, batch_id: i64) -> Result<Vec<CarriedRun>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT c.run_id, u.job, u.run_key, c.request_count FROM batch_runs c JOIN runs u ON u.id = c.run_id
                 WHERE c.batch_id = ?1 ORDER BY c.run_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([batch_id], |row| {
                Ok(CarriedRun { run_id: row.get(0)?, job: row.get(1)?, run_key: row.get(2)?, requests: row.get(3)? })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}
