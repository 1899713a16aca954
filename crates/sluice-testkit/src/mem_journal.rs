//! An in-memory [`sluice_journal::Journal`] for unit tests of stages.
//!
//! Semantics follow the trait's contract with the simplest possible storage: every topic is a
//! `Vec` of partitions, every partition a `Vec<Record>` in offset order. An append is "durable"
//! as soon as it is in the vector. The durable end is one past the last record, unless
//! [`MemJournal::crash_gap`] moved it further, as a `LocalJournal` restarting at its floor does
//! after a crash: offsets are dense except across such a gap. Waiters
//! (`wait_for`) watch a per-partition `tokio::sync::watch` channel carrying the end, which cannot
//! lose a wake-up the way a bare `Notify` can. Nothing here touches the disk; `is_failed` is
//! false unless a test sets it with [`MemJournal::set_failed`].

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::future::BoxFuture;
use sluice_journal::{Journal, JournalError, Record, TopicInfo};
use tokio::sync::watch;

/// One partition: its records in offset order and the channel that publishes its end (the
/// offset the next record gets).
struct Partition {
    records: Vec<Record>,
    end: watch::Sender<u64>,
    /// Set by [`MemJournal::quarantine`]: every access answers `Quarantined`, as a
    /// `LocalJournal` partition with corrupt durable data does.
    quarantined: bool,
    /// Every record another writer appended lies below this offset.
    foreign_end: u64,
    /// Records another writer appends just before the next shared append here.
    foreign_next: Vec<Vec<Bytes>>,
}

impl Partition {
    fn new() -> Self {
        Self {
            records: Vec::new(),
            end: watch::Sender::new(0),
            quarantined: false,
            foreign_end: 0,
            foreign_next: Vec::new(),
        }
    }

    fn end(&self) -> u64 {
        *self.end.borrow()
    }

    /// The index of the first record at or past `offset`.
    fn first_at(&self, offset: u64) -> usize {
        self.records.partition_point(|r| r.offset < offset)
    }
}

#[derive(Default)]
struct State {
    topics: BTreeMap<String, Vec<Partition>>,
    /// (group, topic, partition) -> next offset.
    commits: HashMap<(String, String, u32), u64>,
    /// Per topic, appends ([`Journal::append`]) still to pass, then to fail, as set by
    /// [`MemJournal::fail_appends`].
    failing_appends: HashMap<String, (usize, usize)>,
}

/// An in-memory journal. Cheap to create; share it as `Arc<MemJournal>` or `Arc<dyn Journal>`.
#[derive(Default)]
pub struct MemJournal {
    state: Mutex<State>,
    failed: AtomicBool,
    /// Stands for a journal other processes append to ([`Journal::shared`]).
    shared: AtomicBool,
}

impl std::fmt::Debug for MemJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemJournal")
            .field("topics", &self.topics())
            .finish()
    }
}

impl MemJournal {
    /// An empty journal with no topics.
    pub fn new() -> Self {
        Self::default()
    }

    /// A journal with the given `(topic, partitions)` already created, behind an `Arc`.
    pub fn with_topics(topics: &[(&str, u32)]) -> Arc<Self> {
        let journal = Self::new();
        for (name, partitions) in topics {
            // A fresh journal has no topics, so creation cannot conflict.
            let _ = journal.create_topic(name, *partitions);
        }
        Arc::new(journal)
    }

    /// Makes [`Journal::is_failed`] answer `failed` (and appends fail while it is set).
    pub fn set_failed(&self, failed: bool) {
        self.failed.store(failed, Ordering::SeqCst);
    }

    /// Makes the journal one that other writers append to ([`Journal::shared`]): conditional
    /// appends ([`Journal::append_shared`]) then answer `Contended` while another writer's
    /// records lie past what the caller had read.
    pub fn set_shared(&self, shared: bool) {
        self.shared.store(shared, Ordering::SeqCst);
    }

