//! Raw → canonical: how a [`RawEvent`] of each protocol becomes an [`Event`].
//!
//! Native events (`POST /v1/events`) follow the Segment spec with snake_case aliases:
//! - `type` (default `track`); `event` is the name of a track event; page and screen calls
//!   take `name` (else the type) and identify, group and alias calls the type name;
//! - `properties` (track, page, screen) or `traits` (identify, group) become `properties`; any
//!   other top-level key that is not reserved is merged into `properties` too, so a flat
//!   `{"event":"click","button":"buy"}` keeps `button`;
//! - `timestamp` is when it happened; with `sentAt` too, the tracker's clock skew is removed:
//!   `timestamp = received_at − (sent_at − timestamp)` (Segment's rule); without a timestamp it
//!   is `received_at`;
//! - `context` is kept, and the collector's `ip` and `userAgent` are added where absent;
//! - `_metadata`, the delivery metadata analytics.js and analytics-node add to every message
//!   (runtime, bundled integrations), is not a property: it is kept as `context._metadata`.
//!
//! A field of the wrong type (a non-object `properties`, an unparseable time) makes the event a
//! `parse` bad row: the event is kept with its reason, never dropped or half-read.

use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sluice_event::{
    BadKind, Enrichment, Event, EventOf, EventType, Position, Protocol, RawEvent, parse_timestamp,
};

/// Keys of a native event that are not properties.
const RESERVED: &[&str] = &[
    "type",
    "event",
    "name",
    "event_id",
    "eventId",
    "messageId",
    "user_id",
    "userId",
    "anonymous_id",
    "anonymousId",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "sent_at",
    "receivedAt",
    "properties",
    "traits",
    "context",
    "integrations",
    "writeKey",
    "channel",
    "version",
];

/// Why an event could not be made canonical.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Failure family.
    pub kind: BadKind,
    /// Lowercase reason.
    pub reason: String,
}

pub(crate) fn parse_err(reason: impl Into<String>) -> Failure {
    Failure {
        kind: BadKind::Parse,
        reason: reason.into(),
    }
}

/// An [`Event`] being made: properties and context still as JSON maps, so that validation and
/// the enrichers read and change them without parsing the JSON again, and the runner writes
/// the `good` record from the maps without making their text first.
pub type Draft = EventOf<Map<String, Value>>;

/// The finished event of a draft.
pub fn into_event(draft: Draft) -> Event {
    draft.map_members(|members| to_raw(&Value::Object(members)))
}

/// Makes the canonical event for a raw record at `raw_pos`.
pub fn canonicalize(raw: &RawEvent, raw_pos: Position) -> Result<Event, Failure> {
    draft(raw, raw_pos).map(into_event)
}

/// Makes the canonical event for a raw record at `raw_pos`, before validation and enrichment.
pub fn draft(raw: &RawEvent, raw_pos: Position) -> Result<Draft, Failure> {
    match raw.protocol {
        // Segment messages follow the same rules; the collector already merged the batch's
        // context, integrations and sentAt into each one.
        Protocol::Native | Protocol::Segment => native(raw, raw_pos),
        Protocol::Snowplow => crate::snowplow::canonicalize(raw, raw_pos),
        Protocol::Kinesis => {
            if raw.payload.get().starts_with('{') {
                native(raw, raw_pos)
            } else {
                Err(parse_err(
                    "kinesis record data is not a json event object (see payload for its base64)",
                ))
            }
        }
    }
}

