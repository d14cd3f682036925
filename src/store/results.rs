//! Results: every outcome received, the winner per request, and deliveries.

use super::sql::{Transaction, params};
use chrono::{DateTime, Utc};

use super::costs::AnswerPrice;
use super::{Store, StoreError, from_millis, to_millis};
use crate::outcome::{Outcome, Usage};

/// What one call of [`Store::ingest_batch_results`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResultCounts {
    /// Result lines stored now.
    pub stored: u64,
    /// Lines already stored (a repeated ingest).
    pub already_stored: u64,
    /// Lines for custom_ids that are not in the batch (ignored, reported).
    pub unknown: u64,
    /// Successes for requests that already had a final result (duplicate spend).
    pub duplicates: u64,
}

/// A successful result waiting for its sink.
#[derive(Debug, Clone, PartialEq)]
pub struct DeliverableResult {
    /// The request.
    pub custom_id: String,
    /// The result row.
    pub result_id: i64,
    /// The item, as JSON text.
    pub item: String,
    /// The provider message, as JSON text.
    pub message: String,
    /// Why the model stopped.
    pub stop_reason: Option<String>,
    /// Billed usage.
    pub usage: Usage,
    /// `batch` or `sync`.
    pub lane: String,
    /// When the result arrived.
    pub received_at: DateTime<Utc>,
    /// What it cost, micro-dollars (once priced).
    pub cost_micros: Option<i64>,
    /// What the sync API would have charged, micro-dollars (once priced).
    pub sync_cost_micros: Option<i64>,
    /// The request's place in its run: where the next round starts reading.
    pub seq: i64,
}

/// Requests settled per transaction by [`Store::settle_batch_results`].
const SETTLE_SLICE: usize = 2000;

impl Store {
    /// Stores a chunk of a batch's result lines in one transaction and
    /// settles the requests they answer: [`Store::store_batch_results`]
    /// then [`Store::settle_batch_results`]. Idempotent.
    pub fn ingest_batch_results(
        &mut self,
        batch_id: i64,
        lines: &[(String, Outcome)],
        now: DateTime<Utc>,
    ) -> Result<ResultCounts, StoreError> {
        let mut counts = self.store_batch_results(batch_id, lines, now)?;
        counts.duplicates += self.settle_batch_results(batch_id, now)?;
        Ok(counts)
    }

    /// Stores a chunk of a batch's result lines in one transaction, leaving
    /// the requests' states alone until [`Store::settle_batch_results`].
    /// Idempotent: a line already stored for this batch changes nothing.
    ///
    /// Results arrive in no particular order; settling them one by one
    /// rewrote a page of `requests` (and of its state index) per result.
    /// Settled afterwards in key order, each page is written once.
    pub fn store_batch_results(
        &mut self,
        batch_id: i64,
        lines: &[(String, Outcome)],
        now: DateTime<Utc>,
    ) -> Result<ResultCounts, StoreError> {
        let path = self.path.clone();
        let tx = self.conn.transaction().map_err(|e| super::database(&path, e))?;
        let counts = store_lines(&tx, batch_id, lines, now).map_err(|e| super::database(&path, e))?;
        tx.commit().map_err(|e| super::database(&path, e))?;
        Ok(counts)
    }

    /// Stores chunks of result lines as they arrive on `chunks` until it
    /// closes, leaving the requests' states alone until
    /// [`Store::settle_batch_results`]. A transaction takes chunks until it
    /// holds `per_commit` lines, an empty chunk comes (the sender asks for a
    /// commit: its stream is slow) or `chunks` closes; `committed` is called
    /// after each commit. Waiting for a transaction's first chunk happens
    /// outside it, so the write lock is not held while nothing arrives.
    /// Idempotent.
    pub fn store_batch_stream(
        &mut self,
        batch_id: i64,
        chunks: &mut tokio::sync::mpsc::Receiver<Vec<IncomingResult>>,
        per_commit: usize,
        now: DateTime<Utc>,
        committed: &mut dyn FnMut(),
    ) -> Result<ResultCounts, StoreError> {
        // A line is stored only once its batch membership is found, and
        // `batch_requests` already references the request and the batch:
        // checking both again cost a random page read of `requests` per result.
        self.without_foreign_keys(|store| stream_chunks(store, batch_id, chunks, per_commit, now, committed))
    }

