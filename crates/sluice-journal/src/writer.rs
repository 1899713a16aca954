//! The group-commit writer: one dedicated thread per partition.
//!
//! **Why a thread per partition.** fdatasync blocks its caller for milliseconds and concerns one
//! file; a partition's offsets must be assigned in the order records land in the file. One
//! thread per partition gives each file a single writer (no locking around offsets, positions or
//! rollback), lets partitions' fsyncs overlap (the device and the file system's journal batch
//! them), and keeps blocking IO off the async runtime. An idle writer is a parked thread with a
//! small stack, and topics are capped at 1024 partitions; a shared pool would save those threads
//! at the cost of cross-partition head-of-line blocking on fsync.
//!
//! **One cycle.** The thread sleeps until appends are queued, takes *all* of them, encodes them
//! into one reused buffer (frames carry offset, timestamp, CRC), writes them with one pwrite,
//! calls fdatasync once, publishes the new segment length and the watermark (`end`), and only
//! then completes every waiting append. Appends arriving meanwhile queue up for the next cycle,
//! so the number of fsyncs tracks the disk's speed, not the number of appends. An append batch
//! never spans two segments: if the next batch does not fit the active segment, what is
//! encoded so far is committed first, then the segment is rolled (the old segment is fsynced,
//! the new one created, its header written, the file and the directory fsynced) before any
//! record in it is acknowledged.
//!
//! **Failures.** Out of space while writing: the file is truncated back to its previous length
//! and those appends fail with `DiskFull`; the journal stays usable. An fsync error, or a write
//! error that cannot be rolled back, poisons the journal (`is_failed`): the fsync is never
//! retried, because after a failed write-back the kernel may report success for pages it dropped.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::durable::StorageError;
use crate::format::{
    FLAG_END_OF_BATCH, MAX_OFFSET, SEGMENT_HEADER_LEN, SegmentHeader, encode_frame,
    segment_file_name,
};
use crate::local::Shared;
use crate::metrics::WriterMetrics;
use crate::partition::{AppendRequest, Close, Partition};
use crate::segment::{IndexBuilder, IndexEntry, Segment};
use crate::sync::{lock, wait, write_lock};
use crate::{FsyncPolicy, JournalError};

/// Refresh the floor at least this often while appends happen (see `partition.rs`).
const FLOOR_REFRESH_EVERY_MS: u64 = 5_000;

/// Where the writer starts, as recovery left the partition.
pub(crate) struct WriterStart {
    /// The active segment, if the partition has any.
    pub active: Option<Arc<Segment>>,
    /// Records in the active segment.
    pub active_records: u64,
    /// Index builder state after the active segment's last record.
    pub index_state: IndexBuilder,
    /// The next offset to assign.
    pub next: u64,
}

/// Why queued appends are refused without being written.
enum Refusal {
    Failed(String),
    Quarantined(String),
    DiskFull(String),
    Io(String),
    Deleted,
}

impl Refusal {
    fn error(&self, part: &Partition) -> JournalError {
        match self {
            Self::Failed(reason) => JournalError::Failed(reason.clone()),
            Self::Quarantined(reason) => part.quarantined_error(reason.clone()),
            Self::DiskFull(reason) => JournalError::DiskFull(reason.clone()),
            Self::Io(reason) => JournalError::Io {
                context: format!("appending to {}/{}", part.topic, part.id),
                source: std::io::Error::other(reason.clone()),
            },
            Self::Deleted => JournalError::TopicNotFound(part.topic.clone()),
        }
    }
}

pub(crate) struct Writer {
    part: Arc<Partition>,
    shared: Arc<Shared>,
    active: Option<Arc<Segment>>,
    /// Bytes written to the active segment (== its published length once committed).
    active_len: u64,
    active_records: u64,
    index_state: IndexBuilder,
    /// The next offset to assign.
    next: u64,
    /// Reused buffers: the encoded frames, the index entries of one commit, the batch taken from
    /// the queue and the appends of one commit.
    buf: Vec<u8>,
    entries: Vec<IndexEntry>,
    batch: Vec<AppendRequest>,
    chunk: Vec<AppendRequest>,
    metrics: WriterMetrics,
}

