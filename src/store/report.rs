//! Aggregates for `orchestrator cost` and the dashboard: spend and tokens
//! grouped one way or another, and the raw figures of the five KPIs.

use super::sql::{Dialect, params};
use chrono::{DateTime, Utc};

use super::{Store, StoreError, to_millis};

/// How spend rows are grouped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    /// Per job.
    Job,
    /// Per tag (a run with several tags counts under each).
    Tag,
    /// Per model that answered.
    Model,
    /// Per provider that answered.
    Provider,
    /// `batch` or `sync`.
    Lane,
    /// Per UTC day the result arrived.
    Day,
}

impl GroupBy {
    /// The name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Job => "job",
            GroupBy::Tag => "tag",
            GroupBy::Model => "model",
            GroupBy::Provider => "provider",
            GroupBy::Lane => "lane",
            GroupBy::Day => "day",
        }
    }

    fn key_sql(self, dialect: Dialect) -> String {
        match self {
            GroupBy::Job => "u.job",
            GroupBy::Tag => "COALESCE(t.value, '(untagged)')",
            GroupBy::Model => "COALESCE(r.model, '(unknown)')",
            GroupBy::Provider => "COALESCE(r.provider, '(unknown)')",
            GroupBy::Lane => "r.lane",
            GroupBy::Day => return dialect.utc_day("r.received_at"),
        }
        .to_owned()
    }
}

/// Which results a report covers: received in `[since, until)`, of one
/// job or one tag when set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Start, inclusive.
    pub since: Option<DateTime<Utc>>,
    /// End, exclusive.
    pub until: Option<DateTime<Utc>>,
    /// Only this job.
    pub job: Option<String>,
    /// Only runs with this tag.
    pub tag: Option<String>,
}

impl Scope {
    fn bounds(&self) -> (i64, i64) {
        (self.since.map_or(i64::MIN, to_millis), self.until.map_or(i64::MAX, to_millis))
    }
}

/// Spend and usage of one group (or of everything).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendRow {
    /// The group's key (`None` for the total).
    pub key: Option<String>,
    /// Charged, micro-dollars.
    pub cost_micros: i64,
    /// The sync baseline, micro-dollars.
    pub sync_cost_micros: i64,
    /// Charged for duplicate successes (waste), micro-dollars.
    pub duplicate_micros: i64,
    /// Charged on the sync lane for runs of batch-lane tiers (the fallback,
    /// failover apart), micro-dollars.
    pub fallback_micros: i64,
    /// Charged to a failover model on another provider, micro-dollars.
    pub failover_micros: i64,
    /// Successful responses.
    pub requests: i64,
    /// Successful responses through the batch lane.
    pub requests_batch: i64,
    /// Successful responses through the sync lane.
    pub requests_sync: i64,
    /// Duplicate successes.
    pub duplicates: i64,
    /// Errored or expired results.
    pub failed_results: i64,
    /// Uncached input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache writes, both TTLs.
    pub cache_write_tokens: i64,
    /// Cache reads.
    pub cache_read_tokens: i64,
    /// All tokens through the batch lane.
    pub batch_tokens: i64,
    /// All tokens through the sync lane.
    pub sync_tokens: i64,
    /// All tokens of runs whose tier allows the batch lane.
    pub eligible_tokens: i64,
    /// Of those, through the batch lane.
    pub eligible_batch_tokens: i64,
}

/// A result the run's failover model answered.
const FAILOVER: &str = "(r.lane = 'sync' AND u.failover_provider IS NOT NULL AND r.provider = u.failover_provider)";

const TOKENS: &str = "(r.input_tokens + r.output_tokens + r.cache_write_5m + r.cache_write_1h + r.cache_read)";

fn spend_sql(key: &str, tag_join: &str, dialect: Dialect) -> String {
    let tag_filter = tag_filter(dialect);
    format!(
        "SELECT {key},
           COALESCE(SUM(r.cost_micros), 0), COALESCE(SUM(r.sync_cost_micros), 0),
           COALESCE(SUM(CASE WHEN r.duplicate = 1 THEN r.cost_micros END), 0),
           COALESCE(SUM(CASE WHEN r.lane = 'sync' AND u.tier != 'realtime' AND NOT {FAILOVER} THEN r.cost_micros END), 0),
           COUNT(CASE WHEN r.status = 'succeeded' THEN 1 END),
           COUNT(CASE WHEN r.status = 'succeeded' AND r.lane = 'batch' THEN 1 END),
           COUNT(CASE WHEN r.status = 'succeeded' AND r.lane = 'sync' THEN 1 END),
           COUNT(CASE WHEN r.duplicate = 1 THEN 1 END),
           COUNT(CASE WHEN r.status IN ('errored', 'expired') THEN 1 END),
           COALESCE(SUM(r.input_tokens), 0), COALESCE(SUM(r.output_tokens), 0),
           COALESCE(SUM(r.cache_write_5m + r.cache_write_1h), 0), COALESCE(SUM(r.cache_read), 0),
           COALESCE(SUM(CASE WHEN r.lane = 'batch' THEN {TOKENS} END), 0),
           COALESCE(SUM(CASE WHEN r.lane = 'sync' THEN {TOKENS} END), 0),
           COALESCE(SUM(CASE WHEN u.tier != 'realtime' THEN {TOKENS} END), 0),
           COALESCE(SUM(CASE WHEN u.tier != 'realtime' AND r.lane = 'batch' THEN {TOKENS} END), 0),
           COALESCE(SUM(CASE WHEN {FAILOVER} THEN r.cost_micros END), 0)
         FROM results r JOIN requests q ON q.custom_id = r.custom_id JOIN runs u ON u.id = q.run_id {tag_join}
         WHERE r.received_at >= ?1 AND r.received_at < ?2 AND (CAST(?3 AS TEXT) IS NULL OR u.job = ?3)
           AND {tag_filter}"
    )
}

