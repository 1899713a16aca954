//! `POST /v1/privacy/deletions` (a deletion request; 202 with its record), `GET
//! /v1/privacy/deletions[?id=…]` (every request, or those naming a person) and `GET
//! /v1/privacy/deletions/{request}` (one request's progress). Admin only. The rules are in
//! `privacy/`, which has no HTTP types.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use sluice_event::ErrorKind;

use crate::http::{Admin, AppState, error_response, metered};
use crate::privacy::{MAX_ID_BYTES, MAX_IDS, Privacy};

pub(crate) fn routes() -> Router<AppState> {
    metered(
        "privacy",
        Router::new()
            .route("/v1/privacy/deletions", get(list).post(submit))
            .route("/v1/privacy/deletions/{request}", get(one)),
    )
}

/// The body of a deletion request: ids matched against `user_id` and `anonymous_id`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Body {
    ids: Vec<String>,
    user_id: Option<String>,
    anonymous_id: Option<String>,
}

#[allow(clippy::result_large_err)] // the error is the answer itself
fn privacy(state: &AppState) -> Result<std::sync::Arc<Privacy>, Response> {
    state.running_parts()?.privacy.clone().ok_or_else(|| {
        error_response(
            ErrorKind::NotFound,
            "deletion requests need the runner, lake and warehouse roles on this node",
        )
    })
}

/// Checks the ids: 1 to [`MAX_IDS`], each 1 to [`MAX_ID_BYTES`] bytes; duplicates dropped.
fn check(body: Body) -> Result<Vec<String>, String> {
    let mut ids = body.ids;
    ids.extend(body.user_id);
    ids.extend(body.anonymous_id);
    if ids.is_empty() {
        return Err(
            "name the person: {\"ids\": [\"u1\"]} (each matched against user_id and anonymous_id)"
                .into(),
        );
    }
    for id in &ids {
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(format!("an id must be 1 to {MAX_ID_BYTES} bytes"));
        }
    }
    ids.sort();
    ids.dedup();
    if ids.len() > MAX_IDS {
        return Err(format!("at most {MAX_IDS} ids per request"));
    }
    Ok(ids)
}

async fn submit(admin: Admin, State(state): State<AppState>, body: Bytes) -> Response {
    let privacy = match privacy(&state) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    let body: Body = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error_response(ErrorKind::Invalid, format!("deletion request: {e}")),
    };
    let ids = match check(body) {
        Ok(ids) => ids,
        Err(reason) => return error_response(ErrorKind::Invalid, reason),
    };
    let who = admin.who;
    if let Err(e) = privacy.share_first(&ids).await {
        return error_response(
            ErrorKind::Unavailable,
            format!("cannot share the request with the other nodes: {e}"),
        );
    }
    let saved = tokio::task::spawn_blocking(move || privacy.submit(ids, who)).await;
    match saved {
        Ok(Ok(request)) => {
            tracing::info!(request = %request.id, by = %request.requested_by, subjects = request.subjects.len(), "deletion requested");
            let location = format!("/v1/privacy/deletions/{}", request.id);
            let mut resp = (StatusCode::ACCEPTED, Json(request)).into_response();
            if let Ok(v) = HeaderValue::from_str(&location) {
                resp.headers_mut().insert(header::LOCATION, v);
            }
            resp
        }
        Ok(Err(e)) => error_response(
            ErrorKind::Unavailable,
            format!("cannot record the request: {e}"),
        ),
        Err(e) => error_response(ErrorKind::Internal, e.to_string()),
    }
}

async fn list(
    _: Admin,
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    match privacy(&state) {
        Ok(p) => Json(serde_json::json!({ "requests": p.list(q.get("id").map(String::as_str)) }))
            .into_response(),
        Err(resp) => resp,
    }
}

async fn one(_: Admin, State(state): State<AppState>, Path(request): Path<String>) -> Response {
    let privacy = match privacy(&state) {
        Ok(p) => p,
        Err(resp) => return resp,
    };
    match privacy.get(&request) {
        Some(r) => Json(r).into_response(),
        None => error_response(
            ErrorKind::NotFound,
            format!("no deletion request {request:?}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_and_deduplicated() {
        let body = |v: serde_json::Value| serde_json::from_value::<Body>(v).unwrap();
        assert_eq!(
            check(body(
                serde_json::json!({"ids": ["b", "a", "b"], "user_id": "a"})
            ))
            .unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert!(
            check(Body::default())
                .unwrap_err()
                .contains("name the person")
        );
        assert!(
            check(body(serde_json::json!({"ids": [""]})))
                .unwrap_err()
                .contains("an id must be 1 to")
        );
        let many: Vec<String> = (0..=MAX_IDS).map(|i| i.to_string()).collect();
        assert!(
            check(body(serde_json::json!({ "ids": many })))
                .unwrap_err()
                .contains("at most")
        );
        let unknown = serde_json::from_value::<Body>(serde_json::json!({"user": "x"})).unwrap_err();
        assert!(
            unknown.to_string().contains("unknown field `user`"),
            "{unknown}"
        );
    }
}
