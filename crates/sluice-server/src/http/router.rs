//! The finished router: the routes of every module under one body limit and one state, and
//! [`metered`], the one middleware that counts answers per route.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;

/// Counts an answer under another route name than the one its router was metered with (the
/// Kinesis route answers for two APIs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RouteLabel(pub(crate) &'static str);

/// `routes` with `sluice_http_requests_total{route,status}` counted for every answer.
pub(crate) fn metered<S: Clone + Send + Sync + 'static>(
    route: &'static str,
    routes: Router<S>,
) -> Router<S> {
    routes.route_layer(axum::middleware::from_fn_with_state(route, count))
}

/// The middleware behind [`metered`], for a single method of a route.
pub(crate) async fn count(State(route): State<&'static str>, req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let route = resp.extensions().get::<RouteLabel>().map_or(route, |l| l.0);
    crate::metrics::request(route, resp.status().as_u16());
    resp
}

/// Every route under the body limit, with the state. The compressed body may not exceed the
/// decompressed limit either; the collector applies the limit again after decompression.
pub(crate) fn router(routes: Router<AppState>, state: AppState, max_body_bytes: usize) -> Router {
    routes
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
