//! The admin listener: `GET /metrics` (Prometheus text), `/livez` (the process answers),
//! `/readyz` (200 while accepting hooks, 503 before start-up completes and once the drain
//! begins), and the status page `GET /` with its data `GET /status.json`.

use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use super::{ApiState, status};

/// The admin router.
pub fn admin_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/", get(status::page))
        .route("/status.json", get(status::status))
        .with_state(state)
}

async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
}

async fn livez() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<ApiState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) && !state.engine.is_draining() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}
