//! [`LocalJournal`]: the [`Journal`] on local segment files — opening (recovery of every topic),
//! topic creation and deletion, the append/read/watermark API, consumer group offsets, and
//! shutdown.
//!
//! Directory layout (format details in `format.rs` and `docs/formats/journal.md`):
//! ```text
//! <dir>/.lock                          held (flock) while a journal has the directory open
//! <dir>/<topic>/topic.json             {"format_version":1,"partitions":N}
//! <dir>/<topic>/<p>/<base:020>.seg     segments, named by their first offset
//! <dir>/<topic>/<p>/floor              durable next-offset floor
//! <dir>/<topic>/<p>/consumers/<group>  committed offset of a consumer group (name escaped)
//! ```
//! A topic is created in `<dir>/.tmp-<topic>` and renamed into place, and deleted by renaming it
//! to `<dir>/.deleted-<topic>-<n>` first, so a crash never leaves half a topic; leftovers of
//! either are removed on open.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::oneshot;

use crate::config::{MAX_PARTITIONS, Settings};
use crate::durable::{Disk, StorageError};
use crate::flusher::{self, FlusherState};
use crate::format::{
    COMMIT_MAGIC, FLOOR_MAGIC, TOPIC_META_VERSION, TopicMeta, decode_small, encode_small, frame_len,
};
use crate::partition::{AppendRequest, CONSUMERS_DIR, Close, FLOOR_FILE, Partition};
use crate::recovery::{self, RecoveryReport, recover_partition};
use crate::retention::{self, RetentionReport};
use crate::sync::{lock, read_lock, write_lock};
use crate::writer::{self, WriterStart};
use crate::{Journal, JournalConfig, JournalError, Record, TopicInfo, metrics};

/// Name of the topic metadata file.
const TOPIC_META_FILE: &str = "topic.json";
/// Longest topic name.
const MAX_TOPIC_NAME: usize = 128;
/// Longest consumer group name (escaped, it must stay a valid file name).
const MAX_GROUP_NAME: usize = 80;

/// Counters of what the journal did since it was opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JournalStats {
    /// `append` calls made durable.
    pub appends: u64,
    /// Records made durable.
    pub records: u64,
    /// Group commits: one write (and, under `always`, one fdatasync) each.
    pub group_commits: u64,
    /// Every fsync and fdatasync, of segments, directories and small files.
    pub fsyncs: u64,
}

/// One topic: its partitions, fixed at creation.
pub(crate) struct Topic {
    pub partitions: Vec<Arc<Partition>>,
}

/// State shared by the journal handle, the writer threads and the flusher.
pub(crate) struct Shared {
    pub settings: Settings,
    pub disk: Disk,
    pub topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    closed: AtomicBool,
    pub flusher: Mutex<FlusherState>,
    pub flusher_cv: Condvar,
    /// Serialises topic creation and deletion.
    admin: Mutex<()>,
    /// Serialises retention passes.
    pub retention: Mutex<retention::RetentionState>,
    epoch: Instant,
}

impl Shared {
    /// Stops all appends for good: an fsync or unrecoverable write failed.
    pub(crate) fn poison(&self, reason: String) {
        let mut failure = lock(&self.failure);
        if failure.is_none() {
            tracing::error!(
                reason = %reason,
                "journal failed; every append is refused until the process restarts and \
                 recovers from disk"
            );
            metrics::failure();
            *failure = Some(reason);
        }
        self.failed.store(true, Ordering::Release);
    }

    /// Why the journal failed, if it did.
    pub(crate) fn failure(&self) -> Option<String> {
        if !self.failed.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.failure).clone()
    }

    /// Milliseconds since the journal opened (a monotonic clock for refresh intervals).
    pub(crate) fn clock_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(crate) fn wake_flusher(&self) {
        lock(&self.flusher).wake = true;
        self.flusher_cv.notify_one();
    }

    /// Every partition of every topic.
    pub(crate) fn all_partitions(&self) -> Vec<Arc<Partition>> {
        read_lock(&self.topics)
            .values()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }

    /// Maps a storage error for a caller, poisoning the journal if an fsync failed.
    pub(crate) fn storage_error(&self, error: StorageError, context: &str) -> JournalError {
        match error {
            StorageError::Space(e) => JournalError::DiskFull(format!("{context}: {e}")),
            StorageError::Sync(e) => {
                let reason = format!("{context}: fsync failed: {e}");
                self.poison(reason.clone());
                JournalError::Failed(reason)
            }
            StorageError::Other(source) => JournalError::Io {
                context: context.to_string(),
                source,
            },
        }
    }
}

