//! Records put to `raw` (or an ingest alias, or Firehose) become collector items: the data is
//! the payload when it is one JSON object (a trailing newline allowed), else a JSON string of
//! its base64 (the runner then makes it a `parse` bad row, keeping the bytes); ids are read
//! with the native keys. Nothing is refused here for its content: what the runner cannot read
//! lands in `bad` with the whole record.
//!
//! The records are submitted in one collector call per `raw` partition they route to, so that
//! a partition whose append fails fails only its own records (answered per record), and the
//! call runs in its own task so that a client hanging up cannot cancel an append halfway.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::value::RawValue;
use sluice_collector::{
    CollectError, Collector, Item, NativeHead, Origin, Placement, Submitted, check_native,
};
use sluice_event::{ErrorKind, Position, Protocol, routing_key, topic};
use sluice_journal::partition_for;

use super::Kinesis;

/// Longest id read from a record (as the collector allows for native events).
const MAX_ID_BYTES: usize = 1024;

/// One record to take into the pipeline.
pub(crate) struct IntakeRecord {
    /// The record's bytes.
    pub data: Vec<u8>,
    /// The Kinesis partition key (Firehose has none).
    pub partition_key: Option<String>,
}

/// What became of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Placed {
    /// Durable at this `raw` position (or already was: a dedupe duplicate).
    At(Position),
    /// Not stored.
    Failed(ErrorKind, String),
}

/// The payload of a record: its JSON object, else a JSON string of its base64.
pub(crate) fn payload_of(data: &[u8]) -> Box<RawValue> {
    let text = std::str::from_utf8(data.trim_ascii()).ok();
    if let Some(text) = text
        && text.starts_with('{')
        && let Ok(raw) = serde_json::from_str::<Box<RawValue>>(text)
    {
        return raw;
    }
    let b64 = serde_json::Value::String(STANDARD.encode(data));
    // A JSON string always serializes; the fallback (null) is never reached.
    serde_json::value::to_raw_value(&b64).unwrap_or_default()
}

/// The event id, user id and anonymous id of a JSON object payload, read as native events'
/// (`event_id`/`messageId`/`eventId`, `user_id`/`userId`, `anonymous_id`/`anonymousId`).
/// An event that fails the native checks (no name, unknown type) still gives its ids when
/// they are readable; the runner decides what becomes of it.
fn ids_of(payload: &RawValue) -> (Option<String>, Option<String>, Option<String>) {
    let owned = |v: Option<Cow<'_, str>>| {
        v.filter(|s| !s.is_empty() && s.len() <= MAX_ID_BYTES)
            .map(Cow::into_owned)
    };
    let head = match check_native(payload) {
        Ok(head) => Some(head),
        Err(_) => serde_json::from_str::<NativeHead<'_>>(payload.get()).ok(),
    };
    match head {
        Some(h) => (owned(h.event_id), owned(h.user_id), owned(h.anonymous_id)),
        None => (None, None, None),
    }
}

/// A collector item for a record, with its event id stamped here (a UUIDv7 when the record
/// names none) so that its `raw` partition is known before the collector routes it.
fn item_of(source: Arc<str>, record: IntakeRecord) -> Item<'static> {
    let payload = payload_of(&record.data);
    let (event_id, user_id, anonymous_id) = if payload.get().starts_with('{') {
        ids_of(&payload)
    } else {
        (None, None, None)
    };
    Item {
        source,
        protocol: Protocol::Kinesis,
        event_id: Some(event_id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string())),
        user_id,
        anonymous_id,
        network_user_id: None,
        partition_key: record.partition_key,
        payload: Cow::Owned(payload),
    }
}

