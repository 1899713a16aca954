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
//!    the projection stops (`retrying.rs`).
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
//! 9. One batch is written while the next is read and applied (the store's commit runs on
//!    another core). Nothing about the order of writes changes: batch N+1 is handed to the
//!    store only after batch N landed, and it expects N's positions. While N is in flight its
//!    values wait, decoded, in `pending`, and N+1 takes the ones it touches from there (the
//!    store may not hold them yet); once N landed the rest move into the cache. Progress,
//!    positions and metrics move only when a batch landed. If N fails for good, the projection
//!    stops and N+1 is dropped: it was built on N. The hook is told a batch is done when it was
//!    applied, not when it landed: its positions are its own (point 5), so a crash between the
//!    two replays the batch to it as events the store lacks, which it scores but does not
//!    learn from again.
//! 10. The batch after is read as soon as a batch has its events, and decoded on a blocking
//!     thread while this one is applied (decoding `good` is the largest part of the stage's
//!     own work; `enriched`, and `context` unless a counter reads it, are stepped over
//!     unparsed, `sluice-event`'s `skim.rs`). Each batch takes its positions from where its
//!     own reads ended (`read_to`), not from the cursors, which are already past the batch
//!     read ahead; the hook is told the same. A batch read ahead is projected next, shutdown
//!     included (its records are durable); none is read ahead once shutdown began.
//! 11. Of the values a batch changed, only those the batch read ahead touches are encoded in
//!     the loop, to wait in `pending` for it; the write encodes the rest on a blocking thread
//!     before it commits them, and hands them back decoded for the cache. The batch after the
//!     one read ahead is read only once this one landed, so it finds them in the cache (or the
//!     store). This needs the batch read ahead's keys, known from its events' profile ids when
//!     every counter lives in the profiles; otherwise, and when no batch was read ahead, every
//!     value is encoded in the loop as before.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use sluice_event::{Event, Position, topic};
use sluice_journal::{ConsumerProgress, ConsumerStatus, Cursor, Journal, Record, StageHealth};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cache::{self, ValueCache};
use crate::codec::{self, CodecError};
use crate::counter::{CounterState, Increment, KeptState};
use crate::profile::{EventView, Profile};
use crate::retrying::RetryingStore;
use crate::store::{HotStore, Positions, WriteBatch};
use crate::{HotError, HotSettings, metrics};

/// The consumer name of the `good` projection's positions.
pub const CONSUMER: &str = "hot/good";

/// How long an idle projector waits on the journal before looking again.
const IDLE_WAIT: Duration = Duration::from_secs(5);
/// Bytes read per partition per batch, about.
const READ_BYTES: usize = 16 << 20;
/// How long a partition whose read failed is left alone.
const READ_RETRY: Duration = Duration::from_secs(1);

/// Something that rides along the projection: sees every event once, in journal order per
/// partition, with the profile the projection just updated. The online models are one.
pub trait EventHook: Send + Sync + 'static {
    /// The positions (partition → next offset) the hook's own state reflects.
    fn resume_from(&self) -> Positions;

    /// One event. `profile` is the event's profile after the event was applied (`None` when
    /// the event has no user); its `last_events` holds only this batch's events, as a
    /// profile's earlier recent events are stored apart and not read by the projection. The
    /// event has no `enriched` fields, and its `context` is `{}` unless a counter reads it
    /// (`good` is decoded without them, point 10).
    /// `live` is false when the store already holds this event (the hook is catching up after
    /// a restart): then changes to `profile` are not written.
    fn on_event(
        &mut self,
        position: Position,
        view: &EventView<'_>,
        profile: Option<&mut Profile>,
        live: bool,
    );

    /// After a batch was applied (it may still be on its way to the store): every offset below
    /// `next` has been seen by the hook.
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