/// The local, file-backed journal. Open it once per directory; share the `Arc`.
///
/// Dropping the last handle shuts it down cleanly (see [`LocalJournal::shutdown`]).
pub struct LocalJournal {
    shared: Arc<Shared>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    report: RecoveryReport,
    /// Holds the directory lock for as long as the journal is open.
    _lock: File,
}

impl std::fmt::Debug for LocalJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalJournal")
            .field("dir", &self.shared.settings.dir)
            .field("topics", &self.topics())
            .field("failed", &self.is_failed())
            .finish()
    }
}

/// The outcome of handing an append to a writer.
enum Submitted {
    Done(u64),
    Pending(oneshot::Receiver<Result<u64, JournalError>>),
}

impl LocalJournal {
    /// Opens (creating if needed) the journal in `config.dir` and recovers every topic found
    /// there: see [`LocalJournal::recovery_report`] for what recovery did. Blocks on disk IO
    /// (call it from `spawn_blocking` in async code). Fails with `Locked` if another journal
    /// has the directory open, and with `Failed` if an fsync fails during recovery.
    pub fn open(config: JournalConfig) -> Result<Arc<Self>, JournalError> {
        Self::open_settings(config.settings()?)
    }

    pub(crate) fn open_settings(settings: Settings) -> Result<Arc<Self>, JournalError> {
        metrics::describe();
        let dir = settings.dir.clone();
        // Durably: a journal directory made on first start and never fsynced into its parent
        // can vanish in a power cut, with every acknowledged record in it.
        crate::durable_fs::create_dir_all_durable(&dir).map_err(|source| JournalError::Io {
            context: format!("creating {}", dir.display()),
            source,
        })?;
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(dir.join(".lock"))
            .map_err(|source| JournalError::Io {
                context: format!("opening {}", dir.join(".lock").display()),
                source,
            })?;
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Err(JournalError::Locked(dir)),
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(JournalError::Io {
                    context: format!("locking {}", dir.display()),
                    source,
                });
            }
        }
        let shared = Arc::new(Shared {
            settings,
            disk: Disk::default(),
            topics: RwLock::new(BTreeMap::new()),
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            flusher: Mutex::new(FlusherState::default()),
            flusher_cv: Condvar::new(),
            admin: Mutex::new(()),
            retention: Mutex::new(retention::RetentionState::default()),
            epoch: Instant::now(),
        });
        let mut report = RecoveryReport::default();
        let mut writers = Vec::new();
        for name in list_topic_dirs(&dir, &mut report)? {
            if let Some(topic) = load_topic(&shared, &name, &mut report, &mut writers)? {
                write_lock(&shared.topics).insert(name, topic);
            }
        }
        let journal = Arc::new(Self {
            shared: shared.clone(),
            flusher: Mutex::new(None),
            report,
            _lock: lock_file,
        });
        // Any error below drops `journal`, which stops what was already started.
        for (part, start) in writers {
            let handle = writer::spawn(part.clone(), shared.clone(), start).map_err(|source| {
                JournalError::Io {
                    context: "starting a journal writer thread".into(),
                    source,
                }
            })?;
            *lock(&part.writer) = Some(handle);
        }
        let handle = flusher::spawn(shared).map_err(|source| JournalError::Io {
            context: "starting the journal flusher thread".into(),
            source,
        })?;
        *lock(&journal.flusher) = Some(handle);
        Ok(journal)
    }

    /// What recovery did when this journal was opened, per partition: truncated torn tails,
    /// removed half-created segments, quarantines with their reason, offset gaps from the floor.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Counters since open; `group_commits` far below `appends` shows group commit at work.
    pub fn stats(&self) -> JournalStats {
        let c = &self.shared.disk.counters;
        JournalStats {
            appends: c.appends.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
            group_commits: c.group_commits.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
        }
    }

    /// The directory this journal lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.settings.dir
    }

    /// Deletes sealed segments past `retention_age` or `retention_bytes` that every registered
    /// consumer has read, or past `max_unread_bytes` even unread (see `retention.rs`).
    /// Blocks on disk IO: call it from `spawn_blocking`.
    pub fn enforce_retention(&self) -> Result<RetentionReport, JournalError> {
        self.enforce_retention_at(writer::now_ms())
    }

    /// [`LocalJournal::enforce_retention`] as if the wall clock read `now_ms` (ms since the
    /// epoch), for tests and tools.
    pub fn enforce_retention_at(&self, now_ms: i64) -> Result<RetentionReport, JournalError> {
        retention::enforce(&self.shared, now_ms)
    }

    /// Registers consumer `group` on every partition of `topic` that it has no position in yet,
    /// at the partition's start: from then on retention keeps whatever it has not read (see
    /// `retention.rs`). Quarantined partitions are skipped. Returns how many partitions got a
    /// new registration.
    pub fn register_consumer(&self, group: &str, topic: &str) -> Result<u32, JournalError> {
        let mut added = 0;
        for p in 0..self.partitions(topic)? {
            let part = self.partition(topic, p)?;
            if part.quarantine_reason().is_some() || self.committed(group, topic, p)?.is_some() {
                continue;
            }
            self.commit(group, topic, p, part.start())?;
            added += 1;
        }
        Ok(added)
    }

    /// Removes consumer `group`'s position from every partition of `topic`, so retention no
    /// longer waits for it. Returns how many positions were removed.
    pub fn unregister_consumer(&self, group: &str, topic: &str) -> Result<u32, JournalError> {
        let file = escape_group(group)?;
        let mut removed = 0;
        for p in 0..self.partitions(topic)? {
            let part = self.partition(topic, p)?;
            let _guard = lock(&part.consumer_lock);
            let dir = part.dir.join(CONSUMERS_DIR);
            match std::fs::remove_file(dir.join(&file)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(JournalError::Io {
                        context: format!("removing consumer {group} of {topic}/{p}"),
                        source,
                    });
                }
            }
            self.shared
                .disk
                .sync_dir(&dir)
                .map_err(|e| self.shared.storage_error(e, "removing a consumer"))?;
        }
        Ok(removed)
    }

    /// The consumers registered on one partition and their committed next offsets, slowest
    /// first.
    pub fn consumers(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Vec<(String, u64)>, JournalError> {
        let part = self.partition(topic, partition)?;
        Ok(retention::consumer_positions(&part.dir)
            .into_iter()
            .map(|c| (c.name, c.next))
            .collect())
    }

    /// Clean shutdown: commits every queued append, stops the threads, syncs what the interval
    /// policy left unsynced and writes each partition's exact end as its floor, so the next open
    /// continues without an offset gap. Later appends fail with `Closed`. Idempotent; dropping
    /// the journal does the same.
    pub fn shutdown(&self) {
        self.stop(Close::Drain);
    }

    fn stop(&self, how: Close) {
        // Under the admin lock, no topic (and no writer) can appear after the snapshot below.
        let _admin = lock(&self.shared.admin);
        if self.shared.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let partitions = self.shared.all_partitions();
        for part in &partitions {
            part.stop_writer(how);
        }
        lock(&self.shared.flusher).stop = true;
        self.shared.flusher_cv.notify_all();
        if let Some(handle) = lock(&self.flusher).take()
            && handle.join().is_err()
        {
            tracing::error!("journal flusher thread panicked");
        }
        if how != Close::Drain || self.shared.failure().is_some() {
            return;
        }
        for part in &partitions {
            if part.quarantine_reason().is_some() {
                continue;
            }
            let result = part
                .sync_written(&self.shared.disk)
                .and_then(|()| part.write_exact_floor(&self.shared.disk));
            if let Err(error) = result {
                // The floor on disk stays ahead of the end, which is safe (a gap on restart).
                let _ = self
                    .shared
                    .storage_error(error, &format!("closing {}/{}", part.topic, part.id));
            }
        }
    }

    pub(crate) fn partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Partition>, JournalError> {
        let topics = read_lock(&self.shared.topics);
        let t = topics
            .get(topic)
            .ok_or_else(|| JournalError::TopicNotFound(topic.to_string()))?;
        t.partitions
            .get(partition as usize)
            .cloned()
            .ok_or_else(|| JournalError::PartitionNotFound {
                topic: topic.to_string(),
                partition,
            })
    }

    fn healthy_partition(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<Arc<Partition>, JournalError> {
        let part = self.partition(topic, partition)?;
        part.check_healthy()?;
        Ok(part)
    }

    /// Queues an append for the partition's writer, or refuses it at once.
    fn submit(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
    ) -> Result<Submitted, JournalError> {
        if let Some(reason) = self.shared.failure() {
            return Err(JournalError::Failed(reason));
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(JournalError::Closed);
        }
        let part = self.healthy_partition(topic, partition)?;
        if records.is_empty() {
            return Ok(Submitted::Done(part.end()));
        }
        let limit = self.shared.settings.max_record_bytes;
        let mut frame_bytes = 0;
        for record in &records {
            if record.len() > limit {
                return Err(JournalError::RecordTooLarge {
                    size: record.len(),
                    limit,
                });
            }
            frame_bytes += frame_len(record.len());
        }
        let (done, wait) = oneshot::channel();
        {
            let mut queue = lock(&part.queue);
            match queue.close {
                None => queue.requests.push(AppendRequest {
                    records,
                    frame_bytes,
                    done,
                }),
                Some(Close::Delete) => return Err(JournalError::TopicNotFound(topic.into())),
                Some(_) => return Err(JournalError::Closed),
            }
        }
        part.queue_cv.notify_one();
        Ok(Submitted::Pending(wait))
    }

    fn create_topic_on_disk(&self, name: &str, partitions: u32) -> Result<(), StorageError> {
        let disk = &self.shared.disk;
        let dir = &self.shared.settings.dir;
        let tmp = dir.join(format!(".tmp-{name}"));
        match std::fs::remove_dir_all(&tmp) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                return Err(StorageError::Other(error));
            }
            _ => {}
        }
        std::fs::create_dir(&tmp).map_err(StorageError::from_write)?;
        // A new partition reserves its first offsets right away, so its writer starts without
        // a floor write.
        let floor = encode_small(FLOOR_MAGIC, self.shared.settings.floor_reserve);
        for p in 0..partitions {
            let pdir = tmp.join(p.to_string());
            std::fs::create_dir(&pdir).map_err(StorageError::from_write)?;
            std::fs::create_dir(pdir.join(CONSUMERS_DIR)).map_err(StorageError::from_write)?;
            disk.write_new(&pdir.join(FLOOR_FILE), &floor)?;
            disk.sync_dir(&pdir)?;
        }
        let meta = TopicMeta {
            format_version: TOPIC_META_VERSION,
            partitions,
        };
        let json = serde_json::to_vec(&meta).map_err(|e| StorageError::Other(e.into()))?;
        disk.write_atomic(&tmp, TOPIC_META_FILE, &json)?;
        std::fs::rename(&tmp, dir.join(name)).map_err(StorageError::from_write)?;
        disk.sync_dir(dir)
    }

    /// Test hook: keeps a partition's writer from taking queued appends while `held`.
    #[cfg(test)]
    pub(crate) fn hold(&self, topic: &str, partition: u32, held: bool) {
        if let Ok(part) = self.partition(topic, partition) {
            lock(&part.queue).held = held;
            part.queue_cv.notify_all();
        }
    }

    /// Test hook: stops like a killed process would — queued appends are written but neither
    /// synced, published nor acknowledged, and no exact floor is written. Returns, per
    /// partition, the active segment and the length below which everything is durable.
    #[cfg(test)]
    pub(crate) fn crash(&self) -> Vec<CrashedPartition> {
        self.stop(Close::Crash);
        let mut out = Vec::new();
        for part in self.shared.all_partitions() {
            if let Some(active) = read_lock(&part.segments).last() {
                out.push(CrashedPartition {
                    partition: part.id,
                    active_segment: active.path.clone(),
                    durable_len: active.len(),
                });
            }
        }
        out
    }

    /// Test hook: the raw counters.
    #[cfg(test)]
    pub(crate) fn counters(&self) -> &crate::durable::Counters {
        &self.shared.disk.counters
    }

    /// Test hook: the fault injector.
    #[cfg(test)]
    pub(crate) fn faults(&self) -> &crate::durable::Faults {
        &self.shared.disk.faults
    }
}

