//! Deleting a person's rows from the lake (`sluice privacy delete`): a Delta delete on every
//! table with `user_id` and `anonymous_id` columns (`events` and the typed tables), and a delete
//! of chosen `bad_rows` by their raw position.
//!
//! A delete rewrites the files that hold matching rows without them and removes the old files
//! from the table: the current version no longer has the rows; older versions still reference
//! the old files until `VACUUM` deletes them, after `upkeep.vacuum_retention` (time travel to a
//! version before the delete ends then). Safe beside the sinks for the same reasons as
//! retention (`retention.rs`): no txn action in the delete commit, and delta-rs rebases a
//! sink's append and the delete over each other; a conflict is an error the caller retries.

use std::collections::BTreeMap;

use deltalake::DeltaTable;
use deltalake::datafusion::prelude::{Expr, col, lit};

use crate::commit::run_blocking;
use crate::schema::BAD_ROWS_TABLE;
use crate::typed::CONTROL_TABLE;
use crate::upkeep::{list_tables, open_table};
use crate::{LakeError, LakeRoot};

/// Values per `IN` list: keeps each predicate small.
const CHUNK: usize = 500;

/// What a delete did to one table.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EraseReport {
    /// Table name.
    pub table: String,
    /// Rows deleted.
    pub rows_deleted: u64,
    /// Files rewritten without the rows.
    pub files_rewritten: u64,
    /// The table's version after the delete (none when nothing matched).
    pub version: Option<u64>,
}

/// The tables a person's rows can be in: every table with both id columns (`events`, the
/// typed tables), sorted.
pub async fn person_tables(root: &LakeRoot) -> Result<Vec<String>, LakeError> {
    let mut out = Vec::new();
    for name in list_tables(root).await? {
        if name == CONTROL_TABLE || name == BAD_ROWS_TABLE {
            continue;
        }
        if let Some(table) = open_table(root, &name).await?
            && has_id_columns(&table)
        {
            out.push(name);
        }
    }
    Ok(out)
}

fn has_id_columns(table: &DeltaTable) -> bool {
    let Ok(snapshot) = table.snapshot() else {
        return false;
    };
    let schema = snapshot.schema();
    schema.field("user_id").is_some() && schema.field("anonymous_id").is_some()
}

/// Deletes the rows of table `name` whose `user_id` or `anonymous_id` is one of `ids`.
pub async fn erase_people(
    root: &LakeRoot,
    name: &str,
    ids: &[String],
) -> Result<EraseReport, LakeError> {
    let mut report = EraseReport {
        table: name.to_string(),
        ..Default::default()
    };
    for chunk in ids.chunks(CHUNK) {
        let values: Vec<Expr> = chunk.iter().map(|id| lit(id.clone())).collect();
        let predicate = col("user_id")
            .in_list(values.clone(), false)
            .or(col("anonymous_id").in_list(values, false));
        delete(root, name, predicate, &mut report).await?;
    }
    Ok(report)
}

/// A row of `bad_rows`, by the raw record it came from.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BadRowKey {
    /// `raw_partition`.
    pub raw_partition: i32,
    /// `raw_offset`.
    pub raw_offset: i64,
    /// `event_id`.
    pub event_id: String,
}

/// Deletes the bad rows `keys`.
pub async fn erase_bad_rows(root: &LakeRoot, keys: &[BadRowKey]) -> Result<EraseReport, LakeError> {
    let mut report = EraseReport {
        table: BAD_ROWS_TABLE.to_string(),
        ..Default::default()
    };
    let mut per_partition: BTreeMap<i32, Vec<&BadRowKey>> = BTreeMap::new();
    for k in keys {
        per_partition.entry(k.raw_partition).or_default().push(k);
    }
    for (partition, keys) in per_partition {
        for chunk in keys.chunks(CHUNK) {
            let offsets: Vec<Expr> = chunk.iter().map(|k| lit(k.raw_offset)).collect();
            let ids: Vec<Expr> = chunk.iter().map(|k| lit(k.event_id.clone())).collect();
            let predicate = col("raw_partition")
                .eq(lit(partition))
                .and(col("raw_offset").in_list(offsets, false))
                .and(col("event_id").in_list(ids, false));
            delete(root, BAD_ROWS_TABLE, predicate, &mut report).await?;
        }
    }
    Ok(report)
}

async fn delete(
    root: &LakeRoot,
    name: &str,
    predicate: Expr,
    report: &mut EraseReport,
) -> Result<(), LakeError> {
    let Some(table) = open_table(root, name).await? else {
        return Ok(());
    };
    let (table, metrics) = run_blocking(name, async move {
        table.delete().with_predicate(predicate).await
    })
    .await?
    .map_err(|e| LakeError::delta(name, "deleting a person's rows", e))?;
    report.rows_deleted += metrics.num_deleted_rows.unwrap_or(0) as u64;
    report.files_rewritten += metrics.num_removed_files as u64;
    if metrics.num_removed_files > 0 {
        report.version = table.version();
    }
    Ok(())
}
