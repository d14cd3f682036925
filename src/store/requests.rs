//! Requests: one rendered call per item, keyed by custom_id.

use std::collections::BTreeMap;

use super::sql::params;
use chrono::{DateTime, Utc};

use super::{Store, StoreError, to_millis};

/// Where a request is. Delivery is recorded separately, in `deliveries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum RequestState {
    /// Rendered and stored; not yet in any lane.
    Pending,
    /// Part of a batch whose create call has not returned yet.
    Queued,
    /// At the provider.
    InFlight,
    /// A final successful result is stored.
    Succeeded,
    /// The last attempt failed in a way that a retry can fix.
    RetryableFailed,
    /// Failed in a way no retry can fix (`invalid_request_error`).
    PermanentFailed,
}

impl RequestState {
    /// Every state.
    pub const ALL: [RequestState; 6] = [
        RequestState::Pending,
        RequestState::Queued,
        RequestState::InFlight,
        RequestState::Succeeded,
        RequestState::RetryableFailed,
        RequestState::PermanentFailed,
    ];

    /// The stored word.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestState::Pending => "pending",
            RequestState::Queued => "queued",
            RequestState::InFlight => "in_flight",
            RequestState::Succeeded => "succeeded",
            RequestState::RetryableFailed => "retryable_failed",
            RequestState::PermanentFailed => "permanent_failed",
        }
    }
}

/// A rendered request to store.
#[derive(Debug, Clone)]
pub struct NewRequest {
    /// `<job>-<YYYY-MM-DD>-<seq>`.
    pub custom_id: String,
    /// 1-based position in the run.
    pub seq: usize,
    /// The item, as JSON text.
    pub item: String,
    /// The Messages API body, as JSON text.
    pub params: String,
}

impl Store {
    /// Stores rendered requests of a run (a chunk of its preparation) in one
    /// transaction. Requests that exist already are left as they are.
    pub fn insert_requests(
        &mut self,
        run_id: i64,
        requests: &[NewRequest],
        now: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        let mut inserted = 0;
        {
            let mut state = tx
                .prepare_cached(
                    "INSERT INTO requests (custom_id, run_id, seq, state, updated_at, params_len)
                     VALUES (?1, ?2, ?3, 'pending', ?4, ?5) ON CONFLICT (custom_id) DO NOTHING",
                )
                .map_err(e)?;
            let mut body = tx
                .prepare_cached("INSERT INTO request_bodies (custom_id, item, params) VALUES (?1, ?2, ?3)")
                .map_err(e)?;
            for request in requests {
                let new = state
                    .execute(params![
                        request.custom_id,
                        run_id,
                        request.seq as i64,
                        to_millis(now),
                        request.params.len()
                    ])
                    .map_err(e)?;
                if new == 1 {
                    body.execute(params![request.custom_id, request.item, request.params]).map_err(e)?;
                }
                inserted += new;
            }
        }
        tx.commit().map_err(e)?;
        Ok(inserted)
    }

    /// Deletes the requests of a run that was never marked prepared: what an
    /// interrupted preparation (a crash, a source that failed halfway)
    /// left. A prepared run's requests are never touched. Returns how many.
    pub fn discard_unprepared_requests(&mut self, run_id: i64) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let tx = self.conn.transaction().map_err(e)?;
        let unprepared: bool = tx
            .query_row("SELECT prepared_at IS NULL FROM runs WHERE id = ?1", [run_id], |row| row.get(0))
            .map_err(e)?;
        if !unprepared {
            return Ok(0);
        }
        tx.execute(
            "DELETE FROM request_bodies WHERE custom_id IN (SELECT custom_id FROM requests WHERE run_id = ?1)",
            [run_id],
        )
        .map_err(e)?;
        let deleted = tx.execute("DELETE FROM requests WHERE run_id = ?1", [run_id]).map_err(e)?;
        tx.commit().map_err(e)?;
        Ok(deleted)
    }

    /// custom_ids of a run's requests in any of `states`, in sequence order.
    pub fn request_ids(&self, run_id: i64, states: &[RequestState]) -> Result<Vec<String>, StoreError> {
        let wanted: Vec<&str> = states.iter().map(|s| s.as_str()).collect();
        let mut statement = self
            .conn
            .prepare_cached("SELECT custom_id, state FROM requests WHERE run_id = ?1 ORDER BY seq")
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([run_id], |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut ids = Vec::new();
        for row in rows {
            let (id, state) = row.map_err(|e| self.err(e))?;
            if wanted.contains(&state.as_str()) {
                ids.push(id);
            }
        }
        Ok(ids)
    }

    /// Number of a run's requests in each state (every state present, zero or not).
    pub fn request_counts(&self, run_id: i64) -> Result<BTreeMap<&'static str, u64>, StoreError> {
        let mut counts: BTreeMap<&'static str, u64> = RequestState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let mut statement = self
            .conn
            .prepare_cached("SELECT state, COUNT(*) FROM requests WHERE run_id = ?1 GROUP BY state")
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([run_id], |row| Ok((row.get::<_, String>(0)?, row.get::<_, u64>(1)?)))
            .map_err(|e| self.err(e))?;
        for row in rows {
            let (state, count) = row.map_err(|e| self.err(e))?;
            if let Some(slot) = RequestState::ALL.iter().find(|s| s.as_str() == state) {
                counts.insert(slot.as_str(), count);
            }
        }
        Ok(counts)
    }

    /// How many of the request's attempts are used up: its own failed results
    /// (backpressure, cancels and expiry use none; `retry.max_attempts` bounds them).
    pub fn request_attempts(&self, custom_id: &str) -> Result<u32, StoreError> {
        self.conn
            .query_row("SELECT attempts FROM requests WHERE custom_id = ?1", [custom_id], |row| row.get(0))
            .map_err(|e| self.err(e))
    }
}

