//! The per-address request quota on the ingest routes (`collector.quotas.requests_per_sec_per_ip`),
//! checked before a body is read, and answered in each protocol's own shape: 429 with
//! `Retry-After` and the usual error body, or for the AWS APIs the error an SDK backs off on
//! (`ProvisionedThroughputExceededException` for Kinesis, `ServiceUnavailableException` for
//! Firehose). The per-source quotas are the collector's (`Collector::submit`).
//!
//! The address is the connection's peer: behind a proxy every client shares the proxy's, so set
//! the quota at the proxy instead (docs: README "Quotas").

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;
use sluice_collector::{AddressQuota, CollectError, Throttle};

use crate::http::{RouteLabel, collect_error};

/// How a refusal is answered.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Shape {
    /// `{"error", "kind"}` with 429.
    Json,
    /// The AWS JSON error of the API in `X-Amz-Target`.
    Aws,
}

type Limit = (Arc<AddressQuota>, Shape, &'static str);

/// `routes` behind the per-address quota (unchanged when it is off).
pub(crate) fn limited<S: Clone + Send + Sync + 'static>(
    routes: Router<S>,
    quota: &Arc<AddressQuota>,
    shape: Shape,
    route: &'static str,
) -> Router<S> {
    if !quota.enabled() {
        return routes;
    }
    let limit: Limit = (quota.clone(), shape, route);
    routes.route_layer(axum::middleware::from_fn_with_state(limit, admit))
}

async fn admit(
    State((quota, shape, route)): State<Limit>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
    next: Next,
) -> Response {
    let Err(throttle) = quota.admit(peer.ip(), Instant::now()) else {
        return next.run(req).await;
    };
    let mut resp = match shape {
        Shape::Json => collect_error(&CollectError::from(throttle)),
        Shape::Aws => aws_refusal(&req, throttle),
    };
    // Counted by the router's one counting layer, under the route it stands in front of.
    resp.extensions_mut().insert(RouteLabel(route));
    resp
}

fn aws_refusal(req: &Request, throttle: Throttle) -> Response {
    let firehose = req
        .headers()
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("Firehose_"));
    let mut resp = crate::kinesis::throttled(firehose, throttle.reason);
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(throttle.retry_after_secs),
    );
    resp
}
