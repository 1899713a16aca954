//! [`Collector`]: one request in, a durable append to `raw` out.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use sluice_event::{
    ErrorKind, Protocol, RawEvent, RawEventRef, Rejection, now_micros, routing_key, topic,
};
use sluice_journal::{Journal, JournalError, partition_for};
use tokio::sync::watch;

use crate::dedupe::{self, DedupeIndex, Key, Reserve};
use crate::{CollectError, CollectorSettings, Encoding, check_native, decompress, split_events};

/// The consumer group whose committed `raw` positions measure the backlog (the runner's).
pub const RUNNER_GROUP: &str = "functions";

/// How long a request waits for another in-flight request that carries the same event id.
const PENDING_WAIT: Duration = Duration::from_secs(5);

/// One ingest request, already authenticated.
#[derive(Clone, Debug)]
pub struct IngestRequest {
    /// The source the write key names.
    pub source: String,
    /// The body as received.
    pub body: Bytes,
    /// Its `Content-Encoding`.
    pub encoding: Encoding,
    /// Client address.
    pub ip: Option<String>,
    /// Client `User-Agent`.
    pub user_agent: Option<String>,
}

/// The answer to an ingest request; every counted event is durable.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct IngestOutcome {
    /// Events appended to `raw` by this request.
    pub accepted: usize,
    /// Events already acked within the dedupe window (not appended again).
    pub duplicates: usize,
    /// Events refused, with reasons.
    pub rejected: Vec<Rejection>,
}

/// The collector: decode, check, stamp, dedupe, route, append.
pub struct Collector {
    journal: Arc<dyn Journal>,
    settings: CollectorSettings,
    dedupe: DedupeIndex,
    partitions: u32,
}

