//! [`Admin`]: the extractor that guards admin requests (schema pushes, user functions,
//! replay). With an `admin_token` configured a request needs
//! `Authorization: Bearer <admin_token>`; without one, only loopback clients may ask.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use axum::response::Response;
use sha2::Digest;
use sluice_event::ErrorKind;

use super::{AppState, error_response};

/// Proof that the request may make admin changes; a handler that takes it runs only then.
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|c| c.0);
        match refusal(state.admin_token.as_deref(), &parts.headers, peer) {
            None => Ok(Admin),
            Some(why) => Err(error_response(ErrorKind::Unauthorized, why)),
        }
    }
}

/// Why an admin request is refused, if it is.
fn refusal(
    token: Option<&str>,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
) -> Option<&'static str> {
    match token {
        Some(token) => {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            // Compare hashes so the time taken does not depend on where the strings differ.
            let h = |s: &str| sha2::Sha256::digest(s.as_bytes());
            if given.is_some_and(|g| h(g) == h(token)) {
                None
            } else {
                Some("admin requests need Authorization: Bearer <admin_token>")
            }
        }
        None if peer.is_some_and(|p| p.ip().is_loopback()) => None,
        None => Some("admin requests are open to loopback clients only when no admin_token is set"),
    }
}
