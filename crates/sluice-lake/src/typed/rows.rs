//! The typed sink's events as it reads them from `good`: a [`Row`] of its table, borrowed from
//! its record, or a [`Rejected`] event that cannot be one.
//!
//! A record is read by the scanner (`sluice_event::skim`): the fixed members' strings are
//! borrowed from the record, `context` is taken as the text it is (as the `events` sink takes
//! it), `enriched` is not looked at, and each member of `properties` is parsed alone. Whatever
//! the scanner does not expect (a key written with escapes, a member or a property twice, a value
//! that does not parse, properties that are not an object) goes to the derived decoding, which
//! gives the answer or the error it always gave. Properties come in the order of the derived
//! decoding's map, by name, so new columns are added in the same order either way.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use sluice_event::skim::{self, optional};
use sluice_event::{Event, EventType, Position};
use sluice_journal::Record;

use super::{column_name, table_name};

/// What one event holds for the fixed columns ([`super::FIXED_COLUMNS`]) and a bad row.
#[derive(Debug, PartialEq)]
pub(super) struct Fixed<'a> {
    pub event_id: Cow<'a, str>,
    pub event_type: EventType,
    pub event: Cow<'a, str>,
    pub source: Cow<'a, str>,
    pub user_id: Option<Cow<'a, str>>,
    pub anonymous_id: Option<Cow<'a, str>>,
    pub timestamp: i64,
    pub sent_at: Option<i64>,
    pub received_at: i64,
    pub context: Cow<'a, str>,
    pub raw: Position,
}

impl From<Event> for Fixed<'_> {
    fn from(e: Event) -> Self {
        Self {
            event_id: Cow::Owned(e.event_id),
            event_type: e.event_type,
            event: Cow::Owned(e.event),
            source: Cow::Owned(e.source),
            user_id: e.user_id.map(Cow::Owned),
            anonymous_id: e.anonymous_id.map(Cow::Owned),
            timestamp: e.timestamp,
            sent_at: e.sent_at,
            received_at: e.received_at,
            context: Cow::Owned(e.context.get().to_owned()),
            raw: e.raw,
        }
    }
}

/// One property of a row: its column, its name as sent, its value (never null).
pub(super) type Property<'a> = (Arc<str>, Cow<'a, str>, Value);

/// One event on its way into a typed table.
pub(super) struct Row<'a> {
    pub partition: u32,
    pub offset: u64,
    pub fixed: Fixed<'a>,
    /// The record as it is in `good`: a rejected row's payload, enriched fields included.
    pub good: &'a [u8],
    /// Nulls dropped.
    pub values: Vec<Property<'a>>,
}

/// An event that cannot go into its typed table.
pub(super) struct Rejected<'a> {
    pub partition: u32,
    pub offset: u64,
    pub fixed: Fixed<'a>,
    /// The record as it is in `good`, the bad row's payload.
    pub good: &'a [u8],
    pub reason: String,
}

impl<'a> Row<'a> {
    /// This row rejected for `reason`.
    pub fn reject(self, reason: String) -> Rejected<'a> {
        Rejected {
            partition: self.partition,
            offset: self.offset,
            fixed: self.fixed,
            good: self.good,
            reason,
        }
    }
}

/// A record's fixed members and its properties, by name (nulls included), or why they are not
/// an object.
type Read<'a> = (Fixed<'a>, Result<Vec<(Cow<'a, str>, Value)>, String>);

/// Reads one good record into a [`Row`] of its table (named), or a [`Rejected`] event; `Err`
/// when it is not a good event at all.
pub(super) fn decode<'a>(
    partition: u32,
    record: &'a Record,
    names: &mut Names,
) -> Result<(Arc<str>, Result<Row<'a>, Rejected<'a>>), String> {
    let (fixed, properties) = read(&record.value)?;
    let table = names.table(&fixed.event);
    let mut row = Row {
        partition,
        offset: record.offset,
        fixed,
        good: &record.value,
        values: Vec::new(),
    };
    let properties = match properties {
        Ok(p) => p,
        Err(reason) => return Ok((table, Err(row.reject(reason)))),
    };
    row.values.reserve(properties.len());
    for (key, value) in properties {
        if value.is_null() {
            continue;
        }
        let column = names.column(&key);
        if let Some((_, other, _)) = row.values.iter().find(|(c, _, _)| *c == column) {
            let reason = format!("properties {other:?} and {key:?} both map to column {column}");
            return Ok((table, Err(row.reject(reason))));
        }
        row.values.push((column, key, value));
    }
    Ok((table, Ok(row)))
}

