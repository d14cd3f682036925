//! The daemon's HTTP endpoint: `/healthz` for liveness and `/api/v1/status`
//! (the same document as `orchestrator status --format json`). Read-only.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::engine::Engine;

/// Environment variable holding the bearer token required off loopback.
pub const TOKEN_ENV: &str = "ORCHESTRATOR_API_TOKEN";
/// Its file name in `$CREDENTIALS_DIRECTORY`.
pub const TOKEN_CREDENTIAL: &str = "orchestrator-api-token";

/// The bearer token, from the environment or the systemd credential.
pub fn token() -> Option<String> {
    crate::secrets::read(TOKEN_ENV, TOKEN_CREDENTIAL)
}

/// What the handlers share: the engine, and the token read once at start.
#[derive(Clone)]
struct Web {
    engine: Arc<Engine>,
    token: Option<Arc<str>>,
}

/// Serves until the task is aborted; `token`, when set, is required on the API.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    token: Option<String>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/api/v1/status", get(status))
        .with_state(Web { engine, token: token.map(Arc::from) });
    axum::serve(listener, app).await
}

/// Compares a presented secret in time that depends only on its length, so
/// the token cannot be guessed byte by byte from response times.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0
}

async fn status(State(Web { engine, token }): State<Web>, headers: HeaderMap) -> Response {
    if let Some(expected) = token {
        let given = headers.get(header::AUTHORIZATION).map(|v| v.as_bytes()).unwrap_or_default();
        if !same_secret(given, format!("Bearer {expected}").as_bytes()) {
            return (StatusCode::UNAUTHORIZED, "bearer token required\n").into_response();
        }
    }
    let now = engine.clock().now();
    match engine.store().call(move |s| crate::status::collect(s, None, now)).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
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
