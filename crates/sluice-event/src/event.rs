//! The records of the three topics: [`RawEvent`] (raw), [`Event`] (good), [`BadRow`] (bad).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::Position;

/// Which wire protocol an event arrived by. Decides how the runner reads the payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// `POST /v1/events`: Sluice's own JSON shape (Segment-like, snake_case or camelCase keys).
    Native,
    /// The Segment HTTP Tracking API (`/v1/track`, `/v1/batch`, ...): one Segment message, with
    /// the batch's `context`, `integrations` and `sentAt` merged in by the collector.
    Segment,
    /// The Snowplow tracker protocol: one event's parameters as a JSON object of strings (the
    /// `payload_data` item of a POST, or a GET pixel's query string).
    Snowplow,
    /// A Kinesis or Firehose record put into `raw`: the record's data, a JSON object when it
    /// parsed as one, else a JSON string holding the base64 of the bytes.
    Kinesis,
}

impl Protocol {
    /// The lowercase name stored in records and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Segment => "segment",
            Self::Snowplow => "snowplow",
            Self::Kinesis => "kinesis",
        }
    }
}

/// A record of the `raw` topic: one event exactly as the collector accepted it, plus what the
/// collector stamped on it. The payload is the client's JSON object, untouched.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RawEvent {
    /// The client's id for the event, or a UUIDv7 the collector stamped.
    pub event_id: String,
    /// The source (write key name) it was sent under.
    pub source: String,
    /// How it arrived.
    pub protocol: Protocol,
    /// When the collector received it, µs since the epoch.
    pub received_at: i64,
    /// The client address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The client's User-Agent header, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// The collector's own id for the browser: Snowplow's `sp` cookie (network user id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_user_id: Option<String>,
    /// The Kinesis partition key the producer gave, for records put through the Kinesis API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// Set on a record that `sluice replay` re-drove: the position of the record (in `raw`) it
    /// is a copy of. Lineage only; the runner treats it like any other record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<Position>,
    /// The event as the client sent it: one JSON value, an object for every protocol but
    /// Kinesis (see [`Protocol::Kinesis`]).
    pub payload: Box<RawValue>,
}

/// The borrowed twin of [`RawEvent`] that the collector serializes without copying the payload.
/// Field names and order must stay those of [`RawEvent`] (a test checks the round trip).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RawEventRef<'a> {
    /// See [`RawEvent::event_id`].
    pub event_id: &'a str,
    /// See [`RawEvent::source`].
    pub source: &'a str,
    /// See [`RawEvent::protocol`].
    pub protocol: Protocol,
    /// See [`RawEvent::received_at`].
    pub received_at: i64,
    /// See [`RawEvent::ip`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<&'a str>,
    /// See [`RawEvent::user_agent`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<&'a str>,
    /// See [`RawEvent::network_user_id`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_user_id: Option<&'a str>,
    /// See [`RawEvent::partition_key`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<&'a str>,
    /// See [`RawEvent::replay_of`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replay_of: Option<Position>,
    /// See [`RawEvent::payload`].
    pub payload: &'a RawValue,
}

/// The Segment-style kind of an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// Something the user did (the default).
    #[default]
    Track,
    /// Who the user is: `traits`.
    Identify,
    /// A web page view.
    Page,
    /// A mobile screen view.
    Screen,
    /// A user joined a group (account, company).
    Group,
    /// One identity merged into another.
    Alias,
}

impl EventType {
    /// Parses the `type` field of an event; `None` for an unknown type.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "track" => Self::Track,
            "identify" => Self::Identify,
            "page" => Self::Page,
            "screen" => Self::Screen,
            "group" => Self::Group,
            "alias" => Self::Alias,
            _ => return None,
        })
    }

    /// The lowercase name, as stored in the `event_type` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Track => "track",
            Self::Identify => "identify",
            Self::Page => "page",
            Self::Screen => "screen",
            Self::Group => "group",
            Self::Alias => "alias",
        }
    }
}

/// A record of the `good` topic: the canonical event every sink sees, whatever the tracker,
/// with its JSON members (`properties`, `context`) as their text.
pub type Event = EventOf<Box<RawValue>>;

