//! Server-side sessionisation: a session per user ends after an inactivity gap (30 minutes by
//! default). Used when the tracker gave no session of its own.
//!
//! The user is the event's routing key (user id, else anonymous id), so all of a user's events
//! are in one `raw` partition, in order, and one runner task owns the user's state. Session ids
//! are derived from the user and the session's first timestamp, so processing the same events
//! again gives the same ids: the runner rebuilds the state after a restart from its last
//! snapshot plus the raw records after it (`runner.rs`), and replays come out identical.
//!
//! Events whose time goes backwards (an offline batch) stay in the current session unless they
//! are a whole gap older; they do not open a session in the past. Users idle longer than
//! `forget_after` are dropped from memory (their next event starts at index 1 again), and at
//! most `max_users` are kept (the longest idle go first).

use std::collections::HashMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Built, Draft, EnrichConfig, Facts, SessionConfig, Step, micros, str_at, when};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Session {
    /// Latest event time seen, µs.
    last: i64,
    /// Session number, from 1.
    index: i32,
    /// Session id.
    id: String,
}

/// The sessions of one partition's users: the chain's per-partition state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Sessions {
    users: HashMap<String, Session>,
    /// The newest event time seen, for eviction.
    newest: i64,
    #[serde(skip)]
    since_sweep: usize,
    /// The generation of the suppressed set last applied ([`Sessions::forget_suppressed`]).
    #[serde(skip)]
    suppressed_seen: u64,
}

/// A snapshot of a partition's sessions and the raw offset it was taken at.
#[derive(Serialize, Deserialize)]
pub(crate) struct Snapshot {
    /// The first raw offset not reflected in `sessions`.
    pub(crate) next: u64,
    pub(crate) sessions: Sessions,
}

impl Sessions {
    /// Forgets the sessions of suppressed users, once per change of the set.
    pub(crate) fn forget_suppressed(&mut self, suppressed: &crate::Suppressed) {
        let generation = suppressed.generation();
        if generation == self.suppressed_seen {
            return;
        }
        self.users.retain(|user, _| !suppressed.contains(user));
        self.suppressed_seen = generation;
    }

    /// The session (id, index) of an event of `user` at `ts`.
    pub(crate) fn assign(
        &mut self,
        user: &str,
        ts: i64,
        gap_us: i64,
        forget_us: i64,
        max_users: usize,
    ) -> (String, i32) {
        self.newest = self.newest.max(ts);
        if let Some(s) = self.users.get_mut(user) {
            if ts.saturating_sub(s.last) <= gap_us {
                s.last = s.last.max(ts);
                return (s.id.clone(), s.index);
            }
            s.index = s.index.saturating_add(1);
            s.last = ts;
            s.id = session_id(user, ts, s.index);
            return (s.id.clone(), s.index);
        }
        let id = session_id(user, ts, 1);
        self.users.insert(
            user.to_string(),
            Session {
                last: ts,
                index: 1,
                id: id.clone(),
            },
        );
        self.since_sweep += 1;
        if self.since_sweep >= 10_000 || self.users.len() > max_users {
            self.sweep(forget_us, max_users);
        }
        (id, 1)
    }

    fn sweep(&mut self, forget_us: i64, max_users: usize) {
        self.since_sweep = 0;
        let horizon = self.newest.saturating_sub(forget_us);
        self.users.retain(|_, s| s.last >= horizon);
        if self.users.len() > max_users {
            let mut lasts: Vec<i64> = self.users.values().map(|s| s.last).collect();
            let cut = lasts.len() - max_users * 9 / 10;
            let (_, nth, _) = lasts.select_nth_unstable(cut);
            let nth = *nth;
            self.users.retain(|_, s| s.last > nth);
        }
    }

    /// Users held.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.users.len()
    }
}

pub(super) fn build(c: &EnrichConfig) -> Built {
    let s = &c.session;
    if s.enabled && (s.timeout.is_zero() || s.max_users == 0) {
        return Err("enrich.session: timeout and max_users must be above zero".into());
    }
    when(s.enabled, || s.clone())
}

