//! [`Collector`]: one request in, a durable append to `raw` out.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;
use sluice_event::{
    ErrorKind, Position, Protocol, RawEvent, RawEventRef, Rejection, now_micros, routing_key, topic,
};
use sluice_journal::{Journal, JournalError, StageHealth, partition_for};
use tokio::sync::watch;

use crate::dedupe::{self, DedupeIndex, Key, Reserve};
use crate::follow::{Follow, raw_ids};
use crate::quota::{Demand, SourceQuotas};
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

/// Where the request came from, as the transport saw it.
#[derive(Clone, Debug, Default)]
pub struct Origin {
    /// Client address (`None` when it must not be recorded, as with `SP-Anonymous`).
    pub ip: Option<String>,
    /// Client `User-Agent`.
    pub user_agent: Option<String>,
}

/// One event a protocol decoder produced, ready to be stamped and appended.
#[derive(Clone, Debug)]
pub struct Item<'a> {
    /// The source it is ingested under (decides the dedupe scope).
    pub source: Arc<str>,
    /// How it arrived; decides how the runner reads `payload`.
    pub protocol: Protocol,
    /// The client's event id (`None`: the collector stamps a UUIDv7).
    pub event_id: Option<String>,
    /// Known user, for routing.
    pub user_id: Option<String>,
    /// Device or cookie id, for routing.
    pub anonymous_id: Option<String>,
    /// Snowplow's network user id (`sp` cookie).
    pub network_user_id: Option<String>,
    /// A Kinesis producer's partition key (routes events that name no user).
    pub partition_key: Option<String>,
    /// The event as sent, or as the decoder rebuilt it (Snowplow GET, Segment batch merge).
    pub payload: Cow<'a, RawValue>,
}

/// What became of one slot of a [`Collector::submit`] call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// Appended by this request at this `raw` position.
    Appended(Position),
    /// Already acked within the dedupe window, or repeated within this request: the first
    /// copy's position.
    Duplicate(Position),
    /// Refused; the outcome's `rejected` list says why.
    Rejected,
}

/// The answer to [`Collector::submit`].
#[derive(Clone, Debug)]
pub struct Submitted {
    /// Counts and rejections, as answered to native clients.
    pub outcome: IngestOutcome,
    /// One placement per submitted slot, in order.
    pub placements: Vec<Placement>,
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

/// Back-pressure from later stages: `Some(reason)` while intake should refuse new events
/// (a consumer stage behind its bound).
pub type Gate = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The collector: decode, check, stamp, dedupe, route, append.
pub struct Collector {
    journal: Arc<dyn Journal>,
    settings: CollectorSettings,
    dedupe: Arc<DedupeIndex>,
    /// On a journal other nodes append to: how far this node has read `raw` into `dedupe`.
    follow: Option<Arc<Follow>>,
    partitions: u32,
    /// The journal as intake sees it: the last append failed or not.
    health: StageHealth,
    gate: Option<Gate>,
    /// Events/s and bytes/s per source.
    quotas: SourceQuotas,
}

impl Collector {
    /// Builds the collector over a journal that has the `raw` topic, rebuilding the dedupe index
    /// from the `raw` records within the dedupe window.
    pub fn open(
        journal: Arc<dyn Journal>,
        settings: CollectorSettings,
    ) -> Result<Self, CollectError> {
        let partitions = journal.partitions(topic::RAW).map_err(journal_error)?;
        let max_entries = settings.dedupe_max_entries;
        let dedupe = DedupeIndex::new(settings.dedupe_window_micros, max_entries);
        let horizon = now_micros() - settings.dedupe_window_micros;
        let horizon_ms = horizon / 1000;
        let mut acked = Vec::new();
        // Only the newest records can be in the bounded index: read no further back, so a
        // restart costs the same however much `raw` holds.
        let per_partition = max_entries.div_ceil(partitions.max(1) as usize) as u64;
        let mut ends = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let end = journal.end(topic::RAW, p).map_err(journal_error)?;
            ends.push(end);
            let start = journal.start(topic::RAW, p).map_err(journal_error)?;
            let read = |at| journal.read(topic::RAW, p, at, 4096, 8 << 20);
            let found = newest(read, (start, end), per_partition, |r| {
                if r.timestamp_ms < horizon_ms {
                    return None;
                }
                let pos = Position {
                    partition: p,
                    offset: r.offset,
                };
                let (at, key) = raw_ids(&r.value).filter(|(at, _)| *at >= horizon)?;
                Some((at, key, pos))
            })?;
            acked.extend(found);
        }
        // Filed oldest first across partitions, so what the bound evicts is the oldest.
        acked.sort_unstable_by_key(|(at, _, _)| *at);
        for (at, key, pos) in &acked {
            dedupe.insert_committed(*key, *at, *pos);
        }
        tracing::info!(loaded = acked.len(), "dedupe index rebuilt from raw");
        let quotas = SourceQuotas::new(settings.quotas.clone());
        let follow = journal.shared().then(|| Arc::new(Follow::new(&ends)));
        Ok(Self {
            journal,
            quotas,
            settings,
            dedupe: Arc::new(dedupe),
            follow,
            partitions,
            health: StageHealth::detached(),
            gate: None,
        })
    }

