//! [`Projector`]: the `good` → hot tier loop, exactly once.
//!
//! How exactly-once holds:
//! 1. On start it reads the positions stored under consumer [`CONSUMER`] (partition → next
//!    offset) from the store itself, never from local state, and resumes there.
//! 2. Per batch it reads durable records from every partition (round robin, at most
//!    `batch_events`), loads the profiles and counter states the batch touches, applies the
//!    events in journal order, and writes every changed value *and* the new positions in one
//!    [`WriteBatch`], which backends apply atomically and only if the stored positions are
//!    still the ones it started from. A batch is therefore in the store entirely, with its
//!    positions, or not at all; re-reading the same offsets after a crash finds them below the
//!    stored positions and skips them.
//! 3. A failed write is retried as the same batch. If a retry meets a position conflict, the
//!    positions are read back: equal to the batch's new positions means the earlier attempt did
//!    land (an ambiguous failure), anything else means another writer owns the partition, and
//!    the projection stops.
//! 4. A record that does not decode is logged with its position, counted, and skipped (its
//!    position still advances), so it cannot stall a partition.
//! 5. An [`EventHook`] (the online models) sees every event once per *its* positions: the
//!    projector starts reading at the smaller of the store's and the hook's positions and
//!    passes `live = false` for events the store already holds, which the hook may learn from
//!    but whose scores are not written.
//! 6. On shutdown it projects everything below each partition's durable end as of that moment,
//!    lets the hook checkpoint, and returns.
//! 7. The values a batch wrote stay decoded in a [`ValueCache`], from which the next batch
//!    takes them instead of reading the store (`cache.rs` says why a cached value is the stored
//!    one).
//! 8. A profile's recent events are stored apart, one key each (`profile.rs`): a batch reads
//!    none of them, writes the new ones and deletes those that fell out of the last N, in the
//!    same atomic batch as the profile.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use sluice_event::{Event, Position, topic};
use sluice_journal::{
    Backoff, ConsumerProgress, ConsumerStatus, Cursor, Journal, Record, StageHealth,
};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::{self, ValueCache};
use crate::counter::CounterState;
use crate::profile::{EventView, Profile};
use crate::store::{HotStore, Positions, WriteBatch};
use crate::{HotError, HotSettings, metrics};

/// The consumer name of the `good` projection's positions.
pub const CONSUMER: &str = "hot/good";

/// How long an idle projector waits on the journal before looking again.
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// Bytes read per partition per batch, about.
const READ_BYTES: usize = 16 << 20;
/// Write retries: first wait, cap, and how many attempts during shutdown.
const RETRY_INITIAL: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(5);
const SHUTDOWN_ATTEMPTS: u32 = 10;
/// How long a partition whose read failed is left alone.
const READ_RETRY: Duration = Duration::from_secs(1);

/// Something that rides along the projection: sees every event once, in journal order per
/// partition, with the profile the projection just updated. The online models are one.
pub trait EventHook: Send + Sync + 'static {
    /// The positions (partition → next offset) the hook's own state reflects.
    fn resume_from(&self) -> Positions;

    /// One event. `profile` is the event's profile after the event was applied (`None` when
    /// the event has no user); its `last_events` holds only this batch's events, as a
    /// profile's earlier recent events are stored apart and not read by the projection.
    /// `live` is false when the store already holds this event (the hook is catching up after
    /// a restart): then changes to `profile` are not written.
    fn on_event(
        &mut self,
        position: Position,
        view: &EventView<'_>,
        profile: Option<&mut Profile>,
        live: bool,
    );

    /// After a batch: every offset below `next` has been seen by the hook.
    fn after_batch(&mut self, next: &Positions);

    /// Shutdown: persist what must survive a restart.
    fn close(&mut self);
}

/// A snapshot of the projection's progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// Positions are loaded and the loop runs.
    pub started: bool,
    /// Per partition: next offset not yet in the store.
    pub next_offsets: Vec<u64>,
    /// Batches written.
    pub batches: u64,
    /// Events written.
    pub events: u64,
    /// Records skipped as undecodable.
    pub skipped: u64,
    /// `run` returned.
    pub stopped: bool,
}

