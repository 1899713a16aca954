//! The Snowplow tracker protocol at intake: a `POST /com.snowplowanalytics.snowplow/tp2` body
//! (`payload_data` self-describing JSON) or a `GET /i` pixel's query string, decoded into one
//! slot per event, with no HTTP types.
//!
//! Each event's payload is a JSON object of the tracker's parameters exactly as sent (for GET,
//! the decoded query parameters, all strings; for POST, the `data` element as it was in the
//! body, so a number or boolean a tracker sent unquoted stays one). The runner turns it into a
//! canonical event (`sluice-functions`, `snowplow.rs`).
//!
//! The tracker protocol has no way to tell a tracker which events of a request were refused (the
//! answer is `ok` or an error for the whole request), so an event whose *content* is wrong (not
//! a JSON object, no `e` or an unknown one, an object or array as a parameter value) is still
//! stored in `raw`, as Snowplow's own collector does: the runner makes it a typed `parse` bad
//! row with the reason, where it can be seen and replayed. Refused at intake, per slot, are
//! only events that cannot be stored faithfully or safely: nested deeper than the JSON depth
//! limit, a parameter given twice (a JSON object with a repeated key would lose one value), an
//! id parameter over the length limit, and anything over the size limits. The whole request
//! is refused when the body is not JSON, is not `payload_data` 1-0-0 … 1-0-4, holds no event,
//! or holds more events than `collector.max_events`.
//!
//! Which source an event belongs to depends on its app id (`aid`), which only the server can
//! resolve: it reads [`SnowplowEvent::app_id`] and calls [`SnowplowEvent::into_item`] with the
//! source and the network user id it chose (the `sp` cookie, the `nuid` query parameter, or a
//! new id).

use std::borrow::Cow;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use sluice_event::{ErrorKind, Protocol};

use crate::native::{MAX_DEPTH, json_depth};
use crate::{CollectError, Item};

/// The iglu URI prefix of a POST body; versions 1-0-0 to 1-0-4 follow it.
pub const PAYLOAD_DATA_SCHEMA: &str =
    "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/";

/// The `payload_data` versions accepted.
const PAYLOAD_DATA_VERSIONS: &[&str] = &["1-0-0", "1-0-1", "1-0-2", "1-0-3", "1-0-4"];

/// The event types (`e`) of the tracker protocol: page view, page ping, self-describing
/// (unstructured), structured, transaction, transaction item.
pub const EVENT_TYPES: &[&str] = &["pv", "pp", "ue", "se", "tr", "ti"];

/// Longest id accepted (`eid`, `uid`, `duid`, `aid`, `tnuid`): ids are keys, not payload.
const MAX_ID_BYTES: usize = 1024;

/// A per-slot rejection: its kind and reason.
pub type SlotError = (ErrorKind, String);

/// One decoded Snowplow event, waiting for its source.
#[derive(Clone, Debug)]
pub struct SnowplowEvent<'a> {
    /// The tracker's parameters as a JSON object (see the module doc).
    pub payload: Cow<'a, RawValue>,
    /// `eid` (`None` when absent or empty: the collector stamps one).
    pub event_id: Option<String>,
    /// `uid`.
    pub user_id: Option<String>,
    /// `duid` (the tracker's first-party cookie id).
    pub anonymous_id: Option<String>,
    /// `aid`, which picks the source.
    pub app_id: Option<String>,
    /// `tnuid`, a network user id the tracker set itself.
    pub tracker_network_user_id: Option<String>,
}

impl<'a> SnowplowEvent<'a> {
    /// The app id (`aid`) the server resolves to a source.
    pub fn app_id(&self) -> Option<&str> {
        self.app_id.as_deref()
    }

    /// The collector item for this event under `source`. `network_user_id` is what the server
    /// chose (cookie, `nuid` parameter or a new id); without one, the tracker's `tnuid` is kept.
    pub fn into_item(self, source: Arc<str>, network_user_id: Option<String>) -> Item<'a> {
        Item {
            source,
            protocol: Protocol::Snowplow,
            event_id: self.event_id,
            user_id: self.user_id,
            anonymous_id: self.anonymous_id,
            network_user_id: network_user_id.or(self.tracker_network_user_id),
            partition_key: None,
            payload: self.payload,
        }
    }
}

#[derive(Deserialize)]
struct PayloadData<'a> {
    #[serde(borrow)]
    schema: Cow<'a, str>,
    #[serde(borrow)]
    data: Vec<&'a RawValue>,
}

