//! The HTTP surface: routes, extractors and the JSON error shape.
//!
//! Errors are `{"error": "<reason>", "kind": "<kind>"}` with the status from
//! [`crate::status_of`]; retryable ones carry `Retry-After`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use sluice_collector::{CollectError, Collector, Encoding, IngestRequest};
use sluice_event::ErrorKind;
use sluice_journal::Journal;
use sluice_warehouse::Warehouse;

use crate::{Settings, status_of};

/// Shared state of the handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) collector: Option<Arc<Collector>>,
    pub(crate) warehouse: Option<Arc<Warehouse>>,
    pub(crate) journal: Arc<dyn Journal>,
    pub(crate) prometheus: PrometheusHandle,
    pub(crate) auth: Arc<crate::auth::Auth>,
    pub(crate) registry: Option<Arc<sluice_functions::Registry>>,
    pub(crate) admin_token: Option<String>,
    pub(crate) replay: Option<Arc<crate::replay::Replayer>>,
    /// The hot tier's reader, on a node with the hot role.
    pub(crate) hot: Option<sluice_hot::HotReader>,
    /// The models this node runs (predict role).
    pub(crate) models: Arc<Vec<String>>,
    /// The user functions, on a node with the functions role.
    pub(crate) functions: Option<Arc<sluice_functions::Functions>>,
}

/// Seconds a client should wait before retrying a 429/503.
const RETRY_AFTER_SECS: &str = "1";

pub(crate) fn router(state: AppState, settings: &Settings) -> Router {
    // The compressed body may not exceed the decompressed limit either; the collector applies
    // the limit again after decompression.
    let body_limit = settings.collector.max_body_bytes();
    Router::new()
        .route("/v1/events", post(ingest_native))
        .route("/v1/sql", post(sql))
        .route("/v1/replay", post(crate::replay::replay))
        .merge(crate::schemas::routes())
        .merge(crate::functions::routes())
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::hot::routes())
        .merge(crate::segment::routes())
        .merge(crate::snowplow::routes(&settings.snowplow))
        .merge(crate::kinesis::router(&state, settings))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// The collector, or the 404 a node without the collector role answers on ingest routes.
#[allow(clippy::result_large_err)] // the error is the answer itself, returned at once
pub(crate) fn collector_of(state: &AppState) -> Result<Arc<Collector>, Response> {
    state.collector.clone().ok_or_else(|| {
        error_response(
            ErrorKind::NotFound,
            "this node does not run the collector role",
        )
    })
}

