//! Moving successful results into the job's sink, and recording it.

use chrono::{DateTime, Utc};

use crate::cost::{Pricer, price_pending, usd};
use crate::job::Job;
use crate::manifest::{Sink, SqliteSink};
use crate::outcome::message_text_of;
use crate::render::{RenderError, RunInfo, render_path};
use crate::sinks::{self, DeliveredResult, SinkError, SinkMark};
use crate::store::{DeliverableResult, SharedStore, StoreError};

/// Why a delivery round failed; nothing of the round is recorded then.
#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// The sink path template failed.
    #[error(transparent)]
    Render(#[from] RenderError),
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
    /// The state database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Results handed to the sink per round. A run of any size is delivered in
/// rounds of bounded memory, each recorded before the next one is read; at
/// 5,000 a round's results (about 3 KB each, briefly twice) were the run's
/// peak memory, and smaller rounds cost no more CPU.
const DELIVERY_CHUNK: usize = 2000;

/// Delivers every successful, undelivered result of the run; returns how
/// many. The daemon's ticks call it, and so does `bench deliver`.
pub async fn deliver_pending(
    store: &SharedStore,
    job: &Job,
    info: &RunInfo,
    run_id: i64,
    pricer: &Pricer,
    now: DateTime<Utc>,
) -> Result<usize, DeliverError> {
    let mut sink = None;
    let mut delivered = 0;
    // Each round reads on from the last one; a result that arrives behind
    // it meanwhile is delivered by the next call (the next tick).
    let mut after_seq = -1;
    loop {
        let pricer = pricer.clone();
        let pending = store
            .call(move |s| {
                // Results carry their cost: price what arrived since the last
                // round in the same call, so nothing is read unpriced.
                price_pending(s, &pricer)?;
                s.undelivered_results_after(run_id, after_seq, DELIVERY_CHUNK)
            })
            .await?;
        let Some(last) = pending.last() else {
            return Ok(delivered);
        };
        after_seq = last.seq;
        let sink = match &sink {
            Some(sink) => sink,
            None => sink.insert(rendered_sink(job, info)?),
        };
        delivered += deliver_round(store, job, info, sink, pending, now).await?;
    }
}

/// Writes one round of results to the sink, then records them as delivered.
async fn deliver_round(
    store: &SharedStore,
    job: &Job,
    info: &RunInfo,
    sink: &Sink,
    pending: Vec<DeliverableResult>,
    now: DateTime<Utc>,
) -> Result<usize, DeliverError> {
    let (kind, target) = sinks::describe(sink);
    // What is recorded afterwards, then the round's answers dropped as they
    // become sink results: a round holds its results once, not twice.
    let ids: Vec<(String, i64)> = pending.iter().map(|r| (r.custom_id.clone(), r.result_id)).collect();
    let delivered: Vec<DeliveredResult> = pending.into_iter().map(|r| delivered_result(job, info, r, now)).collect();
    let sink_for_thread = sink.clone();
    let file = target.clone();
    let mark = SinkMark { jsonl_len: store.call(move |s| s.sink_file_length(&file)).await? };
    let mark = tokio::task::spawn_blocking(move || sinks::deliver(&sink_for_thread, &delivered, mark))
        .await
        .expect("sink task panicked")?;
    crate::failpoint::hit("after_sink_write");
    let count = ids.len();
    store.call(move |s| s.record_deliveries(&ids, kind, &target, mark.jsonl_len, now)).await?;
    tracing::info!(run = %info.id, delivered = count, sink = kind, "results delivered");
    Ok(count)
}

fn rendered_sink(job: &Job, info: &RunInfo) -> Result<Sink, RenderError> {
    let Some(sink) = &job.manifest.sink else {
        return Ok(Sink::default());
    };
    let render = |text: &Option<String>| text.as_deref().map(|t| render_path(job, info, t)).transpose();
    Ok(Sink {
        jsonl: render(&sink.jsonl)?,
        dir: render(&sink.dir)?,
        command: render(&sink.command)?,
        sqlite: match &sink.sqlite {
            Some(s) => Some(SqliteSink { path: render_path(job, info, &s.path)?, table: s.table.clone() }),
            None => None,
        },
        postgres: sink.postgres.clone(),
    })
}

fn delivered_result(job: &Job, info: &RunInfo, result: DeliverableResult, now: DateTime<Utc>) -> DeliveredResult {
    DeliveredResult {
        text: message_text_of(&result.message),
        custom_id: result.custom_id,
        job: job.name.clone(),
        run: info.id.clone(),
        scheduled_for: info.scheduled_for.clone(),
        // The item is passed on as stored (it was serialized from a JSON object).
        item: serde_json::value::RawValue::from_string(result.item)
            .unwrap_or_else(|_| serde_json::value::to_raw_value(&serde_json::Value::Null).expect("null serializes")),
        stop_reason: result.stop_reason,
        usage: result.usage,
        lane: result.lane,
        cost_usd: result.cost_micros.map(usd),
        sync_equivalent_usd: result.sync_cost_micros.map(usd),
        received_at: result.received_at.to_rfc3339(),
        delivered_at: now.to_rfc3339(),
    }
}
