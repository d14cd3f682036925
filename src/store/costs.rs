//! The money columns of results: which model answered, what it cost and
//! what the synchronous API would have charged for the same usage.

use super::sql::params;
use chrono::{DateTime, Utc};

use super::{Store, StoreError, to_millis};
use crate::outcome::Usage;

/// A batch answer's price, computed as it is stored: pricing 100,000
/// results afterwards rewrote every page of `results` once more (1.6 s of
/// a 100,000-item run).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerPrice {
    /// The model the answer names.
    pub model: String,
    /// The provider of that model.
    pub provider: Option<String>,
    /// What was charged, in micro-dollars.
    pub cost_micros: i64,
    /// What the sync API would have charged, in micro-dollars.
    pub sync_cost_micros: i64,
}

/// Prices a successful batch answer from the model it names and its usage;
/// `None` when the catalog has no price for the model (the result is then
/// priced later, with a warning, as any other).
pub type AnswerPricer = std::sync::Arc<dyn Fn(&str, &Usage) -> Option<AnswerPrice> + Send + Sync>;

/// A stored result whose cost is not computed yet.
#[derive(Debug, Clone, PartialEq)]
pub struct UnpricedResult {
    /// The result row.
    pub id: i64,
    /// `batch` or `sync`.
    pub lane: String,
    /// Only `succeeded` results are billed.
    pub succeeded: bool,
    /// A success for a request that already had one: all of it is waste.
    pub duplicate: bool,
    /// The model the provider says answered, else the one requested.
    pub model: Option<String>,
    /// Billed usage.
    pub usage: Usage,
}

/// The computed cost of one result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResultCost {
    /// The result row.
    pub id: i64,
    /// The model it was priced as.
    pub model: Option<String>,
    /// The provider of that model.
    pub provider: Option<String>,
    /// What was charged, in micro-dollars.
    pub cost_micros: i64,
    /// What the sync API would have charged, in micro-dollars.
    pub sync_cost_micros: i64,
}

