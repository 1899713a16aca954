//! Counters: a count, a sum or the top-K values of a property, per key, over tumbling or
//! sliding windows.
//!
//! A counter's state per key is a set of time buckets keyed by their start (µs since the
//! epoch, aligned to the epoch): one bucket per window for tumbling windows, one per `step` for
//! sliding ones. An event lands in the bucket holding its `timestamp` (event time, not arrival
//! time), so the value of a window does not depend on when the pipeline ran. Buckets older than
//! the window before the newest bucket seen for the key are pruned; an event that would land in
//! a pruned bucket is counted in `late` and otherwise ignored.
//!
//! Reading at time `at`: a tumbling counter answers its window containing `at`; a sliding one
//! sums the `window / step` buckets ending with the one containing `at`. Top-K keeps at most
//! [`TOP_K_CAPACITY_FACTOR`]·k distinct values per bucket; past that the value with the
//! smallest count makes room (the space-saving rule), so counts are exact until a bucket
//! overflows and upper bounds after.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::codec::{self, CodecError};
use crate::profile::EventView;

/// Distinct values kept per bucket for top-K: this many times k (and at least 100).
pub const TOP_K_CAPACITY_FACTOR: usize = 10;

/// What a counter computes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Aggregate {
    /// How many events.
    #[default]
    Count,
    /// The sum of a numeric property.
    Sum,
    /// The most frequent values of a property.
    TopK,
}

/// Fixed or moving windows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowKind {
    /// Back-to-back windows aligned to the epoch.
    #[default]
    Tumbling,
    /// The last `window`, moving in steps.
    Sliding,
}

/// Where a key or a value comes from in an event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldPath {
    /// The profile id: user id, else anonymous id.
    User,
    /// `user_id`.
    UserId,
    /// `anonymous_id`.
    AnonymousId,
    /// The event name.
    Event,
    /// track, identify, page...
    EventType,
    /// The source.
    Source,
    /// A path into `properties`.
    Properties(Vec<String>),
    /// A path into `context`.
    Context(Vec<String>),
}

impl FieldPath {
    /// Whether the field names a person (`user`, `user_id`, `anonymous_id`).
    pub fn is_person(&self) -> bool {
        matches!(self, Self::User | Self::UserId | Self::AnonymousId)
    }

    /// Parses `user`, `user_id`, ..., `properties.a.b`, `context.a.b`.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "user" => Self::User,
            "user_id" => Self::UserId,
            "anonymous_id" => Self::AnonymousId,
            "event" => Self::Event,
            "event_type" => Self::EventType,
            "source" => Self::Source,
            _ => {
                let split = |rest: &str| -> Result<Vec<String>, String> {
                    let parts: Vec<String> = rest.split('.').map(str::to_string).collect();
                    if parts.iter().any(String::is_empty) {
                        return Err(format!("field path {s:?} has an empty segment"));
                    }
                    Ok(parts)
                };
                if let Some(rest) = s.strip_prefix("properties.") {
                    Self::Properties(split(rest)?)
                } else if let Some(rest) = s.strip_prefix("context.") {
                    Self::Context(split(rest)?)
                } else {
                    return Err(format!(
                        "unknown field {s:?} (expected user, user_id, anonymous_id, event, event_type, source, properties.<path> or context.<path>)"
                    ));
                }
            }
        })
    }

    /// Like [`FieldPath::parse`], but a bare name means `properties.<name>`.
    pub fn parse_property(s: &str) -> Result<Self, String> {
        match Self::parse(s) {
            Ok(p) => Ok(p),
            Err(_) if !s.is_empty() && !s.contains('.') => {
                Ok(Self::Properties(vec![s.to_string()]))
            }
            Err(e) => Err(e),
        }
    }

    /// Whether reading this path needs the event's context parsed.
    pub fn needs_context(&self) -> bool {
        matches!(self, Self::Context(_))
    }

    fn json<'v>(&self, view: &'v EventView<'_>) -> Option<&'v Value> {
        let (root, path) = match self {
            Self::Properties(p) => (&view.properties, p),
            Self::Context(p) => (view.context.as_ref()?, p),
            _ => return None,
        };
        path.iter().try_fold(root, |v, k| v.get(k))
    }

    /// The field as a key: strings as they are, numbers and booleans as text; `None` when
    /// missing, empty or not a scalar.
    pub fn key<'v>(&self, view: &'v EventView<'_>) -> Option<Cow<'v, str>> {
        let e = view.event;
        let s: Cow<'v, str> = match self {
            Self::User => Cow::Borrowed(view.profile_id?),
            Self::UserId => Cow::Borrowed(e.user_id.as_deref()?),
            Self::AnonymousId => Cow::Borrowed(e.anonymous_id.as_deref()?),
            Self::Event => Cow::Borrowed(e.event.as_str()),
            Self::EventType => Cow::Borrowed(e.event_type.as_str()),
            Self::Source => Cow::Borrowed(e.source.as_str()),
            _ => match self.json(view)? {
                Value::String(s) => Cow::Borrowed(s.as_str()),
                Value::Number(n) => Cow::Owned(n.to_string()),
                Value::Bool(b) => Cow::Owned(b.to_string()),
                _ => return None,
            },
        };
        (!s.is_empty() && s.len() <= crate::MAX_KEY_BYTES).then_some(s)
    }

    /// The field as a number (a number, or a string holding one).
    pub fn number(&self, view: &EventView<'_>) -> Option<f64> {
        match self.json(view)? {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok().filter(|x| x.is_finite()),
            _ => None,
        }
    }
}