/// The items of one `raw` partition: their indexes in the request, and the items.
type Group = (Vec<usize>, Vec<Item<'static>>);

/// A group's indexes and what submitting it answered.
type GroupResult = (Vec<usize>, Result<Submitted, CollectError>);

impl Kinesis {
    /// Takes records into `raw` through the collector. `Err` refuses the whole request (no
    /// collector on this node, backlog, journal trouble): nothing of it was stored.
    pub(crate) async fn intake(
        &self,
        source: Arc<str>,
        origin: Origin,
        records: Vec<IntakeRecord>,
    ) -> Result<Vec<Placed>, (ErrorKind, String)> {
        let Some(collector) = self.collector.clone() else {
            return Err((
                ErrorKind::NotFound,
                "this node does not run the collector role, so it takes no records into raw".into(),
            ));
        };
        collector
            .check_capacity()
            .map_err(|e| (e.kind(), e.to_string()))?;
        let partitions = self
            .journal
            .partitions(topic::RAW)
            .map_err(|e| (e.kind(), e.to_string()))?;
        let count = records.len();
        let items: Vec<Item<'static>> = records
            .into_iter()
            .map(|record| item_of(source.clone(), record))
            .collect();
        // One quota decision for the whole request, so that it is taken or refused as a whole.
        if let Err(e) = collector.take_quota(items.iter()) {
            return Ok(vec![Placed::Failed(e.kind(), e.to_string()); count]);
        }
        let groups = by_partition(items, partitions);
        let results = submit(collector, origin, groups).await?;
        Ok(placed(results, count))
    }
}

/// The items grouped by the `raw` partition they route to, routed as the collector routes:
/// user id, else anonymous id, else the partition key, else the event id.
fn by_partition(items: Vec<Item<'static>>, partitions: u32) -> BTreeMap<u32, Group> {
    let mut groups: BTreeMap<u32, Group> = BTreeMap::new();
    for (index, item) in items.into_iter().enumerate() {
        let fallback = item
            .partition_key
            .as_deref()
            .or(item.event_id.as_deref())
            .unwrap_or_default();
        let route = routing_key(
            item.user_id.as_deref(),
            item.anonymous_id.as_deref(),
            fallback,
        );
        let group = groups.entry(partition_for(route, partitions)).or_default();
        group.0.push(index);
        group.1.push(item);
    }
    groups
}

/// Submits each group in a collector call of its own, all in one task that a client hanging
/// up cannot cancel.
async fn submit(
    collector: Arc<Collector>,
    origin: Origin,
    groups: BTreeMap<u32, Group>,
) -> Result<Vec<GroupResult>, (ErrorKind, String)> {
    let task = tokio::spawn(async move {
        let calls = groups.into_values().map(|(indexes, items)| {
            let collector = collector.clone();
            let origin = origin.clone();
            async move {
                let submitted = collector
                    .submit_admitted(&origin, items.into_iter().map(Ok).collect())
                    .await;
                (indexes, submitted)
            }
        });
        futures::future::join_all(calls).await
    });
    task.await
        .map_err(|e| (ErrorKind::Internal, format!("intake task failed: {e}")))
}

/// What became of each of the `count` records, from what their groups' calls answered.
fn placed(results: Vec<GroupResult>, count: usize) -> Vec<Placed> {
    let mut placed =
        vec![Placed::Failed(ErrorKind::Internal, "record was not placed".into()); count];
    for (indexes, submitted) in results {
        match submitted {
            Ok(sub) => {
                for (slot, &index) in indexes.iter().enumerate() {
                    if let Some(out) = placed.get_mut(index) {
                        *out = placed_at(&sub, slot);
                    }
                }
            }
            // This partition's append failed (the others' stand): its records are
            // answered InternalFailure, which producers retry.
            Err(e) => {
                for &index in &indexes {
                    if let Some(out) = placed.get_mut(index) {
                        *out = Placed::Failed(
                            ErrorKind::Internal,
                            format!("append to raw failed: {e}"),
                        );
                    }
                }
            }
        }
    }
    placed
}

/// What became of the item at `slot` of a call that went through.
fn placed_at(sub: &Submitted, slot: usize) -> Placed {
    match sub.placements.get(slot) {
        Some(Placement::Appended(pos) | Placement::Duplicate(pos)) => Placed::At(*pos),
        Some(Placement::Rejected) | None => {
            match sub.outcome.rejected.iter().find(|r| r.index == slot) {
                Some(r) => Placed::Failed(r.kind, r.reason.clone()),
                None => Placed::Failed(ErrorKind::Internal, "record was refused".into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_objects_are_payloads_and_anything_else_is_base64() {
        assert_eq!(
            payload_of(b"{\"event\":\"x\"}\n").get(),
            "{\"event\":\"x\"}"
        );
        assert_eq!(payload_of(b" {\"a\":1}\r\n").get(), "{\"a\":1}");
        let b64 = |d: &[u8]| format!("\"{}\"", STANDARD.encode(d));
        for data in [
            &b"[1,2]"[..],
            b"plain text",
            b"{\"broken\":",
            b"\xff\xfe",
            b"",
            b"{\"a\":1}{\"b\":2}",
        ] {
            assert_eq!(payload_of(data).get(), b64(data), "{data:?}");
        }
    }

    #[test]
    fn ids_are_read_with_native_keys_even_from_events_the_runner_will_refuse() {
        let item = item_of(
            Arc::from("web"),
            IntakeRecord {
                data: br#"{"event":"Click","messageId":"m1","userId":42,"anonymousId":"a"}"#
                    .to_vec(),
                partition_key: Some("pk".into()),
            },
        );
        assert_eq!(item.event_id.as_deref(), Some("m1"));
        assert_eq!(item.user_id.as_deref(), Some("42"));
        assert_eq!(item.anonymous_id.as_deref(), Some("a"));
        assert_eq!(item.partition_key.as_deref(), Some("pk"));
        assert_eq!(item.protocol, Protocol::Kinesis);

        // No event name: not a valid native event, but its ids are still read.
        let item = item_of(
            Arc::from("web"),
            IntakeRecord {
                data: br#"{"event_id":"e9","user_id":"u"}"#.to_vec(),
                partition_key: None,
            },
        );
        assert_eq!(item.event_id.as_deref(), Some("e9"));
        assert_eq!(item.user_id.as_deref(), Some("u"));

        // Not JSON: a stamped UUIDv7 and no ids.
        let item = item_of(
            Arc::from("web"),
            IntakeRecord {
                data: b"\x00binary".to_vec(),
                partition_key: Some("k".into()),
            },
        );
        assert!(uuid::Uuid::parse_str(item.event_id.as_deref().unwrap()).is_ok());
        assert_eq!(item.user_id, None);
    }
}
