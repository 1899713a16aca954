//! How profiles and counter states are stored: a compact binary form, read back with JSON
//! (what every value was before) as the fallback.
//!
//! The projection encodes every profile and counter state a batch changes, so the encoding is
//! on the stage's hot path: JSON spent most of that time formatting numbers and map keys. A
//! binary value starts with [`BINARY_V1`], a byte no JSON text starts with; anything else is
//! read as JSON, so a store written before keeps working and each value moves to the binary
//! form when the projection next writes it. Recent events (`e:` keys) stay JSON: they are
//! written once and hold the event's properties as JSON text.
//!
//! Layout: unsigned integers as LEB128 varints, signed ones zigzagged first, floats as their 8
//! little-endian bytes, strings as a varint length and their UTF-8 bytes, maps as a varint
//! count and their entries in key order, an optional part behind a 0 or 1 byte.
//!
//! - A profile: `id`, `first_seen`, `last_seen`, `events_total`, `event_counts` (name →
//!   count), `traits` (a JSON object, see [`Writer::json`]), `session` (optional: id, started,
//!   last, events), `sessions`, `predictions` (model → score, at, event id), `recent`
//!   (optional: from, next) and `counters` (optional: name → the state's bytes, length first).
//!   Its recent events are stored apart, never in it.
//! - A counter state: `newest_bucket` (optional), `late`, `sums` (bucket → value) and `tops`
//!   (bucket → value → count).

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value};

use crate::counter::{CounterState, KeptState};
use crate::profile::{Prediction, Profile, RecentRange, Session};

/// The first byte of a binary value (version 1). JSON text never starts with it.
pub const BINARY_V1: u8 = 0xB1;

/// How deep a JSON value in a profile may nest (as `serde_json` parses it at most).
const MAX_DEPTH: usize = 128;

/// A stored value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodecError(pub String);

impl std::fmt::Display for CodecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CodecError {}

impl From<serde_json::Error> for CodecError {
    fn from(e: serde_json::Error) -> Self {
        Self(e.to_string())
    }
}

/// A profile as stored (binary, or JSON from before).
pub fn decode_profile(bytes: &[u8]) -> Result<Profile, CodecError> {
    match bytes.split_first() {
        Some((&BINARY_V1, body)) => {
            let mut r = Reader::new(body);
            let profile = r.profile()?;
            r.end()?;
            Ok(profile)
        }
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// A counter state as stored under its own key (binary, or JSON from before).
pub fn decode_counter(bytes: &[u8]) -> Result<CounterState, CodecError> {
    match bytes.split_first() {
        Some((&BINARY_V1, body)) => decode_counter_body(body),
        _ => Ok(serde_json::from_slice(bytes)?),
    }
}

/// A counter state's bytes without the leading [`BINARY_V1`], as a profile holds them.
pub(crate) fn decode_counter_body(body: &[u8]) -> Result<CounterState, CodecError> {
    let mut r = Reader::new(body);
    let state = r.counter()?;
    r.end()?;
    Ok(state)
}

/// `profile` as stored: [`BINARY_V1`] and its fields. Its recent events are not written (they
/// are stored apart); its counters are copied as they are once settled ([`KeptState::settle`]).
pub(crate) fn encode_profile(profile: &Profile) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(256));
    w.0.push(BINARY_V1);
    w.profile(profile);
    w.0
}

/// A counter state stored under its own key: [`BINARY_V1`] and its fields.
pub fn encode_counter(state: &CounterState) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(1 + counter_size(state)));
    w.0.push(BINARY_V1);
    w.counter(state);
    w.0
}

/// A counter state's fields alone, as a profile holds them.
pub(crate) fn encode_counter_body(state: &CounterState) -> Vec<u8> {
    let mut w = Writer(Vec::with_capacity(counter_size(state)));
    w.counter(state);
    w.0
}

/// About the bytes `state` takes, so that its buffer is seldom grown: a bucket start takes up
/// to 10 bytes, a float 8, a top value its length and 1 (counted as 16, without walking the
/// values, which would cost about as much as encoding them).
fn counter_size(state: &CounterState) -> usize {
    let tops: usize = state.tops.values().map(|c| 12 + c.len() * 25).sum();
    24 + state.sums.len() * 18 + tops
}