/// Runs tagged `?4`, or all when it is NULL.
fn tag_filter(dialect: Dialect) -> String {
    format!(
        "(CAST(?4 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM {} WHERE f.value = ?4))",
        dialect.json_values("u.tags", "f")
    )
}

fn spend_row(row: &super::sql::Row<'_>) -> super::sql::Result<SpendRow> {
    Ok(SpendRow {
        key: row.get(0)?,
        cost_micros: row.get(1)?,
        sync_cost_micros: row.get(2)?,
        duplicate_micros: row.get(3)?,
        fallback_micros: row.get(4)?,
        requests: row.get(5)?,
        requests_batch: row.get(6)?,
        requests_sync: row.get(7)?,
        duplicates: row.get(8)?,
        failed_results: row.get(9)?,
        input_tokens: row.get(10)?,
        output_tokens: row.get(11)?,
        cache_write_tokens: row.get(12)?,
        cache_read_tokens: row.get(13)?,
        batch_tokens: row.get(14)?,
        sync_tokens: row.get(15)?,
        eligible_tokens: row.get(16)?,
        eligible_batch_tokens: row.get(17)?,
        failover_micros: row.get(18)?,
    })
}

/// The raw figures of the five KPIs (ratios are computed by the caller).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KpiFigures {
    /// Submission-to-end durations of the batches submitted in the window, seconds, sorted.
    pub turnarounds_secs: Vec<f64>,
    /// Batch-lane results in the window.
    pub batch_results: i64,
    /// Of those, errored or expired.
    pub batch_failed_results: i64,
    /// Runs whose sync fallback engaged in the window.
    pub fallbacks: i64,
    /// Batch create calls that failed in the window.
    pub submit_failures: i64,
}

impl Store {
    /// Spend of everything in `scope`, and of each group when `by` is set.
    pub fn spend(&self, scope: &Scope, by: Option<GroupBy>) -> Result<(SpendRow, Vec<SpendRow>), StoreError> {
        let (since, until) = scope.bounds();
        let args = params![since, until, scope.job, scope.tag];
        let dialect = self.conn.dialect();
        let total = self.conn.query_row(&spend_sql("NULL", "", dialect), args, spend_row).map_err(|e| self.err(e))?;
        let Some(by) = by else {
            return Ok((total, Vec::new()));
        };
        let tag_join = match by {
            GroupBy::Tag => format!("LEFT JOIN {} ON true", dialect.json_values("u.tags", "t")),
            _ => String::new(),
        };
        let sql = format!("{} GROUP BY 1 ORDER BY 1", spend_sql(&by.key_sql(dialect), &tag_join, dialect));
        let mut statement = self.conn.prepare(&sql).map_err(|e| self.err(e))?;
        let rows = statement.query_map(args, spend_row).map_err(|e| self.err(e))?;
        Ok((total, rows.collect::<Result<_, _>>().map_err(|e| self.err(e))?))
    }

    /// The raw figures of the five KPIs for `scope`.
    pub fn kpi_figures(&self, scope: &Scope) -> Result<KpiFigures, StoreError> {
        let (since, until) = scope.bounds();
        let run_filter = format!("(CAST(?3 AS TEXT) IS NULL OR u.job = ?3) AND {}", tag_filter(self.conn.dialect()));
        let args = params![since, until, scope.job, scope.tag];
        let mut statement = self
            .conn
            .prepare(&format!(
                "SELECT (b.ended_at - b.submitted_at) / 1000.0 FROM batches b
                 WHERE b.submitted_at >= ?1 AND b.submitted_at < ?2 AND b.ended_at IS NOT NULL
                   AND EXISTS (SELECT 1 FROM batch_runs c JOIN runs u ON u.id = c.run_id
                               WHERE c.batch_id = b.id AND {run_filter})
                 ORDER BY 1"
            ))
            .map_err(|e| self.err(e))?;
        let turnarounds_secs =
            statement.query_map(args, |row| row.get(0)).map_err(|e| self.err(e))?.collect::<Result<_, _>>();
        let count = |sql: String| self.conn.query_row(&sql, args, |row| row.get::<_, i64>(0)).map_err(|e| self.err(e));
        let (batch_results, batch_failed_results) = self
            .conn
            .query_row(
                &format!(
                    "SELECT COUNT(*), COUNT(CASE WHEN r.status IN ('errored', 'expired') THEN 1 END)
                     FROM results r JOIN requests q ON q.custom_id = r.custom_id JOIN runs u ON u.id = q.run_id
                     WHERE r.lane = 'batch' AND r.received_at >= ?1 AND r.received_at < ?2 AND {run_filter}"
                ),
                args,
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(|e| self.err(e))?;
        Ok(KpiFigures {
            turnarounds_secs: turnarounds_secs.map_err(|e| self.err(e))?,
            batch_results,
            batch_failed_results,
            fallbacks: count(format!(
                "SELECT COUNT(*) FROM runs u
                 WHERE u.fallback_started_at >= ?1 AND u.fallback_started_at < ?2 AND {run_filter}"
            ))?,
            submit_failures: count(format!(
                "SELECT COUNT(*) FROM attempts a JOIN runs u ON u.id = a.run_id
                 WHERE a.operation = 'create_batch' AND a.error_type IS NOT NULL
                   AND a.started_at >= ?1 AND a.started_at < ?2 AND {run_filter}"
            ))?,
        })
    }
}
