//! The Segment HTTP Tracking API routes: `/v1/{identify,track,page,screen,group,alias,batch,
//! import}` and the browser's short routes `/v1/{t,i,p,s,g,a,b}`.
//!
//! Order of checks: a write key in the headers (Basic user name, Bearer, `X-Write-Key`) is
//! checked before the body is decompressed; a key in the body (`writeKey`, what
//! analytics-python and analytics.js send) after, within Segment's 500 KB limit. Answers:
//! 200 `{"success":true,"accepted":…,"duplicates":…,"rejected":[…]}` once every accepted
//! message is durable; 400 with the same shape when no message was usable; 401 for a refused
//! key; 413 over a size limit; 503 with `Retry-After` when the journal cannot take events now.
//! Browsers get CORS headers that echo their `Origin` (with credentials), and preflights are
//! answered.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Serialize;
use sluice_collector::{
    Encoding, Origin, SEGMENT_MAX_BODY_BYTES, SegmentRoute, decode_segment, decompress,
};
use sluice_event::{ErrorKind, Rejection};

use crate::access::Refusal;
use crate::auth::Locality;
use crate::http::{
    AppState, collect_error, collector_of, error_response, header_str, label, refuse,
};

/// The Segment routes.
pub(crate) fn routes() -> Router<AppState> {
    Router::new().route(
        "/v1/{name}",
        post(ingest)
            .route_layer(middleware::from_fn(with_cors))
            .route_layer(middleware::from_fn_with_state("segment", label))
            .options(preflight),
    )
}

#[derive(Serialize)]
struct Answer {
    success: bool,
    accepted: usize,
    duplicates: usize,
    rejected: Vec<Rejection>,
}

async fn ingest(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(name): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(route) = SegmentRoute::from_path(&name) else {
        return error_response(ErrorKind::NotFound, format!("no route /v1/{name}"));
    };
    let collector = match collector_of(&state) {
        Ok(c) => c,
        Err(resp) => return resp,
    };
    let header_key = crate::auth::header_key(&headers);
    let from = Locality::of(peer.ip(), &headers);
    // A key in the headers is checked before anything is decompressed or parsed.
    let header_source = match &header_key {
        Some(k) => match state.auth.source_for_key(Some(k), from) {
            Ok(s) => Some(s),
            Err(_) => return refuse(state.access.ingest_refusal(Some(k))),
        },
        None => None,
    };
    let encoding = match Encoding::parse(header_str(&headers, header::CONTENT_ENCODING)) {
        Ok(e) => e,
        Err(e) => return error_response(e.kind(), e.to_string()),
    };
    let origin = Origin {
        ip: Some(peer.ip().to_string()),
        user_agent: header_str(&headers, header::USER_AGENT).map(str::to_string),
    };
    let (auth, access) = (state.auth.clone(), state.access.clone());
    // The work runs in its own task, so a client that hangs up cannot cancel an append halfway.
    let task = tokio::spawn(async move {
        collector.check_capacity()?;
        let limit = SEGMENT_MAX_BODY_BYTES.min(collector.settings().max_body_bytes());
        let plain = decompress(&body, encoding, limit)?;
        let decoded = decode_segment(&plain, route)?;
        let source = match header_source {
            Some(s) => s,
            None => auth
                .source_for_key(decoded.write_key.as_deref(), from)
                .map_err(|_| {
                    IngestError::Refused(access.ingest_refusal(decoded.write_key.as_deref()))
                })?,
        };
        let items = decoded.items(&Arc::clone(&source));
        Ok::<_, IngestError>(collector.submit(&origin, items).await?)
    });
    match task.await {
        Ok(Ok(submitted)) => {
            let o = submitted.outcome;
            let success = o.accepted > 0 || o.duplicates > 0;
            let status = if success {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            let answer = Answer {
                success,
                accepted: o.accepted,
                duplicates: o.duplicates,
                rejected: o.rejected,
            };
            (status, axum::Json(answer)).into_response()
        }
        Ok(Err(IngestError::Collect(e))) => collect_error(&e),
        Ok(Err(IngestError::Refused(r))) => refuse(r),
        Err(e) => error_response(ErrorKind::Internal, format!("ingest task failed: {e}")),
    }
}

/// Why the ingest task ended without an answer of its own.
enum IngestError {
    Collect(sluice_collector::CollectError),
    Refused(Refusal),
}

impl From<sluice_collector::CollectError> for IngestError {
    fn from(e: sluice_collector::CollectError) -> Self {
        Self::Collect(e)
    }
}

/// Adds the CORS headers to an ingest answer.
async fn with_cors(req: Request, next: Next) -> Response {
    let headers = req.headers().clone();
    let mut resp = next.run(req).await;
    cors(&headers, &mut resp);
    resp
}

async fn preflight(headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    cors(&headers, &mut resp);
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Content-Encoding, Authorization, X-Write-Key"),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("86400"),
    );
    resp
}

/// CORS for browser trackers: echo the request's `Origin` (never `*`, since trackers send
/// credentials) and allow credentials.
pub(crate) fn cors(req: &HeaderMap, resp: &mut Response) {
    let h = resp.headers_mut();
    match req.get(header::ORIGIN) {
        Some(origin) => {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            h.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
            h.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        None => {
            h.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        }
    }
}