/// `session`: the tracker's session when it sent one, else one assigned per user here.
impl Step for SessionConfig {
    fn apply(&self, draft: &mut Draft, facts: &mut Facts<'_>) -> Result<(), String> {
        let tracker = str_at(&draft.context, &["snowplow", "domain_sessionid"])
            .map(str::to_string)
            .or_else(|| match draft.context.get("sessionId") {
                Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            });
        let (id, index) = match tracker {
            Some(id) => {
                let index = match draft
                    .context
                    .get("snowplow")
                    .and_then(|s| s.get("domain_sessionidx"))
                {
                    Some(Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
                    Some(Value::String(s)) => s.parse().ok(),
                    _ => None,
                };
                (id, index)
            }
            None => {
                let user = draft.routing_key().to_string();
                let (id, index) = facts.sessions.assign(
                    &user,
                    draft.timestamp,
                    micros(self.timeout),
                    micros(self.forget_after),
                    self.max_users,
                );
                (id, Some(index))
            }
        };
        draft.enriched.session_id = Some(id);
        draft.enriched.session_index = index;
        Ok(())
    }
}

/// A UUID-shaped id from the user, the session's start and its index.
fn session_id(user: &str, start: i64, index: i32) -> String {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(user.as_bytes());
    h.update(&[0xff]);
    h.update(&start.to_le_bytes());
    h.update(&index.to_le_bytes());
    let mut b = h.digest128().to_be_bytes();
    b[6] = (b[6] & 0x0f) | 0x80; // version 8: custom
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    uuid::Uuid::from_bytes(b).to_string()
}

/// Loads a snapshot; `None` when there is none or it is unreadable (the caller starts over).
pub(crate) fn load(path: &Path) -> Option<Snapshot> {
    let bytes = std::fs::read(path).ok()?;
    match serde_json::from_slice(&bytes) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "session snapshot unreadable; rebuilding from raw");
            None
        }
    }
}

/// Saves a snapshot atomically and durably (`durable_fs::write_atomic`).
pub(crate) fn save(path: &Path, next: u64, sessions: &Sessions) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct Out<'a> {
        next: u64,
        sessions: &'a Sessions,
    }
    let bytes = serde_json::to_vec(&Out { next, sessions })?;
    sluice_journal::durable_fs::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000_000;

    #[test]
    fn a_thirty_minute_gap_starts_a_new_session() {
        let mut s = Sessions::default();
        let gap = 30 * MIN;
        let a = |s: &mut Sessions, u: &str, t: i64| s.assign(u, t, gap, 1000 * gap, 100);
        let (s1, i1) = a(&mut s, "u", 0);
        assert_eq!(i1, 1);
        assert_eq!(a(&mut s, "u", 29 * MIN), (s1.clone(), 1));
        assert_eq!(
            a(&mut s, "u", 58 * MIN),
            (s1.clone(), 1),
            "the gap counts from the last event"
        );
        // An out-of-order event of the same session stays in it.
        assert_eq!(a(&mut s, "u", 10 * MIN), (s1.clone(), 1));
        let (s2, i2) = a(&mut s, "u", 89 * MIN);
        assert_eq!(i2, 2);
        assert_ne!(s2, s1);
        // Another user is independent.
        assert_eq!(a(&mut s, "v", 89 * MIN).1, 1);
        // Deterministic: the same events give the same ids.
        let mut again = Sessions::default();
        assert_eq!(a(&mut again, "u", 0).0, s1);
        assert_eq!(uuid::Uuid::parse_str(&s1).unwrap().get_version_num(), 8);
    }

    #[test]
    fn idle_users_are_forgotten_and_the_count_is_capped() {
        let mut s = Sessions::default();
        for i in 0..50 {
            s.assign(&format!("u{i}"), i * MIN, 30 * MIN, 1000 * MIN, 20);
        }
        assert!(s.len() <= 20, "{}", s.len());
        // The most recent users are kept.
        assert_eq!(s.assign("u49", 49 * MIN, 30 * MIN, 1000 * MIN, 20).1, 1);
        assert!(s.users.contains_key("u49"));
    }

    #[test]
    fn snapshots_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sessions/0.json");
        let mut s = Sessions::default();
        let (id, _) = s.assign("u", 5, 10, 100, 10);
        save(&path, 42, &s).unwrap();
        let back = load(&path).unwrap();
        assert_eq!(back.next, 42);
        assert_eq!(back.sessions.users["u"].id, id);
        std::fs::write(&path, b"{broken").unwrap();
        assert!(load(&path).is_none());
    }
}