struct Writer(Vec<u8>);

impl Writer {
    fn u64(&mut self, mut v: u64) {
        if v < 0x80 {
            self.0.push(v as u8);
            return;
        }
        while v >= 0x80 {
            self.0.push((v as u8) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn i64(&mut self, v: i64) {
        self.u64(((v << 1) ^ (v >> 63)) as u64);
    }

    fn f64(&mut self, v: f64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }

    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        self.0.extend_from_slice(b);
    }

    fn str(&mut self, s: &str) {
        self.bytes(s.as_bytes());
    }

    fn flag(&mut self, present: bool) {
        self.0.push(u8::from(present));
    }

    fn profile(&mut self, p: &Profile) {
        self.str(&p.id);
        self.i64(p.first_seen);
        self.i64(p.last_seen);
        self.u64(p.events_total);
        self.u64(p.event_counts.len() as u64);
        for (name, count) in &p.event_counts {
            self.str(name);
            self.u64(*count);
        }
        self.object(&p.traits, 0);
        self.flag(p.session.is_some());
        if let Some(s) = &p.session {
            self.str(&s.id);
            self.i64(s.started);
            self.i64(s.last);
            self.u64(s.events);
        }
        self.u64(p.sessions);
        self.u64(p.predictions.len() as u64);
        for (model, prediction) in &p.predictions {
            self.str(model);
            self.f64(prediction.score);
            self.i64(prediction.at);
            self.str(&prediction.event_id);
        }
        self.flag(p.recent.is_some());
        if let Some(r) = p.recent {
            self.u64(r.from);
            self.u64(r.next);
        }
        self.flag(p.counters.is_some());
        if let Some(counters) = &p.counters {
            self.u64(counters.len() as u64);
            for (name, kept) in counters {
                self.str(name);
                self.bytes(&kept.body());
            }
        }
    }

    fn counter(&mut self, c: &CounterState) {
        self.flag(c.newest_bucket.is_some());
        if let Some(b) = c.newest_bucket {
            self.i64(b);
        }
        self.u64(c.late);
        self.u64(c.sums.len() as u64);
        for (bucket, value) in &c.sums {
            self.i64(*bucket);
            self.f64(*value);
        }
        self.u64(c.tops.len() as u64);
        for (bucket, counts) in &c.tops {
            self.i64(*bucket);
            self.u64(counts.len() as u64);
            for (value, count) in counts {
                self.str(value);
                self.f64(*count);
            }
        }
    }

    /// A JSON value, tagged: 0 null, 1 false, 2 true, 3 unsigned, 4 negative integer, 5 float,
    /// 6 string, 7 array (count, items), 8 object (count, key and value each).
    fn json(&mut self, v: &Value, depth: usize) {
        match v {
            Value::Null => self.0.push(0),
            Value::Bool(b) => self.0.push(1 + u8::from(*b)),
            Value::Number(n) => self.number(n),
            Value::String(s) => {
                self.0.push(6);
                self.str(s);
            }
            Value::Array(items) => {
                self.0.push(7);
                self.u64(items.len() as u64);
                for item in items {
                    self.json(item, depth + 1);
                }
            }
            Value::Object(map) => {
                self.0.push(8);
                self.object(map, depth + 1);
            }
        }
    }

    fn number(&mut self, n: &Number) {
        if let Some(u) = n.as_u64() {
            self.0.push(3);
            self.u64(u);
        } else if let Some(i) = n.as_i64() {
            self.0.push(4);
            self.i64(i);
        } else {
            self.0.push(5);
            self.f64(n.as_f64().unwrap_or_default());
        }
    }

    fn object(&mut self, map: &Map<String, Value>, depth: usize) {
        self.u64(map.len() as u64);
        for (k, v) in map {
            self.str(k);
            self.json(v, depth);
        }
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

fn bad(what: &str) -> CodecError {
    CodecError(format!("binary value: {what}"))
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf, at: 0 }
    }

    fn end(&self) -> Result<(), CodecError> {
        if self.at == self.buf.len() {
            Ok(())
        } else {
            Err(bad("bytes after its end"))
        }
    }

    fn byte(&mut self) -> Result<u8, CodecError> {
        let b = *self.buf.get(self.at).ok_or_else(|| bad("cut short"))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.buf.len());
        let end = end.ok_or_else(|| bad("cut short"))?;
        let out = &self.buf[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, CodecError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("a varint longer than 64 bits"))
    }

    fn i64(&mut self) -> Result<i64, CodecError> {
        let z = self.u64()?;
        Ok((z >> 1) as i64 ^ -((z & 1) as i64))
    }

    fn f64(&mut self) -> Result<f64, CodecError> {
        let b = self.take(8)?;
        Ok(f64::from_le_bytes(
            b.try_into().map_err(|_| bad("a float"))?,
        ))
    }

    /// A count of items that each take at least one byte: never more than the bytes left.
    fn count(&mut self) -> Result<usize, CodecError> {
        let n = self.u64()?;
        usize::try_from(n)
            .ok()
            .filter(|n| *n <= self.buf.len() - self.at)
            .ok_or_else(|| bad("a count past its end"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], CodecError> {
        let n = self.count()?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, CodecError> {
        let b = self.bytes()?;
        let s = std::str::from_utf8(b).map_err(|_| bad("a string that is not UTF-8"))?;
        Ok(s.to_owned())
    }

    fn flag(&mut self) -> Result<bool, CodecError> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(bad("a presence byte other than 0 or 1")),
        }
    }

    fn profile(&mut self) -> Result<Profile, CodecError> {
        let id = self.string()?;
        let (first_seen, last_seen, events_total) = (self.i64()?, self.i64()?, self.u64()?);
        let mut event_counts = BTreeMap::new();
        for _ in 0..self.count()? {
            event_counts.insert(self.string()?, self.u64()?);
        }
        let traits = self.object(0)?;
        let session = match self.flag()? {
            true => Some(Session {
                id: self.string()?,
                started: self.i64()?,
                last: self.i64()?,
                events: self.u64()?,
            }),
            false => None,
        };
        let sessions = self.u64()?;
        let mut predictions = BTreeMap::new();
        for _ in 0..self.count()? {
            let model = self.string()?;
            let (score, at, event_id) = (self.f64()?, self.i64()?, self.string()?);
            predictions.insert(
                model,
                Prediction {
                    score,
                    at,
                    event_id,
                },
            );
        }
        let recent = match self.flag()? {
            true => Some(RecentRange {
                from: self.u64()?,
                next: self.u64()?,
            }),
            false => None,
        };
        let counters = self.profile_counters()?;
        Ok(Profile {
            id,
            first_seen,
            last_seen,
            events_total,
            event_counts,
            traits,
            last_events: Default::default(),
            session,
            sessions,
            predictions,
            recent,
            counters,
        })
    }

    fn profile_counters(&mut self) -> Result<Option<BTreeMap<String, KeptState>>, CodecError> {
        if !self.flag()? {
            return Ok(None);
        }
        let mut counters = BTreeMap::new();
        for _ in 0..self.count()? {
            let name = self.string()?;
            counters.insert(name, KeptState::stored_binary(self.bytes()?));
        }
        Ok(Some(counters))
    }

    fn counter(&mut self) -> Result<CounterState, CodecError> {
        let newest_bucket = match self.flag()? {
            true => Some(self.i64()?),
            false => None,
        };
        let late = self.u64()?;
        let mut sums = BTreeMap::new();
        for _ in 0..self.count()? {
            sums.insert(self.i64()?, self.f64()?);
        }
        let mut tops = BTreeMap::new();
        for _ in 0..self.count()? {
            let bucket = self.i64()?;
            let mut counts = BTreeMap::new();
            for _ in 0..self.count()? {
                counts.insert(self.string()?, self.f64()?);
            }
            tops.insert(bucket, counts);
        }
        Ok(CounterState {
            newest_bucket,
            sums,
            tops,
            late,
        })
    }

    fn json(&mut self, depth: usize) -> Result<Value, CodecError> {
        if depth > MAX_DEPTH {
            return Err(bad("JSON nested too deep"));
        }
        Ok(match self.byte()? {
            0 => Value::Null,
            1 => Value::Bool(false),
            2 => Value::Bool(true),
            3 => Value::Number(self.u64()?.into()),
            4 => Value::Number(self.i64()?.into()),
            5 => Value::Number(Number::from_f64(self.f64()?).ok_or_else(|| bad("a NaN"))?),
            6 => Value::String(self.string()?),
            7 => {
                let n = self.count()?;
                let items = (0..n).map(|_| self.json(depth + 1));
                Value::Array(items.collect::<Result<_, _>>()?)
            }
            8 => Value::Object(self.object(depth + 1)?),
            _ => return Err(bad("an unknown JSON tag")),
        })
    }

    fn object(&mut self, depth: usize) -> Result<Map<String, Value>, CodecError> {
        let mut map = Map::new();
        for _ in 0..self.count()? {
            let key = self.string()?;
            map.insert(key, self.json(depth)?);
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn state() -> CounterState {
        CounterState {
            newest_bucket: Some(1_733_500_800_000_000),
            sums: BTreeMap::from([(1_733_497_200_000_000, 2.5), (-3_600_000_000, 1.0)]),
            tops: BTreeMap::from([(
                1_733_500_800_000_000,
                BTreeMap::from([("shoes".to_string(), 3.0), ("é \"x\"".to_string(), 1.0)]),
            )]),
            late: 7,
        }
    }

    fn profile() -> Profile {
        let Value::Object(traits) = json!({
            "plan": "pro", "age": 41, "debt": -12, "ratio": 0.25, "vip": true, "none": null,
            "big": u64::MAX, "tags": ["a", {"b": [1, 2.5, false]}], "nested": {"x": {"y": "z"}}
        }) else {
            unreachable!("an object")
        };
        let mut kept = KeptState::new(state());
        kept.settle();
        Profile {
            id: "user-ü".into(),
            first_seen: -5,
            last_seen: 1_733_500_800_123_456,
            events_total: 300,
            event_counts: BTreeMap::from([("Viewed".into(), 299), ("Bought".into(), 1)]),
            traits,
            last_events: Default::default(),
            session: Some(Session {
                id: "e-1".into(),
                started: 10,
                last: 20,
                events: 2,
            }),
            sessions: 4,
            predictions: BTreeMap::from([(
                "purchase_30m".into(),
                Prediction {
                    score: 0.123_456_789,
                    at: 20,
                    event_id: "e-2".into(),
                },
            )]),
            recent: Some(RecentRange { from: 3, next: 13 }),
            counters: Some(BTreeMap::from([("views_1h".into(), kept)])),
        }
    }

    #[test]
    fn a_profile_and_a_counter_come_back_as_they_were_written() {
        let p = profile();
        let bytes = encode_profile(&p);
        assert_eq!(bytes[0], BINARY_V1);
        assert_eq!(decode_profile(&bytes).unwrap(), p);
        let json = serde_json::to_vec(&p).unwrap();
        assert!(bytes.len() < json.len(), "{} ≥ {}", bytes.len(), json.len());
        let bare = Profile {
            session: None,
            recent: None,
            counters: None,
            ..Profile::default()
        };
        assert_eq!(decode_profile(&encode_profile(&bare)).unwrap(), bare);
        let c = state();
        assert_eq!(decode_counter(&encode_counter(&c)).unwrap(), c);
        let empty = CounterState::default();
        assert_eq!(decode_counter(&encode_counter(&empty)).unwrap(), empty);
    }

    #[test]
    fn values_stored_as_json_before_still_decode() {
        let p = profile();
        let json = serde_json::to_vec(&p).unwrap();
        assert_eq!(decode_profile(&json).unwrap(), p);
        let c = state();
        assert_eq!(decode_counter(&serde_json::to_vec(&c).unwrap()).unwrap(), c);
    }

    /// A JSON value as an identify call's traits may hold, a few levels deep.
    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |x| x.is_finite())
                .prop_map(Value::from),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn any_counter() -> impl Strategy<Value = CounterState> {
        (
            proptest::option::of(any::<i64>()),
            proptest::collection::btree_map(any::<i64>(), any::<f64>(), 0..5),
            proptest::collection::btree_map(
                any::<i64>(),
                proptest::collection::btree_map(".{0,8}", any::<f64>(), 0..4),
                0..3,
            ),
            any::<u64>(),
        )
            .prop_map(|(newest_bucket, sums, tops, late)| CounterState {
                newest_bucket,
                sums,
                tops,
                late,
            })
    }

    fn any_profile() -> impl Strategy<Value = Profile> {
        let counts = proptest::collection::btree_map(".{0,10}", any::<u64>(), 0..4);
        let traits = proptest::collection::btree_map(".{0,8}", any_json(), 0..4);
        let session = proptest::option::of(
            (".{0,8}", any::<i64>(), any::<i64>(), any::<u64>()).prop_map(
                |(id, started, last, events)| Session {
                    id,
                    started,
                    last,
                    events,
                },
            ),
        );
        let prediction =
            (0.0f64..=1.0, any::<i64>(), ".{0,8}").prop_map(|(score, at, id)| Prediction {
                score,
                at,
                event_id: id,
            });
        let predictions = proptest::collection::btree_map(".{0,8}", prediction, 0..3);
        let recent = proptest::option::of(
            (any::<u64>(), any::<u64>()).prop_map(|(from, next)| RecentRange { from, next }),
        );
        let counters = proptest::option::of(proptest::collection::btree_map(
            ".{0,8}",
            any_counter().prop_map(KeptState::new),
            0..3,
        ));
        let numbers = (any::<i64>(), any::<i64>(), any::<u64>(), any::<u64>());
        (
            ".{0,16}",
            numbers,
            counts,
            traits,
            session,
            predictions,
            recent,
            counters,
        )
            .prop_map(
                |(
                    id,
                    (first_seen, last_seen, events_total, sessions),
                    event_counts,
                    traits,
                    session,
                    predictions,
                    recent,
                    counters,
                )| Profile {
                    id,
                    first_seen,
                    last_seen,
                    events_total,
                    event_counts,
                    traits: traits.into_iter().collect(),
                    last_events: Default::default(),
                    session,
                    sessions,
                    predictions,
                    recent,
                    counters,
                },
            )
    }

    proptest! {
        #[test]
        fn any_profile_and_counter_come_back_as_they_were_written(
            profile in any_profile(),
            counter in any_counter(),
        ) {
            prop_assert_eq!(decode_profile(&encode_profile(&profile)).unwrap(), profile);
            prop_assert_eq!(decode_counter(&encode_counter(&counter)).unwrap(), counter);
        }

        #[test]
        fn any_bytes_decode_or_fail_without_a_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode_profile(&bytes);
            let _ = decode_counter(&bytes);
            bytes.insert(0, BINARY_V1);
            let _ = decode_profile(&bytes);
            let _ = decode_counter(&bytes);
        }
    }

    #[test]
    fn a_damaged_value_is_an_error_never_a_panic() {
        let bytes = encode_profile(&profile());
        for cut in 1..bytes.len() {
            assert!(decode_profile(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode_profile(&longer).is_err());
        // A count far past the end, and a varint that never ends.
        assert!(decode_counter(&[BINARY_V1, 0, 0, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(decode_counter(&[BINARY_V1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]).is_err());
        // Every single byte changed: decodes to something or fails, never panics.
        for at in 1..bytes.len() {
            let mut changed = bytes.clone();
            changed[at] ^= 0xff;
            let _ = decode_profile(&changed);
        }
        // JSON nested deeper than the limit.
        let mut deep = vec![BINARY_V1, 0, 0, 0, 0, 0, 1, 0];
        deep.extend(std::iter::repeat_n([7u8, 1], MAX_DEPTH + 2).flatten());
        deep.push(0);
        assert!(decode_profile(&deep).unwrap_err().0.contains("too deep"));
    }
}
