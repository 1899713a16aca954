//! The durable, partitioned journal: the pipeline's buffer and its source of truth.
//!
//! A journal holds named topics (`raw`, `good`, `bad`, and any a Kinesis client creates), each
//! with a fixed number of partitions. A partition is an append-only sequence of records with
//! offsets from 0, dense except across a crash gap. The [`Journal`] trait is what stages use;
//! [`LocalJournal`] keeps each partition in segment files on the local disk (format:
//! `docs/formats/journal.md`); [`JetStreamJournal`] keeps each partition in a NATS JetStream
//! stream (`jetstream/mod.rs`: the mapping, the ack point, and how the synchronous reads are
//! served from memory); consumers read through a [`Cursor`], which steps over gaps.
//!
//! Invariants every backend keeps:
//! - `append` resolves only after the records are durable (fdatasync under the default
//!   `always` policy; a group commit covers every append waiting at the time).
//! - Readers never see a record past the durable watermark ([`Journal::end`]).
//! - An offset, once handed out, is never given to other bytes, even after a crash.
//! - An fsync error poisons the journal: every later append fails with
//!   [`JournalError::Failed`] and the process is expected to exit and recover from disk.
//!
//! Where [`LocalJournal`] enforces them: group commit and the ack point in `writer.rs`; the
//! watermark's publication order in `partition.rs` and `segment.rs`; offsets never reissued
//! through the durable floor (`partition.rs`) and recovery's classification of damage
//! (`scan.rs`, `recovery.rs`); fail-stop on fsync errors in `durable.rs` and its callers.
//! Offsets are dense except after a crash, where offsets continue at the floor and leave a gap
//! (reported); `read` skips a gap between records, and [`Cursor`] also steps over one at the
//! tail, where a plain read finds nothing while `end()` is ahead.
//!
//! [`durable_fs`] holds the durable file-system steps (directories fsynced into their parents,
//! atomic small files) that the journal and every other crate writing under the data directory
//! use.
//!
//! What consumers share besides the cursor: [`ConsumerProgress`] (how far a consumer has got,
//! and waiting until it has caught up), [`Backoff`] (the retry delay) and [`StageHealth`] (what the
//! last attempt did, read by `/health` through [`Health`]).

mod api;
mod backoff;
mod config;
mod cursor;
mod durable;
pub mod durable_fs;
mod error;
mod flusher;
mod format;
mod health;
mod jetstream;
mod local;
pub mod metrics;
mod partition;
mod progress;
mod recovery;
mod retention;
mod salvage;
mod scan;
mod segment;
mod sync;
mod writer;

#[cfg(test)]
mod tests;

pub use api::{Journal, Record, TopicInfo, partition_for};
pub use backoff::Backoff;
pub use config::{FsyncPolicy, JournalConfig, MAX_PARTITIONS};
pub use cursor::Cursor;
pub use error::JournalError;
pub use health::{Failure, Health, StageHealth, StageReport};
pub use jetstream::{
    JetStreamConfig, JetStreamJournal, JournalBackend, Lease, NodeEntry, OnAdd, OnChange,
    SharedMap, SharedSet,
};
pub use local::{JournalStats, LocalJournal, is_valid_topic_name};
pub use progress::{ConsumerProgress, ConsumerStatus, ProgressError};
pub use recovery::{FloorGap, PartitionRecovery, RecoveryReport};
pub use retention::{HeldRetention, PartitionRetention, RetentionReport};
pub use salvage::LostRange;