/// A native (or Segment, or Kinesis JSON) event's draft.
fn native(raw: &RawEvent, raw_pos: Position) -> Result<Draft, Failure> {
    let obj: Map<String, Value> = serde_json::from_str(raw.payload.get())
        .map_err(|e| parse_err(format!("payload is not a json object: {e}")))?;
    let event_type = match obj.get("type") {
        None | Some(Value::Null) => EventType::Track,
        Some(Value::String(t)) => {
            EventType::parse(t).ok_or_else(|| parse_err(format!("unknown type {t:?}")))?
        }
        Some(_) => return Err(parse_err("type must be a string")),
    };
    let user_id = id_field(&obj, &["user_id", "userId"])?;
    let anonymous_id = id_field(&obj, &["anonymous_id", "anonymousId"])?;
    let event = event_name(&obj, event_type)?;
    let original = time_field(&obj, &["timestamp", "originalTimestamp"])?;
    let sent_at = time_field(&obj, &["sentAt", "sent_at"])?;
    let timestamp = match (original, sent_at) {
        (Some(t), Some(s)) => sluice_event::skew_corrected(raw.received_at, s, t),
        (Some(t), None) => t,
        (None, _) => raw.received_at,
    };
    let (properties, context) = native_members(obj, event_type, raw)?;
    Ok(Draft {
        event_id: raw.event_id.clone(),
        event_type,
        event,
        source: raw.source.clone(),
        user_id,
        anonymous_id,
        timestamp,
        sent_at,
        received_at: raw.received_at,
        device_timestamp: original,
        properties,
        context,
        enriched: Enrichment::default(),
        raw: raw_pos,
    })
}

/// The event's name: a track event's `event` (it needs one); a page's or screen's `name`,
/// else `event`; any other's `event`; else the type's name.
fn event_name(obj: &Map<String, Value>, event_type: EventType) -> Result<String, Failure> {
    let name = |key: &str| -> Result<Option<String>, Failure> {
        match obj.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
            Some(Value::String(_)) => Ok(None),
            Some(_) => Err(parse_err(format!("{key} must be a string"))),
        }
    };
    Ok(match event_type {
        EventType::Track => name("event")?.ok_or_else(|| parse_err("track event has no name"))?,
        EventType::Page | EventType::Screen => name("name")?
            .or(name("event")?)
            .unwrap_or_else(|| event_type.as_str().to_string()),
        _ => name("event")?.unwrap_or_else(|| event_type.as_str().to_string()),
    })
}

/// The first of `keys` that is present, as a time in microseconds.
fn time_field(obj: &Map<String, Value>, keys: &[&str]) -> Result<Option<i64>, Failure> {
    for k in keys {
        match obj.get(*k) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return parse_timestamp(v)
                    .map(Some)
                    .ok_or_else(|| parse_err(format!("{k} is not a valid time: {v}")));
            }
        }
    }
    Ok(None)
}

/// A JSON object's members.
type JsonObject = Map<String, Value>;

/// The properties (an identify's or group's `traits`) with every member that is not reserved,
/// and the context with the request's IP address and user agent where it names none.
fn native_members(
    mut obj: Map<String, Value>,
    event_type: EventType,
    raw: &RawEvent,
) -> Result<(JsonObject, JsonObject), Failure> {
    let props_key = match event_type {
        EventType::Identify | EventType::Group => "traits",
        _ => "properties",
    };
    let mut properties = match obj.remove(props_key) {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(parse_err(format!("{props_key} must be a json object"))),
    };
    let mut context = match obj.remove("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(parse_err("context must be a json object")),
    };
    if let Some(ip) = &raw.ip {
        context
            .entry("ip")
            .or_insert_with(|| Value::String(ip.clone()));
    }
    if let Some(ua) = &raw.user_agent {
        context
            .entry("userAgent")
            .or_insert_with(|| Value::String(ua.clone()));
    }
    if let Some(metadata) = obj.remove("_metadata") {
        context.entry("_metadata").or_insert(metadata);
    }
    for (k, v) in obj {
        if !RESERVED.contains(&k.as_str()) {
            properties.entry(k).or_insert(v);
        }
    }
    Ok((properties, context))
}

fn id_field(obj: &Map<String, Value>, keys: &[&str]) -> Result<Option<String>, Failure> {
    for k in keys {
        match obj.get(*k) {
            None | Some(Value::Null) => continue,
            Some(Value::String(s)) if s.is_empty() => continue,
            Some(Value::String(s)) => return Ok(Some(s.clone())),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => return Ok(Some(n.to_string())),
            Some(_) => return Err(parse_err(format!("{k} must be a string"))),
        }
    }
    Ok(None)
}