    /// Gives every request of the batch the batch's stored result, unless
    /// the request already has a final result (a later success is then
    /// duplicate spend) or a newer result of another attempt; in custom_id
    /// order, a slice per transaction. Returns the duplicates found. Safe to
    /// repeat: results already taken or flagged are skipped.
    pub fn settle_batch_results(&mut self, batch_id: i64, now: DateTime<Utc>) -> Result<u64, StoreError> {
        // Every result id written comes from the row just read in the same
        // transaction: checking it against `results` again cost two random
        // page reads of that large table per request.
        self.without_foreign_keys(|store| store.settle_slices(batch_id, now))
    }

    /// Runs `work` with foreign-key checks off, for writes whose references
    /// the caller has already checked; they are on again afterwards, even
    /// when `work` failed.
    fn without_foreign_keys<T>(
        &mut self,
        work: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        // PostgreSQL keeps its checks: they cost an index probe there, not
        // a random page read of a file.
        if self.conn.dialect() == super::sql::Dialect::Postgres {
            return work(self);
        }
        self.conn.execute_batch("PRAGMA foreign_keys = OFF;").map_err(|e| self.err(e))?;
        let done = work(self);
        self.conn.execute_batch("PRAGMA foreign_keys = ON;").map_err(|e| self.err(e))?;
        done
    }

    fn settle_slices(&mut self, batch_id: i64, now: DateTime<Utc>) -> Result<u64, StoreError> {
        let path = self.path.clone();
        let e = |source| super::database(&path, source);
        let (mut after, mut duplicates) = (String::new(), 0);
        loop {
            let tx = self.conn.transaction().map_err(e)?;
            let slice = unsettled(&tx, batch_id, &after).map_err(e)?;
            duplicates += settle(&tx, &slice, now).map_err(e)?;
            tx.commit().map_err(e)?;
            match slice.last() {
                Some(last) if slice.len() == SETTLE_SLICE => after.clone_from(&last.custom_id),
                _ => return Ok(duplicates),
            }
        }
    }

    /// The first `limit` successful results of a run that no sink has
    /// received yet, in sequence order.
    pub fn undelivered_results(&self, run_id: i64, limit: usize) -> Result<Vec<DeliverableResult>, StoreError> {
        self.undelivered_results_after(run_id, -1, limit)
    }

