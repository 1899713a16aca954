//! The dedupe index: which (source, event_id) pairs were acked within the window.
//!
//! Keys are 128-bit xxh3 hashes of `source \xff event_id` (a false duplicate needs a 128-bit
//! collision). An entry is *pending* while its request's append is in flight and *committed*
//! once the append is durable; a failed append removes its pending entries so the client's
//! retry goes through. A request that meets another request's pending entry waits for that
//! append to finish (bounded), because answering "duplicate" for an event that is not yet
//! durable would ack something that may still be lost.
//!
//! The index lives in memory and is rebuilt from the `raw` topic on start
//! ([`crate::Collector::open`]): every raw record within the window is a committed entry. So the
//! window survives restarts exactly as far as `raw` retention reaches back (7 days by default,
//! longer than the 24 h window).

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
}

impl DedupeIndex {
    pub(crate) fn new(window_micros: i64) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            window: window_micros,
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
        let idx = DedupeIndex::new(1000);
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
}