    /// Appends as another writer (another node) would.
    pub fn append_foreign(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
    ) -> Result<u64, JournalError> {
        let first = self.append_now(topic, partition, records)?;
        let mut state = self.lock();
        let part = partition_mut(&mut state, topic, partition)?;
        part.foreign_end = part.end();
        Ok(first)
    }

    /// Queues `records` for another writer to append just before the next shared append to
    /// this partition: a node that took the same events while this one's request was in flight.
    pub fn append_foreign_before_next(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
    ) -> Result<(), JournalError> {
        let mut state = self.lock();
        partition_mut(&mut state, topic, partition)?
            .foreign_next
            .push(records);
        Ok(())
    }

    /// Quarantines a partition: from now on its reads, appends and positions fail with
    /// `JournalError::Quarantined`.
    pub fn quarantine(&self, topic: &str, partition: u32) {
        let mut state = self.lock();
        if let Some(p) = state
            .topics
            .get_mut(topic)
            .and_then(|ps| ps.get_mut(partition as usize))
        {
            p.quarantined = true;
        }
    }

    /// Every record of a partition (an empty vector for an unknown partition).
    pub fn records(&self, topic: &str, partition: u32) -> Vec<Record> {
        let state = self.lock();
        state
            .topics
            .get(topic)
            .and_then(|parts| parts.get(partition as usize))
            .map(|p| p.records.clone())
            .unwrap_or_default()
    }

    /// Appends without awaiting (the in-memory append is immediate). Returns the first offset.
    pub fn append_now(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
    ) -> Result<u64, JournalError> {
        if self.is_failed() {
            return Err(JournalError::Failed("memory journal set to failed".into()));
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let mut state = self.lock();
        let part = partition_mut(&mut state, topic, partition)?;
        let first = part.end();
        let count = records.len() as u64;
        for (i, value) in records.into_iter().enumerate() {
            part.records.push(Record {
                offset: first + i as u64,
                timestamp_ms: now_ms,
                value,
            });
        }
        part.end.send_replace(first + count);
        Ok(first)
    }

    /// Lets the next `pass` appends ([`Journal::append`]) to `topic` through, then fails the
    /// `fail` after them with [`JournalError::Unavailable`], storing nothing: a remote journal
    /// that could not be reached for a moment.
    pub fn fail_appends(&self, topic: &str, pass: usize, fail: usize) {
        self.lock()
            .failing_appends
            .insert(topic.to_string(), (pass, fail));
    }

    /// Whether an append to `topic` is one [`MemJournal::fail_appends`] fails.
    fn injected_failure(&self, topic: &str) -> bool {
        let mut state = self.lock();
        let Some((pass, fail)) = state.failing_appends.get_mut(topic) else {
            return false;
        };
        if *pass > 0 {
            *pass -= 1;
            return false;
        }
        let failing = *fail > 0;
        *fail = fail.saturating_sub(1);
        failing
    }

    /// Leaves a gap of `offsets` never-issued offsets at the end of a partition, as an unclean
    /// stop does (the next offset jumps to the durable floor): the end moves on, and reads
    /// from inside the gap find nothing until records are appended after it.
    pub fn crash_gap(&self, topic: &str, partition: u32, offsets: u64) -> Result<(), JournalError> {
        let mut state = self.lock();
        let part = partition_mut(&mut state, topic, partition)?;
        let end = part.end() + offsets;
        part.end.send_replace(end);
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the vectors half-updated in a way that
        // matters to tests, so a poisoned lock is simply taken over.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn partition_ref<'a>(
    state: &'a State,
    topic: &str,
    partition: u32,
) -> Result<&'a Partition, JournalError> {
    let parts = state
        .topics
        .get(topic)
        .ok_or_else(|| JournalError::TopicNotFound(topic.to_string()))?;
    let part = parts
        .get(partition as usize)
        .ok_or_else(|| JournalError::PartitionNotFound {
            topic: topic.to_string(),
            partition,
        })?;
    if part.quarantined {
        return Err(JournalError::Quarantined {
            topic: topic.to_string(),
            partition,
            reason: "quarantined by the test".into(),
        });
    }
    Ok(part)
}

fn partition_mut<'a>(
    state: &'a mut State,
    topic: &str,
    partition: u32,
) -> Result<&'a mut Partition, JournalError> {
    // One place checks existence and quarantine; this only re-borrows mutably.
    partition_ref(state, topic, partition)?;
    state
        .topics
        .get_mut(topic)
        .and_then(|parts| parts.get_mut(partition as usize))
        .ok_or_else(|| JournalError::PartitionNotFound {
            topic: topic.to_string(),
            partition,
        })
}

