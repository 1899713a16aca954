//! A fast read of a `good` record for a reader that needs only some of its members (the hot
//! tier), or that copies its members out as they are (the lake's `events` table): the record's
//! top level is walked by a scanner that finds where each member's value begins and ends, and
//! only the members read are parsed, by `serde_json` as the derived decoding would.
//! `enriched`, and `context` when it is not asked for, are not parsed by [`skim`]; [`whole`]
//! finds every member, and [`unenriched`] every member but `enriched` (the lake's typed tables),
//! leaving their reader to parse what it reads. `serde_json`'s own skipping checks every string
//! it steps over, which made those members most of the cost of decoding a record.
//!
//! The runner writes a record's members in [`Event`]'s field order, which puts `raw` before
//! `properties`, `context` and `enriched`. Once a record's members came in that order and every
//! member [`skim`] reads was found, the rest of the record is not looked at: in the runner's
//! order, whatever else it holds (`context` when not read, `enriched`, `part`) comes after. A
//! record in another order (one written before `raw` moved up, or by another writer) is walked
//! to its end.
//!
//! Whatever the scanner does not expect (a key written with escapes, a member twice, a
//! missing member, a member that does not parse, bytes after the object, a value cut short)
//! sends the record to the derived decoding, which gives the answer or the error it always
//! gave. So a record reads as before but for what is not parsed, which is not checked to be
//! valid JSON, or there at all: a value taken as text (the lake's `properties` and `context`)
//! is only checked to be UTF-8 with its brackets and strings closed. Only the runner writes
//! `good` records, each whole by its serializer, and each is checked against its CRC when read.

use std::borrow::Cow;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::{Enrichment, Event, EventType, Position, swar};

/// The index of the first `a` or `b` in `hay` (`swar.rs`).
#[inline(always)]
fn find(hay: &[u8], a: u8, b: u8) -> Option<usize> {
    swar::first(
        hay,
        |w| swar::equal(w, a) | swar::equal(w, b),
        |c| c == a || c == b,
    )
}

/// Walks JSON text from a byte offset; every step answers `None` at the end of the text or at
/// a byte it does not expect.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.at) {
            self.at += 1;
        }
    }

    /// Steps over whitespace and then `c`.
    fn expect(&mut self, c: u8) -> Option<()> {
        self.skip_whitespace();
        let found = self.bytes.get(self.at) == Some(&c);
        found.then(|| self.at += 1)
    }

    /// From just after a string's opening quote to just after its closing one; whether the
    /// string holds an escape.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        let mut escaped = false;
        loop {
            let rest = self.bytes.get(self.at..)?;
            let i = find(rest, b'"', b'\\')?;
            self.at += i + 1;
            if rest[i] == b'"' {
                return Some(escaped);
            }
            escaped = true;
            // The escaped byte: a `\"` does not end the string, a `\\` escapes nothing after it.
            self.at += 1;
        }
    }

    /// From just after an opening bracket to just after the bracket that closes it. Between
    /// strings only brackets count; what lies there is a few bytes (`":"`, `","`, a number), so
    /// it is read a byte at a time, and each string is searched for its end.
    fn nested(&mut self) -> Option<()> {
        let mut depth = 1usize;
        loop {
            let c = *self.bytes.get(self.at)?;
            self.at += 1;
            match c {
                b'"' => {
                    self.string()?;
                }
                b'{' | b'[' => depth += 1,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        return Some(());
                    }
                }
                _ => {}
            }
        }
    }

    /// Steps over whitespace and one object, calling `member` with each key once the scanner
    /// stands just after its colon: `member` steps over the value and answers whether to go on.
    /// `Some(false)` when it answered `false` (the rest is not looked at).
    fn object(
        &mut self,
        mut member: impl FnMut(&mut Self, &'a [u8]) -> Option<bool>,
    ) -> Option<bool> {
        self.expect(b'{')?;
        self.skip_whitespace();
        if self.bytes.get(self.at) == Some(&b'}') {
            self.at += 1;
            return Some(true);
        }
        loop {
            self.expect(b'"')?;
            let start = self.at;
            if self.string()? {
                return None;
            }
            let key = self.bytes.get(start..self.at - 1)?;
            self.expect(b':')?;
            if !member(self, key)? {
                return Some(false);
            }
            self.skip_whitespace();
            match self.bytes.get(self.at)? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(true);
                }
                _ => return None,
            }
        }
    }

    /// Steps over whitespace and one value: the value's bytes.
    fn value(&mut self) -> Option<&'a [u8]> {
        self.skip_whitespace();
        let start = self.at;
        self.at += 1;
        match *self.bytes.get(start)? {
            b'"' => {
                self.string()?;
            }
            b'{' | b'[' => self.nested()?,
            b',' | b':' | b'}' | b']' => return None,
            _ => {
                let rest = self.bytes.get(self.at..)?;
                let end = |c: &u8| matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t');
                self.at += rest.iter().position(end).unwrap_or(rest.len());
            }
        }
        self.bytes.get(start..self.at)
    }
}