/// The record read by the scanner, or else by the derived decoding.
fn read(bytes: &[u8]) -> Result<Read<'_>, String> {
    match skimmed(bytes) {
        Some(read) => Ok(read),
        None => derived(bytes),
    }
}

/// The derived decoding's reading: every member parsed, `properties` into a map.
fn derived(bytes: &[u8]) -> Result<Read<'static>, String> {
    let event =
        Event::from_slice_unenriched(bytes).map_err(|e| format!("not a good event: {e}"))?;
    let properties = serde_json::from_str::<Map<String, Value>>(event.properties.get())
        .map(|map| map.into_iter().map(|(k, v)| (Cow::Owned(k), v)).collect())
        .map_err(|e| format!("properties are not a json object: {e}"));
    Ok((Fixed::from(event), properties))
}

/// The record read by the scanner; `None` when the derived decoding must read it, for its
/// answer or its error.
fn skimmed(bytes: &[u8]) -> Option<Read<'_>> {
    let found = skim::unenriched(bytes)?;
    // Not a typed column, but a record whose `device_timestamp` does not parse is no event.
    optional(found.device_timestamp, skim::integer::<i64>)?;
    let fixed = Fixed {
        event_id: skim::text(found.event_id?)?,
        event_type: EventType::parse(&skim::text(found.event_type?)?)?,
        event: skim::text(found.event?)?,
        source: skim::text(found.source?)?,
        user_id: optional(found.user_id, skim::text)?,
        anonymous_id: optional(found.anonymous_id, skim::text)?,
        timestamp: skim::integer(found.timestamp?)?,
        sent_at: optional(found.sent_at, skim::integer)?,
        received_at: skim::integer(found.received_at?)?,
        context: Cow::Borrowed(std::str::from_utf8(found.context?).ok()?),
        raw: skim::position(found.raw?)?,
    };
    Some((fixed, Ok(properties(found.properties?)?)))
}

/// `properties`' members read by the scanner, by name as the derived decoding's map orders
/// them; `None` for what the derived decoding must read (not an object, a name written with an
/// escape or a control character, a name twice, a value that does not parse).
fn properties(bytes: &[u8]) -> Option<Vec<(Cow<'_, str>, Value)>> {
    let mut found = Vec::new();
    skim::members(bytes, |key, value| {
        if key.iter().any(|&c| c < 0x20) {
            return None;
        }
        found.push((
            Cow::Borrowed(std::str::from_utf8(key).ok()?),
            property(value)?,
        ));
        Some(true)
    })?;
    found.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
    found.windows(2).all(|w| w[0].0 != w[1].0).then_some(found)
}

/// One property's value, parsed alone.
fn property(value: &[u8]) -> Option<Value> {
    Some(match value {
        [b'"', ..] => Value::String(skim::text(value)?.into_owned()),
        [b'-' | b'0'..=b'9', ..] => {
            let fraction = value.iter().any(|c| matches!(c, b'.' | b'e' | b'E'));
            match (!fraction).then(|| skim::integer::<i64>(value)).flatten() {
                Some(n) => Value::from(n),
                // A fraction, an exponent, or an integer past `i64` (a `u64`, else a float).
                None => skim::parse(value)?,
            }
        }
        b"true" => Value::Bool(true),
        b"false" => Value::Bool(false),
        b"null" => Value::Null,
        _ => skim::parse(value)?,
    })
}

/// The table and column names of one flush's events, each worked out once: a flush holds many
/// events of few names, and a name is a few allocations to work out.
#[derive(Default)]
pub(super) struct Names {
    tables: HashMap<String, Arc<str>>,
    columns: HashMap<String, Arc<str>>,
}

