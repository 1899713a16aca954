//! The operator's routes: `GET /health`, `GET /metrics` (Prometheus text) and
//! `POST /v1/replay` (an admin request; the rules are in `replay.rs`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sluice_event::ErrorKind;

use crate::http::{Admin, AppState, error_response};
use crate::replay::ReplayRequest;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/replay", post(replay))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
}

async fn health(State(state): State<AppState>) -> Response {
    if state.journal.is_failed() {
        return error_response(ErrorKind::Unavailable, "journal failed");
    }
    Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = state.prometheus.render();
    if let Some(f) = &state.functions {
        body.push_str(&f.render_prometheus());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn replay(_: Admin, State(state): State<AppState>, body: Bytes) -> Response {
    let Some(replayer) = state.replay.clone() else {
        return error_response(
            ErrorKind::NotFound,
            "replay needs the runner, lake and warehouse roles on this node",
        );
    };
    let req: ReplayRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error_response(ErrorKind::Invalid, format!("replay request: {e}")),
    };
    match replayer.run(req).await {
        Ok(report) => Json(report).into_response(),
        Err((kind, reason)) => error_response(kind, reason),
    }
}