/// Calls `member` with the key (its bytes between the quotes) and the value of each top-level
/// member of the JSON object `bytes`, in order, until it answers `Some(false)` (the rest is not
/// looked at); `None` when `bytes` is not an object the scanner reads (a key written with an
/// escape, bytes after it), or `member` answered `None`. Values are stepped over, not checked.
pub fn members<'a>(
    bytes: &'a [u8],
    mut member: impl FnMut(&'a [u8], &'a [u8]) -> Option<bool>,
) -> Option<()> {
    let mut s = Scanner { bytes, at: 0 };
    if !s.object(|s, key| member(key, s.value()?))? {
        return Some(());
    }
    s.skip_whitespace();
    (s.at == bytes.len()).then_some(())
}

/// The top-level members of `json`, valid JSON text (as a `RawValue` holds), in order: each key
/// as the bytes between its quotes and each value as its text; `None` when `json` is not an
/// object or a key is written with an escape. Values are stepped over, not checked.
pub fn object_members(json: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut found = Vec::new();
    members(json, |key, value| {
        found.push((key, value));
        Some(true)
    })?;
    Some(found)
}

/// Where each member of a `good` record that is read was found: each value's text.
#[derive(Default)]
pub struct Found<'a> {
    pub event_id: Option<&'a [u8]>,
    pub event_type: Option<&'a [u8]>,
    pub event: Option<&'a [u8]>,
    pub source: Option<&'a [u8]>,
    pub user_id: Option<&'a [u8]>,
    pub anonymous_id: Option<&'a [u8]>,
    pub timestamp: Option<&'a [u8]>,
    pub sent_at: Option<&'a [u8]>,
    pub received_at: Option<&'a [u8]>,
    pub device_timestamp: Option<&'a [u8]>,
    pub properties: Option<&'a [u8]>,
    pub context: Option<&'a [u8]>,
    pub raw: Option<&'a [u8]>,
    /// Found by [`whole`] only.
    pub enriched: Option<&'a [u8]>,
    /// Every member so far came in the runner's order ([`rank`]): the rank after the last one's.
    in_order: Option<u8>,
}

/// Which members a reader needs: the walk stops once they were all found in the runner's order.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Need {
    /// All but `context` and `enriched`.
    Bare,
    /// All but `enriched`.
    Context,
    /// Every member: the record is walked to its end.
    Whole,
}

/// Where `key` comes among the members the runner writes: [`Event`]'s fields in their order,
/// then the runner's `part`.
fn rank(key: &[u8]) -> Option<u8> {
    Some(match key {
        b"event_id" => 0,
        b"event_type" => 1,
        b"event" => 2,
        b"source" => 3,
        b"user_id" => 4,
        b"anonymous_id" => 5,
        b"timestamp" => 6,
        b"sent_at" => 7,
        b"received_at" => 8,
        b"device_timestamp" => 9,
        b"raw" => 10,
        b"properties" => 11,
        b"context" => 12,
        b"enriched" => 13,
        b"part" => 14,
        _ => return None,
    })
}

