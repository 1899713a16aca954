//! The Segment HTTP Tracking API (`/v1/track`, `/v1/batch`, …): decoding a request body into
//! collector [`Item`]s, with Segment's own limits and rules.
//!
//! - A single-message route (`/v1/track` or the browser's `/v1/t`) takes one message; its type
//!   is the route's, whatever the body says. `/v1/batch`, `/v1/import` and `/v1/b` take
//!   `{"batch": [...], "context"?, "integrations"?, "sentAt"?, "writeKey"?}`; each message needs
//!   its own `type`. The batch's `context` and `integrations` are merged into every message
//!   (the message's own keys win) and its `sentAt` is copied into messages without one, so
//!   each stored message stands alone.
//! - `writeKey` is read from the body and removed from what is stored: keys never reach the
//!   journal, the lake or the logs.
//! - Limits (Segment's): 32 KB per message, 500 KB per request after decompression, 2,500
//!   messages per batch. Messages past the 2,500th are rejected one by one; the rest go in.
//! - Per message: `userId` or `anonymousId` (except alias, which needs `userId` and
//!   `previousId`), `event` for track, `groupId` for group; `messageId` is the event id
//!   (under 100 characters). A message that breaks a rule is rejected alone, with a reason.

use std::borrow::Cow;
use std::sync::Arc;

use serde_json::value::RawValue;
use sluice_event::{ErrorKind, EventType, Protocol};

use crate::native::{MAX_DEPTH, json_depth};
use crate::{CollectError, Item, check_native};

/// Largest message, in bytes of JSON text.
pub const SEGMENT_MAX_MESSAGE_BYTES: usize = 32 << 10;
/// Largest request body after decompression.
pub const SEGMENT_MAX_BODY_BYTES: usize = 500 << 10;
/// Most messages in one batch.
pub const SEGMENT_MAX_BATCH: usize = 2_500;
/// Longest `messageId`.
const MAX_MESSAGE_ID: usize = 100;

/// Which Segment route a request came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentRoute {
    /// A single-message route of this type (`/v1/track`, `/v1/t`, ...).
    Single(EventType),
    /// `/v1/batch`, `/v1/import`, `/v1/b`.
    Batch,
}

impl SegmentRoute {
    /// The route for the last path segment after `/v1/`, if it is a Segment route.
    pub fn from_path(name: &str) -> Option<Self> {
        Some(match name {
            "track" | "t" => Self::Single(EventType::Track),
            "identify" | "i" => Self::Single(EventType::Identify),
            "page" | "p" => Self::Single(EventType::Page),
            "screen" | "s" => Self::Single(EventType::Screen),
            "group" | "g" => Self::Single(EventType::Group),
            "alias" | "a" => Self::Single(EventType::Alias),
            "batch" | "import" | "b" => Self::Batch,
            _ => return None,
        })
    }
}

/// A decoded Segment request: the body's write key and one slot per message.
#[derive(Debug)]
pub struct SegmentBody {
    /// `writeKey` from the body, if any.
    pub write_key: Option<String>,
    /// The messages, each re-encoded with the batch's shared fields merged in.
    pub messages: Vec<Result<Box<RawValue>, (ErrorKind, String)>>,
}

impl SegmentBody {
    /// The collector items of the decoded messages, all under `source`.
    pub fn items(&self, source: &Arc<str>) -> Vec<Result<Item<'_>, (ErrorKind, String)>> {
        self.messages
            .iter()
            .map(|m| {
                let raw = m.as_ref().map_err(Clone::clone)?;
                let head = check_native(raw)?;
                Ok(Item {
                    source: source.clone(),
                    protocol: Protocol::Segment,
                    event_id: head.event_id.map(Cow::into_owned),
                    user_id: head.user_id.map(Cow::into_owned),
                    anonymous_id: head.anonymous_id.map(Cow::into_owned),
                    network_user_id: None,
                    partition_key: None,
                    payload: Cow::Borrowed(raw.as_ref()),
                })
            })
            .collect()
    }
}