/// What [`LocalJournal::crash`] left behind in one partition.
#[cfg(test)]
#[derive(Clone, Debug)]
pub(crate) struct CrashedPartition {
    pub partition: u32,
    pub active_segment: std::path::PathBuf,
    pub durable_len: u64,
}

impl Drop for LocalJournal {
    fn drop(&mut self) {
        self.stop(Close::Drain);
    }
}

impl Journal for LocalJournal {
    fn create_topic(&self, name: &str, partitions: u32) -> Result<TopicInfo, JournalError> {
        validate_topic_name(name)?;
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(JournalError::Invalid(format!(
                "a topic has between 1 and {MAX_PARTITIONS} partitions, not {partitions}"
            )));
        }
        let info = TopicInfo {
            name: name.to_string(),
            partitions,
        };
        let _admin = lock(&self.shared.admin);
        if let Some(existing) = read_lock(&self.shared.topics).get(name) {
            let existing = existing.partitions.len() as u32;
            return if existing == partitions {
                Ok(info)
            } else {
                Err(JournalError::TopicExists {
                    topic: name.to_string(),
                    existing,
                })
            };
        }
        if let Some(reason) = self.shared.failure() {
            return Err(JournalError::Failed(reason));
        }
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(JournalError::Closed);
        }
        self.create_topic_on_disk(name, partitions).map_err(|e| {
            self.shared
                .storage_error(e, &format!("creating topic {name}"))
        })?;
        let reserve = self.shared.settings.floor_reserve;
        let parts: Vec<Arc<Partition>> = (0..partitions)
            .map(|p| {
                let dir = self.shared.settings.dir.join(name).join(p.to_string());
                Arc::new(Partition::healthy(name, p, dir, Vec::new(), 0, reserve))
            })
            .collect();
        for part in &parts {
            let start = WriterStart {
                active: None,
                active_records: 0,
                index_state: Default::default(),
                next: 0,
            };
            match writer::spawn(part.clone(), self.shared.clone(), start) {
                Ok(handle) => *lock(&part.writer) = Some(handle),
                Err(source) => {
                    for started in &parts {
                        started.stop_writer(Close::Drain);
                    }
                    return Err(JournalError::Io {
                        context: "starting a journal writer thread".into(),
                        source,
                    });
                }
            }
        }
        write_lock(&self.shared.topics)
            .insert(name.to_string(), Arc::new(Topic { partitions: parts }));
        tracing::info!(topic = name, partitions, "created topic");
        Ok(info)
    }

    fn delete_topic(&self, name: &str) -> Result<(), JournalError> {
        let _admin = lock(&self.shared.admin);
        let topic = write_lock(&self.shared.topics)
            .remove(name)
            .ok_or_else(|| JournalError::TopicNotFound(name.to_string()))?;
        for part in &topic.partitions {
            part.stop_writer(Close::Delete);
            part.mark_deleted();
        }
        let dir = &self.shared.settings.dir;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let doomed = dir.join(format!(".deleted-{name}-{nanos}"));
        std::fs::rename(dir.join(name), &doomed).map_err(|source| JournalError::Io {
            context: format!("deleting topic {name}"),
            source,
        })?;
        self.shared.disk.sync_dir(dir).map_err(|e| {
            self.shared
                .storage_error(e, &format!("deleting topic {name}"))
        })?;
        if let Err(error) = std::fs::remove_dir_all(&doomed) {
            // Renamed away, so it is gone from the journal; the next open removes the rest.
            tracing::warn!(dir = %doomed.display(), error = %error, "cannot remove a deleted topic's files");
        }
        tracing::info!(topic = name, "deleted topic");
        Ok(())
    }

    fn topics(&self) -> Vec<TopicInfo> {
        read_lock(&self.shared.topics)
            .iter()
            .map(|(name, t)| TopicInfo {
                name: name.clone(),
                partitions: t.partitions.len() as u32,
            })
            .collect()
    }

    fn partitions(&self, topic: &str) -> Result<u32, JournalError> {
        read_lock(&self.shared.topics)
            .get(topic)
            .map(|t| t.partitions.len() as u32)
            .ok_or_else(|| JournalError::TopicNotFound(topic.to_string()))
    }

    /// The records are queued for the partition's writer when `append` is called, not when the
    /// future is first polled; dropping the future does not withdraw them (the outcome is then
    /// unknown, as with a lost acknowledgement).
    fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
    ) -> BoxFuture<'_, Result<u64, JournalError>> {
        let submitted = self.submit(topic, partition, records);
        Box::pin(async move {
            match submitted? {
                Submitted::Done(offset) => Ok(offset),
                // The writer stopped (shutdown or crash) before committing: outcome unknown.
                Submitted::Pending(wait) => wait.await.unwrap_or(Err(JournalError::Closed)),
            }
        })
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, JournalError> {
        self.partition(topic, partition)?
            .read(from, max_records, max_bytes)
    }

    fn end(&self, topic: &str, partition: u32) -> Result<u64, JournalError> {
        Ok(self.healthy_partition(topic, partition)?.end())
    }

    fn start(&self, topic: &str, partition: u32) -> Result<u64, JournalError> {
        Ok(self.healthy_partition(topic, partition)?.start())
    }

    fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> BoxFuture<'_, ()> {
        // An unknown or quarantined partition resolves at once: the caller's next read reports
        // why, instead of the caller sleeping on something that cannot advance.
        let watch = self
            .healthy_partition(topic, partition)
            .ok()
            .map(|p| p.end_tx.subscribe());
        Box::pin(async move {
            if let Some(mut rx) = watch {
                let _ = tokio::time::timeout(timeout, rx.wait_for(|&end| end > offset)).await;
            }
        })
    }

    fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next: u64,
    ) -> Result<(), JournalError> {
        let file = escape_group(group)?;
        let part = self.partition(topic, partition)?;
        if let Some(reason) = self.shared.failure() {
            return Err(JournalError::Failed(reason));
        }
        if part.quarantine_reason().is_none() && next > part.end() {
            return Err(JournalError::Invalid(format!(
                "cannot commit offset {next} for group {group}: {topic}/{partition} ends at {}",
                part.end()
            )));
        }
        let _guard = lock(&part.consumer_lock);
        let dir = part.dir.join(CONSUMERS_DIR);
        if !dir.is_dir() {
            self.shared
                .disk
                .create_dir_all(&dir)
                .map_err(|e| self.shared.storage_error(e, "committing a consumer offset"))?;
        }
        self.shared
            .disk
            .write_atomic(&dir, &file, &encode_small(COMMIT_MAGIC, next))
            .map_err(|e| {
                self.shared.storage_error(
                    e,
                    &format!("committing offset of group {group} on {topic}/{partition}"),
                )
            })
    }

    fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, JournalError> {
        let file = escape_group(group)?;
        let part = self.partition(topic, partition)?;
        let path = part.dir.join(CONSUMERS_DIR).join(file);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(JournalError::Io {
                    context: format!("reading {}", path.display()),
                    source,
                });
            }
        };
        decode_small(COMMIT_MAGIC, &bytes)
            .map(Some)
            .map_err(|why| JournalError::Io {
                context: format!("reading {}", path.display()),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string()),
            })
    }

    fn size_bytes(&self, topic: &str, partition: u32) -> Result<u64, JournalError> {
        Ok(self.healthy_partition(topic, partition)?.size_bytes())
    }

    fn is_failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }
}