impl<'a> Found<'a> {
    /// Notes one member: `None` for a member seen twice (the derived decoding's error), else
    /// whether to go on. Once the members came in the runner's order and every member read
    /// was found, any other the record holds comes after them, unread (see the module docs).
    fn note(&mut self, key: &[u8], value: &'a [u8], need: Need) -> Option<bool> {
        self.in_order = match (self.in_order, rank(key)) {
            (Some(next), Some(rank)) if rank >= next => Some(rank + 1),
            _ => None,
        };
        let slot = match key {
            b"event_id" => &mut self.event_id,
            b"event_type" => &mut self.event_type,
            b"event" => &mut self.event,
            b"source" => &mut self.source,
            b"user_id" => &mut self.user_id,
            b"anonymous_id" => &mut self.anonymous_id,
            b"timestamp" => &mut self.timestamp,
            b"sent_at" => &mut self.sent_at,
            b"received_at" => &mut self.received_at,
            b"device_timestamp" => &mut self.device_timestamp,
            b"properties" => &mut self.properties,
            b"context" => &mut self.context,
            b"raw" => &mut self.raw,
            b"enriched" if need == Need::Whole => &mut self.enriched,
            // Members the derived decoding ignores too (`enriched` when not read).
            _ => return Some(true),
        };
        if slot.replace(value).is_some() {
            return None;
        }
        Some(!self.complete(need))
    }

    /// In the runner's order, with every member read.
    fn complete(&self, need: Need) -> bool {
        let required = [
            self.event_id,
            self.event_type,
            self.event,
            self.source,
            self.timestamp,
            self.received_at,
            self.raw,
            self.properties,
        ];
        need != Need::Whole
            && self.in_order.is_some()
            && required.iter().all(Option::is_some)
            && (self.context.is_some() || need == Need::Bare)
    }
}

/// A value parsed by `serde_json`.
pub fn parse<T: DeserializeOwned>(value: &[u8]) -> Option<T> {
    serde_json::from_slice(value).ok()
}

/// A string value: borrowed as it is when it holds no escape and no control character (then
/// it needs only its UTF-8 checked), else parsed.
pub fn text(value: &[u8]) -> Option<Cow<'_, str>> {
    let plain = value
        .strip_prefix(b"\"")
        .and_then(|v| v.strip_suffix(b"\""))
        .filter(|inner| {
            let marks = |w| swar::below(w, 0x20) | swar::equal(w, b'\\');
            swar::first(inner, marks, |c| c < 0x20 || c == b'\\').is_none()
        });
    match plain {
        Some(inner) => std::str::from_utf8(inner).ok().map(Cow::Borrowed),
        None => parse(value).map(Cow::Owned),
    }
}

/// A string value, owned ([`text`]).
fn string(value: &[u8]) -> Option<String> {
    text(value).map(Cow::into_owned)
}

