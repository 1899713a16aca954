//! The history of client operations and the checker over it: each request is ok, failed or
//! unknown (Jepsen's ok / fail / info); after a run every sink is compared with what was sent,
//! counting lost (acked but missing), duplicated, phantom (present but never sent) and
//! failed-but-present events.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use serde::Serialize;

/// What a client knows about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A 2xx that counted every event as accepted or as a duplicate of a stored one.
    Ok,
    /// A definite refusal (4xx other than 408/429): nothing of the request may be stored.
    Failed,
    /// A timeout, a reset connection or a 5xx/429/408: the events may or may not be stored.
    Unknown,
}

/// One request as the client saw it.
#[derive(Clone, Debug, Serialize)]
pub struct Op {
    /// Client number.
    pub client: usize,
    /// The ids of the events the request carried.
    pub event_ids: Vec<String>,
    /// Its outcome.
    pub outcome: Outcome,
}

/// Every operation of a run, appended to by all clients.
#[derive(Debug, Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
}

impl History {
    /// Records one operation.
    pub fn record(&self, client: usize, event_ids: Vec<String>, outcome: Outcome) {
        self.ops.lock().expect("history lock").push(Op {
            client,
            event_ids,
            outcome,
        });
    }

    /// A copy of every operation so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().expect("history lock").clone()
    }

    /// The final state of every event sent: acked when any request carrying it was ok,
    /// failed when every request carrying it failed, unknown otherwise.
    pub fn fold(&self) -> Sent {
        let mut state: HashMap<String, Outcome> = HashMap::new();
        for op in self.ops.lock().expect("history lock").iter() {
            for id in &op.event_ids {
                let s = state.entry(id.clone()).or_insert(op.outcome);
                *s = match (*s, op.outcome) {
                    (Outcome::Ok, _) | (_, Outcome::Ok) => Outcome::Ok,
                    (Outcome::Unknown, _) | (_, Outcome::Unknown) => Outcome::Unknown,
                    _ => Outcome::Failed,
                };
            }
        }
        Sent { state }
    }

    /// Counts of requests by outcome: (ok, failed, unknown).
    pub fn request_counts(&self) -> (usize, usize, usize) {
        let ops = self.ops.lock().expect("history lock");
        let n = |o| ops.iter().filter(|op| op.outcome == o).count();
        (n(Outcome::Ok), n(Outcome::Failed), n(Outcome::Unknown))
    }
}

/// Every event id sent and what the clients know about it.
#[derive(Clone, Debug, Default)]
pub struct Sent {
    state: HashMap<String, Outcome>,
}

impl Sent {
    /// The ids in state `o`.
    pub fn with(&self, o: Outcome) -> impl Iterator<Item = &String> {
        self.state
            .iter()
            .filter(move |(_, s)| **s == o)
            .map(|(id, _)| id)
    }

    /// How many events are in state `o`.
    pub fn count(&self, o: Outcome) -> usize {
        self.with(o).count()
    }

    /// The state of `id`, if it was sent.
    pub fn get(&self, id: &str) -> Option<Outcome> {
        self.state.get(id).copied()
    }
}

/// What the checker found in one sink.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SinkReport {
    /// The sink: `events`, a typed table, `hot`, `postgres`, ….
    pub sink: String,
    /// Rows seen.
    pub rows: usize,
    /// Acked events missing.
    pub lost: usize,
    /// Extra copies of an event beyond the first.
    pub duplicated: usize,
    /// Rows whose id was never sent.
    pub phantom: usize,
    /// Events every request for which was refused, present anyway.
    pub failed_present: usize,
    /// Events of unknown outcome that made it (allowed either way).
    pub unknown_present: usize,
    /// Up to 5 example ids per kind of violation, so a failure names the client and sequence.
    pub examples: BTreeMap<String, Vec<String>>,
}

impl SinkReport {
    /// Whether the sink broke an invariant.
    pub fn violated(&self) -> bool {
        self.lost + self.duplicated + self.phantom + self.failed_present > 0
    }

    fn example(&mut self, kind: &str, id: &str) {
        let list = self.examples.entry(kind.to_string()).or_default();
        if list.len() < 5 {
            list.push(id.to_string());
        }
    }
}

