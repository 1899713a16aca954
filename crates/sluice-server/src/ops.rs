//! The operator's routes: `GET /health` (readiness: every stage's state, 503 while one is
//! failing; also `/readyz`), `GET /livez` (liveness: the process answers), `GET /metrics`
//! (Prometheus text; a [`MetricsReader`] request) and `POST /v1/replay` (an admin request; the rules are in `replay.rs`).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sluice_event::ErrorKind;

use crate::http::{Admin, AppState, MetricsReader, error_response};
use crate::replay::ReplayRequest;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/replay", post(replay))
        .route("/health", get(health))
        .route("/readyz", get(health))
        .route("/livez", get(live))
        .route("/metrics", get(metrics))
}

/// Every stage's state; 503 (with `Retry-After`) while the journal failed or a stage's last
/// attempt failed, so a load balancer stops sending while this node cannot keep up. `warnings`
/// (held retention, recovery losses) are reported when there are any, with no effect on the
/// status.
async fn health(State(state): State<AppState>) -> Response {
    let (stages, failing) = state.stages.report();
    let journal_failed = state.journal.is_failed();
    let lagging = stages.iter().any(|(_, s)| s.state == "lagging");
    let status = match (journal_failed || failing, lagging) {
        (true, _) => "failing",
        (false, true) => "lagging",
        (false, false) => "ok",
    };
    let mut body = serde_json::json!({
        "status": status,
        "stages": stages
            .into_iter()
            .map(|(name, s)| (name, serde_json::to_value(s).unwrap_or_default()))
            .collect::<serde_json::Map<_, _>>(),
    });
    if journal_failed {
        body["error"] = "journal failed; the process exits to recover from disk".into();
    }
    // Worth an operator's look, but the node serves: never a 503 by themselves.
    let warnings = state.stages.warnings().report();
    if !warnings.is_empty() {
        body["warnings"] = serde_json::to_value(warnings).unwrap_or_default();
    }
    let code = match status {
        "failing" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    let mut resp = (code, Json(body)).into_response();
    if code == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    resp
}

/// Liveness only: the process runs and answers HTTP, whatever its stages do.
async fn live() -> Response {
    Json(serde_json::json!({"status": "live"})).into_response()
}

async fn metrics(_: MetricsReader, State(state): State<AppState>) -> Response {
    let mut body = state.prometheus.render();
    if let Some(f) = &state.functions {
        body.push_str(&f.render_prometheus());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn replay(_: Admin, State(state): State<AppState>, body: Bytes) -> Response {
    let parts = match state.running_parts() {
        Ok(parts) => parts,
        Err(standby) => return standby,
    };
    let Some(replayer) = parts.replay.clone() else {
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
