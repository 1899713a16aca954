//! [`Batcher`]: the read side of a sink that consumes every partition of a journal topic in
//! micro-batches — fill a buffer from all partitions, hand it over when it is full or due, drain
//! to the journal's end on shutdown, and otherwise wait for new records. The typed tables and the
//! Postgres loader share it; each keeps its own flush, retry and exactly-once bookkeeping.

use std::sync::Arc;
use std::time::Duration;

use sluice_journal::{Journal, Record};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long to wait for new records when nothing is buffered.
const IDLE_WAIT: Duration = Duration::from_secs(5);

/// When a batch is handed over, and how much is read at a time.
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    /// A batch of this many records is full.
    pub max_events: usize,
    /// A batch of this many payload bytes is full.
    pub max_bytes: usize,
    /// Most records per journal read.
    pub read_records: usize,
    /// Most bytes per journal read.
    pub read_bytes: usize,
    /// A non-empty batch is due this long after its first record was read.
    pub flush_interval: Duration,
}

/// Reads one topic's partitions into batches. See the module docs.
pub struct Batcher {
    journal: Arc<dyn Journal>,
    topic: &'static str,
    limits: BatchLimits,
    next: Vec<u64>,
    drain: Option<Vec<u64>>,
    buffer: Vec<(u32, Record)>,
    bytes: usize,
    since: Option<Instant>,
}

impl Batcher {
    /// Starts reading partition `p` of `topic` at `next[p]`.
    pub fn new(
        journal: Arc<dyn Journal>,
        topic: &'static str,
        next: Vec<u64>,
        limits: BatchLimits,
    ) -> Self {
        Self {
            journal,
            topic,
            limits,
            next,
            drain: None,
            buffer: Vec::new(),
            bytes: 0,
            since: None,
        }
    }

    /// The next batch to flush (records with their partition, in offset order per partition);
    /// `None` once `shutdown` was cancelled and everything up to the journal's end as of then was
    /// handed over (or nothing more can be read).
    pub async fn next_batch(&mut self, shutdown: &CancellationToken) -> Option<Vec<(u32, Record)>> {
        let partitions = self.next.len();
        loop {
            if self.drain.is_none() && shutdown.is_cancelled() {
                self.drain = Some(
                    (0..partitions)
                        .map(|i| {
                            self.journal
                                .end(self.topic, i as u32)
                                .unwrap_or(self.next[i])
                        })
                        .collect(),
                );
            }
            let read_any = self.fill();
            let full =
                self.buffer.len() >= self.limits.max_events || self.bytes >= self.limits.max_bytes;
            let due = self
                .since
                .is_some_and(|s| s.elapsed() >= self.limits.flush_interval);
            if !self.buffer.is_empty() && (full || due || self.drain.is_some()) {
                self.bytes = 0;
                self.since = None;
                return Some(std::mem::take(&mut self.buffer));
            }
            // Drained: everything up to the targets is handed over, or nothing more can be read.
            if let Some(d) = &self.drain {
                if self.buffer.is_empty()
                    && (!read_any || self.next.iter().zip(d).all(|(n, d)| n >= d))
                {
                    return None;
                }
                continue;
            }
            let timeout = self.since.map_or(IDLE_WAIT, |s| {
                self.limits.flush_interval.saturating_sub(s.elapsed())
            });
            let waits: Vec<_> = (0..partitions)
                .map(|i| {
                    self.journal
                        .wait_for(self.topic, i as u32, self.next[i], timeout)
                })
                .collect();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = futures::future::select_all(waits) => {}
            }
        }
    }

    /// Reads every partition until the buffer is full or the partition has nothing more (up to
    /// the drain target when draining). Whether anything was read.
    fn fill(&mut self) -> bool {
        let mut read_any = false;
        for i in 0..self.next.len() {
            let p = i as u32;
            let limit = self.drain.as_ref().map(|d| d[i]);
            while self.buffer.len() < self.limits.max_events
                && self.bytes < self.limits.max_bytes
                && limit.is_none_or(|l| self.next[i] < l)
            {
                let mut max = self
                    .limits
                    .read_records
                    .min(self.limits.max_events - self.buffer.len())
                    .max(1);
                if let Some(l) = limit {
                    max = max.min(usize::try_from(l - self.next[i]).unwrap_or(usize::MAX));
                }
                let max_bytes = self
                    .limits
                    .read_bytes
                    .min(self.limits.max_bytes.saturating_sub(self.bytes))
                    .max(1);
                let end_before = self.journal.end(self.topic, p).unwrap_or(0);
                let records = match self
                    .journal
                    .read(self.topic, p, self.next[i], max, max_bytes)
                {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(topic = self.topic, partition = p, error = %e, "journal read failed");
                        break;
                    }
                };
                if records.is_empty() {
                    // Nothing durable in [next, end_before): offsets a crash never issued (the
                    // journal's floor). Skip them, or waiting would spin and a drain would never
                    // reach the end.
                    if end_before > self.next[i] && limit.is_none_or(|l| end_before <= l) {
                        self.next[i] = end_before;
                    }
                    break;
                }
                read_any = true;
                for record in records {
                    if record.offset < self.next[i] {
                        continue;
                    }
                    self.next[i] = record.offset + 1;
                    self.bytes += record.value.len();
                    self.buffer.push((p, record));
                }
                if self.since.is_none() {
                    self.since = Some(Instant::now());
                }
            }
        }
        read_any
    }
}
