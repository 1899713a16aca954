//! Every metric the hot tier emits.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};

/// Registers descriptions (once per process is enough; repeating is harmless).
pub fn describe() {
    describe_counter!(
        "sluice_hot_store_set_aside_total",
        "damaged embedded hot stores moved aside at start (the projection rebuilt them)"
    );
    describe_counter!(
        "sluice_hot_events_total",
        "events projected into the hot tier"
    );
    describe_counter!(
        "sluice_hot_batches_total",
        "atomic batches written to the hot store"
    );
    describe_counter!(
        "sluice_hot_records_skipped_total",
        "good records the hot projection could not decode"
    );
    describe_counter!(
        "sluice_hot_errors_total",
        "hot store or journal errors, by kind"
    );
    describe_histogram!(
        "sluice_hot_batch_seconds",
        "time to read, apply and write one batch"
    );
    describe_histogram!(
        "sluice_hot_visible_delay_seconds",
        "collector receipt to visible in the hot store, per event"
    );
    describe_gauge!(
        "sluice_hot_store_memory_bytes",
        "memory the embedded hot store holds: memtables and block cache"
    );
    describe_gauge!(
        "sluice_hot_store_memory_ceiling_bytes",
        "memory the embedded hot store holds at most, about"
    );
    describe_gauge!(
        "sluice_hot_cache_bytes",
        "profiles and counter states the projection keeps decoded, as their stored (JSON) size"
    );
    describe_gauge!(
        "sluice_hot_cache_ceiling_bytes",
        "the projection's value cache at most ([hot] cache_bytes)"
    );
    describe_counter!(
        "sluice_hot_cache_lookups_total",
        "values a batch looked for in the projection's cache, by result (hit, miss)"
    );
    describe_gauge!(
        "sluice_hot_position",
        "next good offset not yet in the hot store, by partition"
    );
}

pub(crate) fn batch(events: usize, seconds: f64) {
    counter!("sluice_hot_events_total").increment(events as u64);
    counter!("sluice_hot_batches_total").increment(1);
    histogram!("sluice_hot_batch_seconds").record(seconds);
}

pub(crate) fn visible_delay(seconds: f64) {
    histogram!("sluice_hot_visible_delay_seconds").record(seconds);
}

pub(crate) fn skipped() {
    counter!("sluice_hot_records_skipped_total").increment(1);
}

pub(crate) fn error(kind: &'static str) {
    counter!("sluice_hot_errors_total", "kind" => kind).increment(1);
}

pub(crate) fn position(partition: u32, next: u64) {
    gauge!("sluice_hot_position", "partition" => partition.to_string()).set(next as f64);
}

/// A damaged embedded store was moved aside and a new one started.
pub(crate) fn store_set_aside() {
    metrics::counter!("sluice_hot_store_set_aside_total").increment(1);
}

/// `sluice_hot_store_memory_bytes` and `sluice_hot_store_memory_ceiling_bytes`.
pub(crate) fn store_memory(bytes: u64, ceiling: u64) {
    gauge!("sluice_hot_store_memory_bytes").set(bytes as f64);
    gauge!("sluice_hot_store_memory_ceiling_bytes").set(ceiling as f64);
}

/// The projection's value cache: its size and ceiling, and the lookups so far.
pub(crate) fn cache(bytes: usize, ceiling: usize, hits: u64, misses: u64) {
    gauge!("sluice_hot_cache_bytes").set(bytes as f64);
    gauge!("sluice_hot_cache_ceiling_bytes").set(ceiling as f64);
    counter!("sluice_hot_cache_lookups_total", "result" => "hit").absolute(hits);
    counter!("sluice_hot_cache_lookups_total", "result" => "miss").absolute(misses);
}