/// Whether `name` can name a topic: 1 to 128 of `[A-Za-z0-9._-]`, not starting with a dot (dot
/// names are the journal's own: `.lock`, `.tmp-*`, `.deleted-*`). Kinesis stream names fit.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// [`is_valid_topic_name`], as the error `create_topic` answers.
fn validate_topic_name(name: &str) -> Result<(), JournalError> {
    if is_valid_topic_name(name) {
        Ok(())
    } else {
        Err(JournalError::Invalid(format!(
            "topic name {name:?} must be 1 to {MAX_TOPIC_NAME} of A-Z a-z 0-9 . _ - and not \
             start with a dot"
        )))
    }
}

/// A consumer group's file name: bytes outside `[A-Za-z0-9_-]` become `%XX`, so any group name
/// (including `.`, `..` and `/`) maps to one safe file name.
fn escape_group(group: &str) -> Result<String, JournalError> {
    if group.is_empty() || group.len() > MAX_GROUP_NAME {
        return Err(JournalError::Invalid(format!(
            "consumer group names are 1 to {MAX_GROUP_NAME} bytes, not {}",
            group.len()
        )));
    }
    let mut name = String::with_capacity(group.len());
    for b in group.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            name.push(char::from(b));
        } else {
            let _ = write!(name, "%{b:02X}");
        }
    }
    Ok(name)
}

