//! Lake retention (`[lake] retention = "400d"`): every table's date partitions older than the
//! retention are deleted, by a Delta delete on the partition column alone, so whole files are
//! removed from the table without rewriting any. The rows are gone from the current version at
//! once; older versions still reference the files until `VACUUM` deletes them, after
//! `upkeep.vacuum_retention` (time travel to a version before the delete ends then).
//!
//! Safe beside the sinks: a delete commit carries no txn action, so exactly-once delivery is
//! unaffected, and a sink's append and the delete are rebased over each other by delta-rs. An
//! event that arrives late for an expired date lands in its partition and goes at the next pass.
//! Tables without one date partition column (the typed tables' control table) are left alone.

use std::time::Duration;

use chrono::NaiveDate;
use deltalake::DeltaTable;
use deltalake::kernel::DataType;

use crate::commit::run_blocking;
use crate::upkeep::{list_tables, open_table};
use crate::{LakeError, LakeRoot};

/// The shortest retention accepted: one day, since partitions are days.
pub const MIN_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// What expiry did to one table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExpireReport {
    /// Table name.
    pub table: String,
    /// The date partition column.
    pub column: String,
    /// Partitions before this date were deleted.
    pub cutoff: NaiveDate,
    /// Files removed from the table.
    pub files_removed: usize,
    /// Rows deleted, when the files' statistics say.
    pub rows_deleted: Option<usize>,
}

/// The first day kept: `today` less the retention in whole days.
pub fn cutoff(today: NaiveDate, retention: Duration) -> NaiveDate {
    let days = (retention.as_secs() / (24 * 3600)).max(1);
    today - chrono::Days::new(days)
}

/// Deletes the partitions of table `name` dated before `cutoff`; `None` when the table has no
/// single date partition column.
pub async fn expire_table(
    root: &LakeRoot,
    name: &str,
    cutoff: NaiveDate,
) -> Result<Option<ExpireReport>, LakeError> {
    let Some(table) = open_table(root, name).await? else {
        return Ok(None);
    };
    let Some(column) = date_partition(&table) else {
        return Ok(None);
    };
    let predicate = format!("\"{column}\" < '{cutoff}'");
    let (_, metrics) = run_blocking(name, async move {
        table.delete().with_predicate(predicate).await
    })
    .await?
    .map_err(|e| LakeError::delta(name, "deleting expired partitions", e))?;
    debug_assert_eq!(
        metrics.num_added_files, 0,
        "a partition delete rewrites nothing"
    );
    Ok(Some(ExpireReport {
        table: name.to_string(),
        column,
        cutoff,
        files_removed: metrics.num_removed_files,
        rows_deleted: metrics.num_deleted_rows,
    }))
}

/// [`expire_table`] for every table; a failure on one does not stop the others.
pub async fn expire_all(
    root: &LakeRoot,
    cutoff: NaiveDate,
) -> Result<Vec<Result<ExpireReport, LakeError>>, LakeError> {
    let mut out = Vec::new();
    for name in list_tables(root).await? {
        match expire_table(root, &name, cutoff).await {
            Ok(Some(r)) => out.push(Ok(r)),
            Ok(None) => {}
            Err(e) => out.push(Err(e)),
        }
    }
    Ok(out)
}

/// The table's partition column when it is exactly one column of type date.
fn date_partition(table: &DeltaTable) -> Option<String> {
    let snapshot = table.snapshot().ok()?;
    let columns: &[String] = snapshot.metadata().partition_columns();
    let [column] = columns else {
        return None;
    };
    let schema = snapshot.schema();
    let field = schema.field(column)?;
    (field.data_type() == &DataType::DATE).then(|| column.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cutoff_keeps_whole_days() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
        let day = 24 * 3600;
        assert_eq!(
            cutoff(today, Duration::from_secs(30 * day)),
            NaiveDate::from_ymd_opt(2026, 11, 4).unwrap()
        );
        // Partial days round down, and never below one.
        assert_eq!(
            cutoff(today, Duration::from_secs(day + 3600)),
            NaiveDate::from_ymd_opt(2026, 12, 3).unwrap()
        );
        assert_eq!(
            cutoff(today, Duration::from_secs(60)),
            NaiveDate::from_ymd_opt(2026, 12, 3).unwrap()
        );
    }
}