impl ConsumerStatus for ProjectionStatus {
    fn started(&self) -> bool {
        self.started
    }
    fn stopped(&self) -> bool {
        self.stopped
    }
    fn next_offsets(&self) -> &[u64] {
        &self.next_offsets
    }
}

/// A handle on a projector's progress.
pub type ProjectionProgress = ConsumerProgress<ProjectionStatus>;

/// Projects `good` into a [`HotStore`]. See the module docs.
pub struct Projector {
    journal: Arc<dyn Journal>,
    store: Arc<dyn HotStore>,
    settings: Arc<HotSettings>,
    hook: Option<Box<dyn EventHook>>,
    status: watch::Sender<ProjectionStatus>,
    health: StageHealth,
    /// Set while `run` runs: becomes true at shutdown, so a retry loop can stop waiting.
    stop: Option<watch::Receiver<bool>>,
    /// The values the last batches wrote, decoded.
    cache: ValueCache,
}

struct PartitionState {
    id: u32,
    /// What the store holds (`None`: nothing stored yet); the batch's expectation.
    stored: Option<u64>,
    /// Where `good` is read next (it steps over crash gaps).
    cursor: Cursor,
    /// After a read error: do not read before this.
    retry_at: Option<Instant>,
}

impl PartitionState {
    fn store_next(&self) -> u64 {
        self.stored.unwrap_or(0)
    }
}

impl Projector {
    /// A projector of `journal`'s `good` topic into `store`.
    pub fn new(
        journal: Arc<dyn Journal>,
        store: Arc<dyn HotStore>,
        settings: Arc<HotSettings>,
    ) -> Self {
        let cache = ValueCache::new(settings.cache_bytes, store.deletions());
        Self {
            journal,
            store,
            settings,
            hook: None,
            status: watch::Sender::new(ProjectionStatus::default()),
            health: StageHealth::detached(),
            stop: None,
            cache,
        }
    }

    /// Reports each attempt's outcome to `health` (`/health`).
    pub fn with_health(mut self, health: StageHealth) -> Self {
        self.health = health;
        self
    }

    /// Adds a hook (the online models).
    pub fn with_hook(mut self, hook: Box<dyn EventHook>) -> Self {
        self.hook = Some(hook);
        self
    }

    /// A handle on the progress.
    pub fn progress(&self) -> ProjectionProgress {
        ConsumerProgress::new(CONSUMER, topic::GOOD, self.status.subscribe())
    }