fn to_raw(v: &Value) -> Box<RawValue> {
    // Serializing a Value built from parsed JSON cannot fail.
    serde_json::value::to_raw_value(v)
        .unwrap_or_else(|_| RawValue::from_string("{}".to_string()).expect("literal is valid json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(payload: &str) -> RawEvent {
        RawEvent {
            event_id: "e1".into(),
            source: "web".into(),
            protocol: Protocol::Native,
            received_at: 1_000_000_000,
            ip: Some("10.1.2.3".into()),
            user_agent: Some("curl/8".into()),
            network_user_id: None,
            partition_key: None,
            replay_of: None,
            payload: RawValue::from_string(payload.to_string()).unwrap(),
        }
    }
    const POS: Position = Position {
        partition: 1,
        offset: 9,
    };

    #[test]
    fn track_with_skew_correction_and_flat_properties() {
        let e = canonicalize(
            &raw(r#"{"event":"Order Completed","userId":"u1","anonymousId":"a1","timestamp":"1970-01-01T00:16:30Z","sentAt":"1970-01-01T00:16:40Z","properties":{"total":5},"button":"buy","integrations":{}}"#),
            POS,
        )
        .unwrap();
        assert_eq!(e.event, "Order Completed");
        assert_eq!(e.event_type, EventType::Track);
        assert_eq!(e.user_id.as_deref(), Some("u1"));
        assert_eq!(e.anonymous_id.as_deref(), Some("a1"));
        // received 1000 s; sent at 1000 s by the client clock; happened 10 s before sending
        assert_eq!(e.timestamp, 1_000_000_000 - 10_000_000);
        assert_eq!(e.sent_at, Some(1_000_000_000));
        let props: Value = serde_json::from_str(e.properties.get()).unwrap();
        assert_eq!(props, serde_json::json!({"total":5,"button":"buy"}));
        let ctx: Value = serde_json::from_str(e.context.get()).unwrap();
        assert_eq!(
            ctx,
            serde_json::json!({"ip":"10.1.2.3","userAgent":"curl/8"})
        );
        assert_eq!(e.raw, POS);
    }

    #[test]
    fn identify_and_page_names() {
        let e = canonicalize(
            &raw(r#"{"type":"identify","user_id":7,"traits":{"plan":"pro"}}"#),
            POS,
        )
        .unwrap();
        assert_eq!(
            (e.event.as_str(), e.user_id.as_deref()),
            ("identify", Some("7"))
        );
        assert_eq!(e.properties.get(), r#"{"plan":"pro"}"#);
        assert_eq!(e.timestamp, 1_000_000_000);
        let e = canonicalize(
            &raw(r#"{"type":"page","name":"Pricing","context":{"ip":"1.1.1.1"}}"#),
            POS,
        )
        .unwrap();
        assert_eq!(e.event, "Pricing");
        assert!(e.context.get().contains("1.1.1.1"));
        assert!(!e.context.get().contains("10.1.2.3"));
    }

    #[test]
    fn segment_metadata_goes_to_context_not_properties() {
        let e = canonicalize(
            &raw(r#"{"event":"x","properties":{"n":7},"_metadata":{"jsRuntime":"node"}}"#),
            POS,
        )
        .unwrap();
        assert_eq!(e.properties.get(), r#"{"n":7}"#);
        let ctx: Value = serde_json::from_str(e.context.get()).unwrap();
        assert_eq!(ctx["_metadata"], serde_json::json!({"jsRuntime":"node"}));
    }

    #[test]
    fn wrong_types_are_parse_failures() {
        for p in [
            r#"{"event":"x","properties":[1]}"#,
            r#"{"event":"x","timestamp":"soon"}"#,
            r#"{"event":"x","userId":{"a":1}}"#,
            r#"{"event":"x","context":"c"}"#,
            r#"{"type":"nope","event":"x"}"#,
            r#"{"properties":{}}"#,
            r#"[1]"#,
        ] {
            let f = canonicalize(&raw(p), POS).unwrap_err();
            assert_eq!(f.kind, BadKind::Parse, "{p}");
        }
    }
}