/// The canonical event with its JSON members (`properties`, `context`) held as `M`: their text
/// in an [`Event`], parsed maps while the runner makes it (`sluice_functions::Draft`). One
/// struct for both, so that the runner writes a draft's `good` record directly, in exactly the
/// members, order and attributes an [`Event`] has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventOf<M> {
    /// Unique per source.
    pub event_id: String,
    /// track, identify, page, ...
    pub event_type: EventType,
    /// The event name (`Order Completed`); for page/screen/identify calls the type name when the
    /// tracker gave no name.
    pub event: String,
    /// Source (write key name).
    pub source: String,
    /// The known user, when identified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    /// The device or cookie id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_id: Option<String>,
    /// When it happened (µs since the epoch, UTC), corrected for client clock skew when the
    /// tracker sent `sentAt`.
    pub timestamp: i64,
    /// When the tracker sent it, per the tracker's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<i64>,
    /// When the collector received it.
    pub received_at: i64,
    /// When it happened per the device's clock, as the tracker claimed it (uncorrected).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_timestamp: Option<i64>,
    /// The `raw` position this event came from: the runner's exactly-once bookkeeping and
    /// lineage. Written before the JSON members, so that a reader that needs none of those
    /// after `properties` stops reading there (`skim.rs`).
    pub raw: Position,
    /// Event properties (traits for identify and group) as a JSON object.
    pub properties: M,
    /// Tracker context (library, page, device, ip, user agent...) as a JSON object.
    pub context: M,
    /// What validation and the enrichers derived (each field is a column of `events`).
    #[serde(default, skip_serializing_if = "Enrichment::is_empty")]
    pub enriched: Enrichment,
}

impl<M> EventOf<M> {
    /// The same event with its JSON members turned into `N` by `f`.
    pub fn map_members<N>(self, mut f: impl FnMut(M) -> N) -> EventOf<N> {
        EventOf {
            event_id: self.event_id,
            event_type: self.event_type,
            event: self.event,
            source: self.source,
            user_id: self.user_id,
            anonymous_id: self.anonymous_id,
            timestamp: self.timestamp,
            sent_at: self.sent_at,
            received_at: self.received_at,
            device_timestamp: self.device_timestamp,
            raw: self.raw,
            properties: f(self.properties),
            context: f(self.context),
            enriched: self.enriched,
        }
    }

    /// The key the collector routed the event by ([`routing_key`]): all of one key's events are
    /// in one partition, in order.
    pub fn routing_key(&self) -> &str {
        routing_key(
            self.user_id.as_deref(),
            self.anonymous_id.as_deref(),
            &self.event_id,
        )
    }
}

impl Event {
    /// Decodes a `good` record but for its `enriched` fields, left empty and stepped over
    /// unparsed (`skim.rs`): for readers that never use them.
    pub fn from_slice_unenriched(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Self::skimmed(bytes, true)
    }

    /// Decodes a `good` record but for its `enriched` fields and its `context`, left empty
    /// (`{}`) and stepped over unparsed (`skim.rs`): for readers that use neither (the hot
    /// tier when no counter reads the context).
    pub fn from_slice_bare(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        Self::skimmed(bytes, false)
    }

    fn skimmed(bytes: &[u8], with_context: bool) -> Result<Self, serde_json::Error> {
        if let Some(event) = crate::skim::skim(bytes, with_context) {
            return Ok(event);
        }
        let mut event = Self::from_slice_derived(bytes)?;
        if !with_context {
            event.context = crate::skim::empty_object();
        }
        Ok(event)
    }

    /// The derived decoding of a record without its `enriched` fields, which checks every
    /// member it steps over.
    pub(crate) fn from_slice_derived(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice::<Unenriched>(bytes).map(Self::from)
    }
}

/// [`Event`]'s fields without `enriched`, which is skipped when read (an unknown field).
#[derive(Deserialize)]
struct Unenriched {
    event_id: String,
    event_type: EventType,
    event: String,
    source: String,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    anonymous_id: Option<String>,
    timestamp: i64,
    #[serde(default)]
    sent_at: Option<i64>,
    received_at: i64,
    #[serde(default)]
    device_timestamp: Option<i64>,
    properties: Box<RawValue>,
    context: Box<RawValue>,
    raw: Position,
}

impl From<Unenriched> for Event {
    fn from(e: Unenriched) -> Self {
        Self {
            event_id: e.event_id,
            event_type: e.event_type,
            event: e.event,
            source: e.source,
            user_id: e.user_id,
            anonymous_id: e.anonymous_id,
            timestamp: e.timestamp,
            sent_at: e.sent_at,
            received_at: e.received_at,
            device_timestamp: e.device_timestamp,
            properties: e.properties,
            context: e.context,
            enriched: Enrichment::default(),
            raw: e.raw,
        }
    }
}

