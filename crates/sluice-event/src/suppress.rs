//! [`Suppressed`]: the people whose data was deleted (`sluice privacy delete`): the runner drops
//! their new events, and the stages that keep per-person state (the runner's sessions, the
//! models' pending examples) forget them.
//!
//! The set holds a hash of each id, never the id itself ([`subject_hash`]), so the list that
//! outlives a person's data does not name them. An event is dropped when its `user_id` or its
//! `anonymous_id` is in the set: right after it is read (before validation, enrichment and the
//! user functions see it, so it leaves no session and no bad row), and again before it is
//! written (a function may have set the id). Replays go through the same chain, so a deleted
//! person's raw records are not brought back either. Every change bumps a generation; a stage
//! with per-person state compares it with the one it last applied and forgets the newly
//! suppressed people.

use std::collections::HashSet;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// The hash an id is kept and looked up by: SHA-256 of a fixed prefix and the id.
pub fn subject_hash(id: &str) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"sluice-subject\0");
    h.update(id.as_bytes());
    h.finalize().into()
}

/// The suppressed ids (as hashes), shared by the runner's chain and the deletion requests.
#[derive(Debug, Default)]
pub struct Suppressed {
    set: RwLock<HashSet<[u8; 32]>>,
    /// Bumped by every change; 0 while the set is empty and never changed.
    generation: AtomicU64,
}

impl Suppressed {
    /// A set holding `hashes`.
    pub fn from_hashes(hashes: impl IntoIterator<Item = [u8; 32]>) -> Self {
        let set: HashSet<[u8; 32]> = hashes.into_iter().collect();
        let generation = AtomicU64::new(u64::from(!set.is_empty()));
        Self {
            set: RwLock::new(set),
            generation,
        }
    }

    /// Adds `hashes`; whether any was new.
    pub fn add(&self, hashes: impl IntoIterator<Item = [u8; 32]>) -> bool {
        let mut set = self.set.write().unwrap_or_else(|e| e.into_inner());
        let before = set.len();
        set.extend(hashes);
        let changed = set.len() > before;
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
        }
        changed
    }

    /// Changes so far (0: never had an entry). Cheap: the chain reads it per batch.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Whether `id` is suppressed.
    pub fn contains(&self, id: &str) -> bool {
        if self.generation() == 0 {
            return false;
        }
        let hash = subject_hash(id);
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&hash)
    }

    /// Whether an event with these ids is suppressed.
    pub fn covers(&self, user_id: Option<&str>, anonymous_id: Option<&str>) -> bool {
        self.generation() != 0
            && [user_id, anonymous_id]
                .into_iter()
                .flatten()
                .any(|id| !id.is_empty() && self.contains(id))
    }

    /// Every hash, sorted (for saving).
    pub fn hashes(&self) -> Vec<[u8; 32]> {
        let set = self.set.read().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<[u8; 32]> = set.iter().copied().collect();
        out.sort_unstable();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_added_id_is_covered_under_either_column_and_the_generation_moves() {
        let s = Suppressed::default();
        assert_eq!(s.generation(), 0);
        assert!(!s.covers(Some("u1"), None));
        assert!(s.add([subject_hash("u1")]));
        assert_eq!(s.generation(), 1);
        assert!(s.covers(Some("u1"), None));
        assert!(s.covers(None, Some("u1")));
        assert!(s.covers(Some("u2"), Some("u1")));
        assert!(!s.covers(Some("u2"), Some("")));
        assert!(
            !s.add([subject_hash("u1")]),
            "adding it again changes nothing"
        );
        assert_eq!(s.generation(), 1);
        let back = Suppressed::from_hashes(s.hashes());
        assert!(back.contains("u1") && !back.contains("u2"));
        assert_ne!(subject_hash("u1"), subject_hash("u1 "));
    }
}
