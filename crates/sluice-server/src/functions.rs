//! User functions over HTTP (all admin requests, see [`Admin`]):
//!
//! - `GET /v1/functions`: the deployed functions;
//! - `PUT /v1/functions/{name}`: deploy. The body is JSON, `{"code": "...", <settings>}` with
//!   the settings of [`FunctionSpec`], or the module itself (any other content type) with the
//!   settings as query parameters (`?batch_size=50&after=validate`). 201 with the new version,
//!   200 when it equals the running one, 400 with the reason for bad code or settings;
//! - `GET /v1/functions/{name}`: versions, settings (secrets hidden) and the running code;
//! - `DELETE /v1/functions/{name}`;
//! - `POST /v1/functions/{name}/rollback`: `{"to": N}`, or empty for the previous version;
//! - `GET /v1/functions/{name}/logs?lines=N`: what it printed, oldest first;
//! - `GET /v1/functions/stats`: metering per function and version;
//! - `POST /v1/functions:reseal`: every stored secret of every version sealed with the node's
//!   current key ([`Functions::reseal`]); `?dry_run=true` says what it would do and which keys
//!   the stored values use, and writes nothing. On a shared journal, every function it changes is
//!   shared with the other nodes (see `shared_functions`). Its path has a `:`, which a function
//!   name cannot hold, so it never collides with `/v1/functions/{name}` (`reseal` is a valid
//!   function name).

// The helpers return the error answer itself, sent at once: its size does not matter.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use sluice_event::ErrorKind;
use sluice_functions::udf::{DeployOutcome, DeployReport, ResealReport};
use sluice_functions::{FunctionSpec, Functions, UdfError};

use crate::http::{Admin, AppState, error_response};
use crate::shared_functions::ResealFailed;

/// Largest deploy request.
const MAX_DEPLOY_BYTES: usize = 6 << 20;

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/functions", get(list))
        .route("/v1/functions/stats", get(stats))
        .route("/v1/functions:reseal", post(reseal))
        .route(
            "/v1/functions/{name}",
            get(show)
                .put(deploy)
                .delete(delete)
                .layer(DefaultBodyLimit::max(MAX_DEPLOY_BYTES)),
        )
        .route("/v1/functions/{name}/rollback", post(rollback))
        .route("/v1/functions/{name}/logs", get(logs))
}

fn functions_of(state: &AppState) -> Result<Arc<Functions>, Response> {
    state.functions.clone().ok_or_else(|| {
        error_response(
            ErrorKind::NotFound,
            "this node does not run the runner role",
        )
    })
}

/// Runs `op` on the functions, off the async workers (it reads and writes the store): its
/// result, or the answer to its error.
async fn on_functions<T: Send + 'static>(
    state: &AppState,
    op: impl FnOnce(&Functions) -> Result<T, UdfError> + Send + 'static,
) -> Result<T, Response> {
    let f = functions_of(state)?;
    crate::shared_functions::blocking(move || op(&f))
        .await
        .map_err(|e| error_response(e.kind, e.reason))
}

/// Runs `op` on the functions ([`on_functions`]); answers its result as JSON with `status`, or
/// its error. Handlers take [`Admin`], so the admin check has passed.
async fn admin_op<T: serde::Serialize + Send + 'static>(
    state: &AppState,
    status: impl FnOnce(&T) -> StatusCode,
    op: impl FnOnce(&Functions) -> Result<T, UdfError> + Send + 'static,
) -> Response {
    match on_functions(state, op).await {
        Ok(v) => (status(&v), axum::Json(v)).into_response(),
        Err(r) => r,
    }
}

/// [`admin_op`] for a change of function `name`: on a shared journal, after catching up with
/// the other nodes, and shared with them once made (see `shared_functions`); 409 if another
/// node changed the same function at the same moment.
async fn change<T: serde::Serialize + Send + 'static>(
    state: &AppState,
    name: &str,
    status: impl FnOnce(&T) -> StatusCode,
    op: impl FnOnce(&Functions) -> Result<T, UdfError> + Send + 'static,
) -> Response {
    let Some(shared) = &state.shared_functions else {
        return admin_op(state, status, op).await;
    };
    let unavailable = |e: &dyn std::fmt::Display| {
        error_response(
            ErrorKind::Unavailable,
            format!("cannot share function {name} with the other nodes: {e}"),
        )
    };
    let _changing = shared.changing().await;
    if let Err(e) = shared.catch_up().await {
        return unavailable(&e);
    }
    let answer = admin_op(state, status, op).await;
    if !answer.status().is_success() {
        return answer;
    }
    match shared.publish(name).await {
        Ok(true) => answer,
        Ok(false) => error_response(
            ErrorKind::Conflict,
            format!(
                "function {name} was changed on another node at the same moment; this node now \
                 runs that change: look at it and try again"
            ),
        ),
        Err(e) => error_response(
            ErrorKind::Unavailable,
            format!(
                "function {name} is changed on this node, but cannot be shared with the other \
                 nodes yet ({e}); it will be as soon as NATS answers"
            ),
        ),
    }
}

