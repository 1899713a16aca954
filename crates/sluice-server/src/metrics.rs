//! Every metric the server itself emits, and the Prometheus recorder.

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

/// Installs the process-wide Prometheus recorder, or returns a detached handle when one is
/// installed already (a second server in the same process, as in tests).
pub(crate) fn install() -> PrometheusHandle {
    let builder = PrometheusBuilder::new();
    match builder.install_recorder() {
        Ok(handle) => handle,
        Err(_) => PrometheusBuilder::new().build_recorder().handle(),
    }
}

/// `sluice_http_requests_total{route,status}`.
pub(crate) fn request(route: &'static str, status: u16) {
    metrics::counter!("sluice_http_requests_total", "route" => route, "status" => status.to_string())
        .increment(1);
}
