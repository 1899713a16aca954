//! The metrics lake delivery emits (through the `metrics` facade; the server installs the
//! Prometheus recorder). Every metric carries a `table` label (`events`, `bad_rows`).
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `sluice_lake_rows_written_total` | counter | rows committed to the table |
//! | `sluice_lake_records_skipped_total` | counter | journal records that did not decode and were skipped (each is logged at error level with its position) |
//! | `sluice_lake_commits_total` | counter | successful Delta commits |
//! | `sluice_lake_commit_failures_total` | counter | failed or ambiguous commits (each is resolved by reloading the table) |
//! | `sluice_lake_commit_resolved_total` | counter | failed commits found to have landed after all (read back from the txn versions) |
//! | `sluice_lake_commit_seconds` | histogram | time from flush start to commit |
//! | `sluice_lake_flush_rows` | histogram | rows per flush |
//! | `sluice_lake_checkpoints_total` | counter | Delta checkpoints written |
//! | `sluice_lake_checkpoint_failures_total` | counter | checkpoint attempts that failed (retried at the next interval) |
//! | `sluice_lake_read_errors_total` | counter | journal read errors (the partition is retried after a backoff) |
//! | `sluice_lake_txn_regressions_total` | counter | start-up checks that found a commit whose txn version is below an earlier commit's (delivery refused; see `DeltaTarget::check_txn_history`) |
//! | `sluice_lake_txn_past_journal_end_total` | counter | per `partition`: start-up checks that found a txn version at or past the journal partition's end (delivery refused; see `commit::check_txns_within_journal`) |
//! | `sluice_lake_expired_files_total` | counter | data files removed by `[lake] retention` (their date partitions were past it) |
//! | `sluice_lake_typed_refusals_total` | counter | per `sink` (`lake`, `loader`) and `kind`: events given no typed table (`table`, `[lake] max_typed_tables` reached) and properties given no column (`column`, `max_typed_columns` reached); see [`crate::limits`] |
//! | `sluice_lake_damaged_files` | gauge | data files the latest scrub found damaged (see [`crate::verify`]) |
//! | `sluice_lake_buffered_records` | gauge | records waiting for the next flush |
//! | `sluice_lake_delivered_offset` | gauge | per `partition`: next journal offset not yet in the table |

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};

/// Registers the descriptions of every lake metric (call once at start-up).
pub fn describe() {
    describe_counter!(
        "sluice_lake_txn_regressions_total",
        Unit::Count,
        "start-up checks that found a txn version going backwards in the log (delivery refused)"
    );
    describe_counter!(
        "sluice_lake_txn_past_journal_end_total",
        Unit::Count,
        "start-up checks that found a txn version past the journal's end (delivery refused)"
    );
    describe_counter!(
        "sluice_lake_typed_refusals_total",
        Unit::Count,
        "events given no typed table (kind=table) or properties given no typed column (kind=column): a limit was reached"
    );
    describe_counter!(
        "sluice_lake_expired_files_total",
        Unit::Count,
        "data files removed because their date partition was past [lake] retention"
    );
    describe_counter!(
        "sluice_lake_rows_written_total",
        Unit::Count,
        "rows committed to a lake table"
    );
    describe_counter!(
        "sluice_lake_records_skipped_total",
        Unit::Count,
        "journal records that did not decode and were skipped"
    );
    describe_counter!(
        "sluice_lake_commits_total",
        Unit::Count,
        "successful delta commits"
    );
    describe_counter!(
        "sluice_lake_commit_failures_total",
        Unit::Count,
        "failed or ambiguous delta commits"
    );
    describe_counter!(
        "sluice_lake_commit_resolved_total",
        Unit::Count,
        "failed commits found to have landed when read back"
    );
    describe_histogram!(
        "sluice_lake_commit_seconds",
        Unit::Seconds,
        "time from flush start to commit"
    );
    describe_histogram!("sluice_lake_flush_rows", Unit::Count, "rows per flush");
    describe_counter!(
        "sluice_lake_checkpoints_total",
        Unit::Count,
        "delta checkpoints written"
    );
    describe_counter!(
        "sluice_lake_checkpoint_failures_total",
        Unit::Count,
        "delta checkpoint attempts that failed"
    );
    describe_counter!(
        "sluice_lake_read_errors_total",
        Unit::Count,
        "journal read errors"
    );
    describe_gauge!(
        "sluice_lake_buffered_records",
        Unit::Count,
        "records waiting for the next flush"
    );
    describe_gauge!(
        "sluice_lake_damaged_files",
        Unit::Count,
        "data files the latest scrub found damaged (checksum, length or Parquet decoding)"
    );
    describe_gauge!(
        "sluice_lake_delivered_offset",
        Unit::Count,
        "next journal offset not yet in the table"
    );
}

/// `sluice_lake_expired_files_total{table}`.
pub(crate) fn expired(table: &str, files: usize) {
    counter!("sluice_lake_expired_files_total", "table" => table.to_string())
        .increment(files as u64);
}

/// `sluice_lake_damaged_files{table}`.
pub(crate) fn damaged_files(table: &str, files: usize) {
    gauge!("sluice_lake_damaged_files", "table" => table.to_string()).set(files as f64);
}

pub(crate) fn rows_written(table: &'static str, rows: usize) {
    counter!("sluice_lake_rows_written_total", "table" => table).increment(rows as u64);
    histogram!("sluice_lake_flush_rows", "table" => table).record(rows as f64);
}

pub(crate) fn records_skipped(table: &'static str, n: usize) {
    counter!("sluice_lake_records_skipped_total", "table" => table).increment(n as u64);
}

pub(crate) fn commit_succeeded(table: &'static str, seconds: f64) {
    counter!("sluice_lake_commits_total", "table" => table).increment(1);
    histogram!("sluice_lake_commit_seconds", "table" => table).record(seconds);
}

pub(crate) fn commit_failed(table: &'static str) {
    counter!("sluice_lake_commit_failures_total", "table" => table).increment(1);
}

pub(crate) fn commit_resolved(table: &'static str) {
    counter!("sluice_lake_commit_resolved_total", "table" => table).increment(1);
}

pub(crate) fn checkpoint(table: &'static str, ok: bool) {
    if ok {
        counter!("sluice_lake_checkpoints_total", "table" => table).increment(1);
    } else {
        counter!("sluice_lake_checkpoint_failures_total", "table" => table).increment(1);
    }
}

pub(crate) fn read_error(table: &'static str) {
    counter!("sluice_lake_read_errors_total", "table" => table).increment(1);
}

pub(crate) fn buffered(table: &'static str, records: usize) {
    gauge!("sluice_lake_buffered_records", "table" => table).set(records as f64);
}

pub(crate) fn delivered_offset(table: &'static str, partition: u32, next: u64) {
    gauge!("sluice_lake_delivered_offset", "table" => table, "partition" => partition.to_string())
        .set(next as f64);
}

/// A start-up check found the table's txn versions going backwards.
pub(crate) fn txn_regressed(table: &str) {
    counter!("sluice_lake_txn_regressions_total", "table" => table.to_string()).increment(1);
}

/// A start-up check found a txn version past the end of journal partition `partition`.
pub(crate) fn txn_past_journal_end(table: &str, partition: u32) {
    counter!(
        "sluice_lake_txn_past_journal_end_total",
        "table" => table.to_string(),
        "partition" => partition.to_string()
    )
    .increment(1);
}
