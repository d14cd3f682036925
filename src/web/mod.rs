//! The daemon's web server: the dashboard (`/batches`, `/runs/{id}`,
//! `/jobs`), the JSON API under `/api/v1`, Prometheus `/metrics` and
//! `/healthz`. Read-only but for the enqueue endpoint ([`enqueue`]), which
//! commits posted items through the engine's connection.
//!
//! Pages and API read through a connection of their own, so a slow page
//! never holds the engine's connection.

mod api;
pub mod chart;
mod enqueue;
pub mod metrics;
pub mod model;
pub mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use serde::Deserialize;

use crate::engine::Engine;
use crate::store::{SharedStore, StoreError};
use pages::{Pages, TimeMode, View};

/// Environment variable holding the bearer token required off loopback.
pub const TOKEN_ENV: &str = "ORCHESTRATOR_API_TOKEN";
/// Its file name in `$CREDENTIALS_DIRECTORY`.
pub const TOKEN_CREDENTIAL: &str = "orchestrator-api-token";

/// The largest body the enqueue endpoint takes unless configured
/// (`enqueue.max_body_bytes`): 10 MiB.
pub const DEFAULT_MAX_ENQUEUE_BODY: usize = 10 * 1024 * 1024;

/// Seconds between reloads of a page while runs are open.
const REFRESH_SECS: u32 = 10;

/// The bearer token, from the environment or the systemd credential.
pub fn token() -> Option<String> {
    crate::secrets::read(TOKEN_ENV, TOKEN_CREDENTIAL)
}

/// What the handlers share.
#[derive(Clone)]
struct Web {
    engine: Arc<Engine>,
    /// A read connection of its own.
    store: SharedStore,
    token: Option<Arc<str>>,
    pages: Arc<Pages>,
}

/// The web server as the daemon runs it: a bound listener, a read
/// connection of its own, and the token required on everything but
/// `/healthz` (when set).
pub struct Service {
    /// Where it listens (bound already, so its address is known).
    pub listener: tokio::net::TcpListener,
    /// A connection for the web alone (opened read-only).
    pub store: SharedStore,
    /// The bearer token, if one is required (the enqueue endpoint always needs one).
    pub token: Option<String>,
    /// The largest body the enqueue endpoint takes.
    pub max_enqueue_body: usize,
}

impl Service {
    /// Serves until `stop` is cancelled, then lets open requests finish.
    pub async fn serve(self, engine: Arc<Engine>, stop: tokio_util::sync::CancellationToken) {
        let app = router(engine, self.store, self.token, self.max_enqueue_body);
        let served = axum::serve(self.listener, app).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::error!(%error, "the web server stopped");
        }
    }
}

/// Serves `engine`'s dashboard on `listener` until the task ends (tests).
/// `store` is a connection for the web alone; `token`, when set, is
/// required on everything but `/healthz`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    store: SharedStore,
    token: Option<String>,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine, store, token, DEFAULT_MAX_ENQUEUE_BODY)).await
}

fn router(engine: Arc<Engine>, store: SharedStore, token: Option<String>, max_enqueue_body: usize) -> Router {
    let web = Web { engine, store, token: token.map(Arc::from), pages: Arc::new(Pages::new()) };
    Router::new()
        .route("/", get(overview))
        .route("/batches", get(overview))
        .route("/runs/{id}", get(run_page))
        .route("/jobs", get(jobs_page))
        .route("/style.css", get(stylesheet))
        .route("/metrics", get(metrics_text))
        .merge(api::routes())
        .merge(enqueue::routes(max_enqueue_body))
        .layer(middleware::from_fn_with_state(web.clone(), require_token))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(web)
}

/// Compares a presented secret in time that depends only on its length, so
/// the token cannot be guessed byte by byte from response times.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