impl Collector {
    /// Builds the collector over a journal that has the `raw` topic, rebuilding the dedupe index
    /// from the `raw` records within the dedupe window.
    pub fn open(
        journal: Arc<dyn Journal>,
        settings: CollectorSettings,
    ) -> Result<Self, CollectError> {
        let partitions = journal.partitions(topic::RAW).map_err(journal_error)?;
        let dedupe = DedupeIndex::new(settings.dedupe_window_micros);
        let horizon = now_micros() - settings.dedupe_window_micros;
        let horizon_ms = horizon / 1000;
        let mut loaded = 0usize;
        for p in 0..partitions {
            let mut from = journal.start(topic::RAW, p).map_err(journal_error)?;
            let end = journal.end(topic::RAW, p).map_err(journal_error)?;
            while from < end {
                let records = journal
                    .read(topic::RAW, p, from, 4096, 8 << 20)
                    .map_err(journal_error)?;
                let Some(last) = records.last() else { break };
                from = last.offset + 1;
                for r in records.iter().filter(|r| r.timestamp_ms >= horizon_ms) {
                    #[derive(serde::Deserialize)]
                    struct Ids<'a> {
                        #[serde(borrow)]
                        event_id: std::borrow::Cow<'a, str>,
                        #[serde(borrow)]
                        source: std::borrow::Cow<'a, str>,
                        received_at: i64,
                    }
                    // A raw record the collector wrote is always readable; one that is not
                    // cannot be a duplicate of anything, so skipping it is safe.
                    if let Ok(ids) = serde_json::from_slice::<Ids>(&r.value)
                        && ids.received_at >= horizon
                    {
                        dedupe.insert_committed(
                            dedupe::key(&ids.source, &ids.event_id),
                            ids.received_at,
                        );
                        loaded += 1;
                    }
                }
            }
        }
        tracing::info!(loaded, "dedupe index rebuilt from raw");
        Ok(Self {
            journal,
            settings,
            dedupe,
            partitions,
        })
    }

    /// Settings in force.
    pub fn settings(&self) -> &CollectorSettings {
        &self.settings
    }

    /// Refuses new work when the journal cannot take it: failed, or a backlog over the limit.
    pub fn check_capacity(&self) -> Result<(), CollectError> {
        if self.journal.is_failed() {
            return Err(CollectError::Unavailable(
                "journal failed; restarting".into(),
            ));
        }
        let mut backlog = 0u64;
        for p in 0..self.partitions {
            // A quarantined partition refuses its own appends; it must not stop intake for the
            // events that route to healthy partitions.
            let (end, done) = match (
                self.journal.end(topic::RAW, p),
                self.journal.committed(RUNNER_GROUP, topic::RAW, p),
                self.journal.start(topic::RAW, p),
            ) {
                (Ok(end), Ok(done), Ok(start)) => (end, done.unwrap_or(start)),
                (Err(JournalError::Quarantined { .. }), _, _) => continue,
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Err(journal_error(e)),
            };
            backlog += end.saturating_sub(done);
        }
        if backlog > self.settings.max_backlog_events {
            return Err(CollectError::Unavailable(format!(
                "{backlog} events wait for processing (limit {})",
                self.settings.max_backlog_events
            )));
        }
        Ok(())
    }

    /// Ingests one native request. Resolves once every accepted event is durable.
    pub async fn ingest(&self, req: IngestRequest) -> Result<IngestOutcome, CollectError> {
        self.check_capacity()?;
        let body = decompress(&req.body, req.encoding, self.settings.max_body_bytes)?;
        let events = split_events(&body, self.settings.max_events)?;
        let received_at = now_micros();
        let (tx, rx) = watch::channel(None);
        let mut outcome = IngestOutcome::default();
        // (index, event id, routing key) of every event this request reserved, in order.
        let mut staged: Vec<Staged> = Vec::with_capacity(events.len());
        let mut waits = Vec::new();
        for (index, raw) in events.iter().enumerate() {
            if raw.get().len() > self.settings.max_event_bytes {
                outcome.rejected.push(Rejection {
                    index,
                    event_id: None,
                    kind: ErrorKind::TooLarge,
                    reason: format!(
                        "event is {} bytes, over the limit of {}",
                        raw.get().len(),
                        self.settings.max_event_bytes
                    ),
                });
                continue;
            }
            let head = match check_native(raw) {
                Ok(h) => h,
                Err((kind, reason)) => {
                    outcome.rejected.push(Rejection {
                        index,
                        event_id: None,
                        kind,
                        reason,
                    });
                    continue;
                }
            };
            let event_id = match head.event_id {
                Some(id) => id.into_owned(),
                None => uuid::Uuid::now_v7().to_string(),
            };
            let route = routing_key(
                head.user_id.as_deref(),
                head.anonymous_id.as_deref(),
                &event_id,
            );
            let partition = partition_for(route, self.partitions);
            let key = dedupe::key(&req.source, &event_id);
            let item = Staged {
                index,
                event_id,
                partition,
                key,
            };
            match self.dedupe.reserve(key, received_at, &rx) {
                Reserve::New => staged.push(item),
                Reserve::Duplicate => outcome.duplicates += 1,
                Reserve::Wait(other) => waits.push((item, other)),
            }
        }
        // Settle on every exit path (including a panic or an early return) so no reservation
        // stays pending forever.
        let mut guard = Settle {
            index: &self.dedupe,
            keys: staged.iter().map(|s| s.key).collect(),
            tx,
            ok: false,
        };
        for (item, mut other) in waits {
            let finished =
                tokio::time::timeout(PENDING_WAIT, other.wait_for(|v| v.is_some())).await;
            if finished.is_err() {
                return Err(CollectError::Unavailable(format!(
                    "event {} is being written by another request; retry",
                    item.event_id
                )));
            }
            match self.dedupe.reserve(item.key, received_at, &guard.rx()) {
                Reserve::New => {
                    guard.keys.push(item.key);
                    staged.push(item);
                }
                Reserve::Duplicate => outcome.duplicates += 1,
                Reserve::Wait(_) => {
                    return Err(CollectError::Unavailable(format!(
                        "event {} is being written by another request; retry",
                        item.event_id
                    )));
                }
            }
        }
        staged.sort_by_key(|s| s.index);

        let mut per_partition: Vec<Vec<Bytes>> = vec![Vec::new(); self.partitions as usize];
        for s in &staged {
            let raw = events[s.index];
            let record = RawEventRef {
                event_id: &s.event_id,
                source: &req.source,
                protocol: Protocol::Native,
                received_at,
                ip: req.ip.as_deref(),
                user_agent: req.user_agent.as_deref(),
                payload: raw,
            };
            let bytes =
                serde_json::to_vec(&record).map_err(|e| CollectError::Internal(e.to_string()))?;
            per_partition[s.partition as usize].push(Bytes::from(bytes));
        }
        let appends = per_partition
            .into_iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(p, records)| {
                let journal = &self.journal;
                async move {
                    (
                        p as u32,
                        journal.append(topic::RAW, p as u32, records).await,
                    )
                }
            });
        let results = futures::future::join_all(appends).await;
        let failed: Vec<(u32, JournalError)> = results
            .into_iter()
            .filter_map(|(p, r)| r.err().map(|e| (p, e)))
            .collect();
        if let Some((_, first)) = failed.first() {
            // Events of partitions that did commit stay committed (a retry reports them as
            // duplicates); the failed partitions' reservations are dropped.
            let failed_parts: Vec<u32> = failed.iter().map(|(p, _)| *p).collect();
            let (bad, good): (Vec<&Staged>, Vec<&Staged>) = staged
                .iter()
                .partition(|s| failed_parts.contains(&s.partition));
            self.dedupe
                .settle(&good.iter().map(|s| s.key).collect::<Vec<_>>(), true);
            self.dedupe
                .settle(&bad.iter().map(|s| s.key).collect::<Vec<_>>(), false);
            guard.keys.clear();
            crate::metrics::append_failed(bad.len());
            return Err(journal_error_ref(first));
        }
        guard.ok = true;
        outcome.accepted = staged.len();
        crate::metrics::ingested(&outcome);
        Ok(outcome)
    }

    /// Entries in the dedupe index.
    pub fn dedupe_len(&self) -> usize {
        self.dedupe.len()
    }
}

struct Staged {
    index: usize,
    event_id: String,
    partition: u32,
    key: Key,
}

struct Settle<'a> {
    index: &'a DedupeIndex,
    keys: Vec<Key>,
    tx: watch::Sender<Option<bool>>,
    ok: bool,
}

impl Settle<'_> {
    fn rx(&self) -> watch::Receiver<Option<bool>> {
        self.tx.subscribe()
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.index.settle(&self.keys, self.ok);
        let _ = self.tx.send(Some(self.ok));
    }
}

fn journal_error(e: JournalError) -> CollectError {
    journal_error_ref(&e)
}

fn journal_error_ref(e: &JournalError) -> CollectError {
    match e.kind() {
        ErrorKind::Unavailable | ErrorKind::Overloaded => CollectError::Unavailable(e.to_string()),
        _ => CollectError::Internal(e.to_string()),
    }
}

/// Decodes a `raw` record (for tools and tests).
pub fn decode_raw(bytes: &[u8]) -> Result<RawEvent, serde_json::Error> {
    serde_json::from_slice(bytes)
}