    /// Runs until `shutdown` resolves, then projects everything durable at that moment and
    /// returns. Returns early on a position conflict (another writer) or a missing topic.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HotError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let watcher = tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        let status = self.status.clone();
        self.stop = Some(stop_rx.clone());
        let result = self.run_inner(stop_rx).await;
        watcher.abort();
        if let Err(e) = &result {
            tracing::error!(error = %e, "hot projection stopped");
        }
        if let Some(hook) = self.hook.as_mut() {
            hook.close();
        }
        status.send_modify(|s| s.stopped = true);
        result
    }

    async fn run_inner(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), HotError> {
        let partitions = self.journal.partitions(topic::GOOD)?;
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        let stored = loop {
            match self.store.positions(CONSUMER).await {
                Ok(p) => break p,
                Err(e) if e.kind().is_retryable() => {
                    self.health.failing(&e);
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot read hot positions yet");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return Ok(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        };
        let hook_from = self.hook.as_ref().map(|h| h.resume_from());
        let mut parts: Vec<PartitionState> = (0..partitions)
            .map(|id| {
                let stored = stored.get(&id).copied();
                let store_next = stored.unwrap_or(0);
                let next_read = match &hook_from {
                    Some(h) => store_next.min(h.get(&id).copied().unwrap_or(0)),
                    None => store_next,
                };
                PartitionState {
                    id,
                    stored,
                    cursor: Cursor::new(self.journal.clone(), topic::GOOD, id, next_read),
                    retry_at: None,
                }
            })
            .collect();
        tracing::info!(
            backend = self.store.backend(),
            resume_at = ?parts.iter().map(PartitionState::store_next).collect::<Vec<_>>(),
            read_from = ?parts.iter().map(|p| p.cursor.next()).collect::<Vec<_>>(),
            "hot projection started"
        );
        self.publish(&parts, |s| s.started = true);
        let mut round_robin = 0usize;
        loop {
            if *stop.borrow() {
                let targets: Vec<u64> = parts
                    .iter()
                    .map(|p| p.cursor.end().unwrap_or(p.cursor.next()))
                    .collect();
                while self
                    .batch(&mut parts, &mut round_robin, Some(&targets), true)
                    .await?
                    > 0
                {}
                tracing::info!(
                    positions = ?parts.iter().map(PartitionState::store_next).collect::<Vec<_>>(),
                    "hot projection drained"
                );
                return Ok(());
            }
            if self
                .batch(&mut parts, &mut round_robin, None, false)
                .await?
                > 0
            {
                continue;
            }
            let mut waits = tokio::task::JoinSet::new();
            let now = Instant::now();
            for p in &parts {
                let timeout = match p.retry_at {
                    Some(at) if at > now => {
                        let wait = at - now;
                        waits.spawn(tokio::time::sleep(wait));
                        continue;
                    }
                    _ => IDLE_WAIT,
                };
                let (journal, id, next) = (self.journal.clone(), p.id, p.cursor.next());
                waits.spawn(async move { journal.wait_for(topic::GOOD, id, next, timeout).await });
            }
            tokio::select! {
                _ = stop.wait_for(|s| *s) => {}
                _ = waits.join_next() => {}
            }
            waits.abort_all();
        }
    }

    fn publish(&self, parts: &[PartitionState], f: impl FnOnce(&mut ProjectionStatus)) {
        self.status.send_modify(|s| {
            s.next_offsets = parts.iter().map(PartitionState::store_next).collect();
            f(s);
        });
    }

    /// Reads, applies and writes one batch; returns the number of records consumed.
    async fn batch(
        &mut self,
        parts: &mut [PartitionState],
        round_robin: &mut usize,
        targets: Option<&[u64]>,
        shutting_down: bool,
    ) -> Result<usize, HotError> {
        let started = Instant::now();
        let records = self.read(parts, round_robin, targets);
        // A cursor that stepped over a crash gap moves its partition on with no record.
        let stepped = parts.iter().any(|p| p.cursor.next() > p.store_next());
        if records.is_empty() && !stepped {
            return Ok(0);
        }
        let consumed = records.len();
        let (events, skipped) = decode(records);
        let needs_context = self.settings.counters.iter().any(|c| {
            c.key.needs_context() || c.property.as_ref().is_some_and(|p| p.needs_context())
        });
        let index: HashMap<u32, usize> = parts.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        let is_live = |pos: &Position| {
            index
                .get(&pos.partition)
                .is_some_and(|&i| pos.offset >= parts[i].store_next())
        };
        let views: Vec<(Position, bool, EventView<'_>)> = events
            .iter()
            .map(|(pos, e)| (*pos, is_live(pos), EventView::new(e, needs_context)))
            .collect();
        let keys = self.keys_touched(&views);
        let mut state = self.load(keys, shutting_down).await?;
        let (dirty, live_events) = self.apply(&views, &mut state);
        let batch = write_batch(parts, dirty, &mut state)?;
        if !batch.positions.is_empty() {
            self.write_with_retry(&batch, shutting_down).await?;
            self.keep(&batch, state);
        }
        self.advance(parts, &batch);
        metrics::batch(live_events, started.elapsed().as_secs_f64());
        self.publish(parts, |s| {
            s.batches += 1;
            s.events += live_events as u64;
            s.skipped += skipped;
        });
        Ok(consumed)
    }

    /// The store keys a batch reads: the profiles its events touch (all of them when a hook
    /// scores replayed events too) and the counters its live events add to, each once.
    fn keys_touched(&self, views: &[(Position, bool, EventView<'_>)]) -> Vec<String> {
        let mut keys: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let mut want = |k: String| {
            if seen.insert(k.clone()) {
                keys.push(k);
            }
        };
        for (_, live, view) in views {
            if let Some(id) = view.profile_id
                && (*live || self.hook.is_some())
            {
                want(Profile::store_key(id));
            }
            if *live {
                for c in &self.settings.counters {
                    if let Some((key, _)) = c.contribution(view) {
                        want(c.store_key(&key));
                    }
                }
            }
        }
        keys
    }

    /// The values of `keys`: from the cache, else from the store. A stored value that does not
    /// decode starts afresh: stalling every later event of its key would be worse.
    async fn load(&mut self, keys: Vec<String>, shutting_down: bool) -> Result<HotState, HotError> {
        self.cache.check_deletions(self.store.deletions());
        let mut state = HotState::default();
        let mut missing = Vec::new();
        for key in keys {
            match self.cache.take(&key) {
                Some(cache::Value::Profile(p)) => state.add_profile(key, p),
                Some(cache::Value::Counter(c)) => {
                    state.counters.insert(key, c);
                }
                None => missing.push(key),
            }
        }
        let values = self.get_with_retry(&missing, shutting_down).await?;
        for (key, value) in missing.into_iter().zip(values) {
            let Some(bytes) = value else { continue };
            let decoded = if key.starts_with("p:") {
                serde_json::from_slice(&bytes).map(|p| state.add_profile(key.clone(), p))
            } else {
                serde_json::from_slice(&bytes).map(|c| {
                    state.counters.insert(key.clone(), c);
                })
            };
            if let Err(error) = decoded {
                tracing::error!(key = %key, %error, "stored hot value does not decode; starting it afresh");
                metrics::error("corrupt");
            }
        }
        Ok(state)
    }

    /// After `batch` is stored: its values, as written, into the cache.
    fn keep(&mut self, batch: &WriteBatch, mut state: HotState) {
        for (key, bytes) in &batch.puts {
            let value = match state.profiles.remove(key) {
                Some(mut p) => {
                    // Stored apart: what the cache holds is the profile's stored part.
                    p.last_events.clear();
                    cache::Value::Profile(p)
                }
                None => match state.counters.remove(key) {
                    Some(c) => cache::Value::Counter(c),
                    None => continue,
                },
            };
            self.cache.put(key.clone(), value, bytes.len());
        }
        let (hits, misses) = self.cache.hits_and_misses();
        metrics::cache(self.cache.bytes(), self.settings.cache_bytes, hits, misses);
    }

    /// Applies the live events to `state` in journal order and shows every event to the hook;
    /// the keys changed, in first-change order, and the number of live events.
    fn apply(
        &mut self,
        views: &[(Position, bool, EventView<'_>)],
        state: &mut HotState,
    ) -> (Vec<String>, usize) {
        let mut dirty: Vec<String> = Vec::new();
        let mut dirty_seen: HashSet<String> = HashSet::new();
        let mut live_events = 0usize;
        let now_us = sluice_event::now_micros();
        for (pos, live, view) in views {
            if *live {
                live_events += 1;
                metrics::visible_delay(((now_us - view.event.received_at).max(0)) as f64 / 1e6);
                for c in &self.settings.counters {
                    if let Some((key, inc)) = c.contribution(view) {
                        let k = c.store_key(&key);
                        let counter = state.counters.entry(k.clone()).or_default();
                        c.apply(counter, view.event.timestamp, inc);
                        if dirty_seen.insert(k.clone()) {
                            dirty.push(k);
                        }
                    }
                }
            }
            let profile = view.profile_id.map(|id| {
                let k = Profile::store_key(id);
                let p = state.profiles.entry(k.clone()).or_insert_with(|| Profile {
                    id: id.to_string(),
                    ..Profile::default()
                });
                if *live {
                    p.apply(view, &self.settings);
                    if dirty_seen.insert(k.clone()) {
                        dirty.push(k);
                    }
                }
                p
            });
            if let Some(hook) = self.hook.as_mut() {
                hook.on_event(*pos, view, profile, *live);
            }
        }
        (dirty, live_events)
    }

    /// After `batch` is stored: the partitions' stored positions, the hook and the metrics.
    fn advance(&mut self, parts: &mut [PartitionState], batch: &WriteBatch) {
        for p in parts.iter_mut() {
            if let Some((_, new)) = batch.positions.get(&p.id) {
                debug_assert!(*new > p.store_next(), "hot positions only grow");
                p.stored = Some(*new);
                metrics::position(p.id, *new);
            }
        }
        if let Some(hook) = self.hook.as_mut() {
            let seen: Positions = parts.iter().map(|p| (p.id, p.cursor.next())).collect();
            hook.after_batch(&seen);
        }
    }

    /// Reads up to `batch_events` records across partitions, round robin.
    fn read(
        &self,
        parts: &mut [PartitionState],
        round_robin: &mut usize,
        targets: Option<&[u64]>,
    ) -> Vec<(u32, Record)> {
        let mut out = Vec::new();
        let count = parts.len();
        if count == 0 {
            return out;
        }
        let start = *round_robin % count;
        *round_robin = round_robin.wrapping_add(1);
        let now = Instant::now();
        let mut failed = false;
        for i in 0..count {
            let budget = self.settings.batch_events.saturating_sub(out.len());
            if budget == 0 {
                break;
            }
            let p = &mut parts[(start + i) % count];
            if p.retry_at.is_some_and(|at| at > now) {
                continue;
            }
            let limit = targets.and_then(|t| t.get(p.id as usize).copied());
            match p.cursor.read(budget, READ_BYTES, limit) {
                Ok(records) => {
                    p.retry_at = None;
                    out.extend(records.into_iter().map(|r| (p.id, r)));
                }
                Err(error) => {
                    failed = true;
                    self.health.failing(&error);
                    tracing::warn!(partition = p.id, %error, "hot projection cannot read good; retrying");
                    metrics::error("journal");
                    p.retry_at = Some(now + READ_RETRY);
                }
            }
        }
        if !failed && parts.iter().all(|p| p.retry_at.is_none()) {
            self.health.ok();
        }
        out
    }

    /// Whether shutdown began: retries are then bounded.
    fn stopping(&self, shutting_down: bool) -> bool {
        shutting_down || self.stop.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Sleeps `wait`, or less when shutdown begins meanwhile.
    async fn pause(&self, wait: Duration) {
        match self.stop.clone() {
            Some(mut stop) => {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => {}
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }

    /// The stored values of `keys`, retrying store errors (bounded once shutdown began).
    async fn get_with_retry(
        &self,
        keys: &[String],
        shutting_down: bool,
    ) -> Result<Vec<Option<Vec<u8>>>, HotError> {
        self.read_with_retry("values", shutting_down, || self.store.get_many(keys))
            .await
    }

    /// The stored positions, retrying store errors: a store that goes away right after
    /// answering a write (a Redis restart) must not end the projection while it finds out
    /// whether the write landed.
    async fn positions_with_retry(&self, shutting_down: bool) -> Result<Positions, HotError> {
        self.read_with_retry("positions", shutting_down, || {
            self.store.positions(CONSUMER)
        })
        .await
    }

    /// Runs `read` until it succeeds, waiting out retryable store errors with backoff (at most
    /// [`SHUTDOWN_ATTEMPTS`] once shutdown began).
    async fn read_with_retry<T, F: Future<Output = Result<T, HotError>>>(
        &self,
        what: &str,
        shutting_down: bool,
        mut read: impl FnMut() -> F,
    ) -> Result<T, HotError> {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        loop {
            let error = match read().await {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            self.health.failing(&error);
            metrics::error("store");
            let stopping = self.stopping(shutting_down);
            if !error.kind().is_retryable()
                || (stopping && backoff.attempts() + 1 >= SHUTDOWN_ATTEMPTS)
            {
                return Err(error);
            }
            let wait = backoff.next_delay();
            tracing::warn!(%error, what, retry_in = ?wait, "hot store read failed; retrying");
            self.pause(wait).await;
        }
    }

    async fn write_with_retry(
        &self,
        batch: &WriteBatch,
        shutting_down: bool,
    ) -> Result<(), HotError> {
        let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
        loop {
            let attempts = backoff.attempts() + 1;
            let error = match self.store.write(batch.clone()).await {
                Ok(()) => {
                    self.health.ok();
                    return Ok(());
                }
                Err(e) => e,
            };
            if matches!(error, HotError::Conflict { .. }) && attempts > 1 {
                // The earlier attempt may have landed after all: it did if the store holds
                // exactly this batch's positions.
                let stored = self.positions_with_retry(shutting_down).await?;
                if batch
                    .positions
                    .iter()
                    .all(|(p, (_, new))| stored.get(p) == Some(new))
                {
                    self.health.ok();
                    return Ok(());
                }
                return Err(error);
            }
            if !error.kind().is_retryable() || matches!(error, HotError::Conflict { .. }) {
                return Err(error);
            }
            self.health.failing(&error);
            metrics::error("store");
            if self.stopping(shutting_down) && attempts >= SHUTDOWN_ATTEMPTS {
                return Err(error);
            }
            let wait = backoff.next_delay();
            tracing::warn!(%error, retry_in = ?wait, "hot store write failed; retrying the same batch");
            self.pause(wait).await;
        }
    }
}

/// The profiles and counters one batch reads and changes, by store key.
#[derive(Default)]
struct HotState {
    profiles: HashMap<String, Profile>,
    /// Per loaded profile: the indices of the recent events the store holds apart.
    stored_recent: HashMap<String, Range<u64>>,
    counters: HashMap<String, CounterState>,
}

impl HotState {
    /// A profile as the store (or the cache) holds it.
    fn add_profile(&mut self, key: String, mut profile: Profile) {
        self.stored_recent.insert(key.clone(), profile.loaded());
        self.profiles.insert(key, profile);
    }
}

/// The batch's events with their positions; an undecodable record is skipped (and counted) but
/// still moves its partition on.
fn decode(records: Vec<(u32, Record)>) -> (Vec<(Position, Event)>, u64) {
    let mut skipped = 0u64;
    let mut events = Vec::with_capacity(records.len());
    for (partition, record) in records {
        let position = Position {
            partition,
            offset: record.offset,
        };
        match serde_json::from_slice::<Event>(&record.value) {
            Ok(e) => events.push((position, e)),
            Err(error) => {
                tracing::error!(partition, offset = record.offset, %error, "undecodable good record skipped by the hot projection");
                metrics::skipped();
                skipped += 1;
            }
        }
    }
    (events, skipped)
}

/// One atomic write: the changed values and every partition's new position. Every offset below
/// a cursor is in this batch, already stored, or never existed.
fn write_batch(
    parts: &[PartitionState],
    dirty: Vec<String>,
    state: &mut HotState,
) -> Result<WriteBatch, HotError> {
    let mut batch = WriteBatch {
        consumer: CONSUMER.to_string(),
        ..WriteBatch::default()
    };
    for p in parts {
        let new = p.cursor.next();
        if new > p.store_next() {
            batch.positions.insert(p.id, (p.stored, new));
        }
    }
    let failed = |e: serde_json::Error| HotError::Embedded(e.to_string());
    for k in dirty {
        let encoded = if let Some(p) = state.profiles.get_mut(&k) {
            let stored = state.stored_recent.get(&k).cloned().unwrap_or(0..0);
            let id = k.strip_prefix("p:").unwrap_or(&p.id);
            let (new, gone) = p.recent_changes(stored);
            for (index, event) in new {
                let encoded = serde_json::to_vec(event).map_err(failed)?;
                batch.puts.push((Profile::recent_key(id, index), encoded));
            }
            batch
                .deletes
                .extend(gone.map(|index| Profile::recent_key(id, index)));
            p.encode_stored()
        } else if let Some(c) = state.counters.get(&k) {
            serde_json::to_vec(c)
        } else {
            continue;
        };
        batch.puts.push((k, encoded.map_err(failed)?));
    }
    Ok(batch)
}