/// Compares one sink's ids (one per row, duplicates kept) with what was sent. `expected`
/// restricts the events the sink should hold (a typed table holds only its event name); `None`
/// means every sent event.
pub fn check_ids(
    sink: &str,
    sent: &Sent,
    rows: &[String],
    expected: Option<&dyn Fn(&str) -> bool>,
) -> SinkReport {
    let mut r = SinkReport {
        sink: sink.to_string(),
        rows: rows.len(),
        ..SinkReport::default()
    };
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in rows {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let mut ids: Vec<(&str, usize)> = seen.into_iter().collect();
    ids.sort_unstable();
    for (id, n) in &ids {
        if *n > 1 {
            r.duplicated += n - 1;
            r.example("duplicated", id);
        }
        match sent.get(id) {
            None => {
                r.phantom += 1;
                r.example("phantom", id);
            }
            Some(Outcome::Failed) => {
                r.failed_present += 1;
                r.example("failed_present", id);
            }
            Some(Outcome::Unknown) => r.unknown_present += 1,
            Some(Outcome::Ok) => {}
        }
    }
    let present: HashSet<&str> = ids.iter().map(|(id, _)| *id).collect();
    let mut lost: Vec<&String> = sent
        .with(Outcome::Ok)
        .filter(|id| expected.is_none_or(|f| f(id)))
        .filter(|id| !present.contains(id.as_str()))
        .collect();
    lost.sort_unstable();
    r.lost = lost.len();
    for id in lost {
        r.example("lost", id);
    }
    r
}

/// Compares per-key counts (e.g. a hot-tier profile's `events_total` per user) with the counts
/// the sent, acked events imply. Lost and duplicated are the shortfalls and excesses summed
/// over keys; a key present but never expected counts its events as phantom.
pub fn check_counts(
    sink: &str,
    expected: &BTreeMap<String, u64>,
    got: &BTreeMap<String, u64>,
) -> SinkReport {
    let mut r = SinkReport {
        sink: sink.to_string(),
        rows: got.values().sum::<u64>() as usize,
        ..SinkReport::default()
    };
    for (key, want) in expected {
        let have = got.get(key).copied().unwrap_or(0);
        if have < *want {
            r.lost += (want - have) as usize;
            r.example("lost", key);
        } else if have > *want {
            r.duplicated += (have - want) as usize;
            r.example("duplicated", key);
        }
    }
    for (key, have) in got {
        if !expected.contains_key(key) && *have > 0 {
            r.phantom += *have as usize;
            r.example("phantom", key);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> History {
        let h = History::default();
        h.record(0, vec!["a".into(), "b".into()], Outcome::Unknown);
        h.record(0, vec!["a".into(), "b".into()], Outcome::Ok);
        h.record(1, vec!["c".into()], Outcome::Failed);
        h.record(1, vec!["d".into()], Outcome::Unknown);
        h.record(2, vec!["e".into()], Outcome::Ok);
        h
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn outcomes_fold_per_event() {
        let sent = history().fold();
        assert_eq!(sent.count(Outcome::Ok), 3);
        assert_eq!(sent.get("c"), Some(Outcome::Failed));
        assert_eq!(sent.get("d"), Some(Outcome::Unknown));
        assert_eq!(history().request_counts(), (2, 1, 2));
    }

    #[test]
    fn a_clean_sink_passes_and_unknown_events_may_appear() {
        let sent = history().fold();
        let r = check_ids("events", &sent, &ids(&["a", "b", "e", "d"]), None);
        assert!(!r.violated(), "{r:?}");
        assert_eq!(r.unknown_present, 1);
        let r = check_ids("events", &sent, &ids(&["a", "b", "e"]), None);
        assert!(!r.violated(), "{r:?}");
    }

    #[test]
    fn a_dropped_acked_event_is_lost() {
        let sent = history().fold();
        let r = check_ids("events", &sent, &ids(&["a", "e"]), None);
        assert_eq!(r.lost, 1);
        assert_eq!(r.examples["lost"], vec!["b"]);
        assert!(r.violated());
    }

    #[test]
    fn a_second_copy_is_a_duplicate() {
        let sent = history().fold();
        let r = check_ids("events", &sent, &ids(&["a", "b", "e", "e", "e"]), None);
        assert_eq!(r.duplicated, 2);
        assert_eq!(r.lost, 0);
        assert!(r.violated());
    }

    #[test]
    fn an_event_never_sent_is_a_phantom_and_a_refused_one_must_not_appear() {
        let sent = history().fold();
        let r = check_ids("events", &sent, &ids(&["a", "b", "e", "zz", "c"]), None);
        assert_eq!(r.phantom, 1);
        assert_eq!(r.failed_present, 1);
        assert!(r.violated());
    }

    #[test]
    fn a_restricted_sink_expects_only_its_events() {
        let sent = history().fold();
        let only_e = |id: &str| id == "e";
        let r = check_ids("typed", &sent, &ids(&["e"]), Some(&only_e));
        assert!(!r.violated(), "{r:?}");
        let r = check_ids("typed", &sent, &[], Some(&only_e));
        assert_eq!(r.lost, 1);
    }

    #[test]
    fn count_sinks_report_shortfalls_excess_and_strangers() {
        let want: BTreeMap<String, u64> = [("u1".to_string(), 3), ("u2".to_string(), 2)].into();
        assert!(!check_counts("hot", &want, &want).violated());
        let got: BTreeMap<String, u64> = [
            ("u1".to_string(), 2),
            ("u2".to_string(), 4),
            ("u9".to_string(), 1),
        ]
        .into();
        let r = check_counts("hot", &want, &got);
        assert_eq!((r.lost, r.duplicated, r.phantom), (1, 2, 1));
    }
}
