//! [`Warehouse::known_events`]: which `(source, event_id)` pairs the `events` table already
//! holds. `sluice replay` asks before it re-drives anything, so a replay never duplicates what
//! is already good.

use std::collections::HashSet;

use deltalake::arrow::array::{Array, AsArray};
use deltalake::arrow::datatypes::DataType;

use crate::{Warehouse, WarehouseError};

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
        let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
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
                let text = |a: &dyn Array, i: usize| -> Option<String> {
                    match a.data_type() {
                        DataType::Utf8 => Some(a.as_string::<i32>().value(i).to_string()),
                        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i).to_string()),
                        DataType::Utf8View => Some(a.as_string_view().value(i).to_string()),
                        _ => None,
                    }
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
}
