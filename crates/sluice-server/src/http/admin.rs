//! The guards of read and admin routes: [`Admin`], [`Reader`] and [`MetricsReader`], extractors
//! that let a handler run only when [`crate::access::Access::authorize`] says yes, and
//! [`refuse`], the one answer to every refusal.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::access::{FORBIDDEN, Need, Refusal};
use crate::auth::{Locality, UNAUTHORIZED};

/// Proof that the request may make admin changes (an admin token, or open local access), and
/// who made it ([`crate::access::Access::principal`]).
pub(crate) struct Admin {
    pub(crate) who: String,
}

/// Proof that the request may read (a reader or admin token, or open local access).
pub(crate) struct Reader;

/// Proof that the request may read `/metrics` (a reader or admin token, or a local client).
pub(crate) struct MetricsReader;

/// Checks `parts` against `need`; the refusal is the answer.
#[allow(clippy::result_large_err)] // the error is the answer itself, returned at once
fn guard(parts: &Parts, state: &AppState, need: Need) -> Result<(), Response> {
    state
        .access
        .authorize(need, &parts.method, &parts.headers, locality(parts))
        .map_err(refuse)
}

fn locality(parts: &Parts) -> Locality {
    match parts.extensions.get::<ConnectInfo<SocketAddr>>() {
        Some(c) => Locality::of(c.0.ip(), &parts.headers),
        None => Locality::Remote,
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        guard(parts, state, Need::Admin)?;
        let who = state.access.principal(&parts.headers, locality(parts));
        Ok(Admin { who })
    }
}

impl FromRequestParts<AppState> for Reader {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        guard(parts, state, Need::Read).map(|()| Reader)
    }
}

impl FromRequestParts<AppState> for MetricsReader {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        guard(parts, state, Need::Metrics).map(|()| MetricsReader)
    }
}

/// The answer to a refusal: 401 or 403, `{"error": <fixed message>, "kind": "unauthorized" |
/// "forbidden"}`, the same body for every reason of the same status, so that it tells nothing
/// about which credentials exist.
pub(crate) fn refuse(r: Refusal) -> Response {
    let (status, message, kind) = match r {
        Refusal::Unauthorized => (StatusCode::UNAUTHORIZED, UNAUTHORIZED, "unauthorized"),
        Refusal::Forbidden => (StatusCode::FORBIDDEN, FORBIDDEN, "forbidden"),
    };
    let body = serde_json::json!({ "error": message, "kind": kind });
    let mut resp = (status, axum::Json(body)).into_response();
    if r == Refusal::Unauthorized {
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"sluice\""),
        );
    }
    resp
}
