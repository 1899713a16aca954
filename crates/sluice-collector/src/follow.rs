//! Dedupe across nodes: on a shared journal (JetStream, where every node's collector appends to
//! the same `raw` partitions), each node reads every `raw` record the others append and files its
//! (source, event id) in its own dedupe index ([`Follow::run`]), so a client's retry of an acked
//! event is recognised on whichever node it lands.
//!
//! Reading soon is not enough when two nodes take the same event at nearly the same time (a
//! client that gives up on a slow node and retries on another). So every append to a shared
//! `raw` partition is *conditional* ([`sluice_journal::Journal::append_shared`] with `seen`):
//! the journal stores it only if every record of another writer before it lies below what this
//! node had read when its request's dedupe check was complete; otherwise it answers `Contended`,
//! the request waits until this node has read that far ([`Follow::reached`]), drops what it now
//! finds stored, and appends the rest again. Since JetStream fences each batch on the stream's
//! last sequence, an event is then appended only by a request that had checked it against every
//! record stored before it: the index is exact for retries within its bound, on every node.

use std::sync::Arc;
use std::time::Duration;

use sluice_event::{Position, now_micros, topic};
use sluice_journal::{Backoff, Journal, JournalError};
use tokio::sync::watch;

use crate::dedupe::{self, DedupeIndex, Key};

/// Records read at once.
const READ_RECORDS: usize = 4096;
/// Bytes read at once, about.
const READ_BYTES: usize = 8 << 20;
/// How long one wait for new records lasts before it looks again.
const IDLE_WAIT: Duration = Duration::from_secs(1);

/// (when received, dedupe key) of a `raw` record; `None` for one the collector did not write,
/// which cannot be a duplicate of anything.
pub(crate) fn raw_ids(value: &[u8]) -> Option<(i64, Key)> {
    #[derive(serde::Deserialize)]
    struct Ids<'a> {
        #[serde(borrow)]
        event_id: std::borrow::Cow<'a, str>,
        #[serde(borrow)]
        source: std::borrow::Cow<'a, str>,
        received_at: i64,
    }
    let ids = serde_json::from_slice::<Ids>(value).ok()?;
    Some((ids.received_at, dedupe::key(&ids.source, &ids.event_id)))
}

/// How far this node has read each `raw` partition into its dedupe index.
pub(crate) struct Follow {
    /// Per partition, the next offset to read: every record below it is in the index.
    read: Vec<watch::Sender<u64>>,
}

impl Follow {
    /// Follows from `ends` (what the index was rebuilt from).
    pub(crate) fn new(ends: &[u64]) -> Self {
        Self {
            read: ends.iter().map(|&e| watch::Sender::new(e)).collect(),
        }
    }

    /// Per partition, the offset below which every record is in the index, now.
    pub(crate) fn seen(&self) -> Vec<u64> {
        self.read.iter().map(|r| *r.borrow()).collect()
    }

    /// Waits until partition `p` is read up to `end`, at most `timeout`; whether it was.
    pub(crate) async fn reached(&self, p: u32, end: u64, timeout: Duration) -> bool {
        let Some(read) = self.read.get(p as usize) else {
            return false;
        };
        let mut rx = read.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|r| *r >= end))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Reads every `raw` partition into `index` as records arrive, for as long as it is polled.
    pub(crate) async fn run(
        self: Arc<Self>,
        journal: Arc<dyn Journal>,
        index: Arc<DedupeIndex>,
        window_micros: i64,
    ) {
        let partitions = (0..self.read.len() as u32).map(|p| {
            let (this, journal, index) = (self.clone(), journal.clone(), index.clone());
            async move {
                this.follow(journal.as_ref(), &index, p, window_micros)
                    .await;
            }
        });
        futures::future::join_all(partitions).await;
    }

    async fn follow(&self, journal: &dyn Journal, index: &DedupeIndex, p: u32, window: i64) {
        let read = &self.read[p as usize];
        let mut backoff = Backoff::new(Duration::from_millis(100), IDLE_WAIT * 5);
        loop {
            let from = *read.borrow();
            journal.wait_for(topic::RAW, p, from, IDLE_WAIT).await;
            match self.read_once(journal, index, p, from, window) {
                Ok(next) => {
                    backoff.reset();
                    debug_assert!(next >= from, "the read position only moves forward");
                    read.send_if_modified(|r| {
                        let moved = next > *r;
                        *r = (*r).max(next);
                        moved
                    });
                }
                Err(e) => {
                    tracing::warn!(partition = p, error = %e,
                        "cannot read raw for dedupe across nodes; trying again");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Files the records of partition `p` from `from` on; the next offset to read.
    fn read_once(
        &self,
        journal: &dyn Journal,
        index: &DedupeIndex,
        p: u32,
        from: u64,
        window: i64,
    ) -> Result<u64, JournalError> {
        let records = journal.read(topic::RAW, p, from, READ_RECORDS, READ_BYTES)?;
        let Some(last) = records.last() else {
            // Nothing to read below the end (removed by retention): move on to it.
            return journal.end(topic::RAW, p).map(|end| end.max(from));
        };
        let next = last.offset + 1;
        let horizon = now_micros() - window;
        for r in &records {
            if let Some((at, key)) = raw_ids(&r.value).filter(|(at, _)| *at >= horizon) {
                let pos = Position {
                    partition: p,
                    offset: r.offset,
                };
                index.observe(key, at, pos);
            }
        }
        Ok(next)
    }
}
