//! [`ValueCache`]: the decoded profiles and counter states the projection wrote last, so that a
//! batch touching them again neither reads nor decodes them from the store.
//!
//! Why a cached value is the stored one:
//! - only values the projection itself wrote enter the cache, exactly as encoded into a batch
//!   that the store then accepted, and a value leaves the cache when a batch takes it;
//! - the projection is the only writer of its keys: every batch is a compare-and-set on its
//!   positions, so another writer (a node that took the lease meanwhile) makes the next batch
//!   fail with a conflict before anything cached could be written over its values;
//! - the one other change to the values, a deletion request, goes through [`HotStore::delete`],
//!   whose count ([`HotStore::deletions`]) the projection compares before every batch: when it
//!   moved, the whole cache is dropped.
//!
//! The cache is bounded by the stored size of its values (the bytes the batch wrote): two
//! generations, each at most half of `capacity`; when the current one fills, the previous one
//! is dropped and the current one becomes it. A value found in the previous generation moves
//! back into the current one when it is written again, so the values in use stay.
//!
//! [`HotStore::delete`]: crate::HotStore::delete
//! [`HotStore::deletions`]: crate::HotStore::deletions

use std::collections::HashMap;

use crate::counter::CounterState;
use crate::profile::Profile;

/// A decoded value of the hot store.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Value {
    Profile(Profile),
    Counter(CounterState),
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct ValueCache {
    capacity: usize,
    current: HashMap<String, (Value, usize)>,
    current_bytes: usize,
    previous: HashMap<String, (Value, usize)>,
    previous_bytes: usize,
    /// The store's deletion count the cache is valid for.
    deletions: u64,
    hits: u64,
    misses: u64,
}

impl ValueCache {
    /// A cache of at most `capacity` stored bytes (0: caches nothing).
    pub(crate) fn new(capacity: usize, deletions: u64) -> Self {
        Self {
            capacity,
            current: HashMap::new(),
            current_bytes: 0,
            previous: HashMap::new(),
            previous_bytes: 0,
            deletions,
            hits: 0,
            misses: 0,
        }
    }

    /// The store's deletion count the cache is valid for.
    pub(crate) fn deletions(&self) -> u64 {
        self.deletions
    }

    /// Drops everything if the store's deletion count moved since the cache was filled.
    pub(crate) fn check_deletions(&mut self, deletions: u64) {
        if deletions != self.deletions {
            self.clear();
            self.deletions = deletions;
        }
    }

    /// Drops every value.
    pub(crate) fn clear(&mut self) {
        self.current.clear();
        self.previous.clear();
        self.current_bytes = 0;
        self.previous_bytes = 0;
    }

    /// Takes `key`'s value out of the cache (the batch owns it until it is written back).
    pub(crate) fn take(&mut self, key: &str) -> Option<Value> {
        let found = match self.current.remove(key) {
            Some((value, bytes)) => {
                self.current_bytes -= bytes;
                Some(value)
            }
            None => self.previous.remove(key).map(|(value, bytes)| {
                self.previous_bytes -= bytes;
                value
            }),
        };
        match found {
            Some(_) => self.hits += 1,
            None => self.misses += 1,
        }
        found
    }

    /// `value` as the store now holds it (`bytes` long, encoded).
    pub(crate) fn put(&mut self, key: String, value: Value, bytes: usize) {
        if bytes > self.capacity / 2 {
            return;
        }
        if self.current_bytes + bytes > self.capacity / 2 {
            let dropped = std::mem::replace(&mut self.previous, std::mem::take(&mut self.current));
            drop_elsewhere(dropped);
            self.previous_bytes = self.current_bytes;
            self.current_bytes = 0;
        }
        if let Some((_, old)) = self.previous.remove(&key) {
            self.previous_bytes -= old;
        }
        self.current_bytes += bytes;
        if let Some((_, old)) = self.current.insert(key, (value, bytes)) {
            self.current_bytes -= old;
        }
        debug_assert!(
            self.current_bytes + self.previous_bytes <= self.capacity,
            "the value cache stays within its capacity"
        );
    }

    /// Stored bytes of the values held.
    pub(crate) fn bytes(&self) -> usize {
        self.current_bytes + self.previous_bytes
    }

    /// Lookups that found their value, and that did not, so far.
    pub(crate) fn hits_and_misses(&self) -> (u64, u64) {
        (self.hits, self.misses)
    }
}

/// Drops a generation on a thread of its own: freeing tens of thousands of decoded profiles
/// would take the projection's loop milliseconds per rotation. When no thread can be started,
/// the failed spawn drops it here.
fn drop_elsewhere(generation: HashMap<String, (Value, usize)>) {
    if generation.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("hot-cache-drop".into())
        .spawn(move || drop(generation));
    if let Err(error) = spawned {
        tracing::debug!(%error, "no thread to drop a cache generation on; dropped in place");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(id: &str) -> Value {
        Value::Profile(Profile {
            id: id.into(),
            ..Profile::default()
        })
    }

    #[test]
    fn a_taken_value_is_gone_until_it_is_put_back() {
        let mut cache = ValueCache::new(1000, 0);
        cache.put("p:a".into(), profile("a"), 100);
        assert_eq!(cache.take("p:a"), Some(profile("a")));
        assert_eq!(cache.take("p:a"), None);
        assert_eq!(cache.bytes(), 0);
        assert_eq!(cache.hits_and_misses(), (1, 1));
    }

    #[test]
    fn it_keeps_within_capacity_and_keeps_the_values_in_use() {
        let mut cache = ValueCache::new(1000, 0);
        for i in 0..100 {
            cache.put(format!("p:{i}"), profile(&i.to_string()), 90);
            // p:0 is written again after every other value: it stays.
            let hot = cache.take("p:0").expect("the value in use stays cached");
            cache.put("p:0".into(), hot, 90);
            assert!(cache.bytes() <= 1000, "{} bytes", cache.bytes());
        }
        assert!(cache.take("p:1").is_none(), "an old value was dropped");
        assert!(cache.take("p:99").is_some());
        // A value larger than a generation is never cached.
        cache.put("p:big".into(), profile("big"), 501);
        assert!(cache.take("p:big").is_none());
    }

    #[test]
    fn a_deletion_in_the_store_drops_everything() {
        let mut cache = ValueCache::new(1000, 3);
        cache.put("p:a".into(), profile("a"), 100);
        cache.check_deletions(3);
        assert_eq!(cache.bytes(), 100);
        cache.check_deletions(4);
        assert_eq!(cache.bytes(), 0);
        assert!(cache.take("p:a").is_none());
    }

    #[test]
    fn capacity_zero_caches_nothing() {
        let mut cache = ValueCache::new(0, 0);
        cache.put("p:a".into(), profile("a"), 1);
        assert!(cache.take("p:a").is_none());
    }
}