    /// On a journal that other nodes append to, the task that reads their `raw` records into
    /// this node's dedupe index (see `follow.rs`); it runs until dropped and must run for
    /// appends to go through. `None` on a journal only this process writes.
    pub fn follower(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let follow = self.follow.clone()?;
        Some(follow.run(
            self.journal.clone(),
            self.dedupe.clone(),
            self.settings.dedupe_window_micros,
        ))
    }

    /// Reports each append's outcome to `health` (`/health`: can the journal take events?).
    pub fn with_health(mut self, health: StageHealth) -> Self {
        self.health = health;
        self
    }

    /// Refuses new events (503 with the gate's reason) while `gate` says so.
    pub fn with_gate(mut self, gate: Gate) -> Self {
        self.gate = Some(gate);
        self
    }

    /// Settings in force.
    pub fn settings(&self) -> &CollectorSettings {
        &self.settings
    }

    /// Refuses new work when the journal cannot take it (failed, or a backlog over the limit) or
    /// when the gate says a later stage is behind.
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
        if let Some(reason) = self.gate.as_ref().and_then(|gate| gate()) {
            return Err(CollectError::Unavailable(reason));
        }
        Ok(())
    }

    /// Ingests one native request (`POST /v1/events`). Resolves once every accepted event is
    /// durable.
    pub async fn ingest(&self, req: IngestRequest) -> Result<IngestOutcome, CollectError> {
        self.check_capacity()?;
        let body = decompress(&req.body, req.encoding, self.settings.max_body_bytes)?;
        let events = split_events(&body, self.settings.max_events)?;
        let source: Arc<str> = Arc::from(req.source.as_str());
        let items = events
            .iter()
            .map(|raw| {
                let head = check_native(raw)?;
                Ok(Item {
                    source: source.clone(),
                    protocol: Protocol::Native,
                    event_id: head.event_id.map(Cow::into_owned),
                    user_id: head.user_id.map(Cow::into_owned),
                    anonymous_id: head.anonymous_id.map(Cow::into_owned),
                    network_user_id: None,
                    partition_key: None,
                    payload: Cow::Borrowed(*raw),
                })
            })
            .collect();
        let origin = Origin {
            ip: req.ip,
            user_agent: req.user_agent,
        };
        Ok(self.submit(&origin, items).await?.outcome)
    }

    /// Appends events that a protocol decoder produced, one slot per event of the request (a
    /// decoder's per-event rejection stays in its slot so that indexes match the request).
    /// Checks size, stamps ids, dedupes on (source, event id), routes, appends and resolves once
    /// every accepted event is durable. `Err` means nothing of this request was acked (events
    /// of partitions that did commit are reported as duplicates on the client's retry).
    pub async fn submit(
        &self,
        origin: &Origin,
        items: Vec<Result<Item<'_>, (ErrorKind, String)>>,
    ) -> Result<Submitted, CollectError> {
        self.check_capacity()?;
        self.take_quota(items.iter().flatten())?;
        self.submit_admitted(origin, items).await
    }

    /// Takes what `items` need of their sources' quotas, or refuses them all
    /// ([`CollectError::Throttled`]). [`Collector::submit`] does this itself; a caller that
    /// splits one request over several [`Collector::submit_admitted`] calls does it once first.
    pub fn take_quota<'a, 'b: 'a>(
        &self,
        items: impl Iterator<Item = &'a Item<'b>>,
    ) -> Result<(), CollectError> {
        if self.quotas.enabled() {
            self.quotas.admit(&demands(items), Instant::now())?;
        }
        Ok(())
    }

    /// [`Collector::submit`] for items whose quota was taken already.
    pub async fn submit_admitted(
        &self,
        origin: &Origin,
        items: Vec<Result<Item<'_>, (ErrorKind, String)>>,
    ) -> Result<Submitted, CollectError> {
        self.check_capacity()?;
        let received_at = now_micros();
        let (tx, rx) = watch::channel(None);
        let mut req = Request {
            outcome: IngestOutcome::default(),
            placements: vec![Placement::Rejected; items.len()],
            staged: Vec::with_capacity(items.len()),
            repeats: Vec::new(),
            stored: Vec::new(),
        };
        let admitted: Vec<Staged<'_>> = items
            .into_iter()
            .enumerate()
            .filter_map(|(index, item)| self.admit(index, item, &mut req.outcome.rejected))
            .collect();
        // All at once: a request waits only for requests that reserved before it began, so two
        // requests sharing events never wait for each other.
        let keys: Vec<Key> = admitted.iter().map(|s| s.key).collect();
        let reserves = self.dedupe.reserve_all(&keys, received_at, &rx);
        let mut waits = Vec::new();
        for (s, reserve) in admitted.into_iter().zip(reserves) {
            waits.extend(req.reserved(s, reserve));
        }
        // Settle on every exit path (including a panic or an early return) so no reservation
        // stays pending forever.
        let mut guard = Settle {
            index: &self.dedupe,
            keys: req.staged.iter().map(|s| s.key).collect(),
            tx,
            placed: None,
        };
        for (s, other) in waits {
            self.await_other(s, other, received_at, &mut guard, &mut req)
                .await?;
        }
        req.staged.sort_by_key(|s| s.index);

        let firsts = self.append_staged(&mut req, origin, received_at).await?;
        let (mut placed, failed) = req.place(&firsts);
        placed.extend(req.stored.iter().map(|&(k, pos)| (k, Some(pos))));
        guard.keys.clear();
        self.dedupe.settle(placed);
        if let Some(e) = firsts.iter().flatten().find_map(|r| r.as_ref().err()) {
            // Events of partitions that did commit stay committed (a retry reports them as
            // duplicates); the failed partitions' reservations are dropped.
            crate::metrics::append_failed(failed);
            guard.placed = Some(false);
            self.health.failing(e);
            return Err(journal_error_ref(e));
        }
        if firsts.iter().any(Option::is_some) {
            self.health.ok();
        }
        guard.placed = Some(true);
        req.place_repeats();
        req.outcome.accepted = req.staged.len();
        crate::metrics::ingested(&req.outcome);
        Ok(Submitted {
            outcome: req.outcome,
            placements: req.placements,
        })
    }

    /// Checks one slot's size, stamps its event id and routes it; `None` when it is rejected.
    fn admit<'a>(
        &self,
        index: usize,
        item: Result<Item<'a>, (ErrorKind, String)>,
        rejected: &mut Vec<Rejection>,
    ) -> Option<Staged<'a>> {
        let item = match item {
            Ok(item) => item,
            Err((kind, reason)) => {
                rejected.push(Rejection {
                    index,
                    event_id: None,
                    kind,
                    reason,
                });
                return None;
            }
        };
        let len = item.payload.get().len();
        if len > self.settings.max_event_bytes {
            rejected.push(Rejection {
                index,
                event_id: item.event_id.clone(),
                kind: ErrorKind::TooLarge,
                reason: format!(
                    "event is {len} bytes, over the limit of {}",
                    self.settings.max_event_bytes
                ),
            });
            return None;
        }
        let event_id = match &item.event_id {
            Some(id) => id.clone(),
            None => uuid::Uuid::now_v7().to_string(),
        };
        let route = routing_key(
            item.user_id.as_deref(),
            item.anonymous_id.as_deref(),
            item.partition_key.as_deref().unwrap_or(&event_id),
        );
        Some(Staged {
            index,
            partition: partition_for(route, self.partitions),
            key: dedupe::key(&item.source, &event_id),
            event_id,
            item,
        })
    }

    /// Waits for the other request writing the same event to end, then reserves again.
    async fn await_other<'a>(
        &self,
        s: Staged<'a>,
        mut other: watch::Receiver<Option<bool>>,
        received_at: i64,
        guard: &mut Settle<'_>,
        req: &mut Request<'a>,
    ) -> Result<(), CollectError> {
        let busy = |s: &Staged<'_>| {
            CollectError::Unavailable(format!(
                "event {} is being written by another request; retry",
                s.event_id
            ))
        };
        let finished = tokio::time::timeout(PENDING_WAIT, other.wait_for(|v| v.is_some())).await;
        if finished.is_err() {
            return Err(busy(&s));
        }
        let key = s.key;
        let reserve = self.dedupe.reserve(key, received_at, &guard.rx());
        let new = matches!(reserve, Reserve::New);
        if let Some((s, _)) = req.reserved(s, reserve) {
            return Err(busy(&s));
        }
        if new {
            guard.keys.push(key);
        }
        Ok(())
    }

    /// Each staged event as a `raw` record, grouped by partition.
    fn encode(
        &self,
        staged: &[Staged<'_>],
        origin: &Origin,
        received_at: i64,
    ) -> Result<Vec<Vec<Bytes>>, CollectError> {
        let mut per_partition: Vec<Vec<Bytes>> = vec![Vec::new(); self.partitions as usize];
        for s in staged {
            let record = RawEventRef {
                event_id: &s.event_id,
                source: &s.item.source,
                protocol: s.item.protocol,
                received_at,
                ip: origin.ip.as_deref(),
                user_agent: origin.user_agent.as_deref(),
                network_user_id: s.item.network_user_id.as_deref(),
                partition_key: s.item.partition_key.as_deref(),
                replay_of: None,
                payload: &s.item.payload,
            };
            let mut bytes = Vec::with_capacity(256 + record.payload.get().len());
            sluice_event::json::to_writer(&mut bytes, &record)
                .map_err(|e| CollectError::Internal(e.to_string()))?;
            per_partition[s.partition as usize].push(Bytes::from(bytes));
        }
        Ok(per_partition)
    }

    /// Appends the staged events of every partition at once; per partition, the first offset
    /// written or the error (`None`: nothing to write there).
    async fn append_staged(
        &self,
        req: &mut Request<'_>,
        origin: &Origin,
        received_at: i64,
    ) -> Result<Firsts, CollectError> {
        let Some(follow) = &self.follow else {
            let per_partition = self.encode(&req.staged, origin, received_at)?;
            return Ok(self.append(per_partition, None).await);
        };
        // A shared `raw`: conditional appends, again after reading what other nodes stored.
        let mut firsts: Firsts = (0..self.partitions).map(|_| None).collect();
        for attempt in 0..=MAX_CONTENDED {
            // Read after every reservation of this request: a record found after that point is
            // noted against the reservation and dropped here.
            let seen = follow.seen();
            let pending = req
                .staged
                .iter()
                .filter(|s| firsts[s.partition as usize].is_none());
            let stored = self
                .dedupe
                .take_observed(pending.map(|s| s.key).collect::<Vec<_>>());
            req.drop_stored(stored);
            let mut per_partition = self.encode(&req.staged, origin, received_at)?;
            for (p, records) in per_partition.iter_mut().enumerate() {
                if firsts[p].is_some() {
                    records.clear();
                }
            }
            let mut contended = Vec::new();
            for (p, r) in self
                .append(per_partition, Some(&seen))
                .await
                .into_iter()
                .enumerate()
            {
                match r {
                    Some(Err(JournalError::Contended { end, .. })) if attempt < MAX_CONTENDED => {
                        contended.push((p as u32, end));
                    }
                    Some(r) => firsts[p] = Some(r),
                    None => {}
                }
            }
            if contended.is_empty() {
                break;
            }
            crate::metrics::contended(contended.len());
            for (p, end) in contended {
                if !follow.reached(p, end, PENDING_WAIT).await {
                    firsts[p as usize] = Some(Err(JournalError::Unavailable(format!(
                        "raw partition {p} could not be read up to {end} from other nodes; retry"
                    ))));
                }
            }
        }
        Ok(firsts)
    }

    /// Appends every partition's records at once (conditionally on `seen`, per partition, on a
    /// shared journal); per partition, the first offset written or the error (`None`: nothing
    /// to write there).
    async fn append(&self, per_partition: Vec<Vec<Bytes>>, seen: Option<&[u64]>) -> Firsts {
        let appends = per_partition
            .into_iter()
            .enumerate()
            .filter(|(_, r)| !r.is_empty())
            .map(|(p, records)| async move {
                let r = match seen {
                    None => self.journal.append(topic::RAW, p as u32, records).await,
                    Some(seen) => {
                        let seen = seen.get(p).copied();
                        self.journal
                            .append_shared(topic::RAW, p as u32, records, seen)
                            .await
                    }
                };
                (p, r)
            });
        let mut firsts: Firsts = (0..self.partitions).map(|_| None).collect();
        for (p, r) in futures::future::join_all(appends).await {
            firsts[p] = Some(r);
        }
        firsts
    }

    /// Entries in the dedupe index.
    pub fn dedupe_len(&self) -> usize {
        self.dedupe.len()
    }
}

