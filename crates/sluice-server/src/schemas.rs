//! The schema registry over HTTP: `GET /v1/schemas` (every URI), `GET` and `PUT
//! /v1/schemas/{vendor}/{name}/jsonschema/{version}` — the paths of an Iglu registry.
//!
//! Pushing is an admin request (see [`admin_allowed`]): with an `admin_token` configured it
//! needs `Authorization: Bearer <admin_token>`; without one, it is open to loopback clients only.

// The helpers return the error answer itself, sent at once: its size does not matter.
#![allow(clippy::result_large_err)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sluice_event::ErrorKind;
use sluice_functions::registry::{PushOutcome, Registry, SchemaKey};

use crate::http::{AppState, error_response};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/schemas", get(list)).route(
        "/v1/schemas/{vendor}/{name}/{format}/{version}",
        get(show).put(push),
    )
}

/// Whether an admin request (schema push, replay) may go ahead.
pub(crate) fn admin_allowed(
    state: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<(), Response> {
    let refuse = |why: &str| Err(error_response(ErrorKind::Unauthorized, why.to_string()));
    match state.admin_token.as_deref() {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            // Compare hashes so the time taken does not depend on where the strings differ.
            use sha2::Digest;
            let h = |s: &str| sha2::Sha256::digest(s.as_bytes());
            if given.is_some_and(|g| h(g) == h(token)) {
                Ok(())
            } else {
                refuse("admin requests need Authorization: Bearer <admin_token>")
            }
        }
        None if peer.ip().is_loopback() => Ok(()),
        None => {
            refuse("admin requests are open to loopback clients only when no admin_token is set")
        }
    }
}

fn registry_of(state: &AppState) -> Result<Arc<Registry>, Response> {
    state.registry.clone().ok_or_else(|| {
        error_response(
            ErrorKind::NotFound,
            "this node does not hold the schema registry",
        )
    })
}

async fn list(State(state): State<AppState>) -> Response {
    let registry = match registry_of(&state) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    match tokio::task::spawn_blocking(move || registry.list()).await {
        Ok(Ok(uris)) => axum::Json(serde_json::json!({ "schemas": uris })).into_response(),
        Ok(Err(e)) => error_response(e.kind(), e.to_string()),
        Err(e) => error_response(ErrorKind::Internal, e.to_string()),
    }
}

fn key_of(vendor: &str, name: &str, format: &str, version: &str) -> Result<SchemaKey, Response> {
    SchemaKey::parse_path(&format!("{vendor}/{name}/{format}/{version}"))
        .map_err(|e| error_response(ErrorKind::Invalid, format!("schema address: {e}")))
}

async fn show(
    State(state): State<AppState>,
    Path((vendor, name, format, version)): Path<(String, String, String, String)>,
) -> Response {
    let registry = match registry_of(&state) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let key = match key_of(&vendor, &name, &format, &version) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let uri = key.uri();
    match tokio::task::spawn_blocking(move || registry.get(&key)).await {
        Ok(Ok(Some(text))) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Ok(Ok(None)) => error_response(ErrorKind::NotFound, format!("no schema {uri}")),
        Ok(Err(e)) => error_response(e.kind(), e.to_string()),
        Err(e) => error_response(ErrorKind::Internal, e.to_string()),
    }
}

async fn push(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((vendor, name, format, version)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    if let Err(resp) = admin_allowed(&state, &headers, peer) {
        return resp;
    }
    let registry = match registry_of(&state) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let key = match key_of(&vendor, &name, &format, &version) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    match tokio::task::spawn_blocking(move || registry.push(Some(&key), &body)).await {
        Ok(Ok((key, outcome))) => {
            let (status, word) = match outcome {
                PushOutcome::Created => (StatusCode::CREATED, "created"),
                PushOutcome::Unchanged => (StatusCode::OK, "unchanged"),
            };
            (
                status,
                axum::Json(serde_json::json!({ "schema": key.uri(), "outcome": word })),
            )
                .into_response()
        }
        Ok(Err(e)) => error_response(e.kind(), e.to_string()),
        Err(e) => error_response(ErrorKind::Internal, e.to_string()),
    }
}