/// A JSON object's top-level members in order, their values left unparsed: merging a batch's
/// shared fields into a message touches only top-level keys (and `context`'s), so nothing else
/// of a message is ever parsed into a tree or re-encoded.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a json object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                let mut seen = std::collections::HashSet::new();
                while let Some(k) = map.next_key::<String>()? {
                    let v: &'de RawValue = map.next_value()?;
                    // A repeated key would be read one way here and another way later.
                    if !seen.insert(xxhash_rust::xxh3::xxh3_64(k.as_bytes())) {
                        return Err(serde::de::Error::custom(format!("duplicate key {k:?}")));
                    }
                    out.push((k, v));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

impl<'a> Members<'a> {
    fn parse(raw: &'a RawValue) -> Result<Self, String> {
        if !raw.get().starts_with('{') {
            return Err("must be a json object".into());
        }
        serde_json::from_str(raw.get()).map_err(|e| e.to_string())
    }

    fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    fn remove(&mut self, key: &str) -> Option<&'a RawValue> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }

    /// Sets `key` (replacing its value where present, else appending).
    fn set(&mut self, key: &str, v: &'a RawValue) {
        match self.0.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = v,
            None => self.0.push((key.to_string(), v)),
        }
    }

    /// JSON text of the members, with `extra` (already encoded values) after them.
    fn encode(&self, extra: &[(&str, &str)]) -> String {
        let len = self
            .0
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + extra
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>();
        let mut out = String::with_capacity(len + 2);
        out.push('{');
        let pairs = self
            .0
            .iter()
            .map(|(k, v)| (k.as_str(), v.get()))
            .chain(extra.iter().copied());
        for (i, (k, v)) in pairs.enumerate() {
            if i > 0 {
                out.push(',');
            }
            // Serializing a str to JSON cannot fail.
            out.push_str(&serde_json::to_string(k).unwrap_or_default());
            out.push(':');
            out.push_str(v);
        }
        out.push('}');
        out
    }
}

/// Whether a raw value is JSON `null`.
fn is_null(v: &RawValue) -> bool {
    v.get() == "null"
}

/// A raw value as a string, if it is one.
fn as_str(v: &RawValue) -> Option<std::borrow::Cow<'_, str>> {
    if !v.get().starts_with('"') {
        return None;
    }
    serde_json::from_str(v.get()).ok()
}

/// Decodes a (decompressed) Segment request body.
pub fn decode_segment(body: &[u8], route: SegmentRoute) -> Result<SegmentBody, CollectError> {
    if body.len() > SEGMENT_MAX_BODY_BYTES {
        return Err(CollectError::BodyTooLarge {
            limit: SEGMENT_MAX_BODY_BYTES,
        });
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| CollectError::Malformed("body is not utf-8".into()))?;
    // serde_json has its own recursion limit (128); this gives the clearer answer first.
    if json_depth(text) > MAX_DEPTH + 2 {
        return Err(CollectError::Malformed(format!(
            "body is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let root: &RawValue =
        serde_json::from_str(text).map_err(|e| CollectError::Malformed(e.to_string()))?;
    let mut top = Members::parse(root).map_err(|e| match e.as_str() {
        "must be a json object" => CollectError::Invalid("body must be a json object".into()),
        _ => CollectError::Malformed(e),
    })?;
    let write_key = match top.remove("writeKey") {
        None => None,
        Some(v) if is_null(v) => None,
        Some(v) => Some(
            as_str(v)
                .ok_or_else(|| CollectError::Invalid("writeKey must be a string".into()))?
                .into_owned(),
        ),
    };
    let messages = match route {
        SegmentRoute::Single(kind) => vec![message(top, Some(kind), None)],
        SegmentRoute::Batch => {
            let batch: Vec<&RawValue> = match top.remove("batch") {
                Some(v) if v.get().starts_with('[') => serde_json::from_str(v.get())
                    .map_err(|e| CollectError::Malformed(e.to_string()))?,
                Some(_) => {
                    return Err(CollectError::Invalid("batch must be an array".into()));
                }
                None => {
                    return Err(CollectError::Invalid(
                        "a batch request needs a \"batch\" array".into(),
                    ));
                }
            };
            if batch.is_empty() {
                return Err(CollectError::Invalid("batch is empty".into()));
            }
            fn present(v: Option<&RawValue>) -> Option<&RawValue> {
                v.filter(|v| !is_null(v))
            }
            let context = present(top.get("context"));
            if let Some(c) = context
                && !c.get().starts_with('{')
            {
                return Err(CollectError::Invalid("context must be an object".into()));
            }
            let shared = Shared {
                context: context
                    .map(Members::parse)
                    .transpose()
                    .map_err(CollectError::Malformed)?,
                integrations: present(top.get("integrations")),
                sent_at: present(top.get("sentAt")),
            };
            batch
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    if i >= SEGMENT_MAX_BATCH {
                        return Err((
                            ErrorKind::TooLarge,
                            format!("a batch takes at most {SEGMENT_MAX_BATCH} messages"),
                        ));
                    }
                    let m = Members::parse(item)
                        .map_err(|e| (ErrorKind::Invalid, format!("message {e}")))?;
                    message(m, None, Some(&shared))
                })
                .collect()
        }
    };
    Ok(SegmentBody {
        write_key,
        messages,
    })
}

/// What a batch shares with its messages.
struct Shared<'a> {
    context: Option<Members<'a>>,
    integrations: Option<&'a RawValue>,
    sent_at: Option<&'a RawValue>,
}

/// Checks one message and encodes it: a batch message with what the batch shares, a single
/// one with its route's type.
fn message<'a>(
    mut m: Members<'a>,
    route_kind: Option<EventType>,
    shared: Option<&Shared<'a>>,
) -> Result<Box<RawValue>, (ErrorKind, String)> {
    m.remove("writeKey");
    // Values built here (the route's type, a merged context) are appended when encoding.
    let mut extra: Vec<(&str, String)> = Vec::new();
    if let Some(shared) = shared {
        inherit(&mut m, shared, &mut extra)?;
    }
    let kind = message_type(&mut m, route_kind, &mut extra)?;
    check_ids(&m, kind)?;
    encode_message(&m, &extra)
}