impl Names {
    /// [`table_name`] of `event`.
    pub fn table(&mut self, event: &str) -> Arc<str> {
        Self::named(&mut self.tables, event, table_name)
    }

    /// [`column_name`] of `key`.
    pub fn column(&mut self, key: &str) -> Arc<str> {
        Self::named(&mut self.columns, key, column_name)
    }

    fn named(
        known: &mut HashMap<String, Arc<str>>,
        name: &str,
        of: fn(&str) -> String,
    ) -> Arc<str> {
        if let Some(found) = known.get(name) {
            return found.clone();
        }
        let made: Arc<str> = of(name).into();
        known.insert(name.to_string(), made.clone());
        made
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record holding every member, with properties of every kind and values that need care.
    const FULL: &str = r#"{"event_id":"e1","event_type":"track","event":"Order Completed",
        "source":"web","user_id":"u1","anonymous_id":"a\u00e91","timestamp":1764237600123000,
        "sent_at":5,"received_at":1764237601000000,"device_timestamp":-7,
        "raw":{"partition":2,"offset":41},
        "properties":{"total":9.5,"n":-3,"zero":0,"big":18446744073709551615,"huge":1e300,
            "exp":2E2,"whole":1.0,"neg_zero":-0,"ok":true,"no":false,"gone":null,
            "name":"caf\u00e9 \"x\"","plain":"ünï → 🦀","nested":{"a":[1,"]"],"b":{}},
            "list":[null,{"}":"{"}],"Order Id":"o1","orderNo":"o2","":"empty name"},
        "context":{"ip":"1.2.3.4","page":{"title":"\"]}"}},
        "enriched":{"geo_city":"S\u00e3o Paulo","is_bot":true},"part":[0,2]}"#;

    /// The scanner gives the derived reading, or leaves the record to the derived decoding;
    /// returns whether it gave one.
    fn agrees(bytes: &[u8]) -> bool {
        let Some(read) = skimmed(bytes) else {
            return false;
        };
        assert_eq!(
            Ok(read),
            derived(bytes),
            "{}",
            String::from_utf8_lossy(bytes)
        );
        true
    }

    fn changed(from: &str, to: &str) -> String {
        assert!(FULL.contains(from), "{from}");
        FULL.replacen(from, to, 1)
    }

