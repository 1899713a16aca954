//! The read side of a partition: its tail cache of the newest records, the ordered consumer
//! that feeds it (and so moves the watermark), and the fetch of older records for a read below
//! the cache.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use tokio::sync::watch;

use super::{FEED_RETRY, Partition, unavailable};
use crate::{JournalError, Record};

/// The newest records of a partition, contiguous from `lo`.
pub(super) struct Tail {
    pub(super) records: VecDeque<Record>,
    pub(super) lo: u64,
    pub(super) bytes: usize,
    pub(super) cap: usize,
}

impl Tail {
    pub(super) fn hi(&self) -> u64 {
        self.lo + self.records.len() as u64
    }

    /// Adds the record after the newest; a later one (records removed meanwhile) restarts the
    /// cache there; an older one is already held. True if the tail grew.
    fn push(&mut self, record: Record) -> bool {
        if record.offset < self.hi() {
            return false;
        }
        if record.offset > self.hi() {
            self.records.clear();
            self.bytes = 0;
            self.lo = record.offset;
        }
        self.bytes += record.value.len();
        self.records.push_back(record);
        while self.bytes > self.cap && self.records.len() > 1 {
            if let Some(old) = self.records.pop_front() {
                self.bytes -= old.value.len();
                self.lo += 1;
            }
        }
        true
    }

    /// The records from `from` if the cache holds it.
    pub(super) fn read(
        &self,
        from: u64,
        max_records: usize,
        max_bytes: usize,
    ) -> Option<Vec<Record>> {
        if from < self.lo || from >= self.hi() {
            return None;
        }
        let skip = (from - self.lo) as usize;
        let mut out = Vec::new();
        let mut bytes = 0;
        for r in self.records.iter().skip(skip) {
            if !takes(out.len(), bytes, r, max_records, max_bytes) {
                break;
            }
            bytes += r.value.len();
            out.push(r.clone());
        }
        Some(out)
    }
}

/// The read limits of the trait: up to `max_records`, about `max_bytes` but at least one.
fn takes(have: usize, bytes: usize, next: &Record, max_records: usize, max_bytes: usize) -> bool {
    have < max_records && (have == 0 || bytes + next.value.len() <= max_bytes)
}

fn to_record(message: &jetstream::Message) -> Result<Record, JournalError> {
    let info = message
        .info()
        .map_err(|e| unavailable("a JetStream message without its info", e))?;
    let ms = info.published.unix_timestamp_nanos() / 1_000_000;
    Ok(Record {
        offset: info.stream_sequence.saturating_sub(1),
        timestamp_ms: i64::try_from(ms).unwrap_or(0),
        value: message.payload.clone(),
    })
}

/// Keeps the tail cache of `p` fed from the stream, from the tail's end on, for ever; starts
/// the consumer again after every reconnection (the server may have lost it).
pub(super) async fn feed(
    p: Arc<Partition>,
    js: jetstream::Context,
    mut connections: watch::Receiver<u64>,
) {
    loop {
        connections.mark_unchanged();
        let from = p.tail.lock().unwrap_or_else(|e| e.into_inner()).hi();
        tokio::select! {
            fed = feed_from(&p, &js, from) => {
                if let Err(e) = fed {
                    tracing::debug!(stream = %p.stream, error = %e, "tail consumer stopped; starting it again");
                }
                tokio::time::sleep(FEED_RETRY).await;
            }
            _ = connections.changed() => {}
        }
    }
}

async fn feed_from(p: &Partition, js: &jetstream::Context, from: u64) -> Result<(), JournalError> {
    let mut messages = ordered(js, &p.stream, from).await?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| unavailable("tail consumer", e))?;
        let record = to_record(&message)?;
        p.push(record);
    }
    Ok(())
}

/// An ordered consumer of `stream` from offset `from` (or the first record still stored).
async fn ordered(
    js: &jetstream::Context,
    stream: &str,
    from: u64,
) -> Result<consumer::pull::Ordered, JournalError> {
    let s = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| unavailable(format!("opening stream {stream}"), e))?;
    let consumer = s
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: from + 1,
            },
            ..Default::default()
        })
        .await
        .map_err(|e| unavailable(format!("reading stream {stream}"), e))?;
    consumer
        .messages()
        .await
        .map_err(|e| unavailable(format!("reading stream {stream}"), e))
}

impl Partition {
    fn push(&self, record: Record) {
        let hi = {
            let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            if !tail.push(record) {
                return;
            }
            tail.hi()
        };
        self.raise_end(hi);
    }

    pub(super) fn raise_end(&self, to: u64) {
        self.end.send_if_modified(|end| {
            let moved = to > *end;
            if moved {
                *end = to;
            }
            moved
        });
    }
}

