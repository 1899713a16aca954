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

/// `sluice_http_connections`: open connections.
pub(crate) fn connection_opened() {
    metrics::gauge!("sluice_http_connections").increment(1.0);
}

/// See [`connection_opened`].
pub(crate) fn connection_closed() {
    metrics::gauge!("sluice_http_connections").decrement(1.0);
}

/// `sluice_http_connections_refused_total`: connections answered 503 at `max_connections`.
pub(crate) fn connection_refused() {
    metrics::counter!("sluice_http_connections_refused_total").increment(1);
}

/// `sluice_tls_handshake_failures_total`: HTTPS connections closed because their TLS
/// handshake failed (a plaintext request on the TLS port, an untrusted certificate).
pub(crate) fn tls_handshake_failed() {
    metrics::counter!("sluice_tls_handshake_failures_total").increment(1);
}

/// `sluice_http_timeouts_total{kind}`: connections closed by a timer (`handshake`, `header`,
/// `idle`) and requests answered 408 (`body`).
pub(crate) fn connection_timed_out(kind: &'static str) {
    metrics::counter!("sluice_http_timeouts_total", "kind" => kind).increment(1);
}
