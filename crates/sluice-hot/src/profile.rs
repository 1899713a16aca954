//! [`Profile`]: what the hot tier knows about one user, and how an event updates it.
//!
//! A profile is keyed by the event's user id, else its anonymous id (events with neither have
//! no profile). It holds first and last seen (event time, µs since the epoch), the number of
//! events per event name, the traits of identify calls (merged key by key, later calls win),
//! the last N events, the current session (a gap longer than `session_timeout` starts a new
//! one) and the latest score of each online model. Aliases are not merged: an anonymous id and
//! a user id are two profiles.
//!
//! The states of the counters keyed by `user` (the profile id) are stored in the profile's own
//! value (`counters`), so that an event's counters cost the projection no key of their own: one
//! value read, decoded, encoded and written per event instead of one per counter. A profile
//! stored before has none there (`counters` absent); its counters are under their own keys
//! (`c:<counter>:<id>`), which the projection moves in when it next writes the profile.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sluice_event::{Event, EventType};

use crate::HotSettings;
use crate::counter::KeptState;

/// An event with its JSON parts parsed once, as projections and models read it.
pub struct EventView<'a> {
    /// The event.
    pub event: &'a Event,
    /// Its properties (traits for identify), an object (`{}` when not one).
    pub properties: Value,
    /// The same as JSON text: the event's own when it is an object.
    properties_text: Option<&'a RawValue>,
    /// Its context, when some reader needs it.
    pub context: Option<Value>,
    /// The profile id: user id, else anonymous id.
    pub profile_id: Option<&'a str>,
}

impl<'a> EventView<'a> {
    /// Parses `event`'s properties (and context when `with_context`).
    pub fn new(event: &'a Event, with_context: bool) -> Self {
        let parse = |raw: &serde_json::value::RawValue| {
            serde_json::from_str::<Value>(raw.get())
                .ok()
                .filter(Value::is_object)
                .unwrap_or_else(|| Value::Object(Map::new()))
        };
        let profile_id = Profile::id_of(event);
        // Valid JSON (a `RawValue`) that starts with `{` is an object.
        let is_object = event.properties.get().trim_start().starts_with('{');
        Self {
            event,
            properties: parse(&event.properties),
            properties_text: is_object.then_some(&*event.properties),
            context: with_context.then(|| parse(&event.context)),
            profile_id,
        }
    }

    /// The properties as JSON text, as a profile's recent events keep them.
    fn properties_json(&self) -> RawJson {
        RawJson(match self.properties_text {
            Some(text) => text.to_owned(),
            None => RawValue::from_string("{}".into()).unwrap_or_default(),
        })
    }
}

/// A JSON value kept as its text: copied and written out as it is, never parsed again.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
    }
}

/// One of a profile's recent events.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentEvent {
    /// The event id.
    pub event_id: String,
    /// Its name.
    pub event: String,
    /// Its type.
    pub event_type: EventType,
    /// Event time, µs since the epoch.
    pub timestamp: i64,
    /// Its properties (JSON text: a profile is read and written far more often than its
    /// recent events' properties are looked into).
    pub properties: RawJson,
}

/// The current session.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// The id of the session's first event.
    pub id: String,
    /// Its first event's time.
    pub started: i64,
    /// Its latest event's time.
    pub last: i64,
    /// Events in it.
    pub events: u64,
}

/// A model's latest score for this user.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// The predicted probability.
    pub score: f64,
    /// The time of the event it was computed on.
    pub at: i64,
    /// That event's id.
    pub event_id: String,
}

/// The indices of the recent events a stored profile holds, each under
/// [`Profile::recent_key`]: `from..next`, oldest first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentRange {
    /// The oldest index held.
    pub from: u64,
    /// The index the next recent event gets.
    pub next: u64,
}

impl RecentRange {
    /// The indices held.
    pub fn indices(&self) -> Range<u64> {
        self.from..self.next
    }