/// Reads records below the tail cache from the stream.
pub(super) async fn fetch(
    js: jetstream::Context,
    stream: String,
    from: u64,
    end: u64,
    max_records: usize,
    max_bytes: usize,
    timeout: Duration,
) -> Result<Vec<Record>, JournalError> {
    let mut messages = ordered(&js, &stream, from).await?;
    let mut out = Vec::new();
    let mut bytes = 0;
    while out.len() < max_records {
        let message = match tokio::time::timeout(timeout, messages.next()).await {
            Ok(Some(m)) => m.map_err(|e| unavailable(format!("reading stream {stream}"), e))?,
            Ok(None) => break,
            Err(_) => {
                return Err(JournalError::Unavailable(format!(
                    "reading stream {stream} from offset {from}: no answer within {timeout:?}"
                )));
            }
        };
        let record = to_record(&message)?;
        match next_in_order(out.last(), &record) {
            Order::Next => {}
            // An ordered consumer that started again may deliver a record once more.
            Order::Again => continue,
            Order::Gap => {
                return Err(JournalError::Unavailable(format!(
                    "reading stream {stream}: offset {} came after {:?}",
                    record.offset,
                    out.last().map(|r| r.offset)
                )));
            }
        }
        if record.offset >= end || !takes(out.len(), bytes, &record, max_records, max_bytes) {
            break;
        }
        bytes += record.value.len();
        let last = record.offset + 1 >= end;
        out.push(record);
        if last {
            break;
        }
    }
    // Streams have no gaps: nothing at all below the end means the consumer ended early (a
    // server failing over), not that nothing is there. An empty answer would make a cursor
    // step over those records as a crash gap.
    if out.is_empty() {
        return Err(JournalError::Unavailable(format!(
            "reading stream {stream} from offset {from}: the read ended before a record below {end}"
        )));
    }
    Ok(out)
}

/// Where a delivered record stands after the last one taken.
#[derive(Debug, PartialEq, Eq)]
enum Order {
    /// The first record, or the one right after the last.
    Next,
    /// At or below the last: delivered again.
    Again,
    /// Past the record after the last: a stream has no holes, so records were skipped.
    Gap,
}

/// Checks that a read stays dense: records follow each other by one offset (the first may lie
/// past the offset asked for, where retention removed older records).
fn next_in_order(last: Option<&Record>, record: &Record) -> Order {
    match last {
        None => Order::Next,
        Some(l) if record.offset <= l.offset => Order::Again,
        Some(l) if record.offset == l.offset + 1 => Order::Next,
        Some(_) => Order::Gap,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn the_tail_keeps_the_newest_records_within_its_budget() {
        let rec = |offset: u64, len: usize| Record {
            offset,
            timestamp_ms: 0,
            value: Bytes::from(vec![b'x'; len]),
        };
        let mut tail = Tail {
            records: VecDeque::new(),
            lo: 5,
            bytes: 0,
            cap: 10,
        };
        assert!(
            tail.read(5, 10, 100).is_none(),
            "an empty tail holds nothing"
        );
        assert!(tail.push(rec(5, 4)));
        assert!(tail.push(rec(6, 4)));
        assert!(!tail.push(rec(5, 4)), "already held");
        assert_eq!(tail.read(5, 10, 100).unwrap().len(), 2);
        assert_eq!(tail.read(5, 10, 1).unwrap().len(), 1, "at least one record");
        assert!(tail.push(rec(7, 4)));
        assert_eq!(
            (tail.lo, tail.hi()),
            (6, 8),
            "the oldest left to stay within 10 bytes"
        );
        assert!(
            tail.read(5, 10, 100).is_none(),
            "below the cache: fetched instead"
        );
        assert!(tail.push(rec(20, 1)));
        assert_eq!((tail.lo, tail.hi()), (20, 21), "a jump restarts the cache");
    }

    #[test]
    fn a_read_takes_each_offset_once_and_refuses_a_hole() {
        let rec = |offset: u64| Record {
            offset,
            timestamp_ms: 0,
            value: Bytes::new(),
        };
        assert_eq!(
            next_in_order(None, &rec(9)),
            Order::Next,
            "retention may skip the start"
        );
        assert_eq!(next_in_order(Some(&rec(9)), &rec(10)), Order::Next);
        assert_eq!(next_in_order(Some(&rec(10)), &rec(10)), Order::Again);
        assert_eq!(next_in_order(Some(&rec(10)), &rec(8)), Order::Again);
        assert_eq!(next_in_order(Some(&rec(10)), &rec(12)), Order::Gap);
    }
}