fn ok<T>(_: &T) -> StatusCode {
    StatusCode::OK
}

async fn list(_: Admin, State(state): State<AppState>) -> Response {
    admin_op(&state, ok, |f| Ok(json!({ "functions": f.list()? }))).await
}

async fn stats(_: Admin, State(state): State<AppState>) -> Response {
    admin_op(&state, ok, |f| Ok(json!({ "stats": f.stats() }))).await
}

async fn show(_: Admin, State(state): State<AppState>, Path(name): Path<String>) -> Response {
    admin_op(&state, ok, move |f| f.show(&name)).await
}

/// The code and settings of a deploy request.
fn deploy_request(
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Result<(String, FunctionSpec), String> {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/json"));
    let mut settings: Map<String, Value> = Map::new();
    let code = if json {
        let mut obj: Map<String, Value> = serde_json::from_slice(body)
            .map_err(|e| format!("the body is not a JSON object: {e}"))?;
        let code = match obj.remove("code") {
            Some(Value::String(c)) => c,
            Some(_) => return Err("code must be a string (the module text)".into()),
            None => return Err("the JSON body needs code (the module text)".into()),
        };
        settings = obj;
        code
    } else {
        String::from_utf8(body.to_vec()).map_err(|_| "the module is not UTF-8 text".to_string())?
    };
    for (k, v) in query {
        // Numbers and booleans come as text in a query; JSON reads them back (and objects,
        // for config).
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
        settings.insert(k.clone(), value);
    }
    if code.trim().is_empty() {
        return Err("the module is empty".into());
    }
    let spec: FunctionSpec = serde_json::from_value(Value::Object(settings))
        .map_err(|e| format!("bad settings: {e}"))?;
    Ok((code, spec))
}

async fn deploy(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Settings are checked after the admin check (the extractor), so an outsider learns
    // nothing from them.
    if let Err(r) = functions_of(&state) {
        return r;
    }
    let (code, spec) = match deploy_request(&headers, &query, &body) {
        Ok(x) => x,
        Err(e) => return error_response(ErrorKind::Invalid, e),
    };
    let status = |r: &DeployReport| match r.outcome {
        DeployOutcome::Created => StatusCode::CREATED,
        DeployOutcome::Unchanged => StatusCode::OK,
    };
    let n = name.clone();
    change(&state, &n, status, move |f| f.deploy(&name, &code, &spec)).await
}

async fn delete(_: Admin, State(state): State<AppState>, Path(name): Path<String>) -> Response {
    let n = name.clone();
    change(&state, &n, ok, move |f| {
        f.delete(&name)?;
        Ok(json!({ "deleted": name }))
    })
    .await
}

async fn rollback(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Response {
    if let Err(r) = functions_of(&state) {
        return r;
    }
    let to = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => match v.get("to") {
                None | Some(Value::Null) => None,
                Some(t) => match t.as_u64().and_then(|t| u32::try_from(t).ok()) {
                    Some(t) => Some(t),
                    None => {
                        return error_response(ErrorKind::Invalid, "to must be a version number");
                    }
                },
            },
            Err(e) => {
                return error_response(ErrorKind::Invalid, format!("the body is not JSON: {e}"));
            }
        }
    };
    let n = name.clone();
    change(&state, &n, ok, move |f| {
        let version = f.rollback(&name, to)?;
        Ok(json!({ "name": name, "version": version }))
    })
    .await
}

async fn logs(
    _: Admin,
    State(state): State<AppState>,
    Path(name): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let lines = match query.get("lines").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if n <= 100_000 => n,
        Some(_) => return error_response(ErrorKind::Invalid, "lines must be 0..=100000"),
    };
    admin_op(&state, ok, move |f| {
        Ok(json!({ "lines": f.logs(&name, lines)? }))
    })
    .await
}

/// `POST /v1/functions:reseal[?dry_run=true]`.
async fn reseal(
    admin: Admin,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let dry_run = match query.get("dry_run").map(String::as_str) {
        None | Some("false" | "0") => false,
        Some("" | "true" | "1") => true,
        Some(_) => return error_response(ErrorKind::Invalid, "dry_run must be true or false"),
    };
    let report = match resealed(&state, dry_run).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    if !dry_run {
        tracing::info!(
            who = %admin.who,
            key = %report.key,
            resealed = report.resealed.total(),
            functions = report.functions.len(),
            "function secrets resealed with the current key"
        );
    }
    (StatusCode::OK, axum::Json(report)).into_response()
}

/// Reseals (or, with `dry_run`, says what resealing would do), on a shared journal after
/// catching up with the other nodes, and sharing each function changed.
async fn resealed(state: &AppState, dry_run: bool) -> Result<ResealReport, Response> {
    functions_of(state)?;
    let Some(shared) = &state.shared_functions else {
        return on_functions(state, move |f| f.reseal(dry_run)).await;
    };
    let refused = |e: ResealFailed| error_response(e.kind, e.reason);
    if !dry_run {
        return shared.reseal().await.map_err(refused);
    }
    shared.caught_up_to_reseal().await.map_err(refused)?;
    on_functions(state, |f| f.reseal(true)).await
}