/// Starts the writer thread of `part`.
pub(crate) fn spawn(
    part: Arc<Partition>,
    shared: Arc<Shared>,
    start: WriterStart,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let name = format!("sj-{}-{}", part.topic, part.id);
    let active_len = start.active.as_ref().map_or(0, |s| s.len());
    let writer = Writer {
        metrics: WriterMetrics::new(&part.topic),
        part,
        shared,
        active: start.active,
        active_len,
        active_records: start.active_records,
        index_state: start.index_state,
        next: start.next,
        buf: Vec::with_capacity(1 << 20),
        entries: Vec::new(),
        batch: Vec::new(),
        chunk: Vec::new(),
    };
    std::thread::Builder::new()
        .name(name)
        .stack_size(256 << 10)
        .spawn(move || writer.run())
}

/// On exit (normal or by panic), refuses everything still queued so no append waits forever.
struct ExitGuard<'a> {
    part: &'a Partition,
    shared: &'a Shared,
}

impl Drop for ExitGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.shared.poison("journal writer thread panicked".into());
        }
        let mut queue = lock(&self.part.queue);
        queue.close.get_or_insert(Close::Drain);
        // Dropping the senders resolves those appends with `Closed`.
        queue.requests.clear();
    }
}

impl Writer {
    fn run(mut self) {
        let part = self.part.clone();
        let shared = self.shared.clone();
        let _guard = ExitGuard {
            part: &part,
            shared: &shared,
        };
        self.startup_floor();
        loop {
            let close = {
                let mut queue = lock(&self.part.queue);
                while queue.close.is_none() && (queue.requests.is_empty() || held(&queue)) {
                    queue = wait(&self.part.queue_cv, queue);
                }
                std::mem::swap(&mut queue.requests, &mut self.batch);
                queue.close
            };
            match close {
                None => self.commit_batch(),
                Some(Close::Drain) => {
                    self.commit_batch();
                    return;
                }
                Some(Close::Delete) => {
                    for request in self.batch.drain(..) {
                        let _ = request.done.send(Err(Refusal::Deleted.error(&self.part)));
                    }
                    return;
                }
                #[cfg(test)]
                Some(Close::Crash) => {
                    self.crash_write();
                    return;
                }
            }
        }
    }

    /// After open the floor may equal the end (a clean shutdown writes it exactly): reserve
    /// offsets before serving, so the first appends do not wait for the flusher.
    fn startup_floor(&mut self) {
        let reserve = self.shared.settings.floor_reserve;
        let floor = self.part.floor_durable.load(Ordering::Acquire);
        if floor.saturating_sub(self.next) >= reserve / 2 {
            self.part
                .floor_written_ms
                .store(self.shared.clock_ms(), Ordering::Release);
            return;
        }
        if let Err(error) = self.part.raise_floor(
            &self.shared.disk,
            self.next + reserve,
            self.shared.clock_ms(),
        ) {
            // Not fatal unless it was an fsync: the writer retries before assigning offsets.
            self.storage_refusal(error, "writing the offset floor");
        }
    }

    /// Commits every queued append: one write and one fdatasync per segment touched.
    fn commit_batch(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        let mut pending = batch.drain(..).peekable();
        while let Some(first) = pending.next() {
            if let Some(refusal) = self.refusal() {
                self.refuse(std::iter::once(first).chain(pending.by_ref()), &refusal);
                break;
            }
            if self.needs_roll(first.frame_bytes)
                && let Err(refusal) = self.roll()
            {
                self.refuse(std::iter::once(first).chain(pending.by_ref()), &refusal);
                break;
            }
            let room = self
                .shared
                .settings
                .segment_bytes
                .saturating_sub(self.active_len);
            let mut used = first.frame_bytes;
            self.chunk.push(first);
            while let Some(request) = pending.next_if(|r| used + r.frame_bytes <= room) {
                used += request.frame_bytes;
                self.chunk.push(request);
            }
            self.commit_chunk();
        }
        drop(pending);
        self.batch = batch;
    }

