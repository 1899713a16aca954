//! The dedupe index: which (source, event_id) pairs were acked within the window.
//!
//! Keys are 128-bit xxh3 hashes of `source \xff event_id` (a false duplicate needs a 128-bit
//! collision). An entry is *pending* while its request's append is in flight and *committed*
//! once the append is durable; a failed append removes its pending entries so the client's
//! retry goes through. A request that meets another request's pending entry waits for that
//! append to finish (bounded), because answering "duplicate" for an event that is not yet
//! durable would ack something that may still be lost.
//!
//! The index lives in memory, bounded by `collector.dedupe_max_entries` (about 90 bytes an
//! entry): past it, the oldest committed entries leave first (counted in
//! `sluice_collector_dedupe_evicted_total`), so under heavy traffic the window is the most
//! recent `dedupe_max_entries` events rather than the whole `dedupe_window`. It is rebuilt from
//! the `raw` topic on start ([`crate::Collector::open`]) from the newest records within the
//! window, at most the bound's worth, so a restart costs the same whatever `raw` holds.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use sluice_event::Position;
use tokio::sync::watch;

const SHARDS: usize = 16;

pub(crate) type Key = u128;

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

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Slot>,
    order: VecDeque<(i64, Key)>,
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
    shards: Vec<Mutex<Shard>>,
    window: i64,
    /// Entries one shard holds at most.
    shard_cap: usize,
}

impl DedupeIndex {
    /// An index of the pairs acked within `window_micros`, at most `max_entries` of them.
    pub(crate) fn new(window_micros: i64, max_entries: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            window: window_micros,
            shard_cap: max_entries.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, k: Key) -> std::sync::MutexGuard<'_, Shard> {
        // A poisoned shard only means another request panicked mid-update; the map is still
        // a valid map, so keep serving.
        self.shards[(k as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Records a committed key (used when rebuilding from `raw`).
    pub(crate) fn insert_committed(&self, k: Key, at: i64, pos: Position) {
        let mut s = self.shard(k);
        s.map.insert(k, Slot::Committed(at, pos));
        s.order.push_back((at, k));
        evict(&mut s, self.shard_cap);
    }

    /// Tries to reserve `k` for the request whose outcome `rx` will carry.
    pub(crate) fn reserve(&self, k: Key, now: i64, rx: &watch::Receiver<Option<bool>>) -> Reserve {
        let mut s = self.shard(k);
        prune(&mut s, now - self.window);
        match s.map.get(&k) {
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
        s.map.insert(k, Slot::Pending(now, rx.clone()));
        s.order.push_back((now, k));
        evict(&mut s, self.shard_cap);
        Reserve::New
    }

    /// Settles reservations: committed at their position (`Some`) or removed (`None`, the
    /// append failed).
    pub(crate) fn settle(&self, keys: impl IntoIterator<Item = (Key, Option<Position>)>) {
        for (k, pos) in keys {
            let mut s = self.shard(k);
            if let Some(Slot::Pending(at, _)) = s.map.get(&k) {
                let at = *at;
                match pos {
                    Some(pos) => s.map.insert(k, Slot::Committed(at, pos)),
                    None => s.map.remove(&k),
                };
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).map.len())
            .sum()
    }
}

/// Drops the oldest committed entries while the shard is over `cap`. A pending entry at the
/// front stops it (its request settles soon); the shard may then exceed the cap by the
/// requests in flight.
fn evict(s: &mut Shard, cap: usize) {
    let mut evicted = 0u64;
    while s.map.len() > cap {
        let Some(&(at, k)) = s.order.front() else {
            break;
        };
        match s.map.get(&k) {
            Some(Slot::Pending(..)) => break,
            Some(Slot::Committed(c, _)) if *c == at => {
                s.map.remove(&k);
                evicted += 1;
            }
            // A stale order entry (the key was re-reserved later): nothing to drop.
            _ => {}
        }
        s.order.pop_front();
    }
    if evicted > 0 {
        crate::metrics::dedupe_evicted(evicted);
    }
}

fn prune(s: &mut Shard, horizon: i64) {
    while let Some(&(at, k)) = s.order.front() {
        if at >= horizon {
            break;
        }
        s.order.pop_front();
        if let Some(Slot::Committed(c, _)) = s.map.get(&k)
            && *c == at
        {
            s.map.remove(&k);
        }
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