/// Per partition, the first offset appended or the error (`None`: nothing to append there).
type Firsts = Vec<Option<Result<u64, JournalError>>>;

/// Most times a request appends again to a shared partition that other nodes keep appending to.
const MAX_CONTENDED: u32 = 16;

struct Staged<'a> {
    index: usize,
    event_id: String,
    partition: u32,
    key: Key,
    item: Item<'a>,
}

/// One [`Collector::submit`] call's bookkeeping.
struct Request<'a> {
    outcome: IngestOutcome,
    placements: Vec<Placement>,
    /// The events this request appends.
    staged: Vec<Staged<'a>>,
    /// (slot, key) of events repeated within this request.
    repeats: Vec<(usize, Key)>,
    /// Events found stored (by another node, or by an earlier try of this request) before this
    /// request appended them, with where.
    stored: Vec<(Key, Position)>,
}

impl<'a> Request<'a> {
    /// Records what the dedupe index answered for `s`; gives it back with the other request's
    /// receiver when it must wait for that request.
    fn reserved(
        &mut self,
        s: Staged<'a>,
        reserve: Reserve,
    ) -> Option<(Staged<'a>, watch::Receiver<Option<bool>>)> {
        match reserve {
            Reserve::New => self.staged.push(s),
            Reserve::Duplicate(Some(at)) => {
                self.outcome.duplicates += 1;
                self.placements[s.index] = Placement::Duplicate(at);
            }
            // A repeat within this request: placed where its first copy lands.
            Reserve::Duplicate(None) => {
                self.outcome.duplicates += 1;
                self.repeats.push((s.index, s.key));
            }
            Reserve::Wait(other) => return Some((s, other)),
        }
        None
    }