/// An error answer.
pub(crate) fn error_response(kind: ErrorKind, reason: impl Into<String>) -> Response {
    let status = status_of(kind);
    let body = serde_json::json!({ "error": reason.into(), "kind": kind.as_str() });
    let mut resp = (status, axum::Json(body)).into_response();
    if kind.is_retryable() {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    resp
}

async fn ingest_native(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = ingest_native_inner(state, peer, headers, body).await;
    crate::metrics::request("events", resp.status().as_u16());
    resp
}

async fn ingest_native_inner(
    state: AppState,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let collector = match collector_of(&state) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    // Credentials are checked before anything is decompressed or parsed.
    let source = match state
        .auth
        .source_for_key(crate::auth::header_key(&headers).as_deref(), peer.ip())
    {
        Ok(s) => s,
        Err(e) => return error_response(ErrorKind::Unauthorized, e.to_string()),
    };
    let encoding = match content_encoding(&headers) {
        Ok(e) => e,
        Err(e) => return error_response(e.kind(), e.to_string()),
    };
    let req = IngestRequest {
        source: source.to_string(),
        body,
        encoding,
        ip: Some(peer.ip().to_string()),
        user_agent: header_str(&headers, header::USER_AGENT).map(str::to_string),
    };
    // The append runs in its own task, so a client that hangs up mid-request cannot cancel an
    // append halfway: what was appended is settled in the dedupe index either way.
    let task = tokio::spawn(async move { collector.ingest(req).await });
    match task.await {
        Ok(Ok(outcome)) => {
            // Nothing usable at all is a permanent client error; the body says why per event.
            let status = if outcome.accepted == 0 && outcome.duplicates == 0 {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::OK
            };
            (status, axum::Json(outcome)).into_response()
        }
        Ok(Err(e)) => error_response(e.kind(), e.to_string()),
        Err(e) => error_response(ErrorKind::Internal, format!("ingest task failed: {e}")),
    }
}

/// The request's `Content-Encoding`, every header line of it: two `Content-Encoding: gzip`
/// lines are a nested encoding, and a value that is not text is not an encoding we know.
pub(crate) fn content_encoding(headers: &HeaderMap) -> Result<Encoding, CollectError> {
    let mut values = Vec::new();
    for v in headers.get_all(header::CONTENT_ENCODING) {
        match v.to_str() {
            Ok(v) => values.push(v),
            Err(_) => {
                return Err(CollectError::UnsupportedEncoding(
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ));
            }
        }
    }
    match values.as_slice() {
        [] => Encoding::parse(None),
        [one] => Encoding::parse(Some(one)),
        many => Encoding::parse(Some(&many.join(", "))),
    }
}

pub(crate) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[derive(Deserialize)]
struct SqlParams {
    format: Option<String>,
}

#[derive(Deserialize)]
struct SqlBody {
    query: String,
}

async fn sql(
    State(state): State<AppState>,
    Query(params): Query<SqlParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let resp = sql_inner(state, params, headers, body).await;
    crate::metrics::request("sql", resp.status().as_u16());
    resp
}

async fn sql_inner(
    state: AppState,
    params: SqlParams,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(warehouse) = state.warehouse else {
        return error_response(
            ErrorKind::NotFound,
            "this node does not run the warehouse role",
        );
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error_response(ErrorKind::Invalid, "query is not utf-8");
    };
    let is_json = header_str(&headers, header::CONTENT_TYPE)
        .is_some_and(|c| c.starts_with("application/json"));
    let query = if is_json {
        match serde_json::from_str::<SqlBody>(text) {
            Ok(b) => b.query,
            Err(e) => {
                return error_response(
                    ErrorKind::Invalid,
                    format!("expected {{\"query\": \"...\"}}: {e}"),
                );
            }
        }
    } else {
        text.to_string()
    };
    let format = params.format.as_deref().unwrap_or("json");
    let output = match warehouse.query(&query).await {
        Ok(o) => o,
        Err(e) => return error_response(e.kind(), e.to_string()),
    };
    let rendered = match format {
        "json" => sluice_warehouse::format::to_json_lines(&output)
            .map(|s| (s.into_bytes(), "application/x-ndjson")),
        "csv" => sluice_warehouse::format::to_csv(&output).map(|s| (s.into_bytes(), "text/csv")),
        "table" => sluice_warehouse::format::to_table(&output)
            .map(|s| (s.into_bytes(), "text/plain; charset=utf-8")),
        "arrow" => sluice_warehouse::format::to_arrow_ipc(&output)
            .map(|b| (b, sluice_warehouse::format::ARROW_STREAM_MEDIA_TYPE)),
        other => {
            return error_response(
                ErrorKind::Invalid,
                format!("unknown format {other:?} (json, csv, table or arrow)"),
            );
        }
    };
    match rendered {
        Ok((body, ctype)) => ([(header::CONTENT_TYPE, ctype)], body).into_response(),
        Err(e) => error_response(e.kind(), e.to_string()),
    }
}

async fn health(State(state): State<AppState>) -> Response {
    if state.journal.is_failed() {
        return error_response(ErrorKind::Unavailable, "journal failed");
    }
    axum::Json(serde_json::json!({"status": "ok"})).into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = state.prometheus.render();
    if let Some(f) = &state.functions {
        body.push_str(&f.render_prometheus());
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