/// A validated counter.
#[derive(Clone, Debug)]
pub struct CounterSpec {
    /// Its name.
    pub name: String,
    /// Event names it counts (empty: all).
    pub events: BTreeSet<String>,
    /// Per what.
    pub key: FieldPath,
    /// Count, sum or top-K.
    pub aggregate: Aggregate,
    /// The summed or ranked field.
    pub property: Option<FieldPath>,
    /// Tumbling or sliding.
    pub kind: WindowKind,
    /// Window length, µs.
    pub window_us: i64,
    /// Bucket width, µs (= window for tumbling).
    pub step_us: i64,
    /// Top-K's k (0 otherwise).
    pub k: usize,
}

/// What one event adds to a counter.
#[derive(Clone, Debug, PartialEq)]
pub enum Increment {
    /// Add to the bucket's number.
    Add(f64),
    /// Count one more occurrence of a value.
    Value(String),
}

impl CounterSpec {
    /// The store key of this counter's state for `key`, when it is not kept in the profile.
    pub fn store_key(&self, key: &str) -> String {
        ["c:", &self.name, ":", key].concat()
    }

    /// Whether its states live in the profiles (keyed by `user`, the profile id) rather than
    /// under keys of their own.
    pub fn in_profile(&self) -> bool {
        self.key == FieldPath::User
    }

    /// The key and increment `view` contributes, if it counts.
    pub fn contribution<'v>(&self, view: &'v EventView<'_>) -> Option<(Cow<'v, str>, Increment)> {
        if !self.events.is_empty() && !self.events.contains(&view.event.event) {
            return None;
        }
        let key = self.key.key(view)?;
        let inc = match self.aggregate {
            Aggregate::Count => Increment::Add(1.0),
            Aggregate::Sum => Increment::Add(self.property.as_ref()?.number(view)?),
            Aggregate::TopK => Increment::Value(self.property.as_ref()?.key(view)?.into_owned()),
        };
        Some((key, inc))
    }

    fn bucket_of(&self, ts: i64) -> i64 {
        ts.div_euclid(self.step_us) * self.step_us
    }

    /// Buckets starting at or before this are pruned, given the newest bucket.
    fn cutoff(&self, newest_bucket: i64) -> i64 {
        match self.kind {
            WindowKind::Tumbling => newest_bucket.saturating_sub(2 * self.window_us),
            WindowKind::Sliding => newest_bucket.saturating_sub(self.window_us),
        }
    }

    /// Adds an event at `ts` to `state`.
    pub fn apply(&self, state: &mut CounterState, ts: i64, inc: Increment) {
        let bucket = self.bucket_of(ts);
        let newest = state.newest_bucket.map_or(bucket, |n| n.max(bucket));
        if bucket <= self.cutoff(newest) {
            state.late += 1;
            return;
        }
        state.newest_bucket = Some(newest);
        match inc {
            Increment::Add(x) => *state.sums.entry(bucket).or_insert(0.0) += x,
            Increment::Value(v) => {
                let capacity = (self.k * TOP_K_CAPACITY_FACTOR).max(100);
                let counts = state.tops.entry(bucket).or_default();
                if let Some(c) = counts.get_mut(&v) {
                    *c += 1.0;
                } else if counts.len() < capacity {
                    counts.insert(v, 1.0);
                } else {
                    // Space-saving: the smallest count makes room and passes its count on.
                    let (min_key, min) = counts
                        .iter()
                        .min_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
                        .map(|(k, c)| (k.clone(), *c))
                        .unwrap_or_default();
                    counts.remove(&min_key);
                    counts.insert(v, min + 1.0);
                }
            }
        }
        let cutoff = self.cutoff(newest);
        state.sums.retain(|b, _| *b > cutoff);
        state.tops.retain(|b, _| *b > cutoff);
    }

    /// The window `[from, to)` a read at `at` covers.
    pub fn window_at(&self, at: i64) -> (i64, i64) {
        match self.kind {
            WindowKind::Tumbling => {
                let from = self.bucket_of(at);
                (from, from.saturating_add(self.window_us))
            }
            WindowKind::Sliding => {
                let to = self.bucket_of(at).saturating_add(self.step_us);
                (to.saturating_sub(self.window_us), to)
            }
        }
    }

    /// The counter's value at `at`.
    pub fn read(&self, state: &CounterState, at: i64) -> CounterReading {
        let (from, to) = self.window_at(at);
        let value = state.sums.range(from..to).map(|(_, v)| *v).sum();
        let mut top = Vec::new();
        if self.aggregate == Aggregate::TopK {
            let mut merged: BTreeMap<&str, f64> = BTreeMap::new();
            for (_, counts) in state.tops.range(from..to) {
                for (v, c) in counts {
                    *merged.entry(v.as_str()).or_insert(0.0) += c;
                }
            }
            let mut all: Vec<(&str, f64)> = merged.into_iter().collect();
            all.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
            all.truncate(self.k);
            top = all
                .into_iter()
                .map(|(value, count)| TopValue {
                    value: value.to_string(),
                    count,
                })
                .collect();
        }
        CounterReading {
            from,
            to,
            value: if self.aggregate == Aggregate::TopK {
                None
            } else {
                Some(value)
            },
            top,
        }
    }
}

