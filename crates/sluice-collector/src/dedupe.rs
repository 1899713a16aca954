//! The dedupe index: which (source, event_id) pairs were acked within the window.
//!
//! Keys are 128-bit xxh3 hashes of `source \xff event_id` (a false duplicate needs a 128-bit
//! collision). An entry is *pending* while its request's append is in flight and *committed*
//! once the append is durable; a failed append removes its pending entries so the client's
//! retry goes through. A request that meets another request's pending entry waits for that
//! append to finish (bounded), because answering "duplicate" for an event that is not yet
//! durable would ack something that may still be lost. A request reserves all of its keys in
//! one step ([`DedupeIndex::reserve_all`]), so of two requests sharing events only the one that
//! came second waits, and a wait never closes a cycle.
//!
//! The index lives in memory, bounded by `collector.dedupe_max_entries`: past it, the oldest
//! committed entries leave first (counted in `sluice_collector_dedupe_evicted_total`), so under
//! heavy traffic the window is the most recent `dedupe_max_entries` events rather than the
//! whole `dedupe_window`. It is rebuilt from the `raw` topic on start
//! ([`crate::Collector::open`]) from the newest records within the window, at most the bound's
//! worth, so a restart costs the same whatever `raw` holds.
//!
//! Each of its shards keeps entries in *generations*: hash tables sized once, filled in arrival
//! order, the oldest dropped whole when the shard is over its bound or the whole generation is
//! past the window. No per-entry queue and no tombstones left by evictions, so an entry costs
//! its table slot (about 56 bytes at 7/8 load) and a full index holds a known ceiling
//! ([`DedupeIndex::ceiling_bytes`], exposed with the current size as metrics).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use sluice_event::Position;
use tokio::sync::watch;

const SHARDS: usize = 16;
/// Generations a full shard holds, about: the share of its bound one eviction drops.
const GENERATIONS: usize = 8;

pub(crate) type Key = u128;

/// The shard that holds `k`.
fn shard_of(k: Key) -> usize {
    (k as usize) % SHARDS
}

pub(crate) fn key(source: &str, event_id: &str) -> Key {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(source.as_bytes());
    h.update(&[0xff]);
    h.update(event_id.as_bytes());
    h.digest128()
}

enum Slot {
    /// Acked at `.0`, stored at `.1`.
    Committed(i64, Position),
    Pending(i64, watch::Receiver<Option<bool>>),
}

impl Slot {
    fn at(&self) -> i64 {
        match self {
            Slot::Committed(at, _) | Slot::Pending(at, _) => *at,
        }
    }
}

/// Bytes one slot of a generation's table takes: the entry and its control byte.
const MAP_SLOT_BYTES: usize = size_of::<(Key, Slot)>() + 1;

/// Slots of a hash table sized for `entries`: a power of two, at most 7/8 used.
fn table_slots(entries: usize) -> usize {
    (entries * 8).div_ceil(7).next_power_of_two()
}

/// Entries filed in arrival order into a table sized once.
struct Generation {
    map: HashMap<Key, Slot>,
    /// Entries filed so far (removals do not give room back: they leave tombstones).
    filed: usize,
    /// The newest `at` filed.
    newest: i64,
    /// Its entries still pending.
    pending: usize,
}

struct Shard {
    /// Oldest first.
    generations: VecDeque<Generation>,
    /// Entries one generation takes: a full table's worth.
    generation_cap: usize,
    /// Entries over all generations.
    len: usize,
}

impl Shard {
    fn new(shard_cap: usize) -> Self {
        let slots = table_slots(shard_cap.div_ceil(GENERATIONS).max(1));
        Self {
            generations: VecDeque::new(),
            generation_cap: slots * 7 / 8,
            len: 0,
        }
    }

    /// The newest entry for `k`, which shadows any older one.
    fn get(&self, k: &Key) -> Option<&Slot> {
        self.generations.iter().rev().find_map(|g| g.map.get(k))
    }

    /// Files `slot` under `k` in the newest generation, opening one when it is full.
    fn file(&mut self, k: Key, slot: Slot) {
        let at = slot.at();
        let cap = self.generation_cap;
        if self.generations.back().is_none_or(|g| g.filed >= cap) {
            self.generations.push_back(Generation {
                map: HashMap::with_capacity(cap),
                filed: 0,
                newest: i64::MIN,
                pending: 0,
            });
        }
        let g = self
            .generations
            .back_mut()
            .expect("a generation was just opened");
        g.filed += 1;
        g.newest = g.newest.max(at);
        g.pending += usize::from(matches!(slot, Slot::Pending(..)));
        match g.map.insert(k, slot) {
            None => self.len += 1,
            Some(Slot::Pending(..)) => g.pending -= 1,
            Some(Slot::Committed(..)) => {}
        }
    }

