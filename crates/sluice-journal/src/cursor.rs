//! [`Cursor`]: how every consumer reads one partition — from a position, forward only, over
//! the gaps a crash leaves.
//!
//! Offsets are dense except across a crash gap: after an unclean stop a partition's next offset
//! jumps to its durable floor, so `end()` may lie about a million offsets past the last record.
//! `Journal::read` skips a gap *between* records on its own (the first record returned has a
//! larger offset), but a gap at the *tail* reads as empty while `end()` is ahead. A consumer
//! that only moved past records it read would then wait forever on a partition that is in fact
//! caught up, and `wait_for` (which resolves while `end > next`) would wake it at once, over
//! and over. The cursor reads the end *before* the records: an empty read then proves that
//! nothing exists in `[next, end)`, and the cursor steps there.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use crate::{Journal, JournalError, Record};

/// A read position in one partition of one topic. See the module docs. A clone reads ahead
/// without moving the original.
#[derive(Clone)]
pub struct Cursor {
    journal: Arc<dyn Journal>,
    topic: Arc<str>,
    partition: u32,
    next: u64,
}

impl std::fmt::Debug for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cursor")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("next", &self.next)
            .finish()
    }
}

impl Cursor {
    /// A cursor that reads `topic`'s `partition` from offset `next` on.
    pub fn new(journal: Arc<dyn Journal>, topic: &str, partition: u32, next: u64) -> Self {
        Self {
            journal,
            topic: Arc::from(topic),
            partition,
            next,
        }
    }

    /// One cursor per partition of `topic`, partition `p` starting at `next[p]`.
    pub fn per_partition(journal: &Arc<dyn Journal>, topic: &str, next: &[u64]) -> Vec<Self> {
        next.iter()
            .enumerate()
            .map(|(p, n)| Self::new(journal.clone(), topic, p as u32, *n))
            .collect()
    }

    /// The partition read.
    pub fn partition(&self) -> u32 {
        self.partition
    }

    /// The next offset to read: every offset below it was read or never existed.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Moves forward to `offset` (another writer delivered further); never moves back.
    pub fn advance_to(&mut self, offset: u64) {
        self.next = self.next.max(offset);
    }

    /// The partition's durable end.
    pub fn end(&self) -> Result<u64, JournalError> {
        self.journal.end(&self.topic, self.partition)
    }

    /// Whether everything below the durable end has been read (or never existed).
    pub fn caught_up(&self) -> bool {
        self.end().is_ok_and(|end| self.next >= end)
    }

    /// Reads up to `max_records` records (about `max_bytes`, at least one) at or after `next`
    /// and below `limit` (when given), and moves past them. An empty answer with `next` still
    /// below the end means the records there do not exist (a crash gap): the cursor steps over
    /// it, so after an empty read `next` is at the end (or at `limit`).
    pub fn read(
        &mut self,
        max_records: usize,
        max_bytes: usize,
        limit: Option<u64>,
    ) -> Result<Vec<Record>, JournalError> {
        let limit = limit.unwrap_or(u64::MAX);
        if self.next >= limit {
            return Ok(Vec::new());
        }
        // The end first: an empty read after it proves [next, end) holds nothing.
        let end = self.end()?;
        let records = self.journal.read(
            &self.topic,
            self.partition,
            self.next,
            max_records.max(1),
            max_bytes.max(1),
        )?;
        let read_any = !records.is_empty();
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            // Never take an offset twice, whatever the journal returns.
            if record.offset < self.next {
                continue;
            }
            if record.offset >= limit {
                // Nothing lies between the last record taken and this one.
                self.step_to(limit);
                break;
            }
            self.step_to(record.offset + 1);
            out.push(record);
        }
        if !read_any && end > self.next {
            self.step_to(end.min(limit));
        }
        Ok(out)
    }

    /// Resolves when a record (or a gap) lies past `next`, or after `timeout`.
    pub fn wait(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        self.journal
            .wait_for(&self.topic, self.partition, self.next, timeout)
    }

    fn step_to(&mut self, next: u64) {
        debug_assert!(next >= self.next, "a cursor only moves forward");
        self.next = next;
    }
}
