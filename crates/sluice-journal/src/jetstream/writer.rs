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
    pub(super) mode: Mode,
    pub(super) done: oneshot::Sender<Result<u64, JournalError>>,
}

/// Whom an append expects to share its partition with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// This writer is the partition's only one (`Journal::append`): another writer's records
    /// mean another owner, and the append is refused ([`JournalError::Fenced`]).
    Exclusive,
    /// Other writers append too (`Journal::append_shared`); with `seen`, only if every record
    /// of theirs before the batch lies below that offset.
    Shared { seen: Option<u64> },
}

/// Most times one group is published again after other writers got there first.
const MAX_CONTENDED: u32 = 64;

/// What the writer knows of its partition.
struct Fence {
    /// The stream's last sequence: the next batch is fenced on it.
    last: u64,
    /// Every record another writer stored lies below this offset (the last sequence when this
    /// writer last learned of records not its own; records since then are its own).
    foreign_end: u64,
    /// After an ambiguous failure: read `last` again before the next batch.
    stale: bool,
}

impl Fence {
    /// Takes `last` as the stream's last sequence, counting everything up to it as foreign.
    fn moved_to(&mut self, last: u64) {
        debug_assert!(
            last >= self.last,
            "a stream's last sequence never goes back"
        );
        self.last = last;
        self.foreign_end = last;
    }

    /// Takes the last sequence a caller's `sync` read, even below what this writer stored since
    /// (that read missed records, and the next batch is refused: the caller reads again).
    fn synced_to(&mut self, last: u64) {
        self.last = last;
        self.foreign_end = last;
        self.stale = false;
    }
}

/// The partition's writer: group commit of queued appends into atomic batches.
pub(super) async fn write(
    p: Arc<Partition>,
    inner: Weak<Inner>,
    mut queue: mpsc::UnboundedReceiver<Append>,
    last: u64,
) {
    let mut carried: Option<Append> = None;
    let mut fence = Fence {
        last,
        foreign_end: last,
        stale: false,
    };
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
        let synced = p.resync.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(last) = synced {
            fence.synced_to(last);
        }
        if fence.stale {
            // After an ambiguous failure the batch may or may not be stored: start from what is.
            match super::stream_info(&inner.js, &p.stream).await {
                Ok(info) => {
                    fence.moved_to(info.state.last_sequence);
                    fence.stale = false;
                }
                Err(e) => {
                    fail(group, || e_clone(&e));
                    continue;
                }
            }
        }
        publish_group(&inner, &p, group, &mut fence).await;
    }
}