    /// Whether the oldest generation holds only pending entries, which never leave before
    /// their requests settle: eviction stops there, and the shard may exceed its bound by the
    /// requests in flight.
    fn oldest_is_all_pending(&self) -> bool {
        self.generations
            .front()
            .is_some_and(|g| g.pending == g.map.len())
    }

    /// Drops the oldest generation, refiling its pending entries (their requests are in
    /// flight) in the newest. The committed entries it dropped.
    fn drop_oldest(&mut self) -> u64 {
        let Some(oldest) = self.generations.pop_front() else {
            return 0;
        };
        self.len -= oldest.map.len();
        let mut dropped = 0;
        for (k, slot) in oldest.map {
            match slot {
                Slot::Pending(..) if !self.shadowed(&k) => self.file(k, slot),
                Slot::Pending(..) => {}
                Slot::Committed(..) => dropped += 1,
            }
        }
        dropped
    }

    /// Whether a newer generation holds `k` (the older entry then means nothing).
    fn shadowed(&self, k: &Key) -> bool {
        self.generations.iter().any(|g| g.map.contains_key(k))
    }

    /// Settles the newest entry of `k` if it is pending.
    fn settle(&mut self, k: Key, pos: Option<Position>) {
        let Some(g) = self
            .generations
            .iter_mut()
            .rev()
            .find(|g| g.map.contains_key(&k))
        else {
            return;
        };
        let Some(slot) = g.map.get_mut(&k) else {
            return;
        };
        let Slot::Pending(at, _) = slot else {
            return;
        };
        g.pending -= 1;
        match pos {
            // In place: an insert would first make room for one more entry, and a full
            // generation's table would double.
            Some(pos) => *slot = Slot::Committed(*at, pos),
            None => {
                g.map.remove(&k);
                self.len -= 1;
            }
        }
    }

    /// The heap bytes of its tables (allocated slots: what the process holds).
    fn heap_bytes(&self) -> usize {
        self.generations
            .iter()
            .map(|g| table_slots(g.map.capacity()) * MAP_SLOT_BYTES)
            .sum()
    }
}

pub(crate) enum Reserve {
    /// Reserved for this request.
    New,
    /// Already acked within the window; where the first copy is stored (`None` for a repeat
    /// within one request, which the request's own append places).
    Duplicate(Option<Position>),
    /// Another request's append for this key is in flight; wait for its outcome.
    Wait(watch::Receiver<Option<bool>>),
}

pub(crate) struct DedupeIndex {
    /// Each shard with the heap bytes last counted for it.
    shards: Vec<Mutex<(Shard, usize)>>,
    /// Keys found stored in a shared journal ([`DedupeIndex::observe`]) while a request of this
    /// node held them pending, with where they are stored: that request must not append them.
    /// Always locked inside the key's shard lock. Emptied as the requests settle.
    observed: Mutex<HashMap<Key, Position>>,
    /// Entries of `observed`, read without its lock (usually 0: the file journal has no other
    /// writers).
    observed_len: AtomicUsize,
    window: i64,
    /// Entries one shard holds at most.
    shard_cap: usize,
    /// The shards' heap bytes, as last counted.
    bytes: AtomicUsize,
}