    fn refusal(&self) -> Option<Refusal> {
        if let Some(reason) = self.shared.failure() {
            return Some(Refusal::Failed(reason));
        }
        self.part.quarantine_reason().map(Refusal::Quarantined)
    }

    fn refuse(&self, requests: impl Iterator<Item = AppendRequest>, refusal: &Refusal) {
        for request in requests {
            if matches!(refusal, Refusal::DiskFull(_)) {
                self.metrics.disk_full.increment(1);
            }
            let _ = request.done.send(Err(refusal.error(&self.part)));
        }
    }

    fn needs_roll(&self, frame_bytes: u64) -> bool {
        match &self.active {
            None => true,
            // Records must be dense within a segment: after a gap, start a new one.
            Some(active) if active.records_end() != self.next => true,
            Some(_) => {
                self.active_records > 0
                    && self.active_len + frame_bytes > self.shared.settings.segment_bytes
            }
        }
    }

    /// Turns a storage error into the refusal for the appends that needed the operation,
    /// poisoning the journal when an fsync failed.
    fn storage_refusal(&self, error: StorageError, doing: &str) -> Refusal {
        match error {
            StorageError::Space(e) => Refusal::DiskFull(format!("{doing}: {e}")),
            StorageError::Sync(e) => {
                let reason = format!(
                    "{doing} in {}/{}: fsync failed: {e}",
                    self.part.topic, self.part.id
                );
                self.shared.poison(reason.clone());
                Refusal::Failed(reason)
            }
            StorageError::Other(e) => Refusal::Io(format!("{doing}: {e}")),
        }
    }

    /// Seals the active segment and starts a new one at `next`. Nothing in the new segment is
    /// acknowledged before its header, the file and the directory entry are durable.
    fn roll(&mut self) -> Result<(), Refusal> {
        let disk = &self.shared.disk;
        let base = self.next;
        let prev_end = self.active.as_ref().map_or(base, |s| s.records_end());
        // A sealed segment must be wholly durable: recovery treats any defect in it as
        // corruption. Under `always` it already is; under `interval` sync it now.
        self.part
            .sync_written(disk)
            .map_err(|e| self.storage_refusal(e, "syncing the segment being sealed"))?;
        let path = self.part.dir.join(segment_file_name(base));
        // Truncate rather than create_new: a file with this name can only be the leftover of a
        // roll that failed before anything in it was acknowledged.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| self.storage_refusal(StorageError::from_write(e), "creating a segment"))?;
        let header = SegmentHeader {
            base_offset: base,
            prev_end,
        }
        .encode();
        if let Err(error) = disk.write_at(&file, &header, 0) {
            drop(file);
            if let Err(remove_error) = std::fs::remove_file(&path) {
                let reason = format!(
                    "cannot remove half-created segment {}: {remove_error} (after {error})",
                    path.display()
                );
                self.shared.poison(reason.clone());
                return Err(Refusal::Failed(reason));
            }
            return Err(
                self.storage_refusal(StorageError::from_write(error), "writing a segment header")
            );
        }
        disk.sync_all(&file)
            .map_err(|e| self.storage_refusal(e, "syncing a new segment"))?;
        disk.sync_dir(&self.part.dir)
            .map_err(|e| self.storage_refusal(e, "syncing the partition directory"))?;
        let segment = Arc::new(Segment::new(
            base,
            path,
            Some(file),
            SEGMENT_HEADER_LEN as u64,
            base,
            i64::MIN,
            Vec::new(),
        ));
        write_lock(&self.part.segments).push(segment.clone());
        self.active = Some(segment);
        self.active_len = SEGMENT_HEADER_LEN as u64;
        self.active_records = 0;
        self.index_state = IndexBuilder::default();
        self.metrics.rolled.increment(1);
        self.request_floor_refresh(true);
        Ok(())
    }