/// A request waiting for a lane, with what splitting needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Its id.
    pub custom_id: String,
    /// Length of its params JSON in bytes.
    pub params_len: usize,
    /// Whether it is a retry (it failed before in a way a retry can fix).
    pub retry: bool,
}

impl Store {
    /// Requests of a run that a lane should take: `pending`, and
    /// `retryable_failed` with fewer than `max_attempts` attempts; in sequence order.
    ///
    /// Asked on every tick of an open run, nearly always when none waits:
    /// found by state (`IN`, one index seek per state), not by walking the
    /// run's requests in sequence order, which an `OR` of the two states
    /// led the planner to (50 ms a call for a run of 100,000 requests).
    /// Sorting what waits by sequence costs only when many wait.
    pub fn waiting_requests(&self, run_id: i64, max_attempts: u32) -> Result<Vec<Waiting>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT q.custom_id, q.params_len, q.state = 'retryable_failed'
                 FROM requests q INDEXED BY requests_by_run_state
                 WHERE q.run_id = ?1 AND q.state IN ('pending', 'retryable_failed')
                   AND (q.state = 'pending' OR q.attempts < ?2)
                 ORDER BY q.seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map(params![run_id, max_attempts], |row| {
                Ok(Waiting { custom_id: row.get(0)?, params_len: row.get(1)?, retry: row.get(2)? })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Whether [`Store::waiting_requests`] would return any, without reading them.
    pub fn has_waiting_requests(&self, run_id: i64, max_attempts: u32) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached(
                "SELECT 1 FROM requests INDEXED BY requests_by_run_state
                 WHERE run_id = ?1 AND state IN ('pending', 'retryable_failed') AND (state = 'pending' OR attempts < ?2)",
            )
            .and_then(|mut s| s.exists(params![run_id, max_attempts]))
            .map_err(|e| self.err(e))
    }

    /// Whether `provider_batch_id` is already one of ours.
    pub fn knows_provider_batch(&self, provider_batch_id: &str) -> Result<bool, StoreError> {
        self.conn
            .prepare_cached("SELECT 1 FROM batches WHERE provider_batch_id = ?1")
            .and_then(|mut s| s.exists([provider_batch_id]))
            .map_err(|e| self.err(e))
    }
}

impl Store {
    /// The run that owns `custom_id`, if any.
    pub fn custom_id_owner(&self, custom_id: &str) -> Result<Option<i64>, StoreError> {
        use super::sql::OptionalExtension;
        self.conn
            .query_row("SELECT run_id FROM requests WHERE custom_id = ?1", [custom_id], |row| row.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }
}

/// Requests whose params length estimates a run's input tokens.
const TOKEN_SAMPLE: i64 = 1000;
/// Successes whose output tokens estimate the next ones.
const OUTPUT_SAMPLE: i64 = 500;

/// Token figures the fallback planner needs for one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenAverages {
    /// Average request body length / 4 over the run's first 1,000 requests (about 4 characters per token).
    pub input_tokens: f64,
    /// Average output tokens of up to 500 succeeded requests of the job's newest runs, if any.
    pub output_tokens: Option<f64>,
}

impl Store {
    /// Token averages for planning the rest of `run_id` of `job`.
    pub fn token_averages(&self, run_id: i64, job: &str) -> Result<TokenAverages, StoreError> {
        // The planner asks on every tick: both averages read a bounded
        // sample (over a whole run of 100,000 and every result of the job,
        // they took 50 and 170 ms a tick), which is all a guess needs.
        let input: Option<f64> = self
            .conn
            .prepare_cached(
                "SELECT AVG(params_len) FROM (
                   SELECT params_len FROM requests INDEXED BY requests_by_run_seq
                   WHERE run_id = ?1 ORDER BY seq LIMIT ?2) sample",
            )
            .and_then(|mut s| s.query_row(params![run_id, TOKEN_SAMPLE], |row| row.get(0)))
            .map_err(|e| self.err(e))?;
        let output: Option<f64> = self
            .conn
            .prepare_cached(
                "SELECT AVG(output_tokens) FROM (
                   SELECT r.output_tokens FROM runs u
                   JOIN requests q INDEXED BY requests_by_run_state ON q.run_id = u.id AND q.state = 'succeeded'
                   JOIN results r ON r.id = q.result_id
                   WHERE u.job = ?1 ORDER BY u.scheduled_for DESC LIMIT ?2) sample",
            )
            .and_then(|mut s| s.query_row(params![job, OUTPUT_SAMPLE], |row| row.get(0)))
            .map_err(|e| self.err(e))?;
        Ok(TokenAverages { input_tokens: input.unwrap_or(0.0) / 4.0, output_tokens: output })
    }
}
