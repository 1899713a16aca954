//! Every metric the runner emits.

/// `sluice_functions_events_total{outcome="good|bad"}`.
pub(crate) fn processed(good: usize, bad: usize) {
    metrics::counter!("sluice_functions_events_total", "outcome" => "good").increment(good as u64);
    metrics::counter!("sluice_functions_events_total", "outcome" => "bad").increment(bad as u64);
}

/// `sluice_functions_append_retries_total`: output appends retried after a transient error.
pub(crate) fn retried() {
    metrics::counter!("sluice_functions_append_retries_total").increment(1);
}

/// `sluice_functions_bad_rows_total{kind, function}`.
pub(crate) fn bad(kind: sluice_event::BadKind, function: &str) {
    metrics::counter!("sluice_functions_bad_rows_total", "kind" => kind.as_str(), "function" => function.to_string()).increment(1);
}

/// `sluice_privacy_suppressed_events_total`: events dropped because their person was deleted.
pub(crate) fn suppressed(n: usize) {
    metrics::counter!("sluice_privacy_suppressed_events_total").increment(n as u64);
}
