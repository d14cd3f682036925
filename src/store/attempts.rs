//! Attempts: every provider call, with what it was for, when, and how it ended.

use super::sql::params;
use chrono::{DateTime, Utc};

use super::{Store, StoreError, to_millis};

/// One provider call to record.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAttempt {
    /// The run it served, if any.
    pub run_id: Option<i64>,
    /// The batch it concerned, if any (our database id).
    pub batch_id: Option<i64>,
    /// The request it carried, for sync calls.
    pub custom_id: Option<String>,
    /// `batch` or `sync`.
    pub lane: &'static str,
    /// `create_batch`, `retrieve_batch`, `list_batches`, `results`, `cancel_batch`, `message`.
    pub operation: &'static str,
    /// The provider's `request-id`, when known.
    pub request_id: Option<String>,
    /// When the call started.
    pub started_at: DateTime<Utc>,
    /// When it returned.
    pub finished_at: DateTime<Utc>,
    /// HTTP status of an error answer.
    pub http_status: Option<u16>,
    /// Error type, if it failed.
    pub error_type: Option<String>,
    /// Error message, if it failed.
    pub error_message: Option<String>,
    /// The model of a sync call (latency estimates are per model).
    pub model: Option<String>,
}

impl NewAttempt {
    /// A call of `operation` on `lane` that started at `started_at`, not tied
    /// to any run, batch or request yet and not ended (set the rest with `..`).
    pub fn started(lane: &'static str, operation: &'static str, started_at: DateTime<Utc>) -> NewAttempt {
        NewAttempt {
            run_id: None,
            batch_id: None,
            custom_id: None,
            lane,
            operation,
            request_id: None,
            started_at,
            finished_at: started_at,
            http_status: None,
            error_type: None,
            error_message: None,
            model: None,
        }
    }
}

impl Store {
    /// Appends a provider call to the attempts log.
    pub fn record_attempt(&self, attempt: &NewAttempt) -> Result<i64, StoreError> {
        self.conn
            .prepare_cached(
                "INSERT INTO attempts (run_id, batch_id, custom_id, lane, operation, request_id, started_at, finished_at,
                                       http_status, error_type, error_message, model)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )
            .and_then(|mut statement| {
                statement.execute(params![
                    attempt.run_id,
                    attempt.batch_id,
                    attempt.custom_id,
                    attempt.lane,
                    attempt.operation,
                    attempt.request_id,
                    to_millis(attempt.started_at),
                    to_millis(attempt.finished_at),
                    attempt.http_status,
                    attempt.error_type,
                    attempt.error_message,
                    attempt.model
                ])
            })
            .map_err(|e| self.err(e))?;
        self.conn.last_insert_rowid().map_err(|e| self.err(e))
    }
}

impl Store {
    /// The 90th percentile of the latest 200 successful sync calls to
    /// `model`, in milliseconds; `None` before the first one.
    pub fn sync_latency_p90_ms(&self, model: &str) -> Result<Option<u64>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT finished_at - started_at FROM attempts
                 WHERE model = ?1 AND lane = 'sync' AND operation = 'create_message' AND error_type IS NULL
                 ORDER BY id DESC LIMIT 200",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement.query_map([model], |row| row.get::<_, i64>(0)).map_err(|e| self.err(e))?;
        let mut latencies: Vec<u64> = rows
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.err(e))?
            .into_iter()
            .map(|ms| ms.max(0) as u64)
            .collect();
        if latencies.is_empty() {
            return Ok(None);
        }
        latencies.sort_unstable();
        let index = (latencies.len() * 9).div_ceil(10).saturating_sub(1);
        Ok(Some(latencies[index]))
    }
}