/// What the function chain derived for an event: validation results and the built-in
/// enrichers' fields. Every field is optional (an enricher that is off, or found nothing, leaves
/// it out) and becomes a nullable column of `events` under the same name (`docs/enrichment.md`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Enrichment {
    /// The self-describing schema (`iglu:vendor/name/jsonschema/M-R-A`) the event was checked
    /// against.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema: Option<String>,
    /// Set when the event failed validation but its source's policy lets it pass flagged: the
    /// violations as a JSON array of `{schema, path, message}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub validation_errors: Option<String>,
    /// The client address after anonymisation (the one the tracker or the collector saw).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// Browser family (`Chrome`, `Safari`, `Googlebot`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ua_browser: Option<String>,
    /// Browser version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ua_browser_version: Option<String>,
    /// Operating system (`Windows 10`, `Mac OSX`, `iPhone`, `Android`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ua_os: Option<String>,
    /// Operating system version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ua_os_version: Option<String>,
    /// Device class: `desktop`, `mobile`, `tablet`, `bot`, `appliance` or `other`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ua_device_class: Option<String>,
    /// Browser vendor (`Google`, `Apple`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ua_vendor: Option<String>,
    /// Whether a bot or spider sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_bot: Option<bool>,
    /// ISO 3166-1 country code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_country: Option<String>,
    /// ISO 3166-2 subdivision code (without the country), the largest subdivision.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_region: Option<String>,
    /// The subdivision's English name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_region_name: Option<String>,
    /// City (English name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_city: Option<String>,
    /// Postal code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_zipcode: Option<String>,
    /// Latitude.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_latitude: Option<f64>,
    /// Longitude.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_longitude: Option<f64>,
    /// IANA time zone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub geo_timezone: Option<String>,
    /// The page URL the event happened on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_url: Option<String>,
    /// Host of the page URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_host: Option<String>,
    /// Path of the page URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page_path: Option<String>,
    /// Campaign medium (`utm_medium`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mkt_medium: Option<String>,
    /// Campaign source (`utm_source`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mkt_source: Option<String>,
    /// Campaign term (`utm_term`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mkt_term: Option<String>,
    /// Campaign content (`utm_content`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mkt_content: Option<String>,
    /// Campaign name (`utm_campaign`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mkt_campaign: Option<String>,
    /// An ad network's click id (`gclid`, `fbclid`, `msclkid`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mkt_clickid: Option<String>,
    /// The network the click id belongs to (`Google`, `Facebook`, `Microsoft`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mkt_network: Option<String>,
    /// Referer class: `search`, `social`, `email`, `internal` or `unknown`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refr_medium: Option<String>,
    /// Referer name (`Google`, `Facebook`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refr_source: Option<String>,
    /// The search term, for a search referer that shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refr_term: Option<String>,
    /// Host of the referer URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refr_host: Option<String>,
    /// Session id: the tracker's, else one derived from a 30-minute inactivity gap per user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// The session's number for this user, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_index: Option<i32>,
    /// A hash of the payload without its per-send fields: equal for resent copies of an event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_fingerprint: Option<String>,
}

impl Enrichment {
    /// Whether nothing was derived.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }

    /// Every column's name, as the fields serialise.
    pub fn columns() -> &'static [&'static str] {
        static COLUMNS: std::sync::OnceLock<&'static [&'static str]> = std::sync::OnceLock::new();
        COLUMNS.get_or_init(struct_fields::<Self>)
    }
}

/// The field names a derived `Deserialize` asks for (it names them when it asks for a struct).
fn struct_fields<T: serde::de::DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Fields<'_> {
        type Error = de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(de::Error::custom("not a struct"))
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(de::Error::custom("only the field names were wanted"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    // Always an error: the fields are what it leaves behind.
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// The family of a failure, as in Snowplow's failed-event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadKind {
    /// Over a size limit.
    Size,
    /// Not readable as an event of its protocol.
    Parse,
    /// Fails its schema.
    SchemaViolation,
    /// An enricher failed on it.
    EnrichmentFailure,
    /// A user function failed on it.
    FunctionFailure,
    /// Its time lies outside the accepted window around when it was received
    /// (`[functions.event_time_window]`).
    EventTime,
}

impl BadKind {
    /// Every kind.
    pub const ALL: [Self; 6] = [
        Self::Size,
        Self::Parse,
        Self::SchemaViolation,
        Self::EnrichmentFailure,
        Self::FunctionFailure,
        Self::EventTime,
    ];

    /// The lowercase name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Size => "size",
            Self::Parse => "parse",
            Self::SchemaViolation => "schema_violation",
            Self::EnrichmentFailure => "enrichment_failure",
            Self::FunctionFailure => "function_failure",
            Self::EventTime => "event_time",
        }
    }
}

