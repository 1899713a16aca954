//! Every metric the journal emits, declared in one place (names, units, descriptions), through
//! the `metrics` facade; the server installs the Prometheus exporter. Labels are the topic name
//! and, for errors, a kind: never anything per record.

use std::time::Duration;

use metrics::{Counter, Histogram, Unit};

/// Records made durable by group commits.
pub const APPENDED_RECORDS: &str = "sluice_journal_appended_records_total";
/// Value bytes made durable by group commits.
pub const APPENDED_BYTES: &str = "sluice_journal_appended_bytes_total";
/// Records per group commit (one write and one fdatasync).
pub const GROUP_COMMIT_RECORDS: &str = "sluice_journal_group_commit_records";
/// `append` calls per group commit.
pub const GROUP_COMMIT_APPENDS: &str = "sluice_journal_group_commit_appends";
/// Batches a shared partition's writer published again because another writer appended first.
pub const CONTENDED_BATCHES: &str = "sluice_journal_contended_batches_total";
/// Appends of a partition's only writer refused because another writer appended to it (its
/// owner moved to another node).
pub const FENCED_APPENDS: &str = "sluice_journal_fenced_appends_total";
/// fsync and fdatasync calls (segments, directories, floor and consumer files).
pub const FSYNCS: &str = "sluice_journal_fsyncs_total";
/// Time spent in each fsync or fdatasync.
pub const FSYNC_SECONDS: &str = "sluice_journal_fsync_duration_seconds";
/// Segments created by rolling.
pub const SEGMENTS_ROLLED: &str = "sluice_journal_segments_rolled_total";
/// Appends refused because the disk was full (rolled back; retry later).
pub const DISK_FULL: &str = "sluice_journal_disk_full_total";
/// Times the journal was poisoned by an fsync or unrecoverable write error.
pub const FAILURES: &str = "sluice_journal_failures_total";
/// Partitions whose torn tail recovery truncated.
pub const RECOVERY_TRUNCATIONS: &str = "sluice_journal_recovery_truncations_total";
/// Bytes recovery truncated from torn tails.
pub const RECOVERY_TRUNCATED_BYTES: &str = "sluice_journal_recovery_truncated_bytes_total";
/// Partitions quarantined (at recovery or when a read found corruption).
pub const QUARANTINES: &str = "sluice_journal_quarantined_partitions_total";
/// Partitions whose next offset recovery moved up to the durable floor (an offset gap).
pub const RECOVERY_FLOOR_GAPS: &str = "sluice_journal_recovery_floor_gaps_total";
/// Records lost to damage found at recovery (salvaged segments; see `salvage.rs`).
pub const RECOVERY_LOST_RECORDS: &str = "sluice_journal_recovery_lost_records_total";
/// Segments deleted by retention.
pub const RETENTION_DELETED_SEGMENTS: &str = "sluice_journal_retention_deleted_segments_total";
/// Bytes deleted by retention.
pub const RETENTION_DELETED_BYTES: &str = "sluice_journal_retention_deleted_bytes_total";

/// Registers the descriptions of every metric above with the installed recorder. Idempotent;
/// [`crate::LocalJournal::open`] calls it.
pub fn describe() {
    use metrics::{describe_counter, describe_histogram};
    describe_counter!(
        APPENDED_RECORDS,
        Unit::Count,
        "records made durable by group commits"
    );
    describe_counter!(
        APPENDED_BYTES,
        Unit::Bytes,
        "value bytes made durable by group commits"
    );
    describe_histogram!(
        GROUP_COMMIT_RECORDS,
        Unit::Count,
        "records per group commit"
    );
    describe_histogram!(
        GROUP_COMMIT_APPENDS,
        Unit::Count,
        "append calls per group commit"
    );
    describe_counter!(FSYNCS, Unit::Count, "fsync and fdatasync calls");
    describe_counter!(
        CONTENDED_BATCHES,
        Unit::Count,
        "batches published again because another writer appended to the partition first"
    );
    describe_counter!(
        FENCED_APPENDS,
        Unit::Count,
        "appends refused because another writer appended to a partition this one owned"
    );
    describe_histogram!(FSYNC_SECONDS, Unit::Seconds, "duration of each fsync");
    describe_counter!(SEGMENTS_ROLLED, Unit::Count, "segments created by rolling");
    describe_counter!(
        DISK_FULL,
        Unit::Count,
        "appends refused because the disk was full"
    );
    describe_counter!(
        FAILURES,
        Unit::Count,
        "journal poisoned by an fsync or write error"
    );
    describe_counter!(
        RECOVERY_TRUNCATIONS,
        Unit::Count,
        "torn tails truncated by recovery"
    );
    describe_counter!(
        RECOVERY_TRUNCATED_BYTES,
        Unit::Bytes,
        "bytes truncated by recovery"
    );
    describe_counter!(QUARANTINES, Unit::Count, "partitions quarantined");
    describe_counter!(
        RECOVERY_FLOOR_GAPS,
        Unit::Count,
        "partitions whose next offset moved up to the durable floor"
    );
    describe_counter!(
        RECOVERY_LOST_RECORDS,
        Unit::Count,
        "records lost to damage found at recovery"
    );
    describe_counter!(
        RETENTION_DELETED_SEGMENTS,
        Unit::Count,
        "segments deleted by retention"
    );
    describe_counter!(
        RETENTION_DELETED_BYTES,
        Unit::Bytes,
        "bytes deleted by retention"
    );
    describe_holds();
}

