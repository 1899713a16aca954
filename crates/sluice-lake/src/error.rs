//! [`LakeError`]: the failure modes of lake delivery that a caller acts on, each classified by
//! [`LakeError::kind`].
//!
//! Storage failures (the object store, the Delta log) are `Unavailable`: the delivery loop retries
//! them itself and only returns them when it gives up (during shutdown). A table whose schema is
//! not the one this version writes is `Conflict`: writing into it would corrupt it, so the sink
//! stops instead.

use sluice_event::ErrorKind;
use sluice_journal::JournalError;

/// A lake delivery failure.
#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    /// The configuration is not usable.
    #[error("invalid lake config: {0}")]
    Config(String),
    /// The lake root is neither a usable URL nor a usable path.
    #[error("invalid lake location {location}: {reason}")]
    Location {
        /// What was given.
        location: String,
        /// Why it is not usable.
        reason: String,
    },
    /// Reading the journal failed.
    #[error("journal: {0}")]
    Journal(#[from] JournalError),
    /// The Delta table could not be read, written or committed.
    #[error("delta table {table}: {context}: {source}")]
    Delta {
        /// Table name.
        table: String,
        /// What was being done.
        context: &'static str,
        /// The delta-rs error.
        #[source]
        source: Box<deltalake::DeltaTableError>,
    },
    /// The table exists but its schema or partitioning is not the one this version writes.
    #[error("delta table {table} has an incompatible schema: {reason}")]
    SchemaMismatch {
        /// Table name.
        table: String,
        /// The first difference found.
        reason: String,
    },
    /// Turning records into an Arrow batch failed (a bug: decoding errors skip the record).
    #[error("encoding rows for {table}: {reason}")]
    Encode {
        /// Table name.
        table: String,
        /// The Arrow error.
        reason: String,
    },
    /// A file of the table's Delta log is damaged (empty or cut short, as a power cut leaves a
    /// file that was never fsynced) where it cannot be set aside safely.
    #[error("delta table {table}: damaged log file {path}: {reason}")]
    DamagedLog {
        /// Table name.
        table: String,
        /// The damaged file.
        path: String,
        /// What is wrong and why it was not set aside.
        reason: String,
    },
    /// A background task (encoding, Parquet writing) panicked or was cancelled.
    #[error("background task of {table} failed: {reason}")]
    Task {
        /// Table name.
        table: String,
        /// The join error.
        reason: String,
    },
    /// Delivery kept failing and the sink gave up (only during shutdown, where retrying forever
    /// would hang the process).
    #[error("delivery to {table} gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// Table name.
        table: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        last: String,
    },
    /// The sink stopped before the awaited progress was reached.
    #[error(transparent)]
    Stopped(#[from] sluice_journal::ProgressError),
    /// A commit of the table records a lower txn version for a partition than an earlier commit:
    /// the log is damaged, and trusting it would deliver records twice. The sink refuses to
    /// deliver until the log is repaired.
    #[error(
        "delta table {table}: commit {commit} says {app_id} delivered up to offset {version}, \
         below the {earlier} of commit {earlier_commit}; the log is damaged, so delivery stops \
         rather than deliver those offsets twice (see docs/recovery.md)"
    )]
    TxnRegressed {
        /// Table name.
        table: String,
        /// The txn app id (`<table>/<partition>`).
        app_id: String,
        /// The commit with the lower version.
        commit: u64,
        /// Its version.
        version: i64,
        /// The earlier commit with the higher one.
        earlier_commit: u64,
        /// That version.
        earlier: i64,
    },
    /// A commit of the table records a txn version at or past the end of its journal partition:
    /// the table claims records the journal never held (damage raised the number, or the journal
    /// is not the one the table was fed from). Resuming after it would skip the offsets in
    /// between silently, so the sink refuses to deliver until the log is repaired.
    #[error(
        "delta table {table}: {app_id} says the next offset to deliver is {recorded}, past the \
         end {end} of journal partition {topic}/{partition}; the log is damaged or belongs to \
         another journal, so delivery stops rather than skip offsets (see docs/recovery.md)"
    )]
    TxnPastJournalEnd {
        /// Table name.
        table: String,
        /// The txn app id (`<app>/<partition>`).
        app_id: String,
        /// The journal topic the table is fed from.
        topic: String,
        /// The journal partition.
        partition: u32,
        /// The next offset the table records (its txn version + 1).
        recorded: u64,
        /// The partition's end (next offset to be written).
        end: u64,
    },
    /// A test fault injector asked the sink to crash.
    #[error("injected crash at {0}")]
    InjectedCrash(&'static str),
}

impl LakeError {
    /// Classification for callers and HTTP mapping.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Config(_) | Self::Location { .. } => ErrorKind::Invalid,
            Self::Journal(e) => e.kind(),
            Self::Delta { .. } | Self::GaveUp { .. } | Self::Stopped(_) => ErrorKind::Unavailable,
            Self::SchemaMismatch { .. }
            | Self::DamagedLog { .. }
            | Self::TxnRegressed { .. }
            | Self::TxnPastJournalEnd { .. } => ErrorKind::Conflict,
            Self::Encode { .. } | Self::Task { .. } | Self::InjectedCrash(_) => ErrorKind::Internal,
        }
    }

    pub(crate) fn delta(
        table: &str,
        context: &'static str,
        source: impl Into<deltalake::DeltaTableError>,
    ) -> Self {
        Self::Delta {
            table: table.to_string(),
            context,
            source: Box::new(source.into()),
        }
    }
}
