//! Every metric the collector emits.

use crate::IngestOutcome;

/// `sluice_collector_events_total{outcome}`: events by outcome.
pub(crate) fn ingested(o: &IngestOutcome) {
    metrics::counter!("sluice_collector_events_total", "outcome" => "accepted")
        .increment(o.accepted as u64);
    metrics::counter!("sluice_collector_events_total", "outcome" => "duplicate")
        .increment(o.duplicates as u64);
    metrics::counter!("sluice_collector_events_total", "outcome" => "rejected")
        .increment(o.rejected.len() as u64);
}

/// `sluice_collector_append_failures_total`: events whose append failed (the client was told
/// to retry).
pub(crate) fn append_failed(n: usize) {
    metrics::counter!("sluice_collector_append_failures_total").increment(n as u64);
}

/// `sluice_collector_throttled_total{quota}`: requests refused by a quota (`events`, `bytes`
/// per source, `requests` per client address).
pub(crate) fn throttled(quota: &'static str) {
    metrics::counter!("sluice_collector_throttled_total", "quota" => quota).increment(1);
}

/// `sluice_collector_dedupe_evicted_total`: dedupe entries dropped, oldest first, to stay within
/// `collector.dedupe_max_entries` (an event repeated after its entry left is stored again).
pub(crate) fn dedupe_evicted(n: u64) {
    metrics::counter!("sluice_collector_dedupe_evicted_total").increment(n);
}

/// `sluice_collector_dedupe_bytes` and `sluice_collector_dedupe_ceiling_bytes`: the heap the
/// dedupe index holds, and will hold once `collector.dedupe_max_entries` is reached.
pub(crate) fn dedupe_memory(bytes: usize, ceiling: usize) {
    metrics::gauge!("sluice_collector_dedupe_bytes").set(bytes as f64);
    metrics::gauge!("sluice_collector_dedupe_ceiling_bytes").set(ceiling as f64);
}

/// `sluice_collector_contended_appends_total`: appends to a shared `raw` partition made again
/// because another node had appended first, past what this node had read (see `follow.rs`).
pub(crate) fn contended(partitions: usize) {
    metrics::counter!("sluice_collector_contended_appends_total").increment(partitions as u64);
}
