//! The JSON API under `/api/v1`: the same structures the pages render.
//! Every list comes wrapped in an object (`{"runs": [...]}`) so fields can
//! be added beside it without breaking clients.

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use chrono::{DateTime, Duration, Utc};
use serde::Deserialize;
use serde_json::json;

use super::{Web, model, not_found};
use crate::store::RunFilter;

/// The most a list returns, whatever `limit` asks.
const MAX_LIMIT: u32 = 1000;

pub(super) fn routes() -> Router<Web> {
    Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/runs/{id}", get(run))
        .route("/api/v1/batches", get(batches))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/kpis", get(kpis))
}

/// An instant in a query: `YYYY-MM-DD` or RFC 3339.
fn instant<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    text.filter(|t| !t.is_empty())
        .map(|t| crate::clock::parse_instant(&t).map_err(serde::de::Error::custom))
        .transpose()
}

async fn status(State(web): State<Web>) -> Response {
    let (now, zones) = (web.now(), model::zones(&web.engine.jobs()));
    match web.read(move |s| crate::status::collect(s, None, &zones, now)).await {
        Ok(report) => Json(report).into_response(),
        Err(response) => response,
    }
}

/// `/api/v1/runs?job=&state=&since=&limit=`.
#[derive(Debug, Deserialize)]
struct RunsQuery {
    job: Option<String>,
    state: Option<String>,
    #[serde(default, deserialize_with = "instant")]
    since: Option<DateTime<Utc>>,
    limit: Option<u32>,
}

async fn runs(State(web): State<Web>, Query(query): Query<RunsQuery>) -> Response {
    let now = web.now();
    let zones = model::zones(&web.engine.jobs());
    let filter = RunFilter {
        job: query.job,
        state: query.state,
        since: query.since,
        limit: query.limit.unwrap_or(model::DEFAULT_RUN_LIMIT).min(MAX_LIMIT),
    };
    match web.read(move |s| model::runs(s, &filter, &zones, now)).await {
        Ok(runs) => Json(json!({ "now": now, "runs": runs })).into_response(),
        Err(response) => response,
    }
}

async fn run(State(web): State<Web>, Path(id): Path<i64>) -> Response {
    let now = web.now();
    let zones = model::zones(&web.engine.jobs());
    match web.read(move |s| model::run_detail(s, id, &zones, now)).await {
        Ok(Some(detail)) => Json(detail).into_response(),
        Ok(None) => not_found(format!("no run with id {id}")),
        Err(response) => response,
    }
}

/// `/api/v1/batches?run_id=&limit=`.
#[derive(Debug, Deserialize)]
struct BatchesQuery {
    run_id: Option<i64>,
    limit: Option<u32>,
}

async fn batches(State(web): State<Web>, Query(query): Query<BatchesQuery>) -> Response {
    let limit = query.limit.unwrap_or(model::DEFAULT_RUN_LIMIT).min(MAX_LIMIT);
    match web.read(move |s| s.batch_listings(query.run_id, limit)).await {
        Ok(listings) => {
            let batches: Vec<model::BatchItem> = listings.iter().map(model::batch_item).collect();
            Json(json!({ "batches": batches })).into_response()
        }
        Err(response) => response,
    }
}

async fn jobs(State(web): State<Web>) -> Response {
    let now = web.now();
    let jobs = web.engine.jobs();
    match web.read(move |s| model::jobs(s, &jobs, now)).await {
        Ok(items) => Json(json!({ "jobs": items })).into_response(),
        Err(response) => response,
    }
}

/// `/api/v1/kpis?since=&until=` (default: the last 30 days).
#[derive(Debug, Deserialize)]
struct KpiQuery {
    #[serde(default, deserialize_with = "instant")]
    since: Option<DateTime<Utc>>,
    #[serde(default, deserialize_with = "instant")]
    until: Option<DateTime<Utc>>,
}

async fn kpis(State(web): State<Web>, Query(query): Query<KpiQuery>) -> Response {
    let now = web.now();
    let until = query.until.unwrap_or(now);
    let since = query.since.unwrap_or(until.checked_sub_signed(Duration::days(30)).unwrap_or(DateTime::<Utc>::MIN_UTC));
    match web.read(move |s| model::kpis(s, since, until)).await {
        Ok(report) => Json(report).into_response(),
        Err(response) => response,
    }
}
