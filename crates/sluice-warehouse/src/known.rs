//! [`Warehouse::known_events`]: which `(source, event_id)` pairs the `events` table already
//! holds. `sluice replay` asks before it re-drives anything, so a replay never duplicates what
//! is already good. And [`Warehouse::bad_rows_containing`]: the bad rows whose payload contains
//! a text, the candidates of a deletion request.

use std::collections::HashSet;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::{DataType, Int32Type, Int64Type};

use sluice_lake::erase::BadRowKey;

use crate::{Warehouse, WarehouseError};

/// Reads row `i` of a text column, whatever its string type.
fn text(a: &dyn Array, i: usize) -> Option<String> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(i).to_string()),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i).to_string()),
        DataType::Utf8View => Some(a.as_string_view().value(i).to_string()),
        _ => None,
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Ids per query: keeps the `IN` list (and the statement) small.
const CHUNK: usize = 500;

impl Warehouse {
    /// The pairs of `keys` (source, event id) that are rows of `events`. An absent table holds
    /// nothing.
    pub async fn known_events(
        &self,
        keys: &[(String, String)],
    ) -> Result<HashSet<(String, String)>, WarehouseError> {
        let mut found = HashSet::new();
        if keys.is_empty() || !self.tables().await?.iter().any(|t| t == "events") {
            return Ok(found);
        }
        for chunk in keys.chunks(CHUNK) {
            let mut ids: Vec<&str> = chunk.iter().map(|(_, id)| id.as_str()).collect();
            ids.sort_unstable();
            ids.dedup();
            let list = ids.iter().map(|id| quote(id)).collect::<Vec<_>>().join(",");
            let sql = format!("SELECT source, event_id FROM events WHERE event_id IN ({list})");
            let out = self.query(&sql).await?;
            for batch in &out.batches {
                let (Some(sources), Some(ids)) = (
                    batch.column_by_name("source"),
                    batch.column_by_name("event_id"),
                ) else {
                    continue;
                };
                for i in 0..batch.num_rows() {
                    if let (Some(s), Some(id)) = (text(sources.as_ref(), i), text(ids.as_ref(), i))
                    {
                        found.insert((s, id));
                    }
                }
            }
        }
        Ok(found)
    }

    /// The bad rows whose `payload` contains `needle`, with their payloads: the candidates a
    /// deletion request then checks one by one. An absent table holds nothing.
    pub async fn bad_rows_containing(
        &self,
        needle: &str,
    ) -> Result<Vec<(BadRowKey, String)>, WarehouseError> {
        let mut found = Vec::new();
        if needle.is_empty() || !self.tables().await?.iter().any(|t| t == "bad_rows") {
            return Ok(found);
        }
        let sql = format!(
            "SELECT raw_partition, raw_offset, event_id, payload FROM bad_rows \
             WHERE strpos(payload, {}) > 0",
            quote(needle)
        );
        let out = self.query(&sql).await?;
        for batch in &out.batches {
            let (Some(partitions), Some(offsets), Some(ids), Some(payloads)) = (
                batch.column_by_name("raw_partition"),
                batch.column_by_name("raw_offset"),
                batch.column_by_name("event_id"),
                batch.column_by_name("payload"),
            ) else {
                continue;
            };
            let (Some(partitions), Some(offsets)) = (
                partitions.as_primitive_opt::<Int32Type>(),
                offsets.as_primitive_opt::<Int64Type>(),
            ) else {
                return Err(WarehouseError::Format(
                    "bad_rows: raw_partition or raw_offset has an unexpected type".into(),
                ));
            };
            for i in 0..batch.num_rows() {
                let (Some(event_id), Some(payload)) =
                    (text(ids.as_ref(), i), text(payloads.as_ref(), i))
                else {
                    continue;
                };
                let key = BadRowKey {
                    raw_partition: partitions.value(i),
                    raw_offset: offsets.value(i),
                    event_id,
                };
                found.push((key, payload));
            }
        }
        Ok(found)
    }
}