/// Gives a batch message what its batch shares: the batch's context under its own (its own
/// keys win), and the batch's `integrations` and `sentAt` where it has none.
fn inherit<'a>(
    m: &mut Members<'a>,
    shared: &Shared<'a>,
    extra: &mut Vec<(&str, String)>,
) -> Result<(), (ErrorKind, String)> {
    if let Some(ctx) = &shared.context {
        match m.get("context") {
            Some(own) if !is_null(own) => {
                let mut own = Members::parse(own)
                    .map_err(|e| (ErrorKind::Invalid, format!("context {e}")))?;
                for (k, v) in &ctx.0 {
                    if own.get(k).is_none() {
                        own.0.push((k.clone(), v));
                    }
                }
                m.remove("context");
                extra.push(("context", own.encode(&[])));
            }
            _ => {
                m.remove("context");
                extra.push(("context", ctx.encode(&[])));
            }
        }
    }
    for (key, v) in [
        ("integrations", shared.integrations),
        ("sentAt", shared.sent_at),
    ] {
        if let Some(v) = v
            && m.get(key).is_none_or(is_null)
        {
            m.set(key, v);
        }
    }
    Ok(())
}

/// The message's type: its route's (replacing any `type` it has), else its own `type`.
fn message_type(
    m: &mut Members<'_>,
    route_kind: Option<EventType>,
    extra: &mut Vec<(&str, String)>,
) -> Result<EventType, (ErrorKind, String)> {
    match route_kind {
        Some(kind) => {
            m.remove("type");
            extra.push(("type", format!("\"{}\"", kind.as_str())));
            Ok(kind)
        }
        None => match m.get("type").and_then(as_str) {
            Some(t) => EventType::parse(&t)
                .ok_or_else(|| (ErrorKind::Invalid, format!("unknown message type {t:?}"))),
            None => Err((
                ErrorKind::Invalid,
                "every batch message needs a \"type\"".into(),
            )),
        },
    }
}

