//! [`Partition`]: the state one partition's readers, writer thread and flusher share — the segment
//! list, the durable watermark, the append queue, the durable offset floor — and the read path.
//!
//! **Watermark.** `end` is the offset the next record will get; every record below it is durable
//! (policy `always`) or written (policy `interval`). The writer publishes a segment's new length
//! first and `end` second, and a reader loads `end` first: so a reader that only returns offsets
//! below the `end` it loaded never returns a record past the watermark, and always finds the
//! bytes of the records below it.
//!
//! **Floor.** The file `floor` holds an offset that no record has reached: the writer never
//! assigns an offset at or above the durable floor. Recovery starts the next offset at
//! `max(recovered end, floor)`, so even when durable records are cut at a clean frame boundary
//! (which no checksum can detect) their offsets are not handed out again; the gap is reported.
//! To keep the floor write (three fsyncs) off the ack path, the floor is kept `floor_reserve`
//! offsets ahead of the writer and refreshed by the flusher thread when half of that is used,
//! on every segment roll and at least every few seconds while appends happen. Only if the
//! flusher falls behind does the writer extend it itself before assigning offsets. A clean
//! shutdown writes the exact end, so a clean restart leaves no gap.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::durable::{Disk, StorageError};
use crate::format::{FLOOR_MAGIC, encode_small};
use crate::segment::{ReadError, ReadStop, Segment};
use crate::sync::{lock, read_lock};
use crate::{JournalError, Record, metrics};

/// Name of the floor file in a partition directory.
pub(crate) const FLOOR_FILE: &str = "floor";
/// Name of the consumer offsets directory in a partition directory.
pub(crate) const CONSUMERS_DIR: &str = "consumers";

/// One `append` call waiting for its group commit.
pub(crate) struct AppendRequest {
    pub records: Vec<Bytes>,
    /// Encoded size of all its frames.
    pub frame_bytes: u64,
    pub done: oneshot::Sender<Result<u64, JournalError>>,
}

/// How the writer thread is asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Close {
    /// Commit everything queued, then exit (clean shutdown).
    Drain,
    /// The topic is being deleted: fail everything queued.
    Delete,
    /// Test-only: write whatever is queued without syncing, publishing or acknowledging it, as
    /// a process killed between write(2) and fdatasync would leave it.
    #[cfg(test)]
    Crash,
}

/// Appends waiting for the writer.
#[derive(Default)]
pub(crate) struct Queue {
    pub requests: Vec<AppendRequest>,
    pub close: Option<Close>,
    /// Test-only: the writer leaves requests queued while set.
    #[cfg(test)]
    pub held: bool,
}

/// One partition of one topic.
pub(crate) struct Partition {
    pub topic: String,
    pub id: u32,
    pub dir: PathBuf,
    /// Why the partition is quarantined, if it is. Set at recovery or when a read finds a
    /// published frame damaged; never cleared while the journal is open.
    quarantine: RwLock<Option<String>>,
    quarantined: AtomicBool,
    /// Every segment, oldest first; the last one is the active segment.
    pub segments: RwLock<Vec<Arc<Segment>>>,
    /// The durable watermark (see the module docs).
    pub end: AtomicU64,
    /// Everything below this is fsynced; frames record `offset - synced_end` (see `format.rs`).
    pub synced_end: AtomicU64,
    pub end_tx: watch::Sender<u64>,
    pub queue: Mutex<Queue>,
    pub queue_cv: Condvar,
    /// Serialises floor file writes; holds nothing itself.
    floor_lock: Mutex<()>,
    /// The floor last made durable: no offset at or above it has been assigned.
    pub floor_durable: AtomicU64,
    /// When the floor was last written, in ms since the journal opened.
    pub floor_written_ms: AtomicU64,
    /// The writer asks the flusher for a floor refresh by setting this…
    pub floor_wanted: AtomicBool,
    /// …and says here how far it wants the floor at least (its next offset plus the reserve,
    /// which `end` may not show yet while a commit is in progress).
    pub floor_hint: AtomicU64,
    /// Serialises consumer offset commits of this partition.
    pub consumer_lock: Mutex<()>,
    /// Set (under `floor_lock`) when the topic is deleted, so background work leaves it alone.
    deleted: AtomicBool,
    pub writer: Mutex<Option<JoinHandle<()>>>,
}