/// A map keyed by store keys, with a fast hash (the keys are not chosen by an attacker who
/// could see the projection's timing, and the maps live for one batch or in the cache).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Projects `good` into a [`HotStore`]. See the module docs.
pub struct Projector {
    journal: Arc<dyn Journal>,
    /// The store, its reads and writes retried.
    io: RetryingStore,
    settings: Arc<HotSettings>,
    hook: Option<Box<dyn EventHook>>,
    status: watch::Sender<ProjectionStatus>,
    /// The values the last batches wrote, decoded.
    cache: ValueCache,
    /// The batch being written, if any.
    in_flight: Option<InFlight>,
    /// The next batch, read and being decoded, if any.
    ahead: Option<Ahead>,
    /// The values the batch in flight writes, decoded, as it writes them: the next batch takes
    /// them from here, as the store may not hold them yet.
    pending: FastMap<String, (cache::Value, usize)>,
    /// How many counters live in the profiles.
    in_profile: usize,
    /// Every counter lives in the profiles: the keys a batch touches are its profiles' (point
    /// 11).
    keys_are_profiles: bool,
    /// A counter reads events' context (else `good` is decoded without it, point 10).
    needs_context: bool,
}

/// The next batch, read while this one is applied and decoded on a blocking thread.
struct Ahead {
    /// Records read.
    consumed: usize,
    decoding: Decoding,
}

/// A batch's records, decoded.
struct Decoded {
    events: Vec<(Position, Event)>,
    /// Records that did not decode.
    skipped: u64,
    /// The store keys of its events' profiles, when asked for (point 11).
    profile_keys: FastSet<String>,
}

/// The decoding of a batch read ahead: running, then done once awaited.
enum Decoding {
    Running(tokio::task::JoinHandle<Decoded>),
    Done(Decoded),
}

impl Decoding {
    /// What was decoded, waited for here if it still runs.
    async fn wait(&mut self) -> Result<&Decoded, HotError> {
        if let Self::Running(running) = self {
            let decoded = running.await.map_err(decoding_failed)?;
            *self = Self::Done(decoded);
        }
        match self {
            Self::Done(decoded) => Ok(decoded),
            Self::Running(_) => Err(HotError::Embedded("decoding good did not finish".into())),
        }
    }

    async fn finish(self) -> Result<Decoded, HotError> {
        match self {
            Self::Running(running) => running.await.map_err(decoding_failed),
            Self::Done(decoded) => Ok(decoded),
        }
    }
}

fn decoding_failed(e: tokio::task::JoinError) -> HotError {
    HotError::Embedded(format!("decoding good failed: {e}"))
}

/// A value as the store holds it once its batch landed, with its stored size, for the cache.
type Written = (String, cache::Value, usize);

/// A batch handed to the store, and what to report once it landed.
struct InFlight {
    /// Answers the values the write encoded (point 11), once they are in the store.
    write: tokio::task::JoinHandle<Result<Vec<Written>, HotError>>,
    /// Per partition: the position expected and the new one.
    positions: BTreeMap<u32, (Option<u64>, u64)>,
    started: Instant,
    live_events: usize,
    skipped: u64,
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

/// One event of a batch and what it touches, worked out once.
struct Touch<'a> {
    position: Position,
    /// The store does not hold it yet.
    live: bool,
    view: EventView<'a>,
    /// Its profile's store key.
    profile_key: Option<String>,
    /// Each counter it adds to (live events only): the counter's index, its store key (`None`:
    /// kept in the profile) and the increment.
    counts: Vec<(usize, Option<String>, Increment)>,
}

impl Projector {
    /// A projector of `journal`'s `good` topic into `store`.
    pub fn new(
        journal: Arc<dyn Journal>,
        store: Arc<dyn HotStore>,
        settings: Arc<HotSettings>,
    ) -> Self {
        let cache = ValueCache::new(settings.cache_bytes, store.deletions());
        let in_profile = settings.counters.iter().filter(|c| c.in_profile()).count();
        let keys_are_profiles = in_profile == settings.counters.len();
        let needs_context = settings.counters.iter().any(|c| {
            c.key.needs_context() || c.property.as_ref().is_some_and(|p| p.needs_context())
        });
        Self {
            journal,
            io: RetryingStore::new(store),
            settings,
            hook: None,
            status: watch::Sender::new(ProjectionStatus::default()),
            cache,
            in_flight: None,
            ahead: None,
            pending: FastMap::default(),
            in_profile,
            keys_are_profiles,
            needs_context,
        }
    }