/// Decodes a POST body (already decompressed) into one slot per event of its `data` array.
/// A body that is not `payload_data` is refused as a whole.
pub fn decode_post(
    body: &[u8],
    max_events: usize,
) -> Result<Vec<Result<SnowplowEvent<'_>, SlotError>>, CollectError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(CollectError::Empty);
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| CollectError::Malformed(format!("body is not utf-8: {e}")))?;
    if json_depth(text) > MAX_DEPTH + 2 {
        return Err(CollectError::Invalid(format!(
            "body is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let value: &RawValue =
        serde_json::from_str(text).map_err(|e| CollectError::Malformed(e.to_string()))?;
    if !value.get().starts_with('{') {
        return Err(CollectError::Invalid(format!(
            "body must be a payload_data self-describing json object ({PAYLOAD_DATA_SCHEMA}1-0-4)"
        )));
    }
    let payload: PayloadData<'_> = serde_json::from_str(value.get()).map_err(|e| {
        CollectError::Invalid(format!(
            "body is not payload_data (a {{\"schema\", \"data\": [...]}} object): {e}"
        ))
    })?;
    let version = payload
        .schema
        .strip_prefix(PAYLOAD_DATA_SCHEMA)
        .filter(|v| PAYLOAD_DATA_VERSIONS.contains(v));
    if version.is_none() {
        return Err(CollectError::Invalid(format!(
            "unsupported schema {:?} (expected {PAYLOAD_DATA_SCHEMA}1-0-0 to 1-0-4)",
            payload.schema
        )));
    }
    if payload.data.is_empty() {
        return Err(CollectError::Empty);
    }
    if payload.data.len() > max_events {
        return Err(CollectError::TooManyEvents {
            count: payload.data.len(),
            limit: max_events,
        });
    }
    Ok(payload.data.into_iter().map(decode_post_event).collect())
}

fn decode_post_event(raw: &RawValue) -> Result<SnowplowEvent<'_>, SlotError> {
    let text = raw.get();
    if !text.starts_with('{') {
        // Stored as it is; the runner makes it a bad row ("not a json object of parameters").
        if json_depth(text) > MAX_DEPTH {
            return Err(invalid(format!(
                "event is nested deeper than {MAX_DEPTH} levels"
            )));
        }
        return Ok(Head::default().with_payload(Cow::Borrowed(raw)));
    }
    if json_depth(text) > MAX_DEPTH {
        return Err(invalid(format!(
            "event is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let params = serde_json::from_str::<Params>(text)
        .map_err(|e| invalid(format!("invalid event: {e}")))?
        .0;
    let head = head(&params)?;
    Ok(head.with_payload(Cow::Borrowed(raw)))
}

/// Decodes a GET pixel's query string (without the `?`) into its one event. `None` when the
/// query is empty (a pixel request that carries no event).
pub fn decode_query(query: &str) -> Option<Result<SnowplowEvent<'static>, SlotError>> {
    if query.is_empty() {
        return None;
    }
    let mut params = Map::new();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k.is_empty() {
            continue;
        }
        if params
            .insert(k.clone().into_owned(), Value::String(v.into_owned()))
            .is_some()
        {
            return Some(Err(invalid(format!("parameter {k:?} is given twice"))));
        }
    }
    if params.is_empty() {
        return None;
    }
    Some(head(&params).and_then(|h| {
        let raw = serde_json::value::to_raw_value(&params).map_err(|e| {
            (
                ErrorKind::Internal,
                format!("cannot encode parameters: {e}"),
            )
        })?;
        Ok(h.with_payload(Cow::Owned(raw)))
    }))
}

fn invalid(reason: impl Into<String>) -> SlotError {
    (ErrorKind::Invalid, reason.into())
}

/// The identity fields of one event.
#[derive(Default)]
struct Head {
    event_id: Option<String>,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    app_id: Option<String>,
    tracker_network_user_id: Option<String>,
}

impl Head {
    fn with_payload(self, payload: Cow<'_, RawValue>) -> SnowplowEvent<'_> {
        SnowplowEvent {
            payload,
            event_id: self.event_id,
            user_id: self.user_id,
            anonymous_id: self.anonymous_id,
            app_id: self.app_id,
            tracker_network_user_id: self.tracker_network_user_id,
        }
    }
}

/// Reads one event's ids. Content rules (`e`, value types) are the runner's: an event that
/// breaks them becomes a bad row, not a silent drop.
fn head(params: &Map<String, Value>) -> Result<Head, SlotError> {
    let id = |name: &str| -> Result<Option<String>, SlotError> {
        let v = match params.get(name) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::String(s)) => s.clone(),
            // Not an id; the runner reports the parameter's type.
            Some(Value::Object(_) | Value::Array(_)) => return Ok(None),
            Some(other) => other.to_string(),
        };
        if v.len() > MAX_ID_BYTES {
            return Err((
                ErrorKind::TooLarge,
                format!("parameter {name:?} is longer than {MAX_ID_BYTES} bytes"),
            ));
        }
        Ok(Some(v).filter(|v| !v.is_empty()))
    };
    Ok(Head {
        event_id: id("eid")?,
        user_id: id("uid")?,
        anonymous_id: id("duid")?,
        app_id: id("aid")?,
        tracker_network_user_id: id("tnuid")?,
    })
}

/// An event's parameters, refusing a parameter given twice (a JSON object with a repeated key
/// would otherwise keep only one of the values).
struct Params(Map<String, Value>);

impl<'de> Deserialize<'de> for Params {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Params;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a json object of parameters")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Map::new();
                while let Some((k, v)) = map.next_entry::<String, Value>()? {
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "parameter {k:?} is given twice"
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(Params(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Encoding, decompress};
    use std::io::Write;

    fn body(data: &str) -> String {
        format!(r#"{{"schema":"{PAYLOAD_DATA_SCHEMA}1-0-4","data":{data}}}"#)
    }

    #[test]
    fn post_keeps_each_event_as_sent_and_reads_ids() {
        let b = body(
            r#"[{"e":"pv","eid":"e-1","uid":"customer-981","duid":"d-1","aid":"shop","tnuid":"t-1","url":"https://x/","vid":3,"cookie":true},
                {"e":"se","se_ac":"click","aid":"shop"}]"#,
        );
        let slots = decode_post(b.as_bytes(), 10).unwrap();
        assert_eq!(slots.len(), 2);
        let first = slots[0].as_ref().unwrap();
        assert_eq!(first.event_id.as_deref(), Some("e-1"));
        assert_eq!(first.user_id.as_deref(), Some("customer-981"));
        assert_eq!(first.anonymous_id.as_deref(), Some("d-1"));
        assert_eq!(first.app_id(), Some("shop"));
        // The payload is the element exactly as sent: unquoted numbers and booleans stay so.
        assert!(first.payload.get().contains(r#""vid":3"#));
        assert!(first.payload.get().contains(r#""cookie":true"#));
        let second = slots[1].as_ref().unwrap();
        assert_eq!(second.event_id, None);
        assert_eq!(
            second.payload.get(),
            r#"{"e":"se","se_ac":"click","aid":"shop"}"#
        );

        let item = first
            .clone()
            .into_item(Arc::from("web"), Some("n-1".into()));
        assert_eq!(item.protocol, Protocol::Snowplow);
        assert_eq!(&*item.source, "web");
        assert_eq!(item.network_user_id.as_deref(), Some("n-1"));
        assert_eq!(item.event_id.as_deref(), Some("e-1"));
        let item = first.clone().into_item(Arc::from("web"), None);
        assert_eq!(item.network_user_id.as_deref(), Some("t-1"));
    }

    #[test]
    fn post_accepts_every_payload_data_version_and_refuses_others() {
        for v in ["1-0-0", "1-0-1", "1-0-2", "1-0-3", "1-0-4"] {
            let b = format!(r#"{{"schema":"{PAYLOAD_DATA_SCHEMA}{v}","data":[{{"e":"pv"}}]}}"#);
            assert_eq!(decode_post(b.as_bytes(), 10).unwrap().len(), 1, "{v}");
        }
        for (b, needle) in [
            (
                format!(r#"{{"schema":"{PAYLOAD_DATA_SCHEMA}2-0-0","data":[{{"e":"pv"}}]}}"#),
                "unsupported schema",
            ),
            (
                r#"{"schema":"iglu:com.acme/payload_data/jsonschema/1-0-4","data":[]}"#.into(),
                "unsupported schema",
            ),
            (r#"{"data":[{"e":"pv"}]}"#.into(), "not payload_data"),
            (
                format!(r#"{{"schema":"{PAYLOAD_DATA_SCHEMA}1-0-4","data":{{"e":"pv"}}}}"#),
                "not payload_data",
            ),
            (r#"[{"e":"pv"}]"#.into(), "payload_data"),
            (r#"{"e":"pv"}"#.into(), "not payload_data"),
        ] {
            let err = decode_post(b.as_bytes(), 10).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Invalid, "{b}");
            assert!(err.to_string().contains(needle), "{b}: {err}");
        }
        assert!(matches!(
            decode_post(b"{\"schema\":", 10),
            Err(CollectError::Malformed(_))
        ));
        assert!(matches!(decode_post(b" \n", 10), Err(CollectError::Empty)));
        assert!(matches!(
            decode_post(body("[]").as_bytes(), 10),
            Err(CollectError::Empty)
        ));
        assert!(matches!(
            decode_post(body(r#"[{"e":"pv"},{"e":"pv"},{"e":"pv"}]"#).as_bytes(), 2),
            Err(CollectError::TooManyEvents { count: 3, limit: 2 })
        ));
        assert!(matches!(
            decode_post(&[0xff, 0xfe], 10),
            Err(CollectError::Malformed(_))
        ));
    }

    #[test]
    fn bad_content_is_kept_for_bad_rows_and_unstorable_events_are_refused() {
        let long = "u".repeat(2000);
        let b = body(&format!(
            r#"[{{"e":"pv"}}, 3, "x", {{"url":"https://x"}}, {{"e":"zz"}}, {{"e":7}},
               {{"e":"pv","e":"se"}}, {{"e":"pv","co":{{"a":1}}}}, {{"e":"pv","uid":"{long}"}},
               {{"e":"ue","eid":""}}]"#
        ));
        let slots = decode_post(b.as_bytes(), 100).unwrap();
        // Wrong content is stored as sent: the runner makes each a parse bad row.
        for i in [0, 1, 2, 3, 4, 5, 7, 9] {
            assert!(slots[i].is_ok(), "slot {i}: {:?}", slots[i]);
        }
        assert_eq!(slots[1].as_ref().unwrap().payload.get(), "3");
        let reasons: Vec<_> = slots
            .iter()
            .map(|s| s.as_ref().err().map(|(k, r)| (*k, r.clone())))
            .collect();
        for (i, kind, needle) in [
            (6, ErrorKind::Invalid, "given twice"),
            (8, ErrorKind::TooLarge, "longer than"),
        ] {
            let (k, r) = reasons[i].as_ref().unwrap();
            assert!(r.contains(needle) && *k == kind, "slot {i}: {r}");
        }
        // An empty eid is no id: the collector stamps one.
        assert_eq!(slots[9].as_ref().unwrap().event_id, None);
    }

    #[test]
    fn every_event_type_is_known() {
        for e in EVENT_TYPES {
            let q = format!("e={e}");
            assert!(decode_query(&q).unwrap().is_ok(), "{e}");
        }
    }

    #[test]
    fn get_decodes_the_query_into_string_params() {
        let q = "e=pv&url=https%3A%2F%2Fshop.example.com%2Fp%2F42&page=Product+42&aid=shop&eid=7b3c&vid=3&duid=d1&uid=u1";
        let ev = decode_query(q).unwrap().unwrap();
        let v: Value = serde_json::from_str(ev.payload.get()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"e":"pv","url":"https://shop.example.com/p/42","page":"Product 42",
                "aid":"shop","eid":"7b3c","vid":"3","duid":"d1","uid":"u1"})
        );
        assert_eq!(ev.event_id.as_deref(), Some("7b3c"));
        assert_eq!(ev.app_id(), Some("shop"));
        assert_eq!(ev.anonymous_id.as_deref(), Some("d1"));
        assert!(decode_query("").is_none());
        assert!(decode_query("&&").is_none());
        assert!(
            decode_query("e=pv&e=se")
                .unwrap()
                .unwrap_err()
                .1
                .contains("twice")
        );
        // Wrong content is kept (the runner makes it a bad row).
        assert!(decode_query("url=x").unwrap().is_ok());
        assert!(decode_query("e=bogus").unwrap().is_ok());
    }

    #[test]
    fn gzip_bodies_are_decoded_and_limited_after_inflating() {
        let b = body(r#"[{"e":"pv","eid":"g1"}]"#);
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(b.as_bytes()).unwrap();
        let gz = enc.finish().unwrap();
        let plain = decompress(&gz, Encoding::Gzip, 1 << 20).unwrap();
        let slots = decode_post(&plain, 10).unwrap();
        assert_eq!(slots[0].as_ref().unwrap().event_id.as_deref(), Some("g1"));
        assert!(matches!(
            decompress(&gz, Encoding::Gzip, 10),
            Err(CollectError::BodyTooLarge { limit: 10 })
        ));
    }
}
