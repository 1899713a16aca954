//! The finished router: the routes of every module under one body limit and one state, and
//! [`count`], the one middleware that counts answers per route, by the label [`metered`] gives
//! them.

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use super::AppState;

/// The route name an answer is counted under in `sluice_http_requests_total`. [`metered`] puts
/// it on a route's answers; an answer that already carries one keeps it (the Kinesis route
/// answers for two APIs, and the per-address quota's refusals name the route they stand in
/// front of).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RouteLabel(pub(crate) &'static str);

/// `routes` with their answers labelled `route`, so that [`count`] counts them.
pub(crate) fn metered<S: Clone + Send + Sync + 'static>(
    route: &'static str,
    routes: Router<S>,
) -> Router<S> {
    routes.route_layer(axum::middleware::from_fn_with_state(route, label))
}

/// The middleware behind [`metered`], for a single method of a route.
pub(crate) async fn label(State(route): State<&'static str>, req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    if resp.extensions().get::<RouteLabel>().is_none() {
        resp.extensions_mut().insert(RouteLabel(route));
    }
    resp
}

/// The one middleware that counts answers, outside every other layer:
/// `sluice_http_requests_total{route,status}` for each answer with a [`RouteLabel`].
async fn count(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    if let Some(RouteLabel(route)) = resp.extensions().get::<RouteLabel>().copied() {
        crate::metrics::request(route, resp.status().as_u16());
    }
    resp
}

/// Every route under the body limit, with the state. The compressed body may not exceed the
/// decompressed limit either; the collector applies the limit again after decompression.
pub(crate) fn router(routes: Router<AppState>, state: AppState, max_body_bytes: usize) -> Router {
    routes
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(count))
        .with_state(state)
}
