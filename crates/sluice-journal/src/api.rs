//! The [`Journal`] trait: the one interface stages use to write and read topics.

use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, FutureExt as _};

use crate::JournalError;

/// One record read back from a partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Its offset within the partition.
    pub offset: u64,
    /// When it was appended, ms since the epoch (used by retention).
    pub timestamp_ms: i64,
    /// The bytes as appended.
    pub value: Bytes,
}

/// What a topic looks like.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Number of partitions, fixed at creation.
    pub partitions: u32,
}

/// A durable partitioned journal. Object safe: stages hold an `Arc<dyn Journal>`.
pub trait Journal: Send + Sync + 'static {
    /// Creates a topic with `partitions` partitions; `Conflict` if it exists with another count,
    /// Ok if it exists with the same count.
    fn create_topic(&self, name: &str, partitions: u32) -> Result<TopicInfo, JournalError>;

    /// Deletes a topic and its data. `NotFound` if absent.
    fn delete_topic(&self, name: &str) -> Result<(), JournalError>;

    /// The topics, sorted by name.
    fn topics(&self) -> Vec<TopicInfo>;

    /// Number of partitions of a topic; `NotFound` if absent.
    fn partitions(&self, topic: &str) -> Result<u32, JournalError>;

    /// Appends `records` to one partition as one atomic-in-order batch and resolves with the
    /// offset of the first record once all of them are durable. The records get consecutive
    /// offsets. An empty batch resolves at once with the current end.
    fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
    ) -> BoxFuture<'_, Result<u64, JournalError>>;

    /// Whether processes other than this one append to the journal's partitions (a journal kept
    /// on shared servers, as JetStream is): a reader must then expect records it did not write,
    /// and a writer that dedupes must read them before it appends ([`Journal::append_shared`]).
    fn shared(&self) -> bool {
        false
    }

    /// [`Journal::append`] to a partition that several writers append to (`raw`, Kinesis
    /// streams): where `append` stops the journal when it finds another writer's records
    /// (two owners of one partition), this one takes its place after them. With `seen =
    /// Some(end)` the append is conditional: it is made only if every record another writer
    /// stored before it lies below offset `end` (the caller has read them all, so a check it
    /// made against them — dedupe — still holds); otherwise nothing is appended and it fails
    /// with [`JournalError::Contended`], naming how far to read before trying again. On a
    /// journal that no other process writes this is `append`.
    fn append_shared(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
        seen: Option<u64>,
    ) -> BoxFuture<'_, Result<u64, JournalError>> {
        let _ = seen;
        self.append(topic, partition, records)
    }

    /// Reads up to `max_records` durable records (and about `max_bytes`, but at least one record)
    /// starting at offset `from`. Returns an empty vector at the durable end. Offsets below the
    /// partition's start (deleted by retention) are skipped: the first record returned then has a
    /// larger offset than `from`.
    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, JournalError>;

    /// The durable watermark: the offset the next record will get; every offset below it is
    /// durable (or was deleted by retention).
    fn end(&self, topic: &str, partition: u32) -> Result<u64, JournalError>;

    /// Brings this handle's view of a partition up to everything stored in it and returns the
    /// end: once it resolves, `end` and `read` cover every record stored so far, including
    /// records another process appended and those of an append that failed without knowing
    /// whether it was stored (a lost ack on a remote journal). A writer that resumes from what
    /// its output holds calls this first. On a journal other processes write too (JetStream),
    /// the next `append` to the partition is then stored only if nothing was stored after the
    /// end returned, and fails `Fenced` otherwise (a lost append that landed late), so what the
    /// writer decided from its read is never written twice. On a journal only this process
    /// writes it is `end`.
    fn sync(&self, topic: &str, partition: u32) -> BoxFuture<'_, Result<u64, JournalError>> {
        futures::future::ready(self.end(topic, partition)).boxed()
    }

    /// The first offset still stored (after retention).
    fn start(&self, topic: &str, partition: u32) -> Result<u64, JournalError>;

    /// Resolves when `end(topic, partition) > offset`, or after `timeout` (whichever is first).
    fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> BoxFuture<'_, ()>;

    /// Durably records that consumer `group` has processed everything below `next` in a
    /// partition.
    fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next: u64,
    ) -> Result<(), JournalError>;

    /// The last committed `next` offset of a consumer group, if it ever committed.
    fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, JournalError>;

    /// Bytes stored in a partition (all segments), for backlog limits and metrics.
    fn size_bytes(&self, topic: &str, partition: u32) -> Result<u64, JournalError>;

    /// True once an fsync or write failed in a way that makes the on-disk state unknown; the
    /// process must stop and recover from disk.
    fn is_failed(&self) -> bool;
}

/// The partition for a routing key: a stable hash (CRC32C) modulo the partition count. Stable
/// across versions and machines, since it decides where a user's events live.
pub fn partition_for(key: &str, partitions: u32) -> u32 {
    if partitions <= 1 {
        return 0;
    }
    crc32c::crc32c(key.as_bytes()) % partitions
}
