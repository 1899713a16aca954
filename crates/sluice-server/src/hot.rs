//! The hot tier's read API (every route a [`Reader`] request): profiles, batch get, counters,
//! predictions.
//!
//! - `GET /v1/profiles/{id}`: one profile (404 when unknown).
//! - `POST /v1/profiles:batch` with `{"ids": [...]}` (at most [`MAX_BATCH_IDS`]): the
//!   profiles in the order asked, `null` for unknown ids. A POST, so that ids of any length and
//!   alphabet fit without URL-encoding rules and the request is never cached.
//! - `GET /v1/counters/{name}/{key}?at=<RFC 3339 | ms since the epoch>`: a counter's window
//!   containing `at` (default now).
//! - `GET /v1/predictions/{model}/{id}`: the latest score of a model for a user.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use sluice_event::ErrorKind;
use sluice_hot::{HotError, HotReader};

use crate::http::{AppState, Reader, error_response, metered};

/// Ids per batch get, at most.
pub(crate) const MAX_BATCH_IDS: usize = 100;

pub(crate) fn routes() -> Router<AppState> {
    let route = |label, path, handler| metered(label, Router::new().route(path, handler));
    Router::new()
        .merge(route("profiles", "/v1/profiles/{id}", get(profile)))
        .merge(route(
            "profiles_batch",
            "/v1/profiles:batch",
            post(profiles_batch),
        ))
        .merge(route("counters", "/v1/counters/{name}/{key}", get(counter)))
        .merge(route(
            "predictions",
            "/v1/predictions/{model}/{id}",
            get(prediction),
        ))
}

#[allow(clippy::result_large_err)] // the error is the answer itself, returned at once
fn reader_of(state: &AppState) -> Result<HotReader, Response> {
    state
        .running_parts()?
        .hot
        .clone()
        .ok_or_else(|| error_response(ErrorKind::NotFound, "this node does not run the hot role"))
}

fn hot_error(e: HotError) -> Response {
    if e.kind() == ErrorKind::Internal || e.kind().is_retryable() {
        tracing::warn!(error = %e, "hot tier read failed");
    }
    error_response(e.kind(), e.to_string())
}

async fn profile(_: Reader, State(state): State<AppState>, Path(id): Path<String>) -> Response {
    async {
        let reader = reader_of(&state)?;
        match reader.profile(&id).await.map_err(hot_error)? {
            Some(p) => Ok(axum::Json(p).into_response()),
            None => Err(error_response(
                ErrorKind::NotFound,
                format!("no profile {id:?}"),
            )),
        }
    }
    .await
    .unwrap_or_else(|r| r)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    ids: Vec<String>,
}

async fn profiles_batch(_: Reader, State(state): State<AppState>, body: Bytes) -> Response {
    async {
        let reader = reader_of(&state)?;
        let body: BatchBody = serde_json::from_slice(&body).map_err(|e| {
            error_response(
                ErrorKind::Invalid,
                format!("expected {{\"ids\": [\"...\"]}}: {e}"),
            )
        })?;
        if body.ids.len() > MAX_BATCH_IDS {
            return Err(error_response(
                ErrorKind::Invalid,
                format!("at most {MAX_BATCH_IDS} ids per request"),
            ));
        }
        let profiles = reader.profiles(&body.ids).await.map_err(hot_error)?;
        Ok(axum::Json(serde_json::json!({ "profiles": profiles })).into_response())
    }
    .await
    .unwrap_or_else(|r| r)
}

#[derive(Deserialize)]
struct CounterParams {
    at: Option<String>,
}

async fn counter(
    _: Reader,
    State(state): State<AppState>,
    Path((name, key)): Path<(String, String)>,
    Query(params): Query<CounterParams>,
) -> Response {
    async {
        let reader = reader_of(&state)?;
        let at = match params.at {
            None => sluice_event::now_micros(),
            Some(s) => sluice_event::parse_timestamp(&serde_json::Value::String(s.clone()))
                .ok_or_else(|| {
                    error_response(
                        ErrorKind::Invalid,
                        format!("at={s:?} is neither RFC 3339 nor milliseconds since the epoch"),
                    )
                })?,
        };
        let answer = reader.counter(&name, &key, at).await.map_err(hot_error)?;
        Ok(axum::Json(answer).into_response())
    }
    .await
    .unwrap_or_else(|r| r)
}

async fn prediction(
    _: Reader,
    State(state): State<AppState>,
    Path((model, id)): Path<(String, String)>,
) -> Response {
    async {
        let reader = reader_of(&state)?;
        if !state.parts().is_some_and(|p| p.models.contains(&model)) {
            return Err(error_response(
                ErrorKind::NotFound,
                format!("no model named {model:?} runs on this node"),
            ));
        }
        let p = reader.prediction(&model, &id).await.map_err(hot_error)?;
        Ok(axum::Json(serde_json::json!({
            "model": model,
            "id": id,
            "score": p.score,
            "at": p.at,
            "event_id": p.event_id,
        }))
        .into_response())
    }
    .await
    .unwrap_or_else(|r: Response| r)
}