impl Store {
    /// Up to `limit` results without a cost, oldest first.
    pub fn unpriced_results(&self, limit: usize) -> Result<Vec<UnpricedResult>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(&format!(
                "SELECT r.id, r.lane, r.status, r.duplicate, COALESCE({}, {}),
                        r.input_tokens, r.output_tokens, r.cache_write_5m, r.cache_write_1h, r.cache_read
                 FROM results r JOIN request_bodies q ON q.custom_id = r.custom_id
                 WHERE r.cost_micros IS NULL ORDER BY r.id LIMIT ?1",
                self.conn.dialect().json_text("r.message", "model"),
                self.conn.dialect().json_text("q.params", "model")
            ))
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([limit as i64], |row| {
                Ok(UnpricedResult {
                    id: row.get(0)?,
                    lane: row.get(1)?,
                    succeeded: row.get::<_, String>(2)? == "succeeded",
                    duplicate: row.get(3)?,
                    model: row.get(4)?,
                    usage: super::results::usage_at(row, 5)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Stores computed costs in one transaction.
    pub fn set_result_costs(&mut self, costs: &[ResultCost]) -> Result<(), StoreError> {
        let tx = self.conn.transaction().map_err(|e| super::database(&self.path, e))?;
        {
            let mut update = tx
                .prepare_cached(
                    "UPDATE results SET model = ?2, cost_micros = ?3, sync_cost_micros = ?4, provider = ?5 WHERE id = ?1",
                )
                .map_err(|e| super::database(&self.path, e))?;
            for cost in costs {
                update
                    .execute(params![cost.id, cost.model, cost.cost_micros, cost.sync_cost_micros, cost.provider])
                    .map_err(|e| super::database(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| super::database(&self.path, e))
    }

    /// Forgets every computed cost, so the next pricing pass uses current prices.
    pub fn clear_result_costs(&mut self) -> Result<usize, StoreError> {
        self.conn
            .execute("UPDATE results SET cost_micros = NULL, sync_cost_micros = NULL WHERE cost_micros IS NOT NULL", [])
            .map_err(|e| self.err(e))
    }

    /// Micro-dollars spent since `since` by `job`'s runs, or by every job.
    pub fn spent_since(&self, job: Option<&str>, since: DateTime<Utc>) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE(SUM(r.cost_micros), 0) FROM results r
                 JOIN requests q ON q.custom_id = r.custom_id JOIN runs u ON u.id = q.run_id
                 WHERE r.received_at >= ?1 AND (CAST(?2 AS TEXT) IS NULL OR u.job = ?2)",
                params![to_millis(since), job],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))
    }
}

/// Average billed usage per successful request.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct AverageUsage {
    /// Uncached input tokens.
    pub input_tokens: f64,
    /// Output tokens.
    pub output_tokens: f64,
    /// 5-minute cache writes.
    pub cache_write_5m_tokens: f64,
    /// 1-hour cache writes.
    pub cache_write_1h_tokens: f64,
    /// Cache reads.
    pub cache_read_tokens: f64,
}

impl AverageUsage {
    /// The usage of `requests` such requests (a fraction for averages of
    /// items per run), rounded up.
    pub fn times(&self, requests: f64) -> Usage {
        let total = |per: f64| (per * requests).ceil().max(0.0) as u64;
        Usage {
            input_tokens: total(self.input_tokens),
            output_tokens: total(self.output_tokens),
            cache_write_5m_tokens: total(self.cache_write_5m_tokens),
            cache_write_1h_tokens: total(self.cache_write_1h_tokens),
            cache_read_tokens: total(self.cache_read_tokens),
        }
    }
}

impl Store {
    /// `job`'s average usage over its last 500 successes (`None` without history).
    pub fn usage_averages(&self, job: &str) -> Result<Option<AverageUsage>, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*), AVG(input_tokens), AVG(output_tokens), AVG(cache_write_5m), AVG(cache_write_1h),
                        AVG(cache_read)
                 FROM (SELECT r.input_tokens, r.output_tokens, r.cache_write_5m, r.cache_write_1h, r.cache_read
                       FROM results r JOIN requests q ON q.custom_id = r.custom_id JOIN runs u ON u.id = q.run_id
                       WHERE u.job = ?1 AND r.status = 'succeeded' ORDER BY r.id DESC LIMIT 500) recent",
                [job],
                |row| {
                    let count: i64 = row.get(0)?;
                    let average = AverageUsage {
                        input_tokens: row.get::<_, Option<f64>>(1)?.unwrap_or(0.0),
                        output_tokens: row.get::<_, Option<f64>>(2)?.unwrap_or(0.0),
                        cache_write_5m_tokens: row.get::<_, Option<f64>>(3)?.unwrap_or(0.0),
                        cache_write_1h_tokens: row.get::<_, Option<f64>>(4)?.unwrap_or(0.0),
                        cache_read_tokens: row.get::<_, Option<f64>>(5)?.unwrap_or(0.0),
                    };
                    Ok((count > 0).then_some(average))
                },
            )
            .map_err(|e| self.err(e))
    }

    /// Requests of a run that are not final yet.
    pub fn unfinished_requests(&self, run_id: i64) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM requests WHERE run_id = ?1 AND state NOT IN ('succeeded', 'permanent_failed')",
                [run_id],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))
    }
}

impl Store {
    /// Average requests per run over `job`'s last 10 runs that have requests (`None` without history).
    pub fn average_requests_per_run(&self, job: &str) -> Result<Option<f64>, StoreError> {
        self.conn
            .query_row(
                "SELECT AVG(n) FROM (SELECT COUNT(q.custom_id) AS n FROM runs u JOIN requests q ON q.run_id = u.id
                                     WHERE u.job = ?1 GROUP BY u.id ORDER BY u.scheduled_for DESC LIMIT 10) recent",
                [job],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))
    }
}