impl Partition {
    /// A partition with data (or none yet) that recovery accepted.
    pub(crate) fn healthy(
        topic: &str,
        id: u32,
        dir: PathBuf,
        segments: Vec<Arc<Segment>>,
        next: u64,
        floor: u64,
    ) -> Self {
        Self::new(topic, id, dir, segments, next, floor, None)
    }

    /// A partition that refuses reads and appends.
    pub(crate) fn quarantined(topic: &str, id: u32, dir: PathBuf, reason: String) -> Self {
        Self::new(topic, id, dir, Vec::new(), 0, 0, Some(reason))
    }

    fn new(
        topic: &str,
        id: u32,
        dir: PathBuf,
        segments: Vec<Arc<Segment>>,
        next: u64,
        floor: u64,
        quarantine: Option<String>,
    ) -> Self {
        Self {
            topic: topic.to_string(),
            id,
            dir,
            quarantined: AtomicBool::new(quarantine.is_some()),
            quarantine: RwLock::new(quarantine),
            segments: RwLock::new(segments),
            end: AtomicU64::new(next),
            synced_end: AtomicU64::new(next),
            end_tx: watch::Sender::new(next),
            queue: Mutex::new(Queue::default()),
            queue_cv: Condvar::new(),
            floor_lock: Mutex::new(()),
            floor_durable: AtomicU64::new(floor),
            floor_written_ms: AtomicU64::new(0),
            floor_wanted: AtomicBool::new(false),
            floor_hint: AtomicU64::new(0),
            consumer_lock: Mutex::new(()),
            deleted: AtomicBool::new(false),
            writer: Mutex::new(None),
        }
    }

    /// The reason this partition is quarantined, if it is.
    pub(crate) fn quarantine_reason(&self) -> Option<String> {
        if !self.quarantined.load(Ordering::Acquire) {
            return None;
        }
        read_lock(&self.quarantine).clone()
    }

    /// `Quarantined` if the partition is.
    pub(crate) fn check_healthy(&self) -> Result<(), JournalError> {
        match self.quarantine_reason() {
            None => Ok(()),
            Some(reason) => Err(self.quarantined_error(reason)),
        }
    }

    pub(crate) fn quarantined_error(&self, reason: String) -> JournalError {
        JournalError::Quarantined {
            topic: self.topic.clone(),
            partition: self.id,
            reason,
        }
    }

    /// Quarantines a partition while open: a read found a published frame damaged.
    fn quarantine_now(&self, reason: &str) {
        let mut slot = crate::sync::write_lock(&self.quarantine);
        if slot.is_none() {
            tracing::error!(
                topic = %self.topic,
                partition = self.id,
                reason,
                "durable journal data is damaged; partition quarantined"
            );
            metrics::quarantine(&self.topic);
            *slot = Some(reason.to_string());
        }
        self.quarantined.store(true, Ordering::Release);
    }

    /// The durable watermark.
    pub(crate) fn end(&self) -> u64 {
        self.end.load(Ordering::Acquire)
    }

    /// The first offset still stored.
    pub(crate) fn start(&self) -> u64 {
        let end = self.end();
        read_lock(&self.segments)
            .first()
            .map_or(end, |s| s.base.min(end))
    }

    /// Bytes of every segment file.
    pub(crate) fn size_bytes(&self) -> u64 {
        read_lock(&self.segments).iter().map(|s| s.len()).sum()
    }