    /// Like [`Store::undelivered_results`], from the requests after `after_seq`
    /// on: a delivery round starts where the last one stopped, through the
    /// `(run_id, seq)` index, instead of passing every delivered request again.
    pub fn undelivered_results_after(
        &self,
        run_id: i64,
        after_seq: i64,
        limit: usize,
    ) -> Result<Vec<DeliverableResult>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT q.custom_id, r.id, b.item, r.message, r.stop_reason, r.input_tokens, r.output_tokens,
                        r.cache_write_5m, r.cache_write_1h, r.cache_read, r.lane, r.received_at,
                        r.cost_micros, r.sync_cost_micros, q.seq
                 FROM requests q INDEXED BY requests_by_run_seq
                 JOIN results r ON r.id = q.result_id JOIN request_bodies b ON b.custom_id = q.custom_id
                 WHERE q.run_id = ?1 AND q.seq > ?3 AND q.state = 'succeeded'
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.custom_id = q.custom_id)
                 ORDER BY q.seq LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map(params![run_id, i64::try_from(limit).unwrap_or(i64::MAX), after_seq], |row| {
                Ok(DeliverableResult {
                    custom_id: row.get(0)?,
                    result_id: row.get(1)?,
                    item: row.get(2)?,
                    message: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    stop_reason: row.get(4)?,
                    usage: usage_at(row, 5)?,
                    lane: row.get(10)?,
                    received_at: from_millis(row.get(11)?),
                    cost_micros: row.get(12)?,
                    sync_cost_micros: row.get(13)?,
                    seq: row.get(14)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// Number of successful results of a run that no sink has received yet.
    pub fn undelivered_count(&self, run_id: i64) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM requests q WHERE q.run_id = ?1 AND q.state = 'succeeded'
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.custom_id = q.custom_id)",
                [run_id],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Records that a result reached its sink. Recording twice changes nothing.
    pub fn record_delivery(
        &mut self,
        custom_id: &str,
        result_id: i64,
        sink: &str,
        target: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        self.conn
            .execute(
                "INSERT INTO deliveries (custom_id, result_id, sink, target, delivered_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (custom_id) DO NOTHING",
                params![custom_id, result_id, sink, target, to_millis(now)],
            )
            .map(|n| n == 1)
            .map_err(|e| self.err(e))
    }

    /// Number of recorded deliveries of a run.
    pub fn delivery_count(&self, run_id: i64) -> Result<u64, StoreError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM deliveries d JOIN requests q ON q.custom_id = d.custom_id WHERE q.run_id = ?1",
                [run_id],
                |row| row.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Permanent failures of a run: custom_id, error type and the provider's message.
    pub fn permanent_failures(&self, run_id: i64) -> Result<Vec<(String, String, String)>, StoreError> {
        let mut statement = self
            .conn
            .prepare_cached(
                "SELECT q.custom_id, COALESCE(r.error_type, ''), COALESCE(r.error_message, '')
                 FROM requests q LEFT JOIN results r ON r.id = q.result_id
                 WHERE q.run_id = ?1 AND q.state = 'permanent_failed' ORDER BY q.seq",
            )
            .map_err(|e| self.err(e))?;
        let rows = statement
            .query_map([run_id], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }
}

/// The loop of [`Store::store_batch_stream`]: a transaction per run of
/// chunks, each chunk stored in key order so that consecutive lines find
/// their index pages already in the cache.
fn stream_chunks(
    store: &mut Store,
    batch_id: i64,
    chunks: &mut tokio::sync::mpsc::Receiver<Vec<IncomingResult>>,
    per_commit: usize,
    now: DateTime<Utc>,
    committed: &mut dyn FnMut(),
) -> Result<ResultCounts, StoreError> {
    let path = store.path.clone();
    let e = |source| super::database(&path, source);
    let mut total = ResultCounts::default();
    while let Some(mut chunk) = chunks.blocking_recv() {
        if chunk.is_empty() {
            continue;
        }
        let tx = store.conn.transaction().map_err(e)?;
        let mut lines = 0;
        loop {
            chunk.sort_unstable_by(|a, b| a.custom_id.cmp(&b.custom_id));
            for IncomingResult { custom_id, outcome, price } in &chunk {
                store_line(&tx, batch_id, (custom_id, outcome, price.as_ref()), now, &mut total).map_err(e)?;
            }
            lines += chunk.len();
            if lines >= per_commit {
                break;
            }
            match chunks.blocking_recv() {
                Some(next) if !next.is_empty() => chunk = next,
                _ => break,
            }
        }
        tx.commit().map_err(e)?;
        tracing::trace!(batch = batch_id, lines, "committed results");
        committed();
    }
    Ok(total)
}

fn store_lines(
    tx: &Transaction<'_>,
    batch_id: i64,
    lines: &[(String, Outcome)],
    now: DateTime<Utc>,
) -> super::sql::Result<ResultCounts> {
    let mut counts = ResultCounts::default();
    // In key order, consecutive lines find their index pages already in the cache.
    let mut order: Vec<&(String, Outcome)> = lines.iter().collect();
    order.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (custom_id, outcome) in order {
        store_line(tx, batch_id, (custom_id, outcome, None), now, &mut counts)?;
    }
    Ok(counts)
}

/// Stores one line of the batch's results, counting what it did.
fn store_line(
    tx: &Transaction<'_>,
    batch_id: i64,
    (custom_id, outcome, price): (&str, &Outcome, Option<&AnswerPrice>),
    now: DateTime<Utc>,
    counts: &mut ResultCounts,
) -> super::sql::Result<()> {
    let mut member = tx.prepare_cached("SELECT 1 FROM batch_requests WHERE batch_id = ?1 AND custom_id = ?2")?;
    if !member.exists(params![batch_id, custom_id])? {
        counts.unknown += 1;
        return Ok(());
    }
    let row =
        NewResult { custom_id, lane: "batch", batch_id: Some(batch_id), attempt_id: None, duplicate: false, price };
    if insert_result(tx, &row, outcome, now)? == 0 {
        counts.already_stored += 1;
    } else {
        counts.stored += 1;
    }
    Ok(())
}

/// A stored batch result its request has not taken yet.
struct Unsettled {
    result_id: i64,
    custom_id: String,
    /// The request's state now.
    state: String,
    /// What the result makes of the request.
    next: &'static str,
    /// Whether the result uses up one of the request's attempts.
    counts: bool,
    /// Another attempt's result is newer: it decided the request.
    superseded: bool,
}

/// The next slice of the batch's unsettled results after `after`, in custom_id order.
fn unsettled(tx: &Transaction<'_>, batch_id: i64, after: &str) -> super::sql::Result<Vec<Unsettled>> {
    // Only a failure can be superseded (a success always settles, see
    // `settle`): successes, nearly every result, skip the extra lookup.
    let mut statement = tx.prepare_cached(
        "SELECT r.id, r.custom_id, q.state, r.status, r.error_type,
                CASE WHEN r.status = 'succeeded' THEN false
                     ELSE EXISTS (SELECT 1 FROM results n WHERE n.custom_id = r.custom_id AND n.id > r.id) END
         FROM batch_requests m
         JOIN results r ON r.custom_id = m.custom_id AND r.batch_id = m.batch_id
         JOIN requests q ON q.custom_id = m.custom_id
         WHERE m.batch_id = ?1 AND m.custom_id > ?2 AND r.duplicate = 0 AND q.result_id IS DISTINCT FROM r.id
         ORDER BY m.custom_id LIMIT ?3",
    )?;
    let rows = statement.query_map(params![batch_id, after, SETTLE_SLICE as i64], |row| {
        let status: String = row.get(3)?;
        let error_type: Option<String> = row.get(4)?;
        Ok(Unsettled {
            result_id: row.get(0)?,
            custom_id: row.get(1)?,
            state: row.get(2)?,
            next: next_state(&status, error_type.as_deref()),
            counts: status == "errored"
                && !error_type.as_deref().is_some_and(crate::outcome::is_backpressure_error_type),
            superseded: row.get(5)?,
        })
    })?;
    rows.collect()
}

/// The request state a stored result leads to (as [`Outcome::is_retryable`] decides).
fn next_state(status: &str, error_type: Option<&str>) -> &'static str {
    match (status, error_type) {
        ("succeeded", _) => "succeeded",
        ("errored", Some(kind)) if crate::outcome::is_permanent_error_type(kind) => "permanent_failed",
        _ => "retryable_failed",
    }
}

/// Applies a slice: first final result wins; returns the duplicates flagged.
fn settle(tx: &Transaction<'_>, slice: &[Unsettled], now: DateTime<Utc>) -> super::sql::Result<u64> {
    let mut take = tx.prepare_cached(
        "UPDATE requests SET state = ?2, result_id = ?3, updated_at = ?4, attempts = attempts + ?5 WHERE custom_id = ?1",
    )?;
    // A duplicate saved nothing: a price computed as it was stored says so now.
    let mut duplicate = tx.prepare_cached(
        "UPDATE results SET duplicate = 1, sync_cost_micros = CASE WHEN cost_micros IS NULL THEN NULL ELSE 0 END
         WHERE id = ?1",
    )?;
    let mut duplicates = 0;
    for result in slice {
        if result.state == "succeeded" || result.state == "permanent_failed" {
            // Paid for, but another final result came first: not delivered.
            if result.next == "succeeded" {
                duplicate.execute([result.result_id])?;
                duplicates += 1;
            }
        } else if !result.superseded || result.next == "succeeded" {
            // A success settles a request that is not final yet, even when a
            // newer failure of another attempt came first (a sync call that
            // failed while the batch's results were being stored): it is paid
            // for, and sending the request again would pay twice.
            take.execute(params![result.custom_id, result.next, result.result_id, to_millis(now), result.counts])?;
        }
    }
    Ok(duplicates)
}

/// Where a result came from.
pub(super) struct NewResult<'a> {
    pub custom_id: &'a str,
    /// `batch` or `sync`.
    pub lane: &'static str,
    /// The batch, for batch results.
    pub batch_id: Option<i64>,
    /// The call, for sync results.
    pub attempt_id: Option<i64>,
    /// Paid for, but another final result came first.
    pub duplicate: bool,
    /// Its price, when known as it is stored.
    pub price: Option<&'a AnswerPrice>,
}

/// A batch result on its way into the store, priced when the lane could
/// tell its price (the answer named its model).
#[derive(Debug)]
pub struct IncomingResult {
    /// The request it answers.
    pub custom_id: String,
    /// What happened.
    pub outcome: Outcome,
    /// Its price, for a success whose model the catalog prices.
    pub price: Option<AnswerPrice>,
}

/// Inserts one result; returns the number of rows stored (0 when this
/// batch's line for the request is already stored; sync results always store).
pub(super) fn insert_result(
    tx: &Transaction<'_>,
    row: &NewResult<'_>,
    outcome: &Outcome,
    now: DateTime<Utc>,
) -> super::sql::Result<usize> {
    let (error_type, error_message, message, stop_reason, usage) = columns(outcome);
    tx.prepare_cached(
        "INSERT INTO results (custom_id, lane, batch_id, attempt_id, status, error_type, error_message, message,
                              stop_reason, input_tokens, output_tokens, cache_write_5m, cache_write_1h, cache_read,
                              duplicate, received_at, model, provider, cost_micros, sync_cost_micros)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)
         ON CONFLICT (custom_id, batch_id) DO NOTHING",
    )?
    .execute(params![
        row.custom_id,
        row.lane,
        row.batch_id,
        row.attempt_id,
        outcome.status(),
        error_type,
        error_message,
        message,
        stop_reason,
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_write_5m_tokens,
        usage.cache_write_1h_tokens,
        usage.cache_read_tokens,
        row.duplicate,
        to_millis(now),
        row.price.map(|p| &p.model),
        row.price.and_then(|p| p.provider.as_ref()),
        row.price.map(|p| p.cost_micros),
        row.price.map(|p| p.sync_cost_micros),
    ])
}