impl DedupeIndex {
    /// An index of the pairs acked within `window_micros`, at most `max_entries` of them.
    pub(crate) fn new(window_micros: i64, max_entries: usize) -> Self {
        let shard_cap = max_entries.div_ceil(SHARDS).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new((Shard::new(shard_cap), 0)))
                .collect(),
            observed: Mutex::new(HashMap::new()),
            observed_len: AtomicUsize::new(0),
            window: window_micros,
            shard_cap,
            bytes: AtomicUsize::new(0),
        }
    }

    /// Heap bytes the index holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    /// Heap bytes the index holds at most: every shard full, plus the generation opened just
    /// before the oldest leaves.
    pub(crate) fn ceiling_bytes(&self) -> usize {
        let shard = Shard::new(self.shard_cap);
        let generations = self.shard_cap.div_ceil(shard.generation_cap) + 1;
        SHARDS * generations * table_slots(shard.generation_cap) * MAP_SLOT_BYTES
    }

    fn shard(&self, k: Key) -> std::sync::MutexGuard<'_, (Shard, usize)> {
        // A poisoned shard only means another request panicked mid-update; the map is still
        // a valid map, so keep serving.
        self.shards[shard_of(k)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Drops what is past the bound or the window, then counts the shard's heap into the total.
    fn tidy(&self, shard: &mut (Shard, usize), horizon: i64) {
        let (s, counted) = shard;
        let mut evicted = 0;
        while s.len > self.shard_cap && s.generations.len() > 1 && !s.oldest_is_all_pending() {
            evicted += s.drop_oldest();
        }
        while s.generations.len() > 1
            && !s.oldest_is_all_pending()
            && s.generations.front().is_some_and(|g| g.newest < horizon)
        {
            s.drop_oldest();
        }
        if evicted > 0 {
            crate::metrics::dedupe_evicted(evicted);
        }
        let now = s.heap_bytes();
        if now != *counted {
            if now > *counted {
                self.bytes.fetch_add(now - *counted, Ordering::Relaxed);
            } else {
                self.bytes.fetch_sub(*counted - now, Ordering::Relaxed);
            }
            *counted = now;
            crate::metrics::dedupe_memory(self.heap_bytes(), self.ceiling_bytes());
        }
    }

    /// Records a committed key (used when rebuilding from `raw`).
    pub(crate) fn insert_committed(&self, k: Key, at: i64, pos: Position) {
        let mut s = self.shard(k);
        s.0.file(k, Slot::Committed(at, pos));
        self.tidy(&mut s, at - self.window);
    }

    /// Records `k` as stored at `pos`, found in a `raw` partition that other nodes write too:
    /// a new entry when the index does not know it, nothing when it knows it committed, and,
    /// when a request of this node holds it pending, a note that request finds
    /// ([`DedupeIndex::take_observed`]) before it appends.
    pub(crate) fn observe(&self, k: Key, at: i64, pos: Position) {
        let mut s = self.shard(k);
        match s.0.get(&k) {
            Some(Slot::Committed(..)) => {}
            Some(Slot::Pending(..)) => {
                let mut observed = self.observed_map();
                observed.insert(k, pos);
                self.observed_len.store(observed.len(), Ordering::Release);
            }
            None => {
                s.0.file(k, Slot::Committed(at, pos));
                self.tidy(&mut s, at - self.window);
            }
        }
    }

    /// Of `keys` (pending for the caller), those found stored meanwhile, with where.
    pub(crate) fn take_observed(
        &self,
        keys: impl IntoIterator<Item = Key>,
    ) -> Vec<(Key, Position)> {
        let mut found = Vec::new();
        for k in keys {
            let _shard = self.shard(k);
            if let Some(pos) = self.forget_observed(k) {
                found.push((k, pos));
            }
        }
        found
    }

    /// Removes `k`'s note; the caller holds `k`'s shard lock.
    fn forget_observed(&self, k: Key) -> Option<Position> {
        if self.observed_len.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut observed = self.observed_map();
        let pos = observed.remove(&k);
        self.observed_len.store(observed.len(), Ordering::Release);
        pos
    }

    fn observed_map(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Position>> {
        self.observed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Tries to reserve `k` for the request whose outcome `rx` will carry.
    pub(crate) fn reserve(&self, k: Key, now: i64, rx: &watch::Receiver<Option<bool>>) -> Reserve {
        let mut s = self.shard(k);
        self.reserve_in(&mut s, k, now, rx)
    }

    /// [`DedupeIndex::reserve`] for every key of one request at once: no other request reserves
    /// anything between the first key and the last. So when two requests share keys, one of
    /// them reserved all of its keys before the other began, and only the later one waits.
    /// Reserved key by key, two requests taking the same keys in different orders (or at the
    /// same moment on two threads) could each hold a key the other waits for, and both would
    /// wait until they gave up.
    pub(crate) fn reserve_all(
        &self,
        keys: &[Key],
        now: i64,
        rx: &watch::Receiver<Option<bool>>,
    ) -> Vec<Reserve> {
        // The shards the keys fall in, locked in ascending order (nothing else holds two), so
        // two requests never hold each other's next lock.
        let mut guards: Vec<Option<std::sync::MutexGuard<'_, (Shard, usize)>>> =
            (0..SHARDS).map(|_| None).collect();
        let mut touched = [false; SHARDS];
        for &k in keys {
            touched[shard_of(k)] = true;
        }
        for (i, _) in touched.iter().enumerate().filter(|(_, t)| **t) {
            guards[i] = Some(self.shards[i].lock().unwrap_or_else(|e| e.into_inner()));
        }
        keys.iter()
            .map(|&k| {
                let s = guards[shard_of(k)]
                    .as_mut()
                    .expect("every key's shard is locked");
                self.reserve_in(s, k, now, rx)
            })
            .collect()
    }

    /// Reserves `k` in its shard, which the caller holds locked.
    fn reserve_in(
        &self,
        s: &mut (Shard, usize),
        k: Key,
        now: i64,
        rx: &watch::Receiver<Option<bool>>,
    ) -> Reserve {
        match s.0.get(&k) {
            Some(Slot::Committed(at, pos)) if *at >= now - self.window => {
                return Reserve::Duplicate(Some(*pos));
            }
            // The same id twice in one request: the second is a duplicate of the first.
            Some(Slot::Pending(_, other)) if other.same_channel(rx) => {
                return Reserve::Duplicate(None);
            }
            Some(Slot::Pending(_, other)) => return Reserve::Wait(other.clone()),
            _ => {}
        }
        s.0.file(k, Slot::Pending(now, rx.clone()));
        self.tidy(s, now - self.window);
        Reserve::New
    }

    /// Settles reservations: committed at their position (`Some`) or removed (`None`, the
    /// append failed — unless the key was found stored meanwhile: then committed there).
    pub(crate) fn settle(&self, keys: impl IntoIterator<Item = (Key, Option<Position>)>) {
        for (k, pos) in keys {
            let mut s = self.shard(k);
            // An append that failed may still have stored its records (a lost ack): if they
            // were read back meanwhile, the key is committed where they are.
            let observed = self.forget_observed(k);
            s.0.settle(k, pos.or(observed));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).0.len)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Position = Position {
        partition: 2,
        offset: 7,
    };

    #[test]
    fn its_heap_is_counted_and_stays_under_the_ceiling() {
        heap_stays_under_the_ceiling(|idx, k| idx.insert_committed(k, 1, P));
        // As requests file keys: pending, then committed where their append stored them.
        heap_stays_under_the_ceiling(|idx, k| {
            let (_tx, rx) = watch::channel(None);
            assert!(matches!(idx.reserve(k, 1, &rx), Reserve::New));
            idx.settle([(k, Some(P))]);
        });
    }

    fn heap_stays_under_the_ceiling(add: impl Fn(&DedupeIndex, Key)) {
        let idx = DedupeIndex::new(i64::MAX / 2, 1000);
        assert_eq!(idx.heap_bytes(), 0);
        let mut last = 0;
        for i in 0..20_000u64 {
            add(&idx, key("web", &i.to_string()));
            last = idx.heap_bytes();
            assert!(
                last <= idx.ceiling_bytes(),
                "{last} over {}",
                idx.ceiling_bytes()
            );
        }
        // Full shards hold most of what the ceiling allows, about 56 bytes an entry.
        assert!(
            last * 10 >= idx.ceiling_bytes() * 7,
            "{last} of {}",
            idx.ceiling_bytes()
        );
        assert!(idx.len() <= 1000 + SHARDS);
        assert!(
            last / idx.len() < 100,
            "{} bytes an entry",
            last / idx.len()
        );
    }

    #[test]
    fn a_key_found_stored_while_pending_is_committed_there_even_if_its_append_failed() {
        let index = DedupeIndex::new(1_000_000, 100);
        let (_tx, rx) = watch::channel(None);
        let at = |offset| Position {
            partition: 1,
            offset,
        };
        // Read back from a shared journal while pending: noted, then taken by the request.
        assert!(matches!(index.reserve(7, 10, &rx), Reserve::New));
        index.observe(7, 10, at(3));
        assert_eq!(index.take_observed([7, 8]), vec![(7, at(3))]);
        assert!(index.take_observed([7]).is_empty());
        index.settle([(7, Some(at(3)))]);
        // An append that failed after its records were stored and read back (a lost ack).
        assert!(matches!(index.reserve(9, 10, &rx), Reserve::New));
        index.observe(9, 10, at(4));
        index.settle([(9, None)]);
        let (_tx2, rx2) = watch::channel(None);
        assert!(matches!(index.reserve(9, 11, &rx2), Reserve::Duplicate(Some(p)) if p == at(4)));
        // A key nobody held is simply filed; one known committed is left as it is.
        index.observe(11, 10, at(5));
        index.observe(7, 10, at(6));
        assert!(matches!(index.reserve(11, 11, &rx2), Reserve::Duplicate(Some(p)) if p == at(5)));
        assert!(matches!(index.reserve(7, 11, &rx2), Reserve::Duplicate(Some(p)) if p == at(3)));
        assert_eq!(index.observed_len.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn reserve_commit_fail_and_expire() {
        let idx = DedupeIndex::new(1000, 1 << 20);
        let (tx, rx) = watch::channel(None);
        let a = key("web", "e1");
        assert_ne!(a, key("app", "e1"), "dedupe is scoped by source");
        assert!(matches!(idx.reserve(a, 10, &rx), Reserve::New));
        assert!(matches!(idx.reserve(a, 10, &rx), Reserve::Duplicate(None)));
        let (_tx2, rx2) = watch::channel(None);
        assert!(matches!(idx.reserve(a, 11, &rx2), Reserve::Wait(_)));
        idx.settle([(a, Some(P))]);
        drop(tx);
        assert!(matches!(
            idx.reserve(a, 12, &rx2),
            Reserve::Duplicate(Some(P))
        ));
        // failed appends are forgotten
        let b = key("web", "e2");
        assert!(matches!(idx.reserve(b, 20, &rx2), Reserve::New));
        idx.settle([(b, None)]);
        assert!(matches!(idx.reserve(b, 21, &rx2), Reserve::New));
        idx.settle([(b, Some(P))]);
        // past the window a key is new again, and expired entries leave the index
        assert_eq!(idx.len(), 2);
        assert!(matches!(idx.reserve(a, 5000, &rx2), Reserve::New));
        assert!(matches!(idx.reserve(b, 5000, &rx2), Reserve::New));
        assert_eq!(idx.len(), 2);
    }

    #[test]
    fn of_two_requests_sharing_keys_only_one_waits_for_the_other() {
        // Two threads reserve the same keys in opposite orders, released together, many times:
        // one request reserves every key and the other waits for it on every key; never does
        // each hold a key the other waits for.
        let idx = std::sync::Arc::new(DedupeIndex::new(i64::MAX / 2, 1 << 20));
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        for round in 0..500 {
            let keys: Vec<Key> = (0..64)
                .map(|i| key("web", &format!("{round}-{i}")))
                .collect();
            let reserve = |keys: Vec<Key>| {
                let (idx, barrier) = (idx.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let (tx, rx) = watch::channel(None);
                    barrier.wait();
                    let reserved = idx.reserve_all(&keys, 1, &rx);
                    let new = reserved
                        .iter()
                        .filter(|r| matches!(r, Reserve::New))
                        .count();
                    let waits = reserved
                        .iter()
                        .filter(|r| matches!(r, Reserve::Wait(_)))
                        .count();
                    (new, waits, tx)
                })
            };
            let reversed = keys.iter().rev().copied().collect();
            let (a, b) = (reserve(keys.clone()), reserve(reversed));
            let (a, b) = (a.join().unwrap(), b.join().unwrap());
            let mut counts = [(a.0, a.1), (b.0, b.1)];
            counts.sort();
            assert_eq!(counts, [(0, 64), (64, 0)], "round {round}");
            idx.settle(keys.iter().map(|&k| (k, Some(P))));
        }
    }

    #[test]
    fn the_oldest_committed_entries_leave_past_the_bound() {
        let cap = SHARDS * 4;
        let idx = DedupeIndex::new(i64::MAX / 2, cap);
        let (_tx, rx) = watch::channel(None);
        let keys: Vec<Key> = (0..cap * 3).map(|i| key("web", &format!("e{i}"))).collect();
        for (i, k) in keys.iter().enumerate() {
            idx.insert_committed(*k, i as i64, P);
        }
        assert!(
            idx.len() <= cap,
            "{} entries over a bound of {cap}",
            idx.len()
        );
        // The newest are still known; the oldest are new again.
        let newest = keys.last().copied().unwrap();
        assert!(matches!(
            idx.reserve(newest, 1_000, &rx),
            Reserve::Duplicate(Some(P))
        ));
        assert!(matches!(idx.reserve(keys[0], 1_000, &rx), Reserve::New));
        // Pending entries are never evicted: a request in flight keeps its reservation.
        let pending: Vec<Key> = (0..cap).map(|i| key("app", &format!("p{i}"))).collect();
        for k in &pending {
            assert!(matches!(idx.reserve(*k, 2_000, &rx), Reserve::New));
        }
        let (_tx2, rx2) = watch::channel(None);
        assert!(
            pending
                .iter()
                .all(|k| matches!(idx.reserve(*k, 2_001, &rx2), Reserve::Wait(_)))
        );
    }
}