    /// Reads durable records from `from` (see [`crate::Journal::read`]).
    pub(crate) fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, JournalError> {
        self.check_healthy()?;
        // Load the watermark before any segment length (see the module docs).
        let end = self.end();
        let mut out = Vec::new();
        if max_records == 0 || from >= end {
            return Ok(out);
        }
        let segments: Vec<Arc<Segment>> = {
            let all = read_lock(&self.segments);
            // The last segment whose base is at or below `from` holds it, or the gap after it.
            let first = all.partition_point(|s| s.base <= from).saturating_sub(1);
            all[first..].to_vec()
        };
        let mut bytes = 0usize;
        for segment in &segments {
            match segment.read(from, end, max_records, max_bytes, &mut bytes, &mut out) {
                Ok(ReadStop::SegmentEnd) => {}
                Ok(ReadStop::Full) => break,
                // Retention deleted it after we listed it: what it held is below the start now.
                Err(ReadError::Io(error)) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(ReadError::Io(source)) => {
                    return Err(JournalError::Io {
                        context: format!("reading {}", segment.path.display()),
                        source,
                    });
                }
                Err(ReadError::Corrupt(reason)) => {
                    self.quarantine_now(&reason);
                    return Err(self.quarantined_error(reason));
                }
            }
        }
        debug_assert!(out.iter().all(|r| r.offset >= from && r.offset < end));
        Ok(out)
    }

    /// Makes the floor durable at `target` or above, and never lowers it: offsets below the
    /// current floor may already be assigned to a write in flight.
    pub(crate) fn raise_floor(
        &self,
        disk: &Disk,
        target: u64,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        let _guard = lock(&self.floor_lock);
        if self.deleted.load(Ordering::Acquire) {
            return Ok(());
        }
        let current = self.floor_durable.load(Ordering::Acquire);
        if target <= current {
            return Ok(());
        }
        disk.write_atomic(&self.dir, FLOOR_FILE, &encode_small(FLOOR_MAGIC, target))?;
        self.floor_durable.store(target, Ordering::Release);
        self.floor_written_ms.store(now_ms, Ordering::Release);
        Ok(())
    }

    /// Writes the exact end as the floor. Only at shutdown, with the writer stopped, when no
    /// offset at or above `end` has been assigned.
    pub(crate) fn write_exact_floor(&self, disk: &Disk) -> Result<(), StorageError> {
        let _guard = lock(&self.floor_lock);
        if self.deleted.load(Ordering::Acquire) || self.quarantine_reason().is_some() {
            return Ok(());
        }
        let end = self.end();
        if self.floor_durable.load(Ordering::Acquire) == end {
            return Ok(());
        }
        disk.write_atomic(&self.dir, FLOOR_FILE, &encode_small(FLOOR_MAGIC, end))?;
        self.floor_durable.store(end, Ordering::Release);
        Ok(())
    }

    /// fdatasyncs the active segment if something was written since the last sync (policy
    /// `interval`; also at clean shutdown).
    pub(crate) fn sync_written(&self, disk: &Disk) -> Result<(), StorageError> {
        // Load the end before choosing the segment: records below it are either in the segment
        // we sync or in older ones, which were synced before the newer segment was created.
        let end = self.end();
        if self.synced_end.load(Ordering::Acquire) >= end {
            return Ok(());
        }
        let Some(active) = read_lock(&self.segments).last().cloned() else {
            return Ok(());
        };
        let file = active.file().map_err(StorageError::Other)?;
        disk.sync_data(file)?;
        self.synced_end.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    /// Marks the partition deleted: background floor writes stop touching its directory.
    pub(crate) fn mark_deleted(&self) {
        let _guard = lock(&self.floor_lock);
        self.deleted.store(true, Ordering::Release);
    }

    /// Asks the writer thread to stop and waits for it.
    pub(crate) fn stop_writer(&self, how: Close) {
        {
            let mut queue = lock(&self.queue);
            if queue.close.is_none() {
                queue.close = Some(how);
            }
        }
        self.queue_cv.notify_all();
        let handle = lock(&self.writer).take();
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!(
                topic = %self.topic,
                partition = self.id,
                "journal writer thread panicked"
            );
        }
    }
}