/// A record of the `bad` topic: why an event failed, with the original payload so that it can be
/// replayed after a fix.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BadRow {
    /// Failure family.
    pub kind: BadKind,
    /// Lowercase reason.
    pub reason: String,
    /// The function (stage) that failed it.
    pub function: String,
    /// The event id, as far as it was known.
    pub event_id: String,
    /// The source.
    pub source: String,
    /// When the collector received it.
    pub received_at: i64,
    /// When it failed.
    pub failed_at: i64,
    /// The original raw record (a [`RawEvent`] as JSON), for replay.
    pub payload: Box<RawValue>,
    /// The `raw` position it came from.
    pub raw: Position,
}

/// The key that picks an event's partition: the user id, else the anonymous id, else the event id.
/// Events of one user stay in one partition, and so in order.
pub fn routing_key<'a>(
    user_id: Option<&'a str>,
    anonymous_id: Option<&'a str>,
    event_id: &'a str,
) -> &'a str {
    user_id
        .filter(|s| !s.is_empty())
        .or(anonymous_id.filter(|s| !s.is_empty()))
        .unwrap_or(event_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enrichment_columns_are_every_field() {
        let columns = Enrichment::columns();
        assert!(columns.len() >= 30, "{columns:?}");
        assert!(columns.contains(&"geo_timezone") && columns.contains(&"session_index"));
        // Each name is a field: set alone, it is what the enrichment serialises.
        for c in columns {
            let set = ["x".into(), true.into(), 1.into()]
                .into_iter()
                .map(|v: serde_json::Value| serde_json::json!({ *c: v }))
                .find_map(|v| serde_json::from_value::<Enrichment>(v).ok())
                .filter(|e| !e.is_empty());
            let written = serde_json::to_value(set.expect(c)).unwrap();
            assert_eq!(written.as_object().unwrap().keys().collect::<Vec<_>>(), [c]);
        }
    }

    #[test]
    fn an_event_read_unenriched_is_the_event_but_for_its_enriched_fields() {
        let mut event: Event = serde_json::from_value(serde_json::json!({
            "event_id": "e1", "event_type": "identify", "event": "identify", "source": "web",
            "user_id": "u1", "anonymous_id": "a1", "timestamp": 5, "sent_at": 6,
            "received_at": 7, "device_timestamp": 8,
            "properties": {"plan": "pro"}, "context": {"page": {"path": "/"}},
            "enriched": {"ua_browser": "Chrome", "geo_latitude": 52.5, "session_index": 3},
            "raw": {"partition": 1, "offset": 9}
        }))
        .unwrap();
        assert!(!event.enriched.is_empty());
        let read = Event::from_slice_unenriched(&serde_json::to_vec(&event).unwrap()).unwrap();
        event.enriched = Enrichment::default();
        assert_eq!(
            serde_json::to_value(&read).unwrap(),
            serde_json::to_value(&event).unwrap()
        );
        assert!(Event::from_slice_unenriched(br#"{"event_id": "e1"}"#).is_err());
    }

    #[test]
    fn routing_prefers_user_then_anonymous_then_event() {
        assert_eq!(routing_key(Some("u"), Some("a"), "e"), "u");
        assert_eq!(routing_key(Some(""), Some("a"), "e"), "a");
        assert_eq!(routing_key(None, None, "e"), "e");
    }

    #[test]
    fn raw_event_ref_writes_what_raw_event_reads() {
        let payload: Box<RawValue> = serde_json::from_str(r#"{"event":"x","n":[1,2]}"#).unwrap();
        let r = RawEventRef {
            event_id: "e1",
            source: "web",
            protocol: Protocol::Native,
            received_at: 7,
            ip: Some("127.0.0.1"),
            user_agent: None,
            network_user_id: Some("n1"),
            partition_key: None,
            replay_of: Some(Position {
                partition: 1,
                offset: 2,
            }),
            payload: &payload,
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        let back: RawEvent = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.event_id, "e1");
        assert_eq!(back.source, "web");
        assert_eq!(back.received_at, 7);
        assert_eq!(back.ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(back.user_agent, None);
        assert_eq!(back.replay_of.map(|p| p.offset), Some(2));
        assert_eq!(back.payload.get(), payload.get());
        assert_eq!(serde_json::to_vec(&back).unwrap(), bytes);
    }

    #[test]
    fn event_types_round_trip() {
        for t in ["track", "identify", "page", "screen", "group", "alias"] {
            assert_eq!(EventType::parse(t).map(EventType::as_str), Some(t));
        }
        assert_eq!(EventType::parse("nope"), None);
    }
}