impl Journal for MemJournal {
    fn create_topic(&self, name: &str, partitions: u32) -> Result<TopicInfo, JournalError> {
        let mut state = self.lock();
        if let Some(existing) = state.topics.get(name) {
            let existing = existing.len() as u32;
            if existing != partitions {
                return Err(JournalError::TopicExists {
                    topic: name.to_string(),
                    existing,
                });
            }
        } else {
            let parts = (0..partitions).map(|_| Partition::new()).collect();
            state.topics.insert(name.to_string(), parts);
        }
        Ok(TopicInfo {
            name: name.to_string(),
            partitions,
        })
    }

    fn delete_topic(&self, name: &str) -> Result<(), JournalError> {
        let mut state = self.lock();
        state
            .topics
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| JournalError::TopicNotFound(name.to_string()))
    }

    fn topics(&self) -> Vec<TopicInfo> {
        self.lock()
            .topics
            .iter()
            .map(|(name, parts)| TopicInfo {
                name: name.clone(),
                partitions: parts.len() as u32,
            })
            .collect()
    }

    fn partitions(&self, topic: &str) -> Result<u32, JournalError> {
        self.lock()
            .topics
            .get(topic)
            .map(|parts| parts.len() as u32)
            .ok_or_else(|| JournalError::TopicNotFound(topic.to_string()))
    }

    fn append(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
    ) -> BoxFuture<'_, Result<u64, JournalError>> {
        let result = match self.injected_failure(topic) {
            true => Err(JournalError::Unavailable(format!(
                "an append to {topic} failed by MemJournal::fail_appends"
            ))),
            false => self.append_now(topic, partition, records),
        };
        futures::future::ready(result).boxed()
    }

    fn shared(&self) -> bool {
        self.shared.load(Ordering::SeqCst)
    }

    fn append_shared(
        &self,
        topic: &str,
        partition: u32,
        records: Vec<Bytes>,
        seen: Option<u64>,
    ) -> BoxFuture<'_, Result<u64, JournalError>> {
        let result = (|| {
            let queued = {
                let mut state = self.lock();
                std::mem::take(&mut partition_mut(&mut state, topic, partition)?.foreign_next)
            };
            for foreign in queued {
                self.append_foreign(topic, partition, foreign)?;
            }
            let foreign_end = {
                let state = self.lock();
                partition_ref(&state, topic, partition)?.foreign_end
            };
            if seen.is_some_and(|seen| seen < foreign_end) {
                return Err(JournalError::Contended {
                    topic: topic.to_string(),
                    partition,
                    end: foreign_end,
                });
            }
            self.append_now(topic, partition, records)
        })();
        futures::future::ready(result).boxed()
    }

    fn read(
        &self,
        topic: &str,
        partition: u32,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, JournalError> {
        let state = self.lock();
        let part = partition_ref(&state, topic, partition)?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for record in &part.records[part.first_at(from)..] {
            // At least one record, then stop at either limit.
            if !out.is_empty() && (out.len() >= max_records || bytes >= max_bytes) {
                break;
            }
            bytes += record.value.len();
            out.push(record.clone());
        }
        Ok(out)
    }

    fn end(&self, topic: &str, partition: u32) -> Result<u64, JournalError> {
        let state = self.lock();
        Ok(partition_ref(&state, topic, partition)?.end())
    }

    fn start(&self, topic: &str, partition: u32) -> Result<u64, JournalError> {
        let state = self.lock();
        partition_ref(&state, topic, partition)?;
        Ok(0)
    }

    fn wait_for(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        timeout: Duration,
    ) -> BoxFuture<'_, ()> {
        let rx = {
            let state = self.lock();
            partition_ref(&state, topic, partition)
                .ok()
                .map(|p| p.end.subscribe())
        };
        async move {
            let Some(mut rx) = rx else {
                // An unknown partition never grows: behave like a plain timeout.
                tokio::time::sleep(timeout).await;
                return;
            };
            let _ = tokio::time::timeout(timeout, rx.wait_for(|end| *end > offset)).await;
        }
        .boxed()
    }

    fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        next: u64,
    ) -> Result<(), JournalError> {
        let mut state = self.lock();
        partition_ref(&state, topic, partition)?;
        state
            .commits
            .insert((group.to_string(), topic.to_string(), partition), next);
        Ok(())
    }

    fn committed(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
    ) -> Result<Option<u64>, JournalError> {
        let state = self.lock();
        partition_ref(&state, topic, partition)?;
        Ok(state
            .commits
            .get(&(group.to_string(), topic.to_string(), partition))
            .copied())
    }

    fn size_bytes(&self, topic: &str, partition: u32) -> Result<u64, JournalError> {
        let state = self.lock();
        let part = partition_ref(&state, topic, partition)?;
        Ok(part.records.iter().map(|r| r.value.len() as u64).sum())
    }

    fn is_failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn appends_reads_and_wakes_waiters() {
        let journal = MemJournal::with_topics(&[("good", 2)]);
        assert_eq!(journal.partitions("good").unwrap(), 2);
        let waiter = {
            let journal = journal.clone();
            tokio::spawn(async move {
                journal
                    .wait_for("good", 1, 0, Duration::from_secs(30))
                    .await;
                journal.end("good", 1).unwrap()
            })
        };
        let first = journal
            .append(
                "good",
                1,
                vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")],
            )
            .await
            .unwrap();
        assert_eq!(first, 0);
        assert_eq!(waiter.await.unwrap(), 2);
        let records = journal.read("good", 1, 1, 10, 1 << 20).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].offset, 1);
        assert_eq!(&records[0].value[..], b"bc");
        assert!(journal.read("good", 1, 2, 10, 1 << 20).unwrap().is_empty());
        // At least one record even when it exceeds max_bytes.
        assert_eq!(journal.read("good", 1, 0, 10, 0).unwrap().len(), 1);
        assert!(matches!(
            journal.read("good", 7, 0, 10, 10),
            Err(JournalError::PartitionNotFound { .. })
        ));
        journal.commit("g", "good", 1, 2).unwrap();
        assert_eq!(journal.committed("g", "good", 1).unwrap(), Some(2));
        assert_eq!(journal.committed("g", "good", 0).unwrap(), None);
        assert!(matches!(
            journal.create_topic("good", 3),
            Err(JournalError::TopicExists { .. })
        ));
        assert!(journal.create_topic("good", 2).is_ok());
        assert!(!journal.is_failed());
    }

    #[tokio::test]
    async fn a_crash_gap_moves_the_end_and_reads_step_over_it() {
        let journal = MemJournal::with_topics(&[("good", 1)]);
        journal
            .append_now("good", 0, vec![Bytes::from_static(b"a")])
            .unwrap();
        journal.crash_gap("good", 0, 1000).unwrap();
        assert_eq!(journal.end("good", 0).unwrap(), 1001);
        assert!(journal.read("good", 0, 1, 10, 1 << 20).unwrap().is_empty());
        let at = journal
            .append_now("good", 0, vec![Bytes::from_static(b"b")])
            .unwrap();
        assert_eq!(at, 1001);
        let records = journal.read("good", 0, 1, 10, 1 << 20).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].offset, 1001);
        assert_eq!(journal.end("good", 0).unwrap(), 1002);
    }
}