/// A counter's stored state for one key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CounterState {
    /// The newest bucket start seen.
    #[serde(default)]
    pub newest_bucket: Option<i64>,
    /// Count or sum per bucket start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sums: BTreeMap<i64, f64>,
    /// Top-K: value counts per bucket start.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tops: BTreeMap<i64, BTreeMap<String, f64>>,
    /// Events that arrived after their bucket was pruned.
    #[serde(default)]
    pub late: u64,
}

/// A counter's state kept in a profile: as stored until an event changes it, so that the
/// profile's other counters are neither decoded nor encoded again when it is written. Decoded
/// once changed, and encoded again by [`KeptState::settle`].
#[derive(Clone, Debug, Default)]
pub struct KeptState {
    /// The state as stored; `None` once changed and not yet settled.
    stored: Option<Stored>,
    /// The state, once decoded.
    state: Option<CounterState>,
}

/// A kept state's stored form.
#[derive(Clone, Debug)]
enum Stored {
    /// In a profile stored as JSON (before the binary form, `codec.rs`).
    Json(Box<RawValue>),
    /// The binary form's fields (a `Vec`: made into a box, it would be copied once more).
    Binary(Vec<u8>),
}

impl KeptState {
    /// A state not yet encoded.
    pub fn new(state: CounterState) -> Self {
        Self {
            stored: None,
            state: Some(state),
        }
    }

    /// A state as a binary profile holds it.
    pub(crate) fn stored_binary(body: &[u8]) -> Self {
        Self {
            stored: Some(Stored::Binary(body.to_vec())),
            state: None,
        }
    }

    /// The state, to be changed: decoded now if it was not yet (a stored state that does not
    /// decode starts afresh, logged and counted, as any stored value that does not decode).
    pub fn state_mut(&mut self) -> &mut CounterState {
        let stored = self.stored.take();
        self.state.get_or_insert_with(|| {
            let Some(stored) = stored else {
                return CounterState::default();
            };
            stored.decode().unwrap_or_else(|error| {
                tracing::error!(%error, "a stored counter state does not decode; starting it afresh");
                crate::metrics::error("corrupt");
                CounterState::default()
            })
        })
    }

    /// Encodes a changed state (or one kept as JSON) in the binary form, so that the
    /// profile's encoding copies it as it does the others.
    pub fn settle(&mut self) {
        if !matches!(self.stored, Some(Stored::Binary(_))) {
            let body = codec::encode_counter_body(self.state_mut());
            self.stored = Some(Stored::Binary(body));
        }
    }

    /// The binary form's fields: as stored once settled, else encoded now (a state kept as
    /// JSON that does not decode as an empty one).
    pub(crate) fn body(&self) -> Cow<'_, [u8]> {
        match (&self.stored, &self.state) {
            (Some(Stored::Binary(body)), _) => Cow::Borrowed(body),
            (_, Some(state)) => Cow::Owned(codec::encode_counter_body(state)),
            _ => Cow::Owned(codec::encode_counter_body(&self.read().unwrap_or_default())),
        }
    }

    /// The state, decoded.
    pub fn read(&self) -> Result<CounterState, CodecError> {
        match (&self.state, &self.stored) {
            (Some(state), _) => Ok(state.clone()),
            (None, Some(stored)) => stored.decode(),
            (None, None) => Ok(CounterState::default()),
        }
    }
}

impl Stored {
    fn decode(&self) -> Result<CounterState, CodecError> {
        match self {
            Self::Json(text) => Ok(serde_json::from_str(text.get())?),
            Self::Binary(body) => codec::decode_counter_body(body),
        }
    }
}

impl PartialEq for KeptState {
    fn eq(&self, other: &Self) -> bool {
        match (self.read(), other.read()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
    }
}

impl Serialize for KeptState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match (&self.stored, &self.state) {
            (_, Some(state)) => state.serialize(s),
            (Some(Stored::Json(text)), None) => text.serialize(s),
            _ => self.read().map_err(serde::ser::Error::custom)?.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for KeptState {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            stored: Some(Stored::Json(Box::<RawValue>::deserialize(d)?)),
            state: None,
        })
    }
}

/// One of the top values.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TopValue {
    /// The property value.
    pub value: String,
    /// Its count in the window.
    pub count: f64,
}

/// A counter read at a time.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CounterReading {
    /// Window start, µs since the epoch (inclusive).
    pub from: i64,
    /// Window end (exclusive).
    pub to: i64,
    /// Count or sum (absent for top-K).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Top-K values, most frequent first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub top: Vec<TopValue>,
}