async fn require_token(State(web): State<Web>, headers: HeaderMap, request: Request, next: Next) -> Response {
    if let Some(expected) = &web.token {
        let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
        if !same_secret(given, format!("Bearer {expected}").as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "bearer token required (Authorization: Bearer <token>)\n",
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// A failure as a 500; the details go to the log, not to the client.
fn internal(error: impl std::fmt::Display) -> Response {
    tracing::error!(%error, "web request failed");
    (StatusCode::INTERNAL_SERVER_ERROR, "internal error: the daemon's log says what failed\n").into_response()
}

fn not_found(what: String) -> Response {
    (StatusCode::NOT_FOUND, format!("{what}\n")).into_response()
}

impl Web {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.engine.clock().now()
    }

    /// Runs `f` on the web's own connection.
    async fn read<T, F>(&self, f: F) -> Result<T, Response>
    where
        T: Send + 'static,
        F: FnOnce(&crate::store::Store) -> Result<T, StoreError> + Send + 'static,
    {
        self.store.call(move |store| f(store)).await.map_err(internal)
    }

    /// Renders page `name`; its footer says who leads, and whether this
    /// process is a standby.
    async fn page(&self, name: &str, page: &impl serde::Serialize, chart: Option<String>, mut view: View) -> Response {
        let leader = match self.read(|s| s.leader()).await {
            Ok(leader) => leader,
            Err(response) => return response,
        };
        view.leader = leader.map(|leader| {
            let standby = !leader.is_this_process();
            let status = crate::status::LeaderStatus::new(leader, chrono::Utc::now());
            let role = if standby { " · this process is a standby" } else { "" };
            format!("led by {}{role}", status.describe())
        });
        match self.pages.render(name, page, chart, view) {
            Ok(html) => Html(html).into_response(),
            Err(error) => internal(format!("rendering {name}: {error:#}")),
        }
    }
}

/// `?tz=utc|job&refresh=off` on every page.
#[derive(Debug, Default, Deserialize)]
struct PageQuery {
    #[serde(default)]
    tz: TimeMode,
    refresh: Option<String>,
}

impl PageQuery {
    /// How to show a page taken at `now`; it reloads while `open` unless the viewer paused that.
    fn view(&self, now: chrono::DateTime<chrono::Utc>, open: bool) -> View {
        let paused = self.refresh.as_deref() == Some("off");
        View { now, tz: self.tz, refresh_secs: open.then_some(REFRESH_SECS), paused, leader: None }
    }
}

async fn overview(State(web): State<Web>, Query(query): Query<PageQuery>) -> Response {
    let now = web.now();
    let zones = model::zones(&web.engine.jobs());
    let limits: std::collections::HashMap<String, Option<u64>> =
        web.engine.batch_endpoints().into_iter().map(|e| (e.provider, e.queue_limit)).collect();
    let limit = move |name: &str| limits.get(name).copied().flatten();
    let page = match web.read(move |s| model::overview(s, &zones, limit, now)).await {
        Ok(page) => page,
        Err(response) => return response,
    };
    let chart = chart::spend_chart(&page.spend_by_job);
    web.page("batches", &page, Some(chart), query.view(now, page.strip.open_runs > 0)).await
}

async fn run_page(State(web): State<Web>, Path(id): Path<i64>, Query(query): Query<PageQuery>) -> Response {
    let now = web.now();
    let zones = model::zones(&web.engine.jobs());
    match web.read(move |s| model::run_detail(s, id, &zones, now)).await {
        Ok(Some(detail)) => web.page("run", &detail, None, query.view(now, detail.run.state == "open")).await,
        Ok(None) => not_found(format!("no run with id {id}")),
        Err(response) => response,
    }
}

async fn jobs_page(State(web): State<Web>, Query(query): Query<PageQuery>) -> Response {
    let now = web.now();
    let jobs = web.engine.jobs();
    match web.read(move |s| Ok((model::jobs(s, &jobs, now)?, s.open_runs()?.len()))).await {
        Ok((items, open)) => web.page("jobs", &items, None, query.view(now, open > 0)).await,
        Err(response) => response,
    }
}

async fn stylesheet() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], pages::STYLESHEET).into_response()
}

async fn metrics_text(State(web): State<Web>) -> Response {
    let now = web.now();
    let endpoints = web.engine.batch_endpoints();
    match web.read(|s| Ok((s.metric_figures()?, s.leader()?))).await {
        Ok((figures, leader)) => {
            // The leadership row is kept in real time, whatever the engine's clock.
            let leader = leader.map(|leader| crate::status::LeaderStatus::new(leader, chrono::Utc::now()));
            let text = metrics::encode(&figures, &endpoints, leader.as_ref(), now);
            ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response()
        }
        Err(response) => response,
    }
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn only_the_exact_secret_matches() {
        assert!(same_secret(b"Bearer s3cret", b"Bearer s3cret"));
        assert!(!same_secret(b"Bearer s3creT", b"Bearer s3cret"));
        assert!(!same_secret(b"Bearer s3cre", b"Bearer s3cret"));
        assert!(!same_secret(b"", b"Bearer s3cret"));
    }
}
