//! The write side of a partition: one task takes every queued append and publishes them as
//! JetStream atomic batches fenced on the last sequence it knows (see the module doc above).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_nats::jetstream;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{Inner, MAX_BATCH, Partition, TAIL_WAIT, unavailable};
use crate::JournalError;

/// One queued `append`.
pub(super) struct Append {
    pub(super) records: Vec<Bytes>,
    pub(super) done: oneshot::Sender<Result<u64, JournalError>>,
}

/// The partition's writer: group commit of queued appends into atomic batches.
pub(super) async fn write(
    p: Arc<Partition>,
    inner: Weak<Inner>,
    mut queue: mpsc::UnboundedReceiver<Append>,
    mut last: u64,
) {
    let mut carried: Option<Append> = None;
    let mut stale = false;
    loop {
        let first = match carried.take() {
            Some(a) => a,
            None => match queue.recv().await {
                Some(a) => a,
                None => return,
            },
        };
        let mut group = vec![first];
        let mut n = group[0].records.len();
        while n < MAX_BATCH {
            match queue.try_recv() {
                Ok(a) if n + a.records.len() <= MAX_BATCH => {
                    n += a.records.len();
                    group.push(a);
                }
                Ok(a) => {
                    carried = Some(a);
                    break;
                }
                Err(_) => break,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.failed.load(Ordering::Acquire) {
            fail(group, || {
                JournalError::Failed("another writer appended to this partition".into())
            });
            continue;
        }
        if stale {
            // After an ambiguous failure the batch may or may not be stored: start from what is.
            match super::stream_info(&inner.js, &p.stream).await {
                Ok(info) => {
                    last = info.state.last_sequence;
                    stale = false;
                }
                Err(e) => {
                    fail(group, || e_clone(&e));
                    continue;
                }
            }
        }
        let records: Vec<Bytes> = group
            .iter()
            .flat_map(|a| a.records.iter().cloned())
            .collect();
        let mut first_offset = None;
        let mut failure = None;
        for chunk in records.chunks(MAX_BATCH) {
            match publish_chunk(&inner, &p, chunk, &mut last).await {
                Ok(()) => {
                    first_offset.get_or_insert(last - chunk.len() as u64);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            if matches!(e, JournalError::Failed(_)) {
                inner.failed.store(true, Ordering::Release);
                crate::metrics::failure();
                tracing::error!(stream = %p.stream, error = %e,
                    "another writer appended to this partition: the journal stops (two nodes \
                     must never write one partition)");
            }
            stale = true;
            fail(group, || e_clone(&e));
            continue;
        }
        metrics::counter!(crate::metrics::APPENDED_RECORDS, "topic" => p.topic.clone())
            .increment(records.len() as u64);
        metrics::counter!(crate::metrics::APPENDED_BYTES, "topic" => p.topic.clone())
            .increment(records.iter().map(|r| r.len() as u64).sum());
        let (p2, end) = (p.clone(), last);
        tokio::spawn(async move {
            let mut watermark = p2.end.subscribe();
            if tokio::time::timeout(TAIL_WAIT, watermark.wait_for(|e| *e >= end))
                .await
                .is_err()
            {
                tracing::debug!(stream = %p2.stream, "tail cache behind the acks; moving the watermark");
                p2.raise_end(end);
            }
            let mut offset = first_offset.unwrap_or(end);
            for a in group {
                let n = a.records.len() as u64;
                let _ = a.done.send(Ok(offset));
                offset += n;
            }
        });
    }
}

/// Publishes one chunk after `last` and moves `last` past it.
async fn publish_chunk(
    inner: &Inner,
    p: &Partition,
    chunk: &[Bytes],
    last: &mut u64,
) -> Result<(), JournalError> {
    // Nothing is handed to a disconnected client: it would keep the batch and send it after
    // reconnecting, long after the append failed, and the next batch's fence would then take
    // it for another writer's.
    if inner.client.connection_state() != async_nats::connection::State::Connected {
        return Err(JournalError::Unavailable(format!(
            "not connected to NATS: nothing appended to {}",
            p.stream
        )));
    }
    match publish_batch(inner, p, chunk, *last).await {
        Ok(seq) => *last = seq,
        Err(JournalError::Failed(fenced)) => return Err(JournalError::Failed(fenced)),
        // The ack was lost (a timeout, a dropped connection): find out whether the batch was
        // stored, so that a retry does not store it twice.
        Err(lost) => match settle(inner, p, chunk, *last).await {
            Ok(true) => {
                tracing::warn!(stream = %p.stream, records = chunk.len(),
                    "the ack of a batch was lost but the batch is stored: acknowledged");
                *last += chunk.len() as u64;
            }
            Ok(false) => return Err(lost),
            Err(e) => {
                tracing::debug!(stream = %p.stream, error = %e, "cannot settle a batch whose ack was lost");
                return Err(lost);
            }
        },
    }
    Ok(())
}

/// Longest a batch whose ack was lost waits for the connection to come back to be settled.
const SETTLE_WAIT: Duration = Duration::from_secs(5);

/// Whether a batch published after sequence `last` was stored, once that is certain: a fenced
/// probe sent to the same stream is processed after every message sent before it on this
/// connection (and a batch from a connection that died can no longer arrive), so the last
/// sequence its refusal names covers the batch.
async fn settle(
    inner: &Inner,
    p: &Partition,
    chunk: &[Bytes],
    last: u64,
) -> Result<bool, JournalError> {
    let mut connected = inner.connections.subscribe();
    while inner.client.connection_state() != async_nats::connection::State::Connected {
        tokio::time::timeout(SETTLE_WAIT.max(inner.cfg.timeout), connected.changed())
            .await
            .map_err(|_| JournalError::Unavailable("not connected to NATS".into()))?
            .map_err(|_| JournalError::Closed)?;
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Expected-Last-Sequence", u64::MAX.to_string().as_str());
    let probe = inner
        .js
        .publish_with_headers(p.subject.clone(), headers, Bytes::new())
        .await
        .map_err(|e| unavailable(format!("probing {}", p.stream), e))?
        .await;
    let refusal = match probe {
        Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
            e.to_string()
        }
        other => {
            return Err(JournalError::Unavailable(format!(
                "probing {}: no refusal naming the last sequence: {other:?}",
                p.stream
            )));
        }
    };
    let actual = refusal
        .rsplit("wrong last sequence: ")
        .next()
        .and_then(|rest| {
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse::<u64>().ok()
        })
        .ok_or_else(|| {
            JournalError::Unavailable(format!("probing {}: cannot read {refusal:?}", p.stream))
        })?;
    let n = chunk.len() as u64;
    if actual < last + n {
        return Ok(false);
    }
    let (js, stream, timeout) = (inner.js.clone(), p.stream.clone(), inner.cfg.timeout);
    let stored =
        super::tail::fetch(js, stream, last, last + n, chunk.len(), usize::MAX, timeout).await?;
    Ok(stored.len() == chunk.len()
        && (last..)
            .zip(stored.iter().zip(chunk))
            .all(|(offset, (r, b))| r.offset == offset && r.value == *b))
}

/// A copy of a failure for each waiting append (the error type is not `Clone`).
fn e_clone(e: &JournalError) -> JournalError {
    match e {
        JournalError::Failed(m) => JournalError::Failed(m.clone()),
        JournalError::Unavailable(m) => JournalError::Unavailable(m.clone()),
        other => JournalError::Unavailable(other.to_string()),
    }
}

fn fail(group: Vec<Append>, error: impl Fn() -> JournalError) {
    for a in group {
        let _ = a.done.send(Err(error()));
    }
}

/// Publishes `records` as one atomic batch after sequence `last`; the new last sequence.
/// `Failed` if another writer got there first.
async fn publish_batch(
    inner: &Inner,
    p: &Partition,
    records: &[Bytes],
    last: u64,
) -> Result<u64, JournalError> {
    let (seed, counter) = &inner.batch_ids;
    let id = format!("{seed:x}-{}", counter.fetch_add(1, Ordering::Relaxed));
    let n = records.len();
    let published =
        |e: &dyn std::fmt::Display| unavailable(format!("appending to {}", p.stream), e);
    for (i, record) in records.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Batch-Id", id.as_str());
        headers.insert("Nats-Batch-Sequence", (i + 1).to_string().as_str());
        if i == 0 {
            headers.insert("Nats-Expected-Last-Sequence", last.to_string().as_str());
        }
        if i + 1 < n {
            inner
                .client
                .publish_with_headers(p.subject.clone(), headers, record.clone())
                .await
                .map_err(|e| published(&e))?;
            continue;
        }
        headers.insert("Nats-Batch-Commit", "1");
        let ack = inner
            .js
            .publish_with_headers(p.subject.clone(), headers, record.clone())
            .await
            .map_err(|e| published(&e))?
            .await
            .map_err(|e| match e.kind() {
                jetstream::context::PublishErrorKind::WrongLastSequence => {
                    JournalError::Failed(format!(
                        "{}: another writer appended after sequence {last}",
                        p.stream
                    ))
                }
                _ => published(&e),
            })?;
        let expected = last + n as u64;
        if ack.sequence != expected || ack.batch_size.is_some_and(|c| c != n as u64) {
            return Err(JournalError::Failed(format!(
                "{}: a batch of {n} after sequence {last} was acked at {} (count {:?})",
                p.stream, ack.sequence, ack.batch_size
            )));
        }
        return Ok(ack.sequence);
    }
    Ok(last)
}
