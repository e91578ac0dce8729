//! What operators and their probes read without a token: liveness,
//! readiness (the store answers) and Prometheus metrics.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{ApiError, AppState};

/// The health routes, outside `/v1` and its tokens.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
}

#[utoipa::path(
    get,
    path = "/healthz",
    summary = "Liveness.",
    security(),
    responses((status = 200, description = "Alive.", body = String))
)]
async fn healthz() -> &'static str {
    "ok\n"
}

#[utoipa::path(
    get,
    path = "/readyz",
    summary = "Readiness: the store answers.",
    security(),
    responses(
        (status = 200, description = "Ready.", body = String),
        (status = 503, description = "The store does not answer (within a second), or fails, or the affiliate ledger's last writes did not reach the disk."),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    // Ready when the store answers, promptly: a supervisor asking while
    // Redis is away gets its answer now, not when Redis is back.
    if let Err(e) = state.affiliates.ledger.healthy() {
        return ApiError::Unavailable(e.to_string()).into_response();
    }
    let probe = state.core.registry.get("readyz-probe");
    match tokio::time::timeout(READY_WITHIN, probe).await {
        Ok(Ok(_)) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => ApiError::Unavailable(format!("store not ready: {e}")).into_response(),
        Err(_) => ApiError::Unavailable(format!(
            "store not ready: no answer within {} ms",
            READY_WITHIN.as_millis()
        ))
        .into_response(),
    }
}

/// How long readiness waits for the store.
const READY_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

#[utoipa::path(
    get,
    path = "/metrics",
    summary = "Prometheus metrics.",
    security(),
    responses(
        (status = 200, description = "Prometheus text format.", body = String, content_type = PROMETHEUS_TEXT),
    )
)]
async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, PROMETHEUS_TEXT)],
        state.core.metrics.render(),
    )
        .into_response()
}
