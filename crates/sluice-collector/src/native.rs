//! The native event shape (`POST /v1/events`): the fields the collector needs to route, dedupe
//! and sanity-check an event, read without building a `serde_json::Value`.
//!
//! Keys are accepted in snake_case and in Segment's camelCase (`user_id` / `userId`,
//! `anonymous_id` / `anonymousId`, `event_id` / `messageId`). Ids may be strings or numbers
//! (numbers are kept as their decimal text). The runner reads the rest of the event.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use sluice_event::{ErrorKind, EventType};

/// The routing and identity fields of a native event.
#[derive(Debug, Default, Deserialize)]
pub struct NativeHead<'a> {
    /// Segment-style type: track (default), identify, page, screen, group, alias.
    #[serde(rename = "type", default, borrow)]
    pub kind: Option<Cow<'a, str>>,
    /// Event name; required for track events.
    #[serde(default, borrow, deserialize_with = "de_id")]
    pub event: Option<Cow<'a, str>>,
    /// Client-chosen event id.
    #[serde(
        default,
        borrow,
        alias = "messageId",
        alias = "eventId",
        deserialize_with = "de_id"
    )]
    pub event_id: Option<Cow<'a, str>>,
    /// Known user.
    #[serde(default, borrow, alias = "userId", deserialize_with = "de_id")]
    pub user_id: Option<Cow<'a, str>>,
    /// Device or cookie id.
    #[serde(default, borrow, alias = "anonymousId", deserialize_with = "de_id")]
    pub anonymous_id: Option<Cow<'a, str>>,
}

/// Longest id accepted (event, user, anonymous): ids are keys, not payload.
const MAX_ID_BYTES: usize = 1024;

/// Deepest nesting of objects and arrays accepted in one event.
pub const MAX_DEPTH: usize = 64;

/// The nesting depth of a JSON text (objects and arrays), counted without recursion.
pub fn json_depth(text: &str) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for b in text.bytes() {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                max = max.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Reads and checks one native event. The error is the per-event rejection reason.
pub fn check_native(raw: &RawValue) -> Result<NativeHead<'_>, (ErrorKind, String)> {
    let text = raw.get();
    if !text.starts_with('{') {
        return Err((ErrorKind::Invalid, "event must be a json object".into()));
    }
    if json_depth(text) > MAX_DEPTH {
        return Err((
            ErrorKind::Invalid,
            format!("event is nested deeper than {MAX_DEPTH} levels"),
        ));
    }
    let head: NativeHead<'_> = serde_json::from_str(text)
        .map_err(|e| (ErrorKind::Invalid, format!("invalid event: {e}")))?;
    let kind = match head.kind.as_deref() {
        None => EventType::Track,
        Some(t) => EventType::parse(t).ok_or_else(|| {
            (
                ErrorKind::Invalid,
                format!(
                    "unknown type {t:?} (expected track, identify, page, screen, group or alias)"
                ),
            )
        })?,
    };
    if kind == EventType::Track && head.event.as_deref().is_none_or(|e| e.trim().is_empty()) {
        return Err((
            ErrorKind::Invalid,
            "track event needs a non-empty \"event\" name".into(),
        ));
    }
    for (name, value) in [
        ("event", &head.event),
        ("event_id", &head.event_id),
        ("user_id", &head.user_id),
        ("anonymous_id", &head.anonymous_id),
    ] {
        if value.as_ref().is_some_and(|v| v.len() > MAX_ID_BYTES) {
            return Err((
                ErrorKind::TooLarge,
                format!("{name} is longer than {MAX_ID_BYTES} bytes"),
            ));
        }
    }
    if head.event_id.as_deref().is_some_and(str::is_empty) {
        return Err((ErrorKind::Invalid, "event_id must not be empty".into()));
    }
    Ok(head)
}

/// An optional id: a string (borrowed when it has no escapes), a number, or null.
fn de_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a string or a number")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v)))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_string())))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Err(E::custom("ids must be strings or integers"))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    d.deserialize_any(V)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_string()).unwrap()
    }

    #[test]
    fn reads_both_spellings() {
        let r = raw(r#"{"event":"Signed Up","userId":"u1","anonymous_id":"a1","messageId":"m1"}"#);
        let h = check_native(&r).unwrap();
        assert_eq!(h.event.as_deref(), Some("Signed Up"));
        assert_eq!(h.user_id.as_deref(), Some("u1"));
        assert_eq!(h.anonymous_id.as_deref(), Some("a1"));
        assert_eq!(h.event_id.as_deref(), Some("m1"));
        let r = raw(
            r#"{"event":"x","user_id":42,"event_id":"e\u0031","properties":{"a":[1,{"b":2}]}}"#,
        );
        let h = check_native(&r).unwrap();
        assert_eq!(h.user_id.as_deref(), Some("42"));
        assert_eq!(h.event_id.as_deref(), Some("e1"));
        let r = raw(r#"{"type":"identify","userId":"u","traits":{"plan":"pro"}}"#);
        assert!(check_native(&r).is_ok());
    }

    #[test]
    fn rejects_with_reasons() {
        for (body, needle) in [
            ("[1]", "json object"),
            ("\"x\"", "json object"),
            (r#"{"userId":"u"}"#, "needs a non-empty"),
            (r#"{"event":"  "}"#, "needs a non-empty"),
            (r#"{"type":"bogus","event":"x"}"#, "unknown type"),
            (r#"{"event":"x","userId":{"a":1}}"#, "invalid event"),
            (r#"{"event":"x","userId":1.5}"#, "invalid event"),
            (r#"{"event":"x","event_id":""}"#, "must not be empty"),
            (
                r#"{"event":"x","userId":"a","user_id":"b"}"#,
                "duplicate field",
            ),
        ] {
            let r = raw(body);
            let err = check_native(&r).unwrap_err();
            assert!(err.1.contains(needle), "{body}: {}", err.1);
        }
        let deep = format!(
            r#"{{"event":"x","p":{}1{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(
            check_native(&raw(&deep))
                .unwrap_err()
                .1
                .contains("nested deeper")
        );
        assert_eq!(json_depth(r#"{"a":"[[[{{","b":[{"c":"\\\"["}]}"#), 3);
        let long = format!(r#"{{"event":"x","userId":"{}"}}"#, "u".repeat(2000));
        assert_eq!(
            check_native(&raw(&long)).unwrap_err().0,
            ErrorKind::TooLarge
        );
    }
}
