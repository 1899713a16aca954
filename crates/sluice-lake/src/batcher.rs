//! [`Batcher`]: the read side of a sink that consumes every partition of a journal topic in
//! micro-batches — fill a buffer from all partitions, hand it over when it is full or due, drain
//! to the journal's end on shutdown, and otherwise wait for new records. It reads through
//! [`Cursor`]s, so a crash gap is stepped over and the published progress reaches the end. The
//! typed tables and the Postgres loader share it; each keeps its own flush, retry and
//! exactly-once bookkeeping.

use std::sync::Arc;
use std::time::Duration;

use sluice_journal::{Backoff, Cursor, Journal, Record};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::DeliveryStatus;

/// How long to wait for new records when nothing is buffered.
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// First and longest wait before a partition whose read failed is read again.
const READ_RETRY: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(30));

/// A partition's read retries: a failed read (a quarantined partition, an IO error) waits out a
/// [`Backoff`] before the next, and is logged at growing intervals, never in a loop.
struct ReadRetry {
    backoff: Backoff,
    at: Option<Instant>,
}

impl ReadRetry {
    fn new() -> Self {
        Self {
            backoff: Backoff::new(READ_RETRY.0, READ_RETRY.1),
            at: None,
        }
    }

    fn waiting(&self, now: Instant) -> bool {
        self.at.is_some_and(|at| now < at)
    }

    fn failed(&mut self, partition: u32, error: &sluice_journal::JournalError) {
        let wait = self.backoff.next_delay();
        self.at = Some(Instant::now() + wait);
        let attempts = self.backoff.attempts();
        if attempts.is_power_of_two() || attempts.is_multiple_of(20) {
            tracing::warn!(partition, error = %error, attempts, retry_in = ?wait, "journal read failed");
        }
    }

    fn succeeded(&mut self) {
        if self.at.take().is_some() {
            self.backoff.reset();
        }
    }
}

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
    cursors: Vec<Cursor>,
    limits: BatchLimits,
    drain: Option<Vec<u64>>,
    buffer: Vec<(u32, Record)>,
    /// Per partition: the offset of its first record in the buffer.
    first_buffered: Vec<Option<u64>>,
    bytes: usize,
    since: Option<Instant>,
    retry: Vec<ReadRetry>,
    status: watch::Sender<DeliveryStatus>,
}

impl Batcher {
    /// Starts reading partition `p` of `topic` at `next[p]`. Every batch handed over must be
    /// delivered before `next_batch` is called again: the batcher then publishes in `status`
    /// how far each partition is delivered, crash gaps included.
    pub fn new(
        journal: Arc<dyn Journal>,
        topic: &'static str,
        next: Vec<u64>,
        limits: BatchLimits,
        status: watch::Sender<DeliveryStatus>,
    ) -> Self {
        Self {
            first_buffered: vec![None; next.len()],
            cursors: Cursor::per_partition(&journal, topic, &next),
            limits,
            drain: None,
            buffer: Vec::new(),
            bytes: 0,
            since: None,
            retry: next.iter().map(|_| ReadRetry::new()).collect(),
            status,
        }
    }

    /// The next batch to flush (records with their partition, in offset order per partition);
    /// `None` once `shutdown` was cancelled and everything up to the journal's end as of then was
    /// handed over (or nothing more can be read).
    pub async fn next_batch(&mut self, shutdown: &CancellationToken) -> Option<Vec<(u32, Record)>> {
        loop {
            if self.drain.is_none() && shutdown.is_cancelled() {
                self.drain = Some(
                    self.cursors
                        .iter()
                        .map(|c| c.end().unwrap_or(c.next()))
                        .collect(),
                );
            }
            let read_any = self.fill();
            self.publish_delivered();
            let full =
                self.buffer.len() >= self.limits.max_events || self.bytes >= self.limits.max_bytes;
            let due = self
                .since
                .is_some_and(|s| s.elapsed() >= self.limits.flush_interval);
            if !self.buffer.is_empty() && (full || due || self.drain.is_some()) {
                self.bytes = 0;
                self.since = None;
                self.first_buffered.fill(None);
                return Some(std::mem::take(&mut self.buffer));
            }
            // Drained: everything up to the targets is handed over, or nothing more can be read.
            if let Some(d) = &self.drain {
                if self.buffer.is_empty()
                    && (!read_any || self.cursors.iter().zip(d).all(|(c, d)| c.next() >= *d))
                {
                    return None;
                }
                continue;
            }
            let timeout = self.since.map_or(IDLE_WAIT, |s| {
                self.limits.flush_interval.saturating_sub(s.elapsed())
            });
            let now = Instant::now();
            let waits: Vec<_> = self
                .cursors
                .iter()
                .zip(&self.retry)
                .map(|(c, r)| match r.at {
                    // A partition waiting out a failed read wakes when it may read again.
                    Some(at) if at > now => {
                        Box::pin(tokio::time::sleep_until(at.min(now + timeout)))
                    }
                    _ => c.wait(timeout),
                })
                .collect();
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = futures::future::select_all(waits) => {}
            }
        }
    }

    /// Publishes, per partition, the first offset not yet delivered: that of its first buffered
    /// record, else the cursor (every batch handed over before is delivered by now, and the
    /// cursor has stepped over any crash gap).
    fn publish_delivered(&self) {
        let delivered: Vec<u64> = self
            .cursors
            .iter()
            .zip(&self.first_buffered)
            .map(|(c, first)| first.unwrap_or(c.next()))
            .collect();
        self.status.send_if_modified(|s| {
            if s.next_offsets == delivered {
                return false;
            }
            s.next_offsets = delivered;
            true
        });
    }

    /// Reads every partition until the buffer is full or the partition has nothing more (up to
    /// the drain target when draining). Whether anything was read.
    fn fill(&mut self) -> bool {
        let mut read_any = false;
        for (i, cursor) in self.cursors.iter_mut().enumerate() {
            let p = cursor.partition();
            let limit = self.drain.as_ref().map(|d| d[i]);
            if self.retry[i].waiting(Instant::now()) {
                continue;
            }
            while self.buffer.len() < self.limits.max_events
                && self.bytes < self.limits.max_bytes
                && limit.is_none_or(|l| cursor.next() < l)
            {
                let max = self
                    .limits
                    .read_records
                    .min(self.limits.max_events - self.buffer.len());
                let max_bytes = self
                    .limits
                    .read_bytes
                    .min(self.limits.max_bytes.saturating_sub(self.bytes));
                let records = match cursor.read(max, max_bytes, limit) {
                    Ok(r) => r,
                    Err(e) => {
                        self.retry[i].failed(p, &e);
                        break;
                    }
                };
                self.retry[i].succeeded();
                let Some(first) = records.first() else {
                    break;
                };
                read_any = true;
                self.first_buffered[i].get_or_insert(first.offset);
                for record in records {
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