/// An integer: read directly when written plainly (`0` or `-?[1-9][0-9]*`, up to 18 digits,
/// which an `i64` always holds), else parsed (`serde_json` reads `-0` as a float).
pub fn integer<T: TryFrom<i64> + DeserializeOwned>(value: &[u8]) -> Option<T> {
    let (negative, digits) = match value.strip_prefix(b"-") {
        Some(digits) => (true, digits),
        None => (false, value),
    };
    let plain = match digits {
        [b'0'] => !negative,
        [b'1'..=b'9', rest @ ..] => rest.len() < 18 && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    if !plain {
        return parse(value);
    }
    let magnitude = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    T::try_from(if negative { -magnitude } else { magnitude }).ok()
}

/// A [`Position`] (`raw`), its two members read as [`integer`]s.
pub fn position(value: &[u8]) -> Option<Position> {
    let (mut partition, mut offset) = (None, None);
    members(value, |key, value| {
        let slot = match key {
            b"partition" => &mut partition,
            b"offset" => &mut offset,
            _ => return Some(true),
        };
        slot.replace(value).is_none().then_some(true)
    })?;
    Some(Position {
        partition: integer(partition?)?,
        offset: integer(offset?)?,
    })
}

/// A member with `#[serde(default)]`: absent is `None`, else parsed (`null` is `None` too).
pub fn optional<'a, T>(
    value: Option<&'a [u8]>,
    read: impl Fn(&'a [u8]) -> Option<T>,
) -> Option<Option<T>> {
    match value {
        None => Some(None),
        Some(b"null") => Some(None),
        Some(v) => read(v).map(Some),
    }
}

/// `bytes` as a `good` record without its `enriched` members, and with an empty `context`
/// unless `with_context`; `None` when the derived decoding must read it (see the module docs).
pub(crate) fn skim(bytes: &[u8], with_context: bool) -> Option<Event> {
    let need = match with_context {
        true => Need::Context,
        false => Need::Bare,
    };
    let found = walk(bytes, need)?;
    let context = match with_context {
        true => parse(found.context?)?,
        // Not read: present as the derived decoding requires, or after the members read.
        false if found.context.is_some() || found.complete(Need::Bare) => empty_object(),
        false => return None,
    };
    Some(Event {
        event_id: string(found.event_id?)?,
        event_type: EventType::parse(&text(found.event_type?)?)?,
        event: string(found.event?)?,
        source: string(found.source?)?,
        user_id: optional(found.user_id, string)?,
        anonymous_id: optional(found.anonymous_id, string)?,
        timestamp: integer(found.timestamp?)?,
        sent_at: optional(found.sent_at, integer)?,
        received_at: integer(found.received_at?)?,
        device_timestamp: optional(found.device_timestamp, integer)?,
        properties: parse(found.properties?)?,
        context,
        enriched: Enrichment::default(),
        raw: position(found.raw?)?,
    })
}

/// Where every member of the `good` record `bytes` is, the record walked to its end: `None`
/// when it is not an object the scanner reads or holds a member twice (the derived decoding's
/// error). When `enriched` is an object, `enriched_member` is called with each of its members
/// (key, value) as the walk steps over them, so a reader needs no second walk; `None` when it
/// answered `None`. Whether each member is there and parses is left to the reader.
pub fn whole<'a>(
    bytes: &'a [u8],
    mut enriched_member: impl FnMut(&'a [u8], &'a [u8]) -> Option<()>,
) -> Option<Found<'a>> {
    let mut found = Found::default();
    let mut s = Scanner { bytes, at: 0 };
    s.object(|s, key| {
        s.skip_whitespace();
        let start = s.at;
        let value = match bytes.get(start) {
            Some(b'{') if key == b"enriched" => {
                s.object(|s, key| enriched_member(key, s.value()?).map(|()| true))?;
                bytes.get(start..s.at)?
            }
            _ => s.value()?,
        };
        found.note(key, value, Need::Whole)
    })?;
    s.skip_whitespace();
    (s.at == bytes.len()).then_some(found)
}

/// Where every member of the `good` record `bytes` but `enriched` is ([`Found::enriched`] stays
/// `None`): once they were all found in the runner's order the rest is not looked at (see the
/// module docs), else the record is walked to its end. `None` as for [`whole`]; whether each
/// member is there and parses is left to the reader.
pub fn unenriched(bytes: &[u8]) -> Option<Found<'_>> {
    walk(bytes, Need::Context)
}

/// The members `need` asks for, found by walking `bytes` until they all were.
fn walk(bytes: &[u8], need: Need) -> Option<Found<'_>> {
    let mut found = Found {
        in_order: Some(0),
        ..Found::default()
    };
    members(bytes, |key, value| found.note(key, value, need))?;
    Some(found)
}