/// Publishes one group, again after other writers' batches while it is shared, and answers
/// every append of it.
async fn publish_group(
    inner: &Inner,
    p: &Arc<Partition>,
    mut group: Vec<Append>,
    fence: &mut Fence,
) {
    let mut contended = 0;
    loop {
        // A conditional append whose caller has not read every foreign record below the fence
        // goes back to it: its check may be out of date.
        let foreign_end = fence.foreign_end;
        group.retain_mut(|a| match a.mode {
            Mode::Shared { seen: Some(seen) } if seen < foreign_end => {
                let done = std::mem::replace(&mut a.done, oneshot::channel().0);
                let _ = done.send(Err(contended_error(p, foreign_end)));
                false
            }
            _ => true,
        });
        if group.is_empty() {
            return;
        }
        let records: Vec<Bytes> = group
            .iter()
            .flat_map(|a| a.records.iter().cloned())
            .collect();
        let first_offset = fence.last;
        let mut published = 0usize;
        let mut failure = None;
        for chunk in records.chunks(MAX_BATCH) {
            match publish_chunk(inner, p, chunk, &mut fence.last).await {
                Ok(()) => published += chunk.len(),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        match failure {
            None => return acked(p, group, &records, first_offset, fence.last),
            Some(Publish::Fenced(actual)) => {
                let exclusive = group.iter().any(|a| a.mode == Mode::Exclusive);
                let actual = match actual {
                    Some(a) => a,
                    None => match super::stream_info(&inner.js, &p.stream).await {
                        Ok(info) => info.state.last_sequence,
                        Err(e) => {
                            fence.stale = true;
                            return fail(group, || e_clone(&e));
                        }
                    },
                };
                if exclusive {
                    // The fenced batch is refused whole (chunks before it, of a group over
                    // MAX_BATCH records, stay stored): the caller, no longer the only writer,
                    // reads the partition again before anything more. The journal goes on:
                    // the other owner's appends are the ones that count.
                    metrics::counter!(crate::metrics::FENCED_APPENDS, "topic" => p.topic.clone())
                        .increment(1);
                    tracing::error!(stream = %p.stream, last = fence.last, actual,
                        "records were stored after the last this writer knew of (another \
                         owner, or a batch whose ack was lost): the append is refused");
                    let after = fence.last;
                    fence.stale = true;
                    return fail(group, || JournalError::Fenced {
                        topic: p.topic.clone(),
                        partition: p.index,
                        after,
                    });
                }
                fence.moved_to(actual);
                contended += 1;
                if published > 0 || contended > MAX_CONTENDED {
                    // Part of the group is stored (or the partition is too busy): the callers
                    // learn how far to read; a conditional one finds its own records there.
                    let end = fence.foreign_end;
                    return fail_shared(group, p, end, published > 0);
                }
                metrics::counter!(crate::metrics::CONTENDED_BATCHES, "topic" => p.topic.clone())
                    .increment(1);
            }
            Some(Publish::Other(e)) => {
                if matches!(e, JournalError::Failed(_)) {
                    inner.failed.store(true, Ordering::Release);
                    crate::metrics::failure();
                    tracing::error!(stream = %p.stream, error = %e, "the journal stops");
                }
                fence.stale = true;
                return fail(group, || e_clone(&e));
            }
        }
    }
}

/// Answers a group whose records are stored from `first_offset` up to `end`, once the tail
/// cache has them (or `TAIL_WAIT` passed).
fn acked(p: &Arc<Partition>, group: Vec<Append>, records: &[Bytes], first_offset: u64, end: u64) {
    debug_assert_eq!(
        end - first_offset,
        records.len() as u64,
        "a group is stored consecutively"
    );
    metrics::counter!(crate::metrics::APPENDED_RECORDS, "topic" => p.topic.clone())
        .increment(records.len() as u64);
    metrics::counter!(crate::metrics::APPENDED_BYTES, "topic" => p.topic.clone())
        .increment(records.iter().map(|r| r.len() as u64).sum());
    let p2 = p.clone();
    tokio::spawn(async move {
        let mut watermark = p2.end.subscribe();
        if tokio::time::timeout(TAIL_WAIT, watermark.wait_for(|e| *e >= end))
            .await
            .is_err()
        {
            tracing::debug!(stream = %p2.stream, "tail cache behind the acks; moving the watermark");
            p2.raise_end(end);
        }
        let mut offset = first_offset;
        for a in group {
            let n = a.records.len() as u64;
            let _ = a.done.send(Ok(offset));
            offset += n;
        }
    });
}

fn contended_error(p: &Partition, end: u64) -> JournalError {
    JournalError::Contended {
        topic: p.topic.clone(),
        partition: p.index,
        end,
    }
}

/// Fails a group of shared appends after other writers got in: conditional ones are told how
/// far to read; the others fail as any append whose ack is uncertain.
fn fail_shared(group: Vec<Append>, p: &Partition, end: u64, partly_stored: bool) {
    for a in group {
        let e = match a.mode {
            Mode::Shared { seen: Some(_) } => contended_error(p, end),
            _ if partly_stored => JournalError::Unavailable(format!(
                "{}: another writer appended between the batches of one append; part of it is \
                 stored",
                p.stream
            )),
            _ => JournalError::Unavailable(format!(
                "{}: {MAX_CONTENDED} batches in a row lost to other writers; retry",
                p.stream
            )),
        };
        let _ = a.done.send(Err(e));
    }
}

/// Why a chunk was not published.
enum Publish {
    /// Another writer appended after the fence; the stream's last sequence when the server
    /// named it.
    Fenced(Option<u64>),
    /// Anything else.
    Other(JournalError),
}

/// Publishes one chunk after `last` and moves `last` past it.
async fn publish_chunk(
    inner: &Inner,
    p: &Partition,
    chunk: &[Bytes],
    last: &mut u64,
) -> Result<(), Publish> {
    // Nothing is handed to a disconnected client: it would keep the batch and send it after
    // reconnecting, long after the append failed, and the next batch's fence would then take
    // it for another writer's.
    if inner.client.connection_state() != async_nats::connection::State::Connected {
        return Err(Publish::Other(JournalError::Unavailable(format!(
            "not connected to NATS: nothing appended to {}",
            p.stream
        ))));
    }
    match publish_batch(inner, p, chunk, *last).await {
        Ok(seq) => *last = seq,
        Err(e @ (Publish::Fenced(_) | Publish::Other(JournalError::Failed(_)))) => return Err(e),
        // The ack was lost (a timeout, a dropped connection): find out whether the batch was
        // stored, so that a retry does not store it twice.
        Err(Publish::Other(lost)) => match settle(inner, p, chunk, *last).await {
            Ok(true) => {
                tracing::warn!(stream = %p.stream, records = chunk.len(),
                    "the ack of a batch was lost but the batch is stored: acknowledged");
                *last += chunk.len() as u64;
            }
            Ok(false) => return Err(Publish::Other(lost)),
            Err(e) => {
                tracing::debug!(stream = %p.stream, error = %e, "cannot settle a batch whose ack was lost");
                return Err(Publish::Other(lost));
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
    let actual = refused_at(&refusal).ok_or_else(|| {
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

/// The stream's last sequence named by a refusal of `Nats-Expected-Last-Sequence`.
fn refused_at(refusal: &str) -> Option<u64> {
    let rest = refusal.rsplit("wrong last sequence: ").next()?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
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
/// `Fenced` if another writer got there first (nothing of the batch is stored then).
async fn publish_batch(
    inner: &Inner,
    p: &Partition,
    records: &[Bytes],
    last: u64,
) -> Result<u64, Publish> {
    let (seed, counter) = &inner.batch_ids;
    let id = format!("{seed:x}-{}", counter.fetch_add(1, Ordering::Relaxed));
    let n = records.len();
    let published = |e: &dyn std::fmt::Display| {
        Publish::Other(unavailable(format!("appending to {}", p.stream), e))
    };
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
                    Publish::Fenced(refused_at(&e.to_string()))
                }
                _ => published(&e),
            })?;
        let expected = last + n as u64;
        if ack.sequence != expected || ack.batch_size.is_some_and(|c| c != n as u64) {
            return Err(Publish::Other(JournalError::Failed(format!(
                "{}: a batch of {n} after sequence {last} was acked at {} (count {:?})",
                p.stream, ack.sequence, ack.batch_size
            ))));
        }
        return Ok(ack.sequence);
    }
    Ok(last)
}
