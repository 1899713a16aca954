//! `POST /v1/events`: native JSON or NDJSON events.

use std::net::SocketAddr;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use sluice_collector::IngestRequest;
use sluice_event::ErrorKind;

use crate::auth::Locality;
use crate::http::{
    AppState, collect_error, collector_of, content_encoding, error_response, header_str, metered,
    refuse,
};

pub(crate) fn routes() -> Router<AppState> {
    metered("events", Router::new().route("/v1/events", post(ingest)))
}

async fn ingest(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let collector = match collector_of(&state) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    // Credentials are checked before anything is decompressed or parsed.
    let from = Locality::of(peer.ip(), &headers);
    let key = crate::auth::header_key(&headers);
    let source = match state.auth.source_for_key(key.as_deref(), from) {
        Ok(s) => s,
        Err(_) => return refuse(state.access.ingest_refusal(key.as_deref())),
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
        Ok(Err(e)) => collect_error(&e),
        Err(e) => error_response(ErrorKind::Internal, format!("ingest task failed: {e}")),
    }
}
