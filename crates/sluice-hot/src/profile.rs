//! [`Profile`]: what the hot tier knows about one user, and how an event updates it.
//!
//! A profile is keyed by the event's user id, else its anonymous id (events with neither have
//! no profile). It holds first and last seen (event time, µs since the epoch), the number of
//! events per event name, the traits of identify calls (merged key by key, later calls win),
//! the last N events, the current session (a gap longer than `session_timeout` starts a new
//! one) and the latest score of each online model. Aliases are not merged: an anonymous id and
//! a user id are two profiles.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sluice_event::{Event, EventType};

use crate::HotSettings;

/// An event with its JSON parts parsed once, as projections and models read it.
pub struct EventView<'a> {
    /// The event.
    pub event: &'a Event,
    /// Its properties (traits for identify), an object (`{}` when not one).
    pub properties: Value,
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
        let profile_id = event
            .user_id
            .as_deref()
            .filter(|s| !s.is_empty())
            .or(event.anonymous_id.as_deref().filter(|s| !s.is_empty()))
            .filter(|s| s.len() <= crate::MAX_KEY_BYTES);
        Self {
            event,
            properties: parse(&event.properties),
            context: with_context.then(|| parse(&event.context)),
            profile_id,
        }
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
    /// Its properties.
    pub properties: Value,
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
}

impl Profile {
    /// The store key of `id`'s profile.
    pub fn store_key(id: &str) -> String {
        format!("p:{id}")
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
        if settings.recent_events > 0 {
            self.last_events.push_back(RecentEvent {
                event_id: e.event_id.clone(),
                event: e.event.clone(),
                event_type: e.event_type,
                timestamp: ts,
                properties: view.properties.clone(),
            });
            while self.last_events.len() > settings.recent_events {
                self.last_events.pop_front();
            }
        } else {
            self.last_events.clear();
        }
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
}