    /// Reports each attempt's outcome to `health` (`/health`).
    pub fn with_health(mut self, health: StageHealth) -> Self {
        self.io.health = health;
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
        self.io.stop = Some(stop_rx.clone());
        let result = self.run_inner(stop_rx).await;
        watcher.abort();
        if let Some(flight) = self.in_flight.take() {
            // Only after an error: the store's positions decide whether it landed.
            flight.write.abort();
        }
        if let Err(e) = &result {
            tracing::error!(error = %e, "hot projection stopped");
        }
        if let Some(hook) = self.hook.as_mut() {
            hook.close();
        }
        status.send_modify(|s| s.stopped = true);
        result
    }

    /// The stored positions, read until the store answers (or shutdown begins).
    async fn stored_positions(
        &self,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<Option<Positions>, HotError> {
        let mut backoff = RetryingStore::backoff();
        loop {
            match self.io.store.positions(CONSUMER).await {
                Ok(p) => return Ok(Some(p)),
                Err(e) if e.kind().is_retryable() => {
                    self.io.health.failing(&e);
                    let wait = backoff.next_delay();
                    tracing::warn!(error = %e, retry_in = ?wait, "cannot read hot positions yet");
                    tokio::select! {
                        _ = stop.wait_for(|s| *s) => return Ok(None),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn run_inner(&mut self, mut stop: watch::Receiver<bool>) -> Result<(), HotError> {
        let partitions = self.journal.partitions(topic::GOOD)?;
        let Some(stored) = self.stored_positions(&mut stop).await? else {
            return Ok(());
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
            backend = self.io.store.backend(),
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
                debug_assert!(self.in_flight.is_none(), "a batch that returns 0 landed");
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
            self.idle(&parts, &mut stop).await;
        }
    }

    /// Waits until a partition has records past its cursor, one whose read failed may be
    /// read again, [`IDLE_WAIT`] passed, or shutdown began.
    async fn idle(&self, parts: &[PartitionState], stop: &mut watch::Receiver<bool>) {
        let mut waits = tokio::task::JoinSet::new();
        let now = Instant::now();
        for p in parts {
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

    fn publish(&self, parts: &[PartitionState], f: impl FnOnce(&mut ProjectionStatus)) {
        self.status.send_modify(|s| {
            s.next_offsets = parts.iter().map(PartitionState::store_next).collect();
            f(s);
        });
    }

    /// Reads and applies one batch and hands it to the store, where it is written while the
    /// next batch is read and applied; returns the number of records consumed. Returns 0 only
    /// once the batch before has landed too.
    async fn batch(
        &mut self,
        parts: &mut [PartitionState],
        round_robin: &mut usize,
        targets: Option<&[u64]>,
        shutting_down: bool,
    ) -> Result<usize, HotError> {
        let started = Instant::now();
        let (decoded, consumed) = match self.ahead.take() {
            Some(ahead) => (ahead.decoding.finish().await?, ahead.consumed),
            None => {
                let records = self.read(parts, round_robin, targets);
                if records.is_empty() {
                    self.land(parts).await?;
                    // A cursor that stepped over a crash gap moves its partition on with no record.
                    if !parts.iter().any(|p| p.cursor.next() > p.store_next()) {
                        return Ok(0);
                    }
                }
                let consumed = records.len();
                (decode(records, false, self.needs_context), consumed)
            }
        };
        let Decoded {
            events, skipped, ..
        } = decoded;
        // Where this batch ends in each partition, before the next one is read.
        let read_to: Vec<u64> = parts.iter().map(|p| p.cursor.next()).collect();
        if consumed > 0 && !shutting_down {
            self.read_ahead(parts, round_robin);
        }
        let touches = self.touches(&events, parts);
        let mut state = self.load(&touches, parts, shutting_down).await?;
        let (dirty, live_events) = self.apply(&touches, &mut state);
        if let Some(hook) = self.hook.as_mut() {
            // The hook's positions are its own: it has seen everything this batch read.
            let seen: Positions = parts
                .iter()
                .map(|p| p.id)
                .zip(read_to.iter().copied())
                .collect();
            hook.after_batch(&seen);
        }
        let changed = take_changed(dirty, &mut state);
        drop(state);
        let (now, later) = self.split_by_ahead(changed).await?;
        let mut puts = Vec::with_capacity(now.len() * 2);
        let mut deletes = Vec::new();
        let now = encode(now, &mut puts, &mut deletes)?;
        // The batch before must be in the store before this one, which expects its positions.
        self.land(parts).await?;
        let batch = WriteBatch {
            consumer: CONSUMER.to_string(),
            positions: new_positions(parts, &read_to),
            puts,
            deletes,
        };
        if batch.positions.is_empty() {
            debug_assert!(
                now.is_empty() && later.is_empty(),
                "a batch with no live event changes nothing"
            );
            metrics::batch(live_events, started.elapsed().as_secs_f64());
            self.publish(parts, |s| {
                s.batches += 1;
                s.skipped += skipped;
            });
            return Ok(consumed);
        }
        let counts = (live_events, skipped);
        self.send(batch, now, later, started, counts, shutting_down)
            .await;
        if consumed == 0 {
            // Only positions moved (a crash gap stepped over): 0 means nothing is in flight.
            self.land(parts).await?;
        }
        Ok(consumed)
    }

    /// Reads the next batch's records now and decodes them on a blocking thread while this
    /// batch is applied (point 10).
    fn read_ahead(&mut self, parts: &mut [PartitionState], round_robin: &mut usize) {
        debug_assert!(self.ahead.is_none(), "one batch read ahead at a time");
        let records = self.read(parts, round_robin, None);
        if records.is_empty() {
            return;
        }
        let (with_keys, with_context) = (self.keys_are_profiles, self.needs_context);
        self.ahead = Some(Ahead {
            consumed: records.len(),
            decoding: Decoding::Running(tokio::task::spawn_blocking(move || {
                decode(records, with_keys, with_context)
            })),
        });
    }

    /// Splits the values a batch changed into those the batch read ahead touches, encoded now
    /// to wait in `pending` for it, and the rest, left to the write (point 11). All are encoded
    /// now when no batch was read ahead or its keys are not known.
    async fn split_by_ahead(
        &mut self,
        changed: Vec<Changed>,
    ) -> Result<(Vec<Changed>, Vec<Changed>), HotError> {
        let keys_known = self.keys_are_profiles;
        let Some(ahead) = self.ahead.as_mut().filter(|_| keys_known) else {
            return Ok((changed, Vec::new()));
        };
        let next = ahead.decoding.wait().await?;
        Ok(changed
            .into_iter()
            .partition(|c| next.profile_keys.contains(&c.key)))
    }

    /// The batch's events with their keys and contributions. Profiles are loaded for live
    /// events, and for all of them when a hook scores replayed events too.
    fn touches<'a>(
        &self,
        events: &'a [(Position, Event)],
        parts: &[PartitionState],
    ) -> Vec<Touch<'a>> {
        let index: FastMap<u32, usize> = parts.iter().enumerate().map(|(i, p)| (p.id, i)).collect();
        events
            .iter()
            .map(|(position, e)| {
                let live = index
                    .get(&position.partition)
                    .is_some_and(|&i| position.offset >= parts[i].store_next());
                let view = EventView::new(e, self.needs_context);
                let profile_key = view
                    .profile_id
                    .filter(|_| live || self.hook.is_some())
                    .map(Profile::store_key);
                let counts = match live {
                    false => Vec::new(),
                    true => self
                        .settings
                        .counters
                        .iter()
                        .enumerate()
                        .filter_map(|(i, c)| {
                            let (key, inc) = c.contribution(&view)?;
                            let apart = (!c.in_profile()).then(|| c.store_key(&key));
                            Some((i, apart, inc))
                        })
                        .collect(),
                };
                Touch {
                    position: *position,
                    live,
                    view,
                    profile_key,
                    counts,
                }
            })
            .collect()
    }

    /// The values the batch touches: from the batch in flight, else the cache, else the store.
    /// A stored value that does not decode starts afresh: stalling every later event of its
    /// key would be worse.
    async fn load(
        &mut self,
        touches: &[Touch<'_>],
        parts: &mut [PartitionState],
        shutting_down: bool,
    ) -> Result<HotState, HotError> {
        if self.io.store.deletions() != self.cache.deletions() {
            // A deletion request went through: nothing decoded earlier may be used, and the
            // batch in flight must land before the store is read again.
            self.land(parts).await?;
            self.cache.check_deletions(self.io.store.deletions());
        }
        let mut state = HotState::default();
        let mut missing = Vec::new();
        let mut asked: FastSet<&str> = FastSet::default();
        let keys = touches.iter().flat_map(|t| {
            let counters = t.counts.iter().filter_map(|(_, k, _)| k.as_ref());
            t.profile_key.iter().chain(counters)
        });
        for key in keys {
            if state.has(key) || asked.contains(key.as_str()) {
                continue;
            }
            let found = match self.pending.remove(key) {
                Some((value, _)) => Some(value),
                None => self.cache.take(key),
            };
            match found {
                Some(value) => state.add(key.clone(), value),
                None => {
                    asked.insert(key);
                    missing.push(key.clone());
                }
            }
        }
        let values = self.io.get_many(&missing, shutting_down).await?;
        for (key, value) in missing.into_iter().zip(values) {
            let Some(bytes) = value else { continue };
            let decoded = if key.starts_with("p:") {
                codec::decode_profile(&bytes).map(cache::Value::Profile)
            } else {
                codec::decode_counter(&bytes).map(cache::Value::Counter)
            };
            match decoded {
                Ok(value) => state.add(key, value),
                Err(error) => corrupt(&key, &error),
            }
        }
        self.move_counters_in(&mut state, shutting_down).await?;
        Ok(state)
    }

    /// Profiles stored before their counters moved in (`counters` absent): reads those
    /// counters' states from their own keys into the profile, and notes the keys, which the
    /// batch deletes if it writes the profile.
    async fn move_counters_in(
        &self,
        state: &mut HotState,
        shutting_down: bool,
    ) -> Result<(), HotError> {
        // (profile key, counter name, the counter's own key)
        let mut apart: Vec<(String, String, String)> = Vec::new();
        for (key, profile) in &mut state.profiles {
            if profile.counters.is_some() {
                continue;
            }
            profile.counters = Some(BTreeMap::new());
            let id = key.strip_prefix("p:").unwrap_or(&profile.id);
            let inside = self.settings.counters.iter().filter(|c| c.in_profile());
            apart.extend(inside.map(|c| (key.clone(), c.name.clone(), c.store_key(id))));
        }
        if apart.is_empty() {
            return Ok(());
        }
        let keys: Vec<String> = apart.iter().map(|(_, _, k)| k.clone()).collect();
        let values = self.io.get_many(&keys, shutting_down).await?;
        for ((profile, name, key), value) in apart.into_iter().zip(values) {
            let Some(p) = state.profiles.get_mut(&profile) else {
                continue;
            };
            if let Some(bytes) = value {
                match codec::decode_counter(&bytes) {
                    Ok(counter) => {
                        let kept = KeptState::new(counter);
                        p.counters.get_or_insert_default().insert(name, kept);
                    }
                    Err(error) => corrupt(&key, &error),
                }
            }
            state.apart.entry(profile).or_default().push(key);
        }
        Ok(())
    }

    /// Hands `batch` to the store, to be written while the next batch is prepared: the values
    /// encoded into it (`now`) wait in `pending` for that batch, the write encodes `later` into
    /// it first. `counts`: live events and skipped records. Returns once the write began.
    async fn send(
        &mut self,
        batch: WriteBatch,
        now: Vec<Written>,
        later: Vec<Changed>,
        started: Instant,
        counts: (usize, u64),
        shutting_down: bool,
    ) {
        debug_assert!(self.in_flight.is_none(), "one batch in flight at a time");
        debug_assert!(
            self.pending.is_empty(),
            "pending holds the batch in flight only"
        );
        for (key, value, bytes) in now {
            self.pending.insert(key, (value, bytes));
        }
        let positions = batch.positions.clone();
        let io = self.io.clone();
        // Spawned tasks wait until the spawning one yields; this one yields until the write
        // began, so the store works on it meanwhile (the embedded store on a thread of its own).
        let (began, beginning) = tokio::sync::oneshot::channel();
        let write = tokio::spawn(async move {
            let _ = began.send(());
            let (batch, written) = encode_later(batch, later).await?;
            io.write(Arc::new(batch), shutting_down).await?;
            Ok(written)
        });
        let _ = beginning.await;
        let (live_events, skipped) = counts;
        self.in_flight = Some(InFlight {
            write,
            positions,
            started,
            live_events,
            skipped,
        });
    }

    /// Waits for the batch in flight to land, then moves the partitions' stored positions,
    /// caches its values and reports it.
    async fn land(&mut self, parts: &mut [PartitionState]) -> Result<(), HotError> {
        let Some(flight) = self.in_flight.take() else {
            return Ok(());
        };
        let landed = flight
            .write
            .await
            .map_err(|e| HotError::Embedded(format!("hot write task failed: {e}")));
        let written = match landed.and_then(|r| r) {
            Ok(written) => written,
            Err(e) => {
                self.pending.clear();
                return Err(e);
            }
        };
        for p in parts.iter_mut() {
            if let Some((_, new)) = flight.positions.get(&p.id) {
                debug_assert!(*new > p.store_next(), "hot positions only grow");
                p.stored = Some(*new);
                metrics::position(p.id, *new);
            }
        }
        for (key, (value, bytes)) in self.pending.drain() {
            self.cache.put(key, value, bytes);
        }
        for (key, value, bytes) in written {
            self.cache.put(key, value, bytes);
        }
        let (hits, misses) = self.cache.hits_and_misses();
        metrics::cache(self.cache.bytes(), self.settings.cache_bytes, hits, misses);
        metrics::batch(flight.live_events, flight.started.elapsed().as_secs_f64());
        self.publish(parts, |s| {
            s.batches += 1;
            s.events += flight.live_events as u64;
            s.skipped += flight.skipped;
        });
        Ok(())
    }

    /// Applies the live events to `state` in journal order and shows every event to the hook;
    /// the keys changed, in first-change order, and the number of live events.
    fn apply(&mut self, touches: &[Touch<'_>], state: &mut HotState) -> (Vec<String>, usize) {
        let mut dirty: Vec<String> = Vec::new();
        let mut dirty_seen: FastSet<&str> = FastSet::default();
        let mut live_events = 0usize;
        let now_us = sluice_event::now_micros();
        for t in touches {
            let view = &t.view;
            let ts = view.event.timestamp;
            if t.live {
                live_events += 1;
                metrics::visible_delay(((now_us - view.event.received_at).max(0)) as f64 / 1e6);
                for (i, k, inc) in &t.counts {
                    let Some(k) = k else { continue };
                    let counter = match state.counters.get_mut(k) {
                        Some(c) => c,
                        None => state.counters.entry(k.clone()).or_default(),
                    };
                    self.settings.counters[*i].apply(counter, ts, inc.clone());
                    if dirty_seen.insert(k) {
                        dirty.push(k.clone());
                    }
                }
            }
            let profile = match (&t.profile_key, view.profile_id) {
                (Some(k), Some(id)) => {
                    let p = state.profiles.entry(k.clone()).or_insert_with(|| Profile {
                        id: id.to_string(),
                        counters: Some(BTreeMap::new()),
                        ..Profile::default()
                    });
                    if t.live {
                        self.apply_to_profile(p, t);
                        if dirty_seen.insert(k) {
                            dirty.push(k.clone());
                        }
                    }
                    Some(p)
                }
                _ => None,
            };
            if let Some(hook) = self.hook.as_mut() {
                hook.on_event(t.position, view, profile, t.live);
            }
        }
        (dirty, live_events)
    }

    /// A live event's changes to its profile: the counters kept there, then the profile.
    fn apply_to_profile(&self, p: &mut Profile, t: &Touch<'_>) {
        let counters = p.counters.get_or_insert_default();
        if counters.len() > self.in_profile {
            // A counter taken out of the settings, or no longer keyed by user.
            let settings = &self.settings;
            counters.retain(|name, _| settings.counter(name).is_some_and(|c| c.in_profile()));
        }
        for (i, _, inc) in t.counts.iter().filter(|(_, k, _)| k.is_none()) {
            let spec = &self.settings.counters[*i];
            let kept = match counters.get_mut(&spec.name) {
                Some(c) => c,
                None => counters.entry(spec.name.clone()).or_default(),
            };
            spec.apply(kept.state_mut(), t.view.event.timestamp, inc.clone());
        }
        p.apply(&t.view, &self.settings);
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
                    self.io.health.failing(&error);
                    tracing::warn!(partition = p.id, %error, "hot projection cannot read good; retrying");
                    metrics::error("journal");
                    p.retry_at = Some(now + READ_RETRY);
                }
            }
        }
        if !failed && parts.iter().all(|p| p.retry_at.is_none()) {
            self.io.health.ok();
        }
        out
    }
}

/// The profiles and counters one batch reads and changes, by store key.
#[derive(Default)]
struct HotState {
    profiles: FastMap<String, Profile>,
    /// Per loaded profile: the indices of the recent events the store holds apart.
    stored_recent: FastMap<String, Range<u64>>,
    /// Per profile whose counters moved in: their own keys, deleted when it is written.
    apart: FastMap<String, Vec<String>>,
    counters: FastMap<String, CounterState>,
}

impl HotState {
    /// A value as the store (or the cache, or the batch in flight) holds it.
    fn add(&mut self, key: String, value: cache::Value) {
        match value {
            cache::Value::Profile(mut profile) => {
                self.stored_recent.insert(key.clone(), profile.loaded());
                self.profiles.insert(key, profile);
            }
            cache::Value::Counter(counter) => {
                self.counters.insert(key, counter);
            }
        }
    }

    fn has(&self, key: &str) -> bool {
        self.profiles.contains_key(key) || self.counters.contains_key(key)
    }
}

/// A stored value that does not decode: logged and counted; its key starts afresh, as stalling
/// every later event of the key would be worse.
fn corrupt(key: &str, error: &CodecError) {
    tracing::error!(key = %key, %error, "stored hot value does not decode; starting it afresh");
    metrics::error("corrupt");
}

/// The batch's events with their positions, `enriched` left out (nothing here reads it: no
/// counter path names it, and neither profiles nor models use it) and `context` too unless
/// `with_context` (a counter reads it), and their profiles' store keys when `with_keys`; an
/// undecodable record is skipped (and counted) but still moves its partition on.
fn decode(records: Vec<(u32, Record)>, with_keys: bool, with_context: bool) -> Decoded {
    let mut skipped = 0u64;
    let mut events = Vec::with_capacity(records.len());
    for (partition, record) in records {
        let position = Position {
            partition,
            offset: record.offset,
        };
        let read = match with_context {
            true => Event::from_slice_unenriched(&record.value),
            false => Event::from_slice_bare(&record.value),
        };
        match read {
            Ok(e) => events.push((position, e)),
            Err(error) => {
                tracing::error!(partition, offset = record.offset, %error, "undecodable good record skipped by the hot projection");
                metrics::skipped();
                skipped += 1;
            }
        }
    }
    let profile_keys = match with_keys {
        true => events
            .iter()
            .filter_map(|(_, e)| Profile::id_of(e).map(Profile::store_key))
            .collect(),
        false => FastSet::default(),
    };
    Decoded {
        events,
        skipped,
        profile_keys,
    }
}

/// Every partition's new position, where it moved: `read_to`, where the batch ended in each
/// partition. Every offset below it is in this batch, already stored, or never existed.
fn new_positions(parts: &[PartitionState], read_to: &[u64]) -> BTreeMap<u32, (Option<u64>, u64)> {
    parts
        .iter()
        .zip(read_to)
        .filter(|(p, next)| **next > p.store_next())
        .map(|(p, next)| (p.id, (p.stored, *next)))
        .collect()
}

/// A value a batch changed, taken out of the batch's state to be encoded, written and cached.
struct Changed {
    key: String,
    value: cache::Value,
    /// A profile's recent events the store held when it was read (their indices).
    stored_recent: Range<u64>,
    /// A profile's counters' own keys, deleted as it is written (the counters moved in).
    apart: Vec<String>,
}

/// The values under `dirty`, taken out of `state`.
fn take_changed(dirty: Vec<String>, state: &mut HotState) -> Vec<Changed> {
    let take = |key: String| match state.profiles.remove(&key) {
        Some(profile) => Some(Changed {
            stored_recent: state.stored_recent.remove(&key).unwrap_or(0..0),
            apart: state.apart.remove(&key).unwrap_or_default(),
            key,
            value: cache::Value::Profile(profile),
        }),
        None => state.counters.remove(&key).map(|counter| Changed {
            key,
            value: cache::Value::Counter(counter),
            stored_recent: 0..0,
            apart: Vec::new(),
        }),
    };
    dirty.into_iter().filter_map(take).collect()
}

/// Encodes `changed` into `puts`, with the recent events new to each profile, and lists in
/// `deletes` the recent events that fell out of a profile's last N and the counters' keys
/// that moved in. Answers the values as the store then holds them, with their stored sizes.
fn encode(
    changed: Vec<Changed>,
    puts: &mut Vec<(String, Vec<u8>)>,
    deletes: &mut Vec<String>,
) -> Result<Vec<Written>, HotError> {
    let failed = |e: serde_json::Error| HotError::Embedded(e.to_string());
    let mut written = Vec::with_capacity(changed.len());
    for change in changed {
        let Changed {
            key,
            mut value,
            stored_recent,
            apart,
        } = change;
        let encoded = match &mut value {
            cache::Value::Profile(p) => {
                let id = key.strip_prefix("p:").unwrap_or(&p.id);
                let (new, gone) = p.recent_changes(stored_recent);
                for (index, event) in new {
                    // Sized up front: `to_vec` grows from 128 bytes by doubling.
                    let size = event.properties.0.get().len() + event.event.len() + 128;
                    let mut encoded = Vec::with_capacity(size + event.event_id.len());
                    sluice_event::json::to_writer(&mut encoded, event).map_err(failed)?;
                    puts.push((Profile::recent_key(id, index), encoded));
                }
                deletes.extend(gone.map(|index| Profile::recent_key(id, index)));
                deletes.extend(apart);
                let encoded = p.encode_stored();
                // Stored apart: what the store holds is the profile's stored part.
                p.last_events.clear();
                encoded
            }
            cache::Value::Counter(c) => codec::encode_counter(c),
        };
        written.push((key.clone(), value, encoded.len()));
        puts.push((key, encoded));
    }
    Ok(written)
}

/// The values left to the write (point 11), encoded into `batch` on a blocking thread.
async fn encode_later(
    mut batch: WriteBatch,
    later: Vec<Changed>,
) -> Result<(WriteBatch, Vec<Written>), HotError> {
    if later.is_empty() {
        return Ok((batch, Vec::new()));
    }
    let encoding = tokio::task::spawn_blocking(move || {
        let written = encode(later, &mut batch.puts, &mut batch.deletes)?;
        Ok((batch, written))
    });
    encoding
        .await
        .map_err(|e| HotError::Embedded(format!("encoding a hot batch failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64, value: &[u8]) -> (u32, Record) {
        let record = Record {
            offset,
            timestamp_ms: 0,
            value: value.to_vec().into(),
        };
        (2, record)
    }

    #[test]
    fn good_is_read_without_its_enriched_fields_and_a_bad_record_is_skipped() {
        let event: Event = serde_json::from_value(serde_json::json!({
            "event_id": "e1", "event_type": "track", "event": "Product Viewed", "source": "web",
            "user_id": "u1",
            "timestamp": 5, "received_at": 7, "properties": {}, "context": {"page": {"path": "/a"}},
            "enriched": {"ua_browser": "Chrome"}, "raw": {"partition": 1, "offset": 9}
        }))
        .unwrap();
        let written = serde_json::to_vec(&event).unwrap();
        for (with_context, context) in [(true, r#"{"page":{"path":"/a"}}"#), (false, "{}")] {
            let records = vec![record(4, b"{not json"), record(5, &written)];
            let decoded = decode(records, true, with_context);
            let Decoded {
                events,
                skipped,
                profile_keys,
            } = decoded;
            assert_eq!(skipped, 1);
            assert_eq!(profile_keys, FastSet::from_iter(["p:u1".to_string()]));
            let [(position, read)] = &events[..] else {
                panic!("one event: {}", events.len())
            };
            let expected = Position {
                partition: 2,
                offset: 5,
            };
            assert_eq!(*position, expected);
            assert_eq!(read.event_id, "e1");
            assert!(read.enriched.is_empty());
            assert_eq!(read.context.get(), context);
        }
    }
}