/// `{}`, the context of an event read without it.
pub(crate) fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The derived decoding, the answer `skim` must give whenever it gives one.
    fn derived(bytes: &[u8], with_context: bool) -> Result<serde_json::Value, String> {
        let mut event = Event::from_slice_derived(bytes).map_err(|e| e.to_string())?;
        if !with_context {
            event.context = empty_object();
        }
        Ok(serde_json::to_value(event).unwrap())
    }

    /// `skim` gives the derived answer, or leaves the record to the derived decoding; returns
    /// whether it gave one.
    fn agrees(text: &str) -> bool {
        let mut answered = false;
        for with_context in [true, false] {
            let derived = derived(text.as_bytes(), with_context);
            if let Some(event) = skim(text.as_bytes(), with_context) {
                let skimmed = serde_json::to_value(event).unwrap();
                assert_eq!(Ok(skimmed), derived, "{text}");
                answered = true;
            }
        }
        answered
    }

    const FULL: &str = r#"{"event_id":"e1","event_type":"identify","event":"Signed Up",
        "source":"web","user_id":"u1","anonymous_id":"a1","timestamp":-5,"sent_at":6,"received_at":7,
        "device_timestamp":8,"properties":{"plan":"pro","n":[1,2.5,{"x":null}]},
        "context":{"page":{"url":"https://x.example/?a=\"}]"},"ip":"203.0.113.9"},
        "enriched":{"ua_browser":"Chrome","geo_city":"S\u00e3o Paulo","odd":"\\\"}{]["},
        "raw":{"partition":3,"offset":9}}"#;

    #[test]
    fn a_record_reads_as_the_derived_decoding_reads_it() {
        assert!(agrees(FULL));
        let minimal = r#"{"event_id":"e","event_type":"track","event":"x","source":"s",
            "timestamp":1,"received_at":2,"properties":{},"context":{},"raw":{"partition":0,"offset":0}}"#;
        assert!(agrees(minimal));
        let pretty =
            serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(FULL).unwrap())
                .unwrap();
        assert!(agrees(&pretty));
        // Keys in another order, members the reader does not know, nulls, escapes in values,
        // non-ASCII, a properties value that is not an object.
        let varied = r#" { "raw" : {"offset":1,"partition":2} , "extra":[{"a":"]"},"\\"],
            "context":{}, "properties":"a \"string\"", "event":"Caf\u00e9 \"x\"",
            "source":"s\\t", "event_type":"page", "event_id":"ü→e", "user_id":null,
            "anonymous_id":"a", "timestamp":1, "sent_at":null, "received_at":0,
            "device_timestamp":null, "enriched":{} } "#;
        assert!(agrees(varied));
    }

    #[test]
    fn integers_read_as_the_derived_decoding_reads_them() {
        let numbers = [
            "0",
            "-0",
            "7",
            "-5",
            "123456789012345678",
            "-123456789012345678",
            "1234567890123456789",
            "9223372036854775807",
            "-9223372036854775808",
            "9223372036854775808",
            "18446744073709551615",
            "4294967295",
            "4294967296",
            "007",
            "1.0",
            "1e3",
            "+1",
        ];
        for n in numbers {
            let timestamp = FULL.replacen(r#""timestamp":-5"#, &format!(r#""timestamp":{n}"#), 1);
            let partition = FULL.replacen(r#""partition":3"#, &format!(r#""partition":{n}"#), 1);
            let offset = FULL.replacen(r#""offset":9"#, &format!(r#""offset":{n}"#), 1);
            for text in [timestamp, partition, offset] {
                let answered = agrees(&text);
                assert_eq!(answered, derived(text.as_bytes(), true).is_ok(), "{text}");
            }
        }
    }

    #[test]
    fn what_the_scanner_does_not_expect_goes_to_the_derived_decoding() {
        let cases = [
            // A key written with an escape (the derived decoding reads it as `event_id`).
            FULL.replacen(r#""event_id""#, r#""event\u005fid""#, 1),
            // A member twice.
            FULL.replacen(r#""source":"web""#, r#""source":"web","source":"app""#, 1),
            // A member missing.
            FULL.replacen(r#""raw":{"partition":3,"offset":9}"#, r#""x":1"#, 1),
            // A member that does not parse as its type.
            FULL.replacen(r#""timestamp":-5"#, r#""timestamp":1e3"#, 1),
            FULL.replacen(r#""timestamp":-5"#, r#""timestamp":"5""#, 1),
            FULL.replacen(r#""event_type":"identify""#, r#""event_type":"flush""#, 1),
            FULL.replacen(r#""user_id":"u1""#, r#""user_id":7"#, 1),
            FULL.replacen("pro", "p\u{1}ro", 1),
            FULL.replacen(r#""event":"Signed Up""#, "\"event\":\"Signed\tUp\"", 1),
            // Bytes after the object, an object cut short, not an object.
            format!("{FULL} x"),
            FULL[..FULL.len() - 1].to_string(),
            FULL[..FULL.len() / 2].to_string(),
            "[1]".to_string(),
            String::new(),
            "{".to_string(),
            r#"{"event_id""#.to_string(),
            r#"{"event_id":"e1"}"#.to_string(),
        ];
        for case in &cases {
            assert!(!agrees(case), "read without the derived decoding: {case}");
            assert!(derived(case.as_bytes(), true).is_err() || case.contains("\\u005f"));
        }
    }

    #[test]
    fn values_stepped_over_are_not_checked() {
        let broken = FULL.replacen(r#""ua_browser":"Chrome""#, r#""ua_browser":Chrome"#, 1);
        assert!(derived(broken.as_bytes(), true).is_err());
        let read = skim(broken.as_bytes(), true).expect("enriched is stepped over");
        assert_eq!(read.event_id, "e1");
        // The context is checked only when it is read.
        let broken = FULL.replacen(r#""ip":"203.0.113.9""#, r#""ip":203.0.113.9"#, 1);
        assert!(skim(broken.as_bytes(), true).is_none());
        assert_eq!(skim(broken.as_bytes(), false).unwrap().context.get(), "{}");
    }

    #[test]
    fn a_record_in_the_runners_order_is_read_up_to_the_last_member_needed() {
        let mut event: Event = serde_json::from_str(FULL).unwrap();
        event.user_id = None;
        let written = String::from_utf8(serde_json::to_vec(&event).unwrap()).unwrap();
        let at = |member: &str| written.find(&format!(",\"{member}\"")).unwrap();
        assert!(at("raw") < at("properties") && at("properties") < at("context"));
        assert!(at("context") < at("enriched"));
        assert!(agrees(&written));
        // What follows is not looked at: a context that does not parse when it is not read...
        let broken = format!(
            "{},\"context\":{{\"ip\":1.2.3}}{}",
            &written[..at("context")],
            &written[at("enriched")..]
        );
        assert!(Event::from_slice_derived(broken.as_bytes()).is_err());
        assert_eq!(skim(broken.as_bytes(), false).unwrap().event_id, "e1");
        assert!(skim(broken.as_bytes(), true).is_none());
        // ...nor the end of a record cut short after the members read.
        let cut = &written[..at("context")];
        assert_eq!(skim(cut.as_bytes(), false).unwrap().event_id, "e1");
        assert!(skim(cut.as_bytes(), true).is_none());
        let cut = &written[..at("enriched")];
        assert_eq!(
            skim(cut.as_bytes(), true).unwrap().context.get(),
            event.context.get()
        );
        // Nor a member the runner writes before `properties` that a record holds after it
        // (the runner never does).
        let late = ",\"user_id\":\"late\"";
        let text = format!(
            "{}{late}{}",
            &written[..at("context")],
            &written[at("context")..]
        );
        assert_eq!(skim(text.as_bytes(), false).unwrap().user_id, None);
        assert_eq!(
            skim(text.as_bytes(), true).unwrap().user_id.as_deref(),
            Some("late")
        );
        // A record whose members are not in the runner's order is walked to its end.
        let text = written.replacen(",\"event\"", ",\"extra\":1,\"event\"", 1);
        let text = format!("{}{}", &text[..text.len() - 1], ",\"user_id\":\"late\"}");
        assert!(agrees(&text));
        assert_eq!(
            skim(text.as_bytes(), false).unwrap().user_id.as_deref(),
            Some("late")
        );
    }

    #[test]
    fn a_record_with_any_byte_changed_reads_as_the_derived_decoding_reads_it_or_not_at_all() {
        let event: Event = serde_json::from_str(FULL).unwrap();
        let runners = serde_json::to_vec(&event).unwrap();
        let replacements = *b"\"\\{}[],: 0x\x00\xff";
        for record in [FULL.as_bytes(), &runners[..]] {
            for at in 0..record.len() {
                for &c in &replacements {
                    let mut changed = record.to_vec();
                    changed[at] = c;
                    for with_context in [true, false] {
                        let (Some(read), Ok(derived)) = (
                            skim(&changed, with_context),
                            Event::from_slice_derived(&changed),
                        ) else {
                            continue;
                        };
                        let mut derived = derived;
                        if !with_context {
                            derived.context = empty_object();
                        }
                        assert_eq!(
                            serde_json::to_value(read).unwrap(),
                            serde_json::to_value(derived).unwrap(),
                            "{}",
                            String::from_utf8_lossy(&changed)
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn whole_finds_every_member_to_the_end_of_the_record() {
        let event: Event = serde_json::from_str(FULL).unwrap();
        let mut written = serde_json::to_vec(&event).unwrap();
        written.pop();
        written.extend_from_slice(b",\"part\":[0,2]}");
        let mut members = Vec::new();
        let found = whole(&written, |key, value| {
            members.push((key, value));
            Some(())
        })
        .unwrap();
        let enriched = found.enriched.unwrap();
        assert!(enriched.starts_with(b"{\"ua_browser\"") && enriched.ends_with(b"}"));
        // `enriched`'s members, as `members` finds them.
        assert_eq!(Some(members), object_members(enriched));
        // A reader's `None` for a member of `enriched` is the walk's.
        assert!(whole(&written, |key, _| (key != b"geo_city").then_some(())).is_none());
        assert_eq!(found.context.unwrap(), event.context.get().as_bytes());
        assert_eq!(found.raw, Some(&b"{\"partition\":3,\"offset\":9}"[..]));
        // `enriched` twice: the derived decoding of the whole record refuses it; a reader that
        // steps over `enriched` still reads the record.
        let text = String::from_utf8(written).unwrap();
        let twice = text.replacen(",\"enriched\"", ",\"enriched\":{},\"enriched\"", 1);
        assert!(whole(twice.as_bytes(), |_, _| Some(())).is_none());
        assert!(agrees(&twice));
        // Bytes after the object.
        assert!(whole(format!("{text} x").as_bytes(), |_, _| Some(())).is_none());
        // `enriched` not an object: its text, and no member read.
        let null = text.replacen(",\"enriched\":{", ",\"enriched\":null,\"x\":{", 1);
        let found = whole(null.as_bytes(), |_, _| None).unwrap();
        assert_eq!(found.enriched, Some(&b"null"[..]));
    }

    #[test]
    fn every_byte_cut_off_a_record_is_left_to_the_derived_decoding() {
        for end in 0..FULL.len() - 1 {
            assert!(skim(&FULL.as_bytes()[..end], true).is_none(), "{end}");
        }
    }

    #[test]
    fn records_the_runner_writes_read_alike() {
        let base: Event = serde_json::from_str(FULL).unwrap();
        let strings = [
            "",
            "plain",
            "quote \" and \\ backslash",
            "\u{0}\u{1f}",
            "ünï → 🦀",
            "}]\"{[",
        ];
        for (i, s) in strings.iter().enumerate() {
            let mut event = base.clone();
            event.event = s.to_string();
            event.user_id = (i % 2 == 0).then(|| s.to_string());
            event.anonymous_id = (i % 3 == 0).then(|| format!("{s}{i}"));
            event.sent_at = (i % 2 == 1).then_some(i as i64);
            event.device_timestamp = (i % 3 == 1).then_some(-(i as i64));
            event.properties =
                serde_json::value::to_raw_value(&serde_json::json!({ "k": [s, i], "s": s }))
                    .unwrap();
            event.context =
                serde_json::value::to_raw_value(&serde_json::json!({ "page": { "title": s } }))
                    .unwrap();
            event.enriched.ua_browser = Some(s.to_string());
            event.enriched.ip = (i % 2 == 0).then(|| s.to_string());
            for bytes in [
                serde_json::to_vec(&event).unwrap(),
                serde_json::to_vec_pretty(&event).unwrap(),
            ] {
                let text = String::from_utf8(bytes).unwrap();
                assert!(agrees(&text), "left to the derived decoding: {text}");
            }
        }
    }
}