/// The five usage columns (`input_tokens, output_tokens, cache_write_5m,
/// cache_write_1h, cache_read`), selected in that order from index `first`.
pub(super) fn usage_at(row: &super::sql::Row<'_>, first: usize) -> super::sql::Result<Usage> {
    Ok(Usage {
        input_tokens: row.get(first)?,
        output_tokens: row.get(first + 1)?,
        cache_write_5m_tokens: row.get(first + 2)?,
        cache_write_1h_tokens: row.get(first + 3)?,
        cache_read_tokens: row.get(first + 4)?,
    })
}

type Columns<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, Option<&'a str>, Usage);

fn columns(outcome: &Outcome) -> Columns<'_> {
    match outcome {
        Outcome::Succeeded { message, stop_reason, usage } => {
            (None, None, Some(message), stop_reason.as_deref(), *usage)
        }
        Outcome::Errored { error_type, message } => (Some(error_type), Some(message), None, None, Usage::default()),
        Outcome::Canceled | Outcome::Expired => (None, None, None, None, Usage::default()),
    }
}

impl Store {
    /// A JSONL sink file's length when its last round of deliveries was recorded.
    pub fn sink_file_length(&self, target: &str) -> Result<Option<u64>, StoreError> {
        use super::sql::OptionalExtension;
        self.conn
            .query_row("SELECT length FROM sink_files WHERE target = ?1", [target], |row| row.get(0))
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Records a round of deliveries to one sink in one transaction, with
    /// the JSONL file's length after it (`file_length`) when it is one.
    /// `delivered` names stored results (as read for the round), and
    /// requests with results are never deleted: checking both references
    /// again cost two random page reads per delivery (a fifth of a round).
    pub fn record_deliveries(
        &mut self,
        delivered: &[(String, i64)],
        sink: &str,
        target: &str,
        file_length: Option<u64>,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.without_foreign_keys(|store| {
            let path = store.path.clone();
            let e = |source| super::database(&path, source);
            let tx = store.conn.transaction().map_err(e)?;
            if let Some(length) = file_length {
                tx.execute(
                    "INSERT INTO sink_files (target, length, updated_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (target) DO UPDATE SET length = ?2, updated_at = ?3",
                    params![target, length, to_millis(now)],
                )
                .map_err(e)?;
            }
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT INTO deliveries (custom_id, result_id, sink, target, delivered_at)
                         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (custom_id) DO NOTHING",
                    )
                    .map_err(e)?;
                for (custom_id, result_id) in delivered {
                    insert.execute(params![custom_id, result_id, sink, target, to_millis(now)]).map_err(e)?;
                }
            }
            tx.commit().map_err(e)
        })
    }
}