    #[test]
    fn the_scanner_reads_a_record_as_the_derived_decoding_reads_it() {
        assert!(agrees(FULL.as_bytes()));
        let (fixed, properties) = skimmed(FULL.as_bytes()).unwrap();
        assert!(matches!(fixed.event, Cow::Borrowed("Order Completed")));
        let properties = properties.unwrap();
        assert_eq!(
            properties.len(),
            18,
            "nulls are kept for the caller to drop"
        );
        let value: Value = serde_json::from_str(FULL).unwrap();
        let pretty = serde_json::to_string_pretty(&value).unwrap();
        assert!(agrees(pretty.as_bytes()));
        // Members in another order, members the reader does not know, nulls, empty objects.
        for record in [
            changed(r#""event_type":"track","#, r#""extra":[{"a":"]"}],"#).replacen(
                r#"{"event_id""#,
                r#"{"event_type":"page","event_id""#,
                1,
            ),
            changed(r#""user_id":"u1","#, r#""user_id":null,"#),
            changed(r#""sent_at":5,"#, r#""sent_at":null,"#),
            changed(r#""properties":{"#, r#""properties":{},"unused":{"#),
            changed(r#""context":{"ip""#, r#""context":[],"ctx":{"ip""#),
        ] {
            assert!(agrees(record.as_bytes()), "{record}");
        }
        // As the runner writes it: every string that needs care, in every member.
        let event: Event = serde_json::from_str(FULL).unwrap();
        let written = crate::writer::as_the_runner_writes(event, |e, s| {
            e.anonymous_id = Some(s.to_string());
            e.source = s.to_string();
        });
        for bytes in written {
            assert!(agrees(&bytes), "{}", String::from_utf8_lossy(&bytes));
        }
    }

    #[test]
    fn what_the_scanner_does_not_expect_goes_to_the_derived_decoding() {
        let read_alike = |record: &str| {
            assert!(skimmed(record.as_bytes()).is_none(), "{record}");
            read(record.as_bytes()) == derived(record.as_bytes())
        };
        for record in [
            // A property name written with an escape, or with a control character.
            changed(r#""Order Id":"o1""#, r#""Order\u0020Id":"o1""#),
            changed(r#""Order Id":"o1""#, "\"Order\tId\":\"o1\""),
            // A property twice: the derived map keeps the last.
            changed(r#""n":-3,"#, r#""n":-3,"n":4,"#),
            // Values that do not parse alone.
            changed(r#""n":-3"#, r#""n":01"#),
            changed(r#""n":-3"#, r#""n":1e400"#),
            changed(r#""n":-3"#, r#""n":tru"#),
            changed(r#""n":-3"#, "\"n\":\"a\tb\""),
            // Properties that are not an object.
            changed(
                r#""properties":{"total""#,
                r#""properties":[1],"p":{"total""#,
            ),
            changed(
                r#""properties":{"total""#,
                r#""properties":"s","p":{"total""#,
            ),
            // Members twice, missing, or of the wrong type.
            changed(r#""source":"web""#, r#""source":"web","source":"app""#),
            changed(r#""raw":{"partition":2,"offset":41}"#, r#""x":1"#),
            changed(r#""device_timestamp":-7"#, r#""device_timestamp":"x""#),
            changed(r#""event_type":"track""#, r#""event_type":"flush""#),
            changed(r#""user_id":"u1""#, r#""user_id":7"#),
            changed(r#""context":{"ip""#, r#""ctx":{"ip""#),
        ] {
            assert!(read_alike(&record), "{record}");
        }
        assert!(read(b"not json").is_err());
        let list = changed(
            r#""properties":{"total""#,
            r#""properties":[1],"p":{"total""#,
        );
        let (_, properties) = read(list.as_bytes()).unwrap();
        assert!(
            properties
                .unwrap_err()
                .starts_with("properties are not a json object")
        );
    }

    #[test]
    fn a_record_with_any_byte_changed_reads_alike_where_both_readings_answer() {
        let bytes = FULL.as_bytes();
        let mut both = 0;
        for at in 0..bytes.len() {
            for to in *b"\"\\{}[],: 0-1e.xn\t" {
                let mut changed = bytes.to_vec();
                changed[at] = to;
                if let (Some(read), Ok(derived)) = (skimmed(&changed), derived(&changed)) {
                    assert_eq!(read, derived, "{}", String::from_utf8_lossy(&changed));
                    both += 1;
                }
            }
        }
        assert!(both > bytes.len(), "{both}");
    }

    #[test]
    fn rows_drop_nulls_and_refuse_two_properties_of_one_column() {
        let record = |json: String| Record {
            offset: 9,
            timestamp_ms: 0,
            value: bytes::Bytes::from(json),
        };
        let mut names = Names::default();
        let good = record(FULL.to_string());
        let (table, row) = decode(3, &good, &mut names).unwrap();
        assert_eq!(&*table, "order_completed");
        let row = row.ok().unwrap();
        assert_eq!(
            (row.partition, row.offset, row.good),
            (3, 9, FULL.as_bytes())
        );
        let columns: Vec<&str> = row.values.iter().map(|(c, _, _)| &**c).collect();
        assert!(!columns.contains(&"gone"));
        assert!(columns.contains(&"order_id") && columns.contains(&"order_no"));
        assert_eq!(columns.len(), 17);
        let clash = record(changed(r#""orderNo":"o2","#, r#""order_id":"o2","#));
        let Err(rejected) = decode(3, &clash, &mut names).unwrap().1 else {
            panic!("two properties of one column make a bad row");
        };
        assert_eq!(
            rejected.reason,
            r#"properties "Order Id" and "order_id" both map to column order_id"#
        );
    }
}