    /// Places the staged events from each partition's first appended offset (staged events
    /// are in request order, and so in append order within a partition). Returns what to
    /// settle in the dedupe index and how many events failed.
    fn place(
        &mut self,
        firsts: &[Option<Result<u64, JournalError>>],
    ) -> (Vec<(Key, Option<Position>)>, usize) {
        let mut next: Vec<Option<u64>> = firsts
            .iter()
            .map(|f| f.as_ref().and_then(|r| r.as_ref().ok()).copied())
            .collect();
        let mut failed = 0;
        let placed = self
            .staged
            .iter()
            .map(|s| {
                let pos = next[s.partition as usize].as_mut().map(|offset| {
                    *offset += 1;
                    Position {
                        partition: s.partition,
                        offset: *offset - 1,
                    }
                });
                match pos {
                    Some(pos) => self.placements[s.index] = Placement::Appended(pos),
                    None => failed += 1,
                }
                (s.key, pos)
            })
            .collect();
        (placed, failed)
    }

    /// Takes the events found stored out of those to append: each is answered as a duplicate
    /// at the position where it is stored.
    fn drop_stored(&mut self, stored: Vec<(Key, Position)>) {
        for (key, pos) in stored {
            if let Some(i) = self.staged.iter().position(|s| s.key == key) {
                let s = self.staged.remove(i);
                self.outcome.duplicates += 1;
                self.placements[s.index] = Placement::Duplicate(pos);
                self.stored.push((key, pos));
            }
        }
    }