    /// Makes sure offsets up to `needed_end` are below the durable floor.
    fn ensure_floor(&self, needed_end: u64) -> Result<(), Refusal> {
        if needed_end >= MAX_OFFSET {
            return Err(Refusal::Io(format!(
                "partition {}/{} has used up its offset space",
                self.part.topic, self.part.id
            )));
        }
        if needed_end <= self.part.floor_durable.load(Ordering::Acquire) {
            return Ok(());
        }
        // The flusher fell behind (or one append is larger than the reserve): extend the floor
        // here, on the ack path, rather than ever assign an offset above it.
        let target = needed_end + self.shared.settings.floor_reserve;
        self.part
            .raise_floor(&self.shared.disk, target, self.shared.clock_ms())
            .map_err(|e| self.storage_refusal(e, "writing the offset floor"))
    }

    /// Encodes, writes, syncs, publishes and acknowledges the appends in `self.chunk`, which all
    /// go to the active segment.
    fn commit_chunk(&mut self) {
        let records: u64 = self.chunk.iter().map(|r| r.records.len() as u64).sum();
        if let Err(refusal) = self.ensure_floor(self.next + records) {
            let chunk = std::mem::take(&mut self.chunk);
            self.refuse(chunk.into_iter(), &refusal);
            return;
        }
        let Some(active) = self.active.clone() else {
            let chunk = std::mem::take(&mut self.chunk);
            self.refuse(chunk.into_iter(), &Refusal::Io("no active segment".into()));
            return;
        };
        let first_offset = self.next;
        let start_pos = self.active_len;
        let index_before = self.index_state;
        let timestamp_ms = now_ms();
        let end = self.encode_chunk(timestamp_ms);
        let disk = &self.shared.disk;
        let file = match active.file() {
            Ok(file) => file,
            Err(error) => {
                self.index_state = index_before;
                let chunk = std::mem::take(&mut self.chunk);
                self.refuse(chunk.into_iter(), &Refusal::Io(error.to_string()));
                return;
            }
        };
        if let Err(error) = disk.write_at(file, &self.buf, start_pos) {
            self.index_state = index_before;
            let refusal = self.roll_back(file, start_pos, error);
            let chunk = std::mem::take(&mut self.chunk);
            self.refuse(chunk.into_iter(), &refusal);
            return;
        }
        if self.shared.settings.fsync == FsyncPolicy::Always {
            if let Err(error) = disk.sync_data(file) {
                // Not acknowledged, and never retried: the journal is poisoned.
                let refusal = self.storage_refusal(error, "committing appends");
                let chunk = std::mem::take(&mut self.chunk);
                self.refuse(chunk.into_iter(), &refusal);
                return;
            }
            self.part.synced_end.store(end, Ordering::Release);
        }
        // Publish: segment length first, then the watermark (see `partition.rs`).
        self.active_len = start_pos + self.buf.len() as u64;
        self.active_records += records;
        self.next = end;
        active.publish(self.active_len, end, timestamp_ms, &self.entries);
        self.part.end.store(end, Ordering::Release);
        self.part.end_tx.send_replace(end);
        let counters = &self.shared.disk.counters;
        counters.group_commits.fetch_add(1, Ordering::Relaxed);
        counters
            .appends
            .fetch_add(self.chunk.len() as u64, Ordering::Relaxed);
        counters.records.fetch_add(records, Ordering::Relaxed);
        self.metrics.records.increment(records);
        self.metrics
            .bytes
            .increment(self.buf.len() as u64 - records * crate::format::FRAME_HEADER_LEN as u64);
        self.metrics.batch_records.record(records as f64);
        self.metrics.batch_appends.record(self.chunk.len() as f64);
        let mut offset = first_offset;
        for request in self.chunk.drain(..) {
            let count = request.records.len() as u64;
            // I5: never acknowledge past the durable watermark.
            debug_assert!(offset + count <= self.part.end.load(Ordering::Acquire));
            let _ = request.done.send(Ok(offset));
            offset += count;
        }
        self.request_floor_refresh(false);
    }