    /// The newest `n` of them.
    pub fn newest(&self, n: usize) -> Range<u64> {
        self.from.max(self.next.saturating_sub(n as u64))..self.next
    }
}

/// What the hot tier knows about one user.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// User id or anonymous id.
    pub id: String,
    /// Earliest event time seen.
    pub first_seen: i64,
    /// Latest event time seen.
    pub last_seen: i64,
    /// Every event.
    pub events_total: u64,
    /// Events per name.
    pub event_counts: BTreeMap<String, u64>,
    /// Traits from identify calls.
    pub traits: Map<String, Value>,
    /// The latest events, newest last.
    pub last_events: VecDeque<RecentEvent>,
    /// The current session.
    pub session: Option<Session>,
    /// Sessions so far.
    pub sessions: u64,
    /// Model name → latest score.
    #[serde(default)]
    pub predictions: BTreeMap<String, Prediction>,
    /// Which recent events the store holds apart (see the module docs). A stored profile has
    /// it and an empty `last_events`; a profile stored before recent events were kept apart
    /// has none and its `last_events` inline. In answers it is left out: their `last_events`
    /// are the recent events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<RecentRange>,
    /// The states of the counters keyed by `user`, by counter name (see the module docs). A
    /// stored profile has it (`None`: stored before, its counters under keys of their own). In
    /// answers it is left out: counters are read through their own endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counters: Option<BTreeMap<String, KeptState>>,
}

impl Profile {
    /// The id of `event`'s profile: its user id, else its anonymous id (`None`: neither, or
    /// one too long to be a key).
    pub fn id_of(event: &Event) -> Option<&str> {
        event
            .user_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(event.anonymous_id.as_deref().filter(|s| !s.is_empty()))
            .filter(|s| s.len() <= crate::MAX_KEY_BYTES)
    }

    /// The store key of `id`'s profile.
    pub fn store_key(id: &str) -> String {
        // Joined at its size: `format!` grows its string as it writes, a tenth of the
        // projection's loop for this and the keys below.
        ["p:", id].concat()
    }

    /// The store key of `id`'s recent event number `index` (unambiguous: the index, after the
    /// last `:`, has no `:`, and no other key starts with `e:`).
    pub fn recent_key(id: &str, index: u64) -> String {
        use std::fmt::Write;
        let mut key = String::with_capacity(id.len() + 23);
        key.push_str("e:");
        key.push_str(id);
        // Writing to a `String` does not fail.
        let _ = write!(key, ":{index}");
        key
    }

    /// Applies one event.
    pub fn apply(&mut self, view: &EventView<'_>, settings: &HotSettings) {
        let e = view.event;
        let ts = e.timestamp;
        if self.events_total == 0 {
            self.first_seen = ts;
            self.last_seen = ts;
        } else {
            self.first_seen = self.first_seen.min(ts);
            self.last_seen = self.last_seen.max(ts);
        }
        self.events_total += 1;
        *self.event_counts.entry(e.event.clone()).or_insert(0) += 1;
        if e.event_type == EventType::Identify
            && let Value::Object(traits) = &view.properties
        {
            for (k, v) in traits {
                self.traits.insert(k.clone(), v.clone());
            }
        }
        self.keep_recent(view, settings.recent_events);
        match &mut self.session {
            Some(s) if ts <= s.last.saturating_add(settings.session_timeout_us) => {
                s.last = s.last.max(ts);
                s.started = s.started.min(ts);
                s.events += 1;
            }
            _ => {
                self.sessions += 1;
                self.session = Some(Session {
                    id: e.event_id.clone(),
                    started: ts,
                    last: ts,
                    events: 1,
                });
            }
        }
    }

