//! Answers and request helpers shared by the routes. Errors are
//! `{"error": "<reason>", "kind": "<kind>"}` with the status from [`crate::status_of`];
//! transient ones (429, 503) carry `Retry-After`.

use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use sluice_collector::{CollectError, Collector, Encoding};
use sluice_event::ErrorKind;

use super::AppState;
use crate::error::status_of;

/// Seconds a client should wait before retrying a 429/503.
const RETRY_AFTER_SECS: &str = "1";

/// An error answer.
pub(crate) fn error_response(kind: ErrorKind, reason: impl Into<String>) -> Response {
    let status = status_of(kind);
    let body = serde_json::json!({ "error": reason.into(), "kind": kind.as_str() });
    let mut resp = (status, axum::Json(body)).into_response();
    if kind.is_transient() {
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    resp
}

/// A collector error's answer: [`error_response`], with the wait a quota names as
/// `Retry-After`.
pub(crate) fn collect_error(e: &CollectError) -> Response {
    let mut resp = error_response(e.kind(), e.to_string());
    if let Some(secs) = e.retry_after_secs() {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
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

/// A header's value when it is text.
pub(crate) fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_errors_ask_the_client_to_retry() {
        let retry_after = |kind| {
            error_response(kind, "reason")
                .headers()
                .get(header::RETRY_AFTER)
                .cloned()
        };
        assert_eq!(
            retry_after(ErrorKind::Unavailable),
            Some(HeaderValue::from_static("1"))
        );
        assert_eq!(
            retry_after(ErrorKind::Overloaded),
            Some(HeaderValue::from_static("1"))
        );
        assert_eq!(retry_after(ErrorKind::Conflict), None);
        assert_eq!(retry_after(ErrorKind::Invalid), None);
    }
}