    /// Encodes `self.chunk` into `self.buf` (and its index entries into `self.entries`),
    /// assigning offsets from `self.next`. Returns the offset after the last record.
    fn encode_chunk(&mut self, timestamp_ms: i64) -> u64 {
        self.buf.clear();
        self.entries.clear();
        let synced = self.part.synced_end.load(Ordering::Acquire);
        let mut offset = self.next;
        let mut pos = self.active_len;
        for request in &self.chunk {
            let last = request.records.len().saturating_sub(1);
            for (i, value) in request.records.iter().enumerate() {
                let flags = if i == last { FLAG_END_OF_BATCH } else { 0 };
                let unsynced = u32::try_from(offset.saturating_sub(synced)).unwrap_or(u32::MAX);
                let before = self.buf.len();
                encode_frame(&mut self.buf, offset, timestamp_ms, unsynced, flags, value);
                let frame_len = (self.buf.len() - before) as u64;
                if let Some(entry) = self.index_state.observe(offset, pos, frame_len) {
                    self.entries.push(entry);
                }
                pos += frame_len;
                offset += 1;
            }
        }
        offset
    }

    /// A segment write failed: truncate the file back so neither readers nor recovery ever see
    /// the partial frames, and classify. Out of space is recoverable; anything else, or a
    /// failed truncate, poisons the journal.
    fn roll_back(&self, file: &std::fs::File, start_pos: u64, error: std::io::Error) -> Refusal {
        let truncated = file.set_len(start_pos);
        match (StorageError::from_write(error), truncated) {
            (StorageError::Space(e), Ok(())) => {
                tracing::warn!(
                    topic = %self.part.topic,
                    partition = self.part.id,
                    error = %e,
                    "disk full; append rolled back"
                );
                Refusal::DiskFull(format!(
                    "writing to {}/{}: {e}",
                    self.part.topic, self.part.id
                ))
            }
            (e, truncated) => {
                let reason = match truncated {
                    Ok(()) => format!("segment write failed: {e}"),
                    Err(t) => format!("segment write failed: {e}; rolling back failed: {t}"),
                };
                self.shared.poison(reason.clone());
                Refusal::Failed(reason)
            }
        }
    }

    /// Asks the flusher to move the floor up when half the reserve is used, after a roll, or
    /// when it was last written a while ago.
    fn request_floor_refresh(&self, rolled: bool) {
        let reserve = self.shared.settings.floor_reserve;
        let floor = self.part.floor_durable.load(Ordering::Acquire);
        let low = floor.saturating_sub(self.next) < reserve / 2;
        let stale = self
            .shared
            .clock_ms()
            .saturating_sub(self.part.floor_written_ms.load(Ordering::Acquire))
            >= FLOOR_REFRESH_EVERY_MS;
        if rolled || low || stale {
            self.part
                .floor_hint
                .fetch_max(self.next + reserve, Ordering::AcqRel);
            if !self.part.floor_wanted.swap(true, Ordering::AcqRel) {
                self.shared.wake_flusher();
            }
        }
    }

    /// Test-only crash: assign offsets to what is queued (extending the floor and rolling a
    /// segment if needed, as a live writer would) and write it, but do not sync, publish or
    /// acknowledge it (the appenders see `Closed`).
    #[cfg(test)]
    fn crash_write(&mut self) {
        let mut batch = std::mem::take(&mut self.batch);
        let total: u64 = batch.iter().map(|r| r.records.len() as u64).sum();
        let Some(first_bytes) = batch.first().map(|r| r.frame_bytes) else {
            return;
        };
        if self.refusal().is_some() || self.ensure_floor(self.next + total).is_err() {
            return;
        }
        if self.needs_roll(first_bytes) && self.roll().is_err() {
            return;
        }
        let Some(active) = self.active.clone() else {
            return;
        };
        self.chunk.append(&mut batch);
        self.encode_chunk(now_ms());
        if let Ok(file) = active.file() {
            let _ = self.shared.disk.write_at(file, &self.buf, self.active_len);
        }
        self.chunk.clear();
    }
}

#[cfg(test)]
fn held(queue: &crate::partition::Queue) -> bool {
    queue.held
}

#[cfg(not(test))]
fn held(_queue: &crate::partition::Queue) -> bool {
    false
}

/// Wall-clock milliseconds since the epoch, the records' timestamps.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