    /// Readies a profile read from the store (or the projection's cache) for events: returns
    /// the indices of the recent events the store holds apart. One stored with its recent
    /// events inline holds none apart; they are written apart when it is next written.
    pub(crate) fn loaded(&mut self) -> Range<u64> {
        match self.recent {
            Some(range) => {
                self.last_events.clear();
                range.indices()
            }
            None => {
                let next = self.last_events.len() as u64;
                self.recent = Some(RecentRange { from: 0, next });
                0..0
            }
        }
    }

    /// After events were applied to a profile whose store held the recent events `stored`:
    /// the recent events to write (index, event) and the indices to delete.
    pub(crate) fn recent_changes(
        &self,
        stored: Range<u64>,
    ) -> (Vec<(u64, &RecentEvent)>, Range<u64>) {
        let range = self.recent.unwrap_or_default();
        let first_in_memory = range.next.saturating_sub(self.last_events.len() as u64);
        let unstored = range.from.max(stored.end)..range.next;
        debug_assert!(
            unstored.is_empty() || unstored.start >= first_in_memory,
            "every recent event the store lacks is in memory"
        );
        let new = unstored
            .filter_map(|i| {
                let at = usize::try_from(i.checked_sub(first_in_memory)?).ok()?;
                Some((i, self.last_events.get(at)?))
            })
            .collect();
        (new, stored.start..stored.end.min(range.from))
    }

    /// The profile as stored: binary (`codec.rs`), without its recent events, which are
    /// stored apart.
    pub(crate) fn encode_stored(&mut self) -> Vec<u8> {
        debug_assert!(
            self.recent.is_some(),
            "a profile ready for events names its recent events"
        );
        for kept in self.counters.iter_mut().flat_map(|c| c.values_mut()) {
            kept.settle();
        }
        crate::codec::encode_profile(self)
    }

    /// Appends the event to the recent ones, keeping the newest `n`; the range moves with them.
    fn keep_recent(&mut self, view: &EventView<'_>, n: usize) {
        let range = self.recent.get_or_insert_default();
        if n > 0 {
            let e = view.event;
            self.last_events.push_back(RecentEvent {
                event_id: e.event_id.clone(),
                event: e.event.clone(),
                event_type: e.event_type,
                timestamp: e.timestamp,
                properties: view.properties_json(),
            });
            range.next += 1;
        }
        range.from = range.newest(n).start;
        while self.last_events.len() > n {
            self.last_events.pop_front();
        }
        debug_assert!(
            range.from <= range.next,
            "a recent range never runs backwards"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::HotConfig;

    fn event(properties: &str) -> Event {
        Event {
            event_id: "e1".into(),
            event_type: EventType::Track,
            event: "Viewed".into(),
            source: "test".into(),
            user_id: Some("u1".into()),
            anonymous_id: None,
            timestamp: 1,
            sent_at: None,
            received_at: 1,
            device_timestamp: None,
            enriched: Default::default(),
            properties: RawValue::from_string(properties.into()).unwrap(),
            context: RawValue::from_string("{}".into()).unwrap(),
            raw: sluice_event::Position {
                partition: 0,
                offset: 0,
            },
        }
    }

    #[test]
    fn recent_events_keep_the_properties_text_and_an_empty_object_for_a_non_object() {
        let settings = HotConfig::default().validate().unwrap();
        let mut profile = Profile::default();
        for text in [r#" {"b": [1, 2], "a": "x"}"#, "[1, 2]", "null"] {
            let e = event(text);
            profile.apply(&EventView::new(&e, false), &settings);
        }
        let kept: Vec<&str> = profile
            .last_events
            .iter()
            .map(|e| e.properties.0.get())
            .collect();
        assert_eq!(kept, [r#"{"b": [1, 2], "a": "x"}"#, "{}", "{}"]);
        let json = serde_json::to_string(&profile).unwrap();
        let back: Profile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, profile);
        assert_eq!(
            serde_json::from_str::<Value>(&json).unwrap()["last_events"][0]["properties"]["b"],
            serde_json::json!([1, 2])
        );
    }
}