/// The group name back from its file name (for reports; undecodable input is kept as is).
pub(crate) fn unescape_group(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| name.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The topic directories under `dir`, sorted; removes leftovers of interrupted creations and
/// deletions on the way.
fn list_topic_dirs(dir: &Path, report: &mut RecoveryReport) -> Result<Vec<String>, JournalError> {
    let io = |source| JournalError::Io {
        context: format!("listing {}", dir.display()),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-") || name.starts_with(".deleted-") {
            if let Err(error) = std::fs::remove_dir_all(entry.path()) {
                report
                    .warnings
                    .push(format!("cannot remove leftover {name}: {error}"));
            }
            continue;
        }
        if name == ".lock" {
            continue;
        }
        if !entry.path().is_dir() || validate_topic_name(&name).is_err() {
            report
                .warnings
                .push(format!("ignored {name}: not a topic directory"));
            continue;
        }
        names.push(name);
    }
    names.sort();
    Ok(names)
}

/// Recovers one topic's partitions; `None` if the directory holds no topic at all.
fn load_topic(
    shared: &Shared,
    name: &str,
    report: &mut RecoveryReport,
    writers: &mut Vec<(Arc<Partition>, WriterStart)>,
) -> Result<Option<Arc<Topic>>, JournalError> {
    let tdir = shared.settings.dir.join(name);
    let numbered = partition_dirs(&tdir);
    let meta = std::fs::read(tdir.join(TOPIC_META_FILE))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<TopicMeta>(&b).map_err(|e| e.to_string()))
        .and_then(|m| {
            if m.format_version != TOPIC_META_VERSION {
                Err(format!("unsupported format_version {}", m.format_version))
            } else if m.partitions == 0 || m.partitions > MAX_PARTITIONS {
                Err(format!("bad partition count {}", m.partitions))
            } else {
                Ok(m)
            }
        });
    let (count, broken) = match meta {
        Ok(meta) => (meta.partitions, None),
        Err(why) => match numbered.iter().max() {
            // Keep the topic visible (so nothing recreates it over the data), but quarantined.
            Some(&max) => (max + 1, Some(format!("topic metadata unreadable: {why}"))),
            None => {
                report.warnings.push(format!(
                    "ignored {name}: no topic metadata ({why}) and no partitions"
                ));
                return Ok(None);
            }
        },
    };
    for extra in numbered.iter().filter(|&&p| p >= count) {
        report.warnings.push(format!(
            "topic {name} has {count} partitions; ignored directory {extra}"
        ));
    }
    let mut partitions = Vec::with_capacity(count as usize);
    for p in 0..count {
        let pdir = tdir.join(p.to_string());
        let blank = recovery::PartitionRecovery {
            topic: name.to_string(),
            partition: p,
            ..Default::default()
        };
        let recovered = if let Some(reason) = &broken {
            recovery::quarantine(name, p, pdir, reason.clone(), blank)
        } else if !pdir.is_dir() {
            recovery::quarantine(
                name,
                p,
                pdir,
                "partition directory is missing".into(),
                blank,
            )
        } else {
            recover_partition(&shared.disk, name, p, pdir)?
        };
        let part = Arc::new(recovered.partition);
        if let Some(start) = recovered.writer {
            writers.push((part.clone(), start));
        }
        report.partitions.push(recovered.report);
        partitions.push(part);
    }
    Ok(Some(Arc::new(Topic { partitions })))
}

/// The numbered subdirectories of a topic directory.
fn partition_dirs(tdir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(tdir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let canonical = name.parse::<u32>().ok().filter(|p| p.to_string() == name)?;
            Some(canonical).filter(|&p| p < MAX_PARTITIONS)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_escape_to_safe_file_names_and_back() {
        for group in ["lake", "a/b", "..", ".", "x%y", "ünï", "with space"] {
            let file = escape_group(group).unwrap();
            assert!(
                file.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'%'),
                "{file}"
            );
            assert_eq!(unescape_group(&file), group);
        }
        for bad in [String::new(), "g".repeat(81)] {
            assert!(
                matches!(escape_group(&bad), Err(JournalError::Invalid(m)) if m.contains("consumer group names are 1 to")),
                "{bad:?}"
            );
        }
        assert!(escape_group(&"/".repeat(80)).unwrap().len() <= 240);
    }

    #[test]
    fn topic_names_are_checked() {
        for ok in ["raw", "good", "my-stream.v2", "A_1"] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".hidden", "a/b", "..", "sp ace", &"t".repeat(129)] {
            assert!(
                matches!(validate_topic_name(bad), Err(JournalError::Invalid(_))),
                "{bad}"
            );
        }
    }
}