    /// Places each repeat within the request where its first copy landed.
    fn place_repeats(&mut self) {
        if self.repeats.is_empty() {
            return;
        }
        let first: std::collections::HashMap<Key, Position> = self
            .staged
            .iter()
            .filter_map(|s| match self.placements[s.index] {
                Placement::Appended(p) => Some((s.key, p)),
                _ => None,
            })
            .chain(self.stored.iter().copied())
            .collect();
        for (index, key) in self.repeats.drain(..) {
            if let Some(pos) = first.get(&key) {
                self.placements[index] = Placement::Duplicate(*pos);
            }
        }
    }
}

/// Drops this request's pending reservations if it ends before they were settled, and tells
/// waiting requests how it ended.
struct Settle<'a> {
    index: &'a DedupeIndex,
    keys: Vec<Key>,
    tx: watch::Sender<Option<bool>>,
    placed: Option<bool>,
}

impl Settle<'_> {
    fn rx(&self) -> watch::Receiver<Option<bool>> {
        self.tx.subscribe()
    }
}

impl Drop for Settle<'_> {
    fn drop(&mut self) {
        self.index.settle(self.keys.iter().map(|&k| (k, None)));
        let _ = self.tx.send(Some(self.placed.unwrap_or(false)));
    }
}

pub(crate) fn journal_error(e: JournalError) -> CollectError {
    journal_error_ref(&e)
}