/// Checks the ids a message of type `kind` needs, and the length of its `messageId`.
fn check_ids(m: &Members<'_>, kind: EventType) -> Result<(), (ErrorKind, String)> {
    let has = |k: &str| {
        m.get(k).is_some_and(|v| {
            let t = v.get();
            (t.starts_with('"') && t != "\"\"")
                || t.starts_with(|c: char| c == '-' || c.is_ascii_digit())
        })
    };
    if kind == EventType::Alias {
        if !has("userId") || !has("previousId") {
            return Err((
                ErrorKind::Invalid,
                "alias needs userId and previousId".into(),
            ));
        }
    } else if !has("userId") && !has("anonymousId") {
        return Err((
            ErrorKind::Invalid,
            format!("{} needs userId or anonymousId", kind.as_str()),
        ));
    }
    if kind == EventType::Group && !has("groupId") {
        return Err((ErrorKind::Invalid, "group needs groupId".into()));
    }
    if let Some(id) = m.get("messageId").and_then(as_str)
        && id.len() >= MAX_MESSAGE_ID
    {
        return Err((
            ErrorKind::Invalid,
            format!("messageId must be shorter than {MAX_MESSAGE_ID} characters"),
        ));
    }
    Ok(())
}

/// The message's members with the `extra` values appended, within Segment's size limit.
fn encode_message(
    m: &Members<'_>,
    extra: &[(&str, String)],
) -> Result<Box<RawValue>, (ErrorKind, String)> {
    let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let text = m.encode(&extra);
    if text.len() > SEGMENT_MAX_MESSAGE_BYTES {
        return Err((
            ErrorKind::TooLarge,
            format!(
                "message is {} bytes, over Segment's limit of {SEGMENT_MAX_MESSAGE_BYTES}",
                text.len()
            ),
        ));
    }
    RawValue::from_string(text).map_err(|e| {
        (
            ErrorKind::Invalid,
            format!("message cannot be encoded: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn value(raw: &RawValue) -> Value {
        serde_json::from_str(raw.get()).unwrap()
    }

    #[test]
    fn routes() {
        assert_eq!(
            SegmentRoute::from_path("t"),
            Some(SegmentRoute::Single(EventType::Track))
        );
        assert_eq!(
            SegmentRoute::from_path("identify"),
            Some(SegmentRoute::Single(EventType::Identify))
        );
        for b in ["batch", "import", "b"] {
            assert_eq!(SegmentRoute::from_path(b), Some(SegmentRoute::Batch));
        }
        assert_eq!(SegmentRoute::from_path("events"), None);
    }

    #[test]
    fn single_route_sets_the_type_and_strips_the_key() {
        let body = br#"{"writeKey":"wk","type":"identify","event":"Bought","userId":"u1","messageId":"m1"}"#;
        let d = decode_segment(body, SegmentRoute::Single(EventType::Track)).unwrap();
        assert_eq!(d.write_key.as_deref(), Some("wk"));
        let m = value(d.messages[0].as_ref().unwrap());
        assert_eq!(m["type"], "track");
        assert!(m.get("writeKey").is_none());
        let items = d.items(&Arc::from("web"));
        let item = items[0].as_ref().unwrap();
        assert_eq!(item.event_id.as_deref(), Some("m1"));
        assert_eq!(item.user_id.as_deref(), Some("u1"));
        assert_eq!(item.protocol, Protocol::Segment);
        assert!(!item.payload.get().contains("wk"));
    }

    #[test]
    fn batch_merges_shared_fields_and_rejects_per_message() {
        let body = br#"{"batch":[
            {"type":"track","event":"A","userId":"u1","context":{"ip":"1.2.3.4"}},
            {"type":"identify","anonymousId":"a1","traits":{"plan":"pro"},"sentAt":"2026-01-01T00:00:00Z"},
            {"type":"track","userId":"u1"},
            {"type":"alias","userId":"u1"},
            {"type":"group","userId":"u1"},
            {"type":"bogus","userId":"u1"},
            {"event":"no type","userId":"u1"},
            {"type":"page","name":"Home"},
            7
        ],"context":{"library":{"name":"analytics-node"},"ip":"9.9.9.9"},
          "integrations":{"All":true},"sentAt":"2026-11-01T10:00:02.000Z","writeKey":"k"}"#;
        let d = decode_segment(body, SegmentRoute::Batch).unwrap();
        assert_eq!(d.write_key.as_deref(), Some("k"));
        let first = value(d.messages[0].as_ref().unwrap());
        assert_eq!(
            first["context"]["ip"], "1.2.3.4",
            "the message's own keys win"
        );
        assert_eq!(first["context"]["library"]["name"], "analytics-node");
        assert_eq!(first["integrations"]["All"], true);
        assert_eq!(first["sentAt"], "2026-11-01T10:00:02.000Z");
        let second = value(d.messages[1].as_ref().unwrap());
        assert_eq!(second["sentAt"], "2026-01-01T00:00:00Z");
        let items = d.items(&Arc::from("web"));
        assert!(items[0].is_ok() && items[1].is_ok());
        let reasons: Vec<String> = items[2..]
            .iter()
            .map(|i| i.as_ref().unwrap_err().1.clone())
            .collect();
        for (r, needle) in reasons.iter().zip([
            "non-empty \"event\"",
            "alias needs",
            "group needs groupId",
            "unknown message type",
            "needs a \"type\"",
            "needs userId or anonymousId",
            "json object",
        ]) {
            assert!(r.contains(needle), "{r:?} should say {needle:?}");
        }
    }

    #[test]
    fn limits() {
        let big = format!(
            r#"{{"userId":"u","event":"x","properties":{{"p":"{}"}}}}"#,
            "x".repeat(SEGMENT_MAX_MESSAGE_BYTES)
        );
        let d = decode_segment(big.as_bytes(), SegmentRoute::Single(EventType::Track)).unwrap();
        assert_eq!(d.messages[0].as_ref().unwrap_err().0, ErrorKind::TooLarge);

        let msgs: Vec<String> = (0..SEGMENT_MAX_BATCH + 3)
            .map(|i| format!(r#"{{"type":"track","event":"e","userId":"u{i}"}}"#))
            .collect();
        let body = format!(r#"{{"batch":[{}]}}"#, msgs.join(","));
        let d = decode_segment(body.as_bytes(), SegmentRoute::Batch).unwrap();
        let ok = d.messages.iter().filter(|m| m.is_ok()).count();
        assert_eq!(ok, SEGMENT_MAX_BATCH);
        assert_eq!(
            d.messages[SEGMENT_MAX_BATCH].as_ref().unwrap_err().0,
            ErrorKind::TooLarge
        );

        let huge = vec![b' '; SEGMENT_MAX_BODY_BYTES + 1];
        assert!(matches!(
            decode_segment(&huge, SegmentRoute::Batch),
            Err(CollectError::BodyTooLarge { .. })
        ));
        for (body, needle) in [
            (&b"[1]"[..], "json object"),
            (b"{", "malformed json"),
            (br#"{"batch":{}}"#, "must be an array"),
            (br#"{"batch":[]}"#, "empty"),
            (br#"{}"#, "needs a \"batch\""),
            (br#"{"batch":[],"writeKey":5}"#, "writeKey must be a string"),
        ] {
            let e = decode_segment(body, SegmentRoute::Batch).unwrap_err();
            assert!(e.to_string().contains(needle), "{e}");
        }
        let deep = format!(
            r#"{{"batch":{}1{}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(
            decode_segment(deep.as_bytes(), SegmentRoute::Batch)
                .unwrap_err()
                .to_string()
                .contains("nested deeper")
        );
        let body = br#"{"batch":[{"type":"track","userId":"u","userId":"v","event":"x"},
            {"type":"track","userId":"u","event":"x","context":"nope"}],"context":{"a":1}}"#;
        let d = decode_segment(body, SegmentRoute::Batch).unwrap();
        assert!(
            d.messages[0]
                .as_ref()
                .unwrap_err()
                .1
                .contains("duplicate key")
        );
        assert!(
            d.messages[1]
                .as_ref()
                .unwrap_err()
                .1
                .contains("context must be")
        );
        let long_id = format!(
            r#"{{"userId":"u","event":"x","messageId":"{}"}}"#,
            "m".repeat(100)
        );
        let d = decode_segment(long_id.as_bytes(), SegmentRoute::Single(EventType::Track)).unwrap();
        let (kind, reason) = d.messages[0].as_ref().unwrap_err();
        assert_eq!(*kind, ErrorKind::Invalid);
        assert!(reason.contains("messageId must be shorter"), "{reason}");
    }
}
