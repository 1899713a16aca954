//! `POST /v1/sql` (a [`Reader`] request): a read-only query over the lake, answered as JSON lines, CSV, a text table
//! or Arrow IPC (`?format=`).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde::Deserialize;
use sluice_event::ErrorKind;
use sluice_warehouse::format;

use crate::http::{AppState, Reader, error_response, header_str, metered};

pub(crate) fn routes() -> Router<AppState> {
    metered("sql", Router::new().route("/v1/sql", post(sql)))
}

#[derive(Deserialize)]
struct SqlParams {
    format: Option<String>,
}

#[derive(Deserialize)]
struct SqlBody {
    query: String,
}

async fn sql(
    _: Reader,
    State(state): State<AppState>,
    Query(params): Query<SqlParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(warehouse) = state.warehouse else {
        return error_response(
            ErrorKind::NotFound,
            "this node does not run the warehouse role",
        );
    };
    let Ok(text) = std::str::from_utf8(&body) else {
        return error_response(ErrorKind::Invalid, "query is not utf-8");
    };
    let is_json = header_str(&headers, header::CONTENT_TYPE)
        .is_some_and(|c| c.starts_with("application/json"));
    let query = if is_json {
        match serde_json::from_str::<SqlBody>(text) {
            Ok(b) => b.query,
            Err(e) => {
                return error_response(
                    ErrorKind::Invalid,
                    format!("expected {{\"query\": \"...\"}}: {e}"),
                );
            }
        }
    } else {
        text.to_string()
    };
    let output = match warehouse.query(&query).await {
        Ok(o) => o,
        Err(e) => return error_response(e.kind(), e.to_string()),
    };
    let rendered = match params.format.as_deref().unwrap_or("json") {
        "json" => format::to_json_lines(&output).map(|s| (s.into_bytes(), "application/x-ndjson")),
        "csv" => format::to_csv(&output).map(|s| (s.into_bytes(), "text/csv")),
        "table" => format::to_table(&output).map(|s| (s.into_bytes(), "text/plain; charset=utf-8")),
        "arrow" => format::to_arrow_ipc(&output).map(|b| (b, format::ARROW_STREAM_MEDIA_TYPE)),
        other => {
            return error_response(
                ErrorKind::Invalid,
                format!("unknown format {other:?} (json, csv, table or arrow)"),
            );
        }
    };
    match rendered {
        Ok((body, ctype)) => ([(header::CONTENT_TYPE, ctype)], body).into_response(),
        Err(e) => error_response(e.kind(), e.to_string()),
    }
}