/// What `keep` makes of each of the newest records of a partition (offsets `start..end`,
/// `read(at)` giving those from `at` on, as [`Journal::read`] does), up to `budget` records,
/// counted in records: an unclean restart makes the journal continue at its durable floor, an
/// offset gap, so how many records lie below `end` cannot be told from offsets (counting offsets
/// left the records before the last two gaps out of the dedupe index, and a request retried
/// across two restarts was stored twice). It walks back a window at a time, each as wide as the
/// records still wanted; a window inside a gap holds none, and the next looks twice as far back.
fn newest<T>(
    mut read: impl FnMut(u64) -> Result<Vec<sluice_journal::Record>, JournalError>,
    (start, end): (u64, u64),
    budget: u64,
    mut keep: impl FnMut(&sluice_journal::Record) -> Option<T>,
) -> Result<Vec<T>, CollectError> {
    let mut out = Vec::new();
    let (mut below, mut left, mut step) = (end, budget, budget);
    // The window's newest `left` records, as `keep` made them.
    let mut window = std::collections::VecDeque::new();
    while below > start && left > 0 {
        let from = start.max(below.saturating_sub(step));
        let mut at = from;
        'window: while at < below {
            let records = read(at).map_err(journal_error)?;
            let Some(last) = records.last() else { break };
            at = last.offset + 1;
            for r in &records {
                // Past the window: the read stepped over a gap into records already read.
                if r.offset >= below {
                    break 'window;
                }
                if window.len() as u64 == left {
                    window.pop_front();
                }
                window.push_back(keep(r));
            }
        }
        if window.is_empty() {
            step = step.saturating_mul(2);
        } else {
            left -= window.len() as u64;
            out.extend(window.drain(..).flatten());
            step = left;
        }
        below = from;
    }
    Ok(out)
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

