//! Retention: deleting whole sealed segments from the front of each partition, by age (newest
//! record older than `retention_age`) or size (partition over `retention_bytes`), and the
//! [`RetentionReport`] saying what went.
//!
//! Only a prefix of sealed segments is ever deleted, never the active segment, so `start()`
//! moves up and the remaining offsets stay contiguous. A segment leaves the in-memory list before
//! its file is unlinked: new reads no longer find it, while reads already holding it finish on
//! the open (unlinked) file. Deleting records does not lower the durable floor, so their offsets
//! are never handed out again. Empty sealed segments (left by a crash-time offset gap) hold
//! nothing and go first.

use std::sync::Arc;

use crate::local::Shared;
use crate::segment::Segment;
use crate::sync::{read_lock, write_lock};
use crate::{JournalError, metrics};

/// What one retention pass deleted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Segments deleted across all partitions.
    pub deleted_segments: u64,
    /// Bytes deleted across all partitions.
    pub deleted_bytes: u64,
    /// Partitions where something was deleted.
    pub partitions: Vec<PartitionRetention>,
}

/// What retention deleted in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionRetention {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Segments deleted.
    pub deleted_segments: u64,
    /// Bytes deleted.
    pub deleted_bytes: u64,
    /// The partition's first stored offset afterwards.
    pub start: u64,
}

/// One retention pass at wall-clock time `now_ms`.
pub(crate) fn enforce(shared: &Shared, now_ms: i64) -> Result<RetentionReport, JournalError> {
    let _pass = crate::sync::lock(&shared.retention);
    let cutoff = now_ms.saturating_sub(shared.settings.retention_age_ms);
    let mut report = RetentionReport::default();
    for part in shared.all_partitions() {
        if part.quarantine_reason().is_some() {
            continue;
        }
        let victims: Vec<Arc<Segment>> = {
            let segments = read_lock(&part.segments);
            let mut total: u64 = segments.iter().map(|s| s.len()).sum();
            let sealed = segments.len().saturating_sub(1);
            let mut victims = Vec::new();
            for segment in &segments[..sealed] {
                let too_old = segment.max_timestamp_ms() < cutoff;
                let too_big = shared
                    .settings
                    .retention_bytes
                    .is_some_and(|max| total > max);
                if !(segment.is_empty() || too_old || too_big) {
                    break;
                }
                total -= segment.len();
                victims.push(segment.clone());
            }
            victims
        };
        if victims.is_empty() {
            continue;
        }
        // Drop them from the list first (they are its prefix: only this pass removes segments,
        // and the writer only appends), then unlink.
        write_lock(&part.segments).drain(..victims.len());
        let mut deleted_bytes = 0;
        for segment in &victims {
            if let Err(source) = std::fs::remove_file(&segment.path)
                && source.kind() != std::io::ErrorKind::NotFound
            {
                return Err(JournalError::Io {
                    context: format!("deleting {}", segment.path.display()),
                    source,
                });
            }
            deleted_bytes += segment.len();
        }
        if let Err(error) = shared.disk.sync_dir(&part.dir) {
            return Err(shared.storage_error(error, "syncing after retention"));
        }
        let deleted = victims.len() as u64;
        tracing::info!(
            topic = %part.topic,
            partition = part.id,
            segments = deleted,
            bytes = deleted_bytes,
            "retention deleted segments"
        );
        metrics::retention(&part.topic, deleted, deleted_bytes);
        report.deleted_segments += deleted;
        report.deleted_bytes += deleted_bytes;
        report.partitions.push(PartitionRetention {
            topic: part.topic.clone(),
            partition: part.id,
            deleted_segments: deleted,
            deleted_bytes,
            start: part.start(),
        });
    }
    Ok(report)
}
