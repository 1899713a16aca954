//! The schema registry over HTTP: `GET /v1/schemas` (every URI), `GET` and `PUT
//! /v1/schemas/{vendor}/{name}/jsonschema/{version}` — the paths of an Iglu registry.
//!
//! Reading is a [`Reader`] request, pushing an [`Admin`] one.

// The helpers return the error answer itself, sent at once: its size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sluice_event::ErrorKind;
use sluice_functions::registry::{PushOutcome, Registry, SchemaKey};

use crate::http::{Admin, AppState, Reader, error_response};

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/v1/schemas", get(list)).route(
        "/v1/schemas/{vendor}/{name}/{format}/{version}",
        get(show).put(push),
    )
}

fn registry_of(state: &AppState) -> Result<Arc<Registry>, Response> {
    state.registry.clone().ok_or_else(|| {
        error_response(
            ErrorKind::NotFound,
            "this node does not hold the schema registry",
        )
    })
}

async fn list(_: Reader, State(state): State<AppState>) -> Response {
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
    _: Reader,
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
    _: Admin,
    State(state): State<AppState>,
    Path((vendor, name, format, version)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    let registry = match registry_of(&state) {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let key = match key_of(&vendor, &name, &format, &version) {
        Ok(k) => k,
        Err(resp) => return resp,
    };
    let shared = state.shared_schemas.clone();
    let unavailable = |e: String| {
        error_response(
            ErrorKind::Unavailable,
            format!("cannot share the schema with the other nodes: {e}"),
        )
    };
    // On a shared journal: the other nodes' schemas first, so an addition is checked against
    // them and an address they stored is not pushed again.
    if let Some(s) = &shared
        && let Err(e) = s.catch_up().await
    {
        return unavailable(e);
    }
    match tokio::task::spawn_blocking(move || registry.push(Some(&key), &body)).await {
        Ok(Ok((key, outcome))) => {
            if let Some(s) = &shared {
                match s.publish(&key).await {
                    Ok(true) => {}
                    Ok(false) => {
                        return error_response(
                            ErrorKind::Conflict,
                            format!(
                                "{} was pushed with other content on another node at the same \
                                 moment; versions are immutable, that one is kept",
                                key.uri()
                            ),
                        );
                    }
                    Err(e) => return unavailable(e),
                }
            }
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