/// What a request asks of each source's quota: its events and their bytes.
fn demands<'a, 'b: 'a>(items: impl Iterator<Item = &'a Item<'b>>) -> Vec<Demand> {
    let mut out: Vec<Demand> = Vec::new();
    for item in items {
        let bytes = item.payload.get().len() as u64;
        match out.iter_mut().find(|d| d.source == item.source) {
            Some(d) => {
                d.events += 1;
                d.bytes += bytes;
            }
            None => out.push(Demand {
                source: item.source.clone(),
                events: 1,
                bytes,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_journal::Record;

    /// A partition holding `offsets`, read as the journal reads it (from an offset on, skipping
    /// gaps), four records a read, each read counted.
    fn reader<'a>(
        offsets: &'a [u64],
        reads: &'a mut usize,
    ) -> impl FnMut(u64) -> Result<Vec<Record>, JournalError> + 'a {
        move |at| {
            *reads += 1;
            let from = offsets.iter().filter(|&&o| o >= at);
            let records = from.take(4).map(|&offset| Record {
                offset,
                timestamp_ms: 0,
                value: Bytes::new(),
            });
            Ok(records.collect())
        }
    }

    /// The offsets `newest` keeps of a partition holding `offsets`, and the reads it took.
    fn newest_of(offsets: &[u64], budget: u64) -> (Vec<u64>, usize) {
        let mut reads = 0;
        let end = offsets.last().map_or(0, |o| o + 1);
        let start = offsets.first().copied().unwrap_or(0);
        let read = reader(offsets, &mut reads);
        let mut kept = newest(read, (start, end), budget, |r| Some(r.offset)).unwrap();
        kept.sort_unstable();
        (kept, reads)
    }

    #[test]
    fn the_newest_records_are_counted_in_records_across_offset_gaps() {
        // Three runs of ten records, each after an unclean restart at the next floor.
        let runs: Vec<u64> = (0..10)
            .chain((1 << 20)..(1 << 20) + 10)
            .chain((2 << 20)..(2 << 20) + 10)
            .collect();
        for budget in [1, 5, 10, 15, 25, 30, 1000] {
            let from = runs.len().saturating_sub(budget as usize);
            let (kept, reads) = newest_of(&runs, budget);
            assert_eq!(kept, runs[from..], "budget {budget}");
            // A gap is crossed in a few windows, each twice as wide, not a budget at a time.
            assert!(reads < 80, "budget {budget}: {reads} reads");
        }
        let dense: Vec<u64> = (5..105).collect();
        assert_eq!(newest_of(&dense, 30).0, dense[70..]);
        assert_eq!(newest_of(&dense, 100).0, dense);
        assert!(newest_of(&[], 10).0.is_empty());
        // A record that keeps nothing still counts.
        let mut reads = 0;
        let odd = |r: &Record| (r.offset % 2 == 1).then_some(r.offset);
        let kept = newest(reader(&dense, &mut reads), (5, 105), 10, odd).unwrap();
        assert_eq!(kept.len(), 5);
    }
}