/// Bytes retention keeps past `retention_age`/`retention_bytes` because a consumer has not read
/// them (gauge, per topic).
pub const RETENTION_HELD_BYTES: &str = "sluice_journal_retention_held_bytes";
/// Segments kept for the same reason (gauge, per topic).
pub const RETENTION_HELD_SEGMENTS: &str = "sluice_journal_retention_held_segments";
/// Records retention deleted before every registered consumer read them (`max_unread_bytes`; on
/// JetStream, the stream's `max_age`/`max_bytes` passing a group's committed position).
pub const RETENTION_UNREAD_DELETED: &str = "sluice_journal_retention_unread_deleted_total";

/// Describes the retention metrics that hold or lose unread data.
fn describe_holds() {
    metrics::describe_gauge!(
        RETENTION_HELD_BYTES,
        Unit::Bytes,
        "bytes kept past retention because a consumer has not read them"
    );
    metrics::describe_gauge!(
        RETENTION_HELD_SEGMENTS,
        Unit::Count,
        "segments kept past retention because a consumer has not read them"
    );
    metrics::describe_counter!(
        RETENTION_UNREAD_DELETED,
        Unit::Count,
        "records deleted before every consumer read them (max_unread_bytes, or JetStream limits)"
    );
}

pub(crate) fn retention_held(topic: &str, bytes: u64, segments: u64) {
    metrics::gauge!(RETENTION_HELD_BYTES, "topic" => topic.to_string()).set(bytes as f64);
    metrics::gauge!(RETENTION_HELD_SEGMENTS, "topic" => topic.to_string()).set(segments as f64);
}

pub(crate) fn retention_unread_deleted(topic: &str, records: u64) {
    metrics::counter!(RETENTION_UNREAD_DELETED, "topic" => topic.to_string()).increment(records);
}

/// Handles a partition writer resolves once, so the group-commit loop does no registry lookups.
pub(crate) struct WriterMetrics {
    pub records: Counter,
    pub bytes: Counter,
    pub batch_records: Histogram,
    pub batch_appends: Histogram,
    pub rolled: Counter,
    pub disk_full: Counter,
}

impl WriterMetrics {
    pub(crate) fn new(topic: &str) -> Self {
        let topic = topic.to_string();
        Self {
            records: metrics::counter!(APPENDED_RECORDS, "topic" => topic.clone()),
            bytes: metrics::counter!(APPENDED_BYTES, "topic" => topic.clone()),
            batch_records: metrics::histogram!(GROUP_COMMIT_RECORDS, "topic" => topic.clone()),
            batch_appends: metrics::histogram!(GROUP_COMMIT_APPENDS, "topic" => topic.clone()),
            rolled: metrics::counter!(SEGMENTS_ROLLED, "topic" => topic.clone()),
            disk_full: metrics::counter!(DISK_FULL, "topic" => topic),
        }
    }
}

pub(crate) fn record_fsync(took: Duration) {
    metrics::counter!(FSYNCS).increment(1);
    metrics::histogram!(FSYNC_SECONDS).record(took.as_secs_f64());
}

pub(crate) fn failure() {
    metrics::counter!(FAILURES).increment(1);
}

pub(crate) fn quarantine(topic: &str) {
    metrics::counter!(QUARANTINES, "topic" => topic.to_string()).increment(1);
}

pub(crate) fn recovery_truncation(topic: &str, bytes: u64) {
    metrics::counter!(RECOVERY_TRUNCATIONS, "topic" => topic.to_string()).increment(1);
    metrics::counter!(RECOVERY_TRUNCATED_BYTES, "topic" => topic.to_string()).increment(bytes);
}

pub(crate) fn floor_gap(topic: &str) {
    metrics::counter!(RECOVERY_FLOOR_GAPS, "topic" => topic.to_string()).increment(1);
}

pub(crate) fn recovery_lost(topic: &str, records: u64) {
    // Registered even at zero, so a salvage that lost nothing still shows the topic.
    metrics::counter!(RECOVERY_LOST_RECORDS, "topic" => topic.to_string()).increment(records);
}

pub(crate) fn retention(topic: &str, segments: u64, bytes: u64) {
    metrics::counter!(RETENTION_DELETED_SEGMENTS, "topic" => topic.to_string()).increment(segments);
    metrics::counter!(RETENTION_DELETED_BYTES, "topic" => topic.to_string()).increment(bytes);
}
